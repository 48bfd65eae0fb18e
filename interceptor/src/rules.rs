//! The configuration as map entries: what `init` writes and `--dry-run` prints. Pure.

use std::net::IpAddr;

use interceptor_ebpf::{
    CIDR4_KEY_PREFIX_BITS, Cidr4Key, CidrSet, MAX_DNS_SERVERS4, MAX_LOCAL_ADDRS4, PodConfig,
    PortKey, PortSet, flags, wire::raw_ipv4,
};
use serde::Serialize;

use crate::{
    config::{Cidr, InterceptConfig, OutboundInclude},
    dns::DnsCapture,
    netns::NetnsInfo,
};

/// One LPM-trie entry of `CIDR4`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CidrEntry {
    pub prefix_len: u32,
    pub key: Cidr4Key,
}

/// Everything one pod's configuration puts into the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapPlan {
    pub netns_cookie: u64,
    pub pod: PodConfig,
    pub ports: Vec<PortKey>,
    pub cidrs4: Vec<CidrEntry>,
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

        match dns {
            DnsCapture::Off => {}
            DnsCapture::All => pod.flags |= flags::REDIRECT_DNS | flags::CAPTURE_ALL_DNS,
            DnsCapture::Servers(servers) => {
                pod.flags |= flags::REDIRECT_DNS;
                let v4: Vec<_> = servers
                    .iter()
                    .filter_map(|s| match s {
                        IpAddr::V4(a) => Some(*a),
                        IpAddr::V6(_) => None,
                    })
                    .collect();
                if v4.len() > MAX_DNS_SERVERS4 {
                    anyhow::bail!(
                        "the pod's resolv.conf names {} IPv4 name servers; at most \
                         {MAX_DNS_SERVERS4} are supported",
                        v4.len()
                    );
                }
                pod.n_dns4 = v4.len() as u8;
                for (slot, a) in pod.dns4.iter_mut().zip(&v4) {
                    *slot = raw_ipv4(a.octets());
                }
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

        let mut cidrs4 = Vec::new();
        match &cfg.outbound_include {
            OutboundInclude::All => pod.flags |= flags::INCLUDE_ALL,
            OutboundInclude::Cidrs(list) => {
                let before = cidrs4.len();
                cidrs4.extend(cidr_entries(rules, CidrSet::Include, list));
                if cidrs4.len() > before {
                    pod.flags |= flags::HAS_INCLUDE_CIDRS;
                }
            }
        }
        if cfg.loopback_included() {
            pod.flags |= flags::LOOPBACK_INCLUDED;
        }
        let before = cidrs4.len();
        cidrs4.extend(cidr_entries(rules, CidrSet::Exclude, &cfg.outbound_exclude));
        if cidrs4.len() > before {
            pod.flags |= flags::HAS_EXCLUDE_CIDRS;
        }
        Ok(MapPlan {
            netns_cookie: netns.cookie,
            pod,
            ports,
            cidrs4,
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
            },
            port_set: self
                .ports
                .iter()
                .map(|k| {
                    let set = if k.set == PortSet::OutboundExclude as u16 {
                        "outbound_exclude"
                    } else {
                        "outbound_include"
                    };
                    format!("rules={} {set} port={}", k.rules, k.port)
                })
                .collect(),
            cidr4: self
                .cidrs4
                .iter()
                .map(|e| {
                    let set = if e.key.set == CidrSet::Include as u32 {
                        "include"
                    } else {
                        "exclude"
                    };
                    format!(
                        "rules={} {set} {}/{}",
                        e.key.rules,
                        std::net::Ipv4Addr::from(e.key.addr.to_ne_bytes()),
                        e.prefix_len - CIDR4_KEY_PREFIX_BITS
                    )
                })
                .collect(),
        }
    }
}

fn cidr_entries<'a>(
    rules: u32,
    set: CidrSet,
    list: &'a [Cidr],
) -> impl Iterator<Item = CidrEntry> + 'a {
    list.iter().filter_map(move |c| match c.network() {
        IpAddr::V4(net) => Some(CidrEntry {
            prefix_len: CIDR4_KEY_PREFIX_BITS + u32::from(c.prefix_len),
            key: Cidr4Key {
                rules,
                set: set as u32,
                addr: raw_ipv4(net.octets()),
            },
        }),
        IpAddr::V6(_) => None, // IPv6 is not intercepted yet (see InterceptConfig::not_enforced)
    })
}

fn flag_names(bits: u32) -> Vec<&'static str> {
    [
        (flags::INCLUDE_ALL, "include_all"),
        (flags::HAS_INCLUDE_CIDRS, "include_cidrs"),
        (flags::HAS_EXCLUDE_CIDRS, "exclude_cidrs"),
        (flags::HAS_OUTBOUND_PORTS_EXCLUDE, "outbound_ports_exclude"),
        (flags::HAS_OUTBOUND_PORTS_INCLUDE, "outbound_ports_include"),
        (flags::LOOPBACK_INCLUDED, "loopback_included"),
        (flags::REDIRECT_DNS, "redirect_dns"),
        (flags::CAPTURE_ALL_DNS, "capture_all_dns"),
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
                    }
                },
                CidrEntry {
                    prefix_len: 64 + 24,
                    key: Cidr4Key {
                        rules: 7,
                        set: CidrSet::Exclude as u32,
                        addr: raw_ipv4([10, 96, 5, 0])
                    }
                },
            ],
            "the IPv6 range is left out and host bits are cleared"
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
        assert_eq!(
            f & (flags::INCLUDE_ALL | flags::HAS_OUTBOUND_PORTS_EXCLUDE),
            0
        );
        assert_eq!(plan.pod.local4[0], raw_ipv4([10, 1, 0, 2]));
        assert_eq!(plan.pod.n_local4, 1);
        assert_eq!(plan.describe().cidr4[0], "rules=7 include 10.96.0.0/12");
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
}
