//! How many CPUs this process may use: the default thread counts of the
//! benchmarks and stress modes scale with it.

/// The CPUs this process may run on (its affinity mask and cgroup quota,
/// as `std::thread::available_parallelism` reads them), or the online CPUs
/// where that cannot be read. At least 1.
pub fn usable() -> usize {
    std::thread::available_parallelism()
        .map_or_else(|_| restartable::online_cpus(), usize::from)
        .max(1)
}
