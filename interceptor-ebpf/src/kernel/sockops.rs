//! `sockops`: when a redirected connection is established its local port is known, so its
//! original destination moves from the socket cookie to the connection's 4-tuple, where the
//! proxy's accepted socket (and the application's getpeername) can find it. When the client
//! socket closes, the entry goes.
//!
//! It also registers the pod's inbound capture listener: when a socket that `post_bind4` marked
//! as the proxy's starts listening (`BPF_SOCK_OPS_TCP_LISTEN_CB`, sent on every listen() of a
//! socket whose cgroup has sockops, no callback flag needed), it goes into `INBOUND_LISTENERS`.
//! A restarted proxy thus registers itself; a closed listener leaves the map with its socket.
//!
//! IPv6 sockets: a dual-stack socket connected to an IPv4-mapped address is an IPv4
//! connection (its IPv4 fields are set, and the proxy accepts it as IPv4), so it is keyed as
//! one; every other IPv6 connection goes to the IPv6 maps. Either way one cookie lookup.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_LISTEN_CB, BPF_TCP_CLOSE,
    },
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
};
use interceptor_ebpf::{
    Counter, ListenerKey, SockTuple4, SockTuple6,
    wire::{RawIpv6, ipv4_from_mapped, port_from_sock_ops_local, port_from_sock_ops_remote},
};

use crate::maps::{
    CAPTURE_SOCKETS, INBOUND_LISTENERS, ORIG_DST_BY_COOKIE, ORIG_DST_BY_TUPLE, ORIG_DST6_BY_COOKIE,
    ORIG_DST6_BY_TUPLE, count, pod_config, read_ip6,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[sock_ops]
pub fn track_redirected_sockets(ctx: SockOpsContext) -> u32 {
    let family = ctx.family();
    if family == AF_INET || family == AF_INET6 {
        match ctx.op() {
            BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB if is_ipv6(&ctx) => on_established6(&ctx),
            BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(&ctx),
            BPF_SOCK_OPS_STATE_CB if is_ipv6(&ctx) => on_state_change6(&ctx),
            BPF_SOCK_OPS_STATE_CB => on_state_change(&ctx),
            BPF_SOCK_OPS_TCP_LISTEN_CB => on_listen(&ctx),
            _ => {}
        }
    }
    0
}

/// An IPv6 connection, as opposed to IPv4 on an IPv4 or a dual-stack socket.
#[inline(always)]
fn is_ipv6(ctx: &SockOpsContext) -> bool {
    ctx.family() == AF_INET6 && ipv4_from_mapped(remote_ip6(ctx)).is_none()
}

// The context's address words are read one at a time at fixed offsets: the verifier refuses
// the copy through a derived pointer that `SockOpsContext::local_ip6()` compiles to.
#[inline(always)]
fn local_ip6(ctx: &SockOpsContext) -> RawIpv6 {
    read_ip6(unsafe { &(*ctx.ops).local_ip6 })
}

#[inline(always)]
fn remote_ip6(ctx: &SockOpsContext) -> RawIpv6 {
    read_ip6(unsafe { &(*ctx.ops).remote_ip6 })
}

#[inline(always)]
fn tuple(ctx: &SockOpsContext) -> SockTuple4 {
    SockTuple4 {
        netns: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        client_addr: ctx.local_ip4(),
        server_addr: ctx.remote_ip4(),
        client_port: port_from_sock_ops_local(ctx.local_port()),
        server_port: port_from_sock_ops_remote(ctx.remote_port()),
        _pad: 0,
    }
}

#[inline(always)]
fn on_established(ctx: &SockOpsContext) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out before the entry is removed.
    let Some(orig) = (unsafe { ORIG_DST_BY_COOKIE.get(&cookie) }).copied() else {
        return; // not a connection connect4 redirected
    };
    let _ = ORIG_DST_BY_COOKIE.remove(&cookie);
    let key = tuple(ctx);
    if ORIG_DST_BY_TUPLE.insert(&key, &orig, 0).is_err() {
        if let Some(cfg) = pod_config(key.netns) {
            count(cfg, Counter::OrigDstLost);
        }
        return;
    }
    // Ask for state changes of this socket only, to drop the entry when it closes.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

#[inline(always)]
fn on_state_change(ctx: &SockOpsContext) {
    if ctx.arg(1) == BPF_TCP_CLOSE {
        let _ = ORIG_DST_BY_TUPLE.remove(&tuple(ctx));
    }
}

#[inline(always)]
fn on_listen(ctx: &SockOpsContext) {
    // SAFETY: the context pointer is valid for the program's run.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return;
    }
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    match CAPTURE_SOCKETS.get(sk.cast()) {
        Some(mark) if mark.netns == netns => {}
        _ => return, // not the proxy's socket on the capture port
    }
    let mut key = ListenerKey {
        netns,
        family: ctx.family(),
        _pad: 0,
    };
    // SAFETY: as above; the helper only reads the context's socket.
    let ops = unsafe { &mut *ctx.ops };
    if INBOUND_LISTENERS
        .update(&mut key, ops, BPF_ANY as u64)
        .is_ok()
        && let Some(cfg) = pod_config(netns)
    {
        count(cfg, Counter::InboundListenerRegistered);
    }
}

#[inline(always)]
fn tuple6(ctx: &SockOpsContext) -> SockTuple6 {
    SockTuple6 {
        netns: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        client_addr: local_ip6(ctx),
        server_addr: remote_ip6(ctx),
        client_port: port_from_sock_ops_local(ctx.local_port()),
        server_port: port_from_sock_ops_remote(ctx.remote_port()),
        _pad: 0,
    }
}

#[inline(always)]
fn on_established6(ctx: &SockOpsContext) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out before the entry is removed.
    let Some(orig) = (unsafe { ORIG_DST6_BY_COOKIE.get(&cookie) }).copied() else {
        return; // not a connection connect6 redirected
    };
    let _ = ORIG_DST6_BY_COOKIE.remove(&cookie);
    let key = tuple6(ctx);
    if ORIG_DST6_BY_TUPLE.insert(&key, &orig, 0).is_err() {
        if let Some(cfg) = pod_config(key.netns) {
            count(cfg, Counter::OrigDstLost);
        }
        return;
    }
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

#[inline(always)]
fn on_state_change6(ctx: &SockOpsContext) {
    if ctx.arg(1) == BPF_TCP_CLOSE {
        let _ = ORIG_DST6_BY_TUPLE.remove(&tuple6(ctx));
    }
}
