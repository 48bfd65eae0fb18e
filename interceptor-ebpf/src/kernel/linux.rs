//! Linux ABI the programs use that `aya_ebpf::bindings` lacks (it is generated from the BPF
//! UAPI header alone), by the kernel's names, typed as the context fields they are compared
//! with. Values from the kernel's UAPI headers, as on x86_64 and arm64 (MIPS numbers
//! `SOCK_STREAM`/`SOCK_DGRAM` the other way round).

/// `AF_INET` (include/linux/socket.h), as in `bpf_sock.family`, `bpf_sock_ops.family`,
/// `bpf_sk_lookup.family`.
pub const AF_INET: u32 = 2;
/// `AF_INET6` (include/linux/socket.h).
pub const AF_INET6: u32 = 10;

/// `SOCK_STREAM` (include/linux/net.h, `enum sock_type`), as in `bpf_sock_addr.type`.
pub const SOCK_STREAM: u32 = 1;
/// `SOCK_DGRAM` (include/linux/net.h).
pub const SOCK_DGRAM: u32 = 2;

/// `IPPROTO_TCP` (include/uapi/linux/in.h), as in `bpf_sock.protocol`,
/// `bpf_sk_lookup.protocol`.
pub const IPPROTO_TCP: u32 = 6;

/// `SOL_IP`, `SOL_IPV6` (include/linux/socket.h), as in `bpf_sockopt.level`: defined with the
/// raw-socket decisions, which the host's tests run too.
pub use interceptor_ebpf::raw_socket::{SOL_IP, SOL_IPV6};
/// `SO_ORIGINAL_DST` (include/uapi/linux/netfilter_ipv4.h), at level `SOL_IP`.
pub const SO_ORIGINAL_DST: i32 = 80;
/// `IP6T_SO_ORIGINAL_DST` (include/uapi/linux/netfilter_ipv6/ip6_tables.h), at `SOL_IPV6`.
pub const IP6T_SO_ORIGINAL_DST: i32 = 80;

/// `ENOENT` (include/uapi/asm-generic/errno-base.h), as in `bpf_sockopt.retval` (negated).
pub const ENOENT: i32 = 2;
/// `EFAULT` (include/uapi/asm-generic/errno-base.h).
pub const EFAULT: i32 = 14;
/// `EINVAL` (include/uapi/asm-generic/errno-base.h).
pub const EINVAL: i32 = 22;
/// `ENOPROTOOPT` (include/uapi/asm-generic/errno.h).
pub const ENOPROTOOPT: i32 = 92;

/// `PAGE_SIZE` on x86_64 (and arm64's default): the most of a `getsockopt` buffer the kernel
/// hands a `cgroup/getsockopt` program.
pub const PAGE_SIZE: i32 = 4096;

/// `struct sockaddr_in` (include/uapi/linux/in.h).
#[repr(C)]
pub struct SockaddrIn {
    /// `AF_INET`.
    pub family: u16,
    /// Network order.
    pub port: u16,
    /// Network order bytes.
    pub addr: u32,
    pub zero: [u8; 8],
}

/// `struct sockaddr_in6` (include/uapi/linux/in6.h).
#[repr(C)]
pub struct SockaddrIn6 {
    /// `AF_INET6`.
    pub family: u16,
    /// Network order.
    pub port: u16,
    pub flowinfo: u32,
    /// Network order bytes.
    pub addr: [u32; 4],
    pub scope_id: u32,
}
