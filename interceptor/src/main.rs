use clap::Parser as _;
use interceptor::{
    cli::{self, Cli},
    error::{EXIT_FAILURE, EXIT_USAGE, is_usage},
};
use tracing_subscriber::EnvFilter;

fn main() {
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
