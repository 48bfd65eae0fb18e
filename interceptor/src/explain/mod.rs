//! `interceptor explain`: where one connection of a pod goes, and which of istio-iptables' rules
//! decides it, in istio's words and order, with the option that wrote the rule.
//!
//! - [`ebpf`]: the eBPF backend. The kernel's own decision functions run on the pod's live
//!   configuration, read from the node's pinned maps (the same lookups the programs make); the
//!   rule they name is written by the iptables backend's rule-set builder, so it reads as
//!   `--backend iptables --dry-run` prints it.
//! - [`iptables`]: the iptables backend. The pod's live nat rules (`iptables-save`) are walked
//!   as netfilter walks them ([`walk`]).
//!
//! Both say what the connection would meet: the proxy (on which port), its destination, or a
//! refusal (nothing listens where it is sent). The differential test holds both to what the
//! kernel then does.

pub mod ebpf;
pub mod iptables;
pub mod walk;

#[cfg(test)]
mod against_dry_run;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::Serialize;

use crate::{
    iptables::ruleset::words::NamedRule,
    pod::{PodFacts, Route},
};

/// A connection to explain, as the command line describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Connection {
    Outbound(Outbound),
    Inbound(Inbound),
}

/// A connect (or, with `udp`, a datagram) by a process of the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outbound {
    pub udp: bool,
    pub uid: u32,
    pub gid: u32,
    /// The address the socket is bound to, if any.
    pub from: Option<IpAddr>,
    pub to: SocketAddr,
}

/// A TCP connection arriving from outside the pod, for `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    pub from: IpAddr,
    pub to: SocketAddr,
    /// The interface it arrives on (default: the one `to`'s address is reached through).
    pub interface: Option<String>,
}

/// The peer an inbound connection comes from when none is given: documentation addresses
/// (RFC 5737, RFC 3849), outside any pod.
pub fn default_peer(to: &SocketAddr) -> IpAddr {
    match to {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    }
}

impl std::fmt::Display for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Connection::Outbound(o) => {
                write!(f, "{} to {}", if o.udp { "udp" } else { "tcp" }, o.to)?;
                if let Some(from) = o.from {
                    write!(f, " from {from}")?;
                }
                write!(f, " by uid {} gid {}", o.uid, o.gid)
            }
            Connection::Inbound(i) => {
                write!(f, "inbound tcp to {} from {}", i.to, i.from)?;
                if let Some(ifc) = &i.interface {
                    write!(f, " on {ifc}")?;
                }
                Ok(())
            }
        }
    }
}

/// Where the rules send the connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// To `port` on localhost (outbound), or by REDIRECT to `port` (inbound, iptables).
    Redirect {
        port: u16,
        /// The pod's counter it counts in (eBPF).
        #[serde(skip_serializing_if = "Option::is_none")]
        counter: Option<&'static str>,
    },
    /// Left alone: to its destination (outbound), to the application (inbound).
    Direct {
        #[serde(skip_serializing_if = "Option::is_none")]
        counter: Option<&'static str>,
    },
    /// eBPF, inbound: handed to the proxy's listener on `port` (`-z`), its destination kept.
    Steer { port: u16 },
    /// eBPF, inbound: to be steered, but the proxy has no listener registered: refused
    /// (`--inbound-fail closed`) or passed to the application (`open`).
    NoListener { refused: bool },
}

/// The answer.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    /// `ebpf`, `iptables-legacy` or `iptables-nft`.
    pub backend: String,
    pub pod: String,
    pub connection: String,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// The deciding rule first, then those of the chains it jumped to.
    pub rules: Vec<NamedRule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// What the connection meets: `proxy:PORT`, `direct` or `refused`.
    pub outcome: String,
}

impl Explanation {
    /// The explanation in words, one line each.
    pub fn text(&self) -> String {
        let mut out = format!(
            "pod:        {}\nconnection: {}\nverdict:    {}\n",
            self.pod,
            self.connection,
            verdict_words(&self.verdict),
        );
        match (&self.verdict, self.outcome.as_str()) {
            (Verdict::Redirect { port, .. } | Verdict::Steer { port }, "refused") => out.push_str(
                &format!("meets:      a refusal: nothing listens on port {port} in the pod\n"),
            ),
            (Verdict::Direct { .. } | Verdict::NoListener { refused: false }, "refused") => {
                out.push_str("meets:      a refusal: nothing listens on that port in the pod\n")
            }
            (_, outcome) if outcome.starts_with("proxy:") => out.push_str(&format!(
                "meets:      the socket listening on port {} (the proxy)\n",
                &outcome["proxy:".len()..]
            )),
            _ => {}
        }
        for (i, r) in self.rules.iter().enumerate() {
            let label = if i == 0 { "rule:" } else { "then:" };
            let at = r
                .position
                .map(|p| format!(" (rule {p} of {} {})", r.table, r.chain))
                .unwrap_or_default();
            out.push_str(&format!("{label:<12}{r}{at}\n"));
        }
        if let Some(note) = &self.note {
            out.push_str(&format!("note:       {note}\n"));
        }
        out.push_str(&format!("backend:    {}\n", self.backend));
        out
    }
}

/// The verdict in words.
pub fn verdict_words(v: &Verdict) -> String {
    match v {
        Verdict::Redirect { port, .. } => format!("redirected to port {port}"),
        Verdict::Direct { .. } => "direct".to_string(),
        Verdict::Steer { port } => format!("steered to the proxy's listener on port {port}"),
        Verdict::NoListener { refused: true } => {
            "refused: to be captured, but the proxy has no listener (--inbound-fail closed)"
                .to_string()
        }
        Verdict::NoListener { refused: false } => {
            "passed to the application: to be captured, but the proxy has no listener \
             (--inbound-fail open)"
                .to_string()
        }
    }
}

/// The outcome of a verdict, given whether anything listens (TCP) on a port of the pod. A
/// connection sent to a port of the pod (redirected, steered, or direct to one of its own
/// addresses: `local`) is refused when nothing listens there; elsewhere, nobody here knows.
fn outcome(v: &Verdict, udp: bool, local: Option<u16>, listening: impl Fn(u16) -> bool) -> String {
    match *v {
        Verdict::Redirect { port, .. } | Verdict::Steer { port } => {
            if udp || listening(port) {
                format!("proxy:{port}")
            } else {
                "refused".to_string()
            }
        }
        Verdict::Direct { .. } | Verdict::NoListener { refused: false } => match local {
            Some(port) if !udp && !listening(port) => "refused".to_string(),
            _ => "direct".to_string(),
        },
        Verdict::NoListener { refused: true } => "refused".to_string(),
    }
}

/// Whether a connection to `addr` stays in the pod (leaves through `lo`): loopback, the
/// unspecified address (the kernel makes it localhost), or one of the pod's own addresses.
pub fn is_local(facts: &PodFacts, addr: IpAddr) -> bool {
    addr.is_loopback()
        || addr.is_unspecified()
        || match addr {
            IpAddr::V4(a) => facts.addrs4.contains(&a),
            IpAddr::V6(a) => facts.addrs6.contains(&a),
        }
}

/// The interface of the pod's most specific route to `addr` (lowest metric among equals).
pub fn route_interface(routes: &[Route], addr: IpAddr) -> Option<String> {
    routes
        .iter()
        .filter(|r| {
            let cidr = crate::config::Cidr {
                addr: r.dst,
                prefix_len: r.prefix_len,
            };
            crate::iptables::ruleset::words::holds(&cidr, addr)
        })
        .max_by(|a, b| {
            a.prefix_len
                .cmp(&b.prefix_len)
                .then(b.metric.cmp(&a.metric))
        })
        .map(|r| r.interface.clone())
}

/// The interface a connection leaves through: `lo` for the pod itself, else its route's.
pub fn out_interface(facts: &PodFacts, addr: IpAddr) -> Option<String> {
    if is_local(facts, addr) {
        Some("lo".to_string())
    } else {
        route_interface(&facts.routes, addr)
    }
}

/// The listening TCP ports of the namespace the caller is in (both families).
pub fn listening_ports() -> std::io::Result<Vec<u16>> {
    let mut ports = Vec::new();
    for af in [libc::AF_INET, libc::AF_INET6] {
        match crate::sys::net::tcp_listeners(af) {
            Ok(l) => ports.extend(l.into_iter().map(|l| l.port)),
            Err(e) if af == libc::AF_INET6 && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, len: u8, dev: &str, metric: u32) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            prefix_len: len,
            interface: dev.into(),
            metric,
        }
    }

    #[test]
    fn the_most_specific_route_names_the_interface() {
        let routes = [
            route("0.0.0.0", 0, "eth0", 0),
            route("10.9.0.0", 16, "eth1", 0),
            route("10.9.9.0", 24, "eth0", 0),
            route("10.8.0.0", 16, "eth2", 100),
            route("10.8.0.0", 16, "eth1", 10),
        ];
        let via = |a: &str| route_interface(&routes, a.parse().unwrap());
        assert_eq!(via("10.9.1.1").as_deref(), Some("eth1"));
        assert_eq!(via("10.9.9.1").as_deref(), Some("eth0"));
        assert_eq!(via("192.0.2.1").as_deref(), Some("eth0"));
        assert_eq!(via("10.8.0.1").as_deref(), Some("eth1"), "lowest metric");
        assert_eq!(via("fd00::1"), None, "no IPv6 route");
    }

    #[test]
    fn outcomes_follow_the_listeners() {
        let redirect = Verdict::Redirect {
            port: 15001,
            counter: None,
        };
        assert_eq!(
            outcome(&redirect, false, None, |p| p == 15001),
            "proxy:15001"
        );
        assert_eq!(outcome(&redirect, false, None, |_| false), "refused");
        assert_eq!(
            outcome(&redirect, true, None, |_| false),
            "proxy:15001",
            "UDP"
        );
        let direct = Verdict::Direct { counter: None };
        assert_eq!(outcome(&direct, false, None, |_| false), "direct");
        // Direct to a port of the pod where nothing listens: refused.
        assert_eq!(
            outcome(&direct, false, Some(7070), |p| p == 8080),
            "refused"
        );
        assert_eq!(outcome(&direct, false, Some(8080), |p| p == 8080), "direct");
        assert_eq!(
            outcome(&Verdict::NoListener { refused: true }, false, None, |_| {
                true
            }),
            "refused"
        );
    }
}
