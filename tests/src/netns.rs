//! Network-namespace helpers: `ip` commands, entering a namespace on a thread, TCP listen checks.

use std::fs::{self, File};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::process::Process;

/// `ip` never takes long; the bound only guards against a wedged system.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where `ip netns add <name>` puts the namespace.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Runs `ip <args>` (bounded), failing with its stderr.
pub(crate) fn ip(args: &[&str]) -> Result<()> {
    ip_with_input(args, None)
}

/// Runs `ip -n <netns> -batch -` with one command per line: one process for a whole setup.
pub(crate) fn ip_batch(netns: &str, commands: &[String]) -> Result<()> {
    ip_with_input(&["-n", netns, "-batch", "-"], Some(&commands.join("\n")))
}

fn ip_with_input(args: &[&str], input: Option<&str>) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut process = Process::spawn(&mut cmd, None)?;
    if let Some(input) = input {
        // Dropping stdin at the end of this block sends EOF.
        let mut stdin = process.take_stdin().context("ip stdin")?;
        stdin.write_all(input.as_bytes())?;
        stdin.write_all(b"\n")?;
    }
    let finished = process.wait(IP_TIMEOUT)?;
    if !finished.status.success() {
        bail!(
            "`ip {}` failed ({}): {}{}",
            args.join(" "),
            finished.status,
            finished.stderr.trim(),
            input.map(|i| format!("\ninput:\n{i}")).unwrap_or_default()
        );
    }
    Ok(())
}

/// Runs `f` on a new thread that has joined the network namespace at `netns_path`.
///
/// For in-process clients and checks only: the cgroup belongs to the whole process, so a thread
/// can never stand for a process "in the pod cgroup".
pub fn run_in_netns<T: Send>(netns_path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let netns =
        File::open(netns_path).with_context(|| format!("opening {}", netns_path.display()))?;
    thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: plain syscall; CLONE_NEWNET applies to the calling thread only.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error()).context("setns(CLONE_NEWNET)");
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in {} panicked", netns_path.display()))?
    })
}

/// Whether a socket listens on exactly `addr` (TCP) in the network namespace of process `pid`.
///
/// Reads `/proc/<pid>/net/tcp{,6}`, which show the namespace of that process.
pub fn is_listening(pid: u32, addr: SocketAddr) -> Result<bool> {
    let table = if addr.is_ipv4() { "tcp" } else { "tcp6" };
    let path = format!("/proc/{pid}/net/{table}");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(text
        .lines()
        .skip(1)
        .any(|row| listen_address(row) == Some(addr)))
}

/// The local address of a LISTEN row (`sl local_address rem_address st ...`, state 0A).
fn listen_address(row: &str) -> Option<SocketAddr> {
    let mut fields = row.split_whitespace().skip(1);
    let (local, _remote, state) = (fields.next()?, fields.next()?, fields.next()?);
    if state != "0A" {
        return None;
    }
    let (ip_hex, port_hex) = local.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    // The address is printed as native-endian 32-bit words of the network-order bytes.
    let mut bytes = Vec::with_capacity(16);
    for word in ip_hex.as_bytes().chunks(8) {
        let word = u32::from_str_radix(std::str::from_utf8(word).ok()?, 16).ok()?;
        bytes.extend(word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_rows() {
        let listen = "   0: 00000000:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 1";
        let loopback = "   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2";
        let established = "   2: 0100007F:3A99 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 3";
        let listen6 = "   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4";
        assert_eq!(
            listen_address(listen),
            Some("0.0.0.0:15001".parse().unwrap())
        );
        assert_eq!(
            listen_address(loopback),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(listen_address(established), None);
        assert_eq!(listen_address(listen6), Some("[::1]:80".parse().unwrap()));
        assert_eq!(listen_address("garbage"), None);
    }

    #[test]
    fn sees_a_listener_of_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(is_listening(std::process::id(), addr).unwrap());
        drop(listener);
        assert!(!is_listening(std::process::id(), addr).unwrap());
    }
}
