//! Inbound capture: istio-iptables' `handleInboundPortsInclude` (`-b`, `-d`), in nat with
//! REDIRECT or in mangle with TPROXY, and the marks TPROXY mode writes at the end of `Run`.

use super::{
    Builder, FAMILIES, ISTIO_DIVERT, ISTIO_IN_REDIRECT, ISTIO_INBOUND, ISTIO_TPROXY, OUTBOUND_MARK,
    inbound_passthrough, localhost, proxy_ids, tproxy,
};
use crate::config::{InboundPorts, InterceptConfig};

/// `handleInboundPortsInclude`: `-b ''` captures nothing; `-b '*'` every port but `-d`'s;
/// otherwise the ports listed (and `-d` is not used).
pub(super) fn inbound_ports(b: &mut Builder, cfg: &InterceptConfig) {
    if cfg.inbound_ports == InboundPorts::Ports(Vec::new()) {
        return;
    }
    let table = if tproxy(cfg) {
        tproxy_chains(b, cfg);
        "mangle"
    } else {
        "nat"
    };
    b.append(table, "PREROUTING", format!("-p tcp -j {ISTIO_INBOUND}"));
    match &cfg.inbound_ports {
        InboundPorts::All => {
            for port in &cfg.inbound_ports_exclude {
                let excluded = format!("-p tcp --dport {port} -j RETURN");
                b.append(table, ISTIO_INBOUND, excluded);
            }
            capture(b, cfg, None);
        }
        InboundPorts::Ports(ports) => {
            for &port in ports {
                capture(b, cfg, Some(port));
            }
        }
    }
}

/// TPROXY's two chains: `ISTIO_DIVERT` marks a packet of a known connection and accepts it;
/// `ISTIO_TPROXY` hands a new one, not to localhost, to the capture port.
fn tproxy_chains(b: &mut Builder, cfg: &InterceptConfig) {
    let mark = cfg.tproxy_mark;
    b.append("mangle", ISTIO_DIVERT, format!("-j MARK --set-mark {mark}"));
    b.append("mangle", ISTIO_DIVERT, "-j ACCEPT");
    let capture = cfg.inbound_capture_port;
    b.append_versioned("mangle", ISTIO_TPROXY, |family| {
        let localhost = localhost(cfg, family);
        format!(
            "! -d {localhost} -p tcp -j TPROXY --tproxy-mark {mark}/0xffffffff --on-port {capture}"
        )
    });
}

/// The rules that send an inbound connection (to `port`, or to any port) to the proxy.
fn capture(b: &mut Builder, cfg: &InterceptConfig, port: Option<u16>) {
    let dport = port.map(|p| format!(" --dport {p}")).unwrap_or_default();
    if tproxy(cfg) {
        let established = "-m conntrack --ctstate RELATED,ESTABLISHED";
        let divert = format!("-p tcp{dport} {established} -j {ISTIO_DIVERT}");
        b.append("mangle", ISTIO_INBOUND, divert);
        let new = format!("-p tcp{dport} -j {ISTIO_TPROXY}");
        b.append("mangle", ISTIO_INBOUND, new);
    } else {
        let redirect = format!("-p tcp{dport} -j {ISTIO_IN_REDIRECT}");
        b.append("nat", ISTIO_INBOUND, redirect);
    }
}

/// The end of `Run` in TPROXY mode: the mark of a captured connection is kept on it
/// (CONNMARK); the proxy's calls to its own pod are marked [`OUTBOUND_MARK`]; and
/// `ISTIO_INBOUND` first lets through what is already marked, Envoy's passthrough, and
/// anything else over lo that is not the proxy's.
pub(super) fn tproxy_marks(b: &mut Builder, cfg: &InterceptConfig) {
    let mark = cfg.tproxy_mark;
    let save = format!("-p tcp -m mark --mark {mark} -j CONNMARK --save-mark");
    b.append("mangle", "PREROUTING", save);
    let marked_out = format!("-p tcp -o lo -m mark --mark {mark} -j RETURN");
    b.append("mangle", "OUTPUT", marked_out);
    for (owner, id) in proxy_ids(cfg) {
        b.append_versioned("mangle", "OUTPUT", |family| {
            let localhost = localhost(cfg, family);
            let proxy = format!("-m owner {} {id}", owner.flag());
            format!("! -d {localhost} -p tcp -o lo {proxy} -j MARK --set-mark {OUTBOUND_MARK}")
        });
    }
    let restore = format!("-p tcp -m connmark --mark {mark} -j CONNMARK --restore-mark");
    b.append("mangle", "OUTPUT", restore);

    let marked = format!("-p tcp -m mark --mark {mark} -j RETURN");
    b.insert("mangle", ISTIO_INBOUND, 1, marked);
    for family in FAMILIES {
        let source = inbound_passthrough(family);
        let passthrough = format!("-p tcp -s {source} -i lo -j RETURN");
        b.insert_for(family, "mangle", ISTIO_INBOUND, 2, passthrough);
    }
    let not_proxy = format!("-p tcp -i lo -m mark ! --mark {OUTBOUND_MARK} -j RETURN");
    b.insert("mangle", ISTIO_INBOUND, 3, not_proxy);
}
