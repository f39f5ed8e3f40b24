//! `restartable stress` without a mode: a quick matrix. Every mode runs
//! briefly in a process of its own (each has its own statics and signal
//! counts) with the options given, and gets one line: the path it ran on,
//! its aborts and fallback operations, and whether its check was exact.

use std::process::{Command, Stdio};

use super::{Mode, Options, Report};

/// Operations per worker of each mode when `--ops` is not given.
const QUICK_OPS: u64 = 2000;
/// Threads of the churn mode when `--threads` is not given.
const QUICK_CHURN: u32 = 500;

pub fn run(opts: &Options) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let rseq = restartable::registration().rseq_available() && restartable::HAS_CRITICAL_SECTIONS;
    // What would fail in every mode is refused before any runs.
    opts.check_skip_registration(opts.workers(Mode::Counter))?;
    let mut reports = Vec::new();
    let mut failed = Vec::new();
    let mut timed_out = Vec::new();
    if !opts.json {
        println!(
            "restartable stress: every mode, {} ops per worker ({} threads){}",
            opts.ops.unwrap_or(QUICK_OPS),
            opts.threads
                .map_or_else(|| "6 x usable CPUs".to_owned(), |t| t.to_string()),
            if rseq {
                String::new()
            } else {
                "; rseq is not in use in this process, so the raw-section modes are skipped"
                    .to_owned()
            }
        );
        println!(
            "{:<13} {:<8} {:>14} {:>9} {:>9} {:>8}  result",
            "mode", "path", "operations", "aborts", "fallback", "seconds"
        );
        println!(
            "(operations: the workers'; aborts and fallback: the library's own sections and operations, each push, pop, lock or add)"
        );
    }
    for mode in Mode::ALL {
        if mode.raw_sections() && !rseq {
            let why = "drives raw critical sections, which need rseq";
            if !opts.json {
                println!("{:<13} skipped: {why}", mode.name());
            }
            reports.push(serde_json::json!({
                "mode": mode.name(), "status": "skipped", "message": why,
            }));
            continue;
        }
        let out = command(&exe, mode, opts)
            .output()
            .map_err(|e| format!("cannot run stress {}: {e}", mode.name()))?;
        let report: Option<Report> = serde_json::from_slice(&out.stdout).ok();
        let problem = match (&report, out.status.success()) {
            (Some(r), true) if r.exact => None,
            _ => Some(
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("failed")
                    .to_owned(),
            ),
        };
        // Exit status 3: the mode's watchdog gave up, which says nothing
        // about exactness (`--timeout`).
        let slow = out.status.code() == Some(super::watchdog::TIMED_OUT);
        if !opts.json {
            print_line(mode, report.as_ref(), problem.as_deref(), slow);
        }
        let status = match (problem.is_some(), slow) {
            (true, true) => {
                timed_out.push(mode.name());
                "timed_out"
            }
            (true, false) => {
                failed.push(mode.name());
                "failed"
            }
            _ => "exact",
        };
        // Every mode gets an entry: its report with a status, or the status
        // and the message when it printed no report.
        let mut entry = report
            .map(|r| serde_json::to_value(r).unwrap_or_default())
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| serde_json::json!({ "mode": mode.name() }));
        entry["status"] = status.into();
        if let Some(p) = problem {
            entry["message"] = p.into();
        }
        reports.push(entry);
    }
    if opts.json {
        let text = serde_json::to_string_pretty(&reports).map_err(|e| e.to_string())?;
        println!("{text}");
    }
    if !failed.is_empty() {
        return Err(format!("stress failed in: {}", failed.join(", ")));
    }
    if !timed_out.is_empty() {
        eprintln!(
            "restartable: stress timed out in: {} (raise --timeout, 0 waits forever, or lower --ops/--threads)",
            timed_out.join(", ")
        );
        std::process::exit(super::watchdog::TIMED_OUT);
    }
    Ok(())
}

/// `stress MODE --json` with the options that apply to the mode.
fn command(exe: &std::path::Path, mode: Mode, opts: &Options) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(["stress", mode.name(), "--json"]);
    let threads = match (opts.threads, mode) {
        (None, Mode::Churn) => Some(QUICK_CHURN),
        (t, _) => t,
    };
    if let Some(t) = threads {
        cmd.arg("--threads").arg(t.to_string());
    }
    if mode != Mode::Churn {
        cmd.arg("--ops")
            .arg(opts.ops.unwrap_or(QUICK_OPS).to_string());
    }
    for (flag, value) in [
        ("--yield-every", opts.yield_every),
        ("--signal-every", opts.signal_every),
        ("--sleep-every", opts.sleep_every),
        ("--signal-us", opts.signal_us),
        ("--timeout", opts.timeout),
    ] {
        cmd.arg(flag).arg(value.to_string());
    }
    if !opts.inject.is_empty() {
        let points: Vec<String> = opts
            .inject
            .iter()
            .map(|(p, l)| format!("{p}={l}"))
            .collect();
        cmd.arg("--inject").arg(points.join(","));
    }
    if let (Some(index), true) = (opts.index, mode.takes_index()) {
        cmd.arg("--index").arg(index.name());
    }
    if let (Some(order), true) = (opts.order, mode.takes_order()) {
        cmd.arg("--order").arg(order.name());
    }
    if mode.on_library() && opts.skip_registration > 0 {
        cmd.arg("--skip-registration")
            .arg(opts.skip_registration.to_string());
    }
    if opts.pin_workers && mode != Mode::Churn {
        cmd.arg("--pin-workers");
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

fn print_line(mode: Mode, report: Option<&Report>, problem: Option<&str>, slow: bool) {
    let Some(r) = report else {
        println!(
            "{:<13} {}: {}",
            mode.name(),
            if slow { "TIMED OUT" } else { "FAILED" },
            problem.unwrap_or("no report")
        );
        return;
    };
    let count = |n: Option<u64>| n.map_or("-".to_owned(), |n| n.to_string());
    let result = match problem {
        None => "exact".to_owned(),
        Some(p) => format!("MISMATCH: {} ({p})", r.check),
    };
    println!(
        "{:<13} {:<8} {:>14} {:>9} {:>9} {:>8.2}  {result}",
        mode.name(),
        r.path,
        r.ops,
        count(r.aborts),
        count(r.fallback_ops),
        r.seconds
    );
}
