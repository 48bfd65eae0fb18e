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

/// A cgroup2 mount: the cgroup its root is (as `/proc/self/mountinfo` shows it, relative to
/// the caller's cgroup namespace) and where it is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cgroup2Mount {
    root: String,
    mount_point: PathBuf,
}

fn parse_cgroup2_mounts(mountinfo: &str) -> Vec<Cgroup2Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            (after.split_whitespace().next()? == "cgroup2").then_some(())?;
            let mut fields = before.split_whitespace();
            let root = fields.nth(3)?;
            let mount_point = fields.next()?;
            Some(Cgroup2Mount {
                root: sys::fs::unescape_mountinfo(root),
                mount_point: PathBuf::from(sys::fs::unescape_mountinfo(mount_point)),
            })
        })
        .collect()
}

/// The parent of the caller's own cgroup: the pod's cgroup when run as an init container.
///
/// Inside a container the caller's own cgroup directory is usually all that is mounted (or
/// nothing is), so the parent is looked for through every cgroup2 mount, the host's tree
/// mounted into the container included (`/host/sys/fs/cgroup` in `deploy/examples`):
/// - without a cgroup namespace (cgroup v1 or hybrid hosts; podman), `/proc/self/cgroup` names
///   the full path, which a mount of an ancestor reaches;
/// - in a cgroup namespace (containerd and CRI-O on cgroup v2), the caller's cgroup reads as
///   `/` and a mount of the host's tree shows its root as `/..` once per level above the
///   namespace: the caller's directory is the one that many levels down that lists the caller
///   in `cgroup.procs`.
pub fn default_pod_cgroup() -> anyhow::Result<PathBuf> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let own = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| anyhow!("this process has no cgroup v2 membership"))?;
    let pid = std::process::id();
    let mounts = parse_cgroup2_mounts(&mountinfo);
    if mounts.is_empty() {
        return Err(anyhow!("no cgroup2 file system is mounted"));
    }
    let parent = mounts
        .iter()
        .find_map(|m| own_dir_in(m, own, pid).and_then(|d| d.parent().map(Path::to_path_buf)))
        .ok_or_else(|| {
            anyhow!(
                "the parent of this process's cgroup ({own}) is in no mounted cgroup2 tree: \
                 mount the host's cgroup tree into the container or pass --cgroup (the pod's \
                 cgroup)"
            )
        })?;
    if is_hierarchy_root(&parent) {
        return Err(anyhow!(
            "this process's cgroup ({own}) is directly under the root of the hierarchy: pass \
             --cgroup (the pod's cgroup)"
        ));
    }
    Ok(parent)
}

/// The caller's own cgroup directory under `mount`, when `mount` reaches its parent: the
/// directory must list `pid` in `cgroup.procs`.
fn own_dir_in(mount: &Cgroup2Mount, own: &str, pid: u32) -> Option<PathBuf> {
    let own_rel: Vec<&str> = own.split('/').filter(|c| !c.is_empty()).collect();
    let root: Vec<&str> = mount.root.split('/').filter(|c| !c.is_empty()).collect();
    let above = root.iter().take_while(|c| **c == "..").count();
    let lists_pid = |dir: &Path| {
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .is_ok_and(|procs| procs.lines().any(|l| l.trim() == pid.to_string()))
    };
    if above == 0 {
        // The mount's root is an ancestor of the caller's cgroup, strictly (its parent must be
        // reachable too).
        let rest = own_rel.strip_prefix(root.as_slice())?;
        if rest.is_empty() {
            return None;
        }
        let dir = rest
            .iter()
            .fold(mount.mount_point.clone(), |d, c| d.join(c));
        return lists_pid(&dir).then_some(dir);
    }
    if above != root.len() {
        // A root beside the namespace's (`/../x`): not on the caller's path.
        return None;
    }
    // The namespace's root is `above` levels below the mount's root.
    let mut level = vec![mount.mount_point.clone()];
    for _ in 0..above {
        level = level
            .iter()
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
    }
    level
        .into_iter()
        .map(|ns_root| own_rel.iter().fold(ns_root, |d, c| d.join(c)))
        .find(|dir| lists_pid(dir))
}

/// The root of a cgroup2 hierarchy: cgroup id 1 (the directory's inode).
fn is_hierarchy_root(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.ino() == 1)
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
        // The first mount may be a container's own view; any hierarchy's root has id 1.
        if canonical == Path::new(&mount) || meta.ino() == 1 {
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

    #[test]
    fn reads_each_cgroup2_mounts_root() {
        let mountinfo = "\
126 115 0:57 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
127 126 0:38 /../../.. /sys/fs/cgroup/x rw - cgroup2 cgroup2 rw
146 136 0:38 / /host/sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            parse_cgroup2_mounts(mountinfo),
            vec![
                Cgroup2Mount {
                    root: "/../../..".into(),
                    mount_point: "/sys/fs/cgroup/x".into()
                },
                Cgroup2Mount {
                    root: "/".into(),
                    mount_point: "/host/sys/fs/cgroup/unified".into()
                },
            ]
        );
    }

    /// A fake cgroup tree under a temporary directory: `kubepods/burstable/pod-a/ctr-1` lists
    /// `pid`, a sibling pod's container another pid.
    fn fake_tree(tag: &str, pid: u32) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("interceptor-cgroup-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (dir, procs) in [
            ("kubepods/burstable/pod-a/ctr-1", pid.to_string()),
            ("kubepods/burstable/pod-b/ctr-2", "1\n2".to_string()),
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            std::fs::write(root.join(dir).join("cgroup.procs"), procs + "\n").unwrap();
        }
        root
    }

    #[test]
    fn finds_its_own_cgroup_with_or_without_a_cgroup_namespace() {
        let tree = fake_tree("own", 4242);
        let ctr = tree.join("kubepods/burstable/pod-a/ctr-1");
        let own = "/kubepods/burstable/pod-a/ctr-1";
        let mount = |root: &str, at: &Path| Cgroup2Mount {
            root: root.into(),
            mount_point: at.to_path_buf(),
        };
        // No namespace: the path from a mount of an ancestor, which must list the caller.
        assert_eq!(own_dir_in(&mount("/", &tree), own, 4242), Some(ctr.clone()));
        assert_eq!(own_dir_in(&mount("/", &tree), own, 4243), None);
        // A mount of the caller's own cgroup does not reach its parent.
        assert_eq!(own_dir_in(&mount(own, &ctr), own, 4242), None);
        // In a namespace rooted at ctr-1, four levels below the host mount's root: the
        // directory four levels down that lists the caller.
        let host = mount("/../../../..", &tree);
        assert_eq!(own_dir_in(&host, "/", 4242), Some(ctr));
        assert_eq!(own_dir_in(&host, "/", 7), None);
        // A root beside the namespace's own is not on the caller's path.
        assert_eq!(own_dir_in(&mount("/../other", &tree), "/", 4242), None);
        std::fs::remove_dir_all(tree).unwrap();
    }
}
