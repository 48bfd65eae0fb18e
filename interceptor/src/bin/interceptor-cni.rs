//! The CNI plugin binary: the runtime runs it with the CNI environment and the network
//! configuration on stdin (see `interceptor::cni`). `interceptor-cni install|uninstall` is the
//! DaemonSet's installer.

use std::{
    io::{Read as _, Write as _},
    path::PathBuf,
};

use clap::{Parser, Subcommand};
use interceptor::cni::{self, Env, install};

#[derive(Parser)]
#[command(
    name = "interceptor-cni",
    about = "CNI plugin for the interceptor node daemon"
)]
struct Installer {
    #[command(subcommand)]
    command: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Copy this binary into the CNI binary directory and chain the plugin into the node's
    /// network configuration.
    Install {
        #[arg(long, default_value = "/host/opt/cni/bin")]
        bin_dir: PathBuf,
        #[arg(long, default_value = "/host/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// The plugin's configuration (JSON: socket, options, excludeNamespaces).
        #[arg(long, default_value = "/etc/interceptor/cni-entry.json")]
        entry: PathBuf,
    },
    /// Take the plugin out of the node's network configuration.
    Uninstall {
        #[arg(long, default_value = "/host/etc/cni/net.d")]
        conf_dir: PathBuf,
    },
}

fn installer() -> anyhow::Result<()> {
    match Installer::parse().command {
        Action::Install {
            bin_dir,
            conf_dir,
            entry,
        } => {
            let text = std::fs::read_to_string(&entry)?;
            let entry: serde_json::Value = serde_json::from_str(&text)?;
            let bin = install::copy_binary(&std::env::current_exe()?, &bin_dir)?;
            let conf = install::chain(&conf_dir, &entry)?;
            eprintln!(
                "interceptor-cni: installed {}, chained into {}",
                bin.display(),
                conf.display()
            );
        }
        Action::Uninstall { conf_dir } => {
            if let Some(conf) = install::unchain(&conf_dir)? {
                eprintln!("interceptor-cni: removed from {}", conf.display());
            }
        }
    }
    Ok(())
}

fn main() {
    // A runtime always sets CNI_COMMAND; the installer is run with arguments instead.
    if std::env::var_os("CNI_COMMAND").is_none() && std::env::args().len() > 1 {
        if let Err(e) = installer() {
            eprintln!("interceptor-cni: error: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    // Whatever happens, the runtime gets the spec's answer: a result, or an error object on
    // stdout with exit 1. A panic (a bug) is answered too, not left as exit 101 and no output.
    let answer = std::panic::catch_unwind(plugin).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(cni::err(cni::code::INTERNAL, "interceptor-cni failed (a bug)").with_details(what))
    });
    let mut stdout = std::io::stdout().lock();
    // Nothing is left to tell the runtime if stdout itself fails: the exit code still does.
    let code = match answer {
        Ok(Some(out)) => {
            let _ = writeln!(stdout, "{out}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            let json = serde_json::to_string(&e).unwrap_or_else(|_| {
                format!(
                    r#"{{"cniVersion":"1.0.0","code":{},"msg":"interceptor-cni failed (a bug)"}}"#,
                    cni::code::INTERNAL
                )
            });
            let _ = writeln!(stdout, "{json}");
            1
        }
    };
    let _ = stdout.flush();
    std::process::exit(code);
}

/// One CNI command: the environment and the configuration on stdin.
fn plugin() -> Result<Option<String>, cni::CniError> {
    let env = Env::from_process()?;
    let mut stdin = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut stdin) {
        stdin.clear();
        eprintln!("interceptor-cni: reading stdin: {e}");
    }
    cni::run(&env, &stdin)
}
