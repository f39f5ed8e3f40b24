//! Process-wide facts the runtime decides from: what libc registered, what
//! the kernel advertises in the auxiliary vector, the opt-out variable, and
//! the number of possible CPUs.
//!
//! They are detected once, on first use, without locks: each value is plain
//! data, so threads that race to detect them compute and store the same
//! values. That keeps first use safe inside a signal handler, where waiting
//! for another initializer could deadlock.

use core::sync::atomic::{AtomicBool, AtomicIsize, AtomicU32, AtomicUsize, Ordering};

use super::{cpu_list, sys};
use crate::{abi, arch};

/// The environment variable that turns rseq off for the whole process: when
/// set at first use to anything but `0`, `false`, `no`, `off` or the empty
/// string (so `1`, `true`, `yes` and `on` all disable, and so does a value
/// not understood), the library never calls the rseq system call and every
/// operation takes the fallback path. Use it in sandboxes whose seccomp
/// profile kills on unknown system calls.
pub const DISABLE_ENV: &str = "RESTARTABLE_DISABLE";

/// `AT_SECURE` (`<linux/auxvec.h>`): nonzero in privileged processes.
const AT_SECURE: u64 = 23;

/// [`DISABLE_ENV`] for `getenv` (checked equal in the tests).
const DISABLE_ENV_C: &core::ffi::CStr = c"RESTARTABLE_DISABLE";

/// Whether a value of [`DISABLE_ENV`] disables rseq: only the explicit
/// "keep it on" spellings do not, so a typo errs on the side of the sandbox.
pub(crate) fn disables(value: &[u8]) -> bool {
    let value = value.trim_ascii();
    let enabled = [&b""[..], b"0", b"false", b"no", b"off"];
    !enabled.iter().any(|e| value.eq_ignore_ascii_case(e))
}

/// What libc exports about its own rseq registration (glibc 2.35+:
/// `__rseq_offset`, `__rseq_size`, `__rseq_flags`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LibcRseq {
    /// `__rseq_offset`: bytes from the thread pointer to each thread's area.
    pub offset: Option<isize>,
    /// `__rseq_size`: 0 when libc did not register (tunable off, or the
    /// kernel refused), otherwise the registered size (20 or 32 on glibc
    /// 2.35–2.40, the feature size on 2.41+).
    pub size: Option<u32>,
    /// `__rseq_flags`: the flags libc registered with (always 0 today).
    pub flags: Option<u32>,
}

impl LibcRseq {
    /// True when libc registered an area for its threads.
    pub fn registered(&self) -> bool {
        self.offset.is_some() && self.size.is_some_and(|s| s != 0)
    }
}

/// The process-wide facts. See [`process_info`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    /// True when [`DISABLE_ENV`] was `1` at first use (never in a
    /// privileged process: `getauxval(AT_SECURE)` set).
    pub disabled_by_user: bool,
    /// libc's rseq symbols.
    pub libc: LibcRseq,
    /// `getauxval(AT_RSEQ_FEATURE_SIZE)`, absent before Linux 6.3.
    pub kernel_feature_size: Option<u32>,
    /// `getauxval(AT_RSEQ_ALIGN)`, absent before Linux 6.3.
    pub kernel_align: Option<u32>,
    /// Number of possible CPUs: the length of every per-CPU array.
    pub possible_cpus: usize,
}

const ABSENT: u32 = u32::MAX;

static READY: AtomicBool = AtomicBool::new(false);
static DISABLED: AtomicBool = AtomicBool::new(false);
static LIBC_HAS_OFFSET: AtomicBool = AtomicBool::new(false);
static LIBC_OFFSET: AtomicIsize = AtomicIsize::new(0);
static LIBC_SIZE: AtomicU32 = AtomicU32::new(ABSENT);
static LIBC_FLAGS: AtomicU32 = AtomicU32::new(ABSENT);
static FEATURE_SIZE: AtomicU32 = AtomicU32::new(ABSENT);
static ALIGN: AtomicU32 = AtomicU32::new(ABSENT);
static POSSIBLE: AtomicUsize = AtomicUsize::new(0);

fn from_slot(v: u32) -> Option<u32> {
    (v != ABSENT).then_some(v)
}

fn to_slot(v: Option<u32>) -> u32 {
    v.filter(|&v| v != ABSENT).unwrap_or(ABSENT)
}

/// The process-wide facts, detected on first call and then cached.
pub fn process_info() -> ProcessInfo {
    if READY.load(Ordering::Acquire) {
        return ProcessInfo {
            disabled_by_user: DISABLED.load(Ordering::Relaxed),
            libc: LibcRseq {
                offset: LIBC_HAS_OFFSET
                    .load(Ordering::Relaxed)
                    .then(|| LIBC_OFFSET.load(Ordering::Relaxed)),
                size: from_slot(LIBC_SIZE.load(Ordering::Relaxed)),
                flags: from_slot(LIBC_FLAGS.load(Ordering::Relaxed)),
            },
            kernel_feature_size: from_slot(FEATURE_SIZE.load(Ordering::Relaxed)),
            kernel_align: from_slot(ALIGN.load(Ordering::Relaxed)),
            possible_cpus: POSSIBLE.load(Ordering::Relaxed),
        };
    }
    let info = detect();
    DISABLED.store(info.disabled_by_user, Ordering::Relaxed);
    LIBC_HAS_OFFSET.store(info.libc.offset.is_some(), Ordering::Relaxed);
    LIBC_OFFSET.store(info.libc.offset.unwrap_or(0), Ordering::Relaxed);
    LIBC_SIZE.store(to_slot(info.libc.size), Ordering::Relaxed);
    LIBC_FLAGS.store(to_slot(info.libc.flags), Ordering::Relaxed);
    FEATURE_SIZE.store(to_slot(info.kernel_feature_size), Ordering::Relaxed);
    ALIGN.store(to_slot(info.kernel_align), Ordering::Relaxed);
    POSSIBLE.store(info.possible_cpus, Ordering::Relaxed);
    READY.store(true, Ordering::Release);
    info
}

/// Number of possible CPUs (cached); every per-CPU array has this length.
#[inline]
pub(crate) fn possible_cpus() -> usize {
    if READY.load(Ordering::Acquire) {
        POSSIBLE.load(Ordering::Relaxed)
    } else {
        process_info().possible_cpus
    }
}

fn detect() -> ProcessInfo {
    ProcessInfo {
        // Ignored in privileged processes (set-user-ID and the like), as
        // glibc ignores its tunables there: an unprivileged caller must not
        // change how a privileged program runs.
        disabled_by_user: sys::auxval(AT_SECURE).is_none()
            && sys::env_bytes(DISABLE_ENV_C).is_some_and(disables),
        libc: detect_libc(),
        kernel_feature_size: sys::auxval(abi::AT_RSEQ_FEATURE_SIZE)
            .and_then(|v| u32::try_from(v).ok()),
        kernel_align: sys::auxval(abi::AT_RSEQ_ALIGN).and_then(|v| u32::try_from(v).ok()),
        possible_cpus: cpu_list::possible(),
    }
}

fn detect_libc() -> LibcRseq {
    // The symbols are referenced weakly at link time, so a static binary
    // (which has no dynamic loader to ask) finds glibc's definitions, and a
    // libc without them (musl, glibc before 2.35) leaves them null. `dlsym`
    // remains a second chance for a dynamic libc the link did not see.
    let [offset, size, flags] = arch::libc_rseq_symbols();
    let find = |weak: *const u8, name| match weak.is_null() {
        false => Some(weak as *const core::ffi::c_void),
        true => sys::data_symbol(name),
    };
    let offset = find(offset, c"__rseq_offset")
        // SAFETY: glibc defines `__rseq_offset` as a `const ptrdiff_t`.
        .map(|p| unsafe { *(p as *const isize) });
    let size = find(size, c"__rseq_size")
        // SAFETY: glibc defines `__rseq_size` as a `const unsigned int`.
        .map(|p| unsafe { *(p as *const u32) });
    let flags = find(flags, c"__rseq_flags")
        // SAFETY: glibc defines `__rseq_flags` as a `const unsigned int`.
        .map(|p| unsafe { *(p as *const u32) });
    LibcRseq {
        offset,
        size,
        flags,
    }
}

/// The feature size usable through libc's area, from `__rseq_size`
/// (glibc manual, "Restartable Sequences"; `sys/rseq.h`): glibc 2.35–2.40 report 20 or 32 for the original 32-byte
/// layout, in which case the kernel's feature size (capped at 32) applies;
/// later versions report the feature size itself.
pub(crate) fn libc_feature_size(libc_size: u32, kernel_feature_size: Option<u32>) -> u32 {
    match libc_size {
        20 | 32 => kernel_feature_size
            .unwrap_or(abi::ORIG_FEATURE_SIZE)
            .min(abi::ORIG_AREA_SIZE),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libc_feature_size_follows_the_glibc_rules() {
        assert_eq!(libc_feature_size(20, Some(28)), 28);
        assert_eq!(libc_feature_size(32, Some(28)), 28);
        assert_eq!(libc_feature_size(32, None), 20);
        assert_eq!(libc_feature_size(20, Some(33)), 32);
        assert_eq!(libc_feature_size(33, Some(33)), 33);
        assert_eq!(libc_feature_size(28, Some(28)), 28);
    }

    #[test]
    fn disable_env_names_agree() {
        assert_eq!(DISABLE_ENV_C.to_str(), Ok(DISABLE_ENV));
    }

    #[test]
    fn disable_values() {
        for v in ["1", "true", "YES", "on", " 1 ", "2", "disable"] {
            assert!(disables(v.as_bytes()), "{v:?} must disable");
        }
        for v in ["", "0", "false", "No", "OFF", " 0"] {
            assert!(!disables(v.as_bytes()), "{v:?} must not disable");
        }
    }

    #[test]
    fn cached_facts_match_detection() {
        let first = process_info();
        let second = process_info();
        assert_eq!(first, second);
        assert!(first.possible_cpus >= 1);
    }
}
