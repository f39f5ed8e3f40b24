//! `restartable stress`: many more threads than CPUs hammer one structure
//! while they yield and a per-thread timer signals them; the handler uses
//! the same structure. The check at the end is exact.

use std::sync::atomic::{AtomicU64, Ordering};

use clap::ValueEnum;
use restartable::Counter;
use serde::Serialize;

use crate::signals;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Every worker adds to one per-CPU `Counter`; the signal handler too.
    Counter,
    /// Thousands of short-lived threads, each registering and counting once.
    Churn,
}

pub struct Options {
    pub mode: Mode,
    pub threads: Option<u32>,
    pub ops: u64,
    pub yield_every: u64,
    pub signal_us: u64,
    pub json: bool,
}

#[derive(Serialize, Default)]
struct Report {
    mode: Option<Mode>,
    threads: u64,
    expected: u64,
    sum: u64,
    exact: bool,
    signals_handled: u64,
    /// Worker threads whose operations ran as rseq critical sections.
    rseq_threads: u64,
    /// Worker threads on the fallback path.
    fallback_threads: u64,
    /// "rseq", "fallback" or "mixed", from the workers' registrations.
    path: &'static str,
    owners: Vec<&'static str>,
    fallback_reason: Option<String>,
    /// Aborted critical sections (null when built without `abort-stats`).
    aborts: Option<u64>,
    /// Operations completed on the fallback path (null without `abort-stats`).
    fallback_ops: Option<u64>,
    /// Operations that fell back after too many consecutive aborts.
    retries_exhausted: Option<u64>,
}

static COUNTER: Counter = Counter::new();
static RSEQ_THREADS: AtomicU64 = AtomicU64::new(0);
static FALLBACK_THREADS: AtomicU64 = AtomicU64::new(0);

fn on_signal() {
    COUNTER.inc();
}

/// Records which path the calling worker took.
fn note_path(
    owners: &std::sync::Mutex<Vec<&'static str>>,
    reason: &std::sync::Mutex<Option<String>>,
) {
    let reg = restartable::registration();
    if reg.rseq_available() {
        RSEQ_THREADS.fetch_add(1, Ordering::Relaxed);
    } else {
        FALLBACK_THREADS.fetch_add(1, Ordering::Relaxed);
        if let (Ok(mut r), Some(why)) = (reason.lock(), reg.fallback) {
            r.get_or_insert_with(|| why.to_string());
        }
    }
    if let Ok(mut o) = owners.lock() {
        if !o.contains(&reg.owner.as_str()) {
            o.push(reg.owner.as_str());
        }
    }
}

pub fn run(opts: Options) -> Result<(), String> {
    // First use outside any signal handler: allocates the slots.
    COUNTER.add(0);
    let owners = std::sync::Mutex::new(Vec::new());
    let reason = std::sync::Mutex::new(None);
    let (threads, expected_ops) = match opts.mode {
        Mode::Counter => {
            let threads = opts
                .threads
                .map_or(6 * restartable::online_cpus() as u64, u64::from);
            if opts.signal_us > 0 {
                signals::install(on_signal)?;
            }
            let failures = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|_| {
                        s.spawn(|| -> Result<(), String> {
                            let _timer = if opts.signal_us > 0 {
                                Some(signals::ThreadTimer::start(opts.signal_us)?)
                            } else {
                                None
                            };
                            for i in 1..=opts.ops {
                                COUNTER.inc();
                                if opts.yield_every > 0 && i % opts.yield_every == 0 {
                                    std::thread::yield_now();
                                }
                            }
                            note_path(&owners, &reason);
                            Ok(())
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .filter_map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err("worker panicked".to_owned()))
                            .err()
                    })
                    .collect::<Vec<_>>()
            });
            if let Some(first) = failures.first() {
                return Err(first.clone());
            }
            (threads, threads * opts.ops)
        }
        Mode::Churn => {
            let threads = opts.threads.map_or(4000, u64::from);
            // At most 64 alive at once, so churn is fast and creation is
            // the bulk of the work.
            let mut started = 0;
            while started < threads {
                let batch = (threads - started).min(64);
                std::thread::scope(|s| {
                    for _ in 0..batch {
                        s.spawn(|| {
                            COUNTER.inc();
                            note_path(&owners, &reason);
                        });
                    }
                });
                started += batch;
            }
            (threads, threads)
        }
    };
    let handled = signals::DELIVERED.load(Ordering::Relaxed);
    let expected = expected_ops + handled;
    let sum = COUNTER.sum();
    let rseq_threads = RSEQ_THREADS.load(Ordering::Relaxed);
    let fallback_threads = FALLBACK_THREADS.load(Ordering::Relaxed);
    let stats = restartable::stats::stats();
    let report = Report {
        mode: Some(opts.mode),
        threads,
        expected,
        sum,
        exact: sum == expected,
        signals_handled: handled,
        rseq_threads,
        fallback_threads,
        path: match (rseq_threads, fallback_threads) {
            (_, 0) => "rseq",
            (0, _) => "fallback",
            _ => "mixed",
        },
        owners: owners.into_inner().unwrap_or_default(),
        fallback_reason: reason.into_inner().unwrap_or_default(),
        aborts: stats.map(|s| s.aborts),
        fallback_ops: stats.map(|s| s.fallback_ops),
        retries_exhausted: stats.map(|s| s.retries_exhausted),
    };
    if opts.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        println!(
            "stress {:?}: {} threads, path {} (owners: {}), sum {} expected {} ({} from signal handlers): {}",
            opts.mode,
            report.threads,
            report.path,
            report.owners.join(", "),
            report.sum,
            report.expected,
            report.signals_handled,
            if report.exact { "exact" } else { "MISMATCH" }
        );
        if let Some(why) = &report.fallback_reason {
            println!("fallback reason: {why}");
        }
        match stats {
            Some(s) => println!(
                "aborts {}, fallback ops {}, retries exhausted {}",
                s.aborts, s.fallback_ops, s.retries_exhausted
            ),
            None => println!("aborts: not counted (build with --features abort-stats)"),
        }
    }
    if report.exact {
        Ok(())
    } else {
        Err(format!(
            "lost or duplicated updates: sum {sum}, expected {expected}"
        ))
    }
}
