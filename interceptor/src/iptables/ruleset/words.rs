//! The rules that decided a connection, in istio-iptables' words: what `explain` and `trace`
//! print for a decision of the eBPF programs. Each rule is written by the same step of
//! [`build`](super::build) that writes it into the rule set (run on the configuration narrowed
//! to the one value that matched: the `-x` range, the `-o` port...), so its text is what
//! `--backend iptables --dry-run` prints, and its position is looked up in the whole set.

use std::{borrow::Cow, net::IpAddr};

use interceptor_ebpf::{
    decision::{OutboundRule, Owner as RuleOwner, ProxyId},
    inbound::InboundRule,
};
use serde::Serialize;

use super::{
    Builder, Family, ISTIO_IN_REDIRECT, ISTIO_INBOUND, ISTIO_OUTPUT, ISTIO_OUTPUT_DNS,
    ISTIO_REDIRECT, Owner, Rule, RuleSet, build, dns, inbound, outbound, preamble,
};
use crate::config::{
    Cidr, DnsCapture as Dns, InboundPorts, InterceptConfig, OutboundInclude, OwnerGroups as Groups,
};

/// One rule of the set, as explanations show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NamedRule {
    pub table: String,
    pub chain: String,
    /// Its place in its chain (1 is the first), as `iptables -t nat -L CHAIN --line-numbers`
    /// numbers it.
    pub position: Option<usize>,
    /// The rule as `iptables-restore` takes it, without `-A CHAIN`.
    pub text: String,
    /// The option (or setting) that wrote it, as given on istio-iptables' command line.
    pub option: String,
}

impl std::fmt::Display for NamedRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} (from {})", self.chain, self.text, self.option)
    }
}

/// The rules that decided (the deciding rule first, then those of the chain it jumped to), and
/// what to add in words where no rule alone says it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Words {
    pub rules: Vec<NamedRule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What the rules test of a connection.
#[derive(Clone, Debug)]
pub struct Subject {
    pub family: Family,
    pub udp: bool,
    /// Outbound: the original destination; inbound: the local address.
    pub dst: IpAddr,
    pub dst_port: u16,
    /// Outbound: the `-c` interface its route leaves through; inbound: the one it arrived on.
    pub interface: Option<String>,
}

/// The pod's rule set and what it was built from.
pub struct Context<'a> {
    pub cfg: &'a InterceptConfig,
    pub dns: &'a Dns,
    pub ipv6: bool,
    set: Cow<'a, RuleSet>,
}

impl<'a> Context<'a> {
    /// The context of a configuration, its rule set built once here.
    pub fn new(cfg: &'a InterceptConfig, dns: &'a Dns, ipv6: bool) -> Self {
        Context {
            cfg,
            dns,
            ipv6,
            set: Cow::Owned(build(cfg, dns, ipv6)),
        }
    }

    /// The same with the set built already (`build(cfg, dns, ipv6)`).
    pub fn with_set(cfg: &'a InterceptConfig, dns: &'a Dns, ipv6: bool, set: &'a RuleSet) -> Self {
        Context {
            cfg,
            dns,
            ipv6,
            set: Cow::Borrowed(set),
        }
    }

    /// `rule` of `family`, named, with its position in the whole set.
    fn name(&self, family: Family, rule: &Rule, option: impl Into<String>) -> NamedRule {
        let position = self
            .set
            .rules(family)
            .iter()
            .filter(|r| r.table == rule.table && r.chain == rule.chain)
            .position(|r| r.params == rule.params)
            .map(|i| i + 1);
        NamedRule {
            table: rule.table.to_string(),
            chain: rule.chain.clone(),
            position,
            text: rule.params[2..].join(" "),
            option: option.into(),
        }
    }

    /// The rules one step writes for a configuration (and this pod's IPv6), of `family`.
    fn step(
        &self,
        family: Family,
        cfg: &InterceptConfig,
        write: impl FnOnce(&mut Builder, &InterceptConfig),
    ) -> Vec<Rule> {
        let mut b = Builder::new(self.ipv6);
        write(&mut b, cfg);
        b.finish().rules(family).to_vec()
    }

    /// The first rule of `rules` in `chain` satisfying `pick`, named.
    fn pick(
        &self,
        family: Family,
        rules: &[Rule],
        chain: &str,
        pick: impl Fn(&Rule) -> bool,
        option: impl Into<String>,
    ) -> Option<NamedRule> {
        rules
            .iter()
            .find(|r| r.chain == chain && pick(r))
            .map(|r| self.name(family, r, option))
    }

    /// `ISTIO_REDIRECT`'s REDIRECT to `-p`.
    fn to_proxy(&self, family: Family) -> Option<NamedRule> {
        let rules = self.step(family, self.cfg, preamble::capture_chains);
        let option = format!("-p {}", self.cfg.envoy_port);
        self.pick(family, &rules, ISTIO_REDIRECT, |_| true, option)
    }

    /// `ISTIO_IN_REDIRECT`'s REDIRECT to `-z`.
    fn to_capture(&self, family: Family) -> Option<NamedRule> {
        let rules = self.step(family, self.cfg, preamble::capture_chains);
        let option = format!("-z {}", self.cfg.inbound_capture_port);
        self.pick(family, &rules, ISTIO_IN_REDIRECT, |_| true, option)
    }
}

/// The first range of `list` of the subject's family that holds `addr`: the rule iptables
/// meets first.
fn first_holding(list: &[Cidr], addr: IpAddr) -> Option<Cidr> {
    list.iter().copied().find(|c| holds(c, addr))
}

/// Whether `cidr` holds `addr` (same family, host bits of the range ignored).
pub fn holds(cidr: &Cidr, addr: IpAddr) -> bool {
    let len = u32::from(cidr.prefix_len);
    match (cidr.network(), addr) {
        (IpAddr::V4(net), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(a) & mask == u32::from(net)
        }
        (IpAddr::V6(net), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(a) & mask == u128::from(net)
        }
        _ => false,
    }
}

fn has(rule: &Rule, token: &str) -> bool {
    rule.params.iter().any(|p| p == token)
}

/// `-u N` or `-g N`, as the option naming the id.
fn owner_option(cfg: &InterceptConfig, id: ProxyId) -> (Owner, u32, String) {
    let (owner, ids, flag) = match id.owner {
        RuleOwner::Uid => (Owner::Uid, &cfg.proxy_uids, "-u"),
        RuleOwner::Gid => (Owner::Gid, &cfg.proxy_gids, "-g"),
    };
    let value = ids.get(usize::from(id.index)).copied().unwrap_or(u32::MAX);
    (owner, value, format!("{flag} {value}"))
}

/// The words for an outbound decision.
pub fn outbound(ctx: &Context<'_>, rule: OutboundRule, s: &Subject) -> Words {
    use OutboundRule as R;
    let cfg = ctx.cfg;
    let family = s.family;
    let proto = if s.udp { "udp" } else { "tcp" };
    let mut rules = Vec::new();
    let mut note = None;
    match rule {
        R::Ipv6NotCaptured => {
            note = Some(
                "IPv6 is not captured in this pod: istio-iptables writes no ip6tables rules \
                 (its first address is IPv4, and --dual-stack is not set)"
                    .to_string(),
            )
        }
        R::ExcludedInterface => {
            let ifc = s.interface.clone().unwrap_or_default();
            let narrowed = InterceptConfig {
                exclude_interfaces: vec![ifc.clone()],
                ..cfg.clone()
            };
            let written = ctx.step(family, &narrowed, preamble::exclude_interfaces);
            rules.extend(ctx.pick(family, &written, "OUTPUT", |_| true, format!("-c {ifc}")));
            note = Some(format!("its route leaves through {ifc}"));
        }
        R::OutboundPortExclude => {
            let narrowed = InterceptConfig {
                outbound_ports_exclude: vec![s.dst_port],
                ..cfg.clone()
            };
            let written = ctx.step(family, &narrowed, outbound::ports_exclude);
            let option = format!("-o {}", s.dst_port);
            rules.extend(ctx.pick(family, &written, ISTIO_OUTPUT, |r| has(r, proto), option));
        }
        R::InboundPassthrough => {
            let written = ctx.step(family, cfg, |b, _| outbound::inbound_passthrough_return(b));
            let option = "Envoy's inbound passthrough source, always";
            rules.extend(ctx.pick(family, &written, ISTIO_OUTPUT, |_| true, option));
        }
        R::ProxyToOwnPod(id) | R::OthersOverLo(id) | R::ProxyOwner(id) => {
            let (owner, value, option) = owner_option(cfg, id);
            let redirect_dns = *ctx.dns != Dns::Off;
            let written = ctx.step(family, cfg, |b, c| {
                outbound::proxy_owner(b, c, owner, value, redirect_dns);
            });
            let pick = |r: &Rule| match rule {
                R::ProxyToOwnPod(_) => has(r, ISTIO_IN_REDIRECT),
                R::OthersOverLo(_) => has(r, "!") && has(r, "lo") && has(r, "RETURN"),
                _ => !has(r, "lo") && has(r, "RETURN"),
            };
            rules.extend(ctx.pick(family, &written, ISTIO_OUTPUT, pick, option));
            if matches!(rule, R::ProxyToOwnPod(_)) {
                rules.extend(ctx.to_capture(family));
            }
        }
        R::OwnerGroups => {
            let (written, option) = match &cfg.owner_groups {
                Groups::AllExcept(groups) => {
                    let spared: Vec<u32> = groups.clone();
                    (
                        ctx.step(family, cfg, outbound::owner_groups),
                        format!(
                            "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE={}",
                            join(spared.iter())
                        ),
                    )
                }
                Groups::Only(groups) => (
                    ctx.step(family, cfg, outbound::owner_groups),
                    format!("ISTIO_OUTBOUND_OWNER_GROUPS={}", join(groups.iter())),
                ),
            };
            rules.extend(ctx.pick(family, &written, ISTIO_OUTPUT, |_| true, option));
        }
        R::DnsCapture => {
            let written = ctx.step(family, cfg, |b, c| dns::setup_dns_redirect(b, c, ctx.dns));
            let jump = |r: &Rule| has(r, ISTIO_OUTPUT_DNS) && r.table == "nat";
            let option = match ctx.dns {
                Dns::All => "--redirect-dns --capture-all-dns".to_string(),
                _ => format!("--redirect-dns, name server {} (resolv.conf)", s.dst),
            };
            rules.extend(ctx.pick(family, &written, ISTIO_OUTPUT, jump, option.clone()));
            let server = format!("{}/{}", s.dst, if s.dst.is_ipv4() { 32 } else { 128 });
            let redirect =
                |r: &Rule| r.table == "nat" && has(r, proto) && (!has(r, "-d") || has(r, &server));
            rules.extend(ctx.pick(family, &written, ISTIO_OUTPUT_DNS, redirect, option));
        }
        R::Localhost => {
            let written = ctx.step(family, cfg, outbound::localhost_return);
            let option = match family {
                Family::V4 => format!(
                    "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR={}",
                    cfg.ipv4_loopback_cidr
                ),
                Family::V6 => "IPv6 localhost, always".to_string(),
            };
            rules.extend(ctx.pick(family, &written, ISTIO_OUTPUT, |_| true, option));
        }
        R::ExcludeCidr => {
            if let Some(cidr) = first_holding(&cfg.outbound_exclude, s.dst) {
                let narrowed = InterceptConfig {
                    outbound_exclude: vec![cidr],
                    ..cfg.clone()
                };
                let written = ctx.step(family, &narrowed, |b, c| {
                    outbound::ranges_exclude(b, c, family)
                });
                let option = format!("-x {cidr}");
                rules.extend(ctx.pick(family, &written, ISTIO_OUTPUT, |_| true, option));
            }
        }
        R::OutboundPortInclude => {
            let narrowed = InterceptConfig {
                outbound_ports_include: vec![s.dst_port],
                ..cfg.clone()
            };
            let written = ctx.step(family, &narrowed, outbound::ports_include);
            let option = format!("-q {}", s.dst_port);
            rules.extend(ctx.pick(family, &written, ISTIO_OUTPUT, |_| true, option));
            rules.extend(ctx.to_proxy(family));
        }
        R::IncludeAll | R::IncludeCidr | R::UdpNotRedirected => {
            rules.extend(include_rule(ctx, s));
            if rule == R::UdpNotRedirected {
                note = Some(if rules.is_empty() {
                    "no rule of ISTIO_OUTPUT matches: the chains end, and nat OUTPUT's policy \
                     (ACCEPT) lets it go as it is"
                        .to_string()
                } else {
                    "ISTIO_REDIRECT redirects TCP only: the chains end, and nat OUTPUT's \
                     policy (ACCEPT) lets this UDP go as it is"
                        .to_string()
                });
            } else {
                rules.extend(ctx.to_proxy(family));
            }
        }
        R::EndOfChain => {
            note = Some(format!(
                "no rule of ISTIO_OUTPUT matches (-i does not hold {}{}): the chains end, and \
                 nat OUTPUT's policy (ACCEPT) lets it go as it is",
                s.dst,
                if cfg.outbound_ports_include.is_empty() {
                    String::new()
                } else {
                    format!(", -q does not name port {}", s.dst_port)
                }
            ));
        }
    }
    Words { rules, note }
}

/// The `-i` rule that sends the subject to `ISTIO_REDIRECT`, if one does.
fn include_rule(ctx: &Context<'_>, s: &Subject) -> Option<NamedRule> {
    let family = s.family;
    let (narrowed, option) = match &ctx.cfg.outbound_include {
        OutboundInclude::All => (ctx.cfg.clone(), "-i '*'".to_string()),
        OutboundInclude::Cidrs(list) => {
            let cidr = first_holding(list, s.dst)?;
            let narrowed = InterceptConfig {
                outbound_include: OutboundInclude::Cidrs(vec![cidr]),
                ..ctx.cfg.clone()
            };
            (narrowed, format!("-i {cidr}"))
        }
    };
    let written = ctx.step(family, &narrowed, |b, c| {
        outbound::ranges_include(b, c, family)
    });
    ctx.pick(family, &written, ISTIO_OUTPUT, |_| true, option)
}

fn join<'a>(values: impl Iterator<Item = &'a u32>) -> String {
    values.map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// The words for an inbound decision.
pub fn inbound(ctx: &Context<'_>, rule: InboundRule, s: &Subject) -> Words {
    use InboundRule as I;
    let cfg = ctx.cfg;
    let family = s.family;
    let mut rules = Vec::new();
    let mut note = None;
    match rule {
        I::NotCaptured => {
            note = Some(match (&cfg.inbound_ports, family) {
                (InboundPorts::Ports(p), _) if p.is_empty() => {
                    "no inbound capture (-b is empty): nat PREROUTING has no jump to \
                     ISTIO_INBOUND"
                        .to_string()
                }
                _ => "IPv6 is not captured in this pod: istio-iptables writes no ip6tables \
                      rules"
                    .to_string(),
            })
        }
        I::MadeInPod => {
            note = Some(
                "made inside the pod (over lo, or from one of its own addresses): nat \
                 PREROUTING never sees it"
                    .to_string(),
            )
        }
        I::ExcludedInterface => {
            let ifc = s.interface.clone().unwrap_or_default();
            let narrowed = InterceptConfig {
                exclude_interfaces: vec![ifc.clone()],
                ..cfg.clone()
            };
            let written = ctx.step(family, &narrowed, preamble::exclude_interfaces);
            rules.extend(ctx.pick(
                family,
                &written,
                "PREROUTING",
                |_| true,
                format!("-c {ifc}"),
            ));
        }
        I::TunnelPort => {
            let written = ctx.step(family, cfg, preamble::capture_chains);
            let option = format!("-e {}", cfg.inbound_tunnel_port);
            rules.extend(ctx.pick(family, &written, ISTIO_INBOUND, |_| true, option));
        }
        I::CapturePort => {
            note = Some(format!(
                "addressed to the capture port itself (-z {}): it reaches the proxy's \
                 listener as it is",
                cfg.inbound_capture_port
            ))
        }
        I::ExcludedPort | I::AllPorts | I::ListedPort => {
            let narrowed = match rule {
                I::ExcludedPort => InterceptConfig {
                    inbound_ports_exclude: vec![s.dst_port],
                    ..cfg.clone()
                },
                I::ListedPort => InterceptConfig {
                    inbound_ports: InboundPorts::Ports(vec![s.dst_port]),
                    ..cfg.clone()
                },
                _ => InterceptConfig {
                    inbound_ports_exclude: Vec::new(),
                    ..cfg.clone()
                },
            };
            let written = ctx.step(family, &narrowed, inbound::inbound_ports);
            let (pick, option): (fn(&Rule) -> bool, String) = match rule {
                I::ExcludedPort => (|r| has(r, "RETURN"), format!("-d {}", s.dst_port)),
                I::ListedPort => (|r| has(r, ISTIO_IN_REDIRECT), format!("-b {}", s.dst_port)),
                _ => (|r| has(r, ISTIO_IN_REDIRECT), "-b '*'".to_string()),
            };
            rules.extend(ctx.pick(family, &written, ISTIO_INBOUND, pick, option));
            if rule != I::ExcludedPort {
                rules.extend(ctx.to_capture(family));
            }
        }
        I::NotListed => {
            note = Some(format!(
                "port {} is not in -b: no rule of ISTIO_INBOUND matches, and the chains end \
                 (ACCEPT)",
                s.dst_port
            ))
        }
    }
    Words { rules, note }
}
