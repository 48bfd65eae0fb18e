//! One build's verified programs, loaded once per node (and kernel log level) and pinned in the
//! datapath: every later pod only opens the pins and attaches them. The shared `sk_lookup`
//! finds a pod by the address a connection arrives for; a pod whose address another pod of
//! the node already has gets a copy of its own, which carries its cookie instead.

use std::{
    collections::BTreeMap,
    fs,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};
use aya::Ebpf;
use interceptor_ebpf::{map_names, program_names};

use super::{
    bpffs,
    object::{self, Sizes},
};
use crate::sys::bpf::{self, bpf_attach_type};

/// A directory in a program directory whose programs were loaded without their event-writing
/// code (the loader lacked CAP_PERFMON): nothing they decide can be traced.
pub const WITHOUT_TRACE: &str = "without-trace";

/// A build's programs, open.
pub struct Programs {
    /// `prog-<build>-<log level>` in the datapath.
    pub dir: PathBuf,
    fds: BTreeMap<&'static str, OwnedFd>,
}

impl Programs {
    /// Opens this build's pinned programs in the datapath at `datapath`, loading (the kernel
    /// verifies them) and pinning them first when the node has none yet. True when loaded here.
    pub fn ensure(datapath: &Path, sizes: Sizes, log_level: u8) -> anyhow::Result<(Self, bool)> {
        let dir = bpffs::programs_dir(datapath, &object::build_id(), log_level);
        if let Some(open) = Self::open(&dir)? {
            return Ok((open, false));
        }
        if dir.exists() {
            // A load that did not finish (the loader was killed): start over.
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        let every: Vec<&str> = object::every_program().collect();
        let ebpf = object::load(datapath, sizes, log_level, 0, &every)?;
        // Pinned under a staging name, then renamed: the directory is complete or absent.
        let staging = dir.with_file_name(format!(
            "{}-staging",
            dir.file_name().unwrap_or_default().to_string_lossy()
        ));
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
        if *object::trace_built() == 0 {
            // Said where `trace` looks (bpffs holds directories, not files).
            let mark = staging.join(WITHOUT_TRACE);
            fs::create_dir(&mark).with_context(|| format!("creating {}", mark.display()))?;
        }
        let pinned = pin_all(ebpf, &staging).and_then(|()| {
            fs::rename(&staging, &dir)
                .with_context(|| format!("renaming {} to {}", staging.display(), dir.display()))
        });
        if let Err(e) = pinned {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        let open = Self::open(&dir)?
            .ok_or_else(|| anyhow!("{}: programs missing right after pinning", dir.display()))?;
        open.attach_to_maps(datapath)?;
        Ok((open, true))
    }

    /// The programs pinned in `dir`, or `None` when any is missing.
    fn open(dir: &Path) -> anyhow::Result<Option<Self>> {
        let mut fds = BTreeMap::new();
        for name in object::every_program() {
            let pin = dir.join(name);
            if !pin.exists() {
                return Ok(None);
            }
            let fd = bpf::obj_get(&pin).with_context(|| format!("opening {}", pin.display()))?;
            fds.insert(name, fd);
        }
        Ok(Some(Programs {
            dir: dir.to_path_buf(),
            fds,
        }))
    }

    /// Gives the datapath's `ACCEL_SOCKETS` this build's `sk_msg` program (replacing another
    /// build's): every socket paired from then on gets it. Sockets paired before keep the
    /// program they got, so their connections are never cut over mid-stream.
    fn attach_to_maps(&self, datapath: &Path) -> anyhow::Result<()> {
        let map = datapath.join(map_names::ACCEL_SOCKETS);
        let map = bpf::obj_get(&map).with_context(|| format!("opening {}", map.display()))?;
        bpf::map_prog_attach(
            &self.fd(program_names::SK_MSG)?,
            &map,
            bpf_attach_type::BPF_SK_MSG_VERDICT,
        )
        .with_context(|| {
            format!(
                "attaching {} to {} (sk_msg needs Linux >= 4.17)",
                program_names::SK_MSG,
                map_names::ACCEL_SOCKETS
            )
        })
    }

    /// The program `name`.
    pub fn fd(&self, name: &str) -> anyhow::Result<BorrowedFd<'_>> {
        self.fds
            .get(name)
            .map(|fd| fd.as_fd())
            .ok_or_else(|| anyhow!("program {name} missing from {}", self.dir.display()))
    }
}

fn pin_all(mut ebpf: Ebpf, dir: &Path) -> anyhow::Result<()> {
    for name in object::every_program() {
        let prog = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the object"))?;
        prog.pin(dir.join(name))
            .with_context(|| format!("pinning program {name}"))?;
    }
    Ok(())
}

/// A copy of `sk_lookup` for one pod, carrying its cookie (for a pod whose address another
/// pod of the node has too): kept alive by its link alone.
pub fn own_sk_lookup(
    datapath: &Path,
    sizes: Sizes,
    log_level: u8,
    cookie: u64,
) -> anyhow::Result<OwnedFd> {
    let ebpf = object::load(
        datapath,
        sizes,
        log_level,
        cookie,
        &[program_names::SK_LOOKUP],
    )?;
    let prog = ebpf.program(program_names::SK_LOOKUP).ok_or_else(|| {
        anyhow!(
            "program {} missing from the object",
            program_names::SK_LOOKUP
        )
    })?;
    let fd = prog.fd().context("program fd")?;
    Ok(fd.as_fd().try_clone_to_owned()?)
}
