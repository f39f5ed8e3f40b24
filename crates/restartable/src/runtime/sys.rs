//! What the runtime asks of the operating system: the rseq and membarrier
//! system calls, the auxiliary vector, libc's exported symbols and the CPU
//! topology files. Every result is checked and returned as a value; nothing
//! here panics or allocates (so it may run on first use inside a signal
//! handler).
//!
//! Under Miri and on other operating systems every query answers "not
//! available", which sends the rest of the crate down the fallback path.

/// An `errno` value returned by a failed system call.
pub type Errno = i32;

#[cfg(all(target_os = "linux", not(miri)))]
mod imp {
    use super::Errno;
    use core::ffi::{c_void, CStr};

    fn errno() -> Errno {
        // SAFETY: `__errno_location` returns the calling thread's errno slot,
        // valid for the whole life of the thread.
        unsafe { *libc::__errno_location() }
    }

    /// `getauxval(key)`, or `None` when the entry is absent (or zero).
    pub fn auxval(key: u64) -> Option<u64> {
        // SAFETY: getauxval only reads the process's auxiliary vector.
        let value = unsafe { libc::getauxval(key as libc::c_ulong) };
        (value != 0).then_some(value as u64)
    }

    /// Registers `area` of `len` bytes for the calling thread.
    ///
    /// # Safety
    /// `area` must stay valid, and not be reused for anything else, until the
    /// thread exits or unregisters it; it must be aligned as the kernel
    /// requires for `len`.
    pub unsafe fn rseq_register(area: *mut c_void, len: u32, signature: u32) -> Result<(), Errno> {
        // SAFETY: the caller guarantees the area outlives the registration;
        // the syscall only records the pointer.
        let rc = unsafe { libc::syscall(libc::SYS_rseq, area, len, 0, signature) };
        if rc == 0 {
            Ok(())
        } else {
            Err(errno())
        }
    }

    /// Unregisters `area`, which must have been registered with the same
    /// `len` and `signature` by this thread.
    pub fn rseq_unregister(area: *mut c_void, len: u32, signature: u32) -> Result<(), Errno> {
        // SAFETY: unregistering only makes the kernel forget the pointer; a
        // mismatched area, length or signature is refused with an errno.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_rseq,
                area,
                len,
                crate::abi::FLAG_UNREGISTER,
                signature,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(errno())
        }
    }

    /// `membarrier(cmd, flags, cpu_id)`: the raw system call.
    pub fn membarrier(cmd: i32, flags: u32, cpu_id: i32) -> Result<i64, Errno> {
        // SAFETY: membarrier takes plain integers and touches no user memory.
        let rc = unsafe { libc::syscall(libc::SYS_membarrier, cmd, flags, cpu_id) };
        if rc >= 0 {
            Ok(rc as i64)
        } else {
            Err(errno())
        }
    }

    /// The value of environment variable `name`, if set, without
    /// allocating.
    pub fn env_bytes(name: &CStr) -> Option<&'static [u8]> {
        // SAFETY: getenv reads the environment without allocating; the
        // returned string is only read before any further environment call
        // on this thread.
        let value = unsafe { libc::getenv(name.as_ptr()) };
        // SAFETY: a non-null result of getenv is a NUL-terminated string.
        (!value.is_null()).then(|| unsafe { CStr::from_ptr(value) }.to_bytes())
    }

    /// Runs `f` with every signal blocked on the calling thread, so that no
    /// handler can run in the middle of it. The mask is restored even if
    /// `f` unwinds.
    pub fn with_signals_blocked<R>(f: impl FnOnce() -> R) -> R {
        struct Restore(Option<libc::sigset_t>);
        impl Drop for Restore {
            fn drop(&mut self) {
                if let Some(old) = &self.0 {
                    // SAFETY: restoring the mask saved on this thread.
                    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old, core::ptr::null_mut()) };
                }
            }
        }
        // SAFETY: sigset_t is plain data, filled by sigfillset; the old mask
        // is saved here and restored by `Restore` on this same thread.
        let _restore = unsafe {
            let mut all: libc::sigset_t = core::mem::zeroed();
            let mut old: libc::sigset_t = core::mem::zeroed();
            libc::sigfillset(&mut all);
            Restore((libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old) == 0).then_some(old))
        };
        f()
    }

    /// The process id.
    pub fn pid() -> u32 {
        // SAFETY: getpid has no preconditions.
        unsafe { libc::getpid() as u32 }
    }

    /// Runs `child` in the child process after every `fork`.
    pub fn at_fork_child(child: unsafe extern "C" fn()) {
        // SAFETY: registering a handler with no other preconditions.
        unsafe { libc::pthread_atfork(None, None, Some(child)) };
    }

    /// The address of a data symbol exported by any loaded object (libc's
    /// `__rseq_offset`, say), looked up at run time so that a libc without it
    /// still links.
    pub fn data_symbol(name: &CStr) -> Option<*const c_void> {
        // SAFETY: dlsym with RTLD_DEFAULT only searches the loaded objects.
        let ptr = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
        (!ptr.is_null()).then_some(ptr as *const c_void)
    }

    /// `sched_getcpu()`, or `None` on failure.
    pub fn sched_getcpu() -> Option<u32> {
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = unsafe { libc::sched_getcpu() };
        u32::try_from(cpu).ok()
    }

    /// The `getcpu` system call: (CPU, NUMA node), or `None` on failure.
    pub fn getcpu() -> Option<(u32, u32)> {
        let mut cpu: u32 = 0;
        let mut node: u32 = 0;
        // SAFETY: both pointers are valid for a u32 write; the third
        // argument (a cache) is unused by the kernel and may be null.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_getcpu,
                &mut cpu as *mut u32,
                &mut node as *mut u32,
                core::ptr::null_mut::<c_void>(),
            )
        };
        (rc == 0).then_some((cpu, node))
    }

    /// `sysconf(_SC_NPROCESSORS_CONF)` / `_SC_NPROCESSORS_ONLN`.
    pub fn sysconf_cpus(online: bool) -> Option<usize> {
        let name = if online {
            libc::_SC_NPROCESSORS_ONLN
        } else {
            libc::_SC_NPROCESSORS_CONF
        };
        // SAFETY: sysconf has no preconditions.
        let n = unsafe { libc::sysconf(name) };
        usize::try_from(n).ok().filter(|&n| n > 0)
    }

    /// Reads a small file (a sysfs CPU list) into `buf` without allocating;
    /// returns the bytes read.
    pub fn read_small_file<'a>(path: &CStr, buf: &'a mut [u8]) -> Option<&'a [u8]> {
        // SAFETY: `path` is NUL-terminated; open has no other precondition.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        let mut len = 0;
        while len < buf.len() {
            // SAFETY: the destination is the unfilled tail of `buf`.
            let n =
                unsafe { libc::read(fd, buf[len..].as_mut_ptr() as *mut c_void, buf.len() - len) };
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            if n <= 0 {
                break;
            }
            len += n as usize;
        }
        // SAFETY: `fd` was opened above and is closed once.
        unsafe { libc::close(fd) };
        Some(&buf[..len])
    }

    /// The calling thread's CPU affinity mask.
    pub fn affinity() -> Option<libc::cpu_set_t> {
        // SAFETY: cpu_set_t is plain data that sched_getaffinity fills.
        unsafe {
            let mut set: libc::cpu_set_t = core::mem::zeroed();
            (libc::sched_getaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
                .then_some(set)
        }
    }

    /// Sets the calling thread's CPU affinity mask.
    pub fn set_affinity(set: &libc::cpu_set_t) -> Result<(), Errno> {
        // SAFETY: `set` is a valid cpu_set_t of the size passed.
        let rc =
            unsafe { libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), set) };
        if rc == 0 {
            Ok(())
        } else {
            Err(errno())
        }
    }

    /// A mask holding only `cpu` (`None` past `CPU_SETSIZE`).
    pub fn single_cpu(cpu: usize) -> Option<libc::cpu_set_t> {
        if cpu >= libc::CPU_SETSIZE as usize {
            return None;
        }
        // SAFETY: zeroed cpu_set_t is the empty set; CPU_SET writes in bounds.
        unsafe {
            let mut set: libc::cpu_set_t = core::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            Some(set)
        }
    }

    /// The number of CPUs a `cpu_set_t` can name.
    pub const CPU_SETSIZE: usize = libc::CPU_SETSIZE as usize;

    /// libc's version string (`gnu_get_libc_version`), when libc is glibc.
    #[cfg(target_env = "gnu")]
    pub fn libc_version() -> Option<&'static str> {
        // SAFETY: returns a pointer to a static NUL-terminated string.
        let ptr: *const core::ffi::c_char = unsafe { libc::gnu_get_libc_version() };
        if ptr.is_null() {
            return None;
        }
        // SAFETY: non-null, static and NUL-terminated per glibc's contract.
        unsafe { CStr::from_ptr(ptr) }.to_str().ok()
    }

    /// libc's version string; unknown outside glibc.
    #[cfg(not(target_env = "gnu"))]
    pub fn libc_version() -> Option<&'static str> {
        None
    }
}

#[cfg(not(all(target_os = "linux", not(miri))))]
mod imp {
    //! Portable answers: nothing of Linux is available.
    use super::Errno;
    use core::ffi::{c_void, CStr};

    const ENOSYS: Errno = 38;

    pub fn auxval(_key: u64) -> Option<u64> {
        None
    }
    /// # Safety
    /// Never touches `area`; unsafe only to match the Linux signature.
    pub unsafe fn rseq_register(_area: *mut c_void, _len: u32, _sig: u32) -> Result<(), Errno> {
        Err(ENOSYS)
    }
    pub fn rseq_unregister(_area: *mut c_void, _len: u32, _sig: u32) -> Result<(), Errno> {
        Err(ENOSYS)
    }
    pub fn membarrier(_cmd: i32, _flags: u32, _cpu_id: i32) -> Result<i64, Errno> {
        Err(ENOSYS)
    }
    pub fn env_bytes(name: &CStr) -> Option<&'static [u8]> {
        let value = std::env::var_os(name.to_str().ok()?)?;
        Some(Box::leak(value.into_encoded_bytes().into_boxed_slice()))
    }
    pub fn with_signals_blocked<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
    pub fn at_fork_child(_child: unsafe extern "C" fn()) {}
    pub fn pid() -> u32 {
        std::process::id()
    }
    pub fn data_symbol(_name: &CStr) -> Option<*const c_void> {
        None
    }
    pub fn sched_getcpu() -> Option<u32> {
        None
    }
    pub fn getcpu() -> Option<(u32, u32)> {
        None
    }
    pub fn sysconf_cpus(_online: bool) -> Option<usize> {
        std::thread::available_parallelism().ok().map(|n| n.get())
    }
    pub fn read_small_file<'a>(_path: &CStr, _buf: &'a mut [u8]) -> Option<&'a [u8]> {
        None
    }
    pub fn libc_version() -> Option<&'static str> {
        None
    }
    /// Stand-in for `cpu_set_t`.
    #[derive(Clone, Copy)]
    pub struct CpuSet;
    pub fn affinity() -> Option<CpuSet> {
        None
    }
    pub fn set_affinity(_set: &CpuSet) -> Result<(), Errno> {
        Err(ENOSYS)
    }
    pub fn single_cpu(_cpu: usize) -> Option<CpuSet> {
        None
    }
    pub const CPU_SETSIZE: usize = 0;
}

pub use imp::*;
