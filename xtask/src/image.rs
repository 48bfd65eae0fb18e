//! The container images, built offline: statically linked (musl) binaries, then
//! `deploy/Dockerfile.static` and `tests/images/Dockerfile` (`FROM scratch`) built with podman.
//!
//! - `cargo xtask image` builds `localhost/interceptor:<version>` (and, with `--test-peers`,
//!   the test peers' images) into the machine's podman store and prints their sizes.
//! - `cargo xtask test` builds the binaries and stages the build contexts only; the podman
//!   tests build the images into podman stores of their own (a few seconds), so that nothing
//!   of theirs is left in the machine's.
//!
//! Cargo caches the binaries under `target/x86_64-unknown-linux-musl/image/`; the contexts are
//! staged under `target/image-contexts/` on every run (copies of a few megabytes).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

/// The target the image's binaries are built for: statically linked, so `FROM scratch` works.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
/// The Cargo profile of the image's binaries (release, symbols stripped).
const PROFILE: &str = "image";
/// What goes into `localhost/interceptor`.
const INTERCEPTOR_BINS: [&str; 2] = ["interceptor", "interceptor-cni"];
/// What goes into the test peers' images.
const PEER_BINS: [&str; 3] = [
    "interceptor-sidecar",
    "interceptor-test-server",
    "interceptor-probe",
];
/// The test peers' images: (stage of tests/images/Dockerfile, image name).
pub const PEER_IMAGES: [(&str, &str); 3] = [
    ("sidecar", "interceptor-test-sidecar"),
    ("server", "interceptor-test-server"),
    ("app", "interceptor-test-app"),
];

/// The staged build contexts (`target/image-contexts/`): `interceptor/` and `test-peers/`.
pub struct Contexts {
    pub dir: PathBuf,
}

impl Contexts {
    pub fn interceptor(&self) -> PathBuf {
        self.dir.join("interceptor")
    }

    pub fn peers(&self) -> PathBuf {
        self.dir.join("test-peers")
    }
}

/// interceptor's version (the images' tag), from its Cargo.toml.
pub fn version(root: &Path) -> anyhow::Result<String> {
    let manifest = root.join("interceptor/Cargo.toml");
    let text =
        fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    text.lines()
        .find_map(|l| {
            let v = l.strip_prefix("version")?.trim_start().strip_prefix('=')?;
            Some(v.trim().trim_matches('"').to_string())
        })
        .with_context(|| format!("no version in {}", manifest.display()))
}

/// Builds the static binaries with `cargo` (the workspace's, bpf-linker on PATH) and stages
/// the build contexts; says how long it took.
pub fn build_contexts(root: &Path, mut cargo: Command) -> anyhow::Result<Contexts> {
    let started = Instant::now();
    cargo.args(["build", "--profile", PROFILE, "--target", MUSL_TARGET]);
    for package in ["interceptor", "interceptor-tests"] {
        cargo.args(["-p", package]);
    }
    for bin in INTERCEPTOR_BINS.iter().chain(&PEER_BINS) {
        cargo.args(["--bin", bin]);
    }
    crate::run(&mut cargo)?;
    let bins = root.join("target").join(MUSL_TARGET).join(PROFILE);
    let contexts = Contexts {
        dir: root.join("target/image-contexts"),
    };
    stage(&bins, &contexts.interceptor(), &INTERCEPTOR_BINS)?;
    // What a base image would bring: /run, and /var/run -> /run (runtimes mount the pods'
    // network namespaces under either).
    let rootfs = contexts.interceptor().join("rootfs");
    fs::create_dir_all(rootfs.join("run"))?;
    fs::create_dir_all(rootfs.join("var"))?;
    std::os::unix::fs::symlink("../run", rootfs.join("var/run"))
        .context("staging /var/run -> /run")?;
    stage(&bins, &contexts.peers(), &PEER_BINS)?;
    eprintln!(
        "xtask: static binaries and image contexts in {:.0?} ({})",
        started.elapsed(),
        contexts.dir.display()
    );
    Ok(contexts)
}

/// A fresh `dir` holding copies of `names` from `bins`.
fn stage(bins: &Path, dir: &Path, names: &[&str]) -> anyhow::Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for name in names {
        fs::copy(bins.join(name), dir.join(name))
            .with_context(|| format!("staging {name} into {}", dir.display()))?;
    }
    Ok(())
}

/// `cargo xtask image`: the images in the machine's podman store, with their sizes.
pub fn build_images(root: &Path, contexts: &Contexts, peers: bool) -> anyhow::Result<()> {
    let version = version(root)?;
    // Building needs no network, but podman takes a lock in its network configuration
    // directory on every start (and makes /etc/containers/networks or writes into
    // /etc/cni/net.d on the first): let it do that in target/ instead.
    let network_dir = root.join("target/podman/networks");
    fs::create_dir_all(&network_dir)?;
    let podman = || {
        let mut c = Command::new("podman");
        c.arg("--network-config-dir").arg(&network_dir);
        c
    };
    let mut built = vec![podman_build(
        &podman,
        &root.join("deploy/Dockerfile.static"),
        &contexts.interceptor(),
        None,
        &format!("localhost/interceptor:{version}"),
    )?];
    if peers {
        for (stage, name) in PEER_IMAGES {
            built.push(podman_build(
                &podman,
                &root.join("tests/images/Dockerfile"),
                &contexts.peers(),
                Some(stage),
                &format!("localhost/{name}:{version}"),
            )?);
        }
    }
    for (tag, size) in built {
        println!("{tag}  {:.1} MB", size as f64 / 1e6);
    }
    Ok(())
}

/// `podman build`; the tag and the image's size in bytes.
fn podman_build(
    podman: &dyn Fn() -> Command,
    file: &Path,
    context: &Path,
    stage: Option<&str>,
    tag: &str,
) -> anyhow::Result<(String, u64)> {
    let mut build = podman();
    build.args(["build", "--quiet", "--file"]).arg(file);
    if let Some(stage) = stage {
        build.args(["--target", stage]);
    }
    build.args(["--tag", tag]).arg(context);
    let out = build.output().context("starting podman build")?;
    if !out.status.success() {
        bail!(
            "podman build {tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = podman()
        .args(["image", "inspect", "--format", "{{.Size}}", tag])
        .output()
        .context("podman image inspect")?;
    if !out.status.success() {
        bail!(
            "podman image inspect {tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let size = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    Ok((tag.to_string(), size))
}
