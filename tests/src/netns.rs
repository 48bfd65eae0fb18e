//! Network-namespace helpers: `ip` commands, entering a namespace on a thread, TCP listen checks.

use std::fs::{self, File};
use std::io::{self, Write};
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

/// Whether a socket listens on TCP `port` in the network namespace of process `pid`.
pub fn is_listening(pid: u32, port: u16) -> Result<bool> {
    for table in ["tcp", "tcp6"] {
        let path = format!("/proc/{pid}/net/{table}");
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            // tcp6 is absent when IPv6 is disabled.
            Err(e) if e.kind() == io::ErrorKind::NotFound && table == "tcp6" => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {path}")),
        };
        if text.lines().skip(1).any(|line| is_listen_entry(line, port)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One row of /proc/net/tcp: `sl local_address rem_address st ...`, ports in hex, LISTEN = 0A.
fn is_listen_entry(line: &str, port: u16) -> bool {
    let mut fields = line.split_whitespace().skip(1);
    let (Some(local), Some(_remote), Some(state)) = (fields.next(), fields.next(), fields.next())
    else {
        return false;
    };
    let local_port = local
        .rsplit_once(':')
        .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok());
    state == "0A" && local_port == Some(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_listen_rows() {
        let listen = "   0: 00000000:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 1";
        let established = "   1: 0100007F:3A99 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 2";
        assert!(is_listen_entry(listen, 15001));
        assert!(!is_listen_entry(listen, 15006));
        assert!(!is_listen_entry(established, 15001));
        assert!(!is_listen_entry("garbage", 15001));
    }

    #[test]
    fn sees_a_listener_of_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(is_listening(std::process::id(), port).unwrap());
        drop(listener);
        assert!(!is_listening(std::process::id(), port).unwrap());
    }
}
