//! What `getpeername4/6` and `recvmsg4/6` share: a redirected client socket is shown the
//! address it dialled (or the name server it asked), not where the proxy answers.

use core::ptr;

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_addr},
    programs::SockAddrContext,
};
use interceptor_ebpf::{
    Counter, DNS_CAPTURE_PORT, OrigDst, OrigDst4, OrigDst6,
    family::{V4, V6},
    wire::{LOCALHOST4, LOCALHOST6, RawIpv6, ipv4_mapped, port_to_user_port},
};

use crate::{
    family::{KernelFamily, set_destination},
    helpers::netns_cookie,
    linux::SOCK_DGRAM,
    maps::{CLIENT_ORIG_DST4, CLIENT_ORIG_DST6, count_in, socket_of},
};

/// `getpeername4` and `getpeername6`, on a socket of family `S`.
#[inline(always)]
pub fn restore_peer_name<S: PeerFamily>(ctx: &SockAddrContext) {
    // SAFETY: the context is valid for the program's run, and this is its only borrow.
    let sa = unsafe { &mut *ctx.sock_addr };
    // SAFETY: `sk` is the member of this union the kernel sets.
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    // SAFETY: the context's socket, valid for the program's run, or null.
    let Some(sk) = (unsafe { sk.as_ref() }) else {
        return;
    };
    let orig = if sa.type_ == SOCK_DGRAM {
        // Only while still connected to where we sent it.
        if sa.user_port != port_to_user_port(DNS_CAPTURE_PORT) {
            None
        } else {
            S::dns_server(ctx, sa)
        }
    } else {
        S::dialled(sa, sk)
    };
    if let Some(orig) = orig {
        set_destination::<S>(sa, orig.addr, orig.port);
        count_in(netns_cookie(ctx), Counter::PeerNameRestored);
    }
}

/// How a client socket of a family shows its original destination.
pub trait PeerFamily: KernelFamily {
    /// The original destination of the TCP connection `sk` made, whose peer is `sa`'s.
    /// Only a connection to localhost can be one `connect` redirected: any other peer (every
    /// accepted connection from outside, for one) is answered without a storage lookup.
    fn dialled(sa: &bpf_sock_addr, sk: &bpf_sock) -> Option<OrigDst<Self::Addr>>;
    /// The name server a redirected UDP socket, connected to the DNS proxy, asked.
    fn dns_server(ctx: &SockAddrContext, sa: &bpf_sock_addr) -> Option<OrigDst<Self::Addr>>;
}

impl PeerFamily for V4 {
    #[inline(always)]
    fn dialled(sa: &bpf_sock_addr, sk: &bpf_sock) -> Option<OrigDst4> {
        if V4::user_ip(sa) != LOCALHOST4 {
            return None;
        }
        dialled::<V4>(sk)
    }
    #[inline(always)]
    fn dns_server(ctx: &SockAddrContext, _: &bpf_sock_addr) -> Option<OrigDst4> {
        CLIENT_ORIG_DST4.get(socket_of(ctx))
    }
}

impl PeerFamily for V6 {
    #[inline(always)]
    fn dialled(sa: &bpf_sock_addr, sk: &bpf_sock) -> Option<OrigDst6> {
        let peer = V6::user_ip(sa);
        if peer == LOCALHOST6 {
            dialled::<V6>(sk)
        } else if peer == ipv4_mapped(LOCALHOST4) {
            // An IPv4 connection of a dual-stack socket: recorded as IPv4.
            dialled::<V4>(sk).map(mapped)
        } else {
            None
        }
    }
    #[inline(always)]
    fn dns_server(ctx: &SockAddrContext, sa: &bpf_sock_addr) -> Option<OrigDst6> {
        dns_server6(ctx, V6::user_ip(sa))
    }
}

/// The original destination of the TCP connection (of family `F`) the client socket `sk`
/// made, stored on it when `connect` redirected it.
#[inline(always)]
fn dialled<F: KernelFamily>(sk: &bpf_sock) -> Option<OrigDst<F::Addr>> {
    F::client_orig_dst().get(ptr::from_ref(sk).cast_mut().cast())
}

/// The name server a redirected UDP socket asked, as an IPv6 socket shows it, when `from` is
/// where the DNS proxy answers: `::1`, or `::ffff:127.0.0.1` on a dual-stack socket speaking
/// IPv4 (then the server is `::ffff:<the IPv4 server>`).
#[inline(always)]
pub fn dns_server6(ctx: &SockAddrContext, from: RawIpv6) -> Option<OrigDst6> {
    if from == LOCALHOST6 {
        CLIENT_ORIG_DST6.get(socket_of(ctx))
    } else if from == ipv4_mapped(LOCALHOST4) {
        CLIENT_ORIG_DST4.get(socket_of(ctx)).map(mapped)
    } else {
        None
    }
}

/// An IPv4 destination as a dual-stack socket sees it: `::ffff:a.b.c.d`.
#[inline(always)]
fn mapped(orig: OrigDst4) -> OrigDst6 {
    OrigDst::new(ipv4_mapped(orig.addr), orig.port)
}
