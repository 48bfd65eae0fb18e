//! The differential test: the same istio-iptables flags, applied by the eBPF backend and by the
//! iptables backend (with `iptables-legacy` and with `iptables-nft`) to identical pods, must send
//! every connection of the same matrix to the same place, and show the application, the
//! sidecar and the server the same addresses.
//!
//! Matrix, from inside each pod: identities (application, proxy uid+gid, proxy uid with another
//! gid, proxy gid only, a fifth user that some flag sets name as an extra proxy uid or gid) x
//! destinations (the server, an address the flags exclude, one they include, 127.0.0.1, the
//! pod's own address, a server behind a second interface, an address that never answers) x
//! ports (an ordinary one, one some flag sets exclude with -o, the tunnel port 15008, 53), plus
//! connections bound to 127.0.0.6 and UDP DNS queries to a name server and to another address.
//! The same over IPv6 (the server's IPv6 address, an excluded and an included range, ::1, the
//! pod's IPv6 address, from ::6, DNS to the IPv6 name server), and IPv4 dialled from dual-stack
//! sockets (`::ffff:a.b.c.d`, TCP and DNS). From outside the pod (the server's namespace):
//! connections to the pod's address on each interface, IPv4 and IPv6, on ports that `-b`/`-d`
//! capture or not, the tunnel port and one nobody listens on.
//!
//! Each TCP case is recorded as one line (see [`outcome`]): the sidecar (its listener, the
//! `SO_ORIGINAL_DST` it read, its accepted socket's own address), then what the server or
//! application that answered saw (the address it accepted on, its peer's address and whether
//! that is the client's own socket); or straight to an address; or how it failed (refused,
//! timed out, reset); and the client's `getpeername()`. No ephemeral port number appears in a
//! record. DNS is recorded as who answered and from which address the answer appeared to come.
//!
//! One difference is by design and compared as such (see [`as_redirect_shows`]): for an inbound
//! connection handed to the sidecar, the eBPF backend keeps the destination (the sidecar's
//! `getsockname()` is pod-ip:port, as under TPROXY), where REDIRECT rewrites it to pod-ip:`-z`.
//!
//! The pods' first address is IPv4: as with istio-iptables, IPv6 is captured only by the flag
//! sets with `--dual-stack`, which the IPv6 part of the matrix compares too.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::thread;
use std::time::Duration;

use anyhow::{Context as _, Result};
use interceptor_tests::{
    Backend, DnsTransport, Identity, Intercepted, IptablesMode, Place, ProbeCase, ProbeResult,
    SEED_FLAGS, ServerLine, Side, SidecarLine, TempFile, Topology, addr, addr6, any, any6,
};

const VIA_PROXY: Ipv4Addr = Ipv4Addr::new(10, 200, 9, 9);
const VIA_SERVER: Ipv4Addr = Ipv4Addr::new(10, 200, 8, 8);
/// Routed to the server's namespace, which drops it (a blackhole route): a connection there
/// times out instead of being refused.
const BLACKHOLE: Ipv4Addr = Ipv4Addr::new(10, 200, 250, 1);

/// Ports every destination is tried on: ordinary, excluded by some `-o`, tunnel, DNS.
const PORTS: [u16; 4] = [8080, 3306, 15008, 53];
/// Ports tried from outside the pod: the seed's `-b` port, an ordinary one, one that some sets
/// leave out with `-d` or make the tunnel port with `-e`, the tunnel port, one of istio's usual
/// `-d` ports, and one nobody listens on. Not the sidecar's own ports: under REDIRECT a
/// connection to them would reach the sidecar with itself as original destination, and this
/// sidecar (unlike Envoy, which has a filter chain for it) would dial itself for ever.
const INBOUND_PORTS: [u16; 6] = [9080, 8080, 3306, 15008, 15020, 7070];
/// Where the pod's application listens: every port tried but 7070.
const APP_PORTS: [u16; 6] = [8080, 3306, 15008, 53, 9080, 15020];
/// The sidecar's listeners: outbound (`-p` 15001 or 15002), inbound (`-z` 15006 or 15007) and
/// DNS. Not 15009: the `-z` of the flag set whose sidecar is not listening yet.
const SIDECAR_PORTS: [u16; 5] = [15001, 15002, 15006, 15007, 15053];
/// Bound for each probe's connect and read.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// The same for connections to [`BLACKHOLE`], which time out whatever the bound: it only has
/// to leave the sidecar time to take the connection and announce itself (milliseconds), and
/// the record waits for it.
const BLACKHOLE_TIMEOUT: Duration = Duration::from_secs(1);

const APP: Identity = Identity::new(1000, 1000);
const PROXY: Identity = Identity::new(1337, 1337);
const PROXY_UID_ONLY: Identity = Identity::new(1337, 1000);
const PROXY_GID_ONLY: Identity = Identity::new(1000, 1337);
/// Named as an extra proxy uid (2000) or gid (3000) by some flag sets.
const OTHER: Identity = Identity::new(2000, 3000);
const IDENTITIES: [(&str, Identity); 5] = [
    ("app", APP),
    ("proxy", PROXY),
    ("proxy-uid", PROXY_UID_ONLY),
    ("proxy-gid", PROXY_GID_ONLY),
    ("other", OTHER),
];

/// The flag sets. In the address plan, 10.200.0.1 and fd00:200::1 are the server (and the
/// pod's name servers), 10.200.1.1, 10.200.2.1, fd00:200:1::1 and fd00:200:2::1 are further
/// server addresses, 10.200.0.2 and fd00:200::2 are the pod, and 10.200.101.1 is the server
/// reached through the pod's second interface, eth1 (the pod's address there: 10.200.101.2).
const FLAG_SETS: [&[&str]; 19] = [
    // The seed's invocation (no --dual-stack: IPv6 is left alone by both), inbound `-b 9080,`.
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
    // DNS capture with several gids and non-default ports; every inbound port captured but the
    // tunnel port, here 3306 (so 15008 is captured).
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
        "-b",
        "*",
    ],
    // An excluded interface: connections routed through it, or arriving on it, are never
    // captured.
    &[
        "--dual-stack",
        "-i",
        "*",
        "-c",
        "eth1",
        "-q",
        "8080",
        "-b",
        "*",
    ],
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
    // Every inbound port captured but the -d ones (and the tunnel port).
    &[
        "--dual-stack",
        "-i",
        "*",
        "-x",
        "10.200.1.0/24,fd00:200:1::/64",
        "-b",
        "*",
        "-d",
        "3306,15020",
    ],
    // Non-default outbound and inbound capture ports, a proxy gid that is not the proxy uid's
    // group, and an explicit inbound list that names the tunnel port (never captured).
    &[
        "--dual-stack",
        "-p",
        "15002",
        "-z",
        "15007",
        "-u",
        "1337",
        "-g",
        "3000",
        "-i",
        "10.200.0.0/16,fd00:200::/48",
        "-b",
        "9080,8080,15008",
    ],
    // Inbound capture to a port nothing listens on yet (the sidecar has not started): refused,
    // inbound (REDIRECT, and the eBPF backend failing closed) and from the proxy to its pod.
    &[
        "--dual-stack",
        "-i",
        "*",
        "-b",
        "*",
        "-z",
        "15009",
        "--inbound-fail",
        "closed",
    ],
];

/// A pod's record: case -> what happened.
type Record = BTreeMap<String, String>;
/// Cases and what they must give.
type KnownAnswers = Vec<(String, String)>;

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

/// A pod with the test's peers (servers run as root for port 53): servers on every port in the
/// server namespace and in the pod (the application), the sidecar on the outbound, inbound and
/// DNS ports, a DNS responder on each side.
fn build_pod(tag: &str, backend: Backend, flag_set: &[&str]) -> Result<(Intercepted, Peers)> {
    let mut topo = Topology::new(tag)?;
    topo.add_pod_interface()?;
    topo.ip(
        Side::Server,
        &["route", "add", "blackhole", &format!("{BLACKHOLE}/32")],
    )?;
    let resolv_conf = TempFile::new(
        &format!("{}-resolv.conf", topo.name),
        &format!(
            "nameserver {}\nnameserver {}\n",
            topo.server_ip, topo.server_ip6
        ),
    )?;
    let both_families = |ports: &[u16]| -> Vec<SocketAddr> {
        ports.iter().flat_map(|&p| [any(p), any6(p)]).collect()
    };
    let mut processes = vec![
        topo.spawn_server(&Place::Server, Identity::ROOT, &both_families(&PORTS), &[])?,
        topo.spawn_server(&Place::Pod, Identity::ROOT, &both_families(&APP_PORTS), &[])?,
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
        &SIDECAR_PORTS,
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
    // The sidecar binds ::6 (put on lo by init when IPv6 is captured) for its IPv6
    // passthrough connections.
    pod.topo
        .wait_address_settled(Side::Pod, Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6))?;
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

/// The address as an IPv4 one when it is IPv4-mapped (a dual-stack socket's view).
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// One TCP case, with no ephemeral port number in it:
/// - `sidecar:<listener> orig=<SO_ORIGINAL_DST> local=<its getsockname>; then <reached>`, where
///   the local address is `orig` when it is the original destination itself,
///   `orig-addr:listener` when it is that address on the listener's port, else the address;
/// - `direct to <reached>`;
/// - `failed: <stage> <refused|timed out|reset|...>`;
///
/// where `<reached>` is `<address the server accepted on> from <its peer>`, the peer being
/// `the client` (the client's own socket) or `<address> port <client's|other>`, or `nothing
/// (<how the client's read ended>)`. Then `| getpeername <address>`: what the client's
/// `getpeername()` said.
fn outcome(r: &ProbeResult) -> String {
    if !r.connected {
        return format!("failed: {}", ended(r));
    }
    let reached = |line: Option<ServerLine>| match line {
        Some(line) => format!("{} from {}", line.local, peer_class(line.peer, r.local)),
        None => format!("nothing ({})", ended(r)),
    };
    let route = match r.sidecar_line() {
        Some(s) => {
            let orig = match &s.orig {
                Ok(orig) => orig.to_string(),
                Err(errno) => format!("error:{errno}"),
            };
            format!(
                "sidecar:{} orig={orig} local={}; then {}",
                s.port,
                sidecar_local(&s),
                reached(r.server_line())
            )
        }
        None => format!("direct to {}", reached(r.server_line())),
    };
    match r.peer_name {
        Some(peer) => format!("{route} | getpeername {peer}"),
        None => format!("{route} | getpeername -"),
    }
}

/// How the client's connection ended: its first failure, or a clean EOF.
fn ended(r: &ProbeResult) -> String {
    match (&r.failure, &r.error) {
        (Some(failure), _) => failure.to_string(),
        (None, Some(error)) => error.clone(),
        (None, None) => "EOF".to_owned(),
    }
}

/// The server's peer: the client's own socket, or another one (a proxy's), by address and by
/// whether its port is the client's.
fn peer_class(peer: SocketAddr, client: Option<SocketAddr>) -> String {
    let peer = canonical(peer);
    match client.map(canonical) {
        Some(client) if client == peer => "the client".to_owned(),
        Some(client) if client.port() == peer.port() => format!("{} port client's", peer.ip()),
        _ => format!("{} port other", peer.ip()),
    }
}

/// The sidecar's accepted socket's own address, relative to the original destination.
fn sidecar_local(s: &SidecarLine) -> String {
    match (s.local.map(canonical), &s.orig) {
        (None, _) => "-".to_owned(),
        (Some(local), Ok(orig)) if local == canonical(*orig) => "orig".to_owned(),
        (Some(local), Ok(orig))
            if local.ip() == orig.ip().to_canonical() && local.port() == s.port =>
        {
            "orig-addr:listener".to_owned()
        }
        (Some(local), _) => local.to_string(),
    }
}

/// What an eBPF record's case would read under REDIRECT: an inbound connection handed to the
/// sidecar keeps its destination under the eBPF backend (`getsockname()` is pod-ip:port, as
/// under TPROXY; the README says so), where REDIRECT rewrites it to pod-ip:`-z`. Only that
/// token of only the inbound cases; everything else must be equal as it is.
fn as_redirect_shows(case: &str, ebpf: &str) -> String {
    if case.starts_with("inbound ") {
        ebpf.replace(" local=orig;", " local=orig-addr:listener;")
    } else {
        ebpf.to_owned()
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

/// The TCP cases made from inside the pod, each identity alike: label -> connection.
fn outbound_cases(t: &Topology) -> Vec<(String, ProbeCase)> {
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
    let mut cases = Vec::new();
    for (dest_name, ip) in dests {
        for port in PORTS {
            cases.push((
                format!("tcp {dest_name}:{port}"),
                ProbeCase::to(SocketAddr::new(ip, port)),
            ));
        }
    }
    for (dest_name, ip) in mapped {
        cases.push((
            format!("tcp ::ffff:{dest_name}:8080"),
            ProbeCase::to(addr6(ip.to_ipv6_mapped(), 8080)),
        ));
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
        cases.push((
            format!("tcp {source} -> {to}"),
            ProbeCase::from_source(source, to),
        ));
    }
    cases
}

/// The TCP cases made from the server's namespace to the pod's addresses: label -> connection.
fn inbound_cases(t: &Topology) -> Vec<(String, ProbeCase)> {
    let dests: [(&str, IpAddr); 3] = [
        ("pod-ip", t.pod_ip.into()),
        ("pod-ip6", t.pod_ip6.into()),
        ("eth1-ip", t.pod_interfaces[0].pod_ip.into()),
    ];
    let mut cases = Vec::new();
    for (dest_name, ip) in dests {
        for port in INBOUND_PORTS {
            cases.push((
                format!("inbound tcp {dest_name}:{port}"),
                ProbeCase::to(SocketAddr::new(ip, port)),
            ));
        }
    }
    cases
}

/// Runs `cases` at `place` as `who` in one probe process, each within `timeout`, and records
/// each under `prefix`.
fn probe_all(
    t: &Topology,
    place: &Place,
    who: Identity,
    prefix: &str,
    cases: &[(String, ProbeCase)],
    timeout: Duration,
) -> Result<Vec<(String, String)>> {
    let connections: Vec<ProbeCase> = cases.iter().map(|(_, c)| *c).collect();
    let results = t.probe_batch(place, who, &connections, timeout)?;
    Ok(cases
        .iter()
        .zip(results)
        .map(|((label, _), r)| (format!("{prefix}{label}"), outcome(&r)))
        .collect())
}

/// Runs the matrix in one pod: case label -> outcome.
fn record(pod: &Intercepted) -> Result<Record> {
    let t = &pod.topo;
    let name_servers: [(&str, IpAddr); 4] = [
        ("server", t.server_ip.into()),
        ("10.200.1.1", t.server_extra_ips[0].into()),
        ("server6", t.server_ip6.into()),
        ("fd00:200:1::1", t.server_extra_ips6[0].into()),
    ];
    let outbound = outbound_cases(t);
    let mut out = BTreeMap::new();
    // The cases that time out cost their whole timeout: they run beside the rest.
    let never_answers = [(
        "tcp blackhole:8080".to_owned(),
        ProbeCase::to(addr(BLACKHOLE, 8080)),
    )];
    thread::scope(|s| -> Result<()> {
        let slow: Vec<_> = [("app", APP), ("proxy", PROXY)]
            .into_iter()
            .map(|(who_name, who)| {
                let cases = &never_answers;
                s.spawn(move || {
                    let prefix = format!("{who_name} ");
                    probe_all(t, &Place::Pod, who, &prefix, cases, BLACKHOLE_TIMEOUT)
                })
            })
            .collect();
        out.extend(probe_all(
            t,
            &Place::Server,
            Identity::APP,
            "",
            &inbound_cases(t),
            PROBE_TIMEOUT,
        )?);
        for (who_name, who) in IDENTITIES {
            out.extend(probe_all(
                t,
                &Place::Pod,
                who,
                &format!("{who_name} "),
                &outbound,
                PROBE_TIMEOUT,
            )?);
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
        for handle in slow {
            out.extend(handle.join().expect("probing thread")?);
        }
        Ok(())
    })?;
    Ok(out)
}

/// Rows where the records differ (or that one of them lacks), as a readable table; `ebpf` is
/// read as REDIRECT would show it (see [`as_redirect_shows`]).
fn differences(ebpf: &Record, other: &Record, name: &str) -> Vec<String> {
    let cases: BTreeSet<&String> = ebpf.keys().chain(other.keys()).collect();
    cases
        .into_iter()
        .filter_map(|case| {
            let a = ebpf.get(case).map(|v| as_redirect_shows(case, v));
            let b = other.get(case);
            (a.as_ref() != b).then(|| {
                format!(
                    "{case}:\n  ebpf:   {}\n  {:<7} {}",
                    a.as_deref().unwrap_or("-"),
                    format!("{name}:"),
                    b.map_or("-", String::as_str)
                )
            })
        })
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
    let records: Vec<(&str, Result<(Record, KnownAnswers)>)> = thread::scope(|s| {
        let handles: Vec<_> = backends
            .iter()
            .map(|&(name, backend)| {
                s.spawn(move || {
                    let tag = format!("df{index}{name}");
                    let (pod, _peers) = build_pod(&tag, backend, flags)?;
                    let known = known_answers(index, &pod.topo);
                    Ok((record(&pod)?, known))
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
    let (_, (ebpf, known)) = &recs[0];
    // The records must say something: both some capture and some direct connection.
    assert!(
        ebpf.values().any(|v| v.starts_with("sidecar"))
            && ebpf.values().any(|v| v.starts_with("direct")),
        "{flags:?}: a degenerate record {ebpf:#?}"
    );
    // Known answers, so that backends that are wrong the same way cannot pass; then every
    // difference from each iptables flavour. All reported at once.
    let mut failures = Vec::new();
    let wrong: Vec<String> = known
        .iter()
        .filter(|(case, want)| ebpf.get(case) != Some(want))
        .map(|(case, want)| {
            format!(
                "{case}:\n  want {want}\n  got  {}",
                ebpf.get(case).map_or("-", String::as_str)
            )
        })
        .collect();
    if !wrong.is_empty() {
        failures.push(format!(
            "the eBPF backend gives wrong known answers:\n{}",
            wrong.join("\n")
        ));
    }
    for (name, (rec, _)) in &recs[1..] {
        let diff = differences(ebpf, rec, name);
        if !diff.is_empty() {
            failures.push(format!(
                "ebpf and iptables-{name} differ in {} cases:\n{}",
                diff.len(),
                diff.join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{flags:?}: {}", failures.join("\n"));
    eprintln!(
        "{flags:?}: {} cases, the same under eBPF, iptables-legacy and iptables-nft",
        ebpf.len()
    );
    Ok(())
}

/// What some cases must give (under the eBPF backend; the others must then agree), per flag
/// set: the anchors on known behaviour.
fn known_answers(index: usize, t: &Topology) -> KnownAnswers {
    let (server, pod) = (t.server_ip, t.pod_ip);
    let (server6, pod6) = (t.server_ip6, t.pod_ip6);
    let eth1 = &t.pod_interfaces[0];
    let answers: Vec<(&str, String)> = match index {
        // The seed's invocation.
        0 => vec![
            (
                "app tcp server:8080",
                format!(
                    "sidecar:15001 orig={server}:8080 local=127.0.0.1:15001; \
                     then {server}:8080 from {pod} port other | getpeername {server}:8080"
                ),
            ),
            (
                "proxy tcp server:8080",
                format!("direct to {server}:8080 from the client | getpeername {server}:8080"),
            ),
            // The proxy's uid is enough, whatever its group.
            (
                "proxy-uid tcp server:8080",
                format!("direct to {server}:8080 from the client | getpeername {server}:8080"),
            ),
            (
                "proxy tcp pod-ip:8080",
                format!(
                    "sidecar:15006 orig={pod}:8080 local=127.0.0.1:15006; \
                     then {pod}:8080 from 127.0.0.6 port other | getpeername {pod}:8080"
                ),
            ),
            (
                "proxy tcp pod-ip:15008",
                format!("direct to {pod}:15008 from the client | getpeername {pod}:15008"),
            ),
            (
                "app tcp pod-ip:8080",
                format!("direct to {pod}:8080 from the client | getpeername {pod}:8080"),
            ),
            (
                "app tcp localhost:8080",
                "direct to 127.0.0.1:8080 from the client | getpeername 127.0.0.1:8080".into(),
            ),
            (
                "proxy tcp 127.0.0.6 -> 10.200.0.2:8080",
                format!("direct to {pod}:8080 from the client | getpeername {pod}:8080"),
            ),
            ("app Udp dns server:53", format!("server, from {server}:53")),
            // No --dual-stack: IPv6 is not captured; IPv4 from a dual-stack socket is.
            (
                "app tcp server6:8080",
                format!(
                    "direct to {} from the client | getpeername {}",
                    addr6(server6, 8080),
                    addr6(server6, 8080)
                ),
            ),
            (
                "app tcp ::ffff:server:8080",
                format!(
                    "sidecar:15001 orig={server}:8080 local=127.0.0.1:15001; \
                     then {server}:8080 from {pod} port other | getpeername {}",
                    addr6(server.to_ipv6_mapped(), 8080)
                ),
            ),
            // An address nobody answers: the connection times out, after the sidecar took it
            // (the application) or at once (the proxy).
            (
                "app tcp blackhole:8080",
                format!(
                    "sidecar:15001 orig={BLACKHOLE}:8080 local=127.0.0.1:15001; \
                     then nothing (read timed out) | getpeername {BLACKHOLE}:8080"
                ),
            ),
            (
                "proxy tcp blackhole:8080",
                "failed: connect timed out".into(),
            ),
            // From outside: -b 9080 reaches the sidecar on -z with the destination kept (its
            // SO_ORIGINAL_DST and its getsockname), which passes it on from 127.0.0.6.
            (
                "inbound tcp pod-ip:9080",
                format!(
                    "sidecar:15006 orig={pod}:9080 local=orig; \
                     then {pod}:9080 from 127.0.0.6 port other | getpeername {pod}:9080"
                ),
            ),
            // Any other port reaches the application directly, from the client itself.
            (
                "inbound tcp pod-ip:8080",
                format!("direct to {pod}:8080 from the client | getpeername {pod}:8080"),
            ),
            ("inbound tcp pod-ip:7070", "failed: connect refused".into()),
            // No --dual-stack: IPv6 inbound is not captured.
            (
                "inbound tcp pod-ip6:9080",
                format!(
                    "direct to {} from the client | getpeername {}",
                    addr6(pod6, 9080),
                    addr6(pod6, 9080)
                ),
            ),
        ],
        // DNS capture of the name servers, dual stack.
        10 => vec![
            (
                "app tcp server6:8080",
                format!(
                    "sidecar:15001 orig={} local=[::1]:15001; then {} from {pod6} port other \
                     | getpeername {}",
                    addr6(server6, 8080),
                    addr6(server6, 8080),
                    addr6(server6, 8080)
                ),
            ),
            (
                "app tcp fd00:200:1::1:8080",
                format!(
                    "direct to {} from the client | getpeername {}",
                    addr6(t.server_extra_ips6[0], 8080),
                    addr6(t.server_extra_ips6[0], 8080)
                ),
            ),
            (
                "proxy tcp server6:8080",
                format!(
                    "direct to {} from the client | getpeername {}",
                    addr6(server6, 8080),
                    addr6(server6, 8080)
                ),
            ),
            (
                "proxy tcp pod-ip6:8080",
                format!(
                    "sidecar:15006 orig={} local=[::1]:15006; then {} from ::6 port other \
                     | getpeername {}",
                    addr6(pod6, 8080),
                    addr6(pod6, 8080),
                    addr6(pod6, 8080)
                ),
            ),
            (
                "app Udp dns server6:53",
                format!("dns proxy, from {}", addr6(server6, 53)),
            ),
            (
                "app UdpConnected dns ::ffff:server:53",
                format!("dns proxy, from {}", addr6(server.to_ipv6_mapped(), 53)),
            ),
            (
                "proxy Udp dns server6:53",
                format!("server, from {}", addr6(server6, 53)),
            ),
            (
                "app Udp dns fd00:200:1::1:53",
                format!("server, from {}", addr6(t.server_extra_ips6[0], 53)),
            ),
        ],
        // An excluded interface: inbound on eth1 reaches the application, on eth0 the sidecar.
        13 => vec![
            (
                "inbound tcp eth1-ip:8080",
                format!(
                    "direct to {ip}:8080 from the client | getpeername {ip}:8080",
                    ip = eth1.pod_ip
                ),
            ),
            (
                "inbound tcp pod-ip:8080",
                format!(
                    "sidecar:15006 orig={pod}:8080 local=orig; \
                     then {pod}:8080 from 127.0.0.6 port other | getpeername {pod}:8080"
                ),
            ),
        ],
        // -b '*' -d 3306,15020.
        16 => vec![
            (
                "inbound tcp pod-ip6:7070",
                format!(
                    "sidecar:15006 orig={} local=orig; then nothing (EOF) | getpeername {}",
                    addr6(pod6, 7070),
                    addr6(pod6, 7070)
                ),
            ),
            (
                "inbound tcp pod-ip:15020",
                format!("direct to {pod}:15020 from the client | getpeername {pod}:15020"),
            ),
            (
                "inbound tcp pod-ip:15008",
                format!("direct to {pod}:15008 from the client | getpeername {pod}:15008"),
            ),
        ],
        // -p 15002 -z 15007 -u 1337 -g 3000 -b 9080,8080,15008.
        17 => vec![
            (
                "app tcp server:8080",
                format!(
                    "sidecar:15002 orig={server}:8080 local=127.0.0.1:15002; \
                     then {server}:8080 from {pod} port other | getpeername {server}:8080"
                ),
            ),
            // Gid 1337 is not a proxy group here.
            (
                "proxy-gid tcp server:8080",
                format!(
                    "sidecar:15002 orig={server}:8080 local=127.0.0.1:15002; \
                     then {server}:8080 from {pod} port other | getpeername {server}:8080"
                ),
            ),
            (
                "other tcp server:8080",
                format!("direct to {server}:8080 from the client | getpeername {server}:8080"),
            ),
            (
                "inbound tcp pod-ip6:8080",
                format!(
                    "sidecar:15007 orig={} local=orig; then {} from ::6 port other \
                     | getpeername {}",
                    addr6(pod6, 8080),
                    addr6(pod6, 8080),
                    addr6(pod6, 8080)
                ),
            ),
            // The tunnel port, even when -b names it.
            (
                "inbound tcp pod-ip:15008",
                format!("direct to {pod}:15008 from the client | getpeername {pod}:15008"),
            ),
        ],
        // -z 15009 with nothing listening there, --inbound-fail closed.
        18 => vec![
            ("inbound tcp pod-ip:8080", "failed: connect refused".into()),
            ("inbound tcp pod-ip6:8080", "failed: connect refused".into()),
            ("proxy tcp pod-ip:8080", "failed: connect refused".into()),
        ],
        _ => Vec::new(),
    };
    answers
        .into_iter()
        .map(|(case, want)| (case.to_owned(), want))
        .collect()
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
    inbound_wildcard_with_excluded_ports = 16;
    inbound_list_and_other_capture_ports = 17;
    inbound_capture_with_no_listener_fails_closed = 18;
}
