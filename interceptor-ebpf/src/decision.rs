//! The outbound decision table, as one pure function that the `connect4`/`connect6` and
//! `sendmsg4` programs and the host's unit tests run. It follows the `ISTIO_OUTPUT` chain that
//! istio-iptables writes, rule by rule, so that the same flags mean the same thing under either
//! backend. One function serves both families (`Family`): istio-iptables writes the same chain
//! into iptables and ip6tables, with only the loopback, passthrough and CIDR values differing.

use crate::{
    counters::Counter,
    model::{CidrSet, DNS_CAPTURE_PORT, DNS_PORT, PodConfig, PortSet, flags},
    wire::{
        LOCALHOST4, LOCALHOST6, PASSTHROUGH_SRC4, PASSTHROUGH_SRC6, RawIpv4, RawIpv6, UNSPECIFIED4,
        UNSPECIFIED6,
    },
};

/// The transport of a connect or datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    /// Only DNS is ever redirected for UDP (istio's `ISTIO_REDIRECT` matches TCP only).
    Udp,
}

/// A TCP connect, a UDP connect or a UDP `sendto()`, as the cgroup hooks see it.
#[derive(Clone, Copy, Debug)]
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

/// What to do with the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Leave it alone; the counter says why.
    Direct(Counter),
    /// Send it to localhost:`port` (127.0.0.1 or ::1), remembering the original destination;
    /// the counter says which capture it is (outbound, the proxy's inbound capture, or DNS).
    Redirect { port: u16, counter: Counter },
}

/// Membership tests the decision needs from the per-pod sets (maps in the kernel).
pub trait RuleSets {
    fn has_port(&self, rules: u32, set: PortSet, port: u16) -> bool;
    fn has_cidr4(&self, rules: u32, set: CidrSet, addr: RawIpv4) -> bool;
    fn has_cidr6(&self, rules: u32, set: CidrSet, addr: RawIpv6) -> bool;
    /// Whether the pod's route to `addr` (the most specific `CidrSet::Route` entry) goes
    /// through a `-c` interface.
    fn route_excluded4(&self, rules: u32, addr: RawIpv4) -> bool;
    fn route_excluded6(&self, rules: u32, addr: RawIpv6) -> bool;
}

/// What differs between the iptables and the ip6tables chain.
pub trait Family {
    type Addr: Copy + PartialEq + core::fmt::Debug;
    /// `127.0.0.1/32` / `::1/128` (istio's `-d <localhost> -j RETURN`).
    const LOCALHOST: Self::Addr;
    /// `127.0.0.6/32` / `::6/128` (`-o lo -s <passthrough> -j RETURN`).
    const PASSTHROUGH_SRC: Self::Addr;
    /// A connect to it goes to `LOCALHOST`, which is what netfilter sees.
    const UNSPECIFIED: Self::Addr;
    const HAS_INCLUDE_CIDRS: u32;
    const HAS_EXCLUDE_CIDRS: u32;
    /// The flag without which this family is not captured at all (0: always captured).
    const ENABLED_BY: u32;
    const HAS_EXCLUDED_ROUTES: u32;
    /// istio's localhost (`-d <localhost>`): `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR` / `::1/128`.
    fn is_localhost(cfg: &PodConfig, addr: Self::Addr) -> bool;
    fn route_excluded(sets: &impl RuleSets, rules: u32, addr: Self::Addr) -> bool;
    /// Whether a connection to `addr` leaves through lo (istio's `-o lo`).
    fn is_local(cfg: &PodConfig, addr: Self::Addr) -> bool;
    fn has_cidr(sets: &impl RuleSets, rules: u32, set: CidrSet, addr: Self::Addr) -> bool;
    /// Whether DNS to `addr` is captured (`ISTIO_OUTPUT_DNS`).
    fn is_captured_dns_server(cfg: &PodConfig, addr: Self::Addr) -> bool;
}

/// IPv4 (iptables).
pub struct V4;
/// IPv6 (ip6tables).
pub struct V6;

impl Family for V4 {
    type Addr = RawIpv4;
    const LOCALHOST: RawIpv4 = LOCALHOST4;
    const PASSTHROUGH_SRC: RawIpv4 = PASSTHROUGH_SRC4;
    const UNSPECIFIED: RawIpv4 = UNSPECIFIED4;
    const HAS_INCLUDE_CIDRS: u32 = flags::HAS_INCLUDE_CIDRS;
    const HAS_EXCLUDE_CIDRS: u32 = flags::HAS_EXCLUDE_CIDRS;
    const ENABLED_BY: u32 = 0;
    const HAS_EXCLUDED_ROUTES: u32 = flags::HAS_EXCLUDED_ROUTES4;
    #[inline(always)]
    fn is_localhost(cfg: &PodConfig, addr: RawIpv4) -> bool {
        cfg.is_localhost4(addr)
    }
    #[inline(always)]
    fn route_excluded(sets: &impl RuleSets, rules: u32, addr: RawIpv4) -> bool {
        sets.route_excluded4(rules, addr)
    }
    #[inline(always)]
    fn is_local(cfg: &PodConfig, addr: RawIpv4) -> bool {
        cfg.is_local4(addr)
    }
    #[inline(always)]
    fn has_cidr(sets: &impl RuleSets, rules: u32, set: CidrSet, addr: RawIpv4) -> bool {
        sets.has_cidr4(rules, set, addr)
    }
    #[inline(always)]
    fn is_captured_dns_server(cfg: &PodConfig, addr: RawIpv4) -> bool {
        cfg.is_captured_dns_server4(addr)
    }
}

impl Family for V6 {
    type Addr = RawIpv6;
    const LOCALHOST: RawIpv6 = LOCALHOST6;
    const PASSTHROUGH_SRC: RawIpv6 = PASSTHROUGH_SRC6;
    const UNSPECIFIED: RawIpv6 = UNSPECIFIED6;
    const HAS_INCLUDE_CIDRS: u32 = flags::HAS_INCLUDE_CIDRS6;
    const HAS_EXCLUDE_CIDRS: u32 = flags::HAS_EXCLUDE_CIDRS6;
    const ENABLED_BY: u32 = flags::IPV6;
    const HAS_EXCLUDED_ROUTES: u32 = flags::HAS_EXCLUDED_ROUTES6;
    #[inline(always)]
    fn is_localhost(_: &PodConfig, addr: RawIpv6) -> bool {
        addr == LOCALHOST6
    }
    #[inline(always)]
    fn route_excluded(sets: &impl RuleSets, rules: u32, addr: RawIpv6) -> bool {
        sets.route_excluded6(rules, addr)
    }
    #[inline(always)]
    fn is_local(cfg: &PodConfig, addr: RawIpv6) -> bool {
        cfg.is_local6(addr)
    }
    #[inline(always)]
    fn has_cidr(sets: &impl RuleSets, rules: u32, set: CidrSet, addr: RawIpv6) -> bool {
        sets.has_cidr6(rules, set, addr)
    }
    #[inline(always)]
    fn is_captured_dns_server(cfg: &PodConfig, addr: RawIpv6) -> bool {
        cfg.is_captured_dns_server6(addr)
    }
}

/// `decide_outbound` for IPv4 (and IPv4-mapped) destinations.
#[inline(always)]
pub fn decide_outbound4(cfg: &PodConfig, c: &Connect4, sets: &impl RuleSets) -> Verdict {
    decide_outbound::<V4>(cfg, c, sets)
}

/// `decide_outbound` for IPv6 destinations (not IPv4-mapped ones: those are IPv4).
#[inline(always)]
pub fn decide_outbound6(cfg: &PodConfig, c: &Connect6, sets: &impl RuleSets) -> Verdict {
    decide_outbound::<V6>(cfg, c, sets)
}

/// Which owner rule group is being walked: istio-iptables writes the same three rules per uid
/// and per gid, with one difference under DNS capture (below).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    Uid,
    Gid,
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
    sets: &impl RuleSets,
) -> Verdict {
    // No ip6tables rules at all (istio-iptables' EnableIPv6 off): IPv6 goes direct.
    if F::ENABLED_BY != 0 && !cfg.has(F::ENABLED_BY) {
        return Verdict::Direct(Counter::DirectIpv6Disabled);
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
    if cfg.has(F::HAS_EXCLUDED_ROUTES) && !over_lo && F::route_excluded(sets, rules, dst) {
        return Verdict::Direct(Counter::DirectExcludedInterface);
    }
    if cfg.has(flags::HAS_OUTBOUND_PORTS_EXCLUDE)
        && sets.has_port(rules, PortSet::OutboundExclude, c.dst_port)
    {
        return Verdict::Direct(Counter::DirectExcludedPort);
    }

    if over_lo && c.src == F::PASSTHROUGH_SRC {
        return Verdict::Direct(Counter::DirectPassthrough);
    }

    if let Some(v) = owner_rules::<F>(cfg, c, dst, Owner::Uid, over_lo, tcp, dns) {
        return v;
    }
    if let Some(v) = owner_rules::<F>(cfg, c, dst, Owner::Gid, over_lo, tcp, dns) {
        return v;
    }
    if cfg.owner_group_spared(c.gid) {
        return Verdict::Direct(Counter::DirectOwnerGroup);
    }

    if c.dst_port == DNS_PORT && F::is_captured_dns_server(cfg, dst) {
        return Verdict::Redirect {
            port: DNS_CAPTURE_PORT,
            counter: Counter::DnsCaptured,
        };
    }

    if F::is_localhost(cfg, dst) {
        return Verdict::Direct(Counter::DirectLocal);
    }
    if cfg.has(F::HAS_EXCLUDE_CIDRS) && F::has_cidr(sets, rules, CidrSet::Exclude, dst) {
        return Verdict::Direct(Counter::DirectExcludedCidr);
    }
    if !tcp {
        return Verdict::Direct(Counter::DirectNotIncluded);
    }
    let redirect = Verdict::Redirect {
        port: cfg.proxy_port,
        counter: Counter::Redirected,
    };
    if cfg.has(flags::HAS_OUTBOUND_PORTS_INCLUDE)
        && sets.has_port(rules, PortSet::OutboundInclude, c.dst_port)
    {
        return redirect;
    }
    if cfg.has(flags::INCLUDE_ALL)
        || (cfg.has(F::HAS_INCLUDE_CIDRS) && F::has_cidr(sets, rules, CidrSet::Include, dst))
    {
        return redirect;
    }
    Verdict::Direct(Counter::DirectNotIncluded)
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
) -> Option<Verdict> {
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
        if mine && capturable {
            return Some(Verdict::Redirect {
                port: cfg.inbound_capture_port,
                counter: Counter::InboundCaptured,
            });
        }
        if !mine && others_direct {
            return Some(Verdict::Direct(Counter::DirectLocal));
        }
        if mine {
            return Some(Verdict::Direct(Counter::DirectProxy));
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{collections::HashSet, vec::Vec};

    use super::*;
    use crate::wire::{ipv6_octets, raw_ipv4, raw_ipv6};

    /// Sets held in std collections; CIDRs matched by linear scan (the kernel uses an LPM trie).
    #[derive(Default)]
    struct Sets {
        ports: HashSet<(u32, u16, u16)>,
        cidrs: Vec<(u32, u32, [u8; 4], u8)>,
        cidrs6: Vec<(u32, u32, [u8; 16], u8)>,
        /// (rules, network, prefix length, through an excluded interface)
        routes4: Vec<(u32, [u8; 4], u8, bool)>,
    }

    impl RuleSets for Sets {
        fn has_port(&self, rules: u32, set: PortSet, port: u16) -> bool {
            self.ports.contains(&(rules, set as u16, port))
        }
        fn has_cidr4(&self, rules: u32, set: CidrSet, addr: RawIpv4) -> bool {
            let a = u32::from_be_bytes(crate::wire::ipv4_octets(addr));
            self.cidrs.iter().any(|&(r, s, net, len)| {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                r == rules && s == set as u32 && a & mask == u32::from_be_bytes(net) & mask
            })
        }
        fn has_cidr6(&self, rules: u32, set: CidrSet, addr: RawIpv6) -> bool {
            let a = u128::from_be_bytes(ipv6_octets(addr));
            self.cidrs6.iter().any(|&(r, s, net, len)| {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                r == rules && s == set as u32 && a & mask == u128::from_be_bytes(net) & mask
            })
        }
        fn route_excluded4(&self, rules: u32, addr: RawIpv4) -> bool {
            let a = u32::from_be_bytes(crate::wire::ipv4_octets(addr));
            self.routes4
                .iter()
                .filter(|&&(r, net, len, _)| {
                    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                    r == rules && a & mask == u32::from_be_bytes(net) & mask
                })
                .max_by_key(|&&(_, _, len, _)| len)
                .is_some_and(|&(_, _, _, excluded)| excluded)
        }
        fn route_excluded6(&self, _: u32, _: RawIpv6) -> bool {
            false
        }
    }

    const POD_IP: [u8; 4] = [10, 1, 0, 2];
    const APP: u32 = 1000;
    const PROXY: u32 = 1337;

    fn pod(flags_: u32) -> PodConfig {
        let mut cfg = PodConfig::empty();
        cfg.rules = 1;
        cfg.flags = flags_;
        cfg.proxy_port = 15001;
        cfg.inbound_capture_port = 15006;
        cfg.inbound_tunnel_port = 15008;
        cfg.uids[0] = PROXY;
        cfg.n_uids = 1;
        cfg.gids[0] = PROXY;
        cfg.n_gids = 1;
        cfg.local4[0] = raw_ipv4(POD_IP);
        cfg.n_local4 = 1;
        cfg
    }

    fn conn(dst: [u8; 4], port: u16, uid: u32, gid: u32) -> Connect4 {
        Connect4 {
            proto: Proto::Tcp,
            dst: raw_ipv4(dst),
            dst_port: port,
            src: 0,
            uid,
            gid,
        }
    }

    const OUT: Verdict = Verdict::Redirect {
        port: 15001,
        counter: Counter::Redirected,
    };
    const IN: Verdict = Verdict::Redirect {
        port: 15006,
        counter: Counter::InboundCaptured,
    };

    #[test]
    fn include_all_table() {
        let cfg =
            pod(flags::INCLUDE_ALL | flags::HAS_EXCLUDE_CIDRS | flags::HAS_OUTBOUND_PORTS_EXCLUDE);
        let mut sets = Sets::default();
        sets.cidrs
            .push((1, CidrSet::Exclude as u32, [10, 9, 0, 0], 16));
        sets.ports
            .insert((1, PortSet::OutboundExclude as u16, 3306));
        let d = |c: Connect4| decide_outbound4(&cfg, &c, &sets);
        use Counter::*;
        let cases = [
            (conn([10, 2, 0, 1], 80, APP, APP), OUT),
            (
                conn([10, 9, 3, 4], 80, APP, APP),
                Verdict::Direct(DirectExcludedCidr),
            ),
            (
                conn([10, 2, 0, 1], 3306, APP, APP),
                Verdict::Direct(DirectExcludedPort),
            ),
            (
                conn([10, 2, 0, 1], 80, PROXY, PROXY),
                Verdict::Direct(DirectProxy),
            ),
            (
                conn([10, 2, 0, 1], 80, APP, PROXY),
                Verdict::Direct(DirectProxy),
            ),
            (
                conn([10, 2, 0, 1], 80, PROXY, APP),
                Verdict::Direct(DirectProxy),
            ),
            (
                conn([127, 0, 0, 1], 80, APP, APP),
                Verdict::Direct(DirectLocal),
            ),
            (
                conn([127, 0, 0, 5], 80, APP, APP),
                Verdict::Direct(DirectLocal),
            ),
            (conn(POD_IP, 9080, APP, APP), Verdict::Direct(DirectLocal)),
            // The proxy calling its own pod is captured inbound, except on localhost and -e.
            (conn(POD_IP, 9080, PROXY, PROXY), IN),
            (
                conn([127, 0, 0, 1], 9080, PROXY, PROXY),
                Verdict::Direct(DirectProxy),
            ),
            (
                conn(POD_IP, 15008, PROXY, PROXY),
                Verdict::Direct(DirectProxy),
            ),
            // Over lo only the first uid's rules apply: gid-only processes go direct.
            (conn(POD_IP, 9080, APP, PROXY), Verdict::Direct(DirectLocal)),
        ];
        for (c, want) in cases {
            assert_eq!(d(c), want, "{c:?}");
        }
        // Bound to 127.0.0.6 (Envoy's inbound passthrough) and going to the pod: direct.
        let mut c = conn(POD_IP, 9080, PROXY, PROXY);
        c.src = raw_ipv4([127, 0, 0, 6]);
        assert_eq!(d(c), Verdict::Direct(Counter::DirectPassthrough));
    }

    #[test]
    fn include_list_and_outbound_ports_include() {
        let cfg = pod(flags::HAS_INCLUDE_CIDRS
            | flags::HAS_OUTBOUND_PORTS_INCLUDE
            | flags::HAS_EXCLUDE_CIDRS);
        let mut sets = Sets::default();
        sets.cidrs
            .push((1, CidrSet::Include as u32, [10, 96, 0, 0], 12));
        sets.cidrs
            .push((1, CidrSet::Exclude as u32, [10, 96, 5, 0], 24));
        sets.ports
            .insert((1, PortSet::OutboundInclude as u16, 8443));
        // Rules of another configuration (another rules id) never match.
        sets.cidrs
            .push((2, CidrSet::Include as u32, [10, 50, 0, 0], 16));
        let d = |c: Connect4| decide_outbound4(&cfg, &c, &sets);
        assert_eq!(d(conn([10, 100, 1, 1], 80, APP, APP)), OUT);
        assert_eq!(
            d(conn([10, 96, 5, 1], 80, APP, APP)),
            Verdict::Direct(Counter::DirectExcludedCidr)
        );
        assert_eq!(
            d(conn([10, 50, 0, 1], 80, APP, APP)),
            Verdict::Direct(Counter::DirectNotIncluded)
        );
        // -q redirects its ports whatever the destination, but -x still wins.
        assert_eq!(d(conn([192, 0, 2, 1], 8443, APP, APP)), OUT);
        assert_eq!(
            d(conn([10, 96, 5, 1], 8443, APP, APP)),
            Verdict::Direct(Counter::DirectExcludedCidr)
        );
        assert_eq!(
            d(conn([127, 0, 0, 1], 8443, APP, APP)),
            Verdict::Direct(Counter::DirectLocal)
        );
    }

    #[test]
    fn loopback_in_include_changes_the_lo_rules() {
        let cfg = pod(flags::HAS_INCLUDE_CIDRS | flags::LOOPBACK_INCLUDED);
        let mut sets = Sets::default();
        sets.cidrs
            .push((1, CidrSet::Include as u32, [127, 0, 0, 0], 8));
        let d = |c: Connect4| decide_outbound4(&cfg, &c, &sets);
        // The application calling 127.0.0.5 is now redirected; 127.0.0.1 never is.
        assert_eq!(d(conn([127, 0, 0, 5], 80, APP, APP)), OUT);
        assert_eq!(
            d(conn([127, 0, 0, 1], 80, APP, APP)),
            Verdict::Direct(Counter::DirectLocal)
        );
        // A gid-only proxy process calling its pod is captured inbound (no lo RETURN rule).
        assert_eq!(d(conn(POD_IP, 9080, APP, PROXY)), IN);
    }

    #[test]
    fn second_uid_over_lo_goes_direct_as_in_istio_iptables() {
        let mut cfg = pod(flags::INCLUDE_ALL);
        cfg.uids[1] = 1338;
        cfg.n_uids = 2;
        let sets = Sets::default();
        assert_eq!(
            decide_outbound4(&cfg, &conn(POD_IP, 9080, 1338, 1338), &sets),
            Verdict::Direct(Counter::DirectLocal)
        );
        assert_eq!(
            decide_outbound4(&cfg, &conn([10, 2, 0, 1], 80, 1338, 1338), &sets),
            Verdict::Direct(Counter::DirectProxy)
        );
    }

    fn udp(dst: [u8; 4], port: u16, uid: u32, gid: u32) -> Connect4 {
        Connect4 {
            proto: Proto::Udp,
            ..conn(dst, port, uid, gid)
        }
    }

    const DNS: Verdict = Verdict::Redirect {
        port: 15053,
        counter: Counter::DnsCaptured,
    };

    fn dns_pod(extra: u32, servers: &[[u8; 4]]) -> PodConfig {
        let mut cfg = pod(flags::REDIRECT_DNS | extra);
        for (i, s) in servers.iter().enumerate() {
            cfg.dns4[i] = raw_ipv4(*s);
        }
        cfg.n_dns4 = servers.len() as u8;
        cfg
    }

    #[test]
    fn dns_to_the_name_servers_is_captured_except_for_the_proxy() {
        let cfg = dns_pod(
            flags::INCLUDE_ALL | flags::HAS_EXCLUDE_CIDRS,
            &[[10, 96, 0, 10], [127, 0, 0, 53]],
        );
        let mut sets = Sets::default();
        // -x naming the name server does not stop DNS capture: the DNS rules come first.
        sets.cidrs
            .push((1, CidrSet::Exclude as u32, [10, 96, 0, 0], 16));
        let d = |c: Connect4| decide_outbound4(&cfg, &c, &sets);
        use Counter::*;
        let cases = [
            (udp([10, 96, 0, 10], 53, APP, APP), DNS),
            (conn([10, 96, 0, 10], 53, APP, APP), DNS),
            // A local stub resolver: over lo, UDP and TCP/53 escape the "lo goes direct" rules.
            (udp([127, 0, 0, 53], 53, APP, APP), DNS),
            (conn([127, 0, 0, 53], 53, APP, APP), DNS),
            (
                udp([10, 96, 0, 10], 53, PROXY, PROXY),
                Verdict::Direct(DirectProxy),
            ),
            (
                conn([10, 96, 0, 10], 53, PROXY, PROXY),
                Verdict::Direct(DirectProxy),
            ),
            // Not a name server: UDP goes direct, TCP follows the other rules (-i '*').
            (
                udp([192, 0, 2, 1], 53, APP, APP),
                Verdict::Direct(DirectNotIncluded),
            ),
            (conn([192, 0, 2, 1], 53, APP, APP), OUT),
            // Other UDP is never redirected.
            (
                udp([192, 0, 2, 1], 5353, APP, APP),
                Verdict::Direct(DirectNotIncluded),
            ),
            // The proxy's TCP to its own pod on 53 is not captured inbound (uid rule)...
            (conn(POD_IP, 53, PROXY, PROXY), Verdict::Direct(DirectProxy)),
            // ...but a gid-only proxy process is (the gid rule spares only -e).
            (conn(POD_IP, 53, APP, PROXY), IN),
            // The application's UDP to its own pod is no longer settled by the lo rule.
            (
                udp(POD_IP, 9999, APP, APP),
                Verdict::Direct(DirectNotIncluded),
            ),
            (conn(POD_IP, 9080, APP, APP), Verdict::Direct(DirectLocal)),
        ];
        for (c, want) in cases {
            assert_eq!(d(c), want, "{c:?}");
        }
    }

    #[test]
    fn capture_all_dns_and_port_excludes() {
        let cfg = dns_pod(
            flags::CAPTURE_ALL_DNS | flags::HAS_OUTBOUND_PORTS_EXCLUDE,
            &[],
        );
        let mut sets = Sets::default();
        sets.ports.insert((1, PortSet::OutboundExclude as u16, 53));
        let d = |c: Connect4| decide_outbound4(&cfg, &c, &sets);
        // -o 53 is checked first, for UDP as for TCP.
        assert_eq!(
            d(udp([192, 0, 2, 1], 53, APP, APP)),
            Verdict::Direct(Counter::DirectExcludedPort)
        );
        let cfg = dns_pod(flags::CAPTURE_ALL_DNS, &[]);
        let d = |c: Connect4| decide_outbound4(&cfg, &c, &sets);
        assert_eq!(d(udp([192, 0, 2, 1], 53, APP, APP)), DNS);
        assert_eq!(d(udp([127, 0, 0, 1], 53, APP, APP)), DNS);
        assert_eq!(d(conn([198, 51, 100, 7], 53, APP, APP)), DNS);
    }

    #[test]
    fn without_dns_capture_udp_is_left_alone() {
        let cfg = pod(flags::INCLUDE_ALL);
        let sets = Sets::default();
        let d = |c: Connect4| decide_outbound4(&cfg, &c, &sets);
        assert_eq!(
            d(udp([10, 96, 0, 10], 53, APP, APP)),
            Verdict::Direct(Counter::DirectNotIncluded)
        );
        // Over lo the "everyone else goes direct" rule matches every protocol.
        assert_eq!(
            d(udp(POD_IP, 53, APP, APP)),
            Verdict::Direct(Counter::DirectLocal)
        );
    }

    #[test]
    fn unspecified_destination_is_localhost_as_the_kernel_makes_it() {
        let cfg = pod(flags::INCLUDE_ALL);
        let sets = Sets::default();
        assert_eq!(
            decide_outbound4(&cfg, &conn([0, 0, 0, 0], 80, APP, APP), &sets),
            Verdict::Direct(Counter::DirectLocal)
        );
        // Not the proxy's inbound capture either: it is 127.0.0.1 by the time netfilter looks.
        assert_eq!(
            decide_outbound4(&cfg, &conn([0, 0, 0, 0], 80, PROXY, PROXY), &sets),
            Verdict::Direct(Counter::DirectProxy)
        );
        let c6 = conn6(UNSPECIFIED6, 80, APP, APP);
        assert_eq!(
            decide_outbound6(&pod6(flags::INCLUDE_ALL), &c6, &sets),
            Verdict::Direct(Counter::DirectLocal)
        );
    }

    #[test]
    fn without_ipv6_capture_every_ipv6_connection_goes_direct() {
        // istio-iptables without --dual-stack in a pod whose first address is IPv4: no
        // ip6tables rules, so nothing IPv6 is captured, not even DNS or the proxy's own pod.
        let mut cfg = pod6(flags::INCLUDE_ALL | flags::REDIRECT_DNS | flags::CAPTURE_ALL_DNS);
        cfg.flags &= !flags::IPV6;
        let sets = Sets::default();
        let off = Verdict::Direct(Counter::DirectIpv6Disabled);
        for c in [
            conn6(v6("fd00:200:1::1"), 80, APP, APP),
            conn6(v6("fd00:200::2"), 9080, PROXY, PROXY),
            udp6(v6("fd00:200:1::1"), 53, APP, APP),
        ] {
            assert_eq!(decide_outbound6(&cfg, &c, &sets), off, "{c:?}");
        }
        // IPv4 (also what a dual-stack socket dials as ::ffff:a.b.c.d) is decided as ever.
        assert_eq!(
            decide_outbound4(&cfg, &conn([10, 2, 0, 1], 80, APP, APP), &sets),
            OUT
        );
    }

    fn v6(s: &str) -> RawIpv6 {
        raw_ipv6(s.parse::<std::net::Ipv6Addr>().unwrap().octets())
    }

    fn prefix6(s: &str) -> [u8; 16] {
        s.parse::<std::net::Ipv6Addr>().unwrap().octets()
    }

    /// `pod()` with IPv6 addresses (fd00:200::2 and a link-local one), IPv6 captured.
    fn pod6(flags_: u32) -> PodConfig {
        let mut cfg = pod(flags_ | flags::IPV6);
        cfg.local6[0] = v6("fd00:200::2");
        cfg.local6[1] = v6("fe80::2");
        cfg.n_local6 = 2;
        cfg
    }

    fn conn6(dst: RawIpv6, port: u16, uid: u32, gid: u32) -> Connect6 {
        Connect6 {
            proto: Proto::Tcp,
            dst,
            dst_port: port,
            src: UNSPECIFIED6,
            uid,
            gid,
        }
    }

    #[test]
    fn ipv6_follows_the_ip6tables_chain() {
        let cfg = pod6(
            flags::INCLUDE_ALL | flags::HAS_EXCLUDE_CIDRS6 | flags::HAS_OUTBOUND_PORTS_EXCLUDE,
        );
        let mut sets = Sets::default();
        sets.cidrs6
            .push((1, CidrSet::Exclude as u32, prefix6("fd00:9::"), 32));
        // An IPv4 exclude never applies to IPv6 (and vice versa).
        sets.cidrs
            .push((1, CidrSet::Exclude as u32, [0, 0, 0, 0], 0));
        sets.ports
            .insert((1, PortSet::OutboundExclude as u16, 3306));
        let d = |c: Connect6| decide_outbound6(&cfg, &c, &sets);
        use Counter::*;
        let remote = v6("fd00:200:1::1");
        let cases = [
            (conn6(remote, 80, APP, APP), OUT),
            (
                conn6(v6("fd00:9:1::1"), 80, APP, APP),
                Verdict::Direct(DirectExcludedCidr),
            ),
            (
                conn6(remote, 3306, APP, APP),
                Verdict::Direct(DirectExcludedPort),
            ),
            (
                conn6(remote, 80, PROXY, PROXY),
                Verdict::Direct(DirectProxy),
            ),
            (conn6(remote, 80, APP, PROXY), Verdict::Direct(DirectProxy)),
            (
                conn6(LOCALHOST6, 80, APP, APP),
                Verdict::Direct(DirectLocal),
            ),
            (
                conn6(v6("fd00:200::2"), 9080, APP, APP),
                Verdict::Direct(DirectLocal),
            ),
            (
                conn6(v6("fe80::2"), 9080, APP, APP),
                Verdict::Direct(DirectLocal),
            ),
            // Another host on the pod's /64 is not local.
            (conn6(v6("fd00:200::1"), 80, APP, APP), OUT),
            // The proxy calling its own pod: inbound capture, except ::1 and -e.
            (conn6(v6("fd00:200::2"), 9080, PROXY, PROXY), IN),
            (
                conn6(LOCALHOST6, 9080, PROXY, PROXY),
                Verdict::Direct(DirectProxy),
            ),
            (
                conn6(v6("fd00:200::2"), 15008, PROXY, PROXY),
                Verdict::Direct(DirectProxy),
            ),
            // 127.0.0.1 in IPv6 clothing is not ::1: an IPv4-compatible address is remote.
            (conn6([0, 0, 0, LOCALHOST4], 80, APP, APP), OUT),
        ];
        for (c, want) in cases {
            assert_eq!(d(c), want, "{c:?}");
        }
        // Bound to ::6 (Envoy's IPv6 inbound passthrough) and going to the pod: direct.
        let mut c = conn6(v6("fd00:200::2"), 9080, PROXY, PROXY);
        c.src = PASSTHROUGH_SRC6;
        assert_eq!(d(c), Verdict::Direct(DirectPassthrough));
        // Bound to ::6 but leaving the pod: the passthrough rule is "-o lo" only.
        let mut c = conn6(remote, 80, APP, APP);
        c.src = PASSTHROUGH_SRC6;
        assert_eq!(d(c), OUT);
    }

    #[test]
    fn mixed_include_lists_select_per_family() {
        // -i 10.96.0.0/12,fd00:96::/64: each family sees only its own ranges.
        let cfg = pod6(flags::HAS_INCLUDE_CIDRS | flags::HAS_INCLUDE_CIDRS6);
        let mut sets = Sets::default();
        sets.cidrs
            .push((1, CidrSet::Include as u32, [10, 96, 0, 0], 12));
        sets.cidrs6
            .push((1, CidrSet::Include as u32, prefix6("fd00:96::"), 64));
        sets.cidrs6
            .push((2, CidrSet::Include as u32, prefix6("fd00:50::"), 64));
        assert_eq!(
            decide_outbound6(&cfg, &conn6(v6("fd00:96::1"), 80, APP, APP), &sets),
            OUT
        );
        assert_eq!(
            decide_outbound6(&cfg, &conn6(v6("fd00:97::1"), 80, APP, APP), &sets),
            Verdict::Direct(Counter::DirectNotIncluded)
        );
        assert_eq!(
            decide_outbound6(&cfg, &conn6(v6("fd00:50::1"), 80, APP, APP), &sets),
            Verdict::Direct(Counter::DirectNotIncluded),
            "another rule set's range"
        );
        assert_eq!(
            decide_outbound4(&cfg, &conn([10, 100, 1, 1], 80, APP, APP), &sets),
            OUT
        );
        // Only IPv6 ranges given: IPv4 destinations are not included (and the reverse).
        let only6 = pod6(flags::HAS_INCLUDE_CIDRS6);
        assert_eq!(
            decide_outbound4(&only6, &conn([10, 100, 1, 1], 80, APP, APP), &sets),
            Verdict::Direct(Counter::DirectNotIncluded)
        );
        let only4 = pod6(flags::HAS_INCLUDE_CIDRS);
        assert_eq!(
            decide_outbound6(&only4, &conn6(v6("fd00:96::1"), 80, APP, APP), &sets),
            Verdict::Direct(Counter::DirectNotIncluded)
        );
    }

    #[test]
    fn a_loopback_range_in_either_family_changes_the_lo_rules_of_both() {
        // -i ::1/128 sets LOOPBACK_INCLUDED, as istio-iptables drops the "-o lo ! --owner"
        // RETURN rules from both tables when either family's -i has a loopback address.
        let cfg = pod6(flags::HAS_INCLUDE_CIDRS6 | flags::LOOPBACK_INCLUDED);
        let sets = Sets::default();
        assert_eq!(
            decide_outbound4(&cfg, &conn(POD_IP, 9080, APP, PROXY), &sets),
            IN
        );
        assert_eq!(
            decide_outbound6(&cfg, &conn6(v6("fd00:200::2"), 9080, APP, PROXY), &sets),
            IN
        );
    }

    fn dns6_pod(extra: u32, servers: &[&str]) -> PodConfig {
        let mut cfg = pod6(flags::REDIRECT_DNS | extra);
        for (i, s) in servers.iter().enumerate() {
            cfg.dns6[i] = v6(s);
        }
        cfg.n_dns6 = servers.len() as u8;
        cfg
    }

    fn udp6(dst: RawIpv6, port: u16, uid: u32, gid: u32) -> Connect6 {
        Connect6 {
            proto: Proto::Udp,
            ..conn6(dst, port, uid, gid)
        }
    }

    #[test]
    fn ipv6_dns_to_the_name_servers_is_captured_as_ip6tables_does() {
        let cfg = dns6_pod(
            flags::INCLUDE_ALL | flags::HAS_EXCLUDE_CIDRS6,
            &["fd00:96::10"],
        );
        let mut sets = Sets::default();
        // -x naming the name server does not stop DNS capture: the DNS rules come first.
        sets.cidrs6
            .push((1, CidrSet::Exclude as u32, prefix6("fd00:96::"), 64));
        let d = |c: Connect6| decide_outbound6(&cfg, &c, &sets);
        use Counter::*;
        let ns = v6("fd00:96::10");
        let other = v6("fd00:97::10");
        let cases = [
            (udp6(ns, 53, APP, APP), DNS),
            (conn6(ns, 53, APP, APP), DNS),
            (udp6(ns, 53, PROXY, PROXY), Verdict::Direct(DirectProxy)),
            (conn6(ns, 53, APP, PROXY), Verdict::Direct(DirectProxy)),
            // Not a name server: UDP goes direct, TCP follows the other rules (-i '*').
            (
                udp6(other, 53, APP, APP),
                Verdict::Direct(DirectNotIncluded),
            ),
            (conn6(other, 53, APP, APP), OUT),
            (
                udp6(ns, 5353, APP, APP),
                Verdict::Direct(DirectExcludedCidr),
            ),
            // The proxy's TCP to its own pod on 53: spared by the uid rule under DNS capture.
            (
                conn6(v6("fd00:200::2"), 53, PROXY, PROXY),
                Verdict::Direct(DirectProxy),
            ),
            (conn6(v6("fd00:200::2"), 53, APP, PROXY), IN),
        ];
        for (c, want) in cases {
            assert_eq!(d(c), want, "{c:?}");
        }
        // An IPv4 name server says nothing about IPv6 (and an IPv6 one nothing about IPv4).
        let mut v4_only = cfg;
        v4_only.n_dns6 = 0;
        v4_only.dns4[0] = raw_ipv4([10, 96, 0, 10]);
        v4_only.n_dns4 = 1;
        assert_eq!(
            decide_outbound6(&v4_only, &udp6(ns, 53, APP, APP), &sets),
            Verdict::Direct(DirectExcludedCidr)
        );
        assert_eq!(
            decide_outbound4(&cfg, &udp([10, 96, 0, 10], 53, APP, APP), &sets),
            Verdict::Direct(DirectNotIncluded)
        );
    }

    #[test]
    fn ipv6_capture_all_dns_takes_every_server_and_localhost() {
        let cfg = dns6_pod(flags::CAPTURE_ALL_DNS, &[]);
        let sets = Sets::default();
        let d = |c: Connect6| decide_outbound6(&cfg, &c, &sets);
        assert_eq!(d(udp6(v6("fd00:97::10"), 53, APP, APP)), DNS);
        assert_eq!(d(udp6(LOCALHOST6, 53, APP, APP)), DNS);
        assert_eq!(d(conn6(v6("2001:db8::53"), 53, APP, APP)), DNS);
        // TCP/53 over lo by the application: the "others over lo" rule spares port 53.
        assert_eq!(d(conn6(v6("fd00:200::2"), 53, APP, APP)), DNS);
        assert_eq!(
            d(udp6(v6("fd00:97::10"), 53, PROXY, PROXY)),
            Verdict::Direct(Counter::DirectProxy)
        );
    }

    #[test]
    fn exclude_interfaces_follow_the_route_a_connection_takes() {
        let cfg = pod(flags::INCLUDE_ALL | flags::HAS_EXCLUDED_ROUTES4);
        let mut sets = Sets::default();
        // Default route and 10.1.0.0/24 via eth0; 10.9.0.0/16 via eth1 (excluded), except a
        // more specific 10.9.9.0/24 via eth0.
        sets.routes4.push((1, [0, 0, 0, 0], 0, false));
        sets.routes4.push((1, [10, 1, 0, 0], 24, false));
        sets.routes4.push((1, [10, 9, 0, 0], 16, true));
        sets.routes4.push((1, [10, 9, 9, 0], 24, false));
        let d = |c: Connect4| decide_outbound4(&cfg, &c, &sets);
        assert_eq!(
            d(conn([10, 9, 1, 1], 80, APP, APP)),
            Verdict::Direct(Counter::DirectExcludedInterface)
        );
        // Before everything else, the proxy's own rules included.
        assert_eq!(
            d(conn([10, 9, 1, 1], 80, PROXY, PROXY)),
            Verdict::Direct(Counter::DirectExcludedInterface)
        );
        assert_eq!(d(conn([10, 9, 9, 1], 80, APP, APP)), OUT);
        assert_eq!(d(conn([192, 0, 2, 1], 80, APP, APP)), OUT);
        // The pod's own address is reached through lo, whatever its /24's route says.
        assert_eq!(d(conn(POD_IP, 9080, PROXY, PROXY)), IN);
    }

    #[test]
    fn owner_groups_spare_groups_after_the_proxy_rules() {
        let mut cfg = pod(flags::INCLUDE_ALL | flags::OWNER_GROUPS_EXCEPT);
        cfg.owner_groups[0] = 3000;
        cfg.n_owner_groups = 1;
        let sets = Sets::default();
        let d = |cfg: &PodConfig, c: Connect4| decide_outbound4(cfg, &c, &sets);
        assert_eq!(
            d(&cfg, conn([10, 2, 0, 1], 80, 2000, 3000)),
            Verdict::Direct(Counter::DirectOwnerGroup)
        );
        assert_eq!(d(&cfg, conn([10, 2, 0, 1], 80, 2000, 2000)), OUT);
        // Only these groups are captured.
        cfg.flags = flags::INCLUDE_ALL | flags::OWNER_GROUPS_ONLY;
        assert_eq!(d(&cfg, conn([10, 2, 0, 1], 80, 2000, 3000)), OUT);
        assert_eq!(
            d(&cfg, conn([10, 2, 0, 1], 80, 2000, 2000)),
            Verdict::Direct(Counter::DirectOwnerGroup)
        );
        // An empty include list captures nobody; the proxy rules still come first.
        cfg.n_owner_groups = 0;
        assert_eq!(
            d(&cfg, conn([10, 2, 0, 1], 80, APP, APP)),
            Verdict::Direct(Counter::DirectOwnerGroup)
        );
        assert_eq!(d(&cfg, conn(POD_IP, 9080, PROXY, PROXY)), IN);
    }

    #[test]
    fn a_wider_ipv4_loopback_cidr_moves_the_localhost_rules() {
        // ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR=127.0.0.1/8 (istio writes `-d 127.0.0.1/8`).
        let mut cfg = pod(flags::HAS_INCLUDE_CIDRS | flags::LOOPBACK_INCLUDED);
        cfg.loopback4_net = raw_ipv4([127, 0, 0, 0]);
        cfg.loopback4_mask = raw_ipv4([255, 0, 0, 0]);
        let mut sets = Sets::default();
        sets.cidrs
            .push((1, CidrSet::Include as u32, [127, 0, 0, 0], 8));
        let d = |c: Connect4| decide_outbound4(&cfg, &c, &sets);
        assert_eq!(
            d(conn([127, 0, 0, 5], 80, APP, APP)),
            Verdict::Direct(Counter::DirectLocal)
        );
        // The proxy calling 127.0.0.5 is no longer inbound-captured either.
        assert_eq!(
            d(conn([127, 0, 0, 5], 80, PROXY, PROXY)),
            Verdict::Direct(Counter::DirectProxy)
        );
    }
}
