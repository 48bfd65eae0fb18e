//! The command line: clap's types ([`args`]) and the subcommands, each turning its arguments
//! into the plain options of the part that does the work. Nothing below this module sees clap.
//!
//! - `init`: `init` and `clean` (per-pod mode, either backend);
//! - `status`: `status`;
//! - `node`: `daemon` (node mode) and `pod add|remove|list` (its client);
//! - `explain`, `trace`, `check`: why a connection went where it did, live decisions, and
//!   what the kernel offers.

pub mod args;
mod check;
mod explain;
mod init;
mod node;
mod status;
mod trace;

pub use args::{Cli, Command};

/// Runs the parsed command.
pub fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Init(args) => init::init(args),
        Command::Clean(args) => init::clean(args),
        Command::Status(args) => status::status(args),
        Command::Daemon(args) => node::daemon(args),
        Command::Pod(args) => node::pod(args),
        Command::Explain(args) => explain::explain(args),
        Command::Trace(args) => trace::trace(args),
        Command::Check(args) => check::check(args),
    }
}
