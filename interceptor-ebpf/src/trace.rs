//! The decision events `interceptor trace` reads: their layout (shared by the programs that
//! write them and the tracer), and the codes of what they carry. The programs write an event
//! only while a tracer is attached (`TRACE_CONTROL[0]` is not 0); events that find the ring
//! buffer full are counted in `TRACE_LOST`, per CPU.

use crate::{
    decision::{OutboundRule, Owner, ProxyId},
    inbound::InboundRule,
    wire::RawIpv6,
};

/// Bytes of the `TRACE_EVENTS` ring buffer (a power-of-two number of pages): about 2,500
/// events between two reads of the tracer.
pub const TRACE_RING_BYTES: u32 = 256 * 1024;

/// `TRACE_CONTROL[0]`'s value while a tracer is attached.
pub const TRACE_ON: u32 = 1;

/// Name of the programs' load-time constant that lets them read the current task's pid and
/// `comm` into events: 1 only where the kernel offers those helpers to cgroup socket hooks
/// (Linux 6.1), so that older kernels still load the programs.
pub const TRACE_TASK_GLOBAL: &str = "TRACE_TASK";

/// Name of the programs' load-time constant that keeps the event-writing code in them: 1 when
/// the loader may load it. The verifier accepts that code only from a loader with CAP_PERFMON
/// (or CAP_SYS_ADMIN): it reads stack bytes it cannot prove written and moves pointers into
/// the ring buffer by variable offsets, which it allows only such a loader. A per-pod init
/// container with CAP_BPF and CAP_NET_ADMIN loads the programs with 0: the verifier then never
/// sees that code, and nothing can be traced on that datapath.
pub const TRACE_BUILT_GLOBAL: &str = "TRACE_BUILT";

/// What an event is about.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `connect()` (TCP, or UDP under DNS capture), decided by `connect4`/`connect6`.
    Connect = 1,
    /// An unconnected UDP datagram to port 53 (or redirected), decided by `sendmsg4`/`6`.
    Datagram = 2,
    /// A connection arriving on a pod interface, decided by `sk_lookup`.
    Inbound = 3,
    /// `getsockopt(SO_ORIGINAL_DST)` (or `IP6T_SO_ORIGINAL_DST`) answered with an error.
    OrigDstFailed = 4,
}

impl EventKind {
    pub const fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => EventKind::Connect,
            2 => EventKind::Datagram,
            3 => EventKind::Inbound,
            4 => EventKind::OrigDstFailed,
            _ => return None,
        })
    }
}

/// Where the connection went.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Left alone (outbound), or passed to the ordinary socket lookup (inbound).
    Direct = 1,
    /// Sent to `port` on localhost.
    Redirected = 2,
    /// Inbound: handed to the proxy's capture listener.
    Steered = 3,
    /// Inbound: to be steered, but no listener is registered: passed (`--inbound-fail open`).
    NoListenerPassed = 4,
    /// Inbound: to be steered, but no listener is registered: refused (`closed`).
    NoListenerRefused = 5,
    /// `getsockopt` failed with the errno in `TraceEvent::errno`.
    Failed = 6,
}

impl Outcome {
    pub const fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Outcome::Direct,
            2 => Outcome::Redirected,
            3 => Outcome::Steered,
            4 => Outcome::NoListenerPassed,
            5 => Outcome::NoListenerRefused,
            6 => Outcome::Failed,
            _ => return None,
        })
    }
}

/// `TraceEvent::flags` bits.
pub mod event_flags {
    /// An IPv4 connection made by a dual-stack IPv6 socket (`::ffff:a.b.c.d`).
    pub const MAPPED: u8 = 1 << 0;
    /// `tgid` and `comm` were filled in (the kernel lets this hook read the current task).
    pub const TASK: u8 = 1 << 1;
}

/// One decision, as a program writes it into `TRACE_EVENTS`. IPv4 addresses are in `dst[0]`
/// and `src[0]` (network order, as everywhere); ports in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    /// The pod's network-namespace cookie.
    pub netns: u64,
    /// The calling process (0 in `sk_lookup`, which runs in no process's context).
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    /// The counter the verdict counted (`Counter`), or `u32::MAX` for none.
    pub counter: u32,
    /// Inbound: the interface the connection arrived on. `OrigDstFailed`: the errno.
    pub ifindex_or_errno: u32,
    /// `EventKind`.
    pub kind: u8,
    /// 4 or 6: the family of the decision (a dual-stack socket's IPv4 connection is 4).
    pub family: u8,
    /// `IPPROTO_TCP` (6) or `IPPROTO_UDP` (17).
    pub proto: u8,
    /// `Outcome`.
    pub outcome: u8,
    /// The rule (`rule_code`), and its argument (the proxy id's index).
    pub rule: u8,
    pub rule_arg: u8,
    /// `event_flags`.
    pub flags: u8,
    pub _pad: u8,
    /// Where it was sent (redirected), else 0.
    pub port: u16,
    /// The original destination's port (inbound: the local port).
    pub dst_port: u16,
    /// The source port (0 for a connect: none is chosen yet).
    pub src_port: u16,
    pub _pad2: [u8; 6],
    /// The original destination (inbound: the local address).
    pub dst: RawIpv6,
    /// The source: the socket's bound address (unspecified when unbound), inbound the peer.
    pub src: RawIpv6,
    /// The calling process's `comm`.
    pub comm: [u8; 16],
}

impl TraceEvent {
    pub const NO_COUNTER: u32 = u32::MAX;
}

/// `IPPROTO_TCP` and `IPPROTO_UDP`.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Rule codes: outbound 1..=19, inbound 32..
mod codes {
    pub const IPV6_NOT_CAPTURED: u8 = 1;
    pub const EXCLUDED_INTERFACE: u8 = 2;
    pub const OUTBOUND_PORT_EXCLUDE: u8 = 3;
    pub const INBOUND_PASSTHROUGH: u8 = 4;
    pub const PROXY_TO_OWN_POD_UID: u8 = 5;
    pub const PROXY_TO_OWN_POD_GID: u8 = 6;
    pub const OTHERS_OVER_LO_UID: u8 = 7;
    pub const OTHERS_OVER_LO_GID: u8 = 8;
    pub const PROXY_OWNER_UID: u8 = 9;
    pub const PROXY_OWNER_GID: u8 = 10;
    pub const OWNER_GROUPS: u8 = 11;
    pub const DNS_CAPTURE: u8 = 12;
    pub const LOCALHOST: u8 = 13;
    pub const EXCLUDE_CIDR: u8 = 14;
    pub const OUTBOUND_PORT_INCLUDE: u8 = 15;
    pub const INCLUDE_ALL: u8 = 16;
    pub const INCLUDE_CIDR: u8 = 17;
    pub const UDP_NOT_REDIRECTED: u8 = 18;
    pub const END_OF_CHAIN: u8 = 19;

    pub const IN_NOT_CAPTURED: u8 = 32;
    pub const IN_MADE_IN_POD: u8 = 33;
    pub const IN_EXCLUDED_INTERFACE: u8 = 34;
    pub const IN_TUNNEL_PORT: u8 = 35;
    pub const IN_CAPTURE_PORT: u8 = 36;
    pub const IN_EXCLUDED_PORT: u8 = 37;
    pub const IN_ALL_PORTS: u8 = 38;
    pub const IN_LISTED_PORT: u8 = 39;
    pub const IN_NOT_LISTED: u8 = 40;
}

/// (the uid code or the gid code, the id's index).
#[inline(always)]
const fn by_owner(id: ProxyId, uid: u8, gid: u8) -> (u8, u8) {
    match id.owner {
        Owner::Uid => (uid, id.index),
        Owner::Gid => (gid, id.index),
    }
}

impl OutboundRule {
    /// The rule as an event carries it: (code, argument).
    #[inline(always)]
    pub const fn code(self) -> (u8, u8) {
        use OutboundRule::*;
        use codes::*;
        match self {
            Ipv6NotCaptured => (IPV6_NOT_CAPTURED, 0),
            ExcludedInterface => (EXCLUDED_INTERFACE, 0),
            OutboundPortExclude => (OUTBOUND_PORT_EXCLUDE, 0),
            InboundPassthrough => (INBOUND_PASSTHROUGH, 0),
            ProxyToOwnPod(id) => by_owner(id, PROXY_TO_OWN_POD_UID, PROXY_TO_OWN_POD_GID),
            OthersOverLo(id) => by_owner(id, OTHERS_OVER_LO_UID, OTHERS_OVER_LO_GID),
            ProxyOwner(id) => by_owner(id, PROXY_OWNER_UID, PROXY_OWNER_GID),
            OwnerGroups => (OWNER_GROUPS, 0),
            DnsCapture => (DNS_CAPTURE, 0),
            Localhost => (LOCALHOST, 0),
            ExcludeCidr => (EXCLUDE_CIDR, 0),
            OutboundPortInclude => (OUTBOUND_PORT_INCLUDE, 0),
            IncludeAll => (INCLUDE_ALL, 0),
            IncludeCidr => (INCLUDE_CIDR, 0),
            UdpNotRedirected => (UDP_NOT_REDIRECTED, 0),
            EndOfChain => (END_OF_CHAIN, 0),
        }
    }

    /// The rule an event names, if the code is an outbound one.
    pub const fn from_code(code: u8, arg: u8) -> Option<Self> {
        use OutboundRule::*;
        use codes::*;
        let uid = ProxyId {
            owner: Owner::Uid,
            index: arg,
        };
        let gid = ProxyId {
            owner: Owner::Gid,
            index: arg,
        };
        Some(match code {
            IPV6_NOT_CAPTURED => Ipv6NotCaptured,
            EXCLUDED_INTERFACE => ExcludedInterface,
            OUTBOUND_PORT_EXCLUDE => OutboundPortExclude,
            INBOUND_PASSTHROUGH => InboundPassthrough,
            PROXY_TO_OWN_POD_UID => ProxyToOwnPod(uid),
            PROXY_TO_OWN_POD_GID => ProxyToOwnPod(gid),
            OTHERS_OVER_LO_UID => OthersOverLo(uid),
            OTHERS_OVER_LO_GID => OthersOverLo(gid),
            PROXY_OWNER_UID => ProxyOwner(uid),
            PROXY_OWNER_GID => ProxyOwner(gid),
            OWNER_GROUPS => OwnerGroups,
            DNS_CAPTURE => DnsCapture,
            LOCALHOST => Localhost,
            EXCLUDE_CIDR => ExcludeCidr,
            OUTBOUND_PORT_INCLUDE => OutboundPortInclude,
            INCLUDE_ALL => IncludeAll,
            INCLUDE_CIDR => IncludeCidr,
            UDP_NOT_REDIRECTED => UdpNotRedirected,
            END_OF_CHAIN => EndOfChain,
            _ => return None,
        })
    }
}

impl InboundRule {
    /// The rule as an event carries it.
    #[inline(always)]
    pub const fn code(self) -> u8 {
        use InboundRule::*;
        use codes::*;
        match self {
            NotCaptured => IN_NOT_CAPTURED,
            MadeInPod => IN_MADE_IN_POD,
            ExcludedInterface => IN_EXCLUDED_INTERFACE,
            TunnelPort => IN_TUNNEL_PORT,
            CapturePort => IN_CAPTURE_PORT,
            ExcludedPort => IN_EXCLUDED_PORT,
            AllPorts => IN_ALL_PORTS,
            ListedPort => IN_LISTED_PORT,
            NotListed => IN_NOT_LISTED,
        }
    }

    pub const fn from_code(code: u8) -> Option<Self> {
        use InboundRule::*;
        use codes::*;
        Some(match code {
            IN_NOT_CAPTURED => NotCaptured,
            IN_MADE_IN_POD => MadeInPod,
            IN_EXCLUDED_INTERFACE => ExcludedInterface,
            IN_TUNNEL_PORT => TunnelPort,
            IN_CAPTURE_PORT => CapturePort,
            IN_EXCLUDED_PORT => ExcludedPort,
            IN_ALL_PORTS => AllPorts,
            IN_LISTED_PORT => ListedPort,
            IN_NOT_LISTED => NotListed,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn the_event_has_no_implicit_padding_and_fits_the_ring_alignment() {
        assert_eq!(
            size_of::<TraceEvent>(),
            8 + 8 + 4 * 5 + 8 + 2 * 3 + 6 + 16 * 2 + 16
        );
        assert_eq!(align_of::<TraceEvent>(), 8);
    }

    #[test]
    fn every_rule_survives_its_code() {
        // Every code decodes to one rule that encodes back to it; outbound and inbound codes
        // never overlap; and every rule has a code (19 outbound, 9 inbound).
        let (mut outbound, mut inbound) = (0, 0);
        for code in 0..=u8::MAX {
            if let Some(r) = OutboundRule::from_code(code, 3) {
                assert_eq!(r.code().0, code);
                assert_eq!(InboundRule::from_code(code), None);
                outbound += 1;
            }
            if let Some(r) = InboundRule::from_code(code) {
                assert_eq!(r.code(), code);
                inbound += 1;
            }
        }
        assert_eq!((outbound, inbound), (19, 9));
        // The proxy id's index travels in the argument, uid and gid apart.
        let gid = OutboundRule::ProxyOwner(ProxyId {
            owner: Owner::Gid,
            index: 5,
        });
        assert_eq!(
            OutboundRule::from_code(gid.code().0, gid.code().1),
            Some(gid)
        );
        assert_ne!(
            gid.code().0,
            OutboundRule::ProxyOwner(ProxyId {
                owner: Owner::Uid,
                index: 5
            })
            .code()
            .0
        );
    }
}
