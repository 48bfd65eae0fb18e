//! The calling thread's network namespace: entering one, its cookie, its interfaces and
//! addresses.

use std::{
    ffi::CStr,
    io, mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    ptr,
};

/// Moves the calling thread into the network namespace `ns`.
pub fn setns_net(ns: &impl AsFd) -> io::Result<()> {
    setns_net_raw(ns.as_fd().as_raw_fd())
}

/// `setns_net` on a raw descriptor, for a forked child before exec (async-signal-safe: one
/// system call, no allocation). An fd that is not a network namespace is an error, not UB.
pub fn setns_net_raw(ns: RawFd) -> io::Result<()> {
    // SAFETY: setns only reads the descriptor number and changes the calling thread.
    if unsafe { libc::setns(ns, libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The cookie of the calling thread's network namespace, as `bpf_get_netns_cookie()` gives it
/// to the programs (read through a throw-away socket: `SO_NETNS_COOKIE`, Linux 5.14).
pub fn current_netns_cookie() -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: plain arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nobody else owns; closed when dropped.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid fd, and an out buffer of the length given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Every address of the calling thread's namespace, both families, loopback included, in the
/// kernel's order (IPv4 before IPv6, by interface): what Go's `net.InterfaceAddrs` lists, and
/// so what istio-iptables sees.
pub fn interface_addrs() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list that is walked read-only below and freed once.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut addrs = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs made, not freed yet.
        let ifa = unsafe { &*cur };
        // SAFETY: a non-null `ifa_addr` points at a sockaddr of its `sa_family`.
        if let Some(addr) = unsafe { ifa.ifa_addr.as_ref() }.and_then(ip_of) {
            addrs.push(addr);
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list getifaddrs made, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(addrs)
}

/// The IP address of an `AF_INET` or `AF_INET6` socket address.
fn ip_of(sa: &libc::sockaddr) -> Option<IpAddr> {
    match i32::from(sa.sa_family) {
        libc::AF_INET => {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let sin = unsafe { &*(sa as *const libc::sockaddr).cast::<libc::sockaddr_in>() };
            Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: an AF_INET6 address is a sockaddr_in6.
            let sin6 = unsafe { &*(sa as *const libc::sockaddr).cast::<libc::sockaddr_in6>() };
            Some(Ipv6Addr::from(sin6.sin6_addr.s6_addr).into())
        }
        _ => None,
    }
}

/// Interfaces of the calling thread's namespace: (name, index).
pub fn interfaces() -> io::Result<Vec<(String, u32)>> {
    // SAFETY: if_nameindex allocates an array ended by a zero entry, freed once below.
    let head = unsafe { libc::if_nameindex() };
    if head.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    loop {
        // SAFETY: an entry of the array, at most its terminating zero entry.
        let entry = unsafe { &*cur };
        if entry.if_index == 0 || entry.if_name.is_null() {
            break;
        }
        // SAFETY: a NUL-terminated name owned by the array.
        let name = unsafe { CStr::from_ptr(entry.if_name) };
        out.push((name.to_string_lossy().into_owned(), entry.if_index));
        // SAFETY: the array goes on at least to its terminating entry.
        cur = unsafe { cur.add(1) };
    }
    // SAFETY: the array if_nameindex made, freed once.
    unsafe { libc::if_freenameindex(head) };
    Ok(out)
}

/// A listening TCP socket of the calling thread's namespace, as `sock_diag` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpListener {
    /// Local port, host order.
    pub port: u16,
    /// The socket's owner.
    pub uid: u32,
    pub inode: u64,
}

/// `struct inet_diag_sockid` (linux/inet_diag.h).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagSockId {
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct nlmsghdr` + `struct inet_diag_req_v2`: one dump request.
#[repr(C)]
struct DiagRequest {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

/// `struct inet_diag_msg`.
#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

/// The listening TCP sockets of `family` (`AF_INET`, `AF_INET6`) in the calling thread's
/// namespace, through `sock_diag` netlink: the kernel walks only its listening sockets (reading
/// `/proc/net/tcp` walks every TCP socket of the machine, in every namespace).
pub fn tcp_listeners(family: i32) -> io::Result<Vec<TcpListener>> {
    let socket = request_listening_tcp(family)?;
    read_listeners(&socket)
}

/// A `sock_diag` socket that has been asked for the listening TCP sockets of `family`.
fn request_listening_tcp(family: i32) -> io::Result<OwnedFd> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const TCP_LISTEN: u32 = 10;
    // SAFETY: plain arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nobody else owns; closed when dropped.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // The kernel always ends a dump; the timeout bounds the wait should it not.
    let timeout = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: a valid fd and a `timeval` of the length given.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if set < 0 {
        return Err(io::Error::last_os_error());
    }
    let request = DiagRequest {
        len: mem::size_of::<DiagRequest>() as u32,
        kind: SOCK_DIAG_BY_FAMILY,
        flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
        seq: 1,
        pid: 0,
        family: family as u8,
        protocol: libc::IPPROTO_TCP as u8,
        ext: 0,
        pad: 0,
        states: 1 << TCP_LISTEN,
        id: InetDiagSockId::default(),
    };
    // SAFETY: a valid fd and the request's bytes, of the length given.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            (&raw const request).cast(),
            mem::size_of::<DiagRequest>(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// The answer to `request_listening_tcp`, read to its end.
fn read_listeners(socket: &OwnedFd) -> io::Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: a valid fd and a buffer of the length given.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut rest = &buf[..n as usize];
        while rest.len() >= 16 {
            let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
            if len < 16 || len > rest.len() {
                return Err(io::Error::other("a malformed sock_diag answer"));
            }
            match i32::from(kind) {
                libc::NLMSG_DONE => return Ok(out),
                libc::NLMSG_ERROR if len >= 20 => {
                    let errno = i32::from_ne_bytes(rest[16..20].try_into().expect("4 bytes"));
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                _ if len >= 16 + mem::size_of::<InetDiagMsg>() => {
                    // SAFETY: the message holds a whole `inet_diag_msg` after its header; an
                    // unaligned read copies it out.
                    let msg: InetDiagMsg =
                        unsafe { ptr::read_unaligned(rest[16..].as_ptr().cast()) };
                    out.push(TcpListener {
                        port: u16::from_be(msg.id.sport),
                        uid: msg.uid,
                        inode: u64::from(msg.inode),
                    });
                }
                _ => {}
            }
            rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn lists_a_listening_socket_with_its_owner_and_inode() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd()))
            .unwrap()
            .ino();
        // A connected socket on another port is not listening and must not be listed.
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let found: Vec<TcpListener> = tcp_listeners(libc::AF_INET)
            .unwrap()
            .into_iter()
            .filter(|l| l.inode == inode || l.port == port)
            .collect();
        // SAFETY: no arguments.
        let uid = unsafe { libc::geteuid() };
        assert_eq!(found, vec![TcpListener { port, uid, inode }]);
    }
}
