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
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_LISTEN_CB, BPF_TCP_CLOSE, bpf_sock_ops,
    },
    macros::sock_ops,
    programs::SockOpsContext,
};
use interceptor_ebpf::{
    Counter, ListenerKey, SockTuple,
    family::{V4, V6},
    wire::{ipv4_from_mapped, port_from_sock_ops_local, port_from_sock_ops_remote},
};

use crate::{
    family::KernelFamily,
    helpers::{netns_cookie, socket_cookie},
    linux::{AF_INET, AF_INET6},
    maps::{CAPTURE_SOCKETS, INBOUND_LISTENERS, count, count_in, pod_config},
};

#[sock_ops]
pub fn track_redirected_sockets(ctx: SockOpsContext) -> u32 {
    let family = ctx.family();
    if family == AF_INET || family == AF_INET6 {
        match ctx.op() {
            BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB if is_ipv6(&ctx) => on_established::<V6>(&ctx),
            BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established::<V4>(&ctx),
            BPF_SOCK_OPS_STATE_CB if is_ipv6(&ctx) => on_state_change::<V6>(&ctx),
            BPF_SOCK_OPS_STATE_CB => on_state_change::<V4>(&ctx),
            BPF_SOCK_OPS_TCP_LISTEN_CB => on_listen(&ctx),
            _ => {}
        }
    }
    0
}

#[inline(always)]
fn ops(ctx: &SockOpsContext) -> &bpf_sock_ops {
    // SAFETY: the context is valid for the program's run.
    unsafe { &*ctx.ops }
}

/// An IPv6 connection, as opposed to IPv4 on an IPv4 or a dual-stack socket.
#[inline(always)]
fn is_ipv6(ctx: &SockOpsContext) -> bool {
    ctx.family() == AF_INET6 && ipv4_from_mapped(V6::sock_ops_remote(ops(ctx))).is_none()
}

/// The connection, named from the client's side (this socket's).
#[inline(always)]
fn tuple<F: KernelFamily>(ctx: &SockOpsContext) -> SockTuple<F::Addr> {
    let ops = ops(ctx);
    SockTuple {
        netns: netns_cookie(ctx),
        client_addr: F::sock_ops_local(ops),
        server_addr: F::sock_ops_remote(ops),
        client_port: port_from_sock_ops_local(ops.local_port),
        server_port: port_from_sock_ops_remote(ops.remote_port),
        _pad: 0,
    }
}

#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys by reference, as `MapSets::has_port` (measured)"
)]
fn on_established<F: KernelFamily>(ctx: &SockOpsContext) {
    let cookie = socket_cookie(ctx);
    // SAFETY: copied out before the entry is removed.
    let Some(orig) = (unsafe { F::orig_dst_by_cookie().get(&cookie) }).copied() else {
        return; // not a connection connect4/connect6 redirected
    };
    let _ = F::orig_dst_by_cookie().remove(&cookie);
    let key = tuple::<F>(ctx);
    if F::orig_dst_by_tuple().insert(&key, &orig, 0).is_err() {
        count_in(key.netns, Counter::OrigDstLost);
        return;
    }
    // Ask for state changes of this socket only, to drop the entry when it closes.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys by reference, as `MapSets::has_port` (measured)"
)]
fn on_state_change<F: KernelFamily>(ctx: &SockOpsContext) {
    if ctx.arg(1) == BPF_TCP_CLOSE {
        let _ = F::orig_dst_by_tuple().remove(&tuple::<F>(ctx));
    }
}

#[inline(always)]
fn on_listen(ctx: &SockOpsContext) {
    // SAFETY: `sk` is the member of this union the kernel sets.
    let sk = unsafe { ops(ctx).__bindgen_anon_2.sk };
    if sk.is_null() {
        return;
    }
    let netns = netns_cookie(ctx);
    match CAPTURE_SOCKETS.get(sk.cast()) {
        Some(mark) if mark.netns == netns => {}
        _ => return, // not the proxy's socket on the capture port
    }
    let mut key = ListenerKey {
        netns,
        family: ctx.family(),
        _pad: 0,
    };
    // SAFETY: the context is valid for the program's run, and no other borrow of it lives;
    // the helper only reads the context's socket.
    let ops = unsafe { &mut *ctx.ops };
    if INBOUND_LISTENERS
        .update(&mut key, ops, BPF_ANY as u64)
        .is_ok()
        && let Some(cfg) = pod_config(netns)
    {
        count(cfg, Counter::InboundListenerRegistered);
    }
}
