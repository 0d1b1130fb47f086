/// The command line: parses flags, calls the library, prints. Private to the binary; the
/// library (`whitebox::…`) is the API.
mod cli;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    whitebox::alloc::keep_freed_pages();
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
