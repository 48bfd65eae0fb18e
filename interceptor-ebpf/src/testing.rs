//! What the host's unit tests of the decisions share: addresses of either family written as
//! text, the per-pod sets in std collections, and a pod's configuration.
//!
//! The tables are written once with IPv4 addresses and run in both families: IPv6 runs them in
//! `64:ff9b::/96` (RFC 6052's well-known prefix), so `a.b.c.d/n` stands for
//! `64:ff9b::a.b.c.d/(96+n)`. The loopback, passthrough and unspecified addresses are the
//! family's own (`Family::LOCALHOST`...); text with a colon is an IPv6 address as written.

extern crate std;

use std::{
    collections::HashSet,
    net::{Ipv4Addr, Ipv6Addr},
    vec::Vec,
};

use crate::{
    decision::RuleSets,
    family::{Family, V4, V6},
    model::{CidrSet, PodConfig, PortSet, flags},
    wire::{ipv4_octets, ipv6_octets, raw_ipv4, raw_ipv6},
};

/// A family the tables run in.
pub trait Fixture: Family {
    /// The address written as `text`.
    fn ip(text: &str) -> Self::Addr;
    /// The address as a number, for prefix matching.
    fn bits(addr: Self::Addr) -> u128;
    /// Sets the pod's own addresses of this family.
    fn set_local(cfg: &mut PodConfig, addrs: &[&str]);
    /// Sets the pod's name servers of this family.
    fn set_dns(cfg: &mut PodConfig, addrs: &[&str]);
}

impl Fixture for V4 {
    fn ip(text: &str) -> Self::Addr {
        raw_ipv4(text.parse::<Ipv4Addr>().unwrap().octets())
    }
    fn bits(addr: Self::Addr) -> u128 {
        u32::from_be_bytes(ipv4_octets(addr)).into()
    }
    fn set_local(cfg: &mut PodConfig, addrs: &[&str]) {
        fill(
            &mut cfg.local4,
            &mut cfg.n_local4,
            addrs.iter().map(|a| Self::ip(a)),
        );
    }
    fn set_dns(cfg: &mut PodConfig, addrs: &[&str]) {
        fill(
            &mut cfg.dns4,
            &mut cfg.n_dns4,
            addrs.iter().map(|a| Self::ip(a)),
        );
    }
}

impl Fixture for V6 {
    fn ip(text: &str) -> Self::Addr {
        if text.contains(':') {
            return raw_ipv6(text.parse::<Ipv6Addr>().unwrap().octets());
        }
        let [a, b, c, d] = text.parse::<Ipv4Addr>().unwrap().octets();
        raw_ipv6([0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0, a, b, c, d])
    }
    fn bits(addr: Self::Addr) -> u128 {
        u128::from_be_bytes(ipv6_octets(addr))
    }
    fn set_local(cfg: &mut PodConfig, addrs: &[&str]) {
        fill(
            &mut cfg.local6,
            &mut cfg.n_local6,
            addrs.iter().map(|a| Self::ip(a)),
        );
    }
    fn set_dns(cfg: &mut PodConfig, addrs: &[&str]) {
        fill(
            &mut cfg.dns6,
            &mut cfg.n_dns6,
            addrs.iter().map(|a| Self::ip(a)),
        );
    }
}

fn fill<A>(slots: &mut [A; 8], n: &mut u8, values: impl ExactSizeIterator<Item = A>) {
    *n = values.len() as u8;
    for (slot, value) in slots.iter_mut().zip(values) {
        *slot = value;
    }
}

/// The proxy's uid and gid in every test pod.
pub const PROXY: u32 = 1337;
/// Any other process.
pub const APP: u32 = 1000;
/// The pod's own address (for IPv6, also `fe80::2`).
pub const POD_IP: &str = "10.1.0.2";

/// A pod with both families captured: `-p 15001 -z 15006 -e 15008 -u 1337 -g 1337`, its own
/// address `POD_IP`, rules id 1.
pub fn pod(flags_: u32) -> PodConfig {
    let mut cfg = PodConfig::empty();
    cfg.rules = 1;
    cfg.flags = flags_ | flags::IPV6;
    cfg.proxy_port = 15001;
    cfg.inbound_capture_port = 15006;
    cfg.inbound_tunnel_port = 15008;
    cfg.uids[0] = PROXY;
    cfg.n_uids = 1;
    cfg.gids[0] = PROXY;
    cfg.n_gids = 1;
    V4::set_local(&mut cfg, &[POD_IP]);
    V6::set_local(&mut cfg, &[POD_IP, "fe80::2"]);
    cfg
}

/// The per-pod sets in std collections; ranges matched by linear scan (the kernel uses LPM
/// tries, one per family).
#[derive(Default)]
pub struct Sets {
    ports: HashSet<(u32, u16, u16)>,
    /// (bits of the family's addresses, rules, set, network, prefix length, value)
    ranges: Vec<(u32, u32, CidrSet, u128, u32, u8)>,
}

impl Sets {
    /// `port` in `set` of the pod with rules id 1.
    pub fn port(mut self, set: PortSet, port: u16) -> Self {
        self.ports.insert((1, set as u16, port));
        self
    }

    /// `cidr` ("10.9.0.0/16") in `set` of rules id `rules`, in family `F`, with `value`
    /// (`CidrSet::Route`: 1 for a route through a `-c` interface).
    pub fn range<F: Fixture>(mut self, rules: u32, set: CidrSet, cidr: &str, value: u8) -> Self {
        let (net, len) = cidr.split_once('/').unwrap();
        let len: u32 = len.parse().unwrap();
        let len = if net.contains(':') {
            len
        } else {
            len + F::BITS - 32
        };
        let net = F::bits(F::ip(net));
        self.ranges.push((F::BITS, rules, set, net, len, value));
        self
    }
}

impl<F: Fixture> RuleSets<F> for Sets {
    fn has_port(&self, rules: u32, set: PortSet, port: u16) -> bool {
        self.ports.contains(&(rules, set as u16, port))
    }

    fn longest_match(&self, rules: u32, set: CidrSet, addr: F::Addr) -> Option<u8> {
        let addr = F::bits(addr);
        let high = |bits: u128, len: u32| bits.checked_shr(F::BITS - len).unwrap_or(0);
        self.ranges
            .iter()
            .filter(|&&(width, r, s, net, len, _)| {
                width == F::BITS && r == rules && s == set && high(addr, len) == high(net, len)
            })
            .max_by_key(|&&(_, _, _, _, len, _)| len)
            .map(|&(_, _, _, _, _, value)| value)
    }
}

/// `#[test]`s in modules `ipv4` and `ipv6` that run each named generic test in that family.
macro_rules! in_both_families {
    ($($test:ident),* $(,)?) => {
        mod ipv4 {
            $(
                #[test]
                fn $test() {
                    super::$test::<crate::family::V4>();
                }
            )*
        }
        mod ipv6 {
            $(
                #[test]
                fn $test() {
                    super::$test::<crate::family::V6>();
                }
            )*
        }
    };
}
pub(crate) use in_both_families;
