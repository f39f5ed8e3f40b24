//! `restartable info`: what this machine offers, for a person or as JSON.

use serde::Serialize;

#[derive(Serialize)]
struct Info {
    rseq_available: bool,
    owner: &'static str,
    feature_size: u32,
    cpu_id: usize,
    node_id: usize,
    mm_cid: Option<usize>,
    possible_cpus: usize,
    online_cpus: usize,
    membarrier_rseq: bool,
    /// How remote work fences other CPUs: "membarrier", "migration", or
    /// "unavailable: ..." when neither is allowed.
    fence: String,
    fallback_reason: Option<String>,
    critical_sections: bool,
    kernel: Option<String>,
    libc_version: Option<&'static str>,
    libc_rseq_offset: Option<isize>,
    libc_rseq_size: Option<u32>,
    libc_rseq_flags: Option<u32>,
    kernel_feature_size: Option<u32>,
    kernel_align: Option<u32>,
    disabled_by_user: bool,
    /// The command's global allocator: "restartable-malloc", or "system"
    /// (RESTARTABLE_CLI_ALLOCATOR=system).
    allocator: &'static str,
    /// restartable-malloc's path for this thread ("rseq" or "fallback").
    allocator_path: &'static str,
    /// What its per-CPU caches are indexed by ("cpu_id").
    allocator_index: &'static str,
}

fn gather() -> Info {
    let reg = restartable::registration();
    let process = restartable::process_info();
    Info {
        rseq_available: reg.rseq_available(),
        owner: reg.owner.as_str(),
        feature_size: reg.feature_size,
        cpu_id: restartable::current_cpu(),
        node_id: restartable::current_node(),
        mm_cid: restartable::current_mm_cid(),
        possible_cpus: restartable::possible_cpus(),
        online_cpus: restartable::online_cpus(),
        membarrier_rseq: restartable::fence::rseq_fence_supported(),
        fence: match restartable::fence::status() {
            Ok(restartable::fence::Method::Membarrier) => "membarrier".to_owned(),
            Ok(restartable::fence::Method::Migration) => "migration".to_owned(),
            Err(e) => format!("unavailable: {e}"),
        },
        fallback_reason: reg.fallback.map(|r| r.to_string()),
        critical_sections: restartable::HAS_CRITICAL_SECTIONS,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|s| s.trim().to_owned()),
        libc_version: restartable::libc_version(),
        libc_rseq_offset: process.libc.offset,
        libc_rseq_size: process.libc.size,
        libc_rseq_flags: process.libc.flags,
        kernel_feature_size: process.kernel_feature_size,
        kernel_align: process.kernel_align,
        disabled_by_user: process.disabled_by_user,
        allocator: crate::allocator::name(),
        allocator_path: restartable_malloc::path(),
        allocator_index: restartable_malloc::index(),
    }
}

fn or_absent<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "absent".to_owned(), |v| v.to_string())
}

pub fn run(json: bool) -> Result<(), String> {
    let info = gather();
    if json {
        let text = serde_json::to_string_pretty(&info).map_err(|e| e.to_string())?;
        println!("{text}");
        return Ok(());
    }
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let arch = std::env::consts::ARCH;
    let verdict = match (info.rseq_available, info.critical_sections) {
        (true, true) => format!("rseq works here: per-CPU operations run as critical sections ({arch} assembly)"),
        (true, false) => format!("rseq works here, but this build has no critical sections for {arch}: operations use atomics"),
        (false, _) => "rseq is not in use: per-CPU operations use the atomic fallback (correct, slower)".to_owned(),
    };
    println!("{verdict}");
    println!();
    println!(
        "kernel              {}",
        info.kernel.as_deref().unwrap_or("unknown")
    );
    println!(
        "libc                {}",
        info.libc_version
            .map_or("unknown (not glibc)".to_owned(), |v| format!("glibc {v}"))
    );
    let libc_registered = info.libc_rseq_size.is_some_and(|s| s != 0);
    println!(
        "libc registered     {} (__rseq_offset={} __rseq_size={} __rseq_flags={})",
        yes_no(libc_registered),
        or_absent(info.libc_rseq_offset),
        or_absent(info.libc_rseq_size),
        or_absent(info.libc_rseq_flags)
    );
    match (info.kernel_feature_size, info.kernel_align) {
        (Some(size), Some(align)) => println!(
            "kernel offers       struct rseq of {size} bytes (AT_RSEQ_FEATURE_SIZE), aligned to {align} (AT_RSEQ_ALIGN)"
        ),
        (size, align) => println!(
            "kernel offers       no AT_RSEQ_FEATURE_SIZE/AT_RSEQ_ALIGN in the auxiliary vector (size {}, align {}: before Linux 6.3, or a tool such as valgrind hides them), so the original 32-byte struct rseq",
            or_absent(size),
            or_absent(align)
        ),
    }
    println!(
        "area used           {}",
        match info.owner {
            "libc" => "libc's (adopted)",
            "library" => "the library's own (registered by restartable)",
            _ => "none",
        }
    );
    if let Some(reason) = &info.fallback_reason {
        println!("fallback reason     {reason}");
    }
    if info.rseq_available {
        println!("feature size        {} bytes of struct rseq maintained for this thread (20: cpu ids; 24: + node; 28: + mm_cid)", info.feature_size);
    }
    println!(
        "critical sections   {}",
        if info.critical_sections {
            format!("compiled in for {arch}")
        } else {
            format!("none for {arch}")
        }
    );
    println!("current CPU         {}", info.cpu_id);
    println!("current node        {}", info.node_id);
    let mm_cid_missing = if info.rseq_available {
        "unavailable (kernel before 6.3)"
    } else {
        "unavailable (rseq not in use)"
    };
    println!(
        "current mm_cid      {}",
        info.mm_cid
            .map_or(mm_cid_missing.to_owned(), |c| c.to_string())
    );
    println!(
        "possible CPUs       {} (per-CPU arrays have this many slots)",
        info.possible_cpus
    );
    println!("online CPUs         {}", info.online_cpus);
    println!(
        "membarrier rseq     {} (the fence for acting on another CPU's data)",
        yes_no(info.membarrier_rseq)
    );
    println!("fence method        {}", info.fence);
    if info.allocator == "system" {
        println!(
            "allocator           the C library's malloc ({}=system)",
            crate::allocator::ENV
        );
    } else {
        println!(
            "allocator           restartable-malloc (this command's own): {} path, per-CPU caches indexed by {}",
            info.allocator_path, info.allocator_index
        );
    }
    Ok(())
}
