//! Unloading a library that ran critical sections (`man 2 rseq`: while
//! `rseq_cs` is set it must point to a valid descriptor): the
//! kernel must find neither a descriptor pointer into unmapped code nor a
//! registered area in freed memory. A plugin (crates/dlclose-probe) counts
//! with restartable in a child process, is dlclose'd, and the child then
//! gets preempted and signalled many times; it must live.

use std::ffi::CString;
use std::process::Command;
use std::time::{Duration, Instant};

const CHILD: &str = "RESTARTABLE_DLCLOSE_CHILD";

/// Builds the plugin once, in its own target directory (the test's own
/// directory is locked by the running `cargo test`).
fn plugin() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = root.join("target/dlclose-probe");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "dlclose-probe", "--target-dir"])
        .arg(&target)
        .current_dir(&root)
        .status()
        .expect("run cargo");
    assert!(status.success(), "building the plugin failed");
    target.join("debug/libdlclose_probe.so")
}

/// The child: load, count, unload twice, then live through preemption and
/// signals. Exits 0 on success, 2/3 on wrong results.
fn child(path: &str) -> ! {
    for round in 0..2 {
        let name = CString::new(path).unwrap();
        // SAFETY: loading our own test plugin; its symbols have the
        // declared C signatures.
        unsafe {
            let handle = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            assert!(!handle.is_null(), "dlopen failed");
            let bump = libc::dlsym(handle, c"probe_bump".as_ptr());
            let rseq = libc::dlsym(handle, c"probe_rseq".as_ptr());
            assert!(!bump.is_null() && !rseq.is_null());
            let bump: extern "C" fn(u64) -> u64 = std::mem::transmute(bump);
            let rseq: extern "C" fn() -> u32 = std::mem::transmute(rseq);
            // With a TLS destructor registered (the library's own area,
            // when glibc does not register), glibc keeps the library loaded
            // across dlclose, so count the difference.
            let before = bump(0);
            if bump(1000) - before != 1000 {
                std::process::exit(2);
            }
            if rseq() != 1 && std::env::var_os("RESTARTABLE_REQUIRE_RSEQ").is_some_and(|v| v == "1")
            {
                std::process::exit(3);
            }
            eprintln!(
                "round {round}: counted 1000 on the rseq path: {}",
                rseq() == 1
            );
            assert_eq!(libc::dlclose(handle), 0);
        }
    }
    // Get preempted, migrated and signalled: any stale pointer the kernel
    // follows now kills the process.
    let deadline = Instant::now() + Duration::from_millis(300);
    let spinner = std::thread::spawn(move || while Instant::now() < deadline {});
    while Instant::now() < deadline {
        std::thread::yield_now();
        // SAFETY: raising a signal whose default action is to be ignored.
        unsafe { libc::raise(libc::SIGCHLD) };
        std::thread::sleep(Duration::from_micros(200));
    }
    spinner.join().unwrap();
    std::process::exit(0)
}

#[test]
fn unloading_a_library_that_ran_sections_is_safe() {
    if cfg!(target_feature = "crt-static") {
        // A static binary (musl's default) has no dynamic loader to dlopen
        // the plugin with.
        println!("[dlclose] static binary: no dlopen, skipped");
        return;
    }
    if let Ok(path) = std::env::var(CHILD) {
        child(&path);
    }
    let path = plugin();
    for tunable in [None, Some("glibc.pthread.rseq=0")] {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "unloading_a_library_that_ran_sections_is_safe",
            "--nocapture",
        ])
        .env(CHILD, &path)
        .env_remove("GLIBC_TUNABLES");
        if let Some(t) = tunable {
            cmd.env("GLIBC_TUNABLES", t);
        }
        let out = cmd.output().expect("spawn child");
        println!(
            "[dlclose] tunable {tunable:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        assert!(
            out.status.success(),
            "child with {tunable:?} died after dlclose: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
