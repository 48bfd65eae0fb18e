//! Byte order of the kernel's context fields, in one place.
//!
//! Conventions of the data model:
//! - IPv4 addresses are kept as the kernel hands them over: a `u32` whose memory holds the
//!   address in network order (`u32::from_ne_bytes(octets)`). LPM keys use the same bytes.
//! - IPv6 addresses likewise: `[u32; 4]` whose memory holds the 16 octets in order, as in
//!   `bpf_sock_addr.user_ip6`, `bpf_sock.src_ip6`/`dst_ip6` and `bpf_sock_ops.local_ip6`.
//! - Ports are kept in host order everywhere in our maps.
//!
//! The kernel is not uniform about ports, hence these helpers:
//! - `bpf_sock_addr.user_port`: network order in the low 16 bits.
//! - `bpf_sock_ops.remote_port`: network order as a 32-bit value.
//! - `bpf_sock_ops.local_port`: host order.
//! - `bpf_sock.dst_port`: `__be16`; `bpf_sock.src_port`: host order.
//! - `bpf_sk_lookup.local_port`: host order; `bpf_sk_lookup.remote_port`: `__be16`.

/// An IPv4 address in the data model's representation (network-order bytes in a `u32`).
pub type RawIpv4 = u32;

/// `127.0.0.1`.
pub const LOCALHOST4: RawIpv4 = raw_ipv4([127, 0, 0, 1]);
/// `127.0.0.6`: the source Envoy binds for inbound passthrough connections.
pub const PASSTHROUGH_SRC4: RawIpv4 = raw_ipv4([127, 0, 0, 6]);
/// `0.0.0.0`: a connect to it goes to 127.0.0.1.
pub const UNSPECIFIED4: RawIpv4 = 0;

/// The data model's representation of an IPv4 address given as octets.
#[inline(always)]
pub const fn raw_ipv4(octets: [u8; 4]) -> RawIpv4 {
    u32::from_ne_bytes(octets)
}

/// The octets of an address in the data model's representation.
#[inline(always)]
pub const fn ipv4_octets(raw: RawIpv4) -> [u8; 4] {
    raw.to_ne_bytes()
}

/// Whether the address is in 127.0.0.0/8.
#[inline(always)]
pub const fn is_loopback4(raw: RawIpv4) -> bool {
    ipv4_octets(raw)[0] == 127
}

/// An IPv6 address in the data model's representation (network-order bytes in `[u32; 4]`).
pub type RawIpv6 = [u32; 4];

/// `::`: a connect to it goes to `::1`, as a connect to 0.0.0.0 goes to 127.0.0.1.
pub const UNSPECIFIED6: RawIpv6 = [0; 4];
/// `::1`.
pub const LOCALHOST6: RawIpv6 = raw_ipv6([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
/// `::6`: the IPv6 source Envoy binds for inbound passthrough connections.
pub const PASSTHROUGH_SRC6: RawIpv6 = raw_ipv6([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 6]);
/// The third word of an IPv4-mapped address (`::ffff:a.b.c.d`).
const MAPPED_PREFIX_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// The data model's representation of an IPv6 address given as octets.
#[inline(always)]
pub const fn raw_ipv6(o: [u8; 16]) -> RawIpv6 {
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// The octets of an IPv6 address in the data model's representation.
#[inline(always)]
pub const fn ipv6_octets(raw: RawIpv6) -> [u8; 16] {
    let [a, b, c, d] = [
        raw[0].to_ne_bytes(),
        raw[1].to_ne_bytes(),
        raw[2].to_ne_bytes(),
        raw[3].to_ne_bytes(),
    ];
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

/// The IPv4 address inside an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), which a
/// dual-stack socket uses to speak IPv4.
#[inline(always)]
pub const fn ipv4_from_mapped(raw: RawIpv6) -> Option<RawIpv4> {
    if raw[0] == 0 && raw[1] == 0 && raw[2] == MAPPED_PREFIX_WORD {
        Some(raw[3])
    } else {
        None
    }
}

/// `::ffff:a.b.c.d` for an IPv4 address.
#[inline(always)]
pub const fn ipv4_mapped(addr: RawIpv4) -> RawIpv6 {
    [0, 0, MAPPED_PREFIX_WORD, addr]
}

/// Port in host order from `bpf_sock_addr.user_port`.
#[inline(always)]
pub const fn port_from_user_port(user_port: u32) -> u16 {
    u16::from_be(user_port as u16)
}

/// `bpf_sock_addr.user_port` value for a port in host order.
#[inline(always)]
pub const fn port_to_user_port(port: u16) -> u32 {
    port.to_be() as u32
}

/// Port in host order from `bpf_sock_ops.remote_port`.
#[inline(always)]
pub const fn port_from_sock_ops_remote(remote_port: u32) -> u16 {
    u32::from_be(remote_port) as u16
}

/// Port in host order from `bpf_sock_ops.local_port`.
#[inline(always)]
pub const fn port_from_sock_ops_local(local_port: u32) -> u16 {
    local_port as u16
}

/// Port in host order from `bpf_sock.dst_port` (a `__be16`).
#[inline(always)]
pub const fn port_from_sock_dst(dst_port: u16) -> u16 {
    u16::from_be(dst_port)
}

/// Port in host order from `bpf_sock.src_port` (host order already).
#[inline(always)]
pub const fn port_from_sock_src(src_port: u32) -> u16 {
    src_port as u16
}

/// Port in host order from `bpf_sk_lookup.local_port` (host order already).
#[inline(always)]
pub const fn port_from_sk_lookup_local(local_port: u32) -> u16 {
    local_port as u16
}

/// Port in host order from `bpf_sk_lookup.remote_port` (a `__be16`).
#[inline(always)]
pub const fn port_from_sk_lookup_remote(remote_port: u16) -> u16 {
    u16::from_be(remote_port)
}

/// `sin_port` of a `sockaddr_in` (network order) for a port in host order.
#[inline(always)]
pub const fn sin_port(port: u16) -> u16 {
    port.to_be()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_keeps_network_order_in_memory() {
        let raw = raw_ipv4([10, 1, 2, 3]);
        assert_eq!(raw.to_ne_bytes(), [10, 1, 2, 3]);
        assert_eq!(ipv4_octets(raw), [10, 1, 2, 3]);
        assert!(is_loopback4(LOCALHOST4));
        assert!(is_loopback4(PASSTHROUGH_SRC4));
        assert!(!is_loopback4(raw));
    }

    #[test]
    fn ipv6_keeps_network_order_in_memory() {
        let octets = [0xfd, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12];
        let raw = raw_ipv6(octets);
        // The kernel's in6_addr.s6_addr32[0] holds the first four octets in memory order.
        assert_eq!(raw[0].to_ne_bytes(), [0xfd, 0, 2, 0]);
        assert_eq!(raw[3].to_ne_bytes(), [0, 0, 0, 0x12]);
        assert_eq!(ipv6_octets(raw), octets);
        assert_eq!(ipv6_octets(LOCALHOST6)[15], 1);
        assert_eq!(ipv6_octets(PASSTHROUGH_SRC6)[15], 6);
    }

    #[test]
    fn ipv4_mapped_addresses() {
        let v4 = raw_ipv4([10, 200, 0, 1]);
        let mapped = ipv4_mapped(v4);
        assert_eq!(
            ipv6_octets(mapped),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 200, 0, 1]
        );
        assert_eq!(ipv4_from_mapped(mapped), Some(v4));
        assert_eq!(ipv4_from_mapped(LOCALHOST6), None);
        assert_eq!(ipv4_from_mapped(UNSPECIFIED6), None);
        // ::a.b.c.d (the deprecated "compatible" form) is not mapped.
        assert_eq!(ipv4_from_mapped([0, 0, 0, v4]), None);
    }

    #[test]
    fn user_port_is_network_order_in_low_bits() {
        // The kernel stores the be16 port zero-extended: the low two bytes in memory order.
        let from_kernel = u32::from(u16::from_ne_bytes([0x3a, 0x99]));
        assert_eq!(port_from_user_port(from_kernel), 15001);
        assert_eq!(port_to_user_port(15001), from_kernel);
    }

    #[test]
    fn sock_ops_remote_port_is_a_network_order_u32() {
        // On little-endian the kernel shifts the be16 port into the upper half.
        let be16 = u16::from_ne_bytes([0x3a, 0x99]) as u32;
        let from_kernel = if cfg!(target_endian = "little") {
            be16 << 16
        } else {
            be16
        };
        assert_eq!(port_from_sock_ops_remote(from_kernel), 15001);
        assert_eq!(port_from_sock_ops_local(15001), 15001);
    }

    #[test]
    fn bpf_sock_ports() {
        assert_eq!(port_from_sock_dst(u16::from_ne_bytes([0x23, 0x80])), 9088);
        assert_eq!(port_from_sock_src(9088), 9088);
        assert_eq!(sin_port(9080).to_ne_bytes(), [0x23, 0x78]);
        assert_eq!(port_from_sk_lookup_local(9080), 9080);
        // The peer's port, as the kernel's `__be16` holds it: 0x23 0x78 is 9080.
        assert_eq!(
            port_from_sk_lookup_remote(u16::from_ne_bytes([0x23, 0x78])),
            9080
        );
    }
}
