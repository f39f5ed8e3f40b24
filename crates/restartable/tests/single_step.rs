//! A debugger single-stepping a critical section aborts it on every step;
//! the operation must still complete (on the fallback path) in bounded time.

use std::time::{Duration, Instant};

use restartable::Counter;

static COUNTER: Counter = Counter::new();
const INCREMENTS: u64 = 3;

fn wait(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waits for our own child.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
    assert_eq!(rc, pid, "waitpid: {}", std::io::Error::last_os_error());
    status
}

#[test]
fn single_stepped_operations_complete() {
    if !restartable::registration().rseq_available() {
        println!("[single-step] path=fallback: nothing to abort; checking only termination");
    }
    // Allocate and register before fork: the child must not allocate.
    COUNTER.add(0);
    let before = restartable::stats::stats().expect("built with abort-stats");

    // SAFETY: the child only calls async-signal-safe functions and our
    // allocation-free counter, then _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: plain system calls in the child.
        unsafe {
            libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
            libc::raise(libc::SIGSTOP);
        }
        for _ in 0..INCREMENTS {
            COUNTER.inc();
        }
        // The raw vocabulary gives up after its bounded retries too, so the
        // caller can take its own fallback.
        let mut word = 0u64;
        let gave_up = match restartable::section::Thread::current() {
            Some(t) => t
                .retry(restartable::section::Index::Cpu, |id| {
                    // SAFETY: `word` is a local of this thread.
                    unsafe { t.add(id, restartable::section::Order::Relaxed, &mut word, 1) }
                })
                .is_err(),
            None => true,
        };
        let stats = restartable::stats::stats().unwrap();
        let exhausted = stats.retries_exhausted - before.retries_exhausted;
        let code = if COUNTER.sum() != INCREMENTS {
            10
        } else if !gave_up || word != 0 {
            // A stepped section must never commit.
            30
        } else if restartable::registration().rseq_available() && exhausted != INCREMENTS {
            // Every stepped section must have aborted until the retry
            // bound, then completed on the fallback path.
            20 + exhausted as i32
        } else {
            0
        };
        // SAFETY: leave without running the test harness's exit path.
        unsafe { libc::_exit(code) };
    }

    let status = wait(pid);
    assert!(libc::WIFSTOPPED(status), "child did not stop: {status:#x}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut steps = 0u64;
    loop {
        // SAFETY: stepping our stopped, traced child.
        let rc = unsafe { libc::ptrace(libc::PTRACE_SINGLESTEP, pid, 0, 0) };
        if rc != 0 && steps == 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EIO) {
                // riscv64 Linux implements no PTRACE_SINGLESTEP: it answers
                // EIO to the first request. Nothing to test without it.
                // SAFETY: killing our own (stopped) child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let status = wait(pid);
                assert!(libc::WIFSIGNALED(status), "child not killed: {status:#x}");
                println!(
                    "[single-step] skipped: this kernel has no PTRACE_SINGLESTEP ({err}) on {}",
                    std::env::consts::ARCH
                );
                return;
            }
        }
        assert_eq!(
            rc,
            0,
            "PTRACE_SINGLESTEP: {}",
            std::io::Error::last_os_error()
        );
        steps += 1;
        let status = wait(pid);
        if libc::WIFEXITED(status) {
            let code = libc::WEXITSTATUS(status);
            println!("[single-step] child finished after {steps} steps, exit code {code}");
            assert_eq!(
                code, 0,
                "10: wrong sum; 20+n: only n of {INCREMENTS} increments exhausted their retries"
            );
            return;
        }
        assert!(
            !libc::WIFSIGNALED(status),
            "child killed by signal {}",
            libc::WTERMSIG(status)
        );
        if Instant::now() > deadline || steps > 50_000_000 {
            // SAFETY: killing our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            wait(pid);
            panic!("single-stepped child did not finish after {steps} steps: livelock");
        }
    }
}
