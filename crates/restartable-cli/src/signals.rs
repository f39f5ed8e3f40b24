//! The signal storm used by `restartable stress`: a per-thread timer
//! delivering SIGUSR1 to its own thread a fixed interval after each
//! handler returns, whose handler runs a caller-chosen action (an
//! operation on the structure under test).

use std::cell::Cell;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// The handler's action; set once before any timer starts.
static ACTION: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());
/// How many times the handler ran its action.
pub static DELIVERED: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    let action = ACTION.load(Ordering::Acquire);
    if !action.is_null() {
        // SAFETY: ACTION only ever holds a `fn()` stored by `install`.
        let f: fn() = unsafe { std::mem::transmute::<*mut (), fn()>(action) };
        f();
        DELIVERED.fetch_add(1, Ordering::Relaxed);
    }
    rearm();
}

thread_local! {
    /// This thread's storm timer and its period, while a [`ThreadTimer`]
    /// runs (a null timer otherwise). Read by the handler, so a plain
    /// `const` cell with no destructor.
    static TIMER: Cell<(libc::timer_t, libc::timespec)> =
        const { Cell::new((std::ptr::null_mut(), ZERO)) };
}

const ZERO: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: 0,
};

/// Arms this thread's timer for one more period, counted from now: the
/// next signal comes a full period after this handler ends, so the code
/// it interrupted always gets that long to run. (A periodic timer would
/// starve it once a handler, slowed by injected delays and aborts, takes
/// longer than the period: the next signal would be pending on return.)
fn rearm() {
    let (timer, period) = TIMER.get();
    if !timer.is_null() {
        arm(timer, period);
    }
}

/// Arms `timer` once, `period` from now; the `timer_settime` result.
fn arm(timer: libc::timer_t, period: libc::timespec) -> libc::c_int {
    let spec = libc::itimerspec {
        it_interval: ZERO,
        it_value: period,
    };
    // SAFETY: `timer` is a live timer of this thread (the handler's copy is
    // cleared before it is deleted); timer_settime is async-signal-safe.
    unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) }
}

/// Installs the SIGUSR1 handler running `action` (must be async-signal-safe).
pub fn install(action: fn()) -> Result<(), String> {
    ACTION.store(action as *mut (), Ordering::Release);
    // SAFETY: a zeroed sigaction is a valid starting point; the handler is
    // an `extern "C" fn(c_int)` as SA_SIGINFO is not set.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "sigaction failed: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// A timer signalling the thread that created it `interval_us`
/// microseconds after each signal's handler returns (and after the start),
/// until dropped (on that same thread).
pub struct ThreadTimer(libc::timer_t);

impl ThreadTimer {
    pub fn start(interval_us: u64) -> Result<Self, String> {
        // SAFETY: sigevent is plain data; zeroed then filled in. gettid has
        // no preconditions; timer_create writes the id into `timer`.
        unsafe {
            let mut sev: libc::sigevent = std::mem::zeroed();
            sev.sigev_notify = libc::SIGEV_THREAD_ID;
            sev.sigev_signo = libc::SIGUSR1;
            sev.sigev_notify_thread_id = libc::gettid();
            let mut timer: libc::timer_t = std::mem::zeroed();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut timer) != 0 {
                return Err(format!(
                    "timer_create failed: {}",
                    std::io::Error::last_os_error()
                ));
            }
            let period = libc::timespec {
                tv_sec: (interval_us / 1_000_000) as _,
                tv_nsec: ((interval_us % 1_000_000) * 1000) as libc::c_long,
            };
            // One-shot; the handler re-arms it (see `rearm`).
            TIMER.set((timer, period));
            if arm(timer, period) != 0 {
                let err = std::io::Error::last_os_error();
                TIMER.set((std::ptr::null_mut(), ZERO));
                libc::timer_delete(timer);
                return Err(format!("timer_settime failed: {err}"));
            }
            Ok(ThreadTimer(timer))
        }
    }
}

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        // The handler stops re-arming before the timer goes.
        TIMER.set((std::ptr::null_mut(), ZERO));
        // SAFETY: the timer was created by `start` and is deleted once.
        unsafe { libc::timer_delete(self.0) };
    }
}

/// Sends SIGUSR1 to the calling thread (handled before this returns).
pub fn raise_here() {
    // SAFETY: raise has no preconditions; the handler is installed first.
    unsafe { libc::raise(libc::SIGUSR1) };
}

/// Sleeps `ms` milliseconds measured against an absolute deadline, so a
/// signal storm cannot stretch it: a relative sleep restarted after each
/// signal with the kernel's (slack-rounded) remainder never ends when
/// signals arrive faster than the timer slack.
pub fn sleep_ms(ms: u64) {
    // SAFETY: timespec is plain data; clock_gettime and clock_nanosleep
    // only write/read the structs passed.
    unsafe {
        let mut deadline: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut deadline);
        deadline.tv_nsec += (ms as libc::c_long % 1000) * 1_000_000;
        let secs =
            deadline.tv_sec as i64 + (ms / 1000) as i64 + deadline.tv_nsec as i64 / 1_000_000_000;
        deadline.tv_sec = secs as _;
        deadline.tv_nsec %= 1_000_000_000;
        while libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &deadline,
            std::ptr::null_mut(),
        ) == libc::EINTR
        {}
    }
}

/// Restores the default SIGPIPE action, so that output piped into a reader
/// that goes away (`| head`) ends the program quietly, like other Unix
/// tools, instead of a failed write.
pub fn default_sigpipe() {
    // SAFETY: setting a standard disposition for SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// Pins the calling thread to `cpu`.
pub fn pin_to(cpu: usize) -> Result<(), String> {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays in bounds for
    // cpu < CPU_SETSIZE (checked); sched_setaffinity on this thread.
    let rc = unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(format!("cannot pin to CPU {cpu}"));
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "cannot pin to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// The CPUs the calling thread may run on (its affinity mask), in order.
pub fn affinity() -> Result<Vec<usize>, String> {
    // SAFETY: cpu_set_t is plain data that sched_getaffinity fills; CPU_ISSET
    // reads within it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(format!(
                "cannot read this thread's CPU affinity: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect())
    }
}
