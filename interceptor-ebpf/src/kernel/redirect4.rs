//! The decide-and-rewrite step `connect4` and `sendmsg4` share: one decision per connect (TCP,
//! or UDP DNS) or per unconnected datagram, then the destination is rewritten in place before
//! the kernel routes it (no NAT, no per-packet work afterwards).
//!
//! `sendmsg4` also runs for a dual-stack IPv6 socket sending to `::ffff:a.b.c.d`: the kernel
//! hands such a datagram to its IPv4 path, with the unmapped address, before `sendmsg6` would
//! see it.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_uid_gid,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    },
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use interceptor_ebpf::{
    Counter, OrigDst4, PodConfig,
    decision::{Connect4, Proto, Verdict, decide_outbound4},
    wire::{LOCALHOST4, port_from_user_port, port_to_user_port},
};

use crate::maps::{MapSets, ORIG_DST_BY_COOKIE, UDP_ORIG_DST, count, pod_config, store_on_socket};

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;

/// The transport of a `bpf_sock_addr.type_`; `None` for sockets never intercepted.
#[inline(always)]
pub fn proto_of(socket_type: u32) -> Option<Proto> {
    match socket_type {
        SOCK_STREAM => Some(Proto::Tcp),
        SOCK_DGRAM => Some(Proto::Udp),
        _ => None,
    }
}

/// Counts the verdict (connections, not datagrams: every unconnected UDP datagram comes through
/// `sendmsg4/6`); the port to redirect to, if it is a redirect.
#[inline(always)]
pub fn settle(cfg: &PodConfig, proto: Proto, verdict: Verdict) -> Option<u16> {
    match verdict {
        Verdict::Direct(reason) => {
            if proto == Proto::Tcp {
                count(cfg, reason);
            }
            None
        }
        Verdict::Redirect { port, counter } => {
            count(cfg, counter);
            Some(port)
        }
    }
}

#[inline(always)]
pub fn decide_and_rewrite(ctx: &SockAddrContext) {
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some(proto) = proto_of(sa.type_) else {
        return;
    };
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let Some(cfg) = pod_config(netns) else {
        return; // not a registered pod: untouched
    };
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    let src = if sk.is_null() {
        0
    } else {
        unsafe { (*sk).src_ip4 }
    };
    let uid_gid = bpf_get_current_uid_gid();
    let conn = Connect4 {
        proto,
        dst: sa.user_ip4,
        dst_port: port_from_user_port(sa.user_port),
        src,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
    };
    let Some(port) = settle(cfg, proto, decide_outbound4(cfg, &conn, &MapSets)) else {
        return;
    };
    let orig = OrigDst4 {
        addr: conn.dst,
        port: conn.dst_port,
        _pad: 0,
    };
    if !record4(ctx, proto, orig) {
        count(cfg, Counter::OrigDstLost);
    }
    sa.user_ip4 = LOCALHOST4;
    sa.user_port = port_to_user_port(port);
    debug!(
        ctx,
        "redirect {:i}:{} -> 127.0.0.1:{}",
        u32::from_be(conn.dst),
        conn.dst_port,
        port
    );
}

/// Records an IPv4 original destination where the programs that serve the redirected socket
/// look for it (also for a dual-stack socket's IPv4-mapped connect, from `connect6`).
/// False when it could not be recorded.
#[inline(always)]
pub fn record4(ctx: &SockAddrContext, proto: Proto, orig: OrigDst4) -> bool {
    match proto {
        // Until established, by cookie; sockops moves it to the connection's 4-tuple.
        Proto::Tcp => {
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            ORIG_DST_BY_COOKIE.insert(&cookie, &orig, 0).is_ok()
        }
        // On the socket itself, freed with it: recvmsg4/6 and getpeername4/6 read it back.
        Proto::Udp => store_on_socket(&UDP_ORIG_DST, ctx, orig),
    }
}
