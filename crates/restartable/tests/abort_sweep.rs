//! The abort sweep: a generated section (the histogram example) is stopped
//! at every instruction between its `start_ip` and its commit, in turn, in
//! a traced child, and resumed. The stop takes the thread off its CPU, so
//! the kernel must abort the section: the attempt reports `Aborted`, no
//! bucket changed, and the retry commits exactly one count.
//!
//! The instruction addresses come from single-stepping the same code in a
//! child that runs it on an area the kernel does not know (so nothing
//! aborts there); `start_ip` and `post_commit_ip` come from the descriptor
//! the section stored in that area. x86-64 only: the stop is an `int3`
//! written over the instruction.

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod sweep {
    use restartable::section::examples::{histogram_add, HISTOGRAM_STRIDE};

    const BUCKETS_LEN: usize = 64 * HISTOGRAM_STRIDE / 8;
    const SAMPLE: u64 = 37;

    /// The histograms, allocated before any fork (children must not
    /// allocate), and the area the kernel does not know.
    struct Fixture {
        buckets: Vec<u64>,
        fake_area: Box<[u64; 8]>,
    }

    /// The one copy of the section both children run (`attempt` is
    /// inlined wherever it is called).
    #[inline(never)]
    fn section(area: *const u8, out: &mut [u64; 1], base: *mut u64) -> u32 {
        // SAFETY: callers pass an area for this thread (or one the kernel
        // does not know) and histograms for 64 CPUs that only they write.
        unsafe { histogram_add::attempt(area, out.as_mut_ptr(), base as u64, 64, SAMPLE) }
    }

    fn wait(pid: libc::pid_t) -> i32 {
        let mut status = 0;
        // SAFETY: waits for our own child.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        assert_eq!(rc, pid, "waitpid: {}", std::io::Error::last_os_error());
        status
    }

    /// Forks a child that stops itself under ptrace, then runs `body` and
    /// exits with its result.
    fn traced_child(body: impl FnOnce() -> i32) -> libc::pid_t {
        // SAFETY: the child runs only `body`, which allocates nothing, and
        // leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: plain system calls in the child.
            unsafe {
                libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
                libc::raise(libc::SIGSTOP);
                libc::_exit(body());
            }
        }
        let status = wait(pid);
        assert!(libc::WIFSTOPPED(status), "child did not stop: {status:#x}");
        pid
    }

    fn regs(pid: libc::pid_t) -> libc::user_regs_struct {
        // SAFETY: reads the registers of our stopped, traced child.
        unsafe {
            let mut r: libc::user_regs_struct = std::mem::zeroed();
            assert_eq!(libc::ptrace(libc::PTRACE_GETREGS, pid, 0, &mut r), 0);
            r
        }
    }

    /// Runs the section once on the fake area, single-stepped: every
    /// instruction address it executed, and the descriptor it armed.
    fn instructions(f: &mut Fixture) -> (Vec<u64>, [u64; 4]) {
        let base = f.buckets.as_mut_ptr().cast::<u8>();
        let area = f.fake_area.as_ptr().cast::<u8>();
        let pid = traced_child(|| {
            let mut out = [0u64; 1];
            // The fake area reads as cpu_id 0 and takes the rseq_cs store.
            let code = section(area, &mut out, base.cast());
            (code != restartable::__lang::COMMITTED) as i32
        });
        let rseq_cs = area as u64 + restartable::abi::OFFSET_RSEQ_CS as u64;
        let mut ips = Vec::new();
        let mut desc_addr = 0;
        loop {
            // SAFETY: stepping our stopped, traced child.
            assert_eq!(
                unsafe { libc::ptrace(libc::PTRACE_SINGLESTEP, pid, 0, 0) },
                0
            );
            let status = wait(pid);
            if libc::WIFEXITED(status) {
                assert_eq!(
                    libc::WEXITSTATUS(status),
                    0,
                    "the unarmed section did not commit"
                );
                break;
            }
            ips.push(regs(pid).rip);
            // SAFETY: reads a word of our stopped child's copy of the fake
            // area: the descriptor address the section stores there.
            let word = unsafe { libc::ptrace(libc::PTRACE_PEEKDATA, pid, rseq_cs, 0) };
            if word != 0 && word != -1 {
                desc_addr = word as u64;
            }
            assert!(ips.len() < 10_000_000, "the child never finished");
        }
        // The descriptor is in this binary's `__rseq_cs`, mapped at the
        // same address here.
        assert_ne!(desc_addr, 0, "the section stored no descriptor");
        // SAFETY: `rseq_cs` holds the address of a 32-byte descriptor in
        // this binary's `__rseq_cs` section.
        let desc = unsafe { *(desc_addr as *const [u64; 4]) };
        (ips, desc)
    }

    /// Stops the section at `ip`, resumes it, and returns the child's
    /// verdict (0: aborted, nothing published, retry committed once).
    fn stop_at(f: &mut Fixture, ip: u64) -> i32 {
        let base = f.buckets.as_mut_ptr();
        let pid = traced_child(|| {
            let Some(t) = restartable::section::Thread::current() else {
                return 40;
            };
            let Some(area) = restartable::__lang::area(&t, false) else {
                return 41;
            };
            // SAFETY: (each read below) the histograms hold BUCKETS_LEN words.
            let before: u64 = (0..BUCKETS_LEN)
                .map(|i| unsafe { base.add(i).read_volatile() })
                .sum();
            let mut out = [0u64; 1];
            let code = section(area, &mut out, base);
            restartable::__lang::detach(&t);
            let after: u64 = (0..BUCKETS_LEN)
                .map(|i| unsafe { base.add(i).read_volatile() })
                .sum();
            if code != restartable::__lang::ABORTED {
                return 1;
            }
            if after != before {
                return 2;
            }
            for _ in 0..1000 {
                if section(area, &mut out, base) == restartable::__lang::COMMITTED {
                    restartable::__lang::detach(&t);
                    let done: u64 = (0..BUCKETS_LEN)
                        .map(|i| unsafe { base.add(i).read_volatile() })
                        .sum();
                    return if done == before + 1 { 0 } else { 3 };
                }
            }
            4
        });
        // SAFETY: ptrace on our stopped, traced child: read the word at
        // `ip`, write it back with an int3 in its first byte, continue.
        unsafe {
            *libc::__errno_location() = 0;
            let word = libc::ptrace(libc::PTRACE_PEEKTEXT, pid, ip, 0);
            assert_eq!(*libc::__errno_location(), 0, "peek at {ip:#x}");
            let trap = (word & !0xff) | 0xcc;
            assert_eq!(libc::ptrace(libc::PTRACE_POKETEXT, pid, ip, trap), 0);
            assert_eq!(libc::ptrace(libc::PTRACE_CONT, pid, 0, 0), 0);
            let status = wait(pid);
            if !libc::WIFSTOPPED(status) || libc::WSTOPSIG(status) != libc::SIGTRAP {
                return 100 + libc::WEXITSTATUS(status);
            }
            let mut r = regs(pid);
            assert_eq!(r.rip, ip + 1, "stopped elsewhere");
            assert_eq!(libc::ptrace(libc::PTRACE_POKETEXT, pid, ip, word), 0);
            r.rip = ip;
            assert_eq!(libc::ptrace(libc::PTRACE_SETREGS, pid, 0, &r), 0);
            assert_eq!(libc::ptrace(libc::PTRACE_CONT, pid, 0, 0), 0);
        }
        let status = wait(pid);
        assert!(libc::WIFEXITED(status), "child ended with {status:#x}");
        libc::WEXITSTATUS(status)
    }

    #[test]
    fn the_section_aborts_at_every_instruction_and_its_retry_commits() {
        if restartable::section::Thread::current().is_none() {
            assert!(
                std::env::var_os("RESTARTABLE_REQUIRE_RSEQ").is_none_or(|v| v != "1"),
                "rseq required"
            );
            println!("[abort-sweep] no critical sections here: skipped");
            return;
        }
        let mut f = Fixture {
            buckets: vec![0; BUCKETS_LEN],
            fake_area: Box::new([0; 8]),
        };
        let (ips, [_, start, len, abort]) = instructions(&mut f);
        let inside: Vec<u64> = ips
            .iter()
            .copied()
            .filter(|ip| (start..start + len).contains(ip))
            .collect();
        let mut unique = inside.clone();
        unique.sort_unstable();
        unique.dedup();
        assert!(
            unique.len() >= 5,
            "too few instructions inside the section: {unique:x?}"
        );
        for &ip in &unique {
            let verdict = stop_at(&mut f, ip);
            assert_eq!(verdict, 0, "stopped at {ip:#x} (start {start:#x}, post-commit {:#x}, abort {abort:#x}): verdict {verdict}", start + len);
        }
        println!("[abort-sweep] stopped at each of {} instructions of the section: each aborted, published nothing, and its retry committed once", unique.len());
    }
}
