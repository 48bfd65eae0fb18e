//! Outbound interception on the real kernel: `interceptor init` attaches the programs to a pod
//! the test creates, and real connections from processes in the pod go where istio-iptables
//! (iptables, and ip6tables over IPv6) would send them.
//!
//! The tests of `per_family!` run once per address family (`ipv4::...`, `ipv6::...`); the test
//! pods' first address is IPv4, so, as with istio-iptables, IPv6 is captured with
//! `--dual-stack` (`Family::capture`). What only one family has is here for IPv4 (`-c`
//! interfaces, owner groups, re-init, the default target, bad input) and in outbound_v6.rs for
//! IPv6 (dual-stack sockets, `::ffff:` addresses, `--dual-stack` itself).

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use interceptor_tests::family::Family;
use interceptor_tests::outcome::assert_exit;
use interceptor_tests::{
    Identity, Intercepted, Place, ProbeOptions, Process, Route, SEED_FLAGS, Side, Topology, addr,
    any, instance_dir, interceptor, interceptor_bin, per_family, route_of,
};

per_family!(
    seed_flags_send_the_application_through_the_sidecar,
    the_proxy_uid_or_gid_goes_direct_and_other_users_are_redirected,
    include_exclude_cidrs_and_ports_follow_the_decision_table,
    the_proxy_calling_its_own_pod_goes_to_inbound_capture_except_from_the_passthrough_source,
    original_destination_errors_match_netfilter,
);

/// A pod intercepted with `flags`, a server of family `f` on 8080 and the sidecar on 15001.
struct Outbound {
    // Before `p`: the processes go first, then `p` cleans.
    _server: Process,
    _sidecar: Process,
    p: Intercepted,
    /// The server's address on 8080.
    target: SocketAddr,
}

impl Outbound {
    fn new(tag: &str, f: Family, flags: &[&str]) -> Result<Self> {
        let p = Intercepted::new(tag, flags)?;
        let t = &p.topo;
        Ok(Self {
            _server: t.spawn_server(&Place::Server, Identity::APP, &[f.any(8080)], &[])?,
            _sidecar: t.spawn_sidecar(&[15001], &["--announce"])?,
            target: SocketAddr::new(f.server_ip(t), 8080),
            p,
        })
    }

    /// Where a connection from `who` to the server went.
    fn route(&self, who: Identity) -> Result<Route> {
        Ok(route_of(&self.p.probe(who, self.target)?))
    }
}

fn seed_flags_send_the_application_through_the_sidecar(f: Family) -> Result<()> {
    let o = Outbound::new(&f.tag("seed"), f, &f.capture(&SEED_FLAGS))?;
    let (p, target) = (&o.p, o.target);

    let r = p.probe(Identity::APP, target)?;
    // The sidecar read the destination with getsockopt(SOL_IP, SO_ORIGINAL_DST), or
    // (SOL_IPV6, IP6T_SO_ORIGINAL_DST).
    assert_eq!(route_of(&r), Route::Sidecar(target), "{r:?}");
    // The sidecar's own upstream connection reached the server directly (no loop).
    let upstream = r
        .server_line()
        .context("the server answered through the sidecar")?;
    assert_eq!(upstream.local, target);
    assert_eq!(upstream.peer.ip(), f.pod_ip(&p.topo));
    // getpeername4/6: the application sees the address it dialled, not localhost:15001.
    assert_eq!(r.peer_name, Some(target));

    let c = p.counters()?;
    assert_eq!(c["redirected"], 1, "{c}");
    assert_eq!(c["original_dst_hits"], 1, "{c}");
    assert_eq!(c["peer_name_restored"], 1, "{c}");
    Ok(())
}

fn the_proxy_uid_or_gid_goes_direct_and_other_users_are_redirected(f: Family) -> Result<()> {
    let flags = f.capture(&["-u", "1337", "-g", "1337", "-i", "*"]);
    let o = Outbound::new(&f.tag("owner"), f, &flags)?;
    let target = o.target;
    for (who, want) in [
        (Identity::PROXY, Route::Direct(target)),
        (Identity::new(1337, 1000), Route::Direct(target)),
        (Identity::new(1000, 1337), Route::Direct(target)),
        (Identity::new(2000, 2000), Route::Sidecar(target)),
        (Identity::ROOT, Route::Sidecar(target)),
    ] {
        assert_eq!(o.route(who)?, want, "{who:?}");
    }
    Ok(())
}

fn include_exclude_cidrs_and_ports_follow_the_decision_table(f: Family) -> Result<()> {
    let topo = Topology::new(&f.tag("table"))?;
    let (s, [a, b, c]) = (f.server_ip(&topo), f.server_extra_ips(&topo));
    let o = f.other();
    let (os, [oa, ..]) = (o.server_ip(&topo), o.server_extra_ips(&topo));
    let (net, host) = (f.subnet_len(), f.host_len());
    // Host bits in a CIDR are ignored, as iptables does: b/28 (b/96) is b's network /28 (/96).
    let part = (net + host) / 2;
    // Mixed IPv4/IPv6 lists, as istio-iptables takes them, and both families captured: each
    // half of the lists decides the connections of its family.
    let include = format!("{os}/{},{s}/{net},{a}/{net},{b}/{net}", o.subnet_len());
    let exclude = format!("{a}/{host},{b}/{part},{oa}/{}", o.host_len());
    let p = Intercepted::bare(topo);
    p.init(&[
        "-i",
        &include,
        "-x",
        &exclude,
        "-o",
        "3306",
        "-q",
        "8443",
        "-u",
        "1337",
        "--dual-stack",
    ])?;
    let t = &p.topo;
    let _server = t.spawn_server(
        &Place::Server,
        Identity::APP,
        &[f.any(8080), f.any(3306), f.any(8443), o.any(8080)],
        &[],
    )?;
    let _local = t.spawn_server(&Place::Pod, Identity::APP, &[f.any(9080)], &[])?;
    let _sidecar = t.spawn_sidecar(&[15001], &["--announce"])?;
    let at = SocketAddr::new;
    let (localhost, pod) = (f.localhost(), f.pod_ip(t));
    let table = [
        // included subnet
        (at(s, 8080), Route::Sidecar(at(s, 8080))),
        // -o wins over everything
        (at(s, 3306), Route::Direct(at(s, 3306))),
        // an excluded address inside an included subnet
        (at(a, 8080), Route::Direct(at(a, 8080))),
        // an excluded range inside an included subnet
        (at(b, 8080), Route::Direct(at(b, 8080))),
        // not included at all
        (at(c, 8080), Route::Direct(at(c, 8080))),
        // -q redirects its port whatever the destination ...
        (at(c, 8443), Route::Sidecar(at(c, 8443))),
        // ... but not past -x
        (at(a, 8443), Route::Direct(at(a, 8443))),
        // localhost and the pod's own address stay local
        (at(localhost, 9080), Route::Direct(at(localhost, 9080))),
        (at(pod, 9080), Route::Direct(at(pod, 9080))),
        // the other family's half of the same lists applies to the other family
        (at(os, 8080), Route::Sidecar(at(os, 8080))),
    ];
    for (to, want) in table {
        let r = p.probe(Identity::APP, to)?;
        assert_eq!(route_of(&r), want, "{to}: {r:?}");
    }
    let counters = p.counters()?;
    assert_eq!(counters["direct_excluded_cidr"], 3, "{counters}");
    assert_eq!(counters["direct_not_included"], 1, "{counters}");
    Ok(())
}

fn the_proxy_calling_its_own_pod_goes_to_inbound_capture_except_from_the_passthrough_source(
    f: Family,
) -> Result<()> {
    // Envoy binds ::6 for IPv6 inbound passthrough: init puts it on lo, as istio-iptables.
    let p = Intercepted::new(&f.tag("self"), &f.capture(&SEED_FLAGS))?;
    let t = &p.topo;
    let _app = t.spawn_server(
        &Place::Pod,
        Identity::APP,
        &[f.any(9080), f.any(15008)],
        &[],
    )?;
    let _sidecar = t.spawn_sidecar(&[15001, 15006], &["--announce"])?;
    let app = SocketAddr::new(f.pod_ip(t), 9080);
    // The proxy dials the pod's address: captured on -z (15006) with the original destination.
    let r = p.probe(Identity::PROXY, app)?;
    let line = r.sidecar_line().context("captured by the sidecar")?;
    assert_eq!((line.port, line.orig.clone()), (15006, Ok(app)), "{r:?}");
    // Bound to 127.0.0.6 or ::6 (Envoy's inbound passthrough) it reaches the application.
    let opts = ProbeOptions {
        bind: Some(f.passthrough()),
        ..Default::default()
    };
    let r = t.probe(Identity::PROXY, app, &opts)?;
    assert_eq!(route_of(&r), Route::Direct(app), "{r:?}");
    // Neither localhost nor the tunnel port is captured.
    for to in [
        SocketAddr::new(f.localhost(), 9080),
        SocketAddr::new(f.pod_ip(t), 15008),
    ] {
        let r = p.probe(Identity::PROXY, to)?;
        assert_eq!(route_of(&r), Route::Direct(to), "{r:?}");
    }
    // An application calling its own pod goes direct.
    let r = p.probe(Identity::APP, app)?;
    assert_eq!(route_of(&r), Route::Direct(app), "{r:?}");
    Ok(())
}

fn original_destination_errors_match_netfilter(f: Family) -> Result<()> {
    let p = Intercepted::new(&f.tag("errno"), &f.capture(&SEED_FLAGS))?;
    let t = &p.topo;
    let _server = t.spawn_server(&Place::Server, Identity::APP, &[f.any(8080)], &[])?;
    let target = SocketAddr::new(f.server_ip(t), 8080);
    {
        // Dialling the sidecar itself is not redirected (localhost is local): nothing to report.
        let _sidecar = t.spawn_sidecar(&[15001], &["--announce"])?;
        let r = p.probe(Identity::APP, SocketAddr::new(f.localhost(), 15001))?;
        let line = r.sidecar_line().context("the sidecar answered")?;
        assert_eq!(line.orig, Err("ENOENT".to_owned()), "{r:?}");
        assert_eq!(p.counters()?["original_dst_misses"], 1);
    }
    let cases = match f {
        Family::V4 => [
            // A buffer shorter than a sockaddr_in.
            (["--original-dst-len", "15"], "EINVAL"),
            // The IPv6 option on an IPv4 socket: IPv4's getsockopt refuses the level before
            // netfilter is asked.
            (["--original-dst-level", "ipv6"], "EOPNOTSUPP"),
        ],
        Family::V6 => [
            // A buffer for a sockaddr_in (16 bytes) is too short for a sockaddr_in6.
            (["--original-dst-len", "16"], "EINVAL"),
            // The IPv4 option on an IPv6 connection finds nothing.
            (["--original-dst-level", "ip"], "ENOENT"),
        ],
    };
    for (args, want) in cases {
        let mut sidecar_args = vec!["--announce"];
        sidecar_args.extend(args);
        let _sidecar = t.spawn_sidecar(&[15001], &sidecar_args)?;
        let r = p.probe(Identity::APP, target)?;
        let line = r.sidecar_line().context("the sidecar answered")?;
        assert_eq!(line.orig, Err(want.to_owned()), "{args:?}: {r:?}");
    }
    Ok(())
}

#[test]
fn processes_outside_the_pod_cgroup_are_untouched() -> Result<()> {
    let o = Outbound::new("outside", Family::V4, &SEED_FLAGS)?;
    let t = &o.p.topo;
    let outside = t.create_cgroup("outside")?;
    let r = t.probe_from(
        &Place::PodNetns { cgroup: outside },
        Identity::APP,
        o.target,
        &ProbeOptions::default(),
    )?;
    assert_eq!(route_of(&r), Route::Direct(o.target), "{r:?}");
    assert_eq!(r.peer_name, Some(o.target));
    Ok(())
}

#[test]
fn reinit_replaces_in_place_and_clean_restores_direct() -> Result<()> {
    let o = Outbound::new("reinit", Family::V4, &["-i", "*"])?;
    let (p, target) = (&o.p, o.target);
    assert_eq!(o.route(Identity::APP)?, Route::Sidecar(target));

    // New options take effect; the instance is updated, not stacked (a second copy of
    // connect4 would see 127.0.0.1 and count a local destination).
    let exclude = format!("{}/32", p.topo.server_ip);
    p.init(&["-i", "*", "-x", &exclude])?;
    assert_eq!(o.route(Identity::APP)?, Route::Direct(target));
    p.init(&["-i", "*"])?;
    let before = p.counters()?;
    assert_eq!(o.route(Identity::APP)?, Route::Sidecar(target));
    let after = p.counters()?;
    let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert_eq!(
        (delta("redirected"), delta("direct_local_destination")),
        (1, 0)
    );
    let links: Vec<_> = std::fs::read_dir(instance_dir(&p.topo.pod_cgroup))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("link_"))
        .collect();
    // sockops, getsockopt, getpeername4/6, recvmsg4/6, sendmsg4/6, post_bind4/6, sk_lookup,
    // connect4/6, sock_create, setsockopt.
    assert_eq!(links.len(), 15, "one link per program");

    let out = p.clean();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !instance_dir(&p.topo.pod_cgroup).exists(),
        "clean removes every pin"
    );
    assert_eq!(o.route(Identity::APP)?, Route::Direct(target));
    // Cleaning something absent is not an error.
    assert!(p.clean().status.success());
    Ok(())
}

#[test]
fn default_target_is_the_callers_parent_cgroup_and_netns() -> Result<()> {
    let topo = Topology::new("default")?;
    let _server = topo.spawn_server(&Place::Server, Identity::APP, &[any(8080)], &[])?;
    let _sidecar = topo.spawn_sidecar(&[15001], &["--announce"])?;
    // Run init the way an init container does: in a child cgroup of the pod, in its netns,
    // with the seed's flags only.
    let init_cgroup = topo.create_cgroup("pod/init")?;
    let mut cmd = topo.command(
        &Place::PodNetns {
            cgroup: init_cgroup,
        },
        Identity::ROOT,
        interceptor_bin(),
    )?;
    cmd.arg("init").args(SEED_FLAGS);
    let out = topo
        .spawn(&mut cmd)?
        .wait(std::time::Duration::from_secs(20))?;
    let p = Intercepted::bare(topo);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(instance_dir(&p.topo.pod_cgroup).exists());
    let target = addr(p.topo.server_ip, 8080);
    assert_eq!(
        route_of(&p.probe(Identity::APP, target)?),
        Route::Sidecar(target)
    );
    Ok(())
}

#[test]
fn bad_input_fails_with_one_clear_error_and_leaves_nothing() -> Result<()> {
    let p = Intercepted::bare(Topology::new("bad")?);
    let topo = &p.topo;
    let cg = topo.pod_cgroup.display().to_string();
    let ns = topo.netns_path(Side::Pod).display().to_string();
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["-p", "0"], 2, "\"0\""),
        (vec!["-p", "65536"], 2, "\"65536\""),
        (vec!["-q", "80,http"], 2, "\"http\""),
        (vec!["-i", "10.1.2.3"], 2, "\"10.1.2.3\""),
        (vec!["-x", "10.0.0.0/33"], 2, "\"10.0.0.0/33\""),
        (vec!["-u", "no-such-user"], 2, "\"no-such-user\""),
        (vec!["-m", "tproxy"], 2, "\"tproxy\""),
        (vec!["--no-such-flag"], 2, "--no-such-flag"),
        // What the eBPF backend cannot honour is refused, not ignored.
        (vec!["-k", "eth0"], 2, "-k/--kube-virt-interfaces"),
        (vec!["--drop-invalid"], 2, "--drop-invalid"),
    ];
    for (flags, code, needle) in cases {
        // `init --cgroup <pod> --netns <pod> flags...`
        assert_exit(&p.try_init(&flags), code, needle, &flags);
        assert!(
            !instance_dir(&topo.pod_cgroup).exists(),
            "{flags:?} left pins"
        );
    }
    let targets: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--cgroup", "/nonexistent/cgroup"],
            "/nonexistent/cgroup",
        ),
        (vec!["--cgroup", "/tmp"], "not a cgroup v2 directory"),
        (vec!["--cgroup", &cg, "--netns", "/tmp"], "/tmp"),
    ];
    for (flags, needle) in targets {
        let mut args = vec!["init", "-i", "*"];
        args.extend(&flags);
        assert_exit(&interceptor(&args), 2, needle, &flags);
    }
    // A runtime failure after loading began (a pod with more addresses than supported):
    // exit 1, nothing attached or pinned.
    for i in 0..9 {
        topo.ip(
            Side::Pod,
            &["addr", "add", &format!("10.250.{i}.2/32"), "dev", "lo"],
        )?;
    }
    let args = ["init", "--cgroup", &cg, "--netns", &ns, "-i", "*"];
    assert_exit(&interceptor(&args), 1, "at most 8", &args);
    assert!(
        !instance_dir(&topo.pod_cgroup).exists(),
        "a failed init left pins"
    );
    Ok(())
}

#[test]
fn connections_routed_through_an_excluded_interface_go_direct() -> Result<()> {
    let mut topo = Topology::new("excl-if")?;
    let eth1 = topo.add_pod_interface()?;
    let p = Intercepted::bare(topo);
    p.init(&["-i", "*", "-c", &eth1.name])?;
    let t = &p.topo;
    let _server = t.spawn_server(&Place::Server, Identity::APP, &[any(8080)], &[])?;
    let _sidecar = t.spawn_sidecar(&[15001], &["--announce"])?;
    // istio-iptables: `-A OUTPUT -o eth1 -j RETURN`, before any capture rule.
    let via_eth1 = addr(eth1.server_ip, 8080);
    assert_eq!(
        route_of(&p.probe(Identity::APP, via_eth1)?),
        Route::Direct(via_eth1)
    );
    let via_eth0 = addr(t.server_ip, 8080);
    assert_eq!(
        route_of(&p.probe(Identity::APP, via_eth0)?),
        Route::Sidecar(via_eth0)
    );
    assert_eq!(p.counters()?["direct_excluded_interface"], 1);
    Ok(())
}

#[test]
fn owner_groups_select_which_groups_are_captured() -> Result<()> {
    let o = Outbound::new("owner-groups", Family::V4, &["-i", "*"])?;
    let (p, target) = (&o.p, o.target);
    let spared = Identity::new(2000, 3000);
    let other = Identity::new(2000, 2000);
    p.init_env(
        &["-i", "*"],
        &[("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "3000")],
    )?;
    assert_eq!(o.route(spared)?, Route::Direct(target));
    assert_eq!(o.route(other)?, Route::Sidecar(target));
    p.init_env(&["-i", "*"], &[("ISTIO_OUTBOUND_OWNER_GROUPS", "3000")])?;
    assert_eq!(o.route(spared)?, Route::Sidecar(target));
    assert_eq!(o.route(other)?, Route::Direct(target));
    assert_eq!(p.counters()?["direct_owner_group"], 2);
    Ok(())
}
