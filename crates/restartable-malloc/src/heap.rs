//! [`Heap`]: the allocator, put together: the region and its spans, the
//! central lists, the per-CPU caches; and the one process-wide heap,
//! set up at the first call without allocating ([`heap`]).
//!
//! | request | served by |
//! |---|---|
//! | up to 256 KiB, alignment up to 256 KiB | a size class: this CPU's cache, else a batch from the central list |
//! | larger | whole spans, returned to the system when freed |
//!
//! A cache holds at most [`Heap::cap`] objects of a class (at most
//! `RESTARTABLE_MALLOC_CACHE_KIB`, 128 KiB by default, of them; at least
//! one, at most [`SLOTS`]); a refill or a flush moves half of that between
//! the cache and the central list.
//!
//! Release policy: a slow path (a refill or a flush) at least
//! `RESTARTABLE_MALLOC_RELEASE_MS` (1000 by default) after the last
//! sweep runs one: it drains every CPU's caches into the central lists
//! (under their guards, with one fence per CPU or `mm_cid` block that holds objects, so
//! the caches of CPUs no thread runs on any more, offline ones included, are reclaimed too; the
//! busy ones refill at their next call) and gives every run with no object
//! in use back to the system (`madvise`). A process that stops allocating
//! keeps its memory until its next slow path or [`Heap::trim`]
//! (`malloc_trim`), which sweeps at once. Large allocations go back at
//! once when freed.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};

use crate::cache::{Caches, Done, Path, SLOTS};
use crate::central::Central;
use crate::classes::{self, COUNT, MAX, SPAN};
use crate::magazine;
use crate::region::{Entry, Region, MAX_LARGE_SPANS};
use crate::spans::Spans;
use crate::tunables::Tunables;
use restartable::section::Index;

/// Objects of `class` a cache of `kib` KiB per class holds: at least one,
/// at most [`SLOTS`].
const fn cap_for(class: usize, kib: usize) -> u32 {
    let n = kib * 1024 / classes::size(class);
    (if n < 1 {
        1
    } else if n > SLOTS {
        SLOTS
    } else {
        n
    }) as u32
}

/// Counts of the slow paths, for the statistics (the fast paths count
/// nothing).
#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) refills: AtomicUsize,
    pub(crate) flushes: AtomicUsize,
    pub(crate) central_direct: AtomicUsize,
    pub(crate) fallback_ops: AtomicUsize,
    pub(crate) large_allocs: AtomicUsize,
    pub(crate) large_frees: AtomicUsize,
    pub(crate) failed: AtomicUsize,
    pub(crate) sweeps: AtomicUsize,
    pub(crate) drained: AtomicUsize,
    pub(crate) released_runs: AtomicUsize,
}

/// Fallback operations a thread counts before it adds them to
/// [`Counts::fallback_ops`]: one shared counter bumped on every operation
/// would bounce its line between CPUs, costing more than the operation.
const FALLBACK_BATCH: u32 = 64;

thread_local! {
    /// This thread's fallback operations not yet added (const, no
    /// destructor).
    static FALLBACK_OPS: core::cell::Cell<u32> = const { core::cell::Cell::new(0) };
}

impl Counts {
    /// Counts one fallback operation of this thread (added to the shared
    /// count every [`FALLBACK_BATCH`], and by [`settle`](Self::settle)).
    #[inline(always)]
    pub(crate) fn count_fallback(&self) {
        let n = FALLBACK_OPS.get() + 1;
        if n < FALLBACK_BATCH {
            FALLBACK_OPS.set(n);
        } else {
            FALLBACK_OPS.set(0);
            self.fallback_ops.fetch_add(n as usize, Ordering::Relaxed);
        }
    }

    /// Adds this thread's pending fallback operations to the shared count
    /// (before the statistics are read; other threads' last few stay
    /// pending until their next batch).
    pub(crate) fn settle(&self) {
        let n = FALLBACK_OPS.replace(0);
        self.fallback_ops.fetch_add(n as usize, Ordering::Relaxed);
    }
}

/// The allocator's state.
pub struct Heap {
    pub(crate) region: Region,
    pub(crate) spans: Spans,
    pub(crate) central: Central,
    pub(crate) caches: Caches,
    pub(crate) counts: Counts,
    pub(crate) tunables: Tunables,
    /// [`cap`](Self::cap) by class, as a table: the fast path must not
    /// divide.
    caps: [u32; COUNT],
    /// When the last sweep ran (ms, `CLOCK_MONOTONIC_COARSE`).
    last_sweep: AtomicU64,
}

/// `asked`, unless it is `mm_cid` and the kernel does not maintain it
/// (sections indexed by it would only abort). Reads the auxiliary vector,
/// not the thread's registration: this runs inside the first allocation.
fn index_for(asked: Index) -> Index {
    let mm_cid = restartable::process_info()
        .kernel_feature_size
        .is_some_and(|f| f >= restartable::abi::MM_CID_FEATURE_SIZE);
    match asked {
        Index::MmCid if mm_cid => Index::MmCid,
        _ => Index::Cpu,
    }
}

impl Heap {
    /// A heap reserving `spans` spans of address space, with caches for
    /// `ncpus` CPUs.
    ///
    /// # Errors
    /// When the kernel refuses the reservation or the caches' mapping.
    pub fn new(
        spans: usize,
        ncpus: usize,
        tunables: Tunables,
    ) -> Result<Heap, crate::region::Error> {
        let mut caps = [0; COUNT];
        for (class, cap) in caps.iter_mut().enumerate() {
            *cap = cap_for(class, tunables.cache_kib);
        }
        Ok(Heap {
            region: Region::reserve(spans)?,
            spans: Spans::new(),
            central: Central::with_shelves(),
            caches: Caches::map(ncpus, index_for(tunables.index))?,
            counts: Counts::default(),
            tunables,
            caps,
            last_sweep: AtomicU64::new(now_ms()),
        })
    }

    /// Objects of `class` one CPU caches at most.
    #[inline(always)]
    pub fn cap(&self, class: usize) -> usize {
        self.caps[class] as usize
    }

    /// Objects a refill or flush of `class` moves: half the cache, at least
    /// one.
    fn batch(&self, class: usize) -> usize {
        (self.cap(class) / 2).max(1)
    }

    /// `size` bytes aligned to `align` (a power of two); null when no
    /// memory is left or the request cannot be served.
    #[inline]
    pub fn alloc(&self, size: usize, align: usize) -> *mut u8 {
        match classes::class_for(size, align) {
            Some(class) => self.alloc_small(class),
            None => self.alloc_large(size, align),
        }
    }

    /// As [`alloc`](Self::alloc), the bytes zeroed.
    pub fn alloc_zeroed(&self, size: usize, align: usize) -> *mut u8 {
        match classes::class_for(size, align) {
            Some(class) => {
                let p = self.alloc_small(class);
                if !p.is_null() {
                    // SAFETY: the object holds at least `size` bytes and is
                    // ours.
                    unsafe { core::ptr::write_bytes(p, 0, size) };
                }
                p
            }
            // Spans are handed out zeroed.
            None => self.alloc_large(size, align),
        }
    }

    #[inline]
    fn alloc_small(&self, class: usize) -> *mut u8 {
        match self.caches.pop(class) {
            (Done::Yes(p), path) => {
                if path == Path::Fallback {
                    self.counts.count_fallback();
                }
                p as *mut u8
            }
            (_, _) => self.refill(class),
        }
    }

    /// The cache was empty or unreachable: a batch from the central list,
    /// one object for the caller and the rest for the cache.
    #[cold]
    #[inline(never)]
    fn refill(&self, class: usize) -> *mut u8 {
        let mut buf = [0usize; SLOTS];
        let n = self
            .central
            .take(class, &mut buf[..self.batch(class)], |spans| {
                self.spans
                    .take(&self.region, spans, |k| Entry::Class {
                        class: class as u8,
                        offset: k as u8,
                    })
                    .ok()
            });
        if n == 0 {
            // No memory, or a signal handler inside this thread's own use
            // of the list: a span of its own serves it.
            return self.alloc_large(classes::size(class), classes::alignment(class));
        }
        self.counts.refills.fetch_add(1, Ordering::Relaxed);
        self.tick();
        let rest = &buf[..n - 1];
        if !rest.is_empty()
            && !matches!(
                self.caches.push_many(class, self.cap(class), rest).0,
                Done::Yes(())
            )
        {
            self.central.give(class, rest);
        }
        buf[n - 1] as *mut u8
    }

    fn alloc_large(&self, size: usize, align: usize) -> *mut u8 {
        if !align.is_power_of_two() {
            return core::ptr::null_mut();
        }
        let Some(n) = size.max(1).checked_next_multiple_of(SPAN).map(|b| b / SPAN) else {
            return self.failed();
        };
        let extra = align / SPAN.min(align) - 1;
        let Some(total) = n
            .checked_add(extra)
            .filter(|&t| t <= MAX_LARGE_SPANS as usize)
        else {
            return self.failed();
        };
        let Ok(run) = self.spans.take(&self.region, total, |_| Entry::LargeTail) else {
            return self.failed();
        };
        let start = run.next_multiple_of(align.max(SPAN));
        let lead = (start - run) / SPAN;
        if lead > 0 {
            self.spans.give(&self.region, run, lead);
        }
        if extra > lead {
            self.spans
                .give(&self.region, start + n * SPAN, extra - lead);
        }
        self.region.mark(start, n, |k| {
            if k == 0 {
                Entry::Large { spans: n as u32 }
            } else {
                Entry::LargeTail
            }
        });
        self.counts.large_allocs.fetch_add(1, Ordering::Relaxed);
        start as *mut u8
    }

    #[cold]
    fn failed(&self) -> *mut u8 {
        self.counts.failed.fetch_add(1, Ordering::Relaxed);
        core::ptr::null_mut()
    }

    /// What `p` is: `Small(class)` or `Large(spans)`. Stops the process
    /// when `p` was never handed out (outside the range, in a free span, or
    /// not an object's start).
    #[inline(always)]
    fn find(&self, p: *mut u8) -> Found {
        let addr = p as usize;
        if let Some((class, offset)) = self.region.small(addr) {
            // The entry was written for this very span, so its run starts
            // `offset` spans back, inside the range.
            let start = (addr & !(SPAN - 1)) - usize::from(offset) * SPAN;
            let class = usize::from(class);
            let offset = addr - start;
            if class < COUNT
                && offset < classes::run_bytes(class)
                && classes::divides(class, offset)
            {
                return Found::Small(class);
            }
        }
        self.find_slow(addr)
    }

    #[cold]
    #[inline(never)]
    fn find_slow(&self, addr: usize) -> Found {
        match self.region.lookup(addr) {
            Some(Entry::Class { .. }) => foreign(addr, "not the start of an object"),
            Some(Entry::Large { spans }) if addr.is_multiple_of(SPAN) => {
                Found::Large(spans as usize)
            }
            Some(Entry::Large { .. } | Entry::LargeTail) => {
                foreign(addr, "inside a large allocation")
            }
            Some(Entry::Unused) => foreign(addr, "in memory that is not handed out"),
            None => foreign(addr, "outside the allocator's range"),
        }
    }

    /// Frees `p` (null does nothing). A pointer the heap can tell it never
    /// handed out stops the process with a message.
    ///
    /// # Safety
    /// `p` is null or came from this heap and was not freed since: a
    /// second free of a small object cannot be told apart cheaply, and
    /// would hand it out twice.
    #[inline]
    pub unsafe fn free(&self, p: *mut u8) {
        if p.is_null() {
            return;
        }
        match self.find(p) {
            Found::Small(class) => self.free_small(class, p as usize),
            Found::Large(spans) => {
                self.counts.large_frees.fetch_add(1, Ordering::Relaxed);
                self.spans.give(&self.region, p as usize, spans);
            }
        }
    }

    /// Puts `object` of `class` back: in this CPU's cache (or, for a
    /// thread without rseq, its magazine), or the central list.
    #[inline(always)]
    fn free_small(&self, class: usize, object: usize) {
        match self.caches.push(class, self.cap(class), object) {
            (Done::Yes(()), path) => {
                if path == Path::Fallback {
                    self.counts.count_fallback();
                }
            }
            (Done::No, _) => self.flush(class, object),
            (Done::Unreachable, _) => self.free_central(class, object),
        }
    }

    /// Empties the calling thread's magazine into the caches (and closes
    /// it, at thread exit).
    pub(crate) fn empty_magazine(&self, close: bool) {
        magazine::empty(close, |class, object| self.free_small(class, object));
    }

    /// The cache could not be reached: `object` goes to the central list.
    #[cold]
    #[inline(never)]
    fn free_central(&self, class: usize, object: usize) {
        self.counts.central_direct.fetch_add(1, Ordering::Relaxed);
        self.central.give(class, &[object]);
    }

    /// The cache was full: half of it goes to the central list, then
    /// `object` into the cache.
    #[cold]
    #[inline(never)]
    fn flush(&self, class: usize, object: usize) {
        self.counts.flushes.fetch_add(1, Ordering::Relaxed);
        self.tick();
        let mut buf = [0usize; SLOTS];
        let out = &mut buf[..self.batch(class)];
        if matches!(self.caches.pop_many(class, out).0, Done::Yes(())) {
            self.central.give(class, out);
            if matches!(
                self.caches.push(class, self.cap(class), object).0,
                Done::Yes(())
            ) {
                return;
            }
        }
        self.central.give(class, &[object]);
    }

    /// The release policy's clock, on a slow path: sweeps when the delay
    /// has passed since the last sweep.
    fn tick(&self) {
        let delay = self.tunables.release_ms;
        if delay == 0 {
            return;
        }
        let now = now_ms();
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now.wrapping_sub(last) >= delay
            && !crate::lock::holding()
            && self
                .last_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.sweep();
        }
    }

    /// Returns free memory to the system now (`malloc_trim`): every CPU's
    /// cache goes back to the central lists (but one another thread holds
    /// the guard of at that moment, left for the next sweep), then every
    /// run with no object in use goes back to the system. True when some memory went back.
    /// Does nothing in a thread that holds an allocator lock (a signal
    /// handler inside the allocator).
    pub fn trim(&self) -> bool {
        self.empty_magazine(false);
        self.last_sweep.store(now_ms(), Ordering::Relaxed);
        self.sweep()
    }

    /// Drains every CPU's caches, then releases whole runs.
    #[cold]
    fn sweep(&self) -> bool {
        if crate::lock::holding() {
            return false;
        }
        self.counts.sweeps.fetch_add(1, Ordering::Relaxed);
        // A block at a time: one fence per CPU (or mm_cid) with objects
        // cached, not one per cache.
        for cpu in 0..self.caches.ncpus() {
            let n = self
                .caches
                .drain_block(cpu, |class, objects| self.central.give(class, objects));
            self.counts.drained.fetch_add(n, Ordering::Relaxed);
        }
        let released: usize = (0..COUNT)
            .map(|class| self.central.release(class, &self.region, &self.spans))
            .sum();
        self.counts
            .released_runs
            .fetch_add(released, Ordering::Relaxed);
        released > 0
    }

    /// Bytes usable at `p`, at least what was asked for (0 for null).
    ///
    /// # Safety
    /// As for [`free`](Self::free): `p` is null or live.
    pub unsafe fn usable_size(&self, p: *mut u8) -> usize {
        if p.is_null() {
            return 0;
        }
        match self.find(p) {
            Found::Small(class) => classes::size(class),
            Found::Large(spans) => spans * SPAN,
        }
    }

    /// Resizes `p` (from [`alloc`](Self::alloc) with `align`) to `size`
    /// bytes, keeping its contents up to the smaller size; null (and `p`
    /// untouched) when no memory is left.
    ///
    /// # Safety
    /// As for [`free`](Self::free): `p` is null or live; on success it is
    /// freed (or returned).
    pub unsafe fn realloc(&self, p: *mut u8, align: usize, size: usize) -> *mut u8 {
        if p.is_null() {
            return self.alloc(size, align);
        }
        let old = match self.find(p) {
            Found::Small(class) => {
                if classes::class_for(size, align) == Some(class) {
                    return p;
                }
                classes::size(class)
            }
            Found::Large(spans) => {
                let same = size > MAX
                    && size.div_ceil(SPAN) == spans
                    && (p as usize).is_multiple_of(align);
                if same {
                    return p;
                }
                spans * SPAN
            }
        };
        let q = self.alloc(size, align);
        if !q.is_null() {
            // SAFETY: both blocks are ours, distinct, and hold at least the
            // smaller size; `p` is live (the caller's contract).
            unsafe {
                core::ptr::copy_nonoverlapping(p, q, old.min(size));
                self.free(p);
            }
        }
        q
    }
}

enum Found {
    Small(usize),
    Large(usize),
}

/// Stops the process: `addr` was never handed out by this allocator.
#[cold]
#[inline(never)]
fn foreign(addr: usize, why: &str) -> ! {
    let mut msg = [0u8; 160];
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        let n = bytes.len().min(msg.len() - len);
        msg[len..len + n].copy_from_slice(&bytes[..n]);
        len += n;
    };
    put(b"restartable-malloc: free or realloc of 0x");
    let mut hex = [0u8; 16];
    for (k, digit) in hex.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[(addr >> (60 - 4 * k)) & 15];
    }
    put(&hex);
    put(b", which it never handed out (");
    put(why.as_bytes());
    put(b")\n");
    // SAFETY: writing our own buffer to stderr, then stopping.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), len);
        libc::abort()
    }
}

/// Milliseconds of `CLOCK_MONOTONIC_COARSE` (a vDSO read, no system
/// call).
fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is ours to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// The smallest reservation tried: 64 MiB (a process under an
/// address-space limit of a few hundred MiB still gets a heap).
const MIN_RESERVE_SPANS: usize = (64 << 20) / SPAN;

const UNSET: u8 = 0;
const BUSY: u8 = 1;
const READY: u8 = 2;
const FAILED: u8 = 3;

struct Slot(UnsafeCell<MaybeUninit<Heap>>);
// SAFETY: written once, by the thread that moves STATE from BUSY to READY,
// and only read after READY is seen (acquire).
unsafe impl Sync for Slot {}

static HEAP: Slot = Slot(UnsafeCell::new(MaybeUninit::uninit()));
static STATE: AtomicU8 = AtomicU8::new(UNSET);

/// The process's heap, set up at the first call: its reservation, its
/// caches, its tunables; nothing is allocated. `None` when it could not be
/// set up (the kernel refused the reservation), or in a signal handler that
/// interrupted the set-up.
#[inline]
pub fn heap() -> Option<&'static Heap> {
    if STATE.load(Ordering::Acquire) == READY {
        // SAFETY: READY is stored after the heap is written (release).
        return Some(unsafe { (*HEAP.0.get()).assume_init_ref() });
    }
    set_up()
}

/// The heap if it is set up; never sets it up.
pub(crate) fn heap_if_ready() -> Option<&'static Heap> {
    // SAFETY: as in `heap`.
    (STATE.load(Ordering::Acquire) == READY).then(|| unsafe { (*HEAP.0.get()).assume_init_ref() })
}

thread_local! {
    /// This thread is setting the heap up (const, no destructor).
    static SETTING: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

#[cold]
fn set_up() -> Option<&'static Heap> {
    if SETTING.get() {
        // A signal handler inside this thread's own set-up.
        return None;
    }
    // Before the compare-exchange, so that a signal handler arriving
    // between the two sees it.
    SETTING.set(true);
    let won = loop {
        match STATE.compare_exchange(UNSET, BUSY, Ordering::Acquire, Ordering::Acquire) {
            Ok(_) => break true,
            Err(READY | FAILED) => break false,
            Err(_) => {
                // SAFETY: no preconditions.
                unsafe { libc::sched_yield() };
            }
        }
    };
    if !won {
        SETTING.set(false);
        return heap_if_ready();
    }
    let tunables = Tunables::read();
    // A smaller reservation where the system refuses the one asked for
    // (an address-space limit, valgrind), halving down to 1 GiB.
    let mut spans = tunables.reserve_spans();
    let ncpus = restartable::possible_cpus();
    let made = loop {
        match Heap::new(spans, ncpus, tunables) {
            Err(crate::region::Error::Map(_)) if spans > MIN_RESERVE_SPANS => {
                spans = (spans / 2).max(MIN_RESERVE_SPANS);
            }
            other => break other,
        }
    };
    match made {
        Ok(h) => {
            // SAFETY: only this thread, holding BUSY, writes the slot.
            unsafe { (*HEAP.0.get()).write(h) };
            magazine::make_key();
            STATE.store(READY, Ordering::Release);
            SETTING.set(false);
            at_fork();
            if tunables.stats_at_exit.is_some() {
                // SAFETY: a plain function that lives for the program.
                unsafe { libc::atexit(crate::stats::print_at_exit) };
            }
            // SAFETY: just written.
            Some(unsafe { (*HEAP.0.get()).assume_init_ref() })
        }
        Err(_) => {
            STATE.store(FAILED, Ordering::Release);
            SETTING.set(false);
            None
        }
    }
}

/// The locks `prepare` took (bit `class` for a central list, bit `COUNT`
/// for the spans), so that only those are released.
static KEPT: AtomicU64 = AtomicU64::new(0);
const _: () = assert!(COUNT < 64);

/// Holds every lock across `fork`, so the child finds no list half
/// changed and no lock held by a thread it does not have. A lock the
/// forking thread holds already (`fork` from a signal handler) is neither
/// taken nor released.
fn at_fork() {
    extern "C" fn prepare() {
        let Some(h) = heap_if_ready() else {
            return;
        };
        let mut kept = 0u64;
        // In the order the allocator nests them: a central list, then the
        // spans.
        let locks = (0..COUNT)
            .map(|c| h.central.lock(c))
            .chain([h.spans.lock()]);
        for (bit, lock) in locks.enumerate() {
            if let Ok(held) = lock.lock() {
                held.keep();
                kept |= 1 << bit;
            }
        }
        KEPT.store(kept, Ordering::Relaxed);
    }
    extern "C" fn release() {
        let Some(h) = heap_if_ready() else {
            return;
        };
        let kept = KEPT.swap(0, Ordering::Relaxed);
        let locks = (0..COUNT)
            .map(|c| h.central.lock(c))
            .chain([h.spans.lock()]);
        for (bit, lock) in locks.enumerate() {
            if kept & (1 << bit) != 0 {
                lock.force_unlock();
            }
        }
    }
    // SAFETY: the handlers are plain functions that live for the program.
    unsafe { libc::pthread_atfork(Some(prepare), Some(release), Some(release)) };
}
