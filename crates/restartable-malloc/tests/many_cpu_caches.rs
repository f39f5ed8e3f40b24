//! The allocator on machines with many, sparse, hot-plugged CPUs (run in
//! earnest by `scripts/many-cpus-vm.sh`: 16 of 64 possible CPUs online,
//! RESTARTABLE_REQUIRE_HOTPLUG=1).
//!
//! - Cache memory follows the index: four threads hopping over every
//!   online CPU touch a cache block per CPU with `cpu_id` indexing, but
//!   one per concurrency id with `mm_cid` (`Stats::cache_blocks_resident`,
//!   from /proc/self/pagemap), in a child process per index.
//! - An offline CPU's cache is not stranded: `trim` (and the release
//!   policy's sweeps, which do the same every release delay) drains every
//!   CPU's cache under its guard through the fence, and a fence of an
//!   offline CPU succeeds at once.

use std::sync::Barrier;

mod common;
#[path = "../../restartable/tests/common/cpus.rs"]
mod cpus;

use restartable_malloc::RestartableMalloc;

#[global_allocator]
static GLOBAL: RestartableMalloc = RestartableMalloc;

const THREADS: usize = 4;

/// Small objects of several classes, allocated, written and freed.
fn churn(round: usize) {
    let mut held: Vec<Vec<u8>> = Vec::with_capacity(64);
    for i in 0..64 {
        let size = [16, 48, 96, 256, 1024][i % 5];
        held.push(vec![(i + round) as u8; size]);
    }
    assert!(held
        .iter()
        .enumerate()
        .all(|(i, v)| v[0] == (i + round) as u8));
}

/// The child: four threads allocate once where they start (their first
/// operations, and those before a thread's registration is in place, may
/// use the block of their CPU number), then hop over every CPU together;
/// reports the cache blocks in RAM before and after the hops.
fn hop_and_report() {
    let cpus = cpus::allowed();
    let barrier = Barrier::new(THREADS);
    let started = Barrier::new(THREADS + 1);
    let ids = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let blocks = || {
        restartable_malloc::stats()
            .expect("the heap is set up")
            .cache_blocks_resident
    };
    let before = std::thread::scope(|s| {
        for t in 0..THREADS {
            let (cpus, barrier, started, ids) = (&cpus, &barrier, &started, &ids);
            s.spawn(move || {
                churn(0);
                started.wait();
                started.wait();
                for k in 0..cpus.len() {
                    barrier.wait();
                    cpus::pin(cpus[(k + t) % cpus.len()]);
                    churn(k);
                    if let Some(id) = restartable::current_mm_cid() {
                        ids.lock().unwrap().insert(id);
                    }
                }
            });
        }
        started.wait();
        let before = blocks();
        started.wait();
        before
    });
    let ids: Vec<String> = ids
        .into_inner()
        .unwrap()
        .iter()
        .map(|i| i.to_string())
        .collect();
    let stats = restartable_malloc::stats().expect("the heap is set up");
    println!(
        "[mm-cid-memory] index={} path={} threads={THREADS} cpus={} possible={} blocks={} new_blocks={} resident_kib={} worker_mm_cids={}",
        restartable_malloc::index(),
        restartable_malloc::path(),
        cpus.len(),
        stats.cpus,
        stats.cache_blocks_resident,
        stats.cache_blocks_resident.saturating_sub(before),
        stats.cache_resident_bytes / 1024,
        ids.join(",")
    );
}

fn child(index: &str) -> String {
    common::child_report(
        "cache_memory_follows_the_index",
        "[mm-cid-memory]",
        &[("RESTARTABLE_MALLOC_INDEX", index)],
        &[],
    )
}

#[test]
fn cache_memory_follows_the_index() {
    if common::in_child() {
        hop_and_report();
        return;
    }
    let by_cpu = child("cpu_id");
    let cpus = common::number(&by_cpu, "cpus");
    let cpu_blocks = common::number(&by_cpu, "blocks");
    if by_cpu.contains("path=rseq") {
        // Every CPU the threads ran on, and the main thread's.
        assert!(
            cpu_blocks >= cpus,
            "cpu_id: fewer blocks than CPUs visited: {by_cpu}"
        );
    }
    let by_cid = child("mm_cid");
    if !by_cid.contains("index=mm_cid") || !by_cid.contains("path=rseq") {
        println!("[mm-cid-memory] no mm_cid indexing here: {by_cid}");
        return;
    }
    let cid_blocks = common::number(&by_cid, "blocks");
    let (cid_new, cpu_new) = (
        common::number(&by_cid, "new_blocks"),
        common::number(&by_cpu, "new_blocks"),
    );
    // Hopping over every CPU, the four threads keep their mm_cids (below
    // the process's threads, from Linux 6.13) and so their blocks: next to
    // none is touched anew (one, should an id change on the way), where
    // CPU indexing touches one for each CPU no thread had used before.
    if cpus::compact_mm_cids() {
        assert!(
            cid_new <= 1,
            "mm_cid: {cid_new} blocks touched by the hops: {by_cid}"
        );
        // (How many the CPU index touches anew depends on where the
        // threads started; with more CPUs than threads, some.)
        if by_cpu.contains("path=rseq") && cpus > 2 * (THREADS + 2) {
            assert!(
                cpu_new > cid_new.max(1),
                "cpu_id: only {cpu_new} blocks touched by hops over {cpus} CPUs: {by_cpu}"
            );
        }
    } else {
        println!("[mm-cid-memory] this kernel (before 6.13) does not keep mm_cids below the threads: not checked");
    }
    println!(
        "[mm-cid-memory] allocator: {THREADS} threads over {cpus} CPUs: {cid_blocks} cache blocks \
         ({} KiB; {cid_new} new in the hops) by mm_cid (the workers' ids {}), {cpu_blocks} ({} KiB; \
         {cpu_new} new in the hops) by CPU",
        common::number(&by_cid, "resident_kib"),
        common::word(&by_cid, "worker_mm_cids"),
        common::number(&by_cpu, "resident_kib")
    );
}

#[test]
fn an_offline_cpus_cache_is_reclaimed() {
    let Some(cpu) = cpus::hotpluggable_or_skip("an_offline_cpus_cache_is_reclaimed") else {
        return;
    };
    let cached_on = |cpu: usize| restartable_malloc::stats().unwrap().cached_by_cpu[cpu];
    let ran = std::thread::scope(|s| {
        s.spawn(|| {
            assert!(cpus::pin(cpu), "cannot pin to cpu{cpu}");
            restartable_malloc::trim();
            churn(1);
            (restartable::current_cpu(), restartable_malloc::path())
        })
        .join()
        .unwrap()
    });
    assert_eq!(ran.0, cpu, "the pinned thread left cpu{cpu}");
    let before = cached_on(cpu);
    assert!(before > 0, "nothing cached on cpu{cpu} ({})", ran.1);
    let offline = cpus::Offline::take(cpu).expect("take the CPU offline");
    let stranded = cached_on(cpu);
    let drained_before = restartable_malloc::stats().unwrap().drained;
    restartable_malloc::trim();
    let stats = restartable_malloc::stats().unwrap();
    let after = stats.cached_by_cpu[cpu];
    // The reclaimed objects serve this thread.
    churn(2);
    drop(offline);
    assert_eq!(
        after, 0,
        "cpu{cpu}'s cache still holds {after} bytes after trim"
    );
    assert!(stats.drained > drained_before, "trim drained nothing");
    println!(
        "[hotplug] allocator: cpu{cpu} offline ({}) held {stranded} bytes in its cache; trim reclaimed them \
         (now {after}; {} objects drained)",
        ran.1,
        stats.drained - drained_before
    );
}
