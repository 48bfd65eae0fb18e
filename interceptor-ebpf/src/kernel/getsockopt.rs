//! `cgroup/getsockopt`: answer `getsockopt(SOL_IP, SO_ORIGINAL_DST)` on the proxy's accepted
//! socket as netfilter's `getorigdst()` does: a 16-byte `sockaddr_in` and 0, or ENOPROTOOPT
//! (not TCP), EINVAL (buffer under 16 bytes), ENOENT (no such connection). Likewise
//! `getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)` on an IPv6 socket, as `ipv6_getorigdst()`
//! does, with a 28-byte `sockaddr_in6`. Every other option, and sockets of pods we do not
//! manage, pass through untouched.
//!
//! Two kinds of socket have an original destination: the proxy's end of a connection that
//! `connect4`/`connect6` redirected (looked up by 4-tuple), and a connection `sk_lookup` steered
//! to a capture listener (IPv4 or IPv6), whose destination was never changed: its own local
//! address, as conntrack would report it after an iptables REDIRECT.
//!
//! As with netfilter, an IPv4 connection accepted on a dual-stack listener (an IPv6 socket
//! with IPv4-mapped addresses) answers `SOL_IP` with the IPv4 destination, and `SOL_IPV6`
//! with ENOENT.

use core::{mem::size_of, ptr};

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sockopt},
    macros::cgroup_sockopt,
    programs::SockoptContext,
};
use interceptor_ebpf::{
    Counter, OrigDst, PodConfig,
    family::{V4, V6},
    wire::{ipv4_from_mapped, port_from_sock_src, sin_port},
};

use crate::{
    family::{KernelFamily, tuple_from_server_side},
    helpers::netns_cookie,
    linux::{
        AF_INET, AF_INET6, EFAULT, EINVAL, ENOENT, ENOPROTOOPT, IP6T_SO_ORIGINAL_DST, IPPROTO_TCP,
        PAGE_SIZE, SO_ORIGINAL_DST, SOL_IP, SOL_IPV6, SockaddrIn, SockaddrIn6,
    },
    maps::{CAPTURE_SOCKETS, count, pod_config},
    trace::{self, EventAddr},
};

#[cgroup_sockopt(getsockopt)]
pub fn answer_original_dst(ctx: SockoptContext) -> i32 {
    let so = Sockopt::of(&ctx);
    if so.level() == SOL_IPV6 {
        answer::<V6>(&ctx, so);
    } else {
        answer::<V4>(&ctx, so);
    }
    1
}

/// netfilter's original-destination option of a family, and its answer.
trait OriginalDst: KernelFamily {
    /// `SOL_IP` / `SOL_IPV6`.
    const LEVEL: i32;
    /// `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`.
    const OPTNAME: i32;
    /// `struct sockaddr_in` / `struct sockaddr_in6`.
    type Sockaddr;
    fn sockaddr(orig: OrigDst<Self::Addr>) -> Self::Sockaddr;
    /// Whether netfilter would be asked at all on `sk`.
    fn asked_on(sk: &bpf_sock) -> bool;
    /// `sk`'s local address, if its connection is of this family.
    fn local_addr(sk: &bpf_sock) -> Option<Self::Addr>;
}

impl OriginalDst for V4 {
    const LEVEL: i32 = SOL_IP;
    const OPTNAME: i32 = SO_ORIGINAL_DST;
    type Sockaddr = SockaddrIn;
    #[inline(always)]
    fn sockaddr(orig: OrigDst<Self::Addr>) -> SockaddrIn {
        SockaddrIn {
            family: AF_INET as u16,
            port: sin_port(orig.port),
            addr: orig.addr,
            zero: [0; 8],
        }
    }
    #[inline(always)]
    fn asked_on(_: &bpf_sock) -> bool {
        true
    }
    /// An IPv4 socket, or an IPv4 connection a dual-stack socket accepted.
    #[inline(always)]
    fn local_addr(sk: &bpf_sock) -> Option<Self::Addr> {
        let ipv4 = sk.family == AF_INET
            || (sk.family == AF_INET6 && ipv4_from_mapped(V6::sock_src(sk)).is_some());
        if ipv4 { Some(sk.src_ip4) } else { None }
    }
}

impl OriginalDst for V6 {
    const LEVEL: i32 = SOL_IPV6;
    const OPTNAME: i32 = IP6T_SO_ORIGINAL_DST;
    type Sockaddr = SockaddrIn6;
    /// netfilter fills flowinfo from the socket's own flow label and the scope id from its
    /// bound device for link-local addresses; neither is known here, and both are 0 for the
    /// usual unbound, unlabelled socket.
    #[inline(always)]
    fn sockaddr(orig: OrigDst<Self::Addr>) -> SockaddrIn6 {
        SockaddrIn6 {
            family: AF_INET6 as u16,
            port: sin_port(orig.port),
            flowinfo: 0,
            addr: orig.addr,
            scope_id: 0,
        }
    }
    /// On an IPv4 socket the kernel never reaches netfilter for SOL_IPV6: leave its error.
    #[inline(always)]
    fn asked_on(sk: &bpf_sock) -> bool {
        sk.family == AF_INET6
    }
    /// An IPv6 connection (not an IPv4 one on a dual-stack socket: netfilter has no IPv6
    /// original destination for it either).
    #[inline(always)]
    fn local_addr(sk: &bpf_sock) -> Option<Self::Addr> {
        let local = V6::sock_src(sk);
        if sk.family != AF_INET6 || ipv4_from_mapped(local).is_some() {
            return None;
        }
        Some(local)
    }
}

/// `getorigdst()`'s (or `ipv6_getorigdst()`'s) checks, in its order, then the answer.
#[inline(always)]
fn answer<F: OriginalDst>(ctx: &SockoptContext, mut so: Sockopt<'_>)
where
    F::Addr: EventAddr,
{
    if so.level() != F::LEVEL || so.optname() != F::OPTNAME || so.retval() == 0 {
        return; // not ours, or the kernel (conntrack) already answered
    }
    let netns = netns_cookie(ctx);
    let Some(cfg) = pod_config(netns) else {
        return;
    };
    let Some(sk) = so.socket() else {
        return;
    };
    if !F::asked_on(sk) {
        return;
    }
    if sk.protocol != IPPROTO_TCP {
        so.set_retval(-ENOPROTOOPT);
        trace::orig_dst_failed::<F>(netns, sk, ENOPROTOOPT);
        return;
    }
    let len = size_of::<F::Sockaddr>() as i32;
    let optlen = so.optlen();
    if optlen < len {
        so.set_retval(-EINVAL);
        trace::orig_dst_failed::<F>(netns, sk, EINVAL);
        return;
    }
    let Some(orig) = original_dst::<F>(netns, cfg, sk) else {
        count(cfg, Counter::OrigDstMiss);
        so.set_retval(-ENOENT);
        trace::orig_dst_failed::<F>(netns, sk, ENOENT);
        return;
    };
    let Some(out) = so.buffer::<F::Sockaddr>() else {
        so.set_retval(-EFAULT);
        return;
    };
    // SAFETY: `buffer` checked that the option's buffer holds a whole `Sockaddr`.
    unsafe { ptr::write_volatile(out, F::sockaddr(orig)) };
    // netfilter leaves the caller's length as it was; the kernel only hands a program a
    // buffer of at most a page, so a longer one is reported as the bytes written.
    if optlen > PAGE_SIZE {
        so.set_optlen(len);
    }
    so.set_retval(0);
    count(cfg, Counter::OrigDstHit);
}

/// The original destination of the proxy's accepted socket `sk`: that of the connection
/// `connect4`/`connect6` redirected (stored on it by `sockops` when it was established, or
/// still on its way if the proxy asks that early), or of the one `sk_lookup` steered.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys by reference, as `rule_sets::MapSets::has_port` (measured)"
)]
fn original_dst<F: OriginalDst>(
    netns: u64,
    cfg: &PodConfig,
    sk: &bpf_sock,
) -> Option<OrigDst<F::Addr>> {
    if let Some(orig) = F::proxy_orig_dst().get(ptr::from_ref(sk).cast_mut().cast()) {
        return Some(orig);
    }
    let key = tuple_from_server_side::<F>(netns, sk);
    // SAFETY: the entry is copied out at once.
    match unsafe { F::in_flight().get(&key) } {
        Some(entry) => Some(entry.orig),
        None => steered_destination::<F>(netns, cfg, sk),
    }
}

/// The destination of a connection `sk_lookup` steered: a socket accepted from this pod's
/// capture listener (it carries the listener's cloned mark) whose local port is not the capture
/// port (a connection made to the capture port itself has no other destination).
#[inline(always)]
fn steered_destination<F: OriginalDst>(
    netns: u64,
    cfg: &PodConfig,
    sk: &bpf_sock,
) -> Option<OrigDst<F::Addr>> {
    match CAPTURE_SOCKETS.get(ptr::from_ref(sk).cast_mut().cast()) {
        Some(mark) if mark.netns == netns => {}
        _ => return None,
    }
    let port = port_from_sock_src(sk.src_port);
    if port == cfg.inbound_capture_port {
        return None;
    }
    Some(OrigDst::new(F::local_addr(sk)?, port))
}

/// The program's `bpf_sockopt`, read and written one field at a time: the verifier rejects
/// wider accesses, and LLVM merges adjacent plain stores into one (`optlen` and `retval`).
struct Sockopt<'a>(&'a mut bpf_sockopt);

impl Sockopt<'_> {
    #[inline(always)]
    fn of(ctx: &SockoptContext) -> Self {
        // SAFETY: the context is valid for the program's run, and this is its only borrow.
        Self(unsafe { &mut *ctx.sockopt })
    }

    #[inline(always)]
    fn level(&self) -> i32 {
        self.0.level
    }

    #[inline(always)]
    fn optname(&self) -> i32 {
        self.0.optname
    }

    #[inline(always)]
    fn optlen(&self) -> i32 {
        self.0.optlen
    }

    #[inline(always)]
    fn retval(&self) -> i32 {
        self.0.retval
    }

    /// The socket asked (a full socket, which the verifier checks).
    #[inline(always)]
    fn socket<'s>(&self) -> Option<&'s bpf_sock> {
        // SAFETY: `sk` is the member of this union the kernel sets.
        let sk = unsafe { self.0.__bindgen_anon_1.sk };
        // SAFETY: a socket valid for the program's run, or null.
        unsafe { sk.as_ref() }
    }

    /// The option's buffer, if it holds a whole `T`.
    #[inline(always)]
    fn buffer<T>(&self) -> Option<*mut T> {
        // SAFETY: `optval` is the member of this union the kernel sets.
        let start = unsafe { self.0.__bindgen_anon_2.optval }.cast::<u8>();
        // SAFETY: `optval_end` is the member of this union the kernel sets.
        let end = unsafe { self.0.__bindgen_anon_3.optval_end }.cast::<u8>();
        if start.wrapping_add(size_of::<T>()) > end {
            return None;
        }
        Some(start.cast())
    }

    #[inline(always)]
    fn set_retval(&mut self, retval: i32) {
        // SAFETY: a mutable reference is valid for writes.
        unsafe { ptr::write_volatile(&mut self.0.retval, retval) };
    }

    #[inline(always)]
    fn set_optlen(&mut self, optlen: i32) {
        // SAFETY: a mutable reference is valid for writes.
        unsafe { ptr::write_volatile(&mut self.0.optlen, optlen) };
    }
}
