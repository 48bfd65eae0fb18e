//! `explain`'s two ways of answering, held to each other without a kernel: for the flag sets of
//! the differential test, in a pod of its address plan, the kernel's decision functions on the
//! map entries `init` would write (`MapPlan`), named by the rule-set builder ([`words`]),
//! against a walk of the rules `--backend iptables --dry-run` prints ([`walk`]), over a matrix
//! of connections. The verdicts must agree, and the rules named must be the rules walked, word
//! for word.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use clap::Parser as _;
use interceptor_ebpf::{
    CIDR_KEY_PREFIX_BITS, CidrSet, PortSet,
    decision::{OutboundRule, RuleSets, Verdict as KernelVerdict},
    family::{V4, V6},
    inbound::{InboundRule, InboundVerdict},
    wire::{RawIpv4, RawIpv6, ipv4_octets, ipv6_octets},
};

use interceptor_tests::flag_sets::{FLAG_SETS, flags_and_env};

use super::{Outbound, is_local, out_interface, walk};
use crate::{
    cli::{Cli, Command},
    config::{DnsCapture, InterceptConfig, NoUsers, RawOptions},
    datapath::MapPlan,
    family::Family,
    iptables::{
        ruleset::{
            self,
            words::{self, Context, Subject},
        },
        save,
    },
    pod::{PodFacts, Route},
};

/// The options of a flag set, as `init` reads them.
fn options(set: &[&str]) -> RawOptions {
    let (flags, env) = flags_and_env(set);
    let args = ["interceptor", "init"].into_iter().chain(flags);
    let Command::Init(init) = Cli::try_parse_from(args).unwrap().command else {
        panic!("not init")
    };
    let mut raw = init.istio.raw();
    for (name, value) in env {
        let value = Some(value.to_string());
        match name {
            "ISTIO_OUTBOUND_OWNER_GROUPS" => raw.owner_groups_include = value,
            "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE" => raw.owner_groups_exclude = value,
            "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR" => raw.ipv4_loopback_cidr = value,
            other => panic!("{other}"),
        }
    }
    raw
}

/// The differential test's pod (its topology's address plan): 10.200.0.2 and fd00:200::2 on
/// eth0, 10.200.101.2 on eth1; the server, 10.200.0.1 and fd00:200::1, its name servers.
fn facts() -> PodFacts {
    let route = |dst: &str, len, dev: &str| Route {
        dst: dst.parse().unwrap(),
        prefix_len: len,
        interface: dev.into(),
        metric: 0,
    };
    PodFacts {
        netns_cookie: Some(7),
        addrs4: vec![Ipv4Addr::new(10, 200, 0, 2), Ipv4Addr::new(10, 200, 101, 2)],
        addrs6: vec!["fd00:200::2".parse().unwrap()],
        interfaces: vec![("lo".into(), 1), ("eth0".into(), 2), ("eth1".into(), 3)],
        routes: vec![
            route("0.0.0.0", 0, "eth0"),
            route("10.200.0.0", 24, "eth0"),
            route("10.200.101.0", 24, "eth1"),
            route("::", 0, "eth0"),
            route("fd00:200::", 64, "eth0"),
        ],
        name_servers: vec![
            "10.200.0.1".parse().unwrap(),
            "fd00:200::1".parse().unwrap(),
        ],
    }
}

/// A plan's sets, looked up as the kernel looks its maps up.
struct PlanSets<'a>(&'a MapPlan);

/// An address of either family as the top bits of a `u128`, so that one mask serves both.
fn left4(a: RawIpv4) -> u128 {
    u128::from(u32::from_be_bytes(ipv4_octets(a))) << 96
}

fn left6(a: RawIpv6) -> u128 {
    u128::from_be_bytes(ipv6_octets(a))
}

/// The value of the most specific entry of `set` under `rules` holding `addr`: the entries as
/// (rules, set, address, prefix length, value), addresses left-aligned.
fn longest(
    entries: impl Iterator<Item = (u32, u32, u128, u32, u8)>,
    rules: u32,
    set: CidrSet,
    addr: u128,
) -> Option<u8> {
    entries
        .filter(|e| {
            let mask = u128::MAX.checked_shl(128 - e.3).unwrap_or(0);
            e.0 == rules && e.1 == set as u32 && addr & mask == e.2 & mask
        })
        .max_by_key(|e| e.3)
        .map(|e| e.4)
}

impl RuleSets<V4> for PlanSets<'_> {
    fn has_port(&self, rules: u32, set: PortSet, port: u16) -> bool {
        self.0
            .ports
            .iter()
            .any(|k| k.rules == rules && k.set == set as u16 && k.port == port)
    }
    fn longest_match(&self, rules: u32, set: CidrSet, addr: RawIpv4) -> Option<u8> {
        let entries = self.0.cidrs4.iter().map(|e| {
            let len = e.prefix_len - CIDR_KEY_PREFIX_BITS;
            (e.key.rules, e.key.set, left4(e.key.addr), len, e.value)
        });
        longest(entries, rules, set, left4(addr))
    }
}

impl RuleSets<V6> for PlanSets<'_> {
    fn has_port(&self, rules: u32, set: PortSet, port: u16) -> bool {
        <Self as RuleSets<V4>>::has_port(self, rules, set, port)
    }
    fn longest_match(&self, rules: u32, set: CidrSet, addr: RawIpv6) -> Option<u8> {
        let entries = self.0.cidrs6.iter().map(|e| {
            let len = e.prefix_len - CIDR_KEY_PREFIX_BITS;
            (e.key.rules, e.key.set, left6(e.key.addr), len, e.value)
        });
        longest(entries, rules, set, left6(addr))
    }
}

/// The nat table `--dry-run` prints for one family, as a saved table.
fn dry_run_nat(set: &ruleset::RuleSet, family: Family) -> save::SavedTable {
    let text = ruleset::render(set.rules(family));
    save::parse(&text)
        .into_iter()
        .find(|t| t.name == "nat")
        .unwrap_or_default()
}

struct Pod {
    cfg: InterceptConfig,
    dns: DnsCapture,
    ipv6: bool,
    plan: MapPlan,
    rules: ruleset::RuleSet,
    facts: PodFacts,
}

fn pod(set: &[&str]) -> Pod {
    let cfg = options(set).resolve(&NoUsers, "istio-proxy").unwrap();
    let facts = facts();
    let (dns, _) = DnsCapture::resolve(&cfg, &facts.name_servers);
    let ipv6 = facts.ipv6_enabled(cfg.dual_stack).unwrap();
    let plan = MapPlan::build(&cfg, &facts, &dns, 1, 0).unwrap();
    let rules = ruleset::build(&cfg, &dns, ipv6);
    Pod {
        cfg,
        dns,
        ipv6,
        plan,
        rules,
        facts,
    }
}

/// The differential test's destinations (and two more: unspecified, and an address off every
/// route but the default), ports (and the capture port) and owners.
const DESTINATIONS: [&str; 15] = [
    "10.200.0.1",
    "10.200.1.1",
    "10.200.2.1",
    "127.0.0.1",
    "127.0.0.5",
    "10.200.0.2",
    "10.200.101.1",
    "10.200.250.1",
    "0.0.0.0",
    "fd00:200::1",
    "fd00:200:1::1",
    "fd00:200:2::1",
    "::1",
    "fd00:200::2",
    "192.0.2.1",
];
const PORTS: [u16; 5] = [8080, 3306, 15008, 53, 15006];
const OWNERS: [(u32, u32); 5] = [
    (1000, 1000),
    (1337, 1337),
    (1337, 1000),
    (1000, 1337),
    (2000, 3000),
];

#[test]
fn the_kernel_decisions_named_by_the_builder_are_the_dry_run_rules_walked() {
    let mut rules_seen: BTreeSet<String> = BTreeSet::new();
    for set in FLAG_SETS {
        let pod = pod(set);
        let ctx = Context::with_set(&pod.cfg, &pod.dns, pod.ipv6, &pod.rules);
        let sets = PlanSets(&pod.plan);
        let nats = [
            dry_run_nat(&pod.rules, Family::V4),
            dry_run_nat(&pod.rules, Family::V6),
        ];
        for dst in DESTINATIONS {
            let dst: IpAddr = dst.parse().unwrap();
            for port in PORTS {
                for (uid, gid) in OWNERS {
                    for udp in [false, true] {
                        for src in [None, Some("127.0.0.6"), Some("::6")] {
                            let src: Option<IpAddr> = src.map(|s| s.parse().unwrap());
                            if src.is_some_and(|s| s.is_ipv4() != dst.is_ipv4()) {
                                continue;
                            }
                            let case = format!(
                                "{set:?}: {} {dst}:{port} uid {uid} gid {gid} from {src:?}",
                                if udp { "udp" } else { "tcp" }
                            );
                            let (verdict, rule, family) =
                                decide(&pod, &sets, udp, uid, gid, src, dst, port);
                            let seen_dst = if dst.is_unspecified() {
                                IpAddr::V4(Ipv4Addr::LOCALHOST)
                            } else {
                                dst
                            };
                            let packet = walk::Packet {
                                udp,
                                src,
                                dst: seen_dst,
                                dport: port,
                                out_interface: out_interface(&pod.facts, seen_dst),
                                in_interface: None,
                                uid: Some(uid),
                                gid: Some(gid),
                            };
                            let nat = &nats[usize::from(family == Family::V6)];
                            let walked = walk::walk(nat, "OUTPUT", &packet).unwrap();
                            let want = match walked.ending {
                                walk::Ending::Redirect(p) => Some(p),
                                _ => None,
                            };
                            let got = match verdict {
                                KernelVerdict::Redirect { port, .. } => Some(port),
                                KernelVerdict::Direct(_) => None,
                            };
                            assert_eq!(got, want, "{case}: {rule:?} against {walked:?}");
                            let subject = Subject {
                                family,
                                udp,
                                dst: seen_dst,
                                dst_port: port,
                                interface: out_interface(&pod.facts, seen_dst),
                            };
                            let named = words::outbound(&ctx, rule, &subject);
                            for r in &named.rules {
                                assert!(r.position.is_some(), "{case}: {r} not in the set");
                                rules_seen.insert(format!("{} {}", r.chain, r.text));
                            }
                            if rule == OutboundRule::UdpNotRedirected {
                                continue; // the walk names no rule: nothing takes the UDP
                            }
                            let named: Vec<(String, String)> = named
                                .rules
                                .iter()
                                .map(|r| (r.chain.clone(), r.text.clone()))
                                .collect();
                            let walked: Vec<(String, String)> = walked
                                .decided_by
                                .iter()
                                .map(|m| (m.chain.clone(), m.text.clone()))
                                .collect();
                            assert_eq!(named, walked, "{case}: {rule:?}");
                        }
                    }
                }
            }
        }
        for to in ["10.200.0.2", "10.200.101.2", "fd00:200::2"] {
            let to: IpAddr = to.parse().unwrap();
            for port in [9080, 8080, 3306, 15008, 15020, 15006, 15007, 7070] {
                inbound_case(&pod, &ctx, &sets, &nats, to, port, &mut rules_seen);
            }
        }
    }
    // The matrix reaches every kind of rule.
    for needle in [
        "OUTPUT -o eth1 -j RETURN",
        "ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS",
        "ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN",
        "ISTIO_OUTPUT -d 10.200.1.0/24 -j RETURN",
        "ISTIO_OUTPUT -p tcp --dport 8080 -j ISTIO_REDIRECT",
        "ISTIO_OUTPUT -m owner --gid-owner 3000 -j RETURN",
        "ISTIO_INBOUND -p tcp --dport 15020 -j RETURN",
        "PREROUTING -i eth1 -j RETURN",
    ] {
        assert!(
            rules_seen.iter().any(|r| r == needle),
            "no case named {needle}: {rules_seen:#?}"
        );
    }
}

/// One inbound connection from outside, on the interface its address is on.
fn inbound_case(
    pod: &Pod,
    ctx: &Context<'_>,
    sets: &PlanSets<'_>,
    nats: &[save::SavedTable; 2],
    to: IpAddr,
    port: u16,
    seen: &mut BTreeSet<String>,
) {
    let ifc = super::route_interface(&pod.facts.routes, to).unwrap();
    let ifindex = pod
        .facts
        .interfaces
        .iter()
        .find(|(n, _)| *n == ifc)
        .unwrap()
        .1;
    let from: IpAddr = if to.is_ipv4() {
        "192.0.2.1"
    } else {
        "2001:db8::1"
    }
    .parse()
    .unwrap();
    let target = std::net::SocketAddr::new(to, port);
    let decided = super::ebpf::decide_inbound(&pod.plan.pod, sets, from, target, ifindex);
    let family = Family::of(&to);
    let case = format!("{to}:{port} on {ifc}: {:?}", decided.rule);
    let packet = walk::Packet {
        udp: false,
        src: Some(
            if to.is_ipv4() {
                "192.0.2.1"
            } else {
                "2001:db8::1"
            }
            .parse()
            .unwrap(),
        ),
        dst: to,
        dport: port,
        out_interface: None,
        in_interface: Some(ifc.clone()),
        uid: None,
        gid: None,
    };
    let walked = walk::walk(
        &nats[usize::from(family == Family::V6)],
        "PREROUTING",
        &packet,
    )
    .unwrap();
    let steered = decided.verdict == InboundVerdict::Steer;
    match (decided.rule, &walked.ending) {
        // To the capture port itself: REDIRECT sends it where it was going.
        (InboundRule::CapturePort, _) => {}
        (_, walk::Ending::Redirect(p)) => {
            assert!(
                steered && *p == pod.cfg.inbound_capture_port,
                "{case}: {walked:?}"
            )
        }
        _ => assert!(!steered, "{case}: {walked:?}"),
    }
    let subject = Subject {
        family,
        udp: false,
        dst: to,
        dst_port: port,
        interface: Some(ifc),
    };
    let named = words::inbound(ctx, decided.rule, &subject);
    for r in &named.rules {
        assert!(r.position.is_some(), "{case}: {r} not in the set");
        seen.insert(format!("{} {}", r.chain, r.text));
    }
    if decided.rule != InboundRule::CapturePort && !is_local(&pod.facts, packet.src.unwrap()) {
        let named: Vec<&str> = named.rules.iter().map(|r| r.text.as_str()).collect();
        let walked: Vec<&str> = walked.decided_by.iter().map(|m| m.text.as_str()).collect();
        // The jump from PREROUTING into ISTIO_INBOUND is not a deciding rule.
        let walked: Vec<&str> = walked
            .into_iter()
            .filter(|t| *t != "-p tcp -j ISTIO_INBOUND")
            .collect();
        assert_eq!(named, walked, "{case}");
    }
}

/// The kernel's outbound decision for a connection, with its family (IPv4-mapped is IPv4).
#[allow(clippy::too_many_arguments)]
fn decide(
    pod: &Pod,
    sets: &PlanSets<'_>,
    udp: bool,
    uid: u32,
    gid: u32,
    src: Option<IpAddr>,
    dst: IpAddr,
    port: u16,
) -> (KernelVerdict, OutboundRule, Family) {
    let o = Outbound {
        udp,
        uid,
        gid,
        from: src,
        to: std::net::SocketAddr::new(dst, port),
    };
    let (d, family, _) = super::ebpf::decide_outbound(&pod.plan.pod, sets, &o);
    (d.verdict, d.rule, family)
}

#[test]
fn the_issue_s_example_reads_as_istio_writes_it() {
    let pod = pod(&["-i", "*", "-x", "10.0.0.0/8"]);
    let ctx = Context::new(&pod.cfg, &pod.dns, pod.ipv6);
    let subject = Subject {
        family: Family::V4,
        udp: false,
        dst: "10.2.0.1".parse().unwrap(),
        dst_port: 80,
        interface: None,
    };
    let named = words::outbound(&ctx, OutboundRule::ExcludeCidr, &subject);
    assert_eq!(
        named.rules[0].to_string(),
        "ISTIO_OUTPUT: -d 10.0.0.0/8 -j RETURN (from -x 10.0.0.0/8)"
    );
    // Its position in istio's order: after -o, the passthrough, the uid's three and the
    // gid's three rules and localhost.
    assert_eq!(named.rules[0].position, Some(9));
}
