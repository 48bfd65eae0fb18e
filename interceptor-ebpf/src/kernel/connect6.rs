//! `cgroup/connect6`: the IPv6 side of `connect4`. A dual-stack socket dialling an IPv4-mapped
//! address (`::ffff:a.b.c.d`) makes an IPv4 connection, which istio-iptables would see in its
//! IPv4 table: it is decided by the IPv4 rules, recorded as an IPv4 destination and sent to
//! `::ffff:127.0.0.1`. Every other destination is decided by the IPv6 rules and sent to `::1`.
//!
//! TCP only: UDP over IPv6 (DNS capture's part) has no `sendmsg6`/`recvmsg6` counterpart yet.

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
    Counter, OrigDst4, OrigDst6, PodConfig,
    decision::{Connect4, Connect6, Proto, Verdict, decide_outbound4, decide_outbound6},
    wire::{
        LOCALHOST4, LOCALHOST6, RawIpv6, UNSPECIFIED4, UNSPECIFIED6, ipv4_from_mapped, ipv4_mapped,
        ipv6_octets, port_from_user_port, port_to_user_port,
    },
};

use crate::maps::{
    MapSets, ORIG_DST_BY_COOKIE, ORIG_DST6_BY_COOKIE, count, pod_config, read_ip6, write_ip6,
};

const SOCK_STREAM: u32 = 1;

#[cgroup_sock_addr(connect6)]
pub fn redirect_connect6(ctx: SockAddrContext) -> i32 {
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
    let dst = read_ip6(&sa.user_ip6);
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    let src = if sk.is_null() {
        UNSPECIFIED6
    } else {
        read_ip6(unsafe { &(*sk).src_ip6 })
    };
    let uid_gid = bpf_get_current_uid_gid();
    let (uid, gid) = (uid_gid as u32, (uid_gid >> 32) as u32);
    let dst_port = port_from_user_port(sa.user_port);

    if let Some(dst4) = ipv4_from_mapped(dst) {
        let conn = Connect4 {
            proto: Proto::Tcp,
            dst: dst4,
            dst_port,
            src: ipv4_from_mapped(src).unwrap_or(UNSPECIFIED4),
            uid,
            gid,
        };
        let Some(port) = settle(cfg, decide_outbound4(cfg, &conn, &MapSets)) else {
            return;
        };
        // The connection is IPv4 from here on: sockops and the proxy's accepted socket see
        // IPv4 addresses, so the destination goes where the IPv4 path looks for it.
        let orig = OrigDst4 {
            addr: dst4,
            port: dst_port,
            _pad: 0,
        };
        if ORIG_DST_BY_COOKIE.insert(&cookie(ctx), &orig, 0).is_err() {
            count(cfg, Counter::OrigDstLost);
        }
        rewrite(sa, ipv4_mapped(LOCALHOST4), port);
        debug!(
            ctx,
            "redirect {:i}:{} (mapped) -> ::ffff:127.0.0.1:{}",
            u32::from_be(dst4),
            dst_port,
            port
        );
        return;
    }

    let conn = Connect6 {
        proto: Proto::Tcp,
        dst,
        dst_port,
        src,
        uid,
        gid,
    };
    let Some(port) = settle(cfg, decide_outbound6(cfg, &conn, &MapSets)) else {
        return;
    };
    let orig = OrigDst6 {
        addr: dst,
        port: dst_port,
        _pad: 0,
    };
    if ORIG_DST6_BY_COOKIE.insert(&cookie(ctx), &orig, 0).is_err() {
        count(cfg, Counter::OrigDstLost);
    }
    rewrite(sa, LOCALHOST6, port);
    debug!(
        ctx,
        "redirect [{:i}]:{} -> [::1]:{}",
        ipv6_octets(dst),
        dst_port,
        port
    );
}

/// Counts the verdict; the port to redirect to, if it is a redirect.
#[inline(always)]
fn settle(cfg: &PodConfig, verdict: Verdict) -> Option<u16> {
    match verdict {
        Verdict::Direct(reason) => {
            count(cfg, reason);
            None
        }
        Verdict::Redirect { port, counter } => {
            count(cfg, counter);
            Some(port)
        }
    }
}

#[inline(always)]
fn cookie(ctx: &SockAddrContext) -> u64 {
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

#[inline(always)]
fn rewrite(sa: &mut aya_ebpf::bindings::bpf_sock_addr, addr: RawIpv6, port: u16) {
    write_ip6(&mut sa.user_ip6, addr);
    sa.user_port = port_to_user_port(port);
}
