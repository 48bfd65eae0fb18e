//! The "application" of the tests: connects somewhere and reports, as one JSON line
//! ([`ProbeResult`]), whether it connected, its own address, what `getpeername` said and the
//! lines it received. Exits 0 even when the connection failed: the JSON says so.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::{Parser, Subcommand};
use interceptor_tests::ProbeResult;
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
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let Cmd::Connect {
        target,
        bind,
        send,
        timeout_ms,
        http,
    } = Cli::parse().command;
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
        Err(e) => {
            result.error = Some(e);
            return result;
        }
    };
    result.connected = true;
    result.local = stream.local_addr().ok();
    result.peer_name = stream.peer_addr().ok();

    if let Err(e) = stream.write_all(request.as_bytes()).await {
        result.error = Some(format!("write: {e}"));
    }
    // Without --http, EOF tells an echoing peer to finish; HTTP says `Connection: close` instead.
    if !http && let Err(e) = stream.shutdown().await {
        result.error.get_or_insert(format!("shutdown: {e}"));
    }
    // Read chunk by chunk so that what arrived before a timeout or reset is still reported.
    let mut received = Vec::new();
    loop {
        match timeout_at(deadline, stream.read_buf(&mut received)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                result.error.get_or_insert(format!("read: {e}"));
                break;
            }
            Err(_) => {
                result.error.get_or_insert("read: timed out".to_owned());
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&received);
    let body = if http {
        match text.split_once("\r\n\r\n") {
            Some((_head, body)) => body,
            None => {
                result
                    .error
                    .get_or_insert("http: no response head".to_owned());
                &text
            }
        }
    } else {
        &text
    };
    result.lines = body.lines().map(str::to_owned).collect();
    result
}

async fn connect(
    target: SocketAddr,
    bind: Option<IpAddr>,
    deadline: Instant,
) -> Result<TcpStream, String> {
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {e}"))?;
    if let Some(ip) = bind {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    match timeout_at(deadline, socket.connect(target)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err("connect: timed out".to_owned()),
    }
}
