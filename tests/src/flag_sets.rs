//! The differential test's flag sets: istio-iptables invocations, each with the addresses of
//! the test topology's plan ([`crate::Topology`]). The differential test runs each in three pods;
//! `interceptor`'s unit tests hold `explain`'s two ways of answering to each other over them.

use crate::SEED_FLAGS;

/// The flag sets. In the address plan, 10.200.0.1 and fd00:200::1 are the server (and the
/// pod's name servers), 10.200.1.1, 10.200.2.1, fd00:200:1::1 and fd00:200:2::1 are further
/// server addresses, 10.200.0.2 and fd00:200::2 are the pod, and 10.200.101.1 is the server
/// reached through the pod's second interface, eth1 (the pod's address there: 10.200.101.2).
pub const FLAG_SETS: [&[&str]; 19] = [
    // The seed's invocation (no --dual-stack: IPv6 is left alone by both), inbound `-b 9080,`.
    &SEED_FLAGS,
    // Include everything but a range of each family; current istio defaults for the rest.
    &[
        "--dual-stack",
        "-i",
        "*",
        "-x",
        "10.200.1.0/24,fd00:200:1::/64",
    ],
    // An explicit include list, one address inside an included range excluded.
    &[
        "--dual-stack",
        "-i",
        "10.200.0.0/24,10.200.2.0/24,fd00:200::/64,fd00:200:2::/64",
        "-x",
        "10.200.0.1/32,fd00:200::1/128",
    ],
    // -q adds ports whatever the destination; -x still wins over it.
    &[
        "--dual-stack",
        "-i",
        "fd00:200:2::/64,10.200.2.0/24",
        "-q",
        "8080",
        "-x",
        "10.200.1.1/32,fd00:200:1::1/128",
    ],
    // Only -q ports.
    &["--dual-stack", "-i", "", "-q", "3306,53"],
    // -o ports never go to the sidecar, not even the proxy's.
    &["--dual-stack", "-i", "*", "-o", "3306,15008"],
    // Several proxy uids: only the first one decides over lo.
    &["--dual-stack", "-u", "1337,2000", "-g", "1337", "-i", "*"],
    // Several proxy gids.
    &[
        "--dual-stack",
        "-u",
        "1337",
        "-g",
        "1337,3000",
        "-i",
        "*",
        "-x",
        "10.200.2.0/24,fd00:200:2::/64",
    ],
    // A loopback range in -i: the "application over lo goes direct" rules are left out.
    &["--dual-stack", "-i", "127.0.0.0/8,10.200.2.0/24"],
    // The same with an IPv6 loopback range (it changes the IPv4 table too).
    &["--dual-stack", "-i", "::1/128,fd00:200:2::/64"],
    // DNS capture of the pod's name servers.
    &[
        "--dual-stack",
        "--redirect-dns",
        "-i",
        "*",
        "-x",
        "10.200.1.0/24,fd00:200:1::/64",
    ],
    // DNS capture of every server, with an include list.
    &[
        "--dual-stack",
        "--redirect-dns",
        "--capture-all-dns",
        "-i",
        "10.200.2.0/24,fd00:200:2::/64",
    ],
    // DNS capture with several gids and non-default ports; every inbound port captured but the
    // tunnel port, here 3306 (so 15008 is captured).
    &[
        "--dual-stack",
        "--redirect-dns",
        "-u",
        "1337",
        "-g",
        "1337,3000",
        "-i",
        "*",
        "-z",
        "15007",
        "-e",
        "3306",
        "-b",
        "*",
    ],
    // An excluded interface: connections routed through it, or arriving on it, are never
    // captured.
    &[
        "--dual-stack",
        "-i",
        "*",
        "-c",
        "eth1",
        "-q",
        "8080",
        "-b",
        "*",
    ],
    // Owner groups (environment only): group 3000 is spared.
    &[
        "--dual-stack",
        "ENV",
        "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE=3000",
        "-i",
        "*",
    ],
    // Only group 1000 captured, and a wider IPv4 localhost.
    &[
        "ENV",
        "ISTIO_OUTBOUND_OWNER_GROUPS=1000",
        "ENV",
        "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR=127.0.0.1/8",
        "--dual-stack",
        "-i",
        "127.0.0.0/8,10.200.2.0/24,fd00:200:2::/64",
    ],
    // Every inbound port captured but the -d ones (and the tunnel port).
    &[
        "--dual-stack",
        "-i",
        "*",
        "-x",
        "10.200.1.0/24,fd00:200:1::/64",
        "-b",
        "*",
        "-d",
        "3306,15020",
    ],
    // Non-default outbound and inbound capture ports, a proxy gid that is not the proxy uid's
    // group, and an explicit inbound list that names the tunnel port (never captured).
    &[
        "--dual-stack",
        "-p",
        "15002",
        "-z",
        "15007",
        "-u",
        "1337",
        "-g",
        "3000",
        "-i",
        "10.200.0.0/16,fd00:200::/48",
        "-b",
        "9080,8080,15008",
    ],
    // Inbound capture to a port nothing listens on yet (the sidecar has not started): refused,
    // inbound (REDIRECT, and the eBPF backend failing closed) and from the proxy to its pod.
    &[
        "--dual-stack",
        "-i",
        "*",
        "-b",
        "*",
        "-z",
        "15009",
        "--inbound-fail",
        "closed",
    ],
];

/// Splits a flag set into flags and `ENV NAME=VALUE` pairs.
pub fn flags_and_env<'a>(set: &[&'a str]) -> (Vec<&'a str>, Vec<(&'a str, &'a str)>) {
    let (mut flags, mut env) = (Vec::new(), Vec::new());
    let mut it = set.iter();
    while let Some(&f) = it.next() {
        if f == "ENV" {
            let kv = it.next().expect("ENV NAME=VALUE");
            env.push(kv.split_once('=').expect("NAME=VALUE"));
        } else {
            flags.push(f);
        }
    }
    (flags, env)
}
