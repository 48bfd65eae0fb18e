//! Node mode on the real kernel: `interceptor daemon` attached at a parent cgroup the test
//! made, pods registered through a real CNI chain (Debian's `bridge` + `host-local`, then
//! `interceptor-cni`) run the way a container runtime runs it, real traffic from each pod, a
//! kill -9 and an upgrade of the daemon under load, metrics, and DEL.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use interceptor_tests::cni_node::{CniNode, GATEWAY, Pod};
use interceptor_tests::{
    Finished, LoopSummary, Process, Route, addr, interceptor, interceptor_bin, route_of,
};
use serde_json::{Value, json};

/// Bound for a counter to move (the traffic loop makes hundreds of connections a second).
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(20);

fn gw(port: u16) -> SocketAddr {
    addr(GATEWAY, port)
}

/// The sidecar port a connection went through, or where it went otherwise.
fn sidecar_port(r: &interceptor_tests::ProbeResult) -> Option<u16> {
    r.sidecar_line().map(|s| s.port)
}

/// Waits until the pod's `counter` has grown by at least `by` from `from`.
fn wait_growth(node: &CniNode, cookie: u64, counter: &str, from: u64, by: u64) -> Result<u64> {
    let deadline = Instant::now() + PROGRESS_TIMEOUT;
    loop {
        let now = node.counter(cookie, counter)?;
        if now >= from + by {
            return Ok(now);
        }
        ensure!(
            Instant::now() < deadline,
            "{counter} of pod {cookie} stuck at {now} (wanted {})",
            from + by
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop_loop(mut l: Process) -> Result<LoopSummary> {
    drop(l.take_stdin());
    let Finished { stdout, stderr, .. } = l.wait(Duration::from_secs(30))?;
    serde_json::from_str(stdout.trim()).with_context(|| format!("loop output {stdout:?} {stderr}"))
}

/// The programs of the node's datapath (every build's), by name and id.
fn program_ids(node: &CniNode) -> Result<Vec<(String, u64)>> {
    Ok(node.status()?["programs"]
        .as_array()
        .context("programs")?
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p["id"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

fn pod_entry<'a>(pods: &'a [Value], name: &str) -> Option<&'a Value> {
    pods.iter().find(|p| p["name"] == name)
}

#[test]
fn daemon_and_cni_chain_end_to_end() -> Result<()> {
    let node = CniNode::new("dmn-e2e")?;
    let mut daemon = node.start_daemon(&interceptor_bin())?;
    let _server = node.spawn_server(&[8080, 8081])?;
    let conflist = node.conflist(json!({
        "options": { "istio-service-cidr": "*", "proxy-uid": "1337" },
        "excludeNamespaces": ["kube-system"],
    }));
    let a = node.create_pod("a")?;
    let b = node.create_pod("b")?;
    let c = node.create_pod("c")?;

    // ADD through the chain; interceptor-cni hands the bridge's result on untouched.
    let add = |pod: &Pod, args: &str| -> Result<()> {
        let runs = node.run_chain(&conflist, "ADD", pod, args, |_| Ok(()))?;
        let last = runs.last().context("runs")?;
        ensure!(
            runs.len() == 2 && runs.iter().all(|r| r.success),
            "ADD {}: {runs:#?}",
            pod.name
        );
        let bridge: Value = serde_json::from_str(&runs[0].stdout)?;
        ensure!(bridge["ips"][0]["address"].is_string(), "{bridge}");
        // Byte for byte what it was given as prevResult, which is the bridge's result.
        let given = serde_json::from_str::<Value>(&last.stdin)?["prevResult"].to_string();
        ensure!(last.stdout.trim() == given, "{} vs {given}", last.stdout);
        ensure!(serde_json::from_str::<Value>(&last.stdout)? == bridge);
        Ok(())
    };
    // As containerd passes them: IgnoreUnknown lets the reference plugins skip keys they do
    // not know.
    let args_a =
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=a;K8S_POD_INFRA_CONTAINER_ID=x";
    // b: its own proxy port and an excluded port, per pod through CNI_ARGS.
    let args_b = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=b;\
                  INTERCEPTOR_ENVOY_PORT=15002;INTERCEPTOR_ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE=8081";
    // c: in an excluded namespace: networked, never registered.
    let args_c = "IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=c";
    let args = |pod: &Pod| match pod.name.as_str() {
        "a" => args_a,
        "b" => args_b,
        _ => args_c,
    };
    for pod in [&a, &b, &c] {
        add(pod, args(pod))?;
    }
    let pods = node.pods()?;
    ensure!(pods.len() == 2, "{pods:#?}");
    let pa = pod_entry(&pods, "a").context("a registered")?;
    let pb = pod_entry(&pods, "b").context("b registered")?;
    assert_eq!(pa["container_id"], a.container_id.as_str());
    assert_eq!(pb["options"]["envoy_port"], "15002");
    let (cookie_a, cookie_b) = (
        pa["netns_cookie"].as_u64().context("cookie")?,
        pb["netns_cookie"].as_u64().context("cookie")?,
    );

    for pod in [&a, &b, &c] {
        let runs = node.run_chain(&conflist, "CHECK", pod, args(pod), |_| Ok(()))?;
        ensure!(
            runs.iter().all(|r| r.success),
            "CHECK {}: {runs:#?}",
            pod.name
        );
    }

    let _sidecar_a = node.spawn_sidecar(&a, &[15001])?;
    let _sidecar_b = node.spawn_sidecar(&b, &[15002])?;
    let _sidecar_c = node.spawn_sidecar(&c, &[15001])?;
    // Each pod's traffic goes where its own options say.
    let r = node.probe(&a, gw(8080))?;
    assert_eq!(
        (route_of(&r), sidecar_port(&r)),
        (Route::Sidecar(gw(8080)), Some(15001)),
        "{r:?}"
    );
    let r = node.probe(&a, gw(8081))?;
    assert_eq!(
        (route_of(&r), sidecar_port(&r)),
        (Route::Sidecar(gw(8081)), Some(15001)),
        "{r:?}"
    );
    let r = node.probe(&b, gw(8080))?;
    assert_eq!(
        (route_of(&r), sidecar_port(&r)),
        (Route::Sidecar(gw(8080)), Some(15002)),
        "{r:?}"
    );
    let r = node.probe(&b, gw(8081))?;
    assert_eq!(
        route_of(&r),
        Route::Direct(gw(8081)),
        "b excludes 8081: {r:?}"
    );
    // The unregistered pod, under the same parent cgroup, is untouched.
    let r = node.probe(&c, gw(8080))?;
    assert_eq!(
        route_of(&r),
        Route::Direct(gw(8080)),
        "c is not registered: {r:?}"
    );

    // Under load: kill -9 the daemon, let the loop run without it, start it again.
    let looping = node.spawn_loop(&a, gw(8080))?;
    let start = wait_growth(
        &node,
        cookie_a,
        "redirected",
        node.counter(cookie_a, "redirected")?,
        20,
    )?;
    daemon.kill();
    let before_restart = program_ids(&node)?;
    let during = wait_growth(&node, cookie_a, "redirected", start, 100)?;
    daemon = node.start_daemon(&interceptor_bin())?;
    let pods = node.pods()?;
    ensure!(pods.len() == 2, "re-adopted after kill -9: {pods:#?}");
    let after_restart = wait_growth(&node, cookie_a, "redirected", during, 50)?;

    // The same build loads nothing again: the node's programs are those it verified once.
    let after_kill = program_ids(&node)?;
    let datapath = node.status()?["datapath"].clone();

    // An upgrade whose maps differ (here: their sizes, which are part of the datapath's
    // identity, as a layout change is): the new daemon makes a datapath of its own, registers
    // every pod in it beside the old one, then lets the old one go.
    let v2 = node.dir.join("interceptor-v2");
    std::fs::copy(interceptor_bin(), &v2)?;
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGTERM) };
    daemon.wait(Duration::from_secs(10))?;
    let _daemon = node.start_daemon_full(&[], &v2, &["--max-pods", "32"])?;
    let pods = node.pods()?;
    ensure!(pods.len() == 2, "taken over by the new datapath: {pods:#?}");
    let cookie_a2 = pod_entry(&pods, "a").context("a")?["netns_cookie"].as_u64();
    ensure!(cookie_a2 == Some(cookie_a), "the same pod: {pods:#?}");
    let new_datapath = node.status()?["datapath"].clone();
    ensure!(new_datapath != datapath, "{datapath} -> {new_datapath}");
    // Nothing of this node is left in the old datapath (other tests' nodes may use it).
    let old = Path::new(interceptor_tests::BPFFS)
        .join("interceptor")
        .join(datapath.as_str().unwrap_or_default());
    ensure!(
        !old.join(format!("node-{}", node.cgroup_id()?)).exists(),
        "the old node links are gone"
    );
    // The counters go on in the new datapath.
    wait_growth(&node, cookie_a, "redirected", after_restart, 50)?;
    let after_upgrade = program_ids(&node)?;
    let summary = stop_loop(looping)?;
    eprintln!("connection loop through kill -9, restart and upgrade: {summary:?}");
    assert!(summary.stopped_by_stdin, "{summary:?}");
    assert_eq!(
        summary.failures, 0,
        "failed connections across restart and upgrade: {summary:?}"
    );
    assert_eq!(
        summary.direct, 0,
        "connections that escaped interception: {summary:?}"
    );
    assert!(summary.via_sidecar >= 220, "{summary:?}");
    // A restart of the same build: the same programs. The upgrade: the same names, every
    // program a new one.
    assert_eq!(
        before_restart, after_kill,
        "nothing loaded again after kill -9"
    );
    let names = |v: &[(String, u64)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&before_restart), names(&after_upgrade));
    assert!(
        // 15 attached to cgroups and namespaces, and `sk_msg` on the acceleration sockhash.
        before_restart.len() == 16
            && before_restart
                .iter()
                .zip(&after_upgrade)
                .all(|((_, old), (_, new))| old != new),
        "programs of the new datapath: {before_restart:?} -> {after_upgrade:?}"
    );
    // b kept its own options through both restarts.
    let r = node.probe(&b, gw(8081))?;
    assert_eq!(route_of(&r), Route::Direct(gw(8081)), "{r:?}");
    let r = node.probe(&b, gw(8080))?;
    assert_eq!(sidecar_port(&r), Some(15002), "{r:?}");

    let status = node.status()?;
    assert!(
        status["pods"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["pod"] == "shop/a")),
        "status names the daemon's pods: {status}"
    );

    // Metrics: per-pod counters by name, program statistics, map occupancy.
    let (code, metrics) = node.http_get("/metrics")?;
    assert_eq!(code, 200);
    let redirected_a = metrics
        .lines()
        .find(|l| {
            l.starts_with("interceptor_pod_events_total{namespace=\"shop\",pod=\"a\",")
                && l.contains("event=\"redirected\"")
        })
        .with_context(|| format!("a's redirected counter in {metrics}"))?;
    let value: u64 = redirected_a.rsplit(' ').next().unwrap().parse()?;
    assert!(
        value >= summary.via_sidecar,
        "{redirected_a} vs {summary:?}"
    );
    assert!(metrics.contains("pod=\"b\""), "{metrics}");
    assert!(metrics.contains("interceptor_program_runs_total{program=\"redirect_connect4\"}"));
    assert!(metrics.contains("interceptor_map_capacity{map=\"POD_CONFIG\"} 32"));
    assert_eq!(node.http_get("/healthz")?.0, 200);

    // DEL, in reverse chain order. Between interceptor-cni's DEL and the bridge's, the pod
    // still has its network: its traffic goes direct again.
    let mut checked = false;
    let runs = node.run_chain(&conflist, "DEL", &a, args_a, |run| {
        if run.plugin == "interceptor-cni" {
            ensure!(run.success && run.stdout.trim().is_empty(), "{run:#?}");
            let r = node.probe(&a, gw(8080))?;
            ensure!(route_of(&r) == Route::Direct(gw(8080)), "after DEL: {r:?}");
            checked = true;
        }
        Ok(())
    })?;
    ensure!(checked && runs.iter().all(|r| r.success), "{runs:#?}");
    let pods = node.pods()?;
    ensure!(
        pods.len() == 1 && pod_entry(&pods, "b").is_some(),
        "{pods:#?}"
    );
    ensure!(
        !node.status()?["pods"]
            .as_array()
            .context("pods")?
            .iter()
            .any(|p| p["netns_cookie"] == cookie_a),
        "a and its inbound link are gone"
    );
    // DEL is idempotent, and succeeds without a daemon.
    for pod in [&b, &a, &c] {
        let runs = node.run_chain(&conflist, "DEL", pod, args(pod), |_| Ok(()))?;
        ensure!(runs.iter().all(|r| r.success), "{runs:#?}");
    }
    drop(_daemon);
    let runs = node.run_chain(&conflist, "DEL", &a, args_a, |_| Ok(()))?;
    ensure!(
        runs.iter().all(|r| r.success),
        "DEL without a daemon: {runs:#?}"
    );
    let _ = cookie_b;
    Ok(())
}

/// Runs `interceptor-cni` by itself with `env` and `stdin`: (exit success, stdout).
fn cni(node: &CniNode, env: &[(&str, &str)], stdin: &str) -> Result<(bool, Value)> {
    use std::io::Write as _;
    let mut cmd = node.node_command(interceptor_tests::bin_path("interceptor-cni")?)?;
    cmd.env_clear()
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut p = node.spawn(&mut cmd)?;
    p.take_stdin()
        .context("stdin")?
        .write_all(stdin.as_bytes())?;
    let done = p.wait(Duration::from_secs(30))?;
    let out = if done.stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&done.stdout).with_context(|| done.stdout.clone())?
    };
    Ok((done.status.success(), out))
}

#[test]
fn the_daemon_refuses_what_it_cannot_do_and_drops_vanished_pods() -> Result<()> {
    let node = CniNode::new("dmn-edge")?;
    // Without a daemon: VERSION answers; ADD is the spec's "try again later"; DEL succeeds.
    let (ok, v) = cni(
        &node,
        &[("CNI_COMMAND", "VERSION")],
        r#"{"cniVersion":"1.0.0"}"#,
    )?;
    assert!(
        ok && v["supportedVersions"]
            .as_array()
            .is_some_and(|l| l.contains(&json!("1.0.0")))
    );
    let conf = json!({
        "cniVersion": "1.0.0", "name": "n", "type": "interceptor-cni",
        "socket": node.socket, "daemonWaitSeconds": 0,
        "prevResult": {"cniVersion": "1.0.0", "ips": []},
    })
    .to_string();
    let a = node.create_pod("a")?;
    let netns = a.netns_path().display().to_string();
    let env = |cmd| {
        vec![
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "c-1"),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ]
    };
    let (ok, e) = cni(&node, &env("ADD"), &conf)?;
    assert!(!ok && e["code"] == 11 && e["cniVersion"] == "1.0.0", "{e}");
    let (ok, out) = cni(&node, &env("DEL"), &conf)?;
    assert!(ok && out.is_null(), "{out}");

    let mut daemon = node.start_daemon(&interceptor_bin())?;
    // Root only: another user cannot use the API.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=1000", "--regid=1000", "--clear-groups"])
        .arg(interceptor_bin())
        .args(["pod", "--socket"])
        .arg(&node.socket)
        .arg("list")
        .output()?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A bad option value is the caller's mistake: exit 2 naming the flag, nothing registered.
    let netns_arg = ["add", "--netns", netns.as_str(), "--name", "a"];
    let out = node.pod_cli(&[&netns_arg[..], &["-p", "99999"]].concat());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-p/--envoy-port"));
    let out = node.pod_cli(&[&netns_arg[..], &["--backend", "iptables"]].concat());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("eBPF only"));
    // Through CNI: the same mistake is the spec's invalid-configuration error.
    let bad = conf.replace(
        r#""daemonWaitSeconds":0"#,
        r#""daemonWaitSeconds":0,"options":{"envoy-port":"0"}"#,
    );
    let (ok, e) = cni(&node, &env("ADD"), &bad)?;
    assert!(
        !ok && e["code"] == 7 && e["msg"].as_str().unwrap_or("").contains("envoy-port"),
        "{e}"
    );
    ensure!(node.pods()?.is_empty());
    // `init` leaves the daemon's cgroup alone.
    let out = interceptor(&[
        "init",
        "--cgroup",
        a.cgroup.parent().unwrap().to_str().unwrap(),
        "--netns",
        &netns,
        "-i",
        "*",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("node daemon"));

    // A pod whose namespace goes away while the daemon is down is dropped when it returns.
    let b = node.create_pod("b")?;
    for pod in [&a, &b] {
        let p = pod.netns_path();
        let out = node.pod_cli(&[
            "add",
            "--netns",
            p.to_str().unwrap(),
            "--name",
            &pod.name,
            "-i",
            "*",
        ]);
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ensure!(node.pods()?.len() == 2);
    daemon.kill();
    node.delete_pod_netns(&b)?;
    let _daemon = node.start_daemon(&interceptor_bin())?;
    let pods = node.pods()?;
    ensure!(pods.len() == 1 && pods[0]["name"] == "a", "{pods:#?}");
    ensure!(Path::new(&node.socket).exists());
    Ok(())
}
