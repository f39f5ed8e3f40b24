//! The C allocator's contract on top of the [`heap`](crate::heap): what
//! `malloc`, `calloc`, `realloc`, `posix_memalign` and the rest must do
//! with `errno` and odd arguments (ISO C, POSIX, and glibc's manual,
//! "Replacing malloc"), written once here, so that the exported symbols of
//! `librestartable_malloc.so` (crate `restartable-malloc-preload`) are
//! one-line calls and the contract is tested from Rust.
//!
//! | call | bad input | result |
//! |---|---|---|
//! | [`malloc`] | a size no memory serves | null, `errno = ENOMEM` |
//! | [`calloc`] | `n * size` overflows | null, `ENOMEM` |
//! | [`realloc`] | size 0, pointer not null | frees it, returns null (glibc's behaviour) |
//! | [`reallocarray`] | `n * size` overflows | null, `ENOMEM`, the block untouched |
//! | [`aligned_alloc`] | alignment 0 or not a power of two | null, `EINVAL` |
//! | [`memalign`] | alignment not a power of two | rounded up to one (as glibc); too large: null, `EINVAL` |
//! | [`posix_memalign`] | alignment not a power of two multiple of `sizeof(void *)` | returns `EINVAL`, `*out` untouched |
//! | [`pvalloc`] | the size rounded to pages overflows | null, `ENOMEM` |
//!
//! Every result is aligned to 16 bytes at least (`max_align_t` on the
//! 64-bit targets), `malloc(0)` returns a unique pointer, `free(NULL)` does
//! nothing, and `free` leaves `errno` as it was (POSIX.1-2024; glibc 2.33
//! and later); the other calls may change it on success, as POSIX allows
//! (a slow path's system calls).

use crate::heap::{heap, Heap};

/// The alignment every block has: `alignof(max_align_t)`.
pub const MIN_ALIGN: usize = 16;

/// Sets the calling thread's `errno`.
#[inline]
fn set_errno(code: i32) {
    // SAFETY: `__errno_location` returns the calling thread's errno slot
    // (glibc and musl both export it).
    unsafe { *libc::__errno_location() = code };
}

/// The heap, or null with `ENOMEM` when it could not be set up.
#[inline]
fn with_heap(f: impl FnOnce(&'static Heap) -> *mut u8) -> *mut u8 {
    let p = match heap() {
        Some(h) => f(h),
        None => core::ptr::null_mut(),
    };
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p
}

/// `malloc(size)`.
#[inline]
pub fn malloc(size: usize) -> *mut u8 {
    with_heap(|h| h.alloc(size, MIN_ALIGN))
}

/// `calloc(n, size)`: zeroed.
pub fn calloc(n: usize, size: usize) -> *mut u8 {
    match n.checked_mul(size) {
        Some(bytes) => with_heap(|h| h.alloc_zeroed(bytes, MIN_ALIGN)),
        None => {
            set_errno(libc::ENOMEM);
            core::ptr::null_mut()
        }
    }
}

/// `free(p)`.
///
/// # Safety
/// `p` is null or a live block of this allocator.
#[inline]
pub unsafe fn free(p: *mut u8) {
    if p.is_null() {
        return;
    }
    if let Some(h) = heap() {
        let saved = errno();
        // SAFETY: the caller's contract.
        unsafe { h.free(p) };
        set_errno(saved);
    }
}

/// `realloc(p, size)`.
///
/// # Safety
/// As for [`free`].
pub unsafe fn realloc(p: *mut u8, size: usize) -> *mut u8 {
    if p.is_null() {
        return malloc(size);
    }
    if size == 0 {
        // SAFETY: the caller's contract.
        unsafe { free(p) };
        return core::ptr::null_mut();
    }
    // SAFETY: the caller's contract; `p` came from the heap, so it is set up.
    with_heap(|h| unsafe { h.realloc(p, MIN_ALIGN, size) })
}

/// `reallocarray(p, n, size)`.
///
/// # Safety
/// As for [`free`].
pub unsafe fn reallocarray(p: *mut u8, n: usize, size: usize) -> *mut u8 {
    match n.checked_mul(size) {
        // SAFETY: the caller's contract.
        Some(bytes) => unsafe { realloc(p, bytes) },
        None => {
            set_errno(libc::ENOMEM);
            core::ptr::null_mut()
        }
    }
}

/// `aligned_alloc(align, size)`.
pub fn aligned_alloc(align: usize, size: usize) -> *mut u8 {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return core::ptr::null_mut();
    }
    with_heap(|h| h.alloc(size, align.max(MIN_ALIGN)))
}

/// `memalign(align, size)`: as glibc, an alignment that is not a power of
/// two is rounded up to one.
pub fn memalign(align: usize, size: usize) -> *mut u8 {
    match align.checked_next_power_of_two() {
        Some(a) => with_heap(|h| h.alloc(size, a.max(MIN_ALIGN))),
        None => {
            set_errno(libc::EINVAL);
            core::ptr::null_mut()
        }
    }
}

/// `posix_memalign(out, align, size)`: 0, `EINVAL` or `ENOMEM`; `errno`
/// is not the result (POSIX), and `*out` is written only on success.
///
/// # Safety
/// `out` is valid for a write of one pointer.
pub unsafe fn posix_memalign(out: *mut *mut u8, align: usize, size: usize) -> i32 {
    if !align.is_power_of_two() || !align.is_multiple_of(core::mem::size_of::<usize>()) {
        return libc::EINVAL;
    }
    let saved = errno();
    let p = with_heap(|h| h.alloc(size, align.max(MIN_ALIGN)));
    if p.is_null() {
        set_errno(saved);
        return libc::ENOMEM;
    }
    // SAFETY: the caller's contract.
    unsafe { out.write(p) };
    0
}

/// `valloc(size)`: aligned to the page size.
pub fn valloc(size: usize) -> *mut u8 {
    memalign(page_size(), size)
}

/// `pvalloc(size)`: the size rounded up to whole pages, page-aligned.
pub fn pvalloc(size: usize) -> *mut u8 {
    let page = page_size();
    match size.max(1).checked_next_multiple_of(page) {
        Some(bytes) => memalign(page, bytes),
        None => {
            set_errno(libc::ENOMEM);
            core::ptr::null_mut()
        }
    }
}

/// `malloc_usable_size(p)`: bytes usable at `p`, at least what was asked
/// for; 0 for null.
///
/// # Safety
/// As for [`free`].
pub unsafe fn malloc_usable_size(p: *mut u8) -> usize {
    match (p.is_null(), heap()) {
        // SAFETY: the caller's contract.
        (false, Some(h)) => unsafe { h.usable_size(p) },
        _ => 0,
    }
}

/// `malloc_trim`: every CPU's cached objects go back to the central lists
/// and every run with no object in use goes back to the system, now; true
/// when some memory went back.
pub fn trim() -> bool {
    crate::heap::heap_if_ready().is_some_and(Heap::trim)
}

fn errno() -> i32 {
    // SAFETY: as in `set_errno`.
    unsafe { *libc::__errno_location() }
}

fn page_size() -> usize {
    // SAFETY: no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 && (n as usize).is_power_of_two() => n as usize,
        _ => 4096,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_follow_the_c_contract() {
        set_errno(0);
        assert!(calloc(usize::MAX / 2, 3).is_null());
        assert_eq!(errno(), libc::ENOMEM);
        set_errno(0);
        assert!(malloc(usize::MAX - 4096).is_null());
        assert_eq!(errno(), libc::ENOMEM);
        set_errno(0);
        assert!(aligned_alloc(24, 100).is_null());
        assert_eq!(errno(), libc::EINVAL);
        set_errno(0);
        let mut out = core::ptr::null_mut();
        // SAFETY: `out` is a local.
        assert_eq!(unsafe { posix_memalign(&mut out, 12, 8) }, libc::EINVAL);
        // SAFETY: as above.
        assert_eq!(unsafe { posix_memalign(&mut out, 4, 8) }, libc::EINVAL);
        assert!(out.is_null());
        assert_eq!(errno(), 0, "posix_memalign reports, it does not set errno");
        // SAFETY: as above.
        assert_eq!(unsafe { posix_memalign(&mut out, 64, 8) }, 0);
        assert_eq!(out as usize % 64, 0);
        // SAFETY: ours, live.
        unsafe { free(out) };
        assert!(pvalloc(usize::MAX).is_null());
        assert_eq!(errno(), libc::ENOMEM);
    }

    #[test]
    fn odd_arguments_get_what_glibc_gives() {
        let a = malloc(0);
        let b = malloc(0);
        assert!(!a.is_null() && !b.is_null() && a != b);
        // SAFETY: live blocks of ours, each freed once.
        unsafe {
            assert!(malloc_usable_size(a) >= 1);
            free(a);
            free(b);
            free(core::ptr::null_mut());
            assert_eq!(malloc_usable_size(core::ptr::null_mut()), 0);
        }
        let m = memalign(48, 10);
        assert_eq!(m as usize % 64, 0, "48 rounds up to 64");
        // SAFETY: live, ours; realloc to 0 frees it.
        assert!(unsafe { realloc(m, 0) }.is_null());
        let p = pvalloc(1);
        assert_eq!(p as usize % page_size(), 0);
        // SAFETY: live, ours.
        assert!(unsafe { malloc_usable_size(p) } >= page_size());
        let q = malloc(100);
        // SAFETY: `q` holds 100 bytes; the overflowing reallocarray leaves it
        // alone.
        unsafe {
            q.write_bytes(7, 100);
            assert!(reallocarray(q, usize::MAX, 2).is_null());
            assert_eq!(*q.add(99), 7);
            let r = reallocarray(q, 1000, 10);
            assert_eq!(*r.add(99), 7);
            free(r);
            free(p);
        }
    }
}
