//! Attaching programs with bpf links, pinned so they outlive the loader: created all or
//! nothing, updated in place (`BPF_LINK_UPDATE`) so that no connection sees a moment without a
//! program.

use std::{
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};
use aya::Ebpf;
use interceptor_ebpf::program_names;

use crate::{
    pod::{Cgroup, Netns},
    sys::bpf::{self, bpf_attach_type},
};

pub fn link_pin(dir: &Path, program: &str) -> PathBuf {
    dir.join(format!("link_{program}"))
}

/// Where a program attaches.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    Cgroup(&'a Cgroup),
    Netns(&'a Netns),
}

/// Puts `ebpf`'s programs `names` behind the links pinned in `dir`: a pinned link gets the new
/// program in place (`BPF_LINK_UPDATE`: no moment without a program); a missing one is attached
/// (an instance made by an earlier version without that hook, or a new instance). New links
/// are pinned only once every program is in, so a failure leaves none of them attached.
pub fn install<'a>(
    ebpf: &Ebpf,
    dir: &Path,
    names: &[&str],
    target: impl Fn(&str) -> Target<'a>,
) -> anyhow::Result<()> {
    let mut new = Vec::new();
    for &name in names {
        let pin = link_pin(dir, name);
        if pin.exists() {
            replace_program(ebpf, name, &pin)?;
        } else {
            new.push((name, attach(ebpf, name, target(name))?));
        }
    }
    for (name, link) in &new {
        bpf::obj_pin(link, &link_pin(dir, name))
            .with_context(|| format!("pinning the link of {name}"))?;
    }
    Ok(())
}

/// Swaps the program behind the link pinned at `pin` for `ebpf`'s `name`.
pub fn replace_program(ebpf: &Ebpf, name: &str, pin: &Path) -> anyhow::Result<()> {
    let link = bpf::obj_get(pin).with_context(|| format!("opening the pinned link of {name}"))?;
    let prog = ebpf
        .program(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?;
    bpf::link_update(&link, prog.fd().context("program fd")?)
        .with_context(|| format!("replacing program {name} in its link"))
}

/// The hook each program attaches to.
fn attach_type(program: &str) -> bpf_attach_type {
    use bpf_attach_type::*;
    match program {
        program_names::SOCKOPS => BPF_CGROUP_SOCK_OPS,
        program_names::GETSOCKOPT => BPF_CGROUP_GETSOCKOPT,
        program_names::GETPEERNAME4 => BPF_CGROUP_INET4_GETPEERNAME,
        program_names::GETPEERNAME6 => BPF_CGROUP_INET6_GETPEERNAME,
        program_names::RECVMSG4 => BPF_CGROUP_UDP4_RECVMSG,
        program_names::RECVMSG6 => BPF_CGROUP_UDP6_RECVMSG,
        program_names::SENDMSG4 => BPF_CGROUP_UDP4_SENDMSG,
        program_names::SENDMSG6 => BPF_CGROUP_UDP6_SENDMSG,
        program_names::CONNECT4 => BPF_CGROUP_INET4_CONNECT,
        program_names::CONNECT6 => BPF_CGROUP_INET6_CONNECT,
        program_names::POST_BIND4 => BPF_CGROUP_INET4_POST_BIND,
        program_names::POST_BIND6 => BPF_CGROUP_INET6_POST_BIND,
        program_names::SK_LOOKUP => BPF_SK_LOOKUP,
        other => unreachable!("no attach type for {other}"),
    }
}

/// Attaches one program to its cgroup (or, `sk_lookup`, network namespace) with a bpf link
/// (detached when its last fd or pin goes).
pub fn attach(ebpf: &Ebpf, name: &str, target: Target) -> anyhow::Result<OwnedFd> {
    // A link always runs beside other programs of the cgroup or namespace (a runtime's, a
    // CNI's); the kernel takes no flags for it.
    let prog = ebpf
        .program(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?;
    let prog = prog.fd().context("program fd")?;
    match target {
        Target::Netns(netns) => bpf::link_create(prog, &netns.file, attach_type(name))
            .map_err(|e| {
                anyhow!(
                    "attaching {name} to the network namespace {}: {e} (sk_lookup needs Linux >= 5.9)",
                    netns.path.display()
                )
            }),
        Target::Cgroup(cgroup) => {
            bpf::link_create(prog, &cgroup.dir, attach_type(name)).map_err(|e| {
                let hint = if e.raw_os_error() == Some(libc::EINVAL) {
                    " (bpf links for cgroups need Linux >= 5.7)"
                } else {
                    ""
                };
                anyhow!("attaching {name} to {}: {e}{hint}", cgroup.path.display())
            })
        }
    }
}
