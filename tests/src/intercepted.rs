//! A test pod with interception attached by the real `interceptor` binary, under either backend,
//! and the vocabulary the tests use to say where a connection went.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context as _, Result};

use crate::{ProbeOptions, ProbeResult, Side, Topology, bin_path, process::Identity};

pub const BPFFS: &str = "/sys/fs/bpf";

/// The seed document's `istio-init` invocation.
pub const SEED_FLAGS: [&str; 14] = [
    "-p", "15001", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "9080,", "-d", "",
];

pub fn interceptor_bin() -> PathBuf {
    std::env::var_os("INTERCEPTOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin_path("interceptor").expect("the interceptor binary is built"))
}

/// Runs `interceptor ARGS` to completion.
pub fn interceptor(args: &[&str]) -> Output {
    interceptor_env(args, &[])
}

/// Runs `interceptor ARGS` to completion with extra environment variables (istio-iptables'
/// env-only settings, e.g. `ISTIO_OUTBOUND_OWNER_GROUPS`).
pub fn interceptor_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(interceptor_bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("running interceptor")
}

/// The directory of the links `init` pins for a pod's cgroup (eBPF backend), in whichever of
/// the node's datapaths it is: `interceptor/datapath-<key>/pods/cgroup-<id>@<cookie>`. A path
/// that does not exist when the pod is not intercepted.
pub fn instance_dir(cgroup: &Path) -> PathBuf {
    use std::os::unix::fs::MetadataExt as _;
    let id = std::fs::metadata(cgroup).expect("cgroup exists").ino();
    let base = Path::new(BPFFS).join("interceptor");
    let prefix = format!("cgroup-{id}@");
    let datapaths = std::fs::read_dir(&base).into_iter().flatten().flatten();
    for datapath in datapaths.filter(|d| d.file_name().to_string_lossy().starts_with("datapath-")) {
        let pods = std::fs::read_dir(datapath.path().join("pods"))
            .into_iter()
            .flatten();
        if let Some(pod) = pods
            .flatten()
            .find(|p| p.file_name().to_string_lossy().starts_with(&prefix))
        {
            return pod.path();
        }
    }
    base.join(format!("no-pod-for-cgroup-{id}"))
}

/// Which backend a pod is intercepted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Ebpf,
    /// istio-style nat rules, applied with `iptables-<mode>-restore`.
    Iptables(IptablesMode),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IptablesMode {
    Legacy,
    Nft,
}

impl IptablesMode {
    pub fn as_str(self) -> &'static str {
        match self {
            IptablesMode::Legacy => "legacy",
            IptablesMode::Nft => "nft",
        }
    }
}

/// A pod with interception attached; cleaned on drop (also when the test fails).
pub struct Intercepted {
    pub topo: Topology,
    pub backend: Backend,
}

impl Intercepted {
    /// A new pod, intercepted by the eBPF backend with `flags`.
    pub fn new(tag: &str, flags: &[&str]) -> Result<Self> {
        Self::with_backend(tag, Backend::Ebpf, flags)
    }

    pub fn with_backend(tag: &str, backend: Backend, flags: &[&str]) -> Result<Self> {
        let me = Self {
            topo: Topology::new(tag)?,
            backend,
        };
        me.init(flags)?;
        Ok(me)
    }

    /// A pod not intercepted yet (call [`Intercepted::init`]).
    pub fn bare(topo: Topology) -> Self {
        Self {
            topo,
            backend: Backend::Ebpf,
        }
    }

    /// The options naming this pod (and the backend) for `init` and `clean`.
    pub fn target_args(&self) -> Vec<String> {
        let netns = self.topo.netns_path(Side::Pod).display().to_string();
        match self.backend {
            Backend::Ebpf => vec![
                "--cgroup".into(),
                self.topo.pod_cgroup.display().to_string(),
                "--netns".into(),
                netns,
            ],
            Backend::Iptables(mode) => vec![
                "--backend".into(),
                "iptables".into(),
                "--iptables-mode".into(),
                mode.as_str().into(),
                "--netns".into(),
                netns,
            ],
        }
    }

    pub fn init(&self, flags: &[&str]) -> Result<()> {
        self.init_env(flags, &[])
    }

    /// `interceptor init` with this pod's target options and `flags`, whatever its outcome.
    pub fn try_init(&self, flags: &[&str]) -> Output {
        self.try_init_env(flags, &[])
    }

    /// [`Intercepted::try_init`] with extra environment variables.
    pub fn try_init_env(&self, flags: &[&str], env: &[(&str, &str)]) -> Output {
        let mut args: Vec<String> = vec!["init".into()];
        args.extend(self.target_args());
        args.extend(flags.iter().map(|s| s.to_string()));
        interceptor_env(&args.iter().map(String::as_str).collect::<Vec<_>>(), env)
    }

    /// [`Intercepted::init`] with extra environment variables.
    pub fn init_env(&self, flags: &[&str], env: &[(&str, &str)]) -> Result<()> {
        let out = self.try_init_env(flags, env);
        anyhow::ensure!(
            out.status.success(),
            "interceptor init {flags:?} {env:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    pub fn clean(&self) -> Output {
        let mut args: Vec<String> = vec!["clean".into()];
        args.extend(self.target_args());
        interceptor(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// This pod, as `interceptor status --json` shows it (eBPF backend).
    pub fn status(&self) -> Result<serde_json::Value> {
        use std::os::unix::fs::MetadataExt as _;
        let id = std::fs::metadata(&self.topo.pod_cgroup)?.ino();
        let out = interceptor(&["status", "--json"]);
        anyhow::ensure!(out.status.success(), "status failed");
        let all: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        all["pods"]
            .as_array()
            .context("status lists pods")?
            .iter()
            .find(|p| p["cgroup_id"] == id)
            .cloned()
            .context("the pod listed by status")
    }

    /// This pod's counters, from `interceptor status --json` (eBPF backend).
    pub fn counters(&self) -> Result<serde_json::Value> {
        Ok(self.status()?["counters"].clone())
    }

    /// A probe from the pod as `who` to `to`, with default options.
    pub fn probe(&self, who: Identity, to: SocketAddr) -> Result<ProbeResult> {
        self.topo.probe(who, to, &ProbeOptions::default())
    }
}

impl Drop for Intercepted {
    fn drop(&mut self) {
        let out = self.clean();
        if !out.status.success() {
            eprintln!("clean failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// Where a connection ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Through the sidecar (on this port), which read this original destination.
    Sidecar(SocketAddr),
    /// Straight to the server, which accepted on this address.
    Direct(SocketAddr),
    /// Neither answered.
    Failed(String),
}

pub fn route_of(r: &ProbeResult) -> Route {
    if let Some(s) = r.sidecar_line() {
        return match s.orig {
            Ok(orig) => Route::Sidecar(orig),
            Err(e) => Route::Failed(format!("sidecar without original destination: {e}")),
        };
    }
    match r.server_line() {
        Some(line) => Route::Direct(line.local),
        None => Route::Failed(format!("{r:?}")),
    }
}

pub fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

/// The wildcard address on `port` (what the test servers listen on).
pub fn any(port: u16) -> SocketAddr {
    addr(Ipv4Addr::UNSPECIFIED, port)
}

pub fn addr6(ip: Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(ip), port)
}

/// The IPv6 wildcard address on `port` (the test servers listen there for IPv6 only).
pub fn any6(port: u16) -> SocketAddr {
    addr6(Ipv6Addr::UNSPECIFIED, port)
}
