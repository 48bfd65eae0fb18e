//! `cgroup/sendmsg4`: a UDP `sendto()` with an address (what a resolver does on an unconnected
//! socket) is decided like a connect: DNS to a captured name server goes to 127.0.0.1:15053.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::redirect::decide_and_rewrite4;

#[cgroup_sock_addr(sendmsg4)]
pub fn redirect_sendmsg4(ctx: SockAddrContext) -> i32 {
    decide_and_rewrite4(&ctx);
    1 // always send (to the original or the rewritten address)
}
