//! What the programs do differently per address family: which maps hold a family's original
//! destinations, set ranges and pod addresses, and where the kernel's contexts keep its
//! addresses. Code
//! generic over `KernelFamily` is inlined once per family into the same straight-line code a
//! hand-written twin would be.
//!
//! The family is the connection's, not the socket's: a dual-stack IPv6 socket connected to an
//! IPv4-mapped address makes an IPv4 connection (its `bpf_sock` IPv4 fields are set, and the
//! proxy accepts it as IPv4), which is `V4` throughout.

use aya_ebpf::{
    bindings::{bpf_sk_lookup, bpf_sock, bpf_sock_addr, bpf_sock_ops},
    maps::{HashMap, LpmTrie},
};
use interceptor_ebpf::{
    CidrKey, InFlight, OrigDst, SockTuple,
    family::{Family, V4, V6},
    wire::{RawIpv6, port_from_sock_dst, port_from_sock_src, port_to_user_port},
};

use crate::maps::{
    CIDR4, CIDR6, CLIENT_ORIG_DST4, CLIENT_ORIG_DST6, IN_FLIGHT4, IN_FLIGHT6, POD_ADDRS4,
    POD_ADDRS6, PROXY_ORIG_DST4, PROXY_ORIG_DST6, SocketStorage,
};

/// An address family as the programs see it.
pub trait KernelFamily: Family {
    /// A redirected application socket's original destination, stored on the socket.
    fn client_orig_dst() -> &'static SocketStorage<OrigDst<Self::Addr>>;
    /// The proxy's accepted socket's original destination, stored on the socket.
    fn proxy_orig_dst() -> &'static SocketStorage<OrigDst<Self::Addr>>;
    /// Connection -> original destination, between the two sockets.
    fn in_flight() -> &'static HashMap<SockTuple<Self::Addr>, InFlight<Self::Addr>>;
    /// A pod's address -> its netns cookie.
    fn pod_addrs() -> &'static HashMap<Self::Addr, u64>;
    /// The `-i`, `-x` and route ranges of every pod.
    fn cidrs() -> &'static LpmTrie<CidrKey<Self::Addr>, u8>;

    /// `bpf_sock.src_ip4` / `src_ip6`: the socket's local address.
    fn sock_src(sk: &bpf_sock) -> Self::Addr;
    /// `bpf_sock.dst_ip4` / `dst_ip6`: the socket's peer.
    fn sock_dst(sk: &bpf_sock) -> Self::Addr;
    /// `bpf_sock_ops.local_ip4` / `local_ip6`.
    fn sock_ops_local(ops: &bpf_sock_ops) -> Self::Addr;
    /// `bpf_sock_ops.remote_ip4` / `remote_ip6`.
    fn sock_ops_remote(ops: &bpf_sock_ops) -> Self::Addr;
    /// `bpf_sk_lookup.remote_ip4` / `remote_ip6`.
    fn lookup_remote(lookup: &bpf_sk_lookup) -> Self::Addr;
    /// `bpf_sk_lookup.local_ip4` / `local_ip6`: the address the connection arrives for.
    fn lookup_local(lookup: &bpf_sk_lookup) -> Self::Addr;
    /// `bpf_sock_addr.user_ip4` / `user_ip6`: where the socket connects or sends to, or (in
    /// `getpeername` and `recvmsg`) its peer.
    fn user_ip(sa: &bpf_sock_addr) -> Self::Addr;
    /// Writes `bpf_sock_addr.user_ip4` / `user_ip6`.
    fn set_user_ip(sa: &mut bpf_sock_addr, addr: Self::Addr);
}

impl KernelFamily for V4 {
    #[inline(always)]
    fn client_orig_dst() -> &'static SocketStorage<OrigDst<Self::Addr>> {
        &CLIENT_ORIG_DST4
    }
    #[inline(always)]
    fn proxy_orig_dst() -> &'static SocketStorage<OrigDst<Self::Addr>> {
        &PROXY_ORIG_DST4
    }
    #[inline(always)]
    fn in_flight() -> &'static HashMap<SockTuple<Self::Addr>, InFlight<Self::Addr>> {
        &IN_FLIGHT4
    }
    #[inline(always)]
    fn pod_addrs() -> &'static HashMap<Self::Addr, u64> {
        &POD_ADDRS4
    }
    #[inline(always)]
    fn cidrs() -> &'static LpmTrie<CidrKey<Self::Addr>, u8> {
        &CIDR4
    }
    #[inline(always)]
    fn sock_src(sk: &bpf_sock) -> Self::Addr {
        sk.src_ip4
    }
    #[inline(always)]
    fn sock_dst(sk: &bpf_sock) -> Self::Addr {
        sk.dst_ip4
    }
    // Read one at a time: the two sit side by side, and LLVM would merge two plain loads
    // into one 8-byte access the verifier refuses.
    #[inline(always)]
    fn sock_ops_local(ops: &bpf_sock_ops) -> Self::Addr {
        read_word(&ops.local_ip4)
    }
    #[inline(always)]
    fn sock_ops_remote(ops: &bpf_sock_ops) -> Self::Addr {
        read_word(&ops.remote_ip4)
    }
    #[inline(always)]
    fn lookup_remote(lookup: &bpf_sk_lookup) -> Self::Addr {
        lookup.remote_ip4
    }
    #[inline(always)]
    fn lookup_local(lookup: &bpf_sk_lookup) -> Self::Addr {
        lookup.local_ip4
    }
    #[inline(always)]
    fn user_ip(sa: &bpf_sock_addr) -> Self::Addr {
        sa.user_ip4
    }
    #[inline(always)]
    fn set_user_ip(sa: &mut bpf_sock_addr, addr: Self::Addr) {
        sa.user_ip4 = addr;
    }
}

// The IPv6 address fields are read and written one 32-bit word at a time at fixed offsets:
// the verifier allows no wider access to them, and refuses the copy through a derived pointer
// that a plain array read may compile to.
impl KernelFamily for V6 {
    #[inline(always)]
    fn client_orig_dst() -> &'static SocketStorage<OrigDst<Self::Addr>> {
        &CLIENT_ORIG_DST6
    }
    #[inline(always)]
    fn proxy_orig_dst() -> &'static SocketStorage<OrigDst<Self::Addr>> {
        &PROXY_ORIG_DST6
    }
    #[inline(always)]
    fn in_flight() -> &'static HashMap<SockTuple<Self::Addr>, InFlight<Self::Addr>> {
        &IN_FLIGHT6
    }
    #[inline(always)]
    fn pod_addrs() -> &'static HashMap<Self::Addr, u64> {
        &POD_ADDRS6
    }
    #[inline(always)]
    fn cidrs() -> &'static LpmTrie<CidrKey<Self::Addr>, u8> {
        &CIDR6
    }
    #[inline(always)]
    fn sock_src(sk: &bpf_sock) -> Self::Addr {
        read_ip6(&sk.src_ip6)
    }
    #[inline(always)]
    fn sock_dst(sk: &bpf_sock) -> Self::Addr {
        read_ip6(&sk.dst_ip6)
    }
    #[inline(always)]
    fn sock_ops_local(ops: &bpf_sock_ops) -> Self::Addr {
        read_ip6(&ops.local_ip6)
    }
    #[inline(always)]
    fn sock_ops_remote(ops: &bpf_sock_ops) -> Self::Addr {
        read_ip6(&ops.remote_ip6)
    }
    #[inline(always)]
    fn lookup_remote(lookup: &bpf_sk_lookup) -> Self::Addr {
        read_ip6(&lookup.remote_ip6)
    }
    #[inline(always)]
    fn lookup_local(lookup: &bpf_sk_lookup) -> Self::Addr {
        read_ip6(&lookup.local_ip6)
    }
    #[inline(always)]
    fn user_ip(sa: &bpf_sock_addr) -> Self::Addr {
        read_ip6(&sa.user_ip6)
    }
    #[inline(always)]
    fn set_user_ip(sa: &mut bpf_sock_addr, addr: Self::Addr) {
        let [a, b, c, d] = &mut sa.user_ip6;
        write_word(a, addr[0]);
        write_word(b, addr[1]);
        write_word(c, addr[2]);
        write_word(d, addr[3]);
    }
}

/// An IPv6 address field of a context, one 32-bit access per word (what the verifier allows).
#[inline(always)]
pub fn read_ip6(words: &[u32; 4]) -> RawIpv6 {
    [
        read_word(&words[0]),
        read_word(&words[1]),
        read_word(&words[2]),
        read_word(&words[3]),
    ]
}

#[inline(always)]
fn read_word(word: &u32) -> u32 {
    // SAFETY: a reference is valid for reads; volatile keeps the access 32 bits wide.
    unsafe { core::ptr::read_volatile(word) }
}

#[inline(always)]
fn write_word(word: &mut u32, value: u32) {
    // SAFETY: a mutable reference is valid for writes; volatile keeps LLVM from merging the
    // stores into an access the verifier rejects.
    unsafe { core::ptr::write_volatile(word, value) }
}

/// Where `sa` connects or sends to: `addr`:`port` (port in host order).
#[inline(always)]
pub fn set_destination<F: KernelFamily>(sa: &mut bpf_sock_addr, addr: F::Addr, port: u16) {
    F::set_user_ip(sa, addr);
    sa.user_port = port_to_user_port(port);
}

/// Connection key from a `bpf_sock` seen on the server's side (src = server), e.g. the
/// proxy's accepted socket.
#[inline(always)]
pub fn tuple_from_server_side<F: KernelFamily>(netns: u64, sk: &bpf_sock) -> SockTuple<F::Addr> {
    SockTuple {
        netns,
        client_addr: F::sock_dst(sk),
        server_addr: F::sock_src(sk),
        client_port: port_from_sock_dst(sk.dst_port),
        server_port: port_from_sock_src(sk.src_port),
        _pad: 0,
    }
}
