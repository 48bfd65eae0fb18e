//! A "pod" (network namespace + cgroup2 directory) joined to a "server" namespace by a veth pair.

use std::ffi::OsStr;
use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::cgroup::{cgroup2_mount, remove_tree};
use crate::lines::{ProbeCase, ProbeOptions, ProbeResult};
use crate::netns::{ip, ip_batch, netns_path, run_in_netns};
use crate::process::{Identity, Process, Registry, kill_registered, place_command};
use crate::{PROBE_BIN, SERVER_BIN, SIDECAR_BIN, bin_path};

/// Bound for a spawned server or sidecar to start listening.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound for removing the cgroups once their processes are killed.
const CGROUP_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Slack on top of the probe's own timeout for process start and exit.
const PROBE_SLACK: Duration = Duration::from_secs(5);
/// Bound for the kernel to finish with a new IPv6 address (duplicate address detection).
const TENTATIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Makes names unique among the topologies of one process; the pid separates processes.
static NEXT_TOPOLOGY: AtomicU32 = AtomicU32::new(0);

/// Which of the two network namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Pod,
    Server,
}

/// Where a process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// The pod's network namespace and cgroup: what interception applies to.
    Pod,
    /// The pod's network namespace with another cgroup, e.g. from
    /// [`Topology::create_cgroup`]`("outside")` (must stay untouched) or `("pod/init")`.
    PodNetns { cgroup: PathBuf },
    /// The server's network namespace, in the caller's cgroup.
    Server,
    /// The server's network namespace in a cgroup from [`Topology::create_cgroup`], e.g. to
    /// measure the server's CPU time, or to have its forked workers killed with the topology.
    ServerNetns { cgroup: PathBuf },
}

/// An extra pod interface from [`Topology::add_pod_interface`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    /// Its name inside the pod (`eth1`, `eth2`, ...).
    pub name: String,
    pub pod_ip: Ipv4Addr,
    /// The server's address on the same /24 (the peer interface is `srv1`, `srv2`, ...).
    pub server_ip: Ipv4Addr,
}

/// A pod and a server namespace joined by a veth pair, plus the pod's cgroup.
///
/// Address plan (it exists only inside these namespaces, so every topology uses the same one):
/// - pod `eth0` 10.200.0.2/24 with a default route via the server's `srv0` 10.200.0.1/24;
/// - the server also has 10.200.1.1, 10.200.2.1, 10.200.3.1 (each a /24 of its own) on `srv0`,
///   so tests can dial addresses inside and outside an included or excluded CIDR;
/// - [`Topology::add_pod_interface`] number k uses 10.200.(100+k).0/24: pod .2, server .1.
/// - IPv6 (ULA), beside it: pod `eth0` fd00:200::2/64 with a default route via the server's
///   fd00:200::1/64; the server also has fd00:200:1::1, fd00:200:2::1, fd00:200:3::1 (each a
///   /64 of its own). Added without duplicate address detection, so usable at once.
///
/// Dropping it kills every process it spawned and everything left in its cgroups, removes the
/// cgroups and deletes the namespaces, also when a test panics.
#[derive(Debug)]
pub struct Topology {
    /// `icpt-<tag>-<pid>-<n>`: the stem of every name below.
    pub name: String,
    /// `<name>-pod`, a name under /run/netns.
    pub pod_netns: String,
    /// `<name>-srv`, a name under /run/netns.
    pub server_netns: String,
    pub pod_ip: Ipv4Addr,
    pub server_ip: Ipv4Addr,
    /// Server addresses in other /24s, reached through the pod's default route.
    pub server_extra_ips: Vec<Ipv4Addr>,
    /// The pod's IPv6 address on `eth0`.
    pub pod_ip6: Ipv6Addr,
    /// The server's IPv6 address on the pod's /64.
    pub server_ip6: Ipv6Addr,
    /// Server IPv6 addresses in other /64s, reached through the pod's default IPv6 route.
    pub server_extra_ips6: Vec<Ipv6Addr>,
    /// `<cgroup2>/interceptor-test-<tag>-<pid>-<n>`: room for sibling cgroups of the pod.
    pub cgroup_dir: PathBuf,
    /// `<cgroup_dir>/pod`.
    pub pod_cgroup: PathBuf,
    /// Interfaces added with [`Topology::add_pod_interface`].
    pub pod_interfaces: Vec<PodInterface>,
    /// What to undo: kept apart from the public fields so that a test cannot redirect cleanup.
    owned: Owned,
}

#[derive(Debug, Default)]
struct Owned {
    netns: Vec<String>,
    cgroup_dir: Option<PathBuf>,
    processes: Registry,
}

impl Topology {
    /// Creates the namespaces, veth pair, addresses, routes and cgroups. Needs root.
    ///
    /// `tag` (lowercase letters, digits, `-`; at most 16 characters) names the test in every
    /// resource, so that leftovers can be traced to it.
    pub fn new(tag: &str) -> Result<Self> {
        crate::leftovers::sweep_once();
        ensure!(
            !tag.is_empty()
                && tag.len() <= 16
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "tag {tag:?}: use 1-16 of [a-z0-9-]"
        );
        ensure!(
            // SAFETY: geteuid cannot fail.
            unsafe { libc::geteuid() } == 0,
            "network namespaces and cgroups need root"
        );
        let pid = std::process::id();
        let n = NEXT_TOPOLOGY.fetch_add(1, Ordering::Relaxed);
        let name = format!("icpt-{tag}-{pid}-{n}");
        let cgroup_dir = cgroup2_mount()?.join(format!("interceptor-test-{tag}-{pid}-{n}"));
        let mut topology = Self {
            pod_netns: format!("{name}-pod"),
            server_netns: format!("{name}-srv"),
            name,
            pod_ip: Ipv4Addr::new(10, 200, 0, 2),
            server_ip: Ipv4Addr::new(10, 200, 0, 1),
            server_extra_ips: (1..=3).map(|c| Ipv4Addr::new(10, 200, c, 1)).collect(),
            pod_ip6: Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 2),
            server_ip6: Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1),
            server_extra_ips6: (1..=3)
                .map(|n| Ipv6Addr::new(0xfd00, 0x200, n, 0, 0, 0, 0, 1))
                .collect(),
            pod_cgroup: cgroup_dir.join("pod"),
            cgroup_dir,
            pod_interfaces: Vec::new(),
            owned: Owned::default(),
        };
        // On error, dropping `topology` undoes whatever part was made.
        topology.set_up()?;
        Ok(topology)
    }

    fn set_up(&mut self) -> Result<()> {
        for netns in [&self.pod_netns, &self.server_netns] {
            ip(&["netns", "add", netns])?;
            self.owned.netns.push(netns.clone());
        }
        // Created directly inside the namespaces, so the names cannot clash with the host's.
        ip(&[
            "link",
            "add",
            "eth0",
            "netns",
            &self.pod_netns,
            "type",
            "veth",
            "peer",
            "name",
            "srv0",
            "netns",
            &self.server_netns,
        ])?;
        ip_batch(
            &self.pod_netns,
            &[
                "link set lo up".to_owned(),
                format!("addr add {}/24 dev eth0", self.pod_ip),
                format!("addr add {}/64 dev eth0 nodad", self.pod_ip6),
                "link set eth0 up".to_owned(),
                format!("route add default via {}", self.server_ip),
                format!("route add ::/0 via {}", self.server_ip6),
            ],
        )?;
        let mut server = vec![
            "link set lo up".to_owned(),
            format!("addr add {}/24 dev srv0", self.server_ip),
            format!("addr add {}/64 dev srv0 nodad", self.server_ip6),
        ];
        for extra in &self.server_extra_ips {
            server.push(format!("addr add {extra}/24 dev srv0"));
        }
        for extra in &self.server_extra_ips6 {
            server.push(format!("addr add {extra}/64 dev srv0 nodad"));
        }
        server.push("link set srv0 up".to_owned());
        ip_batch(&self.server_netns, &server)?;

        // create_dir (not _all): the parent must exist, and a clash must fail, not be adopted.
        fs::create_dir(&self.cgroup_dir)
            .with_context(|| format!("creating {}", self.cgroup_dir.display()))?;
        self.owned.cgroup_dir = Some(self.cgroup_dir.clone());
        self.create_cgroup("pod")?;
        Ok(())
    }

    /// Adds a veth pair `eth<k>` (pod) / `srv<k>` (server) on 10.200.(100+k).0/24, e.g. for
    /// excluded-interface tests. The pod's default route stays on `eth0`.
    pub fn add_pod_interface(&mut self) -> Result<PodInterface> {
        let k = self.pod_interfaces.len() + 1;
        ensure!(k <= 100, "too many pod interfaces");
        let subnet = 100 + k as u8;
        let interface = PodInterface {
            name: format!("eth{k}"),
            pod_ip: Ipv4Addr::new(10, 200, subnet, 2),
            server_ip: Ipv4Addr::new(10, 200, subnet, 1),
        };
        let server_name = format!("srv{k}");
        ip(&[
            "link",
            "add",
            &interface.name,
            "netns",
            &self.pod_netns,
            "type",
            "veth",
            "peer",
            "name",
            &server_name,
            "netns",
            &self.server_netns,
        ])?;
        ip_batch(
            &self.pod_netns,
            &[
                format!("addr add {}/24 dev {}", interface.pod_ip, interface.name),
                format!("link set {} up", interface.name),
            ],
        )?;
        ip_batch(
            &self.server_netns,
            &[
                format!("addr add {}/24 dev {server_name}", interface.server_ip),
                format!("link set {server_name} up"),
            ],
        )?;
        self.pod_interfaces.push(interface.clone());
        Ok(interface)
    }

    /// Creates `<cgroup_dir>/<relative>` (e.g. `outside`, or `pod/init` for a process whose
    /// parent cgroup is the pod); it is removed with the topology.
    pub fn create_cgroup(&self, relative: &str) -> Result<PathBuf> {
        let relative = Path::new(relative);
        ensure!(
            relative.is_relative() && relative.components().all(|c| c.as_os_str() != ".."),
            "cgroup {} must stay under {}",
            relative.display(),
            self.cgroup_dir.display()
        );
        let path = self.cgroup_dir.join(relative);
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(path)
    }

    /// The path of a namespace under /run/netns.
    pub fn netns_path(&self, side: Side) -> PathBuf {
        netns_path(match side {
            Side::Pod => &self.pod_netns,
            Side::Server => &self.server_netns,
        })
    }

    /// Runs `ip -n <namespace> <args>`, e.g. to give the pod another address.
    pub fn ip(&self, side: Side, args: &[&str]) -> Result<()> {
        let netns = match side {
            Side::Pod => &self.pod_netns,
            Side::Server => &self.server_netns,
        };
        ip(&[&["-n", netns], args].concat())
    }

    /// Waits until the IPv6 address `ip`, if the namespace has it, is no longer tentative. An
    /// address added without `nodad` (as `init` adds `::6` to `lo` when IPv6 is captured)
    /// cannot be bound until the kernel's address worker has run, which on a loaded machine
    /// can be after the command that added it has returned.
    pub fn wait_address_settled(&self, side: Side, ip: Ipv6Addr) -> Result<()> {
        let netns = match side {
            Side::Pod => &self.pod_netns,
            Side::Server => &self.server_netns,
        };
        let deadline = Instant::now() + TENTATIVE_TIMEOUT;
        loop {
            let mut cmd = Command::new("ip");
            cmd.args([
                "-n",
                netns,
                "-6",
                "addr",
                "show",
                "to",
                &format!("{ip}/128"),
            ])
            .args(["tentative"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            let listed = Process::spawn(&mut cmd, None)?.wait(TENTATIVE_TIMEOUT)?;
            ensure!(
                listed.status.success(),
                "listing tentative addresses in {netns}: {}",
                listed.stderr.trim()
            );
            if listed.stdout.trim().is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{netns}: {ip} still tentative after {TENTATIVE_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs `f` on a thread inside a namespace (for in-process clients; not in the pod cgroup).
    pub fn run_in<T: Send>(&self, side: Side, f: impl FnOnce() -> T + Send) -> Result<T> {
        run_in_netns(&self.netns_path(side), f)
    }

    /// A command that runs `program` at `place` as `identity`, with stdin from /dev/null.
    /// Start it with [`Topology::spawn`] so that it is killed with the topology.
    pub fn command(
        &self,
        place: &Place,
        identity: Identity,
        program: impl AsRef<OsStr>,
    ) -> Result<Command> {
        let (cgroup, side) = match place {
            Place::Pod => (Some(self.pod_cgroup.as_path()), Side::Pod),
            Place::PodNetns { cgroup } => (Some(cgroup.as_path()), Side::Pod),
            Place::Server => (None, Side::Server),
            Place::ServerNetns { cgroup } => (Some(cgroup.as_path()), Side::Server),
        };
        let mut cmd = Command::new(program);
        cmd.stdin(Stdio::null());
        place_command(&mut cmd, cgroup, &self.netns_path(side), identity)?;
        Ok(cmd)
    }

    /// Spawns `cmd`; the process is killed when the returned handle or the topology is dropped.
    pub fn spawn(&self, cmd: &mut Command) -> Result<Process> {
        Process::spawn(cmd, Some(self.owned.processes.clone()))
    }

    /// Starts `interceptor-sidecar` in the pod as the proxy user (1337:1337), listening on each
    /// of `ports` (IPv4 and IPv6, or one dual-stack socket with `--dual-stack`, or IPv6 only
    /// with `--ipv6-only`), with
    /// `extra_args` (e.g. `--announce`, `--log`); waits until it listens.
    /// Its stdout is piped: read `--log` lines with [`Process::next_stdout_line`].
    pub fn spawn_sidecar(&self, ports: &[u16], extra_args: &[&str]) -> Result<Process> {
        let mut cmd = self.command(&Place::Pod, Identity::PROXY, bin_path(SIDECAR_BIN)?)?;
        for port in ports {
            cmd.args(["--listen", &port.to_string()]);
        }
        cmd.args(extra_args).stdout(Stdio::piped());
        let mut sidecar = self.spawn(&mut cmd)?;
        let ipv6_socket_only =
            extra_args.contains(&"--dual-stack") || extra_args.contains(&"--ipv6-only");
        for &port in ports {
            if !ipv6_socket_only {
                sidecar.wait_listening(
                    SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
                    LISTEN_TIMEOUT,
                )?;
            }
            sidecar.wait_listening(
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
                LISTEN_TIMEOUT,
            )?;
        }
        Ok(sidecar)
    }

    /// Starts `interceptor-test-server` at `place` on each of `listen`, with `extra_args`
    /// (e.g. `--http`); waits until it listens. Its stdout is piped.
    pub fn spawn_server(
        &self,
        place: &Place,
        identity: Identity,
        listen: &[SocketAddr],
        extra_args: &[&str],
    ) -> Result<Process> {
        let mut cmd = self.command(place, identity, bin_path(SERVER_BIN)?)?;
        for addr in listen {
            cmd.args(["--listen", &addr.to_string()]);
        }
        cmd.args(extra_args).stdout(Stdio::piped());
        let mut server = self.spawn(&mut cmd)?;
        for &addr in listen {
            server.wait_listening(addr, LISTEN_TIMEOUT)?;
        }
        Ok(server)
    }

    /// Runs `interceptor-probe connect <target>` in the pod (pod netns and cgroup) as `identity`.
    pub fn probe(
        &self,
        identity: Identity,
        target: SocketAddr,
        options: &ProbeOptions,
    ) -> Result<ProbeResult> {
        self.probe_from(&Place::Pod, identity, target, options)
    }

    /// Runs `interceptor-probe connect <target>` at `place` as `identity` and parses its line.
    pub fn probe_from(
        &self,
        place: &Place,
        identity: Identity,
        target: SocketAddr,
        options: &ProbeOptions,
    ) -> Result<ProbeResult> {
        let mut cmd = self.command(place, identity, bin_path(PROBE_BIN)?)?;
        cmd.args(options.args(target))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let finished = self.spawn(&mut cmd)?.wait(options.timeout + PROBE_SLACK)?;
        if !finished.status.success() {
            bail!(
                "probe to {target} failed ({}): {}",
                finished.status,
                finished.stderr.trim()
            );
        }
        ProbeResult::parse(&finished.stdout)
    }

    /// Runs `interceptor-probe batch` at `place` as `identity`: each case in turn (as
    /// [`Topology::probe_from`] with default options but `timeout` each), in one process.
    /// Returns one result per case, in order.
    pub fn probe_batch(
        &self,
        place: &Place,
        identity: Identity,
        cases: &[ProbeCase],
        timeout: Duration,
    ) -> Result<Vec<ProbeResult>> {
        if cases.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = self.command(place, identity, bin_path(PROBE_BIN)?)?;
        cmd.arg("batch")
            .args(cases.iter().map(ProbeCase::to_string))
            .args(["--timeout-ms", &timeout.as_millis().to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let bound = timeout * u32::try_from(cases.len())? + PROBE_SLACK;
        let finished = self.spawn(&mut cmd)?.wait(bound)?;
        if !finished.status.success() {
            bail!(
                "probe batch of {} cases failed ({}): {}",
                cases.len(),
                finished.status,
                finished.stderr.trim()
            );
        }
        let results = finished
            .stdout
            .lines()
            .map(ProbeResult::parse)
            .collect::<Result<Vec<_>>>()?;
        ensure!(
            results.len() == cases.len(),
            "probe batch: {} results for {} cases",
            results.len(),
            cases.len()
        );
        Ok(results)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Processes first: a live process keeps its cgroup busy and its namespace alive.
        kill_registered(&self.owned.processes);
        if let Some(dir) = self.owned.cgroup_dir.take()
            && let Err(e) = remove_tree(&dir, CGROUP_DRAIN_TIMEOUT)
        {
            eprintln!("topology {}: {e:#}", self.name);
        }
        for netns in self.owned.netns.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &netns]) {
                eprintln!("topology {}: {e:#}", self.name);
            }
        }
    }
}
