//! `init` and `clean` with `--backend iptables`: istio-iptables' rules in the pod's network
//! namespace.

use anyhow::Context as _;

use super::{CleanOptions, InitOptions, name_servers};
use crate::{
    config::{DnsCapture, InboundFail, InterceptConfig, InterceptionMode, RawSockets},
    error::ConfigError,
    iptables::{
        Family, Mode,
        mode::{self, Flavour},
        restore, ruleset,
    },
    pod::{self, Netns, PodFacts},
    sys::users::require_root,
};

const ROOT_NEEDED: &str = "the iptables backend enters the pod's network namespace and writes \
                           iptables rules (CAP_SYS_ADMIN, CAP_NET_ADMIN)";

pub fn init(
    opts: &InitOptions,
    cfg: &InterceptConfig,
    mode: Mode,
) -> anyhow::Result<Option<String>> {
    refuse_what_rules_cannot_do(opts, cfg)?;
    if !opts.dry_run {
        require_root(ROOT_NEEDED)?;
    }
    if opts.target.cgroup.is_some() {
        tracing::debug!("--cgroup is not used by the iptables backend");
    }
    let netns = Netns::open(&opts.target.netns)?;
    let facts = PodFacts::read(&netns, &name_servers(cfg, &opts.resolv_conf))?;
    let ipv6 = facts
        .ipv6_enabled(cfg.dual_stack)
        .with_context(|| format!("--netns {}", netns.path.display()))?;
    let (dns, warning) = DnsCapture::resolve(cfg, &facts.name_servers);
    if let Some(w) = warning {
        tracing::warn!(resolv_conf = %opts.resolv_conf.display(), "{w}");
    }
    let set = ruleset::build(cfg, &dns, ipv6);
    if opts.dry_run {
        return Ok(Some(set.dry_run()));
    }

    let flavour = mode::resolve(mode, &netns)?;
    if ipv6 {
        pod::add_inbound_passthrough_v6(&netns)?;
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
    Ok(None)
}

/// What the rules cannot do is refused, never ignored.
fn refuse_what_rules_cannot_do(opts: &InitOptions, cfg: &InterceptConfig) -> anyhow::Result<()> {
    if cfg.inbound_mode == InterceptionMode::Tproxy && !opts.dry_run {
        return Err(ConfigError::Unsupported {
            flag: "-m/--istio-inbound-interception-mode",
            reason: "TPROXY is not supported by the iptables backend (REDIRECT is); --dry-run \
                     prints the rules istio-iptables would write"
                .into(),
        }
        .into());
    }
    if cfg.accelerate {
        return Err(ConfigError::Unsupported {
            flag: "--accelerate (INTERCEPTOR_ACCELERATE)",
            reason: "acceleration pairs sockets with eBPF (sockmap and sk_msg); the iptables \
                     backend only writes rules: leave it unset, or use the eBPF backend"
                .into(),
        }
        .into());
    }
    // REDIRECT to a port nobody listens on is refused by the kernel: "closed" is what the rules
    // do, and "open" cannot be had from them.
    if cfg.inbound_fail == InboundFail::Open && opts.options.inbound_fail.is_some() {
        return Err(ConfigError::Unsupported {
            flag: "--inbound-fail",
            reason: "open is not possible with the iptables backend: REDIRECT refuses captured \
                     connections while nothing listens on -z (that is `closed`)"
                .into(),
        }
        .into());
    }
    // Raw sockets' packets cross nat OUTPUT: the rules redirect their TCP as any other, so
    // there is nothing to refuse (and `allow` is what they do).
    if cfg.raw_sockets == RawSockets::Refuse && opts.options.raw_sockets.is_some() {
        return Err(ConfigError::Unsupported {
            flag: "--raw-sockets",
            reason: "refuse is the eBPF backend's: with the iptables backend raw sockets are \
                     allowed and the nat rules redirect what they send, as istio-iptables does"
                .into(),
        }
        .into());
    }
    Ok(())
}

pub fn clean(opts: &CleanOptions, mode: Mode) -> anyhow::Result<()> {
    require_root(ROOT_NEEDED)?;
    anyhow::ensure!(
        opts.instance.is_none(),
        "--instance names an eBPF instance; the iptables backend cleans a namespace (--netns)"
    );
    let netns = Netns::open(&opts.target.netns)?;
    if restore::clean(&netns, Flavour::cleaned_by(mode))? {
        tracing::info!(netns = %netns.path.display(), "iptables rules removed");
    } else {
        tracing::info!(netns = %netns.path.display(), "nothing to clean: no iptables rules of ours");
    }
    Ok(())
}
