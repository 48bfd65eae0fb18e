//! Per-pod mode: `interceptor init` in the pod's init container, exactly where istio-init ran
//! istio-iptables, and `clean`. Validates the options, reads the pod once, and hands both to
//! the backend chosen: eBPF programs attached to the pod's cgroup and network namespace
//! ([`ebpf`]), or istio-iptables' own rules in the namespace ([`iptables`]).

mod ebpf;
mod iptables;

use std::path::PathBuf;

use crate::{
    config::{InterceptConfig, RawOptions},
    datapath::Sizes,
    iptables::Mode as IptablesMode,
    pod::NameServers,
};

/// Which backend does the interception.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Ebpf,
    Iptables(IptablesMode),
    /// eBPF if this kernel has every feature it uses, else iptables with this flavour.
    Auto(IptablesMode),
}

impl Backend {
    /// `Auto` decided on this kernel (probed without changing anything), saying in one log
    /// line which feature sent it to iptables; the others as they are.
    pub fn resolved(self) -> anyhow::Result<Backend> {
        let Backend::Auto(mode) = self else {
            return Ok(self);
        };
        let report = crate::check::run_without_own_programs(&crate::iptables::mode::usable_here);
        let Some(row) = report.missing() else {
            tracing::debug!(kernel = %report.kernel, "--backend auto: eBPF (every feature present)");
            return Ok(Backend::Ebpf);
        };
        if !report.has("iptables_legacy") && !report.has("iptables_nft") {
            anyhow::bail!(
                "--backend auto: this kernel lacks {} (Linux {}) for the eBPF backend, and \
                 neither iptables-legacy nor iptables-nft works here",
                row.feature,
                row.since
            );
        }
        tracing::info!(
            kernel = %report.kernel,
            missing = row.id,
            "--backend auto: using the iptables backend: this kernel lacks {} (Linux {}; \
             without it: {})",
            row.feature,
            row.since,
            row.loses
        );
        Ok(Backend::Iptables(mode))
    }
}

/// Where a pod is.
#[derive(Clone, Debug)]
pub struct Target {
    /// The pod's cgroup (eBPF); `None`: the parent of the caller's own cgroup.
    pub cgroup: Option<PathBuf>,
    /// The pod's network namespace.
    pub netns: PathBuf,
    /// Where bpffs is (mounted there if it is not).
    pub bpffs: PathBuf,
}

/// What `init` is asked to do.
#[derive(Clone, Debug)]
pub struct InitOptions {
    pub target: Target,
    pub backend: Backend,
    /// istio-iptables' options (environment already applied).
    pub options: RawOptions,
    /// The pod's resolv.conf (its name servers are what `--redirect-dns` captures).
    pub resolv_conf: PathBuf,
    /// Print the plan, change nothing.
    pub dry_run: bool,
    /// The node datapath's sizes (eBPF): pods, and connection set-ups at once. Part of its
    /// identity: pods enrolled with other sizes are in another datapath.
    pub sizes: Sizes,
    /// aya-log level of the programs (0 = off ... 5 = trace).
    pub kernel_log_level: u8,
}

/// What `clean` is asked to remove.
#[derive(Clone, Debug)]
pub struct CleanOptions {
    pub target: Target,
    pub backend: Backend,
    /// An eBPF instance by the name `status` shows, instead of the target's cgroup.
    pub instance: Option<String>,
}

/// Sets up interception for one pod; with `dry_run`, the text to print instead.
pub fn init(opts: &InitOptions) -> anyhow::Result<Option<String>> {
    let cfg = opts.options.resolve_here()?;
    match opts.backend.resolved()? {
        Backend::Ebpf | Backend::Auto(_) => ebpf::init(opts, cfg),
        Backend::Iptables(mode) => iptables::init(opts, &cfg, mode),
    }
}

/// Removes what `init` set up for one pod.
pub fn clean(opts: &CleanOptions) -> anyhow::Result<()> {
    match opts.backend.resolved()? {
        Backend::Ebpf | Backend::Auto(_) => ebpf::clean(opts),
        Backend::Iptables(mode) => iptables::clean(opts, mode),
    }
}

/// Where the pod's name servers are read from, if DNS capture needs them.
fn name_servers(cfg: &InterceptConfig, resolv_conf: &std::path::Path) -> NameServers {
    if cfg.needs_name_servers() {
        NameServers::ResolvConf(resolv_conf.to_path_buf())
    } else {
        NameServers::NotNeeded
    }
}
