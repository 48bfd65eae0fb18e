//! The `ISTIO_OUTPUT` chain, in the order istio-iptables' `Run` fills it: what is never
//! captured first (`-o`, Envoy's passthrough, the proxy, other groups, localhost, `-x`), then
//! what is (`-q`, `-i`).

use super::{
    Builder, Family, ISTIO_IN_REDIRECT, ISTIO_OUTPUT, ISTIO_REDIRECT, Owner, inbound_passthrough,
    localhost,
};
use crate::config::{Cidr, InterceptConfig, OutboundInclude, OwnerGroups};

/// Every outbound packet, of every protocol, walks `ISTIO_OUTPUT`.
pub(super) fn output_jump(b: &mut Builder) {
    b.append("nat", "OUTPUT", format!("-j {ISTIO_OUTPUT}"));
}

/// `-o`: ports never captured, TCP and UDP. Must come before connections back to the pod are
/// redirected.
pub(super) fn ports_exclude(b: &mut Builder, cfg: &InterceptConfig) {
    for port in &cfg.outbound_ports_exclude {
        for proto in ["tcp", "udp"] {
            let excluded = format!("-p {proto} --dport {port} -j RETURN");
            b.append("nat", ISTIO_OUTPUT, excluded);
        }
    }
}

/// Envoy's inbound passthrough connects from 127.0.0.6 (`::6`): never captured.
pub(super) fn inbound_passthrough_return(b: &mut Builder) {
    b.append_versioned("nat", ISTIO_OUTPUT, |family| {
        let source = inbound_passthrough(family);
        format!("-o lo -s {source} -j RETURN")
    });
}

/// The three rules of run.go's loops over the proxy's uids, then its gids: the proxy's calls
/// to its own pod over lo go to inbound capture (except to the tunnel port and, for a uid
/// under DNS capture, to port 53: run.go spares it for uids only); anyone else's over lo stay
/// local (TCP other than 53 under DNS capture; not written when `-i` has a loopback range);
/// the proxy's other calls are direct.
pub(super) fn proxy_owner(
    b: &mut Builder,
    cfg: &InterceptConfig,
    owner: Owner,
    id: u32,
    redirect_dns: bool,
) {
    let flag = owner.flag();
    let tunnel = cfg.inbound_tunnel_port;
    let ports = if redirect_dns && owner == Owner::Uid {
        format!("-m multiport ! --dports 53,{tunnel}")
    } else {
        format!("! --dport {tunnel}")
    };
    b.append_versioned("nat", ISTIO_OUTPUT, |family| {
        let localhost = localhost(cfg, family);
        format!("-o lo ! -d {localhost} -p tcp {ports} -m owner {flag} {id} -j {ISTIO_IN_REDIRECT}")
    });
    if !cfg.loopback_included() {
        let tcp = if redirect_dns {
            "-p tcp ! --dport 53 "
        } else {
            ""
        };
        let others = format!("-o lo {tcp}-m owner ! {flag} {id} -j RETURN");
        b.append("nat", ISTIO_OUTPUT, others);
    }
    let direct = format!("-m owner {flag} {id} -j RETURN");
    b.append("nat", ISTIO_OUTPUT, direct);
}

/// `handleCaptureByOwnerGroup`: with include `*`, each excluded group returns; with a list,
/// one rule returns a connection whose group is none of them (an empty list: every one).
pub(super) fn owner_groups(b: &mut Builder, cfg: &InterceptConfig) {
    match &cfg.owner_groups {
        OwnerGroups::AllExcept(groups) => {
            for group in groups {
                let excluded = format!("-m owner --gid-owner {group} -j RETURN");
                b.append("nat", ISTIO_OUTPUT, excluded);
            }
        }
        OwnerGroups::Only(groups) => {
            let none_of: String = groups
                .iter()
                .map(|group| format!("-m owner ! --gid-owner {group} "))
                .collect();
            b.append("nat", ISTIO_OUTPUT, format!("{none_of}-j RETURN"));
        }
    }
}

/// Envoy-aware applications and container-to-container traffic use localhost: never captured.
pub(super) fn localhost_return(b: &mut Builder, cfg: &InterceptConfig) {
    b.append_versioned("nat", ISTIO_OUTPUT, |family| {
        let localhost = localhost(cfg, family);
        format!("-d {localhost} -j RETURN")
    });
}

/// `-x`: destinations never captured, before any inclusion.
pub(super) fn ranges_exclude(b: &mut Builder, cfg: &InterceptConfig, family: Family) {
    for cidr in of_family(&cfg.outbound_exclude, family) {
        b.append_for(family, "nat", ISTIO_OUTPUT, format!("-d {cidr} -j RETURN"));
    }
}

/// `handleOutboundPortsInclude` (`-q`): ports captured whatever the destination.
pub(super) fn ports_include(b: &mut Builder, cfg: &InterceptConfig) {
    for port in &cfg.outbound_ports_include {
        let redirect = format!("-p tcp --dport {port} -j {ISTIO_REDIRECT}");
        b.append("nat", ISTIO_OUTPUT, redirect);
    }
}

/// `handleOutboundIncludeRules` for one family (`-i`): what remains goes to the proxy, all of
/// it or to the ranges listed; traffic entering on a `-k` interface to the same destinations
/// is redirected too (inserted at the head of PREROUTING, each before the last).
pub(super) fn ranges_include(b: &mut Builder, cfg: &InterceptConfig, family: Family) {
    let virt = &cfg.kube_virt_interfaces;
    match &cfg.outbound_include {
        OutboundInclude::All => {
            b.append_for(family, "nat", ISTIO_OUTPUT, format!("-j {ISTIO_REDIRECT}"));
            for ifc in virt {
                let redirect = format!("-i {ifc} -j {ISTIO_REDIRECT}");
                b.insert_for(family, "nat", "PREROUTING", 1, redirect);
            }
        }
        OutboundInclude::Cidrs(cidrs) => {
            for cidr in of_family(cidrs, family) {
                for ifc in virt {
                    let redirect = format!("-i {ifc} -d {cidr} -j {ISTIO_REDIRECT}");
                    b.insert_for(family, "nat", "PREROUTING", 1, redirect);
                }
                let redirect = format!("-d {cidr} -j {ISTIO_REDIRECT}");
                b.append_for(family, "nat", ISTIO_OUTPUT, redirect);
            }
        }
    }
}

/// The CIDRs of one family, in the order given (istio-iptables' `SeparateV4V6`).
fn of_family(cidrs: &[Cidr], family: Family) -> impl Iterator<Item = &Cidr> {
    cidrs
        .iter()
        .filter(move |c| c.is_ipv4() == (family == Family::V4))
}
