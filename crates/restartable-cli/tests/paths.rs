//! Every way a process can end up on the rseq or the fallback path, each
//! checked in a child process: who registered, and exact counting under
//! 6 x CPUs threads, yields and a per-thread signal storm whose handler
//! counts too. Each test prints the path it exercised.

mod common;

use common::*;
use seccompiler::SeccompAction;

/// Arguments of the stress run used in every environment.
const STRESS: &[&str] = &[
    "stress",
    "counter",
    "--ops",
    "30000",
    "--yield-every",
    "37",
    "--signal-us",
    "50",
    "--json",
];

#[test]
fn info_reports_libc_registration_by_default() {
    let info = json_of(&mut restartable(&["info", "--json"]));
    println!(
        "[default] owner={} rseq_available={} feature_size={}",
        info["owner"], info["rseq_available"], info["feature_size"]
    );
    for key in [
        "rseq_available",
        "owner",
        "feature_size",
        "cpu_id",
        "node_id",
        "mm_cid",
        "possible_cpus",
        "membarrier_rseq",
        "fallback_reason",
    ] {
        assert!(info.get(key).is_some(), "info --json lacks `{key}`: {info}");
    }
    let cpu = info["cpu_id"].as_u64().unwrap();
    assert!(cpu < info["possible_cpus"].as_u64().unwrap());
    let libc_registered = info["libc_rseq_size"].as_u64().is_some_and(|s| s != 0);
    if libc_registered {
        assert_eq!(
            info["owner"], "libc",
            "glibc registered rseq, so the library must adopt it: {info}"
        );
        assert_eq!(info["rseq_available"], true);
        assert_eq!(info["fallback_reason"], serde_json::Value::Null);
        let feature = info["feature_size"].as_u64().unwrap();
        assert!(feature >= 20);
        assert_eq!(
            info["mm_cid"].is_u64(),
            feature >= 28,
            "mm_cid present iff the feature size covers it: {info}"
        );
    }
}

// That the signal storm really aborts sections, and the restart path runs,
// is made certain with injected delays: see tests/aborts.rs (built with the
// `inject` feature). Here the storm only has to leave the counts exact.

#[test]
fn stress_on_the_default_registration() {
    let owner = default_owner();
    let report = json_of(&mut restartable(STRESS));
    if require_rseq() || report["path"] == "rseq" {
        check_stress(&report, owner, "rseq", owner);
    } else {
        check_stress(&report, owner, "fallback", "none");
    }
}

#[test]
fn stress_on_library_registration_when_glibc_does_not_register() {
    let mut cmd = restartable(STRESS);
    cmd.env("GLIBC_TUNABLES", "glibc.pthread.rseq=0");
    let report = json_of(&mut cmd);
    if require_rseq() || report["path"] == "rseq" {
        check_stress(&report, "glibc tunable off", "rseq", "library");
    } else {
        check_stress(&report, "glibc tunable off", "fallback", "none");
    }
}

#[test]
fn opt_out_uses_the_fallback() {
    let mut cmd = restartable(STRESS);
    cmd.env("RESTARTABLE_DISABLE", "1");
    let report = json_of(&mut cmd);
    check_stress(&report, "RESTARTABLE_DISABLE=1", "fallback", "none");
    assert!(
        report["fallback_reason"]
            .as_str()
            .unwrap()
            .contains("RESTARTABLE_DISABLE"),
        "{report}"
    );
}

#[test]
fn opt_out_never_makes_the_rseq_syscall() {
    // A sandbox that kills the process on rseq: with glibc's registration
    // off and the opt-out set, the program must still run.
    let mut cmd = restartable(STRESS);
    cmd.env("GLIBC_TUNABLES", "glibc.pthread.rseq=0")
        .env("RESTARTABLE_DISABLE", "1");
    with_rseq_filter(&mut cmd, SeccompAction::KillProcess);
    let report = json_of(&mut cmd);
    check_stress(&report, "seccomp kill + opt-out", "fallback", "none");

    // And the filter really kills: without the opt-out the library calls
    // rseq and dies of SIGSYS.
    let mut cmd = restartable(&["info", "--json"]);
    cmd.env("GLIBC_TUNABLES", "glibc.pthread.rseq=0");
    with_rseq_filter(&mut cmd, SeccompAction::KillProcess);
    let out = cmd.output().expect("spawn");
    assert!(
        !out.status.success(),
        "the kill filter did not fire; this test proves nothing"
    );
}

#[test]
fn seccomp_enosys_uses_the_fallback() {
    let mut cmd = restartable(STRESS);
    with_rseq_filter(&mut cmd, SeccompAction::Errno(libc::ENOSYS as u32));
    let report = json_of(&mut cmd);
    check_stress(&report, "seccomp ENOSYS", "fallback", "none");
    assert!(
        report["fallback_reason"]
            .as_str()
            .unwrap()
            .contains("ENOSYS"),
        "{report}"
    );
}

#[test]
fn seccomp_eperm_uses_the_fallback() {
    let mut cmd = restartable(STRESS);
    with_rseq_filter(&mut cmd, SeccompAction::Errno(libc::EPERM as u32));
    let report = json_of(&mut cmd);
    check_stress(&report, "seccomp EPERM", "fallback", "none");
    assert!(
        report["fallback_reason"]
            .as_str()
            .unwrap()
            .contains("EPERM"),
        "{report}"
    );
}

/// Valgrind suppressions for this build: musl's malloc reads words valgrind
/// thinks uninitialised (`enframe`), and so does mimalloc's start-up (a
/// benchmark baseline linked into the command, which starts up even when
/// unused): known false positives.
fn valgrind_suppressions() -> Vec<String> {
    let mut files = vec![concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mimalloc.supp")];
    if cfg!(target_env = "musl") {
        files.push(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/musl.supp"));
    }
    files
        .iter()
        .map(|f| format!("--suppressions={f}"))
        .collect()
}

#[test]
fn valgrind_uses_the_fallback() {
    let mut cmd = std::process::Command::new("valgrind");
    cmd.args(["--quiet", "--error-exitcode=99"])
        .args(valgrind_suppressions())
        .arg(BIN)
        .args([
            "stress",
            "counter",
            "--threads",
            "4",
            "--ops",
            "3000",
            "--yield-every",
            "37",
            "--signal-us",
            "200",
            "--json",
        ])
        .env_remove("RESTARTABLE_DISABLE")
        .env_remove("GLIBC_TUNABLES");
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => panic!("valgrind is required by this test (scripts/test.sh installs it): {e}"),
    };
    assert_success(&out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    check_stress(&report, "valgrind", "fallback", "none");
    assert!(
        report["fallback_reason"]
            .as_str()
            .unwrap()
            .contains("ENOSYS"),
        "{report}"
    );
}

#[test]
fn thread_churn_counts_exactly() {
    let report = json_of(&mut restartable(&[
        "stress",
        "churn",
        "--threads",
        "3000",
        "--json",
    ]));
    if require_rseq() || report["path"] == "rseq" {
        let owner = default_owner();
        check_stress(&report, &format!("churn, {owner}"), "rseq", owner);
    }
    assert_eq!(report["sum"], 3000);

    let mut cmd = restartable(&["stress", "churn", "--threads", "3000", "--json"]);
    cmd.env("GLIBC_TUNABLES", "glibc.pthread.rseq=0");
    let report = json_of(&mut cmd);
    if require_rseq() || report["path"] == "rseq" {
        check_stress(&report, "churn, library", "rseq", "library");
    }
    assert_eq!(report["sum"], 3000);
}

/// The library's structures with a manager thread, on the fallback path
/// (seccomp ENOSYS: nothing registers), exact.
#[test]
fn library_structures_are_exact_on_the_fallback_path() {
    for mode in ["fetch-update", "percpu", "stack", "pool", "drain"] {
        let mut cmd = restartable(&[
            "stress",
            mode,
            "--ops",
            "4000",
            "--yield-every",
            "37",
            "--json",
        ]);
        with_rseq_filter(&mut cmd, SeccompAction::Errno(libc::ENOSYS as u32));
        let report = json_of(&mut cmd);
        check_stress(
            &report,
            &format!("{mode} seccomp ENOSYS"),
            "fallback",
            "none",
        );
        // The workers start once the manager's first round has begun, so
        // at least one round overlapped them (fetch-update has no manager).
        if mode != "fetch-update" {
            assert!(
                report["manager_rounds"].as_u64().is_some_and(|r| r >= 1),
                "{report}"
            );
        }
    }
}

/// Under valgrind (which refuses rseq) the structures' fallback paths run
/// with every memory access checked: a use after free or a leak of a
/// node, object or record fails the run.
#[test]
fn library_structures_are_clean_under_valgrind() {
    if cfg!(target_env = "musl") {
        // A static musl binary's allocations are invisible to valgrind (it
        // cannot replace malloc there), so a leak check would see nothing.
        println!("[paths] musl: valgrind cannot check a static binary's heap, skipped");
        return;
    }
    for mode in ["percpu", "stack", "pool", "drain"] {
        let out = std::process::Command::new("valgrind")
            // The leak check sees only the C allocator's heap.
            .env("RESTARTABLE_CLI_ALLOCATOR", "system")
            .args(valgrind_suppressions())
            .args([
                "--quiet",
                "--error-exitcode=99",
                "--leak-check=full",
                "--errors-for-leak-kinds=definite",
                BIN,
            ])
            .args([
                "stress",
                mode,
                "--threads",
                "4",
                "--ops",
                "500",
                "--signal-us",
                "0",
                "--json",
            ])
            .env_remove("RESTARTABLE_DISABLE")
            .env_remove("GLIBC_TUNABLES")
            .output()
            .expect("valgrind is required by this test (scripts/test.sh installs it)");
        assert_success(&out);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
        check_stress(&report, &format!("{mode} valgrind"), "fallback", "none");
    }
}

/// The fence's status: membarrier here; migration when seccomp refuses
/// membarrier; unavailable when it also refuses `sched_setaffinity`, and
/// then remote work fails with a clear error instead of hanging.
#[test]
fn the_fence_reports_its_method_and_fails_clearly_without_one() {
    let info = json_of(&mut restartable(&["info", "--json"]));
    println!("[paths] fence: {}", info["fence"]);
    assert!(
        info["fence"] == "membarrier" || info["fence"] == "migration",
        "{info}"
    );

    let mut cmd = restartable(&["info", "--json"]);
    with_syscall_filter(
        &mut cmd,
        libc::SYS_membarrier,
        SeccompAction::Errno(libc::EPERM as u32),
    );
    assert_eq!(json_of(&mut cmd)["fence"], "migration");

    let refuse_both = |cmd: &mut std::process::Command| {
        with_syscalls_filter(
            cmd,
            &[libc::SYS_membarrier, libc::SYS_sched_setaffinity],
            SeccompAction::Errno(libc::EPERM as u32),
        )
    };
    let mut cmd = restartable(&["info", "--json"]);
    refuse_both(&mut cmd);
    let info = json_of(&mut cmd);
    assert!(
        info["fence"].as_str().unwrap().starts_with("unavailable"),
        "{info}"
    );

    if info["rseq_available"] == true {
        // Sections run, so the manager's remote work needs a fence.
        for mode in ["percpu", "drain"] {
            let mut cmd = restartable(&["stress", mode, "--ops", "2000", "--timeout", "60"]);
            refuse_both(&mut cmd);
            let out = cmd.output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            println!("[paths] {mode} without any fence: {}", stderr.trim());
            assert_eq!(out.status.code(), Some(1), "{stderr}");
            assert!(stderr.contains("no rseq fence"), "{stderr}");
        }
    }
}

/// The fallback path makes no system call per operation: every structure,
/// driven by the benchmark with RESTARTABLE_DISABLE=1, under `strace -f -c`.
/// A few hundred calls start the threads; a call per operation would be
/// millions.
#[test]
fn the_fallback_path_makes_no_system_call_per_operation() {
    let ops: u64 = 100_000;
    let threads = 2;
    let variants = "pool,stack,buffer,counter,percpu_u64,percpu";
    let summary =
        std::env::temp_dir().join(format!("restartable-strace-{}.txt", std::process::id()));
    let out = std::process::Command::new("strace")
        .args(["-f", "-c", "-o"])
        .arg(&summary)
        .arg(BIN)
        .args(["bench", "structures", "--path", "fallback", "--json"])
        .args(["--threads", &threads.to_string(), "--ops", &ops.to_string()])
        .args(["--variants", variants])
        .env_remove("GLIBC_TUNABLES")
        .output()
        .expect("strace is required by this test (scripts/test.sh installs it)");
    assert_success(&out);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON rows");
    let rows = rows.as_array().expect("rows");
    for row in rows {
        assert_eq!(row["path"], "fallback", "{row}");
        assert_eq!(row["exact"], true, "{row}");
    }
    let table = std::fs::read_to_string(&summary).expect("strace's summary");
    let _ = std::fs::remove_file(&summary);
    // The last line: "100.00  seconds  usecs/call  calls  errors  total".
    let total: u64 = table
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with("total"))
        .and_then(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            // calls is the fourth column; an empty errors column shifts it.
            fields.get(3).and_then(|f| f.parse().ok())
        })
        .unwrap_or_else(|| panic!("no total in strace's summary:\n{table}"));
    // sched_yield is how a waiter waits (the benchmark's producer on a full
    // buffer, a thread whose CPU's guard a preempted thread holds): how
    // often depends on the scheduler, not on the operations, and a loaded
    // machine makes thousands. Every other call is counted strictly; yields
    // only against one per operation.
    let yields: u64 = table
        .lines()
        .find(|l| l.trim_end().ends_with(" sched_yield"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(0);
    let operations = rows.len() as u64 * threads * ops;
    println!(
        "[paths] fallback path: {total} system calls ({yields} sched_yield) for {operations} operations\n{table}"
    );
    assert!(
        (total - yields.min(total)) * 100 < operations,
        "{total} system calls ({yields} sched_yield) for {operations} operations on the fallback path:\n{table}"
    );
    assert!(
        yields * 4 < operations,
        "{yields} sched_yield calls for {operations} operations on the fallback path:\n{table}"
    );
}
