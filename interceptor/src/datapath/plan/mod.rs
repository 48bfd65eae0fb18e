//! A pod's configuration as map entries: what the eBPF backend writes and `--dry-run` prints.
//! Pure. Each part of `PodConfig` and each set is filled by its own function, in the order of
//! istio-iptables' options: the proxy, the pod's own addresses, DNS, outbound ports, inbound,
//! outbound ranges and `-c` routes, owner groups, the IPv4 loopback range.
//!
//! - [`lpm`]: the LPM-trie entries of ranges and routes, by family;
//! - [`view`]: the plan in words (`--dry-run`).

mod lpm;
mod view;

use std::net::IpAddr;

use interceptor_ebpf::{
    Cidr4Key, Cidr6Key, CidrSet, MAX_DNS_SERVERS4, MAX_DNS_SERVERS6, MAX_LOCAL_ADDRS4,
    MAX_LOCAL_ADDRS6, MAX_OWNER_GROUPS, PodConfig, PortKey, PortSet, flags,
    wire::{raw_ipv4, raw_ipv6},
};

pub use view::{MapPlanView, PodConfigView};

use self::lpm::LpmEntries;
use crate::{
    config::{
        DnsCapture, InboundFail, InboundPorts, InterceptConfig, OutboundInclude, OwnerGroups,
        RawSockets,
    },
    datapath::Sizes,
    error::{ConfigError, LimitError},
    pod::{PodFacts, routes},
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

/// How many entries a plan puts into one of the node's shared sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetEntries {
    /// What the set holds, by the options that fill it.
    pub what: &'static str,
    pub count: u64,
    /// Most entries of one pod.
    pub pod_max: u32,
    /// Entries of the node's set, shared by its pods.
    pub node_max: u32,
}

impl SetEntries {
    pub const PORTS: &str = "ports (-o, -q, -b, -d)";
    pub const CIDRS4: &str = "IPv4 ranges (-i, -x, and the pod's routes with -c)";
    pub const CIDRS6: &str = "IPv6 ranges (-i, -x, and the pod's routes with -c)";
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
    /// The plan of `cfg` for the pod `facts` describes, under the rule-set id `rules` (the prefix
    /// of every set key) and the counter slot `pod_index`.
    pub fn build(
        cfg: &InterceptConfig,
        facts: &PodFacts,
        dns: &DnsCapture,
        rules: u32,
        pod_index: u32,
    ) -> anyhow::Result<Self> {
        let mut plan = MapPlan {
            netns_cookie: facts.cookie()?,
            pod: PodConfig::empty(),
            ports: Vec::new(),
            cidrs4: Vec::new(),
            cidrs6: Vec::new(),
        };
        plan.pod.rules = rules;
        plan.pod.pod_index = pod_index;
        plan.proxy(cfg);
        plan.local_addresses(cfg, facts)?;
        plan.dns(dns)?;
        plan.outbound_ports(cfg);
        plan.inbound(cfg, facts)?;
        plan.outbound_ranges(cfg, facts);
        plan.owner_groups(cfg)?;
        plan.ipv4_loopback(cfg);
        plan.check_pod_limits()?;
        Ok(plan)
    }

    /// The plan's set entries, by set: (what, entries, most one pod may have, the node's).
    pub fn set_entries(&self) -> [SetEntries; 3] {
        [
            SetEntries {
                what: SetEntries::PORTS,
                count: self.ports.len() as u64,
                pod_max: Sizes::POD_PORT_ENTRIES,
                node_max: Sizes::PORT_ENTRIES,
            },
            SetEntries {
                what: SetEntries::CIDRS4,
                count: self.cidrs4.len() as u64,
                pod_max: Sizes::POD_CIDR_ENTRIES,
                node_max: Sizes::CIDR_ENTRIES,
            },
            SetEntries {
                what: SetEntries::CIDRS6,
                count: self.cidrs6.len() as u64,
                pod_max: Sizes::POD_CIDR_ENTRIES,
                node_max: Sizes::CIDR_ENTRIES,
            },
        ]
    }

    /// A pod has at most its share of each set (checked before anything changes).
    fn check_pod_limits(&self) -> Result<(), LimitError> {
        for e in self.set_entries() {
            if e.count > u64::from(e.pod_max) {
                return Err(LimitError::PodEntries {
                    what: e.what,
                    count: e.count,
                    max: u64::from(e.pod_max),
                    node: u64::from(e.node_max),
                });
            }
        }
        Ok(())
    }

    /// `-p`, `-z`, `-e`, `-u`, `-g` (their counts were checked when the options were resolved).
    fn proxy(&mut self, cfg: &InterceptConfig) {
        let pod = &mut self.pod;
        pod.proxy_port = cfg.envoy_port;
        pod.inbound_capture_port = cfg.inbound_capture_port;
        pod.inbound_tunnel_port = cfg.inbound_tunnel_port;
        pod.n_uids = cfg.proxy_uids.len() as u8;
        pod.uids[..cfg.proxy_uids.len()].copy_from_slice(&cfg.proxy_uids);
        pod.n_gids = cfg.proxy_gids.len() as u8;
        pod.gids[..cfg.proxy_gids.len()].copy_from_slice(&cfg.proxy_gids);
    }

    /// The pod's own addresses (connections to them stay in the pod), and whether IPv6 is
    /// captured at all (istio-iptables' `EnableIPv6`).
    fn local_addresses(&mut self, cfg: &InterceptConfig, facts: &PodFacts) -> anyhow::Result<()> {
        let pod = &mut self.pod;
        if facts.addrs4.len() > MAX_LOCAL_ADDRS4 {
            anyhow::bail!(
                "the pod has {} IPv4 addresses; at most {MAX_LOCAL_ADDRS4} are supported",
                facts.addrs4.len()
            );
        }
        pod.n_local4 = facts.addrs4.len() as u8;
        for (slot, a) in pod.local4.iter_mut().zip(&facts.addrs4) {
            *slot = raw_ipv4(a.octets());
        }
        if facts.addrs6.len() > MAX_LOCAL_ADDRS6 {
            anyhow::bail!(
                "the pod has {} IPv6 addresses (link-local ones included); at most \
                 {MAX_LOCAL_ADDRS6} are supported",
                facts.addrs6.len()
            );
        }
        pod.n_local6 = facts.addrs6.len() as u8;
        for (slot, a) in pod.local6.iter_mut().zip(&facts.addrs6) {
            *slot = raw_ipv6(a.octets());
        }
        // A pod without a usable address captures IPv4 only (istio-iptables refuses it).
        if facts.ipv6_enabled(cfg.dual_stack).unwrap_or(false) {
            pod.flags |= flags::IPV6;
        }
        Ok(())
    }

    /// `--redirect-dns` and the name servers it captures, split by family as istio-iptables
    /// does: an IPv4-mapped server is an IPv6 rule there, which never matches (such
    /// connections are IPv4), and so here.
    fn dns(&mut self, dns: &DnsCapture) -> anyhow::Result<()> {
        let pod = &mut self.pod;
        let servers = match dns {
            DnsCapture::Off => return Ok(()),
            DnsCapture::All => {
                pod.flags |= flags::REDIRECT_DNS | flags::CAPTURE_ALL_DNS;
                return Ok(());
            }
            DnsCapture::Servers(servers) => servers,
        };
        pod.flags |= flags::REDIRECT_DNS;
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
                    "the pod's resolv.conf names {n} {family} name servers; at most {max} are \
                     supported"
                );
            }
        }
        pod.n_dns4 = v4.len() as u8;
        pod.dns4[..v4.len()].copy_from_slice(&v4);
        pod.n_dns6 = v6.len() as u8;
        pod.dns6[..v6.len()].copy_from_slice(&v6);
        Ok(())
    }

    /// Adds `list` to the port set `set`.
    fn add_ports(&mut self, set: PortSet, list: &[u16]) {
        let rules = self.pod.rules;
        self.ports.extend(list.iter().map(|&port| PortKey {
            rules,
            set: set as u16,
            port,
        }));
    }

    /// `-o` and `-q`.
    fn outbound_ports(&mut self, cfg: &InterceptConfig) {
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
            self.pod.flags |= flag_if(!list.is_empty(), flag);
            self.add_ports(set, list);
        }
    }

    /// `-b`, `-d`, `--inbound-fail` and `-c`, as istio-iptables reads them: `-b '*'` captures
    /// every port but `-d`; a `-b` list captures those ports and ignores `-d`; an empty `-b`
    /// captures nothing. `-c` names interfaces whose inbound traffic is never steered.
    fn inbound(&mut self, cfg: &InterceptConfig, facts: &PodFacts) -> Result<(), ConfigError> {
        let (set, list) = match &cfg.inbound_ports {
            InboundPorts::All => {
                self.pod.flags |= flags::INBOUND_CAPTURE
                    | flags::INBOUND_ALL_PORTS
                    | flag_if(
                        !cfg.inbound_ports_exclude.is_empty(),
                        flags::HAS_INBOUND_PORTS_EXCLUDE,
                    );
                (PortSet::InboundExclude, &cfg.inbound_ports_exclude)
            }
            InboundPorts::Ports(list) => {
                self.pod.flags |= flag_if(!list.is_empty(), flags::INBOUND_CAPTURE);
                (PortSet::InboundInclude, list)
            }
        };
        self.add_ports(set, list);
        if cfg.inbound_fail == InboundFail::Closed {
            self.pod.flags |= flags::INBOUND_FAIL_CLOSED;
        }
        if cfg.raw_sockets == RawSockets::Allow {
            self.pod.flags |= flags::RAW_SOCKETS_ALLOWED;
        }
        if cfg.accelerate {
            self.pod.flags |= flags::ACCELERATE;
        }
        for (i, name) in cfg.exclude_interfaces.iter().enumerate() {
            let index = facts
                .interfaces
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, index)| *index)
                .ok_or_else(|| ConfigError::NoSuchInterface {
                    flag: "-c/--istio-exclude-interfaces",
                    value: name.clone(),
                })?;
            // The count was checked against the array's size when the options were resolved.
            self.pod.exclude_ifindex[i] = index;
            self.pod.n_exclude_ifindex = i as u8 + 1;
        }
        Ok(())
    }

    /// `-i` and `-x` ranges of both families, split from the same lists as istio-iptables does
    /// (an IPv4-mapped range is IPv6 there too, and so never matches: such connections are
    /// IPv4), and `-c` on outbound: the pod's routes, each marked with whether it leaves
    /// through an excluded interface (see `pod::routes`).
    fn outbound_ranges(&mut self, cfg: &InterceptConfig, facts: &PodFacts) {
        let rules = self.pod.rules;
        let mut lpm = LpmEntries::default();
        let pod = &mut self.pod;
        match &cfg.outbound_include {
            OutboundInclude::All => pod.flags |= flags::INCLUDE_ALL,
            OutboundInclude::Cidrs(list) => {
                let (n4, n6) = lpm.add_cidrs(rules, CidrSet::Include, list);
                pod.flags |= flag_if(n4 > 0, flags::HAS_INCLUDE_CIDRS)
                    | flag_if(n6 > 0, flags::HAS_INCLUDE_CIDRS6);
            }
        }
        pod.flags |= flag_if(cfg.loopback_included(), flags::LOOPBACK_INCLUDED);
        let (n4, n6) = lpm.add_cidrs(rules, CidrSet::Exclude, &cfg.outbound_exclude);
        pod.flags |=
            flag_if(n4 > 0, flags::HAS_EXCLUDE_CIDRS) | flag_if(n6 > 0, flags::HAS_EXCLUDE_CIDRS6);
        for (dst, len, excluded) in
            routes::excluded_route_marks(&facts.routes, &cfg.exclude_interfaces)
        {
            pod.flags |= if dst.is_ipv4() {
                flags::HAS_EXCLUDED_ROUTES4
            } else {
                flags::HAS_EXCLUDED_ROUTES6
            };
            lpm.add(rules, CidrSet::Route, dst, len, u8::from(excluded));
        }
        self.cidrs4 = lpm.cidrs4;
        self.cidrs6 = lpm.cidrs6;
    }

    /// `ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]`.
    fn owner_groups(&mut self, cfg: &InterceptConfig) -> Result<(), ConfigError> {
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
            });
        }
        let pod = &mut self.pod;
        if !groups.is_empty() || matches!(cfg.owner_groups, OwnerGroups::Only(_)) {
            pod.flags |= flag;
        }
        pod.n_owner_groups = groups.len() as u8;
        pod.owner_groups[..groups.len()].copy_from_slice(groups);
        Ok(())
    }

    /// `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR` (validated as an IPv4 loopback range), as network
    /// and mask.
    fn ipv4_loopback(&mut self, cfg: &InterceptConfig) {
        if let IpAddr::V4(net) = cfg.ipv4_loopback_cidr.network() {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(cfg.ipv4_loopback_cidr.prefix_len))
                .unwrap_or(0);
            self.pod.loopback4_net = raw_ipv4(net.octets());
            self.pod.loopback4_mask = raw_ipv4(mask.to_be_bytes());
        }
    }
}

fn flag_if(condition: bool, flag: u32) -> u32 {
    if condition { flag } else { 0 }
}

#[cfg(test)]
mod tests;
