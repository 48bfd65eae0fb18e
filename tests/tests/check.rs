//! `interceptor check` and `--backend auto` on the real kernel: every feature the eBPF backend
//! uses is found here and `auto` picks eBPF; a feature hidden from the probes (through the
//! test-only `INTERCEPTOR_TEST_HIDE_FEATURES`) sends `auto` to the iptables backend, which then
//! intercepts; and asking changes nothing: no program is attached, not even where `check`
//! runs, and no iptables table is created in a namespace that had none.

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use interceptor_tests::kernel::{SK_LOOKUP, attached, cgroup_programs};
use interceptor_tests::{
    Identity, Intercepted, Place, ProbeOptions, Route, Side, Topology, any, interceptor_bin,
    interceptor_env, route_of, run_in_netns,
};
use serde_json::Value;

const HIDE: &str = "INTERCEPTOR_TEST_HIDE_FEATURES";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn check_json(env: &[(&str, &str)]) -> Result<(Output, Value)> {
    let out = interceptor_env(&["check", "--json"], env);
    let report = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("check's JSON: {}", String::from_utf8_lossy(&out.stdout)))?;
    Ok((out, report))
}

#[test]
fn every_feature_is_here_and_auto_picks_ebpf() -> Result<()> {
    let (out, report) = check_json(&[])?;
    ensure!(out.status.success(), "check failed: {}", stderr(&out));
    let rows = report["rows"].as_array().context("rows")?;
    for id in [
        "connect",
        "sendmsg",
        "recvmsg",
        "getpeername",
        "post_bind",
        "sockops",
        "getsockopt",
        "sk_lookup",
        "sk_assign",
        "lpm_trie",
        "sockhash",
        "ringbuf",
        "sk_storage",
        "netns_cookie",
        "netns_cookie_sockops",
        "so_netns_cookie",
        "cgroup_link",
        "task_helpers",
        "iptables_legacy",
        "iptables_nft",
        "programs",
    ] {
        let row = rows
            .iter()
            .find(|r| r["id"] == id)
            .with_context(|| format!("no row {id}"))?;
        ensure!(row["present"] == true, "{id} is missing here: {row}");
        ensure!(
            row["since"].as_str().is_some_and(|s| !s.is_empty()),
            "{row}"
        );
        ensure!(
            row["loses"].as_str().is_some_and(|s| !s.is_empty()),
            "{row}"
        );
    }
    let table = interceptor_env(&["check"], &[]);
    let text = String::from_utf8_lossy(&table.stdout);
    ensure!(
        text.trim_end()
            .ends_with("the eBPF backend runs here (--backend auto: ebpf)"),
        "{text}"
    );

    // `init --backend auto` intercepts with eBPF: the pod is registered, no iptables rule.
    let pod = Intercepted::bare(Topology::new("chkauto")?);
    let out = pod.try_init(&["--backend", "auto", "-i", "*"]);
    ensure!(
        out.status.success(),
        "init --backend auto: {}",
        stderr(&out)
    );
    ensure!(
        pod.status().is_ok(),
        "the pod is not intercepted by eBPF: {}",
        stderr(&out)
    );
    ensure!(
        iptables_rules(&pod.topo)?.is_empty(),
        "iptables rules written"
    );
    Ok(())
}

#[test]
fn a_hidden_feature_sends_auto_to_iptables() -> Result<()> {
    let hidden = [(HIDE, "sk_lookup")];
    let (out, report) = check_json(&hidden)?;
    ensure!(!out.status.success(), "check succeeded without sk_lookup");
    ensure!(
        stderr(&out).contains("sk_lookup programs (network namespace) is missing"),
        "{}",
        stderr(&out)
    );
    let row = report["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["id"] == "sk_lookup"))
        .context("no sk_lookup row")?;
    ensure!(row["present"] == false, "{row}");
    ensure!(
        row["why"].as_str().is_some_and(|w| w.contains(HIDE)),
        "{row}"
    );
    ensure!(
        report["hidden"] == serde_json::json!(["sk_lookup"]),
        "{report}"
    );

    // `init --backend auto` falls back to the iptables backend and says why, in one line.
    let topo = Topology::new("chkhide")?;
    let _server = topo.spawn_server(&Place::Server, Identity::ROOT, &[any(8080)], &[])?;
    let _sidecar = topo.spawn_sidecar(&[15001], &["--announce"])?;
    let netns = topo.netns_path(Side::Pod).display().to_string();
    let cgroup = topo.pod_cgroup.display().to_string();
    let target = ["--cgroup", cgroup.as_str(), "--netns", netns.as_str()];
    let init: Vec<&str> = ["init", "--backend", "auto"]
        .into_iter()
        .chain(target)
        .chain(["-i", "*"])
        .collect();
    let out = interceptor_env(&init, &hidden);
    let cleanup = scopeguard(&target, &hidden);
    ensure!(
        out.status.success(),
        "init --backend auto: {}",
        stderr(&out)
    );
    let said: Vec<String> = stderr(&out)
        .lines()
        .filter(|l| l.contains("--backend auto"))
        .map(str::to_owned)
        .collect();
    ensure!(
        said.len() == 1
            && said[0].contains("using the iptables backend")
            && said[0].contains("sk_lookup programs")
            && said[0].contains("5.9"),
        "{said:?}"
    );
    let rules = iptables_rules(&topo)?;
    ensure!(
        rules
            .iter()
            .any(|l| l == "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"),
        "no istio rules: {rules:#?}"
    );
    // And it intercepts: the application's connection reaches the sidecar.
    let server = SocketAddr::new(topo.server_ip.into(), 8080);
    let r = topo.probe(Identity::APP, server, &ProbeOptions::default())?;
    ensure!(route_of(&r) == Route::Sidecar(server), "{r:?}");
    // `clean --backend auto` takes the same way, and removes the rules.
    drop(cleanup);
    ensure!(iptables_rules(&topo)?.is_empty(), "rules left by clean");
    Ok(())
}

#[test]
fn asking_changes_nothing() -> Result<()> {
    let topo = Topology::new("chknothing")?;
    ensure!(
        tables(&topo)?.is_empty(),
        "the new namespace has iptables tables already"
    );
    // `check` in the pod: its cgroup and network namespace.
    let mut cmd = topo.command(&Place::Pod, Identity::ROOT, interceptor_bin())?;
    cmd.args(["check", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let done = topo.spawn(&mut cmd)?.wait(Duration::from_secs(60))?;
    ensure!(done.status.success(), "check in the pod: {}", done.stderr);
    let report: Value = serde_json::from_str(&done.stdout)?;
    ensure!(
        report["rows"]
            .as_array()
            .is_some_and(|rows| rows.iter().all(|r| r["present"] == true)),
        "{report}"
    );
    // No table was created to find out which flavours work ...
    ensure!(tables(&topo)?.is_empty(), "check created iptables tables");
    // ... and no program attached, not even where check ran.
    ensure!(
        cgroup_programs(&topo.pod_cgroup)? == 0,
        "a program attached to the cgroup"
    );
    let netns = std::fs::File::open(topo.netns_path(Side::Pod))?;
    ensure!(attached(&netns, SK_LOOKUP)? == 0, "sk_lookup attached");
    Ok(())
}

/// The namespace's iptables tables, legacy and nft, both families: `/proc/net/*_tables_names`
/// (legacy; a table exists there once anything touched it) and the nft ones `iptables-nft-save`
/// lists.
fn tables(topo: &Topology) -> Result<Vec<String>> {
    let legacy = run_in_netns(
        &topo.netns_path(Side::Pod),
        || -> std::io::Result<Vec<String>> {
            let mut names = Vec::new();
            for file in ["/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"] {
                match std::fs::read_to_string(file) {
                    Ok(text) => names.extend(text.lines().map(|l| format!("legacy {l}"))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(names)
        },
    )??;
    let mut all = legacy;
    for tool in ["iptables-nft-save", "ip6tables-nft-save"] {
        all.extend(
            save(topo, tool)?
                .into_iter()
                .filter(|l| l.starts_with('*'))
                .map(|l| format!("{tool} {l}")),
        );
    }
    Ok(all)
}

/// `iptables-save`'s rules in the pod, of whichever flavour holds some.
fn iptables_rules(topo: &Topology) -> Result<Vec<String>> {
    let mut rules = Vec::new();
    for tool in ["iptables-legacy-save", "iptables-nft-save"] {
        rules.extend(
            save(topo, tool)?
                .into_iter()
                .filter(|l| l.starts_with("-A")),
        );
    }
    Ok(rules)
}

fn save(topo: &Topology, tool: &str) -> Result<Vec<String>> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &topo.pod_netns, tool])
        .output()?;
    ensure!(out.status.success(), "{tool}: {}", stderr(&out));
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// Runs `clean --backend auto` with the same environment when dropped.
struct Clean {
    args: Vec<String>,
    env: Vec<(String, String)>,
}

fn scopeguard(target: &[&str], env: &[(&str, &str)]) -> Clean {
    let mut args: Vec<String> = ["clean", "--backend", "auto"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    args.extend(target.iter().map(|s| s.to_string()));
    Clean {
        args,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

impl Drop for Clean {
    fn drop(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let out = interceptor_env(&args, &env);
        if !out.status.success() {
            eprintln!("clean: {}", stderr(&out));
        }
    }
}
