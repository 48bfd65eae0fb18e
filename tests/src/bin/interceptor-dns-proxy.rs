//! Plays istio-agent's DNS proxy for the tests: listens on 127.0.0.1:PORT (UDP and TCP), and on
//! each further `--bind` address (e.g. `::1`, as the agent does in a dual-stack pod), answers
//! names under `--local-suffix` itself with `--local-answer`, and forwards every other query to
//! `--upstream` (as the proxy user, so that its own queries are never captured). Without
//! `--upstream` it answers every name itself (a stand-in DNS server). Prints one JSON line per
//! query ([`DnsProxyLine`]) with `--log`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use interceptor_tests::dns::{DnsProxyLine, a_answer, parse_question};

/// Bound for one upstream exchange.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Parser)]
#[command(about = "Test DNS proxy on 127.0.0.1 (UDP and TCP)")]
struct Cli {
    /// Address to serve on (repeatable; default 127.0.0.1).
    #[arg(long)]
    bind: Vec<IpAddr>,
    #[arg(long, default_value_t = 15053)]
    port: u16,
    /// Serve UDP only (TCP on the port is left to another listener).
    #[arg(long)]
    udp_only: bool,
    /// Names ending with this suffix are answered here.
    #[arg(long, default_value = "mesh.test")]
    local_suffix: String,
    #[arg(long, default_value = "10.200.9.9")]
    local_answer: Ipv4Addr,
    /// Where other queries go (none: every name is answered here).
    #[arg(long)]
    upstream: Option<SocketAddr>,
    #[arg(long)]
    log: bool,
    /// Print `ready` on stdout once the sockets are bound (UDP has no listen state to watch).
    #[arg(long)]
    ready_line: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let binds = if cli.bind.is_empty() {
        vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
    } else {
        cli.bind.clone()
    };
    let mut udp_sockets = Vec::new();
    for &ip in &binds {
        let at = SocketAddr::new(ip, cli.port);
        udp_sockets.push(UdpSocket::bind(at).with_context(|| format!("binding udp {at}"))?);
        if !cli.udp_only {
            let tcp = TcpListener::bind(at).with_context(|| format!("listening on tcp {at}"))?;
            let tcp_cli = cli.clone();
            thread::spawn(move || {
                for conn in tcp.incoming().flatten() {
                    let cli = tcp_cli.clone();
                    thread::spawn(move || {
                        if let Err(e) = serve_tcp(conn, &cli) {
                            eprintln!("dns-proxy tcp: {e:#}");
                        }
                    });
                }
            });
        }
    }
    if cli.ready_line {
        println!("ready");
    }
    let servers: Vec<_> = udp_sockets
        .into_iter()
        .map(|udp| {
            let cli = cli.clone();
            thread::spawn(move || serve_udp(&udp, &cli))
        })
        .collect();
    // The servers never end: this waits until the process is killed.
    for server in servers {
        let _ = server.join();
    }
    Ok(())
}

fn serve_udp(udp: &UdpSocket, cli: &Cli) -> Result<()> {
    let mut buf = [0u8; 1500];
    loop {
        let (n, from) = udp.recv_from(&mut buf)?;
        match answer(&buf[..n], "udp", cli) {
            Ok(reply) => {
                let _ = udp.send_to(&reply, from);
            }
            Err(e) => eprintln!("dns-proxy udp: {e:#}"),
        }
    }
}

fn serve_tcp(mut conn: TcpStream, cli: &Cli) -> Result<()> {
    conn.set_read_timeout(Some(UPSTREAM_TIMEOUT))?;
    let query = read_framed(&mut conn)?;
    let reply = answer(&query, "tcp", cli)?;
    write_framed(&mut conn, &reply)
}

fn answer(query: &[u8], proto: &str, cli: &Cli) -> Result<Vec<u8>> {
    let q = parse_question(query)?;
    let upstream = match cli.upstream {
        Some(u)
            if q.name != cli.local_suffix
                && !q.name.ends_with(&format!(".{}", cli.local_suffix)) =>
        {
            Some(u)
        }
        _ => None,
    };
    let local = upstream.is_none();
    let reply = if let Some(upstream) = upstream {
        forward(query, proto, upstream)?
    } else {
        a_answer(query, &[cli.local_answer])?
    };
    if cli.log {
        let line = DnsProxyLine {
            proto: proto.to_string(),
            name: q.name,
            answered_by: if local { "proxy" } else { "upstream" }.to_string(),
        };
        println!("{}", serde_json::to_string(&line)?);
    }
    Ok(reply)
}

fn forward(query: &[u8], proto: &str, upstream: SocketAddr) -> Result<Vec<u8>> {
    Ok(if proto == "udp" {
        let any = match upstream {
            SocketAddr::V4(_) => "0.0.0.0:0",
            SocketAddr::V6(_) => "[::]:0",
        };
        let up = UdpSocket::bind(any)?;
        up.set_read_timeout(Some(UPSTREAM_TIMEOUT))?;
        up.send_to(query, upstream)?;
        let mut buf = [0u8; 1500];
        let n = up.recv(&mut buf).context("upstream udp")?;
        buf[..n].to_vec()
    } else {
        let mut up = TcpStream::connect_timeout(&upstream, UPSTREAM_TIMEOUT)?;
        up.set_read_timeout(Some(UPSTREAM_TIMEOUT))?;
        write_framed(&mut up, query)?;
        read_framed(&mut up).context("upstream tcp")?
    })
}

fn read_framed(s: &mut TcpStream) -> Result<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut m = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut m)?;
    Ok(m)
}

fn write_framed(s: &mut TcpStream, m: &[u8]) -> Result<()> {
    let mut framed = (m.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(m);
    s.write_all(&framed)?;
    Ok(())
}
