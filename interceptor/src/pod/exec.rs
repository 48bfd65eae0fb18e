//! Runs a program (`iptables-restore`, `ip`) inside the pod's network namespace: the child
//! joins it (`setns` between fork and exec), so the caller's own namespace never changes.
//! Bounded in time.

use std::{
    io::{Read as _, Write as _},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use thiserror::Error;

use super::Netns;

/// Longer than the `--wait=30` the restores are given for the xtables lock.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Where iptables lives when PATH (e.g. a non-root user's) does not have it.
const SBIN_DIRS: [&str; 3] = ["/usr/sbin", "/sbin", "/usr/local/sbin"];

#[derive(Debug, Error)]
pub enum ExecError {
    #[error("{program} not found (in PATH or {}): install iptables 1.8 or later", SBIN_DIRS.join(", "))]
    NotFound { program: String },
    #[error("running {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} did not finish within {}s; killed", TIMEOUT.as_secs())]
    Timeout { program: String },
}

#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// The path of `program`: PATH first, then the sbin directories.
pub fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `program args` in `netns` with `stdin` as its input; returns whatever it exited with.
pub fn run(
    netns: &Netns,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<Output, ExecError> {
    let path = find(program).ok_or_else(|| ExecError::NotFound {
        program: program.to_string(),
    })?;
    let spawn_err = |source| ExecError::Spawn {
        program: program.to_string(),
        source,
    };
    let ns_fd = netns.file.as_raw_fd();
    let mut cmd = Command::new(&path);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the hook runs in the forked child before exec and makes one async-signal-safe
    // system call (setns); the fd stays open in the parent until the child has exec'd.
    unsafe { cmd.pre_exec(move || crate::sys::net::setns_net_raw(ns_fd)) };
    let mut child = cmd.spawn().map_err(spawn_err)?;

    // Pipes are drained on their own threads so that a large input or output cannot block.
    let writer = match (stdin, child.stdin.take()) {
        (Some(text), Some(mut pipe)) => {
            let text = text.to_string();
            Some(std::thread::spawn(move || {
                // A child that exits early closes the pipe: its exit status says why.
                let _ = pipe.write_all(text.as_bytes());
            }))
        }
        _ => None,
    };
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = read(child.stdout.take().map(|p| Box::new(p) as _));
    let err = read(child.stderr.take().map(|p| Box::new(p) as _));

    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(spawn_err)? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ExecError::Timeout {
                program: program.to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}
