//! Exact ownership under stress: 6 threads per CPU allocate blocks, write
//! a unique tag into each, and pass most of them to other threads to free,
//! with delays injected inside the allocator's sections (feature `inject`),
//! a storm of signals whose handlers allocate too, and yields. No block may be handed out while it is
//! live (a registry of live addresses says), and no tag may be found
//! overwritten. Run on the rseq path, and (in a child) with
//! `RESTARTABLE_DISABLE=1` on the fallback path; each reports which path
//! ran, and the rseq run must have run sections (and, with injection and
//! `abort-stats`, seen them abort).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

mod common;

use restartable_malloc::RestartableMalloc;

#[global_allocator]
static GLOBAL: RestartableMalloc = RestartableMalloc;

const SHARDS: usize = 64;

/// The addresses handed out and not yet freed.
struct Live([Mutex<HashSet<usize>>; SHARDS]);

impl Live {
    fn shard(&self, addr: usize) -> &Mutex<HashSet<usize>> {
        &self.0[(addr >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58]
    }
    fn add(&self, addr: usize, tag: u64) {
        assert!(
            self.shard(addr).lock().unwrap().insert(addr),
            "block {addr:#x} handed out again while live (tag {tag:#x})"
        );
    }
    fn remove(&self, addr: usize) {
        assert!(
            self.shard(addr).lock().unwrap().remove(&addr),
            "block {addr:#x} freed twice"
        );
    }
    fn count(&self) -> usize {
        self.0.iter().map(|s| s.lock().unwrap().len()).sum()
    }
}

/// A live block: its address, size and tag.
struct Block {
    addr: usize,
    size: usize,
    tag: u64,
}

// SAFETY: a block is plain memory owned by whoever holds this value.
unsafe impl Send for Block {}

/// Sizes of the blocks, all at least 16 bytes: the tag and its
/// complement at the two ends must not overlap.
const SIZES: [usize; 12] = [
    16, 17, 24, 48, 100, 128, 500, 1024, 3000, 8192, 40_000, 300_000,
];

fn layout(size: usize) -> std::alloc::Layout {
    std::alloc::Layout::from_size_align(size, 8).unwrap()
}

fn make(live: &Live, size: usize, tag: u64) -> Block {
    // SAFETY: a valid layout; the block is freed by `check_and_free`.
    let p = unsafe { std::alloc::alloc(layout(size)) };
    assert!(!p.is_null(), "out of memory at size {size}");
    let addr = p as usize;
    live.add(addr, tag);
    // SAFETY: the block is ours and holds `size >= 16` bytes.
    unsafe {
        (p as *mut u64).write(tag);
        (p.add(size - 8) as *mut u64).write_unaligned(!tag);
    }
    Block { addr, size, tag }
}

fn check_and_free(live: &Live, b: Block) {
    let p = b.addr as *mut u8;
    // SAFETY: the block is live and ours.
    let (head, tail) = unsafe {
        (
            (p as *const u64).read(),
            (p.add(b.size - 8) as *const u64).read_unaligned(),
        )
    };
    assert_eq!(head, b.tag, "block {:#x}: tag overwritten", b.addr);
    assert_eq!(tail, !b.tag, "block {:#x}: tail tag overwritten", b.addr);
    live.remove(b.addr);
    // SAFETY: allocated by `make` with this layout.
    unsafe { std::alloc::dealloc(p, layout(b.size)) };
}

static SIGNALS: AtomicU64 = AtomicU64::new(0);

/// The same stress with a sweep at most every 10 ms (the release delay;
/// 1000 ms by default): every CPU's caches drained under their guards, a
/// block and one fence at a time, while the sections run on them.
#[test]
fn sweeps_while_sections_run_keep_ownership_exact() {
    if common::in_child() {
        return;
    }
    let line = child_run(&[("RESTARTABLE_MALLOC_RELEASE_MS", "10")], &[]);
    if line.contains("path=rseq") {
        let (sweeps, drained) = (
            common::number(&line, "sweeps"),
            common::number(&line, "drained"),
        );
        assert!(
            sweeps >= 5 && drained > 0,
            "sweeps={sweeps} drained={drained}: {line}"
        );
    }
}

static HANDLER_BLOCKS: AtomicU64 = AtomicU64::new(0);

/// Counts, and allocates and frees a small and a large block: the handler
/// may interrupt the allocator anywhere, its slow paths' locks included,
/// and must be served without waiting for its own thread.
extern "C" fn on_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::Relaxed);
    for size in [48, 300_000] {
        let l = layout(size);
        // SAFETY: a valid layout; the block is freed at once.
        unsafe {
            let p = std::alloc::alloc(l);
            if !p.is_null() {
                p.write(1);
                std::alloc::dealloc(p, l);
                HANDLER_BLOCKS.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

struct Report {
    made: usize,
    freed: usize,
    passed: usize,
    signals: u64,
}

fn stress(ops: usize) -> Report {
    let threads = threads();
    // Delays inside every section, so preemption and signals land in them.
    for point in 0..restartable::inject::POINTS {
        restartable::inject::set_delay(point, 200);
    }
    // SAFETY: installing a handler that only counts (async-signal-safe).
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGUSR1, &sa, core::ptr::null_mut());
    }
    let live = Live(std::array::from_fn(|_| Mutex::new(HashSet::new())));
    let (made, freed, passed) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let done = AtomicBool::new(false);
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..threads).map(|_| mpsc::channel::<Block>()).unzip();
    let tids: Vec<AtomicU64> = (0..threads).map(|_| AtomicU64::new(0)).collect();
    let finished = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for (me, rx) in receivers.into_iter().enumerate() {
            let (live, made, freed, passed) = (&live, &made, &freed, &passed);
            let (senders, tids, finished) = (senders.clone(), &tids, &finished);
            s.spawn(move || {
                // SAFETY: gettid has no preconditions.
                tids[me].store(
                    unsafe { libc::syscall(libc::SYS_gettid) } as u64,
                    Ordering::Release,
                );
                let mut rng = 0x2545_f491_4f6c_dd1d_u64 ^ (me as u64 + 1);
                let mut next = || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                let mut mine = Vec::new();
                for op in 0..ops {
                    let r = next();
                    let size = SIZES[(r % SIZES.len() as u64) as usize];
                    let tag = (me as u64) << 40 | op as u64;
                    let b = make(live, size, tag);
                    made.fetch_add(1, Ordering::Relaxed);
                    if r >> 32 & 3 != 0 {
                        // Most blocks are freed by another thread.
                        let to = (r >> 40) as usize % senders.len();
                        passed.fetch_add(1, Ordering::Relaxed);
                        senders[to].send(b).unwrap();
                    } else {
                        mine.push(b);
                    }
                    while let Ok(b) = rx.try_recv() {
                        check_and_free(live, b);
                        freed.fetch_add(1, Ordering::Relaxed);
                    }
                    if mine.len() > 32 {
                        for b in mine.drain(..16) {
                            check_and_free(live, b);
                            freed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if op % 16 == 0 {
                        std::thread::yield_now();
                    }
                }
                for b in mine {
                    check_and_free(live, b);
                    freed.fetch_add(1, Ordering::Relaxed);
                }
                drop(senders);
                finished.fetch_add(1, Ordering::Release);
                // Blocks still on their way to this thread.
                for b in rx {
                    check_and_free(live, b);
                    freed.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        drop(senders);
        // The signal storm, at every worker in turn, until all finish.
        let (tids, done, finished) = (&tids, &done, &finished);
        s.spawn(move || {
            let mut k = 0;
            while finished.load(Ordering::Acquire) < threads {
                let t = tids[k % threads].load(Ordering::Acquire);
                if t != 0 {
                    // By kernel thread id, in this process only: a thread
                    // that has exited is an ESRCH, never a crash (a
                    // `pthread_t` of an exited thread may be freed memory).
                    // SAFETY: tgkill has no memory preconditions.
                    unsafe {
                        libc::syscall(
                            libc::SYS_tgkill,
                            libc::getpid(),
                            t as libc::pid_t,
                            libc::SIGUSR1,
                        )
                    };
                }
                k += 1;
                std::thread::sleep(Duration::from_micros(50));
            }
            done.store(true, Ordering::Release);
        });
    });
    assert_eq!(live.count(), 0, "blocks left live");
    Report {
        made: made.into_inner(),
        freed: freed.into_inner(),
        passed: passed.into_inner(),
        signals: SIGNALS.load(Ordering::Relaxed),
    }
}

fn path() -> &'static str {
    restartable_malloc::path()
}

/// Operations per worker: 6,000, or `RESTARTABLE_MALLOC_TEST_OPS`.
fn ops_per_thread() -> usize {
    env_number("RESTARTABLE_MALLOC_TEST_OPS").unwrap_or(6_000)
}

/// Workers: 6 x the online CPUs, or `RESTARTABLE_MALLOC_TEST_THREADS`
/// (the many-CPU VM, where 16 vCPUs share 2 host cores under emulation
/// and a signal handler's munmap interrupts every vCPU).
fn threads() -> usize {
    env_number("RESTARTABLE_MALLOC_TEST_THREADS").unwrap_or(6 * restartable::online_cpus())
}

fn env_number(var: &str) -> Option<usize> {
    std::env::var(var).ok()?.parse().ok().filter(|&n| n > 0)
}

#[test]
fn no_block_is_handed_out_twice_or_overwritten() {
    let before = restartable::stats::stats();
    let r = stress(ops_per_thread());
    let m = restartable_malloc::stats().unwrap();
    let aborts = restartable::stats::stats()
        .zip(before)
        .map(|(a, b)| a.aborts - b.aborts);
    println!(
        "[ownership] path={} index={} threads={} made={} freed={} passed={} signals={} refills={} flushes={} \
         fallback_ops={} central_direct={} sweeps={} drained={} aborts={aborts:?} inject={}",
        path(),
        restartable_malloc::index(),
        threads(),
        r.made,
        r.freed,
        r.passed,
        r.signals,
        m.refills,
        m.flushes,
        m.fallback_ops,
        m.central_direct,
        m.sweeps,
        m.drained,
        restartable::inject::ENABLED,
    );
    assert_eq!(r.made, r.freed, "every block made was freed once");
    assert!(r.passed > r.made / 2, "most blocks crossed threads");
    assert!(r.signals > 0, "the signal storm reached the workers");
    assert!(
        HANDLER_BLOCKS.load(Ordering::Relaxed) > 0,
        "signal handlers allocated"
    );
    assert!(m.refills > 0 && m.flushes > 0, "batches moved both ways");
    if std::env::var_os("RESTARTABLE_REQUIRE_RSEQ").is_some_and(|v| v == "1") {
        assert_eq!(path(), "rseq", "this machine must run the rseq path");
    }
    if path() == "rseq" {
        assert!(
            m.fallback_ops < r.made / 100,
            "the rseq run took the fallback path {} times",
            m.fallback_ops
        );
        if let (Some(aborts), true) = (aborts, restartable::inject::ENABLED) {
            assert!(
                aborts > 0,
                "delays inside the sections and signals aborted none"
            );
        }
    }
}

/// Runs the stress in a child with `env` set (and `remove` unset): its
/// report line.
fn child_run(env: &[(&str, &str)], remove: &[&str]) -> String {
    common::child_report(
        "no_block_is_handed_out_twice_or_overwritten",
        "[ownership]",
        env,
        remove,
    )
}

#[test]
fn the_fallback_path_keeps_ownership_exact_too() {
    if common::in_child() {
        return;
    }
    let line = child_run(
        &[("RESTARTABLE_DISABLE", "1")],
        &["RESTARTABLE_REQUIRE_RSEQ"],
    );
    assert!(line.contains("path=fallback"), "{line}");
    let fallback = common::number(&line, "fallback_ops");
    assert!(
        fallback > 10_000,
        "the fallback path served {fallback} operations: {line}"
    );
}

/// The same stress with the caches indexed by `mm_cid`: a block follows a
/// concurrency id from CPU to CPU, and its guard holders fence every CPU.
#[test]
fn caches_indexed_by_mm_cid_keep_ownership_exact() {
    if common::in_child() {
        return;
    }
    let kernel_has_mm_cid = restartable::current_mm_cid().is_some();
    let line = child_run(&[("RESTARTABLE_MALLOC_INDEX", "mm_cid")], &[]);
    if !kernel_has_mm_cid {
        assert!(line.contains("index=cpu_id"), "{line}");
        println!("[ownership] this kernel has no mm_cid: the tunable fell back to cpu_id");
        return;
    }
    assert!(line.contains("index=mm_cid"), "{line}");
    if line.contains("path=rseq") {
        assert!(common::number(&line, "made") > 10_000, "{line}");
    }
}
