//! `cgroup/sock_create`: a process of the pod other than the proxy may not open a raw socket
//! that could carry TCP or UDP past the rules (see `raw_socket`); ping's ICMP is left alone.
//! Refused sockets fail with EPERM, as a missing capability would make them, and are counted.

use aya_ebpf::{macros::cgroup_sock, programs::SockContext};
use interceptor_ebpf::{Counter, raw_socket::refuses_socket};

use crate::{
    helpers::{caller_ids, netns_cookie},
    maps::{count, pod_config},
};

#[cgroup_sock(sock_create)]
pub fn refuse_raw_sockets(ctx: SockContext) -> i32 {
    // SAFETY: the context is the new socket, valid for the program's run.
    let sk = unsafe { &*ctx.sock };
    if sk.type_ != interceptor_ebpf::raw_socket::SOCK_RAW {
        return 1; // the common case, decided without a map lookup
    }
    let Some(cfg) = pod_config(netns_cookie(&ctx)) else {
        return 1;
    };
    let (uid, gid) = caller_ids();
    if refuses_socket(cfg, sk.type_, sk.protocol, uid, gid) {
        count(cfg, Counter::RawSocketRefused);
        return 0;
    }
    1
}
