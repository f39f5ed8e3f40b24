//! `librestartable_malloc.so` under `LD_PRELOAD`, on the rseq path and on
//! the fallback path (`RESTARTABLE_DISABLE=1`): hostile C callers
//! (`tests/c/hostile.c`: conformance of every export, calls before
//! `main`, from `dlsym`, from thread-exit destructors, from signal
//! handlers, in `fork` children of an allocating parent, 20,000
//! short-lived threads, cross-thread frees with tags, memory returned
//! after a 1 GiB burst), then real programs checking their own results:
//! Python's own tests, git, a g++ build, and `xz -T0`.
//!
//! Every process appends the allocator's exit statistics to a file
//! (`RESTARTABLE_MALLOC_STATS=/path`), from which the test reads the path
//! each took, so the rseq path's coverage cannot silently drop to zero.
#![cfg(all(target_os = "linux", target_env = "gnu"))]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The library cargo built beside this test (`target/<profile>/deps`).
fn library() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let deps = exe.parent().expect("the test's folder");
    let lib = deps.join("librestartable_malloc.so");
    assert!(lib.exists(), "{} not built", lib.display());
    lib
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Taken {
    Rseq,
    Fallback,
    /// The rseq path with the caches indexed by `mm_cid`.
    RseqMmCid,
}

/// Runs `cmd` with the library preloaded on `path`; its output, after
/// checking that it succeeded, that it reported its statistics at exit,
/// and that every report (its own and those of the programs it started
/// that exited through `exit`) names the path asked for.
fn preloaded(cmd: &mut Command, path: Taken, what: &str) -> Output {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let reports = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "stats-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&reports);
    cmd.env("LD_PRELOAD", library())
        .env("RESTARTABLE_MALLOC_STATS", &reports)
        .env_remove("RESTARTABLE_DISABLE");
    match path {
        Taken::Fallback => cmd.env("RESTARTABLE_DISABLE", "1"),
        Taken::RseqMmCid => cmd.env("RESTARTABLE_MALLOC_INDEX", "mm_cid"),
        Taken::Rseq => cmd.env_remove("RESTARTABLE_MALLOC_INDEX"),
    };
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} ({path:?}) failed: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    let text = std::fs::read_to_string(&reports)
        .unwrap_or_else(|e| panic!("{what}: no statistics at exit ({e})"));
    let _ = std::fs::remove_file(&reports);
    let paths: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("path: "))
        .collect();
    let fallback_ops: u64 = text
        .lines()
        .filter_map(|l| l.split("fallback operations ").nth(1))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .sum();
    assert!(!paths.is_empty(), "{what}: no report in {text}");
    let want = match path {
        Taken::Rseq | Taken::RseqMmCid => "rseq",
        Taken::Fallback => "fallback",
    };
    if path == Taken::RseqMmCid && restartable::current_mm_cid().is_some() {
        assert!(
            paths.iter().all(|p| p.contains("index: mm_cid")),
            "{what}: wanted every process indexed by mm_cid, got {paths:?}"
        );
    }
    if path != Taken::Fallback && !restartable::registration().rseq_available() {
        assert!(
            std::env::var_os("RESTARTABLE_REQUIRE_RSEQ").is_none(),
            "rseq is required but unavailable here"
        );
        eprintln!("{what}: no rseq on this machine; ran on {paths:?}");
    } else {
        assert!(
            paths.iter().all(|p| p.starts_with(want)),
            "{what}: wanted every process on {want}, got {paths:?}"
        );
    }
    if path == Taken::Fallback {
        assert!(
            fallback_ops > 0,
            "{what}: the fallback path ran no operation"
        );
    }
    eprintln!(
        "{what} ({path:?}): ok, {} processes reported path {want}, fallback operations {fallback_ops}",
        paths.len()
    );
    out
}

/// Builds `tests/c/hostile.c`, and the 24 copies of `tests/c/tlslib.c`
/// its `dltls` check opens, into a folder of their own: the program.
fn hostile(path: Taken) -> PathBuf {
    let dir = scratch(&format!("hostile-{path:?}"));
    let c = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c");
    let cc = |args: &[&str], out: &Path, src: &str| {
        let status = Command::new("cc")
            .args(args)
            .arg("-o")
            .arg(out)
            .arg(c.join(src))
            .args(["-lpthread", "-ldl"])
            .status()
            .expect("cc");
        assert!(status.success(), "building {src}");
    };
    let exe = dir.join("hostile");
    cc(
        &["-O1", "-g", "-Wall", "-Wno-alloc-size-larger-than"],
        &exe,
        "hostile.c",
    );
    let tls0 = dir.join("libtls0.so");
    cc(&["-O1", "-shared", "-fPIC"], &tls0, "tlslib.c");
    for k in 1..24 {
        std::fs::copy(&tls0, dir.join(format!("libtls{k}.so"))).expect("copy");
    }
    exe
}

const CHECKS: [&str; 9] = [
    "conformance",
    "dlsym",
    "dltls",
    "tls",
    "signals",
    "fork",
    "churn",
    "exchange",
    "release",
];

fn hostile_callers(path: Taken) {
    let exe = hostile(path);
    let out = preloaded(
        Command::new(&exe)
            .args(CHECKS)
            .env("HOSTILE_TLS_DIR", exe.parent().expect("its folder")),
        path,
        "hostile callers",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    for check in CHECKS {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(check) && l.contains("ok")
                    || l.starts_with(check) && l.contains("after")),
            "{check} did not report: {stdout}"
        );
    }
}

#[test]
fn hostile_callers_rseq() {
    hostile_callers(Taken::Rseq);
}

#[test]
fn hostile_callers_fallback() {
    hostile_callers(Taken::Fallback);
}

/// A tool on `PATH`, or `None` (the test then says it skipped it). The
/// test command (which installs them, and sets `RESTARTABLE_REQUIRE_RSEQ`)
/// fails instead of skipping.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    assert!(
        found.is_some() || std::env::var_os("RESTARTABLE_REQUIRE_RSEQ").is_none(),
        "{name} is not installed (scripts/test.sh installs it)"
    );
    found
}

/// The real Python interpreter (not a version manager's shell shim).
fn python() -> Option<PathBuf> {
    let py = tool("python3")?;
    let out = Command::new(&py)
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()?;
    let real = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    real.is_file().then_some(real)
}

fn python_tests(path: Taken) {
    let Some(py) = python() else {
        eprintln!("SKIPPED: no python3");
        return;
    };
    // A chunk of CPython's own suite that allocates hard and checks itself.
    let out = preloaded(
        Command::new(py).args([
            "-m",
            "test",
            "test_json",
            "test_list",
            "test_dict",
            "test_set",
            "test_re",
            "test_unicode",
            "test_collections",
        ]),
        path,
        "python3 -m test",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Result: SUCCESS"), "{stdout}");
}

fn git(path: Taken) {
    let Some(git) = tool("git") else {
        eprintln!("SKIPPED: no git");
        return;
    };
    let dir = scratch(&format!("git-{path:?}"));
    let repo = dir.join("repo");
    let run = |args: &[&str], cwd: &Path| {
        preloaded(
            Command::new(&git)
                .args(args)
                .current_dir(cwd)
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@example.com")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@example.com")
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("HOME", &dir),
            path,
            &format!("git {}", args.join(" ")),
        )
    };
    run(&["init", "-q", "-b", "main", "repo"], &dir);
    for commit in 0..20 {
        for f in 0..25 {
            let text: String = (0..200)
                .map(|line| format!("file {f} line {line} commit {}\n", commit * (f % 3)))
                .collect();
            std::fs::write(repo.join(format!("f{f}.txt")), text).unwrap();
        }
        run(&["add", "-A"], &repo);
        run(&["commit", "-q", "-m", &format!("commit {commit}")], &repo);
    }
    run(&["gc", "-q", "--aggressive"], &repo);
    run(&["fsck", "--full", "--strict"], &repo);
    run(&["clone", "-q", "repo", "copy"], &dir);
    let count = run(&["rev-list", "--count", "HEAD"], &dir.join("copy"));
    assert_eq!(String::from_utf8_lossy(&count.stdout).trim(), "20");
    let a = run(&["rev-parse", "HEAD^{tree}"], &repo);
    let b = run(&["rev-parse", "HEAD^{tree}"], &dir.join("copy"));
    assert_eq!(a.stdout, b.stdout, "the clone has the same tree");
}

fn gxx(path: Taken) {
    let Some(gxx) = tool("g++") else {
        eprintln!("SKIPPED: no g++");
        return;
    };
    let dir = scratch(&format!("gxx-{path:?}"));
    let src = dir.join("words.cc");
    std::fs::write(
        &src,
        r#"#include <map>
#include <string>
#include <thread>
#include <vector>
#include <memory>
#include <cstdio>
int main() {
    std::map<std::string, long> counts;
    for (long i = 0; i < 200000; i++) counts["w" + std::to_string(i % 5000)] += i;
    std::vector<std::thread> ts;
    std::vector<long> sums(4);
    for (int t = 0; t < 4; t++)
        ts.emplace_back([t, &sums] {
            std::vector<std::unique_ptr<std::string>> v;
            for (int i = 0; i < 100000; i++) v.push_back(std::make_unique<std::string>(i % 97, 'x'));
            for (auto &s : v) sums[t] += s->size();
        });
    for (auto &t : ts) t.join();
    long total = 0;
    for (auto &kv : counts) total += kv.second;
    std::printf("%zu %ld %ld\n", counts.size(), total, sums[0] + sums[1] + sums[2] + sums[3]);
    return 0;
}
"#,
    )
    .unwrap();
    let exe = dir.join("words");
    preloaded(
        Command::new(&gxx)
            .args(["-O2", "-pthread", "-o"])
            .arg(&exe)
            .arg(&src),
        path,
        "g++ -O2",
    );
    let out = preloaded(&mut Command::new(&exe), path, "the compiled C++ program");
    // 5000 keys; sum of 0..200000; 4 threads x sum over i of i % 97.
    let per_thread: u64 = (0..100_000u64).map(|i| i % 97).sum();
    let want = format!("5000 {} {}\n", 199_999u64 * 200_000 / 2, 4 * per_thread);
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
}

fn xz(path: Taken) {
    let Some(xz) = tool("xz") else {
        eprintln!("SKIPPED: no xz");
        return;
    };
    let dir = scratch(&format!("xz-{path:?}"));
    let data: Vec<u8> = (0..24u64 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 & if i % 7 == 0 { 0xff } else { 0x0f })
        .collect();
    let file = dir.join("data");
    std::fs::write(&file, &data).unwrap();
    // Multithreaded compression (blocks of 1 MiB, so every thread works).
    preloaded(
        Command::new(&xz)
            .args(["-T0", "--block-size=1MiB", "-k", "-6"])
            .arg(&file),
        path,
        "xz -T0",
    );
    std::fs::remove_file(&file).unwrap();
    preloaded(
        Command::new(&xz)
            .args(["-T0", "-d", "-k"])
            .arg(dir.join("data.xz")),
        path,
        "xz -T0 -d",
    );
    assert!(
        std::fs::read(&file).unwrap() == data,
        "xz round trip changed the data"
    );
}

fn programs(path: Taken) {
    python_tests(path);
    git(path);
    gxx(path);
    xz(path);
}

#[test]
fn real_programs_rseq() {
    programs(Taken::Rseq);
}

#[test]
fn real_programs_fallback() {
    programs(Taken::Fallback);
}

/// The hostile callers, git and the multithreaded xz with the caches
/// indexed by `mm_cid`.
#[test]
fn real_programs_mm_cid() {
    hostile_callers(Taken::RseqMmCid);
    git(Taken::RseqMmCid);
    xz(Taken::RseqMmCid);
}
