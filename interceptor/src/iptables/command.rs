//! `init` and `clean` with `--backend iptables`.

use std::path::PathBuf;

use anyhow::Context as _;

use super::{
    Family, exec,
    facts::{self, PodFacts},
    mode::{self, Flavour},
    restore, ruleset,
};
use crate::{
    cli::{CleanArgs, InitArgs, IptablesMode, TargetArgs},
    config::{InboundFail, InterceptConfig, InterceptionMode},
    error::ConfigError,
    netns::Netns,
    resolv_conf, sys,
};

fn netns_path(target: &TargetArgs) -> PathBuf {
    target
        .netns
        .clone()
        .unwrap_or_else(|| PathBuf::from("/proc/self/ns/net"))
}

fn require_root() -> anyhow::Result<()> {
    anyhow::ensure!(
        sys::is_root(),
        "the iptables backend must run as root (it enters the pod's network namespace and \
         writes iptables rules: CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    );
    Ok(())
}

/// The facts istio-iptables reads from the pod: IPv6 from its addresses, and the name servers
/// when DNS capture needs them.
fn pod_facts(args: &InitArgs, cfg: &InterceptConfig, netns: &Netns) -> anyhow::Result<PodFacts> {
    let addrs = netns.addresses()?;
    let ipv6 = facts::ipv6_enabled(&addrs, cfg.dual_stack)
        .with_context(|| format!("--netns {}", netns.path.display()))?;
    let nameservers = if cfg.redirect_dns && !cfg.capture_all_dns {
        resolv_conf::nameservers(&args.resolv_conf)
            .with_context(|| format!("--resolv-conf {}", args.resolv_conf.display()))?
    } else {
        Vec::new()
    };
    Ok(PodFacts::new(&nameservers, ipv6))
}

pub fn init(args: &InitArgs, cfg: &InterceptConfig) -> anyhow::Result<()> {
    let dry_run = args.istio.dry_run;
    if cfg.inbound_mode == InterceptionMode::Tproxy && !dry_run {
        return Err(ConfigError::Unsupported {
            flag: "-m/--istio-inbound-interception-mode",
            reason: "TPROXY is not supported by the iptables backend (REDIRECT is); --dry-run \
                     prints the rules istio-iptables would write"
                .into(),
        }
        .into());
    }
    // REDIRECT to a port nobody listens on is refused by the kernel: "closed" is what the rules
    // do, and "open" cannot be had from them.
    if cfg.inbound_fail == InboundFail::Open && args.inbound_fail.is_some() {
        return Err(ConfigError::Unsupported {
            flag: "--inbound-fail",
            reason: "open is not possible with the iptables backend: REDIRECT refuses captured \
                     connections while nothing listens on -z (that is `closed`)"
                .into(),
        }
        .into());
    }
    if !dry_run {
        require_root()?;
    }
    if args.target.cgroup.is_some() {
        tracing::debug!("--cgroup is not used by the iptables backend");
    }
    let netns = Netns::open(&netns_path(&args.target))?;
    let facts = pod_facts(args, cfg, &netns)?;
    let set = ruleset::build(cfg, &facts);
    for warning in &set.warnings {
        tracing::warn!("{warning}");
    }
    if dry_run {
        print!("{}", set.dry_run());
        return Ok(());
    }

    let flavour = mode::resolve(args.backend.iptables_mode, &netns)?;
    if facts.ipv6 {
        add_inbound_passthrough_v6(&netns)?;
    }
    let applied = restore::apply(&netns, flavour, &set)?;
    tracing::info!(
        netns = %netns.path.display(),
        iptables = %applied.flavour,
        families = ?applied.families.iter().map(Family::to_string).collect::<Vec<_>>(),
        rules = applied.rules,
        "iptables rules {}",
        if applied.replaced { "replaced" } else { "applied" }
    );
    Ok(())
}

/// istio-iptables puts `::6/128` on `lo` when IPv6 is enabled: Envoy's inbound passthrough
/// binds it (IPv6 `lo` holds only `::1`, unlike IPv4's 127/8). The eBPF backend does too.
pub(crate) fn add_inbound_passthrough_v6(netns: &Netns) -> anyhow::Result<()> {
    let out = exec::run(
        netns,
        "ip",
        &["-6", "addr", "replace", "::6/128", "dev", "lo"],
        None,
    )?;
    anyhow::ensure!(
        out.status.success(),
        "adding ::6/128 to lo in {} failed ({}): {}",
        netns.path.display(),
        out.status,
        out.stderr.trim()
    );
    Ok(())
}

pub fn clean(args: &CleanArgs) -> anyhow::Result<()> {
    require_root()?;
    anyhow::ensure!(
        args.instance.is_none(),
        "--instance names an eBPF instance; the iptables backend cleans a namespace (--netns)"
    );
    let netns = Netns::open(&netns_path(&args.target))?;
    let flavours: &[Flavour] = match args.backend.iptables_mode {
        IptablesMode::Auto => &Flavour::ALL,
        IptablesMode::Legacy => &[Flavour::Legacy],
        IptablesMode::Nft => &[Flavour::Nft],
    };
    if restore::clean(&netns, flavours)? {
        tracing::info!(netns = %netns.path.display(), "iptables rules removed");
    } else {
        tracing::info!(netns = %netns.path.display(), "nothing to clean: no iptables rules of ours");
    }
    Ok(())
}
