//! The restart path runs for certain: with delay loops injected inside
//! every section (feature `inject`), sections take most of each thread's
//! time, so the signal storm and preemption (12 threads on 2 CPUs, no
//! voluntary yields) land inside them thousands of times per run; every
//! aborted section is retried, and the counts stay exact. Built only with
//! the `inject` and `abort-stats` features (the --all-features pass of
//! scripts/test.sh).

mod common;

use common::*;

/// A run of the library's counter with a delay inside every section.
const STRESS: &[&str] = &[
    "stress",
    "counter",
    "--ops",
    "2000",
    "--yield-every",
    "0",
    "--signal-us",
    "50",
    "--inject",
    "1=200",
    "--json",
];

fn check_aborts(report: &serde_json::Value, label: &str) {
    let aborts = report["aborts"].as_u64().unwrap_or(0);
    println!("[aborts] {label}: {aborts} aborts");
    assert!(
        aborts > 0,
        "[{label}] sections with injected delays under a signal storm must abort: {report}"
    );
}

#[test]
fn the_signal_storm_aborts_sections_on_the_default_registration() {
    let owner = default_owner();
    let report = json_of(&mut restartable(STRESS));
    if !require_rseq() && report["path"] != "rseq" {
        println!("[aborts] rseq not in use here: nothing can abort");
        return;
    }
    check_stress(&report, owner, "rseq", owner);
    check_aborts(&report, owner);
}

#[test]
fn the_signal_storm_aborts_sections_on_the_library_registration() {
    let mut cmd = restartable(STRESS);
    cmd.env("GLIBC_TUNABLES", "glibc.pthread.rseq=0");
    let report = json_of(&mut cmd);
    if !require_rseq() && report["path"] != "rseq" {
        println!("[aborts] rseq not in use here: nothing can abort");
        return;
    }
    check_stress(&report, "glibc tunable off", "rseq", "library");
    check_aborts(&report, "glibc tunable off");
}

#[test]
fn the_structures_retry_their_aborted_sections() {
    for mode in ["stack", "pool", "drain", "percpu", "fetch-update"] {
        let mut args = STRESS.to_vec();
        args[1] = mode;
        let report = json_of(&mut restartable(&args));
        if !require_rseq() && report["path"] != "rseq" {
            return;
        }
        let owner = default_owner();
        check_stress(&report, &format!("{mode} {owner}"), "rseq", owner);
        check_aborts(&report, mode);
    }
}
