//! `cgroup/recvmsg4`: a reply the DNS proxy sends from 127.0.0.1:15053 is shown to the
//! application as coming from the name server it asked; resolvers drop answers from any other
//! address (glibc checks the source against its name servers).

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use interceptor_ebpf::{
    Counter, DNS_CAPTURE_PORT,
    family::V4,
    wire::{LOCALHOST4, port_from_user_port},
};

use crate::{
    family::set_destination,
    helpers::netns_cookie,
    maps::{CLIENT_ORIG_DST4, count_in, socket_of},
};

#[cgroup_sock_addr(recvmsg4)]
pub fn restore_dns_reply_source4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context is valid for the program's run, and this is its only borrow.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.user_ip4 != LOCALHOST4 || port_from_user_port(sa.user_port) != DNS_CAPTURE_PORT {
        return 1;
    }
    let Some(orig) = CLIENT_ORIG_DST4.get(socket_of(&ctx)) else {
        return 1; // a socket we never redirected talks to 15053 itself
    };
    set_destination::<V4>(sa, orig.addr, orig.port);
    count_in(netns_cookie(&ctx), Counter::DnsReplyRestored);
    1 // recvmsg programs may not refuse
}
