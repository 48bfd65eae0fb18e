//! The rules istio-iptables writes for a configuration, in its order, rendered as its
//! `iptables-restore` input. Pure: `--dry-run`, the tests and the apply path all use this.
//!
//! [`build`] follows istio-iptables' `IptablesConfigurator.Run`
//! (`tools/istio-iptables/pkg/capture/run.go`) step by step, one function per step or chain,
//! each named after the part of `run.go` it can be read beside:
//! - `preamble`: interfaces never captured, the INVALID drop, the chains captures jump to;
//! - `inbound`: `handleInboundPortsInclude`, and the TPROXY marks at the end of `Run`;
//! - `outbound`: the `ISTIO_OUTPUT` chain, from its jump to `handleOutboundIncludeRules`;
//! - `dns`: `SetupDNSRedir` and `addDNSConntrackZones`;
//! - `builder`: the rule list (istio's `IptablesRuleBuilder`); `render`: its `buildRestore`.
//!
//! A rule is written as iptables prints it, one string split on spaces: every value put in one
//! (ports, CIDRs, interface names, ids) is validated and has no space in it. A rule that
//! differs between the families only in an address is written once, with a family parameter.

use super::{
    Family, ISTIO_DIVERT, ISTIO_DROP, ISTIO_IN_REDIRECT, ISTIO_INBOUND, ISTIO_OUTPUT,
    ISTIO_OUTPUT_DNS, ISTIO_REDIRECT, ISTIO_TPROXY,
};
use crate::config::{DnsCapture, InterceptConfig, InterceptionMode};

mod builder;
mod dns;
mod inbound;
mod outbound;
mod preamble;
mod render;
pub mod words;

use builder::Builder;
pub use render::{render, render_tables};

/// The agent's DNS listener (istio-iptables' `IstioAgentDNSListenerPort`, not configurable).
pub const DNS_LISTENER_PORT: u16 = 15053;
/// The mark TPROXY mode puts on the proxy's own calls to its pod (istio's `OutboundMark`).
pub const OUTBOUND_MARK: u32 = 1338;

/// One rule: `-A CHAIN args...` or `-I CHAIN POS args...` in `table`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub table: &'static str,
    pub chain: String,
    /// The whole command, starting with `-A`/`-I`.
    pub params: Vec<String>,
}

impl Rule {
    pub fn text(&self) -> String {
        self.params.join(" ")
    }

    /// The jump target when the rule ends in `-j TARGET` (istio-iptables' test).
    fn jump_target(&self) -> Option<&str> {
        match self.params.as_slice() {
            [.., j, target] if j == "-j" => Some(target),
            _ => None,
        }
    }
}

/// The rules of both families. `v6` is empty unless IPv6 is enabled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSet {
    pub v4: Vec<Rule>,
    pub v6: Vec<Rule>,
    pub ipv6: bool,
}

impl RuleSet {
    pub fn rules(&self, family: Family) -> &[Rule] {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    /// The families that get a restore run: IPv4 always, IPv6 when enabled.
    pub fn families(&self) -> Vec<Family> {
        if self.ipv6 {
            vec![Family::V4, Family::V6]
        } else {
            vec![Family::V4]
        }
    }

    /// The `iptables-restore --noflush` input for one family, exactly as istio-iptables
    /// renders it.
    pub fn restore_input(&self, family: Family) -> String {
        render(self.rules(family))
    }

    /// What `--dry-run` prints: the IPv4 input, then the IPv6 one when IPv6 is enabled.
    pub fn dry_run(&self) -> String {
        self.families()
            .into_iter()
            .map(|f| self.restore_input(f))
            .collect()
    }
}

/// The rule set istio-iptables writes for `cfg` in a pod whose DNS capture is `dns` (from its
/// name servers, as `DnsCapture::resolve` decides it for both backends) and whose IPv6 is
/// enabled or not (`PodFacts::ipv6_enabled`): the steps of its `Run`, in its order.
pub fn build(cfg: &InterceptConfig, dns: &DnsCapture, ipv6: bool) -> RuleSet {
    let mut b = Builder::new(ipv6);
    let redirect_dns = *dns != DnsCapture::Off;

    preamble::exclude_interfaces(&mut b, cfg);
    preamble::kube_virt_interfaces_return(&mut b, cfg);
    if cfg.drop_invalid {
        preamble::drop_invalid(&mut b);
    }
    preamble::capture_chains(&mut b, cfg);
    inbound::inbound_ports(&mut b, cfg);

    outbound::output_jump(&mut b);
    outbound::ports_exclude(&mut b, cfg);
    outbound::inbound_passthrough_return(&mut b);
    for (owner, id) in proxy_ids(cfg) {
        outbound::proxy_owner(&mut b, cfg, owner, id, redirect_dns);
    }
    outbound::owner_groups(&mut b, cfg);
    if redirect_dns {
        dns::setup_dns_redirect(&mut b, cfg, dns);
    }
    outbound::localhost_return(&mut b, cfg);
    for family in FAMILIES {
        outbound::ranges_exclude(&mut b, cfg, family);
    }
    outbound::ports_include(&mut b, cfg);
    for family in FAMILIES {
        outbound::ranges_include(&mut b, cfg, family);
    }

    if tproxy(cfg) {
        inbound::tproxy_marks(&mut b, cfg);
    }
    b.finish()
}

/// Both families, IPv4 first, the order istio-iptables writes versioned rules in.
const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

/// Inbound capture by TPROXY in mangle, rather than REDIRECT in nat.
fn tproxy(cfg: &InterceptConfig) -> bool {
    cfg.inbound_mode == InterceptionMode::Tproxy
}

/// The pod's "localhost" (istio-iptables' `HostIPv4LoopbackCidr` and `::1/128`).
fn localhost(cfg: &InterceptConfig, family: Family) -> String {
    match family {
        Family::V4 => cfg.ipv4_loopback_cidr.to_string(),
        Family::V6 => "::1/128".to_string(),
    }
}

/// The source address of Envoy's inbound passthrough connections.
fn inbound_passthrough(family: Family) -> &'static str {
    match family {
        Family::V4 => "127.0.0.6/32",
        Family::V6 => "::6/128",
    }
}

/// Which id an owner match tests.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    Uid,
    Gid,
}

impl Owner {
    fn flag(self) -> &'static str {
        match self {
            Owner::Uid => "--uid-owner",
            Owner::Gid => "--gid-owner",
        }
    }
}

/// The proxy's ids as istio-iptables walks them wherever it writes a rule per id: every uid
/// (`-u`), then every gid (`-g`).
fn proxy_ids(cfg: &InterceptConfig) -> impl Iterator<Item = (Owner, u32)> + '_ {
    let uids = cfg.proxy_uids.iter().map(|&id| (Owner::Uid, id));
    uids.chain(cfg.proxy_gids.iter().map(|&id| (Owner::Gid, id)))
}

#[cfg(test)]
mod tests;
