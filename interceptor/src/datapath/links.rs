//! Attaching programs with bpf links, pinned so they outlive the process that made them:
//! created all or nothing, updated in place (`BPF_LINK_UPDATE`) so that no connection sees a
//! moment without a program, and taken away in the order that never leaves a redirected
//! connection without the programs that serve it.

use std::{
    fs,
    os::fd::{BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use interceptor_ebpf::program_names;

use crate::{
    pod::{Cgroup, Netns},
    sys::bpf::{self, LinkInfo, bpf_attach_type},
};

/// The pin of `program`'s link in `dir`.
pub fn link_pin(dir: &Path, program: &str) -> PathBuf {
    dir.join(format!("link_{program}"))
}

/// Where a program attaches.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    Cgroup(&'a Cgroup),
    Netns(&'a Netns),
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
        program_names::SOCK_CREATE => BPF_CGROUP_INET_SOCK_CREATE,
        program_names::SETSOCKOPT => BPF_CGROUP_SETSOCKOPT,
        other => unreachable!("no attach type for {other}"),
    }
}

/// Attaches one program to its cgroup (or, `sk_lookup`, network namespace) with a bpf link,
/// beside whatever else is attached there (a runtime's, a CNI's programs).
pub fn attach(prog: BorrowedFd<'_>, name: &str, target: Target) -> anyhow::Result<OwnedFd> {
    match target {
        Target::Netns(netns) => {
            bpf::link_create(&prog, &netns.file, attach_type(name)).map_err(|e| {
                anyhow!(
                    "attaching {name} to the network namespace {}: {e} (sk_lookup needs Linux \
                     >= 5.9)",
                    netns.path.display()
                )
            })
        }
        Target::Cgroup(cgroup) => {
            bpf::link_create(&prog, &cgroup.dir, attach_type(name)).map_err(|e| {
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

/// Puts the programs `names` (from `program`) behind the links pinned in `dir`: a pinned link
/// gets its new program in place (no moment without one); a missing one is attached to
/// `target(name)`. New links are pinned only once every program is in, so a failure leaves
/// none of them attached. `names` come in attach order: what serves a redirected connection
/// before what redirects it.
pub fn install<'p, 't>(
    dir: &Path,
    names: &[&str],
    program: impl Fn(&str) -> anyhow::Result<BorrowedFd<'p>>,
    target: impl Fn(&str) -> Target<'t>,
) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut new = Vec::new();
    for &name in names {
        let prog = program(name)?;
        let pin = link_pin(dir, name);
        if pin.exists() {
            replace(&pin, name, prog)?;
        } else {
            new.push((name, attach(prog, name, target(name))?));
        }
    }
    for (name, link) in &new {
        bpf::obj_pin(link, &link_pin(dir, name))
            .with_context(|| format!("pinning the link of {name}"))?;
    }
    Ok(())
}

/// Swaps the program behind the link pinned at `pin` for `prog`.
pub fn replace(pin: &Path, name: &str, prog: BorrowedFd<'_>) -> anyhow::Result<()> {
    let link = bpf::obj_get(pin).with_context(|| format!("opening the pinned link of {name}"))?;
    bpf::link_update(&link, &prog).with_context(|| format!("replacing program {name} in its link"))
}

/// What the kernel says of the link pinned at `pin`.
pub fn info(pin: &Path) -> anyhow::Result<LinkInfo> {
    let link = bpf::obj_get(pin).with_context(|| format!("opening {}", pin.display()))?;
    Ok(bpf::link_info(&link)?)
}

/// The programs that redirect (or steer) connections; the others serve connections once
/// redirected, and go last.
fn redirects(program: &str) -> bool {
    matches!(
        program,
        program_names::CONNECT4
            | program_names::CONNECT6
            | program_names::SENDMSG4
            | program_names::SENDMSG6
            | program_names::POST_BIND4
            | program_names::POST_BIND6
            | program_names::SK_LOOKUP
    )
}

/// Detaches every link pinned in `dir` and removes the directory (and whatever else is pinned
/// in it). See `unpin_links` for the order.
pub fn detach_all(dir: &Path, grace: Option<Duration>) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    unpin_links(dir, grace)?;
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// Detaches every link pinned in `dir`. The programs that redirect go first; with a `grace`,
/// the ones that serve connections redirected until then (the proxy's `SO_ORIGINAL_DST`, the
/// application's `getpeername`) stay that long before they go too, so that a connection being
/// set up while interception moves elsewhere still finds its original destination.
pub fn unpin_links(dir: &Path, grace: Option<Duration>) -> anyhow::Result<()> {
    let pins: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("link_"))
        })
        .collect();
    let is_redirector = |pin: &PathBuf| {
        pin.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("link_"))
            .is_some_and(|p| redirects(p.split('@').next().unwrap_or(p)))
    };
    let (first, then): (Vec<&PathBuf>, Vec<&PathBuf>) = pins.iter().partition(|p| is_redirector(p));
    for pin in first {
        fs::remove_file(pin).with_context(|| format!("unpinning {}", pin.display()))?;
    }
    if let Some(grace) = grace.filter(|_| !then.is_empty()) {
        std::thread::sleep(grace);
    }
    for pin in then {
        fs::remove_file(pin).with_context(|| format!("unpinning {}", pin.display()))?;
    }
    Ok(())
}
