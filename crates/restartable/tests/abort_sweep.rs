//! The abort sweep: a generated section (the histogram example) is stopped
//! at every instruction between its `start_ip` and its commit, in turn, in
//! a traced child, and resumed. The stop takes the thread off its CPU, so
//! the kernel must abort the section: the attempt reports `Aborted`, no
//! bucket changed, and the retry commits exactly one count.
//!
//! `start_ip` and `post_commit_ip` come from the descriptor the section
//! stores when it runs on an area the kernel does not know (so nothing
//! aborts there). The instruction addresses: on x86-64 (variable length)
//! from single-stepping that run in a child; on aarch64 every 4 bytes of
//! the section; on riscv64 (which cannot single-step) by decoding each
//! instruction's length (2 or 4 bytes) from the section's start. The stop
//! is a breakpoint written over the instruction (`arch` below); on the
//! fixed-length architectures an instruction the commit path does not run
//! (a branch out) never stops, and the sweep counts it apart.

#[cfg(all(
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    ),
    target_endian = "little",
    target_os = "linux"
))]
mod sweep {
    use restartable::section::examples::{histogram_add, HISTOGRAM_STRIDE};

    /// What differs between the architectures: the program counter, the
    /// breakpoint (mask, bits) written over the instruction, and how far
    /// past it the program counter is when it stops.
    mod arch {
        pub fn pc(r: &mut libc::user_regs_struct) -> &mut u64 {
            #[cfg(target_arch = "x86_64")]
            return &mut r.rip;
            #[cfg(not(target_arch = "x86_64"))]
            return &mut r.pc;
        }
        /// `int3` over the first byte; it has executed when it stops.
        #[cfg(target_arch = "x86_64")]
        pub const TRAP: (i64, i64, u64) = (0xff, 0xcc, 1);
        /// `brk #0` over the 4 bytes.
        #[cfg(target_arch = "aarch64")]
        pub const TRAP: (i64, i64, u64) = (0xffff_ffff, 0xd420_0000, 0);
        /// `c.ebreak` over the first 2 bytes (every instruction starts on
        /// a 2-byte boundary).
        #[cfg(target_arch = "riscv64")]
        pub const TRAP: (i64, i64, u64) = (0xffff, 0x9002, 0);
    }

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

    /// `PTRACE_GETREGSET` (or, with `set`, `PTRACE_SETREGSET`) of the
    /// general registers. (The request's type differs between glibc and
    /// musl, so it is chosen here.)
    fn regset(pid: libc::pid_t, set: bool, r: &mut libc::user_regs_struct) {
        let mut v = libc::iovec {
            iov_base: (r as *mut libc::user_regs_struct).cast(),
            iov_len: std::mem::size_of::<libc::user_regs_struct>(),
        };
        let request = if set {
            libc::PTRACE_SETREGSET
        } else {
            libc::PTRACE_GETREGSET
        };
        // SAFETY: reads or writes the registers of our stopped, traced
        // child, through an iovec over `r`.
        let rc = unsafe { libc::ptrace(request, pid, libc::NT_PRSTATUS as usize, &mut v) };
        let e = std::io::Error::last_os_error();
        assert_eq!(rc, 0, "ptrace regset (set: {set}): {e}");
    }

    fn regs(pid: libc::pid_t) -> libc::user_regs_struct {
        // SAFETY: all-zero is a valid user_regs_struct (plain integers).
        let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        regset(pid, false, &mut r);
        r
    }

    fn set_regs(pid: libc::pid_t, mut r: libc::user_regs_struct) {
        regset(pid, true, &mut r);
    }

    /// Runs the section once, here, on the fake area: the descriptor it
    /// armed (`version`/`flags`, `start_ip`, `post_commit_offset`,
    /// `abort_ip`).
    fn descriptor(f: &mut Fixture) -> [u64; 4] {
        let area = f.fake_area.as_ptr().cast::<u8>();
        let mut out = [0u64; 1];
        let code = section(area, &mut out, f.buckets.as_mut_ptr());
        assert_eq!(
            code,
            restartable::__lang::COMMITTED,
            "the unarmed section did not commit"
        );
        let desc_addr = f.fake_area[restartable::abi::OFFSET_RSEQ_CS / 8];
        assert_ne!(desc_addr, 0, "the section stored no descriptor");
        // SAFETY: `rseq_cs` holds the address of a 32-byte descriptor in
        // this binary's `__rseq_cs` section.
        unsafe { *(desc_addr as *const [u64; 4]) }
    }

    /// The section's instruction addresses, decoded from its code.
    #[cfg(not(target_arch = "x86_64"))]
    fn instructions(f: &mut Fixture) -> (Vec<u64>, [u64; 4]) {
        let desc = descriptor(f);
        let (start, end) = (desc[1], desc[1] + desc[2]);
        let mut ips = Vec::new();
        let mut ip = start;
        while ip < end {
            ips.push(ip);
            ip += if cfg!(target_arch = "riscv64") {
                // SAFETY: `ip` is inside this binary's code, which is
                // readable; 2-byte aligned on riscv64.
                let low = unsafe { (ip as *const u16).read_volatile() };
                if low & 3 == 3 {
                    4
                } else {
                    2
                }
            } else {
                4
            };
        }
        (ips, desc)
    }

    /// Runs the section once on the fake area, single-stepped: every
    /// instruction address it executed, and the descriptor it armed.
    #[cfg(target_arch = "x86_64")]
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
            ips.push(*arch::pc(&mut regs(pid)));
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
        assert_eq!(
            desc,
            descriptor(f),
            "the two runs armed different descriptors"
        );
        (ips, desc)
    }

    /// The child ran the section without reaching the breakpoint.
    const NOT_REACHED: i32 = -1;
    /// The child's code for a first attempt that did not abort.
    const RAN_THROUGH: i32 = 1;

    /// Stops the section at `ip`, resumes it, and returns the child's
    /// verdict (0: aborted, nothing published, retry committed once), or
    /// [`NOT_REACHED`].
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
                return RAN_THROUGH;
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
        // `ip`, write it back with the breakpoint over the instruction,
        // continue.
        unsafe {
            *libc::__errno_location() = 0;
            let word = libc::ptrace(libc::PTRACE_PEEKTEXT, pid, ip, 0);
            assert_eq!(*libc::__errno_location(), 0, "peek at {ip:#x}");
            let (mask, bits, past) = arch::TRAP;
            let trap = (word & !mask) | bits;
            assert_eq!(libc::ptrace(libc::PTRACE_POKETEXT, pid, ip, trap), 0);
            assert_eq!(libc::ptrace(libc::PTRACE_CONT, pid, 0, 0), 0);
            let status = wait(pid);
            if libc::WIFEXITED(status) {
                // Finished without reaching the breakpoint: a branch out of
                // the section, not on the commit path (the first attempt
                // committed, or aborted by itself, a preemption, and its
                // retry committed). Any other verdict is a failure.
                return match libc::WEXITSTATUS(status) {
                    RAN_THROUGH | 0 => NOT_REACHED,
                    code => 100 + code,
                };
            }
            if !libc::WIFSTOPPED(status) || libc::WSTOPSIG(status) != libc::SIGTRAP {
                // Another signal: end the child, which may still be stopped.
                libc::kill(pid, libc::SIGKILL);
                wait(pid);
                return 200 + libc::WSTOPSIG(status);
            }
            let mut r = regs(pid);
            assert_eq!(*arch::pc(&mut r), ip + past, "stopped elsewhere");
            assert_eq!(libc::ptrace(libc::PTRACE_POKETEXT, pid, ip, word), 0);
            *arch::pc(&mut r) = ip;
            set_regs(pid, r);
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
        let mut reached = Vec::new();
        let mut skipped = Vec::new();
        for &ip in &unique {
            let verdict = stop_at(&mut f, ip);
            if verdict == NOT_REACHED && cfg!(not(target_arch = "x86_64")) {
                skipped.push(ip - start);
                continue;
            }
            assert_eq!(verdict, 0, "stopped at {ip:#x} (start {start:#x}, post-commit {:#x}, abort {abort:#x}): verdict {verdict}", start + len);
            reached.push(ip);
        }
        assert!(
            reached.len() >= 5,
            "too few instructions of the section stopped at: {reached:x?} of {unique:x?}"
        );
        // The first instruction and the commit (the last one) are on the
        // commit path: the sweep covers the section end to end.
        assert_eq!(
            reached.first(),
            Some(&start),
            "the first instruction was not stopped at"
        );
        assert_eq!(
            reached.last(),
            unique.last(),
            "the commit was not stopped at"
        );
        let reached = reached.len();
        println!(
            "[abort-sweep] {}: stopped at each of {reached} instructions of the section ({} not on the commit path{}): each aborted, published nothing, and its retry committed once",
            std::env::consts::ARCH,
            skipped.len(),
            if skipped.is_empty() { String::new() } else { format!(", at offsets {skipped:#x?}") }
        );
    }
}
