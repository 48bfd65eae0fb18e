//! Where the datapath lives on bpffs, the only place that outlives both an init container and a
//! daemon restart:
//!
//! ```text
//! <bpffs>/interceptor/
//!   datapath-<key>/                the node's maps for one map layout and size (shared by
//!                                  every pod enrolled with them, either way)
//!     <MAP>                        the maps, pinned by name
//!     prog-<build>-<log level>/    one build's verified programs, pinned by name
//!     node-<cgroup id>/            node mode: the cgroup links at the pods' parent cgroup
//!     pods/cgroup-<id>@<cookie>/   a pod enrolled by `init`: its cgroup links and sk_lookup link
//!     pods/netns@<cookie>/         a pod registered with the daemon: its sk_lookup link
//!   cgroup-<id>/                   an instance of version 0.1 (its own maps and links)
//! ```
//!
//! (bpffs refuses names with a dot, hence `@`.)

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::sys;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The directory holding everything of ours under the bpffs root `root`.
pub fn interceptor_dir(root: &Path) -> PathBuf {
    root.join("interceptor")
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

/// The directory of the datapath `key`.
pub fn datapath_dir(base: &Path, key: &str) -> PathBuf {
    base.join(format!("datapath-{key}"))
}

/// Every datapath directory under `base`.
pub fn datapath_dirs(base: &Path) -> Vec<PathBuf> {
    subdirs(base, |name| name.starts_with("datapath-"))
}

/// The directory of one build's programs, loaded with one kernel log level.
pub fn programs_dir(datapath: &Path, build: &str, log_level: u8) -> PathBuf {
    datapath.join(format!("prog-{build}-{log_level}"))
}

/// Every program directory of a datapath.
pub fn programs_dirs(datapath: &Path) -> Vec<PathBuf> {
    subdirs(datapath, |name| name.starts_with("prog-"))
}

/// Node mode's cgroup links.
pub fn node_dir(datapath: &Path, cgroup_id: u64) -> PathBuf {
    datapath.join(format!("node-{cgroup_id}"))
}

/// Every node directory of a datapath, with its cgroup id.
pub fn node_dirs(datapath: &Path) -> Vec<(u64, PathBuf)> {
    subdirs(datapath, |name| name.starts_with("node-"))
        .into_iter()
        .filter_map(|dir| {
            let id = dir
                .file_name()?
                .to_str()?
                .strip_prefix("node-")?
                .parse()
                .ok()?;
            Some((id, dir))
        })
        .collect()
}

/// The pods of a datapath.
pub fn pods_dir(datapath: &Path) -> PathBuf {
    datapath.join("pods")
}

/// How a pod was enrolled, as its directory's name says, with its netns cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PodDir {
    /// By `init`, in the cgroup with this id.
    Init { cgroup_id: u64, cookie: u64 },
    /// By the node daemon.
    Node { cookie: u64 },
}

impl PodDir {
    pub fn cookie(self) -> u64 {
        match self {
            PodDir::Init { cookie, .. } | PodDir::Node { cookie } => cookie,
        }
    }

    pub fn name(self) -> String {
        match self {
            PodDir::Init { cgroup_id, cookie } => format!("cgroup-{cgroup_id}@{cookie}"),
            PodDir::Node { cookie } => format!("netns@{cookie}"),
        }
    }

    pub fn parse(name: &str) -> Option<PodDir> {
        if let Some(cookie) = name.strip_prefix("netns@") {
            return Some(PodDir::Node {
                cookie: cookie.parse().ok()?,
            });
        }
        let (cgroup, cookie) = name.strip_prefix("cgroup-")?.split_once('@')?;
        Some(PodDir::Init {
            cgroup_id: cgroup.parse().ok()?,
            cookie: cookie.parse().ok()?,
        })
    }

    pub fn path(self, datapath: &Path) -> PathBuf {
        pods_dir(datapath).join(self.name())
    }
}

/// Every pod directory of a datapath.
pub fn pod_dirs(datapath: &Path) -> Vec<PodDir> {
    let mut pods: Vec<PodDir> = subdirs(&pods_dir(datapath), |_| true)
        .iter()
        .filter_map(|dir| PodDir::parse(dir.file_name()?.to_str()?))
        .collect();
    pods.sort();
    pods
}

/// A version 0.1 instance is named after the cgroup it is attached to.
pub fn legacy_instance_name(cgroup_id: u64) -> String {
    format!("cgroup-{cgroup_id}")
}

/// The cgroup id a version 0.1 instance name stands for (`cgroup-<id>`).
pub fn parse_legacy_instance_name(name: &str) -> Option<u64> {
    name.strip_prefix("cgroup-")?.parse().ok()
}

/// Every version 0.1 instance directory under `base`, with its cgroup id.
pub fn legacy_instance_dirs(base: &Path) -> Vec<(u64, PathBuf)> {
    subdirs(base, |name| parse_legacy_instance_name(name).is_some())
        .into_iter()
        .filter_map(|dir| {
            let id = parse_legacy_instance_name(dir.file_name()?.to_str()?)?;
            Some((id, dir))
        })
        .collect()
}

/// The subdirectories of `dir` whose names `keep` accepts, sorted; none if it does not exist.
fn subdirs(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| e.file_name().to_str().is_some_and(&keep))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_directory_names_round_trip() {
        for pod in [
            PodDir::Init {
                cgroup_id: 4242,
                cookie: 17,
            },
            PodDir::Node { cookie: 9 },
        ] {
            assert_eq!(PodDir::parse(&pod.name()), Some(pod));
        }
        assert_eq!(PodDir::parse("cgroup-1"), None);
        assert_eq!(PodDir::parse("netns@x"), None);
        assert_eq!(parse_legacy_instance_name("cgroup-42"), Some(42));
        assert_eq!(parse_legacy_instance_name("datapath-ab"), None);
    }
}
