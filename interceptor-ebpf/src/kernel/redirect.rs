//! The decide-and-rewrite step `connect4`/`connect6` and `sendmsg4`/`sendmsg6` share: one
//! decision per connect (TCP, or UDP DNS) or per unconnected datagram, then the destination is
//! rewritten in place before the kernel routes it (no NAT, no per-packet work afterwards).
//!
//! `sendmsg4` also runs for a dual-stack IPv6 socket sending to `::ffff:a.b.c.d`: the kernel
//! hands such a datagram to its IPv4 path, with the unmapped address, before `sendmsg6` would
//! see it.
//!
//! On an IPv6 socket, a destination `::ffff:a.b.c.d` (a dual-stack socket speaking IPv4) makes
//! an IPv4 connection, which istio-iptables would see in its IPv4 table: it is decided by the
//! IPv4 rules, recorded as an IPv4 destination (where the IPv4 programs look for it) and sent to
//! `::ffff:127.0.0.1`. Every other destination is decided by the IPv6 rules and sent to `::1`.

use aya_ebpf::{bindings::bpf_sock_addr, programs::SockAddrContext};
use aya_log_ebpf::debug;
use interceptor_ebpf::{
    Counter, OrigDst, PodConfig,
    decision::{Connect, Proto, Verdict, decide_outbound, decide_outbound_by_rule},
    family::{V4, V6},
    flags,
    wire::{LOCALHOST4, LOCALHOST6, ipv4_mapped, ipv6_octets, port_from_user_port},
};

use crate::{
    family::{KernelFamily, set_destination},
    helpers::{caller_ids, netns_cookie},
    linux::{SOCK_DGRAM, SOCK_STREAM},
    maps::{count, pod_config, socket_of},
    rule_sets::MapSets,
    trace::{self, EventAddr},
};

/// Which hook runs the step on an IPv6 socket.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Connect,
    /// An unconnected datagram. The kernel never shows `sendmsg6` an IPv4-mapped destination
    /// (it sends those through `sendmsg4`), and refuses a rewrite to one.
    Sendmsg,
}

/// `connect4` and `sendmsg4`.
#[inline(always)]
pub fn decide_and_rewrite4(ctx: &SockAddrContext) {
    // SAFETY: the context is valid for the program's run, and this is its only borrow.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some((cfg, proto)) = of_pod(ctx, sa) else {
        return;
    };
    let src = bound_address::<V4>(sa);
    let conn = outbound(sa, proto, V4::user_ip(sa), src);
    if let Some(port) = redirect::<V4, V4>(ctx, sa, cfg, &conn, LOCALHOST4) {
        debug!(
            ctx,
            "redirect {:i}:{} -> 127.0.0.1:{}",
            u32::from_be(conn.dst),
            conn.dst_port,
            port
        );
    }
}

/// `connect6` and `sendmsg6`.
#[inline(always)]
pub fn decide_and_rewrite6(ctx: &SockAddrContext, hook: Hook) {
    // SAFETY: the context is valid for the program's run, and this is its only borrow.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some((cfg, proto)) = of_pod(ctx, sa) else {
        return;
    };
    let conn = outbound(sa, proto, V6::user_ip(sa), bound_address::<V6>(sa));
    if let Some(conn4) = conn.unmapped() {
        if hook == Hook::Sendmsg {
            return;
        }
        if let Some(port) = redirect::<V4, V6>(ctx, sa, cfg, &conn4, ipv4_mapped(LOCALHOST4)) {
            debug!(
                ctx,
                "redirect {:i}:{} (mapped) -> ::ffff:127.0.0.1:{}",
                u32::from_be(conn4.dst),
                conn4.dst_port,
                port
            );
        }
        return;
    }
    if let Some(port) = redirect::<V6, V6>(ctx, sa, cfg, &conn, LOCALHOST6) {
        debug!(
            ctx,
            "redirect [{:i}]:{} -> [::1]:{}",
            ipv6_octets(conn.dst),
            conn.dst_port,
            port
        );
    }
}

/// The pod's configuration and the transport, for a socket of a registered pod that may be
/// intercepted.
#[inline(always)]
fn of_pod(ctx: &SockAddrContext, sa: &bpf_sock_addr) -> Option<(&'static PodConfig, Proto)> {
    let proto = match sa.type_ {
        SOCK_STREAM => Proto::Tcp,
        SOCK_DGRAM => Proto::Udp,
        _ => return None, // never intercepted
    };
    let cfg = pod_config(netns_cookie(ctx))?; // not a registered pod: untouched
    Some((cfg, proto))
}

/// The address the socket is bound to (unspecified when unbound).
#[inline(always)]
fn bound_address<F: KernelFamily>(sa: &bpf_sock_addr) -> F::Addr {
    // SAFETY: `sk` is the member of this union the kernel sets.
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    // SAFETY: the context's socket, valid for the program's run, or null.
    match unsafe { sk.as_ref() } {
        Some(sk) => F::sock_src(sk),
        None => F::UNSPECIFIED,
    }
}

/// The connect (or datagram) to `dst` the calling process makes.
#[inline(always)]
fn outbound<A>(sa: &bpf_sock_addr, proto: Proto, dst: A, src: A) -> Connect<A> {
    let (uid, gid) = caller_ids();
    Connect {
        proto,
        dst,
        dst_port: port_from_user_port(sa.user_port),
        src,
        uid,
        gid,
    }
}

/// Decides `conn`, a connection of family `F` on a socket of family `S`; if it is redirected,
/// records its original destination and sends it to `localhost`. The port sent to, if so.
#[inline(always)]
fn redirect<F: KernelFamily, S: KernelFamily>(
    ctx: &SockAddrContext,
    sa: &mut bpf_sock_addr,
    cfg: &PodConfig,
    conn: &Connect<F::Addr>,
    localhost: S::Addr,
) -> Option<u16>
where
    F::Addr: EventAddr,
{
    // Without a tracer, the decision is made exactly as it would be with no tracing at all;
    // with one, the same decision also says which rule decided, for the event.
    let verdict = if trace::tracing() {
        let decided = decide_outbound_by_rule::<F>(cfg, conn, &MapSets);
        trace::outbound::<F>(netns_cookie(ctx), conn, &decided, F::BITS != S::BITS);
        decided.verdict
    } else {
        decide_outbound::<F>(cfg, conn, &MapSets)
    };
    let port = settle(cfg, conn.proto, verdict)?;
    let orig = OrigDst::new(conn.dst, conn.dst_port).accelerated(cfg.has(flags::ACCELERATE));
    if !record::<F>(ctx, orig) {
        count(cfg, Counter::OrigDstLost);
    }
    set_destination::<S>(sa, localhost, port);
    Some(port)
}

/// Counts the verdict (connections, not datagrams: every unconnected UDP datagram comes
/// through `sendmsg4/6`); the port to redirect to, if it is a redirect.
#[inline(always)]
fn settle(cfg: &PodConfig, proto: Proto, verdict: Verdict) -> Option<u16> {
    match verdict {
        Verdict::Direct(reason) => {
            if proto == Proto::Tcp {
                count(cfg, reason);
            }
            None
        }
        Verdict::Redirect { port, counter } => {
            count(cfg, counter);
            Some(port)
        }
    }
}

/// Records an original destination on the redirected socket itself, freed with it (TCP or
/// UDP): `getpeername4/6` and `recvmsg4/6` read it back, and for TCP `sockops` hands it to the
/// proxy's end of the connection once it is established. False when it could not be recorded.
#[inline(always)]
fn record<F: KernelFamily>(ctx: &SockAddrContext, orig: OrigDst<F::Addr>) -> bool {
    F::client_orig_dst().set(socket_of(ctx), orig)
}
