//! Upgrades from the previous release (v0.1.0, built from the repository's own history by
//! `cargo xtask test`, see xtask's `previous`) to this build, under connection loops, on the
//! real kernel and a bpffs of each test's own:
//! - node mode: the new daemon takes over the old one's pinned state (an instance of its own
//!   map layout, `cgroup-<id>/`): every pod keeps its options and its counters go on;
//! - per-pod mode: pods set up by the old `init` keep working beside pods set up by the new
//!   one, and the new `init` run again on an old pod moves it over, counters and all.
//!
//! Zero failed connections throughout: every connection reaches the pod's sidecar with its
//! original destination.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use interceptor_tests::bpffs::PrivateBpffs;
use interceptor_tests::cni_node::{CniNode, Pod};
use interceptor_tests::light_pod::LightPod;
use interceptor_tests::{Identity, LoopSummary, Process, interceptor, interceptor_bin};
use serde_json::Value;

const TAG: &str = "v0.1.0";
/// Where the pods' connections go: redirected to their sidecar, which answers first.
const TARGET: ([u8; 4], u16) = ([10, 97, 0, 1], 8080);
/// Bound for a counter to move (the loops make hundreds of connections a second).
const PROGRESS: Duration = Duration::from_secs(20);

/// The previous release's `interceptor`: from `INTERCEPTOR_PREVIOUS_BIN_DIR` (set by `cargo
/// xtask test`), else where `cargo xtask previous` keeps it.
fn previous_bin() -> Result<PathBuf> {
    let dir = std::env::var_os("INTERCEPTOR_PREVIOUS_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(format!("target/previous-{TAG}/bin"))
        });
    let bin = dir.join("interceptor");
    ensure!(
        bin.is_file(),
        "{TAG} is not built ({} missing): run `cargo xtask previous` (`cargo xtask test` does)",
        bin.display()
    );
    Ok(bin)
}

fn target() -> SocketAddr {
    SocketAddr::from(TARGET)
}

/// `BINARY ARGS --bpffs <private>` (the old and the new `interceptor` take the same options).
fn run(binary: &PathBuf, bpffs: &PrivateBpffs, args: &[String]) -> Result<()> {
    let out = Command::new(binary)
        .args(args)
        .arg(bpffs.arg())
        .output()
        .context("running interceptor")?;
    ensure!(
        out.status.success(),
        "{} {args:?}: {}",
        binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn stop_loop(mut l: Process) -> Result<LoopSummary> {
    drop(l.take_stdin());
    let f = l.wait(Duration::from_secs(30))?;
    serde_json::from_str(f.stdout.trim()).with_context(|| format!("{:?} {}", f.stdout, f.stderr))
}

fn no_failure(name: &str, s: &LoopSummary) {
    eprintln!("{name}: {s:?}");
    assert!(s.stopped_by_stdin, "{name}: {s:?}");
    assert_eq!(s.failures, 0, "{name}: failed connections: {s:?}");
    assert_eq!(s.direct, 0, "{name}: connections that escaped: {s:?}");
}

/// Waits until `read` gives at least `at_least`; the last value.
fn wait_for(what: &str, at_least: u64, read: impl Fn() -> Result<u64>) -> Result<u64> {
    let deadline = Instant::now() + PROGRESS;
    loop {
        let now = read()?;
        if now >= at_least {
            return Ok(now);
        }
        ensure!(
            Instant::now() < deadline,
            "{what}: {now}, wanted {at_least}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// --- node mode --------------------------------------------------------------------------------

/// `BINARY pod --socket <node's> ARGS`: the old daemon is driven by its own client.
fn pod_cli(binary: &PathBuf, node: &CniNode, args: &[String]) -> Result<()> {
    let out = Command::new(binary)
        .arg("pod")
        .arg("--socket")
        .arg(&node.socket)
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "pod {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn listed(node: &CniNode, name: &str) -> Result<Value> {
    node.pods()?
        .into_iter()
        .find(|p| p["name"] == name)
        .with_context(|| format!("pod {name} listed"))
}

fn redirected(node: &CniNode, name: &str) -> Result<u64> {
    listed(node, name)?["counters"]["redirected"]
        .as_u64()
        .context("redirected")
}

#[test]
fn the_new_daemon_takes_over_the_previous_releases_pods_with_their_options_and_counters()
-> Result<()> {
    let old = previous_bin()?;
    let bpffs = PrivateBpffs::new("upg-node")?;
    let path = bpffs.path.to_str().context("path")?.to_string();
    let node = CniNode::new("upg-node")?;
    let mut daemon = node.start_daemon_full(&[], &old, &["--bpffs", &path])?;
    let a = node.create_pod("a")?;
    let b = node.create_pod("b")?;
    let add = |pod: &Pod, flags: &[&str]| -> Result<()> {
        let mut args: Vec<String> = [
            "add",
            "--netns",
            pod.netns_path().to_str().context("path")?,
            "--namespace",
            "shop",
            "--name",
            &pod.name,
            "--container-id",
            &pod.container_id,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(flags.iter().map(|s| s.to_string()));
        pod_cli(&old, &node, &args)
    };
    add(&a, &["-i", "*"])?;
    // b: its own proxy port and an excluded port.
    add(&b, &["-i", "*", "-p", "15002", "-o", "8081"])?;
    let options_before = [
        listed(&node, "a")?["options"].clone(),
        listed(&node, "b")?["options"].clone(),
    ];
    let _sidecar_a = node.spawn_sidecar(&a, &[15001])?;
    let _sidecar_b = node.spawn_sidecar(&b, &[15002])?;
    let loop_a = node.spawn_loop(&a, target())?;
    let loop_b = node.spawn_loop(&b, target())?;
    let before = wait_for("a's connections under the old daemon", 50, || {
        redirected(&node, "a")
    })?;

    // The upgrade: the old daemon stops (as a DaemonSet rolls with maxSurge 0), the new one
    // starts in its place with the same options.
    daemon.kill();
    let _daemon = node.start_daemon_full(&[], &interceptor_bin(), &["--bpffs", &path])?;

    // Every pod is the new daemon's, with its options as they were given, and its counters
    // go on from the old ones.
    for (name, options) in ["a", "b"].iter().zip(&options_before) {
        let pod = listed(&node, name)?;
        assert_eq!(
            &pod["options"]["envoy_port"], &options["envoy_port"],
            "{pod}"
        );
        assert_eq!(
            &pod["options"]["service_cidr"], &options["service_cidr"],
            "{pod}"
        );
        assert_eq!(
            &pod["options"]["local_outbound_ports_exclude"],
            &options["local_outbound_ports_exclude"],
            "{pod}"
        );
        assert_eq!(pod["namespace"], "shop");
    }
    assert_eq!(
        listed(&node, "b")?["container_id"],
        b.container_id.as_str(),
        "the runtime's id too (CNI DEL finds the pod by it)"
    );
    wait_for(
        "a's counters going on from the old ones",
        before + 50,
        || redirected(&node, "a"),
    )?;
    // b's own options act: its port, and its excluded port not redirected.
    let r = node.probe(&b, target())?;
    assert_eq!(r.sidecar_line().map(|l| l.port), Some(15002), "{r:?}");
    let r = node.probe(&b, SocketAddr::from(([10, 97, 0, 1], 8081)))?;
    assert!(r.sidecar_line().is_none(), "-o 8081 kept: {r:?}");

    no_failure("a", &stop_loop(loop_a)?);
    no_failure("b", &stop_loop(loop_b)?);
    let s = bpffs.status()?;
    assert_eq!(
        s["legacy"].as_array().map_or(0, Vec::len),
        0,
        "the old instance is gone: {s}"
    );
    let out = interceptor(&[
        "clean",
        "--cgroup",
        node.cgroup.to_str().context("path")?,
        &bpffs.arg(),
    ]);
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(bpffs.pins().is_empty(), "{:?}", bpffs.pins());
    Ok(())
}

// --- per-pod mode -----------------------------------------------------------------------------

fn init_args(pod: &LightPod, flags: &[&str]) -> Vec<String> {
    let mut args = vec!["init".to_string()];
    args.extend(pod.target_args());
    args.extend(flags.iter().map(|s| s.to_string()));
    args
}

/// The counters of the version 0.1 instance of `pod`, as the new `status` shows it.
fn legacy_redirected(bpffs: &PrivateBpffs, pod: &LightPod) -> Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let name = format!("cgroup-{}", std::fs::metadata(&pod.cgroup)?.ino());
    let s = bpffs.status()?;
    let instance = s["legacy"]
        .as_array()
        .context("legacy")?
        .iter()
        .find(|l| l["instance"] == name.as_str())
        .with_context(|| format!("{name} among the version 0.1 instances: {s}"))?
        .clone();
    instance["pods"][0]["counters"]["redirected"]
        .as_u64()
        .with_context(|| format!("{instance}"))
}

/// The counters of `pod` in this build's datapath.
fn pod_status(bpffs: &PrivateBpffs, pod: &LightPod) -> Result<Option<Value>> {
    use std::os::unix::fs::MetadataExt as _;
    let id = std::fs::metadata(&pod.cgroup)?.ino();
    let s = bpffs.status()?;
    Ok(s["pods"]
        .as_array()
        .context("pods")?
        .iter()
        .find(|p| p["cgroup_id"] == id)
        .cloned())
}

#[test]
fn previous_release_pods_work_beside_new_ones_and_a_new_init_moves_them_over() -> Result<()> {
    let old = previous_bin()?;
    let new = interceptor_bin();
    let bpffs = PrivateBpffs::new("upg-pod")?;
    let p1 = LightPod::new("upg-pod", 0)?;
    let p2 = LightPod::new("upg-pod", 1)?;
    let p3 = LightPod::new("upg-pod", 2)?;
    // Two pods set up by the previous release, each with its own options.
    run(&old, &bpffs, &init_args(&p1, &["-i", "*"]))?;
    run(&old, &bpffs, &init_args(&p2, &["-i", "*", "-p", "15002"]))?;
    let _s1 = p1.spawn_sidecar(15001)?;
    let _s2 = p2.spawn_sidecar(15002)?;
    let loop1 = p1.spawn_loop(target())?;
    let loop2 = p2.spawn_loop(target())?;

    // A pod set up by the new build, beside them.
    run(&new, &bpffs, &init_args(&p3, &["-i", "*"]))?;
    let _s3 = p3.spawn_sidecar(15001)?;
    let r = p3.probe(Identity::APP, target())?;
    assert_eq!(
        r.sidecar_line().map(|l| l.orig),
        Some(Ok(target())),
        "{r:?}"
    );
    let before = wait_for("p1's connections under the old instance", 50, || {
        legacy_redirected(&bpffs, &p1)
    })?;
    wait_for("p2 under the old instance", 50, || {
        legacy_redirected(&bpffs, &p2)
    })?;

    // The new init on an old pod moves it into the new datapath; its counters go on.
    run(&new, &bpffs, &init_args(&p1, &["-i", "*"]))?;
    let s = bpffs.status()?;
    assert_eq!(
        s["legacy"].as_array().map_or(0, Vec::len),
        1,
        "only p2's left: {s}"
    );
    let redirected1 = || -> Result<u64> {
        pod_status(&bpffs, &p1)?.context("p1 in the new datapath")?["counters"]["redirected"]
            .as_u64()
            .context("redirected")
    };
    wait_for("p1's counters going on", before + 50, redirected1)?;
    // p2 kept its own options all along, on the old instance.
    let r = p2.probe(Identity::APP, target())?;
    assert_eq!(r.sidecar_line().map(|l| l.port), Some(15002), "{r:?}");

    no_failure("p1 (moved)", &stop_loop(loop1)?);
    no_failure("p2 (left on the previous release)", &stop_loop(loop2)?);

    // The new clean takes an old instance away too.
    let mut clean = vec!["clean".to_string()];
    clean.extend(p2.target_args());
    run(&new, &bpffs, &clean)?;
    let r = p2.probe(Identity::APP, target())?;
    assert!(
        r.sidecar_line().is_none(),
        "p2 not intercepted any more: {r:?}"
    );
    for pod in [&p1, &p3] {
        let mut clean = vec!["clean".to_string()];
        clean.extend(pod.target_args());
        run(&new, &bpffs, &clean)?;
    }
    assert!(bpffs.pins().is_empty(), "{:?}", bpffs.pins());
    Ok(())
}
