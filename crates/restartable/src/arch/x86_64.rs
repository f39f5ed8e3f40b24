//! x86-64 critical sections.
//!
//! Each section is one `asm!` block that emits its own descriptor into
//! `__rseq_cs`, a pointer to it into `__rseq_cs_ptr_array`, each early exit
//! into `__rseq_exit_point_array` as a (start_ip, exit_ip) pair, and its abort
//! handler into `__rseq_failure`, right after the 4-byte signature (the
//! bytes `0f b9 3d` followed by the signature decode as a trapping `ud1`).
//! Labels 20–29 are used by the sections; only numeric local labels appear,
//! so a block may be inlined any number of times.

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

/// Critical section: `slots[cpu_id] += count`, where slot `i` is the `u64`
/// at `base + (i << shift)` and `cpu_id` is read from the area inside the
/// section. Exits early (without touching memory) when `cpu_id >= len`,
/// which also covers an unregistered area (`cpu_id` = -1).
///
/// The commit is the single `add` instruction to the slot.
///
/// # Safety
/// - `area` is the calling thread's registered rseq area.
/// - For every `i < len`, `base + (i << shift)` is valid for reads and writes
///   of an aligned `u64` that no other thread writes except through sections
///   indexed the same way (writes by other code must be atomic and must not
///   target the same word).
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
        asm!(
            // The descriptor and the tables tools read.
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
            ".pushsection __rseq_exit_point_array, \"awR\"",
            ".balign 8",
            ".quad 21f, {out_of_range}",
            ".popsection",
            // Arm the section.
            "lea {scratch}, [rip + 20b]",
            "mov qword ptr [{area} + {rseq_cs}], {scratch}",
            // start_ip: read the CPU and bound it.
            "21:",
            "mov {scratch:e}, dword ptr [{area} + {cpu_id}]",
            "cmp {scratch}, {len}",
            "jae {out_of_range}",
            "shl {scratch}, {shift}",
            // Commit.
            "add qword ptr [{base} + {scratch}], {count}",
            "22:",
            // Abort handler, outside [start_ip, post_commit_ip).
            ".pushsection __rseq_failure, \"ax\"",
            ".byte 0x0f, 0xb9, 0x3d",
            ".long {signature}",
            "23:",
            "jmp {aborted}",
            ".popsection",
            area = in(reg) area,
            base = in(reg) base,
            len = in(reg) len,
            count = in(reg) count,
            scratch = out(reg) _,
            rseq_cs = const OFFSET_RSEQ_CS,
            cpu_id = const OFFSET_CPU_ID,
            shift = const SHIFT,
            signature = const SIGNATURE,
            out_of_range = label { return Attempt::OutOfRange },
            aborted = label { return Attempt::Aborted },
            options(nostack),
        );
    }
    Attempt::Committed
}
