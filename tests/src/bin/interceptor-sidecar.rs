//! Plays Envoy for the tests and benchmarks: accepts, asks `SO_ORIGINAL_DST` where the client was
//! going, connects there and copies both ways.
//!
//! Run it as the proxy user (1337) in the pod, so that its own upstream connections are never
//! redirected. `--upstream PORT=ADDR` gives a listener a fixed upstream instead (the benchmarks'
//! `explicit` mode, where the client dials the sidecar itself).
//!
//! Fast enough to benchmark interception behind it: a multi-threaded runtime, `TCP_NODELAY` on
//! both legs (as Envoy sets it), and 64 KiB relay buffers taken from a pool (allocating and
//! zeroing fresh ones cost a new-connection-per-request load about a sixth of its CPU time).

use std::io::{self, Write};
use std::mem;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use interceptor_tests::{SidecarLine, errno_name};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::timeout;

/// Bound for an upstream connect (a dropped SYN would otherwise wait for the kernel's ~2 min).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Relay buffer per direction: tokio's default (8 KiB) costs bulk transfers many more syscalls.
const RELAY_BUFFER: usize = 64 * 1024;
/// Idle buffers kept for reuse (beyond that, they are freed).
const POOL_SIZE: usize = 1024;

static BUFFERS: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

/// A relay buffer from the pool, returned to it on drop.
struct PooledBuffer(Option<Box<[u8]>>);

impl PooledBuffer {
    fn take() -> Self {
        let reused = BUFFERS.lock().ok().and_then(|mut pool| pool.pop());
        Self(Some(reused.unwrap_or_else(|| {
            vec![0u8; RELAY_BUFFER].into_boxed_slice()
        })))
    }

    fn as_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().expect("present until dropped")
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let (Some(buf), Ok(mut pool)) = (self.0.take(), BUFFERS.lock())
            && pool.len() < POOL_SIZE
        {
            pool.push(buf);
        }
    }
}

/// Copies `from` to `to` until EOF, then shuts `to`'s write side down; returns the bytes copied.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
) -> io::Result<u64> {
    let mut buffer = PooledBuffer::take();
    let buf = buffer.as_mut();
    let mut copied = 0;
    loop {
        let n = from.read(buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(copied);
        }
        to.write_all(&buf[..n]).await?;
        copied += n as u64;
    }
}

/// Relays both ways until both sides have closed (or either fails), like tokio's
/// `copy_bidirectional`; returns the bytes copied (a to b, b to a).
async fn relay(a: &mut TcpStream, b: &mut TcpStream) -> io::Result<(u64, u64)> {
    let (a_read, a_write) = a.split();
    let (b_read, b_write) = b.split();
    tokio::try_join!(pump(a_read, b_write), pump(b_read, a_write))
}

#[derive(Debug, Parser)]
#[command(about = "Test sidecar: forwards each connection to its SO_ORIGINAL_DST")]
struct Cli {
    /// Port to listen on at 0.0.0.0 (repeatable), e.g. 15001 outbound, 15006 inbound.
    #[arg(long = "listen", required = true)]
    listen: Vec<u16>,
    /// First write `sidecar port=<p> orig=<ip:port>` (or `orig=error:<errno>`) to the client.
    #[arg(long)]
    announce: bool,
    /// Print one line per connection to stdout when it closes.
    #[arg(long)]
    log: bool,
    /// Bind upstream connections to this source when the original destination is a local
    /// address (Envoy's inbound passthrough uses 127.0.0.6).
    #[arg(long)]
    upstream_source: Option<IpAddr>,
    /// `PORT=IP:PORT` (repeatable): connections accepted on listener PORT go to this fixed
    /// upstream instead of their SO_ORIGINAL_DST (which is still read, for --announce and --log).
    #[arg(long = "upstream", value_name = "PORT=ADDR", value_parser = parse_upstream)]
    upstream: Vec<(u16, SocketAddr)>,
}

fn parse_upstream(text: &str) -> Result<(u16, SocketAddr), String> {
    let (port, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected PORT=IP:PORT"))?;
    let port = port
        .parse()
        .map_err(|e| format!("{text:?}: listener port {port:?}: {e}"))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("{text:?}: upstream {addr:?}: {e}"))?;
    Ok((port, addr))
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Arc::new(Cli::parse());
    if let Some((port, _)) = cli.upstream.iter().find(|(p, _)| !cli.listen.contains(p)) {
        anyhow::bail!("--upstream {port}=...: not a --listen port");
    }
    let mut listeners = JoinSet::new();
    for &port in &cli.listen {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
            .await
            .with_context(|| format!("listening on port {port}"))?;
        listeners.spawn(accept_loop(listener, port, cli.clone()));
    }
    // The accept loops never end: this waits until the process is killed.
    while listeners.join_next().await.is_some() {}
    Ok(())
}

async fn accept_loop(listener: TcpListener, port: u16, cli: Arc<Cli>) {
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                tokio::spawn(handle(client, peer, port, cli.clone()));
            }
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                eprintln!("sidecar: accept on port {port}: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn handle(mut client: TcpStream, peer: SocketAddr, port: u16, cli: Arc<Cli>) {
    let _ = client.set_nodelay(true);
    let orig = original_dst(&client).map_err(errno_name);
    let outcome = forward(&mut client, port, &orig, &cli).await;
    if cli.log {
        let orig = match &orig {
            Ok(addr) => addr.to_string(),
            Err(errno) => format!("error:{errno}"),
        };
        let (to_upstream, to_client, result) = match outcome {
            Ok((up, down)) => (up, down, "ok".to_owned()),
            Err(e) => (0, 0, format!("error:{e:#}").replace(' ', "_")),
        };
        let mut out = io::stdout().lock();
        let _ = writeln!(
            out,
            "conn port={port} peer={peer} orig={orig} to_upstream={to_upstream} \
             to_client={to_client} result={result}"
        );
        let _ = out.flush();
    }
}

/// Announces (if asked), connects to the original destination and copies until both sides
/// close; returns the bytes copied (client to upstream, upstream to client).
async fn forward(
    client: &mut TcpStream,
    port: u16,
    orig: &Result<SocketAddr, String>,
    cli: &Cli,
) -> Result<(u64, u64)> {
    if cli.announce {
        let line = SidecarLine {
            port,
            orig: orig.clone(),
        };
        client.write_all(format!("{line}\n").as_bytes()).await?;
    }
    let fixed = cli
        .upstream
        .iter()
        .find(|(p, _)| *p == port)
        .map(|(_, a)| *a);
    let target = match (fixed, orig) {
        (Some(addr), _) => addr,
        (None, Ok(addr)) => *addr,
        (None, Err(errno)) => anyhow::bail!("SO_ORIGINAL_DST: {errno}"),
    };
    let mut upstream = timeout(
        CONNECT_TIMEOUT,
        connect_upstream(target, cli.upstream_source),
    )
    .await
    .context("connect timed out")?
    .with_context(|| format!("connect {target}"))?;
    upstream.set_nodelay(true)?;
    Ok(relay(client, &mut upstream).await?)
}

async fn connect_upstream(orig: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(source) = source
        && is_local_address(orig.ip())
    {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    socket.connect(orig).await
}

/// An address is local exactly when a socket can bind to it.
fn is_local_address(ip: IpAddr) -> bool {
    UdpSocket::bind((ip, 0)).is_ok()
}

/// `getsockopt(SOL_IP, SO_ORIGINAL_DST)`: the destination before redirection, or the errno.
fn original_dst(stream: &TcpStream) -> Result<SocketAddr, i32> {
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut addr: libc::sockaddr_in = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `addr`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&raw mut addr).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    if addr.sin_family != libc::AF_INET as libc::sa_family_t {
        return Err(libc::EAFNOSUPPORT);
    }
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    )
    .into())
}
