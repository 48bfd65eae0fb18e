//! `cgroup/getpeername6`: the IPv6 side of `getpeername4`. A dual-stack socket redirected to
//! `::ffff:127.0.0.1` is an IPv4 connection and is told its dialled `::ffff:a.b.c.d`.

use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_netns_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use interceptor_ebpf::{
    Counter,
    wire::{ipv4_from_mapped, ipv4_mapped, port_to_user_port},
};

use crate::maps::{
    ORIG_DST_BY_TUPLE, ORIG_DST6_BY_TUPLE, count, pod_config, read_ip6, tuple_from_client_side,
    tuple6_from_client_side, write_ip6,
};

#[cgroup_sock_addr(getpeername6)]
pub fn restore_peer_name6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    unsafe {
        let sa = &mut *ctx.sock_addr;
        let sk = sa.__bindgen_anon_1.sk;
        if sk.is_null() {
            return 1;
        }
        let netns = bpf_get_netns_cookie(ctx.as_ptr());
        let restored = if ipv4_from_mapped(read_ip6(&(*sk).dst_ip6)).is_some() {
            // An IPv4-mapped peer: the bpf_sock's IPv4 fields hold the IPv4 connection.
            ORIG_DST_BY_TUPLE
                .get(&tuple_from_client_side(netns, &*sk))
                .map(|orig| (ipv4_mapped(orig.addr), orig.port))
        } else {
            ORIG_DST6_BY_TUPLE
                .get(&tuple6_from_client_side(netns, &*sk))
                .map(|orig| (orig.addr, orig.port))
        };
        if let Some((addr, port)) = restored {
            write_ip6(&mut sa.user_ip6, addr);
            sa.user_port = port_to_user_port(port);
            if let Some(cfg) = pod_config(netns) {
                count(cfg, Counter::PeerNameRestored);
            }
        }
    }
    1
}
