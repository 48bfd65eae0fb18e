//! `report.md` (every table, with ratios) and `performance-section.md` (the README's section),
//! both computed from `results.json` alone, so that every figure shown is one it holds.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context as _, Result};

use super::modes::{self, Mode};
use super::plot;
use super::results::{
    Case, Direction, Enrolment, Figure, Flow, Results, ScaleRun, Sysctls, Workload,
};
use super::stats::{Summary, paired_ratios, percentile};
use super::table::{Column, Table};

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

fn ms(x: f64) -> String {
    format!("{x:.0} ms")
}

fn ns(x: f64) -> String {
    format!("{} ns", thousands(x))
}

fn count(n: u32) -> String {
    thousands(n.into())
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
    Case::outbound(workload, conns, cidrs)
}

/// A case of the other flows (no excluded CIDRs).
fn flow_case(workload: Workload, conns: u32, direction: Direction, sysctls: Sysctls) -> Case {
    Case {
        workload,
        conns,
        cidrs: 0,
        flow: Flow { direction, sysctls },
    }
}

fn inbound_case(r: &Results, workload: Workload, sysctls: Sysctls) -> Case {
    flow_case(
        workload,
        r.settings.inbound_conns,
        Direction::Inbound,
        sysctls,
    )
}

fn outbound_default_case(r: &Results) -> Case {
    flow_case(
        Workload::Close,
        r.settings.close_conns,
        Direction::Outbound,
        Sysctls::Default,
    )
}

/// `1 program`, `1,287 programs`.
fn programs(n: i64) -> String {
    format!(
        "{} program{}",
        thousands(n as f64),
        if n == 1 { "" } else { "s" }
    )
}

fn kib(bytes: f64) -> String {
    if bytes.abs() >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", bytes / (1u64 << 30) as f64)
    } else if bytes.abs() >= (1 << 20) as f64 {
        format!("{:.1} MiB", bytes / (1 << 20) as f64)
    } else {
        format!("{:.1} KiB", bytes / 1024.0)
    }
}

/// Wall times of the light pods' inits: the first pod (by round), and every next one pooled.
fn first_init(r: &Results, mode: Mode) -> Option<Summary> {
    Summary::of_series(&r.pod_init_series(mode, |n| n == 1))
}

fn next_inits(r: &Results, mode: Mode) -> Vec<f64> {
    r.pod_init_series(mode, |n| n > 1)
        .into_iter()
        .map(|(_, ms)| ms)
        .collect()
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

impl Target {
    /// A ratio of throughputs, `of` a figure, against `ok`; the same ratio of the pod's CPU
    /// time per request beside it.
    fn throughput(
        what: impl Into<String>,
        of: impl Fn(Figure) -> Option<Summary>,
        ok: impl Fn(f64) -> bool,
    ) -> Self {
        let s = of(Figure::RequestsPerS);
        Self {
            what: what.into(),
            measured: ratio(s),
            verdict: verdict(s, ok),
            cpu: ratio(of(Figure::PodCpuPerRequestUs)),
        }
    }

    /// A figure `s`, shown by `show`, against `ok`.
    fn figure(
        what: impl Into<String>,
        s: Option<Summary>,
        show: impl Fn(Option<Summary>) -> String,
        ok: impl Fn(f64) -> bool,
    ) -> Self {
        Self {
            what: what.into(),
            measured: show(s),
            verdict: verdict(s, ok),
            cpu: String::new(),
        }
    }
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
    let (ebpf, nft, explicit) = (Mode::Ebpf, Mode::IptablesNft, Mode::Explicit);
    let close0 = close_case(r, 0);
    let max_cidrs = r.settings.cidr_counts.iter().copied().max().unwrap_or(0);
    let close_max = close_case(r, max_cidrs);
    let ka32 = case(Workload::KeepAlive, 32, 0);
    let mut out = vec![
        Target::throughput(
            "new connections/s: ebpf ≥ 1.20× iptables-nft",
            |f| ratio_to(r, ebpf, nft, close0, f),
            |x| x >= 1.2,
        ),
        Target::throughput(
            "new connections/s: ebpf within 5% of explicit (≥ 0.95×)",
            |f| ratio_to(r, ebpf, explicit, close0, f),
            |x| x >= 0.95,
        ),
        Target::throughput(
            format!(
                "new connections/s: ebpf flat within 5% from 0 to {} CIDRs (≥ 0.95×)",
                count(max_cidrs)
            ),
            |f| ratio_cases(r, ebpf, close_max, close0, f),
            |x| x >= 0.95,
        ),
        Target::throughput(
            "keep-alive requests/s at 32 connections: ebpf ≥ 1.15× iptables-nft",
            |f| ratio_to(r, ebpf, nft, ka32, f),
            |x| x >= 1.15,
        ),
        Target::throughput(
            "keep-alive requests/s at 32 connections: ebpf within 5% of explicit (≥ 0.95×)",
            |f| ratio_to(r, ebpf, explicit, ka32, f),
            |x| x >= 0.95,
        ),
    ];
    if let Some(connect4) = connect4_name(r) {
        for &cidrs in &r.settings.kernel_cost_cidrs {
            out.push(Target::figure(
                format!("connect4 < 250 ns per call, {} CIDRs", count(cidrs)),
                Summary::of_series(&r.program_ns(&connect4, cidrs)),
                |s| with_range(s, ns),
                |x| x < 250.0,
            ));
        }
        let (lo, hi) = kernel_cidr_span(r);
        out.push(Target::figure(
            format!(
                "connect4 flat within 10% from {} to {} CIDRs (≤ 1.10×)",
                count(lo),
                count(hi)
            ),
            Summary::of(paired_ratios(
                &r.program_ns(&connect4, hi),
                &r.program_ns(&connect4, lo),
            )),
            ratio,
            |x| x <= 1.10,
        ));
    }
    out.push(Target::figure(
        "`interceptor init` < 100 ms (default flags)",
        Summary::of_series(&r.init_series(ebpf, 0)),
        |s| with_range(s, ms),
        |x| x < 100.0,
    ));
    out.push(Target::figure(
        format!("`interceptor init` < 1 s with {} CIDRs", count(max_cidrs)),
        Summary::of_series(&r.init_series(ebpf, max_cidrs)),
        |s| with_range(s, ms),
        |x| x < 1000.0,
    ));
    scale_targets(r, &mut out);
    out
}

/// Issue 11's targets: a node's worth of pods.
fn scale_targets(r: &Results, out: &mut Vec<Target>) {
    let (ebpf, nft) = (Mode::Ebpf, Mode::IptablesNft);
    if !r.pod_inits.is_empty() {
        out.push(Target::figure(
            "`init` of the first pod on a node ≤ 100 ms",
            first_init(r, ebpf),
            |s| with_range(s, ms),
            |x| x <= 100.0,
        ));
        let next = percentile(next_inits(r, ebpf), 50.0);
        let nft_next = percentile(next_inits(r, nft), 50.0);
        out.push(Target::figure(
            format!(
                "`init` of the next pods ≤ 16 ms and ≤ iptables-nft's ({}) (p50 of every next \
                 pod)",
                nft_next.map_or("–".into(), |x| format!("{x:.1} ms"))
            ),
            next.and_then(|x| Summary::of([x])),
            |s| median_only(s, |x| format!("{x:.1} ms")),
            |x| x <= 16.0 && nft_next.is_none_or(|n| x <= n),
        ));
    }
    for run in &r.scale {
        let pods = run.pods_reached;
        if pods > 1 {
            out.push(Target::figure(
                format!(
                    "kernel memory per pod ≤ 64 KiB, {} mode, {} pods (each pod after the first)",
                    match run.enrolment {
                        Enrolment::PerPod => "per-pod",
                        Enrolment::Node => "node",
                    },
                    count(pods)
                ),
                run.bytes_per_further_pod(pods)
                    .and_then(|b| Summary::of([b])),
                |s| median_only(s, kib),
                |x| x <= 64.0 * 1024.0,
            ));
        }
        if run.enrolment == Enrolment::Node && !run.enrol_ms.is_empty() {
            let p50 = percentile(run.enrol_ms.iter().copied(), 50.0);
            let p99 = percentile(run.enrol_ms.iter().copied(), 99.0);
            let show = |x: Option<f64>| x.map_or("–".into(), |x| format!("{x:.1} ms"));
            out.push(Target::figure(
                format!(
                    "`pod add` ≤ 5 ms p50, ≤ 10 ms p99, {} pods (p99 {})",
                    count(run.enrol_ms.len() as u32),
                    show(p99)
                ),
                p50.and_then(|x| Summary::of([x])),
                |_| show(p50),
                |x| x <= 5.0 && p99.is_some_and(|p| p <= 10.0),
            ));
        }
    }
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
    let mut table = Table::new([
        "target",
        "measured",
        "verdict",
        "pod CPU per request, same ratio",
    ]);
    for t in targets(r) {
        table.row([t.what, t.measured, t.verdict, t.cpu]);
    }
    let _ = writeln!(o, "{table}");

    for &conns in &s.keepalive_conns {
        let c = case(Workload::KeepAlive, conns, 0);
        let _ = writeln!(
            o,
            "## Keep-alive requests, {conns} connection{}\n",
            if conns == 1 { "" } else { "s" }
        );
        http_table(&mut o, r, c, "requests/s", "server");
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
    http_table(&mut o, r, c, "connections/s", "server");

    rule_scaling(&mut o, r);
    bulk(&mut o, r);
    inbound(&mut o, r);
    default_sysctls(&mut o, r);
    kernel_cost(&mut o, r);
    tracer_cost(&mut o, r);
    init_cost(&mut o, r);
    node_scale(&mut o, r);

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

/// `other`: where the rest of the CPU time is counted (the server, or the inbound client).
fn http_table(o: &mut String, r: &Results, c: Case, unit: &str, other: &str) {
    let base = r.settings.baseline;
    let modes: Vec<Mode> = r
        .settings
        .modes
        .iter()
        .copied()
        .filter(|&m| r.has(m, c))
        .collect();
    let of = |m, fig| summary(r, m, c, fig);
    let columns = [
        Column::new(unit, |m| with_range(of(m, Figure::RequestsPerS), num)),
        Column::new(format!("vs {base}"), |m| {
            ratio(ratio_to(r, m, base, c, Figure::RequestsPerS))
        }),
        Column::new("p50", |m| median_only(of(m, Figure::P50Us), us)),
        Column::new("p90", |m| median_only(of(m, Figure::P90Us), us)),
        Column::new("p99", |m| with_range(of(m, Figure::P99Us), us)),
        Column::new("pod CPU µs/request", |m| {
            median_only(of(m, Figure::PodCpuPerRequestUs), num)
        }),
        Column::new(format!("vs {base}"), |m| {
            ratio(ratio_to(r, m, base, c, Figure::PodCpuPerRequestUs))
        }),
        Column::new(format!("{other} CPU µs/request"), |m| {
            median_only(of(m, Figure::ServerCpuPerRequestUs), num)
        }),
        Column::new("errors", |m| errors(r, m, c).to_string()),
    ];
    let _ = write!(o, "{}", Table::of("mode", &modes, &columns));
    let _ = writeln!(
        o,
        "\nLatencies are medians over rounds (p99 with its min–max).\n"
    );
}

/// One row per mode, one column per number of excluded CIDRs (headed `header(n)`).
fn by_cidrs(
    first: &str,
    modes: &[Mode],
    counts: &[u32],
    header: impl Fn(u32) -> String,
    cell: impl Fn(Mode, u32) -> String,
) -> Table {
    let cell = &cell;
    let columns: Vec<Column<'_, Mode>> = counts
        .iter()
        .map(|&n| Column::new(header(n), move |m| cell(m, n)))
        .collect();
    Table::of(first, modes, &columns)
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
    let rps = Figure::RequestsPerS;
    let table =
        |cell: &dyn Fn(Mode, u32) -> String| by_cidrs("mode", &modes, &s.cidr_counts, count, cell);
    let _ = write!(
        o,
        "{}",
        table(&|m, n| with_range(summary(r, m, close_case(r, n), rps), num))
    );
    let _ = writeln!(
        o,
        "\nThe same, relative to the mode with 0 CIDRs (round by round):\n"
    );
    let _ = write!(
        o,
        "{}",
        table(&|m, n| ratio(ratio_cases(r, m, close_case(r, n), close_case(r, 0), rps)))
    );
    let base = s.baseline;
    if base.intercepts() {
        let _ = writeln!(o, "\nRelative to {base} with the same number of CIDRs:\n");
        let _ = write!(
            o,
            "{}",
            table(&|m, n| ratio(ratio_to(r, m, base, close_case(r, n), rps)))
        );
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
    // The same three columns for each load.
    let columns: Vec<Column<'_, Mode>> = [(iperf, "iperf3"), (http, "HTTP")]
        .into_iter()
        .flat_map(|(c, load)| {
            [
                Column::new(format!("{load} Gbit/s"), move |m| {
                    with_range(summary(r, m, c, Figure::Gbps), num)
                }),
                Column::new(format!("vs {base}"), move |m| {
                    ratio(ratio_to(r, m, base, c, Figure::Gbps))
                }),
                Column::new("pod CPU s/GB", move |m| {
                    median_only(summary(r, m, c, Figure::PodCpuPerGbS), num)
                }),
            ]
        })
        .collect();
    let _ = writeln!(o, "{}", Table::of("mode", &s.modes, &columns));
    // A failed run counts as 0 Gbit/s above; say what failed.
    for sample in r.samples.iter().filter(|x| x.case == iperf) {
        if let Some(e) = sample.iperf.as_ref().and_then(|i| i.error.as_ref()) {
            let _ = writeln!(
                o,
                "- {} failed in round {}: iperf3 said \"{e}\" (counted as 0 Gbit/s).",
                sample.mode, sample.round
            );
        }
    }
    let _ = writeln!(o);
}

fn kernel_cost(o: &mut String, r: &Results) {
    if r.kernel.is_empty() {
        return;
    }
    let (lo, hi) = kernel_cidr_span(r);
    let out = Direction::Outbound;
    let _ = writeln!(
        o,
        "## Kernel cost of the eBPF programs\n\nThe programs attached to the pod's cgroup and \
         network namespace, as the kernel lists them (bpftool), with the kernel's BPF run \
         statistics on only for these runs (they cost time on every call), under the \
         new-connection load ({} connections) in a pod of its own. Average run time per call \
         is run_time_ns / run_cnt; per connection, a program's run time over the connections \
         wrk completed. connect4 runs for the client's connections (decided by the rules) and \
         for the sidecar's (proxy uid: decided early), so its average is over both.\n",
        r.settings.close_conns
    );
    let per_conn = |d, n| Summary::of_series(&r.kernel_ns_per_connection(d, n));
    let _ = writeln!(
        o,
        "**Per intercepted connection, every program together: {} outbound with {} CIDRs, {} \
         with {}; {} inbound.**\n",
        with_range(per_conn(out, lo), ns),
        count(lo),
        with_range(per_conn(out, hi), ns),
        count(hi),
        with_range(per_conn(Direction::Inbound, 0), ns),
    );
    let runs = |name: &str, n| Summary::of_series(&r.program_runs_per_request(name, out, n));
    let (called, idle): (Vec<String>, Vec<String>) = r
        .program_names()
        .into_iter()
        .partition(|name| runs(name, lo).is_some_and(|c| c.max != 0.0));
    let called: Vec<&str> = called.iter().map(String::as_str).collect();
    let ns_at = |n: u32| {
        move |name: &str| {
            with_range(Summary::of_series(&r.program_ns(name, n)), |x| {
                format!("{x:.0}")
            })
        }
    };
    let columns = [
        Column::new("calls per request", |name: &str| {
            median_only(runs(name, lo), |x| format!("{x:.2}"))
        }),
        Column::new(
            format!("ns per connection, {} CIDRs", count(lo)),
            |name: &str| {
                median_only(
                    Summary::of_series(&r.program_ns_per_connection(name, out, lo)),
                    |x| format!("{x:.0}"),
                )
            },
        ),
        Column::new(format!("ns/call, {} CIDRs", count(lo)), ns_at(lo)),
        Column::new(format!("ns/call, {} CIDRs", count(hi)), ns_at(hi)),
        Column::new(format!("{}/{}", count(hi), count(lo)), |name: &str| {
            ratio(Summary::of(paired_ratios(
                &r.program_ns(name, hi),
                &r.program_ns(name, lo),
            )))
        }),
    ];
    let _ = write!(o, "{}", Table::of("program", &called, &columns));
    let _ = writeln!(
        o,
        "\nA request here is one client connection through the sidecar: two connects (the \
         client's, redirected, and the sidecar's upstream), one accept. The statistics time \
         every call, and that timing has a cost of its own which the figures include (a call \
         that returns at once, as most of sockops' do, shows it)."
    );
    if !idle.is_empty() {
        let idle: Vec<String> = idle.iter().map(|name| format!("`{name}`")).collect();
        let _ = writeln!(
            o,
            "Attached but not called by this load: {}.",
            idle.join(", ")
        );
    }
    let _ = writeln!(o);
    inbound_kernel_cost(o, r);
}

/// `interceptor trace`'s cost: each arm's medians, and round-by-round ratios to no tracer.
fn tracer_cost(o: &mut String, r: &Results) {
    use super::results::{Arm, TracerSample};
    if r.tracer.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "## What a tracer costs (`interceptor trace`)\n\nA fresh eBPF pod per arm, the arms in \
         turns within each round: new connections per second ({} connections, `Connection: \
         close`), then `redirect_connect4`'s kernel time per call over a second such load \
         with the kernel's statistics on. `no tracer` is this build with nobody tracing (the \
         programs check one flag, then decide exactly as without tracing); `tracer attached` \
         has `interceptor trace --json` reading every event; `baseline build`, when present, \
         is another build's programs (`--tracer-baseline`). Ratios are to `no tracer`, round \
         by round.\n",
        r.settings.close_conns
    );
    let arm_values = |arm: Arm, f: &dyn Fn(&TracerSample) -> Option<f64>| {
        r.tracer
            .iter()
            .filter(|s| s.arm == arm)
            .filter_map(|s| Some((s.round, f(s)?)))
            .collect::<Vec<(u32, f64)>>()
    };
    let rate = |s: &TracerSample| Some(s.conns_per_s);
    let per_call = |s: &TracerSample| s.connect4_ns_per_run();
    let ratio_to_off = |arm: Arm, f: &dyn Fn(&TracerSample) -> Option<f64>| {
        let off = arm_values(Arm::Off, f);
        Summary::of(arm_values(arm, f).into_iter().filter_map(|(round, v)| {
            let o = off.iter().find(|(r, _)| *r == round)?.1;
            Some(v / o)
        }))
    };
    let mut table = Table::new([
        "arm",
        "new connections/s",
        "ratio",
        "redirect_connect4 ns/call",
        "ratio",
        "events traced (lost)",
    ]);
    for arm in [Arm::Baseline, Arm::Off, Arm::On] {
        let samples: Vec<&TracerSample> = r.tracer.iter().filter(|s| s.arm == arm).collect();
        if samples.is_empty() {
            continue;
        }
        let traced: u64 = samples.iter().map(|s| s.traced).sum();
        let lost: u64 = samples.iter().map(|s| s.lost).sum();
        table.row([
            arm.name().to_owned(),
            with_range(Summary::of_series(&arm_values(arm, &rate)), thousands),
            ratio(ratio_to_off(arm, &rate)),
            with_range(Summary::of_series(&arm_values(arm, &per_call)), ns),
            ratio(ratio_to_off(arm, &per_call)),
            if arm == Arm::On {
                format!("{traced} ({lost})")
            } else {
                "–".to_owned()
            },
        ]);
    }
    let _ = writeln!(o, "{table}");
}

fn inbound_kernel_cost(o: &mut String, r: &Results) {
    let inb = Direction::Inbound;
    let called: Vec<String> = r
        .program_names()
        .into_iter()
        .filter(|name| {
            Summary::of_series(&r.program_runs_per_request(name, inb, 0))
                .is_some_and(|c| c.max != 0.0)
        })
        .collect();
    if called.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "Inbound: the same, with the client outside the pod dialling the application's port \
         ({} connections, `Connection: close`), captured to the inbound sidecar (nginx's stream \
         module), which connects to the application on loopback.\n",
        r.settings.inbound_conns
    );
    let called: Vec<&str> = called.iter().map(String::as_str).collect();
    let columns = [
        Column::new("calls per request", |name: &str| {
            median_only(
                Summary::of_series(&r.program_runs_per_request(name, inb, 0)),
                |x| format!("{x:.2}"),
            )
        }),
        Column::new("ns per connection", |name: &str| {
            median_only(
                Summary::of_series(&r.program_ns_per_connection(name, inb, 0)),
                |x| format!("{x:.0}"),
            )
        }),
        Column::new("ns/call", |name: &str| {
            with_range(Summary::of_series(&r.program_ns_in(name, inb, 0)), |x| {
                format!("{x:.0}")
            })
        }),
    ];
    let _ = writeln!(o, "{}", Table::of("program", &called, &columns));
}

fn inbound(o: &mut String, r: &Results) {
    let ka = inbound_case(r, Workload::KeepAlive, Sysctls::Tuned);
    let close = inbound_case(r, Workload::Close, Sysctls::Tuned);
    if !r.samples.iter().any(|s| s.case == ka || s.case == close) {
        return;
    }
    let _ = writeln!(
        o,
        "## Inbound: a client outside the pod dials the application\n\nwrk in the server \
         namespace (on the server's CPU) dials the application's port {} in the pod (nginx, \
         {} workers). Intercepting modes capture it (`{}`) to the inbound sidecar: nginx's \
         stream module on {} (uid 1337, one worker), which relays to the application on \
         127.0.0.1. `explicit`: the client dials {} itself; `direct`: the application's port, \
         no sidecar. Pod CPU is the sidecar's and the application's; the client's is the other \
         column. Both namespaces tuned as above.\n",
        modes::APP_PORT,
        r.settings.nginx_workers,
        modes::INBOUND_FLAGS.join(" "),
        modes::INBOUND_CAPTURE_PORT,
        modes::INBOUND_CAPTURE_PORT,
    );
    let _ = writeln!(o, "### Keep-alive requests, {} connections\n", ka.conns);
    http_table(o, r, ka, "requests/s", "client");
    let _ = writeln!(
        o,
        "### New connection per request (`Connection: close`), {} connections\n",
        close.conns
    );
    http_table(o, r, close, "connections/s", "client");
}

fn default_sysctls(o: &mut String, r: &Results) {
    let out_default = outbound_default_case(r);
    let in_default = inbound_case(r, Workload::Close, Sysctls::Default);
    if !r
        .samples
        .iter()
        .any(|s| s.case == out_default || s.case == in_default)
    {
        return;
    }
    let tuned: Vec<String> = r
        .settings
        .tuned_sysctls
        .iter()
        .map(|(k, v)| format!("`{k}={v}`"))
        .collect();
    let defaults: Vec<String> = r
        .default_sysctls
        .iter()
        .map(|(k, v)| format!("`{k}={v}`"))
        .collect();
    let _ = writeln!(
        o,
        "## New connections at the kernel's default TCP settings\n\nThe figures above run \
         with {} in both namespaces, so that a connection-churning client never runs out of \
         ports. Pods run with the kernel's defaults ({}): the same new-connection loads in \
         fresh namespaces left at those, where ports in TIME_WAIT (and, with iptables, \
         conntrack entries) accumulate.\n",
        tuned.join(", "),
        if defaults.is_empty() {
            "as a fresh namespace has them".to_owned()
        } else {
            defaults.join(", ")
        }
    );
    let _ = writeln!(o, "### Outbound, {} connections\n", out_default.conns);
    http_table(o, r, out_default, "connections/s", "server");
    let rps = Figure::RequestsPerS;
    let out_tuned = close_case(r, 0);
    let in_tuned = inbound_case(r, Workload::Close, Sysctls::Tuned);
    let _ = writeln!(o, "### Inbound, {} connections\n", in_default.conns);
    http_table(o, r, in_default, "connections/s", "client");
    let _ = writeln!(o, "Default over tuned, round by round:\n");
    let columns = [
        Column::new("outbound", |m| {
            ratio(ratio_cases(r, m, out_default, out_tuned, rps))
        }),
        Column::new("inbound", |m| {
            ratio(ratio_cases(r, m, in_default, in_tuned, rps))
        }),
    ];
    let _ = writeln!(o, "{}", Table::of("mode", &r.settings.modes, &columns));
}

fn node_scale(o: &mut String, r: &Results) {
    if r.scale.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "## A node's worth of pods: kernel memory and enrolment time\n\nLight pods (a network \
         namespace with `lo` up and one IPv4 address on it, plus a cgroup in per-pod mode; no \
         veth, no process) enrolled one after another with the same flags (`{}`): per-pod mode \
         runs one `interceptor init` per pod; node mode starts one `interceptor daemon` \
         (attached at a parent cgroup) and registers each pod with `interceptor pod add`. \
         Enrolment time is the wall time of each of those processes, fork+exec to exit.\n",
        r.scale[0].flags
    );
    let _ = writeln!(
        o,
        "Kernel memory is the sum of `bytes_memlock` (bpftool `-j prog show`, `-j map show`) \
         over ours: the programs the kernel shows attached to the run's cgroups \
         (`bpftool cgroup tree`) and to the pods' network namespaces (`bpftool link show`), the \
         maps those programs use, whatever is pinned in the run's own bpffs (`bpftool -f`: \
         maps only user space reads, such as pod records), and (node mode) the programs and \
         maps the daemon holds open (its /proc/PID/fdinfo). Links and the namespaces \
         themselves are not in it. The machine's totals (every program and map, other work \
         included) are beside it.\n"
    );
    for run in &r.scale {
        scale_table(o, run);
    }
}

fn scale_table(o: &mut String, run: &ScaleRun) {
    let _ = writeln!(o, "### {}\n", run.enrolment.name());
    if let Some(ms) = run.daemon_start_ms {
        let _ = writeln!(
            o,
            "The daemon answered {} after it was started (with no pod).\n",
            self::ms(ms)
        );
    }
    let mut table = Table::new([
        "pods",
        "our programs",
        "our maps",
        "our kernel memory",
        "per pod (since none)",
        "per pod after the first",
        "machine: programs",
        "machine: kernel memory",
    ]);
    for p in &run.points {
        table.row([
            count(p.pods),
            count(p.ours.programs),
            count(p.ours.maps),
            kib(p.ours.bytes() as f64),
            run.bytes_per_pod(p.pods).map_or("–".into(), kib),
            run.bytes_per_further_pod(p.pods).map_or("–".into(), kib),
            count(p.machine.programs),
            kib(p.machine.bytes() as f64),
        ]);
    }
    let _ = writeln!(o, "{table}");
    if let Some(why) = &run.stopped {
        let _ = writeln!(o, "Not run to {} pods: {why}.\n", count(run.pods_asked));
    }
    let what = match run.enrolment {
        Enrolment::PerPod => "`interceptor init`",
        Enrolment::Node => "`interceptor pod add`",
    };
    let e = &run.enrol_ms;
    if e.is_empty() {
        return;
    }
    let at = |p| percentile(e.iter().copied(), p).map_or("–".into(), |x| format!("{x:.1} ms"));
    let last_100 = if e.len() > 200 {
        percentile(e.iter().rev().take(100).copied(), 50.0)
            .map_or(String::new(), |x| format!("; the last 100: p50 {x:.1} ms"))
    } else {
        String::new()
    };
    let _ = writeln!(
        o,
        "{what}, {} pods one after another: the first {:.1} ms; all of them p50 {}, p90 {}, \
         p99 {}, max {}{last_100}.\n",
        count(e.len() as u32),
        e[0],
        at(50.0),
        at(90.0),
        at(99.0),
        at(100.0),
    );
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
    let _ = writeln!(
        o,
        "{}",
        by_cidrs(
            "backend",
            &modes,
            &s.cidr_counts,
            |n| format!("{} CIDRs", count(n)),
            |m, n| with_range(Summary::of_series(&r.init_series(m, n)), ms),
        )
    );
    let modes: Vec<Mode> = modes
        .into_iter()
        .filter(|&m| !r.pod_init_series(m, |_| true).is_empty())
        .collect();
    if modes.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "### The first pod on a node, and the next ones\n\nIn every round, {} light pods (a \
         network namespace with `lo` up and one address on it, and a cgroup; no process) get \
         `interceptor init` one after another with istio's default flags (`{}`), each while \
         the earlier ones stay: the first finds nothing of ours loaded on the node. Wall time \
         of the process, fork+exec to exit.\n",
        s.init_pods,
        modes::istio_flags(&[], true).join(" ")
    );
    let columns = [
        Column::new("first pod (median of rounds, min–max)", |m| {
            with_range(first_init(r, m), |x| format!("{x:.1} ms"))
        }),
        Column::new("next pods: p50", |m| {
            percentile(next_inits(r, m), 50.0).map_or("–".into(), |x| format!("{x:.1} ms"))
        }),
        Column::new("p90", |m| {
            percentile(next_inits(r, m), 90.0).map_or("–".into(), |x| format!("{x:.1} ms"))
        }),
        Column::new("max", |m| {
            percentile(next_inits(r, m), 100.0).map_or("–".into(), |x| format!("{x:.1} ms"))
        }),
        Column::new("next pods measured", |m| next_inits(r, m).len().to_string()),
    ];
    let _ = writeln!(o, "{}", Table::of("backend", &modes, &columns));
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
    match &r.leftover_pins {
        Some(pins) if pins.is_empty() => {
            let _ = writeln!(
                o,
                "- Every eBPF command of the run used a bpffs of its own; after every pod had \
                 been cleaned (`interceptor clean`, and the daemon's instance), nothing was \
                 left pinned in it."
            );
        }
        Some(pins) => {
            let shown: Vec<String> = pins.iter().take(10).map(|p| format!("`{p}`")).collect();
            let _ = writeln!(
                o,
                "- Every eBPF command of the run used a bpffs of its own; after every pod had \
                 been cleaned, **{} pins were left in it** (the bench unmounted it): {}{}.",
                pins.len(),
                shown.join(", "),
                if pins.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            );
        }
        None => {}
    }
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

/// The README's table: per mode, the headline figures, each with its ratio to the baseline.
fn headline_table(r: &Results, ka: Case, close0: Case, close_max: Case) -> Table {
    let s = &r.settings;
    let base = s.baseline;
    let iperf = case(Workload::Iperf3, s.iperf_streams, 0);
    let rps = Figure::RequestsPerS;
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
    let columns = [
        Column::new("keep-alive req/s, 32 conns", |m| cell(m, ka, rps)),
        Column::new("p99", |m| median_only(summary(r, m, ka, Figure::P99Us), us)),
        Column::new("new connections/s", |m| cell(m, close0, rps)),
        Column::new(
            format!("conn/s, {} excluded CIDRs", count(close_max.cidrs)),
            |m| cell(m, close_max, rps),
        ),
        Column::new("iperf3 Gbit/s", |m| cell(m, iperf, Figure::Gbps)),
    ];
    Table::of("mode", &s.modes, &columns)
}

/// The README's second table: inbound, and new connections at the kernel's default TCP
/// settings, with ratios to the baseline.
fn flows_table(r: &Results) -> Option<Table> {
    let base = r.settings.baseline;
    let ka = inbound_case(r, Workload::KeepAlive, Sysctls::Tuned);
    let close = inbound_case(r, Workload::Close, Sysctls::Tuned);
    let in_default = inbound_case(r, Workload::Close, Sysctls::Default);
    let out_default = outbound_default_case(r);
    let cases = [ka, close, in_default, out_default];
    if !r.samples.iter().any(|s| cases.contains(&s.case)) {
        return None;
    }
    let rps = Figure::RequestsPerS;
    let cell = |mode: Mode, c: Case| {
        if !r.has(mode, c) {
            return "–".to_owned();
        }
        let v = median_only(summary(r, mode, c, rps), num);
        match ratio_to(r, mode, base, c, rps) {
            Some(x) if mode != base => format!("{v} ({:.2}×)", x.median),
            _ => v,
        }
    };
    let columns = [
        Column::new(
            format!("inbound keep-alive req/s, {} conns", ka.conns),
            move |m| cell(m, ka),
        ),
        Column::new("inbound new conn/s", move |m| cell(m, close)),
        Column::new("inbound new conn/s, default TCP settings", move |m| {
            cell(m, in_default)
        }),
        Column::new("outbound new conn/s, default TCP settings", move |m| {
            cell(m, out_default)
        }),
    ];
    Some(Table::of("mode", &r.settings.modes, &columns))
}

/// What the eBPF decision and `interceptor init` cost, in words.
fn cost_sentences(o: &mut String, r: &Results, max_cidrs: u32) {
    if let Some(connect4) = connect4_name(r) {
        let (lo, hi) = kernel_cidr_span(r);
        let at = |n| median_only(Summary::of_series(&r.program_ns(&connect4, n)), ns);
        let per_conn =
            |d, n| median_only(Summary::of_series(&r.kernel_ns_per_connection(d, n)), ns);
        let _ = writeln!(
            o,
            "The eBPF decision itself (`{connect4}`, from the kernel's BPF run statistics, \
             their own timing included) takes {} per connect with {} excluded CIDRs and {} with \
             {}. Every program of ours together (those the kernel shows attached to the pod) \
             spends {} of kernel time per intercepted outbound connection ({} with {} CIDRs) \
             and {} per inbound one.",
            at(lo),
            count(lo),
            at(hi),
            count(hi),
            per_conn(Direction::Outbound, lo),
            per_conn(Direction::Outbound, hi),
            count(hi),
            per_conn(Direction::Inbound, 0),
        );
    }
    let init = |mode, n| median_only(Summary::of_series(&r.init_series(mode, n)), ms);
    let _ = writeln!(
        o,
        "`interceptor init` takes {} (eBPF) and {} (iptables-nft) with no excluded CIDRs, {} \
         and {} with {}.\n",
        init(Mode::Ebpf, 0),
        init(Mode::IptablesNft, 0),
        init(Mode::Ebpf, max_cidrs),
        init(Mode::IptablesNft, max_cidrs),
        count(max_cidrs)
    );
    if !r.pod_inits.is_empty() {
        let next =
            |m| percentile(next_inits(r, m), 50.0).map_or("–".into(), |x| format!("{x:.1} ms"));
        let p90 =
            |m| percentile(next_inits(r, m), 90.0).map_or("–".into(), |x| format!("{x:.1} ms"));
        let _ = writeln!(
            o,
            "Into light pods one after another (fork+exec of `interceptor init` to its exit, \
             istio's default flags): the first pod on a node {} (eBPF), the next {} pods {} \
             median, {} p90; iptables-nft {} and {} ({} p90).\n",
            median_only(first_init(r, Mode::Ebpf), |x| format!("{x:.1} ms")),
            r.settings.init_pods.saturating_sub(1),
            next(Mode::Ebpf),
            p90(Mode::Ebpf),
            median_only(first_init(r, Mode::IptablesNft), |x| format!("{x:.1} ms")),
            next(Mode::IptablesNft),
            p90(Mode::IptablesNft),
        );
    }
    scale_sentences(o, r);
}

/// Kernel memory per pod and enrolment latency at a node's scale, in words.
fn scale_sentences(o: &mut String, r: &Results) {
    for run in &r.scale {
        let reached = run.pods_reached;
        let first = run.point(1);
        let last = run.point(reached);
        let (Some(first), Some(last)) = (first, last) else {
            continue;
        };
        let before = run.point(0);
        let programs_added_after_first = last.ours.programs as i64 - first.ours.programs as i64;
        let _ = write!(
            o,
            "{}: the first pod locked {} of kernel memory in programs and maps of ours ({} \
             programs, {} maps{}); at {} pods, {} in all, {} per pod after the first, and {} \
             more than with one pod",
            match run.enrolment {
                Enrolment::PerPod => "Per-pod mode (`init`)",
                Enrolment::Node => "Node mode (`daemon` + `pod add`)",
            },
            kib(first.ours.bytes() as f64 - before.map_or(0.0, |b| b.ours.bytes() as f64)),
            count(first.ours.programs),
            count(first.ours.maps),
            match (run.enrolment, before) {
                (Enrolment::Node, Some(b)) => format!(
                    ", over the daemon's own {} before any pod",
                    kib(b.ours.bytes() as f64)
                ),
                _ => String::new(),
            },
            count(reached),
            kib(last.ours.bytes() as f64),
            run.bytes_per_further_pod(reached).map_or("–".into(), kib),
            programs(programs_added_after_first),
        );
        if let Some(why) = &run.stopped {
            let _ = write!(o, " (not run to {}: {why})", count(run.pods_asked));
        }
        if let Some(second) = run.point(2) {
            let _ = write!(
                o,
                ". The second pod added {} of ours (the kernel's count of every program went \
                 from {} to {})",
                programs(second.ours.programs as i64 - first.ours.programs as i64),
                count(first.machine.programs),
                count(second.machine.programs)
            );
        }
        let e = &run.enrol_ms;
        let at =
            |p| percentile(e.iter().copied(), p).map_or("–".into(), |x| format!("{x:.1} ms"));
        let _ = writeln!(
            o,
            ". {} took {} p50, {} p99 over the {} pods.\n",
            match run.enrolment {
                Enrolment::PerPod => "`init`",
                Enrolment::Node => "`pod add`",
            },
            at(50.0),
            at(99.0),
            count(e.len() as u32)
        );
    }
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
    let _ = writeln!(o, "{}", headline_table(r, ka, close0, close_max));
    summary_sentences(&mut o, r, close0, close_max, ka);
    if let Some(table) = flows_table(r) {
        let _ = writeln!(
            o,
            "Inbound (a client outside the pod dials the application's port, captured by `-b` \
             to the sidecar's inbound listener, nginx's stream module in front of nginx), and \
             new connections with both namespaces at the kernel's default TCP settings (the \
             table above uses `tcp_tw_reuse=1` and ports 1024–65000), same rounds:\n\n{table}"
        );
    }
    cost_sentences(&mut o, r, max_cidrs);
    for p in plots {
        let _ = writeln!(o, "![{}]({})\n", p.title, rel.join(&p.file).display());
    }
    let _ = writeln!(
        o,
        "Every figure above is in [`{}`]({}), with the full report in [`report.md`]({}). \
         To reproduce (as root; installs nginx with its stream module, wrk, iperf3 and bpftool \
         if missing; this run took {:.0} minutes; best on an otherwise idle machine):\n\n```sh\n\
         cargo xtask bench            # --quick: a check of the harness in about 4 minutes\n```\n",
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
        assert_eq!(kib(13_032.0), "12.7 KiB");
        assert_eq!(kib(31_213_616.0), "29.8 MiB");
        assert_eq!(kib(3_121_361_600.0), "2.91 GiB");
        assert_eq!(ns(3626.4), "3,626 ns");
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
