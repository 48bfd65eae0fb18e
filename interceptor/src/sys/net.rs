//! The calling thread's network namespace: entering one, its cookie, its interfaces and
//! addresses.

use std::{
    ffi::CStr,
    io, mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
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
