//! A bpffs of the test's own, so that what it pins is apart from everything else on the
//! machine (other tests' pods, another engineer's): `--bpffs <path>` for `init`, `clean`,
//! `status` and the daemon. Unmounted on drop, which also drops whatever is still pinned in
//! it (a failing test leaves nothing behind).

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, Result, bail, ensure};

static NEXT: AtomicU32 = AtomicU32::new(0);

#[derive(Debug)]
pub struct PrivateBpffs {
    pub path: PathBuf,
    /// What the kernel puts in a new bpffs (its iterators' `maps.debug`, `progs.debug`).
    initial: Vec<PathBuf>,
}

impl PrivateBpffs {
    /// Mounts a new bpffs at `<tmp>/icpt-bpffs-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self::mount(
            &std::env::temp_dir().join(format!("icpt-bpffs-{tag}-{}-{n}", std::process::id())),
        )
    }

    /// Mounts a new bpffs at `path`, a directory it creates (and removes on drop).
    pub fn mount(path: &Path) -> Result<Self> {
        fs::create_dir(path).with_context(|| format!("creating {}", path.display()))?;
        let target = CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: NUL-terminated strings that outlive the call; no data argument.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            let _ = fs::remove_dir(path);
            bail!("mounting bpffs at {}: {e}", path.display());
        }
        let mut me = Self {
            path: path.to_path_buf(),
            initial: Vec::new(),
        };
        me.initial = me.pins();
        Ok(me)
    }

    /// `--bpffs=<path>`.
    pub fn arg(&self) -> String {
        format!("--bpffs={}", self.path.display())
    }

    /// `interceptor ARGS --bpffs=<path>`, to completion.
    pub fn interceptor(&self, args: &[&str]) -> Output {
        let arg = self.arg();
        let mut all = args.to_vec();
        all.push(&arg);
        crate::interceptor(&all)
    }

    /// `interceptor status --json` of this bpffs.
    pub fn status(&self) -> Result<serde_json::Value> {
        let out = self.interceptor(&["status", "--json"]);
        ensure!(
            out.status.success(),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Everything pinned (files and directories) under it but what a new bpffs holds,
    /// relative paths, sorted.
    pub fn pins(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.path, &self.path, &mut out);
        out.retain(|p| !self.initial.contains(p));
        out.sort();
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        out.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(root, &path, out);
        }
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        if let Err(e) = unmount(&self.path) {
            eprintln!("unmounting {}: {e}", self.path.display());
        }
        let _ = fs::remove_dir(&self.path);
    }
}

/// Detaches the mount at `path` (lazily: it goes once nothing uses it); for a bpffs, with
/// whatever is pinned there.
pub fn unmount(path: &Path) -> std::io::Result<()> {
    let target = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
