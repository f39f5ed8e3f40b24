//! The record-buffer group: producers append 16-byte records while one
//! consumer drains.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crossbeam_utils::CachePadded;
use restartable::{Buffer, Full};

use super::Variant;
use crate::bench::harness::{self, Budget, Measured, Workload};

type Record = [u64; 2];

/// Records per CPU in `Buffer`; the other record structures hold this many
/// per online CPU.
const PER_CPU: usize = 1024;

/// A structure producers append records to and one consumer drains.
trait Records: Sync {
    /// Appends `record`, or hands it back when the structure is full.
    fn try_push(&self, record: Record) -> Result<(), Record>;
    /// Gives every record found now to `f`; how many there were.
    fn drain(&self, f: &mut dyn FnMut(&[Record])) -> Result<usize, String>;
    /// Whether a drain now is worth its cost.
    fn worth_draining(&self) -> bool {
        true
    }
}

impl Records for Buffer<Record> {
    #[inline(always)]
    fn try_push(&self, record: Record) -> Result<(), Record> {
        self.push(record).map_err(|Full(r)| r)
    }
    fn drain(&self, f: &mut dyn FnMut(&[Record])) -> Result<usize, String> {
        Buffer::drain(self, |_cpu, records| f(records)).map_err(|e| format!("drain failed: {e}"))
    }
    /// A drain fences every CPU with records (an interrupt there), so the
    /// consumer waits for half a CPU's buffer first instead of
    /// fencing for every few records.
    fn worth_draining(&self) -> bool {
        self.len() >= PER_CPU / 2
    }
}

struct Channel(
    crossbeam_channel::Sender<Record>,
    crossbeam_channel::Receiver<Record>,
);
impl Records for Channel {
    #[inline(always)]
    fn try_push(&self, record: Record) -> Result<(), Record> {
        self.0.try_send(record).map_err(|e| e.into_inner())
    }
    fn drain(&self, f: &mut dyn FnMut(&[Record])) -> Result<usize, String> {
        Ok(self.1.try_iter().map(|r| f(&[r])).count())
    }
}

/// The shared deque and, for the consumer alone, the one it swaps in.
struct MutexDeque {
    queue: Mutex<VecDeque<Record>>,
    spare: Mutex<VecDeque<Record>>,
    capacity: usize,
}
impl Records for MutexDeque {
    #[inline(always)]
    fn try_push(&self, record: Record) -> Result<(), Record> {
        match self.queue.lock() {
            Ok(mut q) if q.len() < self.capacity => {
                q.push_back(record);
                Ok(())
            }
            _ => Err(record),
        }
    }
    fn drain(&self, f: &mut dyn FnMut(&[Record])) -> Result<usize, String> {
        let poisoned = |_| "a producer panicked".to_owned();
        let mut spare = self.spare.lock().map_err(poisoned)?;
        std::mem::swap(&mut *self.queue.lock().map_err(poisoned)?, &mut *spare);
        let (a, b) = spare.as_slices();
        f(a);
        f(b);
        let n = spare.len();
        spare.clear();
        Ok(n)
    }
}

thread_local!(static SEQ: Cell<u64> = const { Cell::new(0) });

/// Sum of 0..n, wrapping.
fn triangle(n: u64) -> u64 {
    (n as u128 * n.saturating_sub(1) as u128 / 2) as u64
}

/// Producer threads: each pushes `[i, !i]` for i = 0, 1, 2, ...
struct Producers<R> {
    records: R,
    full: CachePadded<AtomicU64>,
    /// Sum of the `i`s pushed, added by each thread when it is done.
    sum: CachePadded<AtomicU64>,
}

impl<R: Records> Workload for Producers<R> {
    #[inline(always)]
    fn op(&self) {
        let i = SEQ.get();
        SEQ.set(i + 1);
        let mut record = [i, !i];
        while let Err(back) = self.records.try_push(record) {
            self.full.fetch_add(1, Ordering::Relaxed);
            std::thread::yield_now();
            record = back;
        }
    }
    fn thread_done(&self) {
        self.sum
            .fetch_add(triangle(SEQ.replace(0)), Ordering::Relaxed);
    }
}

/// What the consumer saw.
#[derive(Default)]
struct Seen {
    records: u64,
    sum: u64,
    damaged: u64,
}

impl Seen {
    fn add(&mut self, records: &[Record]) {
        for r in records {
            self.records += 1;
            self.sum = self.sum.wrapping_add(r[0]);
            self.damaged += u64::from(r[1] != !r[0]);
        }
    }
}

/// Runs producers against `records` while one consumer drains it, then
/// drains once more: exact when every record pushed was seen once, intact.
/// Returns (measurement, full retries, what went wrong).
fn produce<R: Records>(
    records: R,
    threads: u32,
    budget: Budget,
) -> Result<(Measured, u64, Option<String>), String> {
    let work = Producers {
        records,
        full: CachePadded::new(AtomicU64::new(0)),
        sum: CachePadded::new(AtomicU64::new(0)),
    };
    let stop = AtomicBool::new(false);
    let mut seen = Seen::default();
    let (m, consumed) = std::thread::scope(|s| {
        let consumer = s.spawn(|| {
            let mut seen = Seen::default();
            while !stop.load(Ordering::Acquire) {
                if !work.records.worth_draining() || work.records.drain(&mut |r| seen.add(r))? == 0
                {
                    std::thread::yield_now();
                }
            }
            Ok::<_, String>(seen)
        });
        let m = harness::run(&work, threads, budget);
        stop.store(true, Ordering::Release);
        let consumed = consumer
            .join()
            .unwrap_or_else(|_| Err("the consumer panicked".to_owned()));
        (m, consumed)
    });
    let m = m?;
    let full = work.full.load(Ordering::Relaxed);
    let problem = consumed
        .and_then(|consumed| {
            let last = work.records.drain(&mut |r| seen.add(r))?;
            Ok((consumed, last))
        })
        .map(|(consumed, last)| {
            let (records, sum) = (consumed.records + seen.records, consumed.sum.wrapping_add(seen.sum));
            let damaged = consumed.damaged + seen.damaged;
            let expected = work.sum.load(Ordering::Relaxed);
            (records != m.ops || sum != expected || damaged != 0).then(|| {
                format!(
                    "{} records pushed, the consumer saw {} and the final drain {last} ({damaged} damaged; sum of sequence numbers {sum}, expected {expected})",
                    m.ops, consumed.records
                )
            })
        })
        .unwrap_or_else(Some);
    Ok((m, full, problem))
}

/// Runs one record-buffer variant: (measurement, pushes that found the
/// structure full, what went wrong).
pub(super) fn measure(
    variant: Variant,
    threads: u32,
    budget: Budget,
) -> Result<(Measured, u64, Option<String>), String> {
    let capacity = PER_CPU * restartable::online_cpus().max(1);
    match variant {
        Variant::Buffer => produce(Buffer::<Record>::new(PER_CPU), threads, budget),
        Variant::Channel => {
            let (tx, rx) = crossbeam_channel::bounded(capacity);
            produce(Channel(tx, rx), threads, budget)
        }
        Variant::MutexDeque => produce(
            MutexDeque {
                queue: Mutex::new(VecDeque::with_capacity(capacity)),
                spare: Mutex::new(VecDeque::with_capacity(capacity)),
                capacity,
            },
            threads,
            budget,
        ),
        other => Err(format!("{} is not a record-buffer variant", other.name())),
    }
}
