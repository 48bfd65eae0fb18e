//! Per-pod mode at node scale: one datapath per node. A pod's `init` after the first loads no
//! program (it attaches the node's verified ones and writes its entries); 200 pods enrolled by
//! their own `init` each intercept their own traffic with their own options; and pods deleted
//! the way a runtime deletes them (cgroup and network namespace removed, no `clean`) leave
//! nothing behind once the next `init` or `clean` has run.
//!
//! Each test pins into a bpffs of its own, and counts only the BPF objects it made that nobody
//! else holds (`kernel::left_since`), so other work on the machine does not change its counts;
//! they still run one at a time (200 pods each).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use interceptor_tests::{
    Identity, Process, Route,
    bpffs::PrivateBpffs,
    eventually,
    kernel::{bpf_ids, left_since},
    light_pod::LightPod,
    route_of,
};

static SERIAL: Mutex<()> = Mutex::new(());

/// Programs (and so links) a pod's `init` attaches.
const PROGRAMS: usize = 15;
/// Programs a node loads: those, and `sk_msg` on the acceleration sockhash (no link).
const LOADED_PROGRAMS: usize = PROGRAMS + 1;

fn init(bpffs: &PrivateBpffs, pod: &LightPod, flags: &[&str]) -> Result<()> {
    let mut args: Vec<String> = vec!["init".into()];
    args.extend(pod.target_args());
    args.extend(flags.iter().map(|f| f.to_string()));
    let out = bpffs.interceptor(&args.iter().map(String::as_str).collect::<Vec<_>>());
    ensure!(
        out.status.success(),
        "init {flags:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn clean(bpffs: &PrivateBpffs, pod: &LightPod) -> Result<()> {
    let mut args: Vec<String> = vec!["clean".into()];
    args.extend(pod.target_args());
    let out = bpffs.interceptor(&args.iter().map(String::as_str).collect::<Vec<_>>());
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `interceptor status --json`'s pods.
fn status_pods(bpffs: &PrivateBpffs) -> Result<Vec<serde_json::Value>> {
    Ok(bpffs.status()?["pods"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

fn cgroup_id(pod: &LightPod) -> Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata(&pod.cgroup)?.ino())
}

fn target(third: u8, fourth: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 97, third, fourth), 80))
}

#[test]
fn a_second_pods_init_loads_no_program() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bpffs = PrivateBpffs::new("scale-first")?;
    let first = LightPod::new("scale-first", 0)?;
    let second = LightPod::new("scale-second", 1)?;
    init(&bpffs, &first, &["-i", "*"])?;
    let before = bpf_ids()?;
    init(&bpffs, &second, &["-p", "15002", "-i", "*"])?;
    let made = left_since(&before, &bpffs.path)?;
    assert!(
        made.programs.is_empty(),
        "the second pod's init loaded programs: {made:?}"
    );
    assert_eq!(made.links.len(), PROGRAMS, "its own links only: {made:?}");

    // Both intercept, each with its own options, on the same programs.
    let _s1 = first.spawn_sidecar(15001)?;
    let _s2 = second.spawn_sidecar(15002)?;
    for (pod, port) in [(&first, 15001), (&second, 15002)] {
        let r = pod.probe(Identity::APP, target(0, 1))?;
        assert_eq!(route_of(&r), Route::Sidecar(target(0, 1)), "{r:?}");
        assert_eq!(r.sidecar_line().map(|l| l.port), Some(port), "{r:?}");
    }
    clean(&bpffs, &first)?;
    clean(&bpffs, &second)?;
    Ok(())
}

#[test]
fn two_hundred_pods_each_intercept_their_own_traffic_with_their_own_options() -> Result<()> {
    const PODS: u32 = 200;
    const THREADS: u32 = 4;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bpffs = PrivateBpffs::new("scale-many")?;
    let bpffs = &bpffs;
    let start = bpf_ids()?;
    // Pod i: its own proxy port (-p 20000+i) and its own excluded range (-x 10.98.i.0/24).
    let pods: Vec<(LightPod, Process)> = thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || -> Result<Vec<(LightPod, Process)>> {
                    let mut mine = Vec::new();
                    for i in (t..PODS).step_by(THREADS as usize) {
                        let pod = LightPod::new("scale-many", i)?;
                        let port = (20000 + i).to_string();
                        let exclude = format!("10.98.{i}.0/24");
                        init(bpffs, &pod, &["-p", &port, "-i", "*", "-x", &exclude])?;
                        let sidecar = pod.spawn_sidecar(20000 + i as u16)?;
                        mine.push((pod, sidecar));
                    }
                    Ok(mine)
                })
            })
            .collect();
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.join().expect("a worker panicked")?);
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    let (pods, _sidecars): (Vec<LightPod>, Vec<Process>) = pods.into_iter().unzip();
    let loaded = left_since(&start, &bpffs.path)?;
    assert!(
        loaded.programs.len() <= LOADED_PROGRAMS,
        "{PODS} pods loaded one set of programs at most: {:?}",
        loaded.programs
    );

    thread::scope(|s| {
        for chunk in pods.chunks(pods.len().div_ceil(THREADS as usize)) {
            s.spawn(move || -> Result<()> {
                for pod in chunk {
                    let i = u32::from(pod.addr.octets()[2]);
                    let port = 20000 + i as u16;
                    // Its own port.
                    let r = pod.probe(Identity::APP, target(0, 1))?;
                    ensure!(
                        route_of(&r) == Route::Sidecar(target(0, 1))
                            && r.sidecar_line().map(|l| l.port) == Some(port),
                        "pod {i}: {r:?}"
                    );
                    // Its own exclusion, not another pod's.
                    let own = SocketAddr::from((Ipv4Addr::new(10, 98, i as u8, 1), 80));
                    let r = pod.probe(Identity::APP, own)?;
                    ensure!(r.sidecar_line().is_none(), "pod {i} excludes {own}: {r:?}");
                    let other = SocketAddr::from((Ipv4Addr::new(10, 98, (i as u8) ^ 1, 1), 80));
                    let r = pod.probe(Identity::APP, other)?;
                    ensure!(
                        r.sidecar_line().map(|l| l.port) == Some(port),
                        "pod {i} intercepts {other}: {r:?}"
                    );
                }
                Ok(())
            });
        }
    });
    for pod in &pods {
        clean(bpffs, pod)?;
    }
    Ok(())
}

#[test]
fn pods_deleted_as_a_runtime_deletes_them_leave_nothing_behind() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bpffs = PrivateBpffs::new("scale-gone")?;
    let before = bpf_ids()?;
    let pods: Vec<LightPod> = (0..3)
        .map(|i| LightPod::new("scale-gone", 10 + i))
        .collect::<Result<_>>()?;
    for pod in &pods {
        init(&bpffs, pod, &["-i", "*", "-b", "*"])?;
    }
    let ids: Vec<u64> = pods.iter().map(cgroup_id).collect::<Result<_>>()?;
    let state = |id: u64| -> Result<Option<String>> {
        Ok(status_pods(&bpffs)?
            .iter()
            .find(|p| p["cgroup_id"] == id)
            .and_then(|p| p["state"].as_str().map(str::to_string)))
    };
    for id in &ids {
        assert_eq!(state(*id)?.as_deref(), Some("active"));
    }

    // Two pods go the way Kubernetes removes them: no clean.
    let mut pods = pods.into_iter();
    pods.next().context("pod")?.delete_like_a_runtime()?;
    pods.next().context("pod")?.delete_like_a_runtime()?;
    let survivor = pods.next().context("pod")?;
    for id in &ids[..2] {
        eventually("status shows the pod gone", Duration::from_secs(20), || {
            Ok(state(*id)?.is_some_and(|s| s.starts_with("gone:")))
        })?;
    }
    assert_eq!(state(ids[2])?.as_deref(), Some("active"));

    // The next init on the node reclaims them.
    let newcomer = LightPod::new("scale-gone", 13)?;
    init(&bpffs, &newcomer, &["-i", "*"])?;
    for id in &ids[..2] {
        assert_eq!(state(*id)?, None, "reclaimed by the next init");
    }
    assert_eq!(state(ids[2])?.as_deref(), Some("active"));

    // The last ones go too, and the next clean (of anything) leaves nothing of ours.
    survivor.delete_like_a_runtime()?;
    newcomer.delete_like_a_runtime()?;
    eventually(
        "the last pods read as gone",
        Duration::from_secs(20),
        || {
            Ok(status_pods(&bpffs)?
                .iter()
                .all(|p| p["state"].as_str().is_some_and(|s| s.starts_with("gone:"))))
        },
    )?;
    let out = bpffs.interceptor(&["clean", "--instance", "cgroup-1"]);
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pins = bpffs.pins();
    assert!(pins.is_empty(), "nothing pinned: {pins:?}");
    eventually(
        "no program, map or link of the test left in the kernel",
        Duration::from_secs(20),
        || Ok(left_since(&before, &bpffs.path)?.is_empty()),
    )?;
    Ok(())
}
