//! The load: wrk (HTTP, keep-alive or a new connection per request) and iperf3 (bulk TCP), run
//! as an application user in the pod (outbound) or in the server namespace (inbound).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use interceptor_tests::{Identity, Side};
use serde::Deserialize;

use super::pod::BenchPod;
use super::results::{CpuFigures, HttpFigures, IperfFigures, Latency, WrkErrors};

/// Slack on top of a run's duration for start-up and the final report.
const RUN_SLACK: Duration = Duration::from_secs(20);
/// Prefix of the line the wrk script (`workdir::WRK_SCRIPT`) prints.
const WRK_LINE: &str = "BENCH-JSON ";

#[derive(Debug, Deserialize)]
struct WrkLine {
    duration_us: f64,
    requests: u64,
    bytes: u64,
    connect: u64,
    read: u64,
    write: u64,
    status: u64,
    timeout: u64,
    mean: f64,
    max: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
}

fn parse_wrk(stdout: &str) -> Result<HttpFigures> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(WRK_LINE))
        .context("no figures line from wrk's script")?;
    let w: WrkLine = serde_json::from_str(line).with_context(|| format!("wrk line {line:?}"))?;
    ensure!(w.duration_us > 0.0, "wrk ran for no time");
    Ok(HttpFigures {
        duration_s: w.duration_us / 1e6,
        requests: w.requests,
        bytes: w.bytes,
        errors: WrkErrors {
            connect: w.connect,
            read: w.read,
            write: w.write,
            status: w.status,
            timeout: w.timeout,
        },
        latency_us: Latency {
            mean: w.mean,
            max: w.max,
            p50: w.p50,
            p90: w.p90,
            p99: w.p99,
            p999: w.p999,
        },
    })
}

/// An HTTP load from the pod.
#[derive(Debug, Clone, Copy)]
pub struct Http<'a> {
    pub conns: u32,
    pub threads: u32,
    /// `Connection: close`: a new connection for every request.
    pub close: bool,
    pub path: &'a str,
    pub duration_s: u32,
}

/// Runs wrk as an application user where the pod's client is (outbound: in the pod; inbound:
/// in the server namespace) against the mode's target.
pub fn run_wrk(pod: &BenchPod, load: Http, script: &Path) -> Result<(HttpFigures, CpuFigures)> {
    let target = pod.http_target();
    let mut cmd = pod.command(pod.client_side(), Identity::APP, "wrk")?;
    cmd.args([
        "-t",
        &load.threads.min(load.conns).to_string(),
        "-c",
        &load.conns.to_string(),
        "-d",
        &format!("{}s", load.duration_s),
        "--timeout",
        "5s",
        "--latency",
        "-s",
    ])
    .arg(script);
    if load.close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(format!("http://{target}{}", load.path))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let before = pod.cpu()?;
    let finished = pod
        .spawn(&mut cmd)?
        .wait(Duration::from_secs(load.duration_s.into()) + RUN_SLACK)?;
    let cpu = pod.cpu()?.since(before);
    if !finished.status.success() {
        bail!(
            "wrk failed ({}): {}",
            finished.status,
            finished.stderr.trim()
        );
    }
    let figures = parse_wrk(&finished.stdout)
        .with_context(|| format!("wrk said: {}{}", finished.stdout, finished.stderr))?;
    ensure!(
        figures.requests > 0,
        "wrk completed no request: {}",
        finished.stdout
    );
    Ok((figures, cpu))
}

/// Runs one iperf3 stream from the pod (application user) to the server through the mode.
pub fn run_iperf3(pod: &BenchPod, duration_s: u32) -> Result<(IperfFigures, CpuFigures)> {
    let topo = pod.topology();
    let target = pod.mode.iperf_target(topo.server_ip);
    let mut cmd = pod.command(Side::Pod, Identity::APP, "iperf3")?;
    cmd.args([
        "-c",
        &target.ip().to_string(),
        "-p",
        &target.port().to_string(),
        "-t",
        &duration_s.to_string(),
        "-J",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let before = pod.cpu()?;
    let finished = pod
        .spawn(&mut cmd)?
        .wait(Duration::from_secs(duration_s.into()) + RUN_SLACK)?;
    let cpu = pod.cpu()?.since(before);
    let figures = parse_iperf3(&finished.stdout)
        .with_context(|| format!("iperf3 ({}): {}", finished.status, finished.stderr.trim()))?;
    Ok((figures, cpu))
}

fn parse_iperf3(json: &str) -> Result<IperfFigures> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3 -J output")?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        // No connection is the harness's failure; a transfer that breaks is the mode's result.
        if e.starts_with("unable to connect") {
            bail!("iperf3: {e}");
        }
        return Ok(IperfFigures {
            duration_s: 0.0,
            bytes: 0,
            bits_per_second: 0.0,
            retransmits: 0,
            error: Some(e.to_string()),
        });
    }
    let received = &v["end"]["sum_received"];
    let sent = &v["end"]["sum_sent"];
    Ok(IperfFigures {
        duration_s: received["seconds"]
            .as_f64()
            .context("end.sum_received.seconds")?,
        bytes: received["bytes"]
            .as_u64()
            .context("end.sum_received.bytes")?,
        bits_per_second: received["bits_per_second"]
            .as_f64()
            .context("end.sum_received.bits_per_second")?,
        retransmits: sent["retransmits"].as_u64().unwrap_or(0),
        error: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_wrk_script_line_among_wrk_output() {
        let out = "Running 1s test @ http://10.200.0.1:80/\n  2 threads and 32 connections\n\
            BENCH-JSON {\"duration_us\":1000512,\"requests\":12000,\"bytes\":3000000,\
            \"connect\":0,\"read\":2,\"write\":0,\"status\":0,\"timeout\":1,\
            \"mean\":812.250,\"max\":9000,\"p50\":700,\"p90\":1200,\"p99\":3100,\"p999\":7000}\n\
            Requests/sec:  11993.86\n";
        let f = parse_wrk(out).unwrap();
        assert_eq!(f.requests, 12000);
        assert_eq!(f.errors.total(), 3);
        assert_eq!(f.latency_us.p99, 3100.0);
        assert!((f.duration_s - 1.000512).abs() < 1e-9);
        assert!(parse_wrk("Running 1s test\n").is_err());
    }

    #[test]
    fn parses_iperf3_json_and_its_errors() {
        let ok = r#"{"start":{},"end":{"sum_sent":{"bytes":5,"retransmits":3},
            "sum_received":{"seconds":1.0001,"bytes":1250000000,"bits_per_second":9.999e9}}}"#;
        let f = parse_iperf3(ok).unwrap();
        assert_eq!((f.bytes, f.retransmits), (1_250_000_000, 3));
        let err =
            r#"{"start":{},"end":{},"error":"unable to connect to server: Connection refused"}"#;
        assert!(format!("{:#}", parse_iperf3(err).unwrap_err()).contains("Connection refused"));
        let broken = r#"{"start":{},"end":{},
            "error":"unable to write to stream socket: Cannot allocate memory"}"#;
        let f = parse_iperf3(broken).unwrap();
        assert_eq!(f.bits_per_second, 0.0);
        assert!(f.error.unwrap().contains("Cannot allocate memory"));
    }
}
