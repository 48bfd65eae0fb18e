//! `cgroup/connect6`: the IPv6 side of `connect4` (TCP connects, and UDP connects under DNS
//! capture); IPv4-mapped destinations of dual-stack sockets follow the IPv4 rules.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::redirect::{Hook, decide_and_rewrite6};

#[cgroup_sock_addr(connect6)]
pub fn redirect_connect6(ctx: SockAddrContext) -> i32 {
    decide_and_rewrite6(&ctx, Hook::Connect);
    1 // always let the connect proceed (to the original or the rewritten address)
}
