//! `deploy/` run by a real container runtime: podman 4.3 (runc, CNI through libcni, as a
//! Kubernetes runtime calls it) plays the per-pod example and the DaemonSet, from the image
//! `deploy/Dockerfile.static` builds offline. Each test has a podman of its own (see
//! `interceptor_tests::podman`): its own store, CNI directories, network and bpffs.
//!
//! What the tests change in the manifests, each because podman 4.3 differs from a kubelet:
//! - image names: the application's (`localhost/interceptor-test-app`, a server on 9080 whose
//!   outbound connections `podman exec` makes), and the sidecar istio's injector adds
//!   (`localhost/interceptor-test-sidecar` as uid 1337). `interceptor:<version>` stays: podman
//!   resolves it to `localhost/interceptor:<version>`.
//! - `restartPolicy: OnFailure`: podman applies the pod's policy to init containers too, so
//!   under Kubernetes' default (`Always`) it runs a successful init container again and again
//!   and waits 20 s for it; Kubernetes never restarts an init container that succeeded.
//! - seccomp: podman's default profile admits bpf(2) only with CAP_SYS_ADMIN, where Kubernetes
//!   runs containers unconfined unless the kubelet's seccomp default is on; podman 4.3 reads
//!   the per-container seccomp annotation, not `securityContext.seccompProfile`.
//! - the node's host paths: bpffs, the CNI directories and the socket's directory are the
//!   test's own; the metrics port is a free one (the host's network is shared).
//! - `$(KUBEPODS_CGROUP)` is expanded by the test, as kubelet does (podman 4.3 does not), to a
//!   cgroup the test made: the daemon's kubepods, the `--cgroup-parent` of the test's pods.
//! - the DaemonSet's pod template is played as a Pod (podman 4.3 plays no DaemonSet), without
//!   `hostPID` (which podman 4.3 ignores) making a difference to what is tested: pods are
//!   registered at ADD, before any of their processes exist.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use interceptor_tests::cni_node::{http_get, pod_counter, registered_pods};
use interceptor_tests::kernel::{cgroup_programs, program_exists};
use interceptor_tests::manifests::load;
use interceptor_tests::podman::Podman;
use interceptor_tests::{
    LoopSummary, ProbeResult, Process, Route, addr, cgroup2_mount, interceptor, route_of,
};
use serde_json::{Value, json};

/// Bound for a state the runtime or the kernel reaches by itself (a restart, a deferred free).
const EVENTUALLY: Duration = Duration::from_secs(30);
const SERVER_PORTS: [u16; 2] = [8080, 8081];
/// The sidecar's listeners: outbound (-p, and the one pod b is given), inbound capture (-z).
const SIDECAR_PORTS: [u16; 3] = [15001, 15002, 15006];

/// Waits (bounded) until `done` gives a value.
fn eventually<T>(what: &str, mut done: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        if let Some(v) = done()? {
            return Ok(v);
        }
        ensure!(
            Instant::now() < deadline,
            "{what}: not within {EVENTUALLY:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// The test peers' server outside any pod, on both ports; its name and address.
fn start_server(podman: &Podman) -> Result<(String, Ipv4Addr)> {
    let name = format!("{}-server", podman.name);
    let image = podman.peer_image("server");
    let mut args = vec![
        "run",
        "--detach",
        "--name",
        &name,
        "--network",
        &podman.name,
    ];
    args.push(&image);
    let listen: Vec<String> = SERVER_PORTS
        .iter()
        .map(|p| format!("0.0.0.0:{p}"))
        .collect();
    for l in &listen {
        args.extend(["--listen", l]);
    }
    podman.run(&args)?;
    let ip = podman.ip(&name)?;
    Ok((name, ip))
}

/// The sidecar istio's injector adds to a pod (a container spec): uid 1337, forwarding to
/// SO_ORIGINAL_DST, the application reached from 127.0.0.6 as Envoy's inbound passthrough.
fn sidecar_args() -> Vec<String> {
    let mut args: Vec<String> = SIDECAR_PORTS
        .iter()
        .flat_map(|p| ["--listen".to_string(), p.to_string()])
        .collect();
    args.extend(["--announce", "--upstream-source", "127.0.0.6"].map(String::from));
    args
}

/// `interceptor-probe ARGS` run in `container` with `podman exec`.
fn probe_in(podman: &Podman, container: &str, target: SocketAddr) -> Result<ProbeResult> {
    let target = target.to_string();
    let out = podman.run(&[
        "exec",
        container,
        "/usr/local/bin/interceptor-probe",
        "connect",
        &target,
    ])?;
    ProbeResult::parse(&out)
}

/// Through the sidecar's listener `port`, which read `orig` as the original destination.
fn via_sidecar(r: &ProbeResult, port: u16, orig: SocketAddr) -> bool {
    route_of(r) == Route::Sidecar(orig) && r.sidecar_line().is_some_and(|s| s.port == port)
}

/// `interceptor status --json` of the environment's bpffs.
fn status(podman: &Podman) -> Result<Value> {
    let out = interceptor(&[
        "status",
        "--json",
        "--bpffs",
        podman.bpffs.to_str().unwrap(),
    ]);
    ensure!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn pods_of(status: &Value) -> Vec<Value> {
    status["pods"].as_array().cloned().unwrap_or_default()
}

/// The program ids of every datapath on the environment's bpffs.
fn program_ids(status: &Value) -> Vec<u32> {
    status["datapaths"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|d| d["programs"].as_array().cloned().unwrap_or_default())
        .flat_map(|b| b["programs"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["id"].as_u64().map(|id| id as u32))
        .collect()
}

fn inode(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata(path)
        .with_context(|| format!("{}", path.display()))?
        .ino())
}

/// `interceptor clean --bpffs <the node's> TARGET`, then what is left of ours on that bpffs.
fn clean_then_pinned(podman: &Podman, target: &[&str]) -> Result<Vec<String>> {
    let bpffs = podman.bpffs.to_str().context("path")?;
    let mut args = vec!["clean", "--bpffs", bpffs];
    args.extend_from_slice(target);
    let out = interceptor(&args);
    ensure!(
        out.status.success(),
        "clean {target:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(std::fs::read_dir(podman.bpffs.join("interceptor"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

/// The per-pod example as podman plays it (see the module's documentation for each change).
fn example_for_podman(example: &Value, podman: &Podman) -> Result<Value> {
    let mut pod = example.clone();
    let spec = &mut pod["spec"];
    spec["restartPolicy"] = json!("OnFailure");
    let init = spec["initContainers"][0]["name"]
        .as_str()
        .context("the init container")?
        .to_string();
    pod["metadata"]["annotations"] = json!({
        format!("container.seccomp.security.alpha.kubernetes.io/{init}"): "unconfined"
    });
    let spec = &mut pod["spec"];
    for volume in spec["volumes"].as_array_mut().context("volumes")? {
        if volume["hostPath"]["path"] == "/sys/fs/bpf" {
            volume["hostPath"]["path"] = json!(podman.bpffs);
        }
    }
    let containers = spec["containers"].as_array_mut().context("containers")?;
    ensure!(containers.len() == 1, "the example's one application");
    containers[0]["image"] = json!(podman.peer_image("app"));
    containers.push(json!({
        "name": "istio-proxy",
        "image": podman.peer_image("sidecar"),
        "args": sidecar_args(),
        "securityContext": { "runAsUser": 1337, "runAsGroup": 1337 },
    }));
    Ok(pod)
}

/// The example's pod, played: its cgroup (in the unified hierarchy), its address, and the
/// names of its application and sidecar containers.
struct PlayedPod {
    file: PathBuf,
    cgroup: PathBuf,
    ip: Ipv4Addr,
    app: String,
    sidecar: String,
}

fn play_example(podman: &Podman, pod: &Value) -> Result<PlayedPod> {
    let file = podman.kube_play(pod, &[])?;
    let name = pod["metadata"]["name"].as_str().context("name")?;
    let app = format!(
        "{name}-{}",
        pod["spec"]["containers"][0]["name"]
            .as_str()
            .context("app")?
    );
    Ok(PlayedPod {
        cgroup: podman.pod_cgroup(name)?,
        ip: podman.ip(&app)?,
        sidecar: format!("{name}-istio-proxy"),
        app,
        file,
    })
}

/// `deploy/examples/interceptor-init-pod.yaml`, played by `podman kube play`: the init
/// container runs `interceptor init` with istio's arguments against its pod's cgroup (init's
/// default: the parent of its own), the application's outbound connections reach the sidecar
/// with their original destination, inbound connections to 9080 arrive through 15006, and
/// once the pod is gone (`podman kube down`, no `clean`) nothing of it is listed as active,
/// the next `init` on the node takes back its entries and links, and the next `clean` the
/// node's datapath: nothing pinned, nothing attached.
#[test]
fn the_per_pod_example_runs_under_podman_kube_play() -> Result<()> {
    let podman = Podman::new("perpod")?;
    podman.build_images()?;
    let example = load("examples/interceptor-init-pod.yaml")?;
    let init = &example["spec"]["initContainers"][0];
    assert_eq!(
        init["image"],
        format!("interceptor:{}", podman.version),
        "the example names the image `cargo xtask image` tags"
    );
    let (server, server_ip) = start_server(&podman)?;
    let pod = example_for_podman(&example, &podman)?;
    let first = play_example(&podman, &pod)?;

    // init attached to the pod's cgroup, with the example's options.
    let listed = pods_of(&status(&podman)?);
    let entry = listed
        .iter()
        .find(|p| p["cgroup_id"] == inode(&first.cgroup).unwrap_or(0))
        .with_context(|| format!("the pod's cgroup in status: {listed:#?}"))?;
    assert_eq!(entry["state"], "active", "{entry:#}");
    let options = &entry["options"];
    for (key, value) in [
        ("envoy_port", "15001"),
        ("inbound_capture_port", "15006"),
        ("proxy_uid", "1337"),
        ("interception_mode", "REDIRECT"),
        ("service_cidr", "*"),
        ("service_exclude_cidr", ""),
        ("inbound_ports", "*"),
        ("local_exclude_ports", "15090,15021,15020"),
    ] {
        assert_eq!(options[key], value, "{key} in {options:#}");
    }
    let first_id = inode(&first.cgroup)?;
    let first_programs = program_ids(&status(&podman)?);
    ensure!(!first_programs.is_empty(), "the datapath's programs");

    // Outbound: the application's connection reaches the sidecar's 15001 with its original
    // destination, and the application sees the address it dialled.
    let to = addr(server_ip, 8080);
    let r = probe_in(&podman, &first.app, to)?;
    assert!(via_sidecar(&r, 15001, to), "{r:?}");
    assert_eq!(r.peer_name, Some(to), "{r:?}");
    // The sidecar's own connections (uid 1337) go where they were sent.
    let r = probe_in(&podman, &first.sidecar, to)?;
    assert_eq!(route_of(&r), Route::Direct(to), "{r:?}");
    // Inbound: a connection to the application's port arrives through the sidecar's 15006,
    // destination kept, and reaches the application from 127.0.0.6.
    let app_port = addr(first.ip, 9080);
    let r = probe_in(&podman, &server, app_port)?;
    assert!(via_sidecar(&r, 15006, app_port), "{r:?}");
    let app_saw = r.server_line().context("the application answered")?;
    assert_eq!(
        (app_saw.local, app_saw.peer.ip()),
        (app_port, Ipv4Addr::new(127, 0, 0, 6).into()),
        "{r:?}"
    );

    // Gone the way a runtime deletes pods: no clean. Podman removes the network namespace
    // (and leaves the pod's directory in the unified cgroup hierarchy, empty).
    podman.kube_down(&first.file)?;
    let state = |id: u64| -> Result<Option<String>> {
        Ok(pods_of(&status(&podman)?)
            .iter()
            .find(|p| p["cgroup_id"] == id)
            .map(|p| p["state"].as_str().unwrap_or("").to_string()))
    };
    let gone = state(first_id)?;
    assert!(
        gone.as_deref().is_none_or(|s| s.starts_with("gone:")),
        "a deleted pod listed as {gone:?}"
    );

    // The next init on the node (the same example, played again) takes the pod's entries,
    // links and pins back.
    let second = play_example(&podman, &pod)?;
    assert_eq!(state(first_id)?, None, "reclaimed by the next init");
    if first.cgroup.exists() {
        assert_eq!(
            cgroup_programs(&first.cgroup)?,
            0,
            "attached to the old pod"
        );
    }
    let r = probe_in(&podman, &second.app, to)?;
    assert!(via_sidecar(&r, 15001, to), "{r:?}");
    let second_id = inode(&second.cgroup)?;
    assert_eq!(state(second_id)?.as_deref(), Some("active"));

    // The last pod goes; the next clean (of that pod, as status names it) collects the node's
    // datapath: nothing of ours is pinned, attached or loaded.
    podman.kube_down(&second.file)?;
    let left = clean_then_pinned(&podman, &["--instance", &format!("cgroup-{second_id}")])?;
    assert!(left.is_empty(), "pinned after the last pod: {left:?}");
    for cgroup in [&first.cgroup, &second.cgroup] {
        if cgroup.exists() {
            assert_eq!(cgroup_programs(cgroup)?, 0, "{}", cgroup.display());
        }
    }
    // The kernel frees programs a little after their last reference goes.
    eventually("the pods' programs unloaded", || {
        let loaded: Vec<u32> = first_programs
            .iter()
            .copied()
            .filter(|id| program_exists(*id).unwrap_or(true))
            .collect();
        Ok(loaded.is_empty().then_some(()))
    })?;
    if let Some(change) = podman.host_cni_changes() {
        bail!("{change}");
    }
    Ok(())
}

/// A port nothing listens on in the host's network namespace now.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The node daemon's environment on the host: its socket's directory (the DaemonSet's
/// /run/interceptor) and metrics port.
struct Node {
    run_dir: PathBuf,
    metrics: u16,
    /// The daemon's `--cgroup` as the container sees it, and the pods' `--cgroup-parent`.
    kubepods_in_container: String,
    kubepods: String,
}

impl Node {
    fn socket(&self) -> PathBuf {
        self.run_dir.join("interceptor.sock")
    }

    /// The registered pods (`interceptor pod list --json`).
    fn pods(&self) -> Result<Vec<Value>> {
        registered_pods(&self.socket())
    }

    fn ready(&self) -> bool {
        self.pods().is_ok()
            && http_get(addr(Ipv4Addr::LOCALHOST, self.metrics), "/readyz")
                .is_ok_and(|(code, _)| code == 200)
    }
}

/// The DaemonSet's pod template as a Pod, and the ConfigMap, as podman plays them on this
/// node (see the module's documentation for each change).
fn daemonset_for_podman(podman: &Podman, node: &Node) -> Result<(Value, Value)> {
    let ds = load("kubernetes/daemonset.yaml")?;
    let mut config = load("kubernetes/configmap.yaml")?;
    config["data"]["KUBEPODS_CGROUP"] = json!(node.kubepods_in_container);
    let mut entry: Value = serde_json::from_str(
        config["data"]["cni-entry.json"]
            .as_str()
            .context("cni-entry.json")?,
    )?;
    // The plugin runs on the host: the socket as the host sees it.
    entry["socket"] = json!(node.socket());
    config["data"]["cni-entry.json"] = json!(serde_json::to_string_pretty(&entry)?);

    let template = &ds["spec"]["template"];
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": ds["metadata"]["name"],
            "namespace": ds["metadata"]["namespace"],
            "labels": template["metadata"]["labels"],
        },
        "spec": template["spec"],
    });
    let spec = &mut pod["spec"];
    spec["restartPolicy"] = json!("OnFailure");
    for volume in spec["volumes"].as_array_mut().context("volumes")? {
        let Some(host_path) = volume.get_mut("hostPath").and_then(|h| h.get_mut("path")) else {
            continue;
        };
        let own = match host_path.as_str() {
            Some("/sys/fs/bpf") => podman.bpffs.clone(),
            Some("/opt/cni/bin") => podman.cni_bin.clone(),
            Some("/etc/cni/net.d") => podman.net_dir.clone(),
            Some("/run/interceptor") => node.run_dir.clone(),
            _ => continue,
        };
        *host_path = json!(own);
    }
    let metrics = format!("127.0.0.1:{}", node.metrics);
    for container in spec["containers"].as_array_mut().context("containers")? {
        // kubelet expands $(VAR) from the container's environment; podman 4.3 does not.
        let mut vars = Vec::new();
        for env in container["env"].as_array().into_iter().flatten() {
            let name = env["name"].as_str().context("env name")?;
            let value = match env["valueFrom"]["configMapKeyRef"]["key"].as_str() {
                Some(key) => config["data"][key].clone(),
                None => env["value"].clone(),
            };
            vars.push((
                format!("$({name})"),
                value.as_str().unwrap_or("").to_string(),
            ));
        }
        for arg in container["args"].as_array_mut().into_iter().flatten() {
            let mut text = arg.as_str().unwrap_or("").to_string();
            for (var, value) in &vars {
                text = text.replace(var, value);
            }
            *arg = json!(text.replace("127.0.0.1:15090", &metrics));
        }
        for probe in ["livenessProbe", "readinessProbe"] {
            if container[probe]["httpGet"]["port"] == 15090 {
                container[probe]["httpGet"]["port"] = json!(node.metrics);
            }
        }
    }
    Ok((pod, config))
}

/// A pod made by podman under the node's kubepods cgroup, on the node's network, with the
/// sidecar and the application; started with `cni_args` in podman's environment, which podman
/// hands to the CNI plugins as CNI_ARGS (after its own K8S_POD_NAME).
fn start_pod(podman: &Podman, node: &Node, pod: &str, cni_args: &str) -> Result<String> {
    let name = format!("{}-{pod}", podman.name);
    let parent = format!("/{}", node.kubepods);
    podman.run(&[
        "pod",
        "create",
        "--name",
        &name,
        "--cgroup-parent",
        &parent,
        "--network",
        &podman.name,
        "--infra-name",
        &format!("{name}-infra"),
    ])?;
    let sidecar = podman.peer_image("sidecar");
    let mut args = vec![
        "create",
        "--pod",
        &name,
        "--name",
        &format!("{name}-proxy"),
        "--user",
        "1337:1337",
        &sidecar,
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    args.extend(sidecar_args());
    podman.run(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let app = format!("{name}-app");
    podman.run(&[
        "create",
        "--pod",
        &name,
        "--name",
        &app,
        &podman.peer_image("app"),
    ])?;
    podman.run_env(&["pod", "start", &name], &[("CNI_ARGS", cni_args)])?;
    podman.remember_pods();
    Ok(name)
}

fn registered<'a>(pods: &'a [Value], name: &str) -> Option<&'a Value> {
    pods.iter().find(|p| p["name"] == name)
}

/// A pod's counter from the environment's bpffs, by network-namespace cookie.
fn counter(podman: &Podman, cookie: u64, name: &str) -> Result<u64> {
    pod_counter(&status(podman)?, cookie, name)
}

fn wait_growth(podman: &Podman, cookie: u64, from: u64, by: u64) -> Result<u64> {
    eventually(
        &format!("pod {cookie}'s redirected count past {from}+{by}"),
        || {
            let now = counter(podman, cookie, "redirected")?;
            Ok((now >= from + by).then_some(now))
        },
    )
}

/// The daemon container's process, as the host sees it: `(field, value)` from
/// /proc/<pid>/status.
fn proc_status(pid: u32, field: &str) -> Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_string())
        })
        .with_context(|| format!("{field} of {pid}"))
}

/// The DaemonSet, played by podman as its pod template: the installer chains interceptor-cni
/// into the node's CNI configuration (the test's own directory), the daemon runs from the
/// same image with exactly CAP_SYS_ADMIN, no new privileges, seccomp, a read-only root, the
/// host's network and the DaemonSet's mounts; pods podman creates are registered at ADD with
/// the ConfigMap's options and their CNI_ARGS, or left alone in an excluded namespace; a
/// kill -9 of the daemon, restarted by the runtime, fails no connection of a loop; `podman pod
/// rm` releases a pod (DEL); uninstalling and cleaning leave nothing of ours.
#[test]
fn the_daemonset_intercepts_pods_podman_creates() -> Result<()> {
    let podman = Podman::new("node")?;
    podman.build_images()?;
    // The node's kubepods: a cgroup of the test's own, made before the daemon attaches to it.
    let kubepods = format!("{}-kubepods", podman.name);
    podman.forget_cgroup_later(&kubepods);
    let unified = cgroup2_mount()?;
    std::fs::create_dir(unified.join(&kubepods))?;
    let in_container = Path::new("/host/sys/fs/cgroup")
        .join(
            unified
                .strip_prefix("/sys/fs/cgroup")
                .unwrap_or(Path::new("")),
        )
        .join(&kubepods);
    let node = Node {
        run_dir: podman.dir.join("run-interceptor"),
        metrics: free_port()?,
        kubepods_in_container: in_container.display().to_string(),
        kubepods,
    };
    std::fs::create_dir(&node.run_dir)?;
    // Before the plugin is chained: the server is no pod of the node.
    let (server, server_ip) = start_server(&podman)?;

    let (ds_pod, config) = daemonset_for_podman(&podman, &node)?;
    let config_file = podman.dir.join("configmap.json");
    std::fs::write(&config_file, serde_json::to_string(&config)?)?;
    let played = podman.kube_play(&ds_pod, &["--configmap", config_file.to_str().unwrap()])?;
    let daemon = format!("{}-daemon", ds_pod["metadata"]["name"].as_str().unwrap());
    eventually("the daemon ready", || Ok(node.ready().then_some(())))
        .with_context(|| podman.run(&["logs", &daemon]).unwrap_or_default())?;

    // The installer: the binary, and the entry chained last in the node's network.
    let conf_path = std::fs::read_dir(&podman.net_dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
        .min()
        .context("the node's network configuration")?;
    let conf: Value = serde_json::from_str(&std::fs::read_to_string(&conf_path)?)?;
    let chained = conf["plugins"].as_array().context("plugins")?;
    let types: Vec<&str> = chained.iter().filter_map(|p| p["type"].as_str()).collect();
    assert_eq!(types, ["bridge", "interceptor-cni"], "{conf:#}");
    let entry: Value = serde_json::from_str(config["data"]["cni-entry.json"].as_str().unwrap())?;
    assert_eq!(chained[1]["options"], entry["options"]);
    assert!(podman.cni_bin.join("interceptor-cni").is_file());

    // The daemon container, as the host sees its process.
    let pid = podman.pid(&daemon)?;
    let sys_admin = 1u64 << 21;
    let caps = u64::from_str_radix(&proc_status(pid, "CapEff")?, 16)?;
    assert_eq!(caps, sys_admin, "effective capabilities {caps:#x}");
    let bounding = u64::from_str_radix(&proc_status(pid, "CapBnd")?, 16)?;
    assert_eq!(bounding, sys_admin, "bounding set {bounding:#x}");
    assert_eq!(proc_status(pid, "NoNewPrivs")?, "1");
    assert_eq!(proc_status(pid, "Seccomp")?, "2", "a seccomp filter");
    let net = |p: &str| std::fs::read_link(format!("{p}/ns/net"));
    assert_eq!(
        net(&format!("/proc/{pid}"))?,
        net("/proc/self")?,
        "host network"
    );
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let mount = |at: &str| {
        mounts
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some(at))
            .map(str::to_string)
    };
    let root = mount("/").context("root mount")?;
    assert!(
        root.split_whitespace()
            .nth(5)
            .is_some_and(|o| o.split(',').any(|o| o == "ro")),
        "{root}"
    );
    for at in [
        "/sys/fs/bpf",
        "/host/sys/fs/cgroup",
        "/run/netns",
        "/run/interceptor",
    ] {
        assert!(
            mount(at).is_some(),
            "{at} mounted in the daemon's container:\n{mounts}"
        );
    }

    // Pods podman creates: a with the ConfigMap's options; b with its own proxy port and an
    // excluded port through CNI_ARGS; c in an excluded namespace.
    let a = start_pod(&podman, &node, "a", "K8S_POD_NAMESPACE=shop")?;
    let b = start_pod(
        &podman,
        &node,
        "b",
        "K8S_POD_NAMESPACE=shop;INTERCEPTOR_ENVOY_PORT=15002;\
         INTERCEPTOR_ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE=8081",
    )?;
    let c = start_pod(&podman, &node, "c", "K8S_POD_NAMESPACE=kube-system")?;
    let pods = node.pods()?;
    assert_eq!(pods.len(), 2, "{pods:#?}");
    let pa = registered(&pods, &a).context("a registered")?;
    let pb = registered(&pods, &b).context("b registered")?;
    assert_eq!(pa["namespace"], "shop");
    assert_eq!(pa["options"]["envoy_port"], "15001");
    assert_eq!(pa["options"]["local_exclude_ports"], "15090,15021,15020");
    assert_eq!(pb["options"]["envoy_port"], "15002");
    assert_eq!(pb["options"]["local_outbound_ports_exclude"], "8081");
    let cookie_a = pa["netns_cookie"].as_u64().context("cookie")?;

    let to = addr(server_ip, 8080);
    let r = probe_in(&podman, &format!("{a}-app"), to)?;
    assert!(via_sidecar(&r, 15001, to), "{r:?}");
    let r = probe_in(&podman, &format!("{b}-app"), to)?;
    assert!(via_sidecar(&r, 15002, to), "{r:?}");
    let excluded = addr(server_ip, 8081);
    let r = probe_in(&podman, &format!("{b}-app"), excluded)?;
    assert_eq!(
        route_of(&r),
        Route::Direct(excluded),
        "b excludes 8081: {r:?}"
    );
    let r = probe_in(&podman, &format!("{c}-app"), to)?;
    assert_eq!(
        route_of(&r),
        Route::Direct(to),
        "c is not registered: {r:?}"
    );
    let a_port = addr(podman.ip(&format!("{a}-app"))?, 9080);
    let r = probe_in(&podman, &server, a_port)?;
    assert!(via_sidecar(&r, 15006, a_port), "inbound: {r:?}");

    // kill -9 of the daemon under a connection loop; the runtime restarts it (OnFailure).
    let mut exec = podman.command();
    exec.args(["exec", "--interactive", &format!("{a}-app")])
        .args(["/usr/local/bin/interceptor-probe", "loop", &to.to_string()])
        .stdin(Stdio::piped());
    let mut looping = Process::spawn_unowned(&mut exec)?;
    let start = wait_growth(
        &podman,
        cookie_a,
        counter(&podman, cookie_a, "redirected")?,
        20,
    )?;
    let restarts = |p: &Podman| p.inspect(&daemon, "{{.RestartCount}}");
    let before = restarts(&podman)?;
    // SAFETY: plain kill(2) of the daemon container's process, which this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let during = wait_growth(&podman, cookie_a, start, 50)?;
    eventually("the runtime restarted the daemon", || {
        Ok((restarts(&podman)? != before && node.ready()).then_some(()))
    })?;
    let after = wait_growth(&podman, cookie_a, during, 50)?;
    assert_eq!(node.pods()?.len(), 2, "re-adopted");
    drop(looping.take_stdin());
    let done = looping.wait(Duration::from_secs(60))?;
    let summary: LoopSummary = serde_json::from_str(done.stdout.trim())
        .with_context(|| format!("loop output {:?} {}", done.stdout, done.stderr))?;
    eprintln!(
        "connection loop through a kill -9 and the runtime's restart: {summary:?} ({after} redirected)"
    );
    assert!(summary.stopped_by_stdin, "{summary:?}");
    assert_eq!(summary.failures, 0, "failed connections: {summary:?}");
    assert_eq!(summary.direct, 0, "escaped interception: {summary:?}");
    assert!(summary.via_sidecar >= 100, "{summary:?}");

    // DEL: podman removes b; the daemon lets it go.
    podman.run(&["pod", "rm", "--force", "--time", "0", &b])?;
    let pods = node.pods()?;
    assert!(registered(&pods, &b).is_none(), "b released: {pods:#?}");
    assert!(registered(&pods, &a).is_some());

    // Uninstall as deploy/ says: the plugin out of the configuration (same image), the
    // DaemonSet gone, then clean: nothing of ours left on the node's bpffs.
    for pod in [&a, &c] {
        podman.run(&["pod", "rm", "--force", "--time", "0", pod])?;
    }
    assert!(node.pods()?.is_empty());
    let conf_dir = format!("{}:/host/etc/cni/net.d", podman.net_dir.display());
    podman.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--volume",
        &conf_dir,
        "--entrypoint",
        "/usr/local/bin/interceptor-cni",
        &format!("localhost/interceptor:{}", podman.version),
        "uninstall",
    ])?;
    let conf: Value = serde_json::from_str(&std::fs::read_to_string(&conf_path)?)?;
    assert_eq!(
        conf["plugins"].as_array().map(Vec::len),
        Some(1),
        "{conf:#}"
    );
    podman.kube_down(&played)?;
    let kubepods = unified.join(&node.kubepods);
    let left = clean_then_pinned(&podman, &["--cgroup", kubepods.to_str().context("path")?])?;
    assert!(left.is_empty(), "pinned after uninstalling: {left:?}");
    assert_eq!(cgroup_programs(&kubepods)?, 0);
    if let Some(change) = podman.host_cni_changes() {
        bail!("{change}");
    }
    Ok(())
}
