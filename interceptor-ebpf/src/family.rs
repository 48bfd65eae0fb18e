//! What differs between IPv4 and IPv6: istio-iptables writes the same chains into iptables and
//! ip6tables, with only the loopback, passthrough and CIDR values differing, and the pod has its
//! own addresses and name servers in each family. Code generic over `Family` is written once and
//! compiled (inlined) once per family, to the same straight-line code as a hand-written twin.

use crate::{
    model::{PodConfig, flags},
    wire::{
        LOCALHOST4, LOCALHOST6, PASSTHROUGH_SRC4, PASSTHROUGH_SRC6, RawIpv4, RawIpv6, UNSPECIFIED4,
        UNSPECIFIED6,
    },
};

/// An address family as the decisions and the maps see it.
pub trait Family {
    /// An address in the data model's representation (`wire`).
    type Addr: Copy + PartialEq + core::fmt::Debug + 'static;
    /// Bits in an address: the prefix length of a single address.
    const BITS: u32;
    /// `127.0.0.1/32` / `::1/128` (istio's `-d <localhost> -j RETURN`).
    const LOCALHOST: Self::Addr;
    /// `127.0.0.6/32` / `::6/128` (`-o lo -s <passthrough> -j RETURN`).
    const PASSTHROUGH_SRC: Self::Addr;
    /// A connect to it goes to `LOCALHOST`, which is what netfilter sees.
    const UNSPECIFIED: Self::Addr;
    /// `flags::HAS_INCLUDE_CIDRS` of this family.
    const HAS_INCLUDE_CIDRS: u32;
    /// `flags::HAS_EXCLUDE_CIDRS` of this family.
    const HAS_EXCLUDE_CIDRS: u32;
    /// The flag without which this family is not captured at all (0: always captured).
    const ENABLED_BY: u32;
    /// `flags::HAS_EXCLUDED_ROUTES4` / `6`.
    const HAS_EXCLUDED_ROUTES: u32;
    /// istio's localhost (`-d <localhost>`): `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR` / `::1/128`.
    fn is_localhost(cfg: &PodConfig, addr: Self::Addr) -> bool;
    /// Whether a connection to `addr` leaves through lo (istio's `-o lo`).
    fn is_local(cfg: &PodConfig, addr: Self::Addr) -> bool;
    /// Whether DNS to `addr` is captured (`ISTIO_OUTPUT_DNS`).
    fn is_captured_dns_server(cfg: &PodConfig, addr: Self::Addr) -> bool;
}

/// IPv4 (iptables).
pub struct V4;
/// IPv6 (ip6tables).
pub struct V6;

impl Family for V4 {
    type Addr = RawIpv4;
    const BITS: u32 = 32;
    const LOCALHOST: RawIpv4 = LOCALHOST4;
    const PASSTHROUGH_SRC: RawIpv4 = PASSTHROUGH_SRC4;
    const UNSPECIFIED: RawIpv4 = UNSPECIFIED4;
    const HAS_INCLUDE_CIDRS: u32 = flags::HAS_INCLUDE_CIDRS;
    const HAS_EXCLUDE_CIDRS: u32 = flags::HAS_EXCLUDE_CIDRS;
    const ENABLED_BY: u32 = 0;
    const HAS_EXCLUDED_ROUTES: u32 = flags::HAS_EXCLUDED_ROUTES4;
    #[inline(always)]
    fn is_localhost(cfg: &PodConfig, addr: RawIpv4) -> bool {
        cfg.is_localhost4(addr)
    }
    #[inline(always)]
    fn is_local(cfg: &PodConfig, addr: RawIpv4) -> bool {
        cfg.is_local4(addr)
    }
    #[inline(always)]
    fn is_captured_dns_server(cfg: &PodConfig, addr: RawIpv4) -> bool {
        cfg.is_captured_dns_server4(addr)
    }
}

impl Family for V6 {
    type Addr = RawIpv6;
    const BITS: u32 = 128;
    const LOCALHOST: RawIpv6 = LOCALHOST6;
    const PASSTHROUGH_SRC: RawIpv6 = PASSTHROUGH_SRC6;
    const UNSPECIFIED: RawIpv6 = UNSPECIFIED6;
    const HAS_INCLUDE_CIDRS: u32 = flags::HAS_INCLUDE_CIDRS6;
    const HAS_EXCLUDE_CIDRS: u32 = flags::HAS_EXCLUDE_CIDRS6;
    const ENABLED_BY: u32 = flags::IPV6;
    const HAS_EXCLUDED_ROUTES: u32 = flags::HAS_EXCLUDED_ROUTES6;
    #[inline(always)]
    fn is_localhost(_: &PodConfig, addr: RawIpv6) -> bool {
        addr == LOCALHOST6
    }
    #[inline(always)]
    fn is_local(cfg: &PodConfig, addr: RawIpv6) -> bool {
        cfg.is_local6(addr)
    }
    #[inline(always)]
    fn is_captured_dns_server(cfg: &PodConfig, addr: RawIpv6) -> bool {
        cfg.is_captured_dns_server6(addr)
    }
}
