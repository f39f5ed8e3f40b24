//! The structures on machines with many, sparse, hot-plugged CPUs (run in
//! earnest by `scripts/many-cpus-vm.sh`: 16 of 64 possible CPUs online,
//! with RESTARTABLE_REQUIRE_HOTPLUG=1 so that the hot-plug tests cannot
//! skip there).
//!
//! - Objects left in an offline CPU's per-CPU lists, caches and buffers
//!   are not stranded: the remote operations (`Stack::pop_all_on`,
//!   `Buffer::drain_cpu`, `Pool::flush`, `PerCpu::lock_slot`) take them
//!   under the slot's guard with a fence, and a fence of an offline CPU
//!   succeeds at once (nothing runs there). Each test checks the exact
//!   objects.
//! - `PerCpu` indexed by `mm_cid` allocates slots for the threads that
//!   ran at once, not for the CPUs they ran on.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;

use common::cpus;
use restartable::{Buffer, Node, PerCpu, Pool, Stack};

fn path() -> &'static str {
    let reg = restartable::registration();
    let required = std::env::var_os("RESTARTABLE_REQUIRE_RSEQ").is_some_and(|v| v == "1");
    assert!(
        reg.rseq_available() || !required,
        "rseq required but this thread takes the fallback: {reg:?}"
    );
    if reg.rseq_available() {
        "rseq"
    } else {
        "fallback"
    }
}

static MADE: AtomicUsize = AtomicUsize::new(0);

#[test]
fn objects_on_an_offline_cpu_are_reclaimed() {
    let Some(cpu) = cpus::hotpluggable_or_skip("objects_on_an_offline_cpu_are_reclaimed") else {
        return;
    };
    const N: u64 = 40;
    let stack: Stack<u64> = Stack::new();
    let buffer: Buffer<u64> = Buffer::new(64);
    let percpu: PerCpu<u64> = PerCpu::new_by_cpu();
    let pool = Pool::with_cache(
        || {
            MADE.fetch_add(1, Ordering::Relaxed);
            0u64
        },
        16,
    );
    // Everything on `cpu`, from a thread pinned there.
    let (ran, on) = std::thread::scope(|s| {
        s.spawn(|| {
            assert!(cpus::pin(cpu), "cannot pin to cpu{cpu}");
            let mut on = BTreeSet::new();
            for i in 0..N {
                stack.push(Node::new(i));
                buffer.push(i).unwrap();
                let mut guard = percpu.lock().unwrap();
                *guard += 1;
                on.insert(guard.index());
            }
            // Eight objects into the pool's cache on `cpu`, all made here.
            let objects: Vec<_> = (0..8).map(|_| pool.get()).collect();
            drop(objects);
            on.insert(restartable::current_cpu());
            (path(), on)
        })
        .join()
        .unwrap()
    });
    assert_eq!(on, BTreeSet::from([cpu]), "the pinned thread left cpu{cpu}");
    let made = MADE.load(Ordering::Relaxed);
    assert_eq!(pool.cached(), 8, "the pool's cache on cpu{cpu}");

    let offline = cpus::Offline::take(cpu).expect("take the CPU offline");
    assert!(!cpus::online().contains(&cpu), "cpu{cpu} still online");
    let mut nodes: Vec<u64> = stack
        .pop_all_on(cpu)
        .unwrap()
        .into_iter()
        .map(|n| n.into_inner())
        .collect();
    nodes.sort_unstable();
    let mut records = Vec::new();
    let drained = buffer
        .drain_cpu(cpu, |r| records.extend_from_slice(r))
        .unwrap();
    let slot = *percpu.lock_slot(cpu).unwrap().unwrap();
    // Flushed to the shared list, the offline CPU's objects serve gets
    // on this thread's CPU: none is made anew, none is left behind.
    pool.flush().unwrap();
    let again: Vec<_> = (0..8).map(|_| pool.get()).collect();
    let made_after = MADE.load(Ordering::Relaxed);
    let cached_after = pool.cached();
    drop(again);
    drop(offline);

    assert_eq!(
        nodes,
        (0..N).collect::<Vec<_>>(),
        "the stack's nodes on cpu{cpu}"
    );
    assert_eq!(drained, N as usize);
    assert_eq!(
        records,
        (0..N).collect::<Vec<_>>(),
        "the buffer's records on cpu{cpu}"
    );
    assert_eq!(slot, N, "PerCpu's slot of cpu{cpu}");
    assert_eq!(
        cached_after, 0,
        "objects left in the pool after Pool::flush and 8 gets"
    );
    assert_eq!(
        made_after, made,
        "objects of the offline CPU's cache were lost"
    );
    println!(
        "[hotplug] structures: cpu{cpu} offline ({ran}): reclaimed stack {} nodes, buffer {drained} records, \
         PerCpu slot {slot}, pool {} cached objects; all exact",
        nodes.len(),
        8
    );
}

/// Which slots 4 threads use, hopping over every CPU this process may run
/// on together (a barrier at each hop keeps all 4 alive).
fn slots_used(
    percpu: &PerCpu<u64>,
    threads: usize,
) -> (BTreeSet<usize>, BTreeSet<usize>, usize, u64) {
    let cpus = cpus::allowed();
    let barrier = Barrier::new(threads);
    let alive = AtomicUsize::new(0);
    let results: Vec<(BTreeSet<usize>, BTreeSet<usize>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (cpus, barrier, alive) = (&cpus, &barrier, &alive);
                s.spawn(move || {
                    let (mut slots, mut visited) = (BTreeSet::new(), BTreeSet::new());
                    for round in 0..2 {
                        for k in 0..cpus.len() {
                            barrier.wait();
                            let cpu = cpus[(k + t + round) % cpus.len()];
                            if cpus::pin(cpu) {
                                visited.insert(cpu);
                            }
                            let mut guard = percpu.lock().unwrap();
                            *guard += 1;
                            slots.insert(guard.index());
                            drop(guard);
                            alive.fetch_max(cpus::threads(), Ordering::Relaxed);
                        }
                    }
                    (slots, visited)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut slots = BTreeSet::new();
    let mut visited = BTreeSet::new();
    for (s, v) in results {
        slots.extend(s);
        visited.extend(v);
    }
    let ops = (2 * threads * cpus.len()) as u64;
    (slots, visited, alive.load(Ordering::Relaxed), ops)
}

#[test]
fn per_cpu_slots_under_mm_cid_grow_with_threads_not_cpus() {
    const THREADS: usize = 4;
    let by_cid: PerCpu<u64> = PerCpu::new();
    let by_cpu: PerCpu<u64> = PerCpu::new_by_cpu();
    let (cid_slots, visited, alive, ops) = slots_used(&by_cid, THREADS);
    let (cpu_slots, cpu_visited, _, _) = slots_used(&by_cpu, THREADS);
    let sum = |p: &PerCpu<u64>| {
        let mut total = 0;
        p.for_each(|_, v| total += *v).unwrap();
        total
    };
    assert_eq!(sum(&by_cid), ops, "increments of the mm_cid-indexed PerCpu");
    assert_eq!(sum(&by_cpu), ops, "increments of the CPU-indexed PerCpu");
    let has_cid = restartable::current_mm_cid().is_some();
    let slot_bytes = 128; // each slot is boxed on its own cache lines
    println!(
        "[mm-cid-memory] PerCpu: {THREADS} threads over {} CPUs ({} online, {} possible), path {}: \
         by mm_cid {} slots (~{} bytes, ids {:?}), by CPU {} slots (~{} bytes); {alive} threads alive at most",
        visited.len(),
        cpus::online().len(),
        restartable::possible_cpus(),
        path(),
        by_cid.slots_in_use(),
        by_cid.slots_in_use() * slot_bytes,
        cid_slots,
        by_cpu.slots_in_use(),
        by_cpu.slots_in_use() * slot_bytes,
    );
    // By CPU: a slot for each CPU visited, exactly.
    assert_eq!(cpu_slots, cpu_visited, "slots of a CPU-indexed PerCpu");
    assert_eq!(by_cpu.slots_in_use(), cpu_visited.len());
    if has_cid && path() == "rseq" {
        assert_eq!(by_cid.slots_in_use(), cid_slots.len());
        if cpus::compact_mm_cids() {
            // By mm_cid: ids below the threads alive, however many CPUs,
            // and a slot per worker (one more, should an id change).
            assert!(
                cid_slots.iter().all(|&id| id < alive.max(THREADS)),
                "mm_cid slots {cid_slots:?} with {alive} threads alive"
            );
            assert!(
                cid_slots.len() <= THREADS + 1,
                "{} mm_cid slots for {THREADS} threads: {cid_slots:?}",
                cid_slots.len()
            );
        } else {
            println!("[mm-cid-memory] this kernel (before 6.13) does not keep mm_cids below the threads: not checked");
        }
    }
}
