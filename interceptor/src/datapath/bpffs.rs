//! Where instances live: `<bpffs>/interceptor/<instance>/`, holding pinned links and maps.
//! bpffs is the only place that outlives both an init container and a daemon restart.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::sys;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The directory holding every instance under the bpffs root `root`.
pub fn interceptor_dir(root: &Path) -> PathBuf {
    root.join("interceptor")
}

/// An instance is named after the cgroup it is attached to: one instance per cgroup.
pub fn instance_name(cgroup_id: u64) -> String {
    format!("cgroup-{cgroup_id}")
}

/// The cgroup id an instance name stands for (`cgroup-<id>`).
pub fn parse_instance_name(name: &str) -> Option<u64> {
    name.strip_prefix("cgroup-")?.parse().ok()
}

/// Mounts bpffs at `root` if it is not mounted yet, and creates the interceptor directory.
pub fn ensure_ready(root: &Path) -> anyhow::Result<PathBuf> {
    if sys::fs::path_fs_magic(root) != Some(BPF_FS_MAGIC) {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        sys::fs::mount_bpffs(root)
            .with_context(|| format!("mounting bpffs at {}", root.display()))?;
        tracing::info!(path = %root.display(), "mounted bpffs");
    }
    let dir = interceptor_dir(root);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Whether `root` is a mounted bpffs (status and clean never mount one).
pub fn is_mounted(root: &Path) -> bool {
    sys::fs::path_fs_magic(root) == Some(BPF_FS_MAGIC)
}
