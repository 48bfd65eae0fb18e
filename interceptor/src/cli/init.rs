//! `init` and `clean`: per-pod mode.

use std::{io::Write as _, path::PathBuf};

use super::args::{Backend, BackendArgs, CleanArgs, InitArgs, IptablesMode, TargetArgs};
use crate::{
    datapath::Sizes,
    init::{self, CleanOptions, InitOptions, Target},
    iptables,
};

pub fn init(args: &InitArgs) -> anyhow::Result<()> {
    // Checked before anything changes, whichever backend (the iptables one has no maps, and
    // takes the defaults).
    let sizes = Sizes::checked(args.max_pods, args.max_connections)?;
    let mut options = args.istio.raw();
    options.inbound_fail = args.inbound_fail.clone();
    options.raw_sockets = args.raw_sockets.clone();
    options.accelerate = args.accelerate;
    let opts = InitOptions {
        target: target(&args.target),
        backend: backend(&args.backend),
        options,
        resolv_conf: args.resolv_conf.clone(),
        dry_run: args.istio.dry_run,
        sizes,
        kernel_log_level: args.kernel_log_level.as_aya_level(),
    };
    if let Some(plan) = init::init(&opts)? {
        std::io::stdout().write_all(plan.as_bytes())?;
    }
    Ok(())
}

pub fn clean(args: &CleanArgs) -> anyhow::Result<()> {
    init::clean(&CleanOptions {
        target: target(&args.target),
        backend: backend(&args.backend),
        instance: args.instance.clone(),
    })
}

fn target(args: &TargetArgs) -> Target {
    Target {
        cgroup: args.cgroup.clone(),
        netns: args
            .netns
            .clone()
            .unwrap_or_else(|| PathBuf::from("/proc/self/ns/net")),
        bpffs: args.bpffs.clone(),
    }
}

fn backend(args: &BackendArgs) -> init::Backend {
    match args.backend {
        Backend::Ebpf => init::Backend::Ebpf,
        Backend::Iptables => init::Backend::Iptables(iptables_mode(args.iptables_mode)),
        Backend::Auto => init::Backend::Auto(iptables_mode(args.iptables_mode)),
    }
}

pub(super) fn iptables_mode(mode: IptablesMode) -> iptables::Mode {
    match mode {
        IptablesMode::Auto => iptables::Mode::Auto,
        IptablesMode::Legacy => iptables::Mode::Legacy,
        IptablesMode::Nft => iptables::Mode::Nft,
    }
}
