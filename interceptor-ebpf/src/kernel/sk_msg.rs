//! `sk_msg` on `ACCEL_SOCKETS` (`--accelerate`): a message sent on one pod-local end of an
//! accelerated connection goes straight into its peer's receive queue
//! (`bpf_msg_redirect_hash(..., BPF_F_INGRESS)`), skipping TCP/IP and loopback both ways.
//!
//! Byte order is the one thing that can go wrong: the receiver reads redirected messages
//! before anything TCP queued for it. So an end sends through TCP only before its first
//! redirected message could have been queued, never between two: once its peer cannot be
//! found (the proxy's end is not filed yet, or is closed), the end is marked
//! (`ACCEL_FALLBACK`) and every later message of it goes through TCP too. Going from
//! redirected to TCP is safe (the peer drains the redirected ones first); the other way
//! round never happens.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, sk_action},
    macros::sk_msg,
    programs::SkMsgContext,
};
use interceptor_ebpf::{
    AccelKey, Counter,
    accel::key_addr,
    wire::{port_from_sock_ops_local, port_from_sock_ops_remote},
};

use crate::{
    family::read_ip6,
    helpers::netns_cookie,
    maps::{ACCEL_FALLBACK, ACCEL_SOCKETS, count_in},
};

const SK_PASS: u32 = sk_action::SK_PASS;

#[sk_msg]
pub fn deliver_to_peer(ctx: SkMsgContext) -> u32 {
    // SAFETY: the context is valid for the program's run.
    let md = unsafe { &*ctx.msg };
    // SAFETY: `sk` is the member of this union the kernel sets: the sending socket.
    let sk: *mut c_void = unsafe { md.__bindgen_anon_3.sk }.cast();
    if ACCEL_FALLBACK.get(sk).is_some() {
        return SK_PASS; // this direction went through TCP once: it stays there
    }
    let netns = netns_cookie(&ctx);
    let family = md.family;
    let this_end = AccelKey::new(
        netns,
        key_addr(family, md.local_ip4, read_ip6(&md.local_ip6)),
        port_from_sock_ops_local(md.local_port),
        key_addr(family, md.remote_ip4, read_ip6(&md.remote_ip6)),
        port_from_sock_ops_remote(md.remote_port),
    );
    let mut peer = this_end.peer();
    let verdict = ACCEL_SOCKETS.redirect_msg(&ctx, &mut peer, BPF_F_INGRESS as u64);
    if verdict == i64::from(SK_PASS) {
        return SK_PASS;
    }
    // No peer: this message, and every later one of this end, through TCP.
    if ACCEL_FALLBACK.set(sk, 1) {
        count_in(netns, Counter::AccelFallbackNoPeer);
    }
    SK_PASS
}
