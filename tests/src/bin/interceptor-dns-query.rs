//! A DNS client for the DNS-capture tests: asks SERVER for the A records of NAME over an
//! unconnected UDP socket (`sendto`/`recvfrom`, as many resolvers do), a connected UDP socket
//! (`connect`/`send`/`recv`, as glibc does), or TCP, and prints one JSON line
//! ([`DnsQueryResult`]) with the answer and the address it came from. Exits 0 either way.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
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
    let mut buf = [0u8; 1500];
    let answer = match cli.transport {
        Transport::Udp => {
            let sock = UdpSocket::bind("0.0.0.0:0")?;
            sock.set_read_timeout(timeout)?;
            sock.send_to(&q, cli.server).context("sendto")?;
            let (n, from) = sock.recv_from(&mut buf).context("recvfrom")?;
            result.from = Some(from.to_string());
            buf[..n].to_vec()
        }
        Transport::UdpConnected => {
            let sock = UdpSocket::bind("0.0.0.0:0")?;
            sock.set_read_timeout(timeout)?;
            sock.connect(cli.server).context("connect")?;
            sock.send(&q).context("send")?;
            let n = sock.recv(&mut buf).context("recv")?;
            result.from = Some(sock.peer_addr().context("getpeername")?.to_string());
            buf[..n].to_vec()
        }
        Transport::Tcp => {
            let mut s = TcpStream::connect_timeout(&cli.server, limit).context("connect")?;
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
