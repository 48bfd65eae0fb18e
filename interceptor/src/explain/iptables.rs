//! `explain --backend iptables`: the pod's live nat rules, as `iptables-save` prints them inside
//! its namespace (read only: `-save` without `-t` dumps the tables that exist and creates
//! none), walked as netfilter walks them. The rules that decided are shown as iptables prints
//! them, each with the istio-iptables option that writes a rule of that shape.

use std::{net::IpAddr, path::Path};

use anyhow::{Context as _, anyhow};

use super::{
    Connection, Explanation, Verdict, listening_ports, out_interface, outcome, route_interface,
    walk::{self, Ending, Met, Packet},
};
use crate::{
    family::Family,
    iptables::{
        Mode,
        mode::{self, Flavour},
        restore,
        ruleset::words::NamedRule,
        save,
    },
    pod::{NameServers, Netns, PodFacts},
};

/// A namespace's live rules of one family, read once (batches reuse them).
pub struct LiveRules {
    pub flavour: Flavour,
    netns: Netns,
    facts: PodFacts,
    /// The nat table of each family, as saved (empty when the family has none).
    nat: [save::SavedTable; 2],
    listening: Vec<u16>,
}

impl LiveRules {
    /// Reads the rules of `netns` with the flavour `mode` picks.
    pub fn read(netns: &Path, mode: Mode) -> anyhow::Result<Self> {
        let netns = Netns::open(netns)?;
        let facts = PodFacts::read(&netns, &NameServers::NotNeeded)?;
        let flavour = mode::resolve(mode, &netns)?;
        let mut nat: [save::SavedTable; 2] = Default::default();
        for (slot, family) in nat.iter_mut().zip(Family::BOTH) {
            let tables = restore::read_state(&netns, flavour, family, true)?.unwrap_or_default();
            if let Some(table) = tables.into_iter().find(|t| t.name == "nat") {
                *slot = table;
            }
        }
        let listening = netns.run_inside(|| Ok(listening_ports()?))?;
        Ok(LiveRules {
            flavour,
            netns,
            facts,
            nat,
            listening,
        })
    }

    fn nat(&self, family: Family) -> &save::SavedTable {
        match family {
            Family::V4 => &self.nat[0],
            Family::V6 => &self.nat[1],
        }
    }

    /// Explains `conn` by walking the rules.
    pub fn explain(&self, conn: &Connection) -> anyhow::Result<Explanation> {
        let (start, packet, udp, family, local) = match *conn {
            Connection::Outbound(ref o) => {
                let (udp, to) = (o.udp, o.to);
                // The kernel connects an unspecified destination to localhost; an IPv4-mapped
                // one is an IPv4 connection, in iptables' table, not ip6tables'.
                let dst = match to.ip().to_canonical() {
                    a if a.is_unspecified() && a.is_ipv4() => IpAddr::from([127, 0, 0, 1]),
                    a if a.is_unspecified() => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
                    a => a,
                };
                let packet = Packet {
                    udp,
                    src: o.from.map(|a| a.to_canonical()),
                    dst,
                    dport: to.port(),
                    out_interface: out_interface(&self.facts, dst),
                    in_interface: None,
                    uid: Some(o.uid),
                    gid: Some(o.gid),
                };
                let local = super::is_local(&self.facts, dst).then_some(to.port());
                ("OUTPUT", packet, udp, Family::of(&dst), local)
            }
            Connection::Inbound(ref i) => {
                let (from, to, interface) = (i.from, i.to, &i.interface);
                let ifc = match interface {
                    Some(i) if !self.facts.interfaces.iter().any(|(n, _)| n == i) => {
                        return Err(crate::error::ConfigError::NoSuchInterface {
                            flag: "--interface",
                            value: i.clone(),
                        }
                        .into());
                    }
                    Some(i) => i.clone(),
                    None => route_interface(&self.facts.routes, to.ip()).ok_or_else(|| {
                        anyhow!("no route to {} in the pod: name the interface", to.ip())
                    })?,
                };
                let packet = Packet {
                    udp: false,
                    src: Some(from),
                    dst: to.ip(),
                    dport: to.port(),
                    out_interface: None,
                    in_interface: Some(ifc),
                    uid: None,
                    gid: None,
                };
                let family = Family::of(&to.ip());
                ("PREROUTING", packet, false, family, Some(to.port()))
            }
        };
        let nat = self.nat(family);
        let walked = walk::walk(nat, start, &packet).map_err(|e| anyhow!(e))?;
        let verdict = match walked.ending {
            Ending::Redirect(port) => Verdict::Redirect {
                port,
                counter: None,
            },
            Ending::Accept => Verdict::Direct { counter: None },
            Ending::Drop => Verdict::NoListener { refused: true },
        };
        let note = if walked.decided_by.is_empty() {
            Some(if nat.rules.is_empty() {
                format!("no nat rules for {family} in this namespace: nothing is captured")
            } else {
                format!(
                    "no rule decides: the chains end, and nat {start}'s policy (ACCEPT) lets it \
                     go as it is"
                )
            })
        } else {
            None
        };
        let table = "nat".to_string();
        let rules = walked
            .decided_by
            .iter()
            .map(|m: &Met| NamedRule {
                table: table.clone(),
                chain: m.chain.clone(),
                position: Some(m.position),
                text: m.text.clone(),
                option: option_of(&m.chain, &m.text, m.position),
            })
            .collect();
        let outcome = outcome(&verdict, udp, local, |p| self.listening.contains(&p));
        Ok(Explanation {
            backend: format!("iptables-{}", self.flavour),
            pod: format!("netns {}", self.netns.path.display()),
            connection: conn.to_string(),
            verdict,
            rules,
            note,
            outcome,
        })
    }
}

/// Explains `conn` in the namespace `netns` from its live rules.
pub fn explain(netns: &Path, mode: Mode, conn: &Connection) -> anyhow::Result<Explanation> {
    LiveRules::read(netns, mode)
        .with_context(|| format!("reading the rules of {}", netns.display()))?
        .explain(conn)
}

/// The istio-iptables option that writes a rule of this shape in `chain` (text as
/// `iptables-save` prints it; `position` 1 is the chain's first rule).
pub fn option_of(chain: &str, text: &str, position: usize) -> String {
    let t: Vec<&str> = text.split_whitespace().collect();
    let after = |flag: &str| {
        t.iter()
            .position(|x| *x == flag)
            .and_then(|i| t.get(i + 1))
            .copied()
    };
    let negated = |flag: &str| {
        t.iter()
            .position(|x| *x == flag)
            .is_some_and(|i| i > 0 && t[i - 1] == "!")
    };
    let target = after("-j").unwrap_or_default();
    let port = after("--dport");
    let over_lo = after("-o") == Some("lo");
    match (chain, target) {
        ("OUTPUT", "RETURN") | ("PREROUTING", "RETURN")
            if after("-o").or(after("-i")).is_some() =>
        {
            format!("-c {}", after("-o").or(after("-i")).unwrap_or_default())
        }
        ("ISTIO_REDIRECT", "REDIRECT") => format!("-p {}", after("--to-ports").unwrap_or("?")),
        ("ISTIO_IN_REDIRECT", "REDIRECT") => format!("-z {}", after("--to-ports").unwrap_or("?")),
        ("ISTIO_OUTPUT_DNS", _) | ("ISTIO_OUTPUT", "ISTIO_OUTPUT_DNS") => match after("-d") {
            Some(server) => format!("--redirect-dns, name server {server}"),
            None => "--redirect-dns".to_string(),
        },
        ("ISTIO_INBOUND", "RETURN") if position == 1 => format!("-e {}", port.unwrap_or("?")),
        ("ISTIO_INBOUND", "RETURN") => format!("-d {}", port.unwrap_or("?")),
        ("ISTIO_INBOUND", "ISTIO_IN_REDIRECT") => match port {
            Some(p) => format!("-b {p}"),
            None => "-b '*'".to_string(),
        },
        ("ISTIO_OUTPUT", _) => {
            if let Some(uid) = after("--uid-owner") {
                return format!("-u {uid}");
            }
            if let Some(gid) = after("--gid-owner") {
                return if over_lo || target == "ISTIO_IN_REDIRECT" {
                    format!("-g {gid}")
                } else if negated("--gid-owner") {
                    "ISTIO_OUTBOUND_OWNER_GROUPS".to_string()
                } else {
                    format!("-g {gid} (or ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE={gid})")
                };
            }
            if after("-s").is_some() {
                return "Envoy's inbound passthrough source, always".to_string();
            }
            match (target, after("-d"), port) {
                ("RETURN", None, Some(p)) => format!("-o {p}"),
                ("RETURN", Some(d), _) if is_loopback(d) => {
                    format!("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR={d} (or IPv6 localhost)")
                }
                ("RETURN", Some(d), _) => format!("-x {d}"),
                ("ISTIO_REDIRECT", None, Some(p)) => format!("-q {p}"),
                ("ISTIO_REDIRECT", Some(d), _) => format!("-i {d}"),
                ("ISTIO_REDIRECT", None, None) => "-i '*'".to_string(),
                _ => "not one of istio-iptables' rule shapes".to_string(),
            }
        }
        _ => "not one of istio-iptables' rule shapes".to_string(),
    }
}

fn is_loopback(cidr: &str) -> bool {
    cidr.split('/')
        .next()
        .and_then(|a| a.parse::<IpAddr>().ok())
        .is_some_and(|a| a.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_read_from_the_rule_shapes() {
        let cases = [
            (
                "ISTIO_OUTPUT",
                "-d 10.9.0.0/16 -j RETURN",
                5,
                "-x 10.9.0.0/16",
            ),
            ("ISTIO_OUTPUT", "-j ISTIO_REDIRECT", 9, "-i '*'"),
            (
                "ISTIO_OUTPUT",
                "-d 10.0.0.0/8 -j ISTIO_REDIRECT",
                9,
                "-i 10.0.0.0/8",
            ),
            (
                "ISTIO_OUTPUT",
                "-p tcp -m tcp --dport 8443 -j ISTIO_REDIRECT",
                9,
                "-q 8443",
            ),
            (
                "ISTIO_OUTPUT",
                "-p udp -m udp --dport 3306 -j RETURN",
                2,
                "-o 3306",
            ),
            (
                "ISTIO_OUTPUT",
                "-m owner --uid-owner 1337 -j RETURN",
                6,
                "-u 1337",
            ),
            (
                "ISTIO_OUTPUT",
                "-o lo -m owner ! --gid-owner 1337 -j RETURN",
                6,
                "-g 1337",
            ),
            (
                "ISTIO_OUTPUT",
                "-d 127.0.0.1/32 -j RETURN",
                8,
                "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR=127.0.0.1/32 (or IPv6 localhost)",
            ),
            (
                "ISTIO_REDIRECT",
                "-p tcp -j REDIRECT --to-ports 15001",
                1,
                "-p 15001",
            ),
            (
                "ISTIO_INBOUND",
                "-p tcp -m tcp --dport 15008 -j RETURN",
                1,
                "-e 15008",
            ),
            (
                "ISTIO_INBOUND",
                "-p tcp -m tcp --dport 15090 -j RETURN",
                2,
                "-d 15090",
            ),
            ("ISTIO_INBOUND", "-p tcp -j ISTIO_IN_REDIRECT", 3, "-b '*'"),
            ("OUTPUT", "-o eth1 -j RETURN", 1, "-c eth1"),
        ];
        for (chain, text, position, want) in cases {
            assert_eq!(option_of(chain, text, position), want, "{chain} {text}");
        }
    }
}
