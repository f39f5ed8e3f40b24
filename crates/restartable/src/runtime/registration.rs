//! Per-thread rseq registration, cooperating with libc (glibc manual,
//! "Restartable Sequences"; `man 2 rseq`).
//!
//! On first use in a thread the runtime decides, once:
//! 1. [`DISABLE_ENV`](crate::DISABLE_ENV) is `1`: no rseq, no system call.
//! 2. libc registered (`__rseq_size != 0`) and this thread's area at
//!    `thread pointer + __rseq_offset` holds a valid `cpu_id`: adopt it.
//! 3. Otherwise register an area owned by the library: memory that is never
//!    freed, unregistered by a thread-local destructor when the thread exits
//!    and then reused by a later thread.
//! 4. If the kernel refuses, remember why and use the fallback path.
//!
//! The only field ever written is `rseq_cs`.

use core::cell::Cell;
use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::AtomicU32;
use std::sync::Mutex;

use super::{process, stats, sys, token};
use crate::abi::{self, Rseq};
use crate::arch;

/// Who registered the calling thread's rseq area.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// libc (glibc 2.35+) registered it; the library adopted it.
    Libc,
    /// The library registered its own area for this thread.
    Library,
    /// Nobody: the thread uses the fallback path.
    None,
}

impl Owner {
    /// `"libc"`, `"library"` or `"none"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Owner::Libc => "libc",
            Owner::Library => "library",
            Owner::None => "none",
        }
    }
}

/// Why a thread does not use rseq.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FallbackReason {
    /// `RESTARTABLE_DISABLE=1` was set: the rseq system call is never made.
    DisabledByUser,
    /// This operating system or architecture has no rseq support here (also
    /// the answer under Miri).
    Unsupported,
    /// The kernel refused registration with this `errno`: `ENOSYS` (old
    /// kernel, seccomp, valgrind, qemu-user, gVisor), `EPERM` (seccomp, or
    /// another registrant's signature), `EINVAL` (another area is already
    /// registered for this thread).
    Refused(i32),
    /// The thread called [`opt_out_current_thread`].
    OptedOut,
    /// The thread is exiting: its area was unregistered by its thread-local
    /// destructor, so operations from later destructors use the fallback.
    ThreadExiting,
    /// The thread is still deciding (only seen by code that re-enters the
    /// library while its first use is in progress, which signal blocking
    /// otherwise prevents); the call is served by the fallback path.
    Pending,
}

impl core::fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FallbackReason::DisabledByUser => {
                f.write_str("disabled by the user (RESTARTABLE_DISABLE=1)")
            }
            FallbackReason::Unsupported => f.write_str("rseq is not supported on this platform"),
            FallbackReason::Refused(errno) => {
                write!(f, "the kernel refused registration: {}", errno_name(*errno))
            }
            FallbackReason::Pending => f.write_str("registration in progress on this thread"),
            FallbackReason::OptedOut => {
                f.write_str("the thread opted out (opt_out_current_thread)")
            }
            FallbackReason::ThreadExiting => {
                f.write_str("the thread is exiting (its area was unregistered)")
            }
        }
    }
}

/// Symbolic name of the errno values registration can produce.
fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::ENOSYS => "ENOSYS (no rseq: old kernel, seccomp, emulator or sandbox)",
        libc::EPERM => "EPERM (seccomp, or another registrant's signature)",
        libc::EINVAL => "EINVAL (another area is already registered for this thread)",
        libc::EBUSY => "EBUSY",
        libc::EFAULT => "EFAULT",
        _ => "unexpected errno",
    }
}

/// The calling thread's registration, as decided on its first use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Registration {
    /// Who owns the registered area.
    pub owner: Owner,
    /// Bytes of `struct rseq` the kernel maintains for this thread (20, 28,
    /// ...); 0 when rseq is not in use.
    pub feature_size: u32,
    /// Why rseq is not in use; `None` when it is.
    pub fallback: Option<FallbackReason>,
}

impl Registration {
    /// True when the thread's operations run as rseq critical sections.
    pub fn rseq_available(&self) -> bool {
        self.fallback.is_none()
    }
}

/// The calling thread's registration, registering it first if needed.
pub fn registration() -> Registration {
    let _ = area();
    let state = STATE.get();
    match state.owner {
        OWNER_LIBC | OWNER_LIBRARY if AREA.get().addr() > BUSY => Registration {
            owner: if state.owner == OWNER_LIBC {
                Owner::Libc
            } else {
                Owner::Library
            },
            feature_size: state.feature_size,
            fallback: None,
        },
        _ => Registration {
            owner: Owner::None,
            feature_size: 0,
            fallback: Some(state.reason.unwrap_or(FallbackReason::Pending)),
        },
    }
}

// AREA holds the thread's area, or one of these marker addresses (an area
// is 32-byte aligned, so no real address collides with them).
const UNDECIDED: usize = 0;
const UNAVAILABLE: usize = 1;
const BUSY: usize = 2;

const fn marker(addr: usize) -> *const Rseq {
    core::ptr::without_provenance(addr)
}

const OWNER_NONE: u8 = 0;
const OWNER_LIBC: u8 = 1;
const OWNER_LIBRARY: u8 = 2;

#[derive(Clone, Copy)]
struct ThreadState {
    owner: u8,
    feature_size: u32,
    reason: Option<FallbackReason>,
}

/// Room for the kernel's `struct rseq` as it grows: the library registers
/// `max(32, feature size)` bytes when that fits here, else the original 32.
const OWNED_AREA_SIZE: usize = 128;
const OWNED_AREA_ALIGN: u32 = 64;

#[repr(C, align(64))]
struct OwnedArea {
    rseq: Rseq,
    _tail: [AtomicU32; (OWNED_AREA_SIZE - 32) / 4],
}

/// Areas the library registers live in memory that is never freed: a
/// thread takes one from this pool (or leaks a new one) and gives it back
/// only after unregistering it at thread exit. Thread-local storage would
/// not do: a library loaded with `dlopen` has its thread-locals freed by
/// `dlclose` while its threads may still be registered, and the kernel
/// would go on writing into reused memory.
static POOL: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// The calling thread's own area (`len` 0 once unregistered), returned to
/// [`POOL`] when the thread exits.
struct OwnedSlot {
    area: Cell<*const OwnedArea>,
    len: Cell<u32>,
}

impl OwnedSlot {
    /// Unregisters the thread's own area, if it has one; from then on the
    /// thread takes the fallback path, for `reason`. The area goes back to
    /// the pool only when the thread exits (`recycle`), so a handle or a
    /// section of this thread that is still in flight (a signal handler
    /// opting out between a liveness check and its section) can only ever
    /// touch memory no other thread has registered.
    fn release(&self, reason: FallbackReason) {
        AREA.set(marker(UNAVAILABLE));
        STATE.set(ThreadState {
            owner: OWNER_NONE,
            feature_size: 0,
            reason: Some(reason),
        });
        let area = self.area.get();
        if area.is_null() || self.len.get() == 0 {
            return;
        }
        let unregistered = sys::rseq_unregister(
            area as *mut core::ffi::c_void,
            self.len.get(),
            abi::SIGNATURE,
        )
        .is_ok();
        if unregistered {
            self.len.set(0);
        } else {
            // Still registered: never reuse it.
            self.area.set(core::ptr::null());
        }
    }
}

impl Drop for OwnedSlot {
    fn drop(&mut self) {
        // Operations in destructors that run after this one take the
        // fallback path.
        self.release(FallbackReason::ThreadExiting);
        let area = self.area.replace(core::ptr::null());
        if !area.is_null() {
            give_back(area);
        }
    }
}

/// Makes the calling thread stop using rseq: from now on its operations
/// take the fallback path (correct alongside threads that use rseq). The
/// library's own area, if it registered one for this thread, is
/// unregistered; libc's stays registered (it belongs to libc) but is no
/// longer used. [`registration`] then reports [`FallbackReason::OptedOut`].
///
/// Meant for threads that must not depend on rseq (a thread about to be
/// single-stepped, tests of the fallback path).
pub fn opt_out_current_thread() {
    sys::with_signals_blocked(|| {
        if OWNED
            .try_with(|slot| slot.release(FallbackReason::OptedOut))
            .is_err()
        {
            AREA.set(marker(UNAVAILABLE));
        }
    });
}

thread_local! {
    static AREA: Cell<*const Rseq> = const { Cell::new(marker(UNDECIDED)) };
    /// libc's area of this thread when libc registered it, also when this
    /// thread does not run sections (rseq disabled, opted out): the fallback
    /// paths read the CPU number from it, as glibc's `sched_getcpu` does,
    /// without a call. Null otherwise.
    static LIBC_AREA: Cell<*const Rseq> = const { Cell::new(core::ptr::null()) };
    static STATE: Cell<ThreadState> = const {
        Cell::new(ThreadState { owner: OWNER_NONE, feature_size: 0, reason: None })
    };
    static OWNED: OwnedSlot = const {
        OwnedSlot { area: Cell::new(core::ptr::null()), len: Cell::new(0) }
    };
}

/// A reference to the calling thread's registered area. It is neither
/// `Send` nor `Sync`: the area belongs to this thread.
#[derive(Clone, Copy)]
pub(crate) struct AreaRef {
    ptr: NonNull<Rseq>,
    _not_send: PhantomData<*const Rseq>,
}

impl AreaRef {
    #[inline(always)]
    pub(crate) fn get(&self) -> &Rseq {
        // SAFETY: the area is libc's or our thread-local one; both live until
        // this thread exits, and an AreaRef cannot leave the thread.
        unsafe { self.ptr.as_ref() }
    }

    #[inline(always)]
    pub(crate) fn as_ptr(&self) -> *const Rseq {
        self.ptr.as_ptr()
    }

    /// Clears `rseq_cs` after a section. The kernel would clear it lazily,
    /// but until then it points into this library's code and data; if the
    /// library is unloaded (`dlclose`) meanwhile, the kernel's next look at
    /// it kills the process (`man 2 rseq`: the descriptor must stay valid
    /// while `rseq_cs` points to it). One store to a line the section just
    /// wrote.
    #[inline(always)]
    pub(crate) fn detach(&self) {
        self.get().set_rseq_cs(0);
    }
}

/// The calling thread's registered area, or `None` when the thread uses the
/// fallback path. The first call in a thread registers it.
#[inline(always)]
pub(crate) fn area() -> Option<AreaRef> {
    let ptr = AREA.get();
    if ptr.addr() > BUSY {
        // SAFETY: only `decide` stores addresses above BUSY, and they are
        // non-null pointers to live areas.
        let ptr = unsafe { NonNull::new_unchecked(ptr as *mut Rseq) };
        Some(AreaRef {
            ptr,
            _not_send: PhantomData,
        })
    } else if ptr.addr() == UNDECIDED {
        decide()
    } else {
        None
    }
}

/// True while `area` is still the calling thread's registered area: false
/// after [`opt_out_current_thread`] or the thread-exit destructor released
/// it (the pool may then hand it to another thread), so a handle kept from
/// before must not be used.
#[inline(always)]
pub(crate) fn is_current(area: AreaRef) -> bool {
    core::ptr::eq(AREA.get(), area.as_ptr())
}

/// Set once any thread of the process has registered or adopted an area:
/// until then no critical section can be running anywhere, so the fallback
/// paths need no fence.
static ANY_SECTIONS: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Whether any thread of this process may run critical sections.
///
/// A sequentially consistent load: a caller that set a guard with a
/// sequentially consistent read-modify-write just before, and reads false
/// here, is ordered before the first registration's store and fence, so
/// every section that thread runs later sees the guard.
#[inline]
pub(crate) fn sections_in_process() -> bool {
    ANY_SECTIONS.load(core::sync::atomic::Ordering::SeqCst)
}

/// The feature size of the calling thread's registration (0 without rseq).
#[inline]
pub(crate) fn feature_size() -> u32 {
    STATE.get().feature_size
}

#[cold]
#[inline(never)]
fn decide() -> Option<AreaRef> {
    // With signals blocked no handler can run a first use of its own in the
    // middle of this one, so every operation of the thread, handlers
    // included, sees the decision made exactly once.
    let area = sys::with_signals_blocked(|| {
        let current = AREA.get();
        if current.addr() != UNDECIDED {
            // Decided by a handler that ran just before the signals were
            // blocked.
            return current;
        }
        AREA.set(marker(BUSY));
        stats::thread_started();
        token::init();
        LIBC_AREA.set(libc_area(&process::process_info()).unwrap_or(core::ptr::null()));
        let (area, state) = match choose() {
            Ok((area, owner, feature_size)) => (
                {
                    // SeqCst: pairs with the guard-taking compare-exchange
                    // and the load in `sections_in_process`.
                    ANY_SECTIONS.store(true, core::sync::atomic::Ordering::SeqCst);
                    // A full fence, so this thread's later section loads (of
                    // guard words) cannot pass the store on aarch64 either.
                    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
                    area
                },
                ThreadState {
                    owner,
                    feature_size,
                    reason: None,
                },
            ),
            Err(reason) => (
                marker(UNAVAILABLE),
                ThreadState {
                    owner: OWNER_NONE,
                    feature_size: 0,
                    reason: Some(reason),
                },
            ),
        };
        STATE.set(state);
        AREA.set(area);
        area
    });
    (area.addr() > BUSY).then(|| AreaRef {
        // SAFETY: only live, non-null areas are stored above BUSY.
        ptr: unsafe { NonNull::new_unchecked(area as *mut Rseq) },
        _not_send: PhantomData,
    })
}

/// The CPU number from libc's area of the calling thread, when libc
/// registered it (see `LIBC_AREA`).
#[inline]
pub(crate) fn libc_cpu_id() -> Option<i32> {
    // SAFETY: a non-null LIBC_AREA is this thread's libc area, which lives
    // as long as the thread; we only load from it.
    let area = unsafe { LIBC_AREA.get().as_ref()? };
    let cpu = area.cpu_id();
    (cpu >= 0).then_some(cpu)
}

/// libc's registered area of the calling thread: at
/// `thread pointer + __rseq_offset` when `__rseq_size != 0`, aligned, and
/// reporting a CPU (libc registers the threads it creates; a raw clone, or
/// a registration that failed, is not registered).
fn libc_area(info: &process::ProcessInfo) -> Option<*const Rseq> {
    if cfg!(miri) || !info.libc.registered() {
        return None;
    }
    let ptr = arch::thread_pointer()?.wrapping_offset(info.libc.offset?) as *const Rseq;
    if !ptr.is_aligned() {
        return None;
    }
    // SAFETY: libc placed this thread's area at tp + __rseq_offset; we only
    // load from it.
    (unsafe { &*ptr }.cpu_id() >= 0).then_some(ptr)
}

fn choose() -> Result<(*const Rseq, u8, u32), FallbackReason> {
    if cfg!(miri) || abi::SIGNATURE == 0 {
        return Err(FallbackReason::Unsupported);
    }
    let info = process::process_info();
    if info.disabled_by_user {
        return Err(FallbackReason::DisabledByUser);
    }
    if let (Some(ptr), Some(size)) = (libc_area(&info), info.libc.size) {
        return Ok((
            ptr,
            OWNER_LIBC,
            process::libc_feature_size(size, info.kernel_feature_size),
        ));
    }
    register_owned(info.kernel_feature_size, info.kernel_align)
}

fn register_owned(
    kernel_feature: Option<u32>,
    kernel_align: Option<u32>,
) -> Result<(*const Rseq, u8, u32), FallbackReason> {
    let feature = kernel_feature.unwrap_or(abi::ORIG_FEATURE_SIZE);
    let align = kernel_align
        .unwrap_or(abi::ORIG_AREA_SIZE)
        .max(abi::ORIG_AREA_SIZE);
    let wanted_len = feature.max(abi::ORIG_AREA_SIZE);
    // The original 32-byte registration is accepted by every kernel; use it
    // when the kernel wants more room or alignment than the area has.
    let (len, feature) = if wanted_len as usize <= OWNED_AREA_SIZE && align <= OWNED_AREA_ALIGN {
        (wanted_len, feature)
    } else {
        (abi::ORIG_AREA_SIZE, feature.min(abi::ORIG_AREA_SIZE))
    };
    // Past this thread's thread-local destructors there is no slot to
    // unregister from at exit: stay on the fallback path.
    let Ok(true) = OWNED.try_with(|slot| slot.area.get().is_null()) else {
        return Err(FallbackReason::ThreadExiting);
    };
    let recycled = POOL.lock().ok().and_then(|mut pool| pool.pop());
    let ptr = match recycled {
        Some(addr) => addr as *const OwnedArea,
        None => Box::leak(Box::new(OwnedArea {
            rseq: Rseq::new(),
            _tail: [const { AtomicU32::new(0) }; (OWNED_AREA_SIZE - 32) / 4],
        })) as *const OwnedArea,
    };
    let raw = ptr as *mut core::ffi::c_void;
    // SAFETY: the area is never freed (leaked, or recycled from the pool
    // after its previous thread unregistered it) and is 64-byte aligned,
    // enough for `len` (checked above).
    match unsafe { sys::rseq_register(raw, len, abi::SIGNATURE) } {
        Ok(()) => {
            // SAFETY: `ptr` is the live area registered just above.
            let area = unsafe { &(*ptr).rseq };
            if area.cpu_id() >= 0 {
                OWNED.with(|slot| {
                    slot.area.set(ptr);
                    slot.len.set(len);
                });
                Ok((ptr.cast::<Rseq>(), OWNER_LIBRARY, feature))
            } else {
                // Registered but not reporting a CPU: do not trust it. Only
                // an area the kernel let go of may be reused.
                if sys::rseq_unregister(raw, len, abi::SIGNATURE).is_ok() {
                    give_back(ptr);
                }
                Err(FallbackReason::Refused(libc::EINVAL))
            }
        }
        Err(errno) => {
            give_back(ptr);
            Err(FallbackReason::Refused(errno))
        }
    }
}

/// Returns an area that is not registered to the pool.
fn give_back(area: *const OwnedArea) {
    if let Ok(mut pool) = POOL.lock() {
        pool.push(area as usize);
    }
}
