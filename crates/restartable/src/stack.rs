//! [`Stack`]: a per-CPU intrusive LIFO (free list) with stealing.

use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU64, Ordering};

use crate::guard::{self, Reach};
use crate::ops::{node_at, word_of, Fallback, MAX_ATTEMPTS};
use crate::section::{Id, Index, Order, Outcome, Thread};
use crate::table::Table;
use crate::{cpu, stats, RemoteError};

/// An element of a [`Stack`]: a value and the link the stack threads
/// through it, so pushing and popping never allocate. Make one with
/// [`Node::new`]; it derefs to the value.
#[repr(C)]
pub struct Node<T> {
    /// The next node's address (0 at the bottom). First, at offset 0, where
    /// the pop section reads it.
    next: AtomicU64,
    value: T,
}

impl<T> Node<T> {
    /// A boxed node holding `value`, ready to push.
    pub fn new(value: T) -> Box<Node<T>> {
        Box::new(Node {
            next: AtomicU64::new(0),
            value,
        })
    }

    /// The value, dropping the node.
    #[allow(clippy::boxed_local)] // nodes live in boxes: this is the way out
    pub fn into_inner(self: Box<Self>) -> T {
        self.value
    }
}

impl<T> Deref for Node<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> DerefMut for Node<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T: core::fmt::Debug> core::fmt::Debug for Node<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("Node").field(&self.value).finish()
    }
}

/// One CPU's list.
#[derive(Default)]
struct Slot {
    /// Address of the top node, 0 when empty.
    head: AtomicU64,
    /// Non-zero while a thread works on this list without a section.
    guard: AtomicU64,
}

/// Nodes taken from another CPU at once when the local list is empty.
const STEAL_BATCH: usize = 32;

/// A per-CPU LIFO of [`Node`]s: a free list. [`push`](Self::push) and
/// [`pop_local`](Self::pop_local) work on the list of the CPU the thread
/// runs on, each with one critical section (a guarded compare-store to
/// push, the guarded `pop` section to pop): no lock, no atomic
/// instruction, no ABA problem (only threads on that CPU touch its list,
/// and the kernel aborts a section that one of them interrupts).
/// [`pop`](Self::pop) steals from other CPUs when the local list is empty:
/// it guards the other CPU's list, fences that CPU, and takes up to 32
/// nodes (one is returned, the rest go on the local list).
///
/// Order is last-in first-out per CPU; across CPUs there is none.
///
/// Operations are async-signal-safe once the slot of the CPU they run on
/// exists: the first operation on each CPU allocates it (128 bytes), which
/// a signal handler must not be the one to do.
///
/// Without rseq (or after 16 aborts in a row) an operation takes the guard
/// protocol on its CPU's list (a compare-exchange, and a fence while other
/// threads use rseq). Memory: a pointer per possible CPU, and one 128-byte
/// slot for each CPU that used the stack.
///
/// ```
/// use restartable::{Node, Stack};
///
/// let free: Stack<[u8; 64]> = Stack::new();
/// free.push(Node::new([0; 64]));
/// free.push(Node::new([1; 64]));
/// let mut buf = free.pop().expect("two nodes were pushed");
/// buf[0] = 7;
/// free.push(buf);
/// let all = free.pop_all_cpus().unwrap();
/// assert_eq!(all.len(), 2);
/// ```
pub struct Stack<T> {
    slots: Table<Slot>,
    _owns: PhantomData<Box<Node<T>>>,
}

impl<T> Stack<T> {
    /// An empty stack; `const`, and allocates nothing until first use.
    pub const fn new() -> Self {
        Stack {
            slots: Table::new(),
            _owns: PhantomData,
        }
    }

    /// Pushes `node` on the current CPU's list.
    pub fn push(&self, node: Box<Node<T>>) {
        let node = Box::into_raw(node);
        // SAFETY: `node` came from Box::into_raw and is ours alone.
        unsafe { self.push_chain(node, node) }
    }

    /// Pops from the current CPU's list, or, when it is empty, steals from
    /// another CPU's. `None` when every list was empty at the time it was
    /// looked at, or when the others could not be reached (no fence can be
    /// made: see [`fence::status`](crate::fence::status)).
    pub fn pop(&self) -> Option<Box<Node<T>>> {
        self.pop_local().or_else(|| self.steal())
    }

    /// Pops from the current CPU's list only.
    pub fn pop_local(&self) -> Option<Box<Node<T>>> {
        if let Some(t) = Thread::current() {
            if let Ok(node) = self.pop_section(&t) {
                return node;
            }
        }
        let (index, slot) = self.fallback_slot()?;
        self.guarded(slot, index, |head| {
            // SAFETY: the guard is held and the CPU fenced: the list is ours.
            unsafe { take(head, 1) }
        })
        .map(|(first, _)| first)
    }

    /// Takes the whole list of the current CPU (top first).
    pub fn pop_all(&self) -> Vec<Box<Node<T>>> {
        let chain = match Thread::current().map(|t| self.pop_all_section(&t)) {
            Some(Ok(chain)) => chain,
            _ => match self.fallback_slot() {
                Some((index, slot)) => {
                    self.guarded(slot, index, |head| head.swap(0, Ordering::Relaxed))
                }
                None => 0,
            },
        };
        // SAFETY: the chain was unlinked from its list: it is ours.
        unsafe { collect(chain) }
    }

    /// Takes every node of CPU `cpu`'s list, from any thread (the guard
    /// protocol: a fence, microseconds).
    ///
    /// # Errors
    /// [`RemoteError::NoSuchCpu`] past [`possible_cpus`](crate::possible_cpus);
    /// [`RemoteError::Fence`] when no fence can be made.
    pub fn pop_all_on(&self, cpu: usize) -> Result<Vec<Box<Node<T>>>, RemoteError> {
        if cpu >= self.slots.len() {
            return Err(RemoteError::NoSuchCpu);
        }
        let Some(slot) = self.slots.get(cpu) else {
            return Ok(Vec::new());
        };
        let chain = self
            .guarded_on(slot, cpu, |head| head.swap(0, Ordering::Relaxed))
            .map_err(RemoteError::Fence)?;
        // SAFETY: unlinked under the guard: ours.
        Ok(unsafe { collect(chain) })
    }

    /// Takes every node of every CPU's list (each under its guard).
    ///
    /// # Errors
    /// As [`pop_all_on`](Self::pop_all_on); nodes taken before the failure
    /// are pushed back on the current CPU.
    pub fn pop_all_cpus(&self) -> Result<Vec<Box<Node<T>>>, RemoteError> {
        let mut all = Vec::new();
        for (cpu, _) in self.slots.iter() {
            match self.pop_all_on(cpu) {
                Ok(nodes) => all.extend(nodes),
                Err(e) => {
                    all.into_iter().for_each(|n| self.push(n));
                    return Err(e);
                }
            }
        }
        Ok(all)
    }

    /// The number of nodes on all lists (`&mut self`: no other thread is
    /// using the stack, so the count is exact).
    pub fn len(&mut self) -> usize {
        self.slots
            .iter_mut()
            .map(|(_, s)| {
                let mut n = 0;
                let mut at = *s.head.get_mut();
                while at != 0 {
                    n += 1;
                    // SAFETY: `&mut self`: the lists are ours and stable.
                    at = unsafe { (*node_at::<Node<T>>(at)).next.load(Ordering::Relaxed) };
                }
                n
            })
            .sum()
    }

    /// True when no list holds a node.
    pub fn is_empty(&mut self) -> bool {
        self.slots.iter_mut().all(|(_, s)| *s.head.get_mut() == 0)
    }

    /// One attempt loop at the push section; links `first..=last` (a chain
    /// whose nodes are ours) on top of the current CPU's list.
    ///
    /// # Safety
    /// `first..=last` is a chain of live nodes from `Box::into_raw`, reached
    /// from `first` by `next` links, owned by the caller.
    unsafe fn push_chain(&self, first: *mut Node<T>, last: *mut Node<T>) {
        if let Some(t) = Thread::current() {
            let (mut aborts, mut waits) = (0, 0);
            while aborts < MAX_ATTEMPTS {
                let Some(id) = t.id(Index::Cpu) else { break };
                let Some(slot) = self.slots.get_or_init(id.as_usize(), Slot::default) else {
                    break;
                };
                let head = slot.head.load(Ordering::Relaxed);
                // SAFETY: `last` is ours until the commit publishes it.
                unsafe { (*last).next.store(head, Ordering::Relaxed) };
                // SAFETY: the head is written only by sections on this CPU
                // (which check the guard) and by guard holders after a
                // fence; the release commit publishes the nodes' contents.
                let outcome = unsafe {
                    t.compare_store_guarded(
                        id,
                        Order::Release,
                        slot.head.as_ptr(),
                        head,
                        word_of(first),
                        slot.guard.as_ptr(),
                    )
                };
                match outcome {
                    Outcome::Committed(()) => return,
                    Outcome::Aborted => {
                        stats::record_abort();
                        aborts += 1;
                    }
                    Outcome::CompareFailed { which: 1, seen } => {
                        if guard::give_up(seen, &mut waits) {
                            aborts = MAX_ATTEMPTS;
                        }
                    }
                    // Another push or pop on this CPU came between.
                    Outcome::CompareFailed { .. } => {}
                }
            }
        }
        // The table always has a slot for a folded index.
        let Some((index, slot)) = self.fallback_slot() else {
            return;
        };
        self.guarded(slot, index, |head| {
            // SAFETY: the chain is ours; the list is ours under the guard.
            unsafe {
                (*last)
                    .next
                    .store(head.load(Ordering::Relaxed), Ordering::Relaxed)
            };
            head.store(word_of(first), Ordering::Release);
        });
    }

    /// The thread's id and its CPU's list.
    #[inline]
    fn current(&self, t: &Thread) -> Result<(Id, &Slot), Fallback> {
        let id = t.id(Index::Cpu).ok_or(Fallback)?;
        let slot = self
            .slots
            .get_or_init(id.as_usize(), Slot::default)
            .ok_or(Fallback)?;
        Ok((id, slot))
    }

    /// The pop section, retried; `Err` when the fallback should run.
    fn pop_section(&self, t: &Thread) -> Result<Option<Box<Node<T>>>, Fallback> {
        let (mut aborts, mut waits) = (0, 0);
        while aborts < MAX_ATTEMPTS {
            let (id, slot) = self.current(t)?;
            // SAFETY: every node on the list is live (nodes are freed only
            // after being unlinked) and holds its link at offset 0; the head
            // is written as described in `push_chain`.
            let outcome = unsafe {
                t.pop_guarded(
                    id,
                    Order::Relaxed,
                    slot.head.as_ptr(),
                    0,
                    0,
                    slot.guard.as_ptr(),
                )
            };
            match outcome {
                Outcome::Committed(node) => {
                    // Pairs with the pusher's release commit.
                    core::sync::atomic::fence(Ordering::Acquire);
                    // SAFETY: unlinked by our commit: ours, from Box::into_raw.
                    return Ok(Some(unsafe { Box::from_raw(node_at::<Node<T>>(node)) }));
                }
                Outcome::CompareFailed { which: 0, .. } => return Ok(None),
                Outcome::CompareFailed { seen, .. } => {
                    if guard::give_up(seen, &mut waits) {
                        return Err(Fallback);
                    }
                }
                Outcome::Aborted => {
                    stats::record_abort();
                    aborts += 1;
                }
            }
        }
        Err(Fallback)
    }

    /// Unlinks the whole current list with one section (compare the head,
    /// commit 0); returns the chain's first node address.
    fn pop_all_section(&self, t: &Thread) -> Result<u64, Fallback> {
        let (mut aborts, mut waits) = (0, 0);
        while aborts < MAX_ATTEMPTS {
            let (id, slot) = self.current(t)?;
            let head = slot.head.load(Ordering::Relaxed);
            if head == 0 {
                return Ok(0);
            }
            // SAFETY: as in `push_chain`; committing 0 publishes nothing.
            let outcome = unsafe {
                t.compare_store_guarded(
                    id,
                    Order::Relaxed,
                    slot.head.as_ptr(),
                    head,
                    0,
                    slot.guard.as_ptr(),
                )
            };
            match outcome {
                Outcome::Committed(()) => {
                    core::sync::atomic::fence(Ordering::Acquire);
                    return Ok(head);
                }
                Outcome::CompareFailed { which: 1, seen } => {
                    if guard::give_up(seen, &mut waits) {
                        return Err(Fallback);
                    }
                }
                Outcome::CompareFailed { .. } => {}
                Outcome::Aborted => {
                    stats::record_abort();
                    aborts += 1;
                }
            }
        }
        Err(Fallback)
    }

    /// Steals up to [`STEAL_BATCH`] nodes from the first other CPU whose
    /// list is not empty: returns one, pushes the rest locally.
    #[cold]
    fn steal(&self) -> Option<Box<Node<T>>> {
        let here = cpu::fold(cpu::raw_cpu(), self.slots.len());
        let victims = self
            .slots
            .iter()
            .filter(|&(i, s)| i != here && s.head.load(Ordering::Relaxed) != 0);
        for (cpu, slot) in victims {
            // SAFETY: the list is ours under the guard.
            let taken = self.guarded_on(slot, cpu, |head| unsafe { take(head, STEAL_BATCH) });
            if let Ok(Some((first, rest))) = taken {
                if let Some((top, bottom)) = rest {
                    // SAFETY: the rest of the batch was unlinked: ours.
                    unsafe { self.push_chain(top, bottom) };
                }
                return Some(first);
            }
        }
        None
    }

    /// The current CPU's slot, for the fallback path.
    fn fallback_slot(&self) -> Option<(usize, &Slot)> {
        stats::record_fallback(Thread::current().is_some());
        let index = cpu::fold(cpu::raw_cpu(), self.slots.len());
        self.slots
            .get_or_init(index, Slot::default)
            .map(|s| (index, s))
    }

    /// `f` on the head of `slot` under its guard, waiting while no fence
    /// can be made (the fallback path has nowhere else to go).
    fn guarded<R>(&self, slot: &Slot, index: usize, mut f: impl FnMut(&AtomicU64) -> R) -> R {
        let key = (self as *const Self as usize, index);
        guard::hold_waiting(&slot.guard, key, Reach::Cpu(index), |_| {
            core::sync::atomic::fence(Ordering::Acquire);
            f(&slot.head)
        })
    }

    fn guarded_on<R>(
        &self,
        slot: &Slot,
        index: usize,
        f: impl FnOnce(&AtomicU64) -> R,
    ) -> Result<R, crate::fence::FenceError> {
        let key = (self as *const Self as usize, index);
        guard::hold(&slot.guard, key, Reach::Cpu(index), |_| {
            core::sync::atomic::fence(Ordering::Acquire);
            f(&slot.head)
        })
    }
}

/// A chain's first and last node.
type Chain<T> = (*mut Node<T>, *mut Node<T>);

/// Nodes taken from a list: the first, and the chain of the others.
type Taken<T> = Option<(Box<Node<T>>, Option<Chain<T>>)>;

/// Unlinks up to `n` (>= 1) nodes from the top of `head`: the first as a
/// box, and the others (if any) as a chain.
///
/// # Safety
/// The caller owns the list (guard held, CPU fenced).
unsafe fn take<T>(head: &AtomicU64, n: usize) -> Taken<T> {
    let first = node_at::<Node<T>>(head.load(Ordering::Relaxed));
    if first.is_null() {
        return None;
    }
    let mut last = first;
    for _ in 1..n {
        // SAFETY: nodes on the list are live.
        let next = node_at::<Node<T>>(unsafe { (*last).next.load(Ordering::Relaxed) });
        if next.is_null() {
            break;
        }
        last = next;
    }
    // SAFETY: as above.
    let rest_head = unsafe { (*last).next.swap(0, Ordering::Relaxed) };
    head.store(rest_head, Ordering::Relaxed);
    // SAFETY: `first` is live and now unlinked.
    let second = node_at::<Node<T>>(unsafe { (*first).next.swap(0, Ordering::Relaxed) });
    // SAFETY: unlinked above: ours, from Box::into_raw.
    let first = unsafe { Box::from_raw(first) };
    Some((first, (!second.is_null()).then_some((second, last))))
}

/// The nodes of an unlinked chain, as boxes.
///
/// # Safety
/// The chain is the caller's.
unsafe fn collect<T>(mut at: u64) -> Vec<Box<Node<T>>> {
    let mut nodes = Vec::new();
    while at != 0 {
        // SAFETY: a live node of the caller's chain, from Box::into_raw.
        let node = unsafe { Box::from_raw(node_at::<Node<T>>(at)) };
        at = node.next.swap(0, Ordering::Relaxed);
        nodes.push(node);
    }
    nodes
}

impl<T> Drop for Stack<T> {
    fn drop(&mut self) {
        for (_, slot) in self.slots.iter_mut() {
            let head = core::mem::take(slot.head.get_mut());
            // SAFETY: `&mut self`: every list is ours.
            drop(unsafe { collect::<T>(head) });
        }
    }
}

impl<T> Default for Stack<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> core::fmt::Debug for Stack<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Stack").finish_non_exhaustive()
    }
}

// SAFETY: nodes move between threads through the lists (`T: Send`); the
// stack hands out owned boxes, never shared references to `T`.
unsafe impl<T: Send> Sync for Stack<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Stack<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ends the process if a test has not finished in `secs` seconds: a
    /// corrupted list can loop forever instead of failing.
    fn watchdog(secs: u64, what: &'static str) {
        if cfg!(miri) {
            return;
        }
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(secs));
            eprintln!("{what}: not finished after {secs} s (a corrupted list?)");
            std::process::abort();
        });
    }

    #[test]
    fn every_node_comes_back_exactly_once() {
        watchdog(120, "every_node_comes_back_exactly_once");
        let threads = if cfg!(miri) { 3 } else { 8 };
        let rounds = if cfg!(miri) { 20 } else { 20_000 };
        let nodes = threads * 4;
        let mut stack: Stack<usize> = Stack::new();
        for i in 0..nodes {
            stack.push(Node::new(i));
        }
        std::thread::scope(|s| {
            for t in 0..threads {
                let stack = &stack;
                s.spawn(move || {
                    let mut held = Vec::new();
                    for r in 0..rounds {
                        if let Some(n) = stack.pop() {
                            held.push(n);
                        }
                        if r % 3 == t % 3 {
                            held.drain(..).for_each(|n| stack.push(n));
                        }
                        if r % 1000 == 999 {
                            held.extend(stack.pop_all());
                        }
                    }
                    held.into_iter().for_each(|n| stack.push(n));
                });
            }
            s.spawn(|| {
                for r in 0..if cfg!(miri) { 3 } else { 300 } {
                    let cpu = r % stack.slots.len();
                    let taken = stack.pop_all_on(cpu).unwrap();
                    taken.into_iter().for_each(|n| stack.push(n));
                }
            });
        });
        assert_eq!(stack.len(), nodes);
        let mut seen: Vec<usize> = stack
            .pop_all_cpus()
            .unwrap()
            .into_iter()
            .map(|n| **n)
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..nodes).collect::<Vec<_>>());
        assert!(stack.is_empty());
    }

    #[test]
    fn pop_steals_from_other_cpus() {
        let stack: Stack<u32> = Stack::new();
        let len = stack.slots.len();
        // Put nodes on every CPU's list through the remote path's twin: a
        // push from a thread pinned nowhere lands on its CPU; then take
        // them all back through pop, which must steal where needed.
        for i in 0..(3 * len as u32) {
            stack.push(Node::new(i));
        }
        let mut got = 0;
        while let Some(n) = stack.pop() {
            drop(n);
            got += 1;
        }
        assert_eq!(got, 3 * len);
        assert!(stack.pop().is_none());
        assert_eq!(stack.pop_all_on(len).err(), Some(RemoteError::NoSuchCpu));
    }
}
