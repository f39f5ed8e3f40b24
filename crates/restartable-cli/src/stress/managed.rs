//! The library's per-CPU structures under stress, each with a manager
//! thread that works on every CPU's data through the fence while the
//! workers run (the membarrier test of the kernel's rseq selftests): it swaps per-CPU
//! state out, steals lists, flushes caches, drains buffers. Each structure
//! checks itself exactly at the end: nothing lost, nothing duplicated,
//! nothing torn.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use restartable::{Buffer, Node, PerCpu, Pool, Stack};

use super::Verdict;

/// A structure, its workers' operation and its manager's step.
pub trait Managed: Sync {
    /// One worker operation.
    fn op(&self);
    /// One manager step: remote work on every CPU's data.
    fn manage(&self) -> Result<(), String>;
    /// Verifies the final state after `ops` worker operations in all.
    /// Verifies the final state after `ops` worker operations in all
    /// (`Err` when the check itself could not be made).
    fn verify(&mut self, ops: u64) -> Result<Verdict, String>;
}

/// A few spins inside a critical region, widening its race windows.
fn dawdle() {
    for _ in 0..8 {
        std::hint::spin_loop();
    }
}

/// `percpu`: `PerCpu` slots of two counters updated together under the
/// per-CPU lock; the manager swaps every slot's counts out (locking it
/// remotely) and keeps the total.
pub struct Storage {
    slots: PerCpu<(u64, u64)>,
    moved: AtomicU64,
    torn: AtomicU64,
}

impl Storage {
    pub fn new(by_mm_cid: bool) -> Self {
        Storage {
            slots: if by_mm_cid {
                PerCpu::new()
            } else {
                PerCpu::new_by_cpu()
            },
            moved: AtomicU64::new(0),
            torn: AtomicU64::new(0),
        }
    }

    fn swap_out(&self) -> Result<(), String> {
        self.slots
            .for_each(|_, (a, b)| {
                if a != b {
                    self.torn.fetch_add(1, Ordering::Relaxed);
                }
                self.moved.fetch_add(*a, Ordering::Relaxed);
                (*a, *b) = (0, 0);
            })
            .map_err(|e| format!("manager could not lock a slot: {e}"))
    }
}

impl Managed for Storage {
    fn op(&self) {
        // No holder panics in this mode: a poisoned slot would be a bug,
        // and shows as a torn update.
        let mut slot = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.0 != slot.1 {
            self.torn.fetch_add(1, Ordering::Relaxed);
        }
        slot.0 += 1;
        dawdle();
        slot.1 += 1;
    }
    fn manage(&self) -> Result<(), String> {
        self.swap_out()
    }
    fn verify(&mut self, ops: u64) -> Result<Verdict, String> {
        self.swap_out()?;
        let moved = self.moved.load(Ordering::Relaxed);
        let torn = self.torn.load(Ordering::Relaxed);
        Ok(Verdict::new(
            moved,
            ops,
            torn == 0,
            format!(
                "sum {moved}, expected {ops}; {torn} torn updates; index {}",
                super::IndexArg::from(self.slots.index()).name()
            ),
        ))
    }
}

/// `stack`: a `Stack` free list of numbered nodes, popped (stealing when
/// the local list is empty) and pushed back; the manager takes every CPU's
/// whole list and pushes it back on its own.
pub struct FreeList {
    stack: Stack<u64>,
    nodes: u64,
    empty: AtomicU64,
}

impl FreeList {
    pub fn new(nodes: u64) -> Self {
        let stack = Stack::new();
        for i in 0..nodes {
            stack.push(Node::new(i));
        }
        FreeList {
            stack,
            nodes,
            empty: AtomicU64::new(0),
        }
    }
}

thread_local! {
    /// Worker operations so far on this thread (for periodic extras).
    static OPS: Cell<u64> = const { Cell::new(0) };
}

fn nth_op() -> u64 {
    let n = OPS.get() + 1;
    OPS.set(n);
    n
}

impl Managed for FreeList {
    fn op(&self) {
        if nth_op().is_multiple_of(64) {
            // The whole local list, then back.
            for node in self.stack.pop_all() {
                self.stack.push(node);
            }
            return;
        }
        match self.stack.pop() {
            Some(node) => {
                dawdle();
                self.stack.push(node);
            }
            None => {
                self.empty.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    fn manage(&self) -> Result<(), String> {
        for cpu in 0..restartable::possible_cpus() {
            let nodes = self
                .stack
                .pop_all_on(cpu)
                .map_err(|e| format!("manager could not take CPU {cpu}'s list: {e}"))?;
            nodes.into_iter().for_each(|n| self.stack.push(n));
        }
        Ok(())
    }
    fn verify(&mut self, _ops: u64) -> Result<Verdict, String> {
        let count = self.stack.len().map_err(|e| e.to_string())? as u64;
        let mut ids: Vec<u64> = self
            .stack
            .pop_all_cpus()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|n| **n)
            .collect();
        ids.sort_unstable();
        let exact = ids.iter().copied().eq(0..self.nodes);
        Ok(Verdict::new(
            ids.len() as u64,
            self.nodes,
            exact && count == self.nodes,
            format!(
                "{} of {} nodes back, {}; pop found every list empty {} times",
                ids.len(),
                self.nodes,
                if exact {
                    "each exactly once"
                } else {
                    "SOME LOST OR DUPLICATED"
                },
                self.empty.load(Ordering::Relaxed)
            ),
        ))
    }
}

/// An object of the `pool` mode: its number and whether a worker has it.
pub struct Object {
    id: u64,
    in_use: AtomicBool,
}

/// `pool`: a `Pool` with small per-CPU caches (so they spill and refill
/// often); workers take objects and return them, sometimes holding many at
/// once; the manager flushes every cache to the overflow list.
pub struct Objects {
    pool: Pool<Object, Box<dyn Fn() -> Object + Send + Sync>>,
    made: std::sync::Arc<AtomicU64>,
    twice: AtomicU64,
}

impl Objects {
    pub fn new() -> Self {
        let made = std::sync::Arc::new(AtomicU64::new(0));
        let counter = made.clone();
        Objects {
            pool: Pool::with_cache(
                Box::new(move || Object {
                    id: counter.fetch_add(1, Ordering::Relaxed),
                    in_use: AtomicBool::new(false),
                }),
                8,
            ),
            made,
            twice: AtomicU64::new(0),
        }
    }

    fn claim(&self, object: &Object) {
        if object.in_use.swap(true, Ordering::Relaxed) {
            self.twice.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Managed for Objects {
    fn op(&self) {
        // Mostly one object; every 16th operation holds 20 at once, so
        // caches spill to the overflow list and refill from it.
        let held = if nth_op().is_multiple_of(16) { 20 } else { 1 };
        let objects: Vec<_> = (0..held).map(|_| self.pool.get()).collect();
        for o in &objects {
            self.claim(o);
        }
        dawdle();
        for o in &objects {
            o.in_use.store(false, Ordering::Relaxed);
        }
    }
    fn manage(&self) -> Result<(), String> {
        self.pool
            .flush()
            .map_err(|e| format!("manager could not flush: {e}"))
    }
    fn verify(&mut self, _ops: u64) -> Result<Verdict, String> {
        let made = self.made.load(Ordering::Relaxed);
        let cached = self.pool.cached() as u64;
        // Every object once: each `get` after a flush, so that what a
        // refill puts in one CPU's cache cannot be stranded there when this
        // thread migrates (the next `get` would then make a new object).
        let mut ids = Vec::new();
        for _ in 0..made {
            self.pool.flush().map_err(|e| e.to_string())?;
            ids.push(self.pool.get().into_inner().id);
        }
        ids.sort_unstable();
        let exact = ids.iter().copied().eq(0..made);
        let twice = self.twice.load(Ordering::Relaxed);
        Ok(Verdict::new(
            cached,
            made,
            exact && twice == 0,
            format!(
                "{made} objects made, {cached} back in the pool, {}; {twice} handed out twice",
                if exact {
                    "each exactly once"
                } else {
                    "SOME LOST OR DUPLICATED"
                }
            ),
        ))
    }
}

/// `drain`: producers append (worker, sequence) records to a `Buffer`; the
/// manager drains every CPU's buffer; each record must arrive exactly once,
/// and a worker's records in the order it pushed them within each CPU's
/// batch.
pub struct Records {
    buffer: Buffer<[u64; 2]>,
    /// One bit per (worker, sequence) drained.
    seen: Vec<AtomicU64>,
    ops: u64,
    workers: AtomicU64,
    duplicates: AtomicU64,
    disorder: AtomicU64,
    full: AtomicU64,
    drained: Mutex<()>,
}

thread_local! {
    /// This worker's number (from 1) and next sequence number.
    static WORKER: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

impl Records {
    pub fn new(threads: u64, ops: u64) -> Self {
        let bits = (threads * ops).div_ceil(64) as usize;
        Records {
            buffer: Buffer::new(256),
            seen: (0..bits).map(|_| AtomicU64::new(0)).collect(),
            ops,
            workers: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            disorder: AtomicU64::new(0),
            full: AtomicU64::new(0),
            drained: Mutex::new(()),
        }
    }

    fn drain(&self) -> Result<(), String> {
        // The manager and the final check both drain; one at a time keeps
        // the per-batch order check meaningful.
        let _one = self.drained.lock().map_err(|_| "drain panicked")?;
        self.buffer
            .drain(|_, records| {
                let mut last: std::collections::HashMap<u64, u64> = Default::default();
                for &[worker, seq] in records {
                    if last.insert(worker, seq).is_some_and(|prev| prev >= seq) {
                        self.disorder.fetch_add(1, Ordering::Relaxed);
                    }
                    let bit = (worker - 1) * self.ops + seq;
                    let Some(word) = self.seen.get((bit / 64) as usize) else {
                        self.duplicates.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let mask = 1 << (bit % 64);
                    if word.fetch_or(mask, Ordering::Relaxed) & mask != 0 {
                        self.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .map(|_| ())
            .map_err(|e| format!("manager could not drain: {e}"))
    }
}

impl Managed for Records {
    fn op(&self) {
        let (mut worker, seq) = WORKER.get();
        if worker == 0 {
            worker = self.workers.fetch_add(1, Ordering::Relaxed) + 1;
        }
        WORKER.set((worker, seq + 1));
        while self.buffer.push([worker, seq]).is_err() {
            self.full.fetch_add(1, Ordering::Relaxed);
            std::thread::yield_now();
        }
    }
    fn manage(&self) -> Result<(), String> {
        self.drain()
    }
    fn verify(&mut self, ops: u64) -> Result<Verdict, String> {
        self.drain()?;
        let seen: u64 = self
            .seen
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum();
        let duplicates = self.duplicates.load(Ordering::Relaxed);
        let disorder = self.disorder.load(Ordering::Relaxed);
        Ok(Verdict::new(
            seen,
            ops,
            duplicates == 0 && disorder == 0,
            format!(
                "{seen} of {ops} records drained, {duplicates} duplicated, {disorder} out of order; producers found a full buffer {} times",
                self.full.load(Ordering::Relaxed)
            ),
        ))
    }
}
