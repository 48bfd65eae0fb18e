//! The eBPF backend: one datapath per node. The kernel programs are loaded and verified once per
//! node and build, and the maps are the node's, keyed by each pod's network-namespace cookie,
//! whichever way the pod was enrolled (`init` in the pod, or the node daemon). A pod costs its
//! entries and its links; enrolling one loads no program. Everything is pinned on bpffs, so
//! interception outlives the process that set it up.
//!
//! - [`object`]: the programs this build carries, what identifies them, loading them;
//! - [`programs`]: a build's programs, loaded once and pinned;
//! - [`links`]: attaching, swapping and detaching programs behind pinned links;
//! - [`plan`]: a pod's options as map entries (pure); [`maps`]: the maps, and writing them;
//! - [`pods`]: registering and removing one pod; [`gc`]: reclaiming what vanished pods held;
//! - [`listeners`]: the proxy's inbound listener opened before us;
//! - [`record`], [`status`]: what is recorded and shown; [`legacy`]: version 0.1's instances;
//! - [`trace`]: the programs' decision events (a tracer attached, its events, those lost);
//!   [`kernel_log`]: their aya-log records;
//! - [`bpffs`]: where it all lives.

pub mod bpffs;
pub mod gc;
pub mod kernel_log;
pub mod legacy;
pub mod links;
pub mod listeners;
pub mod maps;
pub mod object;
pub mod plan;
pub mod pods;
pub mod programs;
pub mod record;
pub mod status;
pub mod trace;

use std::{
    fs,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use interceptor_ebpf::Counter;

pub use object::Sizes;
pub use plan::MapPlan;
pub use pods::{Enrolment, Registered};
pub use record::{DatapathRecord, InstanceMode, PodRecord};

use self::{maps::Maps, programs::Programs};
use crate::sys::fs::{DirLock, lock_dir};

/// How a pod is enrolled into the node's datapath.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Where bpffs is (mounted if it is not).
    pub bpffs_root: PathBuf,
    /// The datapath's sizes (checked against their bounds).
    pub sizes: Sizes,
    /// aya-log level of the programs (0 = off ... 5 = trace).
    pub kernel_log_level: u8,
}

/// The node's datapath for one map layout and size, with this build's programs, open.
pub struct Datapath {
    /// `<bpffs>/interceptor`.
    pub base: PathBuf,
    /// `datapath-<key>` under it.
    pub dir: PathBuf,
    pub sizes: Sizes,
    pub log_level: u8,
    pub maps: Maps,
    /// This build's programs: `None` for a datapath opened only to read it or take pods out
    /// of it (another build's, see `existing`).
    pub programs: Option<Programs>,
    /// This call created the datapath (the node had none for these sizes and this layout).
    pub created: bool,
    /// This call loaded the programs (the node had none of this build).
    pub loaded: bool,
}

/// Seconds since the epoch, for records.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Datapath {
    /// Locks the node's datapaths: every writer (`init`, `clean`, the daemon) holds it while it
    /// changes anything, so each change is whole before the next starts.
    pub fn lock(base: &Path) -> anyhow::Result<DirLock> {
        lock_dir(base).with_context(|| format!("locking {}", base.display()))
    }

    /// Opens the datapath for `sizes` under `base` (`<bpffs>/interceptor`, locked by the
    /// caller), creating it, and loading this build's programs into it, when the node has none.
    /// All or nothing: a datapath this call created is gone again if it fails.
    pub fn open(base: &Path, sizes: Sizes, log_level: u8) -> anyhow::Result<Self> {
        let key = object::datapath_key(sizes)?;
        let dir = bpffs::datapath_dir(base, &key);
        let created = !dir.exists();
        if created {
            fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let opened = (|| {
            let (programs, loaded) = Programs::ensure(&dir, sizes, log_level)?;
            let mut maps = Maps::open(&dir)?;
            if maps.datapath_record().is_none() {
                let record = DatapathRecord {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    key: key.clone(),
                    max_pods: sizes.max_pods,
                    max_connections: sizes.max_connections,
                    created_unix: now_unix(),
                    counters: Counter::ALL.iter().map(|c| c.name().to_string()).collect(),
                };
                maps.write_datapath_record(&serde_json::to_vec(&record)?)?;
            }
            Ok::<_, anyhow::Error>((programs, loaded, maps))
        })();
        match opened {
            Ok((programs, loaded, maps)) => {
                if loaded {
                    tracing::info!(
                        datapath = %dir.display(),
                        programs = %programs.dir.display(),
                        "loaded this build's programs (once per node)"
                    );
                }
                Ok(Datapath {
                    base: base.to_path_buf(),
                    dir,
                    sizes,
                    log_level,
                    maps,
                    programs: Some(programs),
                    created,
                    loaded,
                })
            }
            Err(e) => {
                if created {
                    let _ = fs::remove_dir_all(&dir);
                }
                Err(e)
            }
        }
    }

    /// Opens the datapath at `dir` as it is, without programs: to read it, reclaim what it
    /// holds, or take pods out of it.
    pub fn existing(dir: &Path) -> anyhow::Result<Self> {
        let maps = Maps::open(dir)?;
        let record: DatapathRecord = maps
            .datapath_record()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .unwrap_or_default();
        Ok(Datapath {
            base: dir.parent().unwrap_or(dir).to_path_buf(),
            dir: dir.to_path_buf(),
            sizes: Sizes {
                max_pods: record.max_pods,
                max_connections: record.max_connections,
            },
            log_level: 0,
            maps,
            programs: None,
            created: false,
            loaded: false,
        })
    }

    /// Whether nothing is enrolled in this datapath any more (no pod, no node).
    pub fn is_unused(dir: &Path) -> bool {
        bpffs::pod_dirs(dir).is_empty() && bpffs::node_dirs(dir).is_empty()
    }
}
