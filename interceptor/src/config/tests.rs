//! The options' validation, as istio-iptables takes them.

use super::*;

struct Passwd;
impl IdResolver for Passwd {
    fn uid_of(&self, user: &str) -> Option<u32> {
        (user == "istio-proxy").then_some(1337)
    }
    fn gid_of(&self, group: &str) -> Option<u32> {
        (group == "istio-proxy").then_some(1337)
    }
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

#[test]
fn the_seed_invocation_resolves() {
    // -p 15001 -u 1337 -m REDIRECT -i '*' -x "" -b 9080, -d ""
    let raw = RawOptions {
        envoy_port: s("15001"),
        proxy_uid: s("1337"),
        interception_mode: s("REDIRECT"),
        service_cidr: s("*"),
        service_exclude_cidr: s(""),
        inbound_ports: s("9080,"),
        local_exclude_ports: s(""),
        ..Default::default()
    };
    let cfg = raw.resolve(&NoUsers, "istio-proxy").unwrap();
    assert_eq!(cfg.envoy_port, 15001);
    assert_eq!(cfg.proxy_uids, vec![1337]);
    assert_eq!(cfg.proxy_gids, vec![1337], "gids default to the uids");
    assert_eq!(cfg.outbound_include, OutboundInclude::All);
    assert!(cfg.outbound_exclude.is_empty());
    assert_eq!(cfg.inbound_ports, InboundPorts::Ports(vec![9080]));
    assert_eq!(cfg.inbound_capture_port, 15006);
    assert_eq!(cfg.inbound_tunnel_port, 15008);
    assert_eq!(cfg.inbound_mode, InterceptionMode::Redirect);
    assert_eq!(cfg.inbound_fail, InboundFail::Open);
}

#[test]
fn inbound_fail_and_interfaces() {
    let raw = RawOptions {
        inbound_fail: s("closed"),
        exclude_interfaces: s("eth1,eth2,"),
        kube_virt_interfaces: s("vnet0"),
        ..Default::default()
    };
    let cfg = raw.resolve(&NoUsers, "istio-proxy").unwrap();
    assert_eq!(cfg.inbound_fail, InboundFail::Closed);
    assert_eq!(
        cfg.raw_sockets,
        RawSockets::Refuse,
        "refused unless allowed"
    );
    assert_eq!(cfg.exclude_interfaces, vec!["eth1", "eth2"]);
    // -k is refused by the eBPF backend (the iptables backend writes its rules).
    let err = cfg.check_ebpf_support().unwrap_err().to_string();
    assert!(err.starts_with("-k/--kube-virt-interfaces: "), "{err}");
}

#[test]
fn defaults_follow_istio_iptables() {
    let cfg = RawOptions::default()
        .resolve(&NoUsers, "istio-proxy")
        .unwrap();
    assert_eq!(cfg.proxy_uids, vec![1337]);
    assert_eq!(cfg.outbound_include, OutboundInclude::Cidrs(vec![]));
    assert_eq!(cfg.inbound_ports, InboundPorts::Ports(vec![]));
    // ENVOY_USER that exists gives its uid.
    let raw = RawOptions::default();
    let cfg = raw.resolve(&Passwd, "istio-proxy").unwrap();
    assert_eq!(cfg.proxy_uids, vec![1337]);
}

#[test]
fn lists_names_and_dedup() {
    let raw = RawOptions {
        proxy_uid: s("istio-proxy,1338,1338"),
        proxy_gid: s("2000, 2001,"),
        service_cidr: s("10.0.0.0/8, 192.168.1.1/24"),
        outbound_ports: s("80,443,80"),
        local_outbound_ports_exclude: s(",15020,"),
        ..Default::default()
    };
    let cfg = raw.resolve(&Passwd, "istio-proxy").unwrap();
    assert_eq!(cfg.proxy_uids, vec![1337, 1338]);
    assert_eq!(cfg.proxy_gids, vec![2000, 2001]);
    assert_eq!(cfg.outbound_ports_include, vec![80, 443]);
    assert_eq!(cfg.outbound_ports_exclude, vec![15020]);
    let OutboundInclude::Cidrs(c) = &cfg.outbound_include else {
        panic!()
    };
    assert_eq!(c[1].to_string(), "192.168.1.1/24");
    assert_eq!(c[1].network().to_string(), "192.168.1.0");
}

#[test]
fn gid_defaults_to_uid_list_text() {
    let raw = RawOptions {
        proxy_uid: s("3,4"),
        ..Default::default()
    };
    let cfg = raw.resolve(&NoUsers, "istio-proxy").unwrap();
    assert_eq!(cfg.proxy_gids, vec![3, 4]);
}

#[test]
fn loopback_in_include_is_detected() {
    let raw = RawOptions {
        service_cidr: s("10.0.0.0/8,127.0.0.1/32"),
        ..Default::default()
    };
    assert!(raw.resolve(&NoUsers, "x").unwrap().loopback_included());
    let raw = RawOptions {
        service_cidr: s("*"),
        ..Default::default()
    };
    assert!(!raw.resolve(&NoUsers, "x").unwrap().loopback_included());
}

#[test]
fn env_only_settings_and_tproxy_values() {
    let cfg = RawOptions::default().resolve(&Passwd, "x").unwrap();
    assert_eq!(cfg.owner_groups, OwnerGroups::AllExcept(vec![]));
    assert_eq!(cfg.ipv4_loopback_cidr.to_string(), "127.0.0.1/32");
    assert_eq!((cfg.tproxy_mark, cfg.tproxy_route_table), (1337, 133));
    let raw = RawOptions {
        owner_groups_include: s("*"),
        owner_groups_exclude: s("istio-proxy,888,"),
        ipv4_loopback_cidr: s("127.0.0.1/8"),
        tproxy_mark: s("0x539"),
        tproxy_route_table: s("200"),
        ..Default::default()
    };
    let cfg = raw.resolve(&Passwd, "x").unwrap();
    assert_eq!(cfg.owner_groups, OwnerGroups::AllExcept(vec![1337, 888]));
    assert_eq!(cfg.ipv4_loopback_cidr.to_string(), "127.0.0.1/8");
    assert_eq!((cfg.tproxy_mark, cfg.tproxy_route_table), (1337, 200));
    // Include given: exclude is not used; set but empty: no group at all.
    let raw = RawOptions {
        owner_groups_include: s("1,2"),
        owner_groups_exclude: s("nosuchgroup"),
        ..Default::default()
    };
    assert_eq!(
        raw.resolve(&Passwd, "x").unwrap().owner_groups,
        OwnerGroups::Only(vec![1, 2])
    );
    let raw = RawOptions {
        owner_groups_include: s(""),
        ..Default::default()
    };
    assert_eq!(
        raw.resolve(&Passwd, "x").unwrap().owner_groups,
        OwnerGroups::Only(vec![])
    );
}

#[test]
fn bad_env_only_values_name_the_variable() {
    let many: Vec<String> = (0..65).map(|g| g.to_string()).collect();
    let cases: Vec<(RawOptions, &str)> = vec![
        (
            RawOptions {
                owner_groups_include: Some(many.join(",")),
                ..Default::default()
            },
            "ISTIO_OUTBOUND_OWNER_GROUPS: invalid value",
        ),
        (
            RawOptions {
                owner_groups_exclude: s("nosuchgroup"),
                ..Default::default()
            },
            "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE: unknown user or group \"nosuchgroup\"",
        ),
        (
            RawOptions {
                ipv4_loopback_cidr: s("10.0.0.1/32"),
                ..Default::default()
            },
            "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR: invalid CIDR \"10.0.0.1/32\"",
        ),
        (
            RawOptions {
                ipv4_loopback_cidr: s("127.0.0.1/7"),
                ..Default::default()
            },
            "prefix length from 8 to 32",
        ),
        (
            RawOptions {
                tproxy_mark: s("mark"),
                ..Default::default()
            },
            "-t/--istio-inbound-tproxy-mark: invalid value \"mark\"",
        ),
    ];
    for (raw, expected) in cases {
        let err = raw.resolve(&NoUsers, "x").unwrap_err().to_string();
        assert!(
            err.contains(expected),
            "{err:?} should contain {expected:?}"
        );
    }
}

#[test]
fn bad_values_name_flag_and_value() {
    let cases: Vec<(RawOptions, &str)> = vec![
        (
            RawOptions {
                envoy_port: s("0"),
                ..Default::default()
            },
            "-p/--envoy-port: invalid port \"0\"",
        ),
        (
            RawOptions {
                outbound_ports: s("80,65536"),
                ..Default::default()
            },
            "\"65536\"",
        ),
        (
            RawOptions {
                local_outbound_ports_exclude: s("http"),
                ..Default::default()
            },
            "-o/--istio-local-outbound-ports-exclude: invalid port \"http\"",
        ),
        (
            RawOptions {
                service_cidr: s("10.0.0.1"),
                ..Default::default()
            },
            "-i/--istio-service-cidr: invalid CIDR \"10.0.0.1\"",
        ),
        (
            RawOptions {
                service_exclude_cidr: s("10.0.0.0/33"),
                ..Default::default()
            },
            "\"10.0.0.0/33\"",
        ),
        (
            RawOptions {
                service_exclude_cidr: s("10.0.0.0/08"),
                ..Default::default()
            },
            "\"10.0.0.0/08\"",
        ),
        (
            RawOptions {
                service_cidr: s("*,10.0.0.0/8"),
                ..Default::default()
            },
            "invalid CIDR \"*\"",
        ),
        (
            RawOptions {
                service_exclude_cidr: s("*"),
                ..Default::default()
            },
            "-x/--istio-service-exclude-cidr",
        ),
        (
            RawOptions {
                proxy_uid: s("nosuchuser"),
                ..Default::default()
            },
            "-u/--proxy-uid: unknown user or group \"nosuchuser\"",
        ),
        (
            RawOptions {
                proxy_uid: s("1,2,3,4,5,6,7,8,9"),
                ..Default::default()
            },
            "at most 8",
        ),
        (
            RawOptions {
                interception_mode: s("tproxy"),
                ..Default::default()
            },
            "\"tproxy\"",
        ),
        (
            RawOptions {
                exclude_interfaces: s("eth0,a/b"),
                ..Default::default()
            },
            "\"a/b\"",
        ),
        (
            RawOptions {
                exclude_interfaces: s("a,b,c,d,e,f,g,h,i"),
                ..Default::default()
            },
            "-c/--istio-exclude-interfaces: at most 8",
        ),
        (
            RawOptions {
                inbound_fail: s("maybe"),
                ..Default::default()
            },
            "--inbound-fail: invalid value \"maybe\"",
        ),
        (
            RawOptions {
                raw_sockets: s("yes"),
                ..Default::default()
            },
            "--raw-sockets: invalid value \"yes\" (refuse or allow)",
        ),
    ];
    for (raw, expected) in cases {
        let err = raw
            .resolve(&NoUsers, "istio-proxy")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(expected),
            "{err:?} should contain {expected:?}"
        );
    }
}

#[test]
fn accelerate_by_name_is_a_boolean() {
    let mut raw = RawOptions::default();
    raw.set("accelerate", "true").unwrap();
    assert!(raw.resolve(&Passwd, "x").unwrap().accelerate);
    let err = raw.set("accelerate", "fast").unwrap_err();
    assert!(err.to_string().contains("\"accelerate\""), "{err}");
    assert!(
        !RawOptions::default()
            .resolve(&Passwd, "x")
            .unwrap()
            .accelerate
    );
}
