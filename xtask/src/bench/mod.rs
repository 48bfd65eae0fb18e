//! `cargo xtask bench`: the interception modes side by side on real traffic, and what a node
//! of pods costs.
//!
//! Each traffic measurement runs in a fresh pod (netns + cgroup) joined to a fresh server
//! namespace by veth (the tests' `Topology`). Outbound: nginx and an iperf3 server on the
//! server side; wrk or iperf3 as an application user and the project's sidecar
//! (`interceptor-sidecar`, uid 1337) in the pod. Inbound: nginx as the application in the pod
//! behind nginx's stream module as the inbound sidecar (uid 1337), wrk in the server namespace
//! dialling the application's port. Only the interception differs between modes. Rounds
//! interleave the modes (A B C A B C ...) so that a slow spell of the machine hits them alike,
//! and ratios are taken round by round. The new-connection load also runs with both namespaces
//! at the kernel's default TCP settings, as pods have them (the other figures use
//! `tcp_tw_reuse=1` and a wide port range, so that the client never runs out of ports).
//!
//! Besides traffic, every round times `interceptor init` into light pods one after another
//! (the first on the node, then the next ones), and the eBPF programs' kernel time per
//! connection (BPF run statistics of the programs attached to the pod, read with bpftool). At
//! the end, pods are enrolled up to a node's worth (per-pod mode with `init`, node mode with
//! `daemon` + `pod add`), reading our programs' and maps' kernel memory with bpftool (see
//! `scale`). Everything is measured through the CLI and the kernel, never through
//! interceptor's own files, so that it measures any layout of the datapath.
//!
//! Writes `bench/results/<timestamp>/`: `results.json` (every raw figure), `report.md`, SVG
//! plots and `performance-section.md` (the README's Performance section, from these figures).

mod kernel;
mod machine;
mod modes;
mod plot;
mod pod;
mod report;
mod results;
mod scale;
mod stats;
mod table;
mod tracer;
mod workdir;
mod workloads;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context as _, Result, bail, ensure};

use interceptor_tests::bpffs::PrivateBpffs;
use kernel::{BpfStats, Snapshot};
pub use modes::Mode;
use pod::{BenchPod, Tools};
use results::{
    Case, Direction, Enrolment, Flow, InitSample, KernelSample, LoadSample, Meta, Results, Sample,
    Settings, Sysctls, Workload,
};
use workdir::{LARGE_PATH, SMALL_PATH};
use workloads::Http;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A short run (2 rounds of 1 s per figure, fewer pods) to check the harness: about 4
    /// minutes.
    #[arg(long)]
    quick: bool,
    /// Measured rounds [default: 7; 2 with --quick].
    #[arg(long)]
    rounds: Option<u32>,
    /// Seconds per measurement (whole seconds, as wrk takes them) [default: 3; 1 with --quick].
    #[arg(long, value_name = "SECONDS")]
    duration: Option<u32>,
    /// Modes to compare, comma-separated [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    modes: Vec<Mode>,
    /// Let the pod and the server run on any CPU (default: the pod's processes on the first
    /// half of the CPUs, the server's on the other half, as if on two machines).
    #[arg(long)]
    no_pin: bool,
    /// The mode every ratio is taken against.
    #[arg(long, value_enum, default_value = "iptables-nft")]
    baseline: Mode,
    /// Results directory [default: bench/results/<UTC timestamp>].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Only redraw report.md, the plots and performance-section.md from DIR/results.json.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["quick", "rounds", "duration", "modes", "out", "no_pin"])]
    report: Option<PathBuf>,
    /// Measure only what a tracer costs (`interceptor trace`): new connections/s and
    /// redirect_connect4's ns per call, with and without a tracer attached.
    #[arg(long)]
    tracer_only: bool,
    /// Another build's `interceptor` (e.g. the one before tracing existed) measured beside
    /// this one in the tracer's rounds.
    #[arg(long, value_name = "PATH")]
    tracer_baseline: Option<PathBuf>,
}

/// What `cargo xtask bench` needs besides the build: the server, the load generators, and
/// bpftool (kernel memory and run statistics of the programs). nginx's stream module (the
/// inbound sidecar) is a package of its own on Debian: see `setup`.
pub const TOOLS: [(&str, &str); 4] = [
    ("nginx", "nginx"),
    ("wrk", "wrk"),
    ("iperf3", "iperf3"),
    ("bpftool", "bpftool"),
];

/// Builds (release) and runs the benchmark, or only redraws a report.
pub fn run(root: &Path, args: BenchArgs, build_release: impl FnOnce() -> Result<()>) -> Result<()> {
    if let Some(dir) = &args.report {
        let path = dir.join("results.json");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let results: Results =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        report::write_all(root, dir, &results)?;
        eprintln!("bench: redrew {}", dir.display());
        return Ok(());
    }
    let settings = settings(&args)?;
    build_release()?;
    let bin = root.join("target/release");
    let workdir = std::env::temp_dir().join(format!("interceptor-bench-{}", std::process::id()));
    let bpffs = PrivateBpffs::mount(
        &Path::new("/run").join(format!("interceptor-bench-{}-bpffs", std::process::id())),
    )?;
    let tools = Tools {
        interceptor: bin.join("interceptor"),
        sidecar: bin.join(interceptor_tests::SIDECAR_BIN),
        probe: bin.join(interceptor_tests::PROBE_BIN),
        workdir: workdir.clone(),
        pod_cpus: settings.pod_cpus.clone(),
        server_cpus: settings.server_cpus.clone(),
        bpffs: bpffs.path.clone(),
    };
    if settings
        .modes
        .iter()
        .any(|m| matches!(m, Mode::IptablesLegacy | Mode::IptablesNft))
    {
        check_iptables_backend(&tools)?;
    }
    let started = machine::unix_now();
    let out = args.out.clone().unwrap_or_else(|| {
        let suffix = if args.quick { "-quick" } else { "" };
        root.join("bench/results")
            .join(format!("{}{suffix}", machine::stamp(started)))
    });
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let _workdir = RemoveOnDrop(workdir.clone());
    workdir::write_workdir(
        &workdir,
        settings.small_body_bytes,
        settings.large_body_bytes,
        settings.nginx_workers,
    )?;
    catch_interrupts();

    let mut results = Results {
        meta: Meta {
            started: machine::iso_utc(started),
            finished: String::new(),
            wall_s: 0.0,
            command: command_line(),
            quick: args.quick,
            machine: machine::machine(),
            tools: machine::tools(),
            commit: machine::commit(root),
            loadavg: Vec::new(),
        },
        settings,
        samples: Vec::new(),
        inits: Vec::new(),
        kernel: Vec::new(),
        pod_inits: Vec::new(),
        scale: Vec::new(),
        default_sysctls: Default::default(),
        leftover_pins: None,
        tracer: Vec::new(),
    };
    let clock = Instant::now();
    let baseline = args
        .tracer_baseline
        .clone()
        .map(|path| tracer::baseline_tools(&tools, path));
    let outcome = if args.tracer_only {
        measure_tracer(&mut results, &tools, baseline.as_ref())
    } else {
        measure(&mut results, &tools, clock)
            .and_then(|()| measure_tracer(&mut results, &tools, baseline.as_ref()))
    };
    // Every pod is gone by now, each after `interceptor clean`: nothing should stay pinned
    // (but what the kernel itself puts in a new bpffs, e.g. `maps.debug`).
    results.leftover_pins = Some(
        bpffs
            .pins()
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
    );
    results.meta.finished = machine::iso_utc(machine::unix_now());
    results.meta.wall_s = clock.elapsed().as_secs_f64();
    // Partial results are still written: a failure late in a long run keeps what it measured.
    let written = write_results(root, &out, &results);
    outcome?;
    written?;
    eprintln!(
        "bench: done in {:.0} s; results in {}",
        results.meta.wall_s,
        out.display()
    );
    Ok(())
}

fn settings(args: &BenchArgs) -> Result<Settings> {
    let modes = if args.modes.is_empty() {
        Mode::ALL.to_vec()
    } else {
        let mut m = args.modes.clone();
        m.sort();
        m.dedup();
        m
    };
    ensure!(
        modes.contains(&args.baseline),
        "--baseline {}: not among the modes run ({})",
        args.baseline,
        modes.iter().map(|m| m.name()).collect::<Vec<_>>().join(",")
    );
    let rounds = args.rounds.unwrap_or(if args.quick { 2 } else { 7 });
    let duration_s = args.duration.unwrap_or(if args.quick { 1 } else { 3 });
    ensure!((1..=50).contains(&rounds), "--rounds {rounds}: use 1 to 50");
    ensure!(
        (1..=60).contains(&duration_s),
        "--duration {duration_s}: use 1 to 60 seconds"
    );
    let cpus = pod::allowed_cpus();
    let (pod_cpus, server_cpus) = if args.no_pin || cpus.len() < 2 {
        (Vec::new(), Vec::new())
    } else {
        let (pod, server) = cpus.split_at(cpus.len().div_ceil(2));
        (pod.to_vec(), server.to_vec())
    };
    Ok(Settings {
        modes,
        baseline: args.baseline,
        rounds,
        warmup_s: if args.quick { 1 } else { 2 },
        duration_s,
        keepalive_conns: vec![1, 32, 64],
        close_conns: 32,
        http_bulk_conns: 4,
        // One event loop per CPU the client may use.
        wrk_threads: if pod_cpus.is_empty() {
            cpus.len().max(1) as u32
        } else {
            pod_cpus.len() as u32
        },
        cidr_counts: vec![0, 100, 1_000, 10_000],
        kernel_cost_cidrs: vec![0, 10_000],
        inbound_conns: 32,
        // The first pod and 20 further ones (quick: 5).
        init_pods: if args.quick { 6 } else { 21 },
        // 2: whether a second pod loads programs of its own.
        scale_pods: if args.quick {
            vec![1, 2, 10, 50]
        } else {
            vec![1, 2, 100, 1_000]
        },
        // Today's per-pod instances lock ~31 MB each: 100 of them fit, 1,000 would not.
        scale_memory_budget_bytes: 4 << 30,
        tuned_sysctls: pod::TUNED_SYSCTLS
            .iter()
            .map(|(k, v)| (k.replace('/', "."), (*v).to_owned()))
            .collect(),
        small_body_bytes: 64,
        large_body_bytes: 1 << 20,
        nginx_workers: 2,
        iperf_streams: 1,
        pod_cpus,
        server_cpus,
    })
}

/// The iptables modes call `interceptor init --backend iptables`: say so plainly when this
/// build has no such backend.
fn check_iptables_backend(tools: &Tools) -> Result<()> {
    let (help, _) = tools.interceptor(&["init".into(), "--help".into()])?;
    if !help.contains("--backend") || !help.contains("--iptables-mode") {
        bail!(
            "this interceptor has no `init --backend iptables --iptables-mode legacy|nft` yet, \
             which the iptables-legacy and iptables-nft modes run; compare the other modes with \
             `cargo xtask bench --modes direct,explicit,ebpf --baseline explicit`"
        );
    }
    Ok(())
}

/// The workloads at one CIDR count: everything without excluded CIDRs, only new connections
/// (what the rules cost) with them.
fn cases(settings: &Settings, cidrs: u32) -> Vec<Case> {
    let case = |workload, conns| Case::outbound(workload, conns, cidrs);
    let mut out = Vec::new();
    if cidrs == 0 {
        out.extend(
            settings
                .keepalive_conns
                .iter()
                .map(|&c| case(Workload::KeepAlive, c)),
        );
    }
    out.push(case(Workload::Close, settings.close_conns));
    if cidrs == 0 {
        out.push(case(Workload::HttpBulk, settings.http_bulk_conns));
        out.push(case(Workload::Iperf3, settings.iperf_streams));
    }
    out
}

/// The flows measured besides outbound with tuned sysctls, each in pods of its own, and their
/// workloads: new connections at the kernel's default TCP settings (outbound and inbound), and
/// inbound keep-alive and new connections with tuned settings.
fn other_flows(settings: &Settings) -> Vec<(Flow, Vec<Case>)> {
    let case = |workload, conns, direction, sysctls| Case {
        workload,
        conns,
        cidrs: 0,
        flow: Flow { direction, sysctls },
    };
    let (outbound, inbound) = (Direction::Outbound, Direction::Inbound);
    let (tuned, default) = (Sysctls::Tuned, Sysctls::Default);
    let c = settings.inbound_conns;
    [
        (
            outbound,
            default,
            vec![case(
                Workload::Close,
                settings.close_conns,
                outbound,
                default,
            )],
        ),
        (
            inbound,
            tuned,
            vec![
                case(Workload::KeepAlive, c, inbound, tuned),
                case(Workload::Close, c, inbound, tuned),
            ],
        ),
        (
            inbound,
            default,
            vec![case(Workload::Close, c, inbound, default)],
        ),
    ]
    .into_iter()
    .map(|(direction, sysctls, cases)| (Flow { direction, sysctls }, cases))
    .collect()
}

/// Runs each case on each pod in turn (A B C A B C), recording the samples.
fn run_cases(
    results: &mut Results,
    pods: &[BenchPod],
    cases: &[Case],
    tools: &Tools,
    round: u32,
    clock: Instant,
) -> Result<()> {
    let settings = results.settings.clone();
    for &case in cases {
        for pod in pods {
            check_interrupted()?;
            let at_s = clock.elapsed().as_secs_f64();
            let sample = run_case(pod, case, &settings, tools, round, at_s)?;
            let outside = sample
                .cpu
                .outside_share()
                .map(|x| format!("  [other work: {:.0}% CPU]", x * 100.0))
                .unwrap_or_default();
            eprintln!(
                "bench: round {round}/{}: {}{outside}",
                settings.rounds,
                describe(&sample)
            );
            results.samples.push(sample);
        }
    }
    Ok(())
}

fn measure(results: &mut Results, tools: &Tools, clock: Instant) -> Result<()> {
    let settings = results.settings.clone();

    eprintln!("bench: warm-up ({} s per mode and load)", settings.warmup_s);
    for &mode in &settings.modes {
        check_interrupted()?;
        let pod = BenchPod::new(mode, 0, Flow::OUTBOUND, tools)?;
        for close in [false, true] {
            let load = Http {
                conns: settings.close_conns,
                threads: settings.wrk_threads,
                close,
                path: SMALL_PATH,
                duration_s: settings.warmup_s,
            };
            workloads::run_wrk(&pod, load, &tools.wrk_script())?;
        }
    }

    for round in 1..=settings.rounds {
        results.meta.loadavg.push(LoadSample {
            round,
            loadavg_1m: machine::loadavg_1m(),
        });
        for &cidrs in &settings.cidr_counts {
            let modes: Vec<Mode> = settings
                .modes
                .iter()
                .copied()
                .filter(|m| cidrs == 0 || m.intercepts())
                .collect();
            if modes.is_empty() {
                continue;
            }
            let mut pods = Vec::new();
            for &mode in &modes {
                check_interrupted()?;
                let pod = BenchPod::new(mode, cidrs, Flow::OUTBOUND, tools)?;
                if let Some(wall_ms) = pod.init_ms {
                    results.inits.push(InitSample {
                        round,
                        mode,
                        cidrs,
                        wall_ms,
                    });
                }
                pods.push(pod);
            }
            // A B C A B C: each figure is taken for every mode within seconds.
            run_cases(
                results,
                &pods,
                &cases(&settings, cidrs),
                tools,
                round,
                clock,
            )?;
        }
        for (flow, cases) in other_flows(&settings) {
            let mut pods = Vec::new();
            for &mode in &settings.modes {
                check_interrupted()?;
                pods.push(BenchPod::new(mode, 0, flow, tools)?);
            }
            if flow.sysctls == Sysctls::Default && results.default_sysctls.is_empty() {
                results.default_sysctls = pods[0]
                    .topology()
                    .run_in(interceptor_tests::Side::Pod, pod::read_tcp_sysctls)?;
            }
            run_cases(results, &pods, &cases, tools, round, clock)?;
        }
        if settings.modes.contains(&Mode::Ebpf) {
            let costs = settings
                .kernel_cost_cidrs
                .iter()
                .map(|&c| (c, Direction::Outbound))
                .chain([(0, Direction::Inbound)]);
            for (cidrs, direction) in costs {
                check_interrupted()?;
                let sample = kernel_cost(tools, &settings, round, cidrs, direction)?;
                results.kernel.push(sample);
            }
        }
        for mode in [Mode::Ebpf, Mode::IptablesNft] {
            if settings.modes.contains(&mode) {
                check_interrupted()?;
                let inits = scale::init_series(tools, &settings, round, mode)?;
                let ms: Vec<f64> = inits.iter().map(|i| i.wall_ms).collect();
                eprintln!(
                    "bench: round {round}/{}: {mode} init into {} light pods: first {:.1} ms, \
                     next median {:.1} ms",
                    settings.rounds,
                    ms.len(),
                    ms.first().copied().unwrap_or(f64::NAN),
                    stats::Summary::of(ms.iter().skip(1).copied()).map_or(f64::NAN, |s| s.median)
                );
                results.pod_inits.extend(inits);
            }
        }
    }
    if settings.modes.contains(&Mode::Ebpf) {
        for enrolment in [Enrolment::PerPod, Enrolment::Node] {
            check_interrupted()?;
            eprintln!(
                "bench: scale, {}: light pods up to {:?}",
                enrolment.name(),
                settings.scale_pods
            );
            let run = scale::scale_run(tools, &settings, enrolment, &check_interrupted)?;
            results.scale.push(run);
        }
    }
    Ok(())
}

/// The tracer's arms, in turns within each round (eBPF only).
fn measure_tracer(results: &mut Results, tools: &Tools, baseline: Option<&Tools>) -> Result<()> {
    let settings = results.settings.clone();
    if !settings.modes.contains(&Mode::Ebpf) {
        return Ok(());
    }
    for round in 1..=settings.rounds {
        // With --tracer-only these are the only rounds: the report's load averages come from here.
        if !results.meta.loadavg.iter().any(|s| s.round == round) {
            results.meta.loadavg.push(LoadSample {
                round,
                loadavg_1m: machine::loadavg_1m(),
            });
        }
        for arm in tracer::arms(round, baseline.is_some()) {
            check_interrupted()?;
            let arm_tools = match (arm, baseline) {
                (results::Arm::Baseline, Some(b)) => b,
                _ => tools,
            };
            let sample = tracer::measure(arm_tools, &settings, round, arm)?;
            eprintln!(
                "bench: round {round}/{}: tracer, {:<16} {:>8.0} conn/s  redirect_connect4 \
                 {:.0} ns/call{}",
                settings.rounds,
                arm.name(),
                sample.conns_per_s,
                sample.connect4_ns_per_run().unwrap_or(f64::NAN),
                if arm == results::Arm::On {
                    format!("  ({} events traced, {} lost)", sample.traced, sample.lost)
                } else {
                    String::new()
                }
            );
            results.tracer.push(sample);
        }
    }
    Ok(())
}

fn run_case(
    pod: &BenchPod,
    case: Case,
    settings: &Settings,
    tools: &Tools,
    round: u32,
    at_s: f64,
) -> Result<Sample> {
    let http = |close, path| Http {
        conns: case.conns,
        threads: settings.wrk_threads,
        close,
        path,
        duration_s: settings.duration_s,
    };
    let (http, iperf, cpu) = match case.workload {
        Workload::KeepAlive | Workload::Close | Workload::HttpBulk => {
            let load = match case.workload {
                Workload::KeepAlive => http(false, SMALL_PATH),
                Workload::Close => http(true, SMALL_PATH),
                _ => http(false, LARGE_PATH),
            };
            let (figures, cpu) = workloads::run_wrk(pod, load, &tools.wrk_script())
                .with_context(|| format!("{} {}", pod.mode, case.workload.name()))?;
            (Some(figures), None, cpu)
        }
        Workload::Iperf3 => {
            let (figures, cpu) = workloads::run_iperf3(pod, settings.duration_s)
                .with_context(|| format!("{} iperf3", pod.mode))?;
            (None, Some(figures), cpu)
        }
    };
    Ok(Sample {
        round,
        mode: pod.mode,
        case,
        at_s,
        http,
        iperf,
        cpu,
    })
}

fn describe(s: &Sample) -> String {
    let what = format!(
        "{:<15} {:<16} {:<10} c{:<3} cidrs={:<6}",
        s.mode.name(),
        s.case.flow.describe(),
        s.case.workload.name(),
        s.case.conns,
        s.case.cidrs
    );
    match (&s.http, &s.iperf) {
        (Some(h), _) if s.case.workload == Workload::HttpBulk => format!(
            "{what} {:.2} Gbit/s",
            h.bytes as f64 * 8.0 / h.duration_s / 1e9
        ),
        (Some(h), _) => format!(
            "{what} {:>8.0} req/s  p50 {:>6.0} us  p99 {:>6.0} us{}",
            h.requests as f64 / h.duration_s,
            h.latency_us.p50,
            h.latency_us.p99,
            match h.errors.total() {
                0 => String::new(),
                n => format!("  ({n} errors)"),
            }
        ),
        (_, Some(i)) => match &i.error {
            Some(e) => format!("{what} failed: {e}"),
            None => format!("{what} {:.2} Gbit/s", i.bits_per_second / 1e9),
        },
        _ => what,
    }
}

/// The eBPF programs' kernel time, from the kernel's own run statistics, over a
/// new-connection-per-request load in a pod of its own (the statistics cost time on every run,
/// so they are off while the other figures are taken). The programs are those attached to the
/// pod's cgroup and network namespace, by the kernel's account (bpftool), whatever their names.
fn kernel_cost(
    tools: &Tools,
    settings: &Settings,
    round: u32,
    cidrs: u32,
    direction: Direction,
) -> Result<KernelSample> {
    let flow = Flow {
        direction,
        sysctls: Sysctls::Tuned,
    };
    let pod = BenchPod::new(Mode::Ebpf, cidrs, flow, tools)?;
    let programs = kernel::attached(
        &pod.topology().pod_cgroup,
        &BTreeSet::from([pod.netns_inode()?]),
    )?;
    ensure!(
        !programs.is_empty(),
        "the kernel shows no program attached to the eBPF pod's cgroup or namespace"
    );
    let stats = BpfStats::enable()?;
    let before = Snapshot::take()?.runs(&programs);
    let load = Http {
        conns: if direction == Direction::Inbound {
            settings.inbound_conns
        } else {
            settings.close_conns
        },
        threads: settings.wrk_threads,
        close: true,
        path: SMALL_PATH,
        duration_s: settings.duration_s,
    };
    let (figures, _) = workloads::run_wrk(&pod, load, &tools.wrk_script())?;
    let after = Snapshot::take()?.runs(&programs);
    drop(stats);
    let programs = kernel::runs_since(&after, &before);
    let total_ns: u64 = programs.iter().map(|p| p.run_time_ns).sum();
    eprintln!(
        "bench: round {round}/{}: kernel cost, {} {cidrs} CIDRs: {:.0} ns per connection in all \
         programs ({} connections)",
        settings.rounds,
        direction.name(),
        total_ns as f64 / figures.requests.max(1) as f64,
        figures.requests
    );
    for p in programs.iter().filter(|p| p.run_count > 0) {
        eprintln!(
            "bench:   {} {:.0} ns/run, {:.2} runs per connection",
            p.name,
            p.run_time_ns as f64 / p.run_count as f64,
            p.run_count as f64 / figures.requests.max(1) as f64
        );
    }
    Ok(KernelSample {
        round,
        cidrs,
        direction,
        requests: figures.requests,
        programs,
    })
}

fn write_results(root: &Path, out: &Path, results: &Results) -> Result<()> {
    let path = out.join("results.json");
    fs::write(&path, serde_json::to_string_pretty(results)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    report::write_all(root, out, results)
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("cargo xtask {}", args.join(" "))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Ctrl-C stops the run between measurements, so that every pod is cleaned up (the signal also
/// ends the running wrk, whose measurement then fails).
fn catch_interrupts() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            libc::signal(
                signal,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_scaling_rounds_measure_only_new_connections() {
        let args = BenchArgs {
            quick: true,
            no_pin: false,
            rounds: None,
            duration: None,
            modes: vec![],
            baseline: Mode::IptablesNft,
            out: None,
            report: None,
            tracer_only: false,
            tracer_baseline: None,
        };
        let s = settings(&args).unwrap();
        assert_eq!((s.rounds, s.duration_s), (2, 1));
        assert_eq!(cases(&s, 0).len(), 6);
        let scaled = cases(&s, 1000);
        assert_eq!(scaled.len(), 1);
        assert_eq!(scaled[0].workload, Workload::Close);
        // Inbound and default sysctls: new connections each, keep-alive only inbound tuned.
        let flows = other_flows(&s);
        assert_eq!(flows.len(), 3);
        for (flow, cases) in &flows {
            assert!(cases.iter().all(|c| c.flow == *flow && c.cidrs == 0));
            assert!(cases.iter().any(|c| c.workload == Workload::Close));
            let keep_alive = cases.iter().any(|c| c.workload == Workload::KeepAlive);
            assert_eq!(
                keep_alive,
                *flow
                    == Flow {
                        direction: Direction::Inbound,
                        sysctls: Sysctls::Tuned
                    }
            );
        }
        assert_eq!(s.scale_pods, vec![1, 2, 10, 50]);
        let bad = BenchArgs {
            modes: vec![Mode::Ebpf],
            ..args
        };
        assert!(settings(&bad).is_err());
    }
}
