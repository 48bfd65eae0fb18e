//! Raw sockets, decided for the `cgroup/sock_create` and `cgroup/setsockopt` programs (pure,
//! unit-tested on the host).
//!
//! A raw socket hands the kernel packets no `connect` hook sees. Under istio-iptables they
//! still cross nat `OUTPUT`, so a hand-made TCP SYN to a redirected destination reaches the
//! sidecar; here it would leave the pod directly. So a process of the pod other than the proxy
//! may not open a raw socket that could carry TCP or UDP: every raw socket but ICMP (ping) and
//! ICMPv6 is refused (EPERM), and so is header inclusion (`IP_HDRINCL`, `IPV6_HDRINCL`), with
//! which an ICMP raw socket writes any IP header it likes. A pod that needs raw sockets says
//! so (`--raw-sockets allow`, `flags::RAW_SOCKETS_ALLOWED`).

use crate::model::{PodConfig, flags};

/// `SOCK_RAW` (include/linux/net.h), as in `bpf_sock.type`.
pub const SOCK_RAW: u32 = 3;
/// `IPPROTO_ICMP` (include/uapi/linux/in.h), as in `bpf_sock.protocol`.
pub const IPPROTO_ICMP: u32 = 1;
/// `IPPROTO_ICMPV6` (include/uapi/linux/in6.h).
pub const IPPROTO_ICMPV6: u32 = 58;
/// `SOL_IP` (include/linux/socket.h), as in `bpf_sockopt.level`.
pub const SOL_IP: i32 = 0;
/// `SOL_IPV6` (include/linux/socket.h).
pub const SOL_IPV6: i32 = 41;
/// `IP_HDRINCL` (include/uapi/linux/in.h), at level `SOL_IP`.
pub const IP_HDRINCL: i32 = 3;
/// `IPV6_HDRINCL` (include/uapi/linux/in6.h), at level `SOL_IPV6`.
pub const IPV6_HDRINCL: i32 = 36;

/// Whether the process (`uid`, primary `gid`) is one the rules never redirect anyway: the
/// proxy, or a process the owner-group rules spare.
#[inline(always)]
fn goes_direct_anyway(cfg: &PodConfig, uid: u32, gid: u32) -> bool {
    cfg.is_proxy_uid(uid) || cfg.is_proxy_gid(gid) || cfg.owner_group_spared(gid)
}

/// Whether creating a socket of `sock_type` and `protocol` (any family) is refused.
#[inline(always)]
pub fn refuses_socket(cfg: &PodConfig, sock_type: u32, protocol: u32, uid: u32, gid: u32) -> bool {
    sock_type == SOCK_RAW
        && protocol != IPPROTO_ICMP
        && protocol != IPPROTO_ICMPV6
        && !cfg.has(flags::RAW_SOCKETS_ALLOWED)
        && !goes_direct_anyway(cfg, uid, gid)
}

/// Whether `setsockopt(level, optname)` with a non-zero value on a socket of `sock_type` is
/// refused: header inclusion on a raw socket.
#[inline(always)]
pub fn refuses_option(
    cfg: &PodConfig,
    sock_type: u32,
    level: i32,
    optname: i32,
    uid: u32,
    gid: u32,
) -> bool {
    let hdrincl = (level == SOL_IP && optname == IP_HDRINCL)
        || (level == SOL_IPV6 && optname == IPV6_HDRINCL);
    hdrincl
        && sock_type == SOCK_RAW
        && !cfg.has(flags::RAW_SOCKETS_ALLOWED)
        && !goes_direct_anyway(cfg, uid, gid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{APP, PROXY, pod};

    const SOCK_STREAM: u32 = 1;
    const SOCK_DGRAM: u32 = 2;
    const IPPROTO_TCP: u32 = 6;
    const IPPROTO_UDP: u32 = 17;
    const IPPROTO_RAW: u32 = 255;

    #[test]
    fn raw_sockets_that_could_carry_tcp_or_udp_are_refused_to_all_but_the_proxy() {
        let cfg = pod(flags::INCLUDE_ALL);
        for protocol in [0, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_RAW, 132] {
            assert!(
                refuses_socket(&cfg, SOCK_RAW, protocol, APP, APP),
                "{protocol}"
            );
            assert!(
                !refuses_socket(&cfg, SOCK_RAW, protocol, PROXY, APP),
                "{protocol}"
            );
            assert!(
                !refuses_socket(&cfg, SOCK_RAW, protocol, APP, PROXY),
                "{protocol}"
            );
        }
        // ping keeps working, raw or not; ordinary sockets are never looked at.
        for (t, p) in [
            (SOCK_RAW, IPPROTO_ICMP),
            (SOCK_RAW, IPPROTO_ICMPV6),
            (SOCK_DGRAM, IPPROTO_ICMP),
            (SOCK_STREAM, IPPROTO_TCP),
            (SOCK_DGRAM, IPPROTO_UDP),
        ] {
            assert!(!refuses_socket(&cfg, t, p, APP, APP), "{t} {p}");
        }
    }

    #[test]
    fn header_inclusion_is_refused_on_raw_sockets_only() {
        let cfg = pod(flags::INCLUDE_ALL);
        assert!(refuses_option(&cfg, SOCK_RAW, SOL_IP, IP_HDRINCL, APP, APP));
        assert!(refuses_option(
            &cfg,
            SOCK_RAW,
            SOL_IPV6,
            IPV6_HDRINCL,
            APP,
            APP
        ));
        assert!(!refuses_option(
            &cfg, SOCK_RAW, SOL_IP, IP_HDRINCL, PROXY, PROXY
        ));
        assert!(!refuses_option(
            &cfg,
            SOCK_STREAM,
            SOL_IP,
            IP_HDRINCL,
            APP,
            APP
        ));
        // Other options, and the same numbers at another level.
        assert!(!refuses_option(&cfg, SOCK_RAW, SOL_IP, 1, APP, APP));
        assert!(!refuses_option(
            &cfg, SOCK_RAW, SOL_IPV6, IP_HDRINCL, APP, APP
        ));
    }

    #[test]
    fn a_pod_allowed_raw_sockets_and_spared_owner_groups_are_left_alone() {
        let cfg = pod(flags::INCLUDE_ALL | flags::RAW_SOCKETS_ALLOWED);
        assert!(!refuses_socket(&cfg, SOCK_RAW, IPPROTO_TCP, APP, APP));
        assert!(!refuses_option(
            &cfg, SOCK_RAW, SOL_IP, IP_HDRINCL, APP, APP
        ));
        // ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE=<APP's group>: istio would not redirect it either.
        let mut cfg = pod(flags::INCLUDE_ALL | flags::OWNER_GROUPS_EXCEPT);
        cfg.owner_groups[0] = APP;
        cfg.n_owner_groups = 1;
        assert!(!refuses_socket(&cfg, SOCK_RAW, IPPROTO_TCP, APP, APP));
        assert!(refuses_socket(&cfg, SOCK_RAW, IPPROTO_TCP, APP, APP + 1));
    }
}
