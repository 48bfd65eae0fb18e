//! The inbound decision, as one pure function that both the `sk_lookup` program and the host's
//! unit tests run. It follows the nat `PREROUTING` / `ISTIO_INBOUND` rules istio-iptables
//! writes: `-c` interfaces first, then the tunnel port `-e`, then `-d` (with `-b '*'`) or the
//! `-b` list. Only connections that arrive on one of the pod's interfaces get here (never over
//! loopback: istio's nat PREROUTING never sees a locally made connection either). The same
//! rules serve both families, as istio-iptables writes the same `ISTIO_INBOUND` chain into
//! iptables and ip6tables.

use crate::{
    counters::Counter,
    decision::{Family, RuleSets, V4, V6},
    model::{LOOPBACK_IFINDEX, PodConfig, PortSet, flags},
    wire::{RawIpv4, RawIpv6},
};

/// A new TCP connection as `sk_lookup` sees it (before any listener is chosen).
#[derive(Clone, Copy, Debug)]
pub struct InboundLookup<A> {
    /// Destination port, host order.
    pub port: u16,
    /// The interface it arrived on. For a connection made inside the pod to one of its own
    /// addresses this is the interface holding that address, not loopback (the kernel reports
    /// the local route's device), hence `remote`.
    pub ifindex: u32,
    /// Source address.
    pub remote: A,
}

/// An IPv4 connection.
pub type InboundLookup4 = InboundLookup<RawIpv4>;
/// An IPv6 connection.
pub type InboundLookup6 = InboundLookup<RawIpv6>;

/// What to do with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboundVerdict {
    /// Leave it to the ordinary socket lookup (the application, or nobody). `None` for traffic
    /// that is not inbound capture's business at all (loopback, no capture configured).
    Pass(Option<Counter>),
    /// Hand it to the proxy's capture listener, keeping its destination.
    Steer,
}

/// `decide_inbound` for IPv4.
#[inline(always)]
pub fn decide_inbound4(
    cfg: &PodConfig,
    c: &InboundLookup4,
    sets: &impl RuleSets,
) -> InboundVerdict {
    decide_inbound::<V4>(cfg, c, sets)
}

/// `decide_inbound` for IPv6.
#[inline(always)]
pub fn decide_inbound6(
    cfg: &PodConfig,
    c: &InboundLookup6,
    sets: &impl RuleSets,
) -> InboundVerdict {
    decide_inbound::<V6>(cfg, c, sets)
}

/// Decide one inbound connection of a pod with inbound capture configured or not.
#[inline(always)]
pub fn decide_inbound<F: Family>(
    cfg: &PodConfig,
    c: &InboundLookup<F::Addr>,
    sets: &impl RuleSets,
) -> InboundVerdict {
    // No inbound capture, or none for this family (no ip6tables rules without IPv6).
    if !cfg.has(flags::INBOUND_CAPTURE) || (F::ENABLED_BY != 0 && !cfg.has(F::ENABLED_BY)) {
        return InboundVerdict::Pass(None);
    }
    // Made inside the pod: from a local source (a packet from outside with a local source is a
    // martian the kernel drops before any socket lookup). Envoy's passthrough source counts as
    // local too (127.0.0.6 is loopback anyway; ::6 is an address the pod puts on lo, perhaps
    // after init), so the sidecar's connection to the application is never steered back.
    if c.ifindex == LOOPBACK_IFINDEX || F::is_local(cfg, c.remote) || c.remote == F::PASSTHROUGH_SRC
    {
        return InboundVerdict::Pass(None);
    }
    if cfg.is_excluded_interface(c.ifindex) {
        return InboundVerdict::Pass(Some(Counter::InboundDirectInterface));
    }
    // Connections addressed to the capture port itself already reach the listener.
    if c.port == cfg.inbound_tunnel_port || c.port == cfg.inbound_capture_port {
        return InboundVerdict::Pass(Some(Counter::InboundDirectPort));
    }
    let captured = if cfg.has(flags::INBOUND_ALL_PORTS) {
        !(cfg.has(flags::HAS_INBOUND_PORTS_EXCLUDE)
            && sets.has_port(cfg.rules, PortSet::InboundExclude, c.port))
    } else {
        sets.has_port(cfg.rules, PortSet::InboundInclude, c.port)
    };
    if captured {
        InboundVerdict::Steer
    } else {
        InboundVerdict::Pass(Some(Counter::InboundDirectPort))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::CidrSet, wire::raw_ipv4};

    /// Port sets as plain lists.
    struct Sets {
        include: &'static [u16],
        exclude: &'static [u16],
    }

    impl RuleSets for Sets {
        fn has_port(&self, _rules: u32, set: PortSet, port: u16) -> bool {
            match set {
                PortSet::InboundInclude => self.include.contains(&port),
                PortSet::InboundExclude => self.exclude.contains(&port),
                _ => false,
            }
        }
        fn has_cidr4(&self, _: u32, _: CidrSet, _: RawIpv4) -> bool {
            false
        }
        fn has_cidr6(&self, _: u32, _: CidrSet, _: crate::wire::RawIpv6) -> bool {
            false
        }
        fn route_excluded4(&self, _: u32, _: RawIpv4) -> bool {
            false
        }
        fn route_excluded6(&self, _: u32, _: crate::wire::RawIpv6) -> bool {
            false
        }
    }

    fn cfg(flags: u32) -> PodConfig {
        let mut c = PodConfig::empty();
        c.flags = flags;
        c.inbound_capture_port = 15006;
        c.inbound_tunnel_port = 15008;
        c.exclude_ifindex[0] = 7;
        c.n_exclude_ifindex = 1;
        c.local4[0] = POD_IP;
        c.n_local4 = 1;
        c
    }

    const POD_IP: RawIpv4 = raw_ipv4([10, 0, 0, 2]);

    fn on(port: u16, ifindex: u32) -> InboundLookup4 {
        InboundLookup {
            port,
            ifindex,
            remote: raw_ipv4([10, 0, 0, 1]),
        }
    }

    const SEED: Sets = Sets {
        include: &[9080],
        exclude: &[],
    };

    #[test]
    fn listed_ports_are_steered_and_others_pass() {
        let c = cfg(flags::INBOUND_CAPTURE);
        assert_eq!(
            decide_inbound4(&c, &on(9080, 2), &SEED),
            InboundVerdict::Steer
        );
        assert_eq!(
            decide_inbound4(&c, &on(8080, 2), &SEED),
            InboundVerdict::Pass(Some(Counter::InboundDirectPort))
        );
    }

    #[test]
    fn wildcard_minus_excluded_ports_never_the_tunnel_or_capture_port() {
        let sets = Sets {
            include: &[],
            exclude: &[15020, 15090],
        };
        let c = cfg(flags::INBOUND_CAPTURE
            | flags::INBOUND_ALL_PORTS
            | flags::HAS_INBOUND_PORTS_EXCLUDE);
        assert_eq!(
            decide_inbound4(&c, &on(9080, 2), &sets),
            InboundVerdict::Steer
        );
        assert_eq!(decide_inbound4(&c, &on(1, 2), &sets), InboundVerdict::Steer);
        for port in [15020, 15090, 15008, 15006] {
            assert_eq!(
                decide_inbound4(&c, &on(port, 2), &sets),
                InboundVerdict::Pass(Some(Counter::InboundDirectPort)),
                "port {port}"
            );
        }
        // -d is only a filter when -b is '*' (istio-iptables ignores it otherwise).
        let c = cfg(flags::INBOUND_CAPTURE | flags::INBOUND_ALL_PORTS);
        assert_eq!(
            decide_inbound4(&c, &on(15020, 2), &sets),
            InboundVerdict::Steer
        );
    }

    #[test]
    fn loopback_excluded_interfaces_and_no_capture_pass() {
        let c = cfg(flags::INBOUND_CAPTURE | flags::INBOUND_ALL_PORTS);
        assert_eq!(
            decide_inbound4(&c, &on(9080, LOOPBACK_IFINDEX), &SEED),
            InboundVerdict::Pass(None)
        );
        // The sidecar's passthrough connection to the pod's address: from 127.0.0.6, or from
        // the pod's own address, reported on the pod's interface.
        for remote in [raw_ipv4([127, 0, 0, 6]), POD_IP] {
            let c2 = InboundLookup {
                remote,
                ..on(9080, 2)
            };
            assert_eq!(decide_inbound4(&c, &c2, &SEED), InboundVerdict::Pass(None));
        }
        assert_eq!(
            decide_inbound4(&c, &on(9080, 7), &SEED),
            InboundVerdict::Pass(Some(Counter::InboundDirectInterface))
        );
        let c = cfg(0);
        assert_eq!(
            decide_inbound4(&c, &on(9080, 2), &SEED),
            InboundVerdict::Pass(None)
        );
    }

    #[test]
    fn ipv6_follows_the_same_rules_with_its_own_local_addresses() {
        use crate::wire::{LOCALHOST6, PASSTHROUGH_SRC6, raw_ipv6};
        let v6 = |s: &str| raw_ipv6(s.parse::<core::net::Ipv6Addr>().unwrap().octets());
        let mut c = cfg(flags::INBOUND_CAPTURE | flags::IPV6);
        c.local6[0] = v6("fd00:200::2");
        c.n_local6 = 1;
        let from = |remote, port, ifindex| InboundLookup6 {
            port,
            ifindex,
            remote,
        };
        let client = v6("fd00:200::1");
        assert_eq!(
            decide_inbound6(&c, &from(client, 9080, 2), &SEED),
            InboundVerdict::Steer
        );
        for port in [8080, 15008, 15006] {
            assert_eq!(
                decide_inbound6(&c, &from(client, port, 2), &SEED),
                InboundVerdict::Pass(Some(Counter::InboundDirectPort)),
                "port {port}"
            );
        }
        assert_eq!(
            decide_inbound6(&c, &from(client, 9080, 7), &SEED),
            InboundVerdict::Pass(Some(Counter::InboundDirectInterface))
        );
        // Made inside the pod: from ::6 (the sidecar's passthrough), ::1 or its own address,
        // whatever interface the kernel reports.
        for remote in [PASSTHROUGH_SRC6, LOCALHOST6, v6("fd00:200::2")] {
            assert_eq!(
                decide_inbound6(&c, &from(remote, 9080, 2), &SEED),
                InboundVerdict::Pass(None)
            );
        }
        // The pod's IPv4 address in IPv4-compatible form is not the pod.
        assert_eq!(
            decide_inbound6(&c, &from([0, 0, 0, POD_IP], 9080, 2), &SEED),
            InboundVerdict::Steer
        );
        // IPv6 not captured in this pod: never steered; IPv4 still is.
        c.flags &= !flags::IPV6;
        assert_eq!(
            decide_inbound6(&c, &from(client, 9080, 2), &SEED),
            InboundVerdict::Pass(None)
        );
        assert_eq!(
            decide_inbound4(&c, &on(9080, 2), &SEED),
            InboundVerdict::Steer
        );
    }
}
