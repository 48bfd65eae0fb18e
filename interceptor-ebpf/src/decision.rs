//! The outbound decision table, as one pure function that both the `connect4` program and the
//! host's unit tests run. It follows the `ISTIO_OUTPUT` chain that istio-iptables writes,
//! rule by rule, so that the same flags mean the same thing under either backend.

use crate::{
    counters::Counter,
    model::{CidrSet, DNS_CAPTURE_PORT, DNS_PORT, PodConfig, PortSet, flags},
    wire::{LOCALHOST4, PASSTHROUGH_SRC4, RawIpv4},
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
pub struct Connect4 {
    pub proto: Proto,
    /// Destination the application asked for.
    pub dst: RawIpv4,
    /// Host order.
    pub dst_port: u16,
    /// Address the socket is bound to (0 when unbound).
    pub src: RawIpv4,
    pub uid: u32,
    pub gid: u32,
}

/// What to do with the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Leave it alone; the counter says why.
    Direct(Counter),
    /// Send it to 127.0.0.1:`port`, remembering the original destination; the counter says
    /// which capture it is (outbound, the proxy's inbound capture, or DNS).
    Redirect { port: u16, counter: Counter },
}

/// Membership tests the decision needs from the per-pod sets (maps in the kernel).
pub trait RuleSets {
    fn has_port(&self, rules: u32, set: PortSet, port: u16) -> bool;
    fn has_cidr4(&self, rules: u32, set: CidrSet, addr: RawIpv4) -> bool;
}

/// Which owner rule group is being walked: istio-iptables writes the same three rules per uid
/// and per gid, with one difference under DNS capture (below).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    Uid,
    Gid,
}

/// Decide an outbound connect or datagram. Rule order is istio-iptables' `ISTIO_OUTPUT` chain,
/// walked literally (first match wins), so that its quirks come out the same:
///
/// 1. `-p tcp|udp --dport <-o port> -j RETURN`
/// 2. `-o lo -s 127.0.0.6/32 -j RETURN`
/// 3. per proxy uid U, then per proxy gid G (owner match `X`):
///    a. `-o lo ! -d 127.0.0.1/32 -p tcp ! --dport <-e> -m owner X -j ISTIO_IN_REDIRECT`
///    (with DNS capture, the uid form is `-m multiport ! --dports 53,<-e>`; the gid form is not);
///    b. `-o lo -m owner ! X -j RETURN` (with DNS capture: `-o lo -p tcp ! --dport 53 ...`;
///    left out when an `-i` range holds a loopback address);
///    c. `-m owner X -j RETURN`
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
#[inline(always)]
pub fn decide_outbound4(cfg: &PodConfig, c: &Connect4, sets: &impl RuleSets) -> Verdict {
    let rules = cfg.rules;
    let tcp = c.proto == Proto::Tcp;
    let dns = cfg.has(flags::REDIRECT_DNS);
    if cfg.has(flags::HAS_OUTBOUND_PORTS_EXCLUDE)
        && sets.has_port(rules, PortSet::OutboundExclude, c.dst_port)
    {
        return Verdict::Direct(Counter::DirectExcludedPort);
    }

    let over_lo = cfg.is_local4(c.dst);
    if over_lo && c.src == PASSTHROUGH_SRC4 {
        return Verdict::Direct(Counter::DirectPassthrough);
    }

    if let Some(v) = owner_rules(cfg, c, Owner::Uid, over_lo, tcp, dns) {
        return v;
    }
    if let Some(v) = owner_rules(cfg, c, Owner::Gid, over_lo, tcp, dns) {
        return v;
    }

    if c.dst_port == DNS_PORT && cfg.is_captured_dns_server4(c.dst) {
        return Verdict::Redirect {
            port: DNS_CAPTURE_PORT,
            counter: Counter::DnsCaptured,
        };
    }

    if c.dst == LOCALHOST4 {
        return Verdict::Direct(Counter::DirectLocal);
    }
    if cfg.has(flags::HAS_EXCLUDE_CIDRS) && sets.has_cidr4(rules, CidrSet::Exclude, c.dst) {
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
        || (cfg.has(flags::HAS_INCLUDE_CIDRS) && sets.has_cidr4(rules, CidrSet::Include, c.dst))
    {
        return redirect;
    }
    Verdict::Direct(Counter::DirectNotIncluded)
}

/// Rules 3a-3c for every uid (or gid) in order. `None`: no rule matched, walk on.
#[inline(always)]
fn owner_rules(
    cfg: &PodConfig,
    c: &Connect4,
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
        && c.dst != LOCALHOST4
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
    use crate::wire::raw_ipv4;

    /// Sets held in std collections; CIDRs matched by linear scan (the kernel uses an LPM trie).
    #[derive(Default)]
    struct Sets {
        ports: HashSet<(u32, u16, u16)>,
        cidrs: Vec<(u32, u32, [u8; 4], u8)>,
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
}
