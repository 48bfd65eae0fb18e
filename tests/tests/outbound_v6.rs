//! Outbound interception of what only IPv6 has, on the real kernel, with istio-iptables'
//! ip6tables rules as the reference: IPv4 dialled from a dual-stack socket (an IPv4-mapped
//! `::ffff:a.b.c.d`), which iptables, not ip6tables, decides; `--dual-stack` itself; instances
//! made without the IPv6 programs. The behaviours both families share are in outbound.rs, once
//! per family.
//!
//! The test pods' first address is IPv4, so, as with istio-iptables, IPv6 is captured only
//! with `--dual-stack` (`dual()`).

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context as _, Result};
use interceptor_tests::outcome::assert_success;
use interceptor_tests::{
    Identity, Intercepted, Place, Process, Route, SEED_FLAGS, Side, Topology, addr, addr6, any,
    any6, instance_dir, interceptor, route_of,
};

/// `flags` and `--dual-stack`: IPv6 is captured in the (IPv4-first) test pods.
fn dual<'a>(flags: &[&'a str]) -> Vec<&'a str> {
    let mut all = flags.to_vec();
    all.push("--dual-stack");
    all
}

/// `[::ffff:a.b.c.d]:port`: how a dual-stack socket dials an IPv4 address.
fn mapped(ip: Ipv4Addr, port: u16) -> SocketAddr {
    addr6(ip.to_ipv6_mapped(), port)
}

/// A pod intercepted with `flags`, a server on 8080 of each family and the sidecar on 15001.
struct BothFamilies {
    // Before `p`: the processes go first, then `p` cleans.
    _server: Process,
    _sidecar: Process,
    p: Intercepted,
    /// The server's IPv4 and IPv6 addresses on 8080.
    v4: SocketAddr,
    v6: SocketAddr,
}

impl BothFamilies {
    fn new(tag: &str, flags: &[&str]) -> Result<Self> {
        let p = Intercepted::new(tag, flags)?;
        let t = &p.topo;
        Ok(Self {
            _server: t.spawn_server(
                &Place::Server,
                Identity::APP,
                &[any(8080), any6(8080)],
                &[],
            )?,
            _sidecar: t.spawn_sidecar(&[15001], &["--announce"])?,
            v4: addr(t.server_ip, 8080),
            v6: addr6(t.server_ip6, 8080),
            p,
        })
    }

    /// Where the application's connection to `to` went.
    fn route(&self, to: SocketAddr) -> Result<Route> {
        Ok(route_of(&self.p.probe(Identity::APP, to)?))
    }
}

#[test]
fn a_dual_stack_socket_dialling_ipv4_is_decided_by_the_ipv4_rules() -> Result<()> {
    let topo = Topology::new("v6-mapped")?;
    let [s, a, b] = [
        topo.server_ip,
        topo.server_extra_ips[0],
        topo.server_extra_ips[1],
    ];
    // IPv4 ranges only, plus an IPv6 exclude written as the mapped address: in istio-iptables
    // it is an ip6tables rule, which never sees these (IPv4) connections. No --dual-stack:
    // IPv6 is not captured, and IPv4 dialled from a dual-stack socket still is.
    let include = format!("{s}/24,{a}/24");
    let exclude = format!("{a}/32,{}/128", s.to_ipv6_mapped());
    let p = Intercepted::bare(topo);
    p.init(&["-u", "1337", "-i", &include, "-x", &exclude])?;
    let t = &p.topo;
    let _server = t.spawn_server(&Place::Server, Identity::APP, &[any(8080)], &[])?;
    let _local = t.spawn_server(&Place::Pod, Identity::APP, &[any(9080)], &[])?;
    let sidecar = t.spawn_sidecar(&[15001, 15006], &["--announce"])?;

    // Redirected to ::ffff:127.0.0.1:15001; the sidecar's IPv4 socket reads the IPv4 address.
    let r = p.probe(Identity::APP, mapped(s, 8080))?;
    assert_eq!(route_of(&r), Route::Sidecar(addr(s, 8080)), "{r:?}");
    assert_eq!(r.server_line().map(|l| l.local), Some(addr(s, 8080)));
    assert_eq!(
        r.peer_name,
        Some(mapped(s, 8080)),
        "getpeername6 shows the mapped address"
    );
    let table = [
        // -x of the IPv4 list
        (mapped(a, 8080), Route::Direct(addr(a, 8080))),
        // not in the IPv4 -i list
        (mapped(b, 8080), Route::Direct(addr(b, 8080))),
        // localhost, and the pod's own IPv4 address
        (
            mapped(Ipv4Addr::LOCALHOST, 9080),
            Route::Direct(addr(Ipv4Addr::LOCALHOST, 9080)),
        ),
        (mapped(t.pod_ip, 9080), Route::Direct(addr(t.pod_ip, 9080))),
    ];
    for (to, want) in table {
        let r = p.probe(Identity::APP, to)?;
        assert_eq!(route_of(&r), want, "{to}: {r:?}");
    }
    // The proxy calling its own pod's IPv4 address from a dual-stack socket: inbound capture.
    let r = p.probe(Identity::PROXY, mapped(t.pod_ip, 9080))?;
    let line = r.sidecar_line().context("captured by the sidecar")?;
    assert_eq!(
        (line.port, line.orig.clone()),
        (15006, Ok(addr(t.pod_ip, 9080))),
        "{r:?}"
    );
    drop(sidecar);

    // A dual-stack proxy listener accepts the connection on an IPv6 socket with mapped
    // addresses. SOL_IP answers the IPv4 destination, as netfilter does; SOL_IPV6 does not.
    for (level, want) in [
        ("auto", Ok(addr(s, 8080))),
        ("ipv6", Err("ENOENT".to_owned())),
    ] {
        let _sidecar = t.spawn_sidecar(
            &[15001],
            &["--announce", "--dual-stack", "--original-dst-level", level],
        )?;
        let r = p.probe(Identity::APP, mapped(s, 8080))?;
        let line = r.sidecar_line().context("the sidecar answered")?;
        assert_eq!(line.orig, want, "{level}: {r:?}");
    }
    Ok(())
}

#[test]
fn an_instance_without_the_ipv6_programs_gets_them_on_reinit() -> Result<()> {
    let pod = BothFamilies::new("v6-upgrade", &dual(&["-i", "*"]))?;
    let (p, v4, v6) = (&pod.p, pod.v4, pod.v6);
    let dir = instance_dir(&p.topo.pod_cgroup);

    // What a build without IPv6 support leaves: none of the IPv6 programs' links.
    // (Unpinning a link nothing else holds detaches its program.)
    for link in [
        "link_redirect_connect6",
        "link_restore_peer_name6",
        "link_redirect_sendmsg6",
        "link_restore_dns_reply_source6",
        "link_mark_capture_listener6",
    ] {
        std::fs::remove_file(dir.join(link))?;
    }
    assert_eq!(pod.route(v6)?, Route::Direct(v6));
    assert_eq!(pod.route(v4)?, Route::Sidecar(v4));

    // Re-running init attaches what is missing, in place: IPv4 was never interrupted and the
    // counters go on.
    p.init(&dual(&["-i", "*"]))?;
    let r = p.probe(Identity::APP, v6)?;
    assert_eq!(route_of(&r), Route::Sidecar(v6));
    assert_eq!(r.peer_name, Some(v6), "getpeername6 is back too");
    assert_eq!(pod.route(v4)?, Route::Sidecar(v4));
    assert_eq!(links(&dir)?, PROGRAMS, "one link per program");
    assert_eq!(p.counters()?["redirected"], 3);
    Ok(())
}

#[test]
fn a_reinit_with_maps_of_another_layout_moves_the_pod_to_their_datapath() -> Result<()> {
    let pod = BothFamilies::new("v6-layout", &dual(&["-i", "*"]))?;
    let (p, v4, v6) = (&pod.p, pod.v4, pod.v6);
    let before = instance_dir(&p.topo.pod_cgroup);
    assert_eq!(pod.route(v4)?, Route::Sidecar(v4));

    // Other map sizes are another datapath (as another build's map layout is): init registers
    // the pod there, beside its old registration, then removes the old one.
    p.init(&dual(&["-i", "*", "--max-connections", "4096"]))?;
    let after = instance_dir(&p.topo.pod_cgroup);
    assert_ne!(before.parent(), after.parent(), "{before:?} -> {after:?}");
    assert!(!before.exists(), "the old registration is gone");
    assert_eq!(pod.route(v6)?, Route::Sidecar(v6));
    assert_eq!(pod.route(v4)?, Route::Sidecar(v4));
    assert_eq!(links(&after)?, PROGRAMS, "one link per program");
    // The counters go on from the old registration's (1 + 2), and the old programs are
    // gone: had the old connect4 still run first, the new one would have seen 127.0.0.1 and
    // counted a local destination.
    let c = p.counters()?;
    assert_eq!(
        (
            c["redirected"].as_u64(),
            c["direct_local_destination"].as_u64()
        ),
        (Some(3), Some(0)),
        "{c}"
    );
    Ok(())
}

/// The programs an instance attaches (`interceptor_ebpf::program_names::ALL`).
const PROGRAMS: usize = 15;

fn links(dir: &std::path::Path) -> Result<usize> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("link_"))
        .count())
}

#[test]
fn dry_run_shows_the_ipv6_entries() -> Result<()> {
    let topo = Topology::new("v6-dry")?;
    let cg = topo.pod_cgroup.display().to_string();
    let ns = topo.netns_path(Side::Pod).display().to_string();
    let out = interceptor(&[
        "init",
        "--cgroup",
        &cg,
        "--netns",
        &ns,
        "--dry-run",
        "-i",
        "10.96.0.0/12,fd00:96::1/64",
        "-x",
        "fd00:96::5/128",
    ]);
    assert_success(&out);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let maps = &plan["maps"];
    assert_eq!(
        maps["cidr6"],
        serde_json::json!([
            "rules=1 include fd00:96::/64",
            "rules=1 exclude fd00:96::5/128"
        ]),
        "{plan}"
    );
    let local6 = maps["pod_config"]["local_addrs6"]
        .as_array()
        .context("local_addrs6")?;
    assert!(
        local6.contains(&serde_json::json!(topo.pod_ip6.to_string())),
        "{plan}"
    );
    assert!(
        !instance_dir(&topo.pod_cgroup).exists(),
        "a dry run pins nothing"
    );
    Ok(())
}

#[test]
fn without_dual_stack_an_ipv4_first_pod_leaves_ipv6_alone_as_istio_iptables() -> Result<()> {
    let pod = BothFamilies::new("v6-off", &SEED_FLAGS)?;
    let (p, t, v4, v6) = (&pod.p, &pod.p.topo, pod.v4, pod.v6);
    assert_eq!(pod.route(v6)?, Route::Direct(v6));
    assert_eq!(pod.route(v4)?, Route::Sidecar(v4));
    let c = p.counters()?;
    assert_eq!(c["direct_ipv6_disabled"], 1, "{c}");
    let plan = p.status()?["config"]["dual_stack"].clone();
    assert_eq!(plan, false);
    // ::6 is put on lo only when IPv6 is captured.
    assert!(!lo_has_passthrough6(t)?);
    p.init(&dual(&SEED_FLAGS))?;
    assert!(lo_has_passthrough6(t)?);
    assert_eq!(pod.route(v6)?, Route::Sidecar(v6));
    Ok(())
}

/// Whether the pod's lo holds ::6/128.
fn lo_has_passthrough6(t: &Topology) -> Result<bool> {
    let out = std::process::Command::new("ip")
        .args(["-n", &t.pod_netns, "-6", "addr", "show", "dev", "lo"])
        .output()?;
    anyhow::ensure!(out.status.success(), "ip addr show failed");
    Ok(String::from_utf8_lossy(&out.stdout).contains("inet6 ::6/128"))
}
