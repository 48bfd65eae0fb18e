//! What the rule set depends on besides the options: the pod's DNS servers and whether IPv6 is
//! enabled for it, taken from what `pod::PodFacts` read, so that the rule set stays a pure
//! function.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn nameservers_split_by_family() {
        let f = PodFacts::new(&addrs(&["10.96.0.10", "fd00::a", "::ffff:1.2.3.4"]), true);
        assert_eq!(f.dns_v4, vec![Ipv4Addr::new(10, 96, 0, 10)]);
        assert_eq!(f.dns_v6.len(), 2);
        assert!(f.ipv6);
    }
}
