//! `cgroup/getpeername4`: a redirected application asks who it is talking to and is told the
//! address it dialled, not 127.0.0.1:15001 (or 127.0.0.1:15053 for a connected DNS socket).

use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_netns_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use interceptor_ebpf::{Counter, DNS_CAPTURE_PORT, OrigDst4, wire::port_to_user_port};

use crate::maps::{
    ORIG_DST_BY_TUPLE, UDP_ORIG_DST, count, pod_config, stored_on_socket, tuple_from_client_side,
};

const SOCK_DGRAM: u32 = 2;

#[cgroup_sock_addr(getpeername4)]
pub fn restore_peer_name4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    unsafe {
        let sa = &mut *ctx.sock_addr;
        let sk = sa.__bindgen_anon_1.sk;
        if sk.is_null() {
            return 1;
        }
        let netns = bpf_get_netns_cookie(ctx.as_ptr());
        let orig: Option<OrigDst4> = if sa.type_ == SOCK_DGRAM {
            // Only while still connected to where we sent it.
            if sa.user_port != port_to_user_port(DNS_CAPTURE_PORT) {
                None
            } else {
                stored_on_socket(&UDP_ORIG_DST, &ctx)
            }
        } else {
            ORIG_DST_BY_TUPLE
                .get(&tuple_from_client_side(netns, &*sk))
                .copied()
        };
        if let Some(orig) = orig {
            sa.user_ip4 = orig.addr;
            sa.user_port = port_to_user_port(orig.port);
            if let Some(cfg) = pod_config(netns) {
                count(cfg, Counter::PeerNameRestored);
            }
        }
    }
    1
}
