//! Finds the capture listeners the proxy opened before `init` ran (the kernel registers later
//! ones itself, in `sockops`): each socket is listed in the namespace's `/proc/net/tcp` (IPv4)
//! or `/proc/net/tcp6` (IPv6, dual-stack `[::]` included), and a process of the namespace holds
//! it; `pidfd_getfd` gives the loader its own descriptor, which it then puts into the maps. So
//! the order in which the proxy and `init` start does not matter.

use std::{
    fs,
    os::{fd::OwnedFd, unix::fs::MetadataExt as _},
    path::Path,
};

use anyhow::Context as _;

use super::{maps::Maps, plan::MapPlan};
use crate::{family::Family, pod::Netns, sys};

/// The namespace's table of a family's TCP sockets.
fn tcp_table(family: Family) -> &'static str {
    match family {
        Family::V4 => "/proc/thread-self/net/tcp",
        Family::V6 => "/proc/thread-self/net/tcp6",
    }
}

/// A listening socket of the namespace, as `/proc/net/tcp` or `tcp6` shows it.
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

/// Listening sockets on `port` (any address) in a `/proc/net/tcp` or `tcp6` table.
pub fn parse_tcp_table(table: &str, family: Family, port: u16) -> Vec<ListeningSocket> {
    table
        .lines()
        .skip(1)
        .filter_map(|row| {
            // sl local_address rem_address st tx:rx tr:tm retrnsmt uid timeout inode ...
            let f: Vec<&str> = row.split_whitespace().collect();
            let (local, state) = (f.get(1)?, f.get(3)?);
            let local_port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
            (*state == "0A" && local_port == port).then_some(ListeningSocket {
                uid: f.get(7)?.parse().ok()?,
                inode: f.get(9)?.parse().ok()?,
                family,
            })
        })
        .collect()
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
            match fs::read_to_string(tcp_table(family)) {
                Ok(table) => sockets.extend(parse_tcp_table(&table, family, port)),
                // A kernel without IPv6 has no tcp6 table.
                Err(e) if family == Family::V6 && e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("reading the namespace's {}", tcp_table(family)));
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
    fn finds_listeners_on_the_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:3A9E 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:3A9E 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4243 1 0000000000000000 100 0 0 10 0
   2: 0200C80A:3A9E 0100C80A:D2F0 01 00000000:00000000 00:00000000 00000000  1337        0 4244 1 0000000000000000 20 4 30 10 -1
   3: 00000000:2378 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4245 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(
            parse_tcp_table(table, Family::V4, 15006),
            vec![
                ListeningSocket {
                    inode: 4242,
                    uid: 1337,
                    family: Family::V4,
                },
                ListeningSocket {
                    inode: 4243,
                    uid: 1000,
                    family: Family::V4,
                },
            ],
            "listening rows on 15006 only (not the established one, not port 9080)"
        );
        assert!(parse_tcp_table("header\ngarbage\n", Family::V4, 15006).is_empty());
    }

    #[test]
    fn finds_ipv6_listeners() {
        // [::]:15006 listening, [fd00:200::2]:15006 established.
        let table = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:3A9E 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 5252 1 0000000000000000 100 0 0 10 0
   1: 000000FD000000000000000002000000:3A9E 000000FD000000000000000001000000:C350 01 00000000:00000000 00:00000000 00000000  1337        0 5253 1 0000000000000000 20 4 30 10 -1
";
        assert_eq!(
            parse_tcp_table(table, Family::V6, 15006),
            vec![ListeningSocket {
                inode: 5252,
                uid: 1337,
                family: Family::V6,
            }]
        );
    }

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
