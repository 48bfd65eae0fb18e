//! A podman of the test's own, to run `deploy/` as a container runtime runs it: podman 4.3 with
//! runc, everything under one temporary directory (configuration, image store, runtime state,
//! the CNI network configuration directory and binary directory a node would have in
//! `/etc/cni/net.d` and `/opt/cni/bin`), one CNI network (a bridge with host-local addresses:
//! no gateway, no masquerading, no firewall plugin, so the host gains a bridge and nothing
//! else), and a private bpffs standing for the node's (a bpffs mount is an instance of its own:
//! nobody else's pins are seen or touched).
//!
//! The images are built in that store from the contexts `cargo xtask test` stages
//! (`target/image-contexts/`, or `$INTERCEPTOR_IMAGE_CONTEXTS`): `localhost/interceptor:<version>`
//! from `deploy/Dockerfile.static` and the test peers from `tests/images/Dockerfile`.
//!
//! On drop, also when a test fails: every pod, container, image and network of the store, the
//! bridge, the cgroups podman leaves behind (with cgroup v1 controllers it removes a pod's v1
//! cgroups but not its directory in the unified hierarchy), the mounts under the directory, the
//! directory. The machine's own podman configuration is never used, and `/etc/cni/net.d`, where
//! podman writes its defaults on first use, is compared with what it was.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use crate::Process;
use crate::cgroup::cgroup2_mount;

/// Where the machine's CNI configuration lives; the tests never use it.
pub const HOST_CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// Bound for one podman command (a pod's start waits for its init containers).
const PODMAN_TIMEOUT: Duration = Duration::from_secs(120);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Host directories podman creates on first use, and which of them this process found
/// absent, so that the last environment can remove what the tests created.
static HOST: Mutex<HostUse> = Mutex::new(HostUse {
    users: 0,
    absent: Vec::new(),
});

struct HostUse {
    users: usize,
    absent: Vec<PathBuf>,
}

/// What podman makes on first use outside its store, files before the directories holding
/// them: libcni's result cache, the blob-info cache `podman build` keeps for root wherever the
/// store is, and each cgroup hierarchy's `libpod_parent` (the cgroupfs manager's parent of
/// pods, with conmon's cgroup in it).
fn first_use_paths() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = [
        "/var/lib/cni/results",
        "/var/lib/cni",
        "/var/lib/containers/cache/blob-info-cache-v1.boltdb",
        "/var/lib/containers/cache",
        "/var/lib/containers",
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect();
    paths.extend(cgroup_mounts().into_iter().map(|m| m.join("libpod_parent")));
    paths
}

/// Every cgroup mount point (v1 controllers and the unified hierarchy).
fn cgroup_mounts() -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (before, after) = l.split_once(" - ")?;
            let fstype = after.split_whitespace().next()?;
            let mount = before.split_whitespace().nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(mount))
        })
        .collect()
}

/// A snapshot of a directory: file names and contents.
fn snapshot(dir: &Path) -> Option<BTreeMap<String, Vec<u8>>> {
    let entries = fs::read_dir(dir).ok()?;
    Some(
        entries
            .flatten()
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (name, fs::read(e.path()).unwrap_or_default())
            })
            .collect(),
    )
}

/// A podman of the test's own (see the module's documentation).
pub struct Podman {
    /// `icpt-<tag>-<pid>-<n>`: the network's name, and the prefix of the test's names.
    pub name: String,
    pub dir: PathBuf,
    conf: PathBuf,
    storage_conf: PathBuf,
    /// The node's CNI network configuration directory (its `/etc/cni/net.d`).
    pub net_dir: PathBuf,
    /// The node's CNI binary directory (its `/opt/cni/bin`): empty until an installer fills it.
    pub cni_bin: PathBuf,
    /// The network's bridge on the host, and its subnet.
    pub bridge: String,
    pub subnet: String,
    /// The node's bpffs (a private instance).
    pub bpffs: PathBuf,
    /// The images' tag.
    pub version: String,
    /// Cgroups (relative to each hierarchy's root) to remove after the pods are gone.
    cgroups: Mutex<Vec<String>>,
    host_cni: Option<BTreeMap<String, Vec<u8>>>,
}

impl Podman {
    pub fn new(tag: &str) -> Result<Self> {
        crate::leftovers::sweep_once();
        ensure!(
            !tag.is_empty() && tag.len() <= 8 && tag.bytes().all(|b| b.is_ascii_lowercase()),
            "tag {tag:?}: 1-8 of [a-z]"
        );
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("icpt-{tag}-{pid}-{n}");
        let dir = std::env::temp_dir().join(format!("interceptor-test-podman-{tag}-{pid}-{n}"));
        let version = image_version()?;
        {
            let mut host = HOST.lock().unwrap_or_else(|e| e.into_inner());
            if host.users == 0 {
                host.absent = first_use_paths()
                    .into_iter()
                    .filter(|p| !p.exists())
                    .collect();
            }
            host.users += 1;
        }
        let me = Podman {
            conf: dir.join("containers.conf"),
            storage_conf: dir.join("storage.conf"),
            net_dir: dir.join("net.d"),
            cni_bin: dir.join("cni-bin"),
            bridge: format!("icp{pid:x}{n}"),
            subnet: format!("10.213.{}.0/24", n % 250),
            bpffs: dir.join("bpffs"),
            version,
            cgroups: Mutex::new(Vec::new()),
            host_cni: snapshot(Path::new(HOST_CNI_CONF_DIR)),
            name,
            dir,
        };
        me.create()?;
        Ok(me)
    }

    fn create(&self) -> Result<()> {
        for d in [&self.dir, &self.net_dir, &self.cni_bin, &self.bpffs] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let d = self.dir.display();
        // runc, not crun (which refuses hybrid cgroup hosts); ulimits below the machine's hard
        // limits (runc cannot raise them); podman's own state, networks and logs in here.
        fs::write(
            &self.conf,
            format!(
                r#"[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
log_driver = "k8s-file"
[network]
network_backend = "cni"
network_config_dir = "{net}"
cni_plugin_dirs = ["{bin}", "/usr/lib/cni"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{d}/tmp"
volume_path = "{d}/volumes"
"#,
                net = self.net_dir.display(),
                bin = self.cni_bin.display(),
            ),
        )?;
        // vfs: images of a few megabytes, and no overlay mounts to leave behind.
        fs::write(
            &self.storage_conf,
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{d}/storage\"\nrunroot = \"{d}/run\"\n"
            ),
        )?;
        // First in the directory, as the node's primary network is.
        let network = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [{
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": false,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": self.subnet }]],
                    "dataDir": self.dir.join("ipam"),
                },
            }],
        });
        fs::write(
            self.net_dir.join(format!("00-{}.conflist", self.name)),
            serde_json::to_string_pretty(&network)?,
        )?;
        mount_bpffs(&self.bpffs)?;
        Ok(())
    }

    /// `podman ARGS` in this environment (no CNI_ARGS unless given).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", &self.conf)
            .env("CONTAINERS_STORAGE_CONF", &self.storage_conf)
            .env_remove("CNI_ARGS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs `podman ARGS` with extra environment variables; its stdout (trimmed), or an error
    /// with its stderr.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Result<String> {
        let mut cmd = self.command();
        cmd.args(args).envs(env.iter().copied());
        let done = Process::spawn_unowned(&mut cmd)?
            .wait(PODMAN_TIMEOUT)
            .with_context(|| format!("podman {args:?}"))?;
        ensure!(
            done.status.success(),
            "podman {args:?} failed ({}): {}",
            done.status,
            done.stderr.trim()
        );
        Ok(done.stdout.trim().to_string())
    }

    pub fn run(&self, args: &[&str]) -> Result<String> {
        self.run_env(args, &[])
    }

    /// `podman inspect --format FORMAT NAME`.
    pub fn inspect(&self, name: &str, format: &str) -> Result<String> {
        self.run(&["inspect", "--format", format, name])
    }

    /// The address of a container (or of a pod's infra container) on the network.
    pub fn ip(&self, container: &str) -> Result<std::net::Ipv4Addr> {
        let text = self.inspect(
            container,
            &format!(
                "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
                self.name
            ),
        )?;
        text.parse()
            .with_context(|| format!("{container}'s address: {text:?}"))
    }

    /// The host pid of a container's first process.
    pub fn pid(&self, container: &str) -> Result<u32> {
        let text = self.inspect(container, "{{.State.Pid}}")?;
        let pid: u32 = text.parse().with_context(|| format!("pid {text:?}"))?;
        ensure!(pid != 0, "{container} is not running");
        Ok(pid)
    }

    /// Builds `localhost/interceptor:<version>` and the test peers' images (`sidecar`,
    /// `server`, `app`: `localhost/interceptor-test-<peer>:<version>`) in this store.
    pub fn build_images(&self) -> Result<()> {
        let contexts = image_contexts()?;
        let repo = workspace();
        let tag = format!("localhost/interceptor:{}", self.version);
        let file = repo.join("deploy/Dockerfile.static");
        let context = contexts.join("interceptor");
        self.run(&[
            "build",
            "--quiet",
            "--file",
            path(&file)?,
            "--tag",
            &tag,
            path(&context)?,
        ])?;
        let file = repo.join("tests/images/Dockerfile");
        let context = contexts.join("test-peers");
        for peer in ["sidecar", "server", "app"] {
            self.run(&[
                "build",
                "--quiet",
                "--file",
                path(&file)?,
                "--target",
                peer,
                "--tag",
                &self.peer_image(peer),
                path(&context)?,
            ])?;
        }
        Ok(())
    }

    /// `localhost/interceptor-test-<peer>:<version>`.
    pub fn peer_image(&self, peer: &str) -> String {
        format!("localhost/interceptor-test-{peer}:{}", self.version)
    }

    /// `podman kube play` of `manifest` (JSON, which is YAML) on this network (unless it asks
    /// for the host's), with `extra` options (e.g. `--configmap FILE`); the pods it made are
    /// remembered for cleanup. The file, for [`Podman::kube_down`].
    pub fn kube_play(&self, manifest: &Value, extra: &[&str]) -> Result<PathBuf> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let file = self.dir.join(format!("kube-{n}.json"));
        fs::write(&file, serde_json::to_string_pretty(manifest)?)?;
        let mut args = vec!["kube", "play"];
        if manifest["spec"]["hostNetwork"] != true {
            args.extend(["--network", &self.name]);
        }
        args.extend_from_slice(extra);
        args.push(path(&file)?);
        let played = self.run(&args);
        self.remember_pods();
        played.map_err(|e| e.context(self.container_logs()))?;
        Ok(file)
    }

    /// Every container of the store with its status and the last lines of its log: what a
    /// failed `kube play` says about why (an init container's error, say).
    pub fn container_logs(&self) -> String {
        let list = self
            .run(&["ps", "-a", "--format", "{{.ID}} {{.Names}} {{.Status}}"])
            .unwrap_or_else(|e| format!("podman ps: {e:#}"));
        let mut text = String::from("containers:");
        for line in list.lines() {
            text.push_str(&format!("\n  {line}"));
            let Some(id) = line.split_whitespace().next() else {
                continue;
            };
            let log = self
                .run(&["logs", "--tail", "20", id])
                .unwrap_or_else(|e| format!("podman logs: {e:#}"));
            for l in log.lines() {
                text.push_str(&format!("\n    | {l}"));
            }
        }
        text
    }

    /// `podman kube down` of a file [`Podman::kube_play`] played.
    pub fn kube_down(&self, file: &Path) -> Result<()> {
        self.remember_pods();
        self.run(&["kube", "down", path(file)?])?;
        Ok(())
    }

    /// Remembers the cgroup of every pod there is, to remove what podman leaves of it.
    pub fn remember_pods(&self) {
        let Ok(text) = self.run(&["pod", "ps", "--quiet", "--no-trunc"]) else {
            return;
        };
        for id in text.split_whitespace() {
            if let Ok(path) = self.run(&["pod", "inspect", "--format", "{{.CgroupPath}}", id]) {
                let mut cgroups = self.cgroups.lock().unwrap_or_else(|e| e.into_inner());
                let path = path.trim_start_matches('/').to_string();
                if !path.is_empty() && !cgroups.contains(&path) {
                    cgroups.push(path);
                }
            }
        }
    }

    /// A pod's cgroup directory in the unified hierarchy (what `init` attaches to).
    pub fn pod_cgroup(&self, pod: &str) -> Result<PathBuf> {
        let rel = self.run(&["pod", "inspect", "--format", "{{.CgroupPath}}", pod])?;
        Ok(cgroup2_mount()?.join(rel.trim_start_matches('/')))
    }

    /// Removes `rel` (relative to each hierarchy's root) from every cgroup hierarchy once the
    /// pods are gone: a parent of pods the test made (`--cgroup-parent`).
    pub fn forget_cgroup_later(&self, rel: &str) {
        self.cgroups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(rel.trim_start_matches('/').to_string());
    }

    /// What differs in the machine's /etc/cni/net.d from when this environment was made.
    pub fn host_cni_changes(&self) -> Option<String> {
        let now = snapshot(Path::new(HOST_CNI_CONF_DIR));
        (now != self.host_cni).then(|| {
            format!(
                "{HOST_CNI_CONF_DIR} changed: {:?} -> {:?}",
                self.host_cni.as_ref().map(|m| m.keys().collect::<Vec<_>>()),
                now.as_ref().map(|m| m.keys().collect::<Vec<_>>())
            )
        })
    }

    fn teardown(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut note = |what: &str, r: Result<String>| {
            if let Err(e) = r {
                problems.push(format!("{what}: {e:#}"));
            }
        };
        self.remember_pods();
        note(
            "pods",
            self.run(&["pod", "rm", "--all", "--force", "--time", "0"]),
        );
        note(
            "containers",
            self.run(&["rm", "--all", "--force", "--time", "0"]),
        );
        if let Ok(networks) = self.run(&["network", "ls", "--quiet"]) {
            // "podman" is the built-in default, never written here.
            for n in networks.split_whitespace().filter(|n| *n != "podman") {
                note("network", self.run(&["network", "rm", "--force", n]));
            }
        }
        note("images", self.run(&["rmi", "--all", "--force"]));
        // `podman network rm` deletes the bridge; a failed run may not have.
        if Path::new("/sys/class/net").join(&self.bridge).exists() {
            let _ = Command::new("ip")
                .args(["link", "del", &self.bridge])
                .status();
        }
        let cgroups = std::mem::take(&mut *self.cgroups.lock().unwrap_or_else(|e| e.into_inner()));
        for rel in cgroups.iter().rev() {
            for mount in cgroup_mounts() {
                if let Err(e) = remove_empty_tree(&mount.join(rel)) {
                    problems.push(e);
                }
            }
        }
        unmount_under(&self.dir, &mut problems);
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            problems.push(format!("removing {}: {e}", self.dir.display()));
        }
        if let Some(change) = self.host_cni_changes() {
            problems.push(change);
        }
        problems
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for p in self.teardown() {
            eprintln!("podman environment {}: {p}", self.name);
        }
        let mut host = HOST.lock().unwrap_or_else(|e| e.into_inner());
        host.users -= 1;
        if host.users == 0 {
            // What podman made on first use in this process, once nothing uses it; a directory
            // only when empty (another podman may have started using it meanwhile).
            for path in std::mem::take(&mut host.absent) {
                if path.is_file() {
                    let _ = fs::remove_file(&path);
                } else {
                    let _ = remove_empty_tree(&path);
                }
            }
        }
    }
}

/// Removes the directory tree at `dir`, deepest first, when no process is in it (cgroups).
fn remove_empty_tree(dir: &Path) -> std::result::Result<(), String> {
    if !dir.is_dir() {
        return Ok(());
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_tree(&e.path())?;
            }
        }
    }
    fs::remove_dir(dir).map_err(|e| format!("removing cgroup {}: {e}", dir.display()))
}

/// Unmounts whatever is mounted under `dir` (the bpffs, and anything podman left), deepest
/// first.
fn unmount_under(dir: &Path, problems: &mut Vec<String>) {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(PathBuf::from))
        .filter(|m| m.starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in mounts {
        if let Err(e) = crate::bpffs::unmount(&m) {
            problems.push(format!("unmounting {}: {e}", m.display()));
        }
    }
}

/// A new bpffs instance at `at`.
fn mount_bpffs(at: &Path) -> Result<()> {
    let target = std::ffi::CString::new(path(at)?)?;
    // SAFETY: valid C strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    ensure!(
        rc == 0,
        "mounting bpffs at {}: {}",
        at.display(),
        std::io::Error::last_os_error()
    );
    Ok(())
}

fn path(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// The repository's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// The staged build contexts (`cargo xtask test` sets `INTERCEPTOR_IMAGE_CONTEXTS`).
fn image_contexts() -> Result<PathBuf> {
    let dir = std::env::var_os("INTERCEPTOR_IMAGE_CONTEXTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/image-contexts"));
    if !dir.join("interceptor/interceptor").is_file() {
        bail!(
            "no image build contexts in {}: run `cargo xtask test` (or `cargo xtask image`), \
             which builds the static binaries and stages them",
            dir.display()
        );
    }
    Ok(dir)
}

/// interceptor's version: the images' tag (what the manifests in deploy/ name).
pub fn image_version() -> Result<String> {
    let manifest = workspace().join("interceptor/Cargo.toml");
    let text = fs::read_to_string(&manifest)?;
    text.lines()
        .find_map(|l| {
            let v = l.strip_prefix("version")?.trim_start().strip_prefix('=')?;
            Some(v.trim().trim_matches('"').to_string())
        })
        .with_context(|| format!("no version in {}", manifest.display()))
}
