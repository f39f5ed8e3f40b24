//! Every operation of the vocabulary, in every flavour, run once on the
//! rseq path with its result checked; then the descriptors the sections
//! emitted into this very test binary, read from its ELF sections.

use restartable::section::{Id, Index, Order, Outcome, Thread};

fn require_rseq() -> bool {
    std::env::var_os("RESTARTABLE_REQUIRE_RSEQ").is_some_and(|v| v == "1")
}

fn thread() -> Option<Thread> {
    let t = Thread::current();
    if t.is_none() {
        assert!(
            !require_rseq(),
            "rseq required but this thread cannot run sections"
        );
        println!(
            "[sections] no critical sections on this thread: {:?}",
            restartable::registration()
        );
    }
    t
}

/// Runs `f` until it does not abort; panics after many aborts.
fn until_done<T>(t: &Thread, index: Index, f: impl FnMut(Id) -> Outcome<T>) -> Outcome<T> {
    t.retry(index, f)
        .expect("16 aborts in a row on an idle test")
}

const FLAVOURS: [(Index, Order); 4] = [
    (Index::Cpu, Order::Relaxed),
    (Index::Cpu, Order::Release),
    (Index::MmCid, Order::Relaxed),
    (Index::MmCid, Order::Release),
];

#[repr(C)]
struct Node {
    value: u64,
    next: u64,
}

#[test]
fn every_operation_in_every_flavour() {
    let Some(t) = thread() else { return };
    let mut ran = 0;
    for (index, order) in FLAVOURS {
        if t.id(index).is_none() {
            println!("[sections] {index:?} not provided by this kernel");
            continue;
        }
        let mut v = 5u64;
        let mut v2 = 0u64;
        // SAFETY (all blocks below): the words are locals of this thread,
        // touched by nothing else.
        let r = until_done(&t, index, |id| unsafe {
            t.compare_store(id, order, &mut v, 5, 6)
        });
        assert_eq!((r, v), (Outcome::Committed(()), 6));
        let r = until_done(&t, index, |id| unsafe {
            t.compare_store(id, order, &mut v, 5, 7)
        });
        assert_eq!((r, v), (Outcome::CompareFailed { which: 0, seen: 6 }, 6));

        let r = until_done(&t, index, |id| unsafe { t.add(id, order, &mut v, 10) });
        assert_eq!((r, v), (Outcome::Committed(()), 16));

        let second = Node { value: 2, next: 0 };
        let first = Node {
            value: 1,
            next: &second as *const Node as u64,
        };
        let mut head = &first as *const Node as u64;
        let offset = std::mem::offset_of!(Node, next);
        let r = until_done(&t, index, |id| unsafe {
            t.pop(id, order, &mut head, 0, offset)
        });
        assert_eq!(r, Outcome::Committed(&first as *const Node as u64));
        assert_eq!(head, &second as *const Node as u64);
        let r = until_done(&t, index, |id| unsafe {
            t.pop(id, order, &mut head, 0, offset)
        });
        assert_eq!(r, Outcome::Committed(&second as *const Node as u64));
        let r = until_done(&t, index, |id| unsafe {
            t.pop(id, order, &mut head, 0, offset)
        });
        assert_eq!(r, Outcome::CompareFailed { which: 0, seen: 0 });
        assert_eq!(first.value + second.value, 3);

        let mut target = 100u64;
        let pointers = [0u64, &mut target as *mut u64 as u64];
        let base = pointers.as_ptr() as u64;
        let r = until_done(&t, index, |id| unsafe {
            t.deref_add(id, order, &base, 8, 5)
        });
        assert_eq!((r, target), (Outcome::Committed(()), 105));

        let r = until_done(&t, index, |id| unsafe {
            t.compare2_store(id, order, &mut v, 16, &v2, 0, 17)
        });
        assert_eq!((r, v), (Outcome::Committed(()), 17));
        let r = until_done(&t, index, |id| unsafe {
            t.compare2_store(id, order, &mut v, 1, &v2, 0, 18)
        });
        assert_eq!((r, v), (Outcome::CompareFailed { which: 0, seen: 17 }, 17));
        let r = until_done(&t, index, |id| unsafe {
            t.compare2_store(id, order, &mut v, 17, &v2, 9, 18)
        });
        assert_eq!((r, v), (Outcome::CompareFailed { which: 1, seen: 0 }, 17));

        let r = until_done(&t, index, |id| unsafe {
            t.store_then_store(id, order, &mut v, 17, &mut v2, 42, 18)
        });
        assert_eq!((r, v, v2), (Outcome::Committed(()), 18, 42));
        let r = until_done(&t, index, |id| unsafe {
            t.store_then_store(id, order, &mut v, 17, &mut v2, 43, 19)
        });
        assert_eq!(
            (r, v, v2),
            (Outcome::CompareFailed { which: 0, seen: 18 }, 18, 42)
        );

        for len in [0usize, 1, 7, 8, 9, 31, 64] {
            let src: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(7) ^ 0x5a).collect();
            let mut dst = vec![0u8; len + 1];
            let r = until_done(&t, index, |id| unsafe {
                t.memcpy_then_store(
                    id,
                    order,
                    &mut v,
                    18,
                    dst.as_mut_ptr(),
                    src.as_ptr(),
                    len,
                    19,
                )
            });
            assert_eq!((r, v), (Outcome::Committed(()), 19), "len {len}");
            assert_eq!(&dst[..len], &src[..], "len {len}");
            assert_eq!(dst[len], 0, "copied past len {len}");
            v = 18;
        }
        let r = until_done(&t, index, |id| unsafe {
            t.memcpy_then_store(
                id,
                order,
                &mut v,
                0,
                std::ptr::null_mut(),
                std::ptr::null(),
                0,
                1,
            )
        });
        assert_eq!(r, Outcome::CompareFailed { which: 0, seen: 18 });
        ran += 1;
    }
    println!("[sections] path=rseq, {ran} flavours checked");
    assert!(ran >= 2);
}

#[test]
fn guarded_operations_stay_out_while_the_guard_is_set() {
    let Some(t) = thread() else { return };
    let mut ran = 0;
    for (index, order) in FLAVOURS {
        if t.id(index).is_none() {
            continue;
        }
        let node = Node { value: 1, next: 0 };
        let offset = std::mem::offset_of!(Node, next);
        for guard in [7u64, 0] {
            let mut head = &node as *const Node as u64;
            let mut v = 3u64;
            let mut v2 = 0u64;
            let mut dst = [0u8; 12];
            let src = [9u8; 12];
            // SAFETY (all blocks below): the words are locals of this
            // thread, touched by nothing else.
            let popped = until_done(&t, index, |id| unsafe {
                t.pop_guarded(id, order, &mut head, 0, offset, &guard)
            });
            let stored = until_done(&t, index, |id| unsafe {
                t.store_then_store_guarded(id, order, &mut v, 3, &mut v2, 42, 4, &guard)
            });
            let copied = until_done(&t, index, |id| unsafe {
                t.memcpy_then_store_guarded(
                    id,
                    order,
                    &mut v2,
                    v2,
                    dst.as_mut_ptr(),
                    src.as_ptr(),
                    12,
                    5,
                    &guard,
                )
            });
            if guard != 0 {
                assert_eq!(popped, Outcome::Guarded { seen: 7 });
                let refused = Outcome::Guarded { seen: 7 };
                assert_eq!((stored, copied), (refused, refused));
                assert_eq!(
                    (head, v, v2, dst),
                    (&node as *const Node as u64, 3, 0, [0; 12])
                );
            } else {
                assert_eq!(popped, Outcome::Committed(&node as *const Node as u64));
                assert_eq!(
                    (stored, copied),
                    (Outcome::Committed(()), Outcome::Committed(()))
                );
                assert_eq!((head, v, v2, dst), (0, 4, 5, src));
            }
        }
        ran += 1;
    }
    println!("[sections] guarded operations: path=rseq, {ran} flavours checked");
    assert!(ran >= 2);
}

fn pin_to(cpu: usize) -> bool {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity on this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

#[test]
fn an_id_from_another_cpu_aborts_instead_of_committing() {
    std::thread::spawn(|| {
        let Some(t) = thread() else { return };
        if !(pin_to(0) && pin_to(1)) {
            println!("[sections] fewer than 2 CPUs: skipping the migration check");
            return;
        }
        pin_to(0);
        let on_cpu0 = t.id(Index::Cpu).unwrap();
        assert_eq!(on_cpu0.value(), 0);
        pin_to(1);
        let mut v = 1u64;
        // SAFETY: `v` is a local of this thread.
        let r = unsafe { t.compare_store(on_cpu0, Order::Relaxed, &mut v, 1, 2) };
        assert_eq!(
            (r, v),
            (Outcome::Aborted, 1),
            "a section indexed by CPU 0 committed on CPU 1"
        );
        // SAFETY: as above.
        let r = unsafe { t.add(on_cpu0, Order::Release, &mut v, 1) };
        assert_eq!((r, v), (Outcome::Aborted, 1));
        let fresh = t.id(Index::Cpu).unwrap();
        // SAFETY: as above.
        let r = unsafe { t.add(fresh, Order::Relaxed, &mut v, 1) };
        assert!(matches!(r, Outcome::Committed(()) | Outcome::Aborted));
    })
    .join()
    .unwrap();
}

#[cfg(target_os = "linux")]
mod elf {
    use object::{Object, ObjectSection};
    use restartable::abi::{RseqCs, SIGNATURE};

    extern "C" {
        static __start___rseq_cs: RseqCs;
        static __stop___rseq_cs: RseqCs;
        static __start___rseq_cs_ptr_array: u64;
        static __stop___rseq_cs_ptr_array: u64;
        static __start___rseq_exit_point_array: [u64; 2];
        static __stop___rseq_exit_point_array: [u64; 2];
    }

    /// Start and end addresses (after relocation) of a linker-bounded array.
    fn bounds<T>(start: &T, stop: &T) -> (usize, usize) {
        (start as *const T as usize, stop as *const T as usize)
    }

    #[test]
    fn descriptors_are_well_formed() {
        // Make sure the operations and Counter's section are instantiated
        // in this binary.
        super::every_operation_in_every_flavour();
        let counter = restartable::Counter::new();
        counter.inc();
        assert_eq!(counter.sum(), 1);

        let exe = std::fs::read("/proc/self/exe").expect("read own executable");
        let file = object::File::parse(&*exe).expect("parse own ELF");
        let section = |name: &str| {
            let s = file
                .section_by_name(name)
                .unwrap_or_else(|| panic!("no ELF section {name}"));
            (s.address() as usize, s.size() as usize)
        };
        let (cs_addr, cs_size) = section("__rseq_cs");
        let (fail_addr, fail_size) = section("__rseq_failure");
        let (text_addr, text_size) = section(".text");
        let (ptr_addr, ptr_size) = section("__rseq_cs_ptr_array");
        let (exit_addr, exit_size) = section("__rseq_exit_point_array");

        // SAFETY: linker-defined bounds of the sections; only addresses taken.
        let (cs_start, cs_stop) = unsafe { bounds(&__start___rseq_cs, &__stop___rseq_cs) };
        // SAFETY: as above.
        let (ptr_start, ptr_stop) =
            unsafe { bounds(&__start___rseq_cs_ptr_array, &__stop___rseq_cs_ptr_array) };
        // SAFETY: as above.
        let (exit_start, exit_stop) = unsafe {
            bounds(
                &__start___rseq_exit_point_array,
                &__stop___rseq_exit_point_array,
            )
        };
        let bias = cs_start.wrapping_sub(cs_addr);
        assert_eq!(
            cs_stop - cs_start,
            cs_size,
            "__rseq_cs size differs between ELF and memory"
        );
        assert_eq!(ptr_start.wrapping_sub(bias), ptr_addr);
        assert_eq!(ptr_stop - ptr_start, ptr_size);
        assert_eq!(exit_start.wrapping_sub(bias), exit_addr);
        assert_eq!(exit_stop - exit_start, exit_size);
        assert_eq!(cs_size % 32, 0, "descriptors are 32 bytes each");
        assert_eq!(cs_start % 32, 0, "descriptors are 32-byte aligned");

        let text = (text_addr + bias)..(text_addr + bias + text_size);
        let failure = (fail_addr + bias)..(fail_addr + bias + fail_size);
        let count = cs_size / 32;
        // Flavours x operations of the vocabulary, plus Counter's section.
        assert!(count > 4 * 7, "only {count} descriptors in the binary");

        let mut ranges = Vec::new();
        for i in 0..count {
            let addr = cs_start + 32 * i;
            // SAFETY: inside __rseq_cs, which holds RseqCs values.
            let cs = unsafe { std::ptr::read(addr as *const RseqCs) };
            let (start, end, abort) = (
                cs.start_ip as usize,
                (cs.start_ip + cs.post_commit_offset) as usize,
                cs.abort_ip as usize,
            );
            assert_eq!((cs.version, cs.flags), (0, 0), "descriptor {i}: {cs:?}");
            assert!(cs.post_commit_offset > 0, "descriptor {i}: empty range");
            assert!(
                text.contains(&start) && text.contains(&(end - 1)),
                "descriptor {i}: range outside .text: {cs:?}"
            );
            assert!(
                !(start..end).contains(&abort),
                "descriptor {i}: abort handler inside the section"
            );
            assert!(
                failure.contains(&abort),
                "descriptor {i}: abort handler outside __rseq_failure"
            );
            // SAFETY: abort_ip - 4 lies in __rseq_failure (checked above),
            // mapped and readable.
            let signature = unsafe { std::ptr::read_unaligned((abort - 4) as *const u32) };
            assert_eq!(
                signature, SIGNATURE,
                "descriptor {i}: bad signature before the abort handler"
            );
            ranges.push((addr, start, end));
        }

        let mut pointed: Vec<usize> = (ptr_start..ptr_stop)
            .step_by(8)
            // SAFETY: inside __rseq_cs_ptr_array, 8-byte entries.
            .map(|p| unsafe { std::ptr::read(p as *const u64) } as usize)
            .collect();
        pointed.sort_unstable();
        let mut descriptors: Vec<usize> = ranges.iter().map(|r| r.0).collect();
        descriptors.sort_unstable();
        assert_eq!(
            pointed, descriptors,
            "__rseq_cs_ptr_array must point at each descriptor exactly once"
        );

        let mut exits = 0;
        for p in (exit_start..exit_stop).step_by(16) {
            // SAFETY: inside __rseq_exit_point_array, (start_ip, exit_ip) pairs.
            let [start, exit] = unsafe { std::ptr::read(p as *const [u64; 2]) };
            let (start, exit) = (start as usize, exit as usize);
            let owner = ranges.iter().find(|r| r.1 == start);
            let (_, s, e) = owner.unwrap_or_else(|| {
                panic!("exit point {start:#x} -> {exit:#x} names no known section")
            });
            assert!(
                !(*s..*e).contains(&exit),
                "exit point {exit:#x} lies inside its section"
            );
            assert!(
                text.contains(&exit) || failure.contains(&exit),
                "exit point {exit:#x} outside the code"
            );
            exits += 1;
        }
        assert!(exits >= 4 * 6, "only {exits} exit points");
        println!("[descriptors] {count} sections, {exits} exit points checked");
    }
}

#[test]
fn a_handle_kept_after_opting_out_never_commits() {
    std::thread::spawn(|| {
        let Some(t) = thread() else { return };
        let mut v = 1u64;
        restartable::opt_out_current_thread();
        assert!(!t.live());
        assert_eq!(t.id(Index::Cpu), None);
        assert!(t.retry(Index::Cpu, |_| Outcome::Committed(())).is_err());
        assert!(Thread::current().is_none());
        assert!(matches!(
            restartable::registration().fallback,
            Some(restartable::FallbackReason::OptedOut)
        ));
        // A second thread may now be handed the released area; this one's
        // stale handle must not act on it.
        std::thread::spawn(|| {
            let _ = Thread::current();
        })
        .join()
        .unwrap();
        let id = Thread::current().and_then(|t2| t2.id(Index::Cpu));
        assert_eq!(id, None);
        let _ = &mut v;
    })
    .join()
    .unwrap();
}
