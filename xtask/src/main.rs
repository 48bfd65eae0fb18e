//! `cargo xtask`: bootstrap a fresh machine, build, run the demo, run the tests, benchmark.

mod bench;
mod image;
mod previous;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need: nightly rust-src, bpf-linker, iproute2, iptables,
    /// dnsutils, dnsmasq-base, containernetworking-plugins, kubernetes-validate (PyPI), podman,
    /// runc and the musl target.
    Setup,
    /// Build every binary (kernel programs included).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Intercept real traffic in namespaces the demo creates, and show the path it took.
    Demo,
    /// Build the previous release (v0.1.0) from the repository's history for the upgrade
    /// test, once: kept in target/previous-v0.1.0/bin (`test` does this itself).
    Previous,
    /// Unit tests, then integration tests on the real kernel (needs root).
    Test {
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// cargo fmt --check and clippy on the host crates.
    Lint,
    /// Build the container image offline (static binaries, `deploy/Dockerfile.static`) into
    /// the machine's podman store as localhost/interceptor:<version>; installs podman and runc
    /// when missing.
    Image {
        /// Also the test peers' images (sidecar, server, application), to try the per-pod
        /// example by hand.
        #[arg(long)]
        test_peers: bool,
    },
    /// Compare interception modes (direct, explicit, iptables-legacy, iptables-nft, ebpf) on
    /// real traffic, outbound and inbound, and measure `init`, `pod add` and kernel memory at a
    /// node's scale; writes bench/results/<timestamp>/ (needs root; installs nginx and its
    /// stream module, wrk, iperf3, bpftool).
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Cmd::Setup => {
            setup::ensure_all()?;
            setup::ensure_podman()?;
            setup::ensure_kubernetes_validate(&root).map(|_| ())
        }
        Cmd::Image { test_peers } => {
            setup::ensure_all()?;
            setup::ensure_podman()?;
            let contexts = image::build_contexts(&root, cargo(&root))?;
            image::build_images(&root, &contexts, test_peers)
        }
        Cmd::Build { release } => {
            setup::ensure_all()?;
            build(&root, release)
        }
        Cmd::Demo => {
            setup::ensure_all()?;
            require_root("the demo")?;
            build(&root, false)?;
            let bin_dir = root.join("target/debug");
            // Ctrl-C reaches the demo too, which cleans up and exits; xtask waits for it.
            ignore_sigint();
            run(Command::new(bin_dir.join("interceptor-demo"))
                .env("INTERCEPTOR_BIN", bin_dir.join("interceptor"))
                .env("INTERCEPTOR_TEST_BIN_DIR", &bin_dir))
        }
        Cmd::Previous => {
            setup::ensure_all()?;
            let bin = previous::ensure(&root)?;
            println!("{}", bin.display());
            Ok(())
        }
        Cmd::Test { args } => {
            setup::ensure_all()?;
            setup::ensure_podman()?;
            setup::ensure_nginx_stream()?;
            let validator = setup::ensure_kubernetes_validate(&root)?;
            require_root("the integration tests")?;
            build(&root, false)?;
            // The podman tests build the images from these (static binaries, FROM scratch).
            let contexts = image::build_contexts(&root, cargo(&root))?;
            // The upgrade test starts from the previous release (built once, then cached).
            let previous = previous::ensure(&root)?;
            let bin_dir = root.join("target/debug");
            // The shared data model and decision table, on the host.
            run(cargo(&root).args(["test", "-p", "interceptor-ebpf", "--lib"]))?;
            // The bench harness's parsers and statistics (no traffic).
            run(cargo(&root).args(["test", "-p", "xtask"]))?;
            let mut cmd = cargo(&root);
            cmd.args([
                "test",
                "--no-fail-fast",
                "-p",
                "interceptor",
                "-p",
                "interceptor-tests",
            ])
            .env("INTERCEPTOR_BIN", bin_dir.join("interceptor"))
            .env("INTERCEPTOR_TEST_BIN_DIR", &bin_dir)
            .env("INTERCEPTOR_KUBERNETES_VALIDATE", &validator)
            .env("INTERCEPTOR_IMAGE_CONTEXTS", &contexts.dir)
            .env("INTERCEPTOR_PREVIOUS_BIN_DIR", &previous);
            if !args.is_empty() {
                cmd.arg("--").args(&args);
            }
            run(&mut cmd)
        }
        Cmd::Bench(args) => {
            let build_release = || {
                setup::ensure_all()?;
                setup::ensure_bench_tools()?;
                require_root("the benchmarks")?;
                run(cargo(&root).args([
                    "build",
                    "--release",
                    "-p",
                    "interceptor",
                    "-p",
                    "interceptor-tests",
                    "--bins",
                ]))
            };
            bench::run(&root, args, build_release)
        }
        Cmd::Lint => {
            setup::ensure_all()?;
            run(cargo(&root).args(["fmt", "--all", "--check"]))?;
            run(cargo(&root).args([
                "clippy",
                "-p",
                "interceptor",
                "-p",
                "interceptor-tests",
                "-p",
                "xtask",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))?;
            // The kernel crate: its library on the host, its programs as aya-build compiles them
            // (nightly, bpf target, core from source; the host build fails on the panic handler).
            let lib = "clippy -p interceptor-ebpf --lib --tests --features user -- -D warnings";
            run(cargo(&root).args(lib.split_whitespace()))?;
            let bin = "run nightly cargo clippy -p interceptor-ebpf --bin interceptor-ebpf \
                       --target bpfel-unknown-none -Z build-std=core -- -D warnings";
            run(Command::new("rustup")
                .current_dir(&root)
                .env_remove("RUSTC")
                .args(bin.split_whitespace()))
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `cargo` (the one running us) with bpf-linker's folder on PATH.
fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root).env("PATH", setup::path_with_tools());
    cmd
}

fn build(root: &Path, release: bool) -> anyhow::Result<()> {
    let mut cmd = cargo(root);
    cmd.args(["build", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{:?} failed ({status})", cmd.get_program());
    }
    Ok(())
}

fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: no arguments.
    if unsafe { libc_geteuid() } != 0 {
        bail!("{what} create network namespaces and cgroups and load BPF programs: run as root");
    }
    Ok(())
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
    #[link_name = "signal"]
    fn libc_signal(signum: i32, handler: usize) -> usize;
}

fn ignore_sigint() {
    const SIGINT: i32 = 2;
    const SIG_IGN: usize = 1;
    // SAFETY: installs the ignore disposition; no handler code runs.
    unsafe { libc_signal(SIGINT, SIG_IGN) };
}
