//! [`DenseSlots`]: one slot per possible CPU, all allocated together on
//! first use: the storage of the structures every CPU uses at once
//! ([`Counter`](crate::Counter), [`PerCpuU64`](crate::PerCpuU64)).

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use super::padded::{Padded, SLOT_SIZE};
use crate::runtime::process;

/// One `T` per possible CPU, each padded to [`SLOT_SIZE`] bytes, all
/// allocated by the first use. `T: Default` values start every slot.
pub(crate) struct DenseSlots<T> {
    ptr: AtomicPtr<Padded<T>>,
    len: AtomicUsize,
    _owns: PhantomData<Box<[Padded<T>]>>,
}

impl<T: Default> DenseSlots<T> {
    pub(crate) const fn new() -> Self {
        const { assert!(core::mem::size_of::<Padded<T>>() == SLOT_SIZE) };
        DenseSlots {
            ptr: AtomicPtr::new(core::ptr::null_mut()),
            len: AtomicUsize::new(0),
            _owns: PhantomData,
        }
    }

    /// The slots (allocating them on first use): base pointer and length.
    #[inline(always)]
    pub(crate) fn get(&self) -> (NonNull<Padded<T>>, usize) {
        match NonNull::new(self.ptr.load(Ordering::Acquire)) {
            Some(ptr) => (ptr, self.len.load(Ordering::Relaxed)),
            None => self.allocate(),
        }
    }

    /// Slot `index`, allocating the slots on first use; `None` when `index`
    /// is not below the possible CPUs.
    #[inline(always)]
    pub(crate) fn slot(&self, index: usize) -> Option<&T> {
        let (base, len) = self.get();
        // SAFETY: `index < len` slots live behind `base` until `drop`,
        // which needs `&mut self`.
        (index < len).then(|| unsafe { &(*base.as_ptr().add(index)).0 })
    }

    /// The slots if they exist (no allocation).
    pub(crate) fn as_slice(&self) -> &[Padded<T>] {
        match NonNull::new(self.ptr.load(Ordering::Acquire)) {
            // SAFETY: published by `allocate` with this length; freed only
            // in `drop`, which needs `&mut self`.
            Some(ptr) => unsafe {
                core::slice::from_raw_parts(ptr.as_ptr(), self.len.load(Ordering::Relaxed))
            },
            None => &[],
        }
    }

    #[cold]
    #[inline(never)]
    fn allocate(&self) -> (NonNull<Padded<T>>, usize) {
        let len = process::possible_cpus();
        let fresh: Box<[Padded<T>]> = (0..len).map(|_| Padded(T::default())).collect();
        let fresh = Box::into_raw(fresh) as *mut Padded<T>;
        // Every racer stores the same length (possible CPUs never change),
        // before the pointer is published.
        self.len.store(len, Ordering::Relaxed);
        match self.ptr.compare_exchange(
            core::ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            // SAFETY: `fresh` came from Box::into_raw just above.
            Ok(_) => (unsafe { NonNull::new_unchecked(fresh) }, len),
            Err(winner) => {
                // SAFETY: we lost the race, so `fresh` was never shared.
                drop(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(fresh, len)) });
                // SAFETY: the winner published a non-null pointer.
                (unsafe { NonNull::new_unchecked(winner) }, len)
            }
        }
    }
}

impl<T> Drop for DenseSlots<T> {
    fn drop(&mut self) {
        let ptr = *self.ptr.get_mut();
        if !ptr.is_null() {
            let len = *self.len.get_mut();
            // SAFETY: allocated by `allocate` as a boxed slice of `len`.
            drop(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(ptr, len)) });
        }
    }
}

// SAFETY: the slots are shared between threads only through `&T`.
unsafe impl<T: Send + Sync> Sync for DenseSlots<T> {}
// SAFETY: moving the owner moves the owned allocation.
unsafe impl<T: Send> Send for DenseSlots<T> {}
