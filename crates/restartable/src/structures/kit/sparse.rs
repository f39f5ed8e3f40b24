//! [`SparseSlots`]: one slot per possible CPU (or concurrency id), each
//! allocated on its own cache lines the first time a thread uses its
//! index: the storage of [`PerCpu`](crate::PerCpu), [`Stack`](crate::Stack),
//! [`Pool`](crate::Pool) and [`Buffer`](crate::Buffer). Data indexed by
//! `mm_cid` therefore grows with the threads that run at once, and data a
//! CPU never touched costs a pointer.

use core::marker::PhantomData;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use super::padded::Padded;
use crate::runtime::process;

/// Up to [`possible_cpus`](crate::possible_cpus) slots of `T`, each boxed
/// on its own cache lines and created on first use.
pub(crate) struct SparseSlots<T> {
    /// The array of slot pointers (null until first use), `len` long.
    slots: AtomicPtr<AtomicPtr<Padded<T>>>,
    len: AtomicUsize,
    _owns: PhantomData<Box<Padded<T>>>,
}

impl<T> SparseSlots<T> {
    pub(crate) const fn new() -> Self {
        SparseSlots {
            slots: AtomicPtr::new(ptr::null_mut()),
            len: AtomicUsize::new(0),
            _owns: PhantomData,
        }
    }

    /// The number of indices: the possible CPUs.
    pub(crate) fn len(&self) -> usize {
        match self.slots.load(Ordering::Acquire).is_null() {
            true => process::possible_cpus(),
            false => self.len.load(Ordering::Relaxed),
        }
    }

    /// The slot pointers, allocating the array on first use.
    #[inline]
    fn pointers(&self) -> &[AtomicPtr<Padded<T>>] {
        let mut array = self.slots.load(Ordering::Acquire);
        if array.is_null() {
            array = self.allocate();
        }
        // SAFETY: published by `allocate` with this length; freed only in
        // `drop`, which needs `&mut self`.
        unsafe { core::slice::from_raw_parts(array, self.len.load(Ordering::Relaxed)) }
    }

    #[cold]
    fn allocate(&self) -> *mut AtomicPtr<Padded<T>> {
        let len = process::possible_cpus();
        let fresh: Box<[AtomicPtr<Padded<T>>]> =
            (0..len).map(|_| AtomicPtr::new(ptr::null_mut())).collect();
        let fresh = Box::into_raw(fresh) as *mut AtomicPtr<Padded<T>>;
        // Every racer stores the same length before publishing.
        self.len.store(len, Ordering::Relaxed);
        match self.slots.compare_exchange(
            ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => fresh,
            Err(winner) => {
                // SAFETY: we lost the race, so `fresh` was never shared.
                drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(fresh, len)) });
                winner
            }
        }
    }

    /// Slot `index`, created with `init` if it does not exist yet; `None`
    /// when `index` is not below [`len`](Self::len).
    #[inline]
    pub(crate) fn get_or_init(&self, index: usize, init: impl FnOnce() -> T) -> Option<&T> {
        let cell = self.pointers().get(index)?;
        let slot = cell.load(Ordering::Acquire);
        if !slot.is_null() {
            // SAFETY: slots are published once and freed only in `drop`.
            return Some(unsafe { &(*slot).0 });
        }
        Some(Self::create(cell, init))
    }

    #[cold]
    fn create(cell: &AtomicPtr<Padded<T>>, init: impl FnOnce() -> T) -> &T {
        let fresh = Box::into_raw(Box::new(Padded(init())));
        match cell.compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire) {
            // SAFETY: just published; freed only in `drop`.
            Ok(_) => unsafe { &(*fresh).0 },
            Err(winner) => {
                // SAFETY: we lost the race, so `fresh` was never shared.
                drop(unsafe { Box::from_raw(fresh) });
                // SAFETY: the winner's slot, freed only in `drop`.
                unsafe { &(*winner).0 }
            }
        }
    }

    /// Slot `index` if it exists.
    #[inline]
    pub(crate) fn get(&self, index: usize) -> Option<&T> {
        let array = self.slots.load(Ordering::Acquire);
        if array.is_null() {
            return None;
        }
        let slot = self.pointers().get(index)?.load(Ordering::Acquire);
        // SAFETY: slots are published once and freed only in `drop`.
        (!slot.is_null()).then(|| unsafe { &(*slot).0 })
    }

    /// The slots that exist, with their indices.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        let array = self.slots.load(Ordering::Acquire);
        let len = if array.is_null() {
            0
        } else {
            self.len.load(Ordering::Relaxed)
        };
        (0..len).filter_map(move |i| self.get(i).map(|s| (i, s)))
    }

    /// The slots that exist, mutably.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut T)> {
        let array = *self.slots.get_mut();
        let len = if array.is_null() {
            0
        } else {
            *self.len.get_mut()
        };
        // SAFETY: the array of `len` pointers is ours (`&mut self`).
        let cells: &mut [AtomicPtr<Padded<T>>] = match len {
            0 => &mut [],
            _ => unsafe { core::slice::from_raw_parts_mut(array, len) },
        };
        cells.iter_mut().enumerate().filter_map(|(i, cell)| {
            let slot = *cell.get_mut();
            // SAFETY: each slot is a distinct live box, ours through `&mut`.
            (!slot.is_null()).then(|| (i, unsafe { &mut (*slot).0 }))
        })
    }
}

impl<T> Drop for SparseSlots<T> {
    fn drop(&mut self) {
        let array = *self.slots.get_mut();
        if array.is_null() {
            return;
        }
        let len = *self.len.get_mut();
        // SAFETY: allocated by `allocate` as a boxed slice of `len`.
        let cells = unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(array, len)) };
        for cell in cells.iter() {
            let slot = cell.load(Ordering::Relaxed);
            if !slot.is_null() {
                // SAFETY: allocated by `create` with Box::new.
                drop(unsafe { Box::from_raw(slot) });
            }
        }
    }
}

// SAFETY: slots are shared between threads only through `&T`.
unsafe impl<T: Send + Sync> Sync for SparseSlots<T> {}
// SAFETY: moving the table moves the owned slots.
unsafe impl<T: Send> Send for SparseSlots<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_created_once_and_walked() {
        let mut table: SparseSlots<u64> = SparseSlots::new();
        assert!(table.get(0).is_none());
        assert_eq!(table.iter().count(), 0);
        assert_eq!(*table.get_or_init(0, || 7).unwrap(), 7);
        assert_eq!(*table.get_or_init(0, || 8).unwrap(), 7);
        assert!(table.get_or_init(table.len(), || 9).is_none());
        for (_, v) in table.iter_mut() {
            *v += 1;
        }
        assert_eq!(
            table.iter().map(|(i, v)| (i, *v)).collect::<Vec<_>>(),
            [(0, 8)]
        );
    }
}
