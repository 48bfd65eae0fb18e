//! One measured set-up: a fresh pod and server (the tests' [`Topology`]), the mode's
//! interception, and either (outbound) nginx and an iperf3 server on the server side with the
//! project's sidecar in the pod, or (inbound) nginx as the application in the pod behind a stock
//! TCP proxy as the inbound sidecar (nginx's stream module, uid 1337), dialled from the server
//! side. A fresh one per mode, flow and round, so that no mode runs in a namespace another mode
//! touched (a nat table, once loaded, leaves conntrack hooks registered in its namespace).

use std::ffi::OsStr;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use interceptor_tests::{Identity, Place, ProbeOptions, Process, Side, Topology};

use super::modes::{self, Mode};
use super::results::{CpuFigures, Direction, Flow, Sysctls};
use super::workdir;

/// Bound for a server or the sidecar to listen, and for `interceptor` to finish.
const START_TIMEOUT: Duration = Duration::from_secs(10);
const INTERCEPTOR_TIMEOUT: Duration = Duration::from_secs(60);

/// The binaries and the files every pod shares.
#[derive(Debug)]
pub struct Tools {
    pub interceptor: PathBuf,
    pub sidecar: PathBuf,
    pub probe: PathBuf,
    /// nginx.conf, the wrk script, the large response: readable by the unprivileged client and
    /// nginx workers.
    pub workdir: PathBuf,
    /// CPUs the pod's processes (client, sidecar) and the server's run on; empty: anywhere.
    pub pod_cpus: Vec<usize>,
    pub server_cpus: Vec<usize>,
    /// A bpffs mounted for this run only, which every eBPF `init`, `clean` and `daemon` is
    /// given: what the run pins is apart from anything else on the machine (other tests'
    /// pods, a node datapath they would share), and goes with the mount at the end.
    pub bpffs: PathBuf,
}

impl Tools {
    pub fn nginx_conf(&self, name: &str) -> PathBuf {
        self.workdir.join(name)
    }

    pub fn wrk_script(&self) -> PathBuf {
        self.workdir.join("report.lua")
    }

    /// `--bpffs <the run's own>`, for the eBPF backend's commands.
    pub fn bpffs_args(&self) -> [String; 2] {
        ["--bpffs".to_owned(), self.bpffs.display().to_string()]
    }

    /// Runs `interceptor <args>` (bounded), failing with its stderr; returns its stdout and
    /// its wall time, start to exit.
    pub fn interceptor(&self, args: &[String]) -> Result<(String, Duration)> {
        let mut cmd = Command::new(&self.interceptor);
        cmd.args(args)
            .env("INTERCEPTOR_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut process = Process::spawn_unowned(&mut cmd)?;
        // Polled finely (Process::wait polls every 2 ms): this is the set-up cost figure.
        while process.try_status()?.is_none() && start.elapsed() < INTERCEPTOR_TIMEOUT {
            std::thread::sleep(Duration::from_micros(100));
        }
        let elapsed = start.elapsed();
        let finished = process
            .wait(Duration::ZERO)
            .with_context(|| format!("interceptor {}", args.first().map_or("", |s| s.as_str())))?;
        if !finished.status.success() {
            bail!(
                "`interceptor {}` failed ({}): {}",
                shorten(&args.join(" ")),
                finished.status,
                finished.stderr.trim()
            );
        }
        Ok((finished.stdout, elapsed))
    }
}

/// A command line with 10,000 CIDRs is unreadable in an error message.
fn shorten(text: &str) -> String {
    if text.len() <= 300 {
        return text.to_owned();
    }
    let mut end = 300;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}

pub struct BenchPod<'t> {
    pub mode: Mode,
    pub cidrs: u32,
    pub flow: Flow,
    /// Wall time of `interceptor init`, when the mode has one.
    pub init_ms: Option<f64>,
    tools: &'t Tools,
    server_cgroup: PathBuf,
    /// `interceptor clean` must run before the cgroup goes: the pins outlive it.
    attached_ebpf: bool,
    /// Killed before the topology is dropped (fields drop in order).
    processes: Vec<Process>,
    topo: Topology,
}

impl<'t> BenchPod<'t> {
    pub fn new(mode: Mode, cidrs: u32, flow: Flow, tools: &'t Tools) -> Result<Self> {
        let topo = Topology::new(mode.tag())?;
        let server_cgroup = topo.create_cgroup("server")?;
        let mut pod = Self {
            mode,
            cidrs,
            flow,
            init_ms: None,
            tools,
            server_cgroup,
            attached_ebpf: false,
            processes: Vec::new(),
            topo,
        };
        pod.set_up().with_context(|| {
            format!(
                "setting up {mode} ({}) with {cidrs} excluded CIDRs",
                flow.describe()
            )
        })?;
        Ok(pod)
    }

    fn set_up(&mut self) -> Result<()> {
        if self.flow.sysctls == Sysctls::Tuned {
            for side in [Side::Pod, Side::Server] {
                self.topo.run_in(side, tune_netns)??;
            }
        }
        match self.flow.direction {
            Direction::Outbound => self.start_outbound()?,
            Direction::Inbound => self.start_inbound()?,
        }
        let cidr_list = modes::excluded_cidrs(self.cidrs);
        let netns = self.topo.netns_path(Side::Pod);
        let inbound = self.flow.direction == Direction::Inbound;
        if let Some(mut args) =
            self.mode
                .init_args(&self.topo.pod_cgroup, &netns, &cidr_list, inbound)
        {
            self.attached_ebpf = self.mode.is_ebpf();
            if self.attached_ebpf {
                args.extend(self.tools.bpffs_args());
            }
            let (_, elapsed) = self.tools.interceptor(&args)?;
            self.init_ms = Some(elapsed.as_secs_f64() * 1e3);
        }
        self.check_path()
    }

    /// nginx as the application in the pod and, with a sidecar, nginx's stream module as the
    /// inbound sidecar on the capture port (uid 1337, so that the eBPF datapath registers its
    /// listener), both started before `init`, as in a pod whose init container re-runs.
    fn start_inbound(&mut self) -> Result<()> {
        let cmd = self.nginx(Side::Pod, Identity::ROOT, workdir::APP_CONF, "app")?;
        self.start(cmd, &[SocketAddr::from(([0, 0, 0, 0], modes::APP_PORT))])?;
        if self.mode.has_sidecar() {
            let cmd = self.nginx(
                Side::Pod,
                Identity::PROXY,
                workdir::INBOUND_SIDECAR_CONF,
                "sidecar",
            )?;
            let port = modes::INBOUND_CAPTURE_PORT;
            self.start(cmd, &[SocketAddr::from(([0, 0, 0, 0], port))])?;
        }
        Ok(())
    }

    /// `nginx -c <conf>` in `side` as `identity`, its pid file in the shared run directory,
    /// errors on stderr (`-e`: also before the configuration is read, so that an unprivileged
    /// nginx never tries the package's log file).
    fn nginx(&self, side: Side, identity: Identity, conf: &str, role: &str) -> Result<Command> {
        let pid_file = self
            .tools
            .workdir
            .join(workdir::RUN_DIR)
            .join(format!("{}.{role}.pid", self.topo.name));
        let mut cmd = self.command(side, identity, "nginx")?;
        cmd.arg("-c")
            .arg(self.tools.nginx_conf(conf))
            .arg("-p")
            .arg(&self.tools.workdir)
            .args(["-e", "stderr", "-g"])
            .arg(format!("pid {};", pid_file.display()))
            .stderr(Stdio::piped());
        Ok(cmd)
    }

    fn start_outbound(&mut self) -> Result<()> {
        let server_ip = self.topo.server_ip;

        let cmd = self.nginx(Side::Server, Identity::ROOT, workdir::SERVER_CONF, "server")?;
        self.start(cmd, &[SocketAddr::from(([0, 0, 0, 0], modes::HTTP_PORT))])?;

        let mut cmd = self.command(Side::Server, Identity::ROOT, "iperf3")?;
        cmd.args([
            "-s",
            "-p",
            &modes::IPERF_PORT.to_string(),
            "-B",
            &server_ip.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        self.start(cmd, &[SocketAddr::from((server_ip, modes::IPERF_PORT))])?;

        if self.mode.has_sidecar() {
            let mut cmd = self
                .topo
                .command(&Place::Pod, Identity::PROXY, &self.tools.sidecar)?;
            let ports = [
                modes::CAPTURE_PORT,
                modes::EXPLICIT_HTTP_PORT,
                modes::EXPLICIT_IPERF_PORT,
            ];
            for port in ports {
                cmd.args(["--listen", &port.to_string()]);
            }
            cmd.args([
                "--upstream",
                &format!(
                    "{}={server_ip}:{}",
                    modes::EXPLICIT_HTTP_PORT,
                    modes::HTTP_PORT
                ),
                "--upstream",
                &format!(
                    "{}={server_ip}:{}",
                    modes::EXPLICIT_IPERF_PORT,
                    modes::IPERF_PORT
                ),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
            let addrs: Vec<SocketAddr> = ports
                .iter()
                .map(|&p| SocketAddr::from(([0, 0, 0, 0], p)))
                .collect();
            self.start(cmd, &addrs)?;
        }
        Ok(())
    }

    fn start(&mut self, mut cmd: Command, listening: &[SocketAddr]) -> Result<()> {
        let mut process = self.spawn(&mut cmd)?;
        for &addr in listening {
            if let Err(e) = process.wait_listening(addr, START_TIMEOUT) {
                let stderr = process.wait(Duration::from_millis(100)).map(|f| f.stderr);
                bail!("{e:#}: {}", stderr.unwrap_or_default().trim());
            }
        }
        self.processes.push(process);
        Ok(())
    }

    /// Where the load's client runs: the pod's application (outbound), or outside the pod, in
    /// the server namespace (inbound).
    pub fn client_side(&self) -> Side {
        match self.flow.direction {
            Direction::Outbound => Side::Pod,
            Direction::Inbound => Side::Server,
        }
    }

    /// What the HTTP client dials.
    pub fn http_target(&self) -> SocketAddr {
        match self.flow.direction {
            Direction::Outbound => self.mode.http_target(self.topo.server_ip),
            Direction::Inbound => self.mode.inbound_target(self.topo.pod_ip),
        }
    }

    /// One request to nginx's `/whoami` (which answers the client address it saw) proves the
    /// mode's path. Outbound: `direct` shows the client's own port, every other mode the
    /// sidecar's. Inbound: `direct` shows the client's address, every other mode the sidecar's
    /// connection from loopback.
    fn check_path(&self) -> Result<()> {
        let target = self.http_target();
        let options = ProbeOptions {
            send: Some(format!("GET /whoami HTTP/1.0\r\nHost: {target}\r\n\r\n")),
            timeout: Duration::from_secs(5),
            ..ProbeOptions::default()
        };
        let mut cmd = self.command(self.client_side(), Identity::APP, &self.tools.probe)?;
        cmd.args(options.args(target))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let finished = self.spawn(&mut cmd)?.wait(Duration::from_secs(10))?;
        let result = interceptor_tests::ProbeResult::parse(&finished.stdout)?;
        let seen: SocketAddr = result
            .lines
            .last()
            .and_then(|l| l.trim().parse().ok())
            .with_context(|| format!("no answer from nginx through {}: {result:?}", self.mode))?;
        let local = result.local.context("the probe's own address")?;
        let via_sidecar = match self.flow.direction {
            Direction::Outbound => {
                ensure!(
                    seen.ip() == self.topo.pod_ip,
                    "{}: nginx saw {seen}, not the pod",
                    self.mode
                );
                seen.port() != local.port()
            }
            Direction::Inbound => {
                ensure!(
                    seen == local || seen.ip().is_loopback(),
                    "{} inbound: the application saw {seen}, neither the client ({local}) nor \
                     the sidecar on loopback",
                    self.mode
                );
                seen.ip().is_loopback()
            }
        };
        ensure!(
            via_sidecar == self.mode.has_sidecar(),
            "{} {}: the connection {} the sidecar (probe {local}, nginx saw {seen})",
            self.mode,
            self.flow.direction.name(),
            if via_sidecar {
                "went through"
            } else {
                "bypassed"
            }
        );
        Ok(())
    }

    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// A command in the pod (its netns and cgroup) or on the server side (the server's netns
    /// and cgroup), on that side's CPUs. Spawn it with [`BenchPod::spawn`].
    pub fn command(
        &self,
        side: Side,
        identity: Identity,
        program: impl AsRef<OsStr>,
    ) -> Result<Command> {
        let (place, cpus) = match side {
            Side::Pod => (Place::Pod, &self.tools.pod_cpus),
            Side::Server => (
                Place::ServerNetns {
                    cgroup: self.server_cgroup.clone(),
                },
                &self.tools.server_cpus,
            ),
        };
        let mut cmd = self.topo.command(&place, identity, program)?;
        pin(&mut cmd, cpus);
        Ok(cmd)
    }

    /// Spawns `cmd`; it is killed with the pod at the latest.
    pub fn spawn(&self, cmd: &mut Command) -> Result<Process> {
        self.topo.spawn(cmd)
    }

    /// CPU time used so far by the pod's and the server's cgroups.
    pub fn cpu(&self) -> Result<CpuFigures> {
        let (pod_user_us, pod_system_us) = cpu_stat(&self.topo.pod_cgroup)?;
        let (server_user_us, server_system_us) = cpu_stat(&self.server_cgroup)?;
        let text = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let machine = parse_proc_stat(&text).context("/proc/stat: no cpu line")?;
        Ok(CpuFigures {
            pod_user_us,
            pod_system_us,
            server_user_us,
            server_system_us,
            machine_task_us: machine.task,
            machine_irq_us: machine.irq,
            machine_steal_us: machine.steal,
            machine_total_us: machine.total,
        })
    }

    /// The inode of the pod's network namespace (what the kernel's netns links name).
    pub fn netns_inode(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt as _;
        let path = self.topo.netns_path(Side::Pod);
        Ok(fs::metadata(&path)
            .with_context(|| format!("{}", path.display()))?
            .ino())
    }
}

impl Drop for BenchPod<'_> {
    fn drop(&mut self) {
        if self.attached_ebpf {
            let mut args = vec![
                "clean".to_owned(),
                "--cgroup".to_owned(),
                self.topo.pod_cgroup.display().to_string(),
            ];
            args.extend(self.tools.bpffs_args());
            if let Err(e) = self.tools.interceptor(&args) {
                eprintln!("bench: {e:#}");
            }
        }
    }
}

/// Restricts `cmd` (and its threads and children) to `cpus`, in the child before exec.
fn pin(cmd: &mut Command, cpus: &[usize]) {
    if cpus.is_empty() {
        return;
    }
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: CPU_SET only sets a bit of `set`, indexing its array with bounds checks.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    let hook = move || {
        // SAFETY: plain syscall on the calling process with a set owned by the closure.
        let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: the hook makes one async-signal-safe syscall and allocates nothing.
    unsafe { cmd.pre_exec(hook) };
}

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity writes at most the size given, that of `set`.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET only reads a bit of `set`, and c is below CPU_SETSIZE.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// What `tuned` namespaces get, identical in both namespaces and every mode: a
/// new-connection-per-request load reuses ports faster than TIME_WAIT frees them.
pub const TUNED_SYSCTLS: [(&str, &str); 2] = [
    ("net/ipv4/tcp_tw_reuse", "1"),
    ("net/ipv4/ip_local_port_range", "1024 65000"),
];

fn tune_netns() -> Result<()> {
    for (key, value) in TUNED_SYSCTLS {
        let path = Path::new("/proc/sys").join(key);
        fs::write(&path, value).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The values of the tuned sysctls (and conntrack's TIME_WAIT timeout) as the namespace
/// this thread is in has them.
pub fn read_tcp_sysctls() -> std::collections::BTreeMap<String, String> {
    TUNED_SYSCTLS
        .iter()
        .map(|(k, _)| *k)
        .chain(["net/netfilter/nf_conntrack_tcp_timeout_time_wait"])
        .filter_map(|key| {
            let value = fs::read_to_string(Path::new("/proc/sys").join(key)).ok()?;
            Some((
                key.replace('/', "."),
                value.split_whitespace().collect::<Vec<_>>().join(" "),
            ))
        })
        .collect()
}

/// `(user_usec, system_usec)` from a cgroup's cpu.stat.
pub fn cpu_stat(cgroup: &Path) -> Result<(u64, u64)> {
    let path = cgroup.join("cpu.stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_cpu_stat(&text).with_context(|| format!("{}: no user_usec/system_usec", path.display()))
}

fn parse_cpu_stat(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
    };
    Some((field("user_usec")?, field("system_usec")?))
}

/// Time of all CPUs from /proc/stat, µs.
#[derive(Debug, PartialEq, Eq)]
struct MachineTimes {
    task: u64,
    irq: u64,
    steal: u64,
    total: u64,
}

/// Reads /proc/stat's first line (USER_HZ ticks; guest time is inside user already).
fn parse_proc_stat(text: &str) -> Option<MachineTimes> {
    let ticks: Vec<u64> = text
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = *ticks.get(..8)? else {
        return None;
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let us = |t: u64| t * 1_000_000 / hz;
    Some(MachineTimes {
        task: us(user + nice + system),
        irq: us(irq + softirq),
        steal: us(steal),
        total: us(user + nice + system + idle + iowait + irq + softirq + steal),
    })
}

impl CpuFigures {
    pub fn since(self, before: CpuFigures) -> CpuFigures {
        CpuFigures {
            pod_user_us: self.pod_user_us.saturating_sub(before.pod_user_us),
            pod_system_us: self.pod_system_us.saturating_sub(before.pod_system_us),
            server_user_us: self.server_user_us.saturating_sub(before.server_user_us),
            server_system_us: self
                .server_system_us
                .saturating_sub(before.server_system_us),
            machine_task_us: self.machine_task_us.saturating_sub(before.machine_task_us),
            machine_irq_us: self.machine_irq_us.saturating_sub(before.machine_irq_us),
            machine_steal_us: self
                .machine_steal_us
                .saturating_sub(before.machine_steal_us),
            machine_total_us: self
                .machine_total_us
                .saturating_sub(before.machine_total_us),
        }
    }

    /// The share of the machine's CPU time spent in tasks outside the pod and the server
    /// (other work competing with the benchmark), or `None` without machine figures.
    pub fn outside_share(&self) -> Option<f64> {
        if self.machine_total_us == 0 || self.machine_task_us == 0 {
            return None;
        }
        let ours =
            self.pod_user_us + self.pod_system_us + self.server_user_us + self.server_system_us;
        Some(self.machine_task_us.saturating_sub(ours) as f64 / self.machine_total_us as f64)
    }

    /// The share the hypervisor took (steal), or `None` without machine figures.
    pub fn steal_share(&self) -> Option<f64> {
        (self.machine_total_us > 0 && self.machine_task_us > 0)
            .then(|| self.machine_steal_us as f64 / self.machine_total_us as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_stat() {
        let text = "usage_usec 1035\nuser_usec 830\nsystem_usec 204\nnr_periods 0\n";
        assert_eq!(parse_cpu_stat(text), Some((830, 204)));
        assert_eq!(parse_cpu_stat("usage_usec 1\n"), None);
    }

    #[test]
    fn reads_proc_stat() {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        let text = "cpu  100 0 50 800 10 0 30 20 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        let us = |t: u64| t * 1_000_000 / hz;
        assert_eq!(
            parse_proc_stat(text),
            Some(MachineTimes {
                task: us(150),
                irq: us(30),
                steal: us(20),
                total: us(1010),
            })
        );
        assert_eq!(parse_proc_stat("intr 1 2\n"), None);
    }
}
