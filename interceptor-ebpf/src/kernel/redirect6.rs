//! The decide-and-rewrite step `connect6` and `sendmsg6` share, the IPv6 side of `redirect4`.
//!
//! A destination `::ffff:a.b.c.d` (a dual-stack socket speaking IPv4) makes an IPv4 connection,
//! which istio-iptables would see in its IPv4 table: it is decided by the IPv4 rules, recorded
//! as an IPv4 destination (where the IPv4 programs look for it) and sent to `::ffff:127.0.0.1`.
//! Every other destination is decided by the IPv6 rules and sent to `::1`.

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_uid_gid,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    },
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use interceptor_ebpf::{
    Counter, OrigDst4, OrigDst6,
    decision::{Connect4, Connect6, Proto, decide_outbound4, decide_outbound6},
    wire::{
        LOCALHOST4, LOCALHOST6, RawIpv6, UNSPECIFIED4, UNSPECIFIED6, ipv4_from_mapped, ipv4_mapped,
        ipv6_octets, port_from_user_port, port_to_user_port,
    },
};

use crate::{
    maps::{
        MapSets, ORIG_DST6_BY_COOKIE, UDP_ORIG_DST6, count, pod_config, read_ip6, store_on_socket,
        write_ip6,
    },
    redirect4::{proto_of, record4, settle},
};

/// Which hook runs the step.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Connect,
    /// An unconnected datagram. The kernel never shows `sendmsg6` an IPv4-mapped destination
    /// (it sends those through `sendmsg4`), and refuses a rewrite to one.
    Sendmsg,
}

#[inline(always)]
pub fn decide_and_rewrite6(ctx: &SockAddrContext, hook: Hook) {
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some(proto) = proto_of(sa.type_) else {
        return;
    };
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let Some(cfg) = pod_config(netns) else {
        return; // not a registered pod: untouched
    };
    let dst = read_ip6(&sa.user_ip6);
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    let src = if sk.is_null() {
        UNSPECIFIED6
    } else {
        read_ip6(unsafe { &(*sk).src_ip6 })
    };
    let uid_gid = bpf_get_current_uid_gid();
    let (uid, gid) = (uid_gid as u32, (uid_gid >> 32) as u32);
    let dst_port = port_from_user_port(sa.user_port);

    if let Some(dst4) = ipv4_from_mapped(dst) {
        if hook == Hook::Sendmsg {
            return;
        }
        let conn = Connect4 {
            proto,
            dst: dst4,
            dst_port,
            src: ipv4_from_mapped(src).unwrap_or(UNSPECIFIED4),
            uid,
            gid,
        };
        let Some(port) = settle(cfg, proto, decide_outbound4(cfg, &conn, &MapSets)) else {
            return;
        };
        let orig = OrigDst4 {
            addr: dst4,
            port: dst_port,
            _pad: 0,
        };
        if !record4(ctx, proto, orig) {
            count(cfg, Counter::OrigDstLost);
        }
        rewrite(sa, ipv4_mapped(LOCALHOST4), port);
        debug!(
            ctx,
            "redirect {:i}:{} (mapped) -> ::ffff:127.0.0.1:{}",
            u32::from_be(dst4),
            dst_port,
            port
        );
        return;
    }

    let conn = Connect6 {
        proto,
        dst,
        dst_port,
        src,
        uid,
        gid,
    };
    let Some(port) = settle(cfg, proto, decide_outbound6(cfg, &conn, &MapSets)) else {
        return;
    };
    let orig = OrigDst6 {
        addr: dst,
        port: dst_port,
        _pad: 0,
    };
    if !record6(ctx, proto, orig) {
        count(cfg, Counter::OrigDstLost);
    }
    rewrite(sa, LOCALHOST6, port);
    debug!(
        ctx,
        "redirect [{:i}]:{} -> [::1]:{}",
        ipv6_octets(dst),
        dst_port,
        port
    );
}

/// `record4` for IPv6 destinations.
#[inline(always)]
fn record6(ctx: &SockAddrContext, proto: Proto, orig: OrigDst6) -> bool {
    match proto {
        Proto::Tcp => {
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            ORIG_DST6_BY_COOKIE.insert(&cookie, &orig, 0).is_ok()
        }
        Proto::Udp => store_on_socket(&UDP_ORIG_DST6, ctx, orig),
    }
}

#[inline(always)]
fn rewrite(sa: &mut bpf_sock_addr, addr: RawIpv6, port: u16) {
    write_ip6(&mut sa.user_ip6, addr);
    sa.user_port = port_to_user_port(port);
}
