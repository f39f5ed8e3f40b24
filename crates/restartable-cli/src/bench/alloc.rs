//! `restartable bench alloc`: the per-CPU allocator (`restartable-malloc`)
//! against the C library's malloc (`libc`: glibc's, or musl's in a musl
//! build) and mimalloc (not in musl builds: it needs a C compiler for the
//! target), each called through `GlobalAlloc` in the same run, on three
//! workloads:
//!
//! | workload | one operation |
//! |---|---|
//! | `pair` | allocate 64 bytes, write them, free them (a thread's own churn) |
//! | `churn` | replace a random one of the thread's 256 live blocks (16 bytes to 4 KiB) with a new one |
//! | `exchange` | swap a new block (16 bytes to 1 KiB) into one of 1024 slots shared by every thread, and free the block taken out: most frees are of another thread's block |

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use clap::ValueEnum;
use restartable_malloc::RestartableMalloc;
use serde::Serialize;

use super::harness::{self, Budget, Measured, Plan, Workload};
use super::report::{self, print_table, TableRow};
use super::RunArgs;

/// The allocators compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
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
}

/// The workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Work {
    /// Allocate 64 bytes, write, free.
    Pair,
    /// Replace one of 256 live blocks per thread (16 B to 4 KiB).
    Churn,
    /// Swap a new block into a slot shared by all threads, free the old.
    Exchange,
}

impl Allocator {
    const ALL: &'static [Allocator] = &[
        Allocator::Restartable,
        Allocator::Libc,
        #[cfg(not(target_env = "musl"))]
        Allocator::Mimalloc,
    ];
}

impl Work {
    const ALL: [Work; 3] = [Work::Pair, Work::Churn, Work::Exchange];
}

type Variant = (Allocator, Work);

fn name((a, w): Variant) -> &'static str {
    match (a, w) {
        (Allocator::Restartable, Work::Pair) => "restartable pair",
        (Allocator::Restartable, Work::Churn) => "restartable churn",
        (Allocator::Restartable, Work::Exchange) => "restartable exchange",
        (Allocator::Libc, Work::Pair) => "libc pair",
        (Allocator::Libc, Work::Churn) => "libc churn",
        (Allocator::Libc, Work::Exchange) => "libc exchange",
        #[cfg(not(target_env = "musl"))]
        (Allocator::Mimalloc, Work::Pair) => "mimalloc pair",
        #[cfg(not(target_env = "musl"))]
        (Allocator::Mimalloc, Work::Churn) => "mimalloc churn",
        #[cfg(not(target_env = "musl"))]
        (Allocator::Mimalloc, Work::Exchange) => "mimalloc exchange",
    }
}

#[derive(Serialize)]
struct Row {
    allocator: Allocator,
    workload: Work,
    threads: u32,
    ns_per_op: f64,
    mops: f64,
    exact: bool,
    /// This row's throughput over the C library malloc's at the same
    /// workload and thread count: above 1, this allocator is faster.
    speedup_vs_libc: Option<f64>,
}

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

thread_local! {
    static RNG: Cell<u64> = const { Cell::new(0x9e37_79b9_7f4a_7c15) };
    /// The `churn` workload's live blocks (address, size) of this thread.
    static LIVE: Cell<*mut [(usize, usize); CHURN]> = const { Cell::new(core::ptr::null_mut()) };
}

const CHURN: usize = 256;
const SLOTS: usize = 1024;

/// Size classes a workload draws from, 16 bytes to `max`, by powers and
/// halves.
fn size(r: u64, max: usize) -> usize {
    let s = 16usize << (r % 8);
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

/// Allocates `size` bytes from `a`, writes the first and last, or counts a
/// failure.
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

struct Bench<A: GlobalAlloc + Sync> {
    alloc: A,
    work: Work,
    failed: AtomicU64,
    /// `exchange`: blocks with their size in the first word.
    slots: Vec<AtomicPtr<u8>>,
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
            Work::Churn => {
                let r = RNG.with(random);
                let live = LIVE.get();
                let live = if live.is_null() {
                    let fresh = Box::into_raw(Box::new([(0usize, 0usize); CHURN]));
                    LIVE.set(fresh);
                    fresh
                } else {
                    live
                };
                // SAFETY: this thread's own array, alive until thread_done.
                let slot = unsafe { &mut (*live)[(r >> 32) as usize % CHURN] };
                put(a, slot.0 as *mut u8, slot.1);
                let s = size(r, 4096);
                *slot = (get(a, s, &self.failed) as usize, s);
            }
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
            // SAFETY: made by `op` on this thread with Box::into_raw.
            let live = unsafe { Box::from_raw(live) };
            for &(p, s) in live.iter() {
                put(&self.alloc, p as *mut u8, s);
            }
        }
        RNG.set(0x9e37_79b9_7f4a_7c15 ^ (self as *const Self as u64).rotate_left(17));
    }
}

impl<A: GlobalAlloc + Sync> Bench<A> {
    fn new(alloc: A, work: Work) -> Self {
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
    fn finish(&self) -> bool {
        for slot in &self.slots {
            let p = slot.swap(core::ptr::null_mut(), Ordering::AcqRel);
            if !p.is_null() {
                // SAFETY: as in `op`.
                let s = unsafe { (p as *const usize).read() };
                put(&self.alloc, p, s);
            }
        }
        self.failed.load(Ordering::Relaxed) == 0
    }
}

fn measure(v: Variant, threads: u32, budget: Budget) -> Result<(Measured, bool), String> {
    fn go<A: GlobalAlloc + Sync>(
        a: A,
        w: Work,
        t: u32,
        b: Budget,
    ) -> Result<(Measured, bool), String> {
        let bench = Bench::new(a, w);
        let m = harness::run(&bench, t, b)?;
        Ok((m, bench.finish()))
    }
    match v.0 {
        Allocator::Restartable => go(RestartableMalloc, v.1, threads, budget),
        Allocator::Libc => go(System, v.1, threads, budget),
        #[cfg(not(target_env = "musl"))]
        Allocator::Mimalloc => go(mimalloc::MiMalloc, v.1, threads, budget),
    }
}

pub fn run(args: &RunArgs, allocators: Vec<Allocator>, works: Vec<Work>) -> Result<(), String> {
    let plan = Plan::new(args);
    let allocators = if allocators.is_empty() {
        Allocator::ALL.to_vec()
    } else {
        allocators
    };
    let works = if works.is_empty() {
        Work::ALL.to_vec()
    } else {
        works
    };
    let variants: Vec<Variant> = works
        .iter()
        .flat_map(|&w| allocators.iter().map(move |&a| (a, w)))
        .collect();
    let measured = plan.run(&variants, name, measure)?;
    // This row's throughput over libc's: a speedup.
    let ratios = report::ratios_of(&measured, |(_, w)| (Allocator::Libc, w), |m| m.mops);
    let rows: Vec<Row> = measured
        .into_iter()
        .zip(ratios)
        .map(|(((a, w), t, m, exact), ratio)| Row {
            allocator: a,
            workload: w,
            threads: t,
            ns_per_op: m.ns_per_op,
            mops: m.mops,
            exact,
            speedup_vs_libc: ratio,
        })
        .collect();
    if args.json {
        report::print_json(&rows)?;
    } else {
        let path = restartable_malloc::path();
        println!(
            "restartable bench alloc: {}, {}, restartable-malloc on its {path} path",
            report::cpus(),
            report::rseq_state()
        );
        let table: Vec<TableRow> = rows
            .iter()
            .map(|r| {
                (
                    name((r.allocator, r.workload)),
                    r.threads,
                    r.ns_per_op,
                    r.mops,
                    r.speedup_vs_libc,
                    r.exact,
                )
            })
            .collect();
        print_table("x libc", &table);
        println!("x libc: this row's Mops/s over the C library malloc's (libc) at the same workload and thread count; above 1 means faster than it.");
    }
    if rows.iter().all(|r| r.exact) {
        Ok(())
    } else {
        Err("an allocator returned null".to_owned())
    }
}
