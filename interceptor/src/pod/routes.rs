//! The pod's routes, for `-c` on outbound connections. istio-iptables writes
//! `-A OUTPUT -o <interface> -j RETURN`: a connection routed out of an excluded interface is not
//! captured. The programs cannot ask the kernel's FIB at `connect()`, so `init` copies the
//! pod's routes (main table) into an LPM trie whose longest match is the route a connection
//! takes, marked by whether its interface is excluded. Routes changed after `init` are not
//! seen until the next `init`; policy routing (`ip rule`) is not modelled.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One route: destination prefix, outgoing interface, metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: IpAddr,
    pub prefix_len: u8,
    pub interface: String,
    pub metric: u32,
}

/// `RTF_UP`: the route is usable.
const RTF_UP: u32 = 0x1;

/// Both families' routes of the calling thread's network namespace.
pub fn read_current() -> std::io::Result<Vec<Route>> {
    let mut routes = parse_ipv4(&std::fs::read_to_string("/proc/thread-self/net/route")?);
    // IPv6 may be disabled in the namespace: then the file is absent.
    if let Ok(text) = std::fs::read_to_string("/proc/thread-self/net/ipv6_route") {
        routes.extend(parse_ipv6(&text));
    }
    Ok(routes)
}

/// `/proc/net/route`: `Iface Destination Gateway Flags RefCnt Use Metric Mask ...`, addresses as
/// hex of the network-order `u32` read natively.
fn parse_ipv4(text: &str) -> Vec<Route> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let hex = |s: &str| u32::from_str_radix(s, 16).ok();
            let (iface, dst, flags, metric, mask) = (
                f.first()?,
                hex(f.get(1)?)?,
                hex(f.get(3)?)?,
                f.get(6)?,
                hex(f.get(7)?)?,
            );
            (flags & RTF_UP != 0).then(|| Route {
                dst: IpAddr::V4(Ipv4Addr::from(dst.to_ne_bytes())),
                prefix_len: mask.count_ones() as u8,
                interface: iface.to_string(),
                metric: metric.parse().unwrap_or(0),
            })
        })
        .collect()
}

/// `/proc/net/ipv6_route`: `dst plen src plen gateway metric refcnt use flags iface`, addresses as
/// 32 hex digits in network order.
fn parse_ipv6(text: &str) -> Vec<Route> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let dst = u128::from_str_radix(f.first()?, 16).ok()?;
            let plen = u8::from_str_radix(f.get(1)?, 16).ok()?;
            let metric = u32::from_str_radix(f.get(5)?, 16).ok()?;
            let flags = u32::from_str_radix(f.get(8)?, 16).ok()?;
            let interface = f.get(9)?.to_string();
            (flags & RTF_UP != 0 && plen <= 128).then(|| Route {
                dst: IpAddr::V6(Ipv6Addr::from(dst)),
                prefix_len: plen,
                interface,
                metric,
            })
        })
        .collect()
}

/// For `-c`: every prefix of the routes (lowest metric wins a tie), marked with whether its
/// interface is excluded; empty when no route goes through an excluded interface (then
/// nothing needs looking up).
pub fn excluded_route_marks(routes: &[Route], excluded: &[String]) -> Vec<(IpAddr, u8, bool)> {
    let mut best: Vec<&Route> = Vec::new();
    for r in routes {
        match best
            .iter_mut()
            .find(|b| b.dst == r.dst && b.prefix_len == r.prefix_len)
        {
            Some(b) if r.metric < b.metric => *b = r,
            Some(_) => {}
            None => best.push(r),
        }
    }
    let marks: Vec<(IpAddr, u8, bool)> = best
        .iter()
        .map(|r| (r.dst, r.prefix_len, excluded.contains(&r.interface)))
        .collect();
    if marks.iter().any(|m| m.2) {
        marks
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth0\t00000000\t0100C80A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
        eth0\t0000C80A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        eth1\t0065C80A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        eth2\t0066C80A\t00000000\t0000\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";

    const IPV6_ROUTE: &str = "fd000200000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n\
        00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000200000000000000000000000001 00000400 00000001 00000000 00000003 eth1\n";

    #[test]
    fn reads_proc_net_route() {
        let r = parse_ipv4(ROUTE);
        assert_eq!(r.len(), 3, "the route without RTF_UP is skipped: {r:?}");
        assert_eq!(
            r[0],
            Route {
                dst: "0.0.0.0".parse().unwrap(),
                prefix_len: 0,
                interface: "eth0".into(),
                metric: 0
            }
        );
        assert_eq!(
            (r[2].dst, r[2].prefix_len, r[2].interface.as_str()),
            ("10.200.101.0".parse().unwrap(), 24, "eth1")
        );
    }

    #[test]
    fn reads_proc_net_ipv6_route() {
        let r = parse_ipv6(IPV6_ROUTE);
        assert_eq!(
            (r[0].dst, r[0].prefix_len, r[0].metric),
            ("fd00:200::".parse().unwrap(), 64, 256)
        );
        assert_eq!((r[1].prefix_len, r[1].interface.as_str()), (0, "eth1"));
    }

    #[test]
    fn marks_are_empty_unless_a_route_uses_an_excluded_interface() {
        let routes = parse_ipv4(ROUTE);
        assert!(excluded_route_marks(&routes, &["eth9".into()]).is_empty());
        let marks = excluded_route_marks(&routes, &["eth1".into()]);
        assert_eq!(marks.len(), 3);
        assert!(marks.contains(&("10.200.101.0".parse().unwrap(), 24, true)));
        assert!(marks.contains(&("0.0.0.0".parse().unwrap(), 0, false)));
        // Two default routes: the lower metric decides.
        let two = vec![
            Route {
                dst: "0.0.0.0".parse().unwrap(),
                prefix_len: 0,
                interface: "eth1".into(),
                metric: 100,
            },
            Route {
                dst: "0.0.0.0".parse().unwrap(),
                prefix_len: 0,
                interface: "eth0".into(),
                metric: 10,
            },
            Route {
                dst: "10.0.0.0".parse().unwrap(),
                prefix_len: 8,
                interface: "eth1".into(),
                metric: 0,
            },
        ];
        let marks = excluded_route_marks(&two, &["eth1".into()]);
        assert!(marks.contains(&("0.0.0.0".parse().unwrap(), 0, false)));
    }
}
