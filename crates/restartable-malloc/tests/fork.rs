//! `fork` while other threads allocate: the child must be able to
//! allocate at once (every lock is held across the fork and released in
//! both processes), and the parent's threads must go on (none left asleep
//! on a lock).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use restartable_malloc::RestartableMalloc;

#[global_allocator]
static GLOBAL: RestartableMalloc = RestartableMalloc;

/// Mixed sizes, large ones included, so the central lists and the spans'
/// lock are busy when the fork comes.
fn churn(seed: u64, rounds: usize) -> u64 {
    let mut sum = 0u64;
    let mut x = seed | 1;
    for _ in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let size = [24usize, 200, 3000, 40_000, 300_000][(x % 5) as usize];
        let mut v = vec![0u8; size];
        v[size - 1] = x as u8;
        sum = sum.wrapping_add(u64::from(v[size - 1]));
    }
    sum
}

#[test]
fn a_child_forked_while_threads_allocate_allocates_at_once() {
    // A hang must fail the test, not stall the suite.
    static DONE: AtomicBool = AtomicBool::new(false);
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(120));
        if !DONE.load(Ordering::Relaxed) {
            eprintln!("[fork] still running after 120 s: a thread hangs on the allocator");
            std::process::abort();
        }
    });
    let stop = AtomicBool::new(false);
    let work = AtomicU64::new(0);
    let forks = 40;
    std::thread::scope(|s| {
        for t in 0..4 {
            let (stop, work) = (&stop, &work);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    churn(t + 1, 64);
                    work.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        for k in 0..forks {
            // SAFETY: the child only allocates (through this allocator,
            // which is fork-safe) and leaves with _exit.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                let ok = churn(k + 100, 200) != u64::MAX;
                // SAFETY: leaving the child without running the parent's
                // destructors.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            let start = Instant::now();
            let mut status = 0;
            loop {
                // SAFETY: waiting for our own child.
                let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                if r == pid {
                    break;
                }
                if start.elapsed() > Duration::from_secs(20) {
                    // SAFETY: our own child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    stop.store(true, Ordering::Relaxed);
                    panic!("fork {k}: the child hung allocating");
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "fork {k}: child status {status:#x}"
            );
        }
        let before = work.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            work.load(Ordering::Relaxed) > before,
            "the parent's threads stopped allocating after the forks"
        );
        stop.store(true, Ordering::Relaxed);
    });
    DONE.store(true, Ordering::Relaxed);
    println!("[fork] {forks} forks while 4 threads allocated: every child allocated and exited");
}
