//! `cgroup/getsockopt`: answer `getsockopt(SOL_IP, SO_ORIGINAL_DST)` on the proxy's accepted
//! socket as netfilter's `getorigdst()` does: a 16-byte `sockaddr_in` and 0, or ENOPROTOOPT
//! (not TCP), EINVAL (buffer under 16 bytes), ENOENT (no such connection). Likewise
//! `getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)` on an IPv6 socket, as `ipv6_getorigdst()`
//! does, with a 28-byte `sockaddr_in6`. Every other option, and sockets of pods we do not
//! manage, pass through untouched.
//!
//! Two kinds of socket have an original destination: the proxy's end of a connection that
//! `connect4`/`connect6` redirected (looked up by 4-tuple), and a connection `sk_lookup` steered
//! to a capture listener (IPv4 or IPv6), whose destination was never changed: its own local
//! address, as conntrack would report it after an iptables REDIRECT.
//!
//! As with netfilter, an IPv4 connection accepted on a dual-stack listener (an IPv6 socket
//! with IPv4-mapped addresses) answers `SOL_IP` with the IPv4 destination, and `SOL_IPV6`
//! with ENOENT.

use aya_ebpf::bindings::bpf_sock;
use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_netns_cookie, macros::cgroup_sockopt,
    programs::SockoptContext,
};
use interceptor_ebpf::{
    Counter, OrigDst4, OrigDst6, PodConfig,
    wire::{ipv4_from_mapped, port_from_sock_src, sin_port},
};

use crate::maps::{
    CAPTURE_SOCKETS, ORIG_DST_BY_TUPLE, ORIG_DST6_BY_TUPLE, count, pod_config, read_ip6,
    tuple_from_server_side, tuple6_from_server_side,
};

const SOL_IP: i32 = 0;
const SO_ORIGINAL_DST: i32 = 80;
const SOL_IPV6: i32 = 41;
/// Same number as `SO_ORIGINAL_DST`, at level `SOL_IPV6`.
const IP6T_SO_ORIGINAL_DST: i32 = 80;
const IPPROTO_TCP: u32 = 6;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCKADDR_IN_LEN: i32 = 16;
const SOCKADDR_IN6_LEN: i32 = 28;
const PAGE_SIZE: i32 = 4096;
const EINVAL: i32 = 22;
const ENOENT: i32 = 2;
const EFAULT: i32 = 14;
const ENOPROTOOPT: i32 = 92;

/// `struct sockaddr_in`.
#[repr(C)]
struct SockaddrIn {
    family: u16,
    port: u16,
    addr: u32,
    zero: [u8; 8],
}

/// `struct sockaddr_in6`.
#[repr(C)]
struct SockaddrIn6 {
    family: u16,
    port: u16,
    flowinfo: u32,
    addr: [u32; 4],
    scope_id: u32,
}

#[cgroup_sockopt(getsockopt)]
pub fn answer_original_dst(ctx: SockoptContext) -> i32 {
    if unsafe { (*ctx.sockopt).level } == SOL_IPV6 {
        answer6(&ctx);
    } else {
        answer(&ctx);
    }
    1
}

#[inline(always)]
fn answer(ctx: &SockoptContext) {
    let so = ctx.sockopt;
    // SAFETY: the context pointer is valid for the program's run. Each field is read and
    // written on its own: the verifier rejects merged wide accesses to this context.
    unsafe {
        if (*so).level != SOL_IP || (*so).optname != SO_ORIGINAL_DST || (*so).retval == 0 {
            return; // not ours, or the kernel (conntrack) already answered
        }
        let netns = bpf_get_netns_cookie(ctx.as_ptr());
        let Some(cfg) = pod_config(netns) else {
            return;
        };
        let sk = (*so).__bindgen_anon_1.sk;
        if sk.is_null() {
            return;
        }
        if (*sk).protocol != IPPROTO_TCP {
            set_retval(so, -ENOPROTOOPT);
            return;
        }
        let optlen = (*so).optlen;
        if optlen < SOCKADDR_IN_LEN {
            set_retval(so, -EINVAL);
            return;
        }
        let orig = match ORIG_DST_BY_TUPLE.get(&tuple_from_server_side(netns, &*sk)) {
            Some(orig) => Some(*orig),
            None => steered_destination(netns, cfg, sk),
        };
        let Some(orig) = orig else {
            count(cfg, Counter::OrigDstMiss);
            set_retval(so, -ENOENT);
            return;
        };
        let optval = (*so).__bindgen_anon_2.optval as *mut u8;
        let optval_end = (*so).__bindgen_anon_3.optval_end as *mut u8;
        if optval.wrapping_add(SOCKADDR_IN_LEN as usize) > optval_end {
            set_retval(so, -EFAULT);
            return;
        }
        let out = optval as *mut SockaddrIn;
        core::ptr::write_volatile(
            out,
            SockaddrIn {
                family: AF_INET,
                port: sin_port(orig.port),
                addr: orig.addr,
                zero: [0; 8],
            },
        );
        // netfilter leaves the caller's length as it was; the kernel only hands a program a
        // buffer of at most a page, so a longer one is reported as the 16 bytes written.
        if optlen > PAGE_SIZE {
            core::ptr::write_volatile(&mut (*so).optlen, SOCKADDR_IN_LEN);
        }
        set_retval(so, 0);
        count(cfg, Counter::OrigDstHit);
    }
}

/// `ipv6_getorigdst()`'s checks, in its order, then the answer from the IPv6 tuple map.
#[inline(always)]
fn answer6(ctx: &SockoptContext) {
    let so = ctx.sockopt;
    // SAFETY: as in `answer`.
    unsafe {
        if (*so).optname != IP6T_SO_ORIGINAL_DST || (*so).retval == 0 {
            return;
        }
        let netns = bpf_get_netns_cookie(ctx.as_ptr());
        let Some(cfg) = pod_config(netns) else {
            return;
        };
        let sk = (*so).__bindgen_anon_1.sk;
        // On an IPv4 socket the kernel never reaches netfilter for SOL_IPV6: leave its error.
        if sk.is_null() || (*sk).family != u32::from(AF_INET6) {
            return;
        }
        if (*sk).protocol != IPPROTO_TCP {
            set_retval(so, -ENOPROTOOPT);
            return;
        }
        let optlen = (*so).optlen;
        if optlen < SOCKADDR_IN6_LEN {
            set_retval(so, -EINVAL);
            return;
        }
        let orig = match ORIG_DST6_BY_TUPLE.get(&tuple6_from_server_side(netns, &*sk)) {
            Some(orig) => Some(*orig),
            None => steered_destination6(netns, cfg, sk),
        };
        let Some(orig) = orig else {
            count(cfg, Counter::OrigDstMiss);
            set_retval(so, -ENOENT);
            return;
        };
        let optval = (*so).__bindgen_anon_2.optval as *mut u8;
        let optval_end = (*so).__bindgen_anon_3.optval_end as *mut u8;
        if optval.wrapping_add(SOCKADDR_IN6_LEN as usize) > optval_end {
            set_retval(so, -EFAULT);
            return;
        }
        // netfilter fills flowinfo from the socket's own flow label and the scope id from its
        // bound device for link-local addresses; neither is known here, and both are 0 for
        // the usual unbound, unlabelled socket.
        core::ptr::write_volatile(
            optval as *mut SockaddrIn6,
            SockaddrIn6 {
                family: AF_INET6,
                port: sin_port(orig.port),
                flowinfo: 0,
                addr: orig.addr,
                scope_id: 0,
            },
        );
        if optlen > PAGE_SIZE {
            core::ptr::write_volatile(&mut (*so).optlen, SOCKADDR_IN6_LEN);
        }
        set_retval(so, 0);
        count(cfg, Counter::OrigDstHit);
    }
}

#[inline(always)]
unsafe fn set_retval(so: *mut aya_ebpf::bindings::bpf_sockopt, retval: i32) {
    unsafe { core::ptr::write_volatile(&mut (*so).retval, retval) };
}

/// The destination of a connection `sk_lookup` steered: a socket accepted from the capture
/// listener (it carries the listener's cloned mark) whose local port is not the capture port
/// (a connection made to the capture port itself has no other destination). IPv4: an IPv4
/// socket, or an IPv4 connection a dual-stack listener accepted.
#[inline(always)]
unsafe fn steered_destination(netns: u64, cfg: &PodConfig, sk: *mut bpf_sock) -> Option<OrigDst4> {
    // SAFETY: as the caller's.
    let sk = unsafe { steered_socket(netns, cfg, sk)? };
    let ipv4 = sk.family == u32::from(AF_INET)
        || (sk.family == u32::from(AF_INET6) && ipv4_from_mapped(read_ip6(&sk.src_ip6)).is_some());
    if !ipv4 {
        return None;
    }
    Some(OrigDst4 {
        addr: sk.src_ip4,
        port: port_from_sock_src(sk.src_port),
        _pad: 0,
    })
}

/// `steered_destination` for an IPv6 connection (not an IPv4 one on a dual-stack socket:
/// netfilter has no IPv6 original destination for it either).
#[inline(always)]
unsafe fn steered_destination6(netns: u64, cfg: &PodConfig, sk: *mut bpf_sock) -> Option<OrigDst6> {
    // SAFETY: as the caller's.
    let sk = unsafe { steered_socket(netns, cfg, sk)? };
    let local = read_ip6(&sk.src_ip6);
    if sk.family != u32::from(AF_INET6) || ipv4_from_mapped(local).is_some() {
        return None;
    }
    Some(OrigDst6 {
        addr: local,
        port: port_from_sock_src(sk.src_port),
        _pad: 0,
    })
}

/// `sk` if it was accepted from this pod's capture listener on another port than the capture
/// port.
#[inline(always)]
unsafe fn steered_socket<'a>(
    netns: u64,
    cfg: &PodConfig,
    sk: *mut bpf_sock,
) -> Option<&'a bpf_sock> {
    match CAPTURE_SOCKETS.get(sk.cast()) {
        Some(mark) if mark.netns == netns => {}
        _ => return None,
    }
    // SAFETY: a full socket the verifier checked.
    let sk = unsafe { &*sk };
    if port_from_sock_src(sk.src_port) == cfg.inbound_capture_port {
        return None;
    }
    Some(sk)
}
