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
