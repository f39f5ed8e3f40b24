//! CPUs for the tests: pinning, the online set, and taking a CPU offline
//! for a while (CPU hot-plug through `/sys/devices/system/cpu/cpuN/online`,
//! which needs root and a kernel that lets that CPU go: the many-CPU VM,
//! `scripts/many-cpus-vm.sh`). Shared by the library's and the
//! allocator's tests (the allocator's include this file by path).

#![allow(dead_code)]

use std::fs;

/// Set (to 1) where CPU hot-plug must work: a test that cannot take a CPU
/// offline fails there instead of printing that it skipped.
pub const REQUIRE_HOTPLUG: &str = "RESTARTABLE_REQUIRE_HOTPLUG";

/// Pins the calling thread to `cpu`; false when the kernel refuses.
pub fn pin(cpu: usize) -> bool {
    if cpu >= libc::CPU_SETSIZE as usize {
        return false;
    }
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes within it
    // for `cpu` below CPU_SETSIZE; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Lets the calling thread run on every online CPU again.
pub fn unpin() {
    // SAFETY: as in `pin`; a set of every CPU below CPU_SETSIZE, which the
    // kernel intersects with the online ones.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        for cpu in 0..libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A CPU list as the kernel writes it ("0-3,8-11"): the CPUs, ascending.
pub fn parse_list(text: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
            cpus.extend(a..=b);
        }
    }
    cpus
}

/// The online CPUs (`/sys/devices/system/cpu/online`; empty if unreadable).
pub fn online() -> Vec<usize> {
    parse_list(&fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default())
}

/// The CPUs this thread may run on now.
pub fn allowed() -> Vec<usize> {
    (0..restartable::possible_cpus().min(libc::CPU_SETSIZE as usize))
        .filter(|&cpu| {
            // SAFETY: as in `pin`; sched_getaffinity fills the set we pass.
            unsafe {
                let mut set: libc::cpu_set_t = core::mem::zeroed();
                libc::sched_getaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0
                    && libc::CPU_ISSET(cpu, &set)
            }
        })
        .collect()
}

fn online_file(cpu: usize) -> String {
    format!("/sys/devices/system/cpu/cpu{cpu}/online")
}

/// A CPU taken offline; it comes back online when this is dropped.
pub struct Offline(pub usize);

impl Offline {
    /// Takes `cpu` offline; the error says why not.
    pub fn take(cpu: usize) -> Result<Offline, String> {
        fs::write(online_file(cpu), "0").map_err(|e| format!("cpu{cpu} offline: {e}"))?;
        Ok(Offline(cpu))
    }
}

impl Drop for Offline {
    fn drop(&mut self) {
        if let Err(e) = fs::write(online_file(self.0), "1") {
            eprintln!("cpu{} could not come back online: {e}", self.0);
        }
    }
}

/// A CPU other than this thread's first allowed one that hot-plug may
/// take offline (its `online` file accepts a write), or why there is
/// none. Writing "1" to an online CPU's file changes nothing.
pub fn hotpluggable() -> Result<usize, String> {
    let allowed = allowed();
    let Some((_, rest)) = allowed.split_first() else {
        return Err("no CPU in this thread's affinity".into());
    };
    let mut why = String::from("fewer than two CPUs");
    for &cpu in rest.iter().rev() {
        match fs::write(online_file(cpu), "1") {
            Ok(()) => return Ok(cpu),
            Err(e) => why = format!("{}: {e}", online_file(cpu)),
        }
    }
    Err(why)
}

/// Where [`REQUIRE_HOTPLUG`] is set, [`hotpluggable`] (panicking when
/// there is none); elsewhere `None`, after printing that `test` skipped:
/// a test run as root on a real machine must not take its CPUs offline.
pub fn hotpluggable_or_skip(test: &str) -> Option<usize> {
    if std::env::var_os(REQUIRE_HOTPLUG).is_none() {
        println!(
            "[hotplug] {test}: skipped ({REQUIRE_HOTPLUG}=1 runs it: root, takes a CPU offline)"
        );
        return None;
    }
    match hotpluggable() {
        Ok(cpu) => Some(cpu),
        Err(why) => {
            panic!("{test}: CPU hot-plug is required ({REQUIRE_HOTPLUG}) but unavailable: {why}")
        }
    }
}

/// The threads of this process now (`Threads:` of /proc/self/status).
pub fn threads() -> usize {
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether the kernel keeps `mm_cid`s compact: below the number of the
/// process's threads (and of its allowed CPUs) at all times, as from
/// Linux 6.13 on. Before, a CPU keeps the id of the last thread of the
/// process that ran there until a periodic scan frees it, so threads
/// that hop over many CPUs use as many ids.
pub fn compact_mm_cids() -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (6, 13)
}
