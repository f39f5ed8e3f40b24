//! The benchmark harness: run one operation on T threads, released
//! together, for a fixed time or a fixed number of operations.
//!
//! Built to scale to thousands of threads on a few CPUs: the threads wait
//! for the start on one futex word and are all woken by one system call (a
//! `Barrier` would make each of them take its mutex in turn, at the pace of
//! the timeslices of the threads already running), they run on small
//! stacks, and each looks at the clock every [`CHUNK`] operations and stops
//! itself at the deadline. (A main thread that sleeps, then raises a stop
//! flag, wakes up seconds late among thousands of busy threads.)

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Operations between two looks at the clock.
const CHUNK: u64 = 1024;

/// Stack of each benchmark thread: the workloads need little.
const STACK: usize = 256 * 1024;

/// The most threads one run may start.
pub const MAX_THREADS: u32 = 4096;

/// The most operations per thread a run may ask for (`--ops`): at a few
/// nanoseconds each, seconds; on a fallback path or oversubscribed, minutes.
pub const MAX_OPS: u64 = 1_000_000_000;

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
    /// The threads' time, summed, over their operations, summed, in ns:
    /// with more threads than CPUs it includes the time they waited for one.
    pub ns_per_op: f64,
    /// All operations over the wall-clock time from the start to the last
    /// thread's end, in millions per second.
    pub mops: f64,
}

/// Runs `work` on `threads` threads within `budget`.
///
/// # Errors
/// When a thread cannot be started (the process's thread or memory limit).
pub fn run<W: Workload>(work: &W, threads: u32, budget: Budget) -> Result<Measured, String> {
    // 0 until the start; the threads wait on it, all woken at once.
    let gate = AtomicU32::new(0);
    // How many threads are at the gate; each arrival wakes the main thread.
    let waiting = AtomicU32::new(0);
    // Set once, before the gate opens: when timed runs end.
    let deadline = OnceLock::new();
    // Set when the run must end early (a thread could not be started).
    let stop = AtomicBool::new(false);
    let (started, results) = std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(threads as usize);
        let mut error = None;
        for _ in 0..threads {
            let spawned = std::thread::Builder::new()
                .stack_size(STACK)
                .spawn_scoped(s, || {
                    waiting.fetch_add(1, Ordering::Release);
                    atomic_wait::wake_one(&waiting);
                    while gate.load(Ordering::Acquire) == 0 {
                        atomic_wait::wait(&gate, 0);
                    }
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
                            let end = deadline.get().copied().unwrap_or(start);
                            // At least one chunk: a thread that a busy machine
                            // wakes after the deadline still measures something.
                            while !stop.load(Ordering::Relaxed) {
                                for _ in 0..CHUNK {
                                    work.op();
                                }
                                done += CHUNK;
                                if Instant::now() >= end {
                                    break;
                                }
                            }
                        }
                    }
                    let end = Instant::now();
                    work.thread_done();
                    (done, start, end)
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    error = Some(format!(
                        "cannot start benchmark thread {} of {threads}: {e}",
                        handles.len() + 1
                    ));
                    break;
                }
            }
        }
        // Every thread is at the gate (or about to wait there) before the
        // clock starts; then one wake releases them all.
        loop {
            let arrived = waiting.load(Ordering::Acquire);
            if arrived as usize >= handles.len() {
                break;
            }
            atomic_wait::wait(&waiting, arrived);
        }
        let started = Instant::now();
        if let Budget::Time(d) = budget {
            let _ = deadline.set(started + d);
        }
        if error.is_some() {
            stop.store(true, Ordering::Relaxed);
        }
        gate.store(1, Ordering::Release);
        atomic_wait::wake_all(&gate);
        let results: Vec<(u64, Instant, Instant)> =
            handles.into_iter().filter_map(|h| h.join().ok()).collect();
        match error {
            Some(e) => Err(e),
            None => Ok((started, results)),
        }
    })?;
    let ops: u64 = results.iter().map(|r| r.0).sum();
    // From the first thread's start to the last one's end: the window
    // ns/op is measured over too, without the wake-up before it.
    let first = results.iter().map(|r| r.1).min().unwrap_or(started);
    let wall = results
        .iter()
        .map(|r| r.2.saturating_duration_since(first))
        .max()
        .unwrap_or_default()
        .as_secs_f64();
    // The threads' time over their operations, summed before dividing: a
    // thread that got one chunk done over the whole window (more threads
    // than CPUs) would otherwise outweigh all the others.
    let thread_ns: f64 = results
        .iter()
        .map(|r| r.2.saturating_duration_since(r.1).as_nanos() as f64)
        .sum();
    Ok(Measured {
        ops,
        ns_per_op: if ops > 0 { thread_ns / ops as f64 } else { 0.0 },
        mops: if wall > 0.0 {
            ops as f64 / wall / 1e6
        } else {
            0.0
        },
    })
}

/// The thread counts and budget every benchmark of the command shares.
pub struct Plan {
    pub threads: Vec<u32>,
    pub budget: Budget,
}

impl Plan {
    /// `args.threads` (default 1, N and 4N, N = the CPUs this process may
    /// run on), each run
    /// lasting `args.duration` seconds or `args.ops` operations per thread.
    pub fn new(args: &super::RunArgs) -> Plan {
        let threads = if args.threads.is_empty() {
            let n = (crate::cpus::usable() as u32).min(MAX_THREADS / 4);
            vec![1, n, 4 * n]
        } else {
            args.threads.clone()
        };
        let budget = match args.ops {
            Some(n) => Budget::Ops(n),
            None => Budget::Time(Duration::from_secs_f64(args.duration)),
        };
        Plan {
            threads: unique(threads),
            budget,
        }
    }

    /// Runs every variant at every thread count, with a progress bar on
    /// stderr; `measure` returns the measurement and whether the final
    /// state was exact.
    ///
    /// # Errors
    /// The first run that could not be made.
    pub fn run<V: Copy>(
        &self,
        variants: &[V],
        name: impl Fn(V) -> &'static str,
        mut measure: impl FnMut(V, u32, Budget) -> Result<(Measured, bool), String>,
    ) -> Result<Vec<(V, u32, Measured, bool)>, String> {
        let progress = indicatif::ProgressBar::new((self.threads.len() * variants.len()) as u64);
        progress.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let mut rows = Vec::new();
        for (round, &t) in self.threads.iter().enumerate() {
            for &v in variants {
                progress.set_message(format!("{} x{t}", name(v)));
                // A short unmeasured run first, on the first round: page
                // faults, lazily made slots and objects, and an idle CPU's
                // slow start fall there rather than into the first point.
                if round == 0 {
                    measure(v, t, warm_up(self.budget))?;
                }
                let (m, exact) = measure(v, t, self.budget)?;
                rows.push((v, t, m, exact));
                progress.inc(1);
            }
        }
        progress.finish_and_clear();
        Ok(rows)
    }
}

/// The short unmeasured run before a first measurement: a tenth of
/// `budget`, at most 100 ms or 100,000 operations per thread.
pub fn warm_up(budget: Budget) -> Budget {
    match budget {
        Budget::Time(d) => Budget::Time((d / 10).min(Duration::from_millis(100))),
        Budget::Ops(n) => Budget::Ops((n / 10).clamp(1, 100_000)),
    }
}

/// `items` without repeats, in their first order (`--variants a,a` runs
/// `a` once).
pub fn unique<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut kept: Vec<T> = Vec::with_capacity(items.len());
    for item in items {
        if !kept.contains(&item) {
            kept.push(item);
        }
    }
    kept
}
