//! The outbound decision table, as one pure function that the `connect4`/`connect6` and
//! `sendmsg4` programs and the host's unit tests run. It follows the `ISTIO_OUTPUT` chain that
//! istio-iptables writes, rule by rule, so that the same flags mean the same thing under either
//! backend. One function serves both families (`Family`): istio-iptables writes the same chain
//! into iptables and ip6tables, with only the loopback, passthrough and CIDR values differing.
//! IPv4-mapped destinations of a dual-stack socket are IPv4 connections, decided as `V4`.

use crate::{
    counters::Counter,
    family::Family,
    model::{CidrSet, DNS_CAPTURE_PORT, DNS_PORT, PodConfig, PortSet, flags},
    wire::{RawIpv4, RawIpv6, UNSPECIFIED4, ipv4_from_mapped},
};

/// The transport of a connect or datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    /// Only DNS is ever redirected for UDP (istio's `ISTIO_REDIRECT` matches TCP only).
    Udp,
}

/// A TCP connect, a UDP connect or a UDP `sendto()`, as the cgroup hooks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connect<A> {
    pub proto: Proto,
    /// Destination the application asked for.
    pub dst: A,
    /// Host order.
    pub dst_port: u16,
    /// Address the socket is bound to (unspecified when unbound).
    pub src: A,
    pub uid: u32,
    pub gid: u32,
}

/// An IPv4 connect (also an IPv4-mapped one from a dual-stack socket, unmapped).
pub type Connect4 = Connect<RawIpv4>;
/// An IPv6 connect.
pub type Connect6 = Connect<RawIpv6>;

impl Connect6 {
    /// The IPv4 connect a dual-stack socket makes when it dials an IPv4-mapped destination
    /// (`::ffff:a.b.c.d`): addresses unmapped, a bound address that is not IPv4-mapped
    /// unspecified.
    #[inline(always)]
    pub fn unmapped(&self) -> Option<Connect4> {
        Some(Connect {
            proto: self.proto,
            dst: ipv4_from_mapped(self.dst)?,
            dst_port: self.dst_port,
            src: ipv4_from_mapped(self.src).unwrap_or(UNSPECIFIED4),
            uid: self.uid,
            gid: self.gid,
        })
    }
}

/// What to do with the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Leave it alone; the counter says why.
    Direct(Counter),
    /// Send it to localhost:`port` (127.0.0.1 or ::1), remembering the original destination;
    /// the counter says which capture it is (outbound, the proxy's inbound capture, or DNS).
    Redirect { port: u16, counter: Counter },
}

/// Membership tests the decision needs from the per-pod sets of one family (maps in the kernel).
pub trait RuleSets<F: Family> {
    fn has_port(&self, rules: u32, set: PortSet, port: u16) -> bool;
    /// The value of the most specific `set` range holding `addr` (a longest-prefix match), if
    /// any range holds it.
    fn longest_match(&self, rules: u32, set: CidrSet, addr: F::Addr) -> Option<u8>;

    /// Whether one of the `set` ranges (`-i`, `-x`) holds `addr`.
    #[inline(always)]
    fn has_cidr(&self, rules: u32, set: CidrSet, addr: F::Addr) -> bool {
        self.longest_match(rules, set, addr).is_some()
    }

    /// Whether the pod's route to `addr` (the most specific `CidrSet::Route` entry) goes
    /// through a `-c` interface.
    #[inline(always)]
    fn route_excluded(&self, rules: u32, addr: F::Addr) -> bool {
        self.longest_match(rules, CidrSet::Route, addr) == Some(1)
    }
}

/// Which owner rule group is being walked: istio-iptables writes the same three rules per uid
/// and per gid, with one difference under DNS capture (below).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// `-u`: `-m owner --uid-owner`.
    Uid,
    /// `-g`: `-m owner --gid-owner`.
    Gid,
}

/// One of the proxy's ids: the `index`th of `-u`, or of `-g` (istio-iptables writes a group of
/// rules per id, in that order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyId {
    pub owner: Owner,
    pub index: u8,
}

/// The rule of istio-iptables' chains that decided an outbound connection, named as
/// `decide_outbound`'s list numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboundRule {
    /// IPv6 and no ip6tables rules at all (istio-iptables' `EnableIPv6` off).
    Ipv6NotCaptured,
    /// 0. `OUTPUT -o <-c interface> -j RETURN` (the route to the destination leaves there).
    ExcludedInterface,
    /// 1. `-p tcp|udp --dport <-o port> -j RETURN`
    OutboundPortExclude,
    /// 2. `-o lo -s 127.0.0.6/32 -j RETURN`
    InboundPassthrough,
    /// 3a. the proxy calling its own pod over lo: `-j ISTIO_IN_REDIRECT`.
    ProxyToOwnPod(ProxyId),
    /// 3b. anyone but this proxy id over lo: `-j RETURN`.
    OthersOverLo(ProxyId),
    /// 3c. this proxy id: `-j RETURN`.
    ProxyOwner(ProxyId),
    /// 3d. `ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]`.
    OwnerGroups,
    /// 4. DNS capture: `ISTIO_OUTPUT_DNS`'s REDIRECT to 15053.
    DnsCapture,
    /// 5. `-d 127.0.0.1/32 -j RETURN`
    Localhost,
    /// 6. `-d <-x cidr> -j RETURN`
    ExcludeCidr,
    /// 7. `-p tcp --dport <-q port> -j ISTIO_REDIRECT`
    OutboundPortInclude,
    /// 8. `-i '*'`: `-j ISTIO_REDIRECT`
    IncludeAll,
    /// 8. `-d <-i cidr> -j ISTIO_REDIRECT`
    IncludeCidr,
    /// 8. UDP past the excludes: `ISTIO_REDIRECT` redirects TCP only, so nothing matches it.
    UdpNotRedirected,
    /// 9. no rule matched: the chain ends (OUTPUT's policy, ACCEPT).
    EndOfChain,
}

/// An outbound verdict and the rule that gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub rule: OutboundRule,
}

impl Decision {
    #[inline(always)]
    const fn direct(counter: Counter, rule: OutboundRule) -> Self {
        Decision {
            verdict: Verdict::Direct(counter),
            rule,
        }
    }
}

/// Decide an outbound connect or datagram. IPv6 is decided only when the pod captures IPv6
/// (`flags::IPV6`), as ip6tables rules exist only then. Rule order is istio-iptables'
/// `ISTIO_OUTPUT` chain,
/// walked literally (first match wins), so that its quirks come out the same (shown for IPv4;
/// the IPv6 chain has `::1/128` and `::6/128` in their places):
///
/// 0. (nat `OUTPUT`, before the jump to `ISTIO_OUTPUT`) `-o <-c interface> -j RETURN`
/// 1. `-p tcp|udp --dport <-o port> -j RETURN`
/// 2. `-o lo -s 127.0.0.6/32 -j RETURN`
/// 3. per proxy uid U, then per proxy gid G (owner match `X`):
///    a. `-o lo ! -d 127.0.0.1/32 -p tcp ! --dport <-e> -m owner X -j ISTIO_IN_REDIRECT`
///    (with DNS capture, the uid form is `-m multiport ! --dports 53,<-e>`; the gid form is not);
///    b. `-o lo -m owner ! X -j RETURN` (with DNS capture: `-o lo -p tcp ! --dport 53 ...`;
///    left out when an `-i` range holds a loopback address, of either family);
///    c. `-m owner X -j RETURN`
///    d. owner groups: `-m owner --gid-owner <excluded group> -j RETURN`, or
///    `-m owner ! --gid-owner <g1> ! --gid-owner <g2> ... -j RETURN` for an include list
/// 4. DNS capture: `-p tcp|udp --dport 53 [-d <name server>] -j REDIRECT --to-ports 15053`
/// 5. `-d 127.0.0.1/32 -j RETURN`
/// 6. `-d <-x cidr> -j RETURN`
/// 7. `-p tcp --dport <-q port> -j ISTIO_REDIRECT`
/// 8. `-i '*'`: `-j ISTIO_REDIRECT`; else `-d <-i cidr> -j ISTIO_REDIRECT`
///    (`ISTIO_REDIRECT` only redirects TCP: UDP that gets here goes direct)
/// 9. otherwise the chain ends: direct.
///
/// Over lo, rule 3b of the first uid settles every connection that is not the proxy's, so
/// later uids and the gids only matter for traffic leaving the pod, as under istio-iptables.
/// A connect to 0.0.0.0 or `::` is decided as the localhost connection the kernel makes of it.
/// At most four set lookups whatever the family (`-o`, `-x`, `-q`, `-i`), each only when its
/// set is not empty.
#[inline(always)]
pub fn decide_outbound<F: Family>(
    cfg: &PodConfig,
    c: &Connect<F::Addr>,
    sets: &impl RuleSets<F>,
) -> Verdict {
    decide_outbound_by_rule(cfg, c, sets).verdict
}

/// `decide_outbound`, with the rule that decided (what `explain` and `trace` name).
#[inline(always)]
pub fn decide_outbound_by_rule<F: Family>(
    cfg: &PodConfig,
    c: &Connect<F::Addr>,
    sets: &impl RuleSets<F>,
) -> Decision {
    use OutboundRule::*;
    // No ip6tables rules at all (istio-iptables' EnableIPv6 off): IPv6 goes direct.
    if F::ENABLED_BY != 0 && !cfg.has(F::ENABLED_BY) {
        return Decision::direct(Counter::DirectIpv6Disabled, Ipv6NotCaptured);
    }
    let rules = cfg.rules;
    let tcp = c.proto == Proto::Tcp;
    let dns = cfg.has(flags::REDIRECT_DNS);
    let dst = if c.dst == F::UNSPECIFIED {
        F::LOCALHOST
    } else {
        c.dst
    };
    let over_lo = F::is_local(cfg, dst);
    // Local destinations leave through lo, never through a `-c` interface.
    if cfg.has(F::HAS_EXCLUDED_ROUTES) && !over_lo && sets.route_excluded(rules, dst) {
        return Decision::direct(Counter::DirectExcludedInterface, ExcludedInterface);
    }
    if cfg.has(flags::HAS_OUTBOUND_PORTS_EXCLUDE)
        && sets.has_port(rules, PortSet::OutboundExclude, c.dst_port)
    {
        return Decision::direct(Counter::DirectExcludedPort, OutboundPortExclude);
    }

    if over_lo && c.src == F::PASSTHROUGH_SRC {
        return Decision::direct(Counter::DirectPassthrough, InboundPassthrough);
    }

    if let Some(v) = owner_rules::<F>(cfg, c, dst, Owner::Uid, over_lo, tcp, dns) {
        return v;
    }
    if let Some(v) = owner_rules::<F>(cfg, c, dst, Owner::Gid, over_lo, tcp, dns) {
        return v;
    }
    if cfg.owner_group_spared(c.gid) {
        return Decision::direct(Counter::DirectOwnerGroup, OwnerGroups);
    }

    if c.dst_port == DNS_PORT && F::is_captured_dns_server(cfg, dst) {
        return Decision {
            verdict: Verdict::Redirect {
                port: DNS_CAPTURE_PORT,
                counter: Counter::DnsCaptured,
            },
            rule: DnsCapture,
        };
    }

    if F::is_localhost(cfg, dst) {
        return Decision::direct(Counter::DirectLocal, Localhost);
    }
    if cfg.has(F::HAS_EXCLUDE_CIDRS) && sets.has_cidr(rules, CidrSet::Exclude, dst) {
        return Decision::direct(Counter::DirectExcludedCidr, ExcludeCidr);
    }
    if !tcp {
        return Decision::direct(Counter::DirectNotIncluded, UdpNotRedirected);
    }
    let redirect = |rule| Decision {
        verdict: Verdict::Redirect {
            port: cfg.proxy_port,
            counter: Counter::Redirected,
        },
        rule,
    };
    if cfg.has(flags::HAS_OUTBOUND_PORTS_INCLUDE)
        && sets.has_port(rules, PortSet::OutboundInclude, c.dst_port)
    {
        return redirect(OutboundPortInclude);
    }
    if cfg.has(flags::INCLUDE_ALL) {
        return redirect(IncludeAll);
    }
    if cfg.has(F::HAS_INCLUDE_CIDRS) && sets.has_cidr(rules, CidrSet::Include, dst) {
        return redirect(IncludeCidr);
    }
    Decision::direct(Counter::DirectNotIncluded, EndOfChain)
}

/// Rules 3a-3c for every uid (or gid) in order. `None`: no rule matched, walk on.
#[inline(always)]
fn owner_rules<F: Family>(
    cfg: &PodConfig,
    c: &Connect<F::Addr>,
    dst: F::Addr,
    owner: Owner,
    over_lo: bool,
    tcp: bool,
    dns: bool,
) -> Option<Decision> {
    let (ids, n, id) = match owner {
        Owner::Uid => (&cfg.uids, cfg.n_uids, c.uid),
        Owner::Gid => (&cfg.gids, cfg.n_gids, c.gid),
    };
    // The proxy calling its own pod (over lo, not localhost): capture it on the inbound side
    // (app -> proxy -> proxy -> app). Under DNS capture the uid rule spares port 53 too.
    let capturable = tcp
        && over_lo
        && !F::is_localhost(cfg, dst)
        && c.dst_port != cfg.inbound_tunnel_port
        && !(dns && owner == Owner::Uid && c.dst_port == DNS_PORT);
    // "Everyone else over lo goes direct"; under DNS capture only for TCP other than port 53.
    let others_direct =
        over_lo && !cfg.has(flags::LOOPBACK_INCLUDED) && (!dns || (tcp && c.dst_port != DNS_PORT));
    let mut i = 0;
    while i < ids.len() {
        if i >= n as usize {
            break;
        }
        let mine = ids[i] == id;
        let which = ProxyId {
            owner,
            index: i as u8,
        };
        if mine && capturable {
            return Some(Decision {
                verdict: Verdict::Redirect {
                    port: cfg.inbound_capture_port,
                    counter: Counter::InboundCaptured,
                },
                rule: OutboundRule::ProxyToOwnPod(which),
            });
        }
        if !mine && others_direct {
            return Some(Decision::direct(
                Counter::DirectLocal,
                OutboundRule::OthersOverLo(which),
            ));
        }
        if mine {
            return Some(Decision::direct(
                Counter::DirectProxy,
                OutboundRule::ProxyOwner(which),
            ));
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        family::{V4, V6},
        testing::{APP, Fixture, POD_IP, PROXY, Sets, in_both_families, pod},
        wire::LOCALHOST4,
    };
    use Counter::*;
    use Verdict::Direct;

    const OUT: Verdict = Verdict::Redirect {
        port: 15001,
        counter: Redirected,
    };
    const IN: Verdict = Verdict::Redirect {
        port: 15006,
        counter: InboundCaptured,
    };
    const DNS: Verdict = Verdict::Redirect {
        port: 15053,
        counter: DnsCaptured,
    };

    /// A TCP connect from an unbound socket.
    fn to<F: Family>(dst: F::Addr, port: u16, uid: u32, gid: u32) -> Connect<F::Addr> {
        Connect {
            proto: Proto::Tcp,
            dst,
            dst_port: port,
            src: F::UNSPECIFIED,
            uid,
            gid,
        }
    }

    fn tcp<F: Fixture>(dst: &str, port: u16, uid: u32, gid: u32) -> Connect<F::Addr> {
        to::<F>(F::ip(dst), port, uid, gid)
    }

    fn udp<F: Fixture>(dst: &str, port: u16, uid: u32, gid: u32) -> Connect<F::Addr> {
        Connect {
            proto: Proto::Udp,
            ..tcp::<F>(dst, port, uid, gid)
        }
    }

    /// The same connect from a socket bound to Envoy's inbound passthrough source.
    fn from_passthrough<F: Family>(c: Connect<F::Addr>) -> Connect<F::Addr> {
        Connect {
            src: F::PASSTHROUGH_SRC,
            ..c
        }
    }

    fn check<F: Fixture>(cfg: &PodConfig, sets: &Sets, cases: &[(Connect<F::Addr>, Verdict)]) {
        for (c, want) in cases {
            assert_eq!(decide_outbound::<F>(cfg, c, sets), *want, "{c:?}");
            // The decision that names its rule is the same decision.
            assert_eq!(
                decide_outbound_by_rule::<F>(cfg, c, sets).verdict,
                *want,
                "{c:?}"
            );
        }
    }

    /// The rules that decided each case.
    fn rules<F: Fixture>(cfg: &PodConfig, sets: &Sets, cases: &[(Connect<F::Addr>, OutboundRule)]) {
        for (c, want) in cases {
            assert_eq!(
                decide_outbound_by_rule::<F>(cfg, c, sets).rule,
                *want,
                "{c:?}"
            );
        }
    }

    fn dns_pod<F: Fixture>(extra: u32, servers: &[&str]) -> PodConfig {
        let mut cfg = pod(flags::REDIRECT_DNS | extra);
        F::set_dns(&mut cfg, servers);
        cfg
    }

    in_both_families!(
        include_all_table,
        include_list_and_outbound_ports_include,
        second_uid_over_lo_goes_direct_as_in_istio_iptables,
        dns_to_the_name_servers_is_captured_except_for_the_proxy,
        capture_all_dns_and_port_excludes,
        without_dns_capture_udp_is_left_alone,
        unspecified_destination_is_localhost_as_the_kernel_makes_it,
        exclude_interfaces_follow_the_route_a_connection_takes,
        owner_groups_spare_groups_after_the_proxy_rules,
        each_rule_of_istio_output_is_named,
    );

    fn each_rule_of_istio_output_is_named<F: Fixture>() {
        use OutboundRule::*;
        let uid = |index| ProxyId {
            owner: Owner::Uid,
            index,
        };
        let gid = |index| ProxyId {
            owner: Owner::Gid,
            index,
        };
        let mut cfg = pod(F::HAS_INCLUDE_CIDRS
            | F::HAS_EXCLUDE_CIDRS
            | flags::HAS_OUTBOUND_PORTS_EXCLUDE
            | flags::HAS_OUTBOUND_PORTS_INCLUDE
            | F::HAS_EXCLUDED_ROUTES
            | flags::OWNER_GROUPS_EXCEPT);
        cfg.gids[1] = 1338;
        cfg.n_gids = 2;
        cfg.owner_groups[0] = 3000;
        cfg.n_owner_groups = 1;
        let sets = Sets::default()
            .range::<F>(1, CidrSet::Route, "0.0.0.0/0", 0)
            .range::<F>(1, CidrSet::Route, "10.8.0.0/16", 1)
            .range::<F>(1, CidrSet::Exclude, "10.9.0.0/16", 1)
            .range::<F>(1, CidrSet::Include, "10.2.0.0/16", 1)
            .port(PortSet::OutboundExclude, 3306)
            .port(PortSet::OutboundInclude, 8443);
        let tcp = tcp::<F>;
        rules::<F>(
            &cfg,
            &sets,
            &[
                (tcp("10.8.1.1", 80, APP, APP), ExcludedInterface),
                (tcp("10.2.0.1", 3306, APP, APP), OutboundPortExclude),
                (
                    from_passthrough::<F>(tcp(POD_IP, 9080, PROXY, PROXY)),
                    InboundPassthrough,
                ),
                (tcp(POD_IP, 9080, PROXY, PROXY), ProxyToOwnPod(uid(0))),
                (tcp(POD_IP, 9080, APP, APP), OthersOverLo(uid(0))),
                (tcp("10.2.0.1", 80, PROXY, APP), ProxyOwner(uid(0))),
                // Past the uid rules, the gid rules name the index of the gid that matched.
                (tcp("10.2.0.1", 80, APP, 1338), ProxyOwner(gid(1))),
                (tcp("10.2.0.1", 80, APP, 3000), OwnerGroups),
                (to::<F>(F::LOCALHOST, 80, 2000, 2000), OthersOverLo(uid(0))),
                (tcp("10.9.0.1", 80, APP, APP), ExcludeCidr),
                (tcp("192.0.2.1", 8443, APP, APP), OutboundPortInclude),
                (tcp("10.2.0.1", 80, APP, APP), IncludeCidr),
                (udp::<F>("10.2.0.1", 80, APP, APP), UdpNotRedirected),
                (tcp("192.0.2.1", 80, APP, APP), EndOfChain),
            ],
        );
        cfg.flags |= flags::INCLUDE_ALL;
        rules::<F>(&cfg, &sets, &[(tcp("192.0.2.1", 80, APP, APP), IncludeAll)]);
        let dns = dns_pod::<F>(flags::CAPTURE_ALL_DNS, &[]);
        rules::<F>(
            &dns,
            &sets,
            &[(udp::<F>("192.0.2.1", 53, APP, APP), DnsCapture)],
        );
        let loopback = pod(flags::INCLUDE_ALL);
        rules::<F>(
            &loopback,
            &sets,
            &[(to::<F>(F::LOCALHOST, 80, 2000, 2000), OthersOverLo(uid(0)))],
        );
    }

    #[test]
    fn localhost_and_ipv6_not_captured_are_named() {
        let cfg = pod(flags::INCLUDE_ALL | flags::LOOPBACK_INCLUDED);
        let sets = Sets::default();
        rules::<V4>(
            &cfg,
            &sets,
            &[(
                tcp::<V4>("127.0.0.1", 80, APP, APP),
                OutboundRule::Localhost,
            )],
        );
        let mut v4_only = pod(flags::INCLUDE_ALL);
        v4_only.flags &= !flags::IPV6;
        rules::<V6>(
            &v4_only,
            &sets,
            &[(
                tcp::<V6>("10.2.0.1", 80, APP, APP),
                OutboundRule::Ipv6NotCaptured,
            )],
        );
    }

    fn include_all_table<F: Fixture>() {
        let cfg =
            pod(flags::INCLUDE_ALL | F::HAS_EXCLUDE_CIDRS | flags::HAS_OUTBOUND_PORTS_EXCLUDE);
        let sets = Sets::default()
            .range::<F>(1, CidrSet::Exclude, "10.9.0.0/16", 1)
            .port(PortSet::OutboundExclude, 3306);
        let (tcp, local) = (tcp::<F>, |port| to::<F>(F::LOCALHOST, port, APP, APP));
        let remote = "10.2.0.1";
        let proxy_local = to::<F>(F::LOCALHOST, 9080, PROXY, PROXY);
        check::<F>(
            &cfg,
            &sets,
            &[
                (tcp(remote, 80, APP, APP), OUT),
                (tcp("10.9.3.4", 80, APP, APP), Direct(DirectExcludedCidr)),
                (tcp(remote, 3306, APP, APP), Direct(DirectExcludedPort)),
                (tcp(remote, 80, PROXY, PROXY), Direct(DirectProxy)),
                (tcp(remote, 80, APP, PROXY), Direct(DirectProxy)),
                (tcp(remote, 80, PROXY, APP), Direct(DirectProxy)),
                (local(80), Direct(DirectLocal)),
                (tcp(POD_IP, 9080, APP, APP), Direct(DirectLocal)),
                // Another host of the pod's subnet is not local.
                (tcp("10.1.0.1", 80, APP, APP), OUT),
                // The proxy calling its own pod is captured inbound, except on localhost and -e.
                (tcp(POD_IP, 9080, PROXY, PROXY), IN),
                (proxy_local, Direct(DirectProxy)),
                (tcp(POD_IP, 15008, PROXY, PROXY), Direct(DirectProxy)),
                // Over lo only the first uid's rules apply: gid-only processes go direct.
                (tcp(POD_IP, 9080, APP, PROXY), Direct(DirectLocal)),
                // Bound to Envoy's inbound passthrough source and going to the pod: direct.
                (
                    from_passthrough::<F>(tcp(POD_IP, 9080, PROXY, PROXY)),
                    Direct(DirectPassthrough),
                ),
                // Leaving the pod: the passthrough rule is "-o lo" only.
                (from_passthrough::<F>(tcp(remote, 80, APP, APP)), OUT),
            ],
        );
    }

    #[test]
    fn ipv4_loopback_is_a_slash_8_but_localhost_one_address() {
        let cfg = pod(flags::INCLUDE_ALL);
        let tcp = tcp::<V4>;
        check::<V4>(
            &cfg,
            &Sets::default(),
            &[
                (tcp("127.0.0.5", 80, APP, APP), Direct(DirectLocal)),
                // Over lo, but not istio's localhost: the proxy's call is captured inbound.
                (tcp("127.0.0.5", 9080, PROXY, PROXY), IN),
            ],
        );
    }

    #[test]
    fn ipv6_link_local_and_compatible_addresses() {
        let cfg = pod(flags::INCLUDE_ALL);
        let tcp = tcp::<V6>;
        check::<V6>(
            &cfg,
            &Sets::default(),
            &[
                // The pod's link-local address is its own.
                (tcp("fe80::2", 9080, APP, APP), Direct(DirectLocal)),
                (tcp("fe80::1", 9080, APP, APP), OUT),
                // 127.0.0.1 in IPv6 clothing is not ::1: an IPv4-compatible address is remote.
                (to::<V6>([0, 0, 0, LOCALHOST4], 80, APP, APP), OUT),
            ],
        );
    }

    fn include_list_and_outbound_ports_include<F: Fixture>() {
        let cfg =
            pod(F::HAS_INCLUDE_CIDRS | flags::HAS_OUTBOUND_PORTS_INCLUDE | F::HAS_EXCLUDE_CIDRS);
        let sets = Sets::default()
            .range::<F>(1, CidrSet::Include, "10.96.0.0/12", 1)
            .range::<F>(1, CidrSet::Exclude, "10.96.5.0/24", 1)
            .port(PortSet::OutboundInclude, 8443)
            // Rules of another configuration (another rules id) never match.
            .range::<F>(2, CidrSet::Include, "10.50.0.0/16", 1);
        let tcp = tcp::<F>;
        check::<F>(
            &cfg,
            &sets,
            &[
                (tcp("10.100.1.1", 80, APP, APP), OUT),
                (tcp("10.96.5.1", 80, APP, APP), Direct(DirectExcludedCidr)),
                (tcp("10.50.0.1", 80, APP, APP), Direct(DirectNotIncluded)),
                // -q redirects its ports whatever the destination, but -x still wins.
                (tcp("192.0.2.1", 8443, APP, APP), OUT),
                (tcp("10.96.5.1", 8443, APP, APP), Direct(DirectExcludedCidr)),
                (to::<F>(F::LOCALHOST, 8443, APP, APP), Direct(DirectLocal)),
            ],
        );
    }

    #[test]
    fn loopback_in_include_changes_the_lo_rules() {
        let cfg = pod(flags::HAS_INCLUDE_CIDRS | flags::LOOPBACK_INCLUDED);
        let sets = Sets::default().range::<V4>(1, CidrSet::Include, "127.0.0.0/8", 1);
        let tcp = tcp::<V4>;
        check::<V4>(
            &cfg,
            &sets,
            &[
                // The application calling 127.0.0.5 is now redirected; 127.0.0.1 never is.
                (tcp("127.0.0.5", 80, APP, APP), OUT),
                (tcp("127.0.0.1", 80, APP, APP), Direct(DirectLocal)),
                // A gid-only proxy process calling its pod is captured inbound (no lo RETURN).
                (tcp(POD_IP, 9080, APP, PROXY), IN),
            ],
        );
    }

    #[test]
    fn a_loopback_range_in_either_family_changes_the_lo_rules_of_both() {
        // -i ::1/128 sets LOOPBACK_INCLUDED, as istio-iptables drops the "-o lo ! --owner"
        // RETURN rules from both tables when either family's -i has a loopback address.
        let cfg = pod(flags::HAS_INCLUDE_CIDRS6 | flags::LOOPBACK_INCLUDED);
        let sets = Sets::default();
        check::<V4>(&cfg, &sets, &[(tcp::<V4>(POD_IP, 9080, APP, PROXY), IN)]);
        check::<V6>(&cfg, &sets, &[(tcp::<V6>(POD_IP, 9080, APP, PROXY), IN)]);
    }

    fn second_uid_over_lo_goes_direct_as_in_istio_iptables<F: Fixture>() {
        let mut cfg = pod(flags::INCLUDE_ALL);
        cfg.uids[1] = 1338;
        cfg.n_uids = 2;
        check::<F>(
            &cfg,
            &Sets::default(),
            &[
                (tcp::<F>(POD_IP, 9080, 1338, 1338), Direct(DirectLocal)),
                (tcp::<F>("10.2.0.1", 80, 1338, 1338), Direct(DirectProxy)),
            ],
        );
    }

    fn dns_to_the_name_servers_is_captured_except_for_the_proxy<F: Fixture>() {
        let name_server = "10.96.0.10";
        let cfg = dns_pod::<F>(flags::INCLUDE_ALL | F::HAS_EXCLUDE_CIDRS, &[name_server]);
        // -x naming the name server does not stop DNS capture: the DNS rules come first.
        let sets = Sets::default().range::<F>(1, CidrSet::Exclude, "10.96.0.0/16", 1);
        let (tcp, udp) = (tcp::<F>, udp::<F>);
        let other = "192.0.2.1";
        check::<F>(
            &cfg,
            &sets,
            &[
                (udp(name_server, 53, APP, APP), DNS),
                (tcp(name_server, 53, APP, APP), DNS),
                (udp(name_server, 53, PROXY, PROXY), Direct(DirectProxy)),
                (tcp(name_server, 53, PROXY, PROXY), Direct(DirectProxy)),
                (tcp(name_server, 53, APP, PROXY), Direct(DirectProxy)),
                // Not a name server: UDP goes direct, TCP follows the other rules (-i '*').
                (udp(other, 53, APP, APP), Direct(DirectNotIncluded)),
                (tcp(other, 53, APP, APP), OUT),
                // Other UDP is never redirected.
                (udp(other, 5353, APP, APP), Direct(DirectNotIncluded)),
                (udp(name_server, 5353, APP, APP), Direct(DirectExcludedCidr)),
                // The proxy's TCP to its own pod on 53 is not captured inbound (uid rule)...
                (tcp(POD_IP, 53, PROXY, PROXY), Direct(DirectProxy)),
                // ...but a gid-only proxy process is (the gid rule spares only -e).
                (tcp(POD_IP, 53, APP, PROXY), IN),
                // The application's UDP to its own pod is no longer settled by the lo rule.
                (udp(POD_IP, 9999, APP, APP), Direct(DirectNotIncluded)),
                (tcp(POD_IP, 9080, APP, APP), Direct(DirectLocal)),
            ],
        );
    }

    #[test]
    fn a_local_stub_resolver_is_captured_over_lo() {
        let cfg = dns_pod::<V4>(flags::INCLUDE_ALL, &["10.96.0.10", "127.0.0.53"]);
        // Over lo, UDP and TCP/53 escape the "lo goes direct" rules.
        check::<V4>(
            &cfg,
            &Sets::default(),
            &[
                (udp::<V4>("127.0.0.53", 53, APP, APP), DNS),
                (tcp::<V4>("127.0.0.53", 53, APP, APP), DNS),
            ],
        );
    }

    #[test]
    fn name_servers_of_one_family_say_nothing_about_the_other() {
        let sets = Sets::default();
        let only4 = dns_pod::<V4>(flags::INCLUDE_ALL, &["10.96.0.10"]);
        check::<V6>(
            &only4,
            &sets,
            &[(
                udp::<V6>("10.96.0.10", 53, APP, APP),
                Direct(DirectNotIncluded),
            )],
        );
        let only6 = dns_pod::<V6>(flags::INCLUDE_ALL, &["10.96.0.10"]);
        check::<V4>(
            &only6,
            &sets,
            &[(
                udp::<V4>("10.96.0.10", 53, APP, APP),
                Direct(DirectNotIncluded),
            )],
        );
    }

    fn capture_all_dns_and_port_excludes<F: Fixture>() {
        let (tcp, udp) = (tcp::<F>, udp::<F>);
        let cfg = dns_pod::<F>(
            flags::CAPTURE_ALL_DNS | flags::HAS_OUTBOUND_PORTS_EXCLUDE,
            &[],
        );
        let sets = Sets::default().port(PortSet::OutboundExclude, 53);
        // -o 53 is checked first, for UDP as for TCP.
        check::<F>(
            &cfg,
            &sets,
            &[(udp("192.0.2.1", 53, APP, APP), Direct(DirectExcludedPort))],
        );
        let cfg = dns_pod::<F>(flags::CAPTURE_ALL_DNS, &[]);
        let localhost = Connect {
            proto: Proto::Udp,
            ..to::<F>(F::LOCALHOST, 53, APP, APP)
        };
        check::<F>(
            &cfg,
            &sets,
            &[
                (udp("192.0.2.1", 53, APP, APP), DNS),
                (localhost, DNS),
                (tcp("198.51.100.7", 53, APP, APP), DNS),
                // TCP/53 over lo by the application: the "others over lo" rule spares port 53.
                (tcp(POD_IP, 53, APP, APP), DNS),
                (udp("192.0.2.1", 53, PROXY, PROXY), Direct(DirectProxy)),
            ],
        );
    }

    fn without_dns_capture_udp_is_left_alone<F: Fixture>() {
        check::<F>(
            &pod(flags::INCLUDE_ALL),
            &Sets::default(),
            &[
                (
                    udp::<F>("10.96.0.10", 53, APP, APP),
                    Direct(DirectNotIncluded),
                ),
                // Over lo the "everyone else goes direct" rule matches every protocol.
                (udp::<F>(POD_IP, 53, APP, APP), Direct(DirectLocal)),
            ],
        );
    }

    fn unspecified_destination_is_localhost_as_the_kernel_makes_it<F: Fixture>() {
        check::<F>(
            &pod(flags::INCLUDE_ALL),
            &Sets::default(),
            &[
                (to::<F>(F::UNSPECIFIED, 80, APP, APP), Direct(DirectLocal)),
                // Not the proxy's inbound capture either: it is localhost by the time netfilter
                // looks.
                (
                    to::<F>(F::UNSPECIFIED, 80, PROXY, PROXY),
                    Direct(DirectProxy),
                ),
            ],
        );
    }

    #[test]
    fn an_ipv4_mapped_connect_is_an_ipv4_one() {
        let mapped = |text| crate::wire::ipv4_mapped(V4::ip(text));
        let c = Connect {
            src: mapped("10.1.0.2"),
            ..to::<V6>(mapped("10.2.0.1"), 80, APP, PROXY)
        };
        let want = Connect {
            src: V4::ip("10.1.0.2"),
            ..tcp::<V4>("10.2.0.1", 80, APP, PROXY)
        };
        assert_eq!(c.unmapped(), Some(want));
        // Bound to an IPv6 address (only ever so on a socket dialling IPv6): unspecified.
        let c = Connect {
            src: V6::ip("fd00::2"),
            ..c
        };
        assert_eq!(c.unmapped().map(|c| c.src), Some(UNSPECIFIED4));
        assert!(tcp::<V6>("10.2.0.1", 80, APP, APP).unmapped().is_none());
    }

    #[test]
    fn without_ipv6_capture_every_ipv6_connection_goes_direct() {
        // istio-iptables without --dual-stack in a pod whose first address is IPv4: no
        // ip6tables rules, so nothing IPv6 is captured, not even DNS or the proxy's own pod.
        let mut cfg = pod(flags::INCLUDE_ALL | flags::REDIRECT_DNS | flags::CAPTURE_ALL_DNS);
        cfg.flags &= !flags::IPV6;
        let sets = Sets::default();
        let off = Direct(DirectIpv6Disabled);
        check::<V6>(
            &cfg,
            &sets,
            &[
                (tcp::<V6>("10.2.0.1", 80, APP, APP), off),
                (tcp::<V6>(POD_IP, 9080, PROXY, PROXY), off),
                (udp::<V6>("10.2.0.1", 53, APP, APP), off),
            ],
        );
        // IPv4 (also what a dual-stack socket dials as ::ffff:a.b.c.d) is decided as ever.
        check::<V4>(&cfg, &sets, &[(tcp::<V4>("10.2.0.1", 80, APP, APP), OUT)]);
    }

    #[test]
    fn mixed_include_lists_select_per_family() {
        // -i 10.96.0.0/12,fd00:96::/64: each family sees only its own ranges.
        let cfg = pod(flags::HAS_INCLUDE_CIDRS | flags::HAS_INCLUDE_CIDRS6);
        let sets = Sets::default()
            .range::<V4>(1, CidrSet::Include, "10.96.0.0/12", 1)
            .range::<V6>(1, CidrSet::Include, "fd00:96::/64", 1)
            .range::<V6>(2, CidrSet::Include, "fd00:50::/64", 1);
        let tcp6 = tcp::<V6>;
        check::<V6>(
            &cfg,
            &sets,
            &[
                (tcp6("fd00:96::1", 80, APP, APP), OUT),
                (tcp6("fd00:97::1", 80, APP, APP), Direct(DirectNotIncluded)),
                // Another rule set's range.
                (tcp6("fd00:50::1", 80, APP, APP), Direct(DirectNotIncluded)),
            ],
        );
        check::<V4>(&cfg, &sets, &[(tcp::<V4>("10.100.1.1", 80, APP, APP), OUT)]);
        // Only IPv6 ranges given: IPv4 destinations are not included (and the reverse).
        let only6 = pod(flags::HAS_INCLUDE_CIDRS6);
        check::<V4>(
            &only6,
            &sets,
            &[(
                tcp::<V4>("10.100.1.1", 80, APP, APP),
                Direct(DirectNotIncluded),
            )],
        );
        let only4 = pod(flags::HAS_INCLUDE_CIDRS);
        check::<V6>(
            &only4,
            &sets,
            &[(tcp6("fd00:96::1", 80, APP, APP), Direct(DirectNotIncluded))],
        );
    }

    #[test]
    fn exclude_ranges_of_one_family_never_apply_to_the_other() {
        let cfg = pod(flags::INCLUDE_ALL | flags::HAS_EXCLUDE_CIDRS | flags::HAS_EXCLUDE_CIDRS6);
        let all4 = Sets::default().range::<V4>(1, CidrSet::Exclude, "0.0.0.0/0", 1);
        let all6 = Sets::default().range::<V6>(1, CidrSet::Exclude, "::/0", 1);
        let (remote4, remote6) = (
            tcp::<V4>("10.2.0.1", 80, APP, APP),
            tcp::<V6>("fd00:200:1::1", 80, APP, APP),
        );
        check::<V4>(&cfg, &all4, &[(remote4, Direct(DirectExcludedCidr))]);
        check::<V6>(&cfg, &all4, &[(remote6, OUT)]);
        check::<V6>(&cfg, &all6, &[(remote6, Direct(DirectExcludedCidr))]);
        check::<V4>(&cfg, &all6, &[(remote4, OUT)]);
    }

    fn exclude_interfaces_follow_the_route_a_connection_takes<F: Fixture>() {
        let cfg = pod(flags::INCLUDE_ALL | F::HAS_EXCLUDED_ROUTES);
        // Default route and 10.1.0.0/24 via eth0; 10.9.0.0/16 via eth1 (excluded), except a
        // more specific 10.9.9.0/24 via eth0.
        let sets = Sets::default()
            .range::<F>(1, CidrSet::Route, "0.0.0.0/0", 0)
            .range::<F>(1, CidrSet::Route, "10.1.0.0/24", 0)
            .range::<F>(1, CidrSet::Route, "10.9.0.0/16", 1)
            .range::<F>(1, CidrSet::Route, "10.9.9.0/24", 0);
        let tcp = tcp::<F>;
        check::<F>(
            &cfg,
            &sets,
            &[
                (
                    tcp("10.9.1.1", 80, APP, APP),
                    Direct(DirectExcludedInterface),
                ),
                // Before everything else, the proxy's own rules included.
                (
                    tcp("10.9.1.1", 80, PROXY, PROXY),
                    Direct(DirectExcludedInterface),
                ),
                (tcp("10.9.9.1", 80, APP, APP), OUT),
                (tcp("192.0.2.1", 80, APP, APP), OUT),
                // The pod's own address is reached through lo, whatever its /24's route says.
                (tcp(POD_IP, 9080, PROXY, PROXY), IN),
            ],
        );
    }

    fn owner_groups_spare_groups_after_the_proxy_rules<F: Fixture>() {
        let mut cfg = pod(flags::INCLUDE_ALL | flags::OWNER_GROUPS_EXCEPT);
        cfg.owner_groups[0] = 3000;
        cfg.n_owner_groups = 1;
        let sets = Sets::default();
        let tcp = tcp::<F>;
        let remote = "10.2.0.1";
        check::<F>(
            &cfg,
            &sets,
            &[
                (tcp(remote, 80, 2000, 3000), Direct(DirectOwnerGroup)),
                (tcp(remote, 80, 2000, 2000), OUT),
            ],
        );
        // Only these groups are captured.
        cfg.flags = flags::INCLUDE_ALL | flags::OWNER_GROUPS_ONLY | flags::IPV6;
        check::<F>(
            &cfg,
            &sets,
            &[
                (tcp(remote, 80, 2000, 3000), OUT),
                (tcp(remote, 80, 2000, 2000), Direct(DirectOwnerGroup)),
            ],
        );
        // An empty include list captures nobody; the proxy rules still come first.
        cfg.n_owner_groups = 0;
        check::<F>(
            &cfg,
            &sets,
            &[
                (tcp(remote, 80, APP, APP), Direct(DirectOwnerGroup)),
                (tcp(POD_IP, 9080, PROXY, PROXY), IN),
            ],
        );
    }

    #[test]
    fn a_wider_ipv4_loopback_cidr_moves_the_localhost_rules() {
        // ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR=127.0.0.1/8 (istio writes `-d 127.0.0.1/8`).
        let mut cfg = pod(flags::HAS_INCLUDE_CIDRS | flags::LOOPBACK_INCLUDED);
        cfg.loopback4_net = V4::ip("127.0.0.0");
        cfg.loopback4_mask = V4::ip("255.0.0.0");
        let sets = Sets::default().range::<V4>(1, CidrSet::Include, "127.0.0.0/8", 1);
        let tcp = tcp::<V4>;
        check::<V4>(
            &cfg,
            &sets,
            &[
                (tcp("127.0.0.5", 80, APP, APP), Direct(DirectLocal)),
                // The proxy calling 127.0.0.5 is no longer inbound-captured either.
                (tcp("127.0.0.5", 80, PROXY, PROXY), Direct(DirectProxy)),
            ],
        );
    }
}
