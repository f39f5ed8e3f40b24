//! [`Pool`]: reusable objects through per-CPU caches.

use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::fence::FenceError;
use crate::guard::{self, Reach};
use crate::ops::{node_at, word_of, Fallback, MAX_ATTEMPTS};
use crate::section::{Id, Index, Order, Outcome, Thread};
use crate::table::Table;
use crate::{cpu, stats, RemoteError};

/// One CPU's cache: `items[..count]` are addresses of boxed objects.
struct Cache {
    count: AtomicU64,
    /// Non-zero while a thread works on this cache without a section.
    guard: AtomicU64,
    items: Box<[AtomicU64]>,
}

/// Default objects cached per CPU.
const DEFAULT_CACHE: usize = 64;
/// The largest per-CPU cache (512 KiB of addresses per CPU).
const MAX_CACHE: usize = 1 << 16;

/// A pool of reusable `T`s: [`get`](Self::get) hands one out (made with
/// the pool's constructor when none is free), and the [`Pooled`] guard
/// returns it when dropped. Objects keep their state between uses; reset
/// what matters after `get`.
///
/// Each CPU has a cache of up to `per_cpu` objects, taken from and put back
/// with one critical section each (the guarded `memcpy_then_store` to take
/// the top object, the guarded `store_then_store` to put one): no lock and
/// no atomic instruction on the common path. A full cache spills half its
/// objects in one section to a shared overflow list, and an empty one
/// refills a batch from it, so the overflow's lock is taken once per
/// `per_cpu / 2` operations at most.
///
/// Without rseq (or after 16 aborts in a row) a cache operation takes the
/// guard protocol on its CPU's cache (a compare-exchange, and a fence while
/// other threads use rseq). Not for signal handlers: the overflow list
/// sits behind a mutex, and making an object may allocate. For the same
/// reason a child of `fork` may block on that mutex if another thread of
/// the parent held it at the time.
///
/// ```
/// use restartable::Pool;
///
/// let buffers: Pool<Vec<u8>> = Pool::new(|| Vec::with_capacity(4096));
/// {
///     let mut buf = buffers.get();
///     buf.clear();
///     buf.extend_from_slice(b"request");
/// } // back in this CPU's cache
/// let again = buffers.get(); // usually the same buffer, capacity intact
/// assert!(again.capacity() >= 4096);
/// ```
pub struct Pool<T> {
    caches: Table<Cache>,
    per_cpu: usize,
    /// Batches of `per_cpu / 2` object addresses spilled from caches.
    overflow: Mutex<Vec<Vec<u64>>>,
    make: Box<dyn Fn() -> T + Send + Sync>,
}

/// An object taken from a [`Pool`]; derefs to it, and puts it back in the
/// pool when dropped.
pub struct Pooled<'a, T> {
    pool: &'a Pool<T>,
    object: Option<Box<T>>,
}

impl<T> Pool<T> {
    /// A pool that makes objects with `make`, caching 64 per CPU.
    pub fn new(make: impl Fn() -> T + Send + Sync + 'static) -> Self {
        Self::with_cache(make, DEFAULT_CACHE)
    }

    /// A pool caching up to `per_cpu` objects per CPU (clamped to
    /// 2..=65536; more reach the overflow list in batches of `per_cpu / 2`).
    pub fn with_cache(make: impl Fn() -> T + Send + Sync + 'static, per_cpu: usize) -> Self {
        Pool {
            caches: Table::new(),
            per_cpu: per_cpu.clamp(2, MAX_CACHE),
            overflow: Mutex::new(Vec::new()),
            make: Box::new(make),
        }
    }

    /// An object: from the current CPU's cache, else a batch from the
    /// overflow list, else a new one.
    pub fn get(&self) -> Pooled<'_, T> {
        let object = self.take().unwrap_or_else(|| Box::new((self.make)()));
        Pooled {
            pool: self,
            object: Some(object),
        }
    }

    /// Adds `object` to the pool (to the current CPU's cache).
    pub fn put(&self, object: T) {
        self.put_box(Box::new(object));
    }

    /// Objects in the caches and the overflow list now (racy, for reports).
    pub fn cached(&self) -> usize {
        let in_caches: usize = self
            .caches
            .iter()
            .map(|(_, c)| c.count.load(Ordering::Relaxed) as usize)
            .sum();
        in_caches + self.lock_overflow().iter().map(Vec::len).sum::<usize>()
    }

    /// Moves every CPU's cached objects to the shared overflow list, where
    /// any thread's [`get`](Self::get) finds them (caches are otherwise only
    /// used by threads on their CPU). Each cache is taken under its guard
    /// with a fence: microseconds per CPU.
    ///
    /// # Errors
    /// [`RemoteError::Fence`] when no fence can be made; caches before the
    /// failing one were flushed.
    pub fn flush(&self) -> Result<(), RemoteError> {
        for (index, cache) in self.caches.iter() {
            let batch = self
                .guarded(cache, index, |cache| {
                    let n = cache.count.swap(0, Ordering::Relaxed) as usize;
                    cache.items[..n.min(cache.items.len())]
                        .iter()
                        .map(|a| a.load(Ordering::Relaxed))
                        .collect::<Vec<_>>()
                })
                .map_err(RemoteError::Fence)?;
            if !batch.is_empty() {
                self.lock_overflow().push(batch);
            }
        }
        Ok(())
    }

    fn batch(&self) -> usize {
        self.per_cpu / 2
    }

    fn cache(&self, index: usize) -> Option<&Cache> {
        self.caches.get_or_init(index, || Cache {
            count: AtomicU64::new(0),
            guard: AtomicU64::new(0),
            items: (0..self.per_cpu).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    fn lock_overflow(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u64>>> {
        // The list stays consistent whatever panicked while holding it.
        self.overflow.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A cached object, refilling the current cache from the overflow list
    /// when it is empty; `None` when the pool has nothing free here.
    fn take(&self) -> Option<Box<T>> {
        let address = match Thread::current().map(|t| self.take_section(&t)) {
            Some(Ok(taken)) => taken,
            _ => self.take_fallback(),
        };
        match address {
            // SAFETY: a cached address is a `Box<T>` that the pool owned
            // and that was unlinked by the commit (or under the guard).
            Some(a) => Some(unsafe { Box::from_raw(node_at::<T>(a)) }),
            None => self.refill(),
        }
    }

    /// Takes a batch from the overflow list: one object for the caller,
    /// the rest into the current cache (or back to the list if it no longer
    /// fits).
    fn refill(&self) -> Option<Box<T>> {
        let mut batch = self.lock_overflow().pop()?;
        let mine = batch.pop()?;
        if !batch.is_empty() && !self.insert(&batch) {
            self.lock_overflow().push(batch);
        }
        // SAFETY: addresses in the overflow list are boxes the pool owns;
        // this one left the list with the batch.
        Some(unsafe { Box::from_raw(node_at::<T>(mine)) })
    }

    fn put_box(&self, object: Box<T>) {
        let address = word_of(Box::into_raw(object));
        if let Some(t) = Thread::current() {
            if self.put_section(&t, address).is_ok() {
                return;
            }
        }
        self.put_fallback(address);
    }

    /// The take section (copy the top address out, commit `count - 1`),
    /// retried: `Ok(None)` when the cache is empty.
    #[inline]
    fn take_section(&self, t: &Thread) -> Result<Option<u64>, Fallback> {
        let mut tries = Tries::default();
        while tries.left() {
            let (id, cache) = self.current(t)?;
            let n = cache.count.load(Ordering::Relaxed);
            let Some(top) = n.checked_sub(1).and_then(|i| cache.items.get(i as usize)) else {
                return Ok(None);
            };
            let mut taken = 0u64;
            // SAFETY: the count is written only by sections on this CPU
            // (which check the guard first) and by guard holders after a
            // fence; `top` is a word of this cache; `taken` is ours.
            let outcome = unsafe {
                t.memcpy_then_store_guarded(
                    id,
                    Order::Relaxed,
                    cache.count.as_ptr(),
                    n,
                    &mut taken as *mut u64 as *mut u8,
                    top.as_ptr() as *const u8,
                    8,
                    n - 1,
                    cache.guard.as_ptr(),
                )
            };
            match step(outcome, &mut tries) {
                Some(()) => return Ok(Some(taken)),
                None => continue,
            }
        }
        Err(Fallback)
    }

    /// The put section (store the address in the next place, commit
    /// `count + 1`), spilling half the cache first when it is full.
    #[inline]
    fn put_section(&self, t: &Thread, address: u64) -> Result<(), Fallback> {
        let mut tries = Tries::default();
        while tries.left() {
            let (id, cache) = self.current(t)?;
            let n = cache.count.load(Ordering::Relaxed);
            let Some(place) = cache.items.get(n as usize) else {
                self.spill_section(t, id, cache, n, &mut tries);
                continue;
            };
            // SAFETY: as in `take_section`; `place` is past the objects in
            // use, published only by a commit of `n + 1`.
            let outcome = unsafe {
                t.store_then_store_guarded(
                    id,
                    Order::Release,
                    cache.count.as_ptr(),
                    n,
                    place.as_ptr(),
                    address,
                    n + 1,
                    cache.guard.as_ptr(),
                )
            };
            if step(outcome, &mut tries).is_some() {
                return Ok(());
            }
        }
        Err(Fallback)
    }

    /// Moves the top half of a full cache to the overflow list with one
    /// section (copy the addresses out, commit the lower count).
    fn spill_section(&self, t: &Thread, id: Id, cache: &Cache, n: u64, tries: &mut Tries) {
        let batch = self.batch() as u64;
        let keep = n - batch;
        let mut out = vec![0u64; batch as usize];
        // SAFETY: as in `take_section`; the copy reads `batch` words of the
        // cache below `n` and writes our vector.
        let outcome = unsafe {
            t.memcpy_then_store_guarded(
                id,
                Order::Relaxed,
                cache.count.as_ptr(),
                n,
                out.as_mut_ptr() as *mut u8,
                cache.items[keep as usize..].as_ptr() as *const u8,
                8 * batch as usize,
                keep,
                cache.guard.as_ptr(),
            )
        };
        if step(outcome, tries).is_some() {
            self.lock_overflow().push(out);
        }
    }

    /// Copies `batch` into the current cache if it fits, with one section
    /// (copy in, commit the higher count); false when it did not.
    fn insert(&self, batch: &[u64]) -> bool {
        if let Some(t) = Thread::current() {
            let mut tries = Tries::default();
            while tries.left() {
                let Ok((id, cache)) = self.current(&t) else {
                    break;
                };
                let n = cache.count.load(Ordering::Relaxed);
                let Some(free) = cache.items.get(n as usize..n as usize + batch.len()) else {
                    return false;
                };
                // SAFETY: as in `put_section`, for the places after `n`.
                let outcome = unsafe {
                    t.memcpy_then_store_guarded(
                        id,
                        Order::Release,
                        cache.count.as_ptr(),
                        n,
                        free.as_ptr() as *mut u8,
                        batch.as_ptr() as *const u8,
                        8 * batch.len(),
                        n + batch.len() as u64,
                        cache.guard.as_ptr(),
                    )
                };
                if step(outcome, &mut tries).is_some() {
                    return true;
                }
            }
        }
        self.guarded_here(|cache| {
            let n = cache.count.load(Ordering::Relaxed) as usize;
            let Some(free) = cache.items.get(n..n + batch.len()) else {
                return false;
            };
            for (place, &a) in free.iter().zip(batch) {
                place.store(a, Ordering::Relaxed);
            }
            cache
                .count
                .store((n + batch.len()) as u64, Ordering::Release);
            true
        })
    }

    fn take_fallback(&self) -> Option<u64> {
        stats::record_fallback(Thread::current().is_some());
        self.guarded_here(|cache| {
            let n = cache.count.load(Ordering::Relaxed);
            let top = n.checked_sub(1)?;
            cache.count.store(top, Ordering::Relaxed);
            Some(cache.items[top as usize].load(Ordering::Relaxed))
        })
    }

    fn put_fallback(&self, address: u64) {
        stats::record_fallback(Thread::current().is_some());
        let spilled = self.guarded_here(|cache| {
            let mut n = cache.count.load(Ordering::Relaxed) as usize;
            let mut spilled = None;
            if n == cache.items.len() {
                let keep = n - self.batch();
                spilled = Some(
                    cache.items[keep..n]
                        .iter()
                        .map(|a| a.load(Ordering::Relaxed))
                        .collect::<Vec<_>>(),
                );
                n = keep;
            }
            cache.items[n].store(address, Ordering::Relaxed);
            cache.count.store(n as u64 + 1, Ordering::Release);
            spilled
        });
        if let Some(batch) = spilled {
            self.lock_overflow().push(batch);
        }
    }

    /// The thread's id and its CPU's cache.
    #[inline]
    fn current(&self, t: &Thread) -> Result<(Id, &Cache), Fallback> {
        let id = t.id(Index::Cpu).ok_or(Fallback)?;
        let cache = self.cache(id.as_usize()).ok_or(Fallback)?;
        Ok((id, cache))
    }

    /// `f` on the cache of the thread's CPU under its guard (the fallback
    /// path), waiting while no fence can be made.
    fn guarded_here<R>(&self, mut f: impl FnMut(&Cache) -> R) -> R {
        let index = cpu::fold(cpu::raw_cpu(), self.caches.len());
        // `index` was folded below the length, so the cache exists.
        let cache = loop {
            if let Some(cache) = self.cache(index) {
                break cache;
            }
        };
        let key = (self as *const Self as usize, index);
        guard::hold_waiting(&cache.guard, key, Reach::Cpu(index), |_| {
            core::sync::atomic::fence(Ordering::Acquire);
            f(cache)
        })
    }

    fn guarded<R>(
        &self,
        cache: &Cache,
        index: usize,
        f: impl FnOnce(&Cache) -> R,
    ) -> Result<R, FenceError> {
        let key = (self as *const Self as usize, index);
        guard::hold(&cache.guard, key, Reach::Cpu(index), |_| {
            core::sync::atomic::fence(Ordering::Acquire);
            f(cache)
        })
    }
}

/// Attempts so far at one cache operation.
#[derive(Default)]
struct Tries {
    aborts: u32,
    /// Yields while the cache was guarded (see [`guard::give_up`]).
    waits: u32,
}

impl Tries {
    /// Whether the section path may try again.
    fn left(&self) -> bool {
        self.aborts < MAX_ATTEMPTS
    }
}

/// What one attempt means for the loop: `Some` when it committed; counts
/// aborts, and waits while the cache is guarded.
#[inline(always)]
fn step(outcome: Outcome, tries: &mut Tries) -> Option<()> {
    match outcome {
        Outcome::Committed(()) => {
            core::sync::atomic::fence(Ordering::Acquire);
            Some(())
        }
        Outcome::Aborted => {
            stats::record_abort();
            tries.aborts += 1;
            None
        }
        Outcome::CompareFailed { which: 1, seen } => {
            if guard::give_up(seen, &mut tries.waits) {
                tries.aborts = MAX_ATTEMPTS;
            }
            None
        }
        Outcome::CompareFailed { .. } => None,
    }
}

impl<T> Drop for Pool<T> {
    fn drop(&mut self) {
        let overflow = core::mem::take(
            self.overflow
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let cached = self.caches.iter_mut().flat_map(|(_, c)| {
            let n = *c.count.get_mut() as usize;
            c.items[..n]
                .iter_mut()
                .map(|a| *a.get_mut())
                .collect::<Vec<_>>()
        });
        for address in cached.chain(overflow.into_iter().flatten()) {
            // SAFETY: `&mut self`: every cached address is a box the pool
            // owns, listed once.
            drop(unsafe { Box::from_raw(node_at::<T>(address)) });
        }
    }
}

impl<T> Pooled<'_, T> {
    /// Keeps the object instead of returning it to the pool.
    pub fn into_inner(mut self) -> T {
        match self.object.take() {
            Some(object) => *object,
            // Only `Drop` and this method take the object, once.
            None => unreachable!("a Pooled object is taken once"),
        }
    }
}

impl<T> Deref for Pooled<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        match &self.object {
            Some(object) => object,
            None => unreachable!("a Pooled object is taken once"),
        }
    }
}

impl<T> DerefMut for Pooled<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        match &mut self.object {
            Some(object) => object,
            None => unreachable!("a Pooled object is taken once"),
        }
    }
}

impl<T> Drop for Pooled<'_, T> {
    fn drop(&mut self) {
        if let Some(object) = self.object.take() {
            self.pool.put_box(object);
        }
    }
}

impl<T: Default + 'static> Default for Pool<T> {
    fn default() -> Self {
        Self::new(T::default)
    }
}

impl<T> core::fmt::Debug for Pool<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pool")
            .field("per_cpu", &self.per_cpu)
            .field("cached", &self.cached())
            .finish_non_exhaustive()
    }
}

impl<T: core::fmt::Debug> core::fmt::Debug for Pooled<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("Pooled").field(&**self).finish()
    }
}

// SAFETY: objects move between threads through the caches (`T: Send`);
// the pool hands out each object to one `Pooled` at a time.
unsafe impl<T: Send> Sync for Pool<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Pool<T> {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    struct Object {
        id: u64,
        in_use: AtomicBool,
    }

    #[test]
    fn no_object_is_handed_out_twice_or_lost() {
        let threads = if cfg!(miri) { 3 } else { 8 };
        let rounds = if cfg!(miri) { 30 } else { 20_000 };
        let made = std::sync::Arc::new(AtomicU64::new(0));
        let counter = made.clone();
        let pool = Pool::with_cache(
            move || Object {
                id: counter.fetch_add(1, Ordering::Relaxed),
                in_use: AtomicBool::new(false),
            },
            8,
        );
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            // Caches flushed under the workers, through the fence.
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    pool.flush().unwrap();
                    std::thread::yield_now();
                }
            });
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let pool = &pool;
                    s.spawn(move || {
                        if t == 0 {
                            // One worker on the guarded path.
                            crate::opt_out_current_thread();
                        }
                        let mut held = Vec::new();
                        for r in 0..rounds {
                            let o = pool.get();
                            assert!(!o.in_use.swap(true, Ordering::Relaxed), "handed out twice");
                            held.push(o);
                            if (r + t) % 7 == 0 {
                                for o in held.drain(..) {
                                    o.in_use.store(false, Ordering::Relaxed);
                                }
                            }
                        }
                        for o in held.drain(..) {
                            o.in_use.store(false, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            for w in workers {
                let _ = w.join();
            }
            done.store(true, Ordering::Relaxed);
        });
        let made = made.load(Ordering::Relaxed) as usize;
        assert_eq!(pool.cached(), made, "objects lost");
        // Every object once: take them all.
        pool.flush().unwrap();
        let mut ids: Vec<u64> = (0..made).map(|_| pool.get().into_inner().id).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..made as u64).collect::<Vec<_>>());
    }
}
