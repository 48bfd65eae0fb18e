//! Bootstrap of a fresh machine, idempotent and quick when everything is there:
//! - the nightly toolchain's `rust-src` (the kernel crate builds `core` itself);
//! - `bpf-linker`, built against the nightly rustc's own libLLVM (no LLVM package matches it),
//!   rebuilt when it no longer runs (a nightly update removes the library it links);
//! - `iproute2` (`ip`), which the demo and tests use to make namespaces and veth pairs;
//! - `iptables` (both `iptables-legacy` and `iptables-nft`), for the iptables backend and the
//!   differential tests; `dnsutils` (`dig`) and `dnsmasq-base`, a real resolver client and a
//!   real DNS server for the DNS-capture tests;
//! - `containernetworking-plugins` (Debian's CNI reference plugins `bridge` and `host-local`),
//!   which the daemon tests chain `interceptor-cni` after, as a runtime would;
//! - `kubernetes-validate` from PyPI in a virtualenv under `target/tools/`, which checks the
//!   manifests in `deploy/` against the Kubernetes schemas offline;
//! - for the images and the podman tests: `podman` and `runc` (Debian's; `crun` refuses
//!   hybrid cgroup hosts), and the stable toolchain's `x86_64-unknown-linux-musl` target (the
//!   images' statically linked binaries);
//! - `nginx` and its stream module (`libnginx-mod-stream`): the stock proxy of the
//!   acceleration tests, and the bench's inbound sidecar;
//! - for `cargo xtask bench` only: `wrk`, `iperf3`, `bpftool`.

use std::{
    ffi::OsString,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// bpf-linker release known to build against rustc's LLVM 22 here.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// What `cargo xtask bench` runs besides this workspace's binaries: the HTTP server (nginx),
/// the load generators (wrk, iperf3). The bench starts its own nginx with its own configuration
/// in namespaces it creates; Debian's package may also start the default site on the host when
/// it installs (`systemctl disable --now nginx` stops it; the bench does not need it).
pub fn ensure_bench_tools() -> anyhow::Result<()> {
    for (command, package) in crate::bench::TOOLS {
        ensure_command(command, package)?;
    }
    ensure_nginx_stream()
}

/// nginx with its stream module: the bench's inbound sidecar, and the stock proxy of the
/// acceleration tests.
pub fn ensure_nginx_stream() -> anyhow::Result<()> {
    ensure_command("nginx", "nginx")?;
    // Debian builds nginx's stream module as a module package of its own
    // (`--with-stream=dynamic`); nginx-full would pull it in too, with much else.
    let built = Command::new("nginx")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default();
    if built.contains("--with-stream=dynamic") {
        ensure_file(
            "/usr/lib/nginx/modules/ngx_stream_module.so",
            "libnginx-mod-stream",
        )?;
    }
    Ok(())
}

pub fn ensure_all() -> anyhow::Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_command("ip", "iproute2")?;
    ensure_command("iptables-legacy", "iptables")?;
    ensure_command("iptables-nft", "iptables")?;
    ensure_command("dig", "dnsutils")?;
    ensure_command("dnsmasq", "dnsmasq-base")?;
    ensure_file("/usr/lib/cni/bridge", "containernetworking-plugins")?;
    ensure_file("/usr/lib/cni/host-local", "containernetworking-plugins")?;
    Ok(())
}

/// What `cargo xtask image` and the podman tests need: podman with runc, and the musl target.
/// Debian's podman package ships a default network in the machine's /etc/cni/net.d, which
/// neither the tests nor `cargo xtask image` use: it is installed without it.
pub fn ensure_podman() -> anyhow::Result<()> {
    if !on_path("podman") {
        eprintln!("xtask: installing podman (without its default network in /etc/cni/net.d)");
        apt_install(
            "-o 'Dpkg::Options::=--path-exclude=/etc/cni/net.d/*' podman",
            "podman",
        )?;
    }
    ensure_command("runc", "runc")?;
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))
        .context("rustup target list failed")?;
    if installed
        .lines()
        .any(|l| l.trim() == crate::image::MUSL_TARGET)
    {
        return Ok(());
    }
    eprintln!(
        "xtask: adding the {} target (the images' static binaries)",
        crate::image::MUSL_TARGET
    );
    let ok = Command::new("rustup")
        .args(["target", "add", crate::image::MUSL_TARGET])
        .status()?
        .success();
    if !ok {
        bail!(
            "could not add the {t} target; run by hand: rustup target add {t}",
            t = crate::image::MUSL_TARGET
        );
    }
    Ok(())
}

/// kubernetes-validate release the manifest tests are written against.
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// The `kubernetes-validate` executable, installed into `<root>/target/tools/k8s-venv` with
/// pip when it is not there yet.
pub fn ensure_kubernetes_validate(root: &std::path::Path) -> anyhow::Result<PathBuf> {
    let venv = root.join("target/tools/k8s-venv");
    let exe = venv.join("bin/kubernetes-validate");
    if output(Command::new(&exe).arg("--version")).is_some() {
        return Ok(exe);
    }
    eprintln!(
        "xtask: installing kubernetes-validate {KUBERNETES_VALIDATE_VERSION} into {}",
        venv.display()
    );
    // pyenv installs python3 outside /usr/bin; fall back to Debian's (with python3-venv).
    let python = ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|p| output(Command::new(p).args(["-m", "venv", "--help"])).is_some());
    let python = match python {
        Some(p) => p,
        None => {
            ensure_package("python3-venv")?;
            "/usr/bin/python3"
        }
    };
    let ok = Command::new(python)
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .status()?
        .success()
        && Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "-q",
                &format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"),
            ])
            .status()?
            .success();
    if !ok || output(Command::new(&exe).arg("--version")).is_none() {
        bail!(
            "could not install kubernetes-validate; by hand: python3 -m venv {v} && {v}/bin/pip \
             install kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}",
            v = venv.display()
        );
    }
    Ok(exe)
}

fn ensure_file(path: &str, package: &str) -> anyhow::Result<()> {
    if std::path::Path::new(path).is_file() {
        return Ok(());
    }
    eprintln!("xtask: installing {package} (for {path})");
    ensure_package(package)
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        })
}

fn tools_bin() -> PathBuf {
    cargo_home().join("bin")
}

/// PATH with cargo's bin folder (where bpf-linker goes) in front.
pub fn path_with_tools() -> OsString {
    let mut paths = vec![tools_bin()];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("the nightly toolchain is missing: run `rustup toolchain install nightly`")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!(
        "xtask: installing rust-src for the nightly toolchain (the kernel crate builds core)"
    );
    let ok = Command::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", "nightly"])
        .status()?
        .success();
    if !ok {
        bail!(
            "could not install rust-src; run by hand: rustup component add rust-src --toolchain nightly"
        );
    }
    Ok(())
}

fn bpf_linker_runs() -> bool {
    output(Command::new(tools_bin().join("bpf-linker")).arg("--version")).is_some()
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    if bpf_linker_runs() {
        return Ok(());
    }
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("rustc +nightly --print sysroot failed")?;
    let lib_dir = PathBuf::from(sysroot.trim()).join("lib");
    // rustc ships its LLVM as lib/libLLVM-<major>-rust-<version>.so; bpf-linker must use it.
    let llvm_lib = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .find(|n| n.starts_with("libLLVM") && n.ends_with(".so"))
        .with_context(|| format!("no libLLVM*.so in {}", lib_dir.display()))?;
    let lib_name = llvm_lib
        .trim_start_matches("lib")
        .trim_end_matches(".so")
        .to_string();
    let major = lib_name
        .strip_prefix("LLVM-")
        .and_then(|r| r.split(['-', '.']).next())
        .context("cannot read the LLVM major version from the library name")?
        .to_string();
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against the nightly's {lib_name} \
         (about a minute, once)"
    );
    let rustflags = format!(
        "-L {dir} -l dylib={lib_name} -C link-arg=-Wl,-rpath,{dir}",
        dir = lib_dir.display()
    );
    let ok = Command::new("cargo")
        .args([
            "+nightly",
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{major},no-llvm-linking"),
            "--root",
        ])
        .arg(cargo_home())
        .env("RUSTFLAGS", &rustflags)
        .status()?
        .success();
    if !ok || !bpf_linker_runs() {
        bail!(
            "could not build bpf-linker; run by hand:\n  RUSTFLAGS=\"{rustflags}\" cargo +nightly \
             install bpf-linker --version {BPF_LINKER_VERSION} --no-default-features --features \
             llvm-{major},no-llvm-linking"
        );
    }
    Ok(())
}

fn on_path(command: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(command).is_file()))
        .unwrap_or(false)
}

fn ensure_command(command: &str, package: &str) -> anyhow::Result<()> {
    if on_path(command) {
        return Ok(());
    }
    eprintln!("xtask: installing {package} (for `{command}`)");
    ensure_package(package)
}

fn ensure_package(package: &str) -> anyhow::Result<()> {
    apt_install(package, package)
}

/// `apt-get install` with `args` (options and packages); `package` names it in the error.
fn apt_install(args: &str, package: &str) -> anyhow::Result<()> {
    let ok = Command::new("sh")
        .args([
            "-c",
            &format!(
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {args}"
            ),
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        bail!("could not install {package}; run by hand: apt-get install -y {args}");
    }
    Ok(())
}
