//! The differential test: the same istio-iptables flags, applied by the eBPF backend and by the
//! iptables backend (with `iptables-legacy` and with `iptables-nft`) to identical pods, must send
//! every connection of the same matrix to the same place, with the same original destination.
//!
//! Matrix, from inside each pod: identities (application, proxy uid+gid, proxy gid only, a
//! fourth user that some flag sets name as an extra proxy uid or gid) x destinations (the
//! server, an address the flags exclude, one they include, 127.0.0.1, the pod's own address)
//! x ports (an ordinary one, one some flag sets exclude with -o, the tunnel port 15008, 53),
//! plus connections bound to 127.0.0.6 and UDP DNS queries to a name server and to another
//! address. The same over IPv6 (the server's IPv6 address, an excluded and an included range,
//! ::1, the pod's IPv6 address, from ::6, DNS to the IPv6 name server), and IPv4 dialled from
//! dual-stack sockets (`::ffff:a.b.c.d`, TCP and DNS). Each is recorded as "sidecar port P,
//! original destination D", "direct to D", or "failed"; DNS as who answered and from which
//! address the answer appeared to come.
//!
//! The pods' first address is IPv4: as with istio-iptables, IPv6 is captured only by the flag
//! sets with `--dual-stack`, which the IPv6 part of the matrix compares too.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::thread;

use anyhow::{Context as _, Result};
use interceptor_tests::{
    Backend, DnsTransport, Identity, Intercepted, IptablesMode, Place, ProbeOptions, ProbeResult,
    SEED_FLAGS, TempFile, Topology, addr, addr6, any, any6,
};

const VIA_PROXY: Ipv4Addr = Ipv4Addr::new(10, 200, 9, 9);
const VIA_SERVER: Ipv4Addr = Ipv4Addr::new(10, 200, 8, 8);

/// Ports every destination is tried on: ordinary, excluded by some `-o`, tunnel, DNS.
const PORTS: [u16; 4] = [8080, 3306, 15008, 53];

const APP: Identity = Identity::new(1000, 1000);
const PROXY: Identity = Identity::new(1337, 1337);
const PROXY_GID_ONLY: Identity = Identity::new(1000, 1337);
/// Named as an extra proxy uid (2000) or gid (3000) by some flag sets.
const OTHER: Identity = Identity::new(2000, 3000);
const IDENTITIES: [(&str, Identity); 4] = [
    ("app", APP),
    ("proxy", PROXY),
    ("proxy-gid", PROXY_GID_ONLY),
    ("other", OTHER),
];

/// The flag sets. In the address plan, 10.200.0.1 and fd00:200::1 are the server (and the
/// pod's name servers), 10.200.1.1, 10.200.2.1, fd00:200:1::1 and fd00:200:2::1 are further
/// server addresses, 10.200.0.2 and fd00:200::2 are the pod, and 10.200.101.1 is the server
/// reached through the pod's second interface, eth1.
const FLAG_SETS: [&[&str]; 16] = [
    // The seed's invocation (no --dual-stack: IPv6 is left alone by both).
    &SEED_FLAGS,
    // Include everything but a range of each family; current istio defaults for the rest.
    &[
        "--dual-stack",
        "-i",
        "*",
        "-x",
        "10.200.1.0/24,fd00:200:1::/64",
    ],
    // An explicit include list, one address inside an included range excluded.
    &[
        "--dual-stack",
        "-i",
        "10.200.0.0/24,10.200.2.0/24,fd00:200::/64,fd00:200:2::/64",
        "-x",
        "10.200.0.1/32,fd00:200::1/128",
    ],
    // -q adds ports whatever the destination; -x still wins over it.
    &[
        "--dual-stack",
        "-i",
        "fd00:200:2::/64,10.200.2.0/24",
        "-q",
        "8080",
        "-x",
        "10.200.1.1/32,fd00:200:1::1/128",
    ],
    // Only -q ports.
    &["--dual-stack", "-i", "", "-q", "3306,53"],
    // -o ports never go to the sidecar, not even the proxy's.
    &["--dual-stack", "-i", "*", "-o", "3306,15008"],
    // Several proxy uids: only the first one decides over lo.
    &["--dual-stack", "-u", "1337,2000", "-g", "1337", "-i", "*"],
    // Several proxy gids.
    &[
        "--dual-stack",
        "-u",
        "1337",
        "-g",
        "1337,3000",
        "-i",
        "*",
        "-x",
        "10.200.2.0/24,fd00:200:2::/64",
    ],
    // A loopback range in -i: the "application over lo goes direct" rules are left out.
    &["--dual-stack", "-i", "127.0.0.0/8,10.200.2.0/24"],
    // The same with an IPv6 loopback range (it changes the IPv4 table too).
    &["--dual-stack", "-i", "::1/128,fd00:200:2::/64"],
    // DNS capture of the pod's name servers.
    &[
        "--dual-stack",
        "--redirect-dns",
        "-i",
        "*",
        "-x",
        "10.200.1.0/24,fd00:200:1::/64",
    ],
    // DNS capture of every server, with an include list.
    &[
        "--dual-stack",
        "--redirect-dns",
        "--capture-all-dns",
        "-i",
        "10.200.2.0/24,fd00:200:2::/64",
    ],
    // DNS capture with several gids and non-default ports.
    &[
        "--dual-stack",
        "--redirect-dns",
        "-u",
        "1337",
        "-g",
        "1337,3000",
        "-i",
        "*",
        "-z",
        "15007",
        "-e",
        "3306",
    ],
    // An excluded interface: connections routed through it are never captured.
    &["--dual-stack", "-i", "*", "-c", "eth1", "-q", "8080"],
    // Owner groups (environment only): group 3000 is spared.
    &[
        "--dual-stack",
        "ENV",
        "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE=3000",
        "-i",
        "*",
    ],
    // Only group 1000 captured, and a wider IPv4 localhost.
    &[
        "ENV",
        "ISTIO_OUTBOUND_OWNER_GROUPS=1000",
        "ENV",
        "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR=127.0.0.1/8",
        "--dual-stack",
        "-i",
        "127.0.0.0/8,10.200.2.0/24,fd00:200:2::/64",
    ],
];

/// Splits a flag set into flags and `ENV NAME=VALUE` pairs.
fn flags_and_env<'a>(set: &[&'a str]) -> (Vec<&'a str>, Vec<(&'a str, &'a str)>) {
    let (mut flags, mut env) = (Vec::new(), Vec::new());
    let mut it = set.iter();
    while let Some(&f) = it.next() {
        if f == "ENV" {
            let kv = it.next().expect("ENV NAME=VALUE");
            env.push(kv.split_once('=').expect("NAME=VALUE"));
        } else {
            flags.push(f);
        }
    }
    (flags, env)
}

/// A pod with the test's peers (servers run as root for port 53): servers on every port in the server namespace and in the pod,
/// the sidecar on the outbound, inbound and DNS ports, a DNS responder on each side.
fn build_pod(tag: &str, backend: Backend, flag_set: &[&str]) -> Result<(Intercepted, Peers)> {
    let mut topo = Topology::new(tag)?;
    topo.add_pod_interface()?;
    let resolv_conf = TempFile::new(
        &format!("{}-resolv.conf", topo.name),
        &format!(
            "nameserver {}\nnameserver {}\n",
            topo.server_ip, topo.server_ip6
        ),
    )?;
    let tcp: Vec<SocketAddr> = PORTS.iter().flat_map(|&p| [any(p), any6(p)]).collect();
    let mut processes = vec![
        topo.spawn_server(&Place::Server, Identity::ROOT, &tcp, &[])?,
        topo.spawn_server(&Place::Pod, Identity::ROOT, &tcp, &[])?,
    ];
    // One responder per address: a reply must come from the address that was asked.
    let name_servers: [IpAddr; 4] = [
        topo.server_ip.into(),
        topo.server_extra_ips[0].into(),
        topo.server_ip6.into(),
        topo.server_extra_ips6[0].into(),
    ];
    for ip in name_servers {
        processes.push(topo.spawn_dns_responder(
            &Place::Server,
            Identity::ROOT,
            ip,
            53,
            VIA_SERVER,
        )?);
    }
    for ip in [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ] {
        processes.push(topo.spawn_dns_responder(&Place::Pod, PROXY, ip, 15053, VIA_PROXY)?);
    }
    processes.push(topo.spawn_sidecar(
        &[15001, 15006, 15007, 15053],
        &[
            "--announce",
            "--upstream-source",
            "127.0.0.6",
            "--upstream-source",
            "::6",
        ],
    )?);
    let pod = Intercepted { topo, backend };
    let (flags, env) = flags_and_env(flag_set);
    let mut all = vec!["--resolv-conf", resolv_conf.path_str()];
    all.extend(flags);
    pod.init_env(&all, &env)?;
    Ok((
        pod,
        Peers {
            _processes: processes,
            _resolv_conf: resolv_conf,
        },
    ))
}

/// What a pod keeps alive for the test's duration.
struct Peers {
    _processes: Vec<interceptor_tests::Process>,
    _resolv_conf: TempFile,
}

fn outcome(r: &ProbeResult) -> String {
    if let Some(s) = r.sidecar_line() {
        return match s.orig {
            Ok(orig) => format!("sidecar:{} orig={orig}", s.port),
            Err(e) => format!("sidecar:{} orig=error:{e}", s.port),
        };
    }
    match r.server_line() {
        Some(line) => format!("direct to {}", line.local),
        None => "failed".to_string(),
    }
}

fn answered(q: &interceptor_tests::dns::DnsQueryResult) -> String {
    let who = match q.addresses.first() {
        Some(&a) if a == VIA_PROXY => "dns proxy",
        Some(&a) if a == VIA_SERVER => "server",
        _ => "nobody",
    };
    format!("{who}, from {}", q.from.as_deref().unwrap_or("-"))
}

/// Runs the matrix in one pod: case label -> outcome.
fn record(pod: &Intercepted) -> Result<BTreeMap<String, String>> {
    let t = &pod.topo;
    let dests: [(&str, IpAddr); 12] = [
        ("server", t.server_ip.into()),
        ("10.200.1.1", t.server_extra_ips[0].into()),
        ("10.200.2.1", t.server_extra_ips[1].into()),
        ("localhost", Ipv4Addr::LOCALHOST.into()),
        ("127.0.0.5", Ipv4Addr::new(127, 0, 0, 5).into()),
        ("pod-ip", t.pod_ip.into()),
        ("eth1-server", t.pod_interfaces[0].server_ip.into()),
        ("server6", t.server_ip6.into()),
        ("fd00:200:1::1", t.server_extra_ips6[0].into()),
        ("fd00:200:2::1", t.server_extra_ips6[1].into()),
        ("::1", Ipv6Addr::LOCALHOST.into()),
        ("pod-ip6", t.pod_ip6.into()),
    ];
    // IPv4 from dual-stack sockets: decided by the IPv4 rules under both backends.
    let mapped: [(&str, Ipv4Addr); 3] = [
        ("server", t.server_ip),
        ("10.200.1.1", t.server_extra_ips[0]),
        ("pod-ip", t.pod_ip),
    ];
    let name_servers: [(&str, IpAddr); 4] = [
        ("server", t.server_ip.into()),
        ("10.200.1.1", t.server_extra_ips[0].into()),
        ("server6", t.server_ip6.into()),
        ("fd00:200:1::1", t.server_extra_ips6[0].into()),
    ];
    let mut out = BTreeMap::new();
    for (who_name, who) in IDENTITIES {
        for (dest_name, ip) in dests {
            for port in PORTS {
                let r = t.probe(who, SocketAddr::new(ip, port), &ProbeOptions::default())?;
                out.insert(format!("{who_name} tcp {dest_name}:{port}"), outcome(&r));
            }
        }
        for (dest_name, ip) in mapped {
            let to = addr6(ip.to_ipv6_mapped(), 8080);
            let r = t.probe(who, to, &ProbeOptions::default())?;
            out.insert(
                format!("{who_name} tcp ::ffff:{dest_name}:8080"),
                outcome(&r),
            );
        }
        for (source, to) in [
            (
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)),
                addr(t.pod_ip, 8080),
            ),
            (
                IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6)),
                addr6(t.pod_ip6, 8080),
            ),
        ] {
            let from_passthrough = ProbeOptions {
                bind: Some(source),
                ..Default::default()
            };
            let r = t.probe(who, to, &from_passthrough)?;
            out.insert(format!("{who_name} tcp {source} -> {to}"), outcome(&r));
        }
        for transport in [DnsTransport::Udp, DnsTransport::UdpConnected] {
            for (dest_name, ip) in name_servers {
                let q = t.dns_query(who, SocketAddr::new(ip, 53), "x.mesh.test", transport)?;
                out.insert(
                    format!("{who_name} {transport:?} dns {dest_name}:53"),
                    answered(&q),
                );
            }
            let q = t.dns_query_dual_stack(
                who,
                SocketAddrV4::new(t.server_ip, 53),
                "x.mesh.test",
                transport,
            )?;
            out.insert(
                format!("{who_name} {transport:?} dns ::ffff:server:53"),
                answered(&q),
            );
        }
    }
    Ok(out)
}

/// Rows where the records differ, as a readable table.
fn differences(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: {v} | {}", b.get(k).map_or("-", String::as_str)))
        .collect()
}

fn run_flag_set(index: usize) -> Result<()> {
    let flags = FLAG_SETS[index];
    let backends = [
        ("ebpf", Backend::Ebpf),
        ("legacy", Backend::Iptables(IptablesMode::Legacy)),
        ("nft", Backend::Iptables(IptablesMode::Nft)),
    ];
    // Each backend in its own pod (namespaces where no other backend ever ran), side by side.
    let records: Vec<(&str, Result<BTreeMap<String, String>>)> = thread::scope(|s| {
        let handles: Vec<_> = backends
            .iter()
            .map(|&(name, backend)| {
                s.spawn(move || {
                    let tag = format!("df{index}{name}");
                    let (pod, _peers) = build_pod(&tag, backend, flags)?;
                    record(&pod)
                })
            })
            .collect();
        backends
            .iter()
            .zip(handles)
            .map(|(&(name, _), h)| (name, h.join().expect("recording thread")))
            .collect()
    });
    let mut recs = Vec::new();
    for (name, r) in records {
        recs.push((name, r.with_context(|| format!("{name} with {flags:?}"))?));
    }
    let (_, ebpf) = &recs[0];
    // The records must say something: both some capture and some direct connection.
    assert!(
        ebpf.values().any(|v| v.starts_with("sidecar"))
            && ebpf.values().any(|v| v.starts_with("direct")),
        "{flags:?}: a degenerate record {ebpf:#?}"
    );
    for (name, rec) in &recs[1..] {
        let diff = differences(ebpf, rec);
        assert!(
            diff.is_empty(),
            "{flags:?}: ebpf and iptables-{name} differ (case: ebpf | {name}):\n{}",
            diff.join("\n")
        );
    }
    Ok(())
}

macro_rules! flag_set_tests {
    ($($name:ident = $index:expr;)*) => {$(
        #[test]
        fn $name() -> Result<()> {
            run_flag_set($index)
        }
    )*};
}

flag_set_tests! {
    seed_invocation = 0;
    include_all_with_excluded_range = 1;
    explicit_include_list = 2;
    outbound_ports_include_with_excludes = 3;
    outbound_ports_only = 4;
    outbound_ports_exclude = 5;
    several_proxy_uids = 6;
    several_proxy_gids = 7;
    loopback_range_in_include = 8;
    ipv6_loopback_range_in_include = 9;
    dns_capture_of_the_name_servers = 10;
    dns_capture_of_every_server = 11;
    dns_capture_with_gids_and_other_ports = 12;
    excluded_interface = 13;
    owner_groups_exclude = 14;
    owner_groups_include_and_wider_localhost = 15;
}

#[test]
fn the_seed_invocation_sends_the_application_through_the_sidecar() -> Result<()> {
    // An anchor on known behaviour, so that the differential test cannot pass on two
    // backends that are wrong the same way.
    let (pod, _peers) = build_pod("dfanchor", Backend::Ebpf, FLAG_SETS[0])?;
    let rec = record(&pod)?;
    let server = pod.topo.server_ip;
    let pod_ip = pod.topo.pod_ip;
    for (case, want) in [
        (
            "app tcp server:8080",
            format!("sidecar:15001 orig={server}:8080"),
        ),
        ("proxy tcp server:8080", format!("direct to {server}:8080")),
        (
            "proxy tcp pod-ip:8080",
            format!("sidecar:15006 orig={pod_ip}:8080"),
        ),
        (
            "proxy tcp pod-ip:15008",
            format!("direct to {pod_ip}:15008"),
        ),
        ("app tcp pod-ip:8080", format!("direct to {pod_ip}:8080")),
        (
            "app tcp localhost:8080",
            "direct to 127.0.0.1:8080".to_string(),
        ),
        (
            "proxy tcp 127.0.0.6 -> 10.200.0.2:8080",
            format!("direct to {pod_ip}:8080"),
        ),
        ("app Udp dns server:53", format!("server, from {server}:53")),
        // No --dual-stack: IPv6 is not captured; IPv4 from a dual-stack socket is.
        (
            "app tcp server6:8080",
            format!("direct to {}", addr6(pod.topo.server_ip6, 8080)),
        ),
        (
            "app tcp ::ffff:server:8080",
            format!("sidecar:15001 orig={server}:8080"),
        ),
    ] {
        assert_eq!(rec.get(case), Some(&want), "{case}");
    }
    Ok(())
}

#[test]
fn the_dual_stack_sets_capture_ipv6_and_its_dns() -> Result<()> {
    // The IPv6 anchor: with --dual-stack, IPv6 rows are captured (not only equal).
    let (pod, _peers) = build_pod("dfanchor6", Backend::Ebpf, FLAG_SETS[10])?;
    let rec = record(&pod)?;
    let t = &pod.topo;
    let (server6, pod6) = (addr6(t.server_ip6, 8080), addr6(t.pod_ip6, 8080));
    for (case, want) in [
        (
            "app tcp server6:8080",
            format!("sidecar:15001 orig={server6}"),
        ),
        (
            "app tcp fd00:200:1::1:8080",
            format!("direct to {}", addr6(t.server_extra_ips6[0], 8080)),
        ),
        ("proxy tcp server6:8080", format!("direct to {server6}")),
        (
            "proxy tcp pod-ip6:8080",
            format!("sidecar:15006 orig={pod6}"),
        ),
        ("app tcp pod-ip6:8080", format!("direct to {pod6}")),
        (
            "app Udp dns server6:53",
            format!("dns proxy, from {}", addr6(t.server_ip6, 53)),
        ),
        (
            "app UdpConnected dns ::ffff:server:53",
            format!(
                "dns proxy, from {}",
                addr6(t.server_ip.to_ipv6_mapped(), 53)
            ),
        ),
        (
            "proxy Udp dns server6:53",
            format!("server, from {}", addr6(t.server_ip6, 53)),
        ),
        (
            "app Udp dns fd00:200:1::1:53",
            format!("server, from {}", addr6(t.server_extra_ips6[0], 53)),
        ),
    ] {
        assert_eq!(rec.get(case), Some(&want), "{case}");
    }
    Ok(())
}
