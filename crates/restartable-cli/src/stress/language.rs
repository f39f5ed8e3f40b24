//! The worked examples of the section language
//! (`restartable::section::examples`), hammered like the raw-section
//! modes: a per-CPU ring (take, then append back), a per-CPU bounded stack
//! (pop, then push back) and a per-CPU histogram. Each checks itself
//! exactly at the end. They are generated sections, indexed by CPU, with a
//! fixed commit order, so they take neither `--index` nor `--order`.

use std::sync::atomic::{AtomicU64, Ordering};

use restartable::section::examples::*;
use restartable::section::{Index, Order, RetriesExhausted, Run, Thread};

use super::sections::{Structure, EXHAUSTED};
use super::Verdict;

/// Per-CPU blocks of `stride` bytes, as words, 128-byte aligned.
struct Blocks {
    words: Box<[AtomicU64]>,
    cpus: usize,
}

impl Blocks {
    fn new(stride: usize) -> Self {
        let cpus = restartable::possible_cpus();
        // 16 extra words to align the base to 128 bytes.
        let words = (0..stride / 8 * cpus + 16)
            .map(|_| AtomicU64::new(0))
            .collect();
        Blocks { words, cpus }
    }
    /// The first 128-byte aligned word.
    fn base(&self) -> *mut u8 {
        let p = self.words.as_ptr() as usize;
        let skip = (p.next_multiple_of(128) - p) / 8;
        self.words[skip..].as_ptr() as *mut u8
    }
    fn ncpus(&self) -> u64 {
        self.cpus as u64
    }
    /// The word at byte `offset` of the base.
    fn word(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: the offset stays inside `words` (callers pass offsets
        // inside the blocks) and is 8-byte aligned.
        unsafe { &*(self.base().add(offset) as *const AtomicU64) }
    }
    /// The `u32` at byte `offset` of the base (low or high half of a word).
    fn half(&self, offset: usize) -> u32 {
        let w = self.word(offset & !7).load(Ordering::Acquire);
        if offset & 4 == 0 {
            w as u32
        } else {
            (w >> 32) as u32
        }
    }
}

/// Runs a generated section's `retry` until it does not exhaust its
/// attempts, yielding between rounds.
fn until<C, E>(mut attempt: impl FnMut() -> Result<Run<C, E>, RetriesExhausted>) -> Run<C, E> {
    loop {
        match attempt() {
            Ok(run) => return run,
            Err(RetriesExhausted) => {
                EXHAUSTED.fetch_add(1, Ordering::Relaxed);
                std::thread::yield_now();
            }
        }
    }
}

/// Takes a value out (`None`: empty) and puts it back, yielding while the
/// current CPU's block is full (`put` returns false).
fn move_one<T: Copy>(take: impl FnOnce() -> Option<T>, mut put: impl FnMut(T) -> bool) {
    if let Some(v) = take() {
        while !put(v) {
            std::thread::yield_now();
        }
    }
}

/// The values found at the end, each of `0..items` at most once.
struct Census {
    seen: Vec<bool>,
    count: u64,
}

impl Census {
    fn new(items: u64) -> Self {
        Census {
            seen: vec![false; items as usize],
            count: 0,
        }
    }
    /// Counts `v`; a duplicated or foreign value is the failed verdict.
    fn see(&mut self, v: u64) -> Result<(), Verdict> {
        let items = self.seen.len() as u64;
        if v >= items || self.seen[v as usize] {
            return Err(Verdict::new(
                self.count,
                items,
                false,
                format!("value {v} duplicated or foreign"),
            ));
        }
        self.seen[v as usize] = true;
        self.count += 1;
        Ok(())
    }
    fn verdict(self) -> Verdict {
        let items = self.seen.len() as u64;
        Verdict::new(
            self.count,
            items,
            true,
            format!("{} of {items} values found", self.count),
        )
    }
}

/// `ring`: values move between the per-CPU rings of `ring_append` and
/// `ring_take`; each is found exactly once at the end.
pub struct Ring {
    blocks: Blocks,
    items: u64,
}

impl Ring {
    pub fn new(items: usize) -> Self {
        let blocks = Blocks::new(RING_STRIDE);
        // At most half a ring per CPU, so an append always finds room
        // on some CPU.
        let items = items.min(blocks.cpus * RING_SLOTS as usize / 2) as u64;
        for v in 0..items {
            let ring = RING_STRIDE * (v as usize % blocks.cpus);
            let tail = blocks.word(ring + RING_TAIL);
            let n = tail.load(Ordering::Relaxed);
            blocks
                .word(ring + RING_DATA + 8 * (n % RING_SLOTS) as usize)
                .store(v, Ordering::Relaxed);
            tail.store(n + 1, Ordering::Relaxed);
        }
        Ring { blocks, items }
    }
}

impl Structure for Ring {
    fn op(&self, t: &Thread, _: Index, _: Order) {
        let (base, n) = (self.blocks.base(), self.blocks.ncpus());
        // SAFETY (both sections): `base` holds a ring per possible CPU,
        // written only by these sections (no remote drain in this mode).
        let take = || match until(|| unsafe { ring_take::retry(t, base, n) }) {
            Run::Committed(v) => Some(v),
            Run::Exit(ring_take::Exit::Empty) => None,
            other => panic!("ring_take: {other:?}"),
        };
        move_one(take, |v| {
            match until(|| unsafe { ring_append::retry(t, base, n, v) }) {
                Run::Committed(_) => true,
                Run::Exit(ring_append::Exit::Full) => false,
                other => panic!("ring_append: {other:?}"),
            }
        });
    }

    fn verify(&self, _ops: u64) -> Verdict {
        let mut census = Census::new(self.items);
        for cpu in 0..self.blocks.cpus {
            let ring = RING_STRIDE * cpu;
            let tail = self.blocks.word(ring + RING_TAIL).load(Ordering::Acquire);
            let head = self.blocks.word(ring + RING_HEAD).load(Ordering::Acquire);
            if tail.wrapping_sub(head) > RING_SLOTS {
                let detail = format!("ring {cpu}: head {head}, tail {tail}");
                return Verdict::new(census.count, self.items, false, detail);
            }
            for i in head..tail {
                let slot = ring + RING_DATA + 8 * (i % RING_SLOTS) as usize;
                if let Err(v) = census.see(self.blocks.word(slot).load(Ordering::Acquire)) {
                    return v;
                }
            }
        }
        census.verdict()
    }
}

/// `bounded-stack`: 32-bit values move between the per-CPU stacks of
/// `stack_push` and `stack_pop`.
pub struct BoundedStack {
    blocks: Blocks,
    items: u64,
}

impl BoundedStack {
    pub fn new(items: usize) -> Self {
        let blocks = Blocks::new(STACK_STRIDE);
        let items = items.min(blocks.cpus * STACK_SLOTS as usize / 2) as u64;
        let ncpus = blocks.ncpus();
        for v in 0..items {
            let cpu = (v % ncpus) as u32;
            // SAFETY: no thread runs yet; the twin writes this CPU's block.
            let run = unsafe { stack_push::twin(cpu, blocks.base(), ncpus, STACK_SLOTS, v as u32) };
            assert!(run.is_committed(), "a block holds {STACK_SLOTS} values");
        }
        BoundedStack { blocks, items }
    }
}

impl Structure for BoundedStack {
    fn op(&self, t: &Thread, _: Index, _: Order) {
        let (base, n) = (self.blocks.base(), self.blocks.ncpus());
        // SAFETY (both sections): `base` holds a stack per possible CPU,
        // written only by these sections.
        let take = || match until(|| unsafe { stack_pop::retry(t, base, n) }) {
            Run::Committed(v) => Some(v),
            Run::Exit(stack_pop::Exit::Empty) => None,
            other => panic!("stack_pop: {other:?}"),
        };
        move_one(take, |v| {
            match until(|| unsafe { stack_push::retry(t, base, n, STACK_SLOTS, v) }) {
                Run::Committed(_) => true,
                Run::Exit(stack_push::Exit::Full(_)) => false,
                other => panic!("stack_push: {other:?}"),
            }
        });
    }

    fn verify(&self, _ops: u64) -> Verdict {
        let mut census = Census::new(self.items);
        for cpu in 0..self.blocks.cpus {
            let block = STACK_STRIDE * cpu;
            let n = self.blocks.half(block) as u64;
            if n > STACK_SLOTS {
                let detail = format!("stack {cpu}: count {n}");
                return Verdict::new(census.count, self.items, false, detail);
            }
            for i in 0..n as usize {
                if let Err(v) = census.see(self.blocks.half(block + STACK_DATA + 4 * i) as u64) {
                    return v;
                }
            }
        }
        census.verdict()
    }
}

/// `histogram`: every operation counts one sample in its CPU's histogram;
/// the buckets, summed over CPUs, must match the samples taken.
pub struct Histogram {
    blocks: Blocks,
    expected: [AtomicU64; HISTOGRAM_BUCKETS as usize],
    next: AtomicU64,
}

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            blocks: Blocks::new(HISTOGRAM_STRIDE),
            expected: [const { AtomicU64::new(0) }; HISTOGRAM_BUCKETS as usize],
            next: AtomicU64::new(0),
        }
    }
}

impl Structure for Histogram {
    fn op(&self, t: &Thread, _: Index, _: Order) {
        let sample = self.next.fetch_add(7, Ordering::Relaxed) % (16 * HISTOGRAM_BUCKETS);
        let (base, n) = (self.blocks.base(), self.blocks.ncpus());
        // SAFETY: `base` holds a histogram per possible CPU, written only by
        // these sections.
        match until(|| unsafe { histogram_add::retry(t, base, n, sample) }) {
            Run::Committed(_) => {
                self.expected[(sample / 16) as usize].fetch_add(1, Ordering::Relaxed);
            }
            other => panic!("histogram_add({sample}): {other:?}"),
        }
    }

    fn verify(&self, ops: u64) -> Verdict {
        let mut total = 0;
        for b in 0..HISTOGRAM_BUCKETS as usize {
            let sum: u64 = (0..self.blocks.cpus)
                .map(|cpu| {
                    self.blocks
                        .word(HISTOGRAM_STRIDE * cpu + 8 * b)
                        .load(Ordering::Acquire)
                })
                .sum();
            let want = self.expected[b].load(Ordering::Relaxed);
            if sum != want {
                return Verdict::new(
                    sum,
                    want,
                    false,
                    format!("bucket {b}: {sum} counted, {want} samples"),
                );
            }
            total += sum;
        }
        Verdict::new(
            total,
            ops,
            true,
            format!("{total} samples counted, expected {ops}"),
        )
    }
}
