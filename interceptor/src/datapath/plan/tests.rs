//! The map plan of a pod's options.

use super::*;
use crate::config::{NoUsers, RawOptions};

fn netns() -> PodFacts {
    PodFacts {
        netns_cookie: Some(4242),
        addrs4: vec!["10.1.0.2".parse().unwrap()],
        interfaces: vec![("lo".into(), 1), ("eth0".into(), 2), ("eth1".into(), 5)],
        addrs6: vec!["fd00:1::2".parse().unwrap(), "fe80::1".parse().unwrap()],
        routes: Vec::new(),
        name_servers: Vec::new(),
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
        f & (flags::INCLUDE_ALL | flags::HAS_OUTBOUND_PORTS_EXCLUDE | flags::HAS_EXCLUDE_CIDRS6),
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
fn accelerate_is_one_flag_and_changes_nothing_else() {
    let plain = inbound_plan(RawOptions::default()).unwrap();
    let fast = inbound_plan(RawOptions {
        accelerate: true,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(fast.pod.flags, plain.pod.flags | flags::ACCELERATE);
    assert_ne!(plain.pod.flags & flags::ACCELERATE, flags::ACCELERATE);
    assert!(fast.describe().pod_config.flags.contains(&"accelerate"));
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
    let plan = |dual_stack: bool, info: &PodFacts| {
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
    let v6_only = PodFacts {
        addrs4: vec![],
        ..netns()
    };
    assert_ne!(plan(false, &v6_only), 0);
    let link_local_only = PodFacts {
        addrs6: vec!["fe80::1".parse().unwrap()],
        ..netns()
    };
    assert_eq!(plan(true, &link_local_only), 0);
}

/// `n` distinct IPv4 /32s, as an option value.
fn cidrs4(n: u32) -> String {
    (0..n)
        .map(|i| std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string() + "/32")
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn a_pod_has_at_most_its_share_of_each_set_and_the_error_names_the_limit() {
    let max = Sizes::POD_CIDR_ENTRIES;
    let resolve = |n| {
        RawOptions {
            service_exclude_cidr: Some(cidrs4(n)),
            ..Default::default()
        }
        .resolve(&NoUsers, "istio-proxy")
        .unwrap()
    };
    let plan = MapPlan::build(&resolve(max), &netns(), &DnsCapture::Off, 1, 0).unwrap();
    assert_eq!(plan.set_entries()[1].count, u64::from(max));
    let err = MapPlan::build(&resolve(max + 1), &netns(), &DnsCapture::Off, 1, 0).unwrap_err();
    assert_eq!(
        err.downcast_ref::<LimitError>(),
        Some(&LimitError::PodEntries {
            what: SetEntries::CIDRS4,
            count: u64::from(max) + 1,
            max: u64::from(max),
            node: u64::from(Sizes::CIDR_ENTRIES),
        })
    );
    assert!(
        err.to_string().starts_with(
            "IPv4 ranges (-i, -x, and the pod's routes with -c): the pod has 131073 entries, \
             more than the 131072 one pod may have"
        ),
        "{err}"
    );
}
