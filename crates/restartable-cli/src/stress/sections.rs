//! The per-CPU structures the stress modes hammer, each built directly on
//! one or two operations of `restartable::section`, in the style of the
//! kernel's rseq selftests: a counter, a spinlock, an intrusive list, a
//! pointer buffer, a record buffer (memcpy) and a pointer-chasing add. Each
//! checks itself exactly at the end.
//!
//! These structures exist to test the sections, so they retry aborted
//! sections without limit (yielding after each exhausted round of retries)
//! instead of having a fallback path; they need rseq.

use std::cell::UnsafeCell;
use std::sync::atomic::{fence, AtomicU64, Ordering};

use restartable::section::{Id, Index, Order, Outcome, Thread};

use super::Verdict;

/// Operations that exhausted their retries and went round again.
pub static EXHAUSTED: AtomicU64 = AtomicU64::new(0);

/// One slot per possible CPU, two cache lines apart.
#[repr(C, align(128))]
struct Slot<T>(T);

/// A `u64` that sections and plain code share; all access is raw.
#[derive(Default)]
struct Word(UnsafeCell<u64>);
// SAFETY: every access goes through critical sections or is serialized by
// the structure's protocol (documented at each use).
unsafe impl Sync for Word {}
impl Word {
    fn ptr(&self) -> *mut u64 {
        self.0.get()
    }
    /// A racy-but-atomic read (aligned 8-byte loads are single-copy atomic).
    fn load(&self) -> u64 {
        // SAFETY: the pointer is valid; AtomicU64 has the layout of u64.
        unsafe { (*(self.ptr() as *const AtomicU64)).load(Ordering::Acquire) }
    }
}

/// Runs a section until it commits or fails a compare, retrying aborts
/// (16 at a time, then yielding) without limit.
#[inline(always)]
fn run<T>(t: &Thread, index: Index, mut attempt: impl FnMut(Id) -> Outcome<T>) -> (Id, Outcome<T>) {
    loop {
        let mut last = None;
        let result = t.retry(index, |id| {
            last = Some(id);
            attempt(id)
        });
        match (result, last) {
            (Ok(outcome), Some(id)) => return (id, outcome),
            _ => {
                EXHAUSTED.fetch_add(1, Ordering::Relaxed);
                std::thread::yield_now();
            }
        }
    }
}

/// Runs a section until it commits: a failed compare (another thread on
/// the CPU changed the word since the caller read it) is retried too.
#[inline(always)]
fn commit<T>(t: &Thread, index: Index, mut attempt: impl FnMut(Id) -> Outcome<T>) -> T {
    loop {
        if let (_, Outcome::Committed(value)) = run(t, index, &mut attempt) {
            return value;
        }
    }
}

#[inline(always)]
fn slot_index(id: Id, len: usize) -> usize {
    // mm_cid and CPU ids are below the possible CPUs; a larger one would be
    // a kernel bug, caught here rather than indexing out of bounds.
    if id.as_usize() >= len {
        out_of_range(id, len);
    }
    id.as_usize()
}

/// Out of line, so the check costs the hot path a compare and nothing else.
#[cold]
#[inline(never)]
fn out_of_range(id: Id, len: usize) -> ! {
    panic!("id {} out of range {len}", id.as_usize())
}

/// What the modes share: one operation, and the exact check at the end.
pub trait Structure: Sync {
    fn op(&self, t: &Thread, index: Index, order: Order);
    /// Verifies the final state after `ops` operations in all.
    fn verify(&self, ops: u64) -> Verdict;
}

fn slots<T>(make: impl FnMut() -> T) -> Vec<Slot<T>> {
    let mut make = make;
    (0..restartable::possible_cpus())
        .map(|_| Slot(make()))
        .collect()
}

/// `add`: a per-CPU counter incremented by a critical section.
pub struct Increment {
    slots: Vec<Slot<Word>>,
}

impl Increment {
    pub fn new() -> Self {
        Increment {
            slots: slots(Word::default),
        }
    }
}

impl Structure for Increment {
    #[inline(always)]
    fn op(&self, t: &Thread, index: Index, order: Order) {
        run(t, index, |id| {
            let v = self.slots[slot_index(id, self.slots.len())].0.ptr();
            // SAFETY: the word of `id` is written only by sections with that id.
            unsafe { t.add(id, order, v, 1) }
        });
    }
    fn verify(&self, ops: u64) -> Verdict {
        let sum: u64 = self.slots.iter().map(|s| s.0.load()).sum();
        Verdict::new(sum, ops, true, format!("sum {sum}, expected {ops}"))
    }
}

/// `deref-add`: `**(*base + 8 * id) += 1` through a table of per-CPU
/// pointers.
pub struct DerefAdd {
    counters: Vec<Slot<Word>>,
    table: Vec<u64>,
    base: u64,
}

impl DerefAdd {
    pub fn new() -> Self {
        let counters = slots(Word::default);
        let table: Vec<u64> = counters.iter().map(|c| c.0.ptr() as u64).collect();
        let base = table.as_ptr() as u64;
        DerefAdd {
            counters,
            table,
            base,
        }
    }
}

impl Structure for DerefAdd {
    #[inline(always)]
    fn op(&self, t: &Thread, index: Index, order: Order) {
        run(t, index, |id| {
            let offset = 8 * slot_index(id, self.table.len());
            // SAFETY: `base` holds the table's address and entry `id` points
            // at the counter of `id`, written only by sections with that id.
            unsafe { t.deref_add(id, order, &self.base, offset, 1) }
        });
    }
    fn verify(&self, ops: u64) -> Verdict {
        let sum: u64 = self.counters.iter().map(|s| s.0.load()).sum();
        Verdict::new(sum, ops, true, format!("sum {sum}, expected {ops}"))
    }
}

/// A per-CPU spinlock taken with `compare_store` (0 -> 1) and released with a
/// store-release, guarding a counter updated with a plain load and store.
pub struct Spinlock {
    slots: Vec<Slot<(Word, Word)>>,
}

impl Spinlock {
    pub fn new() -> Self {
        Spinlock {
            slots: slots(|| (Word::default(), Word::default())),
        }
    }
}

impl Structure for Spinlock {
    #[inline(always)]
    fn op(&self, t: &Thread, index: Index, order: Order) {
        let slot = loop {
            let (id, outcome) = run(t, index, |id| {
                let lock = self.slots[slot_index(id, self.slots.len())].0 .0.ptr();
                // SAFETY: the lock word of `id` is written by sections with
                // that id, and by its holder's release store below.
                unsafe { t.compare_store(id, order, lock, 0, 1) }
            });
            match outcome {
                Outcome::Committed(()) => break &self.slots[id.as_usize()].0,
                _ => std::hint::spin_loop(),
            }
        };
        fence(Ordering::Acquire);
        // The lock is held: nobody else touches the counter (from any CPU).
        // SAFETY: exclusive access under the lock.
        unsafe { *slot.1.ptr() += 1 };
        // SAFETY: the lock word is a valid u64; AtomicU64 has its layout.
        unsafe { (*(slot.0.ptr() as *const AtomicU64)).store(0, Ordering::Release) };
    }
    fn verify(&self, ops: u64) -> Verdict {
        let sum: u64 = self.slots.iter().map(|s| s.0 .1.load()).sum();
        let held = self.slots.iter().filter(|s| s.0 .0.load() != 0).count();
        Verdict::new(
            sum,
            ops,
            held == 0,
            format!("sum {sum}, expected {ops}; {held} locks still held"),
        )
    }
}

#[repr(C)]
struct Node {
    value: u64,
    next: u64,
}

/// Per-CPU intrusive LIFO lists: pop with `pop`, push with a release
/// `compare_store` of the head. Each operation pops a node and pushes it
/// back (on whatever CPU the thread then runs); no node may be lost or
/// duplicated.
pub struct List {
    heads: Vec<Slot<Word>>,
    nodes: Vec<Node>,
}

impl List {
    pub fn new(nodes: usize) -> Self {
        let heads = slots(Word::default);
        let mut nodes: Vec<Node> = (0..nodes as u64)
            .map(|value| Node { value, next: 0 })
            .collect();
        // One block of consecutive nodes per CPU's list: nodes of two CPUs
        // alternating in the array would put both CPUs' writes on the same
        // cache lines (at 2 threads, twice the cost of a pop and push).
        let per_cpu = nodes.len().div_ceil(heads.len()).max(1);
        for i in 0..nodes.len() {
            let head = &heads[i / per_cpu].0;
            // SAFETY: single-threaded set-up.
            unsafe {
                nodes[i].next = *head.ptr();
                *head.ptr() = &nodes[i] as *const Node as u64;
            }
        }
        List { heads, nodes }
    }

    #[inline(always)]
    fn pop(&self, t: &Thread, index: Index, order: Order) -> Option<*mut Node> {
        let (_, outcome) = run(t, index, |id| {
            let head = self.heads[slot_index(id, self.heads.len())].0.ptr();
            // SAFETY: the head of `id` is written only by sections with that
            // id; every node on the list stays valid (nodes are never freed
            // while the lists exist).
            unsafe { t.pop(id, order, head, 0, core::mem::offset_of!(Node, next)) }
        });
        match outcome {
            Outcome::Committed(node) => Some(node as *mut Node),
            _ => None,
        }
    }

    #[inline(always)]
    fn push(&self, t: &Thread, index: Index, node: *mut Node) {
        commit(t, index, |id| {
            let head = self.heads[slot_index(id, self.heads.len())].0.ptr();
            // SAFETY: `head` is valid; reading it races only with sections of
            // other threads on this CPU, and the compare below catches that.
            let expect = unsafe { (*(head as *const AtomicU64)).load(Ordering::Relaxed) };
            // SAFETY: the node is ours (popped, not on any list).
            unsafe { (*node).next = expect };
            // SAFETY: as in `pop`; release publishes `next`.
            unsafe { t.compare_store(id, Order::Release, head, expect, node as u64) }
        });
    }
}

impl Structure for List {
    #[inline(always)]
    fn op(&self, t: &Thread, index: Index, order: Order) {
        if let Some(node) = self.pop(t, index, order) {
            self.push(t, index, node);
        }
    }
    fn verify(&self, _ops: u64) -> Verdict {
        let expected = self.nodes.len() as u64;
        let mut seen = vec![false; self.nodes.len()];
        let mut count = 0usize;
        for head in &self.heads {
            let mut p = head.0.load();
            while p != 0 {
                let node = p as *const Node;
                // SAFETY: all threads are done; nodes are live.
                let (value, next) = unsafe { ((*node).value, (*node).next) };
                let v = value as usize;
                if v >= seen.len() || seen[v] {
                    let detail = format!("node {value} duplicated or corrupt");
                    return Verdict::new(count as u64, expected, false, detail);
                }
                seen[v] = true;
                count += 1;
                p = next;
                if count > self.nodes.len() {
                    let detail = "cycle in a list".to_owned();
                    return Verdict::new(count as u64, expected, false, detail);
                }
            }
        }
        Verdict::new(
            count as u64,
            expected,
            true,
            format!("{count} of {expected} nodes found"),
        )
    }
}

/// Per-CPU buffers of pointers: push with `store_then_store` (the entry,
/// then the offset, released), pop with `compare2_store` (offset and entry
/// unchanged). Each operation pops one pointer and pushes it back.
pub struct Buffer {
    slots: Vec<Slot<(Word, Box<[Word]>)>>,
    items: Vec<u64>,
}

impl Buffer {
    pub fn new(items: usize) -> Self {
        let cpus = restartable::possible_cpus();
        // Room for every item in every buffer: a push can never find it full.
        let slots: Vec<Slot<(Word, Box<[Word]>)>> = (0..cpus)
            .map(|_| {
                Slot((
                    Word::default(),
                    (0..items).map(|_| Word::default()).collect(),
                ))
            })
            .collect();
        let items: Vec<u64> = (0..items as u64).collect();
        for (i, item) in items.iter().enumerate() {
            let slot = &slots[i % cpus].0;
            // SAFETY: single-threaded set-up.
            unsafe {
                let off = *slot.0.ptr();
                *slot.1[off as usize].ptr() = item as *const u64 as u64;
                *slot.0.ptr() = off + 1;
            }
        }
        Buffer { slots, items }
    }
}

impl Structure for Buffer {
    #[inline(always)]
    fn op(&self, t: &Thread, index: Index, order: Order) {
        let (_, popped) = run(t, index, |id| {
            let slot = &self.slots[slot_index(id, self.slots.len())].0;
            let off = slot.0.load();
            if off == 0 {
                return Outcome::CompareFailed { which: 0, seen: 0 };
            }
            let entry = &slot.1[off as usize - 1];
            let item = entry.load();
            // SAFETY: offset and entries of `id` are written only by
            // sections with that id.
            unsafe { t.compare2_store(id, order, slot.0.ptr(), off, entry.ptr(), item, off - 1) }
                .map(|()| item)
        });
        let Outcome::Committed(item) = popped else {
            return;
        };
        commit(t, index, |id| {
            let slot = &self.slots[slot_index(id, self.slots.len())].0;
            let off = slot.0.load();
            if off as usize >= slot.1.len() {
                return Outcome::CompareFailed {
                    which: 0,
                    seen: off,
                };
            }
            // SAFETY: as above; capacity checked just before (a concurrent
            // change of `off` fails the compare).
            unsafe {
                t.store_then_store(
                    id,
                    Order::Release,
                    slot.0.ptr(),
                    off,
                    slot.1[off as usize].ptr(),
                    item,
                    off + 1,
                )
            }
        });
    }
    fn verify(&self, _ops: u64) -> Verdict {
        let expected = self.items.len() as u64;
        let base = self.items.as_ptr() as u64;
        let mut seen = vec![false; self.items.len()];
        let mut count = 0;
        for slot in &self.slots {
            for entry in &slot.0 .1[..slot.0 .0.load() as usize] {
                let i = (entry.load().wrapping_sub(base) / 8) as usize;
                if i >= seen.len() || seen[i] {
                    let detail = format!("pointer {:#x} duplicated or foreign", entry.load());
                    return Verdict::new(count, expected, false, detail);
                }
                seen[i] = true;
                count += 1;
            }
        }
        Verdict::new(
            count,
            expected,
            true,
            format!("{count} of {expected} pointers found"),
        )
    }
}

/// A 32-byte record: an id and a checksum derived from it.
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub struct Record {
    id: u64,
    check: u64,
    pad: [u64; 2],
}

impl Record {
    pub fn new(id: u64) -> Self {
        Record {
            id,
            check: id.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            pad: [!id, id ^ 0xa5a5],
        }
    }
    pub fn valid(&self) -> bool {
        *self == Record::new(self.id)
    }
}

impl PartialEq for Record {
    fn eq(&self, other: &Self) -> bool {
        (self.id, self.check, self.pad) == (other.id, other.check, other.pad)
    }
}

/// One CPU's record buffer: the number of records, then the records.
type RecordSlot = Slot<(Word, Box<[UnsafeCell<Record>]>)>;

/// Per-CPU buffers of records copied in and out with `memcpy_then_store`.
pub struct MemcpyBuffer {
    slots: Vec<RecordSlot>,
    items: usize,
}

// SAFETY: records are written only by sections of their CPU's id (or during
// single-threaded set-up and verification).
unsafe impl Sync for MemcpyBuffer {}

impl MemcpyBuffer {
    pub fn new(items: usize) -> Self {
        let cpus = restartable::possible_cpus();
        let slots: Vec<RecordSlot> = (0..cpus)
            .map(|_| {
                Slot((
                    Word::default(),
                    (0..items)
                        .map(|_| UnsafeCell::new(Record::default()))
                        .collect(),
                ))
            })
            .collect();
        for i in 0..items {
            let slot = &slots[i % cpus].0;
            // SAFETY: single-threaded set-up.
            unsafe {
                let off = *slot.0.ptr();
                *slot.1[off as usize].get() = Record::new(i as u64);
                *slot.0.ptr() = off + 1;
            }
        }
        MemcpyBuffer { slots, items }
    }
}

impl Structure for MemcpyBuffer {
    #[inline(always)]
    fn op(&self, t: &Thread, index: Index, order: Order) {
        let mut out = Record::default();
        let size = core::mem::size_of::<Record>();
        let (_, popped) = run(t, index, |id| {
            let slot = &self.slots[slot_index(id, self.slots.len())].0;
            let off = slot.0.load();
            if off == 0 {
                return Outcome::CompareFailed { which: 0, seen: 0 };
            }
            let src = slot.1[off as usize - 1].get() as *const u8;
            // SAFETY: offset and records of `id` are written only by sections
            // with that id; `out` is ours.
            unsafe {
                t.memcpy_then_store(
                    id,
                    order,
                    slot.0.ptr(),
                    off,
                    &mut out as *mut Record as *mut u8,
                    src,
                    size,
                    off - 1,
                )
            }
        });
        if !matches!(popped, Outcome::Committed(())) {
            return;
        }
        commit(t, index, |id| {
            let slot = &self.slots[slot_index(id, self.slots.len())].0;
            let off = slot.0.load();
            if off as usize >= slot.1.len() {
                return Outcome::CompareFailed {
                    which: 0,
                    seen: off,
                };
            }
            let dst = slot.1[off as usize].get() as *mut u8;
            // SAFETY: as above.
            unsafe {
                t.memcpy_then_store(
                    id,
                    Order::Release,
                    slot.0.ptr(),
                    off,
                    dst,
                    &out as *const Record as *const u8,
                    size,
                    off + 1,
                )
            }
        });
    }
    fn verify(&self, _ops: u64) -> Verdict {
        let expected = self.items as u64;
        let mut seen = vec![false; self.items];
        let mut count = 0;
        for slot in &self.slots {
            for rec in &slot.0 .1[..slot.0 .0.load() as usize] {
                // SAFETY: all threads are done.
                let rec = unsafe { *rec.get() };
                let i = rec.id as usize;
                if !rec.valid() || i >= seen.len() || seen[i] {
                    let detail = format!("record {} torn, duplicated or foreign", rec.id);
                    return Verdict::new(count, expected, false, detail);
                }
                seen[i] = true;
                count += 1;
            }
        }
        Verdict::new(
            count,
            expected,
            true,
            format!("{count} of {expected} records found intact"),
        )
    }
}
