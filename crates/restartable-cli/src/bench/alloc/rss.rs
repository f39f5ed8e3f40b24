//! Peak resident memory of this process, from `/proc/self/status`
//! (`VmHWM`, in KiB), and its reset (`/proc/self/clear_refs`, value 5,
//! Linux 4.0+: proc(5)).

/// Restarts the peak from the resident size now; false when the kernel
/// refused (the peak then covers the process's whole life).
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The peak resident size since the start or the last reset, in KiB.
pub fn peak_kib() -> Option<u64> {
    status_kib("VmHWM:")
}

fn status_kib(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_peak_reads_and_follows_a_touched_block() {
        let before = super::peak_kib().expect("VmHWM in /proc/self/status");
        let block = vec![1u8; 64 << 20];
        let after = super::peak_kib().unwrap();
        assert!(after >= before + (60 << 10), "{before} -> {after}");
        drop(block);
        if super::reset_peak() {
            assert!(super::peak_kib().unwrap() < after);
        }
    }
}
