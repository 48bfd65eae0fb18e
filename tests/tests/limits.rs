//! The node datapath's limits on the real kernel: sizes out of their bounds, a pod's share of
//! the shared sets, the node's room for every pod's sets, and connection set-ups at once. Each
//! limit is checked before anything changes and refused with exit 2 naming the value and the
//! limit; what cannot be kept (an original destination when the hand-over map is full) is
//! counted. Every test has a bpffs of its own, so what it fills is its own.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use interceptor_tests::bpffs::PrivateBpffs;
use interceptor_tests::cni_node::{CniNode, Pod};
use interceptor_tests::kernel::map_entries;
use interceptor_tests::light_pod::LightPod;
use interceptor_tests::outcome::assert_exit;
use interceptor_tests::{BurstSummary, Identity, PROBE_BIN, bin_path, interceptor_bin};
use serde_json::Value;

/// `init` of `pod` with `flags`, whatever its outcome.
fn try_init(bpffs: &PrivateBpffs, pod: &LightPod, flags: &[String]) -> std::process::Output {
    let mut args = vec!["init".to_string()];
    args.extend(pod.target_args());
    args.extend(flags.iter().cloned());
    bpffs.interceptor(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn init(bpffs: &PrivateBpffs, pod: &LightPod, flags: &[String]) -> Result<()> {
    let out = try_init(bpffs, pod, flags);
    ensure!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn strings(flags: &[&str]) -> Vec<String> {
    flags.iter().map(|s| s.to_string()).collect()
}

/// The counters of the only pod of the bpffs.
fn counters(bpffs: &PrivateBpffs) -> Result<Value> {
    let s = bpffs.status()?;
    let pods = s["pods"].as_array().context("pods")?;
    ensure!(pods.len() == 1, "one pod: {s}");
    Ok(pods[0]["counters"].clone())
}

/// `n` distinct IPv4 /32s from `first` on, as `-x` options of at most 100 KiB each (the kernel
/// caps one argument at 128 KiB).
fn exclude_flags(first: u32, n: u32) -> Vec<String> {
    let all: Vec<String> = (first..first + n)
        .map(|i| format!("{}/32", Ipv4Addr::from(i)))
        .collect();
    let mut flags = Vec::new();
    for chunk in all.chunks(6000) {
        flags.push("-x".to_string());
        flags.push(chunk.join(","));
    }
    flags
}

/// The last component of `path`.
fn name_of(path: &Path) -> Result<String> {
    Ok(path
        .file_name()
        .context("a file name")?
        .to_string_lossy()
        .into_owned())
}

/// The one datapath of the test's bpffs.
fn datapath_dir(bpffs: &PrivateBpffs) -> Result<PathBuf> {
    let base = bpffs.path.join("interceptor");
    let dirs: Vec<PathBuf> = std::fs::read_dir(&base)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("datapath-"))
        })
        .collect();
    ensure!(dirs.len() == 1, "one datapath: {dirs:?}");
    Ok(dirs[0].clone())
}

/// A map's entries (key bytes -> value bytes), by map name.
type MapContents = BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;

/// Every entry of every map of the datapath that registering a pod writes (not the counters,
/// which traffic moves, nor the connections in flight).
fn registration_maps(dir: &Path) -> Result<MapContents> {
    registration_maps_without(dir, &[])
}

/// [`registration_maps`] but the maps named in `skip`.
fn registration_maps_without(dir: &Path, skip: &[&str]) -> Result<MapContents> {
    let mut out = BTreeMap::new();
    for name in [
        "POD_CONFIG",
        "PORT_SET",
        "CIDR4",
        "CIDR6",
        "POD_RECORDS",
        "POD_SLOTS",
        "POD_ADDRS4",
        "POD_ADDRS6",
        "INSTANCE_META",
    ] {
        if !skip.contains(&name) {
            out.insert(name.to_string(), map_entries(&dir.join(name))?);
        }
    }
    Ok(out)
}

#[test]
fn sizes_out_of_their_bounds_are_refused_before_anything_changes() -> Result<()> {
    let bpffs = PrivateBpffs::new("lim-sizes")?;
    let pod = LightPod::new("lim-sizes", 0)?;
    for (flags, message) in [
        (
            vec!["--max-connections", "0"],
            "--max-connections 0: out of range: 1024 to 4194304",
        ),
        (
            vec!["--max-connections", "100000000"],
            "--max-connections 100000000: out of range: 1024 to 4194304",
        ),
        (
            vec!["--max-pods", "0"],
            "--max-pods 0: out of range: 1 to 16384",
        ),
        (
            vec!["--max-pods", "1000000"],
            "--max-pods 1000000: out of range: 1 to 16384",
        ),
    ] {
        let out = try_init(&bpffs, &pod, &strings(&flags));
        assert_exit(&out, 2, message, &flags);
        // The daemon refuses them the same way, before it touches anything either.
        let mut args = vec!["daemon", "--cgroup", pod.cgroup.to_str().context("path")?];
        args.extend(&flags);
        let out = bpffs.interceptor(&args);
        assert_exit(&out, 2, message, &flags);
    }
    assert_eq!(bpffs.pins(), Vec::<PathBuf>::new(), "nothing was made");
    Ok(())
}

#[test]
fn a_pods_ranges_beyond_its_share_are_refused_and_the_maps_stay_exactly_as_they_were() -> Result<()>
{
    let bpffs = PrivateBpffs::new("lim-pod")?;
    let pod = LightPod::new("lim-pod", 1)?;
    let mut flags = strings(&["-i", "*"]);
    flags.extend(exclude_flags(0x0a61_0000, 1000)); // 10.97.0.0 - 10.97.3.231
    init(&bpffs, &pod, &flags)?;
    let _sidecar = pod.spawn_sidecar(15001)?;
    let excluded = SocketAddr::from(([10, 97, 1, 1], 80));
    let included = SocketAddr::from(([10, 98, 0, 1], 80));
    let before = registration_maps(&datapath_dir(&bpffs)?)?;

    // One more than a pod may have (131,072 IPv4 ranges), all new: refused up front.
    let mut update = strings(&["-i", "*"]);
    update.extend(exclude_flags(0x0b00_0000, 131_073));
    let out = try_init(&bpffs, &pod, &update);
    assert_exit(
        &out,
        2,
        "IPv4 ranges (-i, -x, and the pod's routes with -c): the pod has 131073 entries, more \
         than the 131072 one pod may have (a node's datapath holds 1048576 for all its pods)",
        &"131073 ranges",
    );
    assert_eq!(
        registration_maps(&datapath_dir(&bpffs)?)?,
        before,
        "every map as it was"
    );
    // And the pod goes on with its old rules.
    assert!(pod.probe(Identity::APP, excluded)?.sidecar_line().is_none());
    assert!(pod.probe(Identity::APP, included)?.sidecar_line().is_some());
    Ok(())
}

/// A burst of `count` connects from `pod` (as the application) to `target`.
fn burst(pod: &LightPod, target: SocketAddr, count: u64) -> Result<BurstSummary> {
    let mut cmd = pod.command(Identity::APP, bin_path(PROBE_BIN)?)?;
    cmd.args(["burst", &target.to_string(), "--count", &count.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let done = pod.spawn(&mut cmd)?.wait(Duration::from_secs(180))?;
    ensure!(done.status.success(), "burst: {}", done.stderr);
    serde_json::from_str(done.stdout.trim()).with_context(|| done.stdout.clone())
}

/// What `status --json` says of the test's one datapath.
fn datapath(bpffs: &PrivateBpffs) -> Result<Value> {
    let s = bpffs.status()?;
    let all = s["datapaths"].as_array().context("datapaths")?;
    ensure!(all.len() == 1, "one datapath: {s}");
    Ok(all[0].clone())
}

fn count(counters: &Value, name: &str) -> Result<u64> {
    counters[name]
        .as_u64()
        .with_context(|| format!("{name} in {counters}"))
}

/// `interceptor-test-server` on 0.0.0.0:`port` in the pod's namespace but outside its cgroup:
/// a listener on the proxy's port whose side of the hand-over never runs (the programs are
/// the pod cgroup's), so every connection redirected to it stays a set-up in progress, as
/// when the proxy's end of many connections is not established yet.
fn hold_set_ups(pod: &LightPod, port: u16, backlog: u32) -> Result<interceptor_tests::Process> {
    let mut cmd = pod.command_beside(Identity::APP, bin_path(interceptor_tests::SERVER_BIN)?)?;
    cmd.args([
        "--listen",
        &format!("0.0.0.0:{port}"),
        "--backlog",
        &backlog.to_string(),
    ])
    .stdout(Stdio::null());
    let mut server = pod.spawn(&mut cmd)?;
    server.wait_listening(
        SocketAddr::from(([0, 0, 0, 0], port)),
        Duration::from_secs(10),
    )?;
    Ok(server)
}

#[test]
fn the_default_sizing_holds_10000_connection_set_ups_at_once_from_one_pod() -> Result<()> {
    const BURST: u64 = 10_000;
    let bpffs = PrivateBpffs::new("lim-10k")?;
    let pod = LightPod::new("lim-10k", 2)?;
    pod.allow_backlog(16384)?;
    init(&bpffs, &pod, &strings(&["-i", "*"]))?;
    let target = SocketAddr::from(([10, 97, 0, 1], 80));

    // Through the sidecar: every one of 10,000 connects opened at once reaches it with its
    // original destination.
    let sidecar = pod.spawn_sidecar_with(15001, &["--backlog", "16384"])?;
    let s = burst(&pod, target, BURST)?;
    assert_eq!(s.original_dst_kept, BURST, "{s:?}");
    let c = counters(&bpffs)?;
    assert_eq!(
        (
            count(&c, "original_dst_hits")?,
            count(&c, "original_dst_lost")?,
            count(&c, "original_dst_misses")?
        ),
        (BURST, 0, 0),
        "{c}"
    );
    drop(sidecar);

    // The worst case: none of the 10,000 set-ups completes on the proxy's side, so all of
    // them wait in the node's hand-over map at once, and none is lost.
    let _held = hold_set_ups(&pod, 15001, 16384)?;
    let s = burst(&pod, target, BURST)?;
    assert_eq!(s.direct, BURST, "{s:?}");
    let in_flight = datapath(&bpffs)?["connections_in_flight"]
        .as_u64()
        .context("connections_in_flight")?;
    assert!(
        in_flight >= BURST,
        "{in_flight} set-ups in the hand-over map"
    );
    assert_eq!(count(&counters(&bpffs)?, "original_dst_lost")?, 0);
    Ok(())
}

#[test]
fn a_full_hand_over_map_is_counted_and_the_proxy_sees_the_miss() -> Result<()> {
    const MAP: u64 = 1024;
    let bpffs = PrivateBpffs::new("lim-full")?;
    let pod = LightPod::new("lim-full", 3)?;
    pod.allow_backlog(4096)?;
    init(
        &bpffs,
        &pod,
        &strings(&["-i", "*", "--max-connections", &MAP.to_string()]),
    )?;
    let target = SocketAddr::from(([10, 97, 0, 1], 80));

    // 1100 set-ups the proxy's side never completes: the map holds 1024 of them, the others
    // are counted as lost, each one.
    let held = hold_set_ups(&pod, 15001, 4096)?;
    let s = burst(&pod, target, 1100)?;
    assert_eq!(s.direct, 1100, "{s:?}");
    let dp = datapath(&bpffs)?;
    assert_eq!(dp["connections_in_flight"], MAP, "{dp}");
    assert_eq!(count(&counters(&bpffs)?, "original_dst_lost")?, 1100 - MAP);
    drop(held);

    // The sidecar takes over the port: while the map is full, a redirected connection reaches
    // it without an original destination. It is counted on both sides (lost where it was
    // handed over, a miss where the proxy asked), and the proxy is told ENOENT, as netfilter
    // says for a connection it knows nothing of.
    let _sidecar = pod.spawn_sidecar(15001)?;
    let s = burst(&pod, target, 10)?;
    assert_eq!(
        s.original_dst_failed,
        BTreeMap::from([("ENOENT".to_string(), 10)]),
        "{s:?}"
    );
    let c = counters(&bpffs)?;
    assert_eq!(
        (
            count(&c, "original_dst_lost")?,
            count(&c, "original_dst_misses")?,
            count(&c, "original_dst_hits")?
        ),
        (1100 - MAP + 10, 10, 0),
        "{c}"
    );
    Ok(())
}

/// `interceptor status --json`'s map occupancy of the one datapath: map -> entries.
fn occupancy(bpffs: &PrivateBpffs) -> Result<BTreeMap<String, u64>> {
    let dp = datapath(bpffs)?;
    let mut out = BTreeMap::new();
    for m in dp["maps"].as_array().context("maps")? {
        out.insert(
            m[0].as_str().context("name")?.to_string(),
            m[1].as_u64().context("entries")?,
        );
    }
    Ok(out)
}

#[test]
fn in_node_mode_one_pods_ranges_never_make_the_next_pods_registration_fail_at_a_map_write()
-> Result<()> {
    const SHARE: u32 = 131_072; // what one pod may have
    const NODE: u64 = 1 << 20; // what the node's datapath holds
    let bpffs = PrivateBpffs::new("lim-node")?;
    let node = CniNode::new("lim-node")?;
    let _daemon = node.start_daemon_full(
        &[],
        &interceptor_bin(),
        &["--bpffs", bpffs.path.to_str().context("path")?],
    )?;
    let add = |pod: &Pod, flags: &[String]| {
        let netns = pod.netns_path();
        let mut args = vec![
            "add".to_string(),
            "--netns".into(),
            netns.display().to_string(),
            "--name".into(),
            pod.name.clone(),
            "-i".into(),
            "*".into(),
        ];
        args.extend(flags.iter().cloned());
        node.pod_cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // Eight pods with a full share each fill the node's IPv4 ranges.
    let full_share = exclude_flags(0x0b00_0000, SHARE);
    let pods: Vec<Pod> = (0..9)
        .map(|i| node.create_pod(&format!("p{i}")))
        .collect::<Result<_>>()?;
    for pod in &pods[..8] {
        let out = add(pod, &full_share);
        ensure!(
            out.status.success(),
            "{}: {}",
            pod.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(occupancy(&bpffs)?["CIDR4"], NODE);
    let dir = datapath_dir(&bpffs)?;
    let small_maps = |dir: &Path| -> Result<_> {
        let mut all = registration_maps_without(dir, &["CIDR4"])?;
        all.insert(
            "CIDR4 entries".into(),
            BTreeMap::from([(vec![], occupancy(&bpffs)?["CIDR4"].to_le_bytes().to_vec())]),
        );
        Ok(all)
    };
    let before = small_maps(&dir)?;

    // The next pod's one range does not fit: refused, naming the limit, nothing written.
    let out = add(&pods[8], &strings(&["-x", "10.0.0.0/8"]));
    assert_exit(
        &out,
        2,
        "IPv4 ranges (-i, -x, and the pod's routes with -c): the pod's 1 entries do not fit in \
         the node's datapath: it holds 1048576 for all its pods, 1048576 are in use; remove pods \
         or shorten their lists",
        &"a ninth pod",
    );
    assert_eq!(small_maps(&dir)?, before, "every map as it was");
    // A pod with no ranges still fits.
    let out = add(&pods[8], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An update needs room for its new ranges beside its old ones.
    let p0 = |listed: Vec<Value>| listed.into_iter().find(|p| p["name"] == "p0");
    let p0_before = p0(node.pods()?).context("p0")?;
    let other_share = exclude_flags(0x0c00_0000, SHARE);
    let out = add(&pods[0], &other_share);
    assert_exit(&out, 2, "the pod's current ones among them", &"an update");
    assert_eq!(
        p0(node.pods()?).context("p0")?,
        p0_before,
        "p0 keeps its registration (rule set, slot, record)"
    );
    assert_eq!(occupancy(&bpffs)?["CIDR4"], NODE);
    // Once another pod leaves, there is room, and the update goes through.
    let out = node.pod_cli(&[
        "remove",
        "--netns",
        pods[1].netns_path().to_str().context("path")?,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = add(&pods[0], &other_share);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(occupancy(&bpffs)?["CIDR4"], NODE - u64::from(SHARE));
    Ok(())
}

#[test]
fn a_reinit_with_other_sizes_moves_the_pod_to_their_datapath_and_says_so() -> Result<()> {
    let bpffs = PrivateBpffs::new("lim-resize")?;
    let pod = LightPod::new("lim-resize", 4)?;
    init(
        &bpffs,
        &pod,
        &strings(&["-i", "*", "--max-connections", "2048"]),
    )?;
    let _sidecar = pod.spawn_sidecar(15001)?;
    let target = SocketAddr::from(([10, 97, 0, 1], 80));
    assert!(pod.probe(Identity::APP, target)?.sidecar_line().is_some());
    let old = datapath_dir(&bpffs)?;

    // The sizes are the datapath's identity: other sizes, another datapath. The pod moves
    // there (never "updated in place" with the old sizes), its counters with it, and the old
    // datapath, unused, goes.
    let out = try_init(
        &bpffs,
        &pod,
        &strings(&["-i", "*", "--max-connections", "4096"]),
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let old_name = name_of(&old)?;
    assert!(
        log.contains(&format!(
            "interception active, moved from {old_name} (--max-pods 1024, --max-connections \
             2048) to the datapath of this build with --max-pods 1024, --max-connections 4096"
        )),
        "{log}"
    );
    let new = datapath_dir(&bpffs)?;
    assert_ne!(new, old);
    assert_eq!(count(&counters(&bpffs)?, "redirected")?, 1, "carried over");
    assert!(pod.probe(Identity::APP, target)?.sidecar_line().is_some());
    // status says which datapath, and of which sizes, the pod is in.
    let out = bpffs.interceptor(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let new_name = name_of(&new)?;
    assert!(
        text.contains(&format!(
            "  datapath: {new_name} (--max-pods 1024, --max-connections 4096)"
        )),
        "{text}"
    );
    assert_eq!(datapath(&bpffs)?["record"]["max_connections"], 4096);
    Ok(())
}
