//! The bounded stress matrix, in the style of the kernel's rseq selftests: every mode of
//! `restartable stress` with default parameters, each injection point
//! alone, injection combined with yields, signals and sleeps, with glibc's
//! registration and without it, indexed by CPU id and by mm_cid. Built with
//! `--all-features` this binary also re-checks every commit
//! (`compare-twice`). Every run must be exact and must say it ran on the
//! rseq path.

mod common;

use common::*;

/// Every mode the matrix runs: the raw-section modes, the generated
/// sections' modes, then those on library structures (`fetch-update` and
/// `churn` have cases of their own).
fn modes() -> impl Iterator<Item = &'static str> {
    RAW_MODES
        .iter()
        .chain(GENERATED_MODES)
        .copied()
        .chain(["counter", "percpu", "stack", "pool", "drain"])
}

/// The modes on library structures with a fallback path (and, but for
/// `counter` and `fetch-update`, a manager thread working through the fence).
const LIBRARY_MODES: &[&str] = &[
    "counter",
    "fetch-update",
    "percpu",
    "stack",
    "pool",
    "drain",
];

/// `--index index --order order`, as far as `mode` takes them (`percpu`
/// takes `--index` only, the other library modes neither).
fn flavour(mode: &str, index: &'static str, order: &'static str) -> Vec<&'static str> {
    match mode {
        m if RAW_MODES.contains(&m) => vec!["--index", index, "--order", order],
        "percpu" => vec!["--index", index],
        _ => Vec::new(),
    }
}

/// Whether the binary was built with delay loops (`inject`).
fn has_inject() -> bool {
    let out = restartable(&[
        "stress",
        "increment",
        "--threads",
        "1",
        "--ops",
        "1",
        "--inject",
        "0=1",
    ])
    .output()
    .unwrap();
    out.status.success()
}

fn mm_cid_available() -> bool {
    json_of(&mut restartable(&["info", "--json"]))["mm_cid"].is_u64()
}

fn rseq_here() -> bool {
    let info = json_of(&mut restartable(&["info", "--json"]));
    let here = info["rseq_available"] == true && info["critical_sections"] == true;
    assert!(
        here || !require_rseq(),
        "rseq required but not available: {info}"
    );
    here
}

/// Operations per worker of each run: with delays injected inside every
/// section and the manager's fences aborting them, enough for thousands of
/// aborts per run (the reports show them) while the matrix stays within a
/// few minutes.
const OPS: &str = "2000";

/// Operations per worker where fallback threads, whose every operation
/// fences, mix with injected sections (the slowest runs).
const MIXED_OPS: &str = "1500";

/// Stands for the owner a process adopts by default (libc's area where
/// glibc registers, the library's on musl).
const DEFAULT: &str = "default";

/// Runs one stress configuration and checks it.
fn stress(mode: &str, extra: &[&str], env: &[(&str, &str)], owner: &str) {
    static OWNER: std::sync::OnceLock<&str> = std::sync::OnceLock::new();
    let owner = match owner {
        DEFAULT => *OWNER.get_or_init(default_owner),
        other => other,
    };
    let mut args = vec!["stress", mode, "--ops", OPS, "--json"];
    args.extend_from_slice(extra);
    let mut cmd = restartable(&args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let report = json_of(&mut cmd);
    let label = format!("{mode} {}", extra.join(" "));
    check_stress(&report, &label, "rseq", owner);
}

#[test]
fn every_mode_with_default_parameters() {
    if !rseq_here() {
        return;
    }
    for mode in modes() {
        stress(mode, &[], &[], DEFAULT);
    }
}

#[test]
fn every_mode_without_glibc_registration() {
    if !rseq_here() {
        return;
    }
    for mode in modes() {
        stress(
            mode,
            &[],
            &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")],
            "library",
        );
    }
}

#[test]
fn every_mode_indexed_by_mm_cid_with_release_commits() {
    if !rseq_here() {
        return;
    }
    if !mm_cid_available() {
        assert!(!require_rseq(), "this machine's kernel provides mm_cid");
        println!("[matrix] kernel without mm_cid: skipped");
        return;
    }
    // The generated sections' modes are indexed by CPU only.
    for mode in modes().filter(|m| !GENERATED_MODES.contains(m)) {
        stress(mode, &flavour(mode, "mm-cid", "release"), &[], DEFAULT);
    }
}

#[test]
fn each_injection_point_alone() {
    if !rseq_here() {
        return;
    }
    if !has_inject() {
        println!("[matrix] built without `inject`: injection cases skipped (scripts/test.sh runs them in the --all-features pass)");
        return;
    }
    for point in 0..4 {
        let inject = format!("{point}=300");
        for mode in [
            "list",
            "buffer",
            "memcpy",
            "spinlock",
            "increment",
            "stack",
            "pool",
            "drain",
            "percpu",
            "fetch-update",
        ]
        .iter()
        .chain(GENERATED_MODES)
        {
            stress(mode, &["--inject", &inject], &[], DEFAULT);
        }
    }
    // Point 4: every other boundary of a generated section.
    for mode in GENERATED_MODES {
        stress(mode, &["--inject", "4=60"], &[], DEFAULT);
    }
}

#[test]
fn injection_with_yields_signals_and_sleeps() {
    if !rseq_here() {
        return;
    }
    if !has_inject() {
        println!("[matrix] built without `inject`: injection cases skipped");
        return;
    }
    let all = ["--inject", "0=40,1=40,2=150,3=150"];
    for mode in modes() {
        stress(
            mode,
            &[&all[..], &["--yield-every", "7"]].concat(),
            &[],
            DEFAULT,
        );
        stress(
            mode,
            &[&all[..], &["--signal-every", "5", "--signal-us", "0"]].concat(),
            &[],
            DEFAULT,
        );
        stress(
            mode,
            &[&all[..], &["--sleep-every", "1000"]].concat(),
            &[],
            DEFAULT,
        );
        stress(
            mode,
            &[&all[..], &flavour(mode, "cpu", "release")].concat(),
            &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")],
            "library",
        );
    }
}

#[test]
fn threads_that_skip_registration_mix_with_rseq_threads() {
    if !rseq_here() {
        return;
    }
    let inject: &[&str] = if has_inject() {
        &["--inject", "2=200,3=200"]
    } else {
        &[]
    };
    for mode in LIBRARY_MODES {
        for env in [&[][..], &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")][..]] {
            let mut args = vec![
                "stress",
                mode,
                "--ops",
                MIXED_OPS,
                "--threads",
                "8",
                "--skip-registration",
                "3",
                "--json",
            ];
            args.extend_from_slice(inject);
            let mut cmd = restartable(&args);
            for (k, v) in env {
                cmd.env(k, v);
            }
            let report = json_of(&mut cmd);
            println!(
                "[matrix] {mode} {env:?}: path={} owners={} fallback_ops={}",
                report["path"], report["owners"], report["fallback_ops"]
            );
            assert_eq!(report["exact"], true, "{report}");
            assert_eq!(report["path"], "mixed", "{report}");
            assert_eq!(report["rseq_threads"], 5, "{report}");
            assert_eq!(report["fallback_threads"], 3, "{report}");
            assert!(
                report["fallback_ops"].as_u64().unwrap() >= 3 * MIXED_OPS.parse::<u64>().unwrap(),
                "{report}"
            );
        }
    }
    // Raw-section modes have no fallback and say so.
    let out = restartable(&["stress", "list", "--skip-registration", "1", "--ops", "10"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no fallback"));
}

#[test]
fn the_migration_fence_reaches_cpus_outside_the_callers_affinity() {
    if !rseq_here() {
        return;
    }
    // membarrier refused: the fallback paths fence by migrating. Workers are
    // pinned, so each fence targets a CPU outside the fencing thread's own
    // affinity.
    let cases = [
        ("fetch-update", &["--skip-registration", "3"][..]),
        ("fetch-update", &[][..]),
        ("percpu", &["--skip-registration", "3"][..]),
        ("stack", &[][..]),
        ("drain", &["--skip-registration", "3"][..]),
    ];
    for (mode, extra) in cases {
        let mut args = vec![
            "stress",
            mode,
            "--ops",
            OPS,
            "--threads",
            "8",
            "--pin-workers",
            "--json",
        ];
        args.extend_from_slice(extra);
        let mut cmd = restartable(&args);
        with_syscall_filter(
            &mut cmd,
            libc::SYS_membarrier,
            seccompiler::SeccompAction::Errno(libc::ENOSYS as u32),
        );
        let report = json_of(&mut cmd);
        println!(
            "[matrix] migration fence {mode} {extra:?}: {} path={}",
            report["check"], report["path"]
        );
        assert_eq!(report["fence"], "migration", "{report}");
        assert_eq!(report["exact"], true, "{report}");
    }
}
