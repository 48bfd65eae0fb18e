//! The inbound decision, as one pure function that both the `sk_lookup` program and the host's
//! unit tests run. It follows the nat `PREROUTING` / `ISTIO_INBOUND` rules istio-iptables
//! writes: `-c` interfaces first, then the tunnel port `-e`, then `-d` (with `-b '*'`) or the
//! `-b` list. Only connections that arrive on one of the pod's interfaces get here (never over
//! loopback: istio's nat PREROUTING never sees a locally made connection either). The same
//! rules serve both families, as istio-iptables writes the same `ISTIO_INBOUND` chain into
//! iptables and ip6tables.

use crate::{
    counters::Counter,
    decision::RuleSets,
    family::Family,
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

/// The rule of istio-iptables' `PREROUTING` / `ISTIO_INBOUND` rules that decided an inbound
/// connection (or why none applies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboundRule {
    /// No inbound capture (`-b ''`), or none for this family: `PREROUTING` has no jump to
    /// `ISTIO_INBOUND`.
    NotCaptured,
    /// Made inside the pod (loopback, a local source, Envoy's passthrough source): nat
    /// `PREROUTING` never sees it.
    MadeInPod,
    /// `PREROUTING -i <-c interface> -j RETURN`
    ExcludedInterface,
    /// `ISTIO_INBOUND -p tcp --dport <-e> -j RETURN`
    TunnelPort,
    /// To `-z` itself: it reaches the proxy's listener as it is.
    CapturePort,
    /// `ISTIO_INBOUND -p tcp --dport <-d port> -j RETURN` (with `-b '*'`)
    ExcludedPort,
    /// `ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT` (`-b '*'`)
    AllPorts,
    /// `ISTIO_INBOUND -p tcp --dport <-b port> -j ISTIO_IN_REDIRECT`
    ListedPort,
    /// No `-b` port matched: the end of `ISTIO_INBOUND`.
    NotListed,
}

/// An inbound verdict and the rule that gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboundDecision {
    pub verdict: InboundVerdict,
    pub rule: InboundRule,
}

/// Decide one inbound connection of a pod with inbound capture configured or not.
#[inline(always)]
pub fn decide_inbound<F: Family>(
    cfg: &PodConfig,
    c: &InboundLookup<F::Addr>,
    sets: &impl RuleSets<F>,
) -> InboundVerdict {
    decide_inbound_by_rule(cfg, c, sets).verdict
}

/// `decide_inbound`, with the rule that decided.
#[inline(always)]
pub fn decide_inbound_by_rule<F: Family>(
    cfg: &PodConfig,
    c: &InboundLookup<F::Addr>,
    sets: &impl RuleSets<F>,
) -> InboundDecision {
    use InboundRule::*;
    let pass = |counter, rule| InboundDecision {
        verdict: InboundVerdict::Pass(counter),
        rule,
    };
    // No inbound capture, or none for this family (no ip6tables rules without IPv6).
    if !cfg.has(flags::INBOUND_CAPTURE) || (F::ENABLED_BY != 0 && !cfg.has(F::ENABLED_BY)) {
        return pass(None, NotCaptured);
    }
    // Made inside the pod: from a local source (a packet from outside with a local source is a
    // martian the kernel drops before any socket lookup). Envoy's passthrough source counts as
    // local too (127.0.0.6 is loopback anyway; ::6 is an address the pod puts on lo, perhaps
    // after init), so the sidecar's connection to the application is never steered back.
    if c.ifindex == LOOPBACK_IFINDEX || F::is_local(cfg, c.remote) || c.remote == F::PASSTHROUGH_SRC
    {
        return pass(None, MadeInPod);
    }
    if cfg.is_excluded_interface(c.ifindex) {
        return pass(Some(Counter::InboundDirectInterface), ExcludedInterface);
    }
    if c.port == cfg.inbound_tunnel_port {
        return pass(Some(Counter::InboundDirectPort), TunnelPort);
    }
    // Connections addressed to the capture port itself already reach the listener.
    if c.port == cfg.inbound_capture_port {
        return pass(Some(Counter::InboundDirectPort), CapturePort);
    }
    let steer = |rule| InboundDecision {
        verdict: InboundVerdict::Steer,
        rule,
    };
    if cfg.has(flags::INBOUND_ALL_PORTS) {
        if cfg.has(flags::HAS_INBOUND_PORTS_EXCLUDE)
            && sets.has_port(cfg.rules, PortSet::InboundExclude, c.port)
        {
            return pass(Some(Counter::InboundDirectPort), ExcludedPort);
        }
        return steer(AllPorts);
    }
    if sets.has_port(cfg.rules, PortSet::InboundInclude, c.port) {
        return steer(ListedPort);
    }
    pass(Some(Counter::InboundDirectPort), NotListed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        family::{V4, V6},
        testing::{Fixture, POD_IP, Sets, in_both_families, pod},
    };
    use InboundVerdict::{Pass, Steer};

    /// A connection from a host outside the pod, to `port`, arriving on interface `ifindex`.
    fn on<F: Fixture>(port: u16, ifindex: u32) -> InboundLookup<F::Addr> {
        from::<F>(F::ip("10.1.0.1"), port, ifindex)
    }

    fn from<F: Family>(remote: F::Addr, port: u16, ifindex: u32) -> InboundLookup<F::Addr> {
        InboundLookup {
            port,
            ifindex,
            remote,
        }
    }

    /// `pod()` with inbound capture, and `-c` naming interface 7.
    fn cfg(flags_: u32) -> PodConfig {
        let mut c = pod(flags_);
        c.exclude_ifindex[0] = 7;
        c.n_exclude_ifindex = 1;
        c
    }

    fn check<F: Fixture>(
        c: &PodConfig,
        sets: &Sets,
        cases: &[(InboundLookup<F::Addr>, InboundVerdict)],
    ) {
        for (lookup, want) in cases {
            assert_eq!(decide_inbound::<F>(c, lookup, sets), *want, "{lookup:?}");
            let decided = decide_inbound_by_rule::<F>(c, lookup, sets);
            assert_eq!(decided.verdict, *want, "{lookup:?}");
        }
    }

    /// `-b 9080`.
    fn seed() -> Sets {
        Sets::default().port(PortSet::InboundInclude, 9080)
    }

    /// The rules that decided each case.
    fn rules<F: Fixture>(
        c: &PodConfig,
        sets: &Sets,
        cases: &[(InboundLookup<F::Addr>, InboundRule)],
    ) {
        for (lookup, want) in cases {
            assert_eq!(
                decide_inbound_by_rule::<F>(c, lookup, sets).rule,
                *want,
                "{lookup:?}"
            );
        }
    }

    in_both_families!(
        each_inbound_rule_is_named,
        listed_ports_are_steered_and_others_pass,
        wildcard_minus_excluded_ports_never_the_tunnel_or_capture_port,
        loopback_local_sources_excluded_interfaces_and_no_capture_pass,
    );

    fn each_inbound_rule_is_named<F: Fixture>() {
        use InboundRule::*;
        let listed = cfg(flags::INBOUND_CAPTURE);
        rules::<F>(
            &listed,
            &seed(),
            &[
                (on::<F>(9080, 2), ListedPort),
                (on::<F>(8080, 2), NotListed),
                (on::<F>(15008, 2), TunnelPort),
                (on::<F>(15006, 2), CapturePort),
                (on::<F>(9080, 7), ExcludedInterface),
                (on::<F>(9080, LOOPBACK_IFINDEX), MadeInPod),
            ],
        );
        let all = cfg(flags::INBOUND_CAPTURE
            | flags::INBOUND_ALL_PORTS
            | flags::HAS_INBOUND_PORTS_EXCLUDE);
        let sets = Sets::default().port(PortSet::InboundExclude, 15090);
        rules::<F>(
            &all,
            &sets,
            &[
                (on::<F>(9080, 2), AllPorts),
                (on::<F>(15090, 2), ExcludedPort),
            ],
        );
        rules::<F>(&cfg(0), &seed(), &[(on::<F>(9080, 2), NotCaptured)]);
    }

    fn listed_ports_are_steered_and_others_pass<F: Fixture>() {
        let c = cfg(flags::INBOUND_CAPTURE);
        check::<F>(
            &c,
            &seed(),
            &[
                (on::<F>(9080, 2), Steer),
                (on::<F>(8080, 2), Pass(Some(Counter::InboundDirectPort))),
            ],
        );
    }

    fn wildcard_minus_excluded_ports_never_the_tunnel_or_capture_port<F: Fixture>() {
        let sets = Sets::default()
            .port(PortSet::InboundExclude, 15020)
            .port(PortSet::InboundExclude, 15090);
        let c = cfg(flags::INBOUND_CAPTURE
            | flags::INBOUND_ALL_PORTS
            | flags::HAS_INBOUND_PORTS_EXCLUDE);
        check::<F>(
            &c,
            &sets,
            &[(on::<F>(9080, 2), Steer), (on::<F>(1, 2), Steer)],
        );
        for port in [15020, 15090, 15008, 15006] {
            check::<F>(
                &c,
                &sets,
                &[(on::<F>(port, 2), Pass(Some(Counter::InboundDirectPort)))],
            );
        }
        // -d is only a filter when -b is '*' (istio-iptables ignores it otherwise).
        let c = cfg(flags::INBOUND_CAPTURE | flags::INBOUND_ALL_PORTS);
        check::<F>(&c, &sets, &[(on::<F>(15020, 2), Steer)]);
    }

    fn loopback_local_sources_excluded_interfaces_and_no_capture_pass<F: Fixture>() {
        let c = cfg(flags::INBOUND_CAPTURE | flags::INBOUND_ALL_PORTS);
        check::<F>(
            &c,
            &seed(),
            &[
                (on::<F>(9080, LOOPBACK_IFINDEX), Pass(None)),
                // Made inside the pod, whatever interface the kernel reports: the sidecar's
                // passthrough connection (from 127.0.0.6 or ::6), or from localhost or the
                // pod's own address.
                (from::<F>(F::PASSTHROUGH_SRC, 9080, 2), Pass(None)),
                (from::<F>(F::LOCALHOST, 9080, 2), Pass(None)),
                (from::<F>(F::ip(POD_IP), 9080, 2), Pass(None)),
                (
                    on::<F>(9080, 7),
                    Pass(Some(Counter::InboundDirectInterface)),
                ),
            ],
        );
        check::<F>(&cfg(0), &seed(), &[(on::<F>(9080, 2), Pass(None))]);
    }

    #[test]
    fn ipv6_is_steered_only_where_it_is_captured() {
        let mut c = cfg(flags::INBOUND_CAPTURE);
        // The pod's IPv4 address in IPv4-compatible form is not the pod.
        let compatible = from::<V6>([0, 0, 0, V4::ip(POD_IP)], 9080, 2);
        check::<V6>(&c, &seed(), &[(compatible, Steer)]);
        // IPv6 not captured in this pod: never steered; IPv4 still is.
        c.flags &= !flags::IPV6;
        check::<V6>(&c, &seed(), &[(on::<V6>(9080, 2), Pass(None))]);
        check::<V4>(&c, &seed(), &[(on::<V4>(9080, 2), Steer)]);
    }
}
