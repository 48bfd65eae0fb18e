//! A readable rendering of a plan, for `--dry-run`: every map entry in words and addresses.

use interceptor_ebpf::{
    CIDR4_KEY_PREFIX_BITS, CIDR6_KEY_PREFIX_BITS, CidrSet, PortSet, flags, wire::ipv6_octets,
};
use serde::Serialize;

use super::MapPlan;

impl MapPlan {
    /// A readable rendering for `--dry-run` and `status`.
    pub fn describe(&self) -> MapPlanView {
        let p = &self.pod;
        MapPlanView {
            pod_config: PodConfigView {
                netns_cookie: self.netns_cookie,
                rules: p.rules,
                pod_index: p.pod_index,
                flags: flag_names(p.flags),
                proxy_port: p.proxy_port,
                inbound_capture_port: p.inbound_capture_port,
                inbound_tunnel_port: p.inbound_tunnel_port,
                uids: p.uids[..p.n_uids as usize].to_vec(),
                gids: p.gids[..p.n_gids as usize].to_vec(),
                local_addrs4: p.local4[..p.n_local4 as usize]
                    .iter()
                    .map(|a| std::net::Ipv4Addr::from(a.to_ne_bytes()).to_string())
                    .collect(),
                dns_servers4: p.dns4[..p.n_dns4 as usize]
                    .iter()
                    .map(|a| std::net::Ipv4Addr::from(a.to_ne_bytes()).to_string())
                    .collect(),
                dns_servers6: p.dns6[..p.n_dns6 as usize]
                    .iter()
                    .map(|a| std::net::Ipv6Addr::from(ipv6_octets(*a)).to_string())
                    .collect(),
                inbound_exclude_ifindexes: p.exclude_ifindex[..p.n_exclude_ifindex as usize]
                    .to_vec(),
                local_addrs6: p.local6[..p.n_local6 as usize]
                    .iter()
                    .map(|a| std::net::Ipv6Addr::from(ipv6_octets(*a)).to_string())
                    .collect(),
            },
            port_set: self
                .ports
                .iter()
                .map(|k| {
                    let set = match k.set {
                        s if s == PortSet::OutboundExclude as u16 => "outbound_exclude",
                        s if s == PortSet::OutboundInclude as u16 => "outbound_include",
                        s if s == PortSet::InboundInclude as u16 => "inbound_include",
                        _ => "inbound_exclude",
                    };
                    format!("rules={} {set} port={}", k.rules, k.port)
                })
                .collect(),
            cidr4: self
                .cidrs4
                .iter()
                .map(|e| {
                    format!(
                        "rules={} {} {}/{}{}",
                        e.key.rules,
                        set_name(e.key.set),
                        std::net::Ipv4Addr::from(e.key.addr.to_ne_bytes()),
                        e.prefix_len - CIDR4_KEY_PREFIX_BITS,
                        route_mark(e.key.set, e.value)
                    )
                })
                .collect(),
            cidr6: self
                .cidrs6
                .iter()
                .map(|e| {
                    format!(
                        "rules={} {} {}/{}{}",
                        e.key.rules,
                        set_name(e.key.set),
                        std::net::Ipv6Addr::from(ipv6_octets(e.key.addr)),
                        e.prefix_len - CIDR6_KEY_PREFIX_BITS,
                        route_mark(e.key.set, e.value)
                    )
                })
                .collect(),
        }
    }
}

fn set_name(set: u32) -> &'static str {
    match set {
        s if s == CidrSet::Include as u32 => "include",
        s if s == CidrSet::Exclude as u32 => "exclude",
        _ => "route",
    }
}

/// ` via excluded interface` for a route entry that goes through a `-c` interface.
fn route_mark(set: u32, value: u8) -> &'static str {
    if set == CidrSet::Route as u32 && value == 1 {
        " via excluded interface"
    } else {
        ""
    }
}

fn flag_names(bits: u32) -> Vec<&'static str> {
    [
        (flags::INCLUDE_ALL, "include_all"),
        (flags::HAS_INCLUDE_CIDRS, "include_cidrs"),
        (flags::HAS_EXCLUDE_CIDRS, "exclude_cidrs"),
        (flags::HAS_OUTBOUND_PORTS_EXCLUDE, "outbound_ports_exclude"),
        (flags::HAS_OUTBOUND_PORTS_INCLUDE, "outbound_ports_include"),
        (flags::LOOPBACK_INCLUDED, "loopback_included"),
        (flags::OWNER_GROUPS_ONLY, "owner_groups_only"),
        (flags::OWNER_GROUPS_EXCEPT, "owner_groups_except"),
        (flags::HAS_EXCLUDED_ROUTES4, "excluded_interface_routes4"),
        (flags::HAS_EXCLUDED_ROUTES6, "excluded_interface_routes6"),
        (flags::REDIRECT_DNS, "redirect_dns"),
        (flags::CAPTURE_ALL_DNS, "capture_all_dns"),
        (flags::INBOUND_CAPTURE, "inbound_capture"),
        (flags::INBOUND_ALL_PORTS, "inbound_all_ports"),
        (flags::HAS_INBOUND_PORTS_EXCLUDE, "inbound_ports_exclude"),
        (flags::INBOUND_FAIL_CLOSED, "inbound_fail_closed"),
        (flags::RAW_SOCKETS_ALLOWED, "raw_sockets_allowed"),
        (flags::HAS_INCLUDE_CIDRS6, "include_cidrs6"),
        (flags::HAS_EXCLUDE_CIDRS6, "exclude_cidrs6"),
        (flags::IPV6, "ipv6"),
        (flags::ACCELERATE, "accelerate"),
    ]
    .into_iter()
    .filter(|(bit, _)| bits & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

#[derive(Debug, Serialize)]
pub struct MapPlanView {
    pub pod_config: PodConfigView,
    pub port_set: Vec<String>,
    pub cidr4: Vec<String>,
    pub cidr6: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct PodConfigView {
    pub netns_cookie: u64,
    pub rules: u32,
    pub pod_index: u32,
    pub flags: Vec<&'static str>,
    pub proxy_port: u16,
    pub inbound_capture_port: u16,
    pub inbound_tunnel_port: u16,
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
    pub local_addrs4: Vec<String>,
    pub dns_servers4: Vec<String>,
    pub dns_servers6: Vec<String>,
    pub inbound_exclude_ifindexes: Vec<u32>,
    pub local_addrs6: Vec<String>,
}
