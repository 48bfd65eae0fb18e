//! The "application" of the tests: connects somewhere and reports, as one JSON line
//! ([`ProbeResult`]), whether it connected, its own address, what `getpeername` said and the
//! lines it received. Exits 0 even when the connection failed: the JSON says so.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::{Parser, Subcommand};
use interceptor_tests::{
    BurstSummary, FailureKind, LoopSummary, ProbeCase, ProbeFailure, ProbeResult, ServerLine,
    SidecarLine, raise_open_files_limit,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, timeout_at};

#[derive(Debug, Parser)]
#[command(about = "Test application: connect and report as JSON")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Connect to TARGET, send, read until EOF or timeout, print one JSON line.
    Connect {
        target: SocketAddr,
        /// Bind this source address before connecting (e.g. 127.0.0.6).
        #[arg(long)]
        bind: Option<IpAddr>,
        /// Send this text, then shut down the write side.
        #[arg(long)]
        send: Option<String>,
        /// Bound for connecting and reading together.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
        /// Send `GET /` and report the response body lines.
        #[arg(long, conflicts_with = "send")]
        http: bool,
    },
    /// Connect to each CASE in turn (`TARGET` or `TARGET@SOURCE`), as `connect` does with no
    /// text to send, and print one JSON line per case, in order: many connections for the
    /// cost of one process (one identity, one place).
    Batch {
        #[arg(required = true)]
        cases: Vec<ProbeCase>,
        /// Bound for connecting and reading, per case.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// Connect to TARGET again and again (reading each connection's first line) until stdin
    /// reaches EOF or a bound is hit, then print one JSON `LoopSummary` line.
    Loop {
        target: SocketAddr,
        /// Most connections.
        #[arg(long, default_value_t = 50_000)]
        max_count: u64,
        /// Most seconds.
        #[arg(long, default_value_t = 120)]
        max_secs: u64,
        /// Pause between connections (keeps closed connections' ports within the kernel's
        /// ephemeral range over a long run).
        #[arg(long, default_value_t = 2)]
        interval_ms: u64,
        /// Bound for connecting and reading the first line of one connection.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// Open COUNT connections to TARGET at once (every connect issued before any is read),
    /// read each one's first line, and print one JSON `BurstSummary` line.
    Burst {
        target: SocketAddr,
        #[arg(long)]
        count: u64,
        /// Bound for the whole burst (connects that the listener's backlog delays are retried
        /// by the kernel, which takes seconds).
        #[arg(long, default_value_t = 120_000)]
        timeout_ms: u64,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (target, bind, send, timeout_ms, http) = match Cli::parse().command {
        Cmd::Connect {
            target,
            bind,
            send,
            timeout_ms,
            http,
        } => (target, bind, send, timeout_ms, http),
        Cmd::Loop {
            target,
            max_count,
            max_secs,
            interval_ms,
            timeout_ms,
        } => {
            let summary = connect_loop(
                target,
                max_count,
                Duration::from_secs(max_secs),
                Duration::from_millis(interval_ms),
                Duration::from_millis(timeout_ms),
            )
            .await;
            println!(
                "{}",
                serde_json::to_string(&summary).expect("LoopSummary serializes")
            );
            return;
        }
        Cmd::Burst {
            target,
            count,
            timeout_ms,
        } => {
            let summary = burst(
                target,
                count,
                Instant::now() + Duration::from_millis(timeout_ms),
            )
            .await;
            println!(
                "{}",
                serde_json::to_string(&summary).expect("BurstSummary serializes")
            );
            return;
        }
        Cmd::Batch { cases, timeout_ms } => {
            for case in cases {
                let deadline = Instant::now() + Duration::from_millis(timeout_ms);
                let result = probe(case.target, case.bind, "", false, deadline).await;
                println!(
                    "{}",
                    serde_json::to_string(&result).expect("ProbeResult serializes")
                );
            }
            return;
        }
    };
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let request = if http {
        format!("GET / HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n")
    } else {
        send.unwrap_or_default()
    };
    let result = probe(target, bind, &request, http, deadline).await;
    println!(
        "{}",
        serde_json::to_string(&result).expect("ProbeResult serializes")
    );
}

async fn probe(
    target: SocketAddr,
    bind: Option<IpAddr>,
    request: &str,
    http: bool,
    deadline: Instant,
) -> ProbeResult {
    let mut result = ProbeResult::default();
    let mut stream = match connect(target, bind, deadline).await {
        Ok(stream) => stream,
        Err((text, failure)) => {
            result.error = Some(text);
            result.failure = Some(failure);
            return result;
        }
    };
    result.connected = true;
    result.local = stream.local_addr().ok();
    result.peer_name = stream.peer_addr().ok();

    if let Err(e) = stream.write_all(request.as_bytes()).await {
        note_failure(&mut result, "write", &e);
    }
    // Without --http, EOF tells an echoing peer to finish; HTTP says `Connection: close` instead.
    if !http && let Err(e) = stream.shutdown().await {
        note_failure(&mut result, "shutdown", &e);
    }
    // Read chunk by chunk so that what arrived before a timeout or reset is still reported.
    let mut received = Vec::new();
    loop {
        match timeout_at(deadline, stream.read_buf(&mut received)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                note_failure(&mut result, "read", &e);
                break;
            }
            Err(_) => {
                if result.error.is_none() {
                    result.error = Some("read: timed out".to_owned());
                    result.failure = Some(ProbeFailure::new("read", FailureKind::TimedOut));
                }
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&received);
    let body = if http {
        match text.split_once("\r\n\r\n") {
            Some((_head, body)) => body,
            None => {
                if result.error.is_none() {
                    result.error = Some("http: no response head".to_owned());
                    result.failure = Some(ProbeFailure::new("http", FailureKind::Errno(0)));
                }
                &text
            }
        }
    } else {
        &text
    };
    result.lines = body.lines().map(str::to_owned).collect();
    result
}

/// Records the first failure only: `error` and `failure` describe the same one.
fn note_failure(result: &mut ProbeResult, stage: &str, e: &std::io::Error) {
    if result.error.is_none() {
        result.error = Some(format!("{stage}: {e}"));
        result.failure = Some(ProbeFailure::new(stage, FailureKind::of(e)));
    }
}

/// Sequential connections until stdin closes; each is classified by its first line.
async fn connect_loop(
    target: SocketAddr,
    max_count: u64,
    max_time: Duration,
    interval: Duration,
    each: Duration,
) -> LoopSummary {
    let mut summary = LoopSummary::default();
    let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
    // Blocking stdin read on its own thread: EOF (or anything) stops the loop.
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        let _ = stop_tx.send(());
    });
    let end = Instant::now() + max_time;
    while summary.attempts < max_count && Instant::now() < end {
        if !matches!(
            stop.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        ) {
            summary.stopped_by_stdin = true;
            break;
        }
        summary.attempts += 1;
        match first_line(target, Instant::now() + each).await {
            Ok(line) => match line.parse::<SidecarLine>().map(|l| l.orig) {
                Ok(Ok(_)) => summary.via_sidecar += 1,
                // The proxy cannot send it anywhere: a failed connection.
                Ok(Err(errno)) => summary.fail(format!("SO_ORIGINAL_DST failed: {errno}")),
                Err(_) if line.parse::<ServerLine>().is_ok() => summary.direct += 1,
                Err(_) => summary.fail(format!("unexpected first line {line:?}")),
            },
            Err(e) => summary.fail(e),
        }
        tokio::time::sleep(interval).await;
    }
    summary
}

/// COUNT connections at once: every task connects before the runtime reads any answer (the
/// tasks only yield once their SYN is out), so the hand-overs of the whole burst overlap.
async fn burst(target: SocketAddr, count: u64, deadline: Instant) -> BurstSummary {
    raise_open_files_limit();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        tasks.spawn(first_line(target, deadline));
    }
    let mut summary = BurstSummary {
        attempts: count,
        ..BurstSummary::default()
    };
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(line)) => match line.parse::<SidecarLine>().map(|l| l.orig) {
                Ok(Ok(orig)) if orig == target => summary.original_dst_kept += 1,
                Ok(other) => {
                    let why = match other {
                        Ok(wrong) => format!("wrong:{wrong}"),
                        Err(errno) => errno,
                    };
                    *summary.original_dst_failed.entry(why).or_default() += 1;
                }
                Err(_) if line.parse::<ServerLine>().is_ok() => summary.direct += 1,
                Err(_) => summary.fail(format!("unexpected first line {line:?}")),
            },
            Ok(Err(e)) => summary.fail(e),
            Err(e) => summary.fail(format!("task: {e}")),
        }
    }
    summary
}

async fn first_line(target: SocketAddr, deadline: Instant) -> Result<String, String> {
    let mut stream = connect(target, None, deadline)
        .await
        .map_err(|(text, _)| text)?;
    let mut received = Vec::new();
    while !received.contains(&b'\n') {
        match timeout_at(deadline, stream.read_buf(&mut received)).await {
            Ok(Ok(0)) => return Err(format!("EOF before a line ({} bytes)", received.len())),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("read: {e}")),
            Err(_) => return Err("read: timed out".to_owned()),
        }
    }
    // Close with a reset: no TIME_WAIT on this side however many connections the loop makes.
    // (A zero linger never blocks the drop, which is what the deprecation is about.)
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    let text = String::from_utf8_lossy(&received);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// A connected stream, or the error's text and its classification.
async fn connect(
    target: SocketAddr,
    bind: Option<IpAddr>,
    deadline: Instant,
) -> Result<TcpStream, (String, ProbeFailure)> {
    let failed = |stage: &str, text: String, e: &std::io::Error| {
        (text, ProbeFailure::new(stage, FailureKind::of(e)))
    };
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| failed("socket", format!("socket: {e}"), &e))?;
    if let Some(ip) = bind {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| failed("bind", format!("bind {ip}: {e}"), &e))?;
    }
    match timeout_at(deadline, socket.connect(target)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(failed("connect", format!("connect: {e}"), &e)),
        Err(_) => Err((
            "connect: timed out".to_owned(),
            ProbeFailure::new("connect", FailureKind::TimedOut),
        )),
    }
}
