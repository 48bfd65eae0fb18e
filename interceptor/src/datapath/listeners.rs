//! Finds the capture listeners the proxy opened before `init` ran (the kernel registers later
//! ones itself, in `sockops`): `sock_diag` lists the namespace's listening sockets (IPv4, and
//! IPv6 with dual-stack `[::]`) with their inodes, and a process of the namespace holds each; `pidfd_getfd` gives the loader its own descriptor, which it then puts into the maps. So
//! the order in which the proxy and `init` start does not matter.

use std::{
    fs,
    os::{fd::OwnedFd, unix::fs::MetadataExt as _},
    path::Path,
};

use anyhow::Context as _;

use super::{maps::Maps, plan::MapPlan};
use crate::{family::Family, pod::Netns, sys};

/// A listening socket of the namespace, as `sock_diag` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListeningSocket {
    pub inode: u64,
    /// The socket's owner.
    pub uid: u32,
    pub family: Family,
}

/// A listener found in a process, with the loader's own descriptor for it.
#[derive(Debug)]
pub struct FoundListener {
    pub pid: u32,
    pub socket: ListeningSocket,
    pub fd: OwnedFd,
}

/// The listeners on `port` in `netns` that `is_proxy(uid, gid)` accepts (the socket's owner,
/// and the holding process's gid), the first one of each family, taken from the processes that
/// hold them.
fn find_existing(
    netns: &Netns,
    port: u16,
    is_proxy: impl Fn(u32, Option<u32>) -> bool,
) -> anyhow::Result<Vec<FoundListener>> {
    let sockets = netns.run_inside(move || {
        let mut sockets = Vec::new();
        for family in Family::BOTH {
            let af = family.af() as i32;
            match sys::net::tcp_listeners(af) {
                Ok(listening) => {
                    sockets.extend(listening.into_iter().filter(|l| l.port == port).map(|l| {
                        ListeningSocket {
                            inode: l.inode,
                            uid: l.uid,
                            family,
                        }
                    }))
                }
                // A kernel without IPv6 has no IPv6 sockets to list.
                Err(e) if family == Family::V6 && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("listing the namespace's {family} listening sockets")
                    });
                }
            }
        }
        Ok(sockets)
    })?;
    let mut found: Vec<FoundListener> = Vec::new();
    if sockets.is_empty() {
        return Ok(found);
    }
    for entry in fs::read_dir("/proc").context("listing /proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        // Only processes of this namespace can hold its sockets (in practice).
        if fs::metadata(dir.join("ns/net")).map(|m| m.ino()).ok() != Some(netns.inode) {
            continue;
        }
        let gid = process_gid(&dir);
        let Ok(fds) = fs::read_dir(dir.join("fd")) else {
            continue; // the process exited
        };
        for fd in fds.flatten() {
            let Some(inode) = socket_inode(&fd.path()) else {
                continue;
            };
            let Some(socket) = sockets.iter().find(|s| s.inode == inode) else {
                continue;
            };
            if found.iter().any(|f| f.socket.family == socket.family) || !is_proxy(socket.uid, gid)
            {
                continue;
            }
            let Some(num) = fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            match sys::process::take_fd(pid, num) {
                Ok(fd) => found.push(FoundListener {
                    pid,
                    socket: *socket,
                    fd,
                }),
                Err(e) => tracing::warn!(pid, fd = num, error = %e, "cannot take the listener"),
            }
        }
    }
    Ok(found)
}

/// The inode of `socket:[N]`, the target of a `/proc/<pid>/fd/<n>` link to a socket.
fn socket_inode(link: &Path) -> Option<u64> {
    let target = fs::read_link(link).ok()?;
    let text = target.to_str()?;
    text.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The effective gid of a process (`Gid:` real, effective, saved, fs).
fn process_gid(dir: &Path) -> Option<u32> {
    let status = fs::read_to_string(dir.join("status")).ok()?;
    let ids = status.lines().find_map(|l| l.strip_prefix("Gid:"))?;
    ids.split_whitespace().nth(1)?.parse().ok()
}

/// Registers the capture listeners (one per address family) the proxy opened before the
/// programs were attached. Best effort: without it, inbound capture starts when the proxy next
/// listens.
pub fn register_existing_listener(writer: &mut Maps, netns: &Netns, plan: &MapPlan) {
    let pod = plan.pod;
    let found = find_existing(netns, pod.inbound_capture_port, |uid, gid| {
        pod.is_proxy_uid(uid) || gid.is_some_and(|g| pod.is_proxy_gid(g))
    });
    let found = match found {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(
                error = %format!("{e:#}"),
                "cannot look for an existing inbound listener"
            );
            return;
        }
    };
    if found.is_empty() {
        tracing::debug!(
            port = pod.inbound_capture_port,
            "no proxy listener yet: it registers when it listens"
        );
    }
    for l in found {
        let family = l.socket.family;
        match writer.register_listener(plan.netns_cookie, family, &l.fd) {
            Ok(true) => tracing::info!(
                pid = l.pid,
                uid = l.socket.uid,
                port = pod.inbound_capture_port,
                family = family.name(),
                "registered the proxy's existing inbound listener"
            ),
            Ok(false) => {} // the kernel registered one already
            Err(e) => tracing::warn!(
                pid = l.pid,
                family = family.name(),
                error = %format!("{e:#}"),
                "cannot register the proxy's existing inbound listener"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_socket_links() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        use std::os::fd::AsRawFd as _;
        let link = format!("/proc/self/fd/{}", listener.as_raw_fd());
        let inode = socket_inode(Path::new(&link)).expect("a socket link");
        assert!(inode > 0);
        assert_eq!(socket_inode(Path::new("/proc/self/exe")), None);
    }
}
