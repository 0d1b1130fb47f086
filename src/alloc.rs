//! The allocator settings of the programs built on the library (the CLI, the Python extension),
//! each of which installs `mimalloc::MiMalloc` as its global allocator.

/// mimalloc hands freed pages back to the OS after a delay (10 ms in mimalloc 2, 1 s in the
/// mimalloc 3 we link). A training step frees and re-allocates the same activation buffers, and
/// a d = 384 step takes longer than 1 s, so each step paid page faults and kernel page zeroing
/// again (`perf`: `clear_page_erms` ~7 %; ~7,700 page faults per step). Keeping the pages costs
/// no extra peak RSS. `MIMALLOC_PURGE_DELAY` still overrides it. Call it before threads start.
pub fn keep_freed_pages() {
    // index of `mi_option_purge_delay` in mimalloc's `mi_option_t` (no constant in the -sys crate)
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: a plain option setter of mimalloc, which the program links as its allocator.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
    }
}

/// Bytes this process may still allocate: the smaller of the kernel's `MemAvailable` and what
/// the cgroup's `memory.max` leaves; `None` where neither can be read (then nothing is refused).
pub fn available_bytes() -> Option<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map(|kib| kib * 1024.0)
    });
    let read = |f: &str| std::fs::read_to_string(f).ok()?.trim().parse::<f64>().ok();
    let cgroup = read("/sys/fs/cgroup/memory.max")
        .map(|max| max - read("/sys/fs/cgroup/memory.current").unwrap_or(0.0));
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Refuse a job whose estimated memory (`bytes`, computed in f64 so no user number overflows)
/// exceeds what the machine has available, naming the estimate and the flags that lower it.
pub fn check_fits(what: &str, bytes: f64, lower: &str) -> anyhow::Result<()> {
    const GIB: f64 = (1u64 << 30) as f64;
    anyhow::ensure!(
        bytes.is_finite(),
        "{what}: the memory it needs does not fit in any machine (the sizes multiply past 1e308 \
         bytes); lower {lower}"
    );
    if let Some(avail) = available_bytes() {
        anyhow::ensure!(
            bytes <= avail,
            "{what} needs about {:.1} GiB of memory, more than the {:.1} GiB available; lower {lower}",
            bytes / GIB,
            avail / GIB
        );
    }
    Ok(())
}
