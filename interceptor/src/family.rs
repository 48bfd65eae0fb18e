//! An address family: IPv4 or IPv6. One type for every part that treats the two alike (the
//! listeners registered per family, one `iptables-restore` per family, the map entries).

use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    /// The `AF_*` number (as `bpf_sock.family` and the listener key carry it).
    pub fn af(self) -> u32 {
        match self {
            Family::V4 => libc::AF_INET as u32,
            Family::V6 => libc::AF_INET6 as u32,
        }
    }

    /// `ipv4` or `ipv6`, as logs and `status` say it.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn af_numbers_are_the_kernels() {
        assert_eq!(Family::V4.af(), 2);
        assert_eq!(Family::V6.af(), 10);
        assert_eq!(Family::of(&"::1".parse().unwrap()), Family::V6);
    }
}
