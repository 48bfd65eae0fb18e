//! `cgroup/connect4`: decide every TCP connect of the pod once, and redirect it by rewriting
//! the destination before the kernel routes it (no NAT, no per-packet work afterwards).

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_uid_gid,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use interceptor_ebpf::{
    Counter, OrigDst4,
    decision::{Connect4, Verdict, decide_outbound4},
    wire::{LOCALHOST4, port_from_user_port, port_to_user_port},
};

use crate::maps::{MapSets, ORIG_DST_BY_COOKIE, count, pod_config};

const SOCK_STREAM: u32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn redirect_connect4(ctx: SockAddrContext) -> i32 {
    redirect(&ctx);
    1 // always let the connect proceed (to the original or the rewritten address)
}

#[inline(always)]
fn redirect(ctx: &SockAddrContext) {
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.type_ != SOCK_STREAM {
        return;
    }
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let Some(cfg) = pod_config(netns) else {
        return; // not a registered pod: untouched
    };
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    let src = if sk.is_null() {
        0
    } else {
        unsafe { (*sk).src_ip4 }
    };
    let uid_gid = bpf_get_current_uid_gid();
    let conn = Connect4 {
        dst: sa.user_ip4,
        dst_port: port_from_user_port(sa.user_port),
        src,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
    };
    match decide_outbound4(cfg, &conn, &MapSets) {
        Verdict::Direct(reason) => count(cfg, reason),
        Verdict::Redirect { port, counter } => {
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let orig = OrigDst4 {
                addr: conn.dst,
                port: conn.dst_port,
                _pad: 0,
            };
            if ORIG_DST_BY_COOKIE.insert(&cookie, &orig, 0).is_err() {
                count(cfg, Counter::OrigDstLost);
            }
            sa.user_ip4 = LOCALHOST4;
            sa.user_port = port_to_user_port(port);
            count(cfg, counter);
            debug!(
                ctx,
                "redirect {:i}:{} -> 127.0.0.1:{}",
                u32::from_be(conn.dst),
                conn.dst_port,
                port
            );
        }
    }
}
