//! The fallback path's thread-local magazine: a few free objects of each
//! small class per thread, taken and put back with plain loads and stores.
//! Only threads without rseq use it. Their way to a CPU's cache costs a
//! compare-exchange on the cache's guard word; a thread's own churn
//! (allocate, free, allocate the same class) stays here instead.
//!
//! | state | what a call does |
//! |---|---|
//! | not armed | arms the thread (its exit destructor, a `pthread` key set to 1), then as armed; if that fails, the thread is closed |
//! | armed, idle | takes or puts an object: `busy` is set around it |
//! | armed, busy | a signal handler inside this thread's own call: refuses (the caller goes to the caches) |
//! | closed | refuses: the thread is exiting (its destructor emptied the magazine) or could not be armed |
//!
//! Bounds: [`PER_CLASS`] objects of each of the [`CLASSES`] smallest
//! classes (up to 128 bytes), so at most 4.6 KiB per thread. The key's
//! destructor gives the objects back at thread exit; a `trim` empties the
//! calling thread's. The objects of other threads of a process that
//! `fork`s stay in the child's copies of their magazines, unused (at most
//! that bound per thread).

use core::cell::Cell;
use core::sync::atomic::{AtomicU32, Ordering};

/// Classes kept: the sizes up to 128 bytes.
pub const CLASSES: usize = 8;
const _: () = assert!(crate::classes::size(CLASSES - 1) == 128);
/// Objects kept per class.
pub const PER_CLASS: usize = 8;

const NOT_ARMED: u8 = 0;
const ARMED: u8 = 1;
const CLOSED: u8 = 2;

struct Magazine {
    state: Cell<u8>,
    busy: Cell<bool>,
    counts: [Cell<u8>; CLASSES],
    slots: [[Cell<usize>; PER_CLASS]; CLASSES],
}

thread_local! {
    /// Const and without a destructor: no allocation to reach it, and it
    /// stays usable in other destructors after this thread's key ran.
    static MAG: Magazine = const {
        Magazine {
            state: Cell::new(NOT_ARMED),
            busy: Cell::new(false),
            counts: [const { Cell::new(0) }; CLASSES],
            slots: [const { [const { Cell::new(0) }; PER_CLASS] }; CLASSES],
        }
    };
}

/// The `pthread` key whose destructor empties an exiting thread's
/// magazine: `KEY_NONE` until made, `KEY_FAILED` when it could not be.
static KEY: AtomicU32 = AtomicU32::new(KEY_NONE);
const KEY_NONE: u32 = u32::MAX;
const KEY_FAILED: u32 = u32::MAX - 1;

/// Makes the key (once, at the heap's set-up: `pthread_key_create`
/// allocates nothing in glibc or musl).
pub(crate) fn make_key() {
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is ours to write; `empty_at_exit` is a plain function
    // that lives for the program.
    let made = unsafe { libc::pthread_key_create(&mut key, Some(empty_at_exit)) } == 0;
    let value = if made && key < KEY_FAILED {
        key
    } else {
        KEY_FAILED
    };
    // Another thread's first allocation may race here only before the
    // heap is published, which `set_up` serialises.
    KEY.store(value, Ordering::Release);
}

/// Takes an object of `class` from this thread's magazine.
#[inline]
pub(crate) fn take(class: usize) -> Option<usize> {
    if class >= CLASSES {
        return None;
    }
    MAG.with(|m| {
        if m.state.get() != ARMED || m.busy.get() {
            return None;
        }
        let n = usize::from(m.counts[class].get());
        if n == 0 {
            return None;
        }
        m.busy.set(true);
        // The flag is set before the slots change: a signal handler that
        // interrupts from here on sees it.
        core::sync::atomic::compiler_fence(Ordering::SeqCst);
        let object = m.slots[class][n - 1].get();
        m.counts[class].set((n - 1) as u8);
        core::sync::atomic::compiler_fence(Ordering::SeqCst);
        m.busy.set(false);
        Some(object)
    })
}

/// Puts `object` of `class` in this thread's magazine; false when it is
/// full, refuses, or keeps no objects of the class.
#[inline]
pub(crate) fn put(class: usize, object: usize) -> bool {
    if class >= CLASSES {
        return false;
    }
    MAG.with(|m| {
        match m.state.get() {
            ARMED => {}
            NOT_ARMED => {
                if !arm(m) {
                    return false;
                }
            }
            _ => return false,
        }
        if m.busy.get() {
            return false;
        }
        let n = usize::from(m.counts[class].get());
        if n == PER_CLASS {
            return false;
        }
        m.busy.set(true);
        core::sync::atomic::compiler_fence(Ordering::SeqCst);
        m.slots[class][n].set(object);
        m.counts[class].set((n + 1) as u8);
        core::sync::atomic::compiler_fence(Ordering::SeqCst);
        m.busy.set(false);
        true
    })
}

/// Sets this thread's key, so that its destructor runs at thread exit;
/// the thread is closed when that fails. Busy meanwhile: a signal handler
/// that interrupts it neither arms again nor uses the magazine.
#[cold]
fn arm(m: &Magazine) -> bool {
    if m.busy.replace(true) {
        return false;
    }
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
    let key = KEY.load(Ordering::Acquire);
    // SAFETY: a key `make_key` made; a non-null value makes the
    // destructor run. The first keys need no allocation to set
    // (`PTHREAD_KEY_2NDLEVEL_SIZE` in glibc; all of them in musl); a
    // later one may call `calloc`, which finds this thread not armed and
    // takes the caches.
    let set = key < KEY_FAILED
        && unsafe { libc::pthread_setspecific(key, core::ptr::dangling::<libc::c_void>()) } == 0;
    m.state.set(if set { ARMED } else { CLOSED });
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
    m.busy.set(false);
    set
}

/// Empties this thread's magazine, each object through `give`; the
/// thread keeps using it unless `close`.
pub(crate) fn empty(close: bool, mut give: impl FnMut(usize, usize)) {
    // After this thread's TLS is gone there is nothing left to empty.
    let _ = MAG.try_with(|m| {
        if m.busy.get() {
            return;
        }
        if close {
            m.state.set(CLOSED);
        }
        m.busy.set(true);
        core::sync::atomic::compiler_fence(Ordering::SeqCst);
        for class in 0..CLASSES {
            let n = usize::from(m.counts[class].replace(0));
            for k in 0..n {
                give(class, m.slots[class][k].get());
            }
        }
        core::sync::atomic::compiler_fence(Ordering::SeqCst);
        m.busy.set(false);
    });
}

/// The key's destructor: the exiting thread's objects go back (to the
/// caches or the central lists), and its later frees bypass the magazine.
extern "C" fn empty_at_exit(_value: *mut libc::c_void) {
    if let Some(h) = crate::heap::heap_if_ready() {
        h.empty_magazine(true);
        // Its last few fallback operations, which it would not add itself.
        h.counts.settle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_come_back_newest_first_and_a_full_class_refuses() {
        // A thread of its own: the magazine is per thread.
        std::thread::spawn(|| {
            make_key();
            assert_eq!(take(0), None);
            for k in 0..PER_CLASS {
                assert!(put(0, 0x1000 + k));
            }
            assert!(!put(0, 0x2000), "full");
            assert!(!put(CLASSES, 0x3000), "a class it does not keep");
            assert_eq!(take(0), Some(0x1000 + PER_CLASS - 1));
            let mut given = Vec::new();
            empty(true, |c, o| given.push((c, o)));
            assert_eq!(given.len(), PER_CLASS - 1);
            assert!(!put(0, 0x4000), "closed");
            assert_eq!(take(0), None);
        })
        .join()
        .unwrap();
    }
}
