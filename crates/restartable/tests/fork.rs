//! A guard or a per-CPU lock held by another thread when the process
//! forks: in the child that thread does not exist, so the child must take
//! it over instead of waiting forever, with `fork` (atfork handlers run)
//! and with a raw `clone` (they do not). A lock taken over that way may
//! guard a value its holder left half-updated: the slot is poisoned.

use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use restartable::{PerCpu, PerCpuU64};

static WORDS: PerCpuU64 = PerCpuU64::new();

/// Waits up to 20 s for `pid`; kills it and fails if it is still running.
fn exit_status(pid: libc::pid_t) -> i32 {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        let done = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if done == pid {
            return if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                -1
            };
        }
        if start.elapsed() > Duration::from_secs(20) {
            // SAFETY: killing our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the child waited for a guard its parent's thread held");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_guard_held_across_fork_is_taken_over_in_the_child() {
    WORDS.add(0);
    for raw in [false, true] {
        let (held_tx, held_rx) = channel();
        let (go_tx, go_rx) = channel::<()>();
        let holder = std::thread::spawn(move || {
            WORDS
                .fetch_update_on(0, |v| {
                    let _ = held_tx.send(());
                    let _ = go_rx.recv();
                    v + 1
                })
                .unwrap()
        });
        held_rx.recv().unwrap();
        // SAFETY: the child only updates the word (no locks the holder
        // thread could own: the slots exist already) and exits with _exit.
        let pid = unsafe {
            if raw {
                libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) as libc::pid_t
            } else {
                libc::fork()
            }
        };
        if pid == 0 {
            let ok = WORDS.fetch_update_on(0, |v| v + 10).is_ok();
            // SAFETY: ends the child without running the parent's exit path.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        assert!(pid > 0, "fork failed");
        go_tx.send(()).unwrap();
        holder.join().unwrap();
        assert_eq!(exit_status(pid), 0, "raw clone: {raw}");
        println!(
            "[fork] guard taken over after {}",
            if raw { "raw clone" } else { "fork" }
        );
    }
}

#[derive(Default)]
struct Pair {
    a: u64,
    b: u64,
}

static PAIRS: PerCpu<Pair> = PerCpu::new_by_cpu();

/// In the child of a fork made while another thread held a per-CPU lock in
/// the middle of an update, the slot is taken over poisoned, so safe code
/// cannot mistake the torn value for a consistent one.
#[test]
fn a_lock_held_across_fork_is_taken_over_poisoned() {
    for raw in [false, true] {
        let (held_tx, held_rx) = channel();
        let (go_tx, go_rx) = channel::<()>();
        let holder = std::thread::spawn(move || {
            let mut pair = PAIRS.lock_slot(0).unwrap().unwrap();
            pair.a += 1; // ... and `b` not yet: torn
            let _ = held_tx.send(());
            let _ = go_rx.recv();
            pair.b += 1;
        });
        held_rx.recv().unwrap();
        // SAFETY: the child only locks slots that exist and exits with _exit.
        let pid = unsafe {
            if raw {
                libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) as libc::pid_t
            } else {
                libc::fork()
            }
        };
        if pid == 0 {
            let code = match PAIRS.lock_slot(0) {
                // Taken over, and marked: the value is torn.
                Ok(Err(poisoned)) => {
                    let pair = poisoned.into_inner();
                    if pair.a == pair.b + 1 {
                        0
                    } else {
                        2
                    }
                }
                Ok(Ok(_)) => 3,
                Err(_) => 4,
            };
            // SAFETY: ends the child without running the parent's exit path.
            unsafe { libc::_exit(code) };
        }
        assert!(pid > 0, "fork failed");
        go_tx.send(()).unwrap();
        holder.join().unwrap();
        assert_eq!(
            exit_status(pid),
            0,
            "raw clone: {raw} (2: wrong value, 3: not poisoned, 4: not taken)"
        );
        println!(
            "[fork] lock taken over, poisoned, after {}",
            if raw { "raw clone" } else { "fork" }
        );
        // The parent's slot was never poisoned: its holder finished.
        assert!(!PAIRS.is_poisoned());
    }
}
