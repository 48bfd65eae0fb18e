//! `report.md` (every table, with ratios) and `performance-section.md` (the README's section),
//! both computed from `results.json` alone, so that every figure shown is one it holds.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context as _, Result};

use super::modes::Mode;
use super::plot;
use super::results::{Case, Figure, Results, Workload};
use super::stats::{Summary, paired_ratios};

/// Writes report.md, the plots and performance-section.md into `dir`.
pub fn write_all(root: &Path, dir: &Path, r: &Results) -> Result<()> {
    let plots = plot::draw_all(dir, r)?;
    let report = report(r, &plots);
    fs::write(dir.join("report.md"), report).context("writing report.md")?;
    // Image paths from the repository root, where the README lives.
    let rel = dir
        .canonicalize()
        .ok()
        .and_then(|d| {
            Some(
                d.strip_prefix(root.canonicalize().ok()?)
                    .ok()?
                    .to_path_buf(),
            )
        })
        .unwrap_or_else(|| dir.to_path_buf());
    fs::write(
        dir.join("performance-section.md"),
        performance_section(r, &rel, &plots),
    )
    .context("writing performance-section.md")?;
    Ok(())
}

// ---------- formatting ----------

fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// A figure with sensible precision: 12,345 / 123 / 12.3 / 1.23.
fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 {
        thousands(x)
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn us(x: f64) -> String {
    if x >= 1000.0 {
        format!("{:.2} ms", x / 1000.0)
    } else {
        format!("{x:.0} µs")
    }
}

fn with_range(s: Option<Summary>, f: impl Fn(f64) -> String) -> String {
    match s {
        None => "–".into(),
        Some(s) if s.n == 1 => f(s.median),
        Some(s) => format!("{} ({}–{})", f(s.median), f(s.min), f(s.max)),
    }
}

fn ratio(s: Option<Summary>) -> String {
    match s {
        None => "–".into(),
        Some(s) if s.n == 1 => format!("{:.2}×", s.median),
        Some(s) => format!("{:.2}× ({:.2}–{:.2})", s.median, s.min, s.max),
    }
}

fn median_only(s: Option<Summary>, f: impl Fn(f64) -> String) -> String {
    s.map_or("–".into(), |s| f(s.median))
}

// ---------- lookups ----------

fn summary(r: &Results, mode: Mode, case: Case, fig: Figure) -> Option<Summary> {
    Summary::of_series(&r.series(mode, case, fig))
}

/// `mode / other` for the same case, round by round.
fn ratio_to(r: &Results, mode: Mode, other: Mode, case: Case, fig: Figure) -> Option<Summary> {
    Summary::of(paired_ratios(
        &r.series(mode, case, fig),
        &r.series(other, case, fig),
    ))
}

/// The same mode at two cases (e.g. 10,000 CIDRs over 0), round by round.
fn ratio_cases(r: &Results, mode: Mode, a: Case, b: Case, fig: Figure) -> Option<Summary> {
    Summary::of(paired_ratios(
        &r.series(mode, a, fig),
        &r.series(mode, b, fig),
    ))
}

fn case(workload: Workload, conns: u32, cidrs: u32) -> Case {
    Case {
        workload,
        conns,
        cidrs,
    }
}

fn close_case(r: &Results, cidrs: u32) -> Case {
    case(Workload::Close, r.settings.close_conns, cidrs)
}

fn connect4_name(r: &Results) -> Option<String> {
    r.program_names()
        .into_iter()
        .find(|n| n.contains("connect4"))
}

fn errors(r: &Results, mode: Mode, c: Case) -> u64 {
    r.samples
        .iter()
        .filter(|s| s.mode == mode && s.case == c)
        .filter_map(|s| s.http.as_ref().map(|h| h.errors.total()))
        .sum()
}

// ---------- targets ----------

struct Target {
    what: String,
    measured: String,
    verdict: String,
    /// For throughput targets: the same comparison of the pod's CPU time per request, which
    /// other work on the machine disturbs much less than throughput.
    cpu: String,
}

/// `met`, `missed`, or `met by the median, not in every round`.
fn verdict(s: Option<Summary>, ok: impl Fn(f64) -> bool) -> String {
    match s {
        None => "not measured".into(),
        Some(s) if ok(s.median) && ok(s.min) && ok(s.max) => "**met**".into(),
        Some(s) if ok(s.median) => "met by the median, not in every round".into(),
        Some(_) => "**missed**".into(),
    }
}

fn targets(r: &Results) -> Vec<Target> {
    let mut out = Vec::new();
    let nft = Mode::IptablesNft;
    let close0 = close_case(r, 0);
    let max_cidrs = r.settings.cidr_counts.iter().copied().max().unwrap_or(0);
    let close_max = close_case(r, max_cidrs);
    let ka32 = case(Workload::KeepAlive, 32, 0);
    let rps = Figure::RequestsPerS;
    let cpu = Figure::PodCpuPerRequestUs;

    let s = ratio_to(r, Mode::Ebpf, nft, close0, rps);
    out.push(Target {
        cpu: ratio(ratio_to(r, Mode::Ebpf, nft, close0, cpu)),
        what: "new connections/s: ebpf ≥ 1.20× iptables-nft".into(),
        measured: ratio(s),
        verdict: verdict(s, |x| x >= 1.2),
    });
    let s = ratio_to(r, Mode::Ebpf, Mode::Explicit, close0, rps);
    out.push(Target {
        cpu: ratio(ratio_to(r, Mode::Ebpf, Mode::Explicit, close0, cpu)),
        what: "new connections/s: ebpf within 5% of explicit (≥ 0.95×)".into(),
        measured: ratio(s),
        verdict: verdict(s, |x| x >= 0.95),
    });
    let s = ratio_cases(r, Mode::Ebpf, close_max, close0, rps);
    out.push(Target {
        cpu: ratio(ratio_cases(r, Mode::Ebpf, close_max, close0, cpu)),
        what: format!(
            "new connections/s: ebpf flat within 5% from 0 to {} CIDRs (≥ 0.95×)",
            thousands(max_cidrs.into())
        ),
        measured: ratio(s),
        verdict: verdict(s, |x| x >= 0.95),
    });
    let s = ratio_to(r, Mode::Ebpf, nft, ka32, rps);
    out.push(Target {
        cpu: ratio(ratio_to(r, Mode::Ebpf, nft, ka32, cpu)),
        what: "keep-alive requests/s at 32 connections: ebpf ≥ 1.15× iptables-nft".into(),
        measured: ratio(s),
        verdict: verdict(s, |x| x >= 1.15),
    });
    let s = ratio_to(r, Mode::Ebpf, Mode::Explicit, ka32, rps);
    out.push(Target {
        cpu: ratio(ratio_to(r, Mode::Ebpf, Mode::Explicit, ka32, cpu)),
        what: "keep-alive requests/s at 32 connections: ebpf within 5% of explicit (≥ 0.95×)"
            .into(),
        measured: ratio(s),
        verdict: verdict(s, |x| x >= 0.95),
    });
    if let Some(connect4) = connect4_name(r) {
        for &cidrs in &r.settings.kernel_cost_cidrs {
            let s = Summary::of_series(&r.program_ns(&connect4, cidrs));
            out.push(Target {
                what: format!(
                    "connect4 < 250 ns per call, {} CIDRs",
                    thousands(cidrs.into())
                ),
                measured: with_range(s, |x| format!("{x:.0} ns")),
                verdict: verdict(s, |x| x < 250.0),
                cpu: String::new(),
            });
        }
        let (lo, hi) = kernel_cidr_span(r);
        let s = Summary::of(paired_ratios(
            &r.program_ns(&connect4, hi),
            &r.program_ns(&connect4, lo),
        ));
        out.push(Target {
            what: format!(
                "connect4 flat within 10% from {} to {} CIDRs (≤ 1.10×)",
                thousands(lo.into()),
                thousands(hi.into())
            ),
            measured: ratio(s),
            verdict: verdict(s, |x| x <= 1.10),
            cpu: String::new(),
        });
    }
    let s = Summary::of_series(&r.init_series(Mode::Ebpf, 0));
    out.push(Target {
        what: "`interceptor init` < 100 ms (default flags)".into(),
        measured: with_range(s, |x| format!("{x:.0} ms")),
        verdict: verdict(s, |x| x < 100.0),
        cpu: String::new(),
    });
    let s = Summary::of_series(&r.init_series(Mode::Ebpf, max_cidrs));
    out.push(Target {
        what: format!(
            "`interceptor init` < 1 s with {} CIDRs",
            thousands(max_cidrs.into())
        ),
        measured: with_range(s, |x| format!("{x:.0} ms")),
        verdict: verdict(s, |x| x < 1000.0),
        cpu: String::new(),
    });
    out
}

fn kernel_cidr_span(r: &Results) -> (u32, u32) {
    let c = &r.settings.kernel_cost_cidrs;
    (
        c.iter().copied().min().unwrap_or(0),
        c.iter().copied().max().unwrap_or(0),
    )
}

// ---------- report.md ----------

fn report(r: &Results, plots: &[plot::Plot]) -> String {
    let mut o = String::new();
    let s = &r.settings;
    let _ = writeln!(o, "# interceptor benchmark, {}\n", r.meta.started);
    let _ = writeln!(
        o,
        "`{}` on commit `{}`{}; {:.0} s wall time.\n",
        r.meta.command,
        r.meta.commit,
        if r.meta.quick {
            " (**quick run**: too short for conclusions)"
        } else {
            ""
        },
        r.meta.wall_s
    );
    machine_and_method(&mut o, r);

    let _ = writeln!(o, "## Targets\n");
    let _ = writeln!(
        o,
        "Ratios are medians of round-by-round ratios (min–max over rounds in brackets); \
         targets are never asserted in tests.\n"
    );
    let _ = writeln!(
        o,
        "The last column compares the pod's CPU time per request the same way (below 1: \
         less CPU): a cross-check that other work on the machine disturbs much less than \
         throughput.\n"
    );
    let _ = writeln!(
        o,
        "| target | measured | verdict | pod CPU per request, same ratio |\n|---|---|---|---|"
    );
    for t in targets(r) {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} |",
            t.what, t.measured, t.verdict, t.cpu
        );
    }
    let _ = writeln!(o);

    for &conns in &s.keepalive_conns {
        let c = case(Workload::KeepAlive, conns, 0);
        let _ = writeln!(
            o,
            "## Keep-alive requests, {conns} connection{}\n",
            if conns == 1 { "" } else { "s" }
        );
        http_table(&mut o, r, c, "requests/s");
    }
    let c = close_case(r, 0);
    let _ = writeln!(
        o,
        "## New connection per request (`Connection: close`), {} connections\n",
        c.conns
    );
    let _ = writeln!(
        o,
        "Each request opens a connection (two with a sidecar: client to sidecar, sidecar to \
         server). wrk's latency starts when the request is written, so it leaves out the \
         client's handshake.\n"
    );
    http_table(&mut o, r, c, "connections/s");

    rule_scaling(&mut o, r);
    bulk(&mut o, r);
    kernel_cost(&mut o, r);
    init_cost(&mut o, r);

    let _ = writeln!(o, "## Plots\n");
    for p in plots {
        let _ = writeln!(o, "![{}]({})\n", p.title, p.file);
    }
    notes(&mut o, r);
    o
}

fn machine_and_method(o: &mut String, r: &Results) {
    let s = &r.settings;
    let m = &r.meta.machine;
    let _ = writeln!(o, "## Machine and method\n");
    let _ = writeln!(
        o,
        "- Machine: {} cores ({}), {} MiB, Linux {}, {}.",
        m.cores,
        m.cpu_model,
        thousands(m.memory_mib as f64),
        m.kernel,
        m.os
    );
    let loads: Vec<String> = r
        .meta
        .loadavg
        .iter()
        .map(|l| format!("{:.2}", l.loadavg_1m))
        .collect();
    let _ = writeln!(
        o,
        "- Load average (1 min, the benchmark's own processes included) at the start of each \
         round: {}. The notes below say how much other work ran during the measurements.",
        if loads.is_empty() {
            "–".into()
        } else {
            loads.join(", ")
        }
    );
    let _ = writeln!(o, "- {}", placement(r));
    let tools: Vec<String> = r
        .meta
        .tools
        .iter()
        .map(|(k, v)| format!("{k}: `{v}`"))
        .collect();
    let _ = writeln!(o, "- Tools: {}.", tools.join("; "));
    let _ = writeln!(
        o,
        "- Topology (as in the tests): a pod (network namespace + cgroup) holding the client \
         (wrk or iperf3, uid 1000) and the sidecar (`interceptor-sidecar`, uid 1337: reads \
         SO_ORIGINAL_DST, relays with 64 KiB buffers, TCP_NODELAY); a server namespace over a \
         veth pair holding nginx ({} workers) and an iperf3 server, in a cgroup of their own.",
        s.nginx_workers
    );
    let _ = writeln!(
        o,
        "- Modes: `direct` (no sidecar), `explicit` (the client dials the sidecar, which has a \
         fixed upstream), `iptables-legacy` and `iptables-nft` (`interceptor init --backend \
         iptables`), `ebpf` (`interceptor init`). Same flags for every intercepting mode: `-p \
         15001 -z 15006 -u 1337 -m REDIRECT -i '*' -b ''`, plus `-x` with N excluded /24s from \
         100.64.0.0/10 (none holds the server). Ratios against `{}`.",
        s.baseline
    );
    let _ = writeln!(
        o,
        "- Each mode runs in a fresh pod and server namespace of its own in every round (a nat \
         table once loaded leaves conntrack hooks in its namespace). Warm-up {} s per mode; \
         then {} rounds, modes interleaved within each figure (A B C A B C); {} s per figure; \
         median and min–max over rounds; ratios taken round by round so that drift cancels.",
        s.warmup_s, s.rounds, s.duration_s
    );
    let _ = writeln!(
        o,
        "- Loads: wrk with {} thread(s) (one per pod CPU, at most one per connection), `--latency`; a {}-byte \
         response body (`/`), a {} response for HTTP bulk ({} connections); one iperf3 stream \
         client to server. Both namespaces: `tcp_tw_reuse=1`, ports 1024–65000.",
        s.wrk_threads,
        s.small_body_bytes,
        bytes(s.large_body_bytes),
        s.http_bulk_conns
    );
    let _ = writeln!(
        o,
        "- CPU per request: user + system time of the pod's cgroup (client and sidecar) over \
         the run, from cpu.stat, divided by the requests; the server's likewise. Softirq work \
         is charged to whichever task it interrupts.\n"
    );
}

/// Where the pod and the server ran.
fn placement(r: &Results) -> String {
    let s = &r.settings;
    let list = |c: &[usize]| {
        c.iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    if s.pod_cpus.is_empty() {
        format!(
            "Not pinned: client, sidecar and server share the machine's {} cores.",
            r.meta.machine.cores
        )
    } else {
        format!(
            "Pinned (sched_setaffinity), as if on two machines: the pod's processes (client and \
             sidecar) on CPU {}, the server's on CPU {}; the client and the sidecar share \
             theirs, so whatever the interception costs in the pod comes out of the same CPU \
             time as the load.",
            list(&s.pod_cpus),
            list(&s.server_cpus)
        )
    }
}

fn bytes(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n}-byte")
    }
}

fn http_table(o: &mut String, r: &Results, c: Case, unit: &str) {
    let base = r.settings.baseline;
    let _ = writeln!(
        o,
        "| mode | {unit} | vs {base} | p50 | p90 | p99 | pod CPU µs/request | vs {base} | server CPU µs/request | errors |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|");
    for &mode in &r.settings.modes {
        if !r.has(mode, c) {
            continue;
        }
        let _ = writeln!(
            o,
            "| {mode} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            with_range(summary(r, mode, c, Figure::RequestsPerS), num),
            ratio(ratio_to(r, mode, base, c, Figure::RequestsPerS)),
            median_only(summary(r, mode, c, Figure::P50Us), us),
            median_only(summary(r, mode, c, Figure::P90Us), us),
            with_range(summary(r, mode, c, Figure::P99Us), us),
            median_only(summary(r, mode, c, Figure::PodCpuPerRequestUs), num),
            ratio(ratio_to(r, mode, base, c, Figure::PodCpuPerRequestUs)),
            median_only(summary(r, mode, c, Figure::ServerCpuPerRequestUs), num),
            errors(r, mode, c)
        );
    }
    let _ = writeln!(
        o,
        "\nLatencies are medians over rounds (p99 with its min–max).\n"
    );
}

fn rule_scaling(o: &mut String, r: &Results) {
    let s = &r.settings;
    let modes: Vec<Mode> = s.modes.iter().copied().filter(|m| m.intercepts()).collect();
    if modes.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "## Rule scaling: new connections/s with N excluded CIDRs\n\n{} connections, \
         `Connection: close`; every connection is still redirected (no excluded CIDR holds \
         the server).\n",
        s.close_conns
    );
    let header: Vec<String> = s.cidr_counts.iter().map(|&n| thousands(n.into())).collect();
    let _ = writeln!(o, "| mode | {} |", header.join(" | "));
    let _ = writeln!(o, "|---|{}", "---|".repeat(header.len()));
    for &mode in &modes {
        let cells: Vec<String> = s
            .cidr_counts
            .iter()
            .map(|&n| {
                with_range(
                    summary(r, mode, close_case(r, n), Figure::RequestsPerS),
                    num,
                )
            })
            .collect();
        let _ = writeln!(o, "| {mode} | {} |", cells.join(" | "));
    }
    let _ = writeln!(
        o,
        "\nThe same, relative to the mode with 0 CIDRs (round by round):\n"
    );
    let _ = writeln!(o, "| mode | {} |", header.join(" | "));
    let _ = writeln!(o, "|---|{}", "---|".repeat(header.len()));
    for &mode in &modes {
        let cells: Vec<String> = s
            .cidr_counts
            .iter()
            .map(|&n| {
                ratio(ratio_cases(
                    r,
                    mode,
                    close_case(r, n),
                    close_case(r, 0),
                    Figure::RequestsPerS,
                ))
            })
            .collect();
        let _ = writeln!(o, "| {mode} | {} |", cells.join(" | "));
    }
    let base = s.baseline;
    if base.intercepts() {
        let _ = writeln!(o, "\nRelative to {base} with the same number of CIDRs:\n");
        let _ = writeln!(o, "| mode | {} |", header.join(" | "));
        let _ = writeln!(o, "|---|{}", "---|".repeat(header.len()));
        for &mode in &modes {
            let cells: Vec<String> = s
                .cidr_counts
                .iter()
                .map(|&n| {
                    ratio(ratio_to(
                        r,
                        mode,
                        base,
                        close_case(r, n),
                        Figure::RequestsPerS,
                    ))
                })
                .collect();
            let _ = writeln!(o, "| {mode} | {} |", cells.join(" | "));
        }
    }
    let _ = writeln!(o);
}

fn bulk(o: &mut String, r: &Results) {
    let s = &r.settings;
    let base = s.baseline;
    let iperf = case(Workload::Iperf3, s.iperf_streams, 0);
    let http = case(Workload::HttpBulk, s.http_bulk_conns, 0);
    let _ = writeln!(
        o,
        "## Bulk transfer\n\niperf3: {} TCP stream, client to server. HTTP: keep-alive GETs of \
         the {} response over {} connections (payload bytes counted by wrk).\n",
        s.iperf_streams,
        bytes(s.large_body_bytes),
        s.http_bulk_conns
    );
    let _ = writeln!(
        o,
        "| mode | iperf3 Gbit/s | vs {base} | pod CPU s/GB | HTTP Gbit/s | vs {base} | pod CPU s/GB |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|");
    for &mode in &s.modes {
        let _ = writeln!(
            o,
            "| {mode} | {} | {} | {} | {} | {} | {} |",
            with_range(summary(r, mode, iperf, Figure::Gbps), num),
            ratio(ratio_to(r, mode, base, iperf, Figure::Gbps)),
            median_only(summary(r, mode, iperf, Figure::PodCpuPerGbS), num),
            with_range(summary(r, mode, http, Figure::Gbps), num),
            ratio(ratio_to(r, mode, base, http, Figure::Gbps)),
            median_only(summary(r, mode, http, Figure::PodCpuPerGbS), num),
        );
    }
    let _ = writeln!(o);
}

fn kernel_cost(o: &mut String, r: &Results) {
    if r.kernel.is_empty() {
        return;
    }
    let (lo, hi) = kernel_cidr_span(r);
    let _ = writeln!(
        o,
        "## Kernel cost of the eBPF programs\n\nAverage run time per call (run_time_ns / \
         run_cnt, with the kernel's BPF run statistics on only for these runs: they cost \
         time on every call), under the new-connection load ({} connections) in a pod of its \
         own. connect4 runs for the client's connections (decided by the rules) and for the \
         sidecar's (proxy uid: decided early), so its average is over both.\n",
        r.settings.close_conns
    );
    let _ = writeln!(
        o,
        "| program | calls per request | ns/call, {} CIDRs | ns/call, {} CIDRs | {}/{} |",
        thousands(lo.into()),
        thousands(hi.into()),
        thousands(hi.into()),
        thousands(lo.into())
    );
    let _ = writeln!(o, "|---|---|---|---|---|");
    let mut idle = Vec::new();
    for name in r.program_names() {
        let calls = Summary::of_series(&r.program_runs_per_request(&name, lo));
        if calls.is_none_or(|c| c.max == 0.0) {
            idle.push(format!("`{name}`"));
            continue;
        }
        let _ = writeln!(
            o,
            "| {name} | {} | {} | {} | {} |",
            median_only(calls, |x| format!("{x:.2}")),
            with_range(Summary::of_series(&r.program_ns(&name, lo)), |x| format!(
                "{x:.0}"
            )),
            with_range(Summary::of_series(&r.program_ns(&name, hi)), |x| format!(
                "{x:.0}"
            )),
            ratio(Summary::of(paired_ratios(
                &r.program_ns(&name, hi),
                &r.program_ns(&name, lo)
            ))),
        );
    }
    let _ = writeln!(
        o,
        "\nA request here is one client connection through the sidecar: two connects (the \
         client's, redirected, and the sidecar's upstream), one accept. The statistics time \
         every call, and that timing has a cost of its own which the figures include (a call \
         that returns at once, as most of sockops' do, shows it)."
    );
    if !idle.is_empty() {
        let _ = writeln!(
            o,
            "Attached but not called by this load: {}.",
            idle.join(", ")
        );
    }
    let _ = writeln!(o);
}

fn init_cost(o: &mut String, r: &Results) {
    let s = &r.settings;
    let modes: Vec<Mode> = s.modes.iter().copied().filter(|m| m.intercepts()).collect();
    if modes.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "## Set-up cost: `interceptor init` wall time (release build)\n\nFrom process start to \
         exit, into a fresh pod, in every round.\n"
    );
    let header: Vec<String> = s.cidr_counts.iter().map(|&n| thousands(n.into())).collect();
    let _ = writeln!(o, "| backend | {} |", header.join(" CIDRs | ") + " CIDRs");
    let _ = writeln!(o, "|---|{}", "---|".repeat(header.len()));
    for &mode in &modes {
        let cells: Vec<String> = s
            .cidr_counts
            .iter()
            .map(|&n| {
                with_range(Summary::of_series(&r.init_series(mode, n)), |x| {
                    format!("{x:.0} ms")
                })
            })
            .collect();
        let _ = writeln!(o, "| {mode} | {} |", cells.join(" | "));
    }
    let _ = writeln!(o);
}

fn notes(o: &mut String, r: &Results) {
    let _ = writeln!(o, "## Notes\n");
    let total_errors: u64 = r
        .samples
        .iter()
        .filter_map(|s| s.http.as_ref().map(|h| h.errors.total()))
        .sum();
    let _ = writeln!(
        o,
        "- wrk reported {} socket or status errors in total.",
        thousands(total_errors as f64)
    );
    let outside = Summary::of(r.samples.iter().filter_map(|s| s.cpu.outside_share()));
    let steal = Summary::of(r.samples.iter().filter_map(|s| s.cpu.steal_share()));
    if let (Some(outside), Some(steal)) = (outside, steal) {
        let _ = writeln!(
            o,
            "- Other work on the machine during the measurements (task CPU time outside the \
             benchmark's pod and server, /proc/stat): median {:.0}% of the machine's CPU time, \
             min {:.0}%, max {:.0}%; time stolen by the hypervisor: median {:.0}%, max {:.0}%. \
             On an idle machine both are near 0.",
            outside.median * 100.0,
            outside.min * 100.0,
            outside.max * 100.0,
            steal.median * 100.0,
            steal.max * 100.0
        );
    }
    let _ = writeln!(
        o,
        "- A figure is what the whole path (client, sidecar, server) achieves on this \
         machine's {} cores, and anything else running at the time (see the load averages) \
         lowers it. Round-to-round spread of 10–20% is usual here; the interleaving and \
         round-by-round ratios are there to cancel that drift, the min–max shows what is left.",
        r.meta.machine.cores
    );
    let _ = writeln!(
        o,
        "- The load generator and the server are the same in every mode; the pod's CPU per \
         request includes wrk's own share, identical across modes."
    );
    let _ = writeln!(
        o,
        "- Every figure here comes from results.json in this directory; `cargo xtask bench \
         --report <this directory>` redraws this report and the plots from it.\n"
    );
}

// ---------- README section ----------

/// What the table says, in words, for the modes the run has (every number from `r`).
fn summary_sentences(o: &mut String, r: &Results, close0: Case, close_max: Case, ka: Case) {
    let modes = &r.settings.modes;
    let (ebpf, nft, explicit) = (Mode::Ebpf, Mode::IptablesNft, Mode::Explicit);
    if !(modes.contains(&ebpf) && modes.contains(&nft) && modes.contains(&explicit)) {
        return;
    }
    let rps = Figure::RequestsPerS;
    let cpu = Figure::PodCpuPerRequestUs;
    let x = |s: Option<Summary>| s.map_or("–".to_owned(), |s| format!("{:.2}×", s.median));
    let max_cidrs = thousands(close_max.cidrs.into());
    let _ = writeln!(
        o,
        "New connections: eBPF makes {} as many per second as iptables-nft and {} as many as \
         explicit, with {} the pod CPU per connection of iptables-nft. With {} excluded CIDRs \
         the rate is {} the rate with none for eBPF, {} for iptables-nft, {} for \
         iptables-legacy. Keep-alive requests (32 connections): eBPF makes {} as many as \
         iptables-nft and {} as many as explicit{}.\n",
        x(ratio_to(r, ebpf, nft, close0, rps)),
        x(ratio_to(r, ebpf, explicit, close0, rps)),
        x(ratio_to(r, ebpf, nft, close0, cpu)),
        max_cidrs,
        x(ratio_cases(r, ebpf, close_max, close0, rps)),
        x(ratio_cases(r, nft, close_max, close0, rps)),
        x(ratio_cases(r, Mode::IptablesLegacy, close_max, close0, rps)),
        x(ratio_to(r, ebpf, nft, ka, rps)),
        x(ratio_to(r, ebpf, explicit, ka, rps)),
        if ratio_to(r, ebpf, explicit, ka, rps).is_some_and(|s| s.median >= 0.95) {
            " (no per-packet cost: it matches the best any interception can do with this \
             sidecar)"
        } else {
            ""
        },
    );
}

fn performance_section(r: &Results, rel: &Path, plots: &[plot::Plot]) -> String {
    let s = &r.settings;
    let m = &r.meta.machine;
    let base = s.baseline;
    let mut o = String::new();
    let _ = writeln!(o, "## Performance\n");
    let _ = writeln!(
        o,
        "Measured with `cargo xtask bench` on {} ({} cores, {}, Linux {}), commit `{}`{}. \
         Client (wrk, iperf3), sidecar and server (nginx) run on the same small machine, so \
         these are figures of the whole path, not of the interception alone; the ratios are \
         what carries over. {}\n",
        &r.meta.started[..10],
        m.cores,
        m.cpu_model,
        m.kernel,
        r.meta.commit,
        if r.meta.quick { " (a quick run)" } else { "" },
        placement(r)
    );
    let _ = writeln!(
        o,
        "Method: a pod (network namespace + cgroup) with the client and a forwarding sidecar \
         (uid 1337, reads `SO_ORIGINAL_DST`), a server namespace over veth. Only the \
         interception differs: `direct` (no sidecar), `explicit` (the client dials the \
         sidecar: the floor for any interception), `iptables-legacy` and `iptables-nft` \
         (istio-style nat rules, `interceptor init --backend iptables`), `ebpf` (`interceptor \
         init`). Each mode gets fresh namespaces in each of {} rounds; modes are interleaved; \
         the table shows medians over rounds and, in brackets, the median of round-by-round \
         ratios to {base}.\n",
        s.rounds
    );
    let ka = case(Workload::KeepAlive, 32, 0);
    let close0 = close_case(r, 0);
    let max_cidrs = s.cidr_counts.iter().copied().max().unwrap_or(0);
    let close_max = close_case(r, max_cidrs);
    let iperf = case(Workload::Iperf3, s.iperf_streams, 0);
    let _ = writeln!(
        o,
        "| mode | keep-alive req/s, 32 conns | p99 | new connections/s | conn/s, {} excluded CIDRs | iperf3 Gbit/s |",
        thousands(max_cidrs.into())
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|");
    let cell = |mode: Mode, c: Case, fig: Figure| {
        if !r.has(mode, c) {
            return "–".to_owned();
        }
        let v = median_only(summary(r, mode, c, fig), num);
        match ratio_to(r, mode, base, c, fig) {
            Some(x) if mode != base => format!("{v} ({:.2}×)", x.median),
            _ => v,
        }
    };
    for &mode in &s.modes {
        let _ = writeln!(
            o,
            "| {mode} | {} | {} | {} | {} | {} |",
            cell(mode, ka, Figure::RequestsPerS),
            median_only(summary(r, mode, ka, Figure::P99Us), us),
            cell(mode, close0, Figure::RequestsPerS),
            cell(mode, close_max, Figure::RequestsPerS),
            cell(mode, iperf, Figure::Gbps),
        );
    }
    let _ = writeln!(o);
    summary_sentences(&mut o, r, close0, close_max, ka);
    if let Some(connect4) = connect4_name(r) {
        let (lo, hi) = kernel_cidr_span(r);
        let at = |n| {
            median_only(Summary::of_series(&r.program_ns(&connect4, n)), |x| {
                format!("{x:.0} ns")
            })
        };
        let _ = writeln!(
            o,
            "The eBPF decision itself (`{connect4}`, from the kernel's BPF run statistics, \
             their own timing included) takes {} per connect with {} excluded CIDRs and {} with \
             {}.",
            at(lo),
            thousands(lo.into()),
            at(hi),
            thousands(hi.into())
        );
    }
    let init = |mode, n| {
        median_only(Summary::of_series(&r.init_series(mode, n)), |x| {
            format!("{x:.0} ms")
        })
    };
    let _ = writeln!(
        o,
        "`interceptor init` takes {} (eBPF) and {} (iptables-nft) with no excluded CIDRs, {} \
         and {} with {}.\n",
        init(Mode::Ebpf, 0),
        init(Mode::IptablesNft, 0),
        init(Mode::Ebpf, max_cidrs),
        init(Mode::IptablesNft, max_cidrs),
        thousands(max_cidrs.into())
    );
    for p in plots {
        let _ = writeln!(o, "![{}]({})\n", p.title, rel.join(&p.file).display());
    }
    let _ = writeln!(
        o,
        "Every figure above is in [`{}`]({}), with the full report in [`report.md`]({}). \
         To reproduce (as root; installs nginx, wrk and iperf3 if missing; this run took {:.0} \
         minutes; best on an otherwise idle machine):\n\n```sh\ncargo xtask bench            \
         # --quick: a check of the harness in under 3 minutes\n```\n",
        rel.join("results.json").display(),
        rel.join("results.json").display(),
        rel.join("report.md").display(),
        r.meta.wall_s / 60.0
    );
    if let Some(outside) = Summary::of(r.samples.iter().filter_map(|s| s.cpu.outside_share())) {
        let _ = writeln!(
            o,
            "Other work on the machine during this run took a median {:.0}% of its CPU time \
             (max {:.0}%, per measurement); the min–max ranges in the report show the spread it \
             left.\n",
            outside.median * 100.0,
            outside.max * 100.0
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_figures() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(0.5), "0.50");
        assert_eq!(us(1234.0), "1.23 ms");
        assert_eq!(us(87.4), "87 µs");
        let s = Summary::of([1.1, 1.3, 1.2]);
        assert_eq!(ratio(s), "1.20× (1.10–1.30)");
        assert_eq!(ratio(None), "–");
    }

    #[test]
    fn verdicts_distinguish_every_round_from_the_median() {
        let all = Summary::of([1.3, 1.25, 1.4]);
        let most = Summary::of([1.3, 1.1, 1.4]);
        let none = Summary::of([1.0, 1.1, 1.05]);
        assert_eq!(verdict(all, |x| x >= 1.2), "**met**");
        assert_eq!(
            verdict(most, |x| x >= 1.2),
            "met by the median, not in every round"
        );
        assert_eq!(verdict(none, |x| x >= 1.2), "**missed**");
        assert_eq!(verdict(None, |x| x >= 1.2), "not measured");
    }
}
