//! Walks a connection's first packet through a nat table as `iptables-save` printed it, rule by
//! rule, as netfilter does: matches, jumps into user chains and back, RETURN, and the REDIRECT
//! that ends it. It knows the matches and targets istio-iptables writes (and a user's plain
//! address, port, interface and owner rules); a rule with anything else is an error naming the
//! rule, never a guess. Pure.

use std::net::IpAddr;

use crate::{config::Cidr, iptables::save::SavedTable};

/// What netfilter sees of a connection's first packet in nat.
#[derive(Clone, Debug)]
pub struct Packet {
    pub udp: bool,
    /// The source address; `None` for an unbound socket (no istio rule tests it then).
    pub src: Option<IpAddr>,
    pub dst: IpAddr,
    pub dport: u16,
    /// OUTPUT: the interface it leaves through (`lo` for the pod's own addresses).
    pub out_interface: Option<String>,
    /// PREROUTING: the interface it arrived on.
    pub in_interface: Option<String>,
    /// OUTPUT: the socket's owner.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// Where the walk ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// `REDIRECT --to-ports P`: to `P` on the local host.
    Redirect(u16),
    /// ACCEPT: by a rule, by a RETURN out of the built-in chain, or by its policy.
    Accept,
    /// A rule dropped it (nat never does; a user's rule might).
    Drop,
}

/// A rule as the walk met it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Met {
    pub chain: String,
    /// 1 is the first rule of its chain.
    pub position: usize,
    /// Without `-A CHAIN`.
    pub text: String,
}

/// The walk: where it ended, and the rules that decided (the jumps taken to the deciding rule,
/// from the first one out of the built-in chain, and that rule); empty when no rule did (the
/// policy accepted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Walk {
    pub ending: Ending,
    pub decided_by: Vec<Met>,
}

/// Chains a rule may jump into at most, a guard against loops (iptables refuses them anyway).
const MAX_DEPTH: usize = 16;

/// Walks `table` from the built-in chain `start` (`OUTPUT` or `PREROUTING`).
pub fn walk(table: &SavedTable, start: &str, p: &Packet) -> Result<Walk, String> {
    let mut stack: Vec<(String, usize)> = Vec::new(); // (chain, index of the next rule)
    let mut path: Vec<Met> = Vec::new(); // the jumps taken, one per frame above `start`
    let mut decided: Vec<Met> = Vec::new();
    let (mut chain, mut next) = (start.to_string(), 0usize);
    loop {
        let rules: Vec<&crate::iptables::save::SavedRule> =
            table.rules.iter().filter(|r| r.chain == chain).collect();
        let Some(rule) = rules.get(next) else {
            // The chain's end: a user chain returns to its caller; a built-in one applies
            // its policy (ACCEPT in nat).
            match stack.pop() {
                Some((caller, resume)) => {
                    path.pop();
                    (chain, next) = (caller, resume);
                    continue;
                }
                None => {
                    return Ok(Walk {
                        ending: Ending::Accept,
                        decided_by: decided,
                    });
                }
            }
        };
        let text = rule
            .line
            .splitn(3, ' ')
            .nth(2)
            .unwrap_or_default()
            .to_string();
        let parsed =
            parse(&text).map_err(|why| format!("cannot evaluate `{}`: {why}", rule.line))?;
        let met = Met {
            chain: chain.clone(),
            position: next + 1,
            text,
        };
        next += 1;
        if !parsed.matches(p)? {
            continue;
        }
        // The jumps out of the built-in chain that led here, and this rule.
        let here = || -> Vec<Met> {
            path.iter()
                .skip(1)
                .cloned()
                .chain(std::iter::once(met.clone()))
                .collect()
        };
        match parsed.target {
            Target::None => {}
            Target::Return => match stack.pop() {
                Some((caller, resume)) => {
                    decided = here();
                    path.pop();
                    (chain, next) = (caller, resume);
                }
                None => {
                    return Ok(Walk {
                        ending: Ending::Accept,
                        decided_by: vec![met],
                    });
                }
            },
            Target::Accept => {
                return Ok(Walk {
                    ending: Ending::Accept,
                    decided_by: here(),
                });
            }
            Target::Drop => {
                return Ok(Walk {
                    ending: Ending::Drop,
                    decided_by: here(),
                });
            }
            Target::Redirect(port) => {
                return Ok(Walk {
                    ending: Ending::Redirect(port),
                    decided_by: here(),
                });
            }
            Target::Jump(to) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(format!(
                        "jumps nested deeper than {MAX_DEPTH} at {}",
                        rule.line
                    ));
                }
                stack.push((chain.clone(), next));
                path.push(met);
                (chain, next) = (to, 0);
            }
        }
    }
}

/// One match of a rule, with its negation.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Test {
    Proto(String),
    Src(Cidr),
    Dst(Cidr),
    InInterface(String),
    OutInterface(String),
    DstPorts(Vec<(u16, u16)>),
    UidOwner(u32, u32),
    GidOwner(u32, u32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    None,
    Return,
    Accept,
    Drop,
    Redirect(u16),
    Jump(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Parsed {
    tests: Vec<(bool, Test)>,
    target: Target,
}

impl Parsed {
    fn matches(&self, p: &Packet) -> Result<bool, String> {
        for (negated, test) in &self.tests {
            if test.holds(p)? == *negated {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl Test {
    fn holds(&self, p: &Packet) -> Result<bool, String> {
        Ok(match self {
            Test::Proto(proto) => match proto.as_str() {
                "tcp" | "6" => !p.udp,
                "udp" | "17" => p.udp,
                "all" | "0" => true,
                other => return Err(format!("protocol {other}")),
            },
            Test::Src(c) => p.src.is_some_and(|a| holds(c, a)),
            Test::Dst(c) => holds(c, p.dst),
            Test::InInterface(i) => p.in_interface.as_deref().is_some_and(|n| iface(i, n)),
            Test::OutInterface(i) => p.out_interface.as_deref().is_some_and(|n| iface(i, n)),
            Test::DstPorts(ranges) => ranges.iter().any(|&(a, b)| (a..=b).contains(&p.dport)),
            Test::UidOwner(a, b) => p.uid.is_some_and(|u| (*a..=*b).contains(&u)),
            Test::GidOwner(a, b) => p.gid.is_some_and(|g| (*a..=*b).contains(&g)),
        })
    }
}

/// iptables' interface names: `eth+` is any name starting with `eth`.
fn iface(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('+') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

fn holds(cidr: &Cidr, addr: IpAddr) -> bool {
    crate::iptables::ruleset::words::holds(cidr, addr)
}

/// Splits a rule as `iptables-save` quotes it (a comment's words are one token).
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    out.push(std::mem::take(&mut current));
                    any = false;
                }
            }
            _ => {
                current.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(current);
    }
    out
}

fn cidr(v: &str) -> Result<Cidr, String> {
    if v.contains('/') {
        v.parse()
    } else {
        let addr: IpAddr = v.parse().map_err(|_| format!("address {v}"))?;
        Ok(Cidr {
            addr,
            prefix_len: if addr.is_ipv4() { 32 } else { 128 },
        })
    }
}

fn port_range(v: &str) -> Result<(u16, u16), String> {
    let one = |s: &str| s.parse::<u16>().map_err(|_| format!("port {s}"));
    match v.split_once(':') {
        Some((a, b)) => Ok((one(a)?, one(b)?)),
        None => one(v).map(|p| (p, p)),
    }
}

fn id_range(v: &str) -> Result<(u32, u32), String> {
    let one = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("owner {s} (not a number)"))
    };
    match v.split_once('-') {
        Some((a, b)) => Ok((one(a)?, one(b)?)),
        None => one(v).map(|id| (id, id)),
    }
}

/// The matches and the target of a rule.
fn parse(text: &str) -> Result<Parsed, String> {
    let t = tokens(text);
    let mut tests = Vec::new();
    let mut target = Target::None;
    let mut negate = false;
    let mut i = 0;
    let value = |i: usize| {
        t.get(i + 1)
            .cloned()
            .ok_or_else(|| format!("{} without a value", t[i]))
    };
    while i < t.len() {
        let tok = t[i].as_str();
        let mut test = |test: Test| {
            tests.push((std::mem::take(&mut negate), test));
        };
        match tok {
            "!" => {
                negate = true;
                i += 1;
                continue;
            }
            "-p" | "--protocol" => test(Test::Proto(value(i)?)),
            "-s" | "--source" => test(Test::Src(cidr(&value(i)?)?)),
            "-d" | "--destination" => test(Test::Dst(cidr(&value(i)?)?)),
            "-i" | "--in-interface" => test(Test::InInterface(value(i)?)),
            "-o" | "--out-interface" => test(Test::OutInterface(value(i)?)),
            "--dport" | "--destination-port" => test(Test::DstPorts(vec![port_range(&value(i)?)?])),
            "--dports" | "--destination-ports" => {
                let ranges = value(i)?
                    .split(',')
                    .map(port_range)
                    .collect::<Result<Vec<_>, _>>()?;
                test(Test::DstPorts(ranges));
            }
            "--uid-owner" => {
                let (a, b) = id_range(&value(i)?)?;
                test(Test::UidOwner(a, b));
            }
            "--gid-owner" => {
                let (a, b) = id_range(&value(i)?)?;
                test(Test::GidOwner(a, b));
            }
            "-m" | "--match" => match value(i)?.as_str() {
                "tcp" | "udp" | "multiport" | "owner" | "comment" => {}
                other => return Err(format!("match module {other}")),
            },
            "--comment" => {}
            "-j" | "--jump" | "-g" | "--goto" => {
                let name = value(i)?;
                if tok == "-g" || tok == "--goto" {
                    return Err("goto".to_string());
                }
                target = match name.as_str() {
                    "RETURN" => Target::Return,
                    "ACCEPT" => Target::Accept,
                    "DROP" => Target::Drop,
                    "REDIRECT" => {
                        let port = t
                            .iter()
                            .position(|x| x == "--to-ports" || x == "--to-port")
                            .and_then(|at| t.get(at + 1))
                            .ok_or("REDIRECT without --to-ports")?;
                        let (first, _) = port_range(port)?;
                        Target::Redirect(first)
                    }
                    chain if chain.chars().all(|c| c.is_ascii_uppercase() || c == '_') => {
                        Target::Jump(chain.to_string())
                    }
                    other => return Err(format!("target {other}")),
                };
                // The target's own options (`--to-ports`) end the rule.
                break;
            }
            other => return Err(format!("option {other}")),
        }
        i += 2;
    }
    Ok(Parsed { tests, target })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iptables::save;

    /// The nat rules `iptables-save` prints for istio's rules of `-i '*' -x 10.9.0.0/16 -o 3306
    /// -c eth1 -b 9080` with DNS capture of 10.96.0.10 (iptables 1.8.9).
    const RULES: [&str; 19] = [
        "-A PREROUTING -i eth1 -j RETURN",
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A OUTPUT -o eth1 -j RETURN",
        "-A OUTPUT -j ISTIO_OUTPUT",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 9080 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A ISTIO_OUTPUT -p tcp -m tcp --dport 3306 -j RETURN",
        "-A ISTIO_OUTPUT -p udp -m udp --dport 3306 -j RETURN",
        "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m multiport ! --dports 53,15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_OUTPUT -o lo -p tcp -m tcp ! --dport 53 -m owner ! --uid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS",
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A ISTIO_OUTPUT -d 10.9.0.0/16 -j RETURN",
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
        "-A ISTIO_OUTPUT_DNS -d 10.96.0.10/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    ];

    /// The nat table of `rules` as `iptables-save` prints it (chains declared, then the rules).
    fn saved(rules: &[&str]) -> SavedTable {
        let mut chains: Vec<&str> = vec!["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"];
        for r in rules {
            let chain = r.split(' ').nth(1).unwrap_or_default();
            if !chains.contains(&chain) {
                chains.push(chain);
            }
        }
        let mut text = String::from("*nat\n");
        for (i, c) in chains.iter().enumerate() {
            let policy = if i < 4 { "ACCEPT" } else { "-" };
            text.push_str(&format!(":{c} {policy} [0:0]\n"));
        }
        for r in rules {
            text.push_str(r);
            text.push('\n');
        }
        text.push_str("COMMIT\n");
        save::parse(&text).remove(0)
    }

    fn nat() -> SavedTable {
        saved(&RULES)
    }

    fn out(dst: &str, dport: u16, uid: u32, out_interface: &str) -> Packet {
        Packet {
            udp: false,
            src: None,
            dst: dst.parse().unwrap(),
            dport,
            out_interface: Some(out_interface.into()),
            in_interface: None,
            uid: Some(uid),
            gid: Some(uid),
        }
    }

    fn decided(w: &Walk) -> Vec<String> {
        w.decided_by
            .iter()
            .map(|m| format!("{} #{}: {}", m.chain, m.position, m.text))
            .collect()
    }

    #[test]
    fn an_application_connection_walks_to_the_proxy() {
        let w = walk(&nat(), "OUTPUT", &out("10.2.0.1", 80, 1000, "eth0")).unwrap();
        assert_eq!(w.ending, Ending::Redirect(15001));
        assert_eq!(
            decided(&w),
            [
                "ISTIO_OUTPUT #10: -j ISTIO_REDIRECT",
                "ISTIO_REDIRECT #1: -p tcp -j REDIRECT --to-ports 15001"
            ]
        );
    }

    #[test]
    fn returns_name_the_rule_that_returned() {
        let nat = nat();
        let w = walk(&nat, "OUTPUT", &out("10.9.3.4", 80, 1000, "eth0")).unwrap();
        assert_eq!(w.ending, Ending::Accept);
        assert_eq!(decided(&w), ["ISTIO_OUTPUT #9: -d 10.9.0.0/16 -j RETURN"]);
        let w = walk(&nat, "OUTPUT", &out("10.2.0.1", 3306, 1000, "eth0")).unwrap();
        assert_eq!(
            decided(&w),
            ["ISTIO_OUTPUT #1: -p tcp -m tcp --dport 3306 -j RETURN"]
        );
        // The proxy's own connection out of the pod.
        let w = walk(&nat, "OUTPUT", &out("10.2.0.1", 80, 1337, "eth0")).unwrap();
        assert_eq!(
            decided(&w),
            ["ISTIO_OUTPUT #6: -m owner --uid-owner 1337 -j RETURN"]
        );
        // A built-in chain's own RETURN (-c): the rule alone.
        let w = walk(&nat, "OUTPUT", &out("10.2.0.1", 80, 1000, "eth1")).unwrap();
        assert_eq!(decided(&w), ["OUTPUT #1: -o eth1 -j RETURN"]);
    }

    #[test]
    fn the_proxy_calling_its_pod_goes_to_inbound_capture_and_others_stay_local() {
        let nat = nat();
        let w = walk(&nat, "OUTPUT", &out("10.1.0.2", 9080, 1337, "lo")).unwrap();
        assert_eq!(w.ending, Ending::Redirect(15006));
        assert_eq!(w.decided_by.len(), 2);
        let w = walk(&nat, "OUTPUT", &out("10.1.0.2", 9080, 1000, "lo")).unwrap();
        assert_eq!(w.ending, Ending::Accept);
        assert_eq!(w.decided_by[0].position, 5);
        // The tunnel port is spared by the multiport negation.
        let w = walk(&nat, "OUTPUT", &out("10.1.0.2", 15008, 1337, "lo")).unwrap();
        assert_eq!(
            decided(&w)[0],
            "ISTIO_OUTPUT #6: -m owner --uid-owner 1337 -j RETURN"
        );
    }

    #[test]
    fn dns_and_udp() {
        let nat = nat();
        let mut dns = out("10.96.0.10", 53, 1000, "eth0");
        dns.udp = true;
        let w = walk(&nat, "OUTPUT", &dns).unwrap();
        assert_eq!(w.ending, Ending::Redirect(15053));
        assert_eq!(w.decided_by[0].text, "-j ISTIO_OUTPUT_DNS");
        // UDP elsewhere: ISTIO_REDIRECT takes TCP only; nothing decides, the policy accepts.
        let mut udp = out("10.2.0.1", 5000, 1000, "eth0");
        udp.udp = true;
        let w = walk(&nat, "OUTPUT", &udp).unwrap();
        assert_eq!((w.ending, w.decided_by), (Ending::Accept, vec![]));
    }

    #[test]
    fn inbound_from_prerouting() {
        let nat = nat();
        let mut p = out("10.1.0.2", 9080, 0, "eth0");
        (p.out_interface, p.in_interface, p.uid, p.gid) = (None, Some("eth0".into()), None, None);
        let w = walk(&nat, "PREROUTING", &p).unwrap();
        assert_eq!(w.ending, Ending::Redirect(15006));
        p.dport = 15008;
        let w = walk(&nat, "PREROUTING", &p).unwrap();
        assert_eq!(
            decided(&w),
            ["ISTIO_INBOUND #1: -p tcp -m tcp --dport 15008 -j RETURN"]
        );
        p.in_interface = Some("eth1".into());
        let w = walk(&nat, "PREROUTING", &p).unwrap();
        assert_eq!(decided(&w), ["PREROUTING #1: -i eth1 -j RETURN"]);
    }

    #[test]
    fn what_it_cannot_evaluate_is_an_error_naming_the_rule() {
        let nat = saved(&["-A OUTPUT -m mark --mark 0x1 -j RETURN"]);
        let err = walk(&nat, "OUTPUT", &out("10.2.0.1", 80, 0, "eth0")).unwrap_err();
        assert!(
            err.contains("-A OUTPUT -m mark --mark 0x1 -j RETURN"),
            "{err}"
        );
        assert!(err.contains("match module mark"), "{err}");
        assert_eq!(tokens(r#"-m comment --comment "a b" -j RETURN"#).len(), 6);
    }
}
