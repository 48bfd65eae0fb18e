//! A node's worth of pods, measured through the CLI and the kernel only: light pods (a network
//! namespace with `lo` up and one address on it, plus a cgroup in per-pod mode; no veth, no
//! process) enrolled one after another, by one `interceptor init` each (per-pod mode) or by
//! `interceptor pod add` to one `interceptor daemon` (node mode). Measured: each enrolment's
//! wall time (fork+exec of the binary to its exit), and our programs and maps with their
//! kernel memory (`bytes_memlock`, bpftool) before the first pod and at given pod counts.
//!
//! Everything is named `icpt-<tag>-<pid>-<n>...` / `interceptor-bench-<tag>-<pid>-<n>` and
//! removed when the [`LightPods`] is dropped, failures included: the daemon, every pod's
//! interception (`interceptor clean`), the cgroups, the namespaces.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use interceptor_tests::Process;

use super::kernel::{self, Snapshot};
use super::modes::{self, Mode};
use super::pod::Tools;
use super::results::{Enrolment, PodInitSample, ScalePoint, ScaleRun, Settings};

/// Bound for one `ip` batch (a thousand namespaces take well under a second).
const IP_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound for the daemon to answer once started.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(20);
/// The pods' Kubernetes namespace in node mode.
const POD_NAMESPACE: &str = "bench";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One light pod.
#[derive(Debug)]
pub struct LightPod {
    pub netns: PathBuf,
    pub netns_inode: u64,
    /// Per-pod mode only: the cgroup `init` attaches to.
    pub cgroup: Option<PathBuf>,
}

/// Light pods on one "node", and what was enrolled, undone on drop.
pub struct LightPods<'t> {
    tools: &'t Tools,
    name: String,
    cgroup_root: PathBuf,
    with_cgroups: bool,
    pods: Vec<LightPod>,
    /// Namespaces asked for (removed on drop, whether or not their creation completed).
    netns_names: Vec<String>,
    cgroups: Vec<PathBuf>,
    /// Cgroups holding an eBPF instance (`init`, or the daemon's): `clean` removes it, since
    /// pins outlive the cgroup.
    to_clean: Vec<PathBuf>,
    daemon: Option<Daemon>,
}

struct Daemon {
    process: Process,
    socket: PathBuf,
}

impl<'t> LightPods<'t> {
    /// An empty node under a cgroup of its own; `with_cgroups`: each pod gets a cgroup (per-pod
    /// mode), else only a namespace (node mode registers namespaces).
    pub fn new(tools: &'t Tools, tag: &str, with_cgroups: bool) -> Result<Self> {
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let cgroup_root =
            interceptor_tests::cgroup2_mount()?.join(format!("interceptor-bench-{tag}-{pid}-{n}"));
        // create_dir (not _all): a clash must fail, not be adopted.
        fs::create_dir(&cgroup_root)
            .with_context(|| format!("creating {}", cgroup_root.display()))?;
        Ok(Self {
            tools,
            name: format!("icpt-{tag}-{pid}-{n}"),
            cgroups: vec![cgroup_root.clone()],
            cgroup_root,
            with_cgroups,
            pods: Vec::new(),
            netns_names: Vec::new(),
            to_clean: Vec::new(),
            daemon: None,
        })
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// Creates `count` more pods.
    pub fn add(&mut self, count: usize) -> Result<()> {
        let first = self.pods.len();
        let names: Vec<String> = (first..first + count)
            .map(|i| format!("{}-{i}", self.name))
            .collect();
        self.netns_names.extend(names.iter().cloned());
        let adds: Vec<String> = names.iter().map(|n| format!("netns add {n}")).collect();
        ip_batch(&[], &adds)?;
        for (k, name) in names.iter().enumerate() {
            let i = first + k;
            ip_batch(
                &["-n", name],
                &[
                    "link set lo up".to_owned(),
                    format!("addr add {}/32 dev lo", pod_address(i)),
                ],
            )?;
            let netns = interceptor_tests::netns_path(name);
            let netns_inode = fs::metadata(&netns)
                .with_context(|| format!("{}", netns.display()))?
                .ino();
            let cgroup = if self.with_cgroups {
                let dir = self.cgroup_root.join(format!("pod-{i}"));
                fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
                self.cgroups.push(dir.clone());
                Some(dir)
            } else {
                None
            };
            self.pods.push(LightPod {
                netns,
                netns_inode,
                cgroup,
            });
        }
        Ok(())
    }

    /// `interceptor init` of `mode` (eBPF or an iptables backend) into pod `i`, with istio's
    /// default flags (every outbound and inbound port); its wall time.
    pub fn init(&mut self, i: usize, mode: Mode) -> Result<Duration> {
        let pod = &self.pods[i];
        let cgroup = pod
            .cgroup
            .clone()
            .context("a per-pod-mode pod has a cgroup")?;
        let mut args = mode
            .init_args(&cgroup, &pod.netns, &[], true)
            .with_context(|| format!("{mode} has no init"))?;
        if mode == Mode::Ebpf {
            args.extend(self.tools.bpffs_args());
            self.to_clean.push(cgroup);
        }
        let (_, elapsed) = self.tools.interceptor(&args)?;
        Ok(elapsed)
    }

    /// Starts `interceptor daemon` attached at a cgroup of this node; its wall time until it
    /// answers `pod list`.
    pub fn start_daemon(&mut self, workdir: &Path) -> Result<Duration> {
        ensure!(self.daemon.is_none(), "the daemon runs already");
        let cgroup = self.cgroup_root.join("node");
        fs::create_dir(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
        self.cgroups.push(cgroup.clone());
        let socket = workdir.join(format!("{}.sock", self.name));
        self.to_clean.push(cgroup.clone());
        let start = Instant::now();
        let mut cmd = Command::new(&self.tools.interceptor);
        cmd.arg("daemon")
            .arg("--cgroup")
            .arg(&cgroup)
            .arg("--socket")
            .arg(&socket)
            .args(self.tools.bpffs_args())
            .env("INTERCEPTOR_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut process = Process::spawn_unowned(&mut cmd)?;
        loop {
            if let Some(status) = process.try_status()? {
                let out = process.wait(Duration::from_secs(1))?;
                bail!(
                    "interceptor daemon exited ({status}): {}",
                    out.stderr.trim()
                );
            }
            let list = vec![
                "pod".to_owned(),
                "--socket".to_owned(),
                socket.display().to_string(),
                "list".to_owned(),
                "--json".to_owned(),
            ];
            if socket.exists() && self.tools.interceptor(&list).is_ok() {
                break;
            }
            ensure!(
                start.elapsed() < DAEMON_START_TIMEOUT,
                "interceptor daemon did not answer within {DAEMON_START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let elapsed = start.elapsed();
        self.daemon = Some(Daemon { process, socket });
        Ok(elapsed)
    }

    /// `interceptor pod add` of pod `i` to the daemon, with the same flags as `init`; its wall
    /// time.
    pub fn pod_add(&self, i: usize) -> Result<Duration> {
        let daemon = self.daemon.as_ref().context("no daemon")?;
        let mut args: Vec<String> = vec![
            "pod".into(),
            "--socket".into(),
            daemon.socket.display().to_string(),
            "add".into(),
            "--netns".into(),
            self.pods[i].netns.display().to_string(),
            "--namespace".into(),
            POD_NAMESPACE.into(),
            "--name".into(),
            format!("pod-{i}"),
        ];
        args.extend(modes::istio_flags(&[], true));
        let (_, elapsed) = self.tools.interceptor(&args)?;
        Ok(elapsed)
    }

    /// Our programs and maps now, and the machine's.
    pub fn point(&self) -> Result<ScalePoint> {
        let inodes: BTreeSet<u64> = self.pods.iter().map(|p| p.netns_inode).collect();
        let snapshot = Snapshot::take()?;
        let mut ours = snapshot.pinned_under(&self.tools.bpffs);
        ours.programs
            .extend(kernel::attached(&self.cgroup_root, &inodes)?);
        if let Some(daemon) = &self.daemon {
            let held = kernel::held_by(daemon.process.pid())?;
            ours.programs.extend(held.programs);
            ours.maps.extend(held.maps);
        }
        Ok(ScalePoint {
            pods: self.pods.len() as u32,
            ours: snapshot.footprint(&ours),
            machine: snapshot.machine(),
        })
    }

    fn clean(&mut self) {
        let tools = self.tools;
        let clean = |cgroup: &Path| {
            let mut args = vec![
                "clean".to_owned(),
                "--cgroup".to_owned(),
                cgroup.display().to_string(),
            ];
            args.extend(tools.bpffs_args());
            if let Err(e) = tools.interceptor(&args) {
                eprintln!("bench: {e:#}");
            }
        };
        // The daemon first: stopped, its pinned instance (links, maps) goes with `clean`.
        if let Some(mut daemon) = self.daemon.take() {
            daemon.process.kill();
            let _ = fs::remove_file(&daemon.socket);
        }
        for cgroup in self.to_clean.drain(..).rev() {
            clean(&cgroup);
        }
        for dir in self.cgroups.drain(..).rev() {
            if let Err(e) = fs::remove_dir(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                eprintln!("bench: removing cgroup {}: {e}", dir.display());
            }
        }
        let dels: Vec<String> = self
            .netns_names
            .drain(..)
            .map(|n| format!("netns del {n}"))
            .collect();
        if !dels.is_empty()
            && let Err(e) = ip_batch(&["-force"], &dels)
        {
            eprintln!("bench: {e:#}");
        }
    }
}

impl Drop for LightPods<'_> {
    fn drop(&mut self) {
        self.clean();
    }
}

/// The address pod `i` has on `lo` (its namespace is its own: no traffic ever leaves it).
fn pod_address(i: usize) -> String {
    let n = i + 1;
    assert!(n < 1 << 16, "at most 65535 light pods");
    format!("10.202.{}.{}", n >> 8, n & 0xff)
}

/// `ip <global args> -batch -` with one command per line (bounded), failing with its stderr.
fn ip_batch(global: &[&str], commands: &[String]) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(global)
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut process = Process::spawn_unowned(&mut cmd)?;
    {
        let mut stdin = process.take_stdin().context("ip's stdin")?;
        stdin.write_all((commands.join("\n") + "\n").as_bytes())?;
    }
    let finished = process.wait(IP_TIMEOUT)?;
    if !finished.status.success() {
        bail!(
            "`ip {} -batch -` failed ({}): {}",
            global.join(" "),
            finished.status,
            finished.stderr.trim()
        );
    }
    Ok(())
}

/// `settings.init_pods` light pods, each given `interceptor init` of `mode` in turn while the
/// earlier ones stay: the first pod on the node, then the next ones.
pub fn init_series(
    tools: &Tools,
    settings: &Settings,
    round: u32,
    mode: Mode,
) -> Result<Vec<PodInitSample>> {
    let mut pods = LightPods::new(tools, "inits", true)?;
    pods.add(settings.init_pods as usize)?;
    (0..pods.len())
        .map(|i| {
            let elapsed = pods
                .init(i, mode)
                .with_context(|| format!("{mode} init of light pod {}", i + 1))?;
            Ok(PodInitSample {
                round,
                mode,
                nth: i as u32 + 1,
                wall_ms: elapsed.as_secs_f64() * 1e3,
            })
        })
        .collect()
}

/// Enrols pods one after another up to the largest of `settings.scale_pods`, reading the
/// kernel at each of those counts. Per-pod mode stops early when the next count would lock
/// more kernel memory than the budget, judging by what the pods so far cost.
pub fn scale_run(
    tools: &Tools,
    settings: &Settings,
    enrolment: Enrolment,
    check_interrupted: &dyn Fn() -> Result<()>,
) -> Result<ScaleRun> {
    let mut counts = settings.scale_pods.clone();
    counts.sort_unstable();
    counts.dedup();
    let asked = counts.last().copied().unwrap_or(0);
    let per_pod = enrolment == Enrolment::PerPod;
    let mut pods = LightPods::new(tools, if per_pod { "scale" } else { "node" }, per_pod)?;
    let mut run = ScaleRun {
        enrolment,
        flags: modes::istio_flags(&[], true).join(" "),
        pods_asked: asked,
        pods_reached: 0,
        stopped: None,
        daemon_start_ms: None,
        points: Vec::new(),
        enrol_ms: Vec::new(),
    };
    if !per_pod {
        let started = pods.start_daemon(&tools.workdir)?;
        run.daemon_start_ms = Some(started.as_secs_f64() * 1e3);
    }
    run.points.push(pods.point()?);
    let budget = settings
        .scale_memory_budget_bytes
        .min(mem_available_bytes().unwrap_or(u64::MAX) / 2);
    for &target in &counts {
        check_interrupted()?;
        let done = pods.len() as u32;
        if per_pod && let (Some(first), Some(last)) = (run.points.first(), run.points.last()) {
            let pods_so_far = last.pods.saturating_sub(first.pods);
            if pods_so_far > 0 {
                let each =
                    last.ours.bytes().saturating_sub(first.ours.bytes()) / u64::from(pods_so_far);
                let projected = last.ours.bytes() + each * u64::from(target - done);
                if projected > budget {
                    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
                    run.stopped = Some(format!(
                        "stopped at {done} pods: {target} would lock about {:.1} GiB of kernel \
                         memory ({:.1} MiB per pod so far), over the budget of {:.1} GiB",
                        gib(projected),
                        each as f64 / (1 << 20) as f64,
                        gib(budget)
                    ));
                    eprintln!(
                        "bench: {enrolment:?}: {}",
                        run.stopped.as_deref().unwrap_or("")
                    );
                    break;
                }
            }
        }
        pods.add((target - done) as usize)?;
        for i in done as usize..target as usize {
            if i % 100 == 0 {
                check_interrupted()?;
            }
            let elapsed = if per_pod {
                pods.init(i, Mode::Ebpf)
            } else {
                pods.pod_add(i)
            }
            .with_context(|| format!("enrolling light pod {} of {target}", i + 1))?;
            run.enrol_ms.push(elapsed.as_secs_f64() * 1e3);
        }
        let point = pods.point()?;
        eprintln!(
            "bench: {enrolment:?} at {target} pods: ours {} programs, {} maps, {:.1} MiB; \
             machine {} programs",
            point.ours.programs,
            point.ours.maps,
            point.ours.bytes() as f64 / (1 << 20) as f64,
            point.machine.programs
        );
        run.points.push(point);
        run.pods_reached = target;
    }
    Ok(run)
}

fn mem_available_bytes() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn light_pod_addresses_are_distinct_host_addresses() {
        assert_eq!(pod_address(0), "10.202.0.1");
        assert_eq!(pod_address(254), "10.202.0.255");
        assert_eq!(pod_address(255), "10.202.1.0");
        assert_eq!(pod_address(999), "10.202.3.232");
    }
}
