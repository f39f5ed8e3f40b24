//! Running the `restartable` binary in child processes with a chosen
//! environment, and reading its JSON.

#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_restartable");

/// The stress modes that drive raw critical sections: they need rseq, and
/// take `--index` and `--order`.
pub const RAW_MODES: &[&str] = &[
    "increment",
    "spinlock",
    "list",
    "buffer",
    "memcpy",
    "deref-add",
];

/// True when the suite must see the rseq path (set by scripts/test.sh on
/// machines known to support it).
pub fn require_rseq() -> bool {
    std::env::var_os("RESTARTABLE_REQUIRE_RSEQ").is_some_and(|v| v == "1")
}

/// A command for the binary with a clean rseq-related environment.
pub fn restartable(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("RESTARTABLE_DISABLE")
        .env_remove("GLIBC_TUNABLES");
    cmd
}

/// Installs, in the child before exec, a seccomp filter that answers the
/// rseq system call with `action` (every other call is allowed).
pub fn with_rseq_filter(cmd: &mut Command, action: seccompiler::SeccompAction) {
    with_syscall_filter(cmd, libc::SYS_rseq, action);
}

/// Installs, in the child before exec, a seccomp filter that answers system
/// call `nr` with `action` (every other call is allowed).
pub fn with_syscall_filter(
    cmd: &mut Command,
    nr: libc::c_long,
    action: seccompiler::SeccompAction,
) {
    with_syscalls_filter(cmd, &[nr], action);
}

/// [`with_syscall_filter`] for several system calls.
pub fn with_syscalls_filter(
    cmd: &mut Command,
    nrs: &[libc::c_long],
    action: seccompiler::SeccompAction,
) {
    let filter = seccompiler::SeccompFilter::new(
        nrs.iter().map(|&nr| (nr, vec![])).collect(),
        seccompiler::SeccompAction::Allow,
        action,
        std::env::consts::ARCH
            .try_into()
            .expect("seccompiler supports this architecture"),
    )
    .expect("valid seccomp filter");
    let program: seccompiler::BpfProgram = filter.try_into().expect("filter compiles to BPF");
    // SAFETY: between fork and exec the closure only calls prctl and seccomp
    // through apply_filter on a program built before the fork.
    unsafe {
        cmd.pre_exec(move || seccompiler::apply_filter(&program).map_err(std::io::Error::other));
    }
}

/// Runs the command, insists it succeeded, and parses its stdout as JSON.
pub fn json_of(cmd: &mut Command) -> Value {
    let out = cmd.output().expect("spawn restartable");
    assert_success(&out);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "restartable failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The owner of the rseq area a process of the binary adopts by default:
/// "libc" where glibc registers its threads (2.35+, the tunable on), else
/// "library" (musl, older glibc, the tunable off in the environment).
pub fn default_owner() -> &'static str {
    // On glibc (2.35+ here) a run that insists on rseq insists on glibc's
    // registration too, so a glibc that silently stopped registering fails.
    if require_rseq() && cfg!(target_env = "gnu") {
        return "libc";
    }
    let info = json_of(&mut restartable(&["info", "--json"]));
    match info["libc_rseq_size"].as_u64() {
        Some(size) if size != 0 => "libc",
        _ => "library",
    }
}

/// The fallback operations of a report for one cause.
pub fn cause(report: &Value, cause: &str) -> u64 {
    report["fallback_causes"][cause]
        .as_u64()
        .unwrap_or_else(|| panic!("report lacks fallback_causes.{cause}: {report}"))
}

/// Checks a `stress --json` report: exact, on the expected path, and says so.
pub fn check_stress(report: &Value, label: &str, path: &str, owner: &str) {
    println!(
        "[{label}] path={} owners={} aborts={} fallback_ops={} causes={} reason={}",
        report["path"],
        report["owners"],
        report["aborts"],
        report["fallback_ops"],
        report["fallback_causes"],
        report["fallback_reason"]
    );
    assert_eq!(
        report["exact"], true,
        "[{label}] the check is not exact: {report}"
    );
    assert_eq!(report["sum"], report["expected"], "[{label}] {report}");
    assert_eq!(
        report["signal_sum"], report["signal_expected"],
        "[{label}] the signal handler's counter: {report}"
    );
    assert_eq!(report["path"], path, "[{label}] wrong path: {report}");
    assert_eq!(
        report["owners"],
        serde_json::json!([owner]),
        "[{label}] {report}"
    );
    assert!(
        report["aborts"].is_u64(),
        "[{label}] tests run with abort-stats: {report}"
    );
    let causes: u64 = report["fallback_causes"]
        .as_object()
        .unwrap_or_else(|| panic!("[{label}] no fallback_causes: {report}"))
        .values()
        .map(|v| v.as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        report["fallback_ops"].as_u64(),
        Some(causes),
        "[{label}] fallback_ops is the sum of the causes: {report}"
    );
    let threads = report["threads"].as_u64().unwrap();
    if path == "rseq" {
        assert_eq!(
            report["rseq_threads"].as_u64(),
            Some(threads),
            "[{label}] {report}"
        );
        // No operation of a thread with rseq counts as a thread without.
        assert_eq!(cause(report, "no_rseq"), 0, "[{label}] {report}");
    } else {
        assert_eq!(
            report["fallback_threads"].as_u64(),
            Some(threads),
            "[{label}] {report}"
        );
        assert_eq!(
            report["aborts"], 0,
            "[{label}] no section can abort on the fallback path: {report}"
        );
        // Every operation of the workers (and of the signal handler) took
        // the fallback path for want of rseq.
        assert!(
            cause(report, "no_rseq") >= report["ops"].as_u64().unwrap(),
            "[{label}] {report}"
        );
        assert_eq!(cause(report, "no_rseq"), causes, "[{label}] {report}");
    }
}
