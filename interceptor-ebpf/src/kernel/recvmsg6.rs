//! `cgroup/recvmsg6`: the IPv6 side of `recvmsg4`. A reply from `[::1]:15053` is shown as
//! coming from the IPv6 name server asked; on a dual-stack socket, a reply from
//! `::ffff:127.0.0.1:15053` (an IPv4 datagram, which the kernel reports here, mapped) as coming
//! from `::ffff:<the IPv4 name server asked>`.

use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_netns_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use interceptor_ebpf::{
    Counter, DNS_CAPTURE_PORT,
    wire::{LOCALHOST4, LOCALHOST6, ipv4_mapped, port_from_user_port, port_to_user_port},
};

use crate::maps::{
    UDP_ORIG_DST, UDP_ORIG_DST6, count, pod_config, read_ip6, stored_on_socket, write_ip6,
};

#[cgroup_sock_addr(recvmsg6)]
pub fn restore_dns_reply_source6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    if port_from_user_port(sa.user_port) != DNS_CAPTURE_PORT {
        return 1;
    }
    let from = read_ip6(&sa.user_ip6);
    let orig = if from == LOCALHOST6 {
        stored_on_socket(&UDP_ORIG_DST6, &ctx).map(|o| (o.addr, o.port))
    } else if from == ipv4_mapped(LOCALHOST4) {
        stored_on_socket(&UDP_ORIG_DST, &ctx).map(|o| (ipv4_mapped(o.addr), o.port))
    } else {
        None
    };
    let Some((addr, port)) = orig else {
        return 1; // not from the DNS proxy, or a socket we never redirected
    };
    write_ip6(&mut sa.user_ip6, addr);
    sa.user_port = port_to_user_port(port);
    if let Some(cfg) = pod_config(unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }) {
        count(cfg, Counter::DnsReplyRestored);
    }
    1 // recvmsg programs may not refuse
}
