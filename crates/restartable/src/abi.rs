//! The rseq ABI: `struct rseq`, `struct rseq_cs` and the constants that go
//! with them.
//!
//! Source: `include/uapi/linux/rseq.h` in the Linux kernel and `man 2 rseq`.
//! All offsets and sizes are in bytes and are checked at compile time below.

use core::mem::{align_of, offset_of, size_of};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Signature the kernel checks in the four bytes right before an abort
/// handler (x86-64: the immediate of a trapping `ud1`).
#[cfg(target_arch = "x86_64")]
pub const SIGNATURE: u32 = 0x5305_3053;
/// Signature the kernel checks in the four bytes right before an abort
/// handler (aarch64: a `brk` instruction).
#[cfg(target_arch = "aarch64")]
pub const SIGNATURE: u32 = 0xd428_bc00;
/// Signature the kernel checks in the four bytes right before an abort
/// handler (riscv64).
#[cfg(target_arch = "riscv64")]
pub const SIGNATURE: u32 = 0xf140_1073;
/// Architectures without a signature of ours never register an area.
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
)))]
pub const SIGNATURE: u32 = 0;

/// `RSEQ_FLAG_UNREGISTER`: the `flags` argument that unregisters an area.
pub const FLAG_UNREGISTER: i32 = 1;

/// Size of the original (Linux 4.18) `struct rseq`; a registration of
/// exactly this length is accepted by every kernel when 32-byte aligned.
pub const ORIG_AREA_SIZE: u32 = 32;

/// Feature size of the original ABI, up to and including `flags`.
pub const ORIG_FEATURE_SIZE: u32 = 20;

/// Feature size from which the kernel maintains `node_id`.
pub const NODE_ID_FEATURE_SIZE: u32 = 24;

/// Feature size from which the kernel maintains `mm_cid` (Linux 6.3+).
pub const MM_CID_FEATURE_SIZE: u32 = 28;

/// `AT_RSEQ_FEATURE_SIZE`: auxiliary vector entry holding the feature size
/// the kernel supports.
pub const AT_RSEQ_FEATURE_SIZE: u64 = 27;

/// `AT_RSEQ_ALIGN`: auxiliary vector entry holding the alignment the kernel
/// requires of an area registered with more than 32 bytes.
pub const AT_RSEQ_ALIGN: u64 = 28;

/// `cpu_id` value of an area that is not registered.
pub const CPU_ID_UNINITIALIZED: i32 = -1;

/// `cpu_id` value after a failed registration.
pub const CPU_ID_REGISTRATION_FAILED: i32 = -2;

/// `MEMBARRIER_CMD_QUERY`.
pub const MEMBARRIER_CMD_QUERY: i32 = 0;
/// `MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ` (Linux 5.10+).
pub const MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ: i32 = 1 << 7;
/// `MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ` (Linux 5.10+).
pub const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ: i32 = 1 << 8;

/// `struct rseq`: the per-thread area shared with the kernel.
///
/// User space writes only [`rseq_cs`](Self::set_rseq_cs); every other field
/// belongs to the kernel, so this type offers loads for them and nothing else.
/// Fields are atomics because the kernel updates them asynchronously to the
/// thread's own program order (on return to user space).
#[repr(C, align(32))]
pub struct Rseq {
    cpu_id_start: AtomicU32,
    cpu_id: AtomicU32,
    rseq_cs: AtomicU64,
    flags: AtomicU32,
    node_id: AtomicU32,
    mm_cid: AtomicU32,
    _reserved: AtomicU32,
}

/// Offset of `cpu_id` in [`Rseq`]; the critical sections compare it.
pub const OFFSET_CPU_ID: usize = offset_of!(Rseq, cpu_id);
/// Offset of `rseq_cs` in [`Rseq`]; the critical sections store to it.
pub const OFFSET_RSEQ_CS: usize = offset_of!(Rseq, rseq_cs);
/// Offset of `mm_cid` in [`Rseq`].
pub const OFFSET_MM_CID: usize = offset_of!(Rseq, mm_cid);

const _: () = {
    assert!(size_of::<Rseq>() == 32);
    assert!(align_of::<Rseq>() == 32);
    assert!(offset_of!(Rseq, cpu_id_start) == 0);
    assert!(OFFSET_CPU_ID == 4);
    assert!(OFFSET_RSEQ_CS == 8);
    assert!(offset_of!(Rseq, flags) == 16);
    assert!(offset_of!(Rseq, node_id) == 20);
    assert!(OFFSET_MM_CID == 24);
    assert!(size_of::<RseqCs>() == 32);
    assert!(align_of::<RseqCs>() == 32);
    assert!(offset_of!(RseqCs, version) == 0);
    assert!(offset_of!(RseqCs, flags) == 4);
    assert!(offset_of!(RseqCs, start_ip) == 8);
    assert!(offset_of!(RseqCs, post_commit_offset) == 16);
    assert!(offset_of!(RseqCs, abort_ip) == 24);
};

impl Rseq {
    /// An unregistered area (`cpu_id` = -1), as the kernel expects it.
    pub const fn new() -> Self {
        Rseq {
            cpu_id_start: AtomicU32::new(0),
            cpu_id: AtomicU32::new(CPU_ID_UNINITIALIZED as u32),
            rseq_cs: AtomicU64::new(0),
            flags: AtomicU32::new(0),
            node_id: AtomicU32::new(0),
            mm_cid: AtomicU32::new(0),
            _reserved: AtomicU32::new(0),
        }
    }

    /// `cpu_id`: the current CPU, or a negative value when the area is not
    /// registered (-1) or registration failed (-2).
    #[inline(always)]
    pub fn cpu_id(&self) -> i32 {
        self.cpu_id.load(Ordering::Relaxed) as i32
    }

    /// `cpu_id_start`: always a valid CPU number, even when unregistered.
    #[inline(always)]
    pub fn cpu_id_start(&self) -> u32 {
        self.cpu_id_start.load(Ordering::Relaxed)
    }

    /// `node_id`; meaningful only when the feature size is at least 24.
    #[inline(always)]
    pub fn node_id(&self) -> u32 {
        self.node_id.load(Ordering::Relaxed)
    }

    /// `mm_cid`; meaningful only when the feature size is at least 28.
    #[inline(always)]
    pub fn mm_cid(&self) -> u32 {
        self.mm_cid.load(Ordering::Relaxed)
    }

    /// The descriptor pointer user space last stored (the kernel clears it
    /// lazily).
    #[inline(always)]
    pub fn rseq_cs(&self) -> u64 {
        self.rseq_cs.load(Ordering::Relaxed)
    }

    /// Stores the descriptor pointer: the one field user space owns.
    /// Storing 0 detaches the thread from any descriptor (needed before the
    /// descriptor's code may be unmapped).
    #[inline(always)]
    pub fn set_rseq_cs(&self, descriptor: u64) {
        self.rseq_cs.store(descriptor, Ordering::Relaxed);
    }
}

impl Default for Rseq {
    fn default() -> Self {
        Self::new()
    }
}

/// `struct rseq_cs`: the descriptor of one critical section, as emitted into
/// the `__rseq_cs` ELF section by every section of this crate.
#[repr(C, align(32))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RseqCs {
    /// Always 0.
    pub version: u32,
    /// Always 0 (the flags are deprecated).
    pub flags: u32,
    /// Address of the first instruction of the section.
    pub start_ip: u64,
    /// Length of the section in bytes: `post_commit_ip - start_ip`.
    pub post_commit_offset: u64,
    /// Address of the abort handler, preceded by [`SIGNATURE`].
    pub abort_ip: u64,
}
