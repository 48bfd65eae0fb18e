//! The passwd and group databases, and whether we run as root.

use std::{ffi::CString, mem, ptr};

/// Looks a user up in the passwd database.
pub fn uid_of(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `passwd` is integers and pointers: all-zero is valid.
    let mut pwd: libc::passwd = unsafe { mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = ptr::null_mut();
    // SAFETY: a C string and buffers of the sizes passed, all outliving the call.
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
    // SAFETY: `group` is integers and pointers: all-zero is valid.
    let mut grp: libc::group = unsafe { mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    let mut result: *mut libc::group = ptr::null_mut();
    // SAFETY: a C string and buffers of the sizes passed, all outliving the call.
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

/// Whether the process runs with root's effective uid.
pub fn is_root() -> bool {
    // SAFETY: no arguments, no failure.
    unsafe { libc::geteuid() == 0 }
}

/// Fails with `why` (what needs root) unless the process runs as root.
pub fn require_root(why: &str) -> anyhow::Result<()> {
    anyhow::ensure!(is_root(), "interceptor must run as root: {why}");
    Ok(())
}
