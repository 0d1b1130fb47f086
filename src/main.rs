/// The command line: parses flags, calls the library, prints. Private to the binary; the
/// library (`whitebox::…`) is the API.
mod cli;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc hands freed pages back to the OS after a delay (10 ms in mimalloc 2, 1 s in the
/// mimalloc 3 we link). A training step frees and re-allocates the same activation buffers, and
/// a d = 384 step takes longer than 1 s, so each step paid page faults and kernel page zeroing
/// again (`perf`: `clear_page_erms` ~7 %; ~7,700 page faults per step). Keeping the pages costs
/// no extra peak RSS. `MIMALLOC_PURGE_DELAY` still overrides it.
fn keep_freed_pages() {
    // index of `mi_option_purge_delay` in mimalloc's `mi_option_t` (no constant in the -sys crate)
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: plain option setters of the allocator in use, called before any threads start.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
    }
}

fn main() {
    keep_freed_pages();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = cli::run() {
        if e.chain().any(|c| c.is::<cli::output::StdoutClosed>()) {
            // the reader of our output went away: end quietly, as on SIGPIPE (128 + 13)
            std::process::exit(141);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
