//! `cgroup/recvmsg6`: the IPv6 side of `recvmsg4`. A reply from `[::1]:15053` is shown as
//! coming from the IPv6 name server asked; on a dual-stack socket, a reply from
//! `::ffff:127.0.0.1:15053` (an IPv4 datagram, which the kernel reports here, mapped) as coming
//! from `::ffff:<the IPv4 name server asked>`.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use interceptor_ebpf::{Counter, DNS_CAPTURE_PORT, family::V6, wire::port_from_user_port};

use crate::{
    family::{KernelFamily, set_destination},
    helpers::netns_cookie,
    maps::count_in,
    restore::dns_server6,
};

#[cgroup_sock_addr(recvmsg6)]
pub fn restore_dns_reply_source6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context is valid for the program's run, and this is its only borrow.
    let sa = unsafe { &mut *ctx.sock_addr };
    if port_from_user_port(sa.user_port) != DNS_CAPTURE_PORT {
        return 1;
    }
    let Some(orig) = dns_server6(&ctx, V6::user_ip(sa)) else {
        return 1; // not from the DNS proxy, or a socket we never redirected
    };
    set_destination::<V6>(sa, orig.addr, orig.port);
    count_in(netns_cookie(&ctx), Counter::DnsReplyRestored);
    1 // recvmsg programs may not refuse
}
