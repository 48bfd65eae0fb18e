//! The configuration as map entries: what `init` writes and `--dry-run` prints. Pure.

use std::net::IpAddr;

use interceptor_ebpf::{
    CIDR4_KEY_PREFIX_BITS, CIDR6_KEY_PREFIX_BITS, Cidr4Key, Cidr6Key, CidrSet, MAX_DNS_SERVERS4,
    MAX_DNS_SERVERS6, MAX_LOCAL_ADDRS4, MAX_LOCAL_ADDRS6, MAX_OWNER_GROUPS, PodConfig, PortKey,
    PortSet, flags,
    wire::{ipv6_octets, raw_ipv4, raw_ipv6},
};
use serde::Serialize;

use crate::{
    config::{Cidr, InboundFail, InboundPorts, InterceptConfig, OutboundInclude, OwnerGroups},
    dns::DnsCapture,
    error::ConfigError,
    netns::NetnsInfo,
    routes,
};

/// One LPM-trie entry of `CIDR4`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CidrEntry {
    pub prefix_len: u32,
    pub key: Cidr4Key,
    /// 1 for `-i`/`-x` ranges; for `CidrSet::Route`, whether the route's interface is in `-c`.
    pub value: u8,
}

/// One LPM-trie entry of `CIDR6`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr6Entry {
    pub prefix_len: u32,
    pub key: Cidr6Key,
    /// As `CidrEntry::value`.
    pub value: u8,
}

/// Everything one pod's configuration puts into the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapPlan {
    pub netns_cookie: u64,
    pub pod: PodConfig,
    pub ports: Vec<PortKey>,
    pub cidrs4: Vec<CidrEntry>,
    pub cidrs6: Vec<Cidr6Entry>,
}

impl MapPlan {
    pub fn build(
        cfg: &InterceptConfig,
        netns: &NetnsInfo,
        dns: &DnsCapture,
        rules: u32,
        pod_index: u32,
    ) -> anyhow::Result<Self> {
        let mut pod = PodConfig::empty();
        pod.rules = rules;
        pod.pod_index = pod_index;
        pod.proxy_port = cfg.envoy_port;
        pod.inbound_capture_port = cfg.inbound_capture_port;
        pod.inbound_tunnel_port = cfg.inbound_tunnel_port;
        pod.n_uids = cfg.proxy_uids.len() as u8;
        pod.uids[..cfg.proxy_uids.len()].copy_from_slice(&cfg.proxy_uids);
        pod.n_gids = cfg.proxy_gids.len() as u8;
        pod.gids[..cfg.proxy_gids.len()].copy_from_slice(&cfg.proxy_gids);
        if netns.addrs4.len() > MAX_LOCAL_ADDRS4 {
            anyhow::bail!(
                "the pod has {} IPv4 addresses; at most {MAX_LOCAL_ADDRS4} are supported",
                netns.addrs4.len()
            );
        }
        pod.n_local4 = netns.addrs4.len() as u8;
        for (slot, a) in pod.local4.iter_mut().zip(&netns.addrs4) {
            *slot = raw_ipv4(a.octets());
        }
        if netns.addrs6.len() > MAX_LOCAL_ADDRS6 {
            anyhow::bail!(
                "the pod has {} IPv6 addresses (link-local ones included); at most \
                 {MAX_LOCAL_ADDRS6} are supported",
                netns.addrs6.len()
            );
        }
        pod.n_local6 = netns.addrs6.len() as u8;
        for (slot, a) in pod.local6.iter_mut().zip(&netns.addrs6) {
            *slot = raw_ipv6(a.octets());
        }
        if netns.ipv6_enabled(cfg.dual_stack) {
            pod.flags |= flags::IPV6;
        }

        match dns {
            DnsCapture::Off => {}
            DnsCapture::All => pod.flags |= flags::REDIRECT_DNS | flags::CAPTURE_ALL_DNS,
            DnsCapture::Servers(servers) => {
                pod.flags |= flags::REDIRECT_DNS;
                // Split by family as istio-iptables does: an IPv4-mapped server is an IPv6
                // rule there, which never matches (such connections are IPv4), and so here.
                let mut v4 = Vec::new();
                let mut v6 = Vec::new();
                for s in servers {
                    match s {
                        IpAddr::V4(a) => v4.push(raw_ipv4(a.octets())),
                        IpAddr::V6(a) => v6.push(raw_ipv6(a.octets())),
                    }
                }
                for (n, max, family) in [
                    (v4.len(), MAX_DNS_SERVERS4, "IPv4"),
                    (v6.len(), MAX_DNS_SERVERS6, "IPv6"),
                ] {
                    if n > max {
                        anyhow::bail!(
                            "the pod's resolv.conf names {n} {family} name servers; at most \
                             {max} are supported"
                        );
                    }
                }
                pod.n_dns4 = v4.len() as u8;
                pod.dns4[..v4.len()].copy_from_slice(&v4);
                pod.n_dns6 = v6.len() as u8;
                pod.dns6[..v6.len()].copy_from_slice(&v6);
            }
        }

        let mut ports = Vec::new();
        for (set, list, flag) in [
            (
                PortSet::OutboundExclude,
                &cfg.outbound_ports_exclude,
                flags::HAS_OUTBOUND_PORTS_EXCLUDE,
            ),
            (
                PortSet::OutboundInclude,
                &cfg.outbound_ports_include,
                flags::HAS_OUTBOUND_PORTS_INCLUDE,
            ),
        ] {
            if !list.is_empty() {
                pod.flags |= flag;
            }
            ports.extend(list.iter().map(|&port| PortKey {
                rules,
                set: set as u16,
                port,
            }));
        }

        // Inbound, as istio-iptables: -b '*' captures every port but -d; a -b list captures
        // those ports and ignores -d; an empty -b captures nothing.
        let (inbound_set, inbound_list) = match &cfg.inbound_ports {
            InboundPorts::All => {
                pod.flags |= flags::INBOUND_CAPTURE | flags::INBOUND_ALL_PORTS;
                if !cfg.inbound_ports_exclude.is_empty() {
                    pod.flags |= flags::HAS_INBOUND_PORTS_EXCLUDE;
                }
                (
                    PortSet::InboundExclude,
                    cfg.inbound_ports_exclude.as_slice(),
                )
            }
            InboundPorts::Ports(list) => {
                if !list.is_empty() {
                    pod.flags |= flags::INBOUND_CAPTURE;
                }
                (PortSet::InboundInclude, list.as_slice())
            }
        };
        ports.extend(inbound_list.iter().map(|&port| PortKey {
            rules,
            set: inbound_set as u16,
            port,
        }));
        if cfg.inbound_fail == InboundFail::Closed {
            pod.flags |= flags::INBOUND_FAIL_CLOSED;
        }
        for (i, name) in cfg.exclude_interfaces.iter().enumerate() {
            let index = netns
                .interfaces
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, index)| *index)
                .ok_or_else(|| ConfigError::NoSuchInterface {
                    flag: "-c/--istio-exclude-interfaces",
                    value: name.clone(),
                })?;
            // The count was checked against the array's size when the options were resolved.
            pod.exclude_ifindex[i] = index;
            pod.n_exclude_ifindex = i as u8 + 1;
        }

        // IPv4 and IPv6 ranges, split from the same lists as istio-iptables does (an
        // IPv4-mapped range is IPv6 there too, and so never matches: such connections are IPv4).
        let mut lpm = LpmEntries::default();
        match &cfg.outbound_include {
            OutboundInclude::All => pod.flags |= flags::INCLUDE_ALL,
            OutboundInclude::Cidrs(list) => {
                let (n4, n6) = lpm.add_cidrs(rules, CidrSet::Include, list);
                pod.flags |= flag_if(n4 > 0, flags::HAS_INCLUDE_CIDRS)
                    | flag_if(n6 > 0, flags::HAS_INCLUDE_CIDRS6);
            }
        }
        if cfg.loopback_included() {
            pod.flags |= flags::LOOPBACK_INCLUDED;
        }
        let (n4, n6) = lpm.add_cidrs(rules, CidrSet::Exclude, &cfg.outbound_exclude);
        pod.flags |=
            flag_if(n4 > 0, flags::HAS_EXCLUDE_CIDRS) | flag_if(n6 > 0, flags::HAS_EXCLUDE_CIDRS6);

        // -c on outbound: the pod's routes, each marked with whether it leaves through an
        // excluded interface (see routes.rs).
        for (dst, len, excluded) in
            routes::excluded_route_marks(&netns.routes, &cfg.exclude_interfaces)
        {
            pod.flags |= if dst.is_ipv4() {
                flags::HAS_EXCLUDED_ROUTES4
            } else {
                flags::HAS_EXCLUDED_ROUTES6
            };
            lpm.add(rules, CidrSet::Route, dst, len, u8::from(excluded));
        }
        let LpmEntries { cidrs4, cidrs6 } = lpm;

        // ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE].
        let (groups, flag) = match &cfg.owner_groups {
            OwnerGroups::AllExcept(g) => (g, flags::OWNER_GROUPS_EXCEPT),
            OwnerGroups::Only(g) => (g, flags::OWNER_GROUPS_ONLY),
        };
        if groups.len() > MAX_OWNER_GROUPS {
            return Err(ConfigError::Unsupported {
                flag: "ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]",
                reason: format!(
                    "{} groups; the eBPF backend takes at most {MAX_OWNER_GROUPS}",
                    groups.len()
                ),
            }
            .into());
        }
        if !groups.is_empty() || matches!(cfg.owner_groups, OwnerGroups::Only(_)) {
            pod.flags |= flag;
        }
        pod.n_owner_groups = groups.len() as u8;
        pod.owner_groups[..groups.len()].copy_from_slice(groups);

        // ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR (validated as an IPv4 loopback range).
        if let IpAddr::V4(net) = cfg.ipv4_loopback_cidr.network() {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(cfg.ipv4_loopback_cidr.prefix_len))
                .unwrap_or(0);
            pod.loopback4_net = raw_ipv4(net.octets());
            pod.loopback4_mask = raw_ipv4(mask.to_be_bytes());
        }
        Ok(MapPlan {
            netns_cookie: netns.cookie,
            pod,
            ports,
            cidrs4,
            cidrs6,
        })
    }

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

/// The LPM-trie entries of a plan, by family.
#[derive(Default)]
struct LpmEntries {
    cidrs4: Vec<CidrEntry>,
    cidrs6: Vec<Cidr6Entry>,
}

impl LpmEntries {
    /// Adds the network `net`/`len` to the trie of its family.
    fn add(&mut self, rules: u32, set: CidrSet, net: IpAddr, len: u8, value: u8) {
        match net {
            IpAddr::V4(a) => self.cidrs4.push(CidrEntry {
                prefix_len: CIDR4_KEY_PREFIX_BITS + u32::from(len),
                key: Cidr4Key {
                    rules,
                    set: set as u32,
                    addr: raw_ipv4(a.octets()),
                },
                value,
            }),
            IpAddr::V6(a) => self.cidrs6.push(Cidr6Entry {
                prefix_len: CIDR6_KEY_PREFIX_BITS + u32::from(len),
                key: Cidr6Key {
                    rules,
                    set: set as u32,
                    addr: raw_ipv6(a.octets()),
                },
                value,
            }),
        }
    }

    /// Adds `-i`/`-x` ranges (host bits cleared); how many went to each family.
    fn add_cidrs(&mut self, rules: u32, set: CidrSet, list: &[Cidr]) -> (usize, usize) {
        let before = (self.cidrs4.len(), self.cidrs6.len());
        for c in list {
            self.add(rules, set, c.network(), c.prefix_len, 1);
        }
        (self.cidrs4.len() - before.0, self.cidrs6.len() - before.1)
    }
}

fn flag_if(condition: bool, flag: u32) -> u32 {
    if condition { flag } else { 0 }
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
        (flags::HAS_INCLUDE_CIDRS6, "include_cidrs6"),
        (flags::HAS_EXCLUDE_CIDRS6, "exclude_cidrs6"),
        (flags::IPV6, "ipv6"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{IdResolver, RawOptions};

    struct NoUsers;
    impl IdResolver for NoUsers {
        fn uid_of(&self, _: &str) -> Option<u32> {
            None
        }
        fn gid_of(&self, _: &str) -> Option<u32> {
            None
        }
    }

    fn netns() -> NetnsInfo {
        NetnsInfo {
            cookie: 4242,
            addrs4: vec!["10.1.0.2".parse().unwrap()],
            interfaces: vec![("lo".into(), 1), ("eth0".into(), 2), ("eth1".into(), 5)],
            addrs6: vec!["fd00:1::2".parse().unwrap(), "fe80::1".parse().unwrap()],
            routes: Vec::new(),
        }
    }

    #[test]
    fn cidrs_become_masked_lpm_keys_under_the_rules_id() {
        let raw = RawOptions {
            service_cidr: Some("10.96.0.1/12,fd00::/8".into()),
            service_exclude_cidr: Some("10.96.5.0/24".into()),
            outbound_ports: Some("8080".into()),
            ..Default::default()
        };
        let cfg = raw.resolve(&NoUsers, "istio-proxy").unwrap();
        let plan = MapPlan::build(&cfg, &netns(), &DnsCapture::Off, 7, 0).unwrap();
        assert_eq!(plan.netns_cookie, 4242);
        assert_eq!(plan.pod.rules, 7);
        assert_eq!(
            plan.cidrs4,
            vec![
                CidrEntry {
                    prefix_len: 64 + 12,
                    key: Cidr4Key {
                        rules: 7,
                        set: CidrSet::Include as u32,
                        addr: raw_ipv4([10, 96, 0, 0])
                    },
                    value: 1,
                },
                CidrEntry {
                    prefix_len: 64 + 24,
                    key: Cidr4Key {
                        rules: 7,
                        set: CidrSet::Exclude as u32,
                        addr: raw_ipv4([10, 96, 5, 0])
                    },
                    value: 1,
                },
            ],
            "the IPv6 range goes elsewhere and host bits are cleared"
        );
        assert_eq!(
            plan.cidrs6,
            vec![Cidr6Entry {
                prefix_len: 64 + 8,
                key: Cidr6Key {
                    rules: 7,
                    set: CidrSet::Include as u32,
                    addr: raw_ipv6("fd00::".parse::<std::net::Ipv6Addr>().unwrap().octets())
                },
                value: 1,
            }]
        );
        assert_eq!(
            plan.ports,
            vec![PortKey {
                rules: 7,
                set: PortSet::OutboundInclude as u16,
                port: 8080
            }]
        );
        let f = plan.pod.flags;
        assert_ne!(f & flags::HAS_INCLUDE_CIDRS, 0);
        assert_ne!(f & flags::HAS_EXCLUDE_CIDRS, 0);
        assert_ne!(f & flags::HAS_OUTBOUND_PORTS_INCLUDE, 0);
        assert_ne!(f & flags::HAS_INCLUDE_CIDRS6, 0);
        assert_eq!(
            f & (flags::INCLUDE_ALL
                | flags::HAS_OUTBOUND_PORTS_EXCLUDE
                | flags::HAS_EXCLUDE_CIDRS6),
            0
        );
        assert_eq!(plan.pod.local4[0], raw_ipv4([10, 1, 0, 2]));
        assert_eq!(plan.pod.n_local4, 1);
        assert_eq!(plan.describe().cidr4[0], "rules=7 include 10.96.0.0/12");
        assert_eq!(plan.describe().cidr6, vec!["rules=7 include fd00::/8"]);
        assert_eq!(plan.pod.n_local6, 2);
        assert_eq!(
            plan.describe().pod_config.local_addrs6,
            vec!["fd00:1::2", "fe80::1"]
        );
    }

    #[test]
    fn ipv6_only_lists_and_too_many_addresses() {
        let raw = RawOptions {
            service_cidr: Some("fd00:10::1/64".into()),
            service_exclude_cidr: Some("fd00:10::/128,::ffff:10.0.0.0/104".into()),
            ..Default::default()
        };
        let cfg = raw.resolve(&NoUsers, "istio-proxy").unwrap();
        let plan = MapPlan::build(&cfg, &netns(), &DnsCapture::Off, 1, 0).unwrap();
        assert!(
            plan.cidrs4.is_empty(),
            "an IPv4-mapped range is IPv6, as in istio-iptables"
        );
        assert_eq!(
            plan.pod.flags,
            flags::HAS_INCLUDE_CIDRS6 | flags::HAS_EXCLUDE_CIDRS6
        );
        assert_eq!(
            plan.describe().cidr6,
            vec![
                "rules=1 include fd00:10::/64",
                "rules=1 exclude fd00:10::/128",
                "rules=1 exclude ::ffff:10.0.0.0/104",
            ]
        );
        let mut crowded = netns();
        crowded.addrs6 = (1..=9u16)
            .map(|i| std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i))
            .collect();
        let err = MapPlan::build(&cfg, &crowded, &DnsCapture::Off, 1, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("9 IPv6 addresses"), "{err}");
    }

    #[test]
    fn include_all_and_ids() {
        let raw = RawOptions {
            service_cidr: Some("*".into()),
            proxy_uid: Some("1337,1338".into()),
            ..Default::default()
        };
        let cfg = raw.resolve(&NoUsers, "istio-proxy").unwrap();
        let plan = MapPlan::build(&cfg, &netns(), &DnsCapture::Off, 1, 3).unwrap();
        assert_eq!(plan.pod.flags, flags::INCLUDE_ALL);
        assert_eq!(plan.pod.pod_index, 3);
        assert_eq!(&plan.pod.uids[..2], &[1337, 1338]);
        assert_eq!(plan.pod.n_gids, 2);
        assert!(plan.cidrs4.is_empty());
    }

    fn inbound_plan(raw: RawOptions) -> anyhow::Result<MapPlan> {
        let cfg = raw.resolve(&NoUsers, "istio-proxy")?;
        MapPlan::build(&cfg, &netns(), &DnsCapture::Off, 2, 0)
    }

    fn inbound_ports(plan: &MapPlan) -> Vec<(u16, u16)> {
        plan.ports.iter().map(|k| (k.set, k.port)).collect()
    }

    #[test]
    fn the_seed_inbound_list_captures_its_ports_and_ignores_d() {
        let plan = inbound_plan(RawOptions {
            inbound_ports: Some("9080,".into()),
            local_exclude_ports: Some("15020".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(plan.pod.flags, flags::INBOUND_CAPTURE);
        assert_eq!(
            inbound_ports(&plan),
            vec![(PortSet::InboundInclude as u16, 9080)]
        );
    }

    #[test]
    fn wildcard_inbound_uses_d_and_fail_closed_and_interfaces() {
        let plan = inbound_plan(RawOptions {
            inbound_ports: Some("*".into()),
            local_exclude_ports: Some("15020,15090".into()),
            inbound_fail: Some("closed".into()),
            exclude_interfaces: Some("eth1".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            plan.pod.flags,
            flags::INBOUND_CAPTURE
                | flags::INBOUND_ALL_PORTS
                | flags::HAS_INBOUND_PORTS_EXCLUDE
                | flags::INBOUND_FAIL_CLOSED
        );
        assert_eq!(
            inbound_ports(&plan),
            vec![
                (PortSet::InboundExclude as u16, 15020),
                (PortSet::InboundExclude as u16, 15090)
            ]
        );
        assert_eq!(plan.pod.n_exclude_ifindex, 1);
        assert_eq!(plan.pod.exclude_ifindex[0], 5);
        let view = plan.describe();
        assert_eq!(view.pod_config.inbound_exclude_ifindexes, vec![5]);
        assert_eq!(view.port_set[0], "rules=2 inbound_exclude port=15020");
        // No -b: no inbound capture at all.
        let plan = inbound_plan(RawOptions::default()).unwrap();
        assert_eq!(plan.pod.flags & flags::INBOUND_CAPTURE, 0);
    }

    #[test]
    fn an_unknown_interface_is_a_config_error_naming_it() {
        let err = inbound_plan(RawOptions {
            inbound_ports: Some("*".into()),
            exclude_interfaces: Some("eth1,eth9".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            err.downcast_ref::<ConfigError>(),
            Some(&ConfigError::NoSuchInterface {
                flag: "-c/--istio-exclude-interfaces",
                value: "eth9".into()
            })
        );
    }

    #[test]
    fn name_servers_of_both_families_are_captured_each_in_its_own_list() {
        let cfg = RawOptions {
            redirect_dns: true,
            ..Default::default()
        }
        .resolve(&NoUsers, "istio-proxy")
        .unwrap();
        let servers: Vec<IpAddr> = ["10.96.0.10", "fd00:96::10", "::ffff:10.96.0.11"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let plan = MapPlan::build(&cfg, &netns(), &DnsCapture::Servers(servers), 1, 0).unwrap();
        assert_ne!(plan.pod.flags & flags::REDIRECT_DNS, 0);
        let view = plan.describe().pod_config;
        assert_eq!(view.dns_servers4, vec!["10.96.0.10"]);
        // The mapped one is an IPv6 rule, as in istio-iptables (it never matches).
        assert_eq!(view.dns_servers6, vec!["fd00:96::10", "::ffff:10.96.0.11"]);

        let too_many: Vec<IpAddr> = (1..=9u16)
            .map(|i| IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i)))
            .collect();
        let err = MapPlan::build(&cfg, &netns(), &DnsCapture::Servers(too_many), 1, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("9 IPv6 name servers"), "{err}");
    }

    #[test]
    fn ipv6_is_captured_as_istio_iptables_enables_it() {
        let plan = |dual_stack: bool, info: &NetnsInfo| {
            let cfg = RawOptions {
                dual_stack,
                ..Default::default()
            }
            .resolve(&NoUsers, "istio-proxy")
            .unwrap();
            MapPlan::build(&cfg, info, &DnsCapture::Off, 1, 0)
                .unwrap()
                .pod
                .flags
                & flags::IPV6
        };
        // IPv4 first: IPv6 only with --dual-stack.
        assert_eq!(plan(false, &netns()), 0);
        assert_ne!(plan(true, &netns()), 0);
        // IPv6 only (link-local ones do not count): IPv6 either way.
        let v6_only = NetnsInfo {
            addrs4: vec![],
            ..netns()
        };
        assert_ne!(plan(false, &v6_only), 0);
        let link_local_only = NetnsInfo {
            addrs6: vec!["fe80::1".parse().unwrap()],
            ..netns()
        };
        assert_eq!(plan(true, &link_local_only), 0);
    }
}
