//! aarch64 critical sections.
//!
//! The same layout as on x86-64: each `asm!` block emits its descriptor into
//! `__rseq_cs`, a pointer to it into `__rseq_cs_ptr_array`, its early exits
//! into `__rseq_exit_point_array`, and its abort handler into
//! `__rseq_failure` right after the signature, emitted as the instruction
//! word `0xd428bc00` (a `brk`, so falling into it traps). Release commits
//! use `stlr`. Out-of-line targets are reached through `far!`, so programs
//! of any size link. Labels 20–29 belong to the section, 96–98 to injected
//! delays.

use core::arch::asm;

use super::Attempt;
use crate::abi::Rseq;
use crate::abi::{OFFSET_CPU_ID, OFFSET_RSEQ_CS};

/// Critical sections exist on this architecture.
pub(crate) const HAS_SECTIONS: bool = true;

/// The thread pointer (`tpidr_el0`), to which libc's `__rseq_offset` is
/// relative.
#[inline]
pub(crate) fn thread_pointer() -> Option<*const u8> {
    let tp: *const u8;
    // SAFETY: reading tpidr_el0 has no side effects.
    unsafe { asm!("mrs {}, tpidr_el0", out(reg) tp, options(nomem, nostack, preserves_flags)) };
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
            "adrp {offset}, :got:__rseq_offset",
            "ldr {offset}, [{offset}, :got_lo12:__rseq_offset]",
            "adrp {size}, :got:__rseq_size",
            "ldr {size}, [{size}, :got_lo12:__rseq_size]",
            "adrp {flags}, :got:__rseq_flags",
            "ldr {flags}, [{flags}, :got_lo12:__rseq_flags]",
            offset = out(reg) offset,
            size = out(reg) size,
            flags = out(reg) flags,
            options(nostack, readonly, preserves_flags),
        )
    };
    [offset, size, flags]
}

/// Adds one to a thread's own counter (see `arch`): an uncontended atomic
/// add.
#[cfg_attr(not(feature = "abort-stats"), allow(dead_code))]
#[inline(always)]
pub(crate) fn bump_own(counter: &core::sync::atomic::AtomicU64) {
    counter.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
}

#[cfg(feature = "inject")]
macro_rules! inject {
    ($offset:literal) => {
        concat!(
            "adrp {inj}, {delays}\n",
            "add {inj}, {inj}, :lo12:{delays}\n",
            "ldr {inj}, [{inj}, #",
            $offset,
            "]\n",
            "cbz {inj}, 98f\n",
            "97:\n",
            "yield\n",
            "subs {inj}, {inj}, #1\n",
            "b.ne 97b\n",
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

/// Feature `compare-twice`: re-check the id (and a compared word) right
/// before the commit, using `scratch`, which is free at that point.
#[cfg(feature = "compare-twice")]
macro_rules! twice {
    () => {
        concat!(
            ".pushsection __rseq_exit_point_array, \"awR\"\n",
            ".balign 8\n",
            ".quad 21b, {ct_fail}\n",
            ".popsection\n",
            "ldr {scratch:w}, [{area}, #{id}]\n",
            "cmp {scratch:w}, {cpu:w}\n",
            "b.ne {ct_fail}\n",
        )
    };
    ($mem:literal, $reg:literal) => {
        concat!(
            twice!(),
            "ldr {scratch}, [",
            $mem,
            "]\n",
            "cmp {scratch}, ",
            $reg,
            "\n",
            "b.ne {ct_fail}\n"
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

/// Conditional branch to an out-of-line target in `__rseq_failure`, which
/// may lie beyond the ±1 MiB reach of `b.cond`: an inverted short branch over
/// an unconditional `b` (±128 MiB). The fast path falls through one taken
/// branch.
macro_rules! far {
    ("ne", $to:literal) => {
        concat!("b.eq 29f\n", "b ", $to, "\n", "29:\n")
    };
    ("eq", $to:literal) => {
        concat!("b.ne 29f\n", "b ", $to, "\n", "29:\n")
    };
}

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
            "adrp {scratch}, 20b\n",
            "add {scratch}, {scratch}, :lo12:20b\n",
            "str {scratch}, [{area}, #{rseq_cs}]\n",
            "21:\n",
            inject!("8"),
            "ldr {scratch:w}, [{area}, #{id}]\n",
            "cmp {scratch:w}, {cpu:w}\n",
            far!("ne", "23f"),
        )
    };
}

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

macro_rules! end {
    ($($stub:expr),*) => {
        concat!(
            "22:\n",
            ".pushsection __rseq_failure, \"ax\"\n",
            ".inst 0xd428bc00\n",
            "23:\n",
            "b {aborted}\n",
            $($stub,)*
            ".popsection\n",
        )
    };
}

macro_rules! seen_stub {
    ($label:literal, $target:literal) => {
        concat!($label, ":\n", "str {val}, [{seen}]\n", "b ", $target, "\n")
    };
}

#[cfg(all(feature = "inject", feature = "compare-twice"))]
macro_rules! section_asm {
    ($($args:tt)*) => {
        asm!($($args)*
            rseq_cs = const OFFSET_RSEQ_CS,
            aborted = label { return Attempt::Aborted },
            inj = out(reg) _, delays = sym crate::inject::DELAYS,
            ct_fail = label { crate::inject::compare_twice_failed() })
    };
}
#[cfg(all(feature = "inject", not(feature = "compare-twice")))]
macro_rules! section_asm {
    ($($args:tt)*) => {
        asm!($($args)*
            rseq_cs = const OFFSET_RSEQ_CS,
            aborted = label { return Attempt::Aborted },
            inj = out(reg) _, delays = sym crate::inject::DELAYS)
    };
}
#[cfg(all(not(feature = "inject"), feature = "compare-twice"))]
macro_rules! section_asm {
    ($($args:tt)*) => {
        asm!($($args)*
            rseq_cs = const OFFSET_RSEQ_CS,
            aborted = label { return Attempt::Aborted },
            ct_fail = label { crate::inject::compare_twice_failed() })
    };
}
#[cfg(all(not(feature = "inject"), not(feature = "compare-twice")))]
macro_rules! section_asm {
    ($($args:tt)*) => {
        asm!($($args)*
            rseq_cs = const OFFSET_RSEQ_CS,
            aborted = label { return Attempt::Aborted })
    };
}

#[cfg(feature = "compare-twice")]
macro_rules! twice_indexed {
    () => {
        concat!(
            ".pushsection __rseq_exit_point_array, \"awR\"\n",
            ".balign 8\n",
            ".quad 21b, {ct_fail}\n",
            ".popsection\n",
            "ldr {val:w}, [{area}, #{cpu_id}]\n",
            "lsl {val}, {val}, #{shift}\n",
            "cmp {val}, {scratch}\n",
            "b.ne {ct_fail}\n",
        )
    };
}
#[cfg(not(feature = "compare-twice"))]
macro_rules! twice_indexed {
    () => {
        ""
    };
}

/// `slots[cpu_id] += count` with the slot chosen inside the section; see
/// the x86-64 version.
///
/// # Safety
/// As the x86-64 version.
#[inline(always)]
pub(crate) unsafe fn add_indexed<const SHIFT: u32>(
    area: *const Rseq,
    base: *mut u8,
    len: usize,
    count: u64,
) -> Attempt {
    // SAFETY: the caller guarantees the area and slot memory.
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
            "adrp {scratch}, 20b",
            "add {scratch}, {scratch}, :lo12:20b",
            "str {scratch}, [{area}, #{rseq_cs}]",
            "21:",
            exit!("{out_of_range}"),
            inject!("8"),
            "ldr {scratch:w}, [{area}, #{cpu_id}]",
            "cmp {scratch}, {len}",
            "b.hs {out_of_range}",
            "lsl {scratch}, {scratch}, #{shift}",
            inject!("16"),
            twice_indexed!(),
            "ldr {val}, [{base}, {scratch}]",
            "add {val}, {val}, {count}",
            "str {val}, [{base}, {scratch}]",
            end!(),
            area = in(reg) area,
            base = in(reg) base,
            len = in(reg) len,
            count = in(reg) count,
            scratch = out(reg) _,
            val = out(reg) _,
            cpu_id = const OFFSET_CPU_ID,
            shift = const SHIFT,
            out_of_range = label { return Attempt::OutOfRange },
            options(nostack),
        );
    }
    Attempt::Committed
}

/// If `*v == expect`, commit `*v = new`; see the x86-64 version.
///
/// # Safety
/// As the x86-64 version.
#[inline(always)]
pub(crate) unsafe fn compare_store<const ID: usize, const RELEASE: bool>(
    area: *const Rseq,
    cpu: u32,
    v: *mut u64,
    expect: u64,
    new: u64,
    seen: *mut u64,
) -> Attempt {
    macro_rules! body {
        ($st:literal) => {
            section_asm!(
                begin!(),
                exit!("24f"),
                "ldr {val}, [{v}]",
                "cmp {val}, {expect}",
                far!("ne", "24f"),
                inject!("16"),
                twice!("{v}", "{expect}"),
                concat!($st, " {new}, [{v}]"),
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
            )
        };
    }
    // SAFETY: the caller guarantees area and memory.
    unsafe {
        if RELEASE {
            body!("stlr")
        } else {
            body!("str")
        }
    }
    Attempt::Committed
}

/// `*v += count`.
///
/// # Safety
/// As the x86-64 version.
#[inline(always)]
pub(crate) unsafe fn add<const ID: usize, const RELEASE: bool>(
    area: *const Rseq,
    cpu: u32,
    v: *mut u64,
    count: u64,
) -> Attempt {
    macro_rules! body {
        ($st:literal) => {
            section_asm!(
                begin!(),
                inject!("16"),
                twice!(),
                "ldr {val}, [{v}]",
                "add {val}, {val}, {count}",
                concat!($st, " {val}, [{v}]"),
                end!(),
                area = in(reg) area,
                cpu = in(reg) cpu,
                id = const ID,
                v = in(reg) v,
                count = in(reg) count,
                val = out(reg) _,
                scratch = out(reg) _,
                options(nostack),
            )
        };
    }
    // SAFETY: the caller guarantees area and memory.
    unsafe {
        if RELEASE {
            body!("stlr")
        } else {
            body!("str")
        }
    }
    Attempt::Committed
}

/// Pop from an intrusive list; see the x86-64 version.
///
/// # Safety
/// As the x86-64 version.
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
    macro_rules! body {
        ($st:literal) => {
            section_asm!(
                begin!(),
                exit!("24f"),
                exit!("25f"),
                // The guard first, with acquire: another thread sets it,
                // then fences, to keep sections out of this data.
                "ldar {val}, [{guard}]",
                "cmp {val}, #0",
                far!("ne", "25f"),
                "ldr {val}, [{v}]",
                "cmp {val}, {expect_not}",
                far!("eq", "24f"),
                "str {val}, [{out}]",
                inject!("16"),
                "ldr {next}, [{val}, {offset}]",
                inject!("24"),
                twice!("{v}", "{val}"),
                concat!($st, " {next}, [{v}]"),
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
            )
        };
    }
    // SAFETY: the caller guarantees area and memory.
    unsafe {
        if RELEASE {
            body!("stlr")
        } else {
            body!("str")
        }
    }
    Attempt::Committed
}

/// `**(*p + offset) += count`.
///
/// # Safety
/// As the x86-64 version.
#[inline(always)]
pub(crate) unsafe fn deref_add<const ID: usize, const RELEASE: bool>(
    area: *const Rseq,
    cpu: u32,
    p: *const u64,
    offset: usize,
    count: u64,
) -> Attempt {
    macro_rules! body {
        ($st:literal) => {
            section_asm!(
                begin!(),
                "ldr {ptr}, [{p}]",
                "ldr {ptr}, [{ptr}, {offset}]",
                inject!("16"),
                twice!(),
                "ldr {val}, [{ptr}]",
                "add {val}, {val}, {count}",
                concat!($st, " {val}, [{ptr}]"),
                end!(),
                area = in(reg) area,
                cpu = in(reg) cpu,
                id = const ID,
                p = in(reg) p,
                offset = in(reg) offset,
                count = in(reg) count,
                ptr = out(reg) _,
                val = out(reg) _,
                scratch = out(reg) _,
                options(nostack),
            )
        };
    }
    // SAFETY: the caller guarantees area and memory.
    unsafe {
        if RELEASE {
            body!("stlr")
        } else {
            body!("str")
        }
    }
    Attempt::Committed
}

/// If `*v2 == expect2` (load-acquire, first) and `*v == expect`, commit
/// `*v = new`.
///
/// # Safety
/// As the x86-64 version.
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
    macro_rules! body {
        ($st:literal) => {
            section_asm!(
                begin!(),
                exit!("24f"),
                exit!("25f"),
                // `v2` first, with acquire: it may be a guard word whose
                // release by another thread must order the load of `v`.
                "ldar {val}, [{v2}]",
                "cmp {val}, {expect2}",
                far!("ne", "25f"),
                inject!("16"),
                "ldr {val}, [{v}]",
                "cmp {val}, {expect}",
                far!("ne", "24f"),
                inject!("24"),
                // `v2` is not checked twice: as a guard it may be set by
                // another CPU mid-section, which then fences.
                twice!("{v}", "{expect}"),
                concat!($st, " {new}, [{v}]"),
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
            )
        };
    }
    // SAFETY: the caller guarantees area and memory.
    unsafe {
        if RELEASE {
            body!("stlr")
        } else {
            body!("str")
        }
    }
    Attempt::Committed
}

/// If `*guard == 0` and `*v == expect`: `*v2 = new2`, then commit `*v = new`.
///
/// # Safety
/// As the x86-64 version.
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
    macro_rules! body {
        ($st:literal) => {
            section_asm!(
                begin!(),
                exit!("24f"),
                exit!("25f"),
                // The guard first, with acquire: another thread sets it,
                // then fences, to keep sections out of this data.
                "ldar {val}, [{guard}]",
                "cmp {val}, #0",
                far!("ne", "25f"),
                "ldr {val}, [{v}]",
                "cmp {val}, {expect}",
                far!("ne", "24f"),
                inject!("16"),
                "str {new2}, [{v2}]",
                inject!("24"),
                twice!("{v}", "{expect}"),
                concat!($st, " {new}, [{v}]"),
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
            )
        };
    }
    // SAFETY: the caller guarantees area and memory.
    unsafe {
        if RELEASE {
            body!("stlr")
        } else {
            body!("str")
        }
    }
    Attempt::Committed
}

/// If `*guard == 0` and `*v == expect`: copy `len` bytes, then commit
/// `*v = new`.
///
/// # Safety
/// As the x86-64 version.
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
    macro_rules! body {
        ($st:literal) => {
            section_asm!(
                begin!(),
                exit!("24f"),
                exit!("25f"),
                // The guard first, with acquire: another thread sets it,
                // then fences, to keep sections out of this data.
                "ldar {val}, [{guard}]",
                "cmp {val}, #0",
                far!("ne", "25f"),
                "ldr {val}, [{v}]",
                "cmp {val}, {expect}",
                far!("ne", "24f"),
                inject!("16"),
                // `val` counts the bytes copied: 8 at a time, then the tail.
                "mov {val}, #0",
                "26:",
                "add {scratch}, {val}, #8",
                "cmp {scratch}, {len}",
                "b.hi 27f",
                "ldr {scratch}, [{src}, {val}]",
                "str {scratch}, [{dst}, {val}]",
                "add {val}, {val}, #8",
                "b 26b",
                "27:",
                "cmp {val}, {len}",
                "b.hs 28f",
                "ldrb {scratch:w}, [{src}, {val}]",
                "strb {scratch:w}, [{dst}, {val}]",
                "add {val}, {val}, #1",
                "b 27b",
                "28:",
                inject!("24"),
                twice!("{v}", "{expect}"),
                concat!($st, " {new}, [{v}]"),
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
            )
        };
    }
    // SAFETY: the caller guarantees area and memory.
    unsafe {
        if RELEASE {
            body!("stlr")
        } else {
            body!("str")
        }
    }
    Attempt::Committed
}
