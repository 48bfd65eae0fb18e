//! A DNS client for the DNS-capture tests: asks SERVER for the A records of NAME over an
//! unconnected UDP socket (`sendto`/`recvfrom`, as many resolvers do), a connected UDP socket
//! (`connect`/`send`/`recv`, as glibc does), or TCP, and prints one JSON line
//! ([`DnsQueryResult`]) with the answer and the address it came from. Exits 0 either way.
//!
//! The socket's family is the server's. With `--dual-stack`, an IPv4 server is dialled as
//! `::ffff:a.b.c.d` from an IPv6 socket that speaks IPv4 too (`IPV6_V6ONLY` off), as a
//! dual-stack resolver does.

use std::io::{self, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::FromRawFd as _;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use clap::{Parser, ValueEnum};
use interceptor_tests::dns::{DnsQueryResult, a_query, parse_a_answer};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Transport {
    /// `sendto()` on an unconnected socket.
    Udp,
    /// `connect()` then `send()`.
    UdpConnected,
    Tcp,
}

#[derive(Debug, Parser)]
#[command(about = "DNS A query; prints the answer and its source as JSON")]
struct Cli {
    server: SocketAddr,
    name: String,
    #[arg(long, value_enum, default_value = "udp")]
    transport: Transport,
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
    /// Dial an IPv4 server as `::ffff:a.b.c.d` from a dual-stack IPv6 socket.
    #[arg(long)]
    dual_stack: bool,
}

const ID: u16 = 0x4e21;

fn main() {
    let cli = Cli::parse();
    let mut result = DnsQueryResult::default();
    if let Err(e) = query(&cli, &mut result) {
        result.error = Some(format!("{e:#}"));
    }
    println!(
        "{}",
        serde_json::to_string(&result).expect("result serializes")
    );
}

fn query(cli: &Cli, result: &mut DnsQueryResult) -> Result<()> {
    let limit = Duration::from_millis(cli.timeout_ms);
    let timeout = Some(limit);
    let q = a_query(ID, &cli.name)?;
    let server = match cli.server {
        SocketAddr::V4(v4) if cli.dual_stack => {
            SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
        }
        other => other,
    };
    let mut buf = [0u8; 1500];
    let answer = match cli.transport {
        Transport::Udp => {
            let sock = udp_socket(server)?;
            sock.set_read_timeout(timeout)?;
            sock.send_to(&q, server).context("sendto")?;
            let (n, from) = sock.recv_from(&mut buf).context("recvfrom")?;
            result.from = Some(from.to_string());
            buf[..n].to_vec()
        }
        Transport::UdpConnected => {
            let sock = udp_socket(server)?;
            sock.set_read_timeout(timeout)?;
            sock.connect(server).context("connect")?;
            sock.send(&q).context("send")?;
            let n = sock.recv(&mut buf).context("recv")?;
            result.from = Some(sock.peer_addr().context("getpeername")?.to_string());
            buf[..n].to_vec()
        }
        Transport::Tcp => {
            let mut s = TcpStream::connect_timeout(&server, limit).context("connect")?;
            s.set_read_timeout(timeout)?;
            let mut framed = (q.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&q);
            s.write_all(&framed).context("write")?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).context("read length")?;
            let mut m = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut m).context("read answer")?;
            result.from = Some(s.peer_addr().context("getpeername")?.to_string());
            m
        }
    };
    result.addresses = parse_a_answer(&answer, ID)?;
    ensure!(!result.addresses.is_empty(), "no A record in the answer");
    Ok(())
}

/// An unbound-port UDP socket of the server's family; an IPv6 one with `IPV6_V6ONLY` off, so
/// that it can speak to `::ffff:a.b.c.d` whatever the namespace's default.
fn udp_socket(server: SocketAddr) -> Result<UdpSocket> {
    if server.is_ipv4() {
        return Ok(UdpSocket::bind("0.0.0.0:0")?);
    }
    // SAFETY: plain arguments.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error().into());
    }
    // SAFETY: a new descriptor this function owns; the socket closes it.
    let sock = unsafe { UdpSocket::from_raw_fd(fd) };
    let off: libc::c_int = 0;
    // SAFETY: a valid fd and an option value of the length given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&raw const off).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("IPV6_V6ONLY");
    }
    // Bound through a sockaddr_in6 via std: [::]:0.
    bind_any6(&sock)?;
    Ok(sock)
}

fn bind_any6(sock: &UdpSocket) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a zeroed sockaddr_in6 is [::]:0.
    let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    addr.sin6_addr.s6_addr = Ipv6Addr::UNSPECIFIED.octets();
    // SAFETY: a valid sockaddr of the size passed.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("binding [::]:0");
    }
    Ok(())
}
