//! A light pod for tests at node scale: a network namespace with `lo` and an `eth0`
//! carrying an address of its own (unique per index, as a node's pod addresses are), and a
//! cgroup. No server namespace: connections the pod's sidecar does not take fail at once (the
//! pod has no route), which is all a test of where they go needs.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};

use crate::cgroup::{cgroup2_mount, remove_tree};
use crate::lines::{ProbeOptions, ProbeResult};
use crate::netns::{ip, ip_batch, netns_path};
use crate::process::{Identity, Process, Registry, kill_registered, place_command};
use crate::{PROBE_BIN, SIDECAR_BIN, bin_path};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Bound for a sidecar to start listening.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A pod: network namespace + cgroup, removed (processes killed first) when dropped.
#[derive(Debug)]
pub struct LightPod {
    /// `icpt-<tag>-<pid>-<n>`, the namespace's name under /run/netns.
    pub netns: String,
    pub cgroup: PathBuf,
    /// `eth0`'s address: 10.(120 + index / 250).(index % 250).2.
    pub addr: Ipv4Addr,
    processes: Registry,
    removed: bool,
}

impl LightPod {
    /// Creates pod number `index` (< 2500) of a test tagged `tag` (as `Topology::new`).
    pub fn new(tag: &str, index: u32) -> Result<Self> {
        crate::leftovers::sweep_once();
        ensure!(index < 2500, "pod index {index}: at most 2500 light pods");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("icpt-{tag}-{}-{n}", std::process::id());
        let addr = Ipv4Addr::new(10, 120 + (index / 250) as u8, (index % 250) as u8, 2);
        ip(&["netns", "add", &name])?;
        let mut pod = LightPod {
            netns: name.clone(),
            cgroup: cgroup2_mount()?.join(format!("interceptor-test-{}", &name[5..])),
            addr,
            processes: Registry::default(),
            removed: false,
        };
        ip_batch(
            &name,
            &[
                "link set lo up".to_owned(),
                // A veth pair inside the namespace (no dummy driver in every kernel): eth0's
                // peer is the pod's only neighbour, and it answers nothing.
                "link add eth0 type veth peer name eth0-peer".to_owned(),
                format!("addr add {addr}/24 dev eth0"),
                "link set eth0-peer up".to_owned(),
                "link set eth0 up".to_owned(),
            ],
        )?;
        fs::create_dir(&pod.cgroup)
            .with_context(|| format!("creating {}", pod.cgroup.display()))
            .inspect_err(|_| pod.cgroup = PathBuf::new())?;
        Ok(pod)
    }

    pub fn netns_path(&self) -> PathBuf {
        netns_path(&self.netns)
    }

    /// `--cgroup` and `--netns` for `interceptor init` and `clean`.
    pub fn target_args(&self) -> Vec<String> {
        vec![
            "--cgroup".into(),
            self.cgroup.display().to_string(),
            "--netns".into(),
            self.netns_path().display().to_string(),
        ]
    }

    /// `program` in the pod (its namespace and cgroup) as `identity`.
    pub fn command(&self, identity: Identity, program: impl AsRef<Path>) -> Result<Command> {
        let mut cmd = Command::new(program.as_ref());
        cmd.stdin(Stdio::null());
        place_command(&mut cmd, Some(&self.cgroup), &self.netns_path(), identity)?;
        Ok(cmd)
    }

    /// `program` in the pod's network namespace but not its cgroup (the test's own), as
    /// `identity`: a process interception does not apply to.
    pub fn command_beside(&self, identity: Identity, program: impl AsRef<Path>) -> Result<Command> {
        let mut cmd = Command::new(program.as_ref());
        cmd.stdin(Stdio::null());
        place_command(&mut cmd, None, &self.netns_path(), identity)?;
        Ok(cmd)
    }

    /// Lets the pod's listeners hold `n` connections the kernel completed before they are
    /// accepted (`net.core.somaxconn`, and the SYN queue, `net.ipv4.tcp_max_syn_backlog`):
    /// a burst larger than the default 4096 otherwise meets SYN cookies and dropped ACKs.
    pub fn allow_backlog(&self, n: u32) -> Result<()> {
        crate::run_in_netns(&self.netns_path(), move || -> Result<()> {
            for key in ["core/somaxconn", "ipv4/tcp_max_syn_backlog"] {
                let path = format!("/proc/sys/net/{key}");
                fs::write(&path, n.to_string()).with_context(|| format!("writing {path}"))?;
            }
            Ok(())
        })?
    }

    /// Spawns `cmd` (from [`LightPod::command`]); it is killed with the pod.
    pub fn spawn(&self, cmd: &mut Command) -> Result<Process> {
        Process::spawn(cmd, Some(self.processes.clone()))
    }

    /// `interceptor-sidecar --announce` as the proxy user on `port`, listening when returned.
    pub fn spawn_sidecar(&self, port: u16) -> Result<Process> {
        self.spawn_sidecar_with(port, &[])
    }

    /// [`LightPod::spawn_sidecar`] with more of its options (e.g. `--backlog`).
    pub fn spawn_sidecar_with(&self, port: u16, extra: &[&str]) -> Result<Process> {
        let mut cmd = self.command(Identity::PROXY, bin_path(SIDECAR_BIN)?)?;
        cmd.args(["--listen", &port.to_string(), "--announce"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut sidecar = Process::spawn(&mut cmd, Some(self.processes.clone()))?;
        sidecar.wait_listening(
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            LISTEN_TIMEOUT,
        )?;
        Ok(sidecar)
    }

    /// `interceptor-probe connect <target>` in the pod as `identity`.
    pub fn probe(&self, identity: Identity, target: SocketAddr) -> Result<ProbeResult> {
        let options = ProbeOptions {
            timeout: Duration::from_secs(2),
            ..ProbeOptions::default()
        };
        let mut cmd = self.command(identity, bin_path(PROBE_BIN)?)?;
        cmd.args(options.args(target))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let finished = Process::spawn(&mut cmd, Some(self.processes.clone()))?
            .wait(options.timeout + Duration::from_secs(5))?;
        ensure!(
            finished.status.success(),
            "probe: {}",
            finished.stderr.trim()
        );
        ProbeResult::parse(&finished.stdout)
    }

    /// `interceptor-probe loop <target>` in the pod as the application; close its stdin to
    /// stop it and read its summary.
    pub fn spawn_loop(&self, target: SocketAddr) -> Result<Process> {
        let mut cmd = self.command(Identity::APP, bin_path(PROBE_BIN)?)?;
        cmd.args(["loop", &target.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.spawn(&mut cmd)
    }

    /// Deletes the pod the way a container runtime does: its processes killed, its cgroup
    /// removed, its network namespace deleted. Nobody runs `interceptor clean`.
    pub fn delete_like_a_runtime(mut self) -> Result<()> {
        self.remove()
    }

    fn remove(&mut self) -> Result<()> {
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        kill_registered(&self.processes);
        if !self.cgroup.as_os_str().is_empty() {
            remove_tree(&self.cgroup, Duration::from_secs(5))?;
        }
        ip(&["netns", "del", &self.netns])
    }
}

impl Drop for LightPod {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("light pod {}: {e:#}", self.netns);
        }
    }
}
