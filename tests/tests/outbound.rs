//! Outbound interception on the real kernel: `interceptor init` attaches the programs to a pod
//! the test creates, and real connections from processes in the pod go where istio-iptables
//! would send them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context as _, Result};
use interceptor_tests::{
    Identity, Intercepted, Place, ProbeOptions, ProbeResult, Route, SEED_FLAGS, Side, Topology,
    addr, any, instance_dir, interceptor, interceptor_bin, route_of,
};

fn probe(p: &Intercepted, who: Identity, to: SocketAddr) -> Result<ProbeResult> {
    p.probe(who, to)
}

#[test]
fn seed_flags_send_the_application_through_the_sidecar() -> Result<()> {
    let p = Intercepted::new("seed", &SEED_FLAGS)?;
    let t = &p.topo;
    let _server = t.spawn_server(&Place::Server, Identity::APP, &[any(8080)], &[])?;
    let _sidecar = t.spawn_sidecar(&[15001], &["--announce"])?;
    let target = addr(t.server_ip, 8080);

    let r = probe(&p, Identity::APP, target)?;
    assert_eq!(route_of(&r), Route::Sidecar(target), "{r:?}");
    // The sidecar's own upstream connection reached the server directly (no loop).
    let upstream = r
        .server_line()
        .context("the server answered through the sidecar")?;
    assert_eq!(upstream.local, target);
    assert_eq!(upstream.peer.ip(), IpAddr::V4(t.pod_ip));
    // The application sees the address it dialled, not 127.0.0.1:15001.
    assert_eq!(r.peer_name, Some(target));

    let c = p.counters()?;
    assert_eq!(c["redirected"], 1, "{c}");
    assert_eq!(c["original_dst_hits"], 1, "{c}");
    assert_eq!(c["peer_name_restored"], 1, "{c}");
    Ok(())
}

#[test]
fn the_proxy_uid_or_gid_goes_direct_and_other_users_are_redirected() -> Result<()> {
    let p = Intercepted::new("owner", &["-u", "1337", "-g", "1337", "-i", "*"])?;
    let t = &p.topo;
    let _server = t.spawn_server(&Place::Server, Identity::APP, &[any(8080)], &[])?;
    let _sidecar = t.spawn_sidecar(&[15001], &["--announce"])?;
    let target = addr(t.server_ip, 8080);
    for (who, want) in [
        (Identity::PROXY, Route::Direct(target)),
        (Identity::new(1337, 1000), Route::Direct(target)),
        (Identity::new(1000, 1337), Route::Direct(target)),
        (Identity::new(2000, 2000), Route::Sidecar(target)),
        (Identity::ROOT, Route::Sidecar(target)),
    ] {
        let r = probe(&p, who, target)?;
        assert_eq!(route_of(&r), want, "{who:?}: {r:?}");
    }
    Ok(())
}

#[test]
fn include_exclude_cidrs_and_ports_follow_the_decision_table() -> Result<()> {
    let topo = Topology::new("table")?;
    let [a, b, c] = [
        topo.server_extra_ips[0],
        topo.server_extra_ips[1],
        topo.server_extra_ips[2],
    ];
    let include = format!("{}/24,{a}/24,{b}/24", topo.server_ip);
    // Host bits in a CIDR are ignored, as iptables does: b/28 is b's network /28.
    let exclude = format!("{a}/32,{b}/28");
    let p = Intercepted::bare(topo);
    p.init(&[
        "-i", &include, "-x", &exclude, "-o", "3306", "-q", "8443", "-u", "1337",
    ])?;
    let t = &p.topo;
    let _server = t.spawn_server(
        &Place::Server,
        Identity::APP,
        &[any(8080), any(3306), any(8443)],
        &[],
    )?;
    let _local = t.spawn_server(&Place::Pod, Identity::APP, &[any(9080)], &[])?;
    let _sidecar = t.spawn_sidecar(&[15001], &["--announce"])?;
    let s = t.server_ip;
    let table = [
        // included CIDR
        (addr(s, 8080), Route::Sidecar(addr(s, 8080))),
        // -o wins over everything
        (addr(s, 3306), Route::Direct(addr(s, 3306))),
        // excluded /32 inside an included /24
        (addr(a, 8080), Route::Direct(addr(a, 8080))),
        // excluded /28 inside an included /24
        (addr(b, 8080), Route::Direct(addr(b, 8080))),
        // not included at all
        (addr(c, 8080), Route::Direct(addr(c, 8080))),
        // -q redirects its port whatever the destination ...
        (addr(c, 8443), Route::Sidecar(addr(c, 8443))),
        // ... but not past -x
        (addr(a, 8443), Route::Direct(addr(a, 8443))),
        // localhost and the pod's own address stay local
        (
            addr(Ipv4Addr::LOCALHOST, 9080),
            Route::Direct(addr(Ipv4Addr::LOCALHOST, 9080)),
        ),
        (addr(t.pod_ip, 9080), Route::Direct(addr(t.pod_ip, 9080))),
    ];
    for (to, want) in table {
        let r = probe(&p, Identity::APP, to)?;
        assert_eq!(route_of(&r), want, "{to}: {r:?}");
    }
    Ok(())
}

#[test]
fn the_proxy_calling_its_own_pod_goes_to_inbound_capture_except_from_127_0_0_6() -> Result<()> {
    let p = Intercepted::new("self", &SEED_FLAGS)?;
    let t = &p.topo;
    let _app = t.spawn_server(&Place::Pod, Identity::APP, &[any(9080)], &[])?;
    let _sidecar = t.spawn_sidecar(&[15001, 15006], &["--announce"])?;
    let app = addr(t.pod_ip, 9080);
    // The proxy dials the pod's address: captured on -z (15006) with the original destination.
    let r = probe(&p, Identity::PROXY, app)?;
    let line = r.sidecar_line().context("captured by the sidecar")?;
    assert_eq!((line.port, line.orig.clone()), (15006, Ok(app)), "{r:?}");
    // Bound to 127.0.0.6 (Envoy's inbound passthrough) it reaches the application.
    let opts = ProbeOptions {
        bind: Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6))),
        ..Default::default()
    };
    let r = t.probe(Identity::PROXY, app, &opts)?;
    assert_eq!(route_of(&r), Route::Direct(app), "{r:?}");
    // The tunnel port is never captured.
    let _tunnel = t.spawn_server(&Place::Pod, Identity::APP, &[any(15008)], &[])?;
    let r = probe(&p, Identity::PROXY, addr(t.pod_ip, 15008))?;
    assert_eq!(route_of(&r), Route::Direct(addr(t.pod_ip, 15008)), "{r:?}");
    Ok(())
}

#[test]
fn no_original_destination_is_enoent_as_with_netfilter() -> Result<()> {
    let p = Intercepted::new("enoent", &SEED_FLAGS)?;
    let t = &p.topo;
    let _sidecar = t.spawn_sidecar(&[15001], &["--announce"])?;
    // Dialling the sidecar itself is not redirected (127.0.0.1 is local): nothing to report.
    let r = probe(&p, Identity::APP, addr(Ipv4Addr::LOCALHOST, 15001))?;
    let line = r.sidecar_line().context("the sidecar answered")?;
    assert_eq!(line.orig, Err("ENOENT".to_string()), "{r:?}");
    assert_eq!(p.counters()?["original_dst_misses"], 1);
    Ok(())
}

#[test]
fn processes_outside_the_pod_cgroup_are_untouched() -> Result<()> {
    let p = Intercepted::new("outside", &SEED_FLAGS)?;
    let t = &p.topo;
    let _server = t.spawn_server(&Place::Server, Identity::APP, &[any(8080)], &[])?;
    let _sidecar = t.spawn_sidecar(&[15001], &["--announce"])?;
    let outside = t.create_cgroup("outside")?;
    let target = addr(t.server_ip, 8080);
    let r = t.probe_from(
        &Place::PodNetns { cgroup: outside },
        Identity::APP,
        target,
        &ProbeOptions::default(),
    )?;
    assert_eq!(route_of(&r), Route::Direct(target), "{r:?}");
    assert_eq!(r.peer_name, Some(target));
    Ok(())
}

#[test]
fn reinit_replaces_in_place_and_clean_restores_direct() -> Result<()> {
    let p = Intercepted::new("reinit", &["-i", "*"])?;
    let t = &p.topo;
    let _server = t.spawn_server(&Place::Server, Identity::APP, &[any(8080)], &[])?;
    let _sidecar = t.spawn_sidecar(&[15001], &["--announce"])?;
    let target = addr(t.server_ip, 8080);
    assert_eq!(
        route_of(&probe(&p, Identity::APP, target)?),
        Route::Sidecar(target)
    );

    // New options take effect; the instance is updated, not stacked (a second copy of
    // connect4 would see 127.0.0.1 and count a local destination).
    let exclude = format!("{}/32", t.server_ip);
    p.init(&["-i", "*", "-x", &exclude])?;
    assert_eq!(
        route_of(&probe(&p, Identity::APP, target)?),
        Route::Direct(target)
    );
    p.init(&["-i", "*"])?;
    let before = p.counters()?;
    assert_eq!(
        route_of(&probe(&p, Identity::APP, target)?),
        Route::Sidecar(target)
    );
    let after = p.counters()?;
    let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert_eq!(
        (delta("redirected"), delta("direct_local_destination")),
        (1, 0)
    );
    let links: Vec<_> = std::fs::read_dir(instance_dir(&t.pod_cgroup))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("link_"))
        .collect();
    // sockops, getsockopt, getpeername4/6, recvmsg4/6, sendmsg4/6, post_bind4/6, sk_lookup,
    // connect4/6.
    assert_eq!(links.len(), 13, "one link per program");

    let out = p.clean();
    assert!(out.status.success());
    assert!(
        !instance_dir(&t.pod_cgroup).exists(),
        "clean removes every pin"
    );
    assert_eq!(
        route_of(&probe(&p, Identity::APP, target)?),
        Route::Direct(target)
    );
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
        route_of(&probe(&p, Identity::APP, target)?),
        Route::Sidecar(target)
    );
    Ok(())
}

#[test]
fn bad_input_fails_with_one_clear_error_and_leaves_nothing() -> Result<()> {
    let topo = Topology::new("bad")?;
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
        let mut args = vec!["init", "--cgroup", &cg, "--netns", &ns];
        args.extend(&flags);
        let out = interceptor(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{flags:?}: {err}");
        assert!(err.contains(needle), "{flags:?}: {err}");
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
        let out = interceptor(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.contains(needle), "{flags:?}: {err}");
    }
    // A runtime failure after loading began (a pod with more addresses than supported):
    // exit 1, nothing attached or pinned.
    for i in 0..9 {
        topo.ip(
            Side::Pod,
            &["addr", "add", &format!("10.250.{i}.2/32"), "dev", "lo"],
        )?;
    }
    let out = interceptor(&["init", "--cgroup", &cg, "--netns", &ns, "-i", "*"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("at most 8"), "{err}");
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
        route_of(&probe(&p, Identity::APP, via_eth1)?),
        Route::Direct(via_eth1)
    );
    let via_eth0 = addr(t.server_ip, 8080);
    assert_eq!(
        route_of(&probe(&p, Identity::APP, via_eth0)?),
        Route::Sidecar(via_eth0)
    );
    assert_eq!(p.counters()?["direct_excluded_interface"], 1);
    Ok(())
}

#[test]
fn owner_groups_select_which_groups_are_captured() -> Result<()> {
    let p = Intercepted::new("owner-groups", &["-i", "*"])?;
    let t = &p.topo;
    let _server = t.spawn_server(&Place::Server, Identity::APP, &[any(8080)], &[])?;
    let _sidecar = t.spawn_sidecar(&[15001], &["--announce"])?;
    let target = addr(t.server_ip, 8080);
    let spared = Identity::new(2000, 3000);
    let other = Identity::new(2000, 2000);
    p.init_env(
        &["-i", "*"],
        &[("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "3000")],
    )?;
    assert_eq!(route_of(&probe(&p, spared, target)?), Route::Direct(target));
    assert_eq!(route_of(&probe(&p, other, target)?), Route::Sidecar(target));
    p.init_env(&["-i", "*"], &[("ISTIO_OUTBOUND_OWNER_GROUPS", "3000")])?;
    assert_eq!(
        route_of(&probe(&p, spared, target)?),
        Route::Sidecar(target)
    );
    assert_eq!(route_of(&probe(&p, other, target)?), Route::Direct(target));
    assert_eq!(p.counters()?["direct_owner_group"], 2);
    Ok(())
}
