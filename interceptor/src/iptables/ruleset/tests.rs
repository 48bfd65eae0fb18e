//! The rule set against golden files, then the edge cases of its options.
//!
//! **istio's goldens** (`iptables/testdata/*.golden`, copied byte for byte from istio's
//! `tools/istio-iptables/pkg/capture/testdata/`; the folder's README gives the commit): one
//! test per case of istio's `TestIptables` (`run_test.go`), named after it, with that case's
//! settings as our flags and istio's `constructTestConfig` for everything the case leaves alone
//! ([`Case::istio`]). The whole record is compared, byte for byte: istio's harness framing,
//! then the restore input of each family. Where our text differs from istio's on purpose, the
//! test names that token and why ([`Case::ours`]); the substitution is made token by token and
//! must apply, and nothing else is loosened.
//!
//! All 27 of them are tested; none needs an option we refuse. Near them in istio's tree, and
//! not tested here:
//! - `tools/istio-iptables/pkg/builder/testdata/`: istio's rule-builder API fed synthetic rules
//!   in a table named `table`; they are no configuration, and [`render`] knows only our tables.
//! - `cni/pkg/plugin/testdata/`: istio-cni's mapping of pod annotations and proxy environment
//!   to these options (compared table by table); that mapping is the CNI plugin's concern.
//! - `cni/pkg/iptables/testdata/`, `cni/pkg/nftables/testdata/`,
//!   `tools/istio-nftables/pkg/capture/testdata/`: ambient mode's in-pod rules and the
//!   nftables backend, neither of which we implement.
//!
//! **Our goldens** (`iptables/testdata/own/`): written by this project for invocations istio's
//! harness has no case for; they are our claim, not istio's, and their tests say so
//! ([`Case::own`]).

use std::net::IpAddr;

use clap::Parser as _;

use super::*;
use crate::{
    cli::{Cli, Command},
    config::{DnsCapture, IdResolver, InterceptConfig, RawOptions},
};

/// The group database of these tests: no users (so `-u` defaults to 1337, as in istio's
/// harness), and the two group names istio's owner-group cases use.
struct TestIds;

/// `java` and `ftp` (istio's owner-group cases) as this test's system would number them.
const GROUPS: [(&str, u32); 2] = [("java", 5001), ("ftp", 5002)];

impl IdResolver for TestIds {
    fn uid_of(&self, _: &str) -> Option<u32> {
        None
    }
    fn gid_of(&self, group: &str) -> Option<u32> {
        GROUPS.iter().find(|(name, _)| *name == group).map(|g| g.1)
    }
}

/// The options of `interceptor init <flags>`, as the CLI reads them.
fn raw(flags: &[&str]) -> RawOptions {
    let cli = Cli::try_parse_from(["interceptor", "init"].iter().chain(flags)).unwrap();
    let Command::Init(init) = cli.command else {
        panic!("not init")
    };
    init.istio.raw()
}

fn config(raw: &RawOptions) -> InterceptConfig {
    raw.resolve(&TestIds, "istio-proxy").unwrap()
}

/// What the rule set depends on besides the options: the pod's name servers and whether IPv6
/// is enabled for it.
struct Facts {
    servers: Vec<IpAddr>,
    ipv6: bool,
}

fn facts(dns: &[&str], ipv6: bool) -> Facts {
    Facts {
        servers: dns.iter().map(|s| s.parse().unwrap()).collect(),
        ipv6,
    }
}

/// `build`, with DNS capture decided from the name servers as both backends decide it.
fn build_for(cfg: &InterceptConfig, facts: &Facts) -> RuleSet {
    let (dns, _) = DnsCapture::resolve(cfg, &facts.servers);
    build(cfg, &dns, facts.ipv6)
}

fn dry_run(flags: &[&str], facts: &Facts) -> String {
    build_for(&config(&raw(flags)), facts).dry_run()
}

/// What istio's harness (`DependenciesStub`) records for a run: the two save commands of
/// `VerifyIptablesState`, each family's restore input, then the final save of each family.
fn harness_record(set: &RuleSet) -> String {
    let mut record = String::from("iptables-save\nip6tables-save\n");
    record.push_str(&set.dry_run());
    record.push_str("iptables-save\n");
    if set.ipv6 {
        record.push_str("ip6tables-save\n");
    }
    record
}

#[track_caller]
fn assert_text(actual: &str, expected: &str) {
    assert_text_with(actual, expected, "");
}

/// `note`: what the reader of a failure should also know (the named token differences).
#[track_caller]
fn assert_text_with(actual: &str, expected: &str, note: &str) {
    if actual != expected {
        let line = actual
            .lines()
            .zip(expected.lines())
            .position(|(a, e)| a != e)
            .unwrap_or_else(|| actual.lines().count().min(expected.lines().count()));
        panic!(
            "rule set differs from line {}{note}\n--- expected\n{expected}--- actual\n{actual}",
            line + 1
        );
    }
}

/// A token istio writes that we write differently on purpose.
#[derive(Debug)]
struct Differs {
    istio: &'static str,
    ours: &'static str,
    why: &'static str,
}

/// One golden file and the run that must reproduce it.
struct Case {
    name: &'static str,
    golden: &'static str,
    options: RawOptions,
    /// istio's harness: `constructTestConfig` under the case's own settings.
    istio_harness: bool,
    /// `cfg.DNSServersV4` and `cfg.DNSServersV6` (what resolv.conf would give us).
    dns: Vec<IpAddr>,
    /// `cfg.EnableIPv6`.
    ipv6: bool,
    differs: Vec<Differs>,
}

/// An istio golden: `istio_case!("ip-range", [flags...])`.
macro_rules! istio_case {
    ($name:literal, [$($flag:expr),* $(,)?]) => {
        Case::istio($name, include_str!(concat!("../testdata/", $name, ".golden")), &[$($flag),*])
    };
}

/// One of ours: `own_case!("seed", [flags...])`.
macro_rules! own_case {
    ($name:literal, [$($flag:expr),* $(,)?]) => {
        Case::own($name, include_str!(concat!("../testdata/own/", $name, ".golden")), &[$($flag),*])
    };
}

impl Case {
    /// A case of istio's `TestIptables`: `flags` are what its `config` function sets, as our
    /// flags; the env-only settings are set with the methods below.
    fn istio(name: &'static str, golden: &'static str, flags: &[&str]) -> Self {
        Case {
            istio_harness: true,
            ..Self::own(name, golden, flags)
        }
    }

    /// A golden this project wrote: `interceptor init <flags>` with our defaults.
    fn own(name: &'static str, golden: &'static str, flags: &[&str]) -> Self {
        Case {
            name,
            golden,
            options: raw(flags),
            istio_harness: false,
            dns: Vec::new(),
            ipv6: false,
            differs: Vec::new(),
        }
    }

    /// The pod's name servers.
    fn dns(mut self, servers: &[&str]) -> Self {
        self.dns = servers.iter().map(|s| s.parse().unwrap()).collect();
        self
    }

    /// `cfg.EnableIPv6 = true`.
    fn ipv6(mut self) -> Self {
        self.ipv6 = true;
        self
    }

    /// `cfg.OwnerGroupsInclude` (`ISTIO_OUTBOUND_OWNER_GROUPS`).
    fn owner_groups(mut self, groups: &str) -> Self {
        self.options.owner_groups_include = Some(groups.into());
        self
    }

    /// `cfg.OwnerGroupsExclude` (`ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE`).
    fn owner_groups_exclude(mut self, groups: &str) -> Self {
        self.options.owner_groups_exclude = Some(groups.into());
        self
    }

    /// `cfg.HostIPv4LoopbackCidr` (`ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`).
    fn ipv4_loopback_cidr(mut self, cidr: &str) -> Self {
        self.options.ipv4_loopback_cidr = Some(cidr.into());
        self
    }

    /// Where istio writes the token `istio`, we write `ours`, because `why`.
    fn ours(mut self, istio: &'static str, ours: &'static str, why: &'static str) -> Self {
        self.differs.push(Differs { istio, ours, why });
        self
    }

    /// istio's `constructTestConfig`: the settings the case does not make itself.
    fn harness_options(&self) -> RawOptions {
        let mut o = self.options.clone();
        for (field, value) in [
            (&mut o.envoy_port, "15001"),
            (&mut o.inbound_capture_port, "15006"),
            (&mut o.inbound_tunnel_port, "15008"),
            (&mut o.proxy_uid, "1337"),
            (&mut o.proxy_gid, "1337"),
            (&mut o.tproxy_mark, "1337"),
            (&mut o.tproxy_route_table, "133"),
            (&mut o.owner_groups_include, "*"),
            (&mut o.ipv4_loopback_cidr, "127.0.0.1/32"),
        ] {
            field.get_or_insert_with(|| value.to_string());
        }
        o
    }

    /// The golden with our spelling of each named token, every substitution applied at least
    /// once.
    fn expected(&self) -> String {
        let mut text = String::with_capacity(self.golden.len());
        let mut applied = vec![0; self.differs.len()];
        for line in self.golden.lines() {
            let tokens: Vec<&str> = line
                .split(' ')
                .map(
                    |token| match self.differs.iter().position(|d| d.istio == token) {
                        Some(i) => {
                            applied[i] += 1;
                            self.differs[i].ours
                        }
                        None => token,
                    },
                )
                .collect();
            text.push_str(&tokens.join(" "));
            text.push('\n');
        }
        for (d, n) in self.differs.iter().zip(applied) {
            assert!(n > 0, "{}: {d:?} matches no token of the golden", self.name);
        }
        text
    }

    #[track_caller]
    fn check(self) {
        let options = if self.istio_harness {
            self.harness_options()
        } else {
            self.options.clone()
        };
        let set = build_for(
            &config(&options),
            &Facts {
                servers: self.dns.clone(),
                ipv6: self.ipv6,
            },
        );
        assert_eq!(set.ipv6, self.ipv6);
        let note: String = self
            .differs
            .iter()
            .map(|d| {
                format!(
                    "\n(expected has {:?} for istio's {:?}: {})",
                    d.ours, d.istio, d.why
                )
            })
            .collect();
        assert_text_with(&harness_record(&set), &self.expected(), &note);
    }
}

const NUMERIC_GROUPS: &str = "we resolve group names when the options are read and write \
                              numeric ids, so the rules do not depend on the image's group \
                              database when iptables reads them";

// istio's goldens, in the order of run_test.go's getCommonTestCases.

#[test]
fn ipv6_empty_inbound_ports() {
    istio_case!("ipv6-empty-inbound-ports", ["-b", ""])
        .ipv6()
        .check();
}

#[test]
fn ip_range() {
    istio_case!(
        "ip-range",
        [
            "-x",
            "1.1.0.0/16",
            "-i",
            "9.9.0.0/16",
            "--redirect-dns",
            "-g",
            "1,2",
            "-u",
            "3,4"
        ]
    )
    .dns(&["127.0.0.53"])
    .check();
}

#[test]
fn tproxy() {
    istio_case!(
        "tproxy",
        [
            "-m",
            "TPROXY",
            "-b",
            "*",
            "-x",
            "1.1.0.0/16",
            "-i",
            "9.9.0.0/16",
            "--redirect-dns",
            "-g",
            "1337",
            "-u",
            "1337",
            "-c",
            "not-istio-nic"
        ]
    )
    .dns(&["127.0.0.53"])
    .ipv6()
    .check();
}

#[test]
fn ipv6_inbound_ports() {
    istio_case!("ipv6-inbound-ports", ["-b", "4000,5000"])
        .ipv6()
        .check();
}

#[test]
fn ipv6_virt_interfaces() {
    istio_case!(
        "ipv6-virt-interfaces",
        ["-b", "4000,5000", "-k", "eth0,eth1"]
    )
    .ipv6()
    .check();
}

#[test]
fn ipv6_ipnets() {
    // -d is ignored without -b '*'; -k inserts at the head of PREROUTING.
    istio_case!(
        "ipv6-ipnets",
        [
            "-b",
            "4000,5000",
            "-d",
            "6000,7000,",
            "-k",
            "eth0,eth1",
            "-x",
            "2001:db8::/32",
            "-i",
            "2001:db8::/32"
        ]
    )
    .ipv6()
    .check();
}

#[test]
fn ipv6_uid_gid() {
    istio_case!(
        "ipv6-uid-gid",
        [
            "-b",
            "4000,5000",
            "-d",
            "6000,7000",
            "-k",
            "eth0,eth1",
            "-g",
            "1,2",
            "-u",
            "3,4",
            "-x",
            "2001:db8::/32",
            "-i",
            "2001:db8::/32"
        ]
    )
    .ipv6()
    .check();
}

#[test]
fn ipv6_outbound_ports() {
    istio_case!("ipv6-outbound-ports", ["-b", "", "-q", "32000,31000"])
        .ipv6()
        .check();
}

#[test]
fn empty() {
    istio_case!("empty", []).check();
}

#[test]
fn kube_virt_interfaces() {
    istio_case!("kube-virt-interfaces", ["-k", "eth1,eth2", "-i", "*"]).check();
}

#[test]
fn ipnets() {
    istio_case!("ipnets", ["-i", "10.0.0.0/8"]).check();
}

#[test]
fn ipnets_with_kube_virt_interfaces() {
    istio_case!(
        "ipnets-with-kube-virt-interfaces",
        ["-k", "eth1,eth2", "-i", "10.0.0.0/8"]
    )
    .check();
}

#[test]
fn inbound_ports_include() {
    istio_case!("inbound-ports-include", ["-b", "32000,31000"]).check();
}

#[test]
fn inbound_ports_wildcard() {
    istio_case!("inbound-ports-wildcard", ["-b", "*"]).check();
}

#[test]
fn inbound_ports_tproxy() {
    istio_case!(
        "inbound-ports-tproxy",
        ["-b", "32000,31000", "-m", "TPROXY"]
    )
    .check();
}

#[test]
fn inbound_ports_wildcard_tproxy() {
    istio_case!("inbound-ports-wildcard-tproxy", ["-b", "*", "-m", "TPROXY"]).check();
}

#[test]
fn dns_uid_gid() {
    istio_case!("dns-uid-gid", ["--redirect-dns", "-g", "1,2", "-u", "3,4"])
        .dns(&["127.0.0.53", "::127.0.0.53"])
        .ipv6()
        .ours(
            "::127.0.0.53/128",
            "::7f00:35/128",
            "we print the name server as an address, in its canonical form; istio echoes \
             resolv.conf's text (ip6tables-restore reads both as the same address)",
        )
        .check();
}

#[test]
fn ipv6_dns_uid_gid() {
    // --redirect-dns with no name server and no --capture-all-dns: DNS capture is off.
    istio_case!(
        "ipv6-dns-uid-gid",
        ["--redirect-dns", "-g", "1,2", "-u", "3,4"]
    )
    .ipv6()
    .check();
}

#[test]
fn outbound_owner_groups() {
    istio_case!("outbound-owner-groups", [])
        .owner_groups("java,202")
        .ours("java", "5001", NUMERIC_GROUPS)
        .check();
}

#[test]
fn outbound_owner_groups_exclude() {
    istio_case!("outbound-owner-groups-exclude", [])
        .owner_groups_exclude("888,ftp")
        .ours("ftp", "5002", NUMERIC_GROUPS)
        .check();
}

#[test]
fn ipv6_dns_outbound_owner_groups() {
    istio_case!("ipv6-dns-outbound-owner-groups", ["--redirect-dns"])
        .ipv6()
        .owner_groups("java,202")
        .ours("java", "5001", NUMERIC_GROUPS)
        .check();
}

#[test]
fn ipv6_dns_outbound_owner_groups_exclude() {
    istio_case!("ipv6-dns-outbound-owner-groups-exclude", ["--redirect-dns"])
        .ipv6()
        .owner_groups_exclude("888,ftp")
        .ours("ftp", "5002", NUMERIC_GROUPS)
        .check();
}

#[test]
fn outbound_ports_include() {
    istio_case!("outbound-ports-include", ["-q", "32000,31000"]).check();
}

#[test]
fn loopback_outbound_iprange() {
    // A loopback range in -i (istio's HasLoopBackIP) drops the "app over lo" RETURN rules.
    istio_case!(
        "loopback-outbound-iprange",
        [
            "-i",
            "127.1.2.3/32",
            "--redirect-dns",
            "-g",
            "1,2",
            "-u",
            "3,4"
        ]
    )
    .dns(&["127.0.0.53"])
    .check();
}

#[test]
fn basic_exclude_nic() {
    istio_case!("basic-exclude-nic", ["-c", "not-istio-nic"]).check();
}

#[test]
fn drop_invalid() {
    istio_case!("drop-invalid", ["--drop-invalid"]).check();
}

#[test]
fn host_ipv4_loopback_cidr() {
    istio_case!("host-ipv4-loopback-cidr", [])
        .ipv4_loopback_cidr("127.0.0.1/8")
        .check();
}

#[test]
fn istio_harness_defaults_are_ours() {
    // constructTestConfig spells out istio-iptables' defaults; ours must be the same, or the
    // goldens above would pass only because the harness options hide a difference.
    let harness = istio_case!("empty", []).harness_options();
    assert_eq!(config(&harness), config(&raw(&[])));
}

// Our goldens.

#[test]
fn own_seed_invocation() {
    // Ours: the seed document's flags (trailing comma included) on today's rules.
    own_case!(
        "seed",
        [
            "-p", "15001", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "9080,",
            "-d", ""
        ]
    )
    .check();
    // The trailing comma gives exactly one inbound port rule.
    let out = dry_run(&["-b", "9080,"], &facts(&[], false));
    assert_eq!(out.matches("--dport 9080").count(), 1, "{out}");
}

#[test]
fn own_default_injection() {
    // Ours: what istio's sidecar injector passes today.
    own_case!(
        "default-injection",
        [
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "*",
            "-x",
            "",
            "-b",
            "*",
            "-d",
            "15090,15021,15020"
        ]
    )
    .check();
}

#[test]
fn own_include_all_with_excludes_ports_and_interface() {
    // Ours: every outbound exclusion at once, with an inbound port and an excluded interface.
    own_case!(
        "include-all-excludes",
        [
            "-i",
            "*",
            "-x",
            "10.96.0.0/12,192.168.0.0/16",
            "-o",
            "3306,6379",
            "-q",
            "443",
            "-b",
            "9080,",
            "-c",
            "eth9"
        ]
    )
    .check();
}

#[test]
fn own_capture_all_dns_dual_stack() {
    // Ours: --capture-all-dns on a dual-stack pod (istio's harness has no capture-all case).
    own_case!(
        "capture-all-dns-dual-stack",
        ["-i", "*", "-b", "*", "--redirect-dns", "--capture-all-dns"]
    )
    .ipv6()
    .check();
}

// The edge cases of the options.

#[test]
fn local_exclude_ports_only_apply_with_wildcard_inbound() {
    let out = dry_run(&["-b", "9080", "-d", "9081"], &facts(&[], false));
    assert!(!out.contains("9081"), "{out}");
    let out = dry_run(&["-b", "*", "-d", "9081"], &facts(&[], false));
    assert!(
        out.contains("-A ISTIO_INBOUND -p tcp --dport 9081 -j RETURN\n-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT\n"),
        "{out}"
    );
    // No -b at all: no PREROUTING jump, but the chain still exists with the tunnel rule.
    let out = dry_run(&["-d", "9081"], &facts(&[], false));
    assert!(!out.contains("PREROUTING"), "{out}");
    assert!(out.contains("-N ISTIO_INBOUND\n"), "{out}");
}

#[test]
fn ipv6_ranges_are_dropped_silently_without_ipv6() {
    let flags = [
        "-i",
        "10.0.0.0/8,fd00::/8",
        "-x",
        "2001:db8::/32,10.1.0.0/16",
    ];
    let set = build_for(&config(&raw(&flags)), &facts(&[], false));
    let out = set.dry_run();
    assert!(set.v6.is_empty());
    assert_eq!(out.matches("* nat").count(), 1, "one family: {out}");
    assert!(!out.contains("fd00") && !out.contains("2001:db8"), "{out}");
    assert!(
        out.ends_with(
            "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\n-A ISTIO_OUTPUT -d 10.1.0.0/16 -j RETURN\n\
             -A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT\nCOMMIT\n"
        ),
        "{out}"
    );
    // With IPv6 each family gets its own ranges.
    let set = build_for(&config(&raw(&flags)), &facts(&[], true));
    let v6 = set.restore_input(Family::V6);
    assert!(
        v6.contains("-A ISTIO_OUTPUT -d 2001:db8::/32 -j RETURN\n"),
        "{v6}"
    );
    assert!(
        v6.contains("-A ISTIO_OUTPUT -d fd00::/8 -j ISTIO_REDIRECT\n"),
        "{v6}"
    );
    assert!(!v6.contains("10.0.0.0/8"), "{v6}");
}

#[test]
fn an_ipv6_loopback_range_changes_the_ipv4_rules_too() {
    // HasLoopBackIP of either family removes the "app over lo stays local" rules in both.
    let without = dry_run(&["-i", "10.0.0.0/8"], &facts(&[], false));
    assert!(without.contains("-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN\n"));
    let with = dry_run(&["-i", "10.0.0.0/8,::1/128"], &facts(&[], false));
    assert!(!with.contains("! --uid-owner"), "{with}");
    assert!(!with.contains("! --gid-owner"), "{with}");
    assert!(!with.contains("::1"), "IPv6 disabled: {with}");
}

#[test]
fn redirect_dns_without_servers_is_disabled_with_a_warning() {
    let cfg = config(&raw(&["--redirect-dns"]));
    let (dns, warning) = DnsCapture::resolve(&cfg, &[]);
    assert_eq!(dns, DnsCapture::Off);
    assert!(warning.is_some_and(|w| w.contains("DNS capture is off")));
    let set = build(&cfg, &dns, false);
    // As istio's empty.golden: no DNS rule at all.
    assert_text(
        &harness_record(&set),
        include_str!("../testdata/empty.golden"),
    );
    // An IPv6-only resolv.conf on an IPv4-only pod keeps DNS on: raw OUTPUT jump and the v4
    // nat rules for localhost-style multiport, but no v4 server rules.
    let set = build_for(
        &config(&raw(&["--redirect-dns"])),
        &facts(&["fd00::a"], false),
    );
    let out = set.dry_run();
    assert!(
        out.contains("* raw\n-N ISTIO_OUTPUT_DNS\n-A OUTPUT -j ISTIO_OUTPUT_DNS\n"),
        "{out}"
    );
    assert!(
        !out.contains("-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS"),
        "{out}"
    );
    assert!(!out.contains("fd00"), "{out}");
}

#[test]
fn dns_servers_of_both_families() {
    let set = build_for(
        &config(&raw(&["--redirect-dns"])),
        &facts(&["10.96.0.10", "fd00::a"], true),
    );
    let v4 = set.restore_input(Family::V4);
    let v6 = set.restore_input(Family::V6);
    assert!(v4.contains(
        "-A ISTIO_OUTPUT_DNS -p tcp --dport 53 -d 10.96.0.10/32 -j REDIRECT --to-ports 15053\n"
    ));
    assert!(v4.contains(
        "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d 10.96.0.10/32 -j REDIRECT --to-port 15053\n"
    ));
    assert!(v4.contains("-A ISTIO_INBOUND -p udp --sport 53 -s 10.96.0.10/32 -j CT --zone 1\n"));
    assert!(!v4.contains("fd00"));
    assert!(v6.contains(
        "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d fd00::a/128 -j REDIRECT --to-port 15053\n"
    ));
    assert!(v6.contains("-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d fd00::a/128 -j CT --zone 2\n"));
    assert!(!v6.contains("10.96.0.10"));
}

#[test]
fn ipv4_loopback_cidr_replaces_localhost_everywhere() {
    let mut r = raw(&["-i", "*"]);
    r.ipv4_loopback_cidr = Some("127.0.0.1/8".into());
    let out = build_for(&config(&r), &facts(&[], false)).dry_run();
    assert!(!out.contains("127.0.0.1/32"), "{out}");
    assert_eq!(out.matches("127.0.0.1/8").count(), 3, "{out}");
    assert!(out.contains("-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN\n"));
}

#[test]
fn owner_groups() {
    let with = |include: Option<&str>, exclude: Option<&str>| {
        let mut r = raw(&[]);
        r.owner_groups_include = include.map(str::to_string);
        r.owner_groups_exclude = exclude.map(str::to_string);
        build_for(&config(&r), &facts(&[], false)).dry_run()
    };
    let gid_rule = "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN\n";
    // Default (`*`, nothing excluded): no rule of its own.
    let default = with(None, None);
    assert_eq!(default.matches("--gid-owner").count(), 3);
    let out = with(Some("*"), Some("5,6"));
    assert!(
        out.contains(&format!(
            "{gid_rule}-A ISTIO_OUTPUT -m owner --gid-owner 5 -j RETURN\n\
             -A ISTIO_OUTPUT -m owner --gid-owner 6 -j RETURN\n-A ISTIO_OUTPUT -d 127.0.0.1/32"
        )),
        "{out}"
    );
    let out = with(Some("5,6"), Some("7"));
    assert!(
        out.contains(
            "-A ISTIO_OUTPUT -m owner ! --gid-owner 5 -m owner ! --gid-owner 6 -j RETURN\n"
        ),
        "{out}"
    );
    assert!(
        !out.contains("--gid-owner 7"),
        "exclude only applies with *: {out}"
    );
    // Set but empty: nothing below it is captured.
    let out = with(Some(""), None);
    assert!(
        out.contains(&format!("{gid_rule}-A ISTIO_OUTPUT -j RETURN\n")),
        "{out}"
    );
}

#[test]
fn drop_invalid_comes_first_in_mangle() {
    let out = dry_run(&["--drop-invalid"], &facts(&[], false));
    assert!(
        out.starts_with(
            "* mangle\n-N ISTIO_DROP\n-A PREROUTING -m conntrack --ctstate INVALID -j ISTIO_DROP\n\
             -A ISTIO_DROP -j DROP\nCOMMIT\n* nat\n"
        ),
        "{out}"
    );
}

#[test]
fn tproxy_moves_inbound_to_mangle() {
    let flags = ["-m", "TPROXY", "-b", "9080", "-c", "eth9", "-u", "1337"];
    let set = build_for(&config(&raw(&flags)), &facts(&[], true));
    let v4 = set.restore_input(Family::V4);
    let expected_mangle = "* mangle\n-N ISTIO_DIVERT\n-N ISTIO_TPROXY\n-N ISTIO_INBOUND\n\
        -A PREROUTING -i eth9 -j RETURN\n\
        -A OUTPUT -o eth9 -j RETURN\n\
        -A ISTIO_DIVERT -j MARK --set-mark 1337\n\
        -A ISTIO_DIVERT -j ACCEPT\n\
        -A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --tproxy-mark 1337/0xffffffff --on-port 15006\n\
        -A PREROUTING -p tcp -j ISTIO_INBOUND\n\
        -A ISTIO_INBOUND -p tcp --dport 9080 -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT\n\
        -A ISTIO_INBOUND -p tcp --dport 9080 -j ISTIO_TPROXY\n\
        -A PREROUTING -p tcp -m mark --mark 1337 -j CONNMARK --save-mark\n\
        -A OUTPUT -p tcp -o lo -m mark --mark 1337 -j RETURN\n\
        -A OUTPUT ! -d 127.0.0.1/32 -p tcp -o lo -m owner --uid-owner 1337 -j MARK --set-mark 1338\n\
        -A OUTPUT ! -d 127.0.0.1/32 -p tcp -o lo -m owner --gid-owner 1337 -j MARK --set-mark 1338\n\
        -A OUTPUT -p tcp -m connmark --mark 1337 -j CONNMARK --restore-mark\n\
        -I ISTIO_INBOUND 1 -p tcp -m mark --mark 1337 -j RETURN\n\
        -I ISTIO_INBOUND 2 -p tcp -s 127.0.0.6/32 -i lo -j RETURN\n\
        -I ISTIO_INBOUND 3 -p tcp -i lo -m mark ! --mark 1338 -j RETURN\n\
        COMMIT\n";
    assert!(v4.starts_with(expected_mangle), "{v4}");
    // Outbound stays in nat, as in REDIRECT mode; inbound is not in nat.
    assert!(v4.contains("* nat\n-N ISTIO_INBOUND\n"), "{v4}");
    assert!(!v4.contains("ISTIO_IN_REDIRECT\n-A PREROUTING"), "{v4}");
    let v6 = set.restore_input(Family::V6);
    assert!(
        v6.contains("-A ISTIO_TPROXY ! -d ::1/128 -p tcp -j TPROXY"),
        "{v6}"
    );
    assert!(
        v6.contains("-I ISTIO_INBOUND 2 -p tcp -s ::6/128 -i lo -j RETURN\n"),
        "{v6}"
    );
}

#[test]
fn restore_input_is_one_block_per_table_in_alphabetical_order() {
    let flags = [
        "-i",
        "*",
        "--redirect-dns",
        "--capture-all-dns",
        "--drop-invalid",
    ];
    let out = dry_run(&flags, &facts(&[], false));
    let tables: Vec<&str> = out.lines().filter(|l| l.starts_with("* ")).collect();
    assert_eq!(tables, ["* mangle", "* nat", "* raw"]);
    assert_eq!(out.matches("COMMIT\n").count(), 3);
}
