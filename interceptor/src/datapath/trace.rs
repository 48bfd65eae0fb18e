//! The programs' decision events, from user space: attaching a tracer (the programs write events
//! only while one is), reading them, and counting those the full ring buffer lost.
//!
//! A ring buffer has one reader position, so a datapath has one tracer at a time. Attached
//! means: the tracer holds an exclusive `flock` on the datapath's directory and has set
//! `TRACE_CONTROL[0]`; it clears it when it leaves. A tracer that was killed leaves it set
//! until the next sweep (`init`, `clean`, the daemon every 30 s), which clears it when nobody
//! holds the lock. The lock is the kernel's: it goes with the process, however it ends.

use std::{
    os::fd::{AsFd, BorrowedFd},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use interceptor_ebpf::{
    map_names,
    trace::{TRACE_ON, TraceEvent},
};

use super::maps::open_pinned;
use crate::sys::fs::{DirLock, try_lock_dir};

/// A datapath's trace maps, open.
pub struct TraceMaps {
    /// The datapath's directory.
    pub dir: PathBuf,
    control: Array<MapData, u32>,
    events: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
}

impl TraceMaps {
    /// The trace maps of the datapath at `dir`; `None` for a datapath made by a build without
    /// them.
    pub fn open(dir: &Path) -> anyhow::Result<Option<Self>> {
        if !dir.join(map_names::TRACE_EVENTS).exists() {
            return Ok(None);
        }
        Ok(Some(TraceMaps {
            dir: dir.to_path_buf(),
            control: Array::try_from(open_pinned(dir, map_names::TRACE_CONTROL)?)?,
            events: RingBuf::try_from(open_pinned(dir, map_names::TRACE_EVENTS)?)?,
            lost: PerCpuArray::try_from(open_pinned(dir, map_names::TRACE_LOST)?)?,
        }))
    }

    /// Attaches this process as the datapath's tracer: events flow until the returned guard
    /// goes. Fails when another tracer is attached.
    pub fn attach(&mut self) -> anyhow::Result<Attached> {
        let untraced: Vec<String> = super::bpffs::programs_dirs(&self.dir)
            .into_iter()
            .filter(|d| d.join(super::programs::WITHOUT_TRACE).exists())
            .map(|d| d.display().to_string())
            .collect();
        anyhow::ensure!(
            untraced.is_empty(),
            "nothing on this datapath can be traced: its programs ({}) were loaded by a process \
             without CAP_PERFMON (a per-pod init container with CAP_BPF and CAP_NET_ADMIN only), \
             and the kernel's verifier takes the code that writes events only from CAP_PERFMON \
             or CAP_SYS_ADMIN, so they were loaded without it. Give the init container \
             CAP_PERFMON too (or run the node daemon): the next datapath loaded is traceable",
            untraced.join(", ")
        );
        // A sweep holds the lock for a moment: wait that out, not a tracer.
        let mut lock = None;
        for _ in 0..20 {
            lock = try_lock_dir(&self.dir)
                .with_context(|| format!("locking {}", self.dir.display()))?;
            if lock.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let Some(lock) = lock else {
            anyhow::bail!(
                "another tracer is attached to {} (a datapath's events have one reader)",
                self.dir.display()
            );
        };
        self.control
            .set(0, TRACE_ON, 0)
            .context("turning the programs' trace events on")?;
        Ok(Attached {
            dir: self.dir.clone(),
            control: Array::try_from(open_pinned(&self.dir, map_names::TRACE_CONTROL)?)?,
            _lock: lock,
        })
    }

    /// Whether the programs write events now.
    pub fn is_on(&self) -> bool {
        self.control.get(&0, 0).is_ok_and(|v| v != 0)
    }

    /// The next event waiting in the ring buffer, if any.
    pub fn next_event(&mut self) -> Option<TraceEvent> {
        let item = self.events.next()?;
        (item.len() >= size_of::<TraceEvent>()).then(|| {
            // SAFETY: the ring buffer holds a whole `TraceEvent` (checked), written by the
            // programs with this layout; an unaligned read copies it out.
            unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<TraceEvent>()) }
        })
    }

    /// Events lost so far (the ring buffer was full), summed over CPUs.
    pub fn lost(&self) -> u64 {
        self.lost
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    /// The ring buffer's descriptor, readable when events wait.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }
}

/// A tracer's attachment; detaches on drop.
pub struct Attached {
    dir: PathBuf,
    control: Array<MapData, u32>,
    _lock: DirLock,
}

impl Drop for Attached {
    fn drop(&mut self) {
        // Off before the lock goes: the next tracer turns them on again.
        if let Err(e) = self.control.set(0, 0, 0) {
            tracing::warn!(datapath = %self.dir.display(), "detaching the tracer: {e}");
        }
    }
}

/// Turns the programs' events off unless a tracer holds the datapath's lock. True when they
/// were on and are now off.
pub fn clear_if_unattended(dir: &Path) -> anyhow::Result<bool> {
    if !dir.join(map_names::TRACE_CONTROL).exists() {
        return Ok(false);
    }
    let Some(_lock) = try_lock_dir(dir).with_context(|| format!("locking {}", dir.display()))?
    else {
        return Ok(false); // a tracer is attached
    };
    let mut control: Array<MapData, u32> =
        Array::try_from(open_pinned(dir, map_names::TRACE_CONTROL)?)?;
    if control.get(&0, 0).is_ok_and(|v| v == 0) {
        return Ok(false);
    }
    control
        .set(0, 0, 0)
        .context("turning the programs' trace events off")?;
    Ok(true)
}
