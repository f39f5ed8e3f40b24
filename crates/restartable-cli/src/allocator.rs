//! The command's global allocator: restartable-malloc, or glibc's malloc
//! when `RESTARTABLE_CLI_ALLOCATOR=system` (so that valgrind's leak check,
//! which sees only the C allocator, can check the library's structures).
//! Chosen once, at the first allocation, without allocating.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

use restartable_malloc::RestartableMalloc;

/// The variable that selects the C allocator.
pub const ENV: &str = "RESTARTABLE_CLI_ALLOCATOR";

const UNDECIDED: u8 = 0;
const OURS: u8 = 1;
const SYSTEM: u8 = 2;

static CHOICE: AtomicU8 = AtomicU8::new(UNDECIDED);

/// The allocator in use.
pub struct Chosen;

impl Chosen {
    #[inline]
    fn system(&self) -> bool {
        match CHOICE.load(Ordering::Relaxed) {
            UNDECIDED => decide(),
            c => c == SYSTEM,
        }
    }
}

#[cold]
fn decide() -> bool {
    // SAFETY: getenv with a NUL-terminated name; the value is read at once.
    let system = unsafe {
        let v = libc::getenv(c"RESTARTABLE_CLI_ALLOCATOR".as_ptr());
        !v.is_null() && core::ffi::CStr::from_ptr(v).to_bytes() == b"system"
    };
    // Every thread decides the same; the first store wins either way.
    CHOICE.store(if system { SYSTEM } else { OURS }, Ordering::Relaxed);
    system
}

/// `"restartable-malloc"` or `"system"`.
pub fn name() -> &'static str {
    if Chosen.system() {
        "system"
    } else {
        "restartable-malloc"
    }
}

// SAFETY: forwards every call to one of two allocators, the same one for
// the whole process (chosen before the first allocation returns).
unsafe impl GlobalAlloc for Chosen {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        unsafe {
            if self.system() {
                System.alloc(layout)
            } else {
                RestartableMalloc.alloc(layout)
            }
        }
    }
    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above; `ptr` came from the same allocator.
        unsafe {
            if self.system() {
                System.dealloc(ptr, layout)
            } else {
                RestartableMalloc.dealloc(ptr, layout)
            }
        }
    }
    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        unsafe {
            if self.system() {
                System.alloc_zeroed(layout)
            } else {
                RestartableMalloc.alloc_zeroed(layout)
            }
        }
    }
    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        unsafe {
            if self.system() {
                System.realloc(ptr, layout, new_size)
            } else {
                RestartableMalloc.realloc(ptr, layout, new_size)
            }
        }
    }
}
