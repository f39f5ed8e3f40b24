//! The object-reuse group: take an object, write one word of it, give it
//! back.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use restartable::{Node, Pool, Stack};

use super::Variant;
use crate::bench::harness::{self, Budget, Measured, Workload};

/// The reused object: 32 bytes, of which an operation writes one word (a
/// touch count). Every object made and dropped is tallied, and its touches
/// are added up when it is dropped, so a run can check that no object was
/// lost or duplicated and that every operation touched exactly one.
#[derive(Debug)]
struct Obj([u64; 4]);

static MADE: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static TOUCHES: AtomicU64 = AtomicU64::new(0);

impl Obj {
    fn new() -> Obj {
        MADE.fetch_add(1, Ordering::Relaxed);
        Obj([0; 4])
    }

    #[inline(always)]
    fn touch(&mut self) {
        self.0[0] += 1;
    }
}

impl Default for Obj {
    fn default() -> Obj {
        Obj::new()
    }
}

impl Drop for Obj {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        TOUCHES.fetch_add(self.0[0], Ordering::Relaxed);
    }
}

/// sharded_slab resets an object when it is released; these objects carry
/// nothing to reset (a `Pool` does not reset them either), and the touch
/// count must survive for the final check.
impl sharded_slab::Clear for Obj {
    fn clear(&mut self) {}
}

/// (made, dropped, touches) so far.
fn tally() -> [u64; 3] {
    [&MADE, &DROPPED, &TOUCHES].map(|c| c.load(Ordering::Relaxed))
}

/// Takes an object from `take`, yielding until one is there.
#[inline(always)]
fn take<T>(mut take: impl FnMut() -> Option<T>) -> T {
    loop {
        match take() {
            Some(o) => return o,
            None => std::thread::yield_now(),
        }
    }
}

struct PoolWork(Pool<Obj>);
impl Workload for PoolWork {
    #[inline(always)]
    fn op(&self) {
        self.0.get().touch();
    }
}

struct StackWork(Stack<Obj>);
impl Workload for StackWork {
    #[inline(always)]
    fn op(&self) {
        let mut node = take(|| self.0.pop());
        node.touch();
        self.0.push(node);
    }
}

struct ArrayQueueWork(crossbeam_queue::ArrayQueue<Box<Obj>>);
impl Workload for ArrayQueueWork {
    #[inline(always)]
    fn op(&self) {
        let mut o = take(|| self.0.pop());
        o.touch();
        // Cannot fail: this thread just made room. Dropping it would show.
        let _ = self.0.push(o);
    }
}

struct SegQueueWork(crossbeam_queue::SegQueue<Box<Obj>>);
impl Workload for SegQueueWork {
    #[inline(always)]
    fn op(&self) {
        let mut o = take(|| self.0.pop());
        o.touch();
        self.0.push(o);
    }
}

// Boxed like every structure here: an object is its own allocation, handed
// around by pointer, never copied in and out of the structure.
#[allow(clippy::vec_box)]
struct MutexVecWork(Mutex<Vec<Box<Obj>>>);
impl Workload for MutexVecWork {
    #[inline(always)]
    fn op(&self) {
        let mut o = take(|| self.0.lock().ok().and_then(|mut v| v.pop()));
        o.touch();
        if let Ok(mut v) = self.0.lock() {
            v.push(o);
        }
    }
}

struct ShardedSlabWork(sharded_slab::Pool<Obj>);
impl Workload for ShardedSlabWork {
    #[inline(always)]
    fn op(&self) {
        let key = take(|| self.0.create_with(Obj::touch));
        self.0.clear(key);
    }
}

thread_local! {
    #[allow(clippy::vec_box)] // as for MutexVecWork
    static CACHE: RefCell<Vec<Box<Obj>>> = const { RefCell::new(Vec::new()) };
}

/// A per-thread cache: see [`Variant::ThreadLocal`].
struct ThreadLocalWork;
impl Workload for ThreadLocalWork {
    #[inline(always)]
    fn op(&self) {
        let mut o = CACHE
            .with_borrow_mut(Vec::pop)
            .unwrap_or_else(|| Box::new(Obj::new()));
        o.touch();
        CACHE.with_borrow_mut(|c| c.push(o));
    }
    fn thread_done(&self) {
        drop(CACHE.take());
    }
}

/// Runs the object-reuse workload `make` builds (objects it makes count),
/// then `finish` drops it with every object it holds: exact when every
/// object made was dropped and the touches add up to the operations.
fn reuse<W: Workload>(
    make: impl FnOnce() -> W,
    threads: u32,
    budget: Budget,
    finish: impl FnOnce(W),
) -> Result<(Measured, bool), String> {
    let before = tally();
    let work = make();
    let m = harness::run(&work, threads, budget)?;
    finish(work);
    let [made, dropped, touches] = tally();
    let exact = made - before[0] == dropped - before[1] && touches - before[2] == m.ops;
    Ok((m, exact))
}

fn boxes(n: usize) -> impl Iterator<Item = Box<Obj>> {
    (0..n).map(|_| Box::new(Obj::new()))
}

pub(super) fn measure(
    variant: Variant,
    threads: u32,
    budget: Budget,
    fill: usize,
) -> Result<(Measured, bool), String> {
    match variant {
        Variant::Pool => reuse(|| PoolWork(Pool::new(Obj::new)), threads, budget, drop),
        Variant::Stack => reuse(
            || {
                let stack = Stack::new();
                for _ in 0..fill {
                    stack.push(Node::new(Obj::new()));
                }
                StackWork(stack)
            },
            threads,
            budget,
            // Dropping the stack drops the nodes on every CPU's list.
            drop,
        ),
        Variant::ArrayQueue => reuse(
            || {
                let q = crossbeam_queue::ArrayQueue::new(fill);
                boxes(fill).for_each(|o| drop(q.push(o)));
                ArrayQueueWork(q)
            },
            threads,
            budget,
            drop,
        ),
        Variant::SegQueue => reuse(
            || {
                SegQueueWork(boxes(fill).fold(crossbeam_queue::SegQueue::new(), |q, o| {
                    q.push(o);
                    q
                }))
            },
            threads,
            budget,
            drop,
        ),
        Variant::MutexVec => reuse(
            || MutexVecWork(Mutex::new(boxes(fill).collect())),
            threads,
            budget,
            drop,
        ),
        Variant::ShardedSlab => reuse(
            || ShardedSlabWork(sharded_slab::Pool::new()),
            threads,
            budget,
            drop,
        ),
        Variant::ThreadLocal => reuse(|| ThreadLocalWork, threads, budget, drop),
        other => Err(format!("{} is not an object-reuse variant", other.name())),
    }
}
