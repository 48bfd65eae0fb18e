//! Sockmap acceleration of the pod-local hop (`--accelerate`): the two ends of a connection
//! that starts and ends inside one pod (the redirected application socket and the proxy's
//! accepted socket) are kept in `ACCEL_SOCKETS`, each under its own view of the connection, and
//! a message sent on one end is put straight into the other end's receive queue. This module
//! is the naming of those ends, shared by `sockops` (which files them) and `sk_msg` (which
//! finds the peer), and unit-tested here.

use crate::{
    model::AccelKey,
    wire::{RawIpv4, RawIpv6, ipv4_from_mapped, ipv4_mapped},
};

/// `AF_INET` as the kernel's contexts carry it.
const AF_INET: u32 = 2;

/// A socket's address as `AccelKey` stores it: IPv4 (from an IPv4 socket's `*_ip4` field)
/// IPv4-mapped, so that a dual-stack application socket and an IPv4 proxy socket of the same
/// connection name it alike. `v6` is the socket's `*_ip6` field, used for `AF_INET6`.
#[inline(always)]
pub const fn key_addr(family: u32, v4: RawIpv4, v6: RawIpv6) -> RawIpv6 {
    if family == AF_INET {
        ipv4_mapped(v4)
    } else {
        v6
    }
}

impl AccelKey {
    /// One end of a connection, named from that end: its network namespace, its own address
    /// and port, its peer's (ports in host order, addresses from `key_addr`).
    #[inline(always)]
    pub const fn new(
        netns: u64,
        local: RawIpv6,
        local_port: u16,
        remote: RawIpv6,
        remote_port: u16,
    ) -> Self {
        Self {
            netns,
            local,
            remote,
            local_port,
            remote_port,
            _pad: 0,
        }
    }

    /// The other end of the same connection, as it is filed.
    #[inline(always)]
    pub const fn peer(&self) -> Self {
        Self::new(
            self.netns,
            self.remote,
            self.remote_port,
            self.local,
            self.local_port,
        )
    }

    /// Whether this end's connection is IPv4 (also when its socket is a dual-stack one).
    pub const fn is_ipv4(&self) -> bool {
        ipv4_from_mapped(self.local).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{LOCALHOST4, LOCALHOST6, raw_ipv4};

    const AF_INET6: u32 = 10;

    /// A loopback connection's end in pod 1: `local` port to `remote` port, addresses as
    /// `key_addr` gives them for a socket of `family` with these IPv4 and IPv6 fields.
    fn end(family: u32, v4: RawIpv4, v6: RawIpv6, local: u16, remote: u16) -> AccelKey {
        let addr = key_addr(family, v4, v6);
        AccelKey::new(1, addr, local, addr, remote)
    }

    #[test]
    fn the_two_ends_of_a_connection_name_each_other() {
        let app = end(AF_INET, LOCALHOST4, [0; 4], 40000, 15001);
        let proxy = end(AF_INET, LOCALHOST4, [0; 4], 15001, 40000);
        assert_eq!(app.peer(), proxy);
        assert_eq!(proxy.peer(), app);
        assert_ne!(
            app, proxy,
            "a loopback connection's ends differ by their ports"
        );
        assert!(app.is_ipv4());
    }

    #[test]
    fn a_dual_stack_socket_and_an_ipv4_socket_of_one_connection_pair() {
        // The application's dual-stack socket sees ::ffff:127.0.0.1 in its IPv6 fields; the
        // proxy's IPv4 socket sees 127.0.0.1 in its IPv4 ones (its IPv6 ones are not read).
        let app = end(AF_INET6, 0, ipv4_mapped(LOCALHOST4), 40000, 15001);
        let proxy = end(AF_INET, LOCALHOST4, [9; 4], 15001, 40000);
        assert_eq!(app.peer(), proxy);
    }

    #[test]
    fn pods_and_families_never_collide() {
        let v4 = key_addr(AF_INET, raw_ipv4([127, 0, 0, 1]), [0; 4]);
        let a = AccelKey::new(1, v4, 40000, v4, 15001);
        let b = AccelKey::new(2, v4, 40000, v4, 15001);
        assert_ne!(a, b);
        let v6 = AccelKey::new(
            1,
            key_addr(AF_INET6, 0, LOCALHOST6),
            40000,
            LOCALHOST6,
            15001,
        );
        assert_ne!(a, v6);
        assert!(!v6.is_ipv4());
    }
}
