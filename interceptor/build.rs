//! Builds the kernel programs (interceptor-ebpf's binary) for bpfel-unknown-none with the
//! nightly toolchain and bpf-linker, and leaves the object in OUT_DIR for `include_bytes!`.
//! `cargo xtask` installs what this needs (rust-src, bpf-linker) on a fresh machine.

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    if which_bpf_linker().is_none() {
        return Err(anyhow!(
            "bpf-linker is not on PATH: run `cargo xtask setup` (or any `cargo xtask` command), \
             which builds it against the nightly toolchain's own LLVM"
        ));
    }
    let package = aya_build::Package {
        name: "interceptor-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../interceptor-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
        .context("building the kernel programs (interceptor-ebpf)")
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("bpf-linker"))
        .find(|candidate| candidate.is_file())
}
