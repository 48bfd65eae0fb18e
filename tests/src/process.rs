//! Placing a child process in a cgroup, a network namespace and an identity, and owning it.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The user and group a spawned process runs as (supplementary groups are always cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

impl Identity {
    pub const ROOT: Self = Self::new(0, 0);
    /// Istio's proxy user and group (`istio-iptables -u 1337 -g 1337`).
    pub const PROXY: Self = Self::new(1337, 1337);
    /// An ordinary application user.
    pub const APP: Self = Self::new(1000, 1000);

    pub const fn new(uid: u32, gid: u32) -> Self {
        Self { uid, gid }
    }
}

/// Makes `cmd` join `cgroup` (if any), then the network namespace at `netns_path`, then drop to
/// `identity`, in the child between fork and exec.
///
/// Not `ip netns exec`: it remounts /sys in a new mount namespace, hiding the host's cgroup and
/// bpf mounts from the program under test. Not `CommandExt::uid/gid` either: std applies those
/// before `pre_exec` hooks, and an unprivileged process may not write `cgroup.procs`.
pub(crate) fn place_command(
    cmd: &mut Command,
    cgroup: Option<&Path>,
    netns_path: &Path,
    identity: Identity,
) -> Result<()> {
    // Opened here because the child may only make async-signal-safe calls (no allocation).
    let netns: OwnedFd = File::open(netns_path)
        .with_context(|| format!("opening {}", netns_path.display()))?
        .into();
    let procs: Option<OwnedFd> = cgroup
        .map(|dir| {
            let path = dir.join("cgroup.procs");
            OpenOptions::new()
                .write(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))
        })
        .transpose()?
        .map(Into::into);
    let Identity { uid, gid } = identity;
    let hook = move || {
        if let Some(procs) = &procs {
            write_own_pid(procs.as_raw_fd())?;
        }
        // No allocation after fork: plain syscalls only.
        // SAFETY: setns only reads the descriptor and changes this (the child's) thread.
        check(unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) })?;
        // SAFETY: an empty group list; the null pointer is not read.
        check(unsafe { libc::setgroups(0, std::ptr::null()) })?;
        // SAFETY: plain ids.
        check(unsafe { libc::setresgid(gid, gid, gid) })?;
        // SAFETY: plain ids.
        check(unsafe { libc::setresuid(uid, uid, uid) })?;
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe syscalls and formats into a stack buffer.
    unsafe { cmd.pre_exec(hook) };
    Ok(())
}

/// Makes `cmd` join `cgroup` between fork and exec, and with `own_namespace` then unshare a
/// cgroup namespace rooted there, as a container runtime does on cgroup v2 hosts: the child's
/// `/proc/self/cgroup` reads `0::/`, and mounts of the hierarchy show their roots relative to
/// it (`/../..`).
pub fn in_cgroup(cmd: &mut Command, cgroup: &Path, own_namespace: bool) -> Result<()> {
    let path = cgroup.join("cgroup.procs");
    let procs: OwnedFd = OpenOptions::new()
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?
        .into();
    let hook = move || {
        write_own_pid(procs.as_raw_fd())?;
        if own_namespace {
            // SAFETY: a flag-only syscall that changes this (the child's) process.
            check(unsafe { libc::unshare(libc::CLONE_NEWCGROUP) })?;
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe syscalls and formats into a stack buffer.
    unsafe { cmd.pre_exec(hook) };
    Ok(())
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Writes the calling process's pid in decimal to `fd` without allocating.
fn write_own_pid(fd: RawFd) -> io::Result<()> {
    // SAFETY: getpid cannot fail.
    let mut pid = unsafe { libc::getpid() } as u32;
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (pid % 10) as u8;
        pid /= 10;
        if pid == 0 {
            break;
        }
    }
    let text = &digits[start..];
    // SAFETY: writes from a live stack buffer of the given length.
    let written = unsafe { libc::write(fd, text.as_ptr().cast(), text.len()) };
    if written == text.len() as isize {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Pids of children that are spawned and not yet reaped, so that a fixture can kill them on drop.
///
/// Only unreaped pids are listed (a zombie's pid is not reused), so killing them is always safe.
pub(crate) type Registry = Arc<Mutex<HashSet<u32>>>;

fn lock(registry: &Registry) -> MutexGuard<'_, HashSet<u32>> {
    registry
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn kill_registered(registry: &Registry) {
    for &pid in lock(registry).iter() {
        // SAFETY: plain syscall on a child that has not been reaped.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// What a process left when it exited.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// All of stdout not already taken with [`Process::next_stdout_line`] (empty unless piped).
    pub stdout: String,
    /// All of stderr (empty unless piped).
    pub stderr: String,
}

/// A spawned child that is killed and reaped when dropped.
///
/// Piped stdout and stderr are drained by background threads, so a chatty child never blocks
/// on a full pipe.
#[derive(Debug)]
pub struct Process {
    child: Child,
    label: String,
    registry: Option<Registry>,
    stdout: Option<Receiver<String>>,
    stderr: Option<Receiver<String>>,
    status: Option<ExitStatus>,
}

impl Process {
    /// Spawns `cmd`, registering the child in `registry` (if any) until it is reaped.
    pub(crate) fn spawn(cmd: &mut Command, registry: Option<Registry>) -> Result<Self> {
        let label = cmd.get_program().to_string_lossy().into_owned();
        // Hold the lock across spawn so that a concurrent fixture drop sees the pid.
        let mut child = {
            let guard = registry.as_ref().map(lock);
            let child = cmd.spawn().with_context(|| format!("spawning {label}"))?;
            if let Some(mut pids) = guard {
                pids.insert(child.id());
            }
            child
        };
        let stdout = child.stdout.take().map(drain_lines);
        let stderr = child.stderr.take().map(drain_lines);
        Ok(Self {
            child,
            label,
            registry,
            stdout,
            stderr,
            status: None,
        })
    }

    /// Spawns `cmd` outside any topology (e.g. a command of the benchmark harness); it is killed
    /// when the handle is dropped.
    pub fn spawn_unowned(cmd: &mut Command) -> Result<Self> {
        Self::spawn(cmd, None)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's stdin, if it was piped (dropping it sends EOF).
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// The next line (without its newline) the process wrote to its piped stdout, waiting at
    /// most `timeout`; `None` on timeout, at end of output, or if stdout is not piped.
    pub fn next_stdout_line(&self, timeout: Duration) -> Option<String> {
        let line = self.stdout.as_ref()?.recv_timeout(timeout).ok()?;
        Some(line.trim_end_matches('\n').to_owned())
    }

    /// The exit status if the process has exited (reaping it), else `None`.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            // Reap under the registry lock, so a fixture never signals a reused pid.
            let guard = self.registry.as_ref().map(lock);
            self.status = self.child.try_wait()?;
            if let (Some(_), Some(mut pids)) = (self.status, guard) {
                pids.remove(&self.child.id());
            }
        }
        Ok(self.status)
    }

    /// Waits until the process listens on exactly `addr` (e.g. `0.0.0.0:15001`) in its network
    /// namespace; fails early if it exits.
    pub fn wait_listening(&mut self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                bail!(
                    "{} exited ({status}) before listening on {addr}",
                    self.label
                );
            }
            if crate::netns::is_listening(self.pid(), addr)? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{} not listening on {addr} after {timeout:?}", self.label);
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits at most `timeout` for the process to exit and collects its piped output.
    /// On timeout the process is killed and an error returned.
    pub fn wait(&mut self, timeout: Duration) -> Result<Finished> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.try_status()? {
                break status;
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!("{} still running after {timeout:?}: killed", self.label);
            }
            thread::sleep(Duration::from_millis(2));
        };
        // The pipes close at exit unless a grandchild inherited them: bound that case too.
        let grace = deadline.max(Instant::now() + Duration::from_millis(500));
        Ok(Finished {
            status,
            stdout: collect(self.stdout.as_ref(), grace),
            stderr: collect(self.stderr.as_ref(), grace),
        })
    }

    /// Kills (SIGKILL) and reaps the process; does nothing if it has already been reaped.
    pub fn kill(&mut self) {
        if self.status.is_some() {
            return;
        }
        let guard = self.registry.as_ref().map(lock);
        let _ = self.child.kill();
        // SIGKILL cannot be caught, so this wait is short.
        self.status = self.child.wait().ok();
        if let Some(mut pids) = guard {
            pids.remove(&self.child.id());
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn drain_lines(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx
                        .send(String::from_utf8_lossy(&line).into_owned())
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    rx
}

fn collect(lines: Option<&Receiver<String>>, deadline: Instant) -> String {
    let mut text = String::new();
    let Some(lines) = lines else {
        return text;
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => text.push_str(&line),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return text,
        }
    }
}

/// Raises this process's soft limit of open files to its hard limit: a peer that holds
/// thousands of connections at once (a burst) needs a descriptor for each.
pub fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: fills a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: reads a live local.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_own_pid_in_decimal() {
        let mut fds = [0; 2];
        // SAFETY: pipe fills the two-element array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        write_own_pid(fds[1]).unwrap();
        use std::os::fd::FromRawFd;
        // SAFETY: just created by pipe, owned once, closed when dropped.
        let mut read_end = unsafe { File::from_raw_fd(fds[0]) };
        // SAFETY: as above.
        let _write_end = unsafe { File::from_raw_fd(fds[1]) };
        let mut buf = [0u8; 16];
        let n = read_end.read(&mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            std::process::id().to_string()
        );
    }
}
