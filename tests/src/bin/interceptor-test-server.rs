//! The upstream of the tests: tells each client which address it accepted on and which peer it
//! saw, then either echoes (default) or speaks minimal HTTP/1.1 (`--http`).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use interceptor_tests::ServerLine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;

/// A request head larger than this is refused.
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, Parser)]
#[command(about = "Test server: banner + echo, or minimal HTTP")]
struct Cli {
    /// Address to listen on (repeatable). An IPv6 address listens for IPv6 only, so that
    /// `[::]:P` and `0.0.0.0:P` can both be given.
    #[arg(long = "listen", required = true)]
    listen: Vec<SocketAddr>,
    /// Answer each HTTP request with 200 and the banner line as body (keep-alive honoured).
    #[arg(long)]
    http: bool,
    /// With --http: pad the body with `x`s to this many bytes (ending in a newline).
    #[arg(long, default_value_t = 0)]
    body_size: usize,
    /// Connections the kernel completes before they are accepted (capped by the namespace's
    /// `net.core.somaxconn`).
    #[arg(long, default_value_t = 1024)]
    backlog: u32,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Arc::new(Cli::parse());
    interceptor_tests::raise_open_files_limit();
    let mut listeners = JoinSet::new();
    for &addr in &cli.listen {
        let listener = listen(addr, cli.backlog).with_context(|| format!("listening on {addr}"))?;
        listeners.spawn(accept_loop(listener, cli.clone()));
    }
    while listeners.join_next().await.is_some() {}
    Ok(())
}

fn listen(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let socket = TcpSocket::new_v6()?;
            let on: libc::c_int = 1;
            // SAFETY: setsockopt reads an int from a live local.
            let rc = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_IPV6,
                    libc::IPV6_V6ONLY,
                    (&raw const on).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            socket
        }
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

async fn accept_loop(listener: TcpListener, cli: Arc<Cli>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let cli = cli.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, peer, &cli).await {
                        eprintln!("test-server: {peer}: {e:#}");
                    }
                });
            }
            Err(e) => {
                eprintln!("test-server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve(mut stream: TcpStream, peer: SocketAddr, cli: &Cli) -> Result<()> {
    let banner = format!(
        "{}\n",
        ServerLine {
            local: stream.local_addr()?,
            peer,
        }
    );
    if cli.http {
        serve_http(&mut stream, &body(banner, cli.body_size)).await
    } else {
        stream.write_all(banner.as_bytes()).await?;
        let (mut reader, mut writer) = stream.split();
        tokio::io::copy(&mut reader, &mut writer).await?;
        writer.shutdown().await?;
        Ok(())
    }
}

/// The banner, padded with `x`s and a final newline up to `size` bytes.
fn body(mut banner: String, size: usize) -> String {
    if size > banner.len() {
        let padding = size - banner.len();
        banner.extend(std::iter::repeat_n('x', padding - 1));
        banner.push('\n');
    }
    banner
}

/// Answers requests in order (pipelined ones too) until the client closes or asks to.
async fn serve_http(stream: &mut TcpStream, body: &str) -> Result<()> {
    let head = |close: bool| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        )
    };
    // Built once per connection: a response is a single write.
    let keep_alive_response = [head(false).as_bytes(), body.as_bytes()].concat();
    let close_response = [head(true).as_bytes(), body.as_bytes()].concat();
    let mut buf = Vec::with_capacity(4096);
    loop {
        let head_len = loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                break end + 4;
            }
            if buf.len() > MAX_HEAD {
                bail!("request head over {MAX_HEAD} bytes");
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let request = Request::parse(&buf[..head_len])?;
        // Skip a request body, if any.
        while buf.len() < head_len + request.content_length {
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        buf.drain(..head_len + request.content_length);
        if request.keep_alive {
            stream.write_all(&keep_alive_response).await?;
        } else {
            stream.write_all(&close_response).await?;
            stream.shutdown().await?;
            return Ok(());
        }
    }
}

struct Request {
    keep_alive: bool,
    content_length: usize,
}

impl Request {
    fn parse(head: &[u8]) -> io::Result<Self> {
        let head = std::str::from_utf8(head)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "non-UTF-8 request head"))?;
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let mut keep_alive = request_line.ends_with("HTTP/1.1");
        let mut content_length = 0;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("connection") {
                keep_alive = !value.eq_ignore_ascii_case("close")
                    && (keep_alive || value.eq_ignore_ascii_case("keep-alive"));
            } else if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse().map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length")
                })?;
            }
        }
        Ok(Self {
            keep_alive,
            content_length,
        })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
