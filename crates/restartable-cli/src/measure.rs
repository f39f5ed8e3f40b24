//! The benchmark harness: run one operation on T threads, started together
//! behind a barrier, for a fixed time or a fixed number of operations.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Operations between two looks at the stop flag.
const CHUNK: u64 = 1024;

/// How long each thread runs.
#[derive(Clone, Copy, Debug)]
pub enum Budget {
    Time(Duration),
    Ops(u64),
}

/// One benchmarked operation.
pub trait Workload: Sync {
    /// One operation (inlined into the measuring loop).
    fn op(&self);
    /// Called by each thread after its last operation.
    fn thread_done(&self) {}
}

/// What one run measured.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    /// Operations completed by all threads.
    pub ops: u64,
    /// Mean over threads of (thread's time / thread's operations), in ns.
    pub ns_per_op: f64,
    /// All operations over the wall-clock time of the slowest thread, in
    /// millions per second.
    pub mops: f64,
}

pub fn run<W: Workload>(work: &W, threads: u32, budget: Budget) -> Measured {
    let barrier = Barrier::new(threads as usize + 1);
    let stop = AtomicBool::new(false);
    let results: Vec<(u64, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let start = Instant::now();
                    let mut done = 0u64;
                    match budget {
                        Budget::Ops(n) => {
                            for _ in 0..n {
                                work.op();
                            }
                            done = n;
                        }
                        Budget::Time(_) => {
                            while !stop.load(Ordering::Relaxed) {
                                for _ in 0..CHUNK {
                                    work.op();
                                }
                                done += CHUNK;
                            }
                        }
                    }
                    let elapsed = start.elapsed();
                    work.thread_done();
                    (done, elapsed)
                })
            })
            .collect();
        barrier.wait();
        if let Budget::Time(d) = budget {
            std::thread::sleep(d);
            stop.store(true, Ordering::Relaxed);
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((0, Duration::ZERO)))
            .collect()
    });
    let ops: u64 = results.iter().map(|r| r.0).sum();
    let wall = results
        .iter()
        .map(|r| r.1)
        .max()
        .unwrap_or_default()
        .as_secs_f64();
    let per_thread: Vec<f64> = results
        .iter()
        .filter(|r| r.0 > 0)
        .map(|r| r.1.as_nanos() as f64 / r.0 as f64)
        .collect();
    Measured {
        ops,
        ns_per_op: per_thread.iter().sum::<f64>() / per_thread.len().max(1) as f64,
        mops: if wall > 0.0 {
            ops as f64 / wall / 1e6
        } else {
            0.0
        },
    }
}

/// Prints benchmark rows as one pretty JSON array (`--json`).
pub fn print_json<R: serde::Serialize>(rows: &[R]) -> Result<(), String> {
    let text = serde_json::to_string_pretty(rows).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}

/// The options every benchmark of the command shares.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Thread counts to run, comma-separated [default: 1,N,4N with N = online CPUs].
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub threads: Vec<u32>,
    /// Seconds per run (conflicts with --ops).
    #[arg(long, default_value_t = 1.0, value_parser = crate::parse_duration, conflicts_with = "ops")]
    pub duration: f64,
    /// Operations per thread per run, instead of a fixed duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub ops: Option<u64>,
    /// Print the rows as a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// For each row, its ns/op over that of `baseline(variant)` at the same
/// thread count (`None` when that row was not run).
pub fn ratios<V: Copy + PartialEq>(
    rows: &[(V, u32, Measured, bool)],
    baseline: impl Fn(V) -> V,
) -> Vec<Option<f64>> {
    ratios_of(rows, baseline, |m| m.ns_per_op)
}

/// For each row, its `cost` over that of `baseline(variant)` at the same
/// thread count (`None` when that row was not run or a cost is not finite).
pub fn ratios_of<V: Copy + PartialEq>(
    rows: &[(V, u32, Measured, bool)],
    baseline: impl Fn(V) -> V,
    cost: impl Fn(&Measured) -> f64,
) -> Vec<Option<f64>> {
    rows.iter()
        .map(|&(v, t, m, _)| {
            rows.iter()
                .find(|r| r.1 == t && r.0 == baseline(v))
                .map(|r| cost(&r.2))
                .filter(|b| *b > 0.0)
                .map(|b| cost(&m) / b)
                .filter(|x| x.is_finite())
        })
        .collect()
}

/// The thread counts and budget every benchmark of the command shares.
pub struct Plan {
    pub threads: Vec<u32>,
    pub budget: Budget,
}

impl Plan {
    /// `args.threads` (default 1, N and 4N, N = online CPUs), each run
    /// lasting `args.duration` seconds or `args.ops` operations per thread.
    pub fn new(args: &RunArgs) -> Plan {
        let (duration, ops) = (args.duration, args.ops);
        let threads = if args.threads.is_empty() {
            let n = restartable::online_cpus().min(1024) as u32;
            let mut t = vec![1, n, 4 * n];
            t.dedup();
            t
        } else {
            args.threads.clone()
        };
        let budget = match ops {
            Some(n) => Budget::Ops(n),
            None => Budget::Time(Duration::from_secs_f64(duration)),
        };
        Plan { threads, budget }
    }

    /// Runs every variant at every thread count, with a progress bar on
    /// stderr; `measure` returns the measurement and whether the final
    /// state was exact.
    pub fn run<V: Copy>(
        &self,
        variants: &[V],
        name: impl Fn(V) -> &'static str,
        mut measure: impl FnMut(V, u32, Budget) -> (Measured, bool),
    ) -> Vec<(V, u32, Measured, bool)> {
        let progress = indicatif::ProgressBar::new((self.threads.len() * variants.len()) as u64);
        progress.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let mut rows = Vec::new();
        for &t in &self.threads {
            for &v in variants {
                progress.set_message(format!("{} x{t}", name(v)));
                let (m, exact) = measure(v, t, self.budget);
                rows.push((v, t, m, exact));
                progress.inc(1);
            }
        }
        progress.finish_and_clear();
        rows
    }
}

/// One printed row: variant name, threads, measurement, ratio, exact.
pub type TableRow<'a> = (&'a str, u32, f64, f64, Option<f64>, bool);

/// Prints the benchmark table; `ratio` names the ratio column.
pub fn print_table(ratio: &str, rows: &[TableRow<'_>]) {
    let rows: Vec<RatiosRow> = rows
        .iter()
        .map(|&(name, threads, ns, mops, x, exact)| (name, threads, ns, mops, vec![x], exact))
        .collect();
    print_ratios_table(&[ratio], &rows);
}

/// One printed row with several ratio columns: variant name, threads,
/// measurement, one ratio per column, exact.
pub type RatiosRow<'a> = (&'a str, u32, f64, f64, Vec<Option<f64>>, bool);

/// Prints the benchmark table with one column per name in `ratios`.
pub fn print_ratios_table(ratios: &[&str], rows: &[RatiosRow<'_>]) {
    print!(
        "{:<22} {:>7} {:>14} {:>12}",
        "variant", "threads", "ns/op/thread", "Mops/s"
    );
    for name in ratios {
        print!(" {name:>11}");
    }
    println!(" {:>6}", "exact");
    for (name, threads, ns, mops, xs, exact) in rows {
        print!("{name:<22} {threads:>7} {ns:>14.2} {mops:>12.1}");
        for (x, column) in xs.iter().zip(ratios) {
            let x = x.map_or("-".to_owned(), |x| format!("{x:.2}"));
            print!(" {x:>w$}", w = column.len().max(11));
        }
        println!(" {:>6}", if *exact { "yes" } else { "NO" });
    }
    println!("ns/op/thread is wall time per operation of one thread: with more threads than CPUs it includes the time a thread waits for a CPU; Mops/s is the total throughput.");
}
