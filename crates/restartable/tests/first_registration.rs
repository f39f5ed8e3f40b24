//! The moment a process's first thread registers rseq: until then the
//! fallback paths skip the fence (and `PerCpu` takes its lock without the
//! guard); threads that register while others are in the middle of such
//! operations must still find every lock exclusive and every update kept.
//! Alone in its test binary, so that no other test registers first.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use restartable::{PerCpu, PerCpuU64};

#[derive(Default)]
struct Pair {
    a: u64,
    b: u64,
}

#[test]
fn threads_that_register_late_meet_fallback_threads_exactly() {
    // Nothing in this process may have used rseq yet.
    restartable::opt_out_current_thread();
    let pairs: PerCpu<Pair> = PerCpu::new_by_cpu();
    let words = PerCpuU64::new();
    let torn = AtomicU64::new(0);
    let started = AtomicBool::new(false);
    let (early, late, rounds) = (4u64, 4u64, if cfg!(miri) { 50 } else { 20_000 });
    // One round of work: the pair under the lock, then a word.
    let work = || {
        {
            let mut p = pairs.lock().unwrap();
            if p.a != p.b {
                torn.fetch_add(1, Ordering::Relaxed);
            }
            p.a += 1;
            std::hint::spin_loop();
            p.b += 1;
        }
        words.add(1);
    };
    std::thread::scope(|s| {
        for _ in 0..early {
            s.spawn(|| {
                restartable::opt_out_current_thread();
                for i in 0..rounds {
                    work();
                    if i == rounds / 10 {
                        started.store(true, Ordering::Release);
                    }
                }
            });
        }
        // Registers (on a machine with rseq) once the early threads are
        // well into their loops.
        for _ in 0..late {
            s.spawn(|| {
                while !started.load(Ordering::Acquire) {
                    std::thread::yield_now();
                }
                for _ in 0..rounds {
                    work();
                }
                let reg = restartable::registration();
                let required =
                    std::env::var_os("RESTARTABLE_REQUIRE_RSEQ").is_some_and(|v| v == "1");
                assert!(reg.rseq_available() || !required, "{reg:?}");
            });
        }
    });
    let mut pairs = pairs;
    let (mut total, mut agree) = (0, true);
    for (_, p) in pairs.iter_mut() {
        total += p.a;
        agree &= p.a == p.b;
    }
    println!(
        "[first registration] {} locked updates, {} word adds, {} torn",
        total,
        words.sum(),
        torn.load(Ordering::Relaxed)
    );
    assert_eq!(torn.load(Ordering::Relaxed), 0, "a lock was held twice");
    assert!(agree, "a pair left torn");
    assert_eq!(total, (early + late) * rounds);
    assert_eq!(words.sum(), (early + late) * rounds);
}
