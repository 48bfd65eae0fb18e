//! The pod's network namespace, held open: validated as one when opened, and entered on a
//! short-lived thread to read what only its inside shows (see `PodFacts::read`).

use std::{
    fs::File,
    os::{
        fd::AsRawFd as _,
        unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};

use crate::{error::TargetError, sys};

/// `libc::Ioctl`: the request argument is `unsigned long` in glibc, `int` in musl.
const NS_GET_NSTYPE: libc::Ioctl = 0xb703;

/// A network namespace, held open.
#[derive(Debug)]
pub struct Netns {
    pub path: PathBuf,
    /// nsfs inode number: names the namespace in `ip netns identify`-style listings.
    pub inode: u64,
    pub file: File,
}

impl Netns {
    /// Opens `path` and checks that it is a network namespace. Never blocks: a FIFO or a
    /// device named by mistake (or by malice) is refused, not waited on.
    pub fn open(path: &Path) -> Result<Self, TargetError> {
        let err = |reason: String| TargetError::Netns {
            path: path.display().to_string(),
            reason,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| err(e.to_string()))?;
        // SAFETY: ioctl on an fd we own; NS_GET_NSTYPE takes no argument.
        let nstype = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
        if nstype != libc::CLONE_NEWNET {
            return Err(err("not a network namespace file".into()));
        }
        let inode = file.metadata().map_err(|e| err(e.to_string()))?.ino();
        Ok(Netns {
            path: path.to_path_buf(),
            inode,
            file,
        })
    }

    /// Runs `f` on a short-lived thread inside the namespace (setns affects that thread only),
    /// or right here when the caller is already in it.
    pub fn run_inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        // Already there (the default --netns, an init container in its own pod): no setns,
        // which would need CAP_SYS_ADMIN for nothing.
        let here = std::fs::metadata("/proc/thread-self/ns/net").ok();
        let target = self.file.metadata().ok();
        if let (Some(h), Some(t)) = (here, target)
            && (h.dev(), h.ino()) == (t.dev(), t.ino())
        {
            return f();
        }
        let fd = self.file.try_clone().context("duplicating the netns fd")?;
        let path = self.path.clone();
        std::thread::spawn(move || -> anyhow::Result<T> {
            sys::net::setns_net(&fd).with_context(|| format!("entering {}", path.display()))?;
            f()
        })
        .join()
        .map_err(|_| anyhow!("the namespace thread panicked"))?
    }

    /// The namespace's cookie (what the programs key the pod by), read from inside it.
    pub fn cookie(&self) -> anyhow::Result<u64> {
        self.run_inside(|| {
            sys::net::current_netns_cookie()
                .context("reading the namespace cookie (SO_NETNS_COOKIE needs Linux 5.14)")
        })
    }
}
