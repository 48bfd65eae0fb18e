//! Inbound capture on the real kernel: connections from the server namespace to the pod reach
//! the sidecar's listener on `-z` (15006) with their destination kept, or the application
//! directly, as istio-iptables' `ISTIO_INBOUND` rules (iptables and ip6tables) would send them.
//! The tests of `per_family!` run once per address family (`ipv4::...`, `ipv6::...`); the
//! test pods' first address is IPv4, so IPv6 is captured with `--dual-stack`, as with
//! istio-iptables. What only one family has (`-c` interfaces, dual-stack and IPv6-only
//! listeners) is written for it alone.

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use interceptor_tests::family::Family;
use interceptor_tests::outcome::assert_exit;
use interceptor_tests::{
    Identity, Intercepted, Place, ProbeOptions, ProbeResult, Process, SEED_FLAGS, Topology, addr,
    addr6, any, any6, instance_dir, per_family,
};

per_family!(
    the_seed_inbound_port_reaches_the_sidecar_with_its_destination_then_the_app,
    wildcard_captures_every_port_but_d_and_never_the_tunnel_port,
    a_restarted_sidecar_registers_again_and_fail_open_passes_meanwhile,
    a_listener_open_before_init_is_found,
);

/// Envoy's inbound passthrough: the sidecar dials the application from 127.0.0.6 (::6 over
/// IPv6, which init puts on lo when IPv6 is captured).
const SIDECAR_ARGS: [&str; 5] = [
    "--announce",
    "--upstream-source",
    "127.0.0.6",
    "--upstream-source",
    "::6",
];
const CAPTURE_PORT: u16 = 15006;

/// Where an inbound connection ended up.
#[derive(Debug, PartialEq, Eq)]
enum Inbound {
    /// Through the sidecar's capture listener, which saw `orig` from SO_ORIGINAL_DST and
    /// `local` from getsockname, then reached the application from 127.0.0.6.
    Sidecar { orig: SocketAddr, local: SocketAddr },
    /// Straight to the application, which accepted on this address.
    App(SocketAddr),
    /// Nobody answered.
    Failed(String),
}

fn inbound_path(r: &ProbeResult) -> Inbound {
    if let Some(s) = r.sidecar_line() {
        let (Ok(orig), Some(local)) = (s.orig.clone(), s.local) else {
            return Inbound::Failed(format!("sidecar line without addresses: {r:?}"));
        };
        if s.port != CAPTURE_PORT {
            return Inbound::Failed(format!("sidecar listener {}: {r:?}", s.port));
        }
        // The sidecar forwarded to the application, as Envoy's passthrough does.
        let passthrough = Family::of(orig.ip()).passthrough();
        return match r.server_line() {
            Some(app) if app.local == orig && app.peer.ip() == passthrough => {
                Inbound::Sidecar { orig, local }
            }
            other => Inbound::Failed(format!("the application saw {other:?}: {r:?}")),
        };
    }
    match r.server_line() {
        Some(app) => Inbound::App(app.local),
        None => Inbound::Failed(r.error.clone().unwrap_or_else(|| format!("{r:?}"))),
    }
}

/// A client in the server namespace connects to `to` (an address of the pod).
fn from_outside(t: &Topology, to: SocketAddr) -> Result<ProbeResult> {
    t.probe_from(&Place::Server, Identity::APP, to, &ProbeOptions::default())
}

fn steered(to: SocketAddr) -> Inbound {
    Inbound::Sidecar {
        orig: to,
        local: to,
    }
}

/// The application, on each port over IPv4 and IPv6.
fn app(t: &Topology, ports: &[u16]) -> Result<Process> {
    let listen: Vec<SocketAddr> = ports.iter().flat_map(|&p| [any(p), any6(p)]).collect();
    t.spawn_server(&Place::Pod, Identity::APP, &listen, &[])
}

/// `flags` and `--dual-stack`.
fn dual<'a>(flags: &[&'a str]) -> Vec<&'a str> {
    let mut all = flags.to_vec();
    all.push("--dual-stack");
    all
}

fn sidecar(t: &Topology) -> Result<Process> {
    t.spawn_sidecar(&[CAPTURE_PORT], &SIDECAR_ARGS)
}

fn counter(p: &Intercepted, name: &str) -> Result<u64> {
    p.counters()?[name]
        .as_u64()
        .with_context(|| format!("counter {name}"))
}

fn the_seed_inbound_port_reaches_the_sidecar_with_its_destination_then_the_app(
    f: Family,
) -> Result<()> {
    let p = Intercepted::new(&f.tag("inb-seed"), &f.capture(&SEED_FLAGS))?;
    let t = &p.topo;
    let _app = app(t, &[9080, 8000])?;
    let _sidecar = sidecar(t)?;
    let to = SocketAddr::new(f.pod_ip(t), 9080);
    let r = from_outside(t, to)?;
    // Steered to the sidecar's 15006 listener of the family: getsockname and SO_ORIGINAL_DST
    // (IP6T_SO_ORIGINAL_DST) both give pod-ip:9080; the application answered once, from
    // 127.0.0.6 or ::6 (the sidecar's own connection was not captured again: no loop).
    assert_eq!(inbound_path(&r), steered(to), "{r:?}");
    // A port not in -b reaches the application directly, from the client itself.
    let direct = SocketAddr::new(f.pod_ip(t), 8000);
    let r = from_outside(t, direct)?;
    assert_eq!(inbound_path(&r), Inbound::App(direct), "{r:?}");
    assert_eq!(r.server_line().unwrap().peer.ip(), f.server_ip(t));

    let c = p.counters()?;
    // The sidecar listens on 0.0.0.0:15006 and [::]:15006: one listener per family.
    assert_eq!(c["inbound_listener_registered"], 2, "{c}");
    assert_eq!(c["inbound_steered"], 1, "{c}");
    assert_eq!(c["inbound_direct_port"], 1, "{c}");
    assert_eq!(c["original_dst_hits"], 1, "{c}");
    assert_eq!(p.status()?["inbound_listeners"], 2);
    Ok(())
}

fn wildcard_captures_every_port_but_d_and_never_the_tunnel_port(f: Family) -> Result<()> {
    let p = Intercepted::new(
        &f.tag("inb-wild"),
        &f.capture(&["-b", "*", "-d", "8000,15020"]),
    )?;
    let t = &p.topo;
    let _app = app(t, &[9080, 7070, 8000, 15008])?;
    let _sidecar = sidecar(t)?;
    let at = |port| SocketAddr::new(f.pod_ip(t), port);
    for (port, want) in [
        (9080, steered(at(9080))),
        (7070, steered(at(7070))),
        (8000, Inbound::App(at(8000))),
        (15008, Inbound::App(at(15008))),
    ] {
        let r = from_outside(t, at(port))?;
        assert_eq!(inbound_path(&r), want, "port {port}: {r:?}");
    }
    // A connection made to the capture port itself has no other destination to report.
    let r = from_outside(t, at(CAPTURE_PORT))?;
    let line = r.sidecar_line().context("the sidecar answered")?;
    assert_eq!(line.orig, Err("ENOENT".to_owned()), "{r:?}");
    Ok(())
}

#[test]
fn an_excluded_interface_is_not_captured_and_unknown_ones_are_refused() -> Result<()> {
    let mut topo = Topology::new("inb-iface")?;
    let eth1 = topo.add_pod_interface()?;
    let p = Intercepted::bare(topo);
    for (flags, needle) in [
        (vec!["-b", "*", "-c", "eth9"], "\"eth9\""),
        (vec!["-b", "*", "--inbound-fail", "maybe"], "\"maybe\""),
    ] {
        assert_exit(&p.try_init(&flags), 2, needle, &flags);
        assert!(
            !instance_dir(&p.topo.pod_cgroup).exists(),
            "{flags:?} left pins"
        );
    }
    p.init(&["-b", "*", "-c", &eth1.name])?;
    let t = &p.topo;
    let _app = app(t, &[9080])?;
    let _sidecar = sidecar(t)?;
    let via_eth0 = addr(t.pod_ip, 9080);
    let via_eth1 = addr(eth1.pod_ip, 9080);
    let r = from_outside(t, via_eth0)?;
    assert_eq!(inbound_path(&r), steered(via_eth0), "{r:?}");
    let r = from_outside(t, via_eth1)?;
    assert_eq!(inbound_path(&r), Inbound::App(via_eth1), "{r:?}");
    assert_eq!(counter(&p, "inbound_direct_interface")?, 1);
    Ok(())
}

fn a_restarted_sidecar_registers_again_and_fail_open_passes_meanwhile(f: Family) -> Result<()> {
    let p = Intercepted::new(&f.tag("inb-restart"), &f.capture(&SEED_FLAGS))?;
    let t = &p.topo;
    let _app = app(t, &[9080])?;
    let to = SocketAddr::new(f.pod_ip(t), 9080);
    let first = sidecar(t)?;
    assert_eq!(inbound_path(&from_outside(t, to)?), steered(to));
    // Registered by the kernel (2), then again after the restart (2 more).
    let _second = restart(&p, first, to, 4)?;
    Ok(())
}

fn a_listener_open_before_init_is_found(f: Family) -> Result<()> {
    let topo = Topology::new(&f.tag("inb-early"))?;
    let _app = app(&topo, &[9080])?;
    let first = sidecar(&topo)?;
    let p = Intercepted::bare(topo);
    p.init(&f.capture(&SEED_FLAGS))?;
    let t = &p.topo;
    let to = SocketAddr::new(f.pod_ip(t), 9080);
    assert_eq!(inbound_path(&from_outside(t, to)?), steered(to));
    // Found by the init-time scan (/proc/net/tcp, tcp6), not registered by the kernel (it
    // listened before the programs were there).
    assert_eq!(counter(&p, "inbound_listener_registered")?, 0);
    assert_eq!(counter(&p, "original_dst_hits")?, 1);
    assert_eq!(p.status()?["inbound_listeners"], 2);
    // A listener found by the scan leaves the map on close too; the next one is registered.
    let _second = restart(&p, first, to, 2)?;
    Ok(())
}

/// Kills the sidecar `first`: the kernel drops its listeners from the map, and connections
/// to `to` reach the application meanwhile (fail open is the default), counted. Then starts
/// another, steered to once the kernel registered it (`registered` listeners in all).
fn restart(
    p: &Intercepted,
    mut first: Process,
    to: SocketAddr,
    registered: u64,
) -> Result<Process> {
    let t = &p.topo;
    first.kill();
    assert_eq!(p.status()?["inbound_listeners"], 0);
    let r = from_outside(t, to)?;
    assert_eq!(inbound_path(&r), Inbound::App(to), "{r:?}");
    assert_eq!(counter(p, "inbound_no_listener_passed")?, 1);

    let second = sidecar(t)?;
    assert_eq!(inbound_path(&from_outside(t, to)?), steered(to));
    assert_eq!(counter(p, "inbound_listener_registered")?, registered);
    Ok(second)
}

#[test]
fn fail_closed_refuses_and_only_the_proxy_can_register() -> Result<()> {
    let mut flags = SEED_FLAGS.to_vec();
    flags.extend(["--inbound-fail", "closed"]);
    let p = Intercepted::new("inb-closed", &flags)?;
    let t = &p.topo;
    let _app = app(t, &[9080])?;
    // The application's own listener on the capture port is not the proxy's: never used.
    let _impostor = app(t, &[CAPTURE_PORT])?;
    let to = addr(t.pod_ip, 9080);
    let r = from_outside(t, to)?;
    assert!(!r.connected, "{r:?}");
    assert!(
        r.error.as_deref().is_some_and(|e| e.contains("refused")),
        "{r:?}"
    );
    assert_eq!(counter(&p, "inbound_no_listener_refused")?, 1);
    assert_eq!(p.status()?["inbound_listeners"], 0);
    Ok(())
}

#[test]
fn connections_over_loopback_are_never_steered() -> Result<()> {
    let p = Intercepted::new("inb-lo", &["-b", "*"])?;
    let t = &p.topo;
    let _app = app(t, &[9080])?;
    let _sidecar = sidecar(t)?;
    // From the pod's namespace but outside its cgroup (no connect4 involved), to the pod's own
    // address: over lo, so sk_lookup leaves it to the application.
    let outside = t.create_cgroup("outside")?;
    let to = addr(t.pod_ip, 9080);
    let r = t.probe_from(
        &Place::PodNetns { cgroup: outside },
        Identity::APP,
        to,
        &ProbeOptions::default(),
    )?;
    assert_eq!(inbound_path(&r), Inbound::App(to), "{r:?}");
    assert_eq!(counter(&p, "inbound_steered")?, 0);
    Ok(())
}

#[test]
fn reinit_applies_new_ports_and_keeps_the_registered_listener() -> Result<()> {
    let p = Intercepted::new("inb-reinit", &SEED_FLAGS)?;
    let t = &p.topo;
    let _app = app(t, &[9080, 8000])?;
    let _sidecar = sidecar(t)?;
    let (a, b) = (addr(t.pod_ip, 9080), addr(t.pod_ip, 8000));
    assert_eq!(inbound_path(&from_outside(t, a)?), steered(a));
    // Programs swapped in place, maps kept: the listener the kernel registered still serves.
    p.init(&["-b", "*", "-d", "9080"])?;
    assert_eq!(inbound_path(&from_outside(t, a)?), Inbound::App(a));
    assert_eq!(inbound_path(&from_outside(t, b)?), steered(b));
    assert_eq!(counter(&p, "inbound_listener_registered")?, 2);
    // And -b "" turns inbound capture off.
    p.init(&["-b", ""])?;
    assert_eq!(inbound_path(&from_outside(t, b)?), Inbound::App(b));
    Ok(())
}

#[test]
fn with_dual_stack_each_family_is_steered_to_its_own_listener() -> Result<()> {
    let p = Intercepted::new("inb-both", &dual(&SEED_FLAGS))?;
    let t = &p.topo;
    let _app = app(t, &[9080])?;
    let _sidecar = sidecar(t)?;
    // IPv4 goes to the IPv4 listener as before, IPv6 to the IPv6 one.
    for to in [addr(t.pod_ip, 9080), addr6(t.pod_ip6, 9080)] {
        let r = from_outside(t, to)?;
        assert_eq!(inbound_path(&r), steered(to), "{r:?}");
    }
    let c = p.counters()?;
    assert_eq!(c["inbound_listener_registered"], 2, "{c}");
    assert_eq!(c["inbound_steered"], 2, "{c}");
    assert_eq!(c["original_dst_hits"], 2, "{c}");
    assert_eq!(p.status()?["inbound_listeners"], 2);
    Ok(())
}

#[test]
fn one_dual_stack_listener_takes_both_families() -> Result<()> {
    let p = Intercepted::new("inb6-dual", &dual(&SEED_FLAGS))?;
    let t = &p.topo;
    let _app = app(t, &[9080])?;
    let mut args = SIDECAR_ARGS.to_vec();
    args.push("--dual-stack");
    let _sidecar = t.spawn_sidecar(&[CAPTURE_PORT], &args)?;
    assert_eq!(p.status()?["inbound_listeners"], 1);
    // The IPv4 connection has no IPv4 listener: it goes to the [::] one, which accepts it as
    // ::ffff:a.b.c.d; SO_ORIGINAL_DST (SOL_IP) answers the IPv4 destination.
    let to4 = addr(t.pod_ip, 9080);
    let r = from_outside(t, to4)?;
    let line = r.sidecar_line().context("captured by the sidecar")?;
    assert_eq!(line.orig, Ok(to4), "{r:?}");
    assert_eq!(
        line.local,
        Some(addr6(t.pod_ip.to_ipv6_mapped(), 9080)),
        "{r:?}"
    );
    let to6 = addr6(t.pod_ip6, 9080);
    assert_eq!(inbound_path(&from_outside(t, to6)?), steered(to6));
    assert_eq!(counter(&p, "inbound_steered")?, 2);
    Ok(())
}

#[test]
fn an_ipv6_only_listener_is_not_given_ipv4_and_ipv6_waits_for_dual_stack() -> Result<()> {
    let p = Intercepted::new("inb6-only", &SEED_FLAGS)?;
    let t = &p.topo;
    let _app = app(t, &[9080])?;
    let mut args = SIDECAR_ARGS.to_vec();
    args.push("--ipv6-only");
    let _sidecar = t.spawn_sidecar(&[CAPTURE_PORT], &args)?;
    // No --dual-stack: IPv6 is not captured (no ip6tables rules in istio-iptables).
    let to6 = addr6(t.pod_ip6, 9080);
    assert_eq!(inbound_path(&from_outside(t, to6)?), Inbound::App(to6));
    // IPv4 is captured, but the only listener is IPv6-only: the kernel refuses it, and the
    // connection is treated as having no listener (fail open).
    let to4 = addr(t.pod_ip, 9080);
    assert_eq!(inbound_path(&from_outside(t, to4)?), Inbound::App(to4));
    assert_eq!(counter(&p, "inbound_no_listener_passed")?, 1);
    assert_eq!(counter(&p, "inbound_steered")?, 0);
    // With --dual-stack, IPv6 is steered to it.
    p.init(&dual(&SEED_FLAGS))?;
    assert_eq!(inbound_path(&from_outside(t, to6)?), steered(to6));
    Ok(())
}
