//! The previous release, built from the repository's own history for the upgrade test: the
//! tagged commit's tree (`git archive`, so nothing is added to the repository's worktrees)
//! built with its own lock file and target directory, once; its binaries are kept under
//! `target/previous-<tag>/bin`, stamped with the commit they were built from, and reused until
//! the tag moves.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// The release the upgrade test starts from.
pub const TAG: &str = "v0.1.0";
/// The commit it tags: found by id where a checkout has the history but not the tags.
const TAGGED: &str = "d2f39a3d79045c7cbca7758b66c72ee59add0b18";
/// Its binary the test runs (`init`, `daemon`, `pod`).
const BINARIES: [&str; 1] = ["interceptor"];

/// The directory holding the previous release's binaries, built first if they are missing or
/// were built from another commit.
pub fn ensure(root: &Path) -> anyhow::Result<PathBuf> {
    let dir = root.join("target").join(format!("previous-{TAG}"));
    let bin = dir.join("bin");
    let commit = tagged_commit(root)?;
    let stamp = dir.join("commit");
    let built = std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == commit)
        && BINARIES.iter().all(|b| bin.join(b).is_file());
    if built {
        return Ok(bin);
    }
    eprintln!("xtask: building {TAG} ({commit}) for the upgrade test, once (kept in {dir:?})");
    let src = dir.join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
    // The tagged tree, extracted.
    let mut archive = Command::new("git")
        .current_dir(root)
        .args(["archive", "--format=tar", &commit])
        .stdout(Stdio::piped())
        .spawn()
        .context("running git archive")?;
    let tar = Command::new("tar")
        .current_dir(&src)
        .arg("-x")
        .stdin(archive.stdout.take().context("git archive's output")?)
        .status()
        .context("running tar")?;
    if !archive.wait()?.success() || !tar.success() {
        bail!("extracting {TAG} into {}", src.display());
    }
    // Its own lock file and target directory; no debug information (the test only runs it),
    // which saves link time.
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&src)
        .env("PATH", crate::setup::path_with_tools())
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .env_remove("RUSTC")
        .args([
            "build",
            "--locked",
            "--bins",
            "-p",
            "interceptor",
            "--target-dir",
        ])
        .arg(dir.join("target"))
        .status()
        .context("building the previous release")?;
    if !status.success() {
        bail!("building {TAG} failed ({status})");
    }
    std::fs::create_dir_all(&bin)?;
    for b in BINARIES {
        let from = dir.join("target/debug").join(b);
        std::fs::copy(&from, bin.join(b)).with_context(|| format!("copying {}", from.display()))?;
    }
    std::fs::write(&stamp, &commit)?;
    // The sources and intermediate files are not needed any more: 1-2 GB back.
    let _ = std::fs::remove_dir_all(&src);
    let _ = std::fs::remove_dir_all(dir.join("target"));
    Ok(bin)
}

/// The tagged commit: by the tag, else by its id (a checkout without tags), else fetched from
/// `origin` (a shallow checkout).
fn tagged_commit(root: &Path) -> anyhow::Result<String> {
    let find = || {
        git(
            root,
            &["rev-parse", "--verify", &format!("{TAG}^{{commit}}")],
        )
        .or_else(|_| {
            git(
                root,
                &["rev-parse", "--verify", &format!("{TAGGED}^{{commit}}")],
            )
        })
    };
    if let Ok(commit) = find() {
        return Ok(commit);
    }
    eprintln!("xtask: {TAG} is not in this checkout: fetching it from origin");
    let _ = git(root, &["fetch", "--quiet", "origin", "tag", TAG]);
    let _ = git(root, &["fetch", "--quiet", "origin", TAGGED]);
    find().with_context(|| {
        format!(
            "the upgrade test builds {TAG} ({TAGGED}) from the repository's history, which this \
             checkout lacks and origin did not give: fetch it (git fetch --tags, or \
             git fetch --unshallow)"
        )
    })
}

fn git(root: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .current_dir(root)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!("git {args:?} failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
