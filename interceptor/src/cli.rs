//! The command line. Option names, short letters and environment variables are istio-iptables'
//! own, so an `istio-init` invocation can be pasted as it is.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::RawOptions;

#[derive(Debug, Parser)]
#[command(
    name = "interceptor",
    version,
    about = "Istio's sidecar traffic interception (istio-iptables) done with eBPF"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing's env-filter syntax), e.g. `debug` or `interceptor=trace`.
    #[arg(long, global = true, env = "INTERCEPTOR_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach interception to a pod (cgroup + network namespace), pin it, and exit.
    Init(Box<InitArgs>),
    /// Remove what `init` made for a pod; its connections go direct again.
    Clean(CleanArgs),
    /// Show every instance on the node: where it is attached, its configuration, counters.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The pod's cgroup (cgroup v2 directory). Default: the parent of this process's cgroup,
    /// i.e. the pod's cgroup when run as an init container.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// The pod's network namespace. Default: this process's (`/proc/self/ns/net`).
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// Where bpffs is mounted (mounted there if it is not).
    #[arg(long, value_name = "PATH", default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KernelLogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl KernelLogLevel {
    /// aya-log's numbering (0 disables every kernel-side log statement).
    pub fn as_aya_level(self) -> u8 {
        self as u8
    }
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub istio: IstioFlags,
    /// The pod's resolv.conf: its name servers are what `--redirect-dns` captures (unless
    /// `--capture-all-dns`). Default: this process's, as in an init container.
    #[arg(long, value_name = "PATH", default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Entries of each connection-tracking map (original destinations in flight).
    #[arg(long, value_name = "N", default_value_t = 65536)]
    pub max_connections: u32,
    /// Kernel-side debug messages (aya-log) the programs emit.
    #[arg(long, value_enum, default_value = "off")]
    pub kernel_log_level: KernelLogLevel,
}

/// istio-iptables' options: same names, same environment variables, flag over environment.
#[derive(Debug, Args)]
pub struct IstioFlags {
    /// Port outbound connections are redirected to (istio-iptables reads no env var for it).
    #[arg(short = 'p', long = "envoy-port", value_name = "PORT")]
    pub envoy_port: Option<String>,
    /// Port the proxy's connections to its own pod are redirected to.
    #[arg(
        short = 'z',
        long = "inbound-capture-port",
        env = "INBOUND_CAPTURE_PORT"
    )]
    pub inbound_capture_port: Option<String>,
    /// Port never captured (Istio's HBONE tunnel).
    #[arg(short = 'e', long = "inbound-tunnel-port", env = "INBOUND_TUNNEL_PORT")]
    pub inbound_tunnel_port: Option<String>,
    /// Proxy uids (comma list, names or numbers); their connections are not redirected.
    #[arg(short = 'u', long = "proxy-uid", env = "PROXY_UID")]
    pub proxy_uid: Option<String>,
    /// Proxy gids (comma list). Default: the uids.
    #[arg(short = 'g', long = "proxy-gid", env = "PROXY_GID")]
    pub proxy_gid: Option<String>,
    /// Inbound interception mode: REDIRECT or TPROXY.
    #[arg(
        short = 'm',
        long = "istio-inbound-interception-mode",
        env = "ISTIO_INBOUND_INTERCEPTION_MODE"
    )]
    pub interception_mode: Option<String>,
    /// Inbound ports to capture (comma list, or '*').
    #[arg(short = 'b', long = "istio-inbound-ports", env = "ISTIO_INBOUND_PORTS")]
    pub inbound_ports: Option<String>,
    /// Inbound ports not captured when -b is '*'.
    #[arg(
        short = 'd',
        long = "istio-local-exclude-ports",
        env = "ISTIO_LOCAL_EXCLUDE_PORTS"
    )]
    pub local_exclude_ports: Option<String>,
    /// Interfaces whose traffic is never captured.
    #[arg(
        short = 'c',
        long = "istio-exclude-interfaces",
        env = "ISTIO_EXCLUDE_INTERFACES"
    )]
    pub exclude_interfaces: Option<String>,
    /// Outbound destinations to redirect (comma list of CIDRs, or '*'). May be repeated: the
    /// lists add up (one argument is capped at 128 KiB by the kernel; 10,000 CIDRs are more).
    #[arg(short = 'i', long = "istio-service-cidr", env = "ISTIO_SERVICE_CIDR", action = clap::ArgAction::Append)]
    pub service_cidr: Vec<String>,
    /// Outbound destinations never redirected (comma list of CIDRs). May be repeated.
    #[arg(
        short = 'x',
        long = "istio-service-exclude-cidr",
        env = "ISTIO_SERVICE_EXCLUDE_CIDR",
        action = clap::ArgAction::Append
    )]
    pub service_exclude_cidr: Vec<String>,
    /// Outbound ports always redirected, whatever the destination (comma list).
    #[arg(
        short = 'q',
        long = "istio-outbound-ports",
        env = "ISTIO_OUTBOUND_PORTS"
    )]
    pub outbound_ports: Option<String>,
    /// Outbound ports never redirected (comma list).
    #[arg(
        short = 'o',
        long = "istio-local-outbound-ports-exclude",
        env = "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE"
    )]
    pub local_outbound_ports_exclude: Option<String>,
    /// KubeVirt interfaces (comma list).
    #[arg(
        short = 'k',
        long = "kube-virt-interfaces",
        env = "KUBE_VIRT_INTERFACES"
    )]
    pub kube_virt_interfaces: Option<String>,
    /// Print the resolved configuration and the map contents; change nothing.
    #[arg(short = 'n', long = "dry-run", env = "DRY_RUN")]
    pub dry_run: bool,
    /// Capture DNS (port 53) to the agent on 15053 (also env ISTIO_META_DNS_CAPTURE).
    #[arg(long = "redirect-dns", env = "REDIRECT_DNS")]
    pub redirect_dns: bool,
    /// With --redirect-dns: all port-53 traffic, not only to resolv.conf's servers.
    #[arg(long = "capture-all-dns", env = "CAPTURE_ALL_DNS")]
    pub capture_all_dns: bool,
    /// Drop packets conntrack marks INVALID (also env INVALID_DROP).
    #[arg(long = "drop-invalid", env = "DROP_INVALID")]
    pub drop_invalid: bool,
}

/// Repeated list options add up; none given is "not given" (the default applies).
fn joined(values: &[String]) -> Option<String> {
    (!values.is_empty()).then(|| values.join(","))
}

/// istio-iptables' boolean spellings.
fn env_bool(name: &str) -> Option<bool> {
    std::env::var(name)
        .ok()
        .map(|v| matches!(v.as_str(), "1" | "t" | "T" | "TRUE" | "true" | "True"))
}

impl IstioFlags {
    pub fn raw(&self) -> RawOptions {
        RawOptions {
            envoy_port: self.envoy_port.clone(),
            inbound_capture_port: self.inbound_capture_port.clone(),
            inbound_tunnel_port: self.inbound_tunnel_port.clone(),
            proxy_uid: self.proxy_uid.clone(),
            proxy_gid: self.proxy_gid.clone(),
            service_cidr: joined(&self.service_cidr),
            service_exclude_cidr: joined(&self.service_exclude_cidr),
            outbound_ports: self.outbound_ports.clone(),
            local_outbound_ports_exclude: self.local_outbound_ports_exclude.clone(),
            interception_mode: self.interception_mode.clone(),
            inbound_ports: self.inbound_ports.clone(),
            local_exclude_ports: self.local_exclude_ports.clone(),
            exclude_interfaces: self.exclude_interfaces.clone(),
            kube_virt_interfaces: self.kube_virt_interfaces.clone(),
            // The alias variables istio-iptables applies after the primary ones.
            redirect_dns: self.redirect_dns || env_bool("ISTIO_META_DNS_CAPTURE").unwrap_or(false),
            capture_all_dns: self.capture_all_dns,
            drop_invalid: self.drop_invalid || env_bool("INVALID_DROP").unwrap_or(false),
        }
    }
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Name of the instance to remove (as `status` shows it), instead of --cgroup.
    #[arg(long, conflicts_with = "cgroup")]
    pub instance: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Where bpffs is mounted.
    #[arg(long, value_name = "PATH", default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("interceptor").chain(args.iter().copied()))
    }

    #[test]
    fn accepts_the_seed_invocation_verbatim() {
        let cli = parse(&[
            "init", "-p", "15001", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b",
            "9080,", "-d", "",
        ])
        .unwrap();
        let Command::Init(init) = cli.command else {
            panic!("not init")
        };
        let raw = init.istio.raw();
        assert_eq!(raw.envoy_port.as_deref(), Some("15001"));
        assert_eq!(raw.service_cidr.as_deref(), Some("*"));
        assert_eq!(raw.service_exclude_cidr.as_deref(), Some(""));
        assert_eq!(raw.inbound_ports.as_deref(), Some("9080,"));
    }

    #[test]
    fn repeated_cidr_lists_add_up() {
        let cli = parse(&["init", "-x", "10.0.0.0/8", "-x", "192.168.0.0/16,"]).unwrap();
        let Command::Init(init) = cli.command else {
            panic!("not init")
        };
        let raw = init.istio.raw();
        assert_eq!(
            raw.service_exclude_cidr.as_deref(),
            Some("10.0.0.0/8,192.168.0.0/16,")
        );
        assert_eq!(raw.service_cidr, None);
    }

    #[test]
    fn long_names_match_istio_iptables() {
        let cli = parse(&[
            "init",
            "--envoy-port=15001",
            "--inbound-capture-port=15006",
            "--inbound-tunnel-port=15008",
            "--proxy-uid=1337",
            "--proxy-gid=1337",
            "--istio-inbound-interception-mode=TPROXY",
            "--istio-inbound-ports=*",
            "--istio-local-exclude-ports=15090",
            "--istio-exclude-interfaces=eth1",
            "--istio-service-cidr=10.0.0.0/8",
            "--istio-service-exclude-cidr=10.1.0.0/16",
            "--istio-outbound-ports=80",
            "--istio-local-outbound-ports-exclude=15020",
            "--kube-virt-interfaces=vnet0",
            "--redirect-dns",
            "--capture-all-dns",
            "--drop-invalid",
            "--dry-run",
        ])
        .unwrap();
        let Command::Init(init) = cli.command else {
            panic!("not init")
        };
        assert!(init.istio.dry_run && init.istio.redirect_dns && init.istio.drop_invalid);
        assert_eq!(init.istio.kube_virt_interfaces.as_deref(), Some("vnet0"));
    }

    #[test]
    fn unknown_flags_are_usage_errors() {
        let err = parse(&["init", "--no-such-flag"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
