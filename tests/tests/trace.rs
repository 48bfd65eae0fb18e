//! `interceptor trace` on the real kernel: nothing is written while no tracer is attached,
//! events the full ring buffer cannot take are counted and shown, filters, one tracer per
//! datapath, the programs' aya-log records (`--kernel-log`, and the node daemon's log), and a
//! pod registered while a tracer runs (node mode) followed.
//!
//! Each test pins into a bpffs of its own: its datapath, and so its tracer, are its alone.
//! (The differential test holds every decision `trace` shows to `explain`'s.)

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Output;
use std::time::Duration;

use anyhow::{Result, ensure};
use interceptor_tests::bpffs::PrivateBpffs;
use interceptor_tests::cni_node::{CniNode, GATEWAY};
use interceptor_tests::tracer::Tracer;
use interceptor_tests::{
    Identity, Place, ProbeCase, Side, Topology, addr, any, interceptor, interceptor_bin,
};
use serde_json::Value;

/// A pod intercepted by `init` into a bpffs of its own; cleaned (then unmounted) on drop.
struct Pod {
    topo: Topology,
    bpffs: PrivateBpffs,
}

impl Pod {
    fn new(tag: &str, flags: &[&str]) -> Result<Self> {
        let pod = Pod {
            topo: Topology::new(tag)?,
            bpffs: PrivateBpffs::new(tag)?,
        };
        let mut args = vec!["init".to_owned()];
        args.extend(pod.target());
        args.extend(flags.iter().map(|f| f.to_string()));
        let out = run(&args)?;
        ensure!(out.status.success(), "init: {}", stderr(&out));
        Ok(pod)
    }

    /// `--cgroup`, `--netns`, `--bpffs`.
    fn target(&self) -> Vec<String> {
        vec![
            "--cgroup".into(),
            self.topo.pod_cgroup.display().to_string(),
            "--netns".into(),
            self.topo.netns_path(Side::Pod).display().to_string(),
            self.bpffs.arg(),
        ]
    }

    /// A tracer of this pod's datapath with `args`.
    fn tracer(&self, args: &[&str], read: bool) -> Result<Tracer> {
        let bpffs = self.bpffs.arg();
        let all: Vec<&str> = [bpffs.as_str()]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        Tracer::start(&all, read)
    }

    /// TCP connections from the pod as the application, one process.
    fn connect(&self, targets: &[SocketAddr]) -> Result<()> {
        let cases: Vec<ProbeCase> = targets.iter().map(|t| ProbeCase::to(*t)).collect();
        self.topo
            .probe_batch(&Place::Pod, Identity::APP, &cases, Duration::from_secs(2))?;
        Ok(())
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let mut args = vec!["clean".to_owned()];
        args.extend(self.target());
        match run(&args) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("clean: {}", stderr(&out)),
            Err(e) => eprintln!("clean: {e:#}"),
        }
    }
}

fn run(args: &[String]) -> Result<Output> {
    Ok(interceptor(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The trace lines of connections (not `lost` reports).
fn decisions(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|l| l.get("verdict").is_some())
        .collect()
}

#[test]
fn nothing_is_written_while_no_tracer_is_attached() -> Result<()> {
    let pod = Pod::new("trnone", &["-i", "*", "-x", "10.200.1.0/24"])?;
    let server = SocketAddr::new(pod.topo.server_ip.into(), 8080);
    let _servers = pod
        .topo
        .spawn_server(&Place::Server, Identity::ROOT, &[any(8080)], &[])?;
    // Before any tracer, then between two tracers: decisions the programs would trace.
    pod.connect(&[server; 5])?;
    let first = pod.tracer(&["--json", "--duration", "2"], true)?;
    pod.connect(&[server])?;
    let first = first.finish()?.json()?;
    // The first tracer saw what happened while it ran, and only that: a ring buffer keeps
    // what nobody read, so anything written before would be in it.
    ensure!(
        decisions(&first).len() == 1,
        "one connection traced: {first:#?}"
    );
    pod.connect(&[server; 5])?;
    let second = pod.tracer(&["--json", "--duration", "1"], true)?.finish()?;
    ensure!(
        second.json()?.is_empty(),
        "written while detached: {}",
        second.stdout
    );
    ensure!(
        second
            .stderr
            .contains("0 line(s) shown of 0 event(s); 0 lost"),
        "{}",
        second.stderr
    );
    Ok(())
}

#[test]
fn events_the_ring_buffer_cannot_take_are_counted_and_shown() -> Result<()> {
    let pod = Pod::new("trlost", &["-i", "*"])?;
    // A tracer whose output nobody reads falls behind: its pipe fills, then the kernel's ring
    // buffer (256 KiB, about 2,300 events), and the programs count what they cannot write.
    let tracer = pod.tracer(&["--json", "--duration", "3"], false)?;
    let made = 6000;
    // Refused at once (nothing listens on 127.0.0.1:9): each connect is one decision.
    pod.connect(&vec![addr(Ipv4Addr::LOCALHOST, 9); made])?;
    let traced = tracer.finish()?;
    let lines = traced.json()?;
    let shown = decisions(&lines).len();
    let lost: u64 = lines.iter().filter_map(|l| l["lost"].as_u64()).sum();
    ensure!(lost > 0, "nothing lost of {made}: {}", traced.stderr);
    // Every decision is accounted for: shown, or counted as lost.
    ensure!(
        shown as u64 + lost == made as u64,
        "{shown} shown + {lost} lost != {made} made; {}",
        traced.stderr
    );
    ensure!(
        traced.stderr.contains(&format!("; {lost} lost")),
        "the summary says it: {}",
        traced.stderr
    );
    // In words too.
    let tracer = pod.tracer(&["--duration", "3"], false)?;
    pod.connect(&vec![addr(Ipv4Addr::LOCALHOST, 9); made])?;
    let text = tracer.finish()?.stdout;
    ensure!(
        text.lines()
            .any(|l| l.starts_with("lost ") && l.contains("the ring buffer was full")),
        "no lost line in words"
    );
    Ok(())
}

#[test]
fn filters_and_one_tracer_per_datapath() -> Result<()> {
    let pod = Pod::new("trfilter", &["-i", "*", "-x", "10.200.1.0/24"])?;
    let _servers =
        pod.topo
            .spawn_server(&Place::Server, Identity::ROOT, &[any(8080), any(3306)], &[])?;
    let excluded = addr(pod.topo.server_extra_ips[0], 8080);
    let redirected = addr(pod.topo.server_ip, 8080);
    let other_port = addr(pod.topo.server_extra_ips[0], 3306);
    let tracer = pod.tracer(&["--json", "--verdict", "direct", "--port", "8080"], true)?;
    // A second tracer of the same datapath is refused, saying why.
    let bpffs = pod.bpffs.arg();
    let second = std::process::Command::new(interceptor_bin())
        .args(["trace", &bpffs, "--duration", "1"])
        .output()?;
    ensure!(!second.status.success(), "a second tracer ran");
    ensure!(
        stderr(&second).contains("another tracer is attached"),
        "{}",
        stderr(&second)
    );
    pod.connect(&[excluded, redirected, other_port, excluded])?;
    let lines = tracer.stop()?.json()?;
    let shown = decisions(&lines);
    ensure!(shown.len() == 2, "two of four connections: {lines:#?}");
    for l in shown {
        ensure!(
            l["verdict"] == "direct" && l["dst"] == excluded.to_string(),
            "{l}"
        );
        ensure!(l["counter"] == "direct_excluded_cidr", "{l}");
        ensure!(
            l["rules"][0]["text"] == "-d 10.200.1.0/24 -j RETURN"
                && l["rules"][0]["option"] == "-x 10.200.1.0/24",
            "{l}"
        );
        // The process that connected: the probe, as the application user.
        ensure!(l["uid"] == 1000 && l["comm"] == "interceptor-pro", "{l}");
        ensure!(l["pid"].as_u64().is_some_and(|p| p > 1), "{l}");
    }
    Ok(())
}

#[test]
fn a_failed_original_destination_is_traced() -> Result<()> {
    let pod = Pod::new("trorig", &["-i", "*", "-b", "9080"])?;
    let _sidecar = pod.topo.spawn_sidecar(&[15001], &["--announce"])?;
    let tracer = pod.tracer(&["--json", "--verdict", "failed"], true)?;
    // Straight to the sidecar's port from outside: not captured (-b 9080), so when the sidecar
    // asks where the connection was going, nobody knows (ENOENT, as netfilter answers).
    let to = addr(pod.topo.pod_ip, 15001);
    let _ = pod.topo.probe_from(
        &Place::Server,
        Identity::APP,
        to,
        &interceptor_tests::ProbeOptions::default(),
    )?;
    let lines = tracer.stop()?.json()?;
    let failed = decisions(&lines);
    ensure!(failed.len() == 1, "{lines:#?}");
    let l = failed[0];
    ensure!(
        l["kind"] == "orig_dst"
            && l["errno"] == "ENOENT"
            && l["dst"] == to.to_string()
            && l["uid"] == 1337
            && l["src"]
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("{}:", pod.topo.server_ip))),
        "{l}"
    );
    // The process that asked: the sidecar (`comm` is the asking thread's name, tokio's here).
    let pid = l["pid"].as_u64().unwrap_or_default();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    ensure!(
        String::from_utf8_lossy(&cmdline).contains("interceptor-sidecar"),
        "pid {pid} is not the sidecar: {}",
        String::from_utf8_lossy(&cmdline)
    );
    Ok(())
}

#[test]
fn the_programs_log_records_are_printed() -> Result<()> {
    let pod = Pod::new("trklog", &["-i", "*", "--kernel-log-level", "debug"])?;
    let tracer = pod.tracer(&["--kernel-log", "--json", "--count", "1"], true)?;
    let target = addr(pod.topo.server_ip, 8080);
    pod.connect(&[target])?;
    let records = tracer.finish()?.json()?;
    let want = format!("redirect {target} -> 127.0.0.1:15001");
    ensure!(
        records
            .iter()
            .any(|r| r["level"] == "DEBUG" && r["message"] == want.as_str()),
        "no {want:?} among {records:#?}"
    );
    Ok(())
}

#[test]
fn node_mode_follows_a_pod_added_while_tracing_and_the_daemon_logs_kernel_records() -> Result<()> {
    let bpffs = PrivateBpffs::new("trnode")?;
    let node = CniNode::new("trnode")?;
    let mut daemon = node.start_daemon_full(
        &[],
        &interceptor_bin(),
        &[&bpffs.arg(), "--kernel-log-level", "debug"],
    )?;
    let _server = node.spawn_server(&[8080])?;
    let result = (|| -> Result<()> {
        // Tracing the pod by name before it exists.
        let tracer = Tracer::start(&[&bpffs.arg(), "--pod", "shop/late", "--json"], true)?;
        let pod = node.create_pod("late")?;
        let netns = pod.netns_path().display().to_string();
        let out = node.pod_cli(&[
            "add",
            "--netns",
            &netns,
            "--namespace",
            "shop",
            "--name",
            "late",
            "-i",
            "*",
        ]);
        ensure!(out.status.success(), "pod add: {}", stderr(&out));
        let target = addr(GATEWAY, 8080);
        node.probe(&pod, target)?;
        let lines = tracer.stop()?.json()?;
        let shown = decisions(&lines);
        ensure!(
            shown.iter().any(|l| l["pod"] == "shop/late"
                && l["dst"] == target.to_string()
                && l["verdict"] == "redirected"),
            "the pod added while tracing is not followed: {lines:#?}"
        );
        ensure!(shown.iter().all(|l| l["pod"] == "shop/late"), "{lines:#?}");
        // explain names the same rule for the pod, by name.
        let dst = target.to_string();
        let out = interceptor(&[
            "explain",
            &bpffs.arg(),
            "--pod",
            "shop/late",
            "--uid",
            "1000",
            "--to",
            &dst,
            "--json",
        ]);
        ensure!(out.status.success(), "explain --pod: {}", stderr(&out));
        let said: Value = serde_json::from_slice(&out.stdout)?;
        ensure!(
            said["verdict"] == "redirect" && said["pod"] == "shop/late",
            "{said}"
        );
        let traced = shown
            .iter()
            .find(|l| l["dst"] == dst.as_str())
            .expect("traced above");
        ensure!(said["rules"] == traced["rules"], "{said} vs {traced}");
        Ok(())
    })();
    // The daemon's log, with the kernel's records forwarded into it.
    daemon.kill();
    let log = daemon.wait(Duration::from_secs(10))?.stderr;
    result?;
    ensure!(
        log.contains("forwarding the programs' log records"),
        "the daemon does not forward kernel records: {log}"
    );
    ensure!(
        log.lines().any(|l| l.contains("kernel=")
            && l.contains("level=DEBUG")
            && l.contains(&format!("redirect {GATEWAY}:8080 -> 127.0.0.1:15001"))),
        "no kernel record in the daemon's log: {log}"
    );
    Ok(())
}

#[test]
fn a_tracer_needs_interception_to_trace() -> Result<()> {
    let bpffs = PrivateBpffs::new("trempty")?;
    let out = interceptor(&["trace", &bpffs.arg(), "--duration", "1"]);
    ensure!(!out.status.success());
    let err = stderr(&out);
    ensure!(err.contains("no interception on this node"), "{err}");
    Ok(())
}

/// The per-pod example's init container has CAP_BPF and CAP_NET_ADMIN only: the verifier takes
/// the programs' event-writing code only from CAP_PERFMON (or CAP_SYS_ADMIN), so such an init
/// loads them without it. It intercepts all the same, and `trace` says why it shows nothing.
#[test]
fn an_init_with_cap_bpf_and_cap_net_admin_only_intercepts_and_trace_says_why_it_cannot_trace()
-> Result<()> {
    let topo = Topology::new("trcaps")?;
    let bpffs = PrivateBpffs::new("trcaps")?;
    let bin = interceptor_bin();
    let bpffs_arg = bpffs.arg();
    let cgroup = topo.pod_cgroup.display().to_string();
    // In the pod's network namespace already (as in its container): no --netns, which would
    // need CAP_SYS_ADMIN.
    let mut cmd = topo.command(&Place::Pod, Identity::ROOT, "setpriv")?;
    cmd.args(["--bounding-set", "-all,+bpf,+net_admin"])
        .arg(&bin)
        .args(["init", "--cgroup", &cgroup, &bpffs_arg, "-i", "*"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let done = topo.spawn(&mut cmd)?.wait(Duration::from_secs(60))?;
    let clean = || {
        let netns = topo.netns_path(Side::Pod).display().to_string();
        let out = interceptor(&["clean", "--cgroup", &cgroup, "--netns", &netns, &bpffs_arg]);
        if !out.status.success() {
            eprintln!("clean: {}", stderr(&out));
        }
    };
    let outcome = (|| -> Result<()> {
        ensure!(done.status.success(), "init: {}", done.stderr);
        let _sidecar = topo.spawn_sidecar(&[15001], &["--announce"])?;
        let target = SocketAddr::new(topo.server_ip.into(), 8080);
        let r = topo.probe(
            Identity::APP,
            target,
            &interceptor_tests::ProbeOptions::default(),
        )?;
        ensure!(
            interceptor_tests::route_of(&r) == interceptor_tests::Route::Sidecar(target),
            "the application's connection reaches the sidecar: {r:?}"
        );
        let out = interceptor(&["trace", &bpffs_arg, "--duration", "1"]);
        ensure!(
            !out.status.success(),
            "trace attached to untraceable programs"
        );
        let text = stderr(&out);
        ensure!(
            text.contains("without CAP_PERFMON") && text.contains("CAP_PERFMON too"),
            "trace says why and what to do: {text}"
        );
        Ok(())
    })();
    clean();
    outcome
}
