//! [`Caches`]: one cache of free objects per CPU and size class, taken
//! from and put back with one critical section each: no lock and no atomic
//! read-modify-write, whichever thread allocated the object.
//!
//! Each CPU has a block of [`STRIDE`] bytes, in one mapping touched page
//! by page as CPUs use it, holding one 512-byte cache per class at
//! `512 * class`:
//!
//! | offset in a cache | what |
//! |---|---|
//! | 0 | the cache's [`Guard`] (0 when free) |
//! | 8 | the count of cached objects |
//! | 16 | [`SLOTS`] slots: object addresses, `slot[..count]` cached |
//!
//! A section is handed the address of its class's cache in CPU 0's block,
//! `caches`, and finds the current CPU's at `caches + (id << 15)`.
//!
//! A block belongs to a CPU number (`cpu_id`, the default) or to a
//! concurrency id (`mm_cid`, `RESTARTABLE_MALLOC_INDEX=mm_cid`): each
//! section exists in both flavours (`pop` and `pop_cid`, ...), with one
//! body. `mm_cid`s are dense, below the number of threads running at once,
//! so a process with 4 threads on 64 CPUs touches 4 blocks, not 64; but an
//! `mm_cid` moves between CPUs, so a guard holder on an `mm_cid` block
//! fences every CPU rather than one. A thread without rseq has no
//! `mm_cid`; its twin runs on the block of its CPU number, under that
//! block's guard, which excludes the sections of whichever thread has that
//! `mm_cid`.
//!
//! The sections ([`pop`], [`push`], and the batch forms [`pop_many`],
//! [`push_many`]) are written in the section language
//! (`restartable::section!`), so they exist for x86-64, aarch64 and
//! riscv64 and are checked by the model checker (`tests/model.rs`). A
//! thread without rseq first tries its own magazine (`magazine.rs`, for a
//! single pop or push), then runs the same bodies as plain Rust (their
//! twins) under the CPU's guard; a section that finds the guard set
//! leaves, and the caller goes to the central list instead.
//!
//! Only a commit proves that a pop took an object: nothing here trusts a
//! CPU id read outside a section.

use restartable::guard::{Guard, Reach};
use restartable::section::{Index, RetriesExhausted, Run, Thread};

use crate::region::Error;

/// Bytes of one CPU's block.
pub const STRIDE: usize = 1 << 15;
/// Bytes of one class's cache.
const CACHE: usize = 512;
/// Slots per cache: no class caches more objects than this per CPU.
pub const SLOTS: usize = 62;
const COUNT: usize = 8;
const _: () = assert!(CACHE * crate::classes::COUNT <= STRIDE);
const _: () = assert!(16 + SLOTS * 8 == CACHE);

/// Expands one section twice: indexed by `cpu_id` (`$cpu`) and by `mm_cid`
/// (`$cid`), with the same body.
macro_rules! both_indexes {
    ([$cpu:ident, $cid:ident] $(#[$m:meta])* fn $($rest:tt)*) => {
        restartable::section! { #[index(cpu_id)] $(#[$m])* pub unsafe fn $cpu $($rest)* }
        restartable::section! { #[index(mm_cid)] $(#[$m])* pub unsafe fn $cid $($rest)* }
    };
}

/// One cache operation through [`Caches::op`]: the flavour of the
/// section the caches' index selects through rseq, the `cpu_id` flavour's
/// twin under the guard, and `$verdict` on the run either gives (`$s`
/// names the flavour's module there).
macro_rules! cache_op {
    ($caches:expr, $class:expr, [$cpu:ident, $cid:ident], ($($arg:expr),*),
     $spare:expr, |$run:ident, $s:ident| $verdict:expr) => {{
        let (base, n) = ($caches.ptr($class), $caches.ncpus as u64);
        $caches.op(
            $class,
            $spare,
            |t| match $caches.index {
                // SAFETY (both): the caches map `ncpus` blocks laid out as
                // this module says, written only by these sections and
                // guard holders; the arguments are as each operation
                // documents.
                Index::Cpu => unsafe { $cpu::retry(t, base, n, 0, $($arg),*) }.map(|$run| {
                    use $cpu as $s;
                    $verdict
                }),
                Index::MmCid => unsafe { $cid::retry(t, base, n, 0, $($arg),*) }.map(|$run| {
                    use $cid as $s;
                    $verdict
                }),
            },
            |id, held| {
                use $cpu as $s;
                // SAFETY: as above, and the block's guard is held.
                let $run = unsafe { $cpu::twin(id, base, n, held, $($arg),*) };
                $verdict
            },
        )
    }};
}

both_indexes! {
    [pop, pop_cid]
    /// Takes the newest object from the current CPU's cache of a class
    /// (`caches`: that class's cache in CPU 0's block).
    ///
    /// Specification, on the cache `b` of the current CPU `c`:
    /// - `c >= ncpus`: `Exit(OutOfRange)`;
    /// - `b.guard != held`: `Exit(Guarded(b.guard))`;
    /// - `b.count == 0`: `Exit(Empty)`;
    /// - else `b.count -= 1` and the section returns `b.slot[b.count]`
    ///   (the new count's slot).
    ///
    /// `held` is 0 on the rseq path and the caller's guard token on the
    /// fallback path, which holds the guard.
    #[exits(OutOfRange, Guarded(u64), Empty)]
    fn (caches: *mut u8, ncpus: u64, held: u64) -> u64 {
        let id = current_id();
        if id >= ncpus { exit!(OutOfRange) }
        let cache = caches + (id << 15);
        let guard = load_acquire64(cache);
        if guard != held { exit!(Guarded(guard)) }
        let count = load64(cache + 8);
        if count == 0 { exit!(Empty) }
        let object = load64(cache + 8 + (count << 3));
        commit!(store64(cache + 8, count - 1));
        object
    }
}

both_indexes! {
    [push, push_cid]
    /// Puts `object` in the current CPU's cache of a class, unless it
    /// holds `cap` objects already.
    ///
    /// Specification: `Exit(OutOfRange)` and `Exit(Guarded(g))` as for
    /// [`pop`]; `b.count >= cap`: `Exit(Full)`; else
    /// `b.slot[b.count] = object`, `b.count += 1`.
    /// The slot is stored first, speculatively: it lies above the count,
    /// where nothing reads until the commit moves the count past it.
    #[exits(OutOfRange, Guarded(u64), Full)]
    #[owned(slot)]
    fn (caches: *mut u8, ncpus: u64, held: u64, cap: u64, object: u64) {
        let id = current_id();
        if id >= ncpus { exit!(OutOfRange) }
        let cache = caches + (id << 15);
        let guard = load_acquire64(cache);
        if guard != held { exit!(Guarded(guard)) }
        let count = load64(cache + 8);
        if count >= cap { exit!(Full) }
        let slot = cache + 16 + (count << 3);
        store64(slot, object);
        commit!(store64(cache + 8, count + 1));
    }
}

both_indexes! {
    [pop_many, pop_many_cid]
    /// Takes the `n` newest objects from the current CPU's cache of a
    /// class into `out` (`n` words), the oldest of them first.
    ///
    /// Specification: `Exit(OutOfRange)` and `Exit(Guarded(g))` as for
    /// [`pop`]; `b.count < n`: `Exit(Short(b.count))`; else
    /// `out[..n] = b.slot[count - n..count]`, `b.count -= n`.
    #[exits(OutOfRange, Guarded(u64), Short(u64))]
    #[owned(out)]
    fn (caches: *mut u8, ncpus: u64, held: u64, out: *mut u8, n: u64) {
        let id = current_id();
        if id >= ncpus { exit!(OutOfRange) }
        let cache = caches + (id << 15);
        let guard = load_acquire64(cache);
        if guard != held { exit!(Guarded(guard)) }
        let count = load64(cache + 8);
        if count < n { exit!(Short(count)) }
        let left = count - n;
        copy(out, cache + 16 + (left << 3), n << 3);
        commit!(store64(cache + 8, left));
    }
}

both_indexes! {
    [push_many, push_many_cid]
    /// Puts the `n` objects at `objects` (`n` words) in the current CPU's
    /// cache of a class, unless that would take it past `cap`.
    ///
    /// Specification: `Exit(OutOfRange)` and `Exit(Guarded(g))` as for
    /// [`pop`]; `b.count + n > cap`: `Exit(Full(b.count))`;
    /// else `b.slot[count..count + n] = objects[..n]`,
    /// `b.count += n`.
    #[exits(OutOfRange, Guarded(u64), Full(u64))]
    #[owned(slots)]
    fn (caches: *mut u8, ncpus: u64, held: u64, cap: u64, objects: *const u8, n: u64) {
        let id = current_id();
        if id >= ncpus { exit!(OutOfRange) }
        let cache = caches + (id << 15);
        let guard = load_acquire64(cache);
        if guard != held { exit!(Guarded(guard)) }
        let count = load64(cache + 8);
        let end = count + n;
        if end > cap { exit!(Full(count)) }
        let slots = cache + 16 + (count << 3);
        copy(slots, objects, n << 3);
        commit!(store64(cache + 8, end));
    }
}

/// Which path served a cache operation, for the statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// A critical section committed (or left through an exit).
    Rseq,
    /// The twin ran under the CPU's guard.
    Fallback,
}

/// What a cache operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Done<T> {
    /// It took effect.
    Yes(T),
    /// The cache was empty (a pop) or full (a push).
    No,
    /// The cache could not be reached: its guard is held (by a fallback
    /// thread, a drain or an outer frame of this thread), or sections kept
    /// aborting and the guard was refused. The caller goes to the central
    /// list.
    Unreachable,
}

/// The per-CPU caches.
pub struct Caches {
    base: usize,
    ncpus: usize,
    /// Which id picks a thread's block on the rseq path.
    index: Index,
}

impl Caches {
    /// Maps caches for `ncpus` CPUs (without committing memory: blocks are
    /// touched as CPUs, or `mm_cid`s, use them), indexed by `index`. The
    /// caller picks [`Index::MmCid`] only where the kernel maintains it:
    /// there, sections indexed by it would only abort.
    ///
    /// # Errors
    /// [`Error::Map`] when the kernel refuses the mapping; [`Error::BadLength`]
    /// for 0 CPUs or a size that overflows.
    pub fn map(ncpus: usize, index: Index) -> Result<Caches, Error> {
        let bytes = ncpus
            .checked_mul(STRIDE)
            .filter(|_| ncpus > 0)
            .ok_or(Error::BadLength)?;
        let base = crate::region::map(bytes, libc::PROT_READ | libc::PROT_WRITE)?;
        // Page by page, not huge pages: with 64 possible CPUs the mapping
        // is 2 MiB, which transparent huge pages would fault in whole at
        // the first touch, however few CPUs (or mm_cids) use their block.
        // Advice only: a kernel without THP refuses it, which is fine.
        // SAFETY: `base` maps `bytes` bytes, just mapped by us.
        unsafe { libc::madvise(base as *mut libc::c_void, bytes, libc::MADV_NOHUGEPAGE) };
        Ok(Caches { base, ncpus, index })
    }

    /// CPUs covered.
    pub fn ncpus(&self) -> usize {
        self.ncpus
    }

    /// The id that picks a block on the rseq path.
    pub fn index(&self) -> Index {
        self.index
    }

    /// The fences a guard holder of block `slot` needs.
    fn reach(&self, slot: usize) -> Reach {
        match self.index {
            Index::Cpu => Reach::Cpu(slot),
            // An mm_cid moves between CPUs: a section on its block may run
            // on any of them.
            Index::MmCid => Reach::AnyCpu,
        }
    }

    /// The caches' memory in RAM now: bytes of the pages this process
    /// wrote, and the blocks with at least one such page. Blocks no CPU
    /// (or `mm_cid`) ever used cost address space only. Read from
    /// `/proc/self/pagemap` (Linux `Documentation/admin-guide/mm/pagemap.rst`):
    /// a page counts when present and exclusively mapped (bits 63 and 56),
    /// or swapped (bit 62); not `mincore`, which also counts the shared
    /// zero page that merely reading an untouched cache's count maps.
    /// Pages still shared with a `fork` parent are not counted. `(0, 0)`
    /// if the file cannot be read. Allocates (for the statistics only).
    pub fn resident(&self) -> (usize, usize) {
        use std::os::unix::fs::FileExt;
        const PRESENT: u64 = 1 << 63;
        const SWAPPED: u64 = 1 << 62;
        const EXCLUSIVE: u64 = 1 << 56;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let pages = self.ncpus * STRIDE / page;
        let mut entries = vec![0u8; pages * 8];
        let read = std::fs::File::open("/proc/self/pagemap")
            .and_then(|f| f.read_exact_at(&mut entries, (self.base / page * 8) as u64));
        if read.is_err() {
            return (0, 0);
        }
        let used: Vec<bool> = entries
            .chunks_exact(8)
            .map(|e| {
                let e = u64::from_le_bytes(e.try_into().unwrap_or([0; 8]));
                e & SWAPPED != 0 || (e & PRESENT != 0 && e & EXCLUSIVE != 0)
            })
            .collect();
        let blocks = used
            .chunks((STRIDE / page).max(1))
            .filter(|block| block.iter().any(|&u| u))
            .count();
        (used.iter().filter(|&&u| u).count() * page, blocks)
    }

    /// The objects of `class` cached on `cpu` now (a racy snapshot, for the
    /// statistics).
    pub fn count(&self, cpu: usize, class: usize) -> usize {
        if cpu >= self.ncpus || class >= crate::classes::COUNT {
            return 0;
        }
        let at = self.base + cpu * STRIDE + class * CACHE + COUNT;
        // SAFETY: the word lies in the mapping; a racy read of a count only
        // sections and guard holders write, as an atomic.
        unsafe {
            (*(at as *const core::sync::atomic::AtomicU64))
                .load(core::sync::atomic::Ordering::Relaxed) as usize
        }
    }

    /// Empties every non-empty cache of block `cpu` under its guard, with
    /// one fence for the whole block ([`Guard::hold_each`]; a cache whose
    /// guard another thread holds is skipped, left for the next sweep),
    /// handing each cache's objects to `give(class, objects)` once its
    /// guard is released. The block's later guards are still held then,
    /// and `give` takes a central list's lock: safe, as no thread holding
    /// an allocator lock waits for a guard. The objects drained (0 when
    /// the block is empty: no fence then).
    pub(crate) fn drain_block(&self, cpu: usize, mut give: impl FnMut(usize, &[usize])) -> usize {
        const _: () = assert!(crate::classes::COUNT <= 64);
        if cpu >= self.ncpus {
            return 0;
        }
        let mut classes = [0usize; crate::classes::COUNT];
        let mut n = 0;
        for class in 0..crate::classes::COUNT {
            if self.count(cpu, class) > 0 {
                classes[n] = class;
                n += 1;
            }
        }
        if n == 0 {
            return 0;
        }
        let guards: [&Guard; crate::classes::COUNT] =
            core::array::from_fn(|i| self.guard(cpu, classes[i.min(n - 1)]));
        let mut drained = 0;
        // Filled under a guard, emptied after its release.
        let buf = core::cell::RefCell::new([0usize; SLOTS]);
        let _ = Guard::hold_each(
            &guards[..n],
            self.reach(cpu),
            |i| {
                let at = self.base + cpu * STRIDE + classes[i] * CACHE;
                let mut out = buf.borrow_mut();
                // SAFETY: the count and the slots lie in the mapping; under
                // the cache's guard, with the CPUs a section on it may run
                // on fenced, no section or twin touches them.
                unsafe {
                    let count = &*((at + COUNT) as *const core::sync::atomic::AtomicU64);
                    let got =
                        (count.load(core::sync::atomic::Ordering::Relaxed) as usize).min(SLOTS);
                    let slots = (at + 16) as *const usize;
                    for (k, o) in out.iter_mut().enumerate().take(got) {
                        *o = *slots.add(k);
                    }
                    count.store(0, core::sync::atomic::Ordering::Relaxed);
                    got
                }
            },
            |i, got| {
                if got > 0 {
                    give(classes[i], &buf.borrow()[..got]);
                    drained += got;
                }
            },
        );
        drained
    }

    fn guard(&self, cpu: usize, class: usize) -> &Guard {
        // SAFETY: every cache starts with an 8-aligned word that only the
        // guard protocol writes (sections only read it); zero is free.
        unsafe { &*((self.base + cpu * STRIDE + class * CACHE) as *const Guard) }
    }

    /// `class`'s cache in CPU 0's block, as the sections take it.
    fn ptr(&self, class: usize) -> *mut u8 {
        (self.base + class * CACHE) as *mut u8
    }

    /// Runs `twin(cpu, held)` under the guard of the calling thread's CPU's
    /// cache of `class` (the block of its CPU number, whichever the index:
    /// a thread without rseq has no `mm_cid`).
    #[cold]
    fn fallback<T>(
        &self,
        class: usize,
        twin: impl FnOnce(u32, u64) -> Option<Done<T>>,
    ) -> (Done<T>, Path) {
        let cpu = restartable::current_cpu();
        // A thread holding an allocator lock never waits for a guard (no
        // cycle of waits through signal handlers); a CPU past the caches is
        // no cache's.
        if cpu >= self.ncpus || crate::lock::holding() {
            return (Done::Unreachable, Path::Fallback);
        }
        let guard = self.guard(cpu, class);
        let done = guard
            .hold(self.reach(cpu), || {
                // SAFETY: the guard's word, which this thread holds now.
                let held = unsafe { *guard.as_ptr() };
                twin(cpu as u32, held)
            })
            .ok()
            .flatten();
        (done.unwrap_or(Done::Unreachable), Path::Fallback)
    }

    /// One cache operation: `rseq` (the section) where this thread has
    /// rseq, else `spare` (the thread's magazine), else (or when the
    /// section kept aborting, or found the guard set) `twin` under the
    /// guard; each gives `None` when it could not serve.
    #[inline(always)]
    fn op<T>(
        &self,
        class: usize,
        spare: impl FnOnce() -> Option<Done<T>>,
        rseq: impl FnOnce(&Thread) -> Result<Option<Done<T>>, RetriesExhausted>,
        twin: impl FnOnce(u32, u64) -> Option<Done<T>>,
    ) -> (Done<T>, Path) {
        match Thread::current() {
            Some(thread) => {
                if let Ok(Some(done)) = rseq(&thread) {
                    return (done, Path::Rseq);
                }
                // The guard was set: the fallback waits for its holder, or
                // takes it over from one that `fork` left behind.
            }
            None => {
                if let Some(done) = spare() {
                    return (done, Path::Fallback);
                }
            }
        }
        self.fallback(class, twin)
    }

    /// Takes an object of `class` from this CPU's cache.
    #[inline]
    pub(crate) fn pop(&self, class: usize) -> (Done<usize>, Path) {
        let spare = || crate::magazine::take(class).map(Done::Yes);
        cache_op!(self, class, [pop, pop_cid], (), spare, |run, s| match run {
            Run::Committed(object) => Some(Done::Yes(object as usize)),
            Run::Exit(s::Exit::Empty) => Some(Done::No),
            Run::Exit(_) | Run::Aborted => None,
        })
    }

    /// Puts `object` of `class` in this CPU's cache, unless it holds `cap`
    /// objects of the class (`object` is free and the caller's to give).
    #[inline]
    pub(crate) fn push(&self, class: usize, cap: usize, object: usize) -> (Done<()>, Path) {
        let (cap, o) = (cap.min(SLOTS) as u64, object as u64);
        cache_op!(
            self,
            class,
            [push, push_cid],
            (cap, o),
            || crate::magazine::put(class, object).then_some(Done::Yes(())),
            |run, s| match run {
                Run::Committed(()) => Some(Done::Yes(())),
                Run::Exit(s::Exit::Full) => Some(Done::No),
                Run::Exit(_) | Run::Aborted => None,
            }
        )
    }

    /// Takes `out.len()` objects of `class` (at most [`SLOTS`]) from this
    /// CPU's cache into `out`; `No` when it holds fewer.
    pub(crate) fn pop_many(&self, class: usize, out: &mut [usize]) -> (Done<()>, Path) {
        let (dst, k) = (out.as_mut_ptr().cast::<u8>(), out.len().min(SLOTS) as u64);
        cache_op!(
            self,
            class,
            [pop_many, pop_many_cid],
            (dst, k),
            || None,
            |run, s| match run {
                Run::Committed(()) => Some(Done::Yes(())),
                Run::Exit(s::Exit::Short(_)) => Some(Done::No),
                Run::Exit(_) | Run::Aborted => None,
            }
        )
    }

    /// Puts `objects` of `class` in this CPU's cache, unless that would
    /// take it past `cap`.
    pub(crate) fn push_many(
        &self,
        class: usize,
        cap: usize,
        objects: &[usize],
    ) -> (Done<()>, Path) {
        let cap = cap.min(SLOTS) as u64;
        let (src, k) = (objects.as_ptr().cast::<u8>(), objects.len() as u64);
        cache_op!(
            self,
            class,
            [push_many, push_many_cid],
            (cap, src, k),
            || None,
            |run, s| match run {
                Run::Committed(()) => Some(Done::Yes(())),
                Run::Exit(s::Exit::Full(_)) => Some(Done::No),
                Run::Exit(_) | Run::Aborted => None,
            }
        )
    }
}
