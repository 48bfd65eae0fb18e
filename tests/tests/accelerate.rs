//! `--accelerate` on the real kernel: the pod-local hop between the application and its proxy
//! moves socket to socket (sockmap, `sk_msg`), and every byte arrives exactly, whatever the
//! application does. Each case is played by `interceptor-stream-check`, whose two ends check
//! every byte they receive against the stream they agreed on, through two proxies: the
//! project's sidecar (forwards to `SO_ORIGINAL_DST`) and a stock one, nginx's stream module
//! with a fixed upstream. That the payload really skipped TCP over lo is checked on lo's own
//! byte counter; where it did not, the kernel counted a fall-back, and status shows it.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use interceptor_tests::cni_node::{CniNode, GATEWAY};
use interceptor_tests::outcome::assert_exit;
use interceptor_tests::{
    Identity, Intercepted, Place, Process, SEED_FLAGS, SIDECAR_BIN, Side, Topology, bin_path,
    interceptor, interceptor_bin,
};
use serde_json::{Value, json};

const CHECK_BIN: &str = "interceptor-stream-check";
/// Where the check's server listens, in the server namespace (outbound cases) or in the pod
/// (the proxy calling its own pod).
const SERVER_PORT: u16 = 7070;
const MIB: u64 = 1 << 20;
/// Bound for one client run (a hang is a failure, not a stuck test).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound for the server's line about a connection.
const LINE_TIMEOUT: Duration = Duration::from_secs(60);

fn flags(accelerate: bool) -> Vec<&'static str> {
    let mut f = SEED_FLAGS.to_vec();
    f.extend(["-z", "15006"]);
    if accelerate {
        f.push("--accelerate");
    }
    f
}

/// The proxy in the pod, as the proxy user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proxy {
    /// `interceptor-sidecar`: reads `SO_ORIGINAL_DST`, as Envoy does.
    Sidecar,
    /// nginx's stream module, relaying port 15001 to the server (a fixed upstream).
    Nginx,
}

/// A pod with a proxy and the check's server behind it.
struct Rig {
    pod: Intercepted,
    proxy: Process,
    server: Process,
    /// The server, as the application dials it.
    target: SocketAddr,
    _nginx_dir: Option<NginxDir>,
}

/// nginx's configuration directory, removed on drop.
struct NginxDir(PathBuf);

impl Drop for NginxDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Rig {
    fn new(tag: &str, proxy: Proxy, accelerate: bool) -> Result<Self> {
        let pod = Intercepted::new(tag, &flags(accelerate))?;
        let server = spawn_server(&pod.topo, &Place::Server)?;
        let target = SocketAddr::from((pod.topo.server_ip, SERVER_PORT));
        let (proxy_process, dir) = start_proxy(&pod.topo, proxy, target)?;
        Ok(Self {
            pod,
            proxy: proxy_process,
            server,
            target,
            _nginx_dir: dir,
        })
    }

    /// Runs the client with `args` in the pod as the application; its verdict.
    fn run(&self, args: &[String]) -> Result<Value> {
        run_client(&self.pod.topo, Identity::APP, self.target, args)
    }

    /// The server's verdict on the next connection (progress lines skipped).
    fn server_verdict(&self) -> Result<Value> {
        next_verdict(&self.server)
    }

    /// What the proxy logged so far (the project's sidecar logs each connection).
    fn proxy_lines(&self) -> String {
        let mut lines = Vec::new();
        while let Some(line) = self.proxy.next_stdout_line(Duration::from_millis(200)) {
            lines.push(line);
        }
        lines.join("\n")
    }

    /// Counters of this pod.
    fn counter(&self, name: &str) -> u64 {
        self.pod
            .counters()
            .ok()
            .and_then(|c| c[name].as_u64())
            .unwrap_or(0)
    }
}

fn spawn_server(topo: &Topology, place: &Place) -> Result<Process> {
    let mut cmd = topo.command(place, Identity::APP, bin_path(CHECK_BIN)?)?;
    let listen = match place {
        Place::Server | Place::ServerNetns { .. } => {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, SERVER_PORT))
        }
        _ => SocketAddr::from((topo.pod_ip, SERVER_PORT)),
    };
    cmd.args(["serve", "--listen", &listen.to_string()])
        .stdout(Stdio::piped());
    let mut server = topo.spawn(&mut cmd)?;
    server.wait_listening(listen, Duration::from_secs(10))?;
    Ok(server)
}

fn start_proxy(
    topo: &Topology,
    proxy: Proxy,
    upstream: SocketAddr,
) -> Result<(Process, Option<NginxDir>)> {
    match proxy {
        Proxy::Sidecar => Ok((
            topo.spawn_sidecar(
                &[15001, 15006],
                &[
                    "--log",
                    "--upstream-source",
                    "127.0.0.6",
                    "--upstream-source",
                    "::6",
                ],
            )?,
            None,
        )),
        Proxy::Nginx => {
            let dir = NginxDir(std::env::temp_dir().join(format!("{}-nginx", topo.name)));
            std::fs::create_dir_all(&dir.0)?;
            std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777))?;
            let module = "/usr/lib/nginx/modules/ngx_stream_module.so";
            let load = if std::path::Path::new(module).is_file() {
                format!("load_module {module};\n")
            } else {
                String::new()
            };
            let conf = format!(
                "{load}daemon off;\nmaster_process off;\nworker_processes 1;\n\
                 worker_rlimit_nofile 8192;\npid {dir}/nginx.pid;\nerror_log stderr warn;\n\
                 events {{ worker_connections 8192; }}\n\
                 stream {{ server {{ listen 15001 backlog=4096; proxy_pass {upstream}; \
                 proxy_half_close on; }} }}\n",
                dir = dir.0.display()
            );
            let path = dir.0.join("nginx.conf");
            std::fs::write(&path, conf)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
            let mut cmd = topo.command(&Place::Pod, Identity::PROXY, "nginx")?;
            cmd.args(["-e", "stderr", "-p"])
                .arg(&dir.0)
                .arg("-c")
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut nginx = topo.spawn(&mut cmd)?;
            nginx.wait_listening(
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, 15001)),
                Duration::from_secs(10),
            )?;
            Ok((nginx, Some(dir)))
        }
    }
}

fn client_command(
    topo: &Topology,
    who: Identity,
    to: SocketAddr,
    args: &[String],
) -> Result<std::process::Command> {
    let mut cmd = topo.command(&Place::Pod, who, bin_path(CHECK_BIN)?)?;
    cmd.args(["run", "--to", &to.to_string()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Ok(cmd)
}

fn run_client(topo: &Topology, who: Identity, to: SocketAddr, args: &[String]) -> Result<Value> {
    let finished = topo
        .spawn(&mut client_command(topo, who, to, args)?)?
        .wait(CLIENT_TIMEOUT)
        .with_context(|| format!("client {args:?}"))?;
    ensure!(
        finished.status.success(),
        "client {args:?} failed: {}",
        finished.stderr.trim()
    );
    let line = finished
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("client {args:?} printed no verdict"))?;
    Ok(serde_json::from_str(line)?)
}

fn next_verdict(server: &Process) -> Result<Value> {
    let deadline = Instant::now() + LINE_TIMEOUT;
    while Instant::now() < deadline {
        let Some(line) = server.next_stdout_line(deadline - Instant::now()) else {
            break;
        };
        let v: Value = serde_json::from_str(&line).with_context(|| line.clone())?;
        if v.get("case").is_some() {
            return Ok(v);
        }
    }
    bail!("the server printed no verdict in {LINE_TIMEOUT:?}")
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Bytes lo of the pod has carried (received; on lo every byte sent is received).
fn lo_bytes(topo: &Topology) -> Result<u64> {
    let out = std::process::Command::new("ip")
        .args(["-n", &topo.pod_netns, "-s", "-j", "link", "show", "lo"])
        .output()?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    v[0]["stats64"]["rx"]["bytes"]
        .as_u64()
        .context("lo's byte counter")
}

/// One case: the client's and the server's verdicts must both be good.
fn check_case(rig: &Rig, list: &[&str]) -> Result<()> {
    let client = rig.run(&args(list))?;
    let server = rig.server_verdict()?;
    // Not byte errors, but what a blocking application sees differently (README,
    // "Acceleration"): reported, bytes still checked.
    if client["spurious_eagain"].as_u64().unwrap_or(0)
        + client["short_waitall"].as_u64().unwrap_or(0)
        > 0
    {
        eprintln!("{list:?}: early EAGAIN or short MSG_WAITALL: {client}");
    }
    ensure!(
        client["ok"] == true,
        "{list:?}: client verdict {client}, server {server}; proxy: {}",
        rig.proxy_lines()
    );
    let case = client["case"].as_str().unwrap_or_default();
    match case {
        // The server's part: every byte it read was right and the stream ended as it should.
        "up" | "both" | "both-small" | "down" => ensure!(
            server["ok"] == true,
            "{list:?}: server verdict {server}, client {client}"
        ),
        // The client reset half-way: what the server read was a correct prefix.
        "abort" => ensure!(
            !server["detail"]
                .as_str()
                .unwrap_or_default()
                .starts_with("mismatch"),
            "{list:?}: server verdict {server}"
        ),
        _ => {}
    }
    Ok(())
}

/// Every case of the issue but the ones with their own test (stall, kill, clean), through
/// `rig`'s proxy.
fn the_whole_matrix(rig: &Rig) -> Result<()> {
    let file = std::env::temp_dir().join(format!("{}-sendfile", rig.pod.topo.name));
    let file_arg = file.display().to_string();
    let sizes = ["1", "65536", "1048576", &(64 * MIB).to_string()];
    for size in sizes {
        check_case(rig, &["--case", "up", "--size", size])?;
        check_case(rig, &["--case", "down", "--size", size])?;
    }
    let cases: Vec<Vec<&str>> = vec![
        vec!["--case", "up", "--size", "1048576", "--writes", "small"],
        vec!["--case", "both", "--size", "16777216"],
        vec!["--case", "both", "--size", "524288", "--writes", "small"],
        vec![
            "--case", "up", "--size", "8388608", "--via", "sendfile", "--file", &file_arg,
        ],
        vec![
            "--case", "up", "--size", "8388608", "--via", "splice", "--file", &file_arg,
        ],
        vec!["--case", "down", "--size", "4194304", "--recv", "peek"],
        vec!["--case", "down", "--size", "4194304", "--recv", "waitall"],
        vec!["--case", "down", "--size", "4194304", "--recv", "epoll"],
        vec!["--case", "reset", "--size", "4194304"],
        vec!["--case", "abort", "--size", "4194304"],
    ];
    for case in &cases {
        check_case(rig, case)?;
    }
    // 1,000 connections open at once, each echoing 16 KiB.
    let client = rig.run(&args(&[
        "--case",
        "echo",
        "--size",
        "16384",
        "--connections",
        "1000",
    ]))?;
    ensure!(
        client["ok"] == true,
        "1,000 connections: {client}; proxy: {}",
        rig.proxy_lines()
            .lines()
            .filter(|l| !l.ends_with("result=ok"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for i in 0..1000 {
        let v = rig.server_verdict()?;
        ensure!(v["ok"] == true, "1,000 connections, server line {i}: {v}");
    }
    Ok(())
}

/// The payload of a 64 MiB transfer each way did not cross lo (or a fall-back was counted).
fn payload_skipped_lo(rig: &Rig) -> Result<()> {
    for case in ["up", "down"] {
        let lo = lo_bytes(&rig.pod.topo)?;
        let fallbacks = rig.counter("accel_fallback_no_peer");
        check_case(rig, &["--case", case, "--size", &(64 * MIB).to_string()])?;
        let carried = lo_bytes(&rig.pod.topo)? - lo;
        let fell_back = rig.counter("accel_fallback_no_peer") > fallbacks;
        ensure!(
            carried < 4 * MIB || fell_back,
            "{case} 64 MiB: lo carried {carried} bytes and no fall-back was counted"
        );
    }
    Ok(())
}

fn byte_exact_through(tag: &str, proxy: Proxy) -> Result<()> {
    let rig = Rig::new(tag, proxy, true)?;
    payload_skipped_lo(&rig)?;
    the_whole_matrix(&rig)?;
    // Every connection's proxy end was paired; fall-backs, if any, were counted, not hidden.
    let accelerated = rig.counter("accelerated");
    ensure!(
        accelerated >= 1000,
        "only {accelerated} connections were accelerated: {}",
        rig.pod.counters()?
    );
    Ok(())
}

#[test]
fn every_byte_arrives_exactly_through_the_project_sidecar() -> Result<()> {
    byte_exact_through("acc-sidecar", Proxy::Sidecar)
}

#[test]
fn every_byte_arrives_exactly_through_nginx_stream() -> Result<()> {
    byte_exact_through("acc-nginx", Proxy::Nginx)
}

/// The proxy dialling its own pod goes to `-z` (15006): that hop is pod-local too, and
/// accelerated; the sidecar then reaches the application from 127.0.0.6 (not accelerated).
#[test]
fn the_proxy_calling_its_own_pod_is_accelerated_and_exact() -> Result<()> {
    let pod = Intercepted::new("acc-self", &flags(true))?;
    let _app = spawn_server(&pod.topo, &Place::Pod)?;
    let (_sidecar, _) = start_proxy(&pod.topo, Proxy::Sidecar, SocketAddr::from(([0; 4], 0)))?;
    let target = SocketAddr::from((pod.topo.pod_ip, SERVER_PORT));
    let before = pod.counters()?["accelerated"].as_u64().unwrap_or(0);
    for list in [
        ["--case", "up", "--size", "16777216"],
        ["--case", "down", "--size", "16777216"],
        ["--case", "both", "--size", "16777216"],
    ] {
        let v = run_client(&pod.topo, Identity::PROXY, target, &args(&list))?;
        ensure!(v["ok"] == true, "{list:?}: {v}");
    }
    let after = pod.counters()?["accelerated"].as_u64().unwrap_or(0);
    ensure!(after >= before + 3, "accelerated {before} -> {after}");
    Ok(())
}

/// Starts `down` of `size` bytes that stalls after 1 MiB; returns once the client stalled.
fn stalled_download(rig: &Rig, size: u64) -> Result<Process> {
    let list = args(&[
        "--case",
        "down",
        "--size",
        &size.to_string(),
        "--stall-at",
        &MIB.to_string(),
    ]);
    let mut cmd = client_command(&rig.pod.topo, Identity::APP, rig.target, &list)?;
    cmd.stdin(Stdio::piped());
    let client = rig.pod.topo.spawn(&mut cmd)?;
    match client.next_stdout_line(LINE_TIMEOUT) {
        Some(line) if line == "stalled" => Ok(client),
        other => bail!("the client did not stall: {other:?}"),
    }
}

/// How far the server's writer got: the last progress line, once none came for a second.
fn writer_progress(rig: &Rig) -> u64 {
    let mut last = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match rig.server.next_stdout_line(Duration::from_secs(1)) {
            Some(line) => {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && let Some(p) = v["progress"].as_u64()
                {
                    last = p;
                }
            }
            None => break,
        }
    }
    last
}

fn resume(client: &mut Process) -> Result<Value> {
    let mut stdin = client.take_stdin().context("stdin piped")?;
    stdin.write_all(b"go\n")?;
    drop(stdin);
    let finished = client.wait(CLIENT_TIMEOUT)?;
    let line = finished
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("no verdict")?
        .to_string();
    Ok(serde_json::from_str(&line)?)
}

/// A reader that stalls for a while: nothing is lost, and it all arrives once it reads again.
/// How far the writer got meanwhile is printed, with and without acceleration: the kernel
/// queues redirected messages without the reader's receive buffer as a bound (README,
/// "Acceleration", limits).
#[test]
fn a_stalled_reader_loses_nothing() -> Result<()> {
    const SIZE: u64 = 64 * MIB;
    for accelerate in [false, true] {
        let tag = if accelerate {
            "acc-stall"
        } else {
            "acc-stall-off"
        };
        let rig = Rig::new(tag, Proxy::Sidecar, accelerate)?;
        let mut client = stalled_download(&rig, SIZE)?;
        let ahead = writer_progress(&rig);
        let verdict = resume(&mut client)?;
        ensure!(verdict["ok"] == true, "accelerate={accelerate}: {verdict}");
        ensure!(rig.server_verdict()?["ok"] == true);
        eprintln!(
            "stalled reader, accelerate={accelerate}: the writer got {ahead} of {SIZE} bytes ahead"
        );
    }
    Ok(())
}

/// The proxy is killed while the application reads: it sees the end of the stream or an
/// error, never a hang, and every byte it got was right.
#[test]
fn a_proxy_killed_mid_transfer_is_an_error_not_a_hang() -> Result<()> {
    for proxy in [Proxy::Sidecar, Proxy::Nginx] {
        let tag = if proxy == Proxy::Sidecar {
            "acc-kill"
        } else {
            "acc-kill-nginx"
        };
        let mut rig = Rig::new(tag, proxy, true)?;
        let mut client = stalled_download(&rig, 64 * MIB)?;
        rig.proxy.kill();
        let v = resume(&mut client)?;
        let detail = v["detail"].as_str().unwrap_or_default();
        ensure!(
            detail == "eof" || detail.starts_with("error:"),
            "{proxy:?}: {v}"
        );
        ensure!(
            v["received"].as_u64().unwrap_or(u64::MAX) < 64 * MIB,
            "{proxy:?}: {v}"
        );
    }
    Ok(())
}

/// `clean`, and `init` again, while accelerated connections are open: they all finish with
/// every byte right.
#[test]
fn clean_and_reinit_leave_open_connections_exact() -> Result<()> {
    let rig = Rig::new("acc-clean", Proxy::Sidecar, true)?;
    for step in ["reinit", "reinit-off", "clean"] {
        let mut clients = (0..4)
            .map(|_| stalled_download(&rig, 16 * MIB))
            .collect::<Result<Vec<_>>>()?;
        match step {
            "reinit" => rig.pod.init(&flags(true))?,
            "reinit-off" => rig.pod.init(&flags(false))?,
            _ => {
                let out = rig.pod.clean();
                ensure!(out.status.success(), "clean failed");
            }
        }
        for client in &mut clients {
            let v = resume(client)?;
            ensure!(v["ok"] == true, "after {step}: {v}");
            ensure!(rig.server_verdict()?["ok"] == true, "after {step}");
        }
        if step == "reinit-off" {
            rig.pod.init(&flags(true))?;
        }
    }
    Ok(())
}

/// Without `--accelerate` nothing is paired: the payload crosses lo as before.
#[test]
fn without_accelerate_nothing_is_paired() -> Result<()> {
    let rig = Rig::new("acc-off", Proxy::Sidecar, false)?;
    let lo = lo_bytes(&rig.pod.topo)?;
    check_case(&rig, &["--case", "up", "--size", &(8 * MIB).to_string()])?;
    let carried = lo_bytes(&rig.pod.topo)? - lo;
    ensure!(carried >= 8 * MIB, "lo carried only {carried} bytes");
    let counters = rig.pod.counters()?;
    for name in [
        "accelerated",
        "accel_fallback_no_peer",
        "accel_fallback_not_paired",
    ] {
        ensure!(counters[name] == 0, "{name}: {counters}");
    }
    let status = rig.pod.status()?;
    ensure!(
        status["config"]["accelerate"] == false,
        "status shows acceleration on: {status}"
    );
    Ok(())
}

/// `--accelerate` is eBPF's: the iptables backend refuses it, naming it, and changes nothing.
#[test]
fn the_iptables_backend_refuses_accelerate() {
    let topo = Topology::new("acc-ipt").expect("topology");
    let netns = topo.netns_path(Side::Pod).display().to_string();
    let out = interceptor(&[
        "init",
        "--backend",
        "iptables",
        "--netns",
        &netns,
        "-i",
        "*",
        "--accelerate",
    ]);
    assert_exit(&out, 2, "--accelerate", &"iptables --accelerate");
}

/// Node mode: the CNI plugin takes `accelerate` per pod (CNI_ARGS here); only that pod's
/// connections are paired, through the node's shared programs.
#[test]
fn node_mode_accelerates_only_the_pods_that_ask() -> Result<()> {
    let node = CniNode::new("acc-node")?;
    let _daemon = node.start_daemon(&interceptor_bin())?;
    let listen = SocketAddr::from((Ipv4Addr::UNSPECIFIED, SERVER_PORT));
    let mut cmd = node.node_command(bin_path(CHECK_BIN)?)?;
    cmd.args(["serve", "--listen", &listen.to_string()])
        .stdout(Stdio::piped());
    let mut server = node.spawn(&mut cmd)?;
    server.wait_listening(listen, Duration::from_secs(10))?;
    let conflist = node.conflist(json!({
        "options": { "istio-service-cidr": "*", "proxy-uid": "1337" },
    }));
    let target = SocketAddr::from((GATEWAY, SERVER_PORT));
    let mut sidecars = Vec::new();
    let mut cookies = Vec::new();
    for (name, extra) in [("fast", ";INTERCEPTOR_ACCELERATE=true"), ("plain", "")] {
        let pod = node.create_pod(name)?;
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME={name}{extra}");
        let runs = node.run_chain(&conflist, "ADD", &pod, &args, |_| Ok(()))?;
        ensure!(runs.iter().all(|r| r.success), "ADD {name}: {runs:#?}");
        let mut cmd = node.pod_command(&pod, Identity::PROXY, bin_path(SIDECAR_BIN)?)?;
        cmd.args(["--listen", "15001"]).stdout(Stdio::null());
        let mut sidecar = node.spawn(&mut cmd)?;
        sidecar.wait_listening(
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 15001)),
            Duration::from_secs(10),
        )?;
        sidecars.push(sidecar);
        let mut cmd = node.pod_command(&pod, Identity::APP, bin_path(CHECK_BIN)?)?;
        cmd.args(["run", "--to", &target.to_string()])
            .args(["--case", "both", "--size", "4194304"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let done = node.spawn(&mut cmd)?.wait(CLIENT_TIMEOUT)?;
        let verdict: Value = serde_json::from_str(
            done.stdout
                .lines()
                .rev()
                .find(|l| l.starts_with('{'))
                .context("no verdict")?,
        )?;
        ensure!(verdict["ok"] == true, "{name}: {verdict} {}", done.stderr);
        ensure!(next_verdict(&server)?["ok"] == true, "{name}: server");
        let pods = node.pods()?;
        let entry = pods
            .iter()
            .find(|p| p["name"] == name)
            .context("registered")?;
        cookies.push(entry["netns_cookie"].as_u64().context("cookie")?);
    }
    ensure!(node.counter(cookies[0], "accelerated")? >= 1, "fast pod");
    ensure!(node.counter(cookies[1], "accelerated")? == 0, "plain pod");
    Ok(())
}
