//! The node daemon and the CNI plugin tried the way an attacker or a careless operator would,
//! on the real binaries: a real daemon attached at a parent cgroup the test made, pods that are
//! real network namespaces, clients that are `interceptor pod`, `interceptor-cni` and raw
//! sockets. Every case is bounded in time; what is asserted is the answer (its reason, its exit
//! code) and that other requests are served meanwhile, not how fast.

use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use interceptor_tests::cni_node::{CniNode, Pod};
use interceptor_tests::{Finished, interceptor_bin};
use serde_json::{Value, json};

/// The daemon's deadline for a whole request (`api::REQUEST_DEADLINE`), and for reading the
/// request line (`api::READ_DEADLINE`).
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);
const READ_DEADLINE: Duration = Duration::from_secs(10);
/// A generous bound on "answered within the request deadline": a request that hung would
/// never end, and the client itself gives up only after 40 s.
const ANSWERED_WITHIN: Duration = Duration::from_secs(35);
/// The daemon's limit on one request (`api::MAX_REQUEST`).
const MAX_REQUEST: usize = 4 << 20;

/// `interceptor pod --socket <node's> ARGS`, bounded: killed (and an error) if it has not
/// ended within [`ANSWERED_WITHIN`].
fn pod_cli(node: &CniNode, args: &[&str]) -> Result<Finished> {
    pod_cli_with(node, Command::new(interceptor_bin()), args)
}

fn pod_cli_with(node: &CniNode, mut cmd: Command, args: &[&str]) -> Result<Finished> {
    cmd.arg("pod")
        .arg("--socket")
        .arg(&node.socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    node.spawn(&mut cmd)?
        .wait(ANSWERED_WITHIN)
        .with_context(|| format!("pod {args:?} was not answered"))
}

/// Runs `interceptor-cni` with exactly `env` and `stdin`, bounded: (exit code, stdout as JSON
/// or null, stderr).
fn cni(
    node: &CniNode,
    env: &[(&str, &OsStr)],
    stdin: &str,
) -> Result<(Option<i32>, Value, String)> {
    let mut cmd = node.node_command(interceptor_tests::bin_path("interceptor-cni")?)?;
    cmd.env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut p = node.spawn(&mut cmd)?;
    let mut input = p.take_stdin().context("stdin")?;
    let stdin = stdin.to_string();
    // A large configuration is written beside the plugin reading it.
    let writer = std::thread::spawn(move || input.write_all(stdin.as_bytes()));
    let done = p.wait(ANSWERED_WITHIN)?;
    let _ = writer.join();
    let out = if done.stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&done.stdout).with_context(|| done.stdout.clone())?
    };
    Ok((done.status.code(), out, done.stderr))
}

fn cni_env<'a>(command: &'a str, pod: &'a Pod, netns: &'a OsStr) -> Vec<(&'a str, &'a OsStr)> {
    vec![
        ("CNI_COMMAND", OsStr::new(command)),
        ("CNI_CONTAINERID", OsStr::new(&pod.container_id)),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", OsStr::new("eth0")),
        ("CNI_PATH", OsStr::new("/usr/lib/cni")),
        (
            "CNI_ARGS",
            OsStr::new("K8S_POD_NAMESPACE=shop;K8S_POD_NAME=x"),
        ),
    ]
}

/// The spec's error object, exit 1: (code, msg).
fn cni_error(answer: &(Option<i32>, Value, String)) -> Result<(u64, String)> {
    let (exit, out, stderr) = answer;
    ensure!(
        *exit == Some(1),
        "exit {exit:?}, stdout {out}, stderr {stderr}"
    );
    ensure!(
        !stderr.contains("panicked"),
        "the plugin panicked: {stderr}"
    );
    let code = out["code"]
        .as_u64()
        .with_context(|| format!("no code in {out}"))?;
    let msg = out["msg"]
        .as_str()
        .with_context(|| format!("no msg in {out}"))?;
    ensure!(out["cniVersion"].is_string(), "{out}");
    Ok((code, msg.to_string()))
}

fn stderr_of(f: &Finished) -> &str {
    f.stderr.trim()
}

/// The names of the registered pods.
fn registered(node: &CniNode) -> Result<Vec<String>> {
    let out = pod_cli(node, &["list", "--json"])?;
    ensure!(out.status.success(), "pod list: {}", out.stderr);
    let pods: Vec<Value> = serde_json::from_str(&out.stdout)?;
    let mut names: Vec<String> = pods
        .iter()
        .map(|p| p["name"].as_str().unwrap_or("").to_string())
        .collect();
    names.sort();
    Ok(names)
}

/// Raises this process's stack limit to 64 MiB (run in a child before exec: the kernel then
/// takes up to 6 MiB of arguments).
fn raise_stack_limit() -> std::io::Result<()> {
    let stack = libc::rlimit {
        rlim_cur: 64 << 20,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid pointer to a local rlimit for the duration of the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_STACK, &stack) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn mkfifo(path: &Path) -> Result<()> {
    let out = Command::new("mkfifo").arg(path).output()?;
    ensure!(
        out.status.success(),
        "mkfifo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A raw API client that sends `request` one byte every `every`, stopping when the daemon
/// closes; returns how many bytes it sent and the answer line the daemon sent (empty if none).
fn dribble(
    socket: &Path,
    request: &'static [u8],
    every: Duration,
) -> Result<std::thread::JoinHandle<Result<(usize, String)>>> {
    let stream = UnixStream::connect(socket)?;
    Ok(std::thread::spawn(move || -> Result<(usize, String)> {
        let mut sent = 0;
        for b in request {
            if (&stream).write_all(&[*b]).is_err() {
                break;
            }
            sent += 1;
            std::thread::sleep(every);
        }
        // Bounded: the daemon answers at its read deadline, long before this.
        stream.set_read_timeout(Some(ANSWERED_WITHIN))?;
        let mut answer = String::new();
        BufReader::new(&stream).read_line(&mut answer)?;
        Ok((sent, answer))
    }))
}

#[test]
fn the_cni_plugin_answers_every_failure_with_the_specs_error_object() -> Result<()> {
    let node = CniNode::new("hard-cni")?;
    let pod = node.create_pod("a")?;
    let netns = pod.netns_path();
    let conf = |wait: Value| {
        json!({
            "cniVersion": "1.0.0", "name": "n", "type": "interceptor-cni",
            "socket": node.socket, "daemonWaitSeconds": wait,
            "prevResult": {"cniVersion": "1.0.0", "ips": []},
        })
        .to_string()
    };
    // No daemon runs. An absurd wait once overflowed the clock: exit 101, nothing on stdout.
    for command in ["ADD", "CHECK"] {
        let answer = cni(
            &node,
            &cni_env(command, &pod, netns.as_os_str()),
            &conf(json!(18446744073709551615u64)),
        )?;
        let (code, msg) = cni_error(&answer)?;
        assert_eq!(code, 7, "{command}: {msg}");
        assert!(
            msg.contains("daemonWaitSeconds 18446744073709551615") && msg.contains("to 300"),
            "{command}: {msg}"
        );
    }
    for bad in [json!(-1), json!(301), json!(2.5), json!("10")] {
        let (code, msg) = cni_error(&cni(
            &node,
            &cni_env("ADD", &pod, netns.as_os_str()),
            &conf(bad.clone()),
        )?)?;
        assert!(
            code == 7 && msg.contains(&format!("daemonWaitSeconds {bad}")),
            "{msg}"
        );
    }
    // A wait within bounds, and no daemon: "try again later" once it has passed.
    let (code, msg) = cni_error(&cni(
        &node,
        &cni_env("ADD", &pod, netns.as_os_str()),
        &conf(json!(1)),
    )?)?;
    assert!(code == 11 && msg.contains("no daemon answers"), "{msg}");
    // An environment that is not UTF-8: the spec's "invalid environment variables".
    let (code, msg) = cni_error(&cni(
        &node,
        &cni_env("ADD", &pod, OsStr::from_bytes(b"/run/netns/\xff")),
        &conf(json!(0)),
    )?)?;
    assert!(
        code == 4 && msg.contains("CNI_NETNS is not valid UTF-8"),
        "{msg}"
    );
    // A configuration that is not JSON: "failed to decode content", with the reason.
    let answer = cni(
        &node,
        &cni_env("ADD", &pod, netns.as_os_str()),
        "{\"cniVersion\":",
    )?;
    let (code, _) = cni_error(&answer)?;
    assert!(code == 6 && answer.1["details"].is_string(), "{}", answer.1);
    Ok(())
}

#[test]
fn requests_that_cannot_be_served_are_answered_promptly_and_hold_up_no_other() -> Result<()> {
    let node = CniNode::new("hard-block")?;
    let _daemon = node.start_daemon(&interceptor_bin())?;
    let a = node.create_pod("a")?;
    let b = node.create_pod("b")?;
    let a_netns = a.netns_path();
    let out = pod_cli(
        &node,
        &[
            "add",
            "--netns",
            a_netns.to_str().unwrap(),
            "--name",
            "a",
            "-i",
            "*",
        ],
    )?;
    ensure!(out.status.success(), "{}", out.stderr);

    // Held open through everything below: a client that has started its request and sends
    // nothing more.
    let mut idle = UnixStream::connect(&node.socket)?;
    idle.write_all(b"{")?;

    // A FIFO named as the pod's namespace once blocked the daemon on open(), lock held.
    let fifo = node.dir.join("fifo");
    mkfifo(&fifo)?;
    let fifo_arg = fifo.to_str().unwrap();
    let out = pod_cli(
        &node,
        &["add", "--netns", fifo_arg, "--name", "f", "-i", "*"],
    )?;
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        stderr_of(&out).contains(&format!("--netns {fifo_arg}: cannot open it as a network namespace: not a network namespace file")),
        "{}",
        out.stderr
    );
    // The same through CNI (CNI_NETNS): the spec's error, with the daemon's reason.
    let conf = json!({
        "cniVersion": "1.0.0", "name": "n", "type": "interceptor-cni",
        "socket": node.socket, "daemonWaitSeconds": 0,
        "options": {"istio-service-cidr": "*"},
        "prevResult": {"cniVersion": "1.0.0", "ips": []},
    })
    .to_string();
    let (code, msg) = cni_error(&cni(&node, &cni_env("ADD", &b, fifo.as_os_str()), &conf)?)?;
    assert!(
        code == 7 && msg.contains("not a network namespace file"),
        "{msg}"
    );

    // resolv.conf: endless (/dev/zero once grew the daemon until it was OOM-killed), a FIFO
    // (blocks an open for reading), a file over the size read.
    let big = node.dir.join("resolv-big.conf");
    std::fs::write(&big, "# padding\n".repeat(10_000))?;
    let b_netns = b.netns_path();
    for (resolv, reason) in [
        (
            Path::new("/dev/zero"),
            "/dev/zero is not a regular file".to_string(),
        ),
        (fifo.as_path(), format!("{fifo_arg} is not a regular file")),
        (
            big.as_path(),
            format!(
                "{} is 100000 bytes; a resolv.conf of at most 65536 bytes is read",
                big.display()
            ),
        ),
    ] {
        let out = pod_cli(
            &node,
            &[
                "add",
                "--netns",
                b_netns.to_str().unwrap(),
                "--name",
                "b",
                "-i",
                "*",
                "--redirect-dns",
                "--resolv-conf",
                resolv.to_str().unwrap(),
            ],
        )?;
        assert!(!out.status.success());
        assert!(
            stderr_of(&out).contains(&format!("--resolv-conf {}: {reason}", resolv.display())),
            "{}",
            out.stderr
        );
    }

    // Meanwhile (the idle client still connected) the daemon serves everyone else.
    assert_eq!(registered(&node)?, ["a"]);
    let out = pod_cli(
        &node,
        &[
            "add",
            "--netns",
            b_netns.to_str().unwrap(),
            "--name",
            "b",
            "-i",
            "*",
        ],
    )?;
    ensure!(out.status.success(), "{}", out.stderr);
    assert_eq!(registered(&node)?, ["a", "b"]);

    // The socket's mode keeps other users out; the daemon checks the client's uid as well
    // (SO_PEERCRED), for a socket made reachable by mistake.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&node.socket, std::fs::Permissions::from_mode(0o666))?;
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=1000", "--regid=1000", "--clear-groups"])
        .arg(interceptor_bin());
    let out = pod_cli_with(&node, cmd, &["list"])?;
    std::fs::set_permissions(&node.socket, std::fs::Permissions::from_mode(0o600))?;
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        stderr_of(&out)
            .contains("permission denied: only root may use the interceptor API (client uid 1000)"),
        "{}",
        out.stderr
    );

    // The idle client is told why it is cut off, at the read deadline.
    idle.set_read_timeout(Some(ANSWERED_WITHIN))?;
    let mut answer = String::new();
    BufReader::new(&idle).read_line(&mut answer)?;
    let answer: Value = serde_json::from_str(&answer).with_context(|| answer.clone())?;
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains(&format!(
                "no complete request within {} s",
                READ_DEADLINE.as_secs()
            ))),
        "{answer}"
    );
    Ok(())
}

#[test]
fn a_client_sending_a_byte_every_3_s_is_cut_off_at_the_read_deadline() -> Result<()> {
    let node = CniNode::new("hard-slow")?;
    let _daemon = node.start_daemon(&interceptor_bin())?;
    // 13 bytes, one every 3 s: 39 s if nobody stopped it, far past the read deadline (the
    // timeout used to be per read, so this client kept its connection for ever).
    let slow = dribble(&node.socket, br#"{"op":"list"}"#, Duration::from_secs(3))?;
    // Others are served while it dribbles.
    for _ in 0..3 {
        assert!(registered(&node)?.is_empty());
        std::thread::sleep(Duration::from_secs(1));
    }
    let (sent, answer) = slow.join().expect("the slow client's thread")?;
    // Cut off while it was still sending, not once it had finished.
    assert!(sent < 13, "the daemon read all {sent} bytes: {answer}");
    let answer: Value = serde_json::from_str(&answer).with_context(|| answer.clone())?;
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!(
            "no complete request within {} s",
            READ_DEADLINE.as_secs()
        )),
        "{answer}"
    );
    // The daemon is still there for the next client.
    assert!(registered(&node)?.is_empty());
    let _ = REQUEST_DEADLINE;
    Ok(())
}

#[test]
fn an_oversized_request_is_refused_with_its_size_and_the_limit() -> Result<()> {
    let node = CniNode::new("hard-size")?;
    let _daemon = node.start_daemon(&interceptor_bin())?;
    let a = node.create_pod("a")?;
    let a_netns = a.netns_path();

    // 300,000 CIDRs, as repeated -i arguments (one argument is capped at 128 KiB); the child's
    // stack limit is raised before exec so that the kernel takes arguments this long (it
    // allows a quarter of the limit, at most 6 MiB).
    let cidrs: Vec<String> = (0..300_000u32)
        .map(|i| format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 255, i & 255))
        .collect();
    let chunks: Vec<String> = cidrs.chunks(8_000).map(|c| c.join(",")).collect();
    let mut args = vec!["add", "--netns", a_netns.to_str().unwrap(), "--name", "a"];
    for chunk in &chunks {
        args.extend(["-i", chunk.as_str()]);
    }
    let mut cmd = Command::new(interceptor_bin());
    // SAFETY: the hook only calls setrlimit(2), which is async-signal-safe.
    unsafe { cmd.pre_exec(raise_stack_limit) };
    let out = pod_cli_with(&node, cmd, &args)?;
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("pod add: the request is ")
            && stderr.contains(&format!(
                "more than the daemon accepts ({MAX_REQUEST} bytes, 4 MiB)"
            ))
            && !stderr.contains("Broken pipe"),
        "{stderr}"
    );
    let size: usize = stderr
        .split("the request is ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .with_context(|| stderr.to_string())?;
    assert!(size > MAX_REQUEST, "{stderr}");

    // Through CNI: the same request is the configuration's mistake.
    let conf = json!({
        "cniVersion": "1.0.0", "name": "n", "type": "interceptor-cni",
        "socket": node.socket, "daemonWaitSeconds": 0,
        "options": {"istio-service-cidr": cidrs},
        "prevResult": {"cniVersion": "1.0.0", "ips": []},
    })
    .to_string();
    let (code, msg) = cni_error(&cni(
        &node,
        &cni_env("ADD", &a, a_netns.as_os_str()),
        &conf,
    )?)?;
    assert!(
        code == 7 && msg.contains(&format!("({MAX_REQUEST} bytes")),
        "{msg}"
    );

    // A client that does not check: the daemon reads up to the limit, answers why, and
    // closes; the client, still sending, reads that answer after its broken pipe.
    let stream = UnixStream::connect(&node.socket)?;
    stream.set_write_timeout(Some(ANSWERED_WITHIN))?;
    stream.set_read_timeout(Some(ANSWERED_WITHIN))?;
    let writer = {
        let stream = stream.try_clone()?;
        std::thread::spawn(move || (&stream).write_all(&vec![b' '; MAX_REQUEST + (1 << 20)]))
    };
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    // Its writes end in a broken pipe (or fit in the socket's buffers): either way, done.
    let _ = writer.join().expect("the writer thread");
    let answer: Value = serde_json::from_str(&answer).with_context(|| answer.clone())?;
    assert!(
        answer["usage"] == true
            && answer["error"]
                .as_str()
                .is_some_and(|e| e.contains(&format!(
                    "the request is larger than the daemon accepts ({MAX_REQUEST} bytes, 4 MiB)"
                ))),
        "{answer}"
    );
    // Nothing was registered, and the daemon serves the next client.
    assert!(registered(&node)?.is_empty());
    Ok(())
}
