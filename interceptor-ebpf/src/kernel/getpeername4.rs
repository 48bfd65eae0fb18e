//! `cgroup/getpeername4`: a redirected application asks who it is talking to and is told the
//! address it dialled, not 127.0.0.1:15001 (or 127.0.0.1:15053 for a connected DNS socket).

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use interceptor_ebpf::family::V4;

use crate::restore::restore_peer_name;

#[cgroup_sock_addr(getpeername4)]
pub fn restore_peer_name4(ctx: SockAddrContext) -> i32 {
    restore_peer_name::<V4>(&ctx);
    1
}
