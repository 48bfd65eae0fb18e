//! Thin wrappers over the system calls the loader needs and libc has no safe form for.

use std::{
    ffi::{CStr, CString},
    fs::File,
    io,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd as _},
    path::Path,
};

/// The file system magic number of the file's file system.
pub fn fs_magic(file: &File) -> Option<i64> {
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out pointer.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    (rc == 0).then_some(st.f_type as i64)
}

/// The file system magic number at `path`.
pub fn path_fs_magic(path: &Path) -> Option<i64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    (rc == 0).then_some(st.f_type as i64)
}

/// Mountinfo escapes spaces and the like as `\ooo`.
pub fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Moves the calling thread into the network namespace `ns`.
pub fn setns_net(ns: &impl AsFd) -> io::Result<()> {
    // SAFETY: valid fd.
    if unsafe { libc::setns(ns.as_fd().as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The cookie of the calling thread's network namespace (via a throw-away socket).
pub fn current_netns_cookie() -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: plain socket calls with valid arguments; the fd is closed on every path.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        );
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
        Ok(cookie)
    }
}

/// IPv4 addresses of the calling thread's namespace, loopback excluded.
pub fn interface_addrs4() -> io::Result<Vec<Ipv4Addr>> {
    let mut addrs = Vec::new();
    for_each_interface_addr(|sa| {
        if i32::from(sa.sa_family) == libc::AF_INET {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let sin = unsafe { &*(sa as *const libc::sockaddr).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            if !ip.is_loopback() && !addrs.contains(&ip) {
                addrs.push(ip);
            }
        }
    })?;
    Ok(addrs)
}

/// IPv6 addresses of the calling thread's namespace (link-local ones too), `::1` excluded.
pub fn interface_addrs6() -> io::Result<Vec<Ipv6Addr>> {
    let mut addrs = Vec::new();
    for_each_interface_addr(|sa| {
        if i32::from(sa.sa_family) == libc::AF_INET6 {
            // SAFETY: an AF_INET6 address is a sockaddr_in6.
            let sin6 = unsafe { &*(sa as *const libc::sockaddr).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            if !ip.is_loopback() && !addrs.contains(&ip) {
                addrs.push(ip);
            }
        }
    })?;
    Ok(addrs)
}

/// Calls `f` with every interface address of the calling thread's namespace (getifaddrs).
fn for_each_interface_addr(mut f: impl FnMut(&libc::sockaddr)) -> io::Result<()> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null() {
                f(&*ifa.ifa_addr);
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(head);
    }
    Ok(())
}

/// Every address of the calling thread's namespace, both families, loopback included, in the
/// kernel's order (IPv4 before IPv6, by interface): what Go's `net.InterfaceAddrs` lists.
pub fn interface_addrs() -> io::Result<Vec<std::net::IpAddr>> {
    let mut addrs = Vec::new();
    for_each_interface_addr(|sa| match i32::from(sa.sa_family) {
        libc::AF_INET => {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let sin = unsafe { &*(sa as *const libc::sockaddr).cast::<libc::sockaddr_in>() };
            addrs.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into());
        }
        libc::AF_INET6 => {
            // SAFETY: an AF_INET6 address is a sockaddr_in6.
            let sin6 = unsafe { &*(sa as *const libc::sockaddr).cast::<libc::sockaddr_in6>() };
            addrs.push(Ipv6Addr::from(sin6.sin6_addr.s6_addr).into());
        }
        _ => {}
    })?;
    Ok(addrs)
}

/// Interfaces of the calling thread's namespace: (name, index).
pub fn interfaces() -> io::Result<Vec<(String, u32)>> {
    // SAFETY: if_nameindex allocates an array ended by a zero entry, freed once.
    unsafe {
        let head = libc::if_nameindex();
        if head.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut cur = head;
        while (*cur).if_index != 0 && !(*cur).if_name.is_null() {
            let name = CStr::from_ptr((*cur).if_name)
                .to_string_lossy()
                .into_owned();
            out.push((name, (*cur).if_index));
            cur = cur.add(1);
        }
        libc::if_freenameindex(head);
        Ok(out)
    }
}

/// `pidfd_open` + `pidfd_getfd`: a duplicate of another process's file descriptor (needs
/// ptrace rights over it, which root has).
pub fn take_fd(pid: u32, fd: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain syscalls; every fd returned is owned exactly once.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0);
        if pidfd < 0 {
            return Err(io::Error::last_os_error());
        }
        let pidfd = std::os::fd::OwnedFd::from_raw_fd(pidfd as i32);
        let taken = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        if taken < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(std::os::fd::OwnedFd::from_raw_fd(taken as i32))
    }
}

/// Looks a user up in the passwd database.
pub fn uid_of(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: buffers sized as passed.
    let rc = unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(pwd.pw_uid)
}

/// Looks a group up in the group database.
pub fn gid_of(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: buffers sized as passed.
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(grp.gr_gid)
}

/// Mounts a bpf file system at `path`.
pub fn mount_bpffs(path: &Path) -> io::Result<()> {
    let target = CString::new(path.as_os_str().as_encoded_bytes())?;
    let src: &CStr = c"bpf";
    // SAFETY: valid C strings.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `BPF_LINK_UPDATE`: swaps the program behind a link atomically (aya keeps its own wrapper
/// private). Connections never see a moment without a program.
pub fn bpf_link_update(link: &impl AsFd, new_prog: &impl AsFd) -> io::Result<()> {
    #[repr(C)]
    struct LinkUpdateAttr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    const BPF_LINK_UPDATE: libc::c_long = 29;
    // The kernel reads a full bpf_attr; zero the rest.
    let mut attr = [0u8; 128];
    let update = LinkUpdateAttr {
        link_fd: link.as_fd().as_raw_fd() as u32,
        new_prog_fd: new_prog.as_fd().as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    // SAFETY: LinkUpdateAttr is plain data smaller than attr.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (&update as *const LinkUpdateAttr).cast::<u8>(),
            attr.as_mut_ptr(),
            std::mem::size_of::<LinkUpdateAttr>(),
        );
        let rc = libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_UPDATE,
            attr.as_ptr(),
            attr.len() as u32,
        );
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `BPF_OBJ_GET`: opens a pinned object (aya offers no fd for a pinned link).
pub fn bpf_obj_get(path: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    const BPF_OBJ_GET: libc::c_long = 7;
    let c = CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut attr = [0u8; 128];
    let ptr = c.as_ptr() as u64;
    attr[..8].copy_from_slice(&ptr.to_ne_bytes()); // bpf_attr.pathname
    // SAFETY: attr outlives the call and holds a valid path pointer.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_ptr(), attr.len() as u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd we own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// An exclusive `flock` on a directory, released on drop: serialises loaders on one node.
pub struct DirLock {
    _file: File,
}

pub fn lock_dir(dir: &Path) -> io::Result<DirLock> {
    flock(dir, libc::LOCK_EX)
}

/// A shared `flock` (readers), released on drop.
pub fn lock_dir_shared(dir: &Path) -> io::Result<DirLock> {
    flock(dir, libc::LOCK_SH)
}

fn flock(dir: &Path, how: libc::c_int) -> io::Result<DirLock> {
    use std::os::unix::fs::MetadataExt as _;
    // `clean` removes the directory once it is empty; a loader that waited on the old one
    // locks the directory that is there now (recreated for writers).
    for _ in 0..5 {
        let f = File::open(dir)?;
        // SAFETY: valid fd.
        if unsafe { libc::flock(f.as_raw_fd(), how) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let locked = f.metadata()?.ino();
        match std::fs::metadata(dir) {
            Ok(now) if now.ino() == locked => return Ok(DirLock { _file: f }),
            _ if how == libc::LOCK_EX => {
                let _ = std::fs::create_dir(dir);
            }
            _ => {}
        }
    }
    Err(io::Error::other(format!(
        "{} keeps being removed and recreated",
        dir.display()
    )))
}

/// Whether the process runs with root's effective uid.
pub fn is_root() -> bool {
    // SAFETY: no arguments.
    unsafe { libc::geteuid() == 0 }
}

/// `BPF_LINK_CREATE` for a cgroup hook. aya 0.14 cannot turn every cgroup link into a pinnable
/// `FdLink` (not `cgroup/getsockopt`'s), so all of them are made the same way here.
pub fn bpf_link_create_cgroup(
    prog: &impl AsFd,
    cgroup: &impl AsFd,
    attach_type: u32,
    flags: u32,
) -> io::Result<std::os::fd::OwnedFd> {
    bpf_link_create(prog, cgroup, attach_type, flags)
}

/// `BPF_LINK_CREATE` for any target given by fd (a cgroup, or a network namespace for
/// `BPF_SK_LOOKUP`).
pub fn bpf_link_create(
    prog: &impl AsFd,
    target: &impl AsFd,
    attach_type: u32,
    flags: u32,
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    const BPF_LINK_CREATE: libc::c_long = 28;
    let mut attr = [0u32; 32];
    attr[0] = prog.as_fd().as_raw_fd() as u32; // prog_fd
    attr[1] = target.as_fd().as_raw_fd() as u32; // target_fd
    attr[2] = attach_type;
    attr[3] = flags;
    // SAFETY: attr is a zeroed bpf_attr of sufficient size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            attr.as_ptr(),
            std::mem::size_of_val(&attr) as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd we own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_OBJ_PIN`: pins a BPF object (here, links) at `path` on a bpffs.
pub fn bpf_obj_pin(obj: &impl AsFd, path: &Path) -> io::Result<()> {
    const BPF_OBJ_PIN: libc::c_long = 6;
    let c = CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut attr = [0u8; 128];
    attr[..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes()); // pathname
    attr[8..12].copy_from_slice(&(obj.as_fd().as_raw_fd() as u32).to_ne_bytes()); // bpf_fd
    // SAFETY: attr outlives the call and holds a valid path pointer.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, attr.as_ptr(), attr.len() as u32) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What `BPF_OBJ_GET_INFO_BY_FD` says of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub id: u32,
    pub prog_id: u32,
    /// For a network-namespace link (`sk_lookup`): the namespace's inode, 0 once the namespace
    /// is gone (the kernel detaches such links itself). 0 for other links.
    pub netns_ino: u32,
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a link (aya 0.14 has no netns field).
pub fn bpf_link_info(link: &impl AsFd) -> io::Result<LinkInfo> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_TYPE_NETNS: u32 = 5;
    // struct bpf_link_info: type, id, prog_id, then a union aligned to 8 (offset 16) whose
    // netns member starts with netns_ino.
    let mut info = [0u8; 64];
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&(link.as_fd().as_raw_fd() as u32).to_ne_bytes()); // bpf_fd
    attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes()); // info_len
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes()); // info
    // SAFETY: attr points at `info`, which outlives the call and has the length given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_ptr(),
            attr.len() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let word = |off: usize| u32::from_ne_bytes(info[off..off + 4].try_into().expect("4 bytes"));
    Ok(LinkInfo {
        id: word(4),
        prog_id: word(8),
        netns_ino: if word(0) == BPF_LINK_TYPE_NETNS {
            word(16)
        } else {
            0
        },
    })
}

/// `BPF_ENABLE_STATS(BPF_STATS_RUN_TIME)`: the kernel counts every program's runs and run time
/// while the returned fd is open (what `kernel.bpf_stats_enabled=1` does, scoped to a process).
pub fn bpf_enable_stats() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    const BPF_ENABLE_STATS: libc::c_long = 32;
    let attr = [0u8; 128]; // enable_stats.type = BPF_STATS_RUN_TIME (0)
    // SAFETY: a zeroed bpf_attr.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            attr.as_ptr(),
            attr.len() as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd we own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// The uid of the process at the other end of a unix socket (`SO_PEERCRED`).
pub fn peer_uid(socket: &impl AsFd) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for the kernel to write.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_octal_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/x\\"), "/x\\");
    }
}
