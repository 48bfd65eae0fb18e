//! `cgroup/post_bind4`: marks the proxy's IPv4 socket bound to the inbound capture port
//! (`capture_listener`).

use aya_ebpf::{macros::cgroup_sock, programs::SockContext};

use crate::capture_listener::mark_if_capture_listener;

#[cgroup_sock(post_bind4)]
pub fn mark_capture_listener4(ctx: SockContext) -> i32 {
    mark_if_capture_listener(&ctx);
    1 // never refuse a bind
}
