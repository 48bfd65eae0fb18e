//! What istio-iptables' `Run` writes before any capture: the interfaces never captured, the
//! INVALID drop, and the chains the captures jump to.

use super::{Builder, ISTIO_DROP, ISTIO_IN_REDIRECT, ISTIO_INBOUND, ISTIO_REDIRECT, tproxy};
use crate::config::InterceptConfig;

/// `shortCircuitExcludeInterfaces` (`-c`): neither captured inbound nor outbound, in mangle too
/// in TPROXY mode.
pub(super) fn exclude_interfaces(b: &mut Builder, cfg: &InterceptConfig) {
    let tables: &[&'static str] = if tproxy(cfg) {
        &["nat", "mangle"]
    } else {
        &["nat"]
    };
    // Table by table: every nat rule before the first mangle one, as run.go's two loops.
    for &table in tables {
        for ifc in &cfg.exclude_interfaces {
            b.append(table, "PREROUTING", format!("-i {ifc} -j RETURN"));
            b.append(table, "OUTPUT", format!("-o {ifc} -j RETURN"));
        }
    }
}

/// `shortCircuitKubeInternalInterface` (`-k`): inbound from a virtual interface is never
/// inbound-captured.
pub(super) fn kube_virt_interfaces_return(b: &mut Builder, cfg: &InterceptConfig) {
    for ifc in &cfg.kube_virt_interfaces {
        b.insert("nat", "PREROUTING", 1, format!("-i {ifc} -j RETURN"));
    }
}

/// `--drop-invalid`: packets conntrack calls INVALID are dropped instead of escaping NAT.
pub(super) fn drop_invalid(b: &mut Builder) {
    let invalid = format!("-m conntrack --ctstate INVALID -j {ISTIO_DROP}");
    b.append("mangle", "PREROUTING", invalid);
    b.append("mangle", ISTIO_DROP, "-j DROP");
}

/// The tunnel port's RETURN, first in `ISTIO_INBOUND`, and the two REDIRECT chains: outbound
/// to the proxy's port (`-p`), inbound to its capture port (`-z`).
pub(super) fn capture_chains(b: &mut Builder, cfg: &InterceptConfig) {
    let tunnel = format!("-p tcp --dport {} -j RETURN", cfg.inbound_tunnel_port);
    b.append("nat", ISTIO_INBOUND, tunnel);
    let to_proxy = format!("-p tcp -j REDIRECT --to-ports {}", cfg.envoy_port);
    b.append("nat", ISTIO_REDIRECT, to_proxy);
    let to_capture = format!("-p tcp -j REDIRECT --to-ports {}", cfg.inbound_capture_port);
    b.append("nat", ISTIO_IN_REDIRECT, to_capture);
}
