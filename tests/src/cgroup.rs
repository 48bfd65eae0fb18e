//! cgroup v2 helpers: finding the mount, and removing a tree the fixture created.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The cgroup2 mount point of this mount namespace, read from `/proc/self/mountinfo`.
///
/// Hybrid hosts mount it at `/sys/fs/cgroup/unified`, pure v2 hosts at `/sys/fs/cgroup`: never assume.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    parse_cgroup2_mount(&mountinfo).context("no cgroup2 file system is mounted")
}

/// Finds the first cgroup2 mount in mountinfo text (see proc(5) for the line format).
fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // Optional fields make the column count vary; " - " separates them from the fs type.
        let (mount_fields, fs_fields) = line.split_once(" - ")?;
        if fs_fields.split(' ').next()? != "cgroup2" {
            return None;
        }
        mount_fields.split(' ').nth(4).map(unescape_octal)
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes.get(i + 1..i + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], escaped) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// A cgroup subtree a test made (under the cgroup2 mount), removed with everything in it on
/// drop.
#[derive(Debug)]
pub struct OwnedCgroup {
    pub path: PathBuf,
}

impl OwnedCgroup {
    /// Creates `<cgroup2 mount>/<name>/<children...>` (all of it is removed on drop).
    pub fn new(name: &str, children: &[&str]) -> Result<Self> {
        let path = cgroup2_mount()?.join(name);
        let me = Self { path };
        fs::create_dir(&me.path).with_context(|| format!("creating {}", me.path.display()))?;
        let leaf = children.iter().fold(me.path.clone(), |d, c| d.join(c));
        fs::create_dir_all(&leaf).with_context(|| format!("creating {}", leaf.display()))?;
        Ok(me)
    }
}

impl Drop for OwnedCgroup {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.path, Duration::from_secs(5)) {
            eprintln!("{e:#}");
        }
    }
}

/// Kills every process in the cgroup subtree at `root`, then removes the subtree, children first.
///
/// Only call this on a tree this crate created. rmdir fails with EBUSY until the killed processes
/// have left, so it is retried until `timeout`.
pub(crate) fn remove_tree(root: &Path, timeout: Duration) -> Result<()> {
    if !root.exists() {
        return Ok(());
    }
    kill_all(root);
    let mut dirs = Vec::new();
    collect_post_order(root, &mut dirs)?;
    let deadline = Instant::now() + timeout;
    for dir in &dirs {
        loop {
            match fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    // A process may have been forked into it after cgroup.kill: kill again.
                    kill_all(dir);
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => bail!("removing cgroup {}: {e}", dir.display()),
            }
        }
    }
    Ok(())
}

/// `cgroup.kill` (Linux 5.14+) kills a whole subtree; fall back to signalling each listed pid.
fn kill_all(root: &Path) {
    if fs::write(root.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    let mut dirs = Vec::new();
    if collect_post_order(root, &mut dirs).is_err() {
        return;
    }
    for dir in dirs {
        let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) else {
            continue;
        };
        for pid in procs
            .lines()
            .filter_map(|l| l.trim().parse::<libc::pid_t>().ok())
        {
            // SAFETY: plain syscall; the pid was listed in a cgroup this crate created.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn collect_post_order(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            collect_post_order(&entry.path(), out)?;
        }
    }
    out.push(dir.to_path_buf());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_among_other_mounts() {
        let info = "\
25 1 0:23 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 31 0:37 / /sys/fs/cgroup/memory rw,nosuid shared:15 - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            parse_cgroup2_mount(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            parse_cgroup2_mount("25 1 0:23 / / rw - ext4 /dev/vda rw"),
            None
        );
    }

    #[test]
    fn unescapes_mount_points() {
        assert_eq!(unescape_octal(r"/mnt/a\040b"), PathBuf::from("/mnt/a b"));
        assert_eq!(unescape_octal(r"/x\"), PathBuf::from(r"/x\"));
    }
}
