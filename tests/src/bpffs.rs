//! A bpffs of a test's own, so that what the test pins (a datapath, its trace maps) is shared
//! with no other test: unmounted, with whatever is still pinned in it, and its mount point
//! removed on drop.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, Result};

static NEXT: AtomicU32 = AtomicU32::new(0);

#[derive(Debug)]
pub struct PrivateBpffs {
    path: PathBuf,
}

impl PrivateBpffs {
    /// Mounts a new bpffs at `/run/icpt-<tag>-<pid>-<n>-bpffs`. Needs root.
    pub fn new(tag: &str) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self::at(&PathBuf::from(format!(
            "/run/icpt-{tag}-{}-{n}-bpffs",
            std::process::id()
        )))
    }

    /// Mounts a new bpffs at `path`, a directory made here (it must not exist).
    pub fn at(path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        let target = CString::new(path.as_os_str().as_bytes())?;
        let fstype = c"bpf";
        // SAFETY: NUL-terminated strings that outlive the call; no data argument.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            let _ = std::fs::remove_dir(&path);
            return Err(e).with_context(|| format!("mounting bpffs at {}", path.display()));
        }
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as an argument (`--bpffs <it>`).
    pub fn arg(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        let Ok(target) = CString::new(self.path.as_os_str().as_bytes()) else {
            return;
        };
        // SAFETY: a NUL-terminated path that outlives the call.
        if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
            eprintln!(
                "unmounting {}: {}",
                self.path.display(),
                std::io::Error::last_os_error()
            );
            return;
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}
