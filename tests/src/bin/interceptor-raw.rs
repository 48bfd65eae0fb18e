//! A process of the pod using raw sockets, for the raw-socket tests: `syn` sends a hand-made TCP
//! SYN to TARGET (from a raw TCP socket, or with `--header-included` from an ICMP raw socket
//! with `IP_HDRINCL`, writing the IPv4 header itself) and watches for the answer; `ping` sends
//! an ICMP echo request from a raw ICMP socket. Prints one JSON line ([`RawResult`]), exits 0
//! either way. Needs CAP_NET_RAW (run it as root, or with the capability kept).

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use interceptor_tests::errno_name;
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(about = "Raw sockets in the pod: a hand-made SYN, or a ping; prints JSON")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// How long to watch for an answer.
    #[arg(long, global = true, default_value_t = 2000)]
    timeout_ms: u64,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// A TCP SYN to TARGET from a raw socket; reports whether a SYN-ACK came back from it.
    Syn {
        target: SocketAddr,
        /// IPv4: an ICMP raw socket with `IP_HDRINCL`, the IPv4 and TCP headers written here.
        #[arg(long)]
        header_included: bool,
    },
    /// An ICMP (or ICMPv6) echo request to TARGET from a raw socket.
    Ping { target: IpAddr },
}

/// What happened, step by step: the first step that failed says why (an errno name).
#[derive(Debug, Default, Serialize)]
struct RawResult {
    /// `ok` or the errno of `socket()`.
    socket: String,
    /// `ok` or the errno of `setsockopt(IP_HDRINCL)`, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    header_included: Option<String>,
    /// `ok` or the errno of `sendto()`.
    #[serde(skip_serializing_if = "Option::is_none")]
    sent: Option<String>,
    /// `syn-ack`, `rst`, `echo-reply`, or `none` (nothing within the timeout).
    #[serde(skip_serializing_if = "Option::is_none")]
    answer: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    let deadline = Instant::now() + Duration::from_millis(cli.timeout_ms);
    let result = match cli.command {
        Cmd::Syn {
            target,
            header_included,
        } => syn(target, header_included, deadline),
        Cmd::Ping { target } => ping(target, deadline),
    };
    println!(
        "{}",
        serde_json::to_string(&result).expect("RawResult serializes")
    );
}

fn errno(e: &io::Error) -> String {
    errno_name(e.raw_os_error().unwrap_or(0))
}

fn socket(family: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain arguments.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned to us, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The raw socket, or none, `result.socket` saying which.
fn open(family: libc::c_int, protocol: libc::c_int, result: &mut RawResult) -> Option<OwnedFd> {
    let opened = socket(family, protocol);
    result.socket = opened.as_ref().map_or_else(errno, |_| "ok".into());
    opened.ok()
}

fn set_int(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: i32) -> io::Result<()> {
    // SAFETY: reads an int from a live local of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The source address the pod's routes pick for `target` (a UDP connect sends nothing).
fn source_for(target: SocketAddr) -> io::Result<IpAddr> {
    let any: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let udp = UdpSocket::bind(any)?;
    udp.connect(target)?;
    Ok(udp.local_addr()?.ip())
}

fn sockaddr(ip: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match ip {
        IpAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6 and suitably aligned.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn send_to(fd: &OwnedFd, packet: &[u8], to: IpAddr) -> io::Result<()> {
    let (addr, len) = sockaddr(to);
    // SAFETY: a live buffer and address of the lengths given.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&raw const addr).cast(),
            len,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The next packet on `fd` within `deadline` (none: the deadline passed).
fn receive(fd: &OwnedFd, deadline: Instant) -> io::Result<Option<Vec<u8>>> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Ok(None);
    }
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis().max(1) as libc::c_int) };
    if ready <= 0 {
        return Ok(None);
    }
    let mut buf = vec![0u8; 65536];
    // SAFETY: a live buffer of the length given.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}

/// The Internet checksum (RFC 1071) of `data`, starting from `sum`.
fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A 20-byte TCP SYN header from `sport` to `dport`; checksum over the IPv4 pseudo-header
/// (IPv6 leaves it to the kernel, `IPV6_CHECKSUM`).
fn tcp_syn(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    h[12] = 5 << 4; // data offset: 5 words
    h[13] = 0x02; // SYN
    h[14..16].copy_from_slice(&64240u16.to_be_bytes());
    if let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) {
        let mut pseudo = Vec::with_capacity(32);
        pseudo.extend_from_slice(&s.octets());
        pseudo.extend_from_slice(&d.octets());
        pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8, 0, 20]);
        pseudo.extend_from_slice(&h);
        let sum = checksum(&pseudo, 0);
        h[16..18].copy_from_slice(&sum.to_be_bytes());
    }
    h
}

fn syn(target: SocketAddr, header_included: bool, deadline: Instant) -> RawResult {
    let mut result = RawResult::default();
    let v4 = target.is_ipv4();
    let family = if v4 { libc::AF_INET } else { libc::AF_INET6 };
    let protocol = if header_included {
        libc::IPPROTO_ICMP
    } else {
        libc::IPPROTO_TCP
    };
    let Some(sender) = open(family, protocol, &mut result) else {
        return result;
    };
    if header_included {
        let set = set_int(&sender, libc::IPPROTO_IP, libc::IP_HDRINCL, 1);
        result.header_included = Some(set.as_ref().map_or_else(errno, |()| "ok".into()));
        if set.is_err() {
            return result;
        }
    } else if !v4 {
        // The kernel fills in the TCP checksum at this offset (RFC 3542).
        let _ = set_int(&sender, libc::IPPROTO_IPV6, libc::IPV6_CHECKSUM, 16);
    }
    let Ok(src) = source_for(target) else {
        result.sent = Some("no route".into());
        return result;
    };
    let sport = 40000 + (std::process::id() % 20000) as u16;
    let mut packet = tcp_syn(src, target.ip(), sport, target.port());
    if let (true, IpAddr::V4(s), IpAddr::V4(d)) = (header_included, src, target.ip()) {
        let mut ip = vec![0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&40u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = libc::IPPROTO_TCP as u8;
        ip[12..16].copy_from_slice(&s.octets());
        ip[16..20].copy_from_slice(&d.octets());
        ip.extend_from_slice(&packet);
        packet = ip;
    }
    // The answer is read from a raw TCP socket of our own (the ICMP one sees no TCP); opened
    // before sending, so that it cannot miss it.
    let watcher = if header_included {
        socket(family, libc::IPPROTO_TCP).ok()
    } else {
        None
    };
    let sent = send_to(&sender, &packet, target.ip());
    result.sent = Some(sent.as_ref().map_or_else(errno, |()| "ok".into()));
    if sent.is_err() {
        return result;
    }
    let watch = match (&watcher, header_included) {
        (_, false) => &sender,
        (Some(watcher), true) => watcher,
        (None, true) => {
            result.answer = Some("unobservable".into());
            return result;
        }
    };
    result.answer = Some(loop {
        match receive(watch, deadline) {
            Ok(Some(packet)) => {
                // IPv4 raw sockets see the IP header; IPv6 ones only the TCP header.
                let (from, tcp) = if v4 {
                    let ihl = usize::from(packet.first().map_or(5, |b| b & 0x0f)) * 4;
                    let from = packet
                        .get(12..16)
                        .map(|a| IpAddr::from(<[u8; 4]>::try_from(a).expect("four bytes")));
                    (from, packet.get(ihl..).unwrap_or_default())
                } else {
                    (Some(target.ip()), &packet[..])
                };
                if tcp.len() < 14 || from != Some(target.ip()) {
                    continue;
                }
                let (p_src, p_dst) = (
                    u16::from_be_bytes([tcp[0], tcp[1]]),
                    u16::from_be_bytes([tcp[2], tcp[3]]),
                );
                if p_src != target.port() || p_dst != sport {
                    continue;
                }
                let flags = tcp[13];
                break if flags & 0x12 == 0x12 {
                    "syn-ack".into()
                } else if flags & 0x04 != 0 {
                    "rst".into()
                } else {
                    continue;
                };
            }
            Ok(None) => break "none".into(),
            Err(e) => break errno(&e),
        }
    });
    result
}

fn ping(target: IpAddr, deadline: Instant) -> RawResult {
    let mut result = RawResult::default();
    let (family, protocol, request, reply) = match target {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8, 0u8),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128u8, 129u8),
    };
    let Some(fd) = open(family, protocol, &mut result) else {
        return result;
    };
    let id = (std::process::id() & 0xffff) as u16;
    let mut echo = vec![request, 0, 0, 0];
    echo.extend_from_slice(&id.to_be_bytes());
    echo.extend_from_slice(&1u16.to_be_bytes());
    echo.extend_from_slice(b"interceptor");
    if target.is_ipv4() {
        let sum = checksum(&echo, 0);
        echo[2..4].copy_from_slice(&sum.to_be_bytes());
    } // ICMPv6: the kernel computes the checksum.
    let sent = send_to(&fd, &echo, target);
    result.sent = Some(sent.as_ref().map_or_else(errno, |()| "ok".into()));
    if sent.is_err() {
        return result;
    }
    result.answer = Some(loop {
        match receive(&fd, deadline) {
            Ok(Some(packet)) => {
                let icmp = if target.is_ipv4() {
                    let ihl = usize::from(packet.first().map_or(5, |b| b & 0x0f)) * 4;
                    packet.get(ihl..).unwrap_or_default().to_vec()
                } else {
                    packet
                };
                if icmp.len() >= 6 && icmp[0] == reply && icmp[4..6] == id.to_be_bytes() {
                    break "echo-reply".into();
                }
            }
            Ok(None) => break "none".into(),
            Err(e) => break errno(&e),
        }
    });
    result
}
