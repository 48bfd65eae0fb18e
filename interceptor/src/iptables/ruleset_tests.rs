//! The rule set against istio-iptables' recorded outputs (testdata/*.golden: what its dry-run
//! harness records, i.e. `iptables-save`/`ip6tables-save` calls around the restore inputs; the
//! sections of the behaviour spec are named in each test), plus the edge cases of its options.

use std::net::IpAddr;

use clap::Parser as _;

use super::*;
use crate::{
    cli::{Cli, Command},
    config::{IdResolver, RawOptions},
    iptables::facts::PodFacts,
};

struct NoUsers;
impl IdResolver for NoUsers {
    fn uid_of(&self, _: &str) -> Option<u32> {
        None
    }
    fn gid_of(&self, _: &str) -> Option<u32> {
        None
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
    raw.resolve(&NoUsers, "istio-proxy").unwrap()
}

fn facts(dns: &[&str], ipv6: bool) -> PodFacts {
    let dns: Vec<IpAddr> = dns.iter().map(|s| s.parse().unwrap()).collect();
    PodFacts::new(&dns, ipv6)
}

fn dry_run(flags: &[&str], facts: &PodFacts) -> String {
    build(&config(&raw(flags)), facts).dry_run()
}

/// A golden file without the harness's save/check commands: the restore inputs.
fn golden(text: &str) -> String {
    text.lines()
        .filter(|l| *l != "iptables-save" && *l != "ip6tables-save")
        .map(|l| format!("{l}\n"))
        .collect()
}

#[track_caller]
fn assert_text(actual: &str, expected: &str) {
    if actual != expected {
        panic!("rule set differs\n--- expected\n{expected}--- actual\n{actual}");
    }
}

#[test]
fn empty_golden() {
    // Spec 3.1 (upstream empty.golden): `-u 1337`.
    assert_text(
        &dry_run(&["-u", "1337"], &facts(&[], false)),
        &golden(include_str!("testdata/empty.golden")),
    );
}

#[test]
fn seed_invocation() {
    // Spec 3.2: the seed document's flags, trailing comma included.
    let flags = [
        "-p", "15001", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "9080,", "-d", "",
    ];
    let out = dry_run(&flags, &facts(&[], false));
    assert_text(&out, &golden(include_str!("testdata/seed.golden")));
    // The trailing comma gives exactly one inbound port rule.
    assert_eq!(out.matches("-j ISTIO_IN_REDIRECT\n").count(), 3);
    assert_eq!(out.matches("--dport 9080").count(), 1);
}

#[test]
fn default_injection() {
    // Spec 3.3: what the injector passes today.
    let flags = [
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
        "15090,15021,15020",
    ];
    assert_text(
        &dry_run(&flags, &facts(&[], false)),
        &golden(include_str!("testdata/default_injection.golden")),
    );
}

#[test]
fn include_all_with_excludes_ports_and_interface() {
    // Spec 3.4.
    let flags = [
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
        "eth9",
    ];
    assert_text(
        &dry_run(&flags, &facts(&[], false)),
        &golden(include_str!("testdata/include_all_excludes.golden")),
    );
}

#[test]
fn outbound_ports_include() {
    // Spec 3.5 (upstream outbound-ports-include.golden).
    assert_text(
        &dry_run(&["-q", "32000,31000"], &facts(&[], false)),
        &golden(include_str!("testdata/outbound_ports_include.golden")),
    );
}

#[test]
fn ip_range_with_dns() {
    // Spec 3.6 (upstream ip-range.golden): resolv.conf names 127.0.0.53.
    let flags = [
        "-x",
        "1.1.0.0/16",
        "-i",
        "9.9.0.0/16",
        "--redirect-dns",
        "-g",
        "1,2",
        "-u",
        "3,4",
    ];
    assert_text(
        &dry_run(&flags, &facts(&["127.0.0.53"], false)),
        &golden(include_str!("testdata/ip_range.golden")),
    );
}

#[test]
fn loopback_in_outbound_ranges() {
    // Spec 3.7 (upstream loopback-outbound-iprange.golden): HasLoopBackIP.
    let flags = [
        "-i",
        "127.1.2.3/32",
        "--redirect-dns",
        "-g",
        "1,2",
        "-u",
        "3,4",
    ];
    assert_text(
        &dry_run(&flags, &facts(&["127.0.0.53"], false)),
        &golden(include_str!("testdata/loopback_outbound_iprange.golden")),
    );
}

#[test]
fn ipv6_ipnets() {
    // Spec 3.8 (upstream ipv6-ipnets.golden): -d ignored without -b '*', -k inserts.
    let flags = [
        "-b",
        "4000,5000",
        "-d",
        "6000,7000,",
        "-k",
        "eth0,eth1",
        "-x",
        "2001:db8::/32",
        "-i",
        "2001:db8::/32",
    ];
    assert_text(
        &dry_run(&flags, &facts(&[], true)),
        &golden(include_str!("testdata/ipv6_ipnets.golden")),
    );
}

#[test]
fn capture_all_dns_dual_stack() {
    // Spec 3.9.
    let flags = ["-i", "*", "-b", "*", "--redirect-dns", "--capture-all-dns"];
    assert_text(
        &dry_run(&flags, &facts(&[], true)),
        &golden(include_str!("testdata/capture_all_dns_dual_stack.golden")),
    );
}

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
    // Spec 4.5.
    let flags = [
        "-i",
        "10.0.0.0/8,fd00::/8",
        "-x",
        "2001:db8::/32,10.1.0.0/16",
    ];
    let set = build(&config(&raw(&flags)), &facts(&[], false));
    let out = set.dry_run();
    assert!(set.v6.is_empty() && set.warnings.is_empty());
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
    let set = build(&config(&raw(&flags)), &facts(&[], true));
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
    let set = build(&config(&raw(&["--redirect-dns"])), &facts(&[], false));
    assert_eq!(set.warnings.len(), 1);
    assert!(set.warnings[0].contains("DNS capture disabled"));
    assert_text(
        &set.dry_run(),
        &golden(include_str!("testdata/empty.golden")),
    );
    // An IPv6-only resolv.conf on an IPv4-only pod keeps DNS on: raw OUTPUT jump and the v4
    // nat rules for localhost-style multiport, but no v4 server rules.
    let set = build(
        &config(&raw(&["--redirect-dns"])),
        &facts(&["fd00::a"], false),
    );
    let out = set.dry_run();
    assert!(set.warnings.is_empty());
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
    let set = build(
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
    let out = build(&config(&r), &facts(&[], false)).dry_run();
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
        build(&config(&r), &facts(&[], false)).dry_run()
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
    let set = build(&config(&raw(&flags)), &facts(&[], true));
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
