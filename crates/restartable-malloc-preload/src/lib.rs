//! `librestartable_malloc.so`: [`restartable_malloc`](allocator) as the C
//! allocator of any dynamically linked program.
//!
//! ```sh
//! cargo build --release -p restartable-malloc-preload
//! LD_PRELOAD=target/release/librestartable_malloc.so python3 -c 'print(1)'
//! ```
//!
//! Exports what glibc's manual ("Replacing malloc") says a replacement
//! provides: `malloc`, `free`, `calloc`, `realloc`, and also
//! `aligned_alloc`, `malloc_usable_size`, `memalign`, `posix_memalign`,
//! `pvalloc`, `valloc`, `reallocarray`, C23's `free_sized` and
//! `free_aligned_sized`, and `malloc_trim`. glibc's own calls (`strdup`,
//! `fopen`, the loader after start-up, libstdc++'s `operator new`) reach
//! them too. Each is one call into `restartable_malloc::cabi`, which holds
//! the contract (`errno`, odd arguments).

use core::ffi::{c_int, c_void};

use allocator::cabi;

/// `malloc(3)`.
///
/// # Safety
/// None beyond C's; `unsafe` as every exported allocator function is.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    cabi::malloc(size).cast()
}

/// `free(3)`.
///
/// # Safety
/// `p` is null or a live block from this allocator.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: the caller's contract.
    unsafe { cabi::free(p.cast()) }
}

/// `calloc(3)`.
///
/// # Safety
/// As for [`malloc`].
#[no_mangle]
pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    cabi::calloc(n, size).cast()
}

/// `realloc(3)`.
///
/// # Safety
/// As for [`free`].
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: the caller's contract.
    unsafe { cabi::realloc(p.cast(), size).cast() }
}

/// `reallocarray(3)`.
///
/// # Safety
/// As for [`free`].
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    // SAFETY: the caller's contract.
    unsafe { cabi::reallocarray(p.cast(), n, size).cast() }
}

/// `aligned_alloc(3)`.
///
/// # Safety
/// As for [`malloc`].
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    cabi::aligned_alloc(align, size).cast()
}

/// `memalign(3)`.
///
/// # Safety
/// As for [`malloc`].
#[no_mangle]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    cabi::memalign(align, size).cast()
}

/// `posix_memalign(3)`.
///
/// # Safety
/// `out` is valid for writing one pointer.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    // SAFETY: the caller's contract.
    unsafe { cabi::posix_memalign(out.cast(), align, size) }
}

/// `valloc(3)`.
///
/// # Safety
/// As for [`malloc`].
#[no_mangle]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    cabi::valloc(size).cast()
}

/// `pvalloc(3)`.
///
/// # Safety
/// As for [`malloc`].
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    cabi::pvalloc(size).cast()
}

/// `malloc_usable_size(3)`.
///
/// # Safety
/// As for [`free`].
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    // SAFETY: the caller's contract.
    unsafe { cabi::malloc_usable_size(p.cast()) }
}

/// C23 `free_sized`: the size is not needed.
///
/// # Safety
/// As for [`free`].
#[no_mangle]
pub unsafe extern "C" fn free_sized(p: *mut c_void, _size: usize) {
    // SAFETY: the caller's contract.
    unsafe { cabi::free(p.cast()) }
}

/// C23 `free_aligned_sized`: neither alignment nor size is needed.
///
/// # Safety
/// As for [`free`].
#[no_mangle]
pub unsafe extern "C" fn free_aligned_sized(p: *mut c_void, _align: usize, _size: usize) {
    // SAFETY: the caller's contract.
    unsafe { cabi::free(p.cast()) }
}

/// `malloc_trim(3)`: returns free memory to the system now; 1 when some
/// was returned.
///
/// # Safety
/// None; `unsafe` as the others.
#[no_mangle]
pub unsafe extern "C" fn malloc_trim(_pad: usize) -> c_int {
    c_int::from(cabi::trim())
}
