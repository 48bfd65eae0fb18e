//! The command line's types. Option names, short letters and environment variables are
//! istio-iptables' own, so an `istio-init` invocation can be pasted as it is.

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
    /// Node agent: attach once at a parent cgroup (e.g. kubepods) and intercept the pods
    /// registered over its socket (`interceptor pod`, `interceptor-cni`). eBPF only.
    Daemon(DaemonArgs),
    /// Register, remove and list pods with the node daemon.
    Pod(PodArgs),
    /// Where one connection of a pod goes, and the istio-iptables rule that decides it.
    Explain(Box<ExplainArgs>),
    /// A live stream of the programs' decisions (or, with --kernel-log, their log records).
    Trace(TraceArgs),
    /// Whether this kernel has every hook and helper the eBPF backend uses (changes nothing).
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The parent cgroup of the pods (cgroup v2), e.g. /sys/fs/cgroup/kubepods.slice.
    #[arg(long, value_name = "PATH")]
    pub cgroup: PathBuf,
    /// The API socket (root-only).
    #[arg(long, value_name = "PATH", default_value = crate::node::api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Where bpffs is mounted (mounted there if it is not).
    #[arg(long, value_name = "PATH", default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,
    /// Serve /metrics, /healthz and /readyz on this address (e.g. 127.0.0.1:15090). Off
    /// unless given.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Have the kernel count each program's run time while the daemon runs (for /metrics;
    /// costs a few ns per run).
    #[arg(long)]
    pub bpf_stats: bool,
    /// Pods the node's datapath holds (1 to 16384). Part of the datapath's identity: another
    /// value makes (or joins) another datapath, and re-registered pods move to it.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_pods: u32,
    /// Redirected connections in hand-over at once, node-wide, per address family: between
    /// the application's side being established and the proxy's (microseconds each). A full
    /// map is counted as `original_dst_lost`. 1024 to 4194304, about 240 bytes each. Part of
    /// the datapath's identity, as `--max-pods`; the same default as `init`'s, so both ways
    /// share one datapath.
    #[arg(long, value_name = "N", default_value_t = 65536)]
    pub max_connections: u32,
    /// Kernel-side debug messages (aya-log) the programs emit.
    #[arg(long, value_enum, default_value = "off")]
    pub kernel_log_level: KernelLogLevel,
}

#[derive(Debug, Args)]
pub struct PodArgs {
    /// The daemon's API socket.
    #[arg(long, value_name = "PATH", default_value = crate::node::api::DEFAULT_SOCKET, global = true)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: PodCommand,
}

#[derive(Debug, Subcommand)]
pub enum PodCommand {
    /// Register a pod (or replace its options) with `init`'s options.
    Add(Box<PodAddArgs>),
    /// Remove pods: their connections go direct again. Succeeds when none matches.
    Remove(PodRemoveArgs),
    /// Every registered pod with its counters.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct PodAddArgs {
    /// The pod's network namespace.
    #[arg(long, value_name = "PATH")]
    pub netns: PathBuf,
    /// The pod's name.
    #[arg(long, default_value = "")]
    pub name: String,
    /// The pod's Kubernetes namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// The runtime's id of the pod sandbox (what CNI calls CNI_CONTAINERID).
    #[arg(long, default_value = "")]
    pub container_id: String,
    /// The pod's resolv.conf (for --redirect-dns without --capture-all-dns).
    #[arg(long, value_name = "PATH")]
    pub resolv_conf: Option<PathBuf>,
    /// The pod's name servers, instead of a resolv.conf (e.g. the cluster DNS address).
    #[arg(
        long,
        value_name = "IP,...",
        value_delimiter = ',',
        conflicts_with = "resolv_conf"
    )]
    pub dns_servers: Vec<std::net::IpAddr>,
    /// Only `ebpf`: the daemon attaches eBPF programs (use `init --backend iptables` per pod).
    #[arg(long, value_enum, default_value = "ebpf")]
    pub backend: Backend,
    #[command(flatten)]
    pub istio: IstioFlags,
    /// Inbound connections to capture while the proxy has no listener: `open` or `closed`.
    #[arg(long, value_name = "open|closed", env = "INTERCEPTOR_INBOUND_FAIL")]
    pub inbound_fail: Option<String>,
    /// Raw sockets of the pod's processes other than the proxy: `refuse` (but ICMP) or `allow`.
    #[arg(long, value_name = "refuse|allow", env = "INTERCEPTOR_RAW_SOCKETS")]
    pub raw_sockets: Option<String>,
    /// Move the payload between the application and its proxy socket to socket (sockmap and
    /// sk_msg) instead of through TCP/IP over lo (eBPF backend; see the README's
    /// "Acceleration").
    #[arg(long, env = "INTERCEPTOR_ACCELERATE")]
    pub accelerate: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct PodRemoveArgs {
    /// The pod's network namespace.
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// The runtime's id of the pod sandbox.
    #[arg(long)]
    pub container_id: Option<String>,
    /// NAMESPACE/NAME.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub pod: Option<String>,
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

/// Which mechanism does the interception.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// eBPF programs on the pod's cgroup (needs the pod's cgroup).
    Ebpf,
    /// istio-iptables' own rules, written into the pod's network namespace.
    Iptables,
    /// eBPF when this kernel has everything it uses (`interceptor check`), else iptables.
    Auto,
}

/// Which iptables flavour the iptables backend writes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IptablesMode {
    /// The one the namespace already uses (more rules wins), else nft, else legacy.
    Auto,
    /// iptables-legacy (x_tables).
    Legacy,
    /// iptables-nft (nf_tables).
    Nft,
}

#[derive(Debug, Args)]
pub struct BackendArgs {
    /// Interception mechanism.
    #[arg(long, value_enum, env = "INTERCEPTOR_BACKEND", default_value = "ebpf")]
    pub backend: Backend,
    /// iptables flavour for `--backend iptables`.
    #[arg(
        long,
        value_enum,
        env = "INTERCEPTOR_IPTABLES_MODE",
        default_value = "auto"
    )]
    pub iptables_mode: IptablesMode,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub istio: IstioFlags,
    /// The pod's resolv.conf: its name servers are what `--redirect-dns` captures (unless
    /// `--capture-all-dns`). Default: this process's, as in an init container.
    #[arg(long, value_name = "PATH", default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Redirected connections in hand-over at once, node-wide, per address family: between
    /// the application's side being established and the proxy's (microseconds each). A full
    /// map is counted as `original_dst_lost`. 1024 to 4194304, about 240 bytes each. Part of
    /// the node's datapath's identity: another value makes (or joins) another datapath, and
    /// the pod moves to it.
    #[arg(long, value_name = "N", default_value_t = 65536)]
    pub max_connections: u32,
    /// Pods the node's datapath holds (1 to 16384). Part of its identity, as
    /// `--max-connections`.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_pods: u32,
    /// Kernel-side debug messages (aya-log) the programs emit.
    #[arg(long, value_enum, default_value = "off")]
    pub kernel_log_level: KernelLogLevel,
    /// Inbound connections to capture while the proxy has no listener: `open` (they reach
    /// the application) or `closed` (refused).
    #[arg(long, value_name = "open|closed", env = "INTERCEPTOR_INBOUND_FAIL")]
    pub inbound_fail: Option<String>,
    /// Raw sockets of the pod's processes other than the proxy (eBPF): `refuse` (the default:
    /// any raw socket but ICMP, and IP header inclusion, fail with EPERM, since their packets
    /// would bypass interception) or `allow`.
    #[arg(long, value_name = "refuse|allow", env = "INTERCEPTOR_RAW_SOCKETS")]
    pub raw_sockets: Option<String>,
    /// Move the payload between the application and its proxy socket to socket (sockmap and
    /// sk_msg) instead of through TCP/IP over lo (eBPF backend; see the README's
    /// "Acceleration").
    #[arg(long, env = "INTERCEPTOR_ACCELERATE")]
    pub accelerate: bool,
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
    /// TPROXY mode: the mark of captured packets.
    #[arg(
        short = 't',
        long = "istio-inbound-tproxy-mark",
        env = "ISTIO_INBOUND_TPROXY_MARK"
    )]
    pub tproxy_mark: Option<String>,
    /// TPROXY mode: the routing table of marked packets.
    #[arg(
        short = 'r',
        long = "istio-inbound-tproxy-route-table",
        env = "ISTIO_INBOUND_TPROXY_ROUTE_TABLE"
    )]
    pub tproxy_route_table: Option<String>,
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
    /// IPv6 rules when the pod has any IPv6 address, not only when its first address is IPv6
    /// (also env ISTIO_DUAL_STACK).
    #[arg(long = "dual-stack", env = "DUAL_STACK")]
    pub dual_stack: bool,
}

/// Repeated list options add up; none given is "not given" (the default applies).
fn joined(values: &[String]) -> Option<String> {
    (!values.is_empty()).then(|| values.join(","))
}

/// An env-only setting: set (even to "") or not.
fn env_text(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
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
            inbound_fail: None, // not an istio-iptables option (InitArgs::inbound_fail)
            raw_sockets: None,  // nor this one (InitArgs::raw_sockets)
            // The alias variables istio-iptables applies after the primary ones.
            redirect_dns: self.redirect_dns || env_bool("ISTIO_META_DNS_CAPTURE").unwrap_or(false),
            capture_all_dns: self.capture_all_dns,
            drop_invalid: self.drop_invalid || env_bool("INVALID_DROP").unwrap_or(false),
            owner_groups_include: env_text("ISTIO_OUTBOUND_OWNER_GROUPS"),
            owner_groups_exclude: env_text("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"),
            ipv4_loopback_cidr: env_text("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"),
            tproxy_mark: self.tproxy_mark.clone(),
            tproxy_route_table: self.tproxy_route_table.clone(),
            dual_stack: self.dual_stack || env_bool("ISTIO_DUAL_STACK").unwrap_or(false),
            accelerate: false, // not an istio-iptables option (InitArgs::accelerate)
        }
    }
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// `ebpf`: the instance of the cgroup. `iptables`: our chains and the rules jumping to
    /// them in the network namespace (with `--iptables-mode auto`, in both flavours).
    #[command(flatten)]
    pub backend: BackendArgs,
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

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The pod's network namespace (per-pod instances, node mode, and the iptables backend).
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// The pod's cgroup (per-pod instances of the eBPF backend).
    #[arg(long, value_name = "PATH", conflicts_with = "pod")]
    pub cgroup: Option<PathBuf>,
    /// The pod, as the node daemon registered it (node mode).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub pod: Option<String>,
    /// Where bpffs is mounted.
    #[arg(long, value_name = "PATH", default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,
    /// Which backend's rules to explain: `ebpf` (the pinned maps) or `iptables` (the
    /// namespace's live rules).
    #[arg(long, value_enum, default_value = "ebpf")]
    pub backend: ExplainBackend,
    /// iptables flavour for `--backend iptables`.
    #[arg(long, value_enum, default_value = "auto")]
    pub iptables_mode: IptablesMode,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Read connections from stdin, one per line (the connection options above), and answer
    /// each on one line.
    #[arg(long, conflicts_with_all = ["to", "uid", "gid", "udp", "from", "inbound", "interface"])]
    pub batch: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// The backends `explain` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExplainBackend {
    Ebpf,
    Iptables,
}

/// One connection, as `explain` takes it (on its command line, or a line of `--batch`).
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// Outbound: where it connects (ADDR:PORT, [IPv6]:PORT). With --inbound: the pod's address
    /// and port it arrives for.
    #[arg(long, value_name = "ADDR:PORT")]
    pub to: Option<std::net::SocketAddr>,
    /// The connecting process's uid (outbound).
    #[arg(long)]
    pub uid: Option<u32>,
    /// Its (primary) gid. Default: the uid.
    #[arg(long)]
    pub gid: Option<u32>,
    /// A UDP datagram (DNS) rather than a TCP connect.
    #[arg(long)]
    pub udp: bool,
    /// Outbound: the address the socket is bound to. With --inbound: the peer's address
    /// (default 192.0.2.1, or 2001:db8::1).
    #[arg(long, value_name = "ADDR")]
    pub from: Option<std::net::IpAddr>,
    /// A connection arriving from outside the pod.
    #[arg(long)]
    pub inbound: bool,
    /// With --inbound: the pod's interface it arrives on (default: the one --to's address is
    /// reached through).
    #[arg(long, value_name = "NAME")]
    pub interface: Option<String>,
}

/// A `--batch` line.
#[derive(Debug, Parser)]
#[command(no_binary_name = true, name = "connection")]
pub struct ConnectionLine {
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Where bpffs is mounted.
    #[arg(long, value_name = "PATH", default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,
    /// Only this pod, by network namespace.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["cgroup", "pod"])]
    pub netns: Option<PathBuf>,
    /// Only this pod, by cgroup (per-pod instances).
    #[arg(long, value_name = "PATH", conflicts_with = "pod")]
    pub cgroup: Option<PathBuf>,
    /// Only this pod, by name (node mode; followed if it is added while tracing).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub pod: Option<String>,
    /// Only these verdicts.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub verdict: Vec<TraceVerdict>,
    /// Only connections to these ports (inbound: arriving on them).
    #[arg(long, value_delimiter = ',')]
    pub port: Vec<u16>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// The programs' aya-log records (written at the --kernel-log-level they were loaded
    /// with) instead of decisions.
    #[arg(long)]
    pub kernel_log: bool,
    /// Stop after this many lines.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<u64>,
}

/// What `trace --verdict` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TraceVerdict {
    /// Outbound, sent to the proxy (or the DNS proxy).
    Redirected,
    /// Left alone (outbound), or passed to the application (inbound).
    Direct,
    /// Inbound, handed to the proxy's listener.
    Steered,
    /// Inbound, to be captured, but passed: the proxy had no listener (`--inbound-fail open`).
    Passed,
    /// Inbound, to be captured, but refused: the proxy had no listener (`closed`).
    Refused,
    /// `SO_ORIGINAL_DST` answered with an error.
    Failed,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
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
    fn backend_options_and_the_flags_only_the_iptables_backend_uses() {
        let cli = parse(&[
            "init",
            "--backend",
            "iptables",
            "--iptables-mode",
            "nft",
            "--resolv-conf",
            "/tmp/resolv.conf",
            "-t",
            "0x539",
            "-r",
            "134",
            "--dual-stack",
        ])
        .unwrap();
        let Command::Init(init) = cli.command else {
            panic!("not init")
        };
        assert_eq!(init.backend.backend, Backend::Iptables);
        assert_eq!(init.backend.iptables_mode, IptablesMode::Nft);
        assert_eq!(init.resolv_conf, PathBuf::from("/tmp/resolv.conf"));
        let raw = init.istio.raw();
        assert_eq!(raw.tproxy_mark.as_deref(), Some("0x539"));
        assert_eq!(raw.tproxy_route_table.as_deref(), Some("134"));
        assert!(raw.dual_stack);

        let Command::Init(init) = parse(&["init"]).unwrap().command else {
            panic!("not init")
        };
        assert_eq!(
            init.backend.backend,
            Backend::Ebpf,
            "eBPF stays the default"
        );
        assert_eq!(init.backend.iptables_mode, IptablesMode::Auto);
        assert_eq!(init.resolv_conf, PathBuf::from("/etc/resolv.conf"));

        let err = parse(&["init", "--iptables-mode", "xtables"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("xtables"), "{err}");
        let cli = parse(&["clean", "--backend", "iptables", "--netns", "/run/netns/x"]).unwrap();
        let Command::Clean(clean) = cli.command else {
            panic!("not clean")
        };
        assert_eq!(clean.backend.backend, Backend::Iptables);
    }

    #[test]
    fn unknown_flags_are_usage_errors() {
        let err = parse(&["init", "--no-such-flag"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
