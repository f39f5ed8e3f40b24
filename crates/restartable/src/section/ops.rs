//! The vocabulary's operations, written once each in the section language
//! and generated for every architecture; each comes in four flavours
//! (`cpu_id` or `mm_cid`, relaxed or release commit), one section each.
//!
//! Every operation first checks that the thread still has the id the
//! caller chose its data by (`Moved` otherwise, which [`Thread`] reports
//! as an abort). A failed compare leaves through `Changed` (compare 0) or
//! `Changed2`/`Guarded` (compare 1) with the value seen.
//!
//! [`Thread`]: super::Thread

use super::support::{Word, ABORTED, COMMITTED};
use super::{Index, Order};
use crate::structures::SLOT_SHIFT;

/// What one attempt did, decoded from a generated section's `attempt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The commit store executed.
    Committed,
    /// The kernel aborted the section, or the thread has another id.
    Aborted,
    /// The id is out of range (the counter's section only).
    OutOfRange,
    /// Compare `n` failed; the value seen is the output word ([`Raw::out`]).
    CompareFailed(u8),
}

/// Exit 0 of every operation is `Moved`; exit `k > 0` is compare `k - 1`.
#[inline(always)]
fn decode(code: u32) -> Attempt {
    match code {
        COMMITTED => Attempt::Committed,
        ABORTED | 0 => Attempt::Aborted,
        k => Attempt::CompareFailed((k - 1) as u8),
    }
}

/// Expands one operation's section four times: `cpu_id` or `mm_cid`,
/// relaxed or release commit (the body's `commit!` names no order).
macro_rules! flavours {
    ([$cr:ident, $cl:ident, $mr:ident, $ml:ident] $(#[$m:meta])* fn $($rest:tt)*) => {
        crate::section! { #[index(cpu_id)] #[order(relaxed)] $(#[$m])* pub(crate) unsafe fn $cr $($rest)* }
        crate::section! { #[index(cpu_id)] #[order(release)] $(#[$m])* pub(crate) unsafe fn $cl $($rest)* }
        crate::section! { #[index(mm_cid)] #[order(relaxed)] $(#[$m])* pub(crate) unsafe fn $mr $($rest)* }
        crate::section! { #[index(mm_cid)] #[order(release)] $(#[$m])* pub(crate) unsafe fn $ml $($rest)* }
    };
}

/// Calls the `attempt` of the flavour `(index, order)` selects.
macro_rules! attempt {
    ($index:expr, $order:expr, [$cr:ident, $cl:ident, $mr:ident, $ml:ident], ($($arg:expr),*)) => {
        match ($index, $order) {
            (Index::Cpu, Order::Relaxed) => $cr::attempt($($arg),*),
            (Index::Cpu, Order::Release) => $cl::attempt($($arg),*),
            (Index::MmCid, Order::Relaxed) => $mr::attempt($($arg),*),
            (Index::MmCid, Order::Release) => $ml::attempt($($arg),*),
        }
    };
}

flavours! {
    [compare_store_cr, compare_store_cl, compare_store_mr, compare_store_ml]
    /// If `*v == expect`, commit `*v = new`.
    #[exits(Moved, Changed(u64))]
    fn (cpu: u64, v: *mut u64, expect: u64, new: u64) {
        let id = current_id();
        if id != cpu { exit!(Moved) }
        let seen = load64(v);
        if seen != expect { exit!(Changed(seen)) }
        commit!(store64(v, new));
    }
}

flavours! {
    [add_cr, add_cl, add_mr, add_ml]
    /// `*v += count` (wrapping).
    #[exits(Moved)]
    fn (cpu: u64, v: *mut u64, count: u64) {
        let id = current_id();
        if id != cpu { exit!(Moved) }
        let old = load64(v);
        commit!(store64(v, old + count));
    }
}

flavours! {
    [pop_cr, pop_cl, pop_mr, pop_ml]
    /// If `*guard == 0` (acquire) and `*v != expect_not`: commit
    /// `*v = *(*v + offset)` and return the old `*v`.
    #[exits(Moved, Empty(u64), Guarded(u64))]
    fn (cpu: u64, v: *mut u64, expect_not: u64, offset: usize, guard: *const u64) -> u64 {
        let id = current_id();
        if id != cpu { exit!(Moved) }
        let g = load_acquire64(guard);
        if g != 0 { exit!(Guarded(g)) }
        let head = load64(v);
        if head == expect_not { exit!(Empty(head)) }
        let next = load64(head + offset);
        commit!(store64(v, next));
        head
    }
}

flavours! {
    [deref_add_cr, deref_add_cl, deref_add_mr, deref_add_ml]
    /// `**(*p + offset) += count`.
    #[exits(Moved)]
    fn (cpu: u64, p: *const u64, offset: usize, count: u64) {
        let id = current_id();
        if id != cpu { exit!(Moved) }
        let base = load64(p);
        let target = load64(base + offset);
        let old = load64(target);
        commit!(store64(target, old + count));
    }
}

flavours! {
    [compare2_store_cr, compare2_store_cl, compare2_store_mr, compare2_store_ml]
    /// If `*v2 == expect2` (read first, acquire: it may be a guard)
    /// and `*v == expect`, commit `*v = new`.
    #[exits(Moved, Changed(u64), Changed2(u64))]
    fn (cpu: u64, v: *mut u64, expect: u64, v2: *const u64, expect2: u64, new: u64) {
        let id = current_id();
        if id != cpu { exit!(Moved) }
        let seen2 = load_acquire64(v2);
        if seen2 != expect2 { exit!(Changed2(seen2)) }
        let seen = load64(v);
        if seen != expect { exit!(Changed(seen)) }
        commit!(store64(v, new));
    }
}

flavours! {
    [store_then_store_cr, store_then_store_cl, store_then_store_mr, store_then_store_ml]
    /// If `*guard == 0` and `*v == expect`: `*v2 = new2`
    /// (speculative), then commit `*v = new`.
    #[exits(Moved, Changed(u64), Guarded(u64))]
    #[owned(v2)]
    fn (cpu: u64, v: *mut u64, expect: u64, v2: *mut u64, new2: u64, new: u64, guard: *const u64) {
        let id = current_id();
        if id != cpu { exit!(Moved) }
        let g = load_acquire64(guard);
        if g != 0 { exit!(Guarded(g)) }
        let seen = load64(v);
        if seen != expect { exit!(Changed(seen)) }
        store64(v2, new2);
        commit!(store64(v, new));
    }
}

flavours! {
    [memcpy_then_store_cr, memcpy_then_store_cl, memcpy_then_store_mr, memcpy_then_store_ml]
    /// If `*guard == 0` and `*v == expect`: copy `len` bytes from
    /// `src` to `dst` (speculative), then commit `*v = new`.
    #[exits(Moved, Changed(u64), Guarded(u64))]
    #[owned(dst)]
    fn (cpu: u64, v: *mut u64, expect: u64, dst: *mut u8, src: *const u8, len: usize, new: u64, guard: *const u64) {
        let id = current_id();
        if id != cpu { exit!(Moved) }
        let g = load_acquire64(guard);
        if g != 0 { exit!(Guarded(g)) }
        let seen = load64(v);
        if seen != expect { exit!(Changed(seen)) }
        copy(dst, src, len);
        commit!(store64(v, new));
    }
}

crate::section! {
    /// The counter's section: `slot[cpu] += count`, slot `i` being the
    /// `u64` at `base + (i << SLOT_SHIFT)`; `OutOfRange` when
    /// `cpu >= len` (an unregistered area reads as -1).
    #[index(cpu_id)]
    #[exits(OutOfRange)]
    pub(crate) unsafe fn counter_add(base: *mut u8, len: usize, count: u64) {
        let cpu = current_id();
        if cpu >= len { exit!(OutOfRange) }
        let at = base + (cpu << 7);
        let old = load64(at);
        commit!(store64(at, old + count));
    }
}
const _: () = assert!(SLOT_SHIFT == 7, "counter_add's shift is the slot shift");

/// One attempt of the counter's section.
///
/// # Safety
/// `area` is this thread's registered area; `base` points to `len` slots
/// of `1 << SLOT_SHIFT` bytes whose first word only such sections write.
#[inline(always)]
pub(crate) unsafe fn counter_attempt(
    area: *const u8,
    base: *mut u8,
    len: usize,
    count: u64,
) -> Attempt {
    let mut out = 0u64;
    // SAFETY: the caller's contract.
    match unsafe { counter_add::attempt(area, &mut out, base.to_word(), len.to_word(), count) } {
        COMMITTED => Attempt::Committed,
        0 => Attempt::OutOfRange,
        _ => Attempt::Aborted,
    }
}

/// One attempt of an operation: what it did, and its output word (the
/// popped head, or the value a failed compare read).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Raw {
    pub(crate) attempt: Attempt,
    pub(crate) out: u64,
}

/// Writes, for each operation, the function that runs the flavour
/// `(index, order)` selects, with the caller's id as the section's `cpu`.
macro_rules! dispatchers {
    ($($name:ident [$($flavour:ident),*] ($($arg:ident: $ty:ty),*);)*) => {
        /// The operations, each selecting its flavour; arguments as in
        /// [`Thread`](super::Thread)'s methods.
        ///
        /// # Safety (every function)
        /// `area` is this thread's registered area and the module contract
        /// of [`section`](super) holds for the pointers.
        // The vocabulary's argument lists, plus index, order, area and id.
        #[allow(clippy::too_many_arguments)]
        pub(crate) mod dispatch {
            use super::*;
            $(
                #[inline(always)]
                pub(crate) unsafe fn $name(
                    index: Index,
                    order: Order,
                    area: *const u8,
                    cpu: u32,
                    $($arg: $ty),*
                ) -> Raw {
                    let mut out = 0u64;
                    // SAFETY: the caller's contract; `out` is ours.
                    let code = unsafe {
                        attempt!(
                            index,
                            order,
                            [$($flavour),*],
                            (area, &mut out, u64::from(cpu) $(, $arg.to_word())*)
                        )
                    };
                    Raw { attempt: decode(code), out }
                }
            )*
        }
    };
}

dispatchers! {
    compare_store [compare_store_cr, compare_store_cl, compare_store_mr, compare_store_ml]
        (v: *mut u64, expect: u64, new: u64);
    add [add_cr, add_cl, add_mr, add_ml]
        (v: *mut u64, count: u64);
    pop [pop_cr, pop_cl, pop_mr, pop_ml]
        (v: *mut u64, expect_not: u64, offset: usize, guard: *const u64);
    deref_add [deref_add_cr, deref_add_cl, deref_add_mr, deref_add_ml]
        (p: *const u64, offset: usize, count: u64);
    compare2_store [compare2_store_cr, compare2_store_cl, compare2_store_mr, compare2_store_ml]
        (v: *mut u64, expect: u64, v2: *const u64, expect2: u64, new: u64);
    store_then_store [store_then_store_cr, store_then_store_cl, store_then_store_mr, store_then_store_ml]
        (v: *mut u64, expect: u64, v2: *mut u64, new2: u64, new: u64, guard: *const u64);
    memcpy_then_store [memcpy_then_store_cr, memcpy_then_store_cl, memcpy_then_store_mr, memcpy_then_store_ml]
        (v: *mut u64, expect: u64, dst: *mut u8, src: *const u8, len: usize, new: u64, guard: *const u64);
}

#[cfg(all(test, not(miri)))]
mod tests {
    //! The model checker on two of the operations, whose commits x86-64
    //! fuses into one `add` to memory.
    use restartable_lang::model::{check, Case, Check, Memory, Outcome};

    #[test]
    fn the_fused_add_commits_meet_their_specifications() {
        let add = restartable_lang::parse(super::add_cl::SOURCE).unwrap();
        let mut m = Memory::new();
        let v = m.alloc(8);
        m.set(v, 40);
        let spec = |m: &mut Memory, id: u32, i: &[u64]| {
            if id as u64 != i[0] {
                return Outcome::Exit(0, vec![]);
            }
            let x = m.get(i[1]);
            m.set(i[1], x.wrapping_add(i[2]));
            Outcome::Committed(vec![])
        };
        let observe = move |m: &Memory| vec![m.get(v)];
        let cases = [(3, 3, 2), (3, 4, 2), (0, 0, u64::MAX)]
            .map(|(id, cpu, n)| Case {
                memory: m.clone(),
                id,
                inputs: vec![cpu, v, n],
            })
            .to_vec();
        let r = check(&Check {
            section: &add,
            spec: &spec,
            observe: &observe,
            cases,
            others: vec![],
            remote: None,
        })
        .unwrap();
        assert!(r.aborts > 0);

        let counter = restartable_lang::parse(super::counter_add::SOURCE).unwrap();
        let mut m = Memory::new();
        let base = m.alloc(4 * 128);
        let spec = |m: &mut Memory, id: u32, i: &[u64]| {
            if id as u64 >= i[1] {
                return Outcome::Exit(0, vec![]);
            }
            let at = i[0] + 128 * id as u64;
            let x = m.get(at);
            m.set(at, x + i[2]);
            Outcome::Committed(vec![])
        };
        m.set(base + 128, 5);
        let observe = move |m: &Memory| (0..4).map(|k| m.get(base + 128 * k)).collect();
        let cases = [0, 1, 3, 4, u32::MAX]
            .map(|id| Case {
                memory: m.clone(),
                id,
                inputs: vec![base, 4, 7],
            })
            .to_vec();
        let r = check(&Check {
            section: &counter,
            spec: &spec,
            observe: &observe,
            cases,
            others: vec![],
            remote: None,
        })
        .unwrap();
        assert!(r.aborts > 0);
    }
}
