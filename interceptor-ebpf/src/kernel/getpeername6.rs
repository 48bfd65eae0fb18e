//! `cgroup/getpeername6`: the IPv6 side of `getpeername4`. A dual-stack socket redirected to
//! `::ffff:127.0.0.1` is an IPv4 connection and is told its dialled `::ffff:a.b.c.d`; a
//! connected DNS socket is told the name server it asked, not `[::1]:15053`.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use interceptor_ebpf::family::V6;

use crate::restore::restore_peer_name;

#[cgroup_sock_addr(getpeername6)]
pub fn restore_peer_name6(ctx: SockAddrContext) -> i32 {
    restore_peer_name::<V6>(&ctx);
    1
}
