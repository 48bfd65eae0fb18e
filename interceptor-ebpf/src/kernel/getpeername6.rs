//! `cgroup/getpeername6`: the IPv6 side of `getpeername4`. A dual-stack socket redirected to
//! `::ffff:127.0.0.1` is an IPv4 connection and is told its dialled `::ffff:a.b.c.d`; a
//! connected DNS socket is told the name server it asked, not `[::1]:15053`.

use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_netns_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use interceptor_ebpf::{
    Counter, DNS_CAPTURE_PORT,
    wire::{LOCALHOST4, LOCALHOST6, RawIpv6, ipv4_from_mapped, ipv4_mapped, port_to_user_port},
};

use crate::maps::{
    ORIG_DST_BY_TUPLE, ORIG_DST6_BY_TUPLE, UDP_ORIG_DST, UDP_ORIG_DST6, count, pod_config,
    read_ip6, stored_on_socket, tuple_from_client_side, tuple6_from_client_side, write_ip6,
};

const SOCK_DGRAM: u32 = 2;

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
        let restored: Option<(RawIpv6, u16)> = if sa.type_ == SOCK_DGRAM {
            // Only while still connected to where we sent it.
            let peer = read_ip6(&sa.user_ip6);
            if sa.user_port != port_to_user_port(DNS_CAPTURE_PORT) {
                None
            } else if peer == LOCALHOST6 {
                stored_on_socket(&UDP_ORIG_DST6, &ctx).map(|o| (o.addr, o.port))
            } else if peer == ipv4_mapped(LOCALHOST4) {
                stored_on_socket(&UDP_ORIG_DST, &ctx).map(|o| (ipv4_mapped(o.addr), o.port))
            } else {
                None
            }
        } else if ipv4_from_mapped(read_ip6(&(*sk).dst_ip6)).is_some() {
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
