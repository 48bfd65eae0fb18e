//! `sockops`: a redirected connection's original destination passes from the application's
//! socket (where `connect` stored it) to the proxy's end of the connection, which is another
//! socket: when the application's side is established its 4-tuple is known, and the destination
//! waits under it in `IN_FLIGHT4/6`; when the proxy's side is established (the kernel completes
//! the handshake before the proxy accepts), it moves into that socket's storage, where
//! `getsockopt(SO_ORIGINAL_DST)` finds it, and leaves the node-wide map. Both sockets' entries
//! are freed with them: nothing waits for a close.
//!
//! It also registers the pod's inbound capture listener: when a socket that `post_bind4` marked
//! as the proxy's starts listening (`BPF_SOCK_OPS_TCP_LISTEN_CB`, sent on every listen() of a
//! socket whose cgroup has sockops, no callback flag needed), it goes into `INBOUND_LISTENERS`.
//! A restarted proxy thus registers itself; a closed listener leaves the map with its socket.
//!
//! IPv6 sockets: a dual-stack socket connected to an IPv4-mapped address is an IPv4
//! connection (its IPv4 fields are set, and the proxy accepts it as IPv4), so it is keyed as
//! one; every other IPv6 connection goes to the IPv6 maps.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_TCP_LISTEN_CB, bpf_sock_ops,
    },
    helpers::bpf_ktime_get_ns,
    macros::sock_ops,
    programs::SockOpsContext,
};
use interceptor_ebpf::{
    Counter, IN_FLIGHT_CLOCK_SHIFT, InFlight, ListenerKey, SockTuple,
    family::{V4, V6},
    wire::{ipv4_from_mapped, port_from_sock_ops_local, port_from_sock_ops_remote},
};

use crate::{
    accelerate::{self, End},
    family::KernelFamily,
    helpers::netns_cookie,
    linux::{AF_INET, AF_INET6},
    maps::{CAPTURE_SOCKETS, INBOUND_LISTENERS, count, count_in, pod_config},
};

#[sock_ops]
pub fn track_redirected_sockets(ctx: SockOpsContext) -> u32 {
    let family = ctx.family();
    if family == AF_INET || family == AF_INET6 {
        match ctx.op() {
            BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB if is_ipv6(&ctx) => on_connected::<V6>(&ctx),
            BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_connected::<V4>(&ctx),
            BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB if is_ipv6(&ctx) => on_accepted::<V6>(&ctx),
            BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_accepted::<V4>(&ctx),
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

/// The connection, named from the client's side: this socket's when `client_side`, else (the
/// proxy's end) its peer's.
#[inline(always)]
fn tuple<F: KernelFamily>(ctx: &SockOpsContext, client_side: bool) -> SockTuple<F::Addr> {
    let ops = ops(ctx);
    let (local, remote) = (F::sock_ops_local(ops), F::sock_ops_remote(ops));
    let local_port = port_from_sock_ops_local(ops.local_port);
    let remote_port = port_from_sock_ops_remote(ops.remote_port);
    let (client_addr, server_addr, client_port, server_port) = if client_side {
        (local, remote, local_port, remote_port)
    } else {
        (remote, local, remote_port, local_port)
    };
    SockTuple {
        netns: netns_cookie(ctx),
        client_addr,
        server_addr,
        client_port,
        server_port,
        _pad: 0,
    }
}

/// The context's socket (a full one at the established callbacks).
#[inline(always)]
fn socket(ctx: &SockOpsContext) -> *mut c_void {
    // SAFETY: `sk` is the member of this union the kernel sets.
    unsafe { ops(ctx).__bindgen_anon_2.sk }.cast()
}

/// The application's side of a connection is established: if `connect` redirected it, its
/// original destination waits under the connection for the proxy's side.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys by reference, as `rule_sets::MapSets::has_port` (measured)"
)]
fn on_connected<F: KernelFamily>(ctx: &SockOpsContext) {
    // `connect` sends what it redirects to localhost: any other connection is not one of
    // them, and needs no lookup.
    if F::sock_ops_remote(ops(ctx)) != F::LOCALHOST {
        return;
    }
    let sk = socket(ctx);
    if sk.is_null() {
        return;
    }
    let Some(orig) = F::client_orig_dst().get(sk) else {
        return; // not a connection connect4/connect6 redirected
    };
    let key = tuple::<F>(ctx, true);
    // SAFETY: a plain helper call.
    let since = (unsafe { bpf_ktime_get_ns() } >> IN_FLIGHT_CLOCK_SHIFT) as u32;
    let entry = InFlight { orig, since };
    // Over an entry a proxy never took for an earlier connection of the same 4-tuple.
    if F::in_flight().insert(&key, &entry, BPF_ANY as u64).is_err() {
        // A full map: this connection's proxy will find no original destination. Counted,
        // never silent.
        count_in(key.netns, Counter::OrigDstLost);
    }
    if orig.is_accelerated() {
        accelerate::pair(ctx, key.netns, End::Application);
    }
}

/// A connection's accepting side is established: if it is the proxy's end of a redirected
/// connection, its original destination moves onto this socket.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys by reference, as `rule_sets::MapSets::has_port` (measured)"
)]
fn on_accepted<F: KernelFamily>(ctx: &SockOpsContext) {
    // The proxy's end of a redirected connection is on localhost (connections from outside
    // the pod, which `sk_lookup` hands over, never are).
    if F::sock_ops_local(ops(ctx)) != F::LOCALHOST {
        return;
    }
    let sk = socket(ctx);
    if sk.is_null() {
        return;
    }
    let key = tuple::<F>(ctx, false);
    // SAFETY: the entry is copied out at once.
    let Some(entry) = (unsafe { F::in_flight().get(&key) }).copied() else {
        return; // not the proxy's end of a redirected connection
    };
    if F::proxy_orig_dst().set(sk, entry.orig) {
        let _ = F::in_flight().remove(&key);
    }
    // Could not be stored on the socket: the entry stays, where `getsockopt` looks next.
    if entry.orig.is_accelerated() {
        accelerate::pair(ctx, key.netns, End::Proxy);
    }
}

#[inline(always)]
fn on_listen(ctx: &SockOpsContext) {
    let sk = socket(ctx);
    if sk.is_null() {
        return;
    }
    let netns = netns_cookie(ctx);
    match CAPTURE_SOCKETS.get(sk) {
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
