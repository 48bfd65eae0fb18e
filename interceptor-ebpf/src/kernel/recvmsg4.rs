//! `cgroup/recvmsg4`: a reply the DNS proxy sends from 127.0.0.1:15053 is shown to the
//! application as coming from the name server it asked; resolvers drop answers from any other
//! address (glibc checks the source against its name servers).

use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_netns_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use interceptor_ebpf::{
    Counter, DNS_CAPTURE_PORT,
    wire::{LOCALHOST4, port_from_user_port, port_to_user_port},
};

use crate::maps::{UDP_ORIG_DST, count, pod_config, stored_on_socket};

#[cgroup_sock_addr(recvmsg4)]
pub fn restore_dns_reply_source4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.user_ip4 != LOCALHOST4 || port_from_user_port(sa.user_port) != DNS_CAPTURE_PORT {
        return 1;
    }
    let Some(orig) = stored_on_socket(&UDP_ORIG_DST, &ctx) else {
        return 1; // a socket we never redirected talks to 15053 itself
    };
    sa.user_ip4 = orig.addr;
    sa.user_port = port_to_user_port(orig.port);
    if let Some(cfg) = pod_config(unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }) {
        count(cfg, Counter::DnsReplyRestored);
    }
    1 // recvmsg programs may not refuse
}
