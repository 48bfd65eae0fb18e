//! DNS capture: istio-iptables' `SetupDNSRedir` and `addDNSConntrackZones`. Port 53 to the
//! pod's name servers (or to anywhere, with `--capture-all-dns`) goes to the agent's
//! listener; conntrack zones keep the two UDP legs (application to agent, agent to server)
//! apart.

use super::{
    Builder, DNS_LISTENER_PORT, FAMILIES, Family, ISTIO_INBOUND, ISTIO_OUTPUT, ISTIO_OUTPUT_DNS,
    proxy_ids,
};
use crate::config::{DnsCapture, InterceptConfig};

/// `SetupDNSRedir`: the jumps into `ISTIO_OUTPUT_DNS` (nat only for a family with something
/// to capture), the redirects to the agent, then the conntrack zones.
pub(super) fn setup_dns_redirect(b: &mut Builder, cfg: &InterceptConfig, dns: &DnsCapture) {
    let all = *dns == DnsCapture::All;
    let jump = format!("-j {ISTIO_OUTPUT_DNS}");
    b.append("raw", "OUTPUT", &jump);
    for family in FAMILIES {
        if all || !name_servers(dns, family).is_empty() {
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
            for server in name_servers(dns, family) {
                let redirect = format!("-p {proto} --dport 53 -d {server} {to_agent}");
                b.append_for(family, "nat", ISTIO_OUTPUT_DNS, redirect);
            }
        }
    }
    conntrack_zones(b, cfg, dns);
}

/// `addDNSConntrackZones`: the proxy's queries upstream are zone 1 and its answers to clients
/// zone 2; clients' queries are zone 2 and the servers' answers zone 1.
fn conntrack_zones(b: &mut Builder, cfg: &InterceptConfig, dns: &DnsCapture) {
    for (owner, id) in proxy_ids(cfg) {
        let owner = owner.flag();
        let upstream = format!("-p udp --dport 53 -m owner {owner} {id} -j CT --zone 1");
        b.append("raw", ISTIO_OUTPUT_DNS, upstream);
        let answers =
            format!("-p udp --sport {DNS_LISTENER_PORT} -m owner {owner} {id} -j CT --zone 2");
        b.append("raw", ISTIO_OUTPUT_DNS, answers);
    }
    if *dns == DnsCapture::All {
        b.append("raw", "PREROUTING", format!("-j {ISTIO_INBOUND}"));
        b.append("raw", ISTIO_OUTPUT_DNS, "-p udp --dport 53 -j CT --zone 2");
        b.append("raw", ISTIO_INBOUND, "-p udp --sport 53 -j CT --zone 1");
        return;
    }
    for family in FAMILIES {
        let servers = name_servers(dns, family);
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

/// The pod's name servers of one family, as host prefixes. An IPv4-mapped server is an IPv6
/// one here, as in istio-iptables (whose rule never matches: such queries are IPv4).
fn name_servers(dns: &DnsCapture, family: Family) -> Vec<String> {
    let DnsCapture::Servers(servers) = dns else {
        return Vec::new();
    };
    servers
        .iter()
        .filter(|a| Family::of(a) == family)
        .map(|a| match a {
            std::net::IpAddr::V4(a) => format!("{a}/32"),
            std::net::IpAddr::V6(a) => format!("{a}/128"),
        })
        .collect()
}
