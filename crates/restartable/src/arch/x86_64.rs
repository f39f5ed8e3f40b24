//! x86-64 critical sections.
//!
//! Each section is one `asm!` block that emits its own descriptor into
//! `__rseq_cs`, a pointer to it into `__rseq_cs_ptr_array`, each early exit
//! into `__rseq_exit_point_array` as a (start_ip, exit_ip) pair, and its abort
//! handler into `__rseq_failure`, right after the 4-byte signature (the
//! bytes `0f b9 3d` followed by the signature decode as a trapping `ud1`).
//! Only numeric local labels appear (20–29 for the section, 96–98 for
//! injected delays), so a block may be inlined any number of times.
//!
//! x86-64 is TSO: a plain store already has release semantics, so the
//! release flavour of each operation is the same code as the relaxed one.

use core::arch::asm;

use super::Attempt;
use crate::abi::Rseq;
use crate::abi::{OFFSET_CPU_ID, OFFSET_RSEQ_CS, SIGNATURE};

/// Critical sections exist on this architecture.
pub(crate) const HAS_SECTIONS: bool = true;

/// The thread pointer (`fs` base), to which libc's `__rseq_offset` is
/// relative.
#[inline]
pub(crate) fn thread_pointer() -> Option<*const u8> {
    let tp: *const u8;
    // SAFETY: on x86-64 Linux the first word of the thread control block,
    // at fs:0, holds the thread pointer itself (the TLS ABI requires it).
    unsafe {
        asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags))
    };
    (!tp.is_null()).then_some(tp)
}

/// glibc's rseq symbols, through weak references (see `arch`).
#[inline]
pub(crate) fn libc_rseq_symbols() -> [*const u8; 3] {
    let (offset, size, flags): (*const u8, *const u8, *const u8);
    // SAFETY: loads three GOT entries, which the linker or loader fills
    // with the symbols' addresses (0 for an undefined weak symbol).
    unsafe {
        asm!(
            ".weak __rseq_offset",
            ".weak __rseq_size",
            ".weak __rseq_flags",
            "mov {offset}, qword ptr [rip + __rseq_offset@GOTPCREL]",
            "mov {size}, qword ptr [rip + __rseq_size@GOTPCREL]",
            "mov {flags}, qword ptr [rip + __rseq_flags@GOTPCREL]",
            offset = out(reg) offset,
            size = out(reg) size,
            flags = out(reg) flags,
            options(nostack, readonly, preserves_flags),
        )
    };
    [offset, size, flags]
}

/// Adds one to a thread's own counter (see `arch`): one `inc`, which a
/// signal handler cannot split, and no locked instruction.
#[cfg_attr(not(feature = "abort-stats"), allow(dead_code))]
#[inline(always)]
pub(crate) fn bump_own(counter: &core::sync::atomic::AtomicU64) {
    // SAFETY: `inc` on an aligned u64 that only this thread writes: to any
    // other thread it is one atomic store of the next value.
    unsafe { asm!("inc qword ptr [{0}]", in(reg) counter.as_ptr(), options(nostack)) };
}

/// A delay loop of `DELAYS[$slot]` iterations (feature `inject`), or
/// nothing at all.
#[cfg(feature = "inject")]
macro_rules! inject {
    ($offset:literal) => {
        concat!(
            "mov {inj}, qword ptr [rip + {delays} + ",
            $offset,
            "]\n",
            "test {inj}, {inj}\n",
            "jz 98f\n",
            "97:\n",
            "pause\n",
            "dec {inj}\n",
            "jnz 97b\n",
            "98:\n",
        )
    };
}
#[cfg(not(feature = "inject"))]
macro_rules! inject {
    ($offset:literal) => {
        ""
    };
}

/// Feature `compare-twice`: right before the commit, check the id again and
/// (optionally) that a word still holds what the section compared it with;
/// on a mismatch leave for `ct_fail`, which stops the process.
#[cfg(feature = "compare-twice")]
macro_rules! twice {
    () => {
        concat!(
            ".pushsection __rseq_exit_point_array, \"awR\"\n",
            ".balign 8\n",
            ".quad 21b, {ct_fail}\n",
            ".popsection\n",
            "cmp dword ptr [{area} + {id}], {cpu:e}\n",
            "jne {ct_fail}\n",
        )
    };
    ($mem:literal, $reg:literal) => {
        concat!(
            twice!(),
            "cmp qword ptr [",
            $mem,
            "], ",
            $reg,
            "\n",
            "jne {ct_fail}\n"
        )
    };
}
#[cfg(not(feature = "compare-twice"))]
macro_rules! twice {
    () => {
        ""
    };
    ($mem:literal, $reg:literal) => {
        ""
    };
}

/// Descriptor, tables, arming the section, and the id check at start_ip.
macro_rules! begin {
    () => {
        concat!(
            ".pushsection __rseq_cs, \"awR\"\n",
            ".balign 32\n",
            "20:\n",
            ".long 0, 0\n",
            ".quad 21f, 22f - 21f, 23f\n",
            ".popsection\n",
            ".pushsection __rseq_cs_ptr_array, \"awR\"\n",
            ".balign 8\n",
            ".quad 20b\n",
            ".popsection\n",
            inject!("0"),
            "lea {scratch}, [rip + 20b]\n",
            "mov qword ptr [{area} + {rseq_cs}], {scratch}\n",
            "21:\n",
            inject!("8"),
            "cmp dword ptr [{area} + {id}], {cpu:e}\n",
            "jne 23f\n",
        )
    };
}

/// Records an early exit from the section to `$to`.
macro_rules! exit {
    ($to:literal) => {
        concat!(
            ".pushsection __rseq_exit_point_array, \"awR\"\n",
            ".balign 8\n",
            ".quad 21b, ",
            $to,
            "\n",
            ".popsection\n",
        )
    };
}

/// post_commit_ip, then the abort handler and exit stubs out of line.
macro_rules! end {
    ($($stub:expr),*) => {
        concat!(
            "22:\n",
            ".pushsection __rseq_failure, \"ax\"\n",
            ".byte 0x0f, 0xb9, 0x3d\n",
            ".long {signature}\n",
            "23:\n",
            "jmp {aborted}\n",
            $($stub,)*
            ".popsection\n",
        )
    };
}

/// Exit stub for a failed compare: publish the value seen, then leave.
macro_rules! seen_stub {
    ($label:literal, $target:literal) => {
        concat!(
            $label,
            ":\n",
            "mov qword ptr [{seen}], {val}\n",
            "jmp ",
            $target,
            "\n"
        )
    };
}

/// `asm!` with the operands every section shares (callers end their
/// operand list with a comma).
#[cfg(all(feature = "inject", feature = "compare-twice"))]
macro_rules! section_asm {
    ($($args:tt)*) => {
        asm!($($args)*
            signature = const SIGNATURE, rseq_cs = const OFFSET_RSEQ_CS,
            aborted = label { return Attempt::Aborted },
            inj = out(reg) _, delays = sym crate::inject::DELAYS,
            ct_fail = label { crate::inject::compare_twice_failed() })
    };
}
#[cfg(all(feature = "inject", not(feature = "compare-twice")))]
macro_rules! section_asm {
    ($($args:tt)*) => {
        asm!($($args)*
            signature = const SIGNATURE, rseq_cs = const OFFSET_RSEQ_CS,
            aborted = label { return Attempt::Aborted },
            inj = out(reg) _, delays = sym crate::inject::DELAYS)
    };
}
#[cfg(all(not(feature = "inject"), feature = "compare-twice"))]
macro_rules! section_asm {
    ($($args:tt)*) => {
        asm!($($args)*
            signature = const SIGNATURE, rseq_cs = const OFFSET_RSEQ_CS,
            aborted = label { return Attempt::Aborted },
            ct_fail = label { crate::inject::compare_twice_failed() })
    };
}
#[cfg(all(not(feature = "inject"), not(feature = "compare-twice")))]
macro_rules! section_asm {
    ($($args:tt)*) => {
        asm!($($args)*
            signature = const SIGNATURE, rseq_cs = const OFFSET_RSEQ_CS,
            aborted = label { return Attempt::Aborted })
    };
}

/// The compare-twice check of [`add_indexed`]: the CPU is still the one
/// whose slot `scratch` addresses.
#[cfg(feature = "compare-twice")]
macro_rules! twice_indexed {
    () => {
        concat!(
            ".pushsection __rseq_exit_point_array, \"awR\"\n",
            ".balign 8\n",
            ".quad 21b, {ct_fail}\n",
            ".popsection\n",
            "shr {scratch}, {shift}\n",
            "cmp dword ptr [{area} + {cpu_id}], {scratch:e}\n",
            "jne {ct_fail}\n",
            "shl {scratch}, {shift}\n",
        )
    };
}
#[cfg(not(feature = "compare-twice"))]
macro_rules! twice_indexed {
    () => {
        ""
    };
}

/// `slots[cpu_id] += count`, where slot `i` is the `u64` at
/// `base + (i << SHIFT)` and `cpu_id` is read inside the section; exits early
/// when `cpu_id >= len` (which covers an unregistered area, `cpu_id` = -1).
/// The fast path of [`Counter`](crate::Counter).
///
/// # Safety
/// - `area` is the calling thread's registered rseq area.
/// - For every `i < len`, `base + (i << SHIFT)` is valid for reads and writes
///   of an aligned `u64` that is only written by sections indexed the same way.
#[inline(always)]
pub(crate) unsafe fn add_indexed<const SHIFT: u32>(
    area: *const Rseq,
    base: *mut u8,
    len: usize,
    count: u64,
) -> Attempt {
    // SAFETY: the caller guarantees the area and slot memory; the section
    // writes only `rseq_cs` in the area and one slot below `len`.
    unsafe {
        section_asm!(
            ".pushsection __rseq_cs, \"awR\"",
            ".balign 32",
            "20:",
            ".long 0, 0",
            ".quad 21f, 22f - 21f, 23f",
            ".popsection",
            ".pushsection __rseq_cs_ptr_array, \"awR\"",
            ".balign 8",
            ".quad 20b",
            ".popsection",
            inject!("0"),
            "lea {scratch}, [rip + 20b]",
            "mov qword ptr [{area} + {rseq_cs}], {scratch}",
            "21:",
            exit!("{out_of_range}"),
            inject!("8"),
            "mov {scratch:e}, dword ptr [{area} + {cpu_id}]",
            "cmp {scratch}, {len}",
            "jae {out_of_range}",
            "shl {scratch}, {shift}",
            inject!("16"),
            twice_indexed!(),
            "add qword ptr [{base} + {scratch}], {count}",
            end!(),
            area = in(reg) area,
            base = in(reg) base,
            len = in(reg) len,
            count = in(reg) count,
            scratch = out(reg) _,
            cpu_id = const OFFSET_CPU_ID,
            shift = const SHIFT,
            out_of_range = label { return Attempt::OutOfRange },
            options(nostack),
        );
    }
    Attempt::Committed
}

/// If `*v == expect`, commit `*v = new`; else write `*v` to `*seen` and
/// report `CompareFailed(0)`.
///
/// # Safety
/// See [`crate::section`]: `area` is this thread's area, the pointers are
/// valid and aligned, and `*v` is written by nothing but sections indexed by
/// the same id (or under the fence protocol).
#[inline(always)]
pub(crate) unsafe fn compare_store<const ID: usize, const RELEASE: bool>(
    area: *const Rseq,
    cpu: u32,
    v: *mut u64,
    expect: u64,
    new: u64,
    seen: *mut u64,
) -> Attempt {
    // SAFETY: the caller guarantees area and memory; see the function docs.
    unsafe {
        section_asm!(
            begin!(),
            exit!("24f"),
            "mov {val}, qword ptr [{v}]",
            "cmp {val}, {expect}",
            "jne 24f",
            inject!("16"),
            twice!("{v}", "{expect}"),
            "mov qword ptr [{v}], {new}",
            end!(seen_stub!("24", "{cmpfail}")),
            area = in(reg) area,
            cpu = in(reg) cpu,
            id = const ID,
            v = in(reg) v,
            expect = in(reg) expect,
            new = in(reg) new,
            seen = in(reg) seen,
            val = out(reg) _,
            scratch = out(reg) _,
            cmpfail = label { return Attempt::CompareFailed(0) },
            options(nostack),
        );
    }
    Attempt::Committed
}

/// `*v += count`.
///
/// # Safety
/// As [`compare_store`].
#[inline(always)]
pub(crate) unsafe fn add<const ID: usize, const RELEASE: bool>(
    area: *const Rseq,
    cpu: u32,
    v: *mut u64,
    count: u64,
) -> Attempt {
    // SAFETY: the caller guarantees area and memory; see the function docs.
    unsafe {
        section_asm!(
            begin!(),
            inject!("16"),
            twice!(),
            "add qword ptr [{v}], {count}",
            end!(),
            area = in(reg) area,
            cpu = in(reg) cpu,
            id = const ID,
            v = in(reg) v,
            count = in(reg) count,
            scratch = out(reg) _,
            options(nostack),
        );
    }
    Attempt::Committed
}

/// Pop from an intrusive list: if `*guard != 0` report `CompareFailed(1)`
/// (seen = `*guard`); if `*v == expect_not` report
/// `CompareFailed(0)` (seen = `*v`); else `*out = *v` and commit
/// `*v = *(*v + offset)` (the head's next pointer).
///
/// # Safety
/// As [`compare_store`]; in addition every node reachable from `*v` is
/// valid for a read of the `u64` at `offset`, and `out` for a write.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn pop<const ID: usize, const RELEASE: bool>(
    area: *const Rseq,
    cpu: u32,
    v: *mut u64,
    expect_not: u64,
    offset: usize,
    guard: *const u64,
    out: *mut u64,
    seen: *mut u64,
) -> Attempt {
    // SAFETY: the caller guarantees area and memory; see the function docs.
    unsafe {
        section_asm!(
            begin!(),
            exit!("24f"),
            exit!("25f"),
            // The guard first: another thread sets it, then fences, to keep
            // sections out of this data (`crate::guard`).
            "mov {val}, qword ptr [{guard}]",
            "test {val}, {val}",
            "jnz 25f",
            "mov {val}, qword ptr [{v}]",
            "cmp {val}, {expect_not}",
            "je 24f",
            "mov qword ptr [{out}], {val}",
            inject!("16"),
            "mov {next}, qword ptr [{val} + {offset}]",
            inject!("24"),
            twice!("{v}", "{val}"),
            "mov qword ptr [{v}], {next}",
            end!(seen_stub!("24", "{cmpfail}"), seen_stub!("25", "{cmpfail2}")),
            area = in(reg) area,
            cpu = in(reg) cpu,
            id = const ID,
            v = in(reg) v,
            expect_not = in(reg) expect_not,
            offset = in(reg) offset,
            out = in(reg) out,
            guard = in(reg) guard,
            seen = in(reg) seen,
            val = out(reg) _,
            next = out(reg) _,
            scratch = out(reg) _,
            cmpfail = label { return Attempt::CompareFailed(0) },
            cmpfail2 = label { return Attempt::CompareFailed(1) },
            options(nostack),
        );
    }
    Attempt::Committed
}

/// `**(*p + offset) += count`: follow a pointer stored at `*p + offset` and
/// add to the word it points to.
///
/// # Safety
/// As [`compare_store`]; `*p + offset` is valid for a pointer-sized read and
/// the pointer read there for a `u64` read and write.
#[inline(always)]
pub(crate) unsafe fn deref_add<const ID: usize, const RELEASE: bool>(
    area: *const Rseq,
    cpu: u32,
    p: *const u64,
    offset: usize,
    count: u64,
) -> Attempt {
    // SAFETY: the caller guarantees area and memory; see the function docs.
    unsafe {
        section_asm!(
            begin!(),
            "mov {val}, qword ptr [{p}]",
            "mov {val}, qword ptr [{val} + {offset}]",
            inject!("16"),
            twice!(),
            "add qword ptr [{val}], {count}",
            end!(),
            area = in(reg) area,
            cpu = in(reg) cpu,
            id = const ID,
            p = in(reg) p,
            offset = in(reg) offset,
            count = in(reg) count,
            val = out(reg) _,
            scratch = out(reg) _,
            options(nostack),
        );
    }
    Attempt::Committed
}

/// If `*v2 == expect2` and `*v == expect` (read in that order), commit
/// `*v = new`; a failed compare reports `CompareFailed(0)` (for `v`) or
/// `CompareFailed(1)` (for `v2`) with the value seen written to `*seen`.
///
/// # Safety
/// As [`compare_store`], for `v` and `v2`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn compare2_store<const ID: usize, const RELEASE: bool>(
    area: *const Rseq,
    cpu: u32,
    v: *mut u64,
    expect: u64,
    v2: *const u64,
    expect2: u64,
    new: u64,
    seen: *mut u64,
) -> Attempt {
    // SAFETY: the caller guarantees area and memory; see the function docs.
    unsafe {
        section_asm!(
            begin!(),
            exit!("24f"),
            exit!("25f"),
            // `v2` first: it may be a guard word (see section::compare2_store).
            "mov {val}, qword ptr [{v2}]",
            "cmp {val}, {expect2}",
            "jne 25f",
            inject!("16"),
            "mov {val}, qword ptr [{v}]",
            "cmp {val}, {expect}",
            "jne 24f",
            inject!("24"),
            // `v2` is not checked twice: as a guard it may be set by another
            // CPU mid-section, which then fences (aborting this section).
            twice!("{v}", "{expect}"),
            "mov qword ptr [{v}], {new}",
            end!(seen_stub!("24", "{cmpfail}"), seen_stub!("25", "{cmpfail2}")),
            area = in(reg) area,
            cpu = in(reg) cpu,
            id = const ID,
            v = in(reg) v,
            expect = in(reg) expect,
            v2 = in(reg) v2,
            expect2 = in(reg) expect2,
            new = in(reg) new,
            seen = in(reg) seen,
            val = out(reg) _,
            scratch = out(reg) _,
            cmpfail = label { return Attempt::CompareFailed(0) },
            cmpfail2 = label { return Attempt::CompareFailed(1) },
            options(nostack),
        );
    }
    Attempt::Committed
}

/// If `*guard == 0` and `*v == expect`: store `*v2 = new2` (speculative),
/// then commit `*v = new`; else `CompareFailed(1)` (guard) or
/// `CompareFailed(0)` with the value seen in `*seen`.
///
/// # Safety
/// As [`compare_store`], for `v` and `v2`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn store_then_store<const ID: usize, const RELEASE: bool>(
    area: *const Rseq,
    cpu: u32,
    v: *mut u64,
    expect: u64,
    v2: *mut u64,
    new2: u64,
    new: u64,
    guard: *const u64,
    seen: *mut u64,
) -> Attempt {
    // SAFETY: the caller guarantees area and memory; see the function docs.
    unsafe {
        section_asm!(
            begin!(),
            exit!("24f"),
            exit!("25f"),
            // The guard first: another thread sets it, then fences, to keep
            // sections out of this data (`crate::guard`).
            "mov {val}, qword ptr [{guard}]",
            "test {val}, {val}",
            "jnz 25f",
            "mov {val}, qword ptr [{v}]",
            "cmp {val}, {expect}",
            "jne 24f",
            inject!("16"),
            "mov qword ptr [{v2}], {new2}",
            inject!("24"),
            twice!("{v}", "{expect}"),
            "mov qword ptr [{v}], {new}",
            end!(seen_stub!("24", "{cmpfail}"), seen_stub!("25", "{cmpfail2}")),
            area = in(reg) area,
            cpu = in(reg) cpu,
            id = const ID,
            v = in(reg) v,
            expect = in(reg) expect,
            v2 = in(reg) v2,
            new2 = in(reg) new2,
            new = in(reg) new,
            guard = in(reg) guard,
            seen = in(reg) seen,
            val = out(reg) _,
            scratch = out(reg) _,
            cmpfail = label { return Attempt::CompareFailed(0) },
            cmpfail2 = label { return Attempt::CompareFailed(1) },
            options(nostack),
        );
    }
    Attempt::Committed
}

/// If `*guard == 0` and `*v == expect`: copy `len` bytes from `src` to `dst`
/// (speculative), then commit `*v = new`; else `CompareFailed(1)` (guard)
/// or `CompareFailed(0)` with the value seen in `*seen`.
///
/// # Safety
/// As [`compare_store`]; `src` is valid for reads and `dst` for writes of
/// `len` bytes, and they do not overlap.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn memcpy_then_store<const ID: usize, const RELEASE: bool>(
    area: *const Rseq,
    cpu: u32,
    v: *mut u64,
    expect: u64,
    dst: *mut u8,
    src: *const u8,
    len: usize,
    new: u64,
    guard: *const u64,
    seen: *mut u64,
) -> Attempt {
    // SAFETY: the caller guarantees area and memory; see the function docs.
    unsafe {
        section_asm!(
            begin!(),
            exit!("24f"),
            exit!("25f"),
            // The guard first: another thread sets it, then fences, to keep
            // sections out of this data (`crate::guard`).
            "mov {val}, qword ptr [{guard}]",
            "test {val}, {val}",
            "jnz 25f",
            "mov {val}, qword ptr [{v}]",
            "cmp {val}, {expect}",
            "jne 24f",
            inject!("16"),
            // Copy 8 bytes at a time, then the tail byte by byte; `val`
            // counts the bytes copied.
            "xor {val:e}, {val:e}",
            "26:",
            "lea {scratch}, [{val} + 8]",
            "cmp {scratch}, {len}",
            "ja 27f",
            "mov {scratch}, qword ptr [{src} + {val}]",
            "mov qword ptr [{dst} + {val}], {scratch}",
            "add {val}, 8",
            "jmp 26b",
            "27:",
            "cmp {val}, {len}",
            "jae 28f",
            "movzx {scratch:e}, byte ptr [{src} + {val}]",
            "mov byte ptr [{dst} + {val}], {scratch:l}",
            "inc {val}",
            "jmp 27b",
            "28:",
            inject!("24"),
            twice!("{v}", "{expect}"),
            "mov qword ptr [{v}], {new}",
            end!(seen_stub!("24", "{cmpfail}"), seen_stub!("25", "{cmpfail2}")),
            area = in(reg) area,
            cpu = in(reg) cpu,
            id = const ID,
            v = in(reg) v,
            expect = in(reg) expect,
            dst = in(reg) dst,
            src = in(reg) src,
            len = in(reg) len,
            new = in(reg) new,
            guard = in(reg) guard,
            seen = in(reg) seen,
            val = out(reg) _,
            scratch = out(reg) _,
            cmpfail = label { return Attempt::CompareFailed(0) },
            cmpfail2 = label { return Attempt::CompareFailed(1) },
            options(nostack),
        );
    }
    Attempt::Committed
}
