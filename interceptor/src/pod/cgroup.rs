//! The pod's cgroup: where the programs attach. Only cgroup v2 directories are accepted, and
//! never the root of the hierarchy.

use std::{
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};

use crate::{error::TargetError, sys};

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// A validated cgroup v2 directory, held open.
#[derive(Debug)]
pub struct Cgroup {
    pub path: PathBuf,
    /// The kernel's cgroup id (the directory's inode number on cgroup2).
    pub id: u64,
    pub dir: File,
}

/// Where cgroup2 is mounted, from /proc/self/mountinfo (hybrid hosts mount it at
/// /sys/fs/cgroup/unified, so it is never assumed).
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    parse_cgroup2_mount(&mountinfo).ok_or_else(|| anyhow!("no cgroup2 file system is mounted"))
}

fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let fstype = after.split_whitespace().next()?;
        let mount_point = before.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(sys::fs::unescape_mountinfo(mount_point)))
    })
}

/// The parent of the caller's own cgroup: the pod's cgroup when run as an init container.
pub fn default_pod_cgroup() -> anyhow::Result<PathBuf> {
    let mount = cgroup2_mount()?;
    let own = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| anyhow!("this process has no cgroup v2 membership"))?;
    let parent = Path::new(own)
        .parent()
        .filter(|p| *p != Path::new("/"))
        .ok_or_else(|| {
            anyhow!(
                "this process's cgroup {own} has no parent below the root: pass --cgroup \
                 (the pod's cgroup)"
            )
        })?;
    Ok(mount.join(parent.strip_prefix("/").unwrap_or(parent)))
}

impl Cgroup {
    /// Opens and validates `path` as a non-root cgroup v2 directory.
    pub fn open(path: &Path) -> Result<Self, TargetError> {
        let shown = path.display().to_string();
        let dir = File::open(path).map_err(|_| TargetError::CgroupMissing {
            path: shown.clone(),
        })?;
        let meta = dir.metadata().map_err(|_| TargetError::CgroupMissing {
            path: shown.clone(),
        })?;
        if !meta.is_dir() {
            return Err(TargetError::CgroupMissing { path: shown });
        }
        let mount = cgroup2_mount()
            .map(|m| m.display().to_string())
            .unwrap_or_else(|_| "nowhere".into());
        if sys::fs::fs_magic(&dir) != Some(CGROUP2_SUPER_MAGIC) {
            return Err(TargetError::NotCgroup2 { path: shown, mount });
        }
        let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        if canonical == Path::new(&mount) {
            return Err(TargetError::RootCgroup { path: shown });
        }
        Ok(Cgroup {
            path: canonical,
            id: meta.ino(),
            dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_a_hybrid_layout() {
        let mountinfo = "\
25 30 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 25 0:39 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";
        assert_eq!(
            parse_cgroup2_mount(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            parse_cgroup2_mount("1 2 0:1 / / rw - ext4 /dev/x rw\n"),
            None
        );
        assert_eq!(
            parse_cgroup2_mount("1 2 0:1 / /a\\040b rw - cgroup2 none rw\n"),
            Some(PathBuf::from("/a b"))
        );
    }
}
