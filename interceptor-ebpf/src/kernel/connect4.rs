//! `cgroup/connect4`: decide every TCP connect of the pod once (and UDP connects under DNS
//! capture), redirecting by rewriting the destination.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::redirect::decide_and_rewrite4;

#[cgroup_sock_addr(connect4)]
pub fn redirect_connect4(ctx: SockAddrContext) -> i32 {
    decide_and_rewrite4(&ctx);
    1 // always let the connect proceed (to the original or the rewritten address)
}
