//! Map names, keys and values. Every struct is `#[repr(C)]` with explicit padding so that
//! its bytes are fully defined (the kernel hashes keys byte by byte).

use crate::wire::{RawIpv4, RawIpv6};

/// Map names, as the programs declare them and the loader pins them.
pub mod map_names {
    /// Network-namespace cookie -> the pod's configuration.
    pub const POD_CONFIG: &str = "POD_CONFIG";
    /// The pods' port sets, under their rule-set ids.
    pub const PORT_SET: &str = "PORT_SET";
    /// The pods' IPv4 ranges and routes, under their rule-set ids.
    pub const CIDR4: &str = "CIDR4";
    /// The same for IPv6.
    pub const CIDR6: &str = "CIDR6";
    /// Per-pod, per-CPU counters, by slot.
    pub const COUNTERS: &str = "COUNTERS";
    /// The datapath's record (JSON); never read by the programs.
    pub const INSTANCE_META: &str = "INSTANCE_META";
    /// Network-namespace cookie -> the JSON record of each registered pod (who registered it,
    /// with which options). Never read by the programs; it lets `status`, `clean`, the
    /// reclaiming of vanished pods and a restarted daemon find everything of a pod.
    pub const POD_RECORDS: &str = "POD_RECORDS";
    /// Which counter slots are taken (a bitmap); never read by the programs.
    pub const POD_SLOTS: &str = "POD_SLOTS";
    /// A pod's IPv4 address -> its netns cookie: how the shared `sk_lookup` finds the pod a
    /// connection arrives for.
    pub const POD_ADDRS4: &str = "POD_ADDRS4";
    /// The same for IPv6.
    pub const POD_ADDRS6: &str = "POD_ADDRS6";
    /// Sockhash: each pod's inbound capture listener, keyed by `ListenerKey`.
    pub const INBOUND_LISTENERS: &str = "INBOUND_LISTENERS";
    /// Socket storage (cloned to accepted sockets): marks the proxy's capture listener.
    pub const CAPTURE_SOCKETS: &str = "CAPTURE_SOCKETS";
    /// Socket storage on a redirected application socket (TCP or UDP): its original IPv4
    /// destination (also one a dual-stack socket dialled as `::ffff:a.b.c.d`). Freed with it.
    pub const CLIENT_ORIG_DST4: &str = "CLIENT_ORIG_DST4";
    /// The same for IPv6 destinations.
    pub const CLIENT_ORIG_DST6: &str = "CLIENT_ORIG_DST6";
    /// Socket storage on the proxy's accepted socket of a redirected connection: the original
    /// IPv4 destination `SO_ORIGINAL_DST` answers. Freed with it.
    pub const PROXY_ORIG_DST4: &str = "PROXY_ORIG_DST4";
    /// The same for IPv6 (`IP6T_SO_ORIGINAL_DST`).
    pub const PROXY_ORIG_DST6: &str = "PROXY_ORIG_DST6";
    /// Connection (4-tuple) -> original IPv4 destination, from the moment the application's
    /// connection is established until the proxy's end of it is (microseconds): how it passes
    /// from one socket to the other. Node-wide; a full map counts as `original_dst_lost`.
    pub const IN_FLIGHT4: &str = "IN_FLIGHT4";
    /// The same for IPv6 connections.
    pub const IN_FLIGHT6: &str = "IN_FLIGHT6";
    /// aya-log's ring buffer (kernel-side debug messages).
    pub const AYA_LOGS: &str = "AYA_LOGS";
    /// One entry: not 0 while a tracer is attached (`interceptor trace`); the programs write
    /// decision events only then.
    pub const TRACE_CONTROL: &str = "TRACE_CONTROL";
    /// Ring buffer of decision events (`trace::TraceEvent`).
    pub const TRACE_EVENTS: &str = "TRACE_EVENTS";
    /// Per-CPU count of events the full ring buffer could not take.
    pub const TRACE_LOST: &str = "TRACE_LOST";
    /// Sockhash (`--accelerate`): both pod-local ends of each accelerated connection, keyed
    /// by `AccelKey`; `sk_msg` moves a message from one end into the other's receive queue.
    /// The kernel drops an entry when its socket closes.
    pub const ACCEL_SOCKETS: &str = "ACCEL_SOCKETS";
    /// Socket storage on an accelerated end whose messages go through TCP from then on (its
    /// peer could not be found once): never redirected again, so the peer reads in order.
    pub const ACCEL_FALLBACK: &str = "ACCEL_FALLBACK";
}

/// Program names (the functions in the kernel crate), in the order the loader attaches them:
/// everything that serves a redirected connection is in place before `connect4` redirects one.
pub mod program_names {
    pub const SOCKOPS: &str = "track_redirected_sockets";
    pub const GETSOCKOPT: &str = "answer_original_dst";
    pub const GETPEERNAME4: &str = "restore_peer_name4";
    pub const GETPEERNAME6: &str = "restore_peer_name6";
    /// DNS replies on a redirected UDP socket appear to come from the server it asked.
    pub const RECVMSG4: &str = "restore_dns_reply_source4";
    pub const RECVMSG6: &str = "restore_dns_reply_source6";
    /// Unconnected UDP `sendto()` (DNS capture).
    pub const SENDMSG4: &str = "redirect_sendmsg4";
    pub const SENDMSG6: &str = "redirect_sendmsg6";
    pub const CONNECT4: &str = "redirect_connect4";
    pub const CONNECT6: &str = "redirect_connect6";
    /// `cgroup/post_bind4`: marks the proxy's socket bound to the capture port.
    pub const POST_BIND4: &str = "mark_capture_listener4";
    /// `cgroup/post_bind6`: the same for IPv6 (and dual-stack `[::]`) sockets.
    pub const POST_BIND6: &str = "mark_capture_listener6";
    /// `sk_lookup`, attached to the pod's network namespace (not its cgroup).
    pub const SK_LOOKUP: &str = "steer_inbound";
    /// `cgroup/sock_create`: raw sockets that could carry TCP or UDP past the rules.
    pub const SOCK_CREATE: &str = "refuse_raw_sockets";
    /// `cgroup/setsockopt`: header inclusion on raw sockets.
    pub const SETSOCKOPT: &str = "refuse_header_inclusion";
    /// `sk_msg`, attached to the `ACCEL_SOCKETS` sockhash (not to a cgroup): `--accelerate`.
    pub const SK_MSG: &str = "deliver_to_peer";
    /// The programs attached to a map rather than to a cgroup or a namespace.
    pub const MAP_ATTACHED: [&str; 1] = [SK_MSG];
    /// Inbound steering comes after everything that registers and serves the listener; the
    /// programs that redirect (sendmsg, connect) after everything that serves a redirect.
    /// Raw sockets are refused before anything redirects (no moment where a raw socket could
    /// be opened while connections are redirected).
    pub const ALL: [&str; 15] = [
        SOCKOPS,
        GETSOCKOPT,
        GETPEERNAME4,
        GETPEERNAME6,
        RECVMSG4,
        RECVMSG6,
        POST_BIND4,
        POST_BIND6,
        SOCK_CREATE,
        SETSOCKOPT,
        SK_LOOKUP,
        SENDMSG4,
        SENDMSG6,
        CONNECT4,
        CONNECT6,
    ];
}

/// Name of the `sk_lookup` program's load-time constant: 0 in the node's shared program, which
/// finds the pod by the address a connection arrives for (`POD_ADDRS4/6`: `bpf_get_netns_cookie`
/// is not available to `sk_lookup` programs, Linux 6.18); the cookie of its pod in the copy a pod
/// gets when another pod of the node has one of its addresses.
pub const POD_NETNS_COOKIE_GLOBAL: &str = "POD_NETNS_COOKIE";

/// Most proxy uids, and separately gids, one pod can name (`-u`, `-g`).
pub const MAX_PROXY_IDS: usize = 8;
/// Most IPv4 addresses of a pod's own interfaces the programs treat as local.
pub const MAX_LOCAL_ADDRS4: usize = 8;
/// Most groups `ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]` may name for the eBPF backend.
pub const MAX_OWNER_GROUPS: usize = 8;
/// Most IPv4 name servers (the pod's resolv.conf) whose DNS traffic is captured. glibc uses
/// the first three; istio-iptables writes rules for all of them.
pub const MAX_DNS_SERVERS4: usize = 8;
/// Where captured DNS goes (on 127.0.0.1): istio-agent's DNS proxy; istio-iptables fixes it too.
pub const DNS_CAPTURE_PORT: u16 = 15053;
/// The DNS port.
pub const DNS_PORT: u16 = 53;
/// Most interfaces `-c` can exclude from inbound capture.
pub const MAX_EXCLUDE_IFACES: usize = 8;
/// The loopback device's index, the same in every network namespace.
pub const LOOPBACK_IFINDEX: u32 = 1;
/// Most IPv6 addresses (link-local ones included) of a pod's own interfaces.
pub const MAX_LOCAL_ADDRS6: usize = 8;
/// Most IPv6 name servers whose DNS traffic is captured.
pub const MAX_DNS_SERVERS6: usize = 8;

/// `PodConfig::flags` bits.
pub mod flags {
    /// `-i '*'`: every destination not excluded earlier is redirected.
    pub const INCLUDE_ALL: u32 = 1 << 0;
    /// `-i` names CIDRs (looked up in `CIDR4` under `CidrSet::Include`).
    pub const HAS_INCLUDE_CIDRS: u32 = 1 << 1;
    /// `-x` names CIDRs (looked up in `CIDR4` under `CidrSet::Exclude`).
    pub const HAS_EXCLUDE_CIDRS: u32 = 1 << 2;
    /// `-o` names ports.
    pub const HAS_OUTBOUND_PORTS_EXCLUDE: u32 = 1 << 3;
    /// `-q` names ports.
    pub const HAS_OUTBOUND_PORTS_INCLUDE: u32 = 1 << 4;
    /// An `-i` range contains a loopback address: istio-iptables then leaves out its
    /// "the application calling its own pod over lo goes direct" rules.
    pub const LOOPBACK_INCLUDED: u32 = 1 << 5;
    /// `--redirect-dns` (with name servers to capture, or `--capture-all-dns`): UDP and TCP to
    /// port 53 go to 127.0.0.1:15053 (`[::1]:15053` for IPv6), and the proxy rules over lo
    /// spare port 53.
    pub const REDIRECT_DNS: u32 = 1 << 6;
    /// `--capture-all-dns`: port 53 to any address, not only to the pod's name servers.
    pub const CAPTURE_ALL_DNS: u32 = 1 << 7;
    /// `-i` names IPv6 CIDRs (looked up in `CIDR6` under `CidrSet::Include`).
    pub const HAS_INCLUDE_CIDRS6: u32 = 1 << 8;
    /// `-x` names IPv6 CIDRs (looked up in `CIDR6` under `CidrSet::Exclude`).
    pub const HAS_EXCLUDE_CIDRS6: u32 = 1 << 9;
    /// `ISTIO_OUTBOUND_OWNER_GROUPS` names groups: only processes of these (primary) groups are
    /// captured (`owner_groups`).
    pub const OWNER_GROUPS_ONLY: u32 = 1 << 10;
    /// `ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE` names groups (with the include list `*`): processes
    /// of these groups are not captured.
    pub const OWNER_GROUPS_EXCEPT: u32 = 1 << 11;
    /// `-c` and an IPv4 route through one of its interfaces: `CidrSet::Route` entries in `CIDR4`.
    pub const HAS_EXCLUDED_ROUTES4: u32 = 1 << 12;
    /// The same for IPv6 routes, in `CIDR6`.
    pub const HAS_EXCLUDED_ROUTES6: u32 = 1 << 13;
    /// IPv6 is captured (istio-iptables' `EnableIPv6`: the pod's first address is IPv6, or
    /// `--dual-stack` and it has one). Without it IPv6 is left alone, as istio-iptables then
    /// writes no ip6tables rules; IPv4-mapped connections are IPv4 and decided anyway.
    pub const IPV6: u32 = 1 << 14;

    // Inbound (bits from 16 up).
    /// `-b` is not empty: connections arriving on the pod's interfaces may be steered.
    pub const INBOUND_CAPTURE: u32 = 1 << 16;
    /// `-b '*'`: every port, minus `-d` (`PortSet::InboundExclude`).
    pub const INBOUND_ALL_PORTS: u32 = 1 << 17;
    /// `-b '*'` with `-d` ports.
    pub const HAS_INBOUND_PORTS_EXCLUDE: u32 = 1 << 18;
    /// `--inbound-fail closed`: refuse captured connections while no listener is registered.
    pub const INBOUND_FAIL_CLOSED: u32 = 1 << 19;

    // Raw sockets (bit 20).
    /// `--raw-sockets allow`: the pod's processes may open raw sockets of any protocol and
    /// include their own IP headers (see `raw_socket`); refused otherwise, but to the proxy.
    pub const RAW_SOCKETS_ALLOWED: u32 = 1 << 20;
    /// `--accelerate`: the pod-local ends of redirected connections are paired in
    /// `ACCEL_SOCKETS` and their payload moves socket to socket (`sk_msg`).
    pub const ACCELERATE: u32 = 1 << 24;
}

/// Per-pod configuration, keyed by the pod's network-namespace cookie (`u64`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodConfig {
    /// Prefix of every set key of this configuration. A new configuration is written under a
    /// fresh id and published by replacing this value, so a re-run is atomic.
    pub rules: u32,
    /// Slot of this pod in `COUNTERS`.
    pub pod_index: u32,
    /// `flags::*` bits.
    pub flags: u32,
    /// `-p`: where outbound connections are sent (on 127.0.0.1).
    pub proxy_port: u16,
    /// `-z`: where the proxy's connections to its own pod are sent.
    pub inbound_capture_port: u16,
    /// `-e`: never captured.
    pub inbound_tunnel_port: u16,
    pub n_uids: u8,
    pub n_gids: u8,
    pub n_local4: u8,
    pub n_dns4: u8,
    pub _pad: [u8; 2],
    pub uids: [u32; MAX_PROXY_IDS],
    pub gids: [u32; MAX_PROXY_IDS],
    /// The pod's own IPv4 addresses (besides 127.0.0.0/8, which is always local).
    pub local4: [RawIpv4; MAX_LOCAL_ADDRS4],
    /// The pod's IPv4 name servers (DNS capture without `--capture-all-dns`).
    pub dns4: [RawIpv4; MAX_DNS_SERVERS4],
    /// `-c`: interface indexes (in the pod's namespace) whose inbound traffic is never steered.
    pub exclude_ifindex: [u32; MAX_EXCLUDE_IFACES],
    pub n_exclude_ifindex: u8,
    pub _pad2: [u8; 3],
    /// The pod's own IPv6 addresses (besides ::1, which is always local).
    pub local6: [RawIpv6; MAX_LOCAL_ADDRS6],
    pub n_local6: u8,
    pub n_dns6: u8,
    pub _pad6: [u8; 2],
    /// `ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]` (see `flags::OWNER_GROUPS_*`).
    pub owner_groups: [u32; MAX_OWNER_GROUPS],
    /// `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR` (default 127.0.0.1/32): the IPv4 "localhost" of
    /// istio's `-d`/`! -d` rules, as network and mask (network-order bytes).
    pub loopback4_net: RawIpv4,
    pub loopback4_mask: RawIpv4,
    pub n_owner_groups: u8,
    pub _pad7: [u8; 3],
    /// The pod's IPv6 name servers (DNS capture without `--capture-all-dns`).
    pub dns6: [RawIpv6; MAX_DNS_SERVERS6],
}

impl PodConfig {
    pub const fn empty() -> Self {
        Self {
            rules: 0,
            pod_index: 0,
            flags: 0,
            proxy_port: 0,
            inbound_capture_port: 0,
            inbound_tunnel_port: 0,
            n_uids: 0,
            n_gids: 0,
            n_local4: 0,
            n_dns4: 0,
            _pad: [0; 2],
            uids: [0; MAX_PROXY_IDS],
            gids: [0; MAX_PROXY_IDS],
            local4: [0; MAX_LOCAL_ADDRS4],
            dns4: [0; MAX_DNS_SERVERS4],
            exclude_ifindex: [0; MAX_EXCLUDE_IFACES],
            n_exclude_ifindex: 0,
            _pad2: [0; 3],
            local6: [[0; 4]; MAX_LOCAL_ADDRS6],
            n_local6: 0,
            n_dns6: 0,
            _pad6: [0; 2],
            owner_groups: [0; MAX_OWNER_GROUPS],
            loopback4_net: crate::wire::LOCALHOST4,
            loopback4_mask: u32::MAX,
            n_owner_groups: 0,
            _pad7: [0; 3],
            dns6: [[0; 4]; MAX_DNS_SERVERS6],
        }
    }

    /// Whether `addr` is in the IPv4 "localhost" range (`ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`).
    #[inline(always)]
    pub const fn is_localhost4(&self, addr: RawIpv4) -> bool {
        addr & self.loopback4_mask == self.loopback4_net
    }

    /// istio-iptables' owner-groups rule: whether a process of primary group `gid` is spared
    /// (goes direct) by `ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]`.
    #[inline(always)]
    pub fn owner_group_spared(&self, gid: u32) -> bool {
        let listed = contains(&self.owner_groups, self.n_owner_groups, gid);
        (self.has(flags::OWNER_GROUPS_ONLY) && !listed)
            || (self.has(flags::OWNER_GROUPS_EXCEPT) && listed)
    }

    #[inline(always)]
    pub const fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }

    /// Whether `uid` is one of the proxy uids.
    #[inline(always)]
    pub fn is_proxy_uid(&self, uid: u32) -> bool {
        contains(&self.uids, self.n_uids, uid)
    }

    #[inline(always)]
    pub fn is_proxy_gid(&self, gid: u32) -> bool {
        contains(&self.gids, self.n_gids, gid)
    }

    /// Whether a connection to `addr` leaves through the loopback device (istio's `-o lo`).
    #[inline(always)]
    pub fn is_local4(&self, addr: RawIpv4) -> bool {
        crate::wire::is_loopback4(addr) || contains(&self.local4, self.n_local4, addr)
    }

    /// Whether DNS traffic to `addr` is captured (DNS capture on, and all servers or this one).
    #[inline(always)]
    pub fn is_captured_dns_server4(&self, addr: RawIpv4) -> bool {
        self.captures_dns_to(&self.dns4, self.n_dns4, addr)
    }

    /// Whether `-c` excludes the interface with this index.
    #[inline(always)]
    pub fn is_excluded_interface(&self, ifindex: u32) -> bool {
        contains(&self.exclude_ifindex, self.n_exclude_ifindex, ifindex)
    }

    /// Whether a connection to the IPv6 `addr` leaves through the loopback device.
    #[inline(always)]
    pub fn is_local6(&self, addr: RawIpv6) -> bool {
        addr == crate::wire::LOCALHOST6 || contains(&self.local6, self.n_local6, addr)
    }

    /// Whether DNS traffic to the IPv6 `addr` is captured (ip6tables' `ISTIO_OUTPUT_DNS`).
    #[inline(always)]
    pub fn is_captured_dns_server6(&self, addr: RawIpv6) -> bool {
        self.captures_dns_to(&self.dns6, self.n_dns6, addr)
    }

    /// DNS capture on, and for every server or one of the first `n` of `servers`.
    #[inline(always)]
    fn captures_dns_to<A: Copy + PartialEq>(&self, servers: &[A; 8], n: u8, addr: A) -> bool {
        self.has(flags::REDIRECT_DNS)
            && (self.has(flags::CAPTURE_ALL_DNS) || contains(servers, n, addr))
    }
}

/// Bounded scan (at most 8 steps, unrolled by the compiler) of the first `n` values.
#[inline(always)]
fn contains<T: Copy + PartialEq>(values: &[T; 8], n: u8, wanted: T) -> bool {
    let mut i = 0;
    while i < values.len() {
        if i < n as usize && values[i] == wanted {
            return true;
        }
        i += 1;
    }
    false
}

/// Which port set a `PortKey` belongs to.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortSet {
    /// `-o`: outbound ports that always go direct.
    OutboundExclude = 1,
    /// `-q`: outbound ports that are always redirected.
    OutboundInclude = 2,
    /// `-b PORT,...`: inbound ports that are captured.
    InboundInclude = 3,
    /// `-d` (with `-b '*'`): inbound ports that are not captured.
    InboundExclude = 4,
}

/// Key of `PORT_SET` (a hash set; the value is a `u8` 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub rules: u32,
    pub set: u16,
    /// Host order.
    pub port: u16,
}

/// Which CIDR set a `CidrKey` belongs to.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CidrSet {
    /// `-i`
    Include = 1,
    /// `-x`
    Exclude = 2,
    /// The pod's routes (its main table at `init`), for `-c`: the trie's longest match is the
    /// route a connection takes, and its value says whether that route's interface is in `-c`
    /// (1) or not (0).
    Route = 3,
}

/// Data of an LPM-trie key of `CIDR4` (`Cidr4Key`) and `CIDR6` (`Cidr6Key`). The trie's prefix
/// length counts the `rules` and `set` bits too (`CIDR_KEY_PREFIX_BITS + cidr_len`), so one
/// trie per family serves every pod and set.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CidrKey<A> {
    pub rules: u32,
    pub set: u32,
    /// Network order bytes.
    pub addr: A,
}

/// Key data of `CIDR4`.
pub type Cidr4Key = CidrKey<RawIpv4>;
/// Key data of `CIDR6`.
pub type Cidr6Key = CidrKey<RawIpv6>;

/// Bits of a `CidrKey` before the address.
pub const CIDR_KEY_PREFIX_BITS: u32 = 64;
/// Bits of a `Cidr4Key` before the address.
pub const CIDR4_KEY_PREFIX_BITS: u32 = CIDR_KEY_PREFIX_BITS;
/// Bits of a `Cidr6Key` before the address.
pub const CIDR6_KEY_PREFIX_BITS: u32 = CIDR_KEY_PREFIX_BITS;

/// An original destination as the application dialled it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrigDst<A> {
    pub addr: A,
    /// Host order.
    pub port: u16,
    /// `OrigDst::ACCELERATE` when `connect` redirected it for a pod with `--accelerate`.
    pub flags: u16,
}

impl<A> OrigDst<A> {
    /// The pod accelerates: `sockops` pairs the connection's two ends (and only then looks
    /// the pod's configuration up).
    pub const ACCELERATE: u16 = 1;

    #[inline(always)]
    pub const fn new(addr: A, port: u16) -> Self {
        Self {
            addr,
            port,
            flags: 0,
        }
    }

    /// The same, marked `ACCELERATE` when `accelerate`.
    #[inline(always)]
    pub const fn accelerated(mut self, accelerate: bool) -> Self {
        if accelerate {
            self.flags |= Self::ACCELERATE;
        }
        self
    }

    #[inline(always)]
    pub const fn is_accelerated(&self) -> bool {
        self.flags & Self::ACCELERATE != 0
    }
}

/// An IPv4 original destination (also an IPv4-mapped destination of a dual-stack socket: that
/// connection is IPv4).
pub type OrigDst4 = OrigDst<RawIpv4>;
/// An IPv6 original destination.
pub type OrigDst6 = OrigDst<RawIpv6>;

/// Value of `IN_FLIGHT4/6`: an original destination on its way from the application's socket
/// to the proxy's, and when it set out (`bpf_ktime_get_ns() >> 30`, about seconds: user space
/// removes what a proxy never took).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlight<A> {
    pub orig: OrigDst<A>,
    pub since: u32,
}

/// The shift from `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) to `InFlight::since`'s unit.
pub const IN_FLIGHT_CLOCK_SHIFT: u32 = 30;

pub type InFlight4 = InFlight<RawIpv4>;
pub type InFlight6 = InFlight<RawIpv6>;

/// A TCP connection inside one network namespace, named from the client's side. The proxy's
/// accepted socket sees the same connection with local and remote swapped.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockTuple<A> {
    pub netns: u64,
    pub client_addr: A,
    pub server_addr: A,
    /// Host order.
    pub client_port: u16,
    /// Host order.
    pub server_port: u16,
    pub _pad: u32,
}

/// An IPv4 connection (also one a dual-stack socket makes to an IPv4-mapped address).
pub type SockTuple4 = SockTuple<RawIpv4>;
/// An IPv6 connection.
pub type SockTuple6 = SockTuple<RawIpv6>;

/// Key of `INBOUND_LISTENERS`: the pod and the address family of its capture listener.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub netns: u64,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u32,
    pub _pad: u32,
}

/// Key of `ACCEL_SOCKETS`: one end of a pod-local connection, named from that end (see
/// `accel`). Addresses as `accel::key_addr` gives them (IPv4 IPv4-mapped), ports host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AccelKey {
    pub netns: u64,
    pub local: RawIpv6,
    pub remote: RawIpv6,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: u32,
}

/// Value of `CAPTURE_SOCKETS` (socket storage): set on the proxy's socket bound to the capture
/// port, and cloned by the kernel to every socket accepted from it, so that
/// `getsockopt(SO_ORIGINAL_DST)` can tell a steered connection from any other.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureMark {
    /// Cookie of the namespace the socket was marked in.
    pub netns: u64,
}

/// Size of the `INSTANCE_META` value: a JSON description of the instance written by the loader
/// (`interceptor status` reads it; the programs never do).
pub const INSTANCE_META_SIZE: usize = 16 * 1024;

/// Value of `INSTANCE_META` (a one-entry array).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct InstanceMeta {
    /// Bytes of JSON in `json`.
    pub len: u32,
    pub json: [u8; INSTANCE_META_SIZE],
}

/// Size of a `POD_RECORDS` value's JSON room.
pub const POD_RECORD_SIZE: usize = 4092;

/// Value of `POD_RECORDS`: the daemon's JSON description of one registered pod.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PodRecordBlob {
    /// Bytes of JSON in `json`.
    pub len: u32,
    pub json: [u8; POD_RECORD_SIZE],
}

#[cfg(feature = "user")]
mod pod {
    use super::*;

    /// Lets aya copy the types in and out of maps as bytes.
    macro_rules! plain_data {
        ($($t:ty),* $(,)?) => {$(
            // SAFETY: #[repr(C)] and Copy, with no implicit padding
            // (`layouts_have_no_implicit_padding`): every byte is defined.
            unsafe impl aya::Pod for $t {}
        )*};
    }

    plain_data!(
        PodConfig,
        PortKey,
        Cidr4Key,
        Cidr6Key,
        OrigDst4,
        OrigDst6,
        SockTuple4,
        SockTuple6,
        InFlight4,
        InFlight6,
        InstanceMeta,
        ListenerKey,
        CaptureMark,
        PodRecordBlob,
        AccelKey,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(
            size_of::<PodConfig>(),
            4 * 3 + 2 * 3 + 4 + 2 + 4 * 8 * 4 + 4 * 8 + 4 + 16 * 8 + 4 + 4 * 8 + 4 * 2 + 4 + 16 * 8
        );
        assert_eq!(size_of::<ListenerKey>(), 16);
        assert_eq!(size_of::<CaptureMark>(), 8);
        assert_eq!(size_of::<Cidr6Key>(), 24);
        assert_eq!(size_of::<OrigDst6>(), 20);
        assert_eq!(size_of::<SockTuple6>(), 48);
        assert_eq!(size_of::<PortKey>(), 8);
        assert_eq!(size_of::<Cidr4Key>(), 12);
        assert_eq!(size_of::<OrigDst4>(), 8);
        assert_eq!(size_of::<SockTuple4>(), 24);
        assert_eq!(size_of::<InFlight4>(), 12);
        assert_eq!(size_of::<InFlight6>(), 24);
        assert_eq!(size_of::<InstanceMeta>(), 4 + INSTANCE_META_SIZE);
        assert_eq!(size_of::<PodRecordBlob>(), 4096);
        assert_eq!(size_of::<AccelKey>(), 48);
    }

    #[test]
    fn proxy_ids_and_local_addresses_respect_counts() {
        let mut cfg = PodConfig::empty();
        cfg.uids[0] = 1337;
        cfg.uids[1] = 1338;
        cfg.n_uids = 1;
        assert!(cfg.is_proxy_uid(1337));
        assert!(!cfg.is_proxy_uid(1338), "entries past n_uids are ignored");
        assert!(!cfg.is_proxy_uid(0), "empty slots never match uid 0");
        cfg.local4[0] = crate::wire::raw_ipv4([10, 0, 0, 2]);
        cfg.n_local4 = 1;
        assert!(cfg.is_local4(crate::wire::raw_ipv4([10, 0, 0, 2])));
        assert!(cfg.is_local4(crate::wire::raw_ipv4([127, 9, 9, 9])));
        assert!(!cfg.is_local4(crate::wire::raw_ipv4([10, 0, 0, 3])));
        cfg.exclude_ifindex[0] = 3;
        cfg.exclude_ifindex[1] = 4;
        cfg.n_exclude_ifindex = 1;
        assert!(cfg.is_excluded_interface(3));
        assert!(
            !cfg.is_excluded_interface(4),
            "entries past the count are ignored"
        );
        assert!(!cfg.is_excluded_interface(0));

        let pod6 = crate::wire::raw_ipv6([0xfd, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        let other6 = crate::wire::raw_ipv6([0xfd, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
        cfg.local6[0] = pod6;
        cfg.local6[1] = other6;
        cfg.n_local6 = 1;
        assert!(cfg.is_local6(pod6));
        assert!(cfg.is_local6(crate::wire::LOCALHOST6));
        assert!(!cfg.is_local6(other6), "entries past n_local6 are ignored");
        assert!(!cfg.is_local6(crate::wire::UNSPECIFIED6));

        cfg.dns6[0] = other6;
        cfg.dns6[1] = pod6;
        cfg.n_dns6 = 1;
        assert!(!cfg.is_captured_dns_server6(other6), "DNS capture is off");
        cfg.flags = flags::REDIRECT_DNS;
        assert!(cfg.is_captured_dns_server6(other6));
        assert!(!cfg.is_captured_dns_server6(pod6), "entries past n_dns6");
        cfg.flags |= flags::CAPTURE_ALL_DNS;
        assert!(cfg.is_captured_dns_server6(pod6));
    }
}
