//! The allocator's tunables: environment variables read once, at the
//! first allocation, with `getenv` (no allocation), and ignored in
//! privileged processes (`getauxval(AT_SECURE)`: set-user-ID and the like),
//! as glibc ignores its own tunables there.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `RESTARTABLE_MALLOC_RESERVE_GIB` | address space reserved at start, in GiB (1 to 65536); never committed until used; halved, down to 64 MiB, while the system refuses it | 64 |
//! | `RESTARTABLE_MALLOC_CACHE_KIB` | the most bytes of one size class a CPU's cache holds, in KiB (1 to 1024; at least one object, at most 62) | 128 |
//! | `RESTARTABLE_MALLOC_RELEASE_MS` | the release delay, in ms (0 to 3600000): the first slow path (a cache refill or flush) this long after the last sweeps: every CPU's caches drain to the central lists and runs with no object in use go back to the system; 0: only `malloc_trim` / [`trim`](crate::trim) does | 1000 |
//! | `RESTARTABLE_MALLOC_INDEX` | what picks a thread's cache block: `cpu_id` (the CPU number) or `mm_cid` (the concurrency id, Linux 6.3+: blocks scale with the threads running at once, not with the CPUs; `cpu_id` where the kernel does not maintain it) | `cpu_id` |
//! | `RESTARTABLE_MALLOC_STATS` | `1`: print the statistics to standard error at exit; an absolute path: append them to that file (one report per process, for programs that start others) | unset |
//!
//! `RESTARTABLE_DISABLE=1` (the runtime's variable, also ignored under
//! `AT_SECURE`) puts every thread on the fallback path.

use restartable::section::Index;

use crate::classes::SPAN;

/// The tunables as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunables {
    /// GiB of address space to reserve.
    pub reserve_gib: usize,
    /// KiB of one class a CPU's cache holds at most.
    pub cache_kib: usize,
    /// The release delay in ms; 0: release only when asked.
    pub release_ms: u64,
    /// The id that picks a cache block (as asked: the heap checks the
    /// kernel maintains `mm_cid`).
    pub index: Index,
    /// Print the statistics at exit: to standard error (`Some("1")`) or
    /// appended to the file named.
    pub stats_at_exit: Option<&'static core::ffi::CStr>,
    /// The process is privileged: every variable was ignored.
    pub secure: bool,
}

/// The default reservation, in GiB.
pub const DEFAULT_RESERVE_GIB: usize = 64;
/// The default cache size per CPU and class, in KiB.
pub const DEFAULT_CACHE_KIB: usize = 128;
/// The default release delay, in ms.
pub const DEFAULT_RELEASE_MS: u64 = 1000;

impl Default for Tunables {
    fn default() -> Self {
        Tunables {
            reserve_gib: DEFAULT_RESERVE_GIB,
            cache_kib: DEFAULT_CACHE_KIB,
            release_ms: DEFAULT_RELEASE_MS,
            index: Index::Cpu,
            stats_at_exit: None,
            secure: false,
        }
    }
}

impl Tunables {
    /// Reads the environment (unless the process is privileged).
    pub fn read() -> Tunables {
        // SAFETY: getauxval only reads the auxiliary vector.
        let secure = unsafe { libc::getauxval(libc::AT_SECURE) } != 0;
        let var = |name: &core::ffi::CStr| if secure { None } else { env(name) };
        Tunables {
            reserve_gib: var(c"RESTARTABLE_MALLOC_RESERVE_GIB")
                .and_then(parse)
                .filter(|g| (1..=65536).contains(g))
                .unwrap_or(DEFAULT_RESERVE_GIB),
            cache_kib: var(c"RESTARTABLE_MALLOC_CACHE_KIB")
                .and_then(parse)
                .filter(|k| (1..=1024).contains(k))
                .unwrap_or(DEFAULT_CACHE_KIB),
            release_ms: var(c"RESTARTABLE_MALLOC_RELEASE_MS")
                .and_then(parse)
                .filter(|&ms| ms <= 3_600_000)
                .map_or(DEFAULT_RELEASE_MS, |ms| ms as u64),
            index: match var(c"RESTARTABLE_MALLOC_INDEX") {
                Some(b"mm_cid") => Index::MmCid,
                _ => Index::Cpu,
            },
            stats_at_exit: if secure {
                None
            } else {
                env_c(c"RESTARTABLE_MALLOC_STATS")
                    .filter(|v| v.to_bytes() == b"1" || v.to_bytes().starts_with(b"/"))
            },
            secure,
        }
    }

    /// Spans of the reservation.
    pub fn reserve_spans(&self) -> usize {
        self.reserve_gib * ((1 << 30) / SPAN)
    }
}

/// Variable `name`, if set.
fn env_c(name: &core::ffi::CStr) -> Option<&'static core::ffi::CStr> {
    // SAFETY: as in `env`.
    unsafe {
        let p = libc::getenv(name.as_ptr());
        (!p.is_null()).then(|| core::ffi::CStr::from_ptr(p))
    }
}

/// The bytes of variable `name`, if set.
fn env(name: &core::ffi::CStr) -> Option<&'static [u8]> {
    // SAFETY: getenv returns null or a NUL-terminated string in the
    // environment, which lives for the process (nobody here changes it).
    unsafe {
        let p = libc::getenv(name.as_ptr());
        (!p.is_null()).then(|| core::ffi::CStr::from_ptr(p).to_bytes())
    }
}

/// A decimal number of at most 9 digits.
fn parse(bytes: &[u8]) -> Option<usize> {
    if bytes.is_empty() || bytes.len() > 9 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(bytes.iter().fold(0, |n, d| n * 10 + usize::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_and_junk_does_not() {
        assert_eq!(parse(b"64"), Some(64));
        assert_eq!(parse(b"1"), Some(1));
        for junk in [&b""[..], b"-1", b"1G", b" 4", b"1234567890"] {
            assert_eq!(parse(junk), None, "{junk:?}");
        }
        let t = Tunables {
            reserve_gib: 2,
            ..Tunables::default()
        };
        assert_eq!(t.reserve_spans() * SPAN, 2 << 30);
    }
}
