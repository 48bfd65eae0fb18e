//! A "node" for the daemon tests: its own network namespace (where the CNI bridge, the
//! gateway address and the test server live, and where the daemon runs), a parent cgroup the
//! daemon attaches to (the kubepods cgroup of a real node), pods created on demand (a network
//! namespace plus a child cgroup each), and a CNI runtime that executes a plugin chain with
//! the spec's environment and stdin, as containerd or CRI-O would.
//!
//! Everything is named `icpt-<tag>-<pid>-<n>...` / `interceptor-test-<tag>-<pid>-<n>` and is
//! removed on drop, also when a test panics: processes, the daemon's pinned instance, cgroups,
//! namespaces (the bridge goes with the node's), the temporary directory.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::{Value, json};

use crate::cgroup::{cgroup2_mount, remove_tree};
use crate::netns::{ip, netns_path};
use crate::process::{Identity, Process, Registry, kill_registered, place_command};
use crate::{
    PROBE_BIN, ProbeOptions, ProbeResult, SERVER_BIN, SIDECAR_BIN, bin_path, interceptor_bin,
};

static NEXT_NODE: AtomicU32 = AtomicU32::new(0);

/// Where Debian's `containernetworking-plugins` puts the reference plugins.
pub const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";
/// The pods' subnet (host-local) and the bridge's gateway address in the node namespace.
pub const POD_SUBNET: &str = "10.201.0.0/24";
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
/// Where the daemon serves metrics, inside the node namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:15090";

/// A pod: its network namespace and its cgroup under the node's parent cgroup.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub netns: String,
    pub cgroup: PathBuf,
    /// The sandbox id the runtime passes as CNI_CONTAINERID.
    pub container_id: String,
}

impl Pod {
    pub fn netns_path(&self) -> PathBuf {
        netns_path(&self.netns)
    }
}

/// What one plugin of a chain did.
#[derive(Debug)]
pub struct PluginRun {
    pub plugin: String,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub success: bool,
}

#[derive(Debug)]
pub struct CniNode {
    pub name: String,
    pub netns: String,
    /// The parent cgroup the daemon attaches to.
    pub cgroup: PathBuf,
    /// Socket, IPAM data, conflist.
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// The ADD result of each container (the runtime's cache, used for CHECK and DEL).
    results: std::sync::Mutex<HashMap<String, String>>,
    owned_netns: std::sync::Mutex<Vec<String>>,
    processes: Registry,
}

impl CniNode {
    pub fn new(tag: &str) -> Result<Self> {
        crate::leftovers::sweep_once();
        ensure!(
            !tag.is_empty()
                && tag.len() <= 12
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "tag {tag:?}: use 1-12 of [a-z0-9-]"
        );
        let pid = std::process::id();
        let n = NEXT_NODE.fetch_add(1, Ordering::Relaxed);
        let name = format!("icpt-{tag}-{pid}-{n}");
        let dir = std::env::temp_dir().join(format!("interceptor-test-{tag}-{pid}-{n}"));
        let node = CniNode {
            netns: format!("{name}-node"),
            cgroup: cgroup2_mount()?.join(format!("interceptor-test-{tag}-{pid}-{n}")),
            socket: dir.join("interceptor.sock"),
            dir,
            name,
            results: Default::default(),
            owned_netns: Default::default(),
            processes: Registry::default(),
        };
        fs::create_dir(&node.dir).with_context(|| format!("creating {}", node.dir.display()))?;
        fs::create_dir(&node.cgroup)
            .with_context(|| format!("creating {}", node.cgroup.display()))?;
        node.add_netns(&node.netns)?;
        ip(&["-n", &node.netns, "link", "set", "lo", "up"])?;
        Ok(node)
    }

    fn add_netns(&self, name: &str) -> Result<()> {
        ip(&["netns", "add", name])?;
        self.owned_netns.lock().unwrap().push(name.to_string());
        Ok(())
    }

    pub fn netns_path(&self) -> PathBuf {
        netns_path(&self.netns)
    }

    /// A pod namespace (with lo up, as a runtime's pause container has) and cgroup.
    pub fn create_pod(&self, pod: &str) -> Result<Pod> {
        let netns = format!("{}-{pod}", self.name);
        self.add_netns(&netns)?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        let cgroup = self.cgroup.join(pod);
        fs::create_dir(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
        Ok(Pod {
            name: pod.to_string(),
            container_id: format!("{}-{pod}-sandbox", self.name),
            netns,
            cgroup,
        })
    }

    /// Deletes a pod's network namespace (as a runtime does when the sandbox goes).
    pub fn delete_pod_netns(&self, pod: &Pod) -> Result<()> {
        ip(&["netns", "del", &pod.netns])?;
        self.owned_netns.lock().unwrap().retain(|n| *n != pod.netns);
        Ok(())
    }

    /// Deletes a pod the way a container runtime does: its processes killed, its cgroup
    /// removed, its network namespace deleted; nobody tells the daemon.
    pub fn delete_pod_like_a_runtime(&self, pod: &Pod) -> Result<()> {
        remove_tree(&pod.cgroup, Duration::from_secs(5))?;
        self.delete_pod_netns(pod)
    }

    /// A command run in the node's namespace, in the test's own cgroup.
    pub fn node_command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        let mut cmd = Command::new(program);
        cmd.stdin(Stdio::null());
        place_command(&mut cmd, None, &self.netns_path(), Identity::ROOT)?;
        Ok(cmd)
    }

    /// A command run in `pod` (its namespace and cgroup) as `identity`.
    pub fn pod_command(
        &self,
        pod: &Pod,
        identity: Identity,
        program: impl AsRef<OsStr>,
    ) -> Result<Command> {
        let mut cmd = Command::new(program);
        cmd.stdin(Stdio::null());
        place_command(&mut cmd, Some(&pod.cgroup), &pod.netns_path(), identity)?;
        Ok(cmd)
    }

    /// Spawns `cmd`; it is killed when the handle or the node is dropped.
    pub fn spawn(&self, cmd: &mut Command) -> Result<Process> {
        Process::spawn(cmd, Some(self.processes.clone()))
    }

    /// `interceptor daemon` for this node (in the node's namespace, metrics on
    /// [`METRICS_ADDR`] there), from `binary` (the built one unless a test copies it to play a
    /// new version); waits until it answers on its socket.
    pub fn start_daemon(&self, binary: &Path) -> Result<Process> {
        self.start_daemon_with(&[], binary)
    }

    /// [`CniNode::start_daemon`] under a wrapper command (e.g. `setpriv` limiting its
    /// capabilities): `wrapper[0] wrapper[1..] binary daemon ...`.
    pub fn start_daemon_with(&self, wrapper: &[&str], binary: &Path) -> Result<Process> {
        self.start_daemon_full(wrapper, binary, &[])
    }

    /// [`CniNode::start_daemon_with`] with more daemon options (e.g. other map sizes, which
    /// make another datapath, as an upgrade that changes the maps' layout does).
    pub fn start_daemon_full(
        &self,
        wrapper: &[&str],
        binary: &Path,
        extra: &[&str],
    ) -> Result<Process> {
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = self.node_command(program)?;
                c.args(args).arg(binary);
                c
            }
            None => self.node_command(binary)?,
        };
        cmd.arg("daemon")
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--socket")
            .arg(&self.socket)
            .args(["--metrics", METRICS_ADDR, "--bpf-stats"])
            .args(if extra.contains(&"--max-pods") {
                &[][..]
            } else {
                &["--max-pods", "16"][..]
            })
            .args(extra)
            .stderr(Stdio::piped());
        let mut daemon = self.spawn(&mut cmd)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = daemon.try_status()? {
                let out = daemon.wait(Duration::from_secs(1))?;
                bail!("the daemon exited ({status}): {}", out.stderr);
            }
            if self.pod_cli(&["list", "--json"]).status.success()
                && self.http_get("/readyz").is_ok_and(|(code, _)| code == 200)
            {
                return Ok(daemon);
            }
            ensure!(Instant::now() < deadline, "the daemon did not get ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `interceptor pod --socket <node's> ARGS`.
    pub fn pod_cli(&self, args: &[&str]) -> std::process::Output {
        pod_cli(&self.socket, args)
    }

    /// `interceptor pod list --json`.
    pub fn pods(&self) -> Result<Vec<Value>> {
        registered_pods(&self.socket)
    }

    /// A GET on the daemon's HTTP endpoint (inside the node's namespace): (status, body).
    pub fn http_get(&self, path: &str) -> Result<(u16, String)> {
        let path = path.to_string();
        crate::run_in_netns(&self.netns_path(), move || {
            http_get(METRICS_ADDR.parse()?, &path)
        })?
    }

    /// The id of the node's cgroup (the daemon's).
    pub fn cgroup_id(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt as _;
        Ok(fs::metadata(&self.cgroup)?.ino())
    }

    /// What `interceptor status --json` shows of the node (readable without a daemon): the
    /// datapath whose node links cover this cgroup, as `{"datapath": .., "pods": [the pods
    /// the daemon registered], "programs": [every program of the datapath, flattened]}`.
    pub fn status(&self) -> Result<Value> {
        use std::os::unix::fs::MetadataExt as _;
        let id = fs::metadata(&self.cgroup)?.ino();
        let out = Command::new(interceptor_bin())
            .args(["status", "--json"])
            .output()?;
        ensure!(out.status.success(), "status failed");
        let all: Value = serde_json::from_slice(&out.stdout)?;
        let datapath = all["datapaths"]
            .as_array()
            .context("status lists datapaths")?
            .iter()
            .find(|d| {
                d["nodes"]
                    .as_array()
                    .is_some_and(|n| n.iter().any(|n| n["cgroup_id"] == id))
            })
            .cloned()
            .context("the node's datapath in status")?;
        let name = datapath["datapath"].clone();
        let pods: Vec<Value> = all["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["datapath"] == name && p["mode"] == "node" && p["cgroup_id"] == id)
            .cloned()
            .collect();
        let programs: Vec<Value> = datapath["programs"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|b| b["programs"].as_array().cloned().unwrap_or_default())
            .collect();
        Ok(json!({ "datapath": name, "pods": pods, "programs": programs }))
    }

    /// One counter of the pod with this netns cookie, from the pinned maps.
    pub fn counter(&self, cookie: u64, name: &str) -> Result<u64> {
        pod_counter(&self.status()?, cookie, name)
    }

    /// A conflist: `bridge` with `host-local` IPAM in the node's namespace, then
    /// `interceptor-cni` with `interceptor` as its extra configuration.
    pub fn conflist(&self, interceptor: Value) -> Value {
        let mut chained = json!({
            "type": "interceptor-cni",
            "socket": self.socket,
        });
        for (k, v) in interceptor.as_object().cloned().unwrap_or_default() {
            chained[k] = v;
        }
        json!({
            "cniVersion": "1.0.0",
            "name": format!("{}-net", self.name),
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": POD_SUBNET, "gateway": GATEWAY.to_string() }]],
                        "dataDir": self.dir.join("ipam"),
                    }
                },
                chained
            ]
        })
    }

    /// Runs the chain for `command` (ADD, CHECK, DEL) as the CNI spec's runtime does: each
    /// plugin gets the network's name and version plus its own configuration on stdin, with
    /// `prevResult` (the previous plugin's result for ADD; the cached ADD result for CHECK and
    /// DEL, which run in reverse order). `after_each` sees each plugin's run as it finishes
    /// (a test can look at the pod between two plugins). Stops at the first failure.
    pub fn run_chain(
        &self,
        conflist: &Value,
        command: &str,
        pod: &Pod,
        cni_args: &str,
        mut after_each: impl FnMut(&PluginRun) -> Result<()>,
    ) -> Result<Vec<PluginRun>> {
        let plugins = conflist["plugins"].as_array().context("plugins")?.clone();
        let order: Vec<Value> = if command == "DEL" {
            plugins.into_iter().rev().collect()
        } else {
            plugins
        };
        let cached = self.results.lock().unwrap().get(&pod.container_id).cloned();
        let mut prev: Option<Value> = match command {
            "ADD" => None,
            _ => cached.as_deref().map(serde_json::from_str).transpose()?,
        };
        let cni_path = format!(
            "{CNI_PLUGIN_DIR}:{}",
            bin_path("interceptor-cni")?
                .parent()
                .context("bin dir")?
                .display()
        );
        let mut runs = Vec::new();
        for plugin in order {
            let mut conf = plugin.clone();
            conf["name"] = conflist["name"].clone();
            conf["cniVersion"] = conflist["cniVersion"].clone();
            if let Some(p) = &prev {
                conf["prevResult"] = p.clone();
            }
            let kind = plugin["type"].as_str().context("type")?.to_string();
            let exe = cni_path
                .split(':')
                .map(|d| Path::new(d).join(&kind))
                .find(|p| p.is_file())
                .with_context(|| format!("plugin {kind} not in {cni_path}"))?;
            let stdin = conf.to_string();
            let mut cmd = self.node_command(&exe)?;
            cmd.env("CNI_COMMAND", command)
                .env("CNI_CONTAINERID", &pod.container_id)
                .env("CNI_NETNS", pod.netns_path())
                .env("CNI_IFNAME", "eth0")
                .env("CNI_ARGS", cni_args)
                .env("CNI_PATH", &cni_path)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = self.spawn(&mut cmd)?;
            child
                .take_stdin()
                .context("stdin")?
                .write_all(stdin.as_bytes())?;
            let done = child.wait(Duration::from_secs(30))?;
            let run = PluginRun {
                plugin: kind,
                stdin,
                stdout: done.stdout,
                stderr: done.stderr,
                success: done.status.success(),
            };
            after_each(&run)?;
            if !run.success {
                runs.push(run);
                return Ok(runs);
            }
            if command == "ADD" {
                prev = Some(serde_json::from_str(&run.stdout).with_context(|| {
                    format!("{} printed no result: {:?}", run.plugin, run.stdout)
                })?);
            }
            runs.push(run);
        }
        if command == "ADD"
            && let Some(last) = runs.last()
        {
            self.results
                .lock()
                .unwrap()
                .insert(pod.container_id.clone(), last.stdout.clone());
        }
        Ok(runs)
    }

    /// `interceptor-sidecar` in `pod` as the proxy (1337), announcing, on `ports`.
    pub fn spawn_sidecar(&self, pod: &Pod, ports: &[u16]) -> Result<Process> {
        let mut cmd = self.pod_command(pod, Identity::PROXY, bin_path(SIDECAR_BIN)?)?;
        for p in ports {
            cmd.args(["--listen", &p.to_string()]);
        }
        cmd.arg("--announce").stdout(Stdio::piped());
        let mut sidecar = self.spawn(&mut cmd)?;
        for &p in ports {
            sidecar.wait_listening(
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, p)),
                Duration::from_secs(10),
            )?;
        }
        Ok(sidecar)
    }

    /// `interceptor-test-server` in the node's namespace on 0.0.0.0 at `ports`.
    pub fn spawn_server(&self, ports: &[u16]) -> Result<Process> {
        let mut cmd = self.node_command(bin_path(SERVER_BIN)?)?;
        for p in ports {
            cmd.args(["--listen", &format!("0.0.0.0:{p}")]);
        }
        cmd.stdout(Stdio::piped());
        let mut server = self.spawn(&mut cmd)?;
        for &p in ports {
            server.wait_listening(
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, p)),
                Duration::from_secs(10),
            )?;
        }
        Ok(server)
    }

    /// `interceptor-probe connect` from `pod` as the application user.
    pub fn probe(&self, pod: &Pod, target: SocketAddr) -> Result<ProbeResult> {
        let options = ProbeOptions::default();
        let mut cmd = self.pod_command(pod, Identity::APP, bin_path(PROBE_BIN)?)?;
        cmd.args(options.args(target))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let done = self
            .spawn(&mut cmd)?
            .wait(options.timeout + Duration::from_secs(5))?;
        ensure!(done.status.success(), "probe failed: {}", done.stderr);
        ProbeResult::parse(&done.stdout)
    }

    /// `interceptor-probe loop TARGET` from `pod` as the application user; close its stdin to
    /// stop it and read its summary.
    pub fn spawn_loop(&self, pod: &Pod, target: SocketAddr) -> Result<Process> {
        let mut cmd = self.pod_command(pod, Identity::APP, bin_path(PROBE_BIN)?)?;
        cmd.args(["loop", &target.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.spawn(&mut cmd)
    }
}

/// One counter of the pod with this netns cookie in `interceptor status --json` output.
pub fn pod_counter(status: &Value, cookie: u64, name: &str) -> Result<u64> {
    let pod = status["pods"]
        .as_array()
        .context("pods")?
        .iter()
        .find(|p| p["netns_cookie"] == cookie)
        .with_context(|| format!("pod {cookie} in status"))?;
    pod["counters"][name]
        .as_u64()
        .with_context(|| format!("counter {name}"))
}

/// A GET of `path` on the daemon's HTTP endpoint at `addr` (in the caller's network
/// namespace): (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("an HTTP status line")?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((code, body.to_string()))
}

/// `interceptor pod --socket SOCKET ARGS`: a client of the daemon listening there.
pub fn pod_cli(socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new(interceptor_bin())
        .arg("pod")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("running interceptor pod")
}

/// The pods the daemon listening at `socket` has registered (`interceptor pod list --json`).
pub fn registered_pods(socket: &Path) -> Result<Vec<Value>> {
    let out = pod_cli(socket, &["list", "--json"]);
    ensure!(
        out.status.success(),
        "pod list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

impl Drop for CniNode {
    fn drop(&mut self) {
        kill_registered(&self.processes);
        // The daemon's pinned instance (links and maps): interception of this node's cgroup.
        let out = Command::new(interceptor_bin())
            .arg("clean")
            .arg("--cgroup")
            .arg(&self.cgroup)
            .output();
        if let Ok(out) = out
            && !out.status.success()
        {
            eprintln!(
                "node {}: clean: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if let Err(e) = remove_tree(&self.cgroup, Duration::from_secs(5)) {
            eprintln!("node {}: {e:#}", self.name);
        }
        for netns in self.owned_netns.lock().unwrap().drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &netns]) {
                eprintln!("node {}: {e:#}", self.name);
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
