//! What the code [`section!`](crate::section!) generates calls: the
//! constants its `asm!` blocks take, the thread's area, and the twin's
//! memory accesses. Not a public API: only generated code uses it, under
//! `restartable::__lang`.

use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

pub use super::run::Run;
pub use super::{RetriesExhausted, Thread, MAX_ATTEMPTS};
pub use crate::abi::{OFFSET_CPU_ID, OFFSET_MM_CID, OFFSET_RSEQ_CS, SIGNATURE};
pub use crate::arch::inject::DELAYS;

/// Delay loops are compiled into sections (feature `inject`).
pub const INJECT: bool = cfg!(feature = "inject");
/// The compare-twice re-check is compiled in (feature `compare-twice`).
pub const COMPARE_TWICE: bool = cfg!(feature = "compare-twice");
/// `attempt`'s code for a commit.
pub const COMMITTED: u32 = u32::MAX;
/// `attempt`'s code for an abort.
pub const ABORTED: u32 = u32::MAX - 1;

/// The compare-twice check of a section failed: stops the process.
#[cold]
#[inline(never)]
pub fn compare_twice_failed() -> ! {
    crate::arch::inject::compare_twice_failed()
}

/// The thread's area, if it is still registered (and, for `mm_cid`, the
/// kernel maintains that id).
#[inline(always)]
pub fn area(thread: &Thread, mm_cid: bool) -> Option<*const u8> {
    thread.section_area(mm_cid)
}

/// Clears `rseq_cs` after a section (see `AreaRef::detach`).
#[inline(always)]
pub fn detach(thread: &Thread) {
    thread.detach();
}

/// Counts an abort (feature `abort-stats`).
#[cold]
pub fn aborted(thread: &Thread, mm_cid: bool) {
    let index = if mm_cid {
        super::Index::MmCid
    } else {
        super::Index::Cpu
    };
    let id = thread.id(index).map_or(0, |id| id.as_usize());
    crate::stats::record_abort(id);
}

/// A value a section takes or hands back, as the 64-bit word it is in a
/// register.
pub trait Word: Copy {
    /// The word.
    fn to_word(self) -> u64;
    /// Back from the word (truncating to the type).
    fn from_word(w: u64) -> Self;
}

macro_rules! int_word {
    ($($t:ty),*) => {$(
        impl Word for $t {
            #[inline(always)]
            fn to_word(self) -> u64 {
                self as u64
            }
            #[inline(always)]
            fn from_word(w: u64) -> Self {
                w as $t
            }
        }
    )*};
}
int_word!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

impl Word for bool {
    #[inline(always)]
    fn to_word(self) -> u64 {
        self as u64
    }
    #[inline(always)]
    fn from_word(w: u64) -> Self {
        w != 0
    }
}

impl<T> Word for *const T {
    #[inline(always)]
    fn to_word(self) -> u64 {
        self.expose_provenance() as u64
    }
    #[inline(always)]
    fn from_word(w: u64) -> Self {
        core::ptr::with_exposed_provenance(w as usize)
    }
}

impl<T> Word for *mut T {
    #[inline(always)]
    fn to_word(self) -> u64 {
        self.expose_provenance() as u64
    }
    #[inline(always)]
    fn from_word(w: u64) -> Self {
        core::ptr::with_exposed_provenance_mut(w as usize)
    }
}

/// The twin's load: `bytes` (1, 2, 4 or 8) at `addr`, relaxed or acquire,
/// zero- or sign-extended.
///
/// # Safety
/// `addr` is valid and aligned for the access.
#[inline(always)]
pub unsafe fn load(addr: u64, bytes: u8, signed: bool, acquire: bool) -> u64 {
    let order = if acquire {
        Ordering::Acquire
    } else {
        Ordering::Relaxed
    };
    let p: *mut u8 = core::ptr::with_exposed_provenance_mut(addr as usize);
    // SAFETY: the caller's contract; each atomic type has the size and
    // alignment of the access.
    unsafe {
        match (bytes, signed) {
            (1, false) => AtomicU8::from_ptr(p).load(order) as u64,
            (1, true) => AtomicU8::from_ptr(p).load(order) as i8 as u64,
            (2, false) => AtomicU16::from_ptr(p.cast()).load(order) as u64,
            (2, true) => AtomicU16::from_ptr(p.cast()).load(order) as i16 as u64,
            (4, false) => AtomicU32::from_ptr(p.cast()).load(order) as u64,
            (4, true) => AtomicU32::from_ptr(p.cast()).load(order) as i32 as u64,
            _ => AtomicU64::from_ptr(p.cast()).load(order),
        }
    }
}

/// The twin's store of the low `bytes` of `v`, relaxed or release.
///
/// # Safety
/// `addr` is valid and aligned for the access.
#[inline(always)]
pub unsafe fn store(addr: u64, bytes: u8, v: u64, release: bool) {
    let order = if release {
        Ordering::Release
    } else {
        Ordering::Relaxed
    };
    let p: *mut u8 = core::ptr::with_exposed_provenance_mut(addr as usize);
    // SAFETY: as in `load`.
    unsafe {
        match bytes {
            1 => AtomicU8::from_ptr(p).store(v as u8, order),
            2 => AtomicU16::from_ptr(p.cast()).store(v as u16, order),
            4 => AtomicU32::from_ptr(p.cast()).store(v as u32, order),
            _ => AtomicU64::from_ptr(p.cast()).store(v, order),
        }
    }
}

/// The twin's bounded copy.
///
/// # Safety
/// `src` is valid for reads and `dst` for writes of `len` bytes, and they
/// do not overlap.
#[inline(always)]
pub unsafe fn copy(dst: u64, src: u64, len: u64) {
    let d: *mut u8 = core::ptr::with_exposed_provenance_mut(dst as usize);
    let s: *const u8 = core::ptr::with_exposed_provenance(src as usize);
    // SAFETY: the caller's contract.
    unsafe { core::ptr::copy_nonoverlapping(s, d, len as usize) }
}
