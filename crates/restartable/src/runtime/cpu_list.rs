//! The kernel's CPU list files (`/sys/devices/system/cpu/possible`,
//! `.../online`): "0-3,8,10-11". Read without allocating, so the first use
//! of the library may happen inside a signal handler.

use super::sys;

/// Number of possible CPUs: the highest CPU in
/// `/sys/devices/system/cpu/possible` plus one, else
/// `sysconf(_SC_NPROCESSORS_CONF)`, at least 1.
pub(crate) fn possible() -> usize {
    read(c"/sys/devices/system/cpu/possible", false)
        .or_else(|| sys::sysconf_cpus(false))
        .unwrap_or(1)
        .max(1)
}

/// Number of CPUs online now (`/sys/devices/system/cpu/online`, else
/// `sysconf(_SC_NPROCESSORS_ONLN)`), at least 1.
pub(crate) fn online() -> usize {
    read(c"/sys/devices/system/cpu/online", true)
        .or_else(|| sys::sysconf_cpus(true))
        .unwrap_or(1)
        .max(1)
}

/// Reads a CPU list file: with `count`, the number of CPUs listed;
/// otherwise the highest CPU listed plus one.
fn read(path: &core::ffi::CStr, count: bool) -> Option<usize> {
    let mut buf = [0u8; 512];
    let text = sys::read_small_file(path, &mut buf)?;
    parse(text, count)
}

/// Parses a kernel CPU list; `None` when it is malformed or empty.
pub(crate) fn parse(text: &[u8], count: bool) -> Option<usize> {
    let text = core::str::from_utf8(text).ok()?.trim();
    if text.is_empty() {
        return None;
    }
    let mut highest = 0usize;
    let mut listed = 0usize;
    for range in text.split(',') {
        let (lo, hi) = match range.split_once('-') {
            Some((lo, hi)) => (
                lo.trim().parse::<usize>().ok()?,
                hi.trim().parse::<usize>().ok()?,
            ),
            None => {
                let cpu = range.trim().parse::<usize>().ok()?;
                (cpu, cpu)
            }
        };
        if hi < lo {
            return None;
        }
        highest = highest.max(hi);
        listed = listed.checked_add((hi - lo).checked_add(1)?)?;
    }
    Some(if count {
        listed
    } else {
        highest.checked_add(1)?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_cpu_lists() {
        assert_eq!(parse(b"0-1\n", false), Some(2));
        assert_eq!(parse(b"0-1\n", true), Some(2));
        assert_eq!(parse(b"0-3,8,10-11\n", false), Some(12));
        assert_eq!(parse(b"0-3,8,10-11\n", true), Some(7));
        assert_eq!(parse(b"0\n", false), Some(1));
        assert_eq!(parse(b"", false), None);
        assert_eq!(parse(b"3-1", false), None);
        assert_eq!(parse(b"x", false), None);
        assert_eq!(parse(b"0-18446744073709551615", true), None);
    }
}
