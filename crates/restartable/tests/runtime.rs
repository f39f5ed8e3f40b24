//! The runtime in this process: registration, CPU ids checked against
//! pinned threads, and counting from many threads.

use restartable::{registration, Counter, Owner};

fn require_rseq() -> bool {
    std::env::var_os("RESTARTABLE_REQUIRE_RSEQ").is_some_and(|v| v == "1")
}

/// CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        set
    };
    // SAFETY: CPU_ISSET only reads the set.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

fn pin_to(cpu: usize) {
    // SAFETY: as above; sched_setaffinity on the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

#[test]
#[allow(clippy::assertions_on_constants)] // HAS_CRITICAL_SECTIONS differs per target
fn registration_follows_libc() {
    let reg = registration();
    let info = restartable::process_info();
    println!("[in-process] {reg:?} {info:?}");
    if require_rseq() {
        assert!(
            reg.rseq_available(),
            "rseq required but not in use: {reg:?}"
        );
        assert!(
            restartable::HAS_CRITICAL_SECTIONS,
            "rseq required but no sections on this target"
        );
    }
    if info.libc.registered() && !info.disabled_by_user {
        assert_eq!(
            reg.owner,
            Owner::Libc,
            "glibc registered, so its area must be adopted"
        );
    }
    if reg.rseq_available() {
        assert!(reg.feature_size >= 20);
        assert_eq!(
            restartable::current_mm_cid().is_some(),
            reg.feature_size >= 28
        );
    } else {
        assert_eq!(reg.owner, Owner::None);
        assert!(reg.fallback.is_some());
    }
    // Every thread decides on its own, and reaches the same answer here.
    let other = std::thread::spawn(registration).join().unwrap();
    assert_eq!(other.owner, reg.owner);
    assert_eq!(other.feature_size, reg.feature_size);
}

#[test]
fn cpu_ids_match_the_cpu_a_thread_is_pinned_to() {
    let possible = restartable::possible_cpus();
    let cpus = allowed_cpus();
    assert!(!cpus.is_empty());
    println!(
        "[cpu ids] path={} allowed={cpus:?} possible={possible}",
        if registration().rseq_available() {
            "rseq"
        } else {
            "fallback"
        }
    );
    for cpu in cpus {
        std::thread::spawn(move || {
            pin_to(cpu);
            // After the pin the thread runs on `cpu` and stays there.
            assert_eq!(restartable::current_cpu(), cpu);
            // SAFETY: sched_getcpu has no preconditions.
            assert_eq!(unsafe { libc::sched_getcpu() }, cpu as i32);
            assert!(restartable::current_mm_cid_or_cpu() < possible);
            let mut node = 0u32;
            let mut c = 0u32;
            // SAFETY: valid out-pointers; the cache argument may be null.
            let rc = unsafe { libc::syscall(libc::SYS_getcpu, &mut c, &mut node, 0usize) };
            assert_eq!(rc, 0);
            assert_eq!(restartable::current_node(), node as usize);
        })
        .join()
        .unwrap();
    }
}

#[test]
fn counter_on_pinned_threads_fills_their_slots() {
    let counter = Counter::new();
    let cpus = allowed_cpus();
    std::thread::scope(|s| {
        for &cpu in &cpus {
            let counter = &counter;
            s.spawn(move || {
                pin_to(cpu);
                counter.add(cpu as u64 + 1);
            });
        }
    });
    let per_cpu = counter.per_cpu();
    assert_eq!(per_cpu.len(), restartable::possible_cpus());
    for &cpu in &cpus {
        assert_eq!(per_cpu[cpu], cpu as u64 + 1, "slot {cpu}: {per_cpu:?}");
    }
}

static GLOBAL: Counter = Counter::new();

#[test]
fn static_counter_counts_exactly() {
    let threads = 4 * restartable::online_cpus();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for i in 0..50_000u64 {
                    GLOBAL.add(i % 3);
                    if i % 1000 == 0 {
                        std::thread::yield_now();
                    }
                }
            });
        }
    });
    let per_thread: u64 = (0..50_000u64).map(|i| i % 3).sum();
    assert_eq!(GLOBAL.sum(), per_thread * threads as u64);
}
