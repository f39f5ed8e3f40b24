//! Two groups on small shared state: adding one to a total (`Counter`,
//! `PerCpuU64` against a mutex and an atomic), and updating two fields
//! together under a lock (`PerCpu` against a mutex).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crossbeam_utils::CachePadded;
use restartable::{Counter, PerCpu, PerCpuU64};

use super::Variant;
use crate::bench::harness::{self, Budget, Measured, Workload};

struct CounterWork(Counter);
impl Workload for CounterWork {
    #[inline(always)]
    fn op(&self) {
        self.0.inc();
    }
}

struct WordsWork(PerCpuU64);
impl Workload for WordsWork {
    #[inline(always)]
    fn op(&self) {
        self.0.add(1);
    }
}

struct MutexWord(CachePadded<Mutex<u64>>);
impl Workload for MutexWord {
    #[inline(always)]
    fn op(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) += 1;
    }
}

struct AtomicWord(CachePadded<AtomicU64>);
impl Workload for AtomicWord {
    #[inline(always)]
    fn op(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Two counters that must always be equal: a stand-in for any update too
/// large for one atomic instruction.
#[derive(Default)]
struct Pair {
    a: u64,
    b: u64,
}

impl Pair {
    #[inline(always)]
    fn update(&mut self) {
        self.a += 1;
        self.b = std::hint::black_box(self.b) + 1;
    }
}

struct PerCpuWork(PerCpu<Pair>);
impl Workload for PerCpuWork {
    #[inline(always)]
    fn op(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .update();
    }
}

struct MutexPair(CachePadded<Mutex<Pair>>);
impl Workload for MutexPair {
    #[inline(always)]
    fn op(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .update();
    }
}

/// Runs one variant of the two groups: (measurement, exact: the totals
/// add up to the operations, and both fields of every pair agree).
pub(super) fn measure(
    variant: Variant,
    threads: u32,
    budget: Budget,
) -> Result<(Measured, bool), String> {
    match variant {
        Variant::Counter => {
            let w = CounterWork(Counter::new());
            let m = harness::run(&w, threads, budget)?;
            Ok((m, w.0.sum() == m.ops))
        }
        Variant::PercpuU64 => {
            let w = WordsWork(PerCpuU64::new());
            let m = harness::run(&w, threads, budget)?;
            Ok((m, w.0.sum() == m.ops))
        }
        Variant::MutexU64 => {
            let w = MutexWord(CachePadded::new(Mutex::new(0)));
            let m = harness::run(&w, threads, budget)?;
            let total = *w.0.lock().unwrap_or_else(PoisonError::into_inner);
            Ok((m, total == m.ops))
        }
        Variant::AtomicU64 => {
            let w = AtomicWord(CachePadded::new(AtomicU64::new(0)));
            let m = harness::run(&w, threads, budget)?;
            Ok((m, w.0.load(Ordering::Relaxed) == m.ops))
        }
        Variant::Percpu => {
            let mut w = PerCpuWork(PerCpu::new());
            let m = harness::run(&w, threads, budget)?;
            let (mut total, mut agree) = (0, true);
            for (_, pair) in w.0.iter_mut() {
                total += pair.a;
                agree &= pair.a == pair.b;
            }
            Ok((m, agree && total == m.ops && !w.0.is_poisoned()))
        }
        Variant::MutexPair => {
            let w = MutexPair(CachePadded::new(Mutex::new(Pair::default())));
            let m = harness::run(&w, threads, budget)?;
            let pair = w.0.lock().unwrap_or_else(PoisonError::into_inner);
            Ok((m, pair.a == m.ops && pair.a == pair.b))
        }
        other => Err(format!("{} is not a word or lock variant", other.name())),
    }
}
