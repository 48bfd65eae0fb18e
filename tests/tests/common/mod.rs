//! What the integration tests share: running the `interceptor` binary against a test pod,
//! and classifying where a probe's connection ended up.
#![allow(dead_code)] // each test crate uses its own part

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, Result};
use interceptor_tests::{Identity, ProbeOptions, ProbeResult, Side, Topology, bin_path};

pub const BPFFS: &str = "/sys/fs/bpf";
pub const SEED_FLAGS: [&str; 14] = [
    "-p", "15001", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "9080,", "-d", "",
];

pub fn interceptor_bin() -> PathBuf {
    std::env::var_os("INTERCEPTOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin_path("interceptor").expect("the interceptor binary is built"))
}

pub fn interceptor(args: &[&str]) -> Output {
    Command::new(interceptor_bin())
        .args(args)
        .output()
        .expect("running interceptor")
}

/// The instance directory `init` makes for a cgroup.
pub fn instance_dir(cgroup: &Path) -> PathBuf {
    use std::os::unix::fs::MetadataExt as _;
    let id = std::fs::metadata(cgroup).expect("cgroup exists").ino();
    Path::new(BPFFS).join(format!("interceptor/cgroup-{id}"))
}

/// A pod with interception attached; cleaned on drop (also when the test fails).
pub struct Intercepted {
    pub topo: Topology,
}

impl Intercepted {
    pub fn new(tag: &str, flags: &[&str]) -> Result<Self> {
        let topo = Topology::new(tag)?;
        let me = Self { topo };
        me.init(flags)?;
        Ok(me)
    }

    pub fn target_args(&self) -> Vec<String> {
        vec![
            "--cgroup".into(),
            self.topo.pod_cgroup.display().to_string(),
            "--netns".into(),
            self.topo.netns_path(Side::Pod).display().to_string(),
        ]
    }

    pub fn init(&self, flags: &[&str]) -> Result<()> {
        let mut args: Vec<String> = vec!["init".into()];
        args.extend(self.target_args());
        args.extend(flags.iter().map(|s| s.to_string()));
        let out = interceptor(&args.iter().map(String::as_str).collect::<Vec<_>>());
        anyhow::ensure!(
            out.status.success(),
            "interceptor init {flags:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    pub fn clean(&self) -> Output {
        let mut args: Vec<String> = vec!["clean".into()];
        args.extend(self.target_args());
        interceptor(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// This instance's counters, from `interceptor status --json`.
    pub fn counters(&self) -> Result<serde_json::Value> {
        let out = interceptor(&["status", "--json"]);
        anyhow::ensure!(out.status.success(), "status failed");
        let all: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let name = instance_dir(&self.topo.pod_cgroup)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let inst = all
            .as_array()
            .context("status is a list")?
            .iter()
            .find(|i| i["instance"] == name.as_str())
            .context("instance listed by status")?;
        Ok(inst["pods"][0]["counters"].clone())
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
#[derive(Debug, PartialEq, Eq)]
pub enum Path_ {
    /// Through the sidecar, which read this original destination.
    Sidecar(SocketAddr),
    /// Straight to the server, which accepted on this address.
    Direct(SocketAddr),
    /// Neither answered.
    Failed(String),
}

pub fn path_of(r: &ProbeResult) -> Path_ {
    if let Some(s) = r.sidecar_line() {
        return match s.orig {
            Ok(orig) => Path_::Sidecar(orig),
            Err(e) => Path_::Failed(format!("sidecar without original destination: {e}")),
        };
    }
    match r.server_line() {
        Some(line) => Path_::Direct(line.local),
        None => Path_::Failed(format!("{r:?}")),
    }
}

pub fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

pub fn any(port: u16) -> SocketAddr {
    addr(Ipv4Addr::UNSPECIFIED, port)
}

pub fn probe(p: &Intercepted, who: Identity, to: SocketAddr) -> Result<ProbeResult> {
    p.topo.probe(who, to, &ProbeOptions::default())
}

pub fn addr6(ip: Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(ip), port)
}

pub fn any6(port: u16) -> SocketAddr {
    addr6(Ipv6Addr::UNSPECIFIED, port)
}
