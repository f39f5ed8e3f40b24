//! The address range the allocator hands out, reserved once, and its span
//! table: one 32-bit entry per [`SPAN`] saying what the span holds, so
//! that `free(p)` finds `p`'s class with a subtraction, a shift and a load,
//! and can tell a pointer it never handed out.
//!
//! The range is reserved without access (`PROT_NONE`, `MAP_NORESERVE`)
//! and made readable and writable run by run as runs are handed out, so
//! reserving a large range costs no memory and passes strict overcommit.
//!
//! | entry | meaning |
//! |---|---|
//! | [`Entry::Unused`] | never handed out, or given back |
//! | [`Entry::Class`] | span `offset` of a run of small objects of `class` |
//! | [`Entry::Large`] | the first span of a large allocation of `spans` spans |
//! | [`Entry::LargeTail`] | a later span of a large allocation |

use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

pub use crate::classes::{SPAN, SPAN_SHIFT};

/// What one span holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Nothing: never handed out, or given back.
    Unused,
    /// Span `offset` (0 for the first) of a run of objects of `class`.
    Class {
        /// The size class.
        class: u8,
        /// Which span of its run this is.
        offset: u8,
    },
    /// The first span of a large allocation `spans` spans long.
    Large {
        /// Its length in spans (below 2^30).
        spans: u32,
    },
    /// A later span of a large allocation.
    LargeTail,
}

const TAG_SHIFT: u32 = 30;
const TAG_CLASS: u32 = 1;
const TAG_LARGE: u32 = 2;
const TAG_TAIL: u32 = 3;
/// The longest large allocation, in spans.
pub const MAX_LARGE_SPANS: u32 = (1 << TAG_SHIFT) - 1;

impl Entry {
    fn encode(self) -> u32 {
        match self {
            Entry::Unused => 0,
            Entry::Class { class, offset } => {
                TAG_CLASS << TAG_SHIFT | u32::from(offset) << 8 | u32::from(class)
            }
            Entry::Large { spans } => {
                debug_assert!((1..=MAX_LARGE_SPANS).contains(&spans), "{spans} spans");
                TAG_LARGE << TAG_SHIFT | (spans & MAX_LARGE_SPANS)
            }
            Entry::LargeTail => TAG_TAIL << TAG_SHIFT,
        }
    }
    fn decode(word: u32) -> Entry {
        match word >> TAG_SHIFT {
            TAG_CLASS => Entry::Class {
                class: word as u8,
                offset: (word >> 8) as u8,
            },
            TAG_LARGE => Entry::Large {
                spans: word & MAX_LARGE_SPANS,
            },
            TAG_TAIL => Entry::LargeTail,
            _ => Entry::Unused,
        }
    }
}

/// Why the range or a run could not be had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The kernel refused the mapping (`mmap` or `mprotect`) with this
    /// `errno`.
    Map(i32),
    /// The range has no room left for the run.
    Full,
    /// The request is zero spans or larger than the range could ever hold.
    BadLength,
}

/// A reserved range of address space and its span table.
pub struct Region {
    /// The reservation as mapped (`base` rounds it up to a span).
    raw: (usize, usize),
    base: usize,
    spans: usize,
    table: *const AtomicU32,
    /// Two words per span, for the span allocator's free-run nodes: kept
    /// outside the runs, so a free run stays out of memory entirely.
    links: *const [AtomicUsize; 2],
    /// Spans handed out so far, from the start.
    used: AtomicUsize,
}

// SAFETY: the table is only accessed through atomics, and the range is
// plain memory; neither belongs to a thread.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// Reserves `spans` spans of address space (rounded to whole spans,
    /// aligned to [`SPAN`]) and their table.
    ///
    /// # Errors
    /// [`Error::BadLength`] for 0 spans or a size that overflows;
    /// [`Error::Map`] when the kernel refuses the reservation.
    pub fn reserve(spans: usize) -> Result<Region, Error> {
        let bytes = spans
            .checked_mul(SPAN)
            .and_then(|b| b.checked_add(SPAN))
            .filter(|_| spans > 0)
            .ok_or(Error::BadLength)?;
        let raw = map(bytes, libc::PROT_NONE)?;
        let base = raw.next_multiple_of(SPAN);
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let tables = map(spans * 4, rw).and_then(|table| match map(spans * 16, rw) {
            Ok(links) => Ok((table, links)),
            Err(e) => {
                // SAFETY: unmapping the table just made, unused.
                unsafe { libc::munmap(table as *mut libc::c_void, spans * 4) };
                Err(e)
            }
        });
        let (table, links) = match tables {
            Ok(t) => t,
            Err(e) => {
                // SAFETY: unmapping the reservation just made, unused.
                unsafe { libc::munmap(raw as *mut libc::c_void, bytes) };
                return Err(e);
            }
        };
        Ok(Region {
            raw: (raw, bytes),
            base,
            spans,
            table: table as *const AtomicU32,
            links: links as *const [AtomicUsize; 2],
            used: AtomicUsize::new(0),
        })
    }

    /// The first address of the range.
    pub fn base(&self) -> usize {
        self.base
    }

    /// Spans in the range.
    pub fn spans(&self) -> usize {
        self.spans
    }

    /// Spans handed out so far from the range's start (given-back runs are
    /// reused through [`Spans`](crate::spans::Spans), so this only grows).
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Hands out a run of `n` spans, readable and writable, with every
    /// span's entry set by `entry(k)` for its `k`-th span: the run's
    /// address.
    ///
    /// # Errors
    /// [`Error::BadLength`] for `n == 0`; [`Error::Full`] when the range has
    /// no room; [`Error::Map`] when the kernel refuses the access change
    /// (the run's spans then stay counted as used, and are lost).
    pub fn take(&self, n: usize, entry: impl Fn(usize) -> Entry) -> Result<usize, Error> {
        if n == 0 {
            return Err(Error::BadLength);
        }
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if n > self.spans - used {
                return Err(Error::Full);
            }
            match self.used.compare_exchange_weak(
                used,
                used + n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => used = now,
            }
        }
        let addr = self.base + used * SPAN;
        // SAFETY: the run lies inside our reservation and is ours alone.
        let rc = unsafe {
            libc::mprotect(
                addr as *mut libc::c_void,
                n * SPAN,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if rc != 0 {
            return Err(Error::Map(errno()));
        }
        for k in 0..n {
            // Release: whoever finds the entry finds the run accessible.
            self.slot(used + k)
                .store(entry(k).encode(), Ordering::Release);
        }
        Ok(addr)
    }

    /// Sets the entries of the `n` spans from `addr` (a run handed out
    /// before, being reused or given back) to `entry(k)` for the `k`-th.
    pub(crate) fn mark(&self, addr: usize, n: usize, entry: impl Fn(usize) -> Entry) {
        let first = addr.wrapping_sub(self.base) >> SPAN_SHIFT;
        if first >= self.spans || n > self.spans - first {
            debug_assert!(false, "marking spans outside the range");
            return;
        }
        for k in 0..n {
            self.slot(first + k)
                .store(entry(k).encode(), Ordering::Release);
        }
    }

    /// The entry of the span holding `addr`; `None` outside the range.
    #[inline]
    pub fn lookup(&self, addr: usize) -> Option<Entry> {
        let off = addr.checked_sub(self.base)?;
        let span = off >> SPAN_SHIFT;
        (span < self.spans).then(|| Entry::decode(self.slot(span).load(Ordering::Acquire)))
    }

    /// The class and span offset of `addr` when its span holds small
    /// objects ([`Entry::Class`]): `free`'s fast path, one test of the tag
    /// rather than a decode.
    #[inline(always)]
    pub fn small(&self, addr: usize) -> Option<(u8, u8)> {
        let span = addr.wrapping_sub(self.base) >> SPAN_SHIFT;
        if span >= self.spans {
            return None;
        }
        let word = self.slot(span).load(Ordering::Acquire);
        (word >> TAG_SHIFT == TAG_CLASS).then_some((word as u8, (word >> 8) as u8))
    }

    /// The first address of the run holding `addr`, whose entry says it is
    /// span `offset` of a class's run; `None` when `offset` does not fit
    /// (an entry that does not belong to `addr`).
    #[inline]
    pub fn run_start(&self, addr: usize, offset: u8) -> Option<usize> {
        (addr & !(SPAN - 1))
            .checked_sub(usize::from(offset) * SPAN)
            .filter(|&start| start >= self.base)
    }

    /// The two link words of the span at `addr` (inside the range), for
    /// the span allocator's free-run nodes; zero until written.
    pub(crate) fn links(&self, addr: usize) -> &[AtomicUsize; 2] {
        let span = (addr - self.base) >> SPAN_SHIFT;
        assert!(span < self.spans, "a link outside the range");
        // SAFETY: the table holds `spans` pairs, mapped for the region's
        // life, accessed only through atomics.
        unsafe { &*self.links.add(span) }
    }

    fn slot(&self, span: usize) -> &AtomicU32 {
        debug_assert!(span < self.spans);
        // SAFETY: the table holds `spans` entries, mapped for the region's
        // life.
        unsafe { &*self.table.add(span) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mappings `reserve` made. Addresses that `take` handed
        // out are plain numbers: whoever dereferences one promises, in its
        // own `unsafe`, that the region is still alive.
        unsafe {
            libc::munmap(self.table as *mut libc::c_void, self.spans * 4);
            libc::munmap(self.links as *mut libc::c_void, self.spans * 16);
            libc::munmap(self.raw.0 as *mut libc::c_void, self.raw.1);
        }
    }
}

/// A fresh anonymous private mapping of `bytes` with `prot`, reserved
/// without swap (`MAP_NORESERVE`): its address.
pub(crate) fn map(bytes: usize, prot: libc::c_int) -> Result<usize, Error> {
    // SAFETY: a fresh anonymous mapping; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            bytes,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Error::Map(errno()));
    }
    Ok(p as usize)
}

fn errno() -> i32 {
    // SAFETY: reads this thread's errno.
    unsafe { *libc::__errno_location() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        for e in [
            Entry::Unused,
            Entry::Class {
                class: 0,
                offset: 0,
            },
            Entry::Class {
                class: 51,
                offset: 7,
            },
            Entry::Large { spans: 1 },
            Entry::Large {
                spans: MAX_LARGE_SPANS,
            },
            Entry::LargeTail,
        ] {
            assert_eq!(Entry::decode(e.encode()), e);
        }
    }

    #[test]
    fn runs_are_aligned_writable_and_found_by_any_address_in_them() {
        let r = Region::reserve(16).unwrap();
        assert_eq!(r.base() % SPAN, 0);
        assert_eq!(r.lookup(r.base()), Some(Entry::Unused));
        assert_eq!(r.lookup(r.base() - 1), None);
        assert_eq!(r.lookup(r.base() + 16 * SPAN), None);

        let a = r
            .take(3, |k| Entry::Class {
                class: 5,
                offset: k as u8,
            })
            .unwrap();
        let b = r
            .take(2, |k| {
                if k == 0 {
                    Entry::Large { spans: 2 }
                } else {
                    Entry::LargeTail
                }
            })
            .unwrap();
        assert_eq!(a, r.base());
        assert_eq!(b, a + 3 * SPAN);
        // SAFETY: both runs were just made readable and writable.
        unsafe {
            core::ptr::write_bytes(a as *mut u8, 0xa5, 3 * SPAN);
            core::ptr::write_bytes(b as *mut u8, 0x5a, 2 * SPAN);
        }
        for off in [0, 1, SPAN - 1, SPAN, 2 * SPAN + 17, 3 * SPAN - 1] {
            let Some(Entry::Class { class, offset }) = r.lookup(a + off) else {
                panic!("no class entry at +{off}");
            };
            assert_eq!(class, 5);
            assert_eq!(offset as usize, off / SPAN);
            assert_eq!(r.run_start(a + off, offset), Some(a));
        }
        assert_eq!(
            r.run_start(a, 1),
            None,
            "a first span has no span before it"
        );
        assert_eq!(r.lookup(b + 5), Some(Entry::Large { spans: 2 }));
        assert_eq!(r.lookup(b + SPAN + 5), Some(Entry::LargeTail));
        assert_eq!(r.lookup(b + 2 * SPAN), Some(Entry::Unused));
    }

    #[test]
    fn a_full_range_and_bad_lengths_are_errors() {
        assert_eq!(Region::reserve(0).err(), Some(Error::BadLength));
        assert_eq!(
            Region::reserve(usize::MAX / 2).err(),
            Some(Error::BadLength)
        );
        let r = Region::reserve(4).unwrap();
        assert_eq!(r.take(0, |_| Entry::LargeTail), Err(Error::BadLength));
        assert!(r.take(3, |_| Entry::LargeTail).is_ok());
        assert_eq!(r.take(2, |_| Entry::LargeTail), Err(Error::Full));
        assert!(r.take(1, |_| Entry::LargeTail).is_ok());
        assert_eq!(r.take(1, |_| Entry::LargeTail), Err(Error::Full));
    }

    /// Resident memory of this process, in bytes (`/proc/self/statm`).
    fn resident() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        // SAFETY: sysconf has no preconditions.
        pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
    }

    #[test]
    fn a_large_reservation_costs_no_memory() {
        // 64 GiB of address space, as the allocator reserves by default.
        // Other tests run meanwhile and touch a few MiB at the most.
        let before = resident();
        let r = Region::reserve(64 << 12).unwrap();
        assert_eq!(r.spans(), 1 << 18);
        let a = r
            .take(1, |_| Entry::Class {
                class: 0,
                offset: 0,
            })
            .unwrap();
        // SAFETY: the run was just made writable.
        unsafe { (a as *mut u64).write(7) };
        assert_eq!(
            r.lookup(a + 8),
            Some(Entry::Class {
                class: 0,
                offset: 0
            })
        );
        let grown = resident().saturating_sub(before);
        assert!(
            grown < 64 << 20,
            "reserving 64 GiB made {grown} bytes resident"
        );
    }

    #[test]
    fn threads_taking_runs_at_once_get_disjoint_ones() {
        let r = Region::reserve(256).unwrap();
        let class = |k: usize| Entry::Class {
            class: 1,
            offset: k as u8,
        };
        let mut runs: Vec<usize> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..32)
                            .map(|_| r.take(2, class).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        runs.sort_unstable();
        for w in runs.windows(2) {
            assert!(
                w[1] - w[0] >= 2 * SPAN,
                "runs {:#x} and {:#x} overlap",
                w[0],
                w[1]
            );
        }
        assert_eq!(runs.len(), 128);
        assert_eq!(r.take(1, |_| Entry::LargeTail), Err(Error::Full));
    }
}
