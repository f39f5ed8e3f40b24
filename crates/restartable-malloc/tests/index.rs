//! Which block a thread's frees land in: with `RESTARTABLE_MALLOC_INDEX=mm_cid`
//! the block of its concurrency id, wherever it runs; by default the block
//! of its CPU. One thread hops over every online CPU (pinning itself),
//! freeing small objects on each, in a child process per index; after a
//! `trim` empties every cache first, the blocks holding objects must be
//! exactly the ids the thread had.

use std::collections::BTreeSet;

mod common;

use restartable_malloc::RestartableMalloc;

#[global_allocator]
static GLOBAL: RestartableMalloc = RestartableMalloc;

/// Pins the calling thread to `cpu`; false when refused.
fn pin(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes within it
    // for `cpu` below CPU_SETSIZE; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            return false;
        }
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn fmt(set: &BTreeSet<usize>) -> String {
    set.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The blocks holding cached objects now.
fn blocks() -> BTreeSet<usize> {
    let stats = restartable_malloc::stats().expect("the heap is set up");
    stats
        .cached_by_cpu
        .iter()
        .enumerate()
        .filter(|(_, &b)| b > 0)
        .map(|(i, _)| i)
        .collect()
}

/// The child: hops, frees, reports. Each hop empties every cache
/// (`trim`), pins the thread to one CPU, frees objects there and reads
/// which blocks hold objects: the one of the thread's id, and only it.
fn hop_and_report() {
    let by_cid = restartable_malloc::index() == "mm_cid";
    let (mut hops, mut matched, mut differs) = (0, 0, 0);
    let (mut cpus, mut cids, mut all) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for round in 0..4u8 {
        for cpu in 0..restartable::possible_cpus() {
            if !pin(cpu) {
                continue;
            }
            restartable_malloc::trim();
            let boxes: Vec<Box<[u8; 48]>> = (0..8).map(|i| Box::new([i ^ round; 48])).collect();
            let (now, cid) = (restartable::current_cpu(), restartable::current_mm_cid());
            assert!(boxes.iter().all(|b| b[47] == b[0]));
            drop(boxes);
            let seen = blocks();
            hops += 1;
            cpus.insert(now);
            if let Some(c) = cid {
                cids.insert(c);
                differs += usize::from(c != now);
            }
            let id = if by_cid { cid.unwrap_or(now) } else { now };
            matched += usize::from(seen.len() == 1 && seen.contains(&id));
            all.extend(seen);
        }
    }
    println!(
        "[index] index={} path={} hops={hops} matched={matched} mm_cid_not_cpu={differs} cpus={} mm_cids={} blocks={}",
        restartable_malloc::index(),
        restartable_malloc::path(),
        fmt(&cpus),
        fmt(&cids),
        fmt(&all),
    );
}

fn child(index: &str) -> (String, [BTreeSet<usize>; 3]) {
    let line = common::child_report(
        "blocks_follow_the_index",
        "[index]",
        &[
            ("RESTARTABLE_MALLOC_INDEX", index),
            ("RESTARTABLE_MALLOC_RELEASE_MS", "0"),
        ],
        &[],
    );
    let set = |key: &str| -> BTreeSet<usize> {
        common::word(&line, key)
            .split(',')
            .filter_map(|v| v.parse().ok())
            .collect()
    };
    let sets = [set("cpus"), set("mm_cids"), set("blocks")];
    (line, sets)
}

/// Each hop's frees landed in the one block of the index's id (one hop
/// may lose its thread to a context switch between the read and the
/// frees).
fn check(line: &str) {
    if line.contains("path=rseq") {
        let (hops, matched) = (
            common::number(line, "hops"),
            common::number(line, "matched"),
        );
        assert!(hops > 0, "the thread could not pin itself anywhere: {line}");
        assert!(matched + 1 >= hops, "frees landed in other blocks: {line}");
    }
}

#[test]
fn blocks_follow_the_index() {
    if common::in_child() {
        hop_and_report();
        return;
    }
    let (line, _) = child("cpu_id");
    assert!(line.contains("index=cpu_id"), "{line}");
    check(&line);
    let (line, [cpus, _, blocks]) = child("mm_cid");
    if restartable::current_mm_cid().is_none() {
        assert!(
            line.contains("index=cpu_id"),
            "this kernel has no mm_cid: {line}"
        );
        return;
    }
    assert!(line.contains("index=mm_cid"), "{line}");
    check(&line);
    println!(
        "[index] mm_cid: {} block(s) used for {} CPU(s) visited; {} hop(s) where the mm_cid was not the CPU",
        blocks.len(),
        cpus.len(),
        common::number(&line, "mm_cid_not_cpu")
    );
}
