//! The address family a test runs over, so that one test body serves IPv4 and IPv6: the
//! topology's addresses of that family, its wildcard and localhost, Envoy's passthrough source,
//! its prefix lengths, how the sidecar asks for the original destination, and the flags that
//! make the test pods capture it. [`per_family!`](crate::per_family) makes the `#[test]`s.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::Topology;

/// IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family of `ip` (an IPv4-mapped IPv6 address is IPv6: that is the socket's family).
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn other(self) -> Family {
        match self {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        }
    }

    /// `flags`, plus what makes a test pod capture this family: the pods' first address is
    /// IPv4, so, as with istio-iptables, IPv6 is captured only with `--dual-stack`.
    pub fn capture<'a>(self, flags: &[&'a str]) -> Vec<&'a str> {
        let mut all = flags.to_vec();
        if self == Family::V6 {
            all.push("--dual-stack");
        }
        all
    }

    /// `tag` with the family's digit (`seed4`, `seed6`): a topology tag of its own per family.
    pub fn tag(self, tag: &str) -> String {
        match self {
            Family::V4 => format!("{tag}4"),
            Family::V6 => format!("{tag}6"),
        }
    }

    /// The pod's address on `eth0`.
    pub fn pod_ip(self, t: &Topology) -> IpAddr {
        match self {
            Family::V4 => t.pod_ip.into(),
            Family::V6 => t.pod_ip6.into(),
        }
    }

    /// The server's address on the pod's subnet.
    pub fn server_ip(self, t: &Topology) -> IpAddr {
        match self {
            Family::V4 => t.server_ip.into(),
            Family::V6 => t.server_ip6.into(),
        }
    }

    /// The server's addresses in subnets of their own, reached through the pod's default route.
    pub fn server_extra_ips(self, t: &Topology) -> [IpAddr; 3] {
        let extra = |i: usize| match self {
            Family::V4 => IpAddr::from(t.server_extra_ips[i]),
            Family::V6 => IpAddr::from(t.server_extra_ips6[i]),
        };
        [extra(0), extra(1), extra(2)]
    }

    /// 127.0.0.1 or ::1.
    pub fn localhost(self) -> IpAddr {
        match self {
            Family::V4 => Ipv4Addr::LOCALHOST.into(),
            Family::V6 => Ipv6Addr::LOCALHOST.into(),
        }
    }

    /// The wildcard address on `port` (IPv6 only for [`Family::V6`], as the test servers
    /// listen).
    pub fn any(self, port: u16) -> SocketAddr {
        match self {
            Family::V4 => SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            Family::V6 => SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
        }
    }

    /// Envoy's inbound passthrough source: 127.0.0.6, or ::6 (which init puts on lo when the
    /// pod captures IPv6).
    pub fn passthrough(self) -> IpAddr {
        match self {
            Family::V4 => Ipv4Addr::new(127, 0, 0, 6).into(),
            Family::V6 => Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6).into(),
        }
    }

    /// The prefix length of the topology's subnets: /24 or /64.
    pub fn subnet_len(self) -> u8 {
        match self {
            Family::V4 => 24,
            Family::V6 => 64,
        }
    }

    /// The prefix length of one address: /32 or /128.
    pub fn host_len(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// The sidecar's `--original-dst-level` for this family's option:
    /// `getsockopt(SOL_IP, SO_ORIGINAL_DST)` or `getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)`.
    pub fn original_dst_level(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ipv6",
        }
    }

    /// The size of the address that option fills: `sockaddr_in` or `sockaddr_in6`.
    pub fn sockaddr_len(self) -> u32 {
        match self {
            Family::V4 => 16,
            Family::V6 => 28,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// One `#[test]` per family for each generic test body `fn name(f: Family) -> Result<()>`:
/// `ipv4::name` and `ipv6::name`, so that a filter `name` runs both, and `ipv6::` every IPv6
/// one. Once per test file.
#[macro_export]
macro_rules! per_family {
    ($($name:ident),* $(,)?) => {
        mod ipv4 {
            $(#[test]
            fn $name() -> ::anyhow::Result<()> {
                super::$name($crate::family::Family::V4)
            })*
        }
        mod ipv6 {
            $(#[test]
            fn $name() -> ::anyhow::Result<()> {
                super::$name($crate::family::Family::V6)
            })*
        }
    };
}
