//! Faults, on the real kernel, the way a busy node has them: the node daemon killed with
//! SIGKILL at random moments and restarted, pods added and removed by the hundred meanwhile,
//! per-pod `init`s racing `clean`s and killed half-way, and pods deleted the way a runtime
//! deletes them (cgroup and network namespace removed, nobody told). What must hold: the pods
//! that stay registered never lose a connection; `status` never lists as live a pod that is
//! not intercepted; and once everything is gone the bpffs (a private one) is empty and the
//! kernel holds no BPF program, map or link the test made (`kernel::left_since`: alone on the
//! machine, as on CI, its counts are back to what they were).
//!
//! Every loop is bounded in time; the random choices come from a seed the test prints
//! (`INTERCEPTOR_CHAOS_SEED` replays one). These tests look at the kernel's BPF objects, so
//! they run one at a time.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use interceptor_tests::bpffs::PrivateBpffs;
use interceptor_tests::cni_node::{CniNode, Pod};
use interceptor_tests::kernel::{BpfIds, bpf_ids, left_since};
use interceptor_tests::light_pod::LightPod;
use interceptor_tests::{
    Finished, Identity, LoopSummary, Process, Route, eventually, interceptor_bin, route_of,
};
use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

/// How long the faults go on.
const CHAOS: Duration = Duration::from_secs(60);
/// Where the pods' connections go: redirected to their sidecar, which answers first.
const TARGET: ([u8; 4], u16) = ([10, 97, 0, 1], 80);

/// xorshift64*: enough randomness for choosing moments, and replayable.
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let seed = std::env::var("INTERCEPTOR_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
                    | 1
            });
        eprintln!("chaos seed: INTERCEPTOR_CHAOS_SEED={seed}");
        Rng(seed)
    }

    fn fork(&mut self) -> Rng {
        Rng(self.next() | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

fn cgroup_id(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata(path)?.ino())
}

/// After everything is gone: one `clean` (of nothing in particular) reclaims what is left, the
/// private bpffs holds nothing, and the kernel holds no BPF program, map or link made since
/// `before` but those others hold (see `kernel::left_since`: on a machine of its own, the
/// kernel's counts are back to what they were).
fn nothing_left(bpffs: &PrivateBpffs, before: &BpfIds) -> Result<()> {
    // The kernel releases a removed cgroup's links and a deleted namespace's a moment after
    // the removal (in its own workers): until then the pods just deleted still read as alive,
    // and a clean leaves them. So: cleans until one has collected everything, bounded.
    let collected = eventually(
        "a clean that collects everything",
        Duration::from_secs(30),
        || {
            let out = bpffs.interceptor(&["clean", "--instance", "cgroup-1"]);
            ensure!(
                out.status.success(),
                "clean: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(bpffs.pins().is_empty())
        },
    );
    ensure!(collected.is_ok(), "left pinned: {:?}", bpffs.pins());
    // The kernel frees programs and maps a little after their last reference goes.
    eventually(
        "the kernel's BPF programs, maps and links back to what they were",
        Duration::from_secs(30),
        || Ok(left_since(before, &bpffs.path)?.is_empty()),
    )
    .with_context(|| {
        let left = left_since(before, &bpffs.path).unwrap_or_default();
        format!("left: {:?} {left:?}", left.counts())
    })
}

fn init_args(pod: &LightPod, bpffs: &PrivateBpffs, flags: &[&str]) -> Vec<String> {
    let mut args = vec!["init".to_string()];
    args.extend(pod.target_args());
    args.push(bpffs.arg());
    args.extend(flags.iter().map(|s| s.to_string()));
    args
}

/// `interceptor ARGS` started (not waited for), killed with the pod if still running.
fn start(pod: &LightPod, args: &[String]) -> Result<Process> {
    let mut cmd = std::process::Command::new(interceptor_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    pod.spawn(&mut cmd)
}

#[test]
fn an_init_killed_at_any_moment_leaves_no_live_looking_pod_and_nothing_uncollected() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = bpf_ids()?;
    let bpffs = PrivateBpffs::new("chaos-init")?;
    let mut rng = Rng::seeded();
    // How long a whole init takes here: the node's first, which loads the programs, and a
    // later one, which attaches them.
    let mut whole = [0u64; 2];
    let mut first = Vec::new();
    for (i, took) in whole.iter_mut().enumerate() {
        let pod = LightPod::new("chaos-init", 100 + i as u32)?;
        let started = Instant::now();
        let mut p = start(&pod, &init_args(&pod, &bpffs, &["-i", "*"]))?;
        ensure!(p.wait(Duration::from_secs(30))?.status.success(), "init");
        *took = started.elapsed().as_millis() as u64;
        first.push(pod);
    }
    let mut outcomes = [0u32; 2]; // [active, not active]
    for i in 1..=24u32 {
        let pod = LightPod::new("chaos-init", i)?;
        // A fresh datapath now and then, so that its creation and the programs' loading can be
        // cut short too.
        let (sizes, took) = if i % 6 == 0 {
            (vec!["--max-connections", "2048"], whole[0])
        } else {
            (vec![], whole[1])
        };
        let mut flags = vec!["-i", "*", "-b", "*"];
        flags.extend(sizes);
        let mut init = start(&pod, &init_args(&pod, &bpffs, &flags))?;
        // Most are cut short, at any point; some finish first.
        thread::sleep(rng.millis(0, took * 4 / 3));
        init.kill(); // SIGKILL, whatever it was doing
        let id = cgroup_id(&pod.cgroup)?;
        let s = bpffs.status()?;
        let listed: Vec<&Value> = s["pods"]
            .as_array()
            .context("pods")?
            .iter()
            .filter(|p| p["cgroup_id"] == id)
            .collect();
        ensure!(listed.len() <= 1, "pod {i} listed twice: {listed:?}");
        let active = listed.first().is_some_and(|p| p["state"] == "active");
        if active {
            // Listed as live: it is. Every link is there and its traffic is intercepted.
            let links = listed[0]["links"].as_array().map_or(0, Vec::len);
            ensure!(links == 15, "pod {i} active with {links} links: {listed:?}");
            let _sidecar = pod.spawn_sidecar(15001)?;
            let target = SocketAddr::from(TARGET);
            let r = pod.probe(Identity::APP, target)?;
            ensure!(
                route_of(&r) == Route::Sidecar(target),
                "pod {i} listed active but not intercepted: {r:?}"
            );
        } else if let Some(p) = listed.first() {
            let state = p["state"].as_str().unwrap_or_default();
            ensure!(
                state.starts_with("incomplete:") || state.starts_with("gone:"),
                "pod {i}: {state}"
            );
        }
        outcomes[usize::from(!active)] += 1;
        // Half go the way a runtime deletes them; the others get a clean.
        if rng.below(2) == 0 {
            pod.delete_like_a_runtime()?;
        } else {
            let mut args = vec!["clean".to_string()];
            args.extend(pod.target_args());
            let out = bpffs.interceptor(&args.iter().map(String::as_str).collect::<Vec<_>>());
            ensure!(
                out.status.success(),
                "clean {i}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    eprintln!(
        "inits killed: {} had finished, {} had not",
        outcomes[0], outcomes[1]
    );
    ensure!(outcomes[1] > 0, "no init was cut short: {outcomes:?}");
    for pod in first {
        pod.delete_like_a_runtime()?;
    }
    nothing_left(&bpffs, &before)
}

/// Counts of what the chaos did.
#[derive(Debug, Default)]
struct Done {
    added: AtomicU64,
    removed: AtomicU64,
    deleted_like_a_runtime: AtomicU64,
    refused_or_failed: AtomicU64,
    daemon_kills: AtomicU64,
    inits: AtomicU64,
    cleans: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// `interceptor pod ARGS` against the node's daemon (which waits up to 10 s for a daemon
/// being restarted), bounded.
fn pod_cli(node: &CniNode, args: &[&str]) -> Result<Finished> {
    let mut cmd = std::process::Command::new(interceptor_bin());
    cmd.arg("pod")
        .arg("--socket")
        .arg(&node.socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    node.spawn(&mut cmd)?.wait(Duration::from_secs(60))
}

fn add_args(pod: &Pod) -> Vec<String> {
    vec![
        "add".into(),
        "--netns".into(),
        pod.netns_path().display().to_string(),
        "--namespace".into(),
        "chaos".into(),
        "--name".into(),
        pod.name.clone(),
        "-i".into(),
        "*".into(),
        "-b".into(),
        "*".into(),
    ]
}

/// Pods added, then removed or deleted like a runtime, one after another until `end`.
fn churn_node_pods(
    node: &CniNode,
    worker: u32,
    end: Instant,
    mut rng: Rng,
    done: &Done,
) -> Result<()> {
    let mut n = 0;
    while Instant::now() < end {
        n += 1;
        let pod = node.create_pod(&format!("w{worker}-{n}"))?;
        let args = add_args(&pod);
        let out = pod_cli(node, &args.iter().map(String::as_str).collect::<Vec<_>>())?;
        if out.status.success() {
            bump(&done.added);
        } else {
            // The daemon was killed during the request, or the node is full for a moment.
            bump(&done.refused_or_failed);
        }
        if rng.below(3) == 0 {
            node.delete_pod_like_a_runtime(&pod)?;
            bump(&done.deleted_like_a_runtime);
        } else {
            let netns = pod.netns_path().display().to_string();
            let out = pod_cli(node, &["remove", "--netns", &netns])?;
            if out.status.success() {
                bump(&done.removed);
            } else {
                // A daemon killed during the request: the runtime's DEL would be retried; here
                // the pod goes as a runtime deletes it, which the daemon's sweep reclaims.
                bump(&done.refused_or_failed);
            }
            node.delete_pod_like_a_runtime(&pod)?;
        }
    }
    Ok(())
}

/// Per-pod mode beside the daemon: each pod's `init` races its `clean` a few times, then the
/// pod is cleaned or deleted like a runtime.
fn churn_inits(bpffs: &PrivateBpffs, end: Instant, mut rng: Rng, done: &Done) -> Result<()> {
    let mut index = 100;
    while Instant::now() < end {
        index += 1;
        let pod = LightPod::new("chaos-pp", index)?;
        let clean: Vec<String> = ["clean".to_string()]
            .into_iter()
            .chain(pod.target_args())
            .chain([bpffs.arg()])
            .collect();
        for _ in 0..3 {
            let mut init = start(&pod, &init_args(&pod, bpffs, &["-i", "*"]))?;
            thread::sleep(rng.millis(0, 60));
            let mut cleaning = start(&pod, &clean)?;
            for (p, what, count) in [
                (&mut init, "init", &done.inits),
                (&mut cleaning, "clean", &done.cleans),
            ] {
                let f = p.wait(Duration::from_secs(60))?;
                ensure!(f.status.success(), "{what} racing: {}", f.stderr);
                bump(count);
            }
        }
        if rng.below(2) == 0 {
            let mut init = start(&pod, &init_args(&pod, bpffs, &["-i", "*"]))?;
            ensure!(init.wait(Duration::from_secs(60))?.status.success(), "init");
            pod.delete_like_a_runtime()?;
        } else {
            let mut cleaning = start(&pod, &clean)?;
            ensure!(
                cleaning.wait(Duration::from_secs(60))?.status.success(),
                "clean"
            );
        }
    }
    Ok(())
}

#[test]
fn pods_that_stay_registered_lose_no_connection_through_daemon_kills_churn_and_races() -> Result<()>
{
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = bpf_ids()?;
    let bpffs = PrivateBpffs::new("chaos")?;
    let mut rng = Rng::seeded();
    let path = bpffs.path.to_str().context("path")?.to_string();
    // The daemon's datapath is the one per-pod inits use too (the same sizes).
    let daemon_args = [
        "--bpffs",
        path.as_str(),
        "--max-pods",
        "1024",
        "--max-connections",
        "65536",
    ];
    let (summaries, done) = {
        let node = CniNode::new("chaos")?;
        let daemon = node.start_daemon_full(&[], &interceptor_bin(), &daemon_args)?;
        // The pods that stay: registered, each with its sidecar and a connection loop.
        let mut steady = Vec::new();
        for i in 0..3 {
            let pod = node.create_pod(&format!("steady{i}"))?;
            let args = add_args(&pod);
            let out = node.pod_cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
            ensure!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let sidecar = node.spawn_sidecar(&pod, &[15001])?;
            let looping = node.spawn_loop(&pod, SocketAddr::from(TARGET))?;
            steady.push((pod, sidecar, looping));
        }

        let done = Done::default();
        let end = Instant::now() + CHAOS;
        let daemon = thread::scope(|s| -> Result<Process> {
            let workers = [
                s.spawn({
                    let (rng, done, node) = (rng.fork(), &done, &node);
                    move || churn_node_pods(node, 0, end, rng, done)
                }),
                s.spawn({
                    let (rng, done, node) = (rng.fork(), &done, &node);
                    move || churn_node_pods(node, 1, end, rng, done)
                }),
                s.spawn({
                    let (rng, done, bpffs) = (rng.fork(), &done, &bpffs);
                    move || churn_inits(bpffs, end, rng, done)
                }),
            ];
            // The killer: SIGKILL at a random moment, a random pause, a new daemon.
            let mut daemon = daemon;
            let mut killer_rng = rng.fork();
            while Instant::now() < end {
                thread::sleep(killer_rng.millis(500, 6000));
                daemon.kill();
                bump(&done.daemon_kills);
                thread::sleep(killer_rng.millis(0, 1500));
                daemon = node.start_daemon_full(&[], &interceptor_bin(), &daemon_args)?;
            }
            for w in workers {
                w.join().expect("a chaos worker panicked")?;
            }
            Ok(daemon)
        })?;
        eprintln!("chaos: {done:?}");

        // The loops, stopped: every connection went through the sidecar with its original
        // destination.
        let mut summaries = Vec::new();
        for (pod, _sidecar, mut looping) in steady {
            drop(looping.take_stdin());
            let f = looping.wait(Duration::from_secs(30))?;
            let summary: LoopSummary = serde_json::from_str(f.stdout.trim())
                .with_context(|| format!("loop of {}: {:?} {}", pod.name, f.stdout, f.stderr))?;
            summaries.push((pod.name.clone(), summary));
        }
        // Everything of the node goes: the daemon, its links and pods, the per-pod pods
        // (deleted like a runtime along the way, or by the node's drop).
        drop(daemon);
        let out = bpffs.interceptor(&["clean", "--cgroup", node.cgroup.to_str().context("path")?]);
        ensure!(
            out.status.success(),
            "clean of the node: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (summaries, done)
    };
    for (name, s) in &summaries {
        eprintln!("{name}: {s:?}");
        assert!(s.stopped_by_stdin, "{name}: {s:?}");
        assert_eq!(s.failures, 0, "{name}: failed connections: {s:?}");
        assert_eq!(s.direct, 0, "{name}: connections that escaped: {s:?}");
        assert!(s.via_sidecar >= 1000, "{name}: {s:?}");
    }
    // The chaos did happen, by the hundred.
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    assert!(n(&done.daemon_kills) >= 5, "{done:?}");
    assert!(n(&done.added) >= 100, "{done:?}");
    assert!(
        n(&done.removed) + n(&done.deleted_like_a_runtime) >= 100,
        "{done:?}"
    );
    assert!(n(&done.inits) >= 20 && n(&done.cleans) >= 20, "{done:?}");
    nothing_left(&bpffs, &before)
}
