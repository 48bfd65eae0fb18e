//! The CNI plugin binary: the runtime runs it with the CNI environment and the network
//! configuration on stdin (see `interceptor::cni`). `interceptor-cni install|uninstall` is the
//! DaemonSet's installer.

use std::{io::Read as _, path::PathBuf};

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
    let mut stdin = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut stdin) {
        stdin.clear();
        eprintln!("interceptor-cni: reading stdin: {e}");
    }
    match cni::run(&Env::from_process(), &stdin) {
        Ok(Some(out)) => println!("{out}"),
        Ok(None) => {}
        Err(e) => {
            println!(
                "{}",
                serde_json::to_string(&e).unwrap_or_else(|_| r#"{"code":999}"#.into())
            );
            std::process::exit(1);
        }
    }
}
