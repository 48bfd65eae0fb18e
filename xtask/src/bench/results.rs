//! `results.json`: every raw figure of a run, and the lookups the report makes over them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::modes::Mode;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub meta: Meta,
    pub settings: Settings,
    /// One per workload run (warm-up excluded).
    pub samples: Vec<Sample>,
    /// One per `interceptor init` (every pod of every measured round).
    pub inits: Vec<InitSample>,
    /// eBPF programs' run statistics, from dedicated runs with `bpf_stats` on.
    pub kernel: Vec<KernelSample>,
    /// `interceptor init` into light pods one after another on a node: the first (nothing of
    /// ours loaded) and the next ones, while the earlier ones stay.
    #[serde(default)]
    pub pod_inits: Vec<PodInitSample>,
    /// Kernel memory and programs as pods are enrolled, in per-pod mode and in node mode.
    #[serde(default)]
    pub scale: Vec<ScaleRun>,
    /// The TCP settings of a fresh network namespace (what the `default` sysctls cases ran
    /// with), read inside one.
    #[serde(default)]
    pub default_sysctls: BTreeMap<String, String>,
    /// What was still pinned in the run's own bpffs after every pod had been cleaned (`None`:
    /// not checked, in runs from before).
    #[serde(default)]
    pub leftover_pins: Option<Vec<String>>,
    /// What a tracer costs: each arm of each round (runs from before have none).
    #[serde(default)]
    pub tracer: Vec<TracerSample>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// UTC, e.g. `2026-11-26T15:30:00Z`.
    pub started: String,
    pub finished: String,
    pub wall_s: f64,
    pub command: String,
    pub quick: bool,
    pub machine: Machine,
    /// Tool name -> version line.
    pub tools: BTreeMap<String, String>,
    /// `git rev-parse HEAD`, with `-dirty` when the work tree differs.
    pub commit: String,
    /// /proc/loadavg (1 min) at the start of each round: other work on the machine shows here.
    pub loadavg: Vec<LoadSample>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub kernel: String,
    pub os: String,
    pub cpu_model: String,
    pub cores: usize,
    pub memory_mib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadSample {
    pub round: u32,
    pub loadavg_1m: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub modes: Vec<Mode>,
    pub baseline: Mode,
    pub rounds: u32,
    pub warmup_s: u32,
    pub duration_s: u32,
    pub keepalive_conns: Vec<u32>,
    pub close_conns: u32,
    pub http_bulk_conns: u32,
    /// wrk threads (fewer when there are fewer connections).
    pub wrk_threads: u32,
    pub cidr_counts: Vec<u32>,
    pub kernel_cost_cidrs: Vec<u32>,
    /// Inbound: connections per wrk run (keep-alive and new connections).
    #[serde(default)]
    pub inbound_conns: u32,
    /// Light pods enrolled one after another for the init figures (the first one included).
    #[serde(default)]
    pub init_pods: u32,
    /// Pod counts at which kernel memory is read as pods are enrolled.
    #[serde(default)]
    pub scale_pods: Vec<u32>,
    /// Kernel memory (bytes_memlock of our objects) per-pod mode may lock at most: the run
    /// stops at the largest count of `scale_pods` that stays under it.
    #[serde(default)]
    pub scale_memory_budget_bytes: u64,
    /// What `tuned` namespaces are set to (`default` ones keep the kernel's values).
    #[serde(default)]
    pub tuned_sysctls: BTreeMap<String, String>,
    /// Body of the small response (bytes), and of the large one for HTTP bulk.
    pub small_body_bytes: usize,
    pub large_body_bytes: usize,
    pub nginx_workers: u32,
    pub iperf_streams: u32,
    /// CPUs of the pod's processes (client, sidecar) and of the server's; empty: not pinned.
    #[serde(default)]
    pub pod_cpus: Vec<usize>,
    #[serde(default)]
    pub server_cpus: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Keep-alive requests for the small response.
    KeepAlive,
    /// `Connection: close`: a new connection per request.
    Close,
    /// Keep-alive requests for the large response.
    HttpBulk,
    /// One iperf3 TCP stream, client to server.
    Iperf3,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::KeepAlive => "keep-alive",
            Workload::Close => "close",
            Workload::HttpBulk => "http-bulk",
            Workload::Iperf3 => "iperf3",
        }
    }
}

/// Which way the measured connections go through the pod.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// The client is the pod's application, the server outside (`-i`, `-p`).
    #[default]
    Outbound,
    /// The client is outside (in the server namespace) and dials the application's port in
    /// the pod, captured by `-b` to the sidecar's inbound listener (`-z`).
    Inbound,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// The TCP settings of the pod's and the server's namespaces.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Sysctls {
    /// `tcp_tw_reuse=1` and ports 1024-65000 in both namespaces: a connection-churning client
    /// never runs out of ports.
    #[default]
    Tuned,
    /// The kernel's defaults of a fresh namespace, as pods run.
    Default,
}

impl Sysctls {
    pub fn name(self) -> &'static str {
        match self {
            Sysctls::Tuned => "tuned",
            Sysctls::Default => "default",
        }
    }
}

/// How a measured pod is set up: which way the load goes, and its namespaces' TCP settings.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Flow {
    #[serde(default)]
    pub direction: Direction,
    #[serde(default)]
    pub sysctls: Sysctls,
}

impl Flow {
    pub const OUTBOUND: Flow = Flow {
        direction: Direction::Outbound,
        sysctls: Sysctls::Tuned,
    };

    pub fn describe(self) -> String {
        format!("{} {}", self.direction.name(), self.sysctls.name())
    }
}

/// What a run is a measurement of (a row of the report, before choosing the mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Case {
    pub workload: Workload,
    /// Concurrent connections (iperf3: streams).
    pub conns: u32,
    /// Excluded CIDRs given to `interceptor init`.
    pub cidrs: u32,
    /// Outbound with tuned sysctls in runs from before these existed.
    #[serde(flatten)]
    pub flow: Flow,
}

impl Case {
    /// An outbound case with tuned namespaces (every case of the first runs).
    pub fn outbound(workload: Workload, conns: u32, cidrs: u32) -> Self {
        Self {
            workload,
            conns,
            cidrs,
            flow: Flow::OUTBOUND,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub round: u32,
    pub mode: Mode,
    #[serde(flatten)]
    pub case: Case,
    /// Seconds since the run started.
    pub at_s: f64,
    pub http: Option<HttpFigures>,
    pub iperf: Option<IperfFigures>,
    pub cpu: CpuFigures,
}

/// wrk's figures (latencies in microseconds; wrk's clock starts when the request is written,
/// so a new connection's handshake is not in them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpFigures {
    pub duration_s: f64,
    pub requests: u64,
    pub bytes: u64,
    pub errors: WrkErrors,
    pub latency_us: Latency,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WrkErrors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub status: u64,
    pub timeout: u64,
}

impl WrkErrors {
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.status + self.timeout
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub mean: f64,
    pub max: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IperfFigures {
    pub duration_s: f64,
    pub bytes: u64,
    pub bits_per_second: f64,
    pub retransmits: u64,
    /// iperf3's own error when the run failed (then the figures are 0): a mode that breaks
    /// the transfer is a result, not a reason to stop the benchmark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// user + system CPU time (µs) spent during the run, from each cgroup's cpu.stat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuFigures {
    /// The pod: client and sidecar.
    pub pod_user_us: u64,
    pub pod_system_us: u64,
    /// The server (nginx or iperf3) in its own cgroup.
    pub server_user_us: u64,
    pub server_system_us: u64,
    /// The whole machine (all CPUs, /proc/stat): time in tasks (user, nice, system), in
    /// interrupts (irq, softirq: the network stack's receive work mostly, charged to no
    /// cgroup), stolen by the hypervisor, and all time. Task time outside the two cgroups is
    /// other work competing with the benchmark.
    #[serde(default)]
    pub machine_task_us: u64,
    #[serde(default)]
    pub machine_irq_us: u64,
    #[serde(default)]
    pub machine_steal_us: u64,
    #[serde(default)]
    pub machine_total_us: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitSample {
    pub round: u32,
    pub mode: Mode,
    pub cidrs: u32,
    /// Wall time of the `interceptor init` process, start to exit.
    pub wall_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelSample {
    pub round: u32,
    pub cidrs: u32,
    /// Outbound in runs from before inbound was measured.
    #[serde(default)]
    pub direction: Direction,
    /// Requests (= connections) wrk completed while the statistics were on.
    pub requests: u64,
    pub programs: Vec<ProgramRuns>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramRuns {
    pub name: String,
    pub run_count: u64,
    pub run_time_ns: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodInitSample {
    pub round: u32,
    pub mode: Mode,
    /// 1: the first pod on the node (nothing of ours loaded); 2, 3...: the next ones, each
    /// while the earlier ones stay.
    pub nth: u32,
    /// Wall time of the `interceptor init` process, fork+exec to exit.
    pub wall_ms: f64,
}

/// Which way pods were enrolled in a scale run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Enrolment {
    /// One `interceptor init` per pod.
    PerPod,
    /// One `interceptor daemon`, one `interceptor pod add` per pod.
    Node,
}

impl Enrolment {
    pub fn name(self) -> &'static str {
        match self {
            Enrolment::PerPod => "per-pod (`init`)",
            Enrolment::Node => "node (`daemon` + `pod add`)",
        }
    }
}

/// Programs and maps and their kernel memory (`bytes_memlock`, as bpftool shows it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Footprint {
    pub programs: u32,
    pub maps: u32,
    pub program_bytes: u64,
    pub map_bytes: u64,
}

impl Footprint {
    pub fn bytes(&self) -> u64 {
        self.program_bytes + self.map_bytes
    }
}

/// What the kernel held at one point of a scale run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScalePoint {
    /// Pods enrolled so far.
    pub pods: u32,
    /// Ours: the programs attached to the run's cgroups and pods' network namespaces, the maps
    /// they use, and the objects the daemon holds open.
    pub ours: Footprint,
    /// Every program and map on the machine (other work loads BPF too).
    pub machine: Footprint,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleRun {
    pub enrolment: Enrolment,
    /// The istio-iptables flags every pod got.
    pub flags: String,
    /// The largest count asked for, and the one reached (smaller when the memory budget
    /// stopped per-pod mode).
    pub pods_asked: u32,
    pub pods_reached: u32,
    /// Why the run stopped before `pods_asked`, if it did.
    #[serde(default)]
    pub stopped: Option<String>,
    /// Node mode: wall time of `interceptor daemon` until it answered `pod list`.
    #[serde(default)]
    pub daemon_start_ms: Option<f64>,
    /// Before the first pod (node mode: with the daemon running), then at each count.
    pub points: Vec<ScalePoint>,
    /// Each pod's `init` or `pod add` wall time, fork+exec to exit, in order.
    pub enrol_ms: Vec<f64>,
}

impl ScaleRun {
    pub fn point(&self, pods: u32) -> Option<&ScalePoint> {
        self.points.iter().find(|p| p.pods == pods)
    }

    /// Kernel memory the pods added, per pod: (at `pods` − before any) / `pods`.
    pub fn bytes_per_pod(&self, pods: u32) -> Option<f64> {
        let before = self.point(0)?;
        let at = self.point(pods)?;
        (pods > 0).then(|| (at.ours.bytes() as f64 - before.ours.bytes() as f64) / f64::from(pods))
    }

    /// What each pod after the first added: (at `pods` − at 1) / (`pods` − 1).
    pub fn bytes_per_further_pod(&self, pods: u32) -> Option<f64> {
        let first = self.point(1)?;
        let at = self.point(pods)?;
        (pods > 1)
            .then(|| (at.ours.bytes() as f64 - first.ours.bytes() as f64) / f64::from(pods - 1))
    }
}

/// A number the report shows for a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    /// Requests (or, with `Connection: close`, connections) per second.
    RequestsPerS,
    P50Us,
    P90Us,
    P99Us,
    /// Pod CPU (user + system) per request, µs.
    PodCpuPerRequestUs,
    /// Server CPU per request, µs.
    ServerCpuPerRequestUs,
    /// Payload throughput, Gbit/s (HTTP bulk: response bytes; iperf3: received).
    Gbps,
    /// Pod CPU seconds per GB moved.
    PodCpuPerGbS,
}

impl Sample {
    pub fn figure(&self, figure: Figure) -> Option<f64> {
        let cpu = &self.cpu;
        let pod_cpu_us = (cpu.pod_user_us + cpu.pod_system_us) as f64;
        let server_cpu_us = (cpu.server_user_us + cpu.server_system_us) as f64;
        let bytes = match (&self.http, &self.iperf) {
            (Some(h), _) => h.bytes as f64,
            (_, Some(i)) => i.bytes as f64,
            _ => return None,
        };
        match (figure, &self.http, &self.iperf) {
            (Figure::RequestsPerS, Some(h), _) => Some(h.requests as f64 / h.duration_s),
            (Figure::P50Us, Some(h), _) => Some(h.latency_us.p50),
            (Figure::P90Us, Some(h), _) => Some(h.latency_us.p90),
            (Figure::P99Us, Some(h), _) => Some(h.latency_us.p99),
            (Figure::PodCpuPerRequestUs, Some(h), _) if h.requests > 0 => {
                Some(pod_cpu_us / h.requests as f64)
            }
            (Figure::ServerCpuPerRequestUs, Some(h), _) if h.requests > 0 => {
                Some(server_cpu_us / h.requests as f64)
            }
            (Figure::Gbps, Some(h), _) => Some(h.bytes as f64 * 8.0 / h.duration_s / 1e9),
            (Figure::Gbps, _, Some(i)) => Some(i.bits_per_second / 1e9),
            (Figure::PodCpuPerGbS, _, _) if bytes > 0.0 => Some(pod_cpu_us / 1e6 / (bytes / 1e9)),
            _ => None,
        }
    }
}

impl Results {
    /// `(round, value)` of a figure for one mode and case, by round.
    pub fn series(&self, mode: Mode, case: Case, figure: Figure) -> Vec<(u32, f64)> {
        let mut out: Vec<(u32, f64)> = self
            .samples
            .iter()
            .filter(|s| s.mode == mode && s.case == case)
            .filter_map(|s| s.figure(figure).map(|v| (s.round, v)))
            .collect();
        out.sort_by_key(|(round, _)| *round);
        out
    }

    pub fn has(&self, mode: Mode, case: Case) -> bool {
        self.samples
            .iter()
            .any(|s| s.mode == mode && s.case == case)
    }

    /// Init wall times (ms) by round for one mode and CIDR count.
    pub fn init_series(&self, mode: Mode, cidrs: u32) -> Vec<(u32, f64)> {
        let mut out: Vec<(u32, f64)> = self
            .inits
            .iter()
            .filter(|i| i.mode == mode && i.cidrs == cidrs)
            .map(|i| (i.round, i.wall_ms))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        out
    }

    /// Wall times (ms) of the `nth` init of light pods, by round.
    pub fn pod_init_series(&self, mode: Mode, nth: impl Fn(u32) -> bool) -> Vec<(u32, f64)> {
        self.pod_inits
            .iter()
            .filter(|i| i.mode == mode && nth(i.nth))
            .map(|i| (i.round, i.wall_ms))
            .collect()
    }

    /// Kernel time of every program of ours per connection (request), by round.
    pub fn kernel_ns_per_connection(&self, direction: Direction, cidrs: u32) -> Vec<(u32, f64)> {
        self.kernel
            .iter()
            .filter(|k| k.direction == direction && k.cidrs == cidrs && k.requests > 0)
            .map(|k| {
                let ns: u64 = k.programs.iter().map(|p| p.run_time_ns).sum();
                (k.round, ns as f64 / k.requests as f64)
            })
            .collect()
    }

    /// One program's kernel time per connection (request), by round.
    pub fn program_ns_per_connection(
        &self,
        program: &str,
        direction: Direction,
        cidrs: u32,
    ) -> Vec<(u32, f64)> {
        self.kernel
            .iter()
            .filter(|k| k.direction == direction && k.cidrs == cidrs && k.requests > 0)
            .filter_map(|k| {
                let p = k.programs.iter().find(|p| p.name == program)?;
                Some((k.round, p.run_time_ns as f64 / k.requests as f64))
            })
            .collect()
    }

    /// Average ns per run of a program by round, at a CIDR count (outbound).
    pub fn program_ns(&self, program: &str, cidrs: u32) -> Vec<(u32, f64)> {
        self.program_ns_in(program, Direction::Outbound, cidrs)
    }

    pub fn program_ns_in(
        &self,
        program: &str,
        direction: Direction,
        cidrs: u32,
    ) -> Vec<(u32, f64)> {
        self.kernel
            .iter()
            .filter(|k| k.direction == direction && k.cidrs == cidrs)
            .filter_map(|k| {
                let p = k.programs.iter().find(|p| p.name == program)?;
                (p.run_count > 0).then(|| (k.round, p.run_time_ns as f64 / p.run_count as f64))
            })
            .collect()
    }

    /// Runs of a program per request (connection), by round, at a CIDR count.
    pub fn program_runs_per_request(
        &self,
        program: &str,
        direction: Direction,
        cidrs: u32,
    ) -> Vec<(u32, f64)> {
        self.kernel
            .iter()
            .filter(|k| k.direction == direction && k.cidrs == cidrs && k.requests > 0)
            .filter_map(|k| {
                let p = k.programs.iter().find(|p| p.name == program)?;
                Some((k.round, p.run_count as f64 / k.requests as f64))
            })
            .collect()
    }

    pub fn program_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .kernel
            .iter()
            .flat_map(|k| k.programs.iter().map(|p| p.name.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_from_before_inbound_and_scale_read_as_outbound_tuned() {
        let sample: Sample = serde_json::from_str(
            r#"{"round":1,"mode":"ebpf","workload":"close","conns":32,"cidrs":0,"at_s":1.5,
                "http":null,"iperf":null,"cpu":{"pod_user_us":1,"pod_system_us":2,
                "server_user_us":3,"server_system_us":4}}"#,
        )
        .unwrap();
        assert_eq!(sample.case, Case::outbound(Workload::Close, 32, 0));
        let kernel: KernelSample =
            serde_json::from_str(r#"{"round":1,"cidrs":0,"requests":10,"programs":[]}"#).unwrap();
        assert_eq!(kernel.direction, Direction::Outbound);
        // And a new one keeps its flow through the flattening.
        let inbound = Sample {
            case: Case {
                flow: Flow {
                    direction: Direction::Inbound,
                    sysctls: Sysctls::Default,
                },
                ..sample.case
            },
            ..sample
        };
        let text = serde_json::to_string(&inbound).unwrap();
        assert!(text.contains(r#""direction":"inbound","sysctls":"default""#));
        let back: Sample = serde_json::from_str(&text).unwrap();
        assert_eq!(back.case, inbound.case);
    }

    fn point(pods: u32, bytes: u64) -> ScalePoint {
        ScalePoint {
            pods,
            ours: Footprint {
                programs: 13,
                maps: 15,
                program_bytes: 0,
                map_bytes: bytes,
            },
            machine: Footprint::default(),
        }
    }

    #[test]
    fn memory_per_pod_counts_from_before_and_from_the_first_pod() {
        let run = ScaleRun {
            enrolment: Enrolment::Node,
            flags: String::new(),
            pods_asked: 100,
            pods_reached: 100,
            stopped: None,
            daemon_start_ms: None,
            // A node's shared 100 MB, the first pod 1 MB more (say, programs it loads), then
            // 10 KB per pod.
            points: vec![
                point(0, 100_000_000),
                point(1, 101_000_000),
                point(100, 101_990_000),
            ],
            enrol_ms: Vec::new(),
        };
        assert_eq!(run.bytes_per_pod(1), Some(1_000_000.0));
        assert_eq!(run.bytes_per_pod(100), Some(19_900.0));
        assert_eq!(run.bytes_per_further_pod(100), Some(10_000.0));
        assert_eq!(run.bytes_per_further_pod(1), None);
        assert_eq!(run.bytes_per_pod(7), None);
    }
}

// --- what a tracer costs (`tracer.rs`) ---------------------------------------------------

/// What runs the pod's interception in one arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arm {
    /// Another build (`--tracer-baseline`), which has no tracing at all.
    Baseline,
    /// This build, no tracer attached.
    Off,
    /// This build, a tracer attached and reading.
    On,
}

impl Arm {
    pub fn name(self) -> &'static str {
        match self {
            Arm::Baseline => "baseline build",
            Arm::Off => "no tracer",
            Arm::On => "tracer attached",
        }
    }
}

/// One arm's figures in one round.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TracerSample {
    pub round: u32,
    pub arm: Arm,
    /// New connections per second (wrk, `Connection: close`).
    pub conns_per_s: f64,
    /// `redirect_connect4`'s runs and kernel time over a second load, statistics on.
    pub connect4_runs: u64,
    pub connect4_ns: u64,
    /// Events the tracer printed and lost (arm `On`).
    #[serde(default)]
    pub traced: u64,
    #[serde(default)]
    pub lost: u64,
}

impl TracerSample {
    pub fn connect4_ns_per_run(&self) -> Option<f64> {
        (self.connect4_runs > 0).then(|| self.connect4_ns as f64 / self.connect4_runs as f64)
    }
}
