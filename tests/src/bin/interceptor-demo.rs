//! `cargo xtask demo`: intercept real traffic in a pod this demo creates, show the path each
//! connection took (from the sidecar's log, the server's view and `getpeername`), why
//! (`interceptor explain`) and as it happens (`interceptor trace`), then clean up, also on error
//! and on Ctrl-C.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use interceptor_tests::{
    Identity, Place, ProbeOptions, Process, SEED_FLAGS, Side, Topology, bin_path, tracer::Tracer,
};

/// How long to wait for the sidecar's log line of a connection (absent when it went direct).
const SIDECAR_LOG_WAIT: Duration = Duration::from_millis(1500);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Fails (leading to the same cleanup as any error) once SIGINT or SIGTERM has arrived.
fn check_interrupted() -> Result<()> {
    ensure!(
        !INTERRUPTED.load(Ordering::SeqCst),
        "interrupted: cleaning up"
    );
    Ok(())
}

/// The pod with interception attached; `clean` runs on drop, before the topology goes.
struct Demo {
    topo: Topology,
    bin: PathBuf,
    instance: String,
}

impl Demo {
    fn interceptor(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .with_context(|| format!("running {}", self.bin.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let why = match INTERRUPTED.load(Ordering::SeqCst) {
            true => " (interrupted)",
            false => "",
        };
        ensure!(
            out.status.success(),
            "interceptor {args:?} failed ({}){why}:\n{text}",
            out.status
        );
        Ok(text)
    }

    fn init(&self, flags: &[&str]) -> Result<()> {
        let cgroup = self.topo.pod_cgroup.display().to_string();
        let netns = self.topo.netns_path(Side::Pod).display().to_string();
        let mut args = vec!["init", "--cgroup", &cgroup, "--netns", &netns];
        args.extend(flags);
        println!("$ interceptor {}", shell_words(&args));
        print_indented(&self.interceptor(&args)?);
        Ok(())
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        println!("\n== clean");
        let cgroup = self.topo.pod_cgroup.display().to_string();
        match self.interceptor(&["clean", "--cgroup", &cgroup]) {
            Ok(out) => print_indented(&out),
            Err(e) => eprintln!("demo: clean failed: {e:#}"),
        }
        // `topo` is dropped next: processes killed, cgroups and namespaces removed.
    }
}

/// One request of the demo and the path it is expected to take.
struct Request {
    who: &'static str,
    identity: Identity,
    to: SocketAddr,
    via_sidecar: bool,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("demo: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        ensure!(
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            unsafe { libc::signal(signal, handler) } != libc::SIG_ERR,
            "installing handler"
        );
    }
    let bin = match std::env::var_os("INTERCEPTOR_BIN") {
        Some(path) => PathBuf::from(path),
        None => bin_path("interceptor")?,
    };

    println!("== topology");
    let topo = Topology::new("demo").context("creating the demo pod")?;
    let ino = std::fs::metadata(&topo.pod_cgroup)
        .context("pod cgroup")?
        .ino();
    let demo = Demo {
        instance: format!("cgroup {ino}"),
        topo,
        bin,
    };
    let t = &demo.topo;
    println!(
        "  pod    netns {} ip {}  cgroup {}",
        t.pod_netns,
        t.pod_ip,
        t.pod_cgroup.display()
    );
    println!(
        "  server netns {} ips {} {:?}",
        t.server_netns, t.server_ip, t.server_extra_ips
    );
    check_interrupted()?;

    // Port 80 for an unprivileged server: a sysctl of the server namespace, which is ours.
    t.run_in(Side::Server, || {
        std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0")
    })?
    .context("allowing port 80 in the server namespace")?;
    let any80 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 80));
    let _server = t
        .spawn_server(&Place::Server, Identity::APP, &[any80], &["--http"])
        .context("starting the HTTP server")?;
    println!("  HTTP server on 0.0.0.0:80 in the server netns");
    let any9080 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 9080));
    let _app = t
        .spawn_server(&Place::Pod, Identity::APP, &[any9080], &["--http"])
        .context("starting the application")?;
    println!("  application (uid 1000) HTTP on 0.0.0.0:9080 in the pod");
    // Envoy's inbound passthrough: the sidecar reaches the application from 127.0.0.6.
    let sidecar = t
        .spawn_sidecar(
            &[15001, 15006],
            &["--log", "--upstream-source", "127.0.0.6"],
        )
        .context("starting the sidecar")?;
    println!("  sidecar (uid 1337) on 15001 (outbound), 15006 (inbound) in the pod");
    check_interrupted()?;

    println!("\n== init (the seed invocation)");
    demo.init(&SEED_FLAGS)?;
    check_interrupted()?;

    let [extra, excluded] = [t.server_extra_ips[0], t.server_extra_ips[1]];
    let app = |to: Ipv4Addr, via_sidecar| Request {
        who: "app",
        identity: Identity::APP,
        to: SocketAddr::from((to, 80)),
        via_sidecar,
    };
    let proxy = Request {
        who: "proxy",
        identity: Identity::PROXY,
        ..app(t.server_ip, false)
    };
    let mut wrong = Vec::new();
    println!("\n== requests");
    for request in [
        app(t.server_ip, true),
        app(extra, true),
        app(excluded, true),
        proxy,
    ] {
        check_interrupted()?;
        show(&demo, &sidecar, &request, &mut wrong)?;
    }
    check_interrupted()?;
    show_inbound(
        &demo,
        &sidecar,
        SocketAddr::from((t.pod_ip, 9080)),
        &mut wrong,
    )?;

    println!("\n== init again, excluding {excluded}/32 (replaces the config atomically)");
    check_interrupted()?;
    let exclude = format!("{excluded}/32");
    let mut flags = SEED_FLAGS;
    flags[9] = &exclude;
    demo.init(&flags)?;
    println!("\n== requests");
    for request in [app(excluded, false), app(extra, true)] {
        check_interrupted()?;
        show(&demo, &sidecar, &request, &mut wrong)?;
    }

    check_interrupted()?;
    explain_and_trace(&demo, &sidecar, &[extra, excluded], &mut wrong)?;

    check_interrupted()?;
    println!("\n== status ({})", demo.instance);
    let status = demo.interceptor(&["status"])?;
    let mut ours = false;
    for line in status.lines() {
        // The node's datapath, and this demo's pod (others may run on the node).
        if line.starts_with("datapath ") {
            ours = true;
        } else if let Some(name) = line.strip_prefix("pod ") {
            ours = name.starts_with(&format!("{} ", demo.instance));
        } else if line.starts_with("instance ") {
            ours = false;
        }
        if ours {
            println!("  {line}");
        }
    }
    ensure!(wrong.is_empty(), "unexpected paths: {}", wrong.join("; "));
    println!("\nall requests took the expected path");
    Ok(())
}

/// `interceptor explain` for a redirected and an excluded connection of the application, then
/// `interceptor trace` while it makes them: each line shows the verdict and the rule explain
/// named.
fn explain_and_trace(
    demo: &Demo,
    sidecar: &Process,
    to: &[Ipv4Addr],
    wrong: &mut Vec<String>,
) -> Result<()> {
    let netns = demo.topo.netns_path(Side::Pod).display().to_string();
    let cgroup = demo.topo.pod_cgroup.display().to_string();
    let mut rules = Vec::new();
    for ip in to {
        let dst = format!("{ip}:80");
        let args = [
            "explain", "--cgroup", &cgroup, "--netns", &netns, "--uid", "1000", "--to", &dst,
        ];
        println!("\n$ interceptor {}", shell_words(&args));
        print_indented(&demo.interceptor(&args)?);
        let json = demo.interceptor(&[&args[..], &["--json"]].concat())?;
        let said: serde_json::Value = serde_json::from_str(&json)?;
        let rule = &said["rules"][0];
        rules.push((
            dst,
            said["verdict"].as_str().unwrap_or_default().to_owned(),
            format!(
                "{}: {} (from {})",
                rule["chain"].as_str().unwrap_or_default(),
                rule["text"].as_str().unwrap_or_default(),
                rule["option"].as_str().unwrap_or_default()
            ),
        ));
    }
    check_interrupted()?;
    println!("\n== trace (while the application makes those two requests)");
    println!("$ interceptor trace --netns {netns}    (Ctrl-C after the requests)");
    let tracer = Tracer::start(&["--netns", &netns], true)?;
    for ip in to {
        let options = ProbeOptions {
            http: true,
            ..ProbeOptions::default()
        };
        demo.topo
            .probe(Identity::APP, SocketAddr::from((*ip, 80)), &options)?;
        // The redirected one's sidecar log line, which `show` would otherwise read.
        let _ = sidecar.next_stdout_line(SIDECAR_LOG_WAIT);
    }
    let traced = tracer.stop()?;
    print_indented(&traced.stdout);
    for (dst, verdict, rule) in rules {
        let shown = traced
            .stdout
            .lines()
            .find(|l| l.contains(&format!(" {dst} ")));
        let want = if verdict == "redirect" {
            "redirected:"
        } else {
            "direct"
        };
        if !shown.is_some_and(|l| l.contains(want) && l.ends_with(&format!("| {rule}"))) {
            wrong.push(format!("trace of {dst}: not {want} by {rule}"));
        }
    }
    Ok(())
}

/// Sends one HTTP request and prints the path it took, from the evidence of each hop.
fn show(demo: &Demo, sidecar: &Process, r: &Request, wrong: &mut Vec<String>) -> Result<()> {
    let options = ProbeOptions {
        http: true,
        ..ProbeOptions::default()
    };
    let result = demo.topo.probe(r.identity, r.to, &options);
    // The sidecar logs a connection when it ends; its client is the probe's own socket.
    let log = sidecar.next_stdout_line(SIDECAR_LOG_WAIT);
    // Ctrl-C reaches the sidecar and server too: what they said since then is no evidence.
    check_interrupted()?;
    let result = result?;
    let server = result.server_line();
    let conn = log.as_deref().and_then(parse_conn);
    let peer_name = result.peer_name.map_or("-".to_owned(), |a| a.to_string());
    let path = match (&conn, server) {
        _ if !result.connected => format!("failed: {}", result.error.as_deref().unwrap_or("?")),
        (Some(c), Some(s)) => format!(
            "app -> sidecar:{} (SO_ORIGINAL_DST {}) -> server (saw peer {})",
            c.port,
            c.orig,
            s.peer.ip()
        ),
        (Some(c), None) => format!(
            "app -> sidecar:{} (SO_ORIGINAL_DST {}) -> ?",
            c.port, c.orig
        ),
        (None, Some(s)) => format!("{} -> server directly (saw peer {})", r.who, s.peer),
        (None, None) => "no answer".to_owned(),
    };
    let who = format!("{} (uid {})", r.who, r.identity.uid);
    println!(
        "  {who:<16} -> {:<14}: {path}  getpeername()={peer_name}",
        r.to.to_string()
    );
    if let (Some(c), Some(local)) = (&conn, result.local)
        && c.peer != local
    {
        println!(
            "    (sidecar line for another client {}: {})",
            c.peer,
            log.unwrap_or_default()
        );
    }
    let via_sidecar = conn.as_ref().is_some_and(|c| c.orig == r.to.to_string());
    let direct =
        conn.is_none() && server.is_some_and(|s| s.peer.ip() == IpAddr::V4(demo.topo.pod_ip));
    if !(result.connected && if r.via_sidecar { via_sidecar } else { direct }) {
        wrong.push(format!("{who} -> {}", r.to));
    }
    Ok(())
}

/// A client in the server namespace calls the pod's port 9080 (`-b 9080,`): `sk_lookup` hands
/// the connection to the sidecar's inbound listener, destination kept, and the sidecar passes
/// it on to the application from 127.0.0.6.
fn show_inbound(
    demo: &Demo,
    sidecar: &Process,
    to: SocketAddr,
    wrong: &mut Vec<String>,
) -> Result<()> {
    let options = ProbeOptions {
        http: true,
        ..ProbeOptions::default()
    };
    let result = demo
        .topo
        .probe_from(&Place::Server, Identity::APP, to, &options);
    let log = sidecar.next_stdout_line(SIDECAR_LOG_WAIT);
    check_interrupted()?;
    let result = result?;
    let conn = log.as_deref().and_then(parse_conn);
    let app = result.server_line();
    let path = match (&conn, app) {
        _ if !result.connected => format!("failed: {}", result.error.as_deref().unwrap_or("?")),
        (Some(c), Some(a)) => format!(
            "sidecar:{} (SO_ORIGINAL_DST {}) -> application (saw peer {})",
            c.port,
            c.orig,
            a.peer.ip()
        ),
        (None, Some(a)) => format!("application directly (saw peer {})", a.peer),
        (_, None) => "no answer from the application".to_owned(),
    };
    println!(
        "  {:<16} -> {:<14}: {path}",
        "client (server)",
        to.to_string()
    );
    let steered = conn
        .as_ref()
        .is_some_and(|c| c.port == "15006" && c.orig == to.to_string());
    let passthrough = app.is_some_and(|a| a.peer.ip() == IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)));
    if !(result.connected && steered && passthrough) {
        wrong.push(format!("inbound -> {to}"));
    }
    Ok(())
}

/// The fields of `conn port=.. peer=.. orig=.. to_upstream=.. to_client=.. result=..`.
struct Conn {
    port: String,
    peer: SocketAddr,
    orig: String,
}

fn parse_conn(line: &str) -> Option<Conn> {
    let rest = line.strip_prefix("conn ")?;
    let field = |key: &str| {
        rest.split(' ')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
    };
    Some(Conn {
        port: field("port")?,
        peer: field("peer")?.parse().ok()?,
        orig: field("orig")?,
    })
}

fn shell_words(args: &[&str]) -> String {
    let quote = |a: &&str| match *a {
        "" => "\"\"".to_owned(),
        "*" => "'*'".to_owned(),
        a => a.to_owned(),
    };
    args.iter().map(quote).collect::<Vec<_>>().join(" ")
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("  {line}");
    }
}
