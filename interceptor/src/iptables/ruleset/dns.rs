//! DNS capture: istio-iptables' `SetupDNSRedir` and `addDNSConntrackZones`. Port 53 to the
//! pod's name servers (or to anywhere, with `--capture-all-dns`) goes to the agent's
//! listener; conntrack zones keep the two UDP legs (application to agent, agent to server)
//! apart.

use super::{
    Builder, DNS_LISTENER_PORT, FAMILIES, Family, ISTIO_INBOUND, ISTIO_OUTPUT, ISTIO_OUTPUT_DNS,
    proxy_ids,
};
use crate::{config::InterceptConfig, iptables::facts::PodFacts};

/// Whether DNS is captured: `--redirect-dns`, unless there is neither a name server nor
/// `--capture-all-dns` (then istio-iptables warns and turns it off).
pub(super) fn enabled(cfg: &InterceptConfig, facts: &PodFacts, warnings: &mut Vec<String>) -> bool {
    let no_servers = facts.dns_v4.is_empty() && facts.dns_v6.is_empty();
    if cfg.redirect_dns && !cfg.capture_all_dns && no_servers {
        warnings.push(
            "REDIRECT_DNS is set, but CAPTURE_ALL_DNS is false, and no DNS servers provided. \
             DNS capture disabled."
                .to_string(),
        );
        return false;
    }
    cfg.redirect_dns
}

/// `SetupDNSRedir`: the jumps into `ISTIO_OUTPUT_DNS` (nat only for a family with something
/// to capture), the redirects to the agent, then the conntrack zones.
pub(super) fn setup_dns_redirect(b: &mut Builder, cfg: &InterceptConfig, facts: &PodFacts) {
    let all = cfg.capture_all_dns;
    let jump = format!("-j {ISTIO_OUTPUT_DNS}");
    b.append("raw", "OUTPUT", &jump);
    for family in FAMILIES {
        if all || !name_servers(facts, family).is_empty() {
            b.append_for(family, "nat", ISTIO_OUTPUT, &jump);
        }
    }
    // NB istio-iptables writes "--to-ports" for TCP and "--to-port" for UDP.
    for (proto, to_ports) in [("tcp", "--to-ports"), ("udp", "--to-port")] {
        let to_agent = format!("-j REDIRECT {to_ports} {DNS_LISTENER_PORT}");
        if all {
            let redirect = format!("-p {proto} --dport 53 {to_agent}");
            b.append("nat", ISTIO_OUTPUT_DNS, redirect);
            continue;
        }
        for family in FAMILIES {
            for server in name_servers(facts, family) {
                let redirect = format!("-p {proto} --dport 53 -d {server} {to_agent}");
                b.append_for(family, "nat", ISTIO_OUTPUT_DNS, redirect);
            }
        }
    }
    conntrack_zones(b, cfg, facts);
}

/// `addDNSConntrackZones`: the proxy's queries upstream are zone 1 and its answers to clients
/// zone 2; clients' queries are zone 2 and the servers' answers zone 1.
fn conntrack_zones(b: &mut Builder, cfg: &InterceptConfig, facts: &PodFacts) {
    for (owner, id) in proxy_ids(cfg) {
        let owner = owner.flag();
        let upstream = format!("-p udp --dport 53 -m owner {owner} {id} -j CT --zone 1");
        b.append("raw", ISTIO_OUTPUT_DNS, upstream);
        let answers =
            format!("-p udp --sport {DNS_LISTENER_PORT} -m owner {owner} {id} -j CT --zone 2");
        b.append("raw", ISTIO_OUTPUT_DNS, answers);
    }
    if cfg.capture_all_dns {
        b.append("raw", "PREROUTING", format!("-j {ISTIO_INBOUND}"));
        b.append("raw", ISTIO_OUTPUT_DNS, "-p udp --dport 53 -j CT --zone 2");
        b.append("raw", ISTIO_INBOUND, "-p udp --sport 53 -j CT --zone 1");
        return;
    }
    for family in FAMILIES {
        let servers = name_servers(facts, family);
        if !servers.is_empty() {
            b.append_for(family, "raw", "PREROUTING", format!("-j {ISTIO_INBOUND}"));
        }
        for server in servers {
            let query = format!("-p udp --dport 53 -d {server} -j CT --zone 2");
            b.append_for(family, "raw", ISTIO_OUTPUT_DNS, query);
            let answer = format!("-p udp --sport 53 -s {server} -j CT --zone 1");
            b.append_for(family, "raw", ISTIO_INBOUND, answer);
        }
    }
}

/// The pod's name servers of one family, as host prefixes.
fn name_servers(facts: &PodFacts, family: Family) -> Vec<String> {
    match family {
        Family::V4 => facts.dns_v4.iter().map(|a| format!("{a}/32")).collect(),
        Family::V6 => facts.dns_v6.iter().map(|a| format!("{a}/128")).collect(),
    }
}
