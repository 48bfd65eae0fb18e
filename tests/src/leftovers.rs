//! What a test process that was killed outright (SIGKILL, a session ended under it) could not
//! remove: its fixtures' cgroups, network namespaces and bpffs mounts, all named
//! `<prefix>-<tag>-<pid>-<n>...`. The first fixture a test process makes removes those of
//! processes that are gone, so one hard kill never leaves anything for longer than the next run.
//!
//! Only what is certainly abandoned goes: the name is one of the fixtures' patterns, the pid in
//! it is no running process, it is older than [`MIN_AGE`] (a process of another pid namespace
//! would have been seen working on it), and nothing lives in it (no process in the cgroup or the
//! namespace).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, SystemTime};

/// Younger than this, a leftover may still be someone's fixture being made.
const MIN_AGE: Duration = Duration::from_secs(10 * 60);

/// Removes abandoned fixtures, once per test process.
pub fn sweep_once() {
    static SWEPT: Once = Once::new();
    SWEPT.call_once(|| {
        for line in sweep() {
            eprintln!("removed an abandoned test fixture: {line}");
        }
    });
}

/// The pid in a fixture name `<prefix>-<tag>-<pid>-<n>[-...]` with one of our prefixes: the
/// first number followed by another number.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = ["interceptor-test-", "icpt-bpffs-", "icpt-"]
        .iter()
        .find_map(|p| name.strip_prefix(p))?;
    let parts: Vec<&str> = rest.split('-').collect();
    parts.windows(2).find_map(|w| {
        let pid = w[0].parse::<u32>().ok()?;
        w[1].parse::<u32>().ok().map(|_| pid)
    })
}

fn abandoned(path: &Path, name: &str) -> bool {
    let Some(pid) = owner_pid(name) else {
        return false;
    };
    let old = fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age >= MIN_AGE);
    old && !Path::new(&format!("/proc/{pid}")).exists()
}

fn sweep() -> Vec<String> {
    let mut removed = Vec::new();
    // Cgroups (the test's tree, deepest first: rmdir fails while a process is inside).
    if let Ok(root) = crate::cgroup::cgroup2_mount() {
        for entry in fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("interceptor-test-") && abandoned(&entry.path(), &name) {
                let mut dirs = Vec::new();
                collect_dirs(&entry.path(), &mut dirs);
                if dirs.iter().rev().all(|d| fs::remove_dir(d).is_ok()) {
                    removed.push(entry.path().display().to_string());
                }
            }
        }
    }
    // Network namespaces nobody is in.
    let in_use = namespaces_in_use();
    for entry in fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ino = fs::metadata(entry.path()).map(|m| m.ino()).unwrap_or(0);
        if name.starts_with("icpt-") && abandoned(&entry.path(), &name) && !in_use.contains(&ino) {
            let ok = std::process::Command::new("ip")
                .args(["netns", "del", &name])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                removed.push(format!("netns {name}"));
            }
        }
    }
    // bpffs mounts of PrivateBpffs (what is pinned there goes with the mount).
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mounts.lines() {
        let Some((fields, fs_type)) = line.split_once(" - ") else {
            continue;
        };
        let Some(point) = fields.split(' ').nth(4).map(PathBuf::from) else {
            continue;
        };
        let name = point
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if fs_type.starts_with("bpf ")
            && name.starts_with("icpt-bpffs-")
            && abandoned(&point, &name)
            && crate::bpffs::unmount(&point).is_ok()
        {
            let _ = fs::remove_dir(&point);
            removed.push(format!("bpffs {}", point.display()));
        }
    }
    removed
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&entry.path(), out);
        }
    }
}

/// The inodes of every network namespace some process is in.
fn namespaces_in_use() -> BTreeSet<u64> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|p| fs::metadata(p.path().join("ns/net")).ok())
        .map(|m| m.ino())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn the_owner_is_read_from_every_fixture_name() {
        for (name, pid) in [
            ("interceptor-test-lim-node-7174-0", Some(7174)),
            ("icpt-lim-node-7174-0-p5", Some(7174)),
            ("icpt-bpffs-lim-node-7174-3", Some(7174)),
            ("interceptor-test-lim-10k-88-2", Some(88)),
            ("interceptor-bench-12-0", None),
            ("cni-1234", None),
        ] {
            assert_eq!(owner_pid(name), pid, "{name}");
        }
    }
}
