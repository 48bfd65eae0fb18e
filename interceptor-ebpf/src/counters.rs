//! Per-pod, per-CPU counters: `COUNTERS[pod_index * Counter::COUNT + counter]`.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Outbound connection sent to 127.0.0.1:`-p`.
    Redirected = 0,
    /// The proxy's connection to its own pod sent to 127.0.0.1:`-z`.
    InboundCaptured,
    /// Direct: the process runs as a proxy uid or gid.
    DirectProxy,
    /// Direct: bound to 127.0.0.6 (inbound passthrough).
    DirectPassthrough,
    /// Direct: the destination is local (127.0.0.0/8 or the pod's own address).
    DirectLocal,
    /// Direct: the port is in `-o`.
    DirectExcludedPort,
    /// Direct: the destination is in `-x`.
    DirectExcludedCidr,
    /// Direct: neither `-i` nor `-q` selects the connection.
    DirectNotIncluded,
    /// `getsockopt(SO_ORIGINAL_DST)` answered from our maps.
    OrigDstHit,
    /// `getsockopt(SO_ORIGINAL_DST)` on a socket we know nothing about.
    OrigDstMiss,
    /// `getpeername()` shown the dialled address.
    PeerNameRestored,
    /// A redirected connection reached established without its recorded destination
    /// (the cookie map evicted it) or an insert into a connection map failed.
    OrigDstLost,
    /// DNS (UDP datagram or TCP connect to port 53) sent to 127.0.0.1:15053.
    DnsCaptured,
    /// A reply on a redirected UDP socket shown as coming from the server the application asked.
    DnsReplyRestored,
    /// Inbound: a connection arriving on a pod interface was steered to the proxy's listener.
    InboundSteered,
    /// Inbound: not steered: the port is not captured (`-b`, `-d`) or is the tunnel port `-e`.
    InboundDirectPort,
    /// Inbound: not steered: it arrived on an interface excluded by `-c`.
    InboundDirectInterface,
    /// Inbound: to be steered, but no listener is registered: passed to the application
    /// (`--inbound-fail open`).
    InboundNoListenerOpen,
    /// Inbound: to be steered, but no listener is registered: refused
    /// (`--inbound-fail closed`).
    InboundNoListenerRefused,
    /// The proxy started listening on the capture port and was registered.
    InboundListenerRegistered,
    /// Direct: the route to the destination goes through a `-c` interface.
    DirectExcludedInterface,
    /// Direct: spared by `ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]`.
    DirectOwnerGroup,
    /// Direct: IPv6, and IPv6 is not captured in this pod (no `--dual-stack`, and the pod's
    /// first address is IPv4), as istio-iptables would write no ip6tables rules.
    DirectIpv6Disabled,
    /// A raw socket that could carry TCP or UDP past the rules (or header inclusion on one)
    /// was refused (EPERM) to a process other than the proxy (`--raw-sockets refuse`).
    RawSocketRefused,
    /// `--accelerate`: the proxy's end of a redirected connection was paired with the
    /// application's (both ends in `ACCEL_SOCKETS`): its payload moves socket to socket.
    Accelerated,
    /// `--accelerate`, fall-back: an end sent a message while its peer was not paired (not yet
    /// established on the proxy's side, or already closed); that direction goes through TCP
    /// from then on.
    AccelFallbackNoPeer,
    /// `--accelerate`, fall-back: an end could not be paired (`ACCEL_SOCKETS` full, or the
    /// kernel refused the socket); the connection goes through TCP.
    AccelFallbackNotPaired,
}

impl Counter {
    pub const COUNT: u32 = 27;

    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::Redirected,
        Counter::InboundCaptured,
        Counter::DirectProxy,
        Counter::DirectPassthrough,
        Counter::DirectLocal,
        Counter::DirectExcludedPort,
        Counter::DirectExcludedCidr,
        Counter::DirectNotIncluded,
        Counter::OrigDstHit,
        Counter::OrigDstMiss,
        Counter::PeerNameRestored,
        Counter::OrigDstLost,
        Counter::DnsCaptured,
        Counter::DnsReplyRestored,
        Counter::InboundSteered,
        Counter::InboundDirectPort,
        Counter::InboundDirectInterface,
        Counter::InboundNoListenerOpen,
        Counter::InboundNoListenerRefused,
        Counter::InboundListenerRegistered,
        Counter::DirectExcludedInterface,
        Counter::DirectOwnerGroup,
        Counter::DirectIpv6Disabled,
        Counter::RawSocketRefused,
        Counter::Accelerated,
        Counter::AccelFallbackNoPeer,
        Counter::AccelFallbackNotPaired,
    ];

    /// The name user space reports (status, metrics).
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Redirected => "redirected",
            Counter::InboundCaptured => "inbound_captured",
            Counter::DirectProxy => "direct_proxy_owner",
            Counter::DirectPassthrough => "direct_passthrough_source",
            Counter::DirectLocal => "direct_local_destination",
            Counter::DirectExcludedPort => "direct_excluded_port",
            Counter::DirectExcludedCidr => "direct_excluded_cidr",
            Counter::DirectNotIncluded => "direct_not_included",
            Counter::OrigDstHit => "original_dst_hits",
            Counter::OrigDstMiss => "original_dst_misses",
            Counter::PeerNameRestored => "peer_name_restored",
            Counter::OrigDstLost => "original_dst_lost",
            Counter::DnsCaptured => "dns_captured",
            Counter::DnsReplyRestored => "dns_reply_source_restored",
            Counter::InboundSteered => "inbound_steered",
            Counter::InboundDirectPort => "inbound_direct_port",
            Counter::InboundDirectInterface => "inbound_direct_interface",
            Counter::InboundNoListenerOpen => "inbound_no_listener_passed",
            Counter::InboundNoListenerRefused => "inbound_no_listener_refused",
            Counter::InboundListenerRegistered => "inbound_listener_registered",
            Counter::DirectExcludedInterface => "direct_excluded_interface",
            Counter::DirectOwnerGroup => "direct_owner_group",
            Counter::DirectIpv6Disabled => "direct_ipv6_disabled",
            Counter::RawSocketRefused => "raw_socket_refused",
            Counter::Accelerated => "accelerated",
            Counter::AccelFallbackNoPeer => "accel_fallback_no_peer",
            Counter::AccelFallbackNotPaired => "accel_fallback_not_paired",
        }
    }

    /// Index into `COUNTERS`.
    #[inline(always)]
    pub const fn slot(self, pod_index: u32) -> u32 {
        pod_index * Self::COUNT + self as u32
    }

    /// The counter named `name` (as `name` gives it), if this build has it.
    pub fn from_name(name: &str) -> Option<Counter> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_counter_in_slot_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as u32, i as u32);
        }
        assert_eq!(Counter::OrigDstLost.slot(2), 2 * Counter::COUNT + 11);
    }
}
