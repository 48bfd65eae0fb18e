//! `cgroup/sendmsg6`: an IPv6 UDP `sendto()` with an address is decided like a connect: DNS to
//! a captured name server goes to `[::1]:15053`.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::redirect::{Hook, decide_and_rewrite6};

#[cgroup_sock_addr(sendmsg6)]
pub fn redirect_sendmsg6(ctx: SockAddrContext) -> i32 {
    decide_and_rewrite6(&ctx, Hook::Sendmsg);
    1 // always send (to the original or the rewritten address)
}
