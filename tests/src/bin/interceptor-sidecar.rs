//! Plays Envoy for the tests and benchmarks: accepts, asks `SO_ORIGINAL_DST` where the client was
//! going, connects there and copies both ways.
//!
//! It listens on IPv4 and IPv6 (an IPv6-only socket beside the IPv4 one), or with `--dual-stack`
//! on one IPv6 socket that also accepts IPv4 (as IPv4-mapped addresses), or with `--ipv6-only`
//! on the IPv6-only socket alone. As Envoy does, it asks
//! `getsockopt(SOL_IP, SO_ORIGINAL_DST)` on an IPv4 connection (IPv4-mapped ones included) and
//! `getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)` on an IPv6 one.
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
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
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

/// `IP6T_SO_ORIGINAL_DST`: `SO_ORIGINAL_DST`'s number at level `SOL_IPV6`.
const IP6T_SO_ORIGINAL_DST: libc::c_int = 80;

/// Which `getsockopt` asks for the original destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Level {
    /// By the connection's family, as Envoy does: `SOL_IP` for IPv4 (IPv4-mapped included).
    Auto,
    /// Always `SOL_IP, SO_ORIGINAL_DST`.
    Ip,
    /// Always `SOL_IPV6, IP6T_SO_ORIGINAL_DST`.
    Ipv6,
}

#[derive(Debug, Parser)]
#[command(about = "Test sidecar: forwards each connection to its SO_ORIGINAL_DST")]
struct Cli {
    /// Port to listen on at 0.0.0.0 and [::] (repeatable), e.g. 15001 outbound, 15006 inbound.
    #[arg(long = "listen", required = true)]
    listen: Vec<u16>,
    /// Listen on one [::] socket that accepts IPv4 too (IPV6_V6ONLY off), as a dual-stack
    /// Envoy listener does.
    #[arg(long)]
    dual_stack: bool,
    /// Listen on [::] only (IPv6-only sockets), no IPv4 socket.
    #[arg(long, conflicts_with = "dual_stack")]
    ipv6_only: bool,
    /// Which getsockopt to ask the original destination with.
    #[arg(long, value_enum, default_value_t = Level::Auto)]
    original_dst_level: Level,
    /// Buffer length passed to that getsockopt (default: the size of the address structure).
    #[arg(long)]
    original_dst_len: Option<u32>,
    /// First write `sidecar port=<p> orig=<ip:port> local=<ip:port>` (or `orig=error:<errno>`)
    /// to the client: the listen port, `SO_ORIGINAL_DST` and the accepted socket's address.
    #[arg(long)]
    announce: bool,
    /// Print one line per connection to stdout when it closes.
    #[arg(long)]
    log: bool,
    /// Bind upstream connections to this source when the original destination is a local
    /// address of the same family (Envoy's inbound passthrough uses 127.0.0.6, and ::6 for
    /// IPv6). Repeatable: one per family.
    #[arg(long)]
    upstream_source: Vec<IpAddr>,
    /// `PORT=IP:PORT` (repeatable): connections accepted on listener PORT go to this fixed
    /// upstream instead of their SO_ORIGINAL_DST (which is still read, for --announce and --log).
    #[arg(long = "upstream", value_name = "PORT=ADDR", value_parser = parse_upstream)]
    upstream: Vec<(u16, SocketAddr)>,
    /// Connections the kernel completes before they are accepted (capped by the namespace's
    /// `net.core.somaxconn`).
    #[arg(long, default_value_t = 1024)]
    backlog: u32,
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
    // A burst of connections holds two descriptors each (accepted, upstream).
    interceptor_tests::raise_open_files_limit();
    if let Some((port, _)) = cli.upstream.iter().find(|(p, _)| !cli.listen.contains(p)) {
        anyhow::bail!("--upstream {port}=...: not a --listen port");
    }
    let mut listeners = JoinSet::new();
    for &port in &cli.listen {
        if !cli.dual_stack && !cli.ipv6_only {
            let listener = listen(
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
                true,
                cli.backlog,
            )
            .with_context(|| format!("listening on port {port}"))?;
            listeners.spawn(accept_loop(listener, port, cli.clone()));
        }
        let v6only = !cli.dual_stack;
        let listener = listen(
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
            v6only,
            cli.backlog,
        )
        .with_context(|| format!("listening on [::]:{port}"))?;
        listeners.spawn(accept_loop(listener, port, cli.clone()));
    }
    // The accept loops never end: this waits until the process is killed.
    while listeners.join_next().await.is_some() {}
    Ok(())
}

/// A listener on `addr`; for IPv6 with `IPV6_V6ONLY` set to `v6only` (not left to the sysctl).
fn listen(addr: SocketAddr, v6only: bool, backlog: u32) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let socket = TcpSocket::new_v6()?;
            set_v6only(&socket, v6only)?;
            socket
        }
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

fn set_v6only(socket: &TcpSocket, v6only: bool) -> io::Result<()> {
    let value = libc::c_int::from(v6only);
    // SAFETY: setsockopt reads an int from a live local.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&raw const value).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
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
    let orig =
        original_dst(&client, cli.original_dst_level, cli.original_dst_len).map_err(errno_name);
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
            local: client.local_addr().ok(),
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
        connect_upstream(target, &cli.upstream_source),
    )
    .await
    .context("connect timed out")?
    .with_context(|| format!("connect {target}"))?;
    upstream.set_nodelay(true)?;
    Ok(relay(client, &mut upstream).await?)
}

async fn connect_upstream(orig: SocketAddr, sources: &[IpAddr]) -> io::Result<TcpStream> {
    let socket = match orig {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    let source = sources.iter().find(|s| s.is_ipv4() == orig.is_ipv4());
    if let Some(&source) = source
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

/// The destination before redirection, or the errno, from the `getsockopt` `level` picks.
fn original_dst(stream: &TcpStream, level: Level, len: Option<u32>) -> Result<SocketAddr, i32> {
    let ipv4 = match stream
        .local_addr()
        .map_err(|e| e.raw_os_error().unwrap_or(0))?
    {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(local) => local.ip().to_ipv4_mapped().is_some(),
    };
    match (level, ipv4) {
        (Level::Ip, _) | (Level::Auto, true) => original_dst4(stream, len),
        (Level::Ipv6, _) | (Level::Auto, false) => original_dst6(stream, len),
    }
}

/// `getsockopt(fd, level, name)` into `T`, with the buffer length `len` (at most `T`'s size).
fn getsockopt_into<T>(
    stream: &TcpStream,
    level: libc::c_int,
    name: libc::c_int,
    len: Option<u32>,
) -> Result<T, i32> {
    let mut value = mem::MaybeUninit::<T>::zeroed();
    let size = mem::size_of::<T>() as libc::socklen_t;
    let mut len = len.unwrap_or(size).min(size);
    // SAFETY: the kernel writes at most `len` bytes, no more than `T` holds.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            level,
            name,
            value.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    // SAFETY: zeroed is a valid value of the plain C structs used here.
    Ok(unsafe { value.assume_init() })
}

/// `getsockopt(SOL_IP, SO_ORIGINAL_DST)`.
fn original_dst4(stream: &TcpStream, len: Option<u32>) -> Result<SocketAddr, i32> {
    let addr: libc::sockaddr_in =
        getsockopt_into(stream, libc::SOL_IP, libc::SO_ORIGINAL_DST, len)?;
    if addr.sin_family != libc::AF_INET as libc::sa_family_t {
        return Err(libc::EAFNOSUPPORT);
    }
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    )
    .into())
}

/// `getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)`.
fn original_dst6(stream: &TcpStream, len: Option<u32>) -> Result<SocketAddr, i32> {
    let addr: libc::sockaddr_in6 =
        getsockopt_into(stream, libc::SOL_IPV6, IP6T_SO_ORIGINAL_DST, len)?;
    if addr.sin6_family != libc::AF_INET6 as libc::sa_family_t {
        return Err(libc::EAFNOSUPPORT);
    }
    Ok(SocketAddrV6::new(
        Ipv6Addr::from(addr.sin6_addr.s6_addr),
        u16::from_be(addr.sin6_port),
        addr.sin6_flowinfo,
        addr.sin6_scope_id,
    )
    .into())
}
