//! The Kubernetes packaging in `deploy/`: the manifests pass the Kubernetes schemas offline
//! (`kubernetes-validate`, installed by `cargo xtask setup`), the DaemonSet's capability set
//! runs the daemon and cannot be narrowed, the ConfigMap's CNI entry is one interceptor-cni
//! accepts, the per-pod example replaces istio-init's arguments line for line, and `init` finds
//! its pod's cgroup by itself, as the example needs, also from inside a cgroup namespace.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, ensure};
use interceptor_tests::cni_node::{CniNode, GATEWAY};
use interceptor_tests::manifests::{deploy_dir, load, validator};
use interceptor_tests::{
    OwnedCgroup, Route, TempFile, addr, bin_path, in_cgroup, interceptor_bin, route_of,
};
use serde_json::{Value, json};

/// Every YAML file under deploy/.
fn manifests() -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for sub in ["kubernetes", "examples"] {
        for e in std::fs::read_dir(deploy_dir().join(sub))? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "yaml") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn validate(files: &[PathBuf]) -> Result<std::process::Output> {
    Ok(Command::new(validator()?)
        .args(["--strict", "--kubernetes-version", "1.30.0"])
        .args(files)
        .output()?)
}

#[test]
fn manifests_pass_the_kubernetes_schemas() -> Result<()> {
    let files = manifests()?;
    ensure!(files.len() >= 6, "{files:?}");
    let out = validate(&files)?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches(" passed ").count(), files.len(), "{text}");
    // The same check refuses a field the schema does not have.
    let daemonset = std::fs::read_to_string(deploy_dir().join("kubernetes/daemonset.yaml"))?;
    let typo = TempFile::new(
        "dmn-typo.yaml",
        &daemonset.replace("hostNetwork: true", "hostNetwrk: true"),
    )?;
    let out = validate(&[typo.path().to_path_buf()])?;
    assert!(!out.status.success(), "a misspelt field passed");
    Ok(())
}

fn daemon_container(ds: &Value) -> Result<&Value> {
    ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .context("containers")?
        .iter()
        .find(|c| c["name"] == "daemon")
        .context("the daemon container")
}

#[test]
fn the_daemonset_mounts_what_the_daemon_uses() -> Result<()> {
    let ds = load("kubernetes/daemonset.yaml")?;
    let spec = &ds["spec"]["template"]["spec"];
    let host_paths: Vec<&str> = spec["volumes"]
        .as_array()
        .context("volumes")?
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    for p in [
        "/sys/fs/bpf",
        "/sys/fs/cgroup",
        "/var/run/netns",
        "/run/interceptor",
        "/opt/cni/bin",
        "/etc/cni/net.d",
    ] {
        assert!(host_paths.contains(&p), "{p} in {host_paths:?}");
    }
    let daemon = daemon_container(&ds)?;
    assert_eq!(
        daemon["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_ne!(daemon["securityContext"]["privileged"], json!(true));
    assert!(spec["hostPID"] == true && spec["hostNetwork"] == true);
    // The daemon's arguments are ones it accepts.
    let args: Vec<String> = daemon["args"]
        .as_array()
        .context("args")?
        .iter()
        .map(|a| a.as_str().unwrap_or("").replace("$(KUBEPODS_CGROUP)", "/x"))
        .collect();
    let out = Command::new(interceptor_bin())
        .args(&args)
        .arg("--help")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn the_configmaps_cni_entry_is_accepted_by_the_plugin() -> Result<()> {
    let cm = load("kubernetes/configmap.yaml")?;
    let mut entry: Value =
        serde_json::from_str(cm["data"]["cni-entry.json"].as_str().context("entry")?)?;
    // No daemon: a configuration the plugin accepts gets "try again later" (11), not an
    // invalid-configuration error (7).
    entry["socket"] = json!("/nonexistent/interceptor.sock");
    entry["daemonWaitSeconds"] = json!(0);
    entry["cniVersion"] = json!("1.0.0");
    entry["name"] = json!("k8s-pod-network");
    entry["type"] = json!("interceptor-cni");
    entry["prevResult"] = json!({"cniVersion": "1.0.0", "ips": []});
    let out = run_cni(
        &entry,
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web",
    )?;
    assert_eq!(out["code"], 11, "{out}");
    // ... and leaves excluded namespaces alone (prevResult printed back, no daemon asked).
    let out = run_cni(&entry, "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns")?;
    assert_eq!(out, entry["prevResult"]);
    Ok(())
}

fn run_cni(conf: &Value, args: &str) -> Result<Value> {
    use std::io::Write as _;
    let mut child = Command::new(bin_path("interceptor-cni")?)
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "deploy-test")
        .env("CNI_NETNS", "/proc/self/ns/net")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[test]
fn the_per_pod_example_replaces_istio_init_line_for_line() -> Result<()> {
    let args = |file: &str, container: &str| -> Result<Vec<String>> {
        let pod = load(file)?;
        let c = pod["spec"]["initContainers"]
            .as_array()
            .context("initContainers")?
            .iter()
            .find(|c| c["name"] == container)
            .context("container")?
            .clone();
        Ok(c["args"]
            .as_array()
            .context("args")?
            .iter()
            .map(|a| a.as_str().unwrap_or("").to_string())
            .collect())
    };
    let istio = args("examples/istio-init-pod.yaml", "istio-init")?;
    let ours = args("examples/interceptor-init-pod.yaml", "interceptor-init")?;
    assert_eq!(istio[0], "istio-iptables");
    assert_eq!(ours[0], "init");
    assert_eq!(
        ours[1..],
        istio[1..],
        "the istio-iptables arguments, unchanged, nothing added (the pod's cgroup is init's \
         default)"
    );
    // interceptor accepts them as they are (the test names a cgroup that does not exist here:
    // only that is refused).
    let mut check = vec!["init".to_string(), "--dry-run".into()];
    check.extend(istio[1..].iter().cloned());
    check.extend(["--cgroup".into(), "/nonexistent".into()]);
    let out = Command::new(interceptor_bin()).args(&check).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--cgroup /nonexistent"),
        "only the cgroup is refused: {err}"
    );
    Ok(())
}

#[test]
fn the_daemonsets_capabilities_run_the_daemon_and_cannot_be_narrowed() -> Result<()> {
    let ds = load("kubernetes/daemonset.yaml")?;
    let caps: Vec<String> = daemon_container(&ds)?["securityContext"]["capabilities"]["add"]
        .as_array()
        .context("add")?
        .iter()
        .map(|c| format!("+{}", c.as_str().unwrap_or("").to_lowercase()))
        .collect();
    let bounding = format!("-all,{}", caps.join(","));
    let node = CniNode::new("dmn-caps")?;
    let a = node.create_pod("a")?;
    let conflist = node.conflist(json!({ "options": { "istio-service-cidr": "*" } }));
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=a";
    {
        let _daemon = node.start_daemon_with(
            &["setpriv", "--bounding-set", &bounding, "--inh-caps", "-all"],
            &interceptor_bin(),
        )?;
        let runs = node.run_chain(&conflist, "ADD", &a, args, |_| Ok(()))?;
        ensure!(
            runs.iter().all(|r| r.success),
            "ADD with {caps:?}: {runs:#?}"
        );
        let _server = node.spawn_server(&[8080])?;
        let _sidecar = node.spawn_sidecar(&a, &[15001])?;
        let target: SocketAddr = addr(GATEWAY, 8080);
        let r = node.probe(&a, target)?;
        assert_eq!(route_of(&r), Route::Sidecar(target), "{r:?}");
        let runs = node.run_chain(&conflist, "DEL", &a, args, |_| Ok(()))?;
        ensure!(runs.iter().all(|r| r.success), "{runs:#?}");
    }
    // Without CAP_SYS_ADMIN (CAP_BPF and CAP_NET_ADMIN instead) pods cannot be registered.
    let b = node.create_pod("b")?;
    let _daemon = node.start_daemon_with(
        &[
            "setpriv",
            "--bounding-set",
            "-all,+bpf,+net_admin",
            "--inh-caps",
            "-all",
        ],
        &interceptor_bin(),
    )?;
    let out = node.pod_cli(&[
        "add",
        "--netns",
        b.netns_path().to_str().unwrap(),
        "-i",
        "*",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Operation not permitted"), "{err}");
    Ok(())
}

/// `init --dry-run` (which prints the cgroup it would attach to) from a process placed in
/// `container`, in a cgroup namespace rooted there or not: the cgroup, or the error.
fn default_cgroup_from(container: &Path, namespaced: bool) -> Result<Result<String, String>> {
    let mut cmd = Command::new(interceptor_bin());
    cmd.args(["init", "--dry-run", "-i", "*"]);
    in_cgroup(&mut cmd, container, namespaced)?;
    Ok(dry_run_cgroup(cmd.output()?))
}

fn dry_run_cgroup(out: std::process::Output) -> Result<String, String> {
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v["cgroup"].as_str().map(str::to_string))
        .ok_or_else(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The example names no cgroup: `init` attaches to the parent of its own. On cgroup v2 nodes
/// containerd and CRI-O put the container in a cgroup namespace, where its own cgroup reads as
/// `/` and the host's tree shows its root as `/../..`: it still finds the pod's directory.
#[test]
fn init_finds_its_pod_cgroup_with_or_without_a_cgroup_namespace() -> Result<()> {
    let tree = OwnedCgroup::new(
        &format!("interceptor-test-cgns-{}", std::process::id()),
        &["pod", "init"],
    )?;
    let pod = tree.path.join("pod");
    let container = pod.join("init");
    for namespaced in [false, true] {
        let found = default_cgroup_from(&container, namespaced)?;
        assert_eq!(
            found.as_deref(),
            Ok(pod.to_str().context("path")?),
            "namespaced: {namespaced}"
        );
    }
    // Directly below the root, the parent would be the root: refused, with the way out.
    for namespaced in [false, true] {
        let err = default_cgroup_from(&tree.path, namespaced)?.expect_err("the root is refused");
        assert!(err.contains("--cgroup"), "{err}");
    }
    Ok(())
}
