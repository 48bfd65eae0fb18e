//! What the rule set depends on besides the options: the pod's DNS servers and whether IPv6 is
//! enabled for it. Read by the caller (resolv.conf, the namespace's addresses) and passed in, so
//! that the rule set stays a pure function.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

/// The environment of one pod, as istio-iptables' `FillConfigFromEnvironment` reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFacts {
    /// resolv.conf's IPv4 name servers (only read with `--redirect-dns` and not
    /// `--capture-all-dns`).
    pub dns_v4: Vec<Ipv4Addr>,
    /// resolv.conf's IPv6 name servers (IPv4-mapped ones included, as istio-iptables does).
    pub dns_v6: Vec<Ipv6Addr>,
    /// Whether IPv6 rules are written (istio-iptables' `EnableIPv6`).
    pub ipv6: bool,
}

impl PodFacts {
    pub fn new(nameservers: &[IpAddr], ipv6: bool) -> Self {
        let mut facts = PodFacts {
            ipv6,
            ..Default::default()
        };
        for ns in nameservers {
            match ns {
                IpAddr::V4(a) => facts.dns_v4.push(*a),
                IpAddr::V6(a) => facts.dns_v6.push(*a),
            }
        }
        facts
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "no valid local IP address found in the pod's network namespace (istio-iptables needs one to \
     decide whether IPv6 is enabled)"
)]
pub struct NoLocalAddress;

/// istio-iptables' IPv6 detection (`getLocalIP`): over the namespace's addresses in kernel
/// order, skipping loopback and link-local ones, IPv6 is enabled when the first address is
/// IPv6 or, with `--dual-stack`, when any is.
pub fn ipv6_enabled(addrs: &[IpAddr], dual_stack: bool) -> Result<bool, NoLocalAddress> {
    let mut usable = addrs.iter().map(|a| a.to_canonical()).filter(|a| {
        !a.is_loopback()
            && !match a {
                IpAddr::V4(v4) => v4.is_link_local(),
                IpAddr::V6(v6) => v6.is_unicast_link_local(),
            }
    });
    let first = usable.next().ok_or(NoLocalAddress)?;
    if !dual_stack {
        return Ok(first.is_ipv6());
    }
    Ok(first.is_ipv6() || usable.any(|a| a.is_ipv6()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn first_usable_address_decides_without_dual_stack() {
        let v4_then_v6 = addrs(&["127.0.0.1", "10.0.0.2", "::1", "fd00::2", "fe80::1"]);
        assert_eq!(ipv6_enabled(&v4_then_v6, false), Ok(false));
        assert_eq!(ipv6_enabled(&v4_then_v6, true), Ok(true));
        let v6_only = addrs(&["127.0.0.1", "::1", "fe80::1", "fd00::2"]);
        assert_eq!(ipv6_enabled(&v6_only, false), Ok(true));
        // Link-local addresses never count: a v4 pod with only fe80:: stays IPv4-only.
        let v4_link_local_v6 = addrs(&["127.0.0.1", "10.0.0.2", "::1", "fe80::1"]);
        assert_eq!(ipv6_enabled(&v4_link_local_v6, true), Ok(false));
        // IPv4-mapped addresses count as IPv4.
        assert_eq!(ipv6_enabled(&addrs(&["::ffff:10.0.0.2"]), true), Ok(false));
    }

    #[test]
    fn no_usable_address_is_an_error() {
        let lo_only = addrs(&["127.0.0.1", "::1", "169.254.1.1", "fe80::1"]);
        assert_eq!(ipv6_enabled(&lo_only, false), Err(NoLocalAddress));
        assert_eq!(ipv6_enabled(&[], true), Err(NoLocalAddress));
    }

    #[test]
    fn nameservers_split_by_family() {
        let f = PodFacts::new(&addrs(&["10.96.0.10", "fd00::a", "::ffff:1.2.3.4"]), true);
        assert_eq!(f.dns_v4, vec![Ipv4Addr::new(10, 96, 0, 10)]);
        assert_eq!(f.dns_v6.len(), 2);
        assert!(f.ipv6);
    }
}
