use clap::Parser as _;
use interceptor::{
    cli::{self, Cli},
    error::{EXIT_FAILURE, EXIT_USAGE, is_usage},
};
use tracing_subscriber::EnvFilter;

fn main() {
    // A closed pipe (`interceptor status | head`) ends the process quietly, as for any Unix
    // tool, rather than panicking in `println!`.
    // SAFETY: restores the default disposition; no handler code runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse(); // usage errors exit 2
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    if let Err(err) = cli::run(&cli) {
        // Bad option values and unusable targets are the caller's mistake: usage (2).
        let usage = is_usage(&err);
        eprintln!("interceptor: error: {err:#}");
        std::process::exit(if usage { EXIT_USAGE } else { EXIT_FAILURE });
    }
}
