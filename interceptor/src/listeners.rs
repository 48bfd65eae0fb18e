//! Finds a capture listener the proxy opened before `init` ran (the kernel registers later
//! ones itself, in `sockops`): its socket is listed in the namespace's `/proc/net/tcp`, and a
//! process of the namespace holds it; `pidfd_getfd` gives the loader its own descriptor, which
//! it then puts into the maps. So the order in which the proxy and `init` start does not matter.

use std::{
    fs,
    os::{fd::OwnedFd, unix::fs::MetadataExt as _},
    path::Path,
};

use anyhow::Context as _;

use crate::{netns::Netns, sys};

/// A listening socket of the namespace, as `/proc/net/tcp` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListeningSocket {
    pub inode: u64,
    /// The socket's owner.
    pub uid: u32,
}

/// A listener found in a process, with the loader's own descriptor for it.
#[derive(Debug)]
pub struct FoundListener {
    pub pid: u32,
    pub socket: ListeningSocket,
    pub fd: OwnedFd,
}

/// Listening sockets on `port` (any address) in a `/proc/net/tcp` table.
pub fn parse_tcp_table(table: &str, port: u16) -> Vec<ListeningSocket> {
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
            })
        })
        .collect()
}

/// The first listener on `port` in `netns` that `is_proxy(uid, gid)` accepts (the socket's
/// owner, and the holding process's gid), taken from the process that holds it.
pub fn find_existing(
    netns: &Netns,
    port: u16,
    is_proxy: impl Fn(u32, Option<u32>) -> bool,
) -> anyhow::Result<Option<FoundListener>> {
    let sockets = netns.run_inside(move || {
        let table = fs::read_to_string("/proc/thread-self/net/tcp")
            .context("reading the namespace's /proc/net/tcp")?;
        Ok(parse_tcp_table(&table, port))
    })?;
    if sockets.is_empty() {
        return Ok(None);
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
            if !is_proxy(socket.uid, gid) {
                continue;
            }
            let Some(num) = fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            match sys::take_fd(pid, num) {
                Ok(fd) => {
                    return Ok(Some(FoundListener {
                        pid,
                        socket: *socket,
                        fd,
                    }));
                }
                Err(e) => tracing::warn!(pid, fd = num, error = %e, "cannot take the listener"),
            }
        }
    }
    Ok(None)
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
            parse_tcp_table(table, 15006),
            vec![
                ListeningSocket {
                    inode: 4242,
                    uid: 1337
                },
                ListeningSocket {
                    inode: 4243,
                    uid: 1000
                },
            ],
            "listening rows on 15006 only (not the established one, not port 9080)"
        );
        assert!(parse_tcp_table("header\ngarbage\n", 15006).is_empty());
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
