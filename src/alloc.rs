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
