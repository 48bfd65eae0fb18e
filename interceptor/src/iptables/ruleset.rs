//! The rules istio-iptables writes for a configuration, in its order, rendered as its
//! `iptables-restore` input. Pure: `--dry-run`, the tests and the apply path all use this.
//!
//! Generation follows istio-iptables' `IptablesConfigurator.Run` step by step (the numbered
//! comments below); rendering follows its `buildRestore`: per table (alphabetical), `-N` for
//! each non-builtin chain in order of first use, then `-N` for jump targets without rules of
//! their own, then the rules in generation order, then `COMMIT`.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{
    BUILTIN_CHAINS, Family, ISTIO_DIVERT, ISTIO_DROP, ISTIO_IN_REDIRECT, ISTIO_INBOUND,
    ISTIO_OUTPUT, ISTIO_OUTPUT_DNS, ISTIO_REDIRECT, ISTIO_TPROXY, OUR_TABLES, facts::PodFacts,
};
use crate::config::{
    Cidr, InboundPorts, InterceptConfig, InterceptionMode, OutboundInclude, OwnerGroups,
};

/// The agent's DNS listener (istio-iptables' `IstioAgentDNSListenerPort`, not configurable).
pub const DNS_LISTENER_PORT: u16 = 15053;
/// The mark TPROXY mode puts on the proxy's own calls to its pod (istio's `OutboundMark`).
pub const OUTBOUND_MARK: u32 = 1338;
const LOOPBACK6: &str = "::1/128";

/// One rule: `-A CHAIN args...` or `-I CHAIN POS args...` in `table`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub table: &'static str,
    pub chain: String,
    /// The whole command, starting with `-A`/`-I`.
    pub params: Vec<String>,
}

impl Rule {
    pub fn text(&self) -> String {
        self.params.join(" ")
    }

    /// The jump target when the rule ends in `-j TARGET` (istio-iptables' test).
    fn jump_target(&self) -> Option<&str> {
        match self.params.as_slice() {
            [.., j, target] if j == "-j" => Some(target),
            _ => None,
        }
    }
}

/// The rules of both families. `v6` is empty unless IPv6 is enabled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSet {
    pub v4: Vec<Rule>,
    pub v6: Vec<Rule>,
    pub ipv6: bool,
    /// Things the caller should warn about (istio-iptables logs them).
    pub warnings: Vec<String>,
}

impl RuleSet {
    pub fn rules(&self, family: Family) -> &[Rule] {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    /// The families that get a restore run: IPv4 always, IPv6 when enabled.
    pub fn families(&self) -> Vec<Family> {
        if self.ipv6 {
            vec![Family::V4, Family::V6]
        } else {
            vec![Family::V4]
        }
    }

    /// The `iptables-restore --noflush` input for one family, exactly as istio-iptables
    /// renders it.
    pub fn restore_input(&self, family: Family) -> String {
        render(self.rules(family))
    }

    /// What `--dry-run` prints: the IPv4 input, then the IPv6 one when IPv6 is enabled.
    pub fn dry_run(&self) -> String {
        self.families()
            .into_iter()
            .map(|f| self.restore_input(f))
            .collect()
    }
}

/// Renders rules as istio-iptables' `buildRestore` does.
pub fn render(rules: &[Rule]) -> String {
    let mut out = String::new();
    for (table, lines) in render_tables(rules) {
        out.push_str("* ");
        out.push_str(&table);
        out.push('\n');
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// The lines of each table's block (without `* table` and `COMMIT`), tables with rules only,
/// in rendering order.
pub fn render_tables(rules: &[Rule]) -> Vec<(String, Vec<String>)> {
    let mut blocks = Vec::new();
    for table in OUR_TABLES {
        let in_table: Vec<&Rule> = rules.iter().filter(|r| r.table == table).collect();
        if in_table.is_empty() {
            continue;
        }
        // -N: chains with rules in order of first use, then jump targets without rules.
        let mut chains: Vec<&str> = Vec::new();
        for r in &in_table {
            if !BUILTIN_CHAINS.contains(&r.chain.as_str()) && !chains.contains(&r.chain.as_str()) {
                chains.push(&r.chain);
            }
        }
        for r in &in_table {
            if let Some(target) = r.jump_target()
                && !BUILTIN_CHAINS.contains(&target)
                && !chains.contains(&target)
            {
                chains.push(target);
            }
        }
        let mut lines: Vec<String> = chains.iter().map(|c| format!("-N {c}")).collect();
        lines.extend(in_table.iter().map(|r| r.text()));
        blocks.push((table.to_string(), lines));
    }
    blocks
}

/// Which families a rule goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum To {
    Both,
    V4,
    V6,
}

struct Builder {
    v4: Vec<Rule>,
    v6: Vec<Rule>,
    ipv6: bool,
}

impl Builder {
    fn push(&mut self, to: To, table: &'static str, chain: &str, params: Vec<String>) {
        let rule = Rule {
            table,
            chain: chain.to_string(),
            params,
        };
        if to != To::V6 {
            self.v4.push(rule.clone());
        }
        // Without IPv6 the v6 rules are dropped silently, as istio-iptables does.
        if to != To::V4 && self.ipv6 {
            self.v6.push(rule);
        }
    }

    fn append(&mut self, to: To, table: &'static str, chain: &str, args: &[&str]) {
        let params = ["-A", chain]
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect();
        self.push(to, table, chain, params);
    }

    fn insert(&mut self, to: To, table: &'static str, chain: &str, pos: u32, args: &[&str]) {
        let pos = pos.to_string();
        let params = ["-I", chain, &pos]
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect();
        self.push(to, table, chain, params);
    }

    /// A rule whose address differs by family (istio-iptables' `AppendVersionedRule`):
    /// `IP` in `args` becomes `v4` in the IPv4 rule and `v6` in the IPv6 one.
    fn versioned(&mut self, table: &'static str, chain: &str, v4: &str, v6: &str, args: &[&str]) {
        fn sub<'a>(args: &[&'a str], val: &'a str) -> Vec<&'a str> {
            args.iter()
                .map(|a| if *a == IP { val } else { a })
                .collect()
        }
        let (a4, a6) = (sub(args, v4), sub(args, v6));
        self.append(To::V4, table, chain, &a4);
        self.append(To::V6, table, chain, &a6);
    }
}

/// Placeholder for [`Builder::versioned`].
const IP: &str = "\0ip";

/// Address lists split by family, as istio-iptables' `SeparateV4V6` does.
struct Ranges {
    all: bool,
    v4: Vec<String>,
    v6: Vec<String>,
}

fn ranges(cidrs: &[Cidr]) -> Ranges {
    Ranges {
        all: false,
        v4: cidrs
            .iter()
            .filter(|c| c.is_ipv4())
            .map(Cidr::to_string)
            .collect(),
        v6: cidrs
            .iter()
            .filter(|c| !c.is_ipv4())
            .map(Cidr::to_string)
            .collect(),
    }
}

fn host4(a: &Ipv4Addr) -> String {
    format!("{a}/32")
}

fn host6(a: &Ipv6Addr) -> String {
    format!("{a}/128")
}

/// The rule set istio-iptables writes for `cfg` in a pod described by `facts`.
pub fn build(cfg: &InterceptConfig, facts: &PodFacts) -> RuleSet {
    let mut b = Builder {
        v4: Vec::new(),
        v6: Vec::new(),
        ipv6: facts.ipv6,
    };
    let mut warnings = Vec::new();
    let tproxy = cfg.inbound_mode == InterceptionMode::Tproxy;
    let p = cfg.envoy_port.to_string();
    let z = cfg.inbound_capture_port.to_string();
    let e = cfg.inbound_tunnel_port.to_string();
    let mark = cfg.tproxy_mark.to_string();
    let outbound_mark = OUTBOUND_MARK.to_string();
    let dns_port = DNS_LISTENER_PORT.to_string();
    let loop4 = cfg.ipv4_loopback_cidr.to_string();
    let uids: Vec<String> = cfg.proxy_uids.iter().map(u32::to_string).collect();
    let gids: Vec<String> = cfg.proxy_gids.iter().map(u32::to_string).collect();

    let exclude = ranges(&cfg.outbound_exclude);
    let include = match &cfg.outbound_include {
        OutboundInclude::All => Ranges {
            all: true,
            v4: Vec::new(),
            v6: Vec::new(),
        },
        OutboundInclude::Cidrs(c) => ranges(c),
    };
    // A loopback range in -i (either family) keeps the app's own calls over lo captured.
    let include_has_loopback = cfg.loopback_included();

    let mut redirect_dns = cfg.redirect_dns;
    if redirect_dns && !cfg.capture_all_dns && facts.dns_v4.is_empty() && facts.dns_v6.is_empty() {
        warnings.push(
            "REDIRECT_DNS is set, but CAPTURE_ALL_DNS is false, and no DNS servers provided. \
             DNS capture disabled."
                .to_string(),
        );
        redirect_dns = false;
    }

    // 1. -c: neither captured inbound nor outbound.
    for ifc in &cfg.exclude_interfaces {
        b.append(To::Both, "nat", "PREROUTING", &["-i", ifc, "-j", "RETURN"]);
        b.append(To::Both, "nat", "OUTPUT", &["-o", ifc, "-j", "RETURN"]);
    }
    if tproxy {
        for ifc in &cfg.exclude_interfaces {
            b.append(
                To::Both,
                "mangle",
                "PREROUTING",
                &["-i", ifc, "-j", "RETURN"],
            );
            b.append(To::Both, "mangle", "OUTPUT", &["-o", ifc, "-j", "RETURN"]);
        }
    }

    // 2. -k: inbound from virtual interfaces is never inbound-captured.
    for ifc in &cfg.kube_virt_interfaces {
        b.insert(
            To::Both,
            "nat",
            "PREROUTING",
            1,
            &["-i", ifc, "-j", "RETURN"],
        );
    }

    // 3. --drop-invalid.
    if cfg.drop_invalid {
        b.append(
            To::Both,
            "mangle",
            "PREROUTING",
            &["-m", "conntrack", "--ctstate", "INVALID", "-j", ISTIO_DROP],
        );
        b.append(To::Both, "mangle", ISTIO_DROP, &["-j", "DROP"]);
    }

    // 4. The fixed chains.
    b.append(
        To::Both,
        "nat",
        ISTIO_INBOUND,
        &["-p", "tcp", "--dport", &e, "-j", "RETURN"],
    );
    b.append(
        To::Both,
        "nat",
        ISTIO_REDIRECT,
        &["-p", "tcp", "-j", "REDIRECT", "--to-ports", &p],
    );
    b.append(
        To::Both,
        "nat",
        ISTIO_IN_REDIRECT,
        &["-p", "tcp", "-j", "REDIRECT", "--to-ports", &z],
    );

    // 5. Inbound ports.
    let inbound_on = cfg.inbound_ports != InboundPorts::Ports(Vec::new());
    if inbound_on {
        let table = if tproxy {
            b.append(
                To::Both,
                "mangle",
                ISTIO_DIVERT,
                &["-j", "MARK", "--set-mark", &mark],
            );
            b.append(To::Both, "mangle", ISTIO_DIVERT, &["-j", "ACCEPT"]);
            let tproxy_mark = format!("{mark}/0xffffffff");
            b.versioned(
                "mangle",
                ISTIO_TPROXY,
                &loop4,
                LOOPBACK6,
                &[
                    "!",
                    "-d",
                    IP,
                    "-p",
                    "tcp",
                    "-j",
                    "TPROXY",
                    "--tproxy-mark",
                    &tproxy_mark,
                    "--on-port",
                    &z,
                ],
            );
            "mangle"
        } else {
            "nat"
        };
        b.append(
            To::Both,
            table,
            "PREROUTING",
            &["-p", "tcp", "-j", ISTIO_INBOUND],
        );
        match &cfg.inbound_ports {
            InboundPorts::All => {
                for port in &cfg.inbound_ports_exclude {
                    let port = port.to_string();
                    b.append(
                        To::Both,
                        table,
                        ISTIO_INBOUND,
                        &["-p", "tcp", "--dport", &port, "-j", "RETURN"],
                    );
                }
                if tproxy {
                    b.append(
                        To::Both,
                        "mangle",
                        ISTIO_INBOUND,
                        &[
                            "-p",
                            "tcp",
                            "-m",
                            "conntrack",
                            "--ctstate",
                            "RELATED,ESTABLISHED",
                            "-j",
                            ISTIO_DIVERT,
                        ],
                    );
                    b.append(
                        To::Both,
                        "mangle",
                        ISTIO_INBOUND,
                        &["-p", "tcp", "-j", ISTIO_TPROXY],
                    );
                } else {
                    b.append(
                        To::Both,
                        "nat",
                        ISTIO_INBOUND,
                        &["-p", "tcp", "-j", ISTIO_IN_REDIRECT],
                    );
                }
            }
            // An explicit list: -d is not used.
            InboundPorts::Ports(ports) => {
                for port in ports {
                    let port = port.to_string();
                    if tproxy {
                        b.append(
                            To::Both,
                            "mangle",
                            ISTIO_INBOUND,
                            &[
                                "-p",
                                "tcp",
                                "--dport",
                                &port,
                                "-m",
                                "conntrack",
                                "--ctstate",
                                "RELATED,ESTABLISHED",
                                "-j",
                                ISTIO_DIVERT,
                            ],
                        );
                        b.append(
                            To::Both,
                            "mangle",
                            ISTIO_INBOUND,
                            &["-p", "tcp", "--dport", &port, "-j", ISTIO_TPROXY],
                        );
                    } else {
                        b.append(
                            To::Both,
                            "nat",
                            ISTIO_INBOUND,
                            &["-p", "tcp", "--dport", &port, "-j", ISTIO_IN_REDIRECT],
                        );
                    }
                }
            }
        }
    }

    // 6. Outbound entry, every protocol.
    b.append(To::Both, "nat", "OUTPUT", &["-j", ISTIO_OUTPUT]);

    // 7. -o: never captured, checked first.
    for port in &cfg.outbound_ports_exclude {
        let port = port.to_string();
        b.append(
            To::Both,
            "nat",
            ISTIO_OUTPUT,
            &["-p", "tcp", "--dport", &port, "-j", "RETURN"],
        );
        b.append(
            To::Both,
            "nat",
            ISTIO_OUTPUT,
            &["-p", "udp", "--dport", &port, "-j", "RETURN"],
        );
    }

    // 8. Envoy's inbound passthrough source.
    b.versioned(
        "nat",
        ISTIO_OUTPUT,
        "127.0.0.6/32",
        "::6/128",
        &["-o", "lo", "-s", IP, "-j", "RETURN"],
    );

    // 9. Per proxy uid: its calls to its own pod go to inbound capture; an app's calls over lo
    // stay local (unless -i has a loopback range); everything else of the proxy is direct.
    let dns_dports = format!("53,{e}");
    for uid in &uids {
        if redirect_dns {
            b.versioned(
                "nat",
                ISTIO_OUTPUT,
                &loop4,
                LOOPBACK6,
                &[
                    "-o",
                    "lo",
                    "!",
                    "-d",
                    IP,
                    "-p",
                    "tcp",
                    "-m",
                    "multiport",
                    "!",
                    "--dports",
                    &dns_dports,
                    "-m",
                    "owner",
                    "--uid-owner",
                    uid,
                    "-j",
                    ISTIO_IN_REDIRECT,
                ],
            );
        } else {
            b.versioned(
                "nat",
                ISTIO_OUTPUT,
                &loop4,
                LOOPBACK6,
                &[
                    "-o",
                    "lo",
                    "!",
                    "-d",
                    IP,
                    "-p",
                    "tcp",
                    "!",
                    "--dport",
                    &e,
                    "-m",
                    "owner",
                    "--uid-owner",
                    uid,
                    "-j",
                    ISTIO_IN_REDIRECT,
                ],
            );
        }
        owner_returns(
            &mut b,
            "--uid-owner",
            uid,
            include_has_loopback,
            redirect_dns,
        );
    }

    // 10. Per proxy gid (the inbound-capture rule never has the DNS form).
    for gid in &gids {
        b.versioned(
            "nat",
            ISTIO_OUTPUT,
            &loop4,
            LOOPBACK6,
            &[
                "-o",
                "lo",
                "!",
                "-d",
                IP,
                "-p",
                "tcp",
                "!",
                "--dport",
                &e,
                "-m",
                "owner",
                "--gid-owner",
                gid,
                "-j",
                ISTIO_IN_REDIRECT,
            ],
        );
        owner_returns(
            &mut b,
            "--gid-owner",
            gid,
            include_has_loopback,
            redirect_dns,
        );
    }

    // 11. Owner groups.
    match &cfg.owner_groups {
        OwnerGroups::AllExcept(groups) => {
            for g in groups {
                let g = g.to_string();
                b.append(
                    To::Both,
                    "nat",
                    ISTIO_OUTPUT,
                    &["-m", "owner", "--gid-owner", &g, "-j", "RETURN"],
                );
            }
        }
        OwnerGroups::Only(groups) => {
            // One rule: the connection's group is none of these.
            let names: Vec<String> = groups.iter().map(u32::to_string).collect();
            let mut args: Vec<&str> = Vec::new();
            for g in &names {
                args.extend(["-m", "owner", "!", "--gid-owner", g]);
            }
            args.extend(["-j", "RETURN"]);
            b.append(To::Both, "nat", ISTIO_OUTPUT, &args);
        }
    }

    // 12. DNS.
    if redirect_dns {
        dns_rules(&mut b, cfg, facts, &uids, &gids, &dns_port);
    }

    // 13. Localhost is never captured.
    b.versioned(
        "nat",
        ISTIO_OUTPUT,
        &loop4,
        LOOPBACK6,
        &["-d", IP, "-j", "RETURN"],
    );

    // 14. -x, before any include.
    for c in &exclude.v4 {
        b.append(To::V4, "nat", ISTIO_OUTPUT, &["-d", c, "-j", "RETURN"]);
    }
    for c in &exclude.v6 {
        b.append(To::V6, "nat", ISTIO_OUTPUT, &["-d", c, "-j", "RETURN"]);
    }

    // 15. -q: an extra include by port.
    for port in &cfg.outbound_ports_include {
        let port = port.to_string();
        b.append(
            To::Both,
            "nat",
            ISTIO_OUTPUT,
            &["-p", "tcp", "--dport", &port, "-j", ISTIO_REDIRECT],
        );
    }

    // 16. -i, the IPv4 pass then the IPv6 one; -k traffic to the ranges goes outbound.
    for (to, cidrs) in [(To::V4, &include.v4), (To::V6, &include.v6)] {
        if include.all {
            b.append(to, "nat", ISTIO_OUTPUT, &["-j", ISTIO_REDIRECT]);
            for ifc in &cfg.kube_virt_interfaces {
                b.insert(
                    to,
                    "nat",
                    "PREROUTING",
                    1,
                    &["-i", ifc, "-j", ISTIO_REDIRECT],
                );
            }
        } else {
            for c in cidrs {
                for ifc in &cfg.kube_virt_interfaces {
                    b.insert(
                        to,
                        "nat",
                        "PREROUTING",
                        1,
                        &["-i", ifc, "-d", c, "-j", ISTIO_REDIRECT],
                    );
                }
                b.append(to, "nat", ISTIO_OUTPUT, &["-d", c, "-j", ISTIO_REDIRECT]);
            }
        }
    }

    // 17. TPROXY's mangle rules.
    if tproxy {
        b.append(
            To::Both,
            "mangle",
            "PREROUTING",
            &[
                "-p",
                "tcp",
                "-m",
                "mark",
                "--mark",
                &mark,
                "-j",
                "CONNMARK",
                "--save-mark",
            ],
        );
        b.append(
            To::Both,
            "mangle",
            "OUTPUT",
            &[
                "-p", "tcp", "-o", "lo", "-m", "mark", "--mark", &mark, "-j", "RETURN",
            ],
        );
        for (owner, ids) in [("--uid-owner", &uids), ("--gid-owner", &gids)] {
            for id in ids {
                b.versioned(
                    "mangle",
                    "OUTPUT",
                    &loop4,
                    LOOPBACK6,
                    &[
                        "!",
                        "-d",
                        IP,
                        "-p",
                        "tcp",
                        "-o",
                        "lo",
                        "-m",
                        "owner",
                        owner,
                        id,
                        "-j",
                        "MARK",
                        "--set-mark",
                        &outbound_mark,
                    ],
                );
            }
        }
        b.append(
            To::Both,
            "mangle",
            "OUTPUT",
            &[
                "-p",
                "tcp",
                "-m",
                "connmark",
                "--mark",
                &mark,
                "-j",
                "CONNMARK",
                "--restore-mark",
            ],
        );
        b.insert(
            To::Both,
            "mangle",
            ISTIO_INBOUND,
            1,
            &["-p", "tcp", "-m", "mark", "--mark", &mark, "-j", "RETURN"],
        );
        b.insert(
            To::V4,
            "mangle",
            ISTIO_INBOUND,
            2,
            &[
                "-p",
                "tcp",
                "-s",
                "127.0.0.6/32",
                "-i",
                "lo",
                "-j",
                "RETURN",
            ],
        );
        b.insert(
            To::V6,
            "mangle",
            ISTIO_INBOUND,
            2,
            &["-p", "tcp", "-s", "::6/128", "-i", "lo", "-j", "RETURN"],
        );
        b.insert(
            To::Both,
            "mangle",
            ISTIO_INBOUND,
            3,
            &[
                "-p",
                "tcp",
                "-i",
                "lo",
                "-m",
                "mark",
                "!",
                "--mark",
                &outbound_mark,
                "-j",
                "RETURN",
            ],
        );
    }

    RuleSet {
        v4: b.v4,
        v6: b.v6,
        ipv6: facts.ipv6,
        warnings,
    }
}

/// istio-iptables' `SetupDNSRedir`: port 53 to the name servers (or anywhere, with
/// `--capture-all-dns`) goes to the agent; conntrack zones keep the two UDP legs apart.
fn dns_rules(
    b: &mut Builder,
    cfg: &InterceptConfig,
    facts: &PodFacts,
    uids: &[String],
    gids: &[String],
    dns_port: &str,
) {
    let all = cfg.capture_all_dns;
    let v4: Vec<String> = facts.dns_v4.iter().map(host4).collect();
    let v6: Vec<String> = facts.dns_v6.iter().map(host6).collect();
    let servers = |to: To| -> Vec<(To, &String)> {
        match to {
            To::V4 => v4.iter().map(|s| (To::V4, s)).collect(),
            _ => v6.iter().map(|s| (To::V6, s)).collect(),
        }
    };

    b.append(To::Both, "raw", "OUTPUT", &["-j", ISTIO_OUTPUT_DNS]);
    if all || !v4.is_empty() {
        b.append(To::V4, "nat", ISTIO_OUTPUT, &["-j", ISTIO_OUTPUT_DNS]);
    }
    if all || !v6.is_empty() {
        b.append(To::V6, "nat", ISTIO_OUTPUT, &["-j", ISTIO_OUTPUT_DNS]);
    }
    // NB istio-iptables writes "--to-ports" for TCP and "--to-port" for UDP.
    for (proto, to_ports) in [("tcp", "--to-ports"), ("udp", "--to-port")] {
        if all {
            b.append(
                To::Both,
                "nat",
                ISTIO_OUTPUT_DNS,
                &[
                    "-p", proto, "--dport", "53", "-j", "REDIRECT", to_ports, dns_port,
                ],
            );
        } else {
            for (to, s) in servers(To::V4).into_iter().chain(servers(To::V6)) {
                b.append(
                    to,
                    "nat",
                    ISTIO_OUTPUT_DNS,
                    &[
                        "-p", proto, "--dport", "53", "-d", s, "-j", "REDIRECT", to_ports, dns_port,
                    ],
                );
            }
        }
    }

    // Conntrack zones: the proxy's queries upstream and its answers to clients.
    for (owner, ids) in [("--uid-owner", uids), ("--gid-owner", gids)] {
        for id in ids {
            b.append(
                To::Both,
                "raw",
                ISTIO_OUTPUT_DNS,
                &[
                    "-p", "udp", "--dport", "53", "-m", "owner", owner, id, "-j", "CT", "--zone",
                    "1",
                ],
            );
            b.append(
                To::Both,
                "raw",
                ISTIO_OUTPUT_DNS,
                &[
                    "-p", "udp", "--sport", dns_port, "-m", "owner", owner, id, "-j", "CT",
                    "--zone", "2",
                ],
            );
        }
    }
    if all {
        b.append(To::Both, "raw", "PREROUTING", &["-j", ISTIO_INBOUND]);
        b.append(
            To::Both,
            "raw",
            ISTIO_OUTPUT_DNS,
            &["-p", "udp", "--dport", "53", "-j", "CT", "--zone", "2"],
        );
        b.append(
            To::Both,
            "raw",
            ISTIO_INBOUND,
            &["-p", "udp", "--sport", "53", "-j", "CT", "--zone", "1"],
        );
    } else {
        for to in [To::V4, To::V6] {
            let list = servers(to);
            if !list.is_empty() {
                b.append(to, "raw", "PREROUTING", &["-j", ISTIO_INBOUND]);
            }
            for (to, s) in list {
                b.append(
                    to,
                    "raw",
                    ISTIO_OUTPUT_DNS,
                    &[
                        "-p", "udp", "--dport", "53", "-d", s, "-j", "CT", "--zone", "2",
                    ],
                );
                b.append(
                    to,
                    "raw",
                    ISTIO_INBOUND,
                    &[
                        "-p", "udp", "--sport", "53", "-s", s, "-j", "CT", "--zone", "1",
                    ],
                );
            }
        }
    }
}

/// The two RETURN rules istio-iptables writes after each proxy id's inbound-capture rule:
/// everyone else over lo stays local (TCP other than 53 under DNS capture; left out when `-i`
/// has a loopback range), then the id itself is never captured. `owner` is `--uid-owner` or
/// `--gid-owner`.
fn owner_returns(
    b: &mut Builder,
    owner: &str,
    id: &str,
    include_has_loopback: bool,
    redirect_dns: bool,
) {
    if !include_has_loopback {
        let others: &[&str] = if redirect_dns {
            &[
                "-o", "lo", "-p", "tcp", "!", "--dport", "53", "-m", "owner", "!", owner, id,
            ]
        } else {
            &["-o", "lo", "-m", "owner", "!", owner, id]
        };
        b.append(
            To::Both,
            "nat",
            ISTIO_OUTPUT,
            &[others, &["-j", "RETURN"]].concat(),
        );
    }
    b.append(
        To::Both,
        "nat",
        ISTIO_OUTPUT,
        &["-m", "owner", owner, id, "-j", "RETURN"],
    );
}

#[cfg(test)]
#[path = "ruleset_tests.rs"]
mod tests;
