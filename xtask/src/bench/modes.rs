//! The ways a client's connection reaches the server, and how each is set up.
//!
//! The sidecar, client and server are the same in every mode; only the interception differs.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Where the sidecar listens for redirected connections (`istio-iptables -p`).
pub const CAPTURE_PORT: u16 = 15001;
/// Sidecar listeners with a fixed upstream, which the client dials in `explicit` mode.
pub const EXPLICIT_HTTP_PORT: u16 = 15080;
pub const EXPLICIT_IPERF_PORT: u16 = 15201;
pub const HTTP_PORT: u16 = 80;
pub const IPERF_PORT: u16 = 5201;
/// The sidecar's inbound listener (`istio-iptables -z`), which `-b` captures to.
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// The application's port in the pod, which inbound clients dial.
pub const APP_PORT: u16 = 8080;
/// istio's default inbound capture: every port but the sidecar's own (`-b '*' -d ...`).
pub const INBOUND_FLAGS: [&str; 4] = ["-b", "*", "-d", "15090,15021,15020"];

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// No sidecar: the client talks to the server (the physical floor).
    Direct,
    /// The client dials the sidecar itself, which has a fixed upstream (the floor for any
    /// interception).
    Explicit,
    /// `interceptor init --backend iptables --iptables-mode legacy`: istio-style nat rules.
    IptablesLegacy,
    /// `interceptor init --backend iptables --iptables-mode nft`.
    IptablesNft,
    /// `interceptor init` (the eBPF programs).
    Ebpf,
    /// `interceptor init --accelerate`: the eBPF programs, and the pod-local hop between the
    /// client and the sidecar moved socket to socket (sockmap, `sk_msg`).
    EbpfAccel,
}

impl Mode {
    pub const ALL: [Mode; 6] = [
        Mode::Direct,
        Mode::Explicit,
        Mode::IptablesLegacy,
        Mode::IptablesNft,
        Mode::Ebpf,
        Mode::EbpfAccel,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Explicit => "explicit",
            Mode::IptablesLegacy => "iptables-legacy",
            Mode::IptablesNft => "iptables-nft",
            Mode::Ebpf => "ebpf",
            Mode::EbpfAccel => "ebpf-accel",
        }
    }

    /// A topology tag (at most 16 characters) naming the mode in every resource.
    pub fn tag(self) -> &'static str {
        match self {
            Mode::Direct => "bench-direct",
            Mode::Explicit => "bench-explicit",
            Mode::IptablesLegacy => "bench-ipt-legacy",
            Mode::IptablesNft => "bench-ipt-nft",
            Mode::Ebpf => "bench-ebpf",
            Mode::EbpfAccel => "bench-ebpf-accel",
        }
    }

    /// Whether `interceptor init` sets this mode up (and so takes excluded CIDRs).
    pub fn intercepts(self) -> bool {
        matches!(
            self,
            Mode::IptablesLegacy | Mode::IptablesNft | Mode::Ebpf | Mode::EbpfAccel
        )
    }

    /// Whether the eBPF backend sets this mode up.
    pub fn is_ebpf(self) -> bool {
        matches!(self, Mode::Ebpf | Mode::EbpfAccel)
    }

    pub fn has_sidecar(self) -> bool {
        self != Mode::Direct
    }

    /// What the client dials for HTTP: the server, or in `explicit` mode the sidecar.
    pub fn http_target(self, server: Ipv4Addr) -> SocketAddr {
        match self {
            Mode::Explicit => SocketAddr::from((Ipv4Addr::LOCALHOST, EXPLICIT_HTTP_PORT)),
            _ => SocketAddr::from((server, HTTP_PORT)),
        }
    }

    /// What an inbound client dials: the application's port in the pod, or in `explicit` mode
    /// the sidecar's inbound listener.
    pub fn inbound_target(self, pod: Ipv4Addr) -> SocketAddr {
        match self {
            Mode::Explicit => SocketAddr::from((pod, INBOUND_CAPTURE_PORT)),
            _ => SocketAddr::from((pod, APP_PORT)),
        }
    }

    pub fn iperf_target(self, server: Ipv4Addr) -> SocketAddr {
        match self {
            Mode::Explicit => SocketAddr::from((Ipv4Addr::LOCALHOST, EXPLICIT_IPERF_PORT)),
            _ => SocketAddr::from((server, IPERF_PORT)),
        }
    }

    /// The `interceptor` arguments that set the mode up for a pod, or `None` without
    /// interception. The istio-iptables flags are the same for both backends; `inbound`
    /// captures every inbound port as istio does by default, otherwise none.
    pub fn init_args(
        self,
        pod_cgroup: &Path,
        pod_netns: &Path,
        cidrs: &[String],
        inbound: bool,
    ) -> Option<Vec<String>> {
        let mut args: Vec<String> = vec!["init".into()];
        match self {
            Mode::Direct | Mode::Explicit => return None,
            Mode::Ebpf => args.extend(["--cgroup".into(), pod_cgroup.display().to_string()]),
            Mode::EbpfAccel => args.extend([
                "--cgroup".into(),
                pod_cgroup.display().to_string(),
                "--accelerate".into(),
            ]),
            Mode::IptablesLegacy | Mode::IptablesNft => args.extend([
                "--backend".into(),
                "iptables".into(),
                "--iptables-mode".into(),
                if self == Mode::IptablesLegacy {
                    "legacy"
                } else {
                    "nft"
                }
                .into(),
            ]),
        }
        args.extend(["--netns".into(), pod_netns.display().to_string()]);
        args.extend(istio_flags(cidrs, inbound));
        Some(args)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The seed's `istio-iptables` flags (outbound capture of everything; no inbound ports, or
/// with `inbound` every one but the sidecar's own), with the excluded CIDRs in repeated `-x`
/// arguments: one argument is capped at 128 KiB.
pub fn istio_flags(cidrs: &[String], inbound: bool) -> Vec<String> {
    let mut flags: Vec<String> = [
        "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*",
    ]
    .map(String::from)
    .to_vec();
    if inbound {
        flags.extend(INBOUND_FLAGS.map(String::from));
    } else {
        flags.extend(["-b".to_owned(), String::new()]);
    }
    for chunk in cidrs.chunks(1000) {
        flags.push("-x".into());
        flags.push(chunk.join(","));
    }
    flags
}

/// `n` distinct /24s from 100.64.0.0/10 (shared address space): none holds the server's
/// 10.200.0.0/16 or loopback, so every connection walks (iptables) or looks up (eBPF) all of
/// them and is still redirected.
pub fn excluded_cidrs(n: u32) -> Vec<String> {
    assert!(n <= 1 << 14, "100.64.0.0/10 holds 16384 /24s");
    (0..n)
        .map(|i| format!("100.{}.{}.0/24", 64 + i / 256, i % 256))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excluded_cidrs_are_distinct_and_outside_the_topology() {
        let cidrs = excluded_cidrs(10_000);
        assert_eq!(cidrs.len(), 10_000);
        assert_eq!(cidrs[0], "100.64.0.0/24");
        assert_eq!(cidrs[9_999], "100.103.15.0/24");
        let unique: std::collections::HashSet<_> = cidrs.iter().collect();
        assert_eq!(unique.len(), cidrs.len());
    }

    #[test]
    fn init_args_are_the_same_istio_flags_for_both_backends() {
        let cidrs = excluded_cidrs(2500);
        let cg = Path::new("/sys/fs/cgroup/x/pod");
        let ns = Path::new("/run/netns/p");
        let ebpf = Mode::Ebpf.init_args(cg, ns, &cidrs, false).unwrap();
        let nft = Mode::IptablesNft.init_args(cg, ns, &cidrs, false).unwrap();
        assert_eq!(&ebpf[..3], ["init", "--cgroup", "/sys/fs/cgroup/x/pod"]);
        assert_eq!(
            &nft[..5],
            ["init", "--backend", "iptables", "--iptables-mode", "nft"]
        );
        let tail = |a: &[String]| {
            a.iter()
                .skip_while(|s| *s != "--netns")
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(tail(&ebpf), tail(&nft));
        // Three -x arguments (1000 + 1000 + 500), each under the kernel's 128 KiB.
        let x: Vec<_> = ebpf
            .iter()
            .enumerate()
            .filter(|(_, a)| *a == "-x")
            .collect();
        assert_eq!(x.len(), 3);
        assert!(ebpf.iter().all(|a| a.len() < 128 * 1024));
        assert_eq!(Mode::Direct.init_args(cg, ns, &cidrs, false), None);
        let inbound = Mode::Ebpf.init_args(cg, ns, &[], true).unwrap();
        let b = inbound.iter().position(|a| a == "-b").unwrap();
        assert_eq!(inbound[b..b + 4], INBOUND_FLAGS);
        let outbound = Mode::Ebpf.init_args(cg, ns, &[], false).unwrap();
        assert_eq!(outbound[outbound.len() - 2..], ["-b", ""]);
    }
}
