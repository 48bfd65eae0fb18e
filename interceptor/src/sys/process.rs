//! Other processes: a duplicate of one of their descriptors; and this one's capabilities.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// Owns a descriptor a system call has just returned, or its error.
fn new_fd(rc: libc::c_long) -> io::Result<OwnedFd> {
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

/// `pidfd_open` + `pidfd_getfd`: a duplicate of another process's file descriptor (needs
/// ptrace rights over it, which root has).
pub fn take_fd(pid: u32, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain arguments.
    let pidfd = new_fd(unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) })?;
    // SAFETY: plain arguments; `pidfd` is open for the call.
    new_fd(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) })
}

/// `CAP_SYS_ADMIN` and `CAP_PERFMON` (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;

/// Whether this process may load programs the verifier keeps from CAP_BPF alone (reads of stack
/// bytes it cannot prove written, pointers moved by variable offsets): CAP_PERFMON or
/// CAP_SYS_ADMIN in its effective set (`CapEff` in `/proc/self/status`).
pub fn may_load_privileged_programs() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    [CAP_SYS_ADMIN, CAP_PERFMON]
        .iter()
        .any(|cap| effective & (1 << cap) != 0)
}
