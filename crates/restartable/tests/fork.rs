//! A guard held by another thread when the process forks: in the child that
//! thread does not exist, so the child must take the guard over instead of
//! waiting forever; with `fork` (atfork handlers run) and with a raw
//! `clone` (they do not).

use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use restartable::PerCpuU64;

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
