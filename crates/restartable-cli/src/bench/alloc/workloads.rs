//! The workloads of `bench alloc`, each one operation that the harness
//! runs on every thread, over any `GlobalAlloc`.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::bench::harness::Workload;

/// The workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Work {
    /// Allocate 64 bytes, write, free.
    Pair,
    /// Replace one of 256 live blocks per thread (16 B to 4 KiB).
    Churn,
    /// Swap a new block into a slot shared by all threads, free the old.
    Exchange,
    /// Replace one of 256 live blocks per thread (16 B to 32 KiB).
    Mixed,
    /// Grow one block per thread by `realloc`, 16 B to 128 KiB, then free it.
    Realloc,
    /// At least 256 threads, each replacing one of its 8 live blocks (16 to 256 B).
    Many,
}

impl Work {
    pub const ALL: [Work; 6] = [
        Work::Pair,
        Work::Churn,
        Work::Exchange,
        Work::Mixed,
        Work::Realloc,
        Work::Many,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Work::Pair => "pair",
            Work::Churn => "churn",
            Work::Exchange => "exchange",
            Work::Mixed => "mixed",
            Work::Realloc => "realloc",
            Work::Many => "many",
        }
    }

    /// What one operation is, for the chart.
    pub fn about(self) -> &'static str {
        match self {
            Work::Pair => "allocate 64 B, write, free (a thread's own churn)",
            Work::Churn => "replace one of 256 live blocks per thread, 16 B to 4 KiB",
            Work::Exchange => {
                "swap a new block into one of 1024 shared slots, free the old: remote frees"
            }
            Work::Mixed => "replace one of 256 live blocks per thread, 16 B to 32 KiB",
            Work::Realloc => "grow a block by half with realloc, 16 B to 128 KiB, then free it",
            Work::Many => "256+ threads, each replacing one of its 8 live blocks of 16 to 256 B",
        }
    }

    /// The fewest threads the workload runs with.
    pub fn min_threads(self) -> u32 {
        match self {
            Work::Many => MANY_THREADS,
            _ => 1,
        }
    }
}

/// Threads of the `many` workload, at least.
pub const MANY_THREADS: u32 = 256;
/// Live blocks per thread of `churn` and `mixed`.
const LIVE_BLOCKS: usize = 256;
/// Live blocks per thread of `many`.
const FEW_BLOCKS: usize = 8;
/// Slots shared by the threads of `exchange`.
const SLOTS: usize = 1024;
/// The largest block `realloc` grows.
const REALLOC_MAX: usize = 128 << 10;

/// A 64-bit xorshift step on a thread's state.
#[inline(always)]
fn random(state: &Cell<u64>) -> u64 {
    let mut x = state.get();
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    state.set(x);
    x
}

type Live = [(usize, usize); LIVE_BLOCKS];

thread_local! {
    static RNG: Cell<u64> = const { Cell::new(0x9e37_79b9_7f4a_7c15) };
    /// The live blocks (address, size) of this thread.
    static LIVE: Cell<*mut Live> = const { Cell::new(core::ptr::null_mut()) };
    /// The block `realloc` grows (address, size).
    static GROWING: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// Sizes from 16 bytes to `max`, by powers of two and halves between:
/// each power as likely as the next, so small blocks dominate the count
/// and large ones the bytes.
fn size(r: u64, max: usize) -> usize {
    let powers = (max / 16).max(1).ilog2() as u64 + 1;
    let s = 16usize << (r % powers);
    (s + (s / 2) * ((r >> 8) & 1) as usize).min(max)
}

/// One call of `a.alloc`, never inlined: a program reaches its global
/// allocator through a call (`__rust_alloc`, or `malloc`), so every
/// allocator is measured behind one here.
#[inline(never)]
fn alloc_call<A: GlobalAlloc>(a: &A, layout: Layout) -> *mut u8 {
    // SAFETY: the callers pass valid layouts of nonzero size.
    unsafe { a.alloc(layout) }
}

/// One call of `a.dealloc`, never inlined (see [`alloc_call`]).
///
/// # Safety
/// `p` came from `a.alloc(layout)` and is live.
#[inline(never)]
unsafe fn dealloc_call<A: GlobalAlloc>(a: &A, p: *mut u8, layout: Layout) {
    // SAFETY: the caller's contract.
    unsafe { a.dealloc(p, layout) }
}

/// One call of `a.realloc`, never inlined (see [`alloc_call`]).
///
/// # Safety
/// `p` came from `a` with `layout` and is live; `new` is nonzero and
/// does not overflow when rounded to the alignment.
#[inline(never)]
unsafe fn realloc_call<A: GlobalAlloc>(a: &A, p: *mut u8, layout: Layout, new: usize) -> *mut u8 {
    // SAFETY: the caller's contract.
    unsafe { a.realloc(p, layout, new) }
}

/// Allocates `size` bytes (at least 16) from `a`, writes the first and
/// last, or counts a failure.
#[inline(always)]
fn get<A: GlobalAlloc>(a: &A, size: usize, failed: &AtomicU64) -> *mut u8 {
    let layout = Layout::from_size_align(size, 8).unwrap_or(Layout::new::<u64>());
    let p = alloc_call(a, layout);
    if p.is_null() {
        failed.fetch_add(1, Ordering::Relaxed);
    } else {
        // SAFETY: the block holds `size` bytes.
        unsafe {
            p.write(1);
            p.add(size - 1).write(2);
        }
    }
    p
}

#[inline(always)]
fn put<A: GlobalAlloc>(a: &A, p: *mut u8, size: usize) {
    if !p.is_null() {
        // SAFETY: `p` came from `a` with this size and alignment.
        unsafe { dealloc_call(a, p, Layout::from_size_align_unchecked(size, 8)) };
    }
}

/// One workload over one allocator.
pub struct Bench<A: GlobalAlloc + Sync> {
    alloc: A,
    work: Work,
    /// Null results, and `realloc` results that lost their contents.
    failed: AtomicU64,
    /// `exchange`: blocks with their size in the first word.
    slots: Vec<AtomicPtr<u8>>,
}

impl<A: GlobalAlloc + Sync> Bench<A> {
    pub fn new(alloc: A, work: Work) -> Self {
        Bench {
            alloc,
            work,
            failed: AtomicU64::new(0),
            slots: (0..SLOTS)
                .map(|_| AtomicPtr::new(core::ptr::null_mut()))
                .collect(),
        }
    }

    /// Frees what the shared slots still hold; exact when nothing failed.
    pub fn finish(&self) -> bool {
        for slot in &self.slots {
            let p = slot.swap(core::ptr::null_mut(), Ordering::AcqRel);
            if !p.is_null() {
                // SAFETY: a block put there by `exchange`, its size first.
                let s = unsafe { (p as *const usize).read() };
                put(&self.alloc, p, s);
            }
        }
        self.failed.load(Ordering::Relaxed) == 0
    }

    /// Replaces one of the first `blocks` live blocks of this thread with a
    /// new one of up to `max` bytes.
    #[inline(always)]
    fn replace(&self, blocks: usize, max: usize) {
        let r = RNG.with(random);
        let mut live = LIVE.get();
        if live.is_null() {
            live = Box::into_raw(Box::new([(0usize, 0usize); LIVE_BLOCKS]));
            LIVE.set(live);
        }
        // SAFETY: this thread's own array, alive until thread_done.
        let slot = unsafe { &mut (*live)[(r >> 32) as usize % blocks] };
        put(&self.alloc, slot.0 as *mut u8, slot.1);
        let s = size(r, max);
        *slot = (get(&self.alloc, s, &self.failed) as usize, s);
    }

    /// Grows this thread's block by half (a new one of 16 bytes when it has
    /// none; freed once past [`REALLOC_MAX`]), checking its first and last
    /// bytes survive.
    #[inline(always)]
    fn grow(&self) {
        let (p, s) = GROWING.get();
        if p == 0 {
            GROWING.set((get(&self.alloc, 16, &self.failed) as usize, 16));
            return;
        }
        let new = s + s / 2;
        if new > REALLOC_MAX {
            put(&self.alloc, p as *mut u8, s);
            GROWING.set((0, 0));
            return;
        }
        // SAFETY: `p` is this thread's live block of `s` bytes, align 8.
        let q = unsafe {
            realloc_call(
                &self.alloc,
                p as *mut u8,
                Layout::from_size_align_unchecked(s, 8),
                new,
            )
        };
        if q.is_null() {
            // The old block is still live and still ours.
            self.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // SAFETY: `q` holds `new` bytes, the first `s` copied from `p`.
        unsafe {
            if q.read() != 1 || q.add(s - 1).read() != 2 {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
            q.add(s - 1).write(0);
            q.add(new - 1).write(2);
        }
        GROWING.set((q as usize, new));
    }
}

impl<A: GlobalAlloc + Sync> Workload for Bench<A> {
    #[inline(always)]
    fn op(&self) {
        let a = &self.alloc;
        match self.work {
            Work::Pair => {
                let p = get(a, 64, &self.failed);
                std::hint::black_box(p);
                put(a, p, 64);
            }
            Work::Churn => self.replace(LIVE_BLOCKS, 4096),
            Work::Mixed => self.replace(LIVE_BLOCKS, 32 << 10),
            Work::Many => self.replace(FEW_BLOCKS, 256),
            Work::Realloc => self.grow(),
            Work::Exchange => {
                let r = RNG.with(random);
                let s = size(r, 1024);
                let p = get(a, s, &self.failed);
                if !p.is_null() {
                    // SAFETY: at least 16 bytes; the size rides along.
                    unsafe { (p as *mut usize).write(s) };
                }
                let old = self.slots[(r >> 32) as usize % SLOTS].swap(p, Ordering::AcqRel);
                if !old.is_null() {
                    // SAFETY: a block put there by `exchange`, its size first.
                    let s = unsafe { (old as *const usize).read() };
                    put(a, old, s);
                }
            }
        }
    }

    fn thread_done(&self) {
        let live = LIVE.replace(core::ptr::null_mut());
        if !live.is_null() {
            // SAFETY: made by `replace` on this thread with Box::into_raw.
            let live = unsafe { Box::from_raw(live) };
            for &(p, s) in live.iter() {
                put(&self.alloc, p as *mut u8, s);
            }
        }
        let (p, s) = GROWING.replace((0, 0));
        put(&self.alloc, p as *mut u8, s);
        RNG.set(0x9e37_79b9_7f4a_7c15 ^ (self as *const Self as u64).rotate_left(17));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_stay_in_range_and_reach_the_top() {
        for max in [256, 1024, 4096, 32 << 10] {
            let state = Cell::new(0x2545_f491_4f6c_dd1d);
            let sizes: Vec<usize> = (0..4096).map(|_| size(random(&state), max)).collect();
            assert!(sizes.iter().all(|&s| (16..=max).contains(&s)), "{max}");
            assert!(sizes.contains(&max), "{max} never drawn");
            assert!(sizes.contains(&16));
        }
    }

    #[test]
    fn every_workload_is_exact_over_the_system_allocator() {
        for w in Work::ALL {
            let b = Bench::new(std::alloc::System, w);
            for _ in 0..10_000 {
                b.op();
            }
            b.thread_done();
            assert!(b.finish(), "{w:?}");
        }
    }
}
