//! File systems: which one a path is on, mounting bpffs, directory locks, mountinfo's escapes.

use std::{
    ffi::{CStr, CString},
    fs::File,
    io, mem,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::Path,
};

/// The file system magic number of the file's file system.
pub fn fs_magic(file: &File) -> Option<i64> {
    // SAFETY: `statfs` is plain integers: all-zero is valid.
    let mut st: libc::statfs = unsafe { mem::zeroed() };
    // SAFETY: a valid fd and a valid out pointer.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    (rc == 0).then_some(st.f_type as i64)
}

/// The file system magic number at `path`.
pub fn path_fs_magic(path: &Path) -> Option<i64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: as in `fs_magic`.
    let mut st: libc::statfs = unsafe { mem::zeroed() };
    // SAFETY: a valid C string and a valid out pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    (rc == 0).then_some(st.f_type as i64)
}

/// Mounts a bpf file system at `path`, root-only.
pub fn mount_bpffs(path: &Path) -> io::Result<()> {
    let target = CString::new(path.as_os_str().as_encoded_bytes())?;
    let fstype: &CStr = c"bpf";
    // SAFETY: valid C strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A `flock` on a directory, released on drop: serialises loaders on one node.
pub struct DirLock {
    _file: File,
}

/// An exclusive lock (writers).
pub fn lock_dir(dir: &Path) -> io::Result<DirLock> {
    flock(dir, libc::LOCK_EX)
}

/// A shared lock (readers).
pub fn lock_dir_shared(dir: &Path) -> io::Result<DirLock> {
    flock(dir, libc::LOCK_SH)
}

/// An exclusive lock if nobody holds any lock on `dir` right now, else `None` (never waits).
pub fn try_lock_dir(dir: &Path) -> io::Result<Option<DirLock>> {
    let f = File::open(dir)?;
    // SAFETY: a valid fd.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(DirLock { _file: f }))
}

fn flock(dir: &Path, how: libc::c_int) -> io::Result<DirLock> {
    // `clean` removes the directory once it is empty; a loader that waited on the old one
    // locks the directory that is there now (recreated for writers).
    for _ in 0..5 {
        let f = File::open(dir)?;
        // SAFETY: a valid fd.
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
