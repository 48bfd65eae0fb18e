//! `--accelerate`, the pairing half (called by `sockops`): when a redirected connection's
//! application end is established, and when the proxy's accepted end is, the socket goes into
//! `ACCEL_SOCKETS` under its own view of the connection, if its pod asked for acceleration.
//! From then on `sk_msg` (`deliver_to_peer`) moves each message it sends into its peer's
//! receive queue. Only these two sockets are ever filed: every other connection of the pod
//! (the proxy's upstream legs, direct connections) keeps the plain TCP path and pays nothing
//! but this function's pod lookup on a redirected connection.
//!
//! Order: the application's end is established (and filed) first; the proxy's end is filed
//! before the proxy can accept it (the handshake completes under the new socket's lock, which
//! `accept` has to take). The application may send before the proxy's end is filed: then
//! `deliver_to_peer` finds no peer and that direction stays on TCP (counted).

use aya_ebpf::{bindings::BPF_NOEXIST, programs::SockOpsContext};
use interceptor_ebpf::{AccelKey, Counter, accel::key_addr};

use crate::{
    family::KernelFamily as _,
    maps::{ACCEL_SOCKETS, count, pod_config},
};
use interceptor_ebpf::{
    family::V6,
    wire::{port_from_sock_ops_local, port_from_sock_ops_remote},
};

/// Which end of a redirected connection the context's socket is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The application's socket (`BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB`).
    Application,
    /// The proxy's accepted socket (`BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB`).
    Proxy,
}

/// Files the context's socket, one end of a redirected connection in the pod `netns` whose
/// original destination says the pod accelerates (`OrigDst::ACCELERATE`, set by `connect`).
#[inline(always)]
pub fn pair(ctx: &SockOpsContext, netns: u64, end: End) {
    let Some(cfg) = pod_config(netns) else {
        return;
    };
    // SAFETY: the context is valid for the program's run, and no other borrow of it lives;
    // the helper only reads the context's socket.
    let ops = unsafe { &mut *ctx.ops };
    let family = ops.family;
    let v4_local = ops.local_ip4;
    let v4_remote = ops.remote_ip4;
    let mut key = AccelKey::new(
        netns,
        key_addr(family, v4_local, V6::sock_ops_local(ops)),
        port_from_sock_ops_local(ops.local_port),
        key_addr(family, v4_remote, V6::sock_ops_remote(ops)),
        port_from_sock_ops_remote(ops.remote_port),
    );
    // NOEXIST: a stale entry of a reused 4-tuple is dropped by the kernel with its socket, so
    // a present key is a live socket that keeps it.
    match ACCEL_SOCKETS.update(&mut key, ops, BPF_NOEXIST as u64) {
        Ok(()) if end == End::Proxy => count(cfg, Counter::Accelerated),
        Ok(()) => {}
        Err(_) => count(cfg, Counter::AccelFallbackNotPaired),
    }
}
