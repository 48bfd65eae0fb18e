//! `explain` for the eBPF backend: the pod's configuration and rule sets are read from the
//! node's pinned maps, and the kernel's decision functions (`interceptor_ebpf::decision`,
//! `inbound`) run on them with the same lookups the programs make. The rule that decided is
//! then named by the iptables backend's rule-set builder, from the pod's options: those it was
//! registered with when they still give exactly its live entries, else options read back from
//! the entries themselves.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use interceptor_ebpf::{
    CidrSet, Counter, PodConfig, PortSet,
    decision::{
        Connect, Decision, Proto, RuleSets, Verdict as KernelVerdict, decide_outbound_by_rule,
    },
    family::{V4, V6},
    flags,
    inbound::{InboundDecision, InboundLookup, InboundVerdict, decide_inbound_by_rule},
    wire::{RawIpv4, RawIpv6, ipv4_octets, ipv6_octets, raw_ipv4, raw_ipv6},
};

use super::{Connection, Explanation, Outbound, Verdict, listening_ports, out_interface, outcome};
use crate::{
    config::{
        Cidr, DnsCapture, InboundFail, InboundPorts, InterceptConfig, InterceptionMode,
        OutboundInclude, OwnerGroups, RawSockets, defaults,
    },
    datapath::{
        Datapath, MapPlan, PodRecord,
        bpffs::{self, PodDir},
        maps::{Maps, RuleSetEntries},
    },
    error::ConfigError,
    family::Family,
    iptables::ruleset::words::{self, Context, Subject},
    pod::{NameServers, Netns, PodFacts, cgroup::Cgroup},
    sys::fs::lock_dir_shared,
};

/// Which pod: its namespace, its cgroup (per-pod instances), or its name (node mode).
#[derive(Clone, Debug, Default)]
pub struct PodTarget {
    pub bpffs: PathBuf,
    pub netns: Option<PathBuf>,
    pub cgroup: Option<PathBuf>,
    /// `namespace/name`.
    pub pod: Option<String>,
}

/// A registered pod, as the node's maps hold it.
pub struct LivePod {
    pub datapath: Datapath,
    pub cookie: u64,
    pub config: PodConfig,
    pub record: PodRecord,
}

impl LivePod {
    /// How `status` would name it.
    pub fn describe(&self) -> String {
        if !self.record.name.is_empty() {
            format!("{}/{}", self.record.namespace, self.record.name)
        } else if !self.record.cgroup.is_empty() {
            format!(
                "cgroup {} (netns cookie {})",
                self.record.cgroup, self.cookie
            )
        } else {
            format!("netns cookie {}", self.cookie)
        }
    }
}

/// Finds the pod `target` names in the node's datapaths.
pub fn find_pod(target: &PodTarget) -> anyhow::Result<LivePod> {
    let base = bpffs::interceptor_dir(&target.bpffs);
    if !bpffs::is_mounted(&target.bpffs) || !base.exists() {
        bail!(
            "no interception on this node (nothing under {})",
            base.display()
        );
    }
    // Shared lock: no writer is half-way through while this reads.
    let _lock = lock_dir_shared(&base).with_context(|| format!("locking {}", base.display()))?;
    let cookie = match (&target.netns, &target.cgroup, &target.pod) {
        (Some(netns), _, _) => Some(Netns::open(netns)?.cookie()?),
        (None, Some(cgroup), _) => {
            let id = Cgroup::open(cgroup)?.id;
            let found = bpffs::datapath_dirs(&base).into_iter().find_map(|dir| {
                bpffs::pod_dirs(&dir).into_iter().find_map(|p| match p {
                    PodDir::Init { cgroup_id, cookie } if cgroup_id == id => Some(cookie),
                    _ => None,
                })
            });
            Some(found.ok_or_else(|| {
                anyhow!(
                    "--cgroup {}: no pod of this cgroup is intercepted",
                    cgroup.display()
                )
            })?)
        }
        (None, None, Some(_)) => None,
        (None, None, None) => bail!("name the pod: --netns, --cgroup or --pod NAMESPACE/NAME"),
    };
    for dir in bpffs::datapath_dirs(&base) {
        let Ok(dp) = Datapath::existing(&dir) else {
            continue;
        };
        let cookie = match (cookie, &target.pod) {
            (Some(c), _) => c,
            (None, Some(name)) => match pod_named(&dp, name) {
                Some(c) => c,
                None => continue,
            },
            (None, None) => continue,
        };
        if let Some(config) = dp.maps.pod_config(cookie)? {
            let mut record = dp.pod_record(cookie).unwrap_or_default();
            record.netns_cookie = cookie;
            return Ok(LivePod {
                datapath: dp,
                cookie,
                config,
                record,
            });
        }
    }
    match (&target.netns, &target.pod) {
        (Some(n), _) => bail!(
            "--netns {}: this pod is not intercepted by eBPF",
            n.display()
        ),
        (_, Some(p)) => bail!("--pod {p}: no such pod is registered"),
        _ => bail!("the pod is not registered"),
    }
}

/// The cookie of the pod `namespace/name` in `dp`, if registered there.
fn pod_named(dp: &Datapath, name: &str) -> Option<u64> {
    let (ns, pod) = name.split_once('/')?;
    dp.maps
        .pod_records()
        .into_iter()
        .find_map(|(cookie, json)| {
            let r: PodRecord = serde_json::from_slice(&json).ok()?;
            (r.namespace == ns && r.name == pod).then_some(cookie)
        })
}

/// The pod's live sets, looked up as the programs look them up.
struct LiveSets<'a>(&'a Maps);

impl RuleSets<V4> for LiveSets<'_> {
    fn has_port(&self, rules: u32, set: PortSet, port: u16) -> bool {
        self.0.has_port(rules, set, port)
    }
    fn longest_match(&self, rules: u32, set: CidrSet, addr: RawIpv4) -> Option<u8> {
        self.0.longest_match4(rules, set, addr)
    }
}

impl RuleSets<V6> for LiveSets<'_> {
    fn has_port(&self, rules: u32, set: PortSet, port: u16) -> bool {
        self.0.has_port(rules, set, port)
    }
    fn longest_match(&self, rules: u32, set: CidrSet, addr: RawIpv6) -> Option<u8> {
        self.0.longest_match6(rules, set, addr)
    }
}

/// The pod's options and DNS capture as its live entries say, and whether they are the ones it
/// was registered with.
pub struct LiveOptions {
    pub cfg: InterceptConfig,
    pub dns: DnsCapture,
    pub ipv6: bool,
    /// The rule set istio-iptables writes for them (what names the rules).
    pub rules: crate::iptables::ruleset::RuleSet,
    /// Why the registered options were not used, if they were not.
    pub note: Option<String>,
}

/// The options that give the pod's live entries.
pub fn live_options(pod: &LivePod, facts: Option<&PodFacts>) -> LiveOptions {
    options_of(&pod.datapath.maps, &pod.config, &pod.record, facts)
}

/// The options that give the live entries of the pod with configuration `pc` and record
/// `record` in `maps`.
pub fn options_of(
    maps: &Maps,
    pc: &PodConfig,
    record: &PodRecord,
    facts: Option<&PodFacts>,
) -> LiveOptions {
    let entries = maps.rule_set(pc.rules);
    let dns = dns_capture(pc);
    let ipv6 = pc.has(flags::IPV6);
    let recorded = record
        .config
        .clone()
        .and_then(|v| serde_json::from_value::<InterceptConfig>(v).ok());
    let note = match (&recorded, facts) {
        (None, _) => Some("the pod's record holds no options: they are read back from its entries"),
        (Some(_), None) => Some("the pod's namespace is gone: options read back from its entries"),
        (Some(cfg), Some(facts)) => {
            if same_entries(cfg, facts, &dns, pc, &entries) {
                None
            } else {
                Some(
                    "the options the pod was registered with no longer give its live entries \
                     (its addresses or interfaces changed?): options read back from them",
                )
            }
        }
    };
    let cfg = match (note, recorded) {
        (None, Some(cfg)) => cfg,
        _ => from_entries(pc, &entries, facts),
    };
    let rules = crate::iptables::ruleset::build(&cfg, &dns, ipv6);
    LiveOptions {
        cfg,
        dns,
        ipv6,
        rules,
        note: note.map(str::to_string),
    }
}

/// Whether `cfg`, planned for this pod today, gives exactly its live configuration and sets.
fn same_entries(
    cfg: &InterceptConfig,
    facts: &PodFacts,
    dns: &DnsCapture,
    live: &PodConfig,
    entries: &RuleSetEntries,
) -> bool {
    let facts = PodFacts {
        netns_cookie: Some(0),
        ..facts.clone()
    };
    let Ok(plan) = MapPlan::build(cfg, &facts, dns, live.rules, live.pod_index) else {
        return false;
    };
    let mut ports = plan.ports.clone();
    let mut live_ports = entries.ports.clone();
    ports.sort_by_key(|k| (k.set, k.port));
    live_ports.sort_by_key(|k| (k.set, k.port));
    // As `Maps::rule_set` gives the live ones: (set, address, prefix length, value).
    fn entry<A>(set: u32, addr: A, prefix_len: u32, value: u8) -> (u32, A, u32, u8) {
        let bits = prefix_len - interceptor_ebpf::CIDR_KEY_PREFIX_BITS;
        (set, addr, bits, value)
    }
    let c4 = plan.cidrs4.iter();
    let mut c4: Vec<_> = c4
        .map(|e| entry(e.key.set, e.key.addr, e.prefix_len, e.value))
        .collect();
    let c6 = plan.cidrs6.iter();
    let mut c6: Vec<_> = c6
        .map(|e| entry(e.key.set, e.key.addr, e.prefix_len, e.value))
        .collect();
    let (mut l4, mut l6) = (entries.cidrs4.clone(), entries.cidrs6.clone());
    c4.sort();
    c6.sort();
    l4.sort();
    l6.sort();
    plan.pod == *live && ports == live_ports && c4 == l4 && c6 == l6
}

/// DNS capture as the pod's configuration holds it.
fn dns_capture(pc: &PodConfig) -> DnsCapture {
    if !pc.has(flags::REDIRECT_DNS) {
        return DnsCapture::Off;
    }
    if pc.has(flags::CAPTURE_ALL_DNS) {
        return DnsCapture::All;
    }
    let v4 = pc.dns4[..usize::from(pc.n_dns4)]
        .iter()
        .map(|&a| IpAddr::V4(Ipv4Addr::from(ipv4_octets(a))));
    let v6 = pc.dns6[..usize::from(pc.n_dns6)]
        .iter()
        .map(|&a| IpAddr::V6(Ipv6Addr::from(ipv6_octets(a))));
    DnsCapture::Servers(v4.chain(v6).collect())
}

/// Options read back from a pod's entries: what they say, with lists in address and port
/// order (the order they were given in is not kept by the maps).
fn from_entries(pc: &PodConfig, e: &RuleSetEntries, facts: Option<&PodFacts>) -> InterceptConfig {
    let ports = |set: PortSet| -> Vec<u16> {
        let mut v: Vec<u16> = e
            .ports
            .iter()
            .filter(|k| k.set == set as u16)
            .map(|k| k.port)
            .collect();
        v.sort_unstable();
        v
    };
    // Every range of both families: (set, address, prefix length).
    let ranges: Vec<(u32, IpAddr, u32)> = (e.cidrs4.iter())
        .map(|c| (c.0, IpAddr::V4(Ipv4Addr::from(ipv4_octets(c.1))), c.2))
        .chain((e.cidrs6.iter()).map(|c| (c.0, IpAddr::V6(Ipv6Addr::from(ipv6_octets(c.1))), c.2)))
        .collect();
    let cidrs = |set: CidrSet| -> Vec<Cidr> {
        let mut of_set: Vec<Cidr> = (ranges.iter())
            .filter(|c| c.0 == set as u32)
            .map(|c| Cidr {
                addr: c.1,
                prefix_len: c.2 as u8,
            })
            .collect();
        of_set.sort_by_key(|c| (c.addr, c.prefix_len));
        of_set
    };
    let interface = |index: u32| {
        facts
            .and_then(|f| f.interfaces.iter().find(|(_, i)| *i == index))
            .map_or_else(|| format!("if{index}"), |(name, _)| name.clone())
    };
    let groups = pc.owner_groups[..usize::from(pc.n_owner_groups)].to_vec();
    let loopback = Cidr {
        addr: IpAddr::V4(Ipv4Addr::from(ipv4_octets(pc.loopback4_net))),
        prefix_len: u32::from_be_bytes(ipv4_octets(pc.loopback4_mask)).count_ones() as u8,
    };
    InterceptConfig {
        envoy_port: pc.proxy_port,
        inbound_capture_port: pc.inbound_capture_port,
        inbound_tunnel_port: pc.inbound_tunnel_port,
        proxy_uids: pc.uids[..usize::from(pc.n_uids)].to_vec(),
        proxy_gids: pc.gids[..usize::from(pc.n_gids)].to_vec(),
        outbound_include: if pc.has(flags::INCLUDE_ALL) {
            OutboundInclude::All
        } else {
            OutboundInclude::Cidrs(cidrs(CidrSet::Include))
        },
        outbound_exclude: cidrs(CidrSet::Exclude),
        outbound_ports_include: ports(PortSet::OutboundInclude),
        outbound_ports_exclude: ports(PortSet::OutboundExclude),
        inbound_mode: InterceptionMode::Redirect,
        raw_sockets: if pc.has(flags::RAW_SOCKETS_ALLOWED) {
            RawSockets::Allow
        } else {
            RawSockets::Refuse
        },
        accelerate: pc.has(flags::ACCELERATE),
        inbound_ports: if !pc.has(flags::INBOUND_CAPTURE) {
            InboundPorts::Ports(Vec::new())
        } else if pc.has(flags::INBOUND_ALL_PORTS) {
            InboundPorts::All
        } else {
            InboundPorts::Ports(ports(PortSet::InboundInclude))
        },
        inbound_ports_exclude: ports(PortSet::InboundExclude),
        inbound_fail: if pc.has(flags::INBOUND_FAIL_CLOSED) {
            InboundFail::Closed
        } else {
            InboundFail::Open
        },
        exclude_interfaces: pc.exclude_ifindex[..usize::from(pc.n_exclude_ifindex)]
            .iter()
            .map(|&i| interface(i))
            .collect(),
        kube_virt_interfaces: Vec::new(),
        redirect_dns: pc.has(flags::REDIRECT_DNS),
        capture_all_dns: pc.has(flags::CAPTURE_ALL_DNS),
        drop_invalid: false,
        owner_groups: if pc.has(flags::OWNER_GROUPS_ONLY) {
            OwnerGroups::Only(groups)
        } else {
            OwnerGroups::AllExcept(groups)
        },
        ipv4_loopback_cidr: loopback,
        tproxy_mark: defaults::TPROXY_MARK,
        tproxy_route_table: defaults::TPROXY_ROUTE_TABLE,
        dual_stack: pc.has(flags::IPV6),
    }
}

/// The pod's facts (addresses, interfaces, routes), read in its namespace, if it still has one.
pub fn pod_facts(pod: &LivePod, netns: Option<&Path>) -> Option<(Netns, PodFacts)> {
    let path = netns
        .map(Path::to_path_buf)
        .or_else(|| (!pod.record.netns.is_empty()).then(|| PathBuf::from(&pod.record.netns)))?;
    let netns = Netns::open(&path).ok()?;
    let facts = PodFacts::read(&netns, &NameServers::NotNeeded).ok()?;
    (facts.netns_cookie == Some(pod.cookie)).then_some((netns, facts))
}

/// Explains `conn` for the pod `target` names.
pub fn explain(target: &PodTarget, conn: &Connection) -> anyhow::Result<Explanation> {
    let pod = find_pod(target)?;
    let found = pod_facts(&pod, target.netns.as_deref());
    let (netns, facts) = match &found {
        Some((n, f)) => (Some(n), Some(f)),
        None => (None, None),
    };
    let opts = live_options(&pod, facts);
    explain_for(&pod, netns, facts, &opts, conn)
}

/// Explains `conn` for a pod found already (batches reuse it).
pub fn explain_for(
    pod: &LivePod,
    netns: Option<&Netns>,
    facts: Option<&PodFacts>,
    opts: &LiveOptions,
    conn: &Connection,
) -> anyhow::Result<Explanation> {
    let ctx = Context::with_set(&opts.cfg, &opts.dns, opts.ipv6, &opts.rules);
    let sets = LiveSets(&pod.datapath.maps);
    let pc = &pod.config;
    let (verdict, words, udp, local) = match *conn {
        Connection::Outbound(ref o) => {
            let (udp, to) = (o.udp, o.to);
            let (decided, family, dst) = decide_outbound(pc, &sets, o);
            let subject = Subject {
                family,
                udp,
                dst,
                dst_port: to.port(),
                interface: facts.and_then(|f| out_interface(f, dst)),
            };
            let verdict = match decided.verdict {
                KernelVerdict::Direct(c) => Verdict::Direct {
                    counter: Some(c.name()),
                },
                KernelVerdict::Redirect { port, counter } => Verdict::Redirect {
                    port,
                    counter: Some(counter.name()),
                },
            };
            let local = facts
                .is_some_and(|f| super::is_local(f, dst))
                .then_some(to.port());
            (
                verdict,
                words::outbound(&ctx, decided.rule, &subject),
                udp,
                local,
            )
        }
        Connection::Inbound(ref i) => {
            let (from, to, interface) = (i.from, i.to, &i.interface);
            let facts = facts.ok_or_else(|| {
                anyhow!("the pod's network namespace is needed to know its interfaces")
            })?;
            let ifc = match interface {
                Some(i) => i.clone(),
                None => super::route_interface(&facts.routes, to.ip()).ok_or_else(|| {
                    anyhow!("no route to {} in the pod: name the interface", to.ip())
                })?,
            };
            let ifindex = facts
                .interfaces
                .iter()
                .find(|(n, _)| *n == ifc)
                .map(|(_, i)| *i)
                .ok_or_else(|| ConfigError::NoSuchInterface {
                    flag: "--interface",
                    value: ifc.clone(),
                })?;
            let decided = decide_inbound(pc, &sets, from, to, ifindex);
            let family = Family::of(&to.ip());
            let verdict = match decided.verdict {
                InboundVerdict::Pass(c) => Verdict::Direct {
                    counter: c.map(Counter::name),
                },
                InboundVerdict::Steer => {
                    let maps = &pod.datapath.maps;
                    let listener = maps.has_listener(pod.cookie, family)
                        || (family == Family::V4 && maps.has_listener(pod.cookie, Family::V6));
                    if listener {
                        Verdict::Steer {
                            port: pc.inbound_capture_port,
                        }
                    } else {
                        Verdict::NoListener {
                            refused: pc.has(flags::INBOUND_FAIL_CLOSED),
                        }
                    }
                }
            };
            let subject = Subject {
                family,
                udp: false,
                dst: to.ip(),
                dst_port: to.port(),
                interface: Some(ifc),
            };
            let words = words::inbound(&ctx, decided.rule, &subject);
            (verdict, words, false, Some(to.port()))
        }
    };
    let ports = match netns {
        Some(n) => n.run_inside(|| Ok(listening_ports()?))?,
        None => Vec::new(),
    };
    let outcome = outcome(&verdict, udp, local, |p| ports.contains(&p));
    let note = match (words.note, &opts.note) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or_else(|| b.clone()),
    };
    Ok(Explanation {
        backend: "ebpf".to_string(),
        pod: pod.describe(),
        connection: conn.to_string(),
        verdict,
        rules: words.rules,
        note,
        outcome,
    })
}

/// The kernel's outbound decision, as `connect4`/`connect6` (and `sendmsg`) make it: an
/// IPv4-mapped destination is an IPv4 connection. The decision, its family and destination.
pub(super) fn decide_outbound<S: RuleSets<V4> + RuleSets<V6>>(
    pc: &PodConfig,
    sets: &S,
    o: &Outbound,
) -> (Decision, Family, IpAddr) {
    let proto = if o.udp { Proto::Udp } else { Proto::Tcp };
    let dst = o.to.ip().to_canonical();
    let src = o.from.map(|a| a.to_canonical());
    let (uid, gid, dst_port) = (o.uid, o.gid, o.to.port());
    match dst {
        IpAddr::V4(d) => {
            let conn = Connect {
                proto,
                dst: raw_ipv4(d.octets()),
                dst_port,
                src: match src {
                    Some(IpAddr::V4(s)) => raw_ipv4(s.octets()),
                    _ => 0,
                },
                uid,
                gid,
            };
            (
                decide_outbound_by_rule::<V4>(pc, &conn, sets),
                Family::V4,
                IpAddr::V4(d),
            )
        }
        IpAddr::V6(d) => {
            let conn = Connect {
                proto,
                dst: raw_ipv6(d.octets()),
                dst_port,
                src: match src {
                    Some(IpAddr::V6(s)) => raw_ipv6(s.octets()),
                    _ => [0; 4],
                },
                uid,
                gid,
            };
            (
                decide_outbound_by_rule::<V6>(pc, &conn, sets),
                Family::V6,
                IpAddr::V6(d),
            )
        }
    }
}

/// The kernel's inbound decision, as `sk_lookup` makes it.
pub(super) fn decide_inbound<S: RuleSets<V4> + RuleSets<V6>>(
    pc: &PodConfig,
    sets: &S,
    from: IpAddr,
    to: SocketAddr,
    ifindex: u32,
) -> InboundDecision {
    match (from.to_canonical(), to.ip()) {
        (IpAddr::V4(f), IpAddr::V4(_)) => {
            let lookup = InboundLookup {
                port: to.port(),
                ifindex,
                remote: raw_ipv4(f.octets()),
            };
            decide_inbound_by_rule::<V4>(pc, &lookup, sets)
        }
        (f, _) => {
            let remote = match f {
                IpAddr::V6(a) => raw_ipv6(a.octets()),
                IpAddr::V4(a) => raw_ipv6(a.to_ipv6_mapped().octets()),
            };
            let lookup = InboundLookup {
                port: to.port(),
                ifindex,
                remote,
            };
            decide_inbound_by_rule::<V6>(pc, &lookup, sets)
        }
    }
}
