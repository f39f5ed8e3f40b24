//! [`Stack`]: a per-CPU intrusive LIFO (free list) with stealing.

use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};

use super::kit::guard::{Guarded, Reach};
use super::kit::retry::{self, Step};
use super::kit::sparse::SparseSlots;
use super::kit::word::{pointer_at, word_of};
use super::RemoteError;
use crate::runtime::cpu;
use crate::section::{Index, Order, Outcome};
use crate::stats::Cause;

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

/// One CPU's list: the address of its top node (0 when empty), guarded.
type List = Guarded<AtomicU64>;

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
/// exists: the first push on each CPU allocates it (128 bytes), which a
/// signal handler must not be the one to do.
///
/// Without rseq (or after 16 aborts in a row) an operation takes the guard
/// protocol on its CPU's list: a compare-exchange, no system call (and a
/// fence while other threads use rseq). A signal handler that interrupts
/// its thread while that thread holds a guard never waits for one: its
/// push goes to a shared lock-free list that [`pop`](Self::pop) also takes
/// from. Memory: a pointer per possible CPU, and one 128-byte slot
/// for each CPU that pushed.
///
/// ```
/// use restartable::{Node, Stack};
///
/// static FREE: Stack<[u8; 64]> = Stack::new();
/// FREE.push(Node::new([0; 64]));
/// FREE.push(Node::new([1; 64]));
/// let mut buf = FREE.pop().expect("two nodes were pushed");
/// buf[0] = 7;
/// FREE.push(buf);
/// assert_eq!(FREE.len(), Ok(2));
/// let all = FREE.pop_all_cpus().unwrap();
/// assert_eq!(all.len(), 2);
/// assert!(FREE.is_empty());
/// ```
pub struct Stack<T> {
    lists: SparseSlots<List>,
    /// Nodes pushed where no per-CPU list could be used (a signal handler
    /// whose thread held the list's guard): a lock-free list, pushed with a
    /// compare-exchange and taken whole with a swap, so no ABA.
    stray: AtomicU64,
    /// Nodes on `stray` (a racy count, for `len`).
    strays: AtomicUsize,
    _owns: PhantomData<Box<Node<T>>>,
}

impl<T> Stack<T> {
    /// An empty stack; `const`, and allocates nothing until first use.
    pub const fn new() -> Self {
        Stack {
            lists: SparseSlots::new(),
            stray: AtomicU64::new(0),
            strays: AtomicUsize::new(0),
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
        self.pop_local()
            .or_else(|| self.steal())
            .or_else(|| self.pop_stray())
    }

    /// Pops from the current CPU's list only.
    pub fn pop_local(&self) -> Option<Box<Node<T>>> {
        let popped = retry::sections(Index::Cpu, |t, id| {
            // No slot yet: nothing was ever pushed here.
            let Some(list) = self.lists.get(id.as_usize()) else {
                return Step::Done(0);
            };
            // SAFETY: every node on the list is live (nodes are freed only
            // after being unlinked) and holds its link at offset 0; the head
            // is written only by sections on this CPU (which check the guard)
            // and by guard holders after a fence.
            match unsafe {
                t.pop_guarded(id, Order::Relaxed, list.as_ptr(), 0, 0, list.guard_ptr())
            } {
                Outcome::CompareFailed { .. } => Step::Done(0),
                outcome => Step::from(outcome),
            }
        });
        let head = match popped {
            Ok(head) => {
                // Pairs with the pusher's release commit.
                fence(Ordering::Acquire);
                head
            }
            Err(cause) => self.on_fallback(cause, |head| {
                // SAFETY: the guard is held and the CPU fenced: the list is ours.
                unsafe { take::<T>(head, 1) }.map_or(0, |(first, _)| word_of(Box::into_raw(first)))
            }),
        };
        // SAFETY: unlinked by our commit (or under the guard): ours, from
        // Box::into_raw.
        (head != 0).then(|| unsafe { Box::from_raw(pointer_at::<Node<T>>(head)) })
    }

    /// Takes the whole list of the current CPU (top first).
    pub fn pop_all(&self) -> Vec<Box<Node<T>>> {
        let taken = retry::sections(Index::Cpu, |t, id| {
            let Some(list) = self.lists.get(id.as_usize()) else {
                return Step::Done(0);
            };
            let head = list.load(Ordering::Relaxed);
            if head == 0 {
                return Step::Done(0);
            }
            // SAFETY: as in `pop_local`; committing 0 publishes nothing.
            Step::from(unsafe {
                t.compare_store_guarded(
                    id,
                    Order::Relaxed,
                    list.as_ptr(),
                    head,
                    0,
                    list.guard_ptr(),
                )
            })
            .map(|()| head)
        });
        let chain = match taken {
            Ok(chain) => {
                fence(Ordering::Acquire);
                chain
            }
            Err(cause) => self.on_fallback(cause, |head| head.swap(0, Ordering::Relaxed)),
        };
        // SAFETY: the chain was unlinked from its list: it is ours.
        unsafe { collect(chain) }
    }

    /// Takes every node of CPU `cpu`'s list, from any thread (the guard
    /// protocol: a fence, microseconds).
    ///
    /// # Errors
    /// [`RemoteError::NoSuchCpu`] past [`possible_cpus`](crate::possible_cpus);
    /// [`RemoteError::Fence`] when no fence can be made;
    /// [`RemoteError::Busy`] from a signal handler whose thread holds that
    /// list's guard.
    pub fn pop_all_on(&self, cpu: usize) -> Result<Vec<Box<Node<T>>>, RemoteError> {
        if cpu >= self.lists.len() {
            return Err(RemoteError::NoSuchCpu);
        }
        let chain = self.remote(cpu, |head| head.swap(0, Ordering::Relaxed))?;
        // SAFETY: unlinked under the guard: ours.
        Ok(unsafe { collect(chain.unwrap_or(0)) })
    }

    /// Takes every node of every CPU's list (each under its guard).
    ///
    /// # Errors
    /// As [`pop_all_on`](Self::pop_all_on); nodes taken before the failure
    /// are pushed back on the current CPU.
    pub fn pop_all_cpus(&self) -> Result<Vec<Box<Node<T>>>, RemoteError> {
        let mut all = Vec::new();
        for (cpu, _) in self.lists.iter() {
            match self.pop_all_on(cpu) {
                Ok(nodes) => all.extend(nodes),
                Err(e) => {
                    all.into_iter().for_each(|n| self.push(n));
                    return Err(e);
                }
            }
        }
        // SAFETY: taken whole from the stray list: ours.
        all.extend(unsafe { collect(self.take_strays()) });
        Ok(all)
    }

    /// The number of nodes on all lists. Each CPU's list is counted under
    /// its guard (a fence per CPU that ever pushed, microseconds each), so
    /// the count of each list is exact; the total is a snapshot while other
    /// threads push and pop.
    ///
    /// # Errors
    /// As [`pop_all_on`](Self::pop_all_on).
    pub fn len(&self) -> Result<usize, RemoteError> {
        let mut total = self.strays.load(Ordering::Relaxed);
        for (cpu, _) in self.lists.iter() {
            total += self
                .remote(cpu, |head| {
                    let mut n = 0;
                    let mut at = head.load(Ordering::Relaxed);
                    while at != 0 {
                        n += 1;
                        // SAFETY: the list is ours under the guard; its
                        // nodes are live.
                        at = unsafe { (*pointer_at::<Node<T>>(at)).next.load(Ordering::Relaxed) };
                    }
                    n
                })?
                .unwrap_or(0);
        }
        Ok(total)
    }

    /// True when every list was empty when looked at (a racy look at each
    /// list's head: no fence, no lock).
    pub fn is_empty(&self) -> bool {
        self.stray.load(Ordering::Relaxed) == 0
            && self
                .lists
                .iter()
                .all(|(_, l)| l.load(Ordering::Relaxed) == 0)
    }

    /// Links `first..=last` (a chain whose nodes are ours) on top of the
    /// current CPU's list.
    ///
    /// # Safety
    /// `first..=last` is a chain of live nodes from `Box::into_raw`, reached
    /// from `first` by `next` links, owned by the caller.
    unsafe fn push_chain(&self, first: *mut Node<T>, last: *mut Node<T>) {
        let pushed = retry::sections(Index::Cpu, |t, id| {
            let Some(list) = self.lists.get_or_init(id.as_usize(), List::default) else {
                return Step::Leave(Cause::IdOutOfRange);
            };
            let head = list.load(Ordering::Relaxed);
            // SAFETY: `last` is ours until the commit publishes it.
            unsafe { (*last).next.store(head, Ordering::Relaxed) };
            // SAFETY: as in `pop_local`; the release commit publishes the
            // nodes' contents.
            Step::from(unsafe {
                t.compare_store_guarded(
                    id,
                    Order::Release,
                    list.as_ptr(),
                    head,
                    word_of(first),
                    list.guard_ptr(),
                )
            })
        });
        let Err(cause) = pushed else { return };
        let index = retry::fallback_index(cause, self.lists.len());
        let linked = self.lists.get_or_init(index, List::default).map(|list| {
            list.hold_waiting(Reach::Cpu(index), |head| {
                // SAFETY: the chain is ours; the list is ours under the guard.
                unsafe {
                    (*last)
                        .next
                        .store(head.load(Ordering::Relaxed), Ordering::Relaxed)
                };
                head.store(word_of(first), Ordering::Release);
            })
        });
        if !matches!(linked, Some(Ok(()))) {
            // SAFETY: the caller's chain.
            unsafe { self.push_stray(first, last) };
        }
    }

    /// The fallback path on the current CPU's list: `f` on its head under
    /// the guard; 0 when the list does not exist or this thread cannot hold
    /// its guard now (an outer frame holds it, or holds another guard while
    /// another thread holds this one).
    // Not `#[cold]`: without rseq this is the hot path; out of line
    // only, to keep the section path small.
    #[inline(never)]
    fn on_fallback(&self, cause: Cause, f: impl FnOnce(&AtomicU64) -> u64) -> u64 {
        let index = retry::fallback_index(cause, self.lists.len());
        self.lists
            .get(index)
            .and_then(|list| list.hold_waiting(Reach::Cpu(index), f).ok())
            .unwrap_or(0)
    }

    /// `f` on the head of CPU `cpu`'s list under its guard, from any
    /// thread; `Ok(None)` when the list does not exist.
    fn remote<R>(
        &self,
        cpu: usize,
        f: impl FnOnce(&AtomicU64) -> R,
    ) -> Result<Option<R>, RemoteError> {
        let Some(list) = self.lists.get(cpu) else {
            return Ok(None);
        };
        list.hold(Reach::Cpu(cpu), f)
            .map(Some)
            .map_err(super::refused)
    }

    /// Steals up to [`STEAL_BATCH`] nodes from the first other CPU whose
    /// list is not empty: returns one, pushes the rest locally.
    #[cold]
    fn steal(&self) -> Option<Box<Node<T>>> {
        let here = cpu::fold(cpu::raw_cpu(), self.lists.len());
        let victims = self
            .lists
            .iter()
            .filter(|&(i, l)| i != here && l.load(Ordering::Relaxed) != 0);
        for (cpu, _) in victims {
            // SAFETY: the list is ours under the guard.
            let taken = self.remote(cpu, |head| unsafe { take::<T>(head, STEAL_BATCH) });
            if let Ok(Some(Some((first, rest)))) = taken {
                if let Some((top, bottom)) = rest {
                    // SAFETY: the rest of the batch was unlinked: ours.
                    unsafe { self.push_chain(top, bottom) };
                }
                return Some(first);
            }
        }
        None
    }

    /// Links a chain on the stray list.
    ///
    /// # Safety
    /// As for [`push_chain`](Self::push_chain).
    #[cold]
    unsafe fn push_stray(&self, first: *mut Node<T>, last: *mut Node<T>) {
        let mut n = 1;
        let mut at = first;
        while at != last {
            // SAFETY: a live node of the caller's chain.
            at = pointer_at(unsafe { (*at).next.load(Ordering::Relaxed) });
            n += 1;
        }
        self.strays.fetch_add(n, Ordering::Relaxed);
        let mut head = self.stray.load(Ordering::Relaxed);
        loop {
            // SAFETY: `last` is ours until the compare-exchange publishes it.
            unsafe { (*last).next.store(head, Ordering::Relaxed) };
            match self.stray.compare_exchange_weak(
                head,
                word_of(first),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// Takes the whole stray list; returns its first node's address.
    fn take_strays(&self) -> u64 {
        if self.stray.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let chain = self.stray.swap(0, Ordering::Acquire);
        let mut n = 0;
        let mut at = chain;
        while at != 0 {
            n += 1;
            // SAFETY: the chain was taken whole: ours, and its nodes live.
            at = unsafe { (*pointer_at::<Node<T>>(at)).next.load(Ordering::Relaxed) };
        }
        self.strays.fetch_sub(n, Ordering::Relaxed);
        chain
    }

    /// One node from the stray list; the rest go back on it.
    #[cold]
    fn pop_stray(&self) -> Option<Box<Node<T>>> {
        let first = pointer_at::<Node<T>>(self.take_strays());
        if first.is_null() {
            return None;
        }
        // SAFETY: the chain was taken whole: ours.
        // SAFETY: as above.
        let second = pointer_at::<Node<T>>(unsafe {
            let second = (*first).next.load(Ordering::Relaxed);
            (*first).next.store(0, Ordering::Relaxed);
            second
        });
        if !second.is_null() {
            let mut last = second;
            loop {
                // SAFETY: as above.
                let next = pointer_at::<Node<T>>(unsafe { (*last).next.load(Ordering::Relaxed) });
                if next.is_null() {
                    break;
                }
                last = next;
            }
            // SAFETY: the rest of our chain.
            unsafe { self.push_stray(second, last) };
        }
        // SAFETY: unlinked above: ours, from Box::into_raw.
        Some(unsafe { Box::from_raw(first) })
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
    // Plain loads and stores: under the guard nothing else writes the list
    // or its nodes.
    let first = pointer_at::<Node<T>>(head.load(Ordering::Relaxed));
    if first.is_null() {
        return None;
    }
    let mut last = first;
    for _ in 1..n {
        // SAFETY: nodes on the list are live.
        let next = pointer_at::<Node<T>>(unsafe { (*last).next.load(Ordering::Relaxed) });
        if next.is_null() {
            break;
        }
        last = next;
    }
    // SAFETY: as above.
    let rest_head = unsafe { (*last).next.load(Ordering::Relaxed) };
    head.store(rest_head, Ordering::Relaxed);
    // SAFETY: `last` and `first` are live and now unlinked: ours.
    let second = unsafe {
        (*last).next.store(0, Ordering::Relaxed);
        let second = pointer_at::<Node<T>>((*first).next.load(Ordering::Relaxed));
        (*first).next.store(0, Ordering::Relaxed);
        second
    };
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
        let node = unsafe { Box::from_raw(pointer_at::<Node<T>>(at)) };
        at = node.next.load(Ordering::Relaxed);
        node.next.store(0, Ordering::Relaxed);
        nodes.push(node);
    }
    nodes
}

impl<T> Drop for Stack<T> {
    fn drop(&mut self) {
        for (_, list) in self.lists.iter_mut() {
            let head = list.swap(0, Ordering::Relaxed);
            // SAFETY: `&mut self`: every list is ours.
            drop(unsafe { collect::<T>(head) });
        }
        // SAFETY: as above.
        drop(unsafe { collect::<T>(*self.stray.get_mut()) });
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
        let stack: Stack<usize> = Stack::new();
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
                    let cpu = r % stack.lists.len();
                    let taken = stack.pop_all_on(cpu).unwrap();
                    taken.into_iter().for_each(|n| stack.push(n));
                }
            });
        });
        assert_eq!(stack.len(), Ok(nodes));
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
        let len = stack.lists.len();
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
