//! gperftools' tcmalloc as a `GlobalAlloc`, from Debian's
//! `libtcmalloc_minimal.so.4` (package `libtcmalloc-minimal4`) opened at
//! run time with `RTLD_LOCAL`: its `tc_*` entry points are called directly,
//! so it serves only the benchmark's blocks while the process's own
//! `malloc` stays the C library's. (No Rust crate builds it offline.)

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;
use std::sync::OnceLock;

/// The library's file name.
pub const LIBRARY: &str = "libtcmalloc_minimal.so.4";

type Malloc = unsafe extern "C" fn(usize) -> *mut c_void;
type Memalign = unsafe extern "C" fn(usize, usize) -> *mut c_void;
type Realloc = unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void;
type Free = unsafe extern "C" fn(*mut c_void);

struct Entry {
    malloc: Malloc,
    memalign: Memalign,
    realloc: Realloc,
    free: Free,
}

static ENTRY: OnceLock<Result<Entry, String>> = OnceLock::new();

fn open() -> Result<Entry, String> {
    // SAFETY: dlopen with a NUL-terminated name; dlsym on the handle it
    // returned; each symbol is the gperftools function of that name, whose
    // C signature the type states (gperftools/tcmalloc.h).
    unsafe {
        let handle = libc::dlopen(
            c"libtcmalloc_minimal.so.4".as_ptr(),
            libc::RTLD_NOW | libc::RTLD_LOCAL,
        );
        if handle.is_null() {
            return Err(format!(
                "cannot open {LIBRARY} (Debian package libtcmalloc-minimal4)"
            ));
        }
        let sym = |name: &core::ffi::CStr| {
            let p = libc::dlsym(handle, name.as_ptr());
            if p.is_null() {
                Err(format!("{LIBRARY} has no {}", name.to_string_lossy()))
            } else {
                Ok(p)
            }
        };
        Ok(Entry {
            malloc: core::mem::transmute::<*mut c_void, Malloc>(sym(c"tc_malloc")?),
            memalign: core::mem::transmute::<*mut c_void, Memalign>(sym(c"tc_memalign")?),
            realloc: core::mem::transmute::<*mut c_void, Realloc>(sym(c"tc_realloc")?),
            free: core::mem::transmute::<*mut c_void, Free>(sym(c"tc_free")?),
        })
    }
}

/// Opens the library (once).
///
/// # Errors
/// When it is not installed or lacks an entry point.
pub fn load() -> Result<Tcmalloc, String> {
    match ENTRY.get_or_init(open) {
        Ok(_) => Ok(Tcmalloc(())),
        Err(e) => Err(e.clone()),
    }
}

/// tcmalloc; made by [`load`] only, so its calls find the library open.
pub struct Tcmalloc(());

impl Tcmalloc {
    fn entry(&self) -> &'static Entry {
        match ENTRY.get() {
            Some(Ok(e)) => e,
            // `load` made `self` only after the library opened.
            _ => unreachable!("tcmalloc used before it was loaded"),
        }
    }
}

/// The alignment `tc_malloc` gives every block (gperftools: 16 on x86-64
/// and aarch64).
const MIN_ALIGN: usize = 16;

// SAFETY: tcmalloc returns blocks of at least the size asked, aligned as
// asked (tc_memalign) or to 16 (tc_malloc), or null; each block is freed
// with tc_free or resized with tc_realloc exactly as the C contract says.
unsafe impl GlobalAlloc for Tcmalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let e = self.entry();
        // SAFETY: plain C calls with a nonzero size (the caller's contract).
        unsafe {
            if layout.align() <= MIN_ALIGN {
                (e.malloc)(layout.size()).cast()
            } else {
                (e.memalign)(layout.align(), layout.size()).cast()
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (the caller's contract).
        unsafe { (self.entry().free)(ptr.cast()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= MIN_ALIGN {
            // SAFETY: as for `dealloc`; tc_realloc keeps 16-alignment.
            unsafe { (self.entry().realloc)(ptr.cast(), new_size).cast() }
        } else {
            // SAFETY: the default (allocate, copy, free) under the same
            // contract.
            unsafe {
                let new = Layout::from_size_align_unchecked(new_size, layout.align());
                let q = self.alloc(new);
                if !q.is_null() {
                    core::ptr::copy_nonoverlapping(ptr, q, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                q
            }
        }
    }
}
