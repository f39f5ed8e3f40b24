//! The measurements of `bench remote`: fences timed on the calling thread,
//! and structures filled by one thread pinned to each CPU of the affinity,
//! then emptied remotely by the calling thread and checked exactly.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex, PoisonError};
use std::time::{Duration, Instant};

use restartable::{fence, Buffer, Node, Pool, Stack};

use super::{Footprint, Op, Row, Run};
use crate::bench::harness::{self, Budget};
use crate::signals;

/// The footprint's mix: this many objects of each size per CPU (up to 4
/// KiB: each class's share stays under a CPU cache's 128 KiB per class).
const SIZES: [usize; 9] = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096];
const PER_SIZE: usize = 32;

pub fn run(iterations: u64, records: usize) -> Result<Run, String> {
    let cpus = signals::affinity()?;
    if cpus.is_empty() {
        return Err("this process may run on no CPU".to_owned());
    }
    let fence = match fence::status() {
        Ok(fence::Method::Membarrier) => "membarrier",
        Ok(fence::Method::Migration) => "migration",
        Err(e) => return Err(format!("remote operations need a fence: {e}")),
    };
    // The footprint first, before the other rows' allocations.
    let footprint = footprint(&cpus)?;
    // Each structure round fences every CPU: a tenth as many as fences.
    let rounds = (iterations / 10).max(1);
    let progress = indicatif::ProgressBar::new(Op::ALL.len() as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut rows = Vec::new();
    for op in Op::ALL {
        progress.set_message(op.name());
        let (ns, n, path) = match op {
            Op::FenceCpu => fence_cpu(&cpus, iterations)?,
            Op::FenceAll => fences(op, iterations, fence::fence_all)?,
            Op::BufferDrain => buffer_drain(&cpus, rounds, records)?,
            Op::PoolFlush => pool_flush(&cpus, rounds, records)?,
            Op::StackTakeAll => stack_take_all(&cpus, rounds, records)?,
        };
        rows.push(Row {
            op,
            ns_per_op: ns,
            iterations: n,
            path: path.to_owned(),
        });
        progress.inc(1);
    }
    progress.finish_and_clear();
    let path = if rows.iter().all(|r| r.path == "rseq") {
        "rseq"
    } else {
        "fallback"
    };
    Ok(Run {
        online_cpus: restartable::online_cpus(),
        possible_cpus: restartable::possible_cpus(),
        cpus,
        path: path.to_owned(),
        fence: fence.to_owned(),
        records,
        rows,
        footprint,
    })
}

/// The calling thread's path, as the structures bench reports it.
fn thread_path() -> &'static str {
    if restartable::registration().rseq_available() && restartable::HAS_CRITICAL_SECTIONS {
        "rseq"
    } else {
        "fallback"
    }
}

/// The unmeasured operations before `n` measured ones.
fn warm(n: u64) -> u64 {
    match harness::warm_up(Budget::Ops(n)) {
        Budget::Ops(w) => w,
        Budget::Time(_) => 1,
    }
}

fn ns_per(total: Duration, n: u64) -> f64 {
    total.as_nanos() as f64 / n.max(1) as f64
}

/// Times `n` calls of `fence` (after a warm-up): (ns/op, n, path).
fn fences(
    op: Op,
    n: u64,
    mut fence: impl FnMut() -> Result<(), fence::FenceError>,
) -> Result<(f64, u64, &'static str), String> {
    let mut one = || fence().map_err(|e| format!("{}: {e}", op.name()));
    for _ in 0..warm(n) {
        one()?;
    }
    let start = Instant::now();
    for _ in 0..n {
        one()?;
    }
    Ok((ns_per(start.elapsed(), n), n, thread_path()))
}

/// `fence_cpu` of each CPU of `cpus` in turn, skipping the caller's own
/// (the thread is not pinned, so it looks each time); with one CPU, that
/// one.
fn fence_cpu(cpus: &[usize], n: u64) -> Result<(f64, u64, &'static str), String> {
    let mut at = 0;
    fences(Op::FenceCpu, n, || loop {
        let cpu = cpus[at % cpus.len()];
        at += 1;
        if cpus.len() == 1 || cpu != restartable::current_cpu() {
            return fence::fence_cpu(cpu);
        }
    })
}

/// Runs `rounds` rounds on one thread pinned to each CPU of `cpus`: in
/// each, every thread runs `fill(k, round)` (k: its CPU's place in `cpus`),
/// all at once; once all are done the calling thread runs `then(round)`.
/// Returns the path of the filling threads: "fallback" if any ran without
/// rseq.
fn in_rounds(
    cpus: &[usize],
    rounds: u64,
    fill: impl Fn(usize, u64) -> Result<(), String> + Sync,
    mut then: impl FnMut(u64) -> Result<(), String>,
) -> Result<&'static str, String> {
    // The threads wait here before and after each round; a few hundred at
    // most, so a Barrier's mutex is no bottleneck.
    let barrier = Barrier::new(cpus.len() + 1);
    let round = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let failed: Mutex<Option<String>> = Mutex::new(None);
    let fallback = AtomicBool::new(false);
    std::thread::scope(|s| {
        for (k, &cpu) in cpus.iter().enumerate() {
            let (barrier, round, stop, failed, fallback, fill) =
                (&barrier, &round, &stop, &failed, &fallback, &fill);
            s.spawn(move || {
                let pinned = signals::pin_to(cpu);
                loop {
                    barrier.wait();
                    // The Barrier orders these loads after the main
                    // thread's stores.
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let done = pinned
                        .clone()
                        .and_then(|()| fill(k, round.load(Ordering::Relaxed)));
                    if thread_path() != "rseq" {
                        fallback.store(true, Ordering::Relaxed);
                    }
                    if let Err(e) = done {
                        failed
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get_or_insert(e);
                    }
                    barrier.wait();
                }
            });
        }
        let mut result = Ok(());
        for r in 0..rounds {
            round.store(r, Ordering::Relaxed);
            barrier.wait();
            barrier.wait();
            let failure = failed.lock().unwrap_or_else(PoisonError::into_inner).take();
            result = match failure {
                Some(e) => Err(e),
                None => then(r),
            };
            if result.is_err() {
                break;
            }
        }
        // Releases the threads from their wait, to see `stop`.
        stop.store(true, Ordering::Relaxed);
        barrier.wait();
        result
    })?;
    Ok(if fallback.load(Ordering::Relaxed) {
        "fallback"
    } else {
        "rseq"
    })
}

/// Runs a structure row: `rounds` measured rounds after a warm-up, `then`
/// returning the time of its one remote operation.
fn timed_rounds(
    cpus: &[usize],
    rounds: u64,
    fill: impl Fn(usize, u64) -> Result<(), String> + Sync,
    mut then: impl FnMut(u64) -> Result<Duration, String>,
) -> Result<(f64, u64, &'static str), String> {
    let warm = warm(rounds);
    let mut total = Duration::ZERO;
    let path = in_rounds(cpus, warm + rounds, fill, |r| {
        // The fillers are back in their Barrier's wait, but may still be
        // running on their CPUs on the way there; a millisecond lets them
        // park, so the operation is timed against idle CPUs, not against
        // threads the fence must interrupt (under emulation, with more
        // vCPUs than host cores, those cost the whole wake-up).
        std::thread::sleep(Duration::from_millis(1));
        let t = then(r)?;
        if r >= warm {
            total += t;
        }
        Ok(())
    })?;
    Ok((ns_per(total, rounds), rounds, path))
}

/// Record `i` of round `round` from the thread of `cpus[k]`.
fn record(k: usize, round: u64, per_cpu: usize, i: usize) -> [u64; 2] {
    [k as u64, round * per_cpu as u64 + i as u64]
}

fn buffer_drain(
    cpus: &[usize],
    rounds: u64,
    per_cpu: usize,
) -> Result<(f64, u64, &'static str), String> {
    let buffer: Buffer<[u64; 2]> = Buffer::new(per_cpu);
    let want = per_cpu * cpus.len();
    let (mut seen, mut from) = (Vec::with_capacity(want), Vec::with_capacity(cpus.len()));
    let fill = |k: usize, round: u64| {
        for i in 0..per_cpu {
            buffer.push(record(k, round, per_cpu, i)).map_err(|_| {
                format!(
                    "buffer_drain: the buffer of CPU {} was full after {i} of its {per_cpu} records (another CPU's records landed there)",
                    cpus[k]
                )
            })?;
        }
        Ok(())
    };
    timed_rounds(cpus, rounds, fill, |round| {
        seen.clear();
        from.clear();
        let start = Instant::now();
        let drained = buffer.drain(|cpu, records| {
            from.push((cpu, records.len()));
            seen.extend_from_slice(records);
        });
        let t = start.elapsed();
        let n = drained.map_err(|e| format!("buffer_drain: {e}"))?;
        check_drain(cpus, round, per_cpu, n, &from, &seen)?;
        Ok(t)
    })
}

/// Each CPU's records, all of them, each once, in the order its thread
/// pushed them, from the buffer of that CPU.
fn check_drain(
    cpus: &[usize],
    round: u64,
    per_cpu: usize,
    n: usize,
    from: &[(usize, usize)],
    seen: &[[u64; 2]],
) -> Result<(), String> {
    let want = per_cpu * cpus.len();
    let fail = |what: String| {
        Err(format!(
            "buffer_drain: round {round}: {what} ({per_cpu} records were pushed on each of {} CPUs)",
            cpus.len()
        ))
    };
    if n != want || seen.len() != want {
        return fail(format!(
            "the drain returned {n} records and handed over {}, not {want}",
            seen.len()
        ));
    }
    let mut next: Vec<usize> = vec![0; cpus.len()];
    let mut at = 0;
    for &(cpu, len) in from {
        for r in &seen[at..at + len] {
            let k = r[0] as usize;
            let expected = (k < cpus.len()).then(|| record(k, round, per_cpu, next[k]));
            if expected != Some(*r) || cpus[k] != cpu {
                return fail(format!(
                    "CPU {cpu}'s buffer held {r:?}, expected the next record of CPU {}'s thread",
                    cpus.get(k).map_or("?".to_owned(), usize::to_string)
                ));
            }
            next[k] += 1;
        }
        at += len;
    }
    match next.iter().position(|&c| c != per_cpu) {
        Some(k) => fail(format!(
            "{} of CPU {}'s records came back",
            next[k], cpus[k]
        )),
        None => Ok(()),
    }
}

fn pool_flush(
    cpus: &[usize],
    rounds: u64,
    per_cpu: usize,
) -> Result<(f64, u64, &'static str), String> {
    // Each object is its number, so a lost or doubled one shows.
    let made = AtomicU64::new(0);
    let pool = Pool::with_cache(|| made.fetch_add(1, Ordering::Relaxed), 2 * per_cpu);
    // Take `per_cpu` objects at once, then give them back: they land in
    // this CPU's cache (of twice that, so none spill).
    let fill = |_: usize, _: u64| {
        let held: Vec<_> = (0..per_cpu).map(|_| pool.get()).collect();
        drop(held);
        Ok(())
    };
    timed_rounds(cpus, rounds, fill, |round| {
        let start = Instant::now();
        let flushed = pool.flush();
        let t = start.elapsed();
        flushed.map_err(|e| format!("pool_flush: {e}"))?;
        // `cached` counts the caches and the overflow list the flush moved
        // them to: every object made, none being out.
        let total = made.load(Ordering::Relaxed);
        let cached = pool.cached() as u64;
        if cached != total {
            return Err(format!(
                "pool_flush: round {round}: the pool holds {cached} objects after the flush, but {total} were made and all given back"
            ));
        }
        // All of them reachable from here: taking them makes no new one.
        let all: Vec<_> = (0..total).map(|_| pool.get()).collect();
        let mut ids: Vec<u64> = all.iter().map(|o| **o).collect();
        ids.sort_unstable();
        ids.dedup();
        let after = made.load(Ordering::Relaxed);
        if after != total || ids.len() as u64 != total {
            return Err(format!(
                "pool_flush: round {round}: taking back the {total} flushed objects made {} new ones and found {} distinct: objects were lost or handed out twice",
                after - total,
                ids.len()
            ));
        }
        drop(all);
        // Back on the overflow list, for the next round's threads.
        pool.flush().map_err(|e| format!("pool_flush: {e}"))?;
        Ok(t)
    })
}

fn stack_take_all(
    cpus: &[usize],
    rounds: u64,
    per_cpu: usize,
) -> Result<(f64, u64, &'static str), String> {
    let stack: Stack<[u64; 2]> = Stack::new();
    let fill = |k: usize, round: u64| {
        for i in 0..per_cpu {
            stack.push(Node::new(record(k, round, per_cpu, i)));
        }
        Ok(())
    };
    timed_rounds(cpus, rounds, fill, |round| {
        let start = Instant::now();
        let taken = stack.pop_all_cpus();
        let t = start.elapsed();
        let nodes = taken.map_err(|e| format!("stack_take_all: {e}"))?;
        let mut got: Vec<[u64; 2]> = nodes.iter().map(|n| ***n).collect();
        got.sort_unstable();
        // Sorted, the records of round `round` are in (k, i) order.
        let same = got.len() == per_cpu * cpus.len()
            && got
                .iter()
                .enumerate()
                .all(|(j, r)| *r == record(j / per_cpu, round, per_cpu, j % per_cpu));
        if !same {
            return Err(format!(
                "stack_take_all: round {round}: pop_all_cpus returned {} nodes, not exactly the {per_cpu} pushed on each of {} CPUs",
                got.len(),
                cpus.len()
            ));
        }
        Ok(t)
    })
}

/// The allocator's per-CPU footprint after a thread pinned to each CPU
/// allocated the mix and freed it (into that CPU's cache); `None` on the C
/// library's allocator.
fn footprint(cpus: &[usize]) -> Result<Option<Footprint>, String> {
    if crate::allocator::name() != "restartable-malloc" {
        return Ok(None);
    }
    let fill = |_: usize, _: u64| {
        let held: Vec<Box<[u8]>> = SIZES
            .iter()
            .flat_map(|&size| (0..PER_SIZE).map(move |_| vec![0u8; size].into_boxed_slice()))
            .collect();
        // Kept from being optimised away with the frees.
        std::hint::black_box(&held);
        drop(held);
        Ok(())
    };
    let stats = || restartable_malloc::stats().ok_or("the allocator has no statistics");
    // The release policy's sweep (at most once a second) empties every
    // cache: a mix it interrupted runs again.
    let mut s = stats()?;
    for _ in 0..3 {
        let sweeps = s.sweeps;
        in_rounds(cpus, 1, fill, |_| Ok(()))?;
        s = stats()?;
        if s.sweeps == sweeps {
            break;
        }
    }
    Ok(Some(Footprint {
        objects_per_cpu: SIZES.len() * PER_SIZE,
        cached_bytes: s.cached_by_cpu.iter().sum::<usize>() as u64,
        caching_ids: s.cached_by_cpu.iter().filter(|&&b| b > 0).count() as u64,
        index: restartable_malloc::index().to_owned(),
        mapped_not_returned_bytes: s.mapped.saturating_sub(s.returned) as u64,
        cache_resident_bytes: s.cache_resident_bytes as u64,
        cache_blocks_resident: s.cache_blocks_resident as u64,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A drain of round 1 as it should be: 3 records from each of CPUs 4
    /// and 7, per CPU in push order.
    fn good() -> (Vec<(usize, usize)>, Vec<[u64; 2]>) {
        let seen = (0..2)
            .flat_map(|k| (0..3).map(move |i| record(k, 1, 3, i)))
            .collect();
        (vec![(4, 3), (7, 3)], seen)
    }

    #[test]
    fn the_drain_check_takes_exactly_what_was_pushed() {
        let cpus = [4, 7];
        let (from, seen) = good();
        assert_eq!(check_drain(&cpus, 1, 3, 6, &from, &seen), Ok(()));
        // Lost, doubled, reordered, from another round, on the wrong CPU.
        let mut lost = seen.clone();
        lost.pop();
        let lost_from = [(4, 3), (7, 2)];
        assert!(check_drain(&cpus, 1, 3, 5, &lost_from, &lost).is_err());
        let mut doubled = seen.clone();
        doubled[1] = doubled[0];
        assert!(check_drain(&cpus, 1, 3, 6, &from, &doubled).is_err());
        let mut reordered = seen.clone();
        reordered.swap(0, 1);
        assert!(check_drain(&cpus, 1, 3, 6, &from, &reordered).is_err());
        assert!(check_drain(&cpus, 2, 3, 6, &from, &seen).is_err());
        assert!(check_drain(&cpus, 1, 3, 6, &[(7, 3), (4, 3)], &seen).is_err());
        // A count that disagrees with what was handed over.
        assert!(check_drain(&cpus, 1, 3, 7, &from, &seen).is_err());
    }
}
