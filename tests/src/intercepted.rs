//! A [`Topology`] with `interceptor init` applied to its pod, removed again on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};

use crate::{Side, Topology, bin_path};

/// Where `init` pins its instances.
pub const BPFFS: &str = "/sys/fs/bpf";

/// The `interceptor` binary: `$INTERCEPTOR_BIN`, else the workspace's build.
pub fn interceptor_bin() -> Result<PathBuf> {
    match std::env::var_os("INTERCEPTOR_BIN") {
        Some(path) => Ok(PathBuf::from(path)),
        None => bin_path("interceptor"),
    }
}

/// Runs `interceptor <args>` to completion.
pub fn interceptor(args: &[&str]) -> Result<Output> {
    Command::new(interceptor_bin()?)
        .args(args)
        .output()
        .context("running interceptor")
}

/// The instance directory `init` makes for a cgroup.
pub fn instance_dir(cgroup: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let id = std::fs::metadata(cgroup)
        .with_context(|| format!("{}", cgroup.display()))?
        .ino();
    Ok(Path::new(BPFFS).join(format!("interceptor/cgroup-{id}")))
}

/// A pod with interception attached (by [`Intercepted::init`]); `clean` runs on drop, also
/// when the test fails, before the topology goes.
#[derive(Debug)]
pub struct Intercepted {
    pub topo: Topology,
}

impl Intercepted {
    /// A new topology tagged `tag`, with `init <flags>` applied.
    pub fn new(tag: &str, flags: &[&str]) -> Result<Self> {
        let me = Self::without_init(Topology::new(tag)?);
        me.init(flags)?;
        Ok(me)
    }

    /// Takes `topo` over (to be cleaned on drop) without running `init` yet.
    pub fn without_init(topo: Topology) -> Self {
        Self { topo }
    }

    /// `--cgroup <pod> --netns <pod>`.
    pub fn target_args(&self) -> Vec<String> {
        vec![
            "--cgroup".into(),
            self.topo.pod_cgroup.display().to_string(),
            "--netns".into(),
            self.topo.netns_path(Side::Pod).display().to_string(),
        ]
    }

    /// Runs `interceptor init <target> <flags>`, whatever its outcome.
    pub fn try_init(&self, flags: &[&str]) -> Result<Output> {
        let mut args: Vec<String> = vec!["init".into()];
        args.extend(self.target_args());
        args.extend(flags.iter().map(|s| s.to_string()));
        interceptor(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Runs `interceptor init <target> <flags>`, which must succeed.
    pub fn init(&self, flags: &[&str]) -> Result<()> {
        let out = self.try_init(flags)?;
        ensure!(
            out.status.success(),
            "interceptor init {flags:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    pub fn clean(&self) -> Result<Output> {
        let mut args: Vec<String> = vec!["clean".into()];
        args.extend(self.target_args());
        interceptor(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// This instance as `interceptor status --json` shows it.
    pub fn status(&self) -> Result<serde_json::Value> {
        let out = interceptor(&["status", "--json"])?;
        ensure!(out.status.success(), "status failed");
        let all: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let dir = instance_dir(&self.topo.pod_cgroup)?;
        let name = dir.file_name().context("instance name")?.to_string_lossy();
        all.as_array()
            .context("status is a list")?
            .iter()
            .find(|i| i["instance"] == *name)
            .cloned()
            .context("instance listed by status")
    }

    /// This instance's counters (of its one pod).
    pub fn counters(&self) -> Result<serde_json::Value> {
        Ok(self.status()?["pods"][0]["counters"].clone())
    }
}

impl Drop for Intercepted {
    fn drop(&mut self) {
        match self.clean() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("clean failed: {}", String::from_utf8_lossy(&out.stderr)),
            Err(e) => eprintln!("clean failed: {e:#}"),
        }
    }
}
