//! Single-thread cost of one per-CPU increment and of reading the CPU id,
//! against the usual alternatives, measured with criterion in one run.
//! Multi-thread scaling lives in `restartable bench counter`.
//!
//! cargo bench -p restartable --bench counter

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{criterion_group, criterion_main, Criterion};
use restartable::Counter;

fn increments(c: &mut Criterion) {
    let mut group = c.benchmark_group("increment");
    let counter = Counter::new();
    group.bench_function("counter", |b| b.iter(|| counter.inc()));
    let shared = AtomicU64::new(0);
    group.bench_function("shared_atomic", |b| {
        b.iter(|| shared.fetch_add(1, Ordering::Relaxed))
    });
    let slots: Vec<AtomicU64> = (0..restartable::possible_cpus())
        .map(|_| AtomicU64::new(0))
        .collect();
    group.bench_function("sched_getcpu_atomic", |b| {
        b.iter(|| {
            // SAFETY: sched_getcpu has no preconditions.
            let cpu = unsafe { libc::sched_getcpu() }.max(0) as usize;
            slots[cpu % slots.len()].fetch_add(1, Ordering::Relaxed)
        })
    });
    group.bench_function("rseq_cpu_atomic", |b| {
        b.iter(|| slots[restartable::current_cpu()].fetch_add(1, Ordering::Relaxed))
    });
    group.finish();
    black_box(counter.sum());
}

fn cpu_ids(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_id");
    group.bench_function("current_cpu", |b| b.iter(restartable::current_cpu));
    // SAFETY: sched_getcpu has no preconditions.
    group.bench_function("sched_getcpu", |b| {
        b.iter(|| unsafe { libc::sched_getcpu() })
    });
    group.finish();
}

criterion_group!(benches, increments, cpu_ids);
criterion_main!(benches);
