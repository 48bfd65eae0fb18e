//! What `post_bind4` and `post_bind6` share: the proxy (a `-u` uid or `-g` gid) bound a TCP
//! socket to the inbound capture port. Mark the socket, so that `sockops` registers it when it
//! starts listening and the sockets it accepts are known as steered ones. The uid is checked
//! here because bind runs in the process's context, which `sockops` does not have.

use aya_ebpf::{EbpfContext as _, programs::SockContext};
use interceptor_ebpf::{CaptureMark, wire::port_from_sock_src};

use crate::{
    helpers::{caller_ids, netns_cookie},
    linux::IPPROTO_TCP,
    maps::{CAPTURE_SOCKETS, pod_config},
};

#[inline(always)]
pub fn mark_if_capture_listener(ctx: &SockContext) {
    // SAFETY: the context is the socket, valid for the program's run.
    let sk = unsafe { &*ctx.sock };
    if sk.protocol != IPPROTO_TCP {
        return;
    }
    let netns = netns_cookie(ctx);
    let Some(cfg) = pod_config(netns) else {
        return;
    };
    if port_from_sock_src(sk.src_port) != cfg.inbound_capture_port {
        return;
    }
    let (uid, gid) = caller_ids();
    if cfg.is_proxy_uid(uid) || cfg.is_proxy_gid(gid) {
        let mut mark = CaptureMark { netns };
        CAPTURE_SOCKETS.get_or_insert(ctx.as_ptr(), &mut mark);
    }
}
