//! `cgroup/post_bind6`: marks the proxy's IPv6 socket bound to the inbound capture port,
//! IPv6-only or dual-stack (`[::]` without `IPV6_V6ONLY`, which takes IPv4 too).

use aya_ebpf::{macros::cgroup_sock, programs::SockContext};

use crate::capture_listener::mark_if_capture_listener;

#[cgroup_sock(post_bind6)]
pub fn mark_capture_listener6(ctx: SockContext) -> i32 {
    mark_if_capture_listener(&ctx);
    1 // never refuse a bind
}
