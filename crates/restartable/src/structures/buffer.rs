//! [`Buffer`]: per-CPU record buffers, appended to by critical sections and
//! drained through the fence.

use core::cell::UnsafeCell;
use core::mem::{size_of, MaybeUninit};
use core::sync::atomic::{AtomicU64, Ordering};

use super::kit::guard::{Guarded, Reach};
use super::kit::retry::{self, Step};
use super::kit::sparse::SparseSlots;
use super::RemoteError;
use crate::section::{Index, Order};
use crate::stats::Cause;

/// One CPU's records: `records[..count]` were written by committed pushes.
struct Records<T> {
    count: AtomicU64,
    records: Box<[UnsafeCell<MaybeUninit<T>>]>,
}

/// One CPU's buffer, guarded.
type Slot<T> = Guarded<Records<T>>;

/// [`Buffer::push`] found the current CPU's buffer full: the record comes
/// back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full<T>(pub T);

impl<T> core::fmt::Display for Full<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("this CPU's buffer is full")
    }
}

impl<T: core::fmt::Debug> std::error::Error for Full<T> {}

/// Per-CPU buffers of fixed-size records: many producers, one or more
/// consumers.
///
/// [`push`](Self::push) appends a record to the buffer of the CPU the
/// thread runs on with one critical section (the guarded
/// `memcpy_then_store`: copy the record into the next free place, commit
/// the new count): no lock, no atomic instruction. Each CPU's buffer holds
/// `capacity` records; a push to a full one returns [`Full`] with the
/// record. [`drain`](Self::drain) empties every CPU's buffer in turn
/// through the guard protocol (guard the buffer, fence its CPU, copy the
/// records out, reset the count), handing each CPU's records to the caller
/// in the order they were appended there.
///
/// Records from one thread come out in the order it pushed them as long as
/// it stayed on one CPU; across CPUs there is no order.
///
/// Each CPU's buffer (`capacity * size_of::<T>()` bytes) is allocated by
/// the first push on that CPU; a failed allocation aborts the process, as
/// for any Rust allocation, and a signal handler must not be the one to
/// make it. Later pushes are async-signal-safe.
///
/// Without rseq (or after 16 aborts in a row) a push takes the guard
/// protocol itself: a compare-exchange, no system call (and a fence while
/// other threads use rseq). A signal handler that interrupts its thread
/// while that thread holds its CPU's buffer's guard appends to another
/// CPU's buffer instead, or gets [`Full`] if none can take the record.
/// Memory: `capacity * size_of::<T>()` bytes for each CPU that pushed.
///
/// A [`drain`](Self::drain) callback that panics loses the records it was
/// given: they had left the buffer before the callback ran. Records of
/// CPUs not drained yet stay in their buffers.
///
/// ```
/// use restartable::Buffer;
///
/// let events: Buffer<(u32, u64)> = Buffer::new(1024);
/// std::thread::scope(|s| {
///     for t in 0..4u32 {
///         let events = &events;
///         s.spawn(move || {
///             for i in 0..100 {
///                 while events.push((t, i)).is_err() {
///                     std::thread::yield_now(); // full: a consumer will drain
///                 }
///             }
///         });
///     }
/// });
/// let mut seen = 0;
/// events.drain(|_cpu, records| seen += records.len()).unwrap();
/// assert_eq!(seen, 400);
/// ```
pub struct Buffer<T> {
    slots: SparseSlots<Slot<T>>,
    capacity: usize,
}

impl<T: Copy> Buffer<T> {
    /// Buffers of `capacity` records per CPU (0 makes every push fail),
    /// allocated when a CPU first pushes.
    ///
    /// # Panics
    /// When `capacity * size_of::<T>()` exceeds `isize::MAX` bytes (as
    /// `Vec::with_capacity` does); in a `const` context, at compile time.
    pub const fn new(capacity: usize) -> Self {
        assert!(
            match capacity.checked_mul(size_of::<T>()) {
                Some(bytes) => bytes <= isize::MAX as usize,
                None => false,
            },
            "Buffer::new: capacity * size_of::<T>() exceeds isize::MAX bytes"
        );
        Buffer {
            slots: SparseSlots::new(),
            capacity,
        }
    }

    /// Records each CPU's buffer holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends `record` to the current CPU's buffer.
    ///
    /// # Errors
    /// [`Full`], with the record, when that buffer is full.
    pub fn push(&self, record: T) -> Result<(), Full<T>> {
        let pushed = retry::sections(Index::Cpu, |t, id| {
            let Some(slot) = self.slot(id.as_usize()) else {
                return Step::Leave(Cause::IdOutOfRange);
            };
            let n = slot.count.load(Ordering::Relaxed);
            let Some(place) = slot.records.get(n as usize) else {
                return Step::Done(false);
            };
            // SAFETY: the count is written only by sections on this CPU
            // (which check the guard first) and by guard holders after a
            // fence; `place` is the free place after the `n` records, which
            // only a push committing `n + 1` publishes; `record` is a `T`.
            Step::from(unsafe {
                t.memcpy_then_store_guarded(
                    id,
                    Order::Release,
                    slot.count.as_ptr(),
                    n,
                    place.get() as *mut u8,
                    &record as *const T as *const u8,
                    size_of::<T>(),
                    n + 1,
                    slot.guard_ptr(),
                )
            })
            .map(|()| true)
        });
        let done = match pushed {
            Ok(done) => done,
            Err(cause) => self.push_fallback(cause, record),
        };
        match done {
            true => Ok(()),
            false => Err(Full(record)),
        }
    }

    /// The fallback path: appends under the guard of the current CPU's
    /// buffer, or, when an outer frame of this thread holds that guard,
    /// of the first other buffer that exists and has room.
    // Not `#[cold]`: without rseq this is the hot path; out of line
    // only, to keep the section path small.
    #[inline(never)]
    fn push_fallback(&self, cause: Cause, record: T) -> bool {
        let here = retry::fallback_index(cause, self.slots.len());
        let append = |slot: &Slot<T>, index| {
            slot.hold_waiting(Reach::Cpu(index), |records| {
                let n = records.count.load(Ordering::Relaxed) as usize;
                let Some(place) = records.records.get(n) else {
                    return false;
                };
                // SAFETY: the buffer is ours under the guard; `place` is
                // past the records in use.
                unsafe { (*place.get()).write(record) };
                records.count.store(n as u64 + 1, Ordering::Release);
                true
            })
        };
        match self.slot(here).map(|slot| append(slot, here)) {
            Some(Ok(done)) => done,
            None => false,
            // An outer frame of this thread holds a guard (of this buffer,
            // or it would have to wait for another's): try the others,
            // without waiting.
            Some(Err(_)) => self
                .slots
                .iter()
                .filter(|&(i, _)| i != here)
                .any(|(i, slot)| append(slot, i) == Ok(true)),
        }
    }

    /// Drains every CPU's buffer, calling `f(cpu, records)` for each that
    /// held records (in the order they were appended there). Returns the
    /// number of records drained. Records pushed while the drain runs are
    /// either in this drain or left for the next.
    ///
    /// # Errors
    /// [`RemoteError::Fence`] when no fence can be made; buffers before the
    /// failing one were drained.
    pub fn drain(&self, mut f: impl FnMut(usize, &[T])) -> Result<usize, RemoteError> {
        let mut scratch = Vec::new();
        let mut total = 0;
        for (cpu, _) in self.slots.iter() {
            total += self.drain_into(cpu, &mut scratch, &mut f)?;
        }
        Ok(total)
    }

    /// Drains the buffer of CPU `cpu` only; returns the number of records.
    ///
    /// # Errors
    /// [`RemoteError::NoSuchCpu`] past [`possible_cpus`](crate::possible_cpus);
    /// [`RemoteError::Fence`] when no fence can be made.
    pub fn drain_cpu(&self, cpu: usize, mut f: impl FnMut(&[T])) -> Result<usize, RemoteError> {
        if cpu >= self.slots.len() {
            return Err(RemoteError::NoSuchCpu);
        }
        self.drain_into(cpu, &mut Vec::new(), &mut |_, records| f(records))
    }

    /// Records in all buffers now (a racy sum, for reports).
    pub fn len(&self) -> usize {
        self.slots
            .iter()
            .map(|(_, s)| s.count.load(Ordering::Relaxed) as usize)
            .sum()
    }

    /// True when every buffer was empty when looked at.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn drain_into(
        &self,
        cpu: usize,
        scratch: &mut Vec<T>,
        f: &mut impl FnMut(usize, &[T]),
    ) -> Result<usize, RemoteError> {
        let Some(slot) = self.slots.get(cpu) else {
            return Ok(0);
        };
        // A racy look first: an empty buffer costs no fence.
        if slot.count.load(Ordering::Relaxed) == 0 {
            return Ok(0);
        }
        scratch.clear();
        let copied = slot.hold(Reach::Cpu(cpu), |records| {
            let n = (records.count.load(Ordering::Acquire) as usize).min(records.records.len());
            // SAFETY: the buffer is ours under the guard, and its first `n`
            // records were written by committed pushes.
            scratch.extend(
                records.records[..n]
                    .iter()
                    .map(|r| unsafe { (*r.get()).assume_init() }),
            );
            records.count.store(0, Ordering::Release);
        });
        copied.map_err(super::refused)?;
        // The caller's code runs after the guard is released.
        if !scratch.is_empty() {
            f(cpu, scratch);
        }
        Ok(scratch.len())
    }

    fn slot(&self, index: usize) -> Option<&Slot<T>> {
        self.slots.get_or_init(index, || {
            Guarded::new(Records {
                count: AtomicU64::new(0),
                // No per-record initialization: O(1) for zero-sized records.
                // SAFETY: `UnsafeCell<MaybeUninit<T>>` may hold any bytes,
                // uninitialized ones included.
                records: unsafe { Box::new_uninit_slice(self.capacity).assume_init() },
            })
        })
    }
}

impl<T> core::fmt::Debug for Buffer<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Buffer")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

// SAFETY: records are copied in by producers and out by consumers (`T:
// Send`), each place written by one thread at a time under the protocol.
unsafe impl<T: Send> Sync for Buffer<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Buffer<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_is_drained_once_in_per_cpu_order() {
        let threads = if cfg!(miri) { 3u64 } else { 8 };
        let per_thread = if cfg!(miri) { 30u64 } else { 20_000 };
        let buffer: Buffer<[u64; 2]> = Buffer::new(64);
        let mut seen = vec![Vec::new(); threads as usize];
        let done = AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..threads {
                let (buffer, done) = (&buffer, &done);
                s.spawn(move || {
                    for i in 0..per_thread {
                        while buffer.push([t, i]).is_err() {
                            std::thread::yield_now();
                        }
                    }
                    done.fetch_add(1, Ordering::Release);
                });
            }
            let mut consume = |_: usize, records: &[[u64; 2]]| {
                // Within one CPU's batch, each thread's records are in the
                // order it pushed them.
                let mut last = vec![None; threads as usize];
                for &[t, i] in records {
                    assert!(last[t as usize] < Some(i), "out of order on one CPU");
                    last[t as usize] = Some(i);
                    seen[t as usize].push(i);
                }
            };
            while done.load(Ordering::Acquire) < threads {
                buffer.drain(&mut consume).unwrap();
            }
            buffer.drain(&mut consume).unwrap();
        });
        for (t, mut got) in seen.into_iter().enumerate() {
            got.sort_unstable();
            let want: Vec<u64> = (0..per_thread).collect();
            assert!(got == want, "thread {t}: records lost or duplicated");
        }
        assert!(buffer.is_empty());
    }

    #[test]
    fn a_full_buffer_returns_the_record() {
        let buffer: Buffer<u8> = Buffer::new(0);
        assert_eq!(buffer.push(7), Err(Full(7)));
        let buffer: Buffer<u8> = Buffer::new(1);
        // One thread: fill its CPU's buffer (it may migrate; bounded tries).
        let mut full = false;
        for i in 0..100 {
            if buffer.push(i).is_err() {
                full = true;
                break;
            }
        }
        assert!(full);
        assert_eq!(
            buffer.drain_cpu(usize::MAX, |_| ()),
            Err(RemoteError::NoSuchCpu)
        );
    }
}
