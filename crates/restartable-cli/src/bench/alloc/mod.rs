//! `restartable bench alloc`: the per-CPU allocator (`restartable-malloc`)
//! against the C library's malloc (`libc`: glibc's, or musl's in a musl
//! build), mimalloc and jemalloc (their crates, built from source; not in
//! musl builds, which have no C compiler for the target) and gperftools'
//! tcmalloc (Debian's `libtcmalloc_minimal.so.4`, opened at run time;
//! left out with a note where it is not installed), each called through
//! `GlobalAlloc`, on the workloads of [`Work`].
//!
//! Every row (allocator, workload, threads) runs in a fresh process of
//! this program (`--child`), so that its peak resident memory is its own:
//! the child runs a short warm-up, restarts the kernel's peak
//! (`/proc/self/clear_refs`), runs the measured run and reports the peak
//! (`VmHWM`) with the throughput. The ratios compare rows of the same
//! invocation, at the same workload and thread count.

mod rss;
#[cfg(not(target_env = "musl"))]
mod tcmalloc;
mod workloads;

use std::alloc::{GlobalAlloc, System};
use std::path::PathBuf;

use clap::ValueEnum;
use restartable_malloc::RestartableMalloc;
use serde::{Deserialize, Serialize};

use self::workloads::Bench;
pub use self::workloads::Work;
use super::harness::{self, Budget, Plan};
use super::plot;
use super::report;
use super::RunArgs;

/// The allocators compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Allocator {
    /// restartable-malloc: per-CPU caches through rseq critical sections.
    Restartable,
    /// The C library's malloc (glibc's: per-thread caches, then arenas).
    Libc,
    /// mimalloc (per-thread heaps, free lists per page).
    #[cfg(not(target_env = "musl"))]
    Mimalloc,
    /// jemalloc (per-thread caches, arenas by CPU count).
    #[cfg(not(target_env = "musl"))]
    Jemalloc,
    /// gperftools' tcmalloc (per-thread caches), from Debian's library.
    #[cfg(not(target_env = "musl"))]
    Tcmalloc,
}

impl Allocator {
    const ALL: &'static [Allocator] = &[
        Allocator::Restartable,
        Allocator::Libc,
        #[cfg(not(target_env = "musl"))]
        Allocator::Mimalloc,
        #[cfg(not(target_env = "musl"))]
        Allocator::Jemalloc,
        #[cfg(not(target_env = "musl"))]
        Allocator::Tcmalloc,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Allocator::Restartable => "restartable",
            Allocator::Libc => "libc",
            #[cfg(not(target_env = "musl"))]
            Allocator::Mimalloc => "mimalloc",
            #[cfg(not(target_env = "musl"))]
            Allocator::Jemalloc => "jemalloc",
            #[cfg(not(target_env = "musl"))]
            Allocator::Tcmalloc => "tcmalloc",
        }
    }

    fn about(self) -> &'static str {
        match self {
            Allocator::Restartable => "per-CPU caches, rseq",
            Allocator::Libc => "the C library's malloc",
            #[cfg(not(target_env = "musl"))]
            Allocator::Mimalloc => "mimalloc crate",
            #[cfg(not(target_env = "musl"))]
            Allocator::Jemalloc => "tikv-jemallocator crate",
            #[cfg(not(target_env = "musl"))]
            Allocator::Tcmalloc => "gperftools, Debian's library",
        }
    }
}

/// One row: what a child measured, and the ratios the parent adds.
#[derive(Serialize, Deserialize)]
struct Row {
    allocator: Allocator,
    workload: Work,
    threads: u32,
    ns_per_op: f64,
    mops: f64,
    exact: bool,
    /// The process's peak resident memory during the measured run, in
    /// KiB (the program itself included: a few MiB, the same for every
    /// row).
    peak_rss_kib: Option<u64>,
    /// This row's throughput over the C library malloc's at the same
    /// workload and thread count: above 1, this allocator is faster.
    #[serde(default)]
    speedup_vs_libc: Option<f64>,
    /// This row's throughput over the fastest other allocator's at the
    /// same workload and thread count: at least 1, this one leads.
    #[serde(default)]
    speedup_vs_fastest_other: Option<f64>,
    /// This row's peak RSS over the leanest other allocator's at the same
    /// workload and thread count: at most 1, this one is the leanest.
    #[serde(default)]
    rss_vs_leanest_other: Option<f64>,
}

/// Runs one row's measurement in this process (`--child`): warm-up,
/// peak reset, measured run.
fn measure_here(a: Allocator, w: Work, threads: u32, budget: Budget) -> Result<Row, String> {
    fn go<A: GlobalAlloc + Sync>(
        a: A,
        w: Work,
        t: u32,
        b: Budget,
    ) -> Result<(harness::Measured, bool, Option<u64>), String> {
        let bench = Bench::new(a, w);
        harness::run(&bench, t, harness::warm_up(b))?;
        bench.finish();
        rss::reset_peak();
        let m = harness::run(&bench, t, b)?;
        let peak = rss::peak_kib();
        Ok((m, bench.finish(), peak))
    }
    let (m, exact, peak) = match a {
        Allocator::Restartable => go(RestartableMalloc, w, threads, budget)?,
        Allocator::Libc => go(System, w, threads, budget)?,
        #[cfg(not(target_env = "musl"))]
        Allocator::Mimalloc => go(mimalloc::MiMalloc, w, threads, budget)?,
        #[cfg(not(target_env = "musl"))]
        Allocator::Jemalloc => go(tikv_jemallocator::Jemalloc, w, threads, budget)?,
        #[cfg(not(target_env = "musl"))]
        Allocator::Tcmalloc => go(tcmalloc::load()?, w, threads, budget)?,
    };
    Ok(Row {
        allocator: a,
        workload: w,
        threads,
        ns_per_op: m.ns_per_op,
        mops: m.mops,
        exact,
        peak_rss_kib: peak,
        speedup_vs_libc: None,
        speedup_vs_fastest_other: None,
        rss_vs_leanest_other: None,
    })
}

/// Runs one row in a child process of this program.
fn measure_in_child(args: &RunArgs, a: Allocator, w: Work, threads: u32) -> Result<Row, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["bench", "alloc", "--child", "--json"])
        .args(["--allocators", a.as_str(), "--workloads", w.as_str()])
        .args(["--threads", &threads.to_string()]);
    match args.ops {
        Some(n) => cmd.args(["--ops", &n.to_string()]),
        None => cmd.args(["--duration", &args.duration.to_string()]),
    };
    let out = cmd
        .output()
        .map_err(|e| format!("cannot start a benchmark process: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{} {} x{threads}: {}",
            a.as_str(),
            w.as_str(),
            err.trim().strip_prefix("error: ").unwrap_or(err.trim())
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "{} {} x{threads}: unreadable result ({e})",
            a.as_str(),
            w.as_str()
        )
    })
}

/// `bench alloc`'s options beyond the shared ones.
pub struct Options {
    pub allocators: Vec<Allocator>,
    pub workloads: Vec<Work>,
    pub plot: Option<PathBuf>,
    /// Measure one row here and print it (what the parent starts).
    pub child: bool,
}

pub fn run(args: &RunArgs, opts: Options) -> Result<(), String> {
    let plan = Plan::new(args);
    if opts.child {
        let (&[a], &[w], &[t]) = (&opts.allocators[..], &opts.workloads[..], &plan.threads[..])
        else {
            return Err("--child measures one allocator, workload and thread count".to_owned());
        };
        let row = measure_here(a, w, t, plan.budget)?;
        println!(
            "{}",
            serde_json::to_string(&row).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    if let Some(path) = &opts.plot {
        plot::check_writable(path)?;
    }
    let asked = !opts.allocators.is_empty();
    let mut allocators = if asked {
        opts.allocators
    } else {
        Allocator::ALL.to_vec()
    };
    let mut notes = Vec::new();
    #[cfg(not(target_env = "musl"))]
    if allocators.contains(&Allocator::Tcmalloc) {
        // Checked here, not in a child: a missing library drops the
        // allocator (with a note) unless it was asked for by name.
        if let Err(e) = tcmalloc::load() {
            if asked {
                return Err(e);
            }
            notes.push(format!("tcmalloc left out: {e}"));
            allocators.retain(|&a| a != Allocator::Tcmalloc);
        }
    }
    let works = if opts.workloads.is_empty() {
        Work::ALL.to_vec()
    } else {
        opts.workloads
    };
    let mut jobs = Vec::new();
    for &w in &works {
        let counts = harness::unique(
            plan.threads
                .iter()
                .map(|&t| t.max(w.min_threads()))
                .collect(),
        );
        for t in counts {
            for &a in &allocators {
                jobs.push((a, w, t));
            }
        }
    }
    let progress = indicatif::ProgressBar::new(jobs.len() as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut rows = Vec::with_capacity(jobs.len());
    for (a, w, t) in jobs {
        progress.set_message(format!("{} {} x{t}", a.as_str(), w.as_str()));
        rows.push(measure_in_child(args, a, w, t)?);
        progress.inc(1);
    }
    progress.finish_and_clear();
    add_ratios(&mut rows);
    if args.json {
        report::print_json(&rows)?;
    } else {
        print_text(&rows, &notes);
    }
    if let Some(file) = &opts.plot {
        plot::throughput_svg(
            file,
            &chart_title(),
            &chart_note(args),
            &panels(&rows, &works),
        )?;
        if !args.json {
            println!("chart written to {}", file.display());
        }
    }
    if rows.iter().all(|r| r.exact) {
        Ok(())
    } else {
        Err("an allocator returned null or lost a block's contents".to_owned())
    }
}

fn add_ratios(rows: &mut [Row]) {
    let same = |a: &Row, b: &Row| a.workload == b.workload && a.threads == b.threads;
    let ratios: Vec<_> = rows
        .iter()
        .map(|r| {
            let libc = rows
                .iter()
                .find(|o| same(o, r) && o.allocator == Allocator::Libc)
                .map(|o| o.mops);
            let others = || {
                rows.iter()
                    .filter(|o| same(o, r) && o.allocator != r.allocator)
            };
            let fastest = others().map(|o| o.mops).fold(f64::NAN, f64::max);
            let leanest = others().filter_map(|o| o.peak_rss_kib).min();
            let over = |x: f64, y: f64| (y > 0.0 && (x / y).is_finite()).then(|| x / y);
            (
                libc.and_then(|l| over(r.mops, l)),
                over(r.mops, fastest),
                r.peak_rss_kib
                    .zip(leanest)
                    .and_then(|(p, l)| over(p as f64, l as f64)),
            )
        })
        .collect();
    for (r, (libc, fastest, leanest)) in rows.iter_mut().zip(ratios) {
        r.speedup_vs_libc = libc;
        r.speedup_vs_fastest_other = fastest;
        r.rss_vs_leanest_other = leanest;
    }
}

fn print_text(rows: &[Row], notes: &[String]) {
    println!(
        "restartable bench alloc: {}, {}, restartable-malloc on its {} path, {} index",
        report::cpus(),
        report::rseq_state(),
        restartable_malloc::path(),
        restartable_malloc::index(),
    );
    println!(
        "{:<22} {:>7} {:>12} {:>9} {:>7} {:>9} {:>9} {:>9} {:>6}",
        "variant",
        "threads",
        "ns/op/thread",
        "Mops/s",
        "x libc",
        "x fastest",
        "peak MiB",
        "x leanest",
        "exact"
    );
    let x = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
    for r in rows {
        println!(
            "{:<22} {:>7} {:>12.2} {:>9.1} {:>7} {:>9} {:>9} {:>9} {:>6}",
            format!("{} {}", r.allocator.as_str(), r.workload.as_str()),
            r.threads,
            r.ns_per_op,
            r.mops,
            x(r.speedup_vs_libc),
            x(r.speedup_vs_fastest_other),
            r.peak_rss_kib
                .map_or("-".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0)),
            x(r.rss_vs_leanest_other),
            if r.exact { "yes" } else { "NO" }
        );
    }
    println!("x libc: this row's Mops/s over the C library malloc's; x fastest: over the fastest other allocator's; both at the same workload and thread count, above 1 is faster.");
    println!("ns/op/thread is one thread's wall time per operation: with more threads than CPUs it includes the time a thread waits for a CPU, so rank oversubscribed rows by Mops/s.");
    println!("peak MiB: the process's peak resident memory during the run (each row runs in a process of its own; the program itself is a few MiB); x leanest: over the leanest other allocator's, below 1 is leaner.");
    for note in notes {
        println!("{note}");
    }
}

fn chart_title() -> String {
    format!(
        "restartable bench alloc: {}, {}",
        report::cpus(),
        report::rseq_state()
    )
}

fn chart_note(args: &RunArgs) -> Vec<String> {
    let budget = match args.ops {
        Some(n) => format!("{n} operations per thread per run"),
        None => format!("{} s per run", args.duration),
    };
    vec![
        format!(
            "Each point: total operations per second of all threads, each row in a process of its own; {budget}."
        ),
        "Higher is better. Thick solid line: restartable-malloc; dashed lines: the other allocators, measured in the same run.".to_owned(),
    ]
}

fn panels(rows: &[Row], works: &[Work]) -> Vec<plot::Panel> {
    works
        .iter()
        .map(|&w| plot::Panel {
            title: format!("{}: {}", w.as_str(), w.about()),
            lines: Allocator::ALL
                .iter()
                .filter_map(|&a| {
                    let points: Vec<(u32, f64)> = rows
                        .iter()
                        .filter(|r| r.workload == w && r.allocator == a)
                        .map(|r| (r.threads, r.mops))
                        .collect();
                    (!points.is_empty()).then(|| plot::Line {
                        name: a.as_str().to_owned(),
                        about: a.about(),
                        points,
                        ours: a == Allocator::Restartable,
                        fallback: false,
                    })
                })
                .collect(),
        })
        .collect()
}
