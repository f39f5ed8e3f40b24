//! The allocator's tunables: environment variables read once, at the
//! first allocation, with `getenv` (no allocation), and ignored in
//! privileged processes (`getauxval(AT_SECURE)`: set-user-ID and the like),
//! as glibc ignores its own tunables there.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `RESTARTABLE_MALLOC_RESERVE_GIB` | address space reserved at start, in GiB (1 to 65536); never committed until used; halved, down to 1 GiB, while the system refuses it | 64 |

use crate::classes::SPAN;

/// The tunables as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunables {
    /// GiB of address space to reserve.
    pub reserve_gib: usize,
    /// The process is privileged: every variable was ignored.
    pub secure: bool,
}

/// The default reservation, in GiB.
pub const DEFAULT_RESERVE_GIB: usize = 64;

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
            secure,
        }
    }

    /// Spans of the reservation.
    pub fn reserve_spans(&self) -> usize {
        self.reserve_gib * ((1 << 30) / SPAN)
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
            secure: false,
        };
        assert_eq!(t.reserve_spans() * SPAN, 2 << 30);
    }
}
