//! A per-pod instance (`interceptor init`): its maps and links pinned under
//! `<bpffs>/interceptor/cgroup-<id>/`. Created all or nothing; a re-run swaps the programs in
//! place and publishes the new configuration with one map write; `clean` takes it all away. An
//! instance whose maps an older build laid out differently is replaced by a new one attached
//! beside it.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::maps::{Array, MapData};
use interceptor_ebpf::{INSTANCE_META_SIZE, InstanceMeta, flags, map_names, program_names};

use super::{
    bpffs,
    links::{self, Target, link_pin},
    listeners::register_existing_listener,
    maps::{Maps, open_pinned},
    object::{self, LoadOptions, PERSISTENT_MAPS},
    plan::MapPlan,
    record::{InstanceMode, InstanceRecord},
};
use crate::{
    error::TargetError,
    pod::{Cgroup, Netns},
    sys::fs::lock_dir,
};

/// Rule-set ids alternate between these two in a single-pod instance.
const RULES_A: u32 = 1;
const RULES_B: u32 = 2;

/// The result of `init`.
#[derive(Debug)]
pub struct Applied {
    pub instance_dir: PathBuf,
    /// True when an existing instance was updated in place.
    pub replaced: bool,
    /// True when an older build's instance was replaced by a new one (see `Existing`).
    pub rebuilt: bool,
    pub rules: u32,
}

/// The mode recorded in an instance's metadata (`Pod` when unreadable: only `init` made
/// instances before node mode existed).
pub fn instance_mode(dir: &Path) -> InstanceMode {
    let read = || -> anyhow::Result<InstanceMode> {
        let meta: Array<MapData, InstanceMeta> =
            Array::try_from(open_pinned(dir, map_names::INSTANCE_META)?)?;
        let m = meta.get(&0, 0)?;
        let record: InstanceRecord =
            serde_json::from_slice(&m.json[..(m.len as usize).min(INSTANCE_META_SIZE)])?;
        Ok(record.mode)
    };
    read().unwrap_or_default()
}

/// Where a replacement instance is built before it takes the instance's name. (bpffs refuses
/// names with a dot.)
fn staging_dir(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push("-new");
    dir.with_file_name(name)
}

/// What `init` finds on bpffs for its cgroup.
#[derive(Debug, PartialEq, Eq)]
pub enum Existing {
    /// Nothing attached: no directory, or the pins of a run that failed before attaching.
    Nothing,
    /// An instance this build updates in place (adding the links of programs it lacks).
    Current,
    /// An attached instance whose maps this build's programs cannot use, and why.
    Outdated(String),
}

pub fn inspect_existing(dir: &Path) -> anyhow::Result<Existing> {
    if !link_pin(dir, program_names::CONNECT4).exists() {
        return Ok(Existing::Nothing);
    }
    for name in PERSISTENT_MAPS {
        let pin = dir.join(name);
        if !pin.exists() {
            continue; // a map no program of the instance uses yet: the loader creates it
        }
        let info = aya::maps::MapInfo::from_pin(&pin)
            .with_context(|| format!("reading map {}", pin.display()))?;
        let want = object::expected_layout(name)?;
        let have = (info.key_size(), info.value_size());
        if have != want {
            return Ok(Existing::Outdated(format!(
                "its map {name} has (key, value) sizes {have:?}, this build's {want:?}"
            )));
        }
    }
    Ok(Existing::Current)
}

/// Attaches (or updates) the instance for `cgroup` so that it enforces `plan`.
/// `plan` is built by the caller for the rule-set id this function passes to it.
pub fn apply(
    cgroup: &Cgroup,
    netns: &Netns,
    record: &InstanceRecord,
    opts: &LoadOptions,
    build_plan: impl FnOnce(u32) -> anyhow::Result<MapPlan>,
) -> anyhow::Result<Applied> {
    let root = bpffs::ensure_ready(&opts.bpffs_root)?;
    let _lock = lock_dir(&root).with_context(|| format!("locking {}", root.display()))?;
    let dir = root.join(bpffs::instance_name(cgroup.id));
    let staging = staging_dir(&dir);
    if staging.exists() {
        // A replacement an earlier run did not finish; the instance itself is still in place.
        remove_instance_dir(&staging)?;
    }
    let existing = inspect_existing(&dir)?;
    if existing != Existing::Nothing && instance_mode(&dir) == InstanceMode::Node {
        return Err(TargetError::ManagedByDaemon {
            path: cgroup.path.display().to_string(),
        }
        .into());
    }
    match existing {
        Existing::Current => load_and_apply(cgroup, netns, record, opts, &dir, true, build_plan),
        Existing::Nothing => {
            if dir.exists() {
                // A crashed earlier run left pins without a complete set of links: start over.
                remove_instance_dir(&dir)?;
            }
            create_instance(&root, cgroup, netns, record, opts, &dir, build_plan)
        }
        Existing::Outdated(reason) => {
            tracing::warn!(
                instance = %dir.display(),
                "the instance was made by another build ({reason}): replacing it; its counters \
                 start again from 0"
            );
            // The new programs run beside the old ones for a moment: whichever connect program
            // rewrites a connection first, the others see localhost and leave it; each
            // getsockopt program answers only for what its own maps recorded; sk_lookup keeps
            // the first program's choice of listener.
            let mut applied =
                create_instance(&root, cgroup, netns, record, opts, &staging, build_plan)?;
            remove_instance_dir(&dir).context("removing the replaced instance")?;
            fs::rename(&staging, &dir)
                .with_context(|| format!("renaming {} to {}", staging.display(), dir.display()))?;
            applied.instance_dir = dir;
            applied.rebuilt = true;
            Ok(applied)
        }
    }
}

/// A first attach into `dir` (which must not exist): all or nothing.
fn create_instance(
    root: &Path,
    cgroup: &Cgroup,
    netns: &Netns,
    record: &InstanceRecord,
    opts: &LoadOptions,
    dir: &Path,
    build_plan: impl FnOnce(u32) -> anyhow::Result<MapPlan>,
) -> anyhow::Result<Applied> {
    fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = load_and_apply(cgroup, netns, record, opts, dir, false, build_plan);
    if result.is_err() {
        // All or nothing: a failed first run leaves no pin and no link behind.
        discard_new_instance(root, dir);
    }
    result
}

/// Undoes a failed first start of an instance: all or nothing.
pub fn discard_new_instance(root: &Path, dir: &Path) {
    if let Err(e) = remove_instance_dir(dir) {
        tracing::error!(dir = %dir.display(), error = %e, "cleaning up after a failed start");
    }
    remove_if_empty(root);
}

fn load_and_apply(
    cgroup: &Cgroup,
    netns: &Netns,
    record: &InstanceRecord,
    opts: &LoadOptions,
    dir: &Path,
    existing: bool,
    build_plan: impl FnOnce(u32) -> anyhow::Result<MapPlan>,
) -> anyhow::Result<Applied> {
    let mut ebpf = object::load(dir, opts, 1, record.netns_cookie, &program_names::ALL)?;
    let mut maps = Maps::from_ebpf(&mut ebpf, dir)?;

    let previous = maps.pod_configs()?;
    let old_rules: Vec<u32> = previous.iter().map(|(_, c)| c.rules).collect();
    let rules = if old_rules.contains(&RULES_A) {
        RULES_B
    } else {
        RULES_A
    };
    let plan = build_plan(rules)?;

    maps.clear_rules(rules)?; // leftovers of an interrupted earlier run
    maps.write_sets(&plan)?;
    maps.write_record(record)?;

    let target = |name: &str| {
        if name == program_names::SK_LOOKUP {
            Target::Netns(netns)
        } else {
            Target::Cgroup(cgroup)
        }
    };
    if existing {
        // Swap the programs in place: the links never detach, so no connection escapes.
        links::install(&ebpf, dir, &program_names::ALL, target)?;
        // Publish: one map write switches every lookup to the new rule set.
        maps.publish(&plan)?;
        for (cookie, _) in previous.iter().filter(|(c, _)| *c != plan.netns_cookie) {
            maps.remove_pod(*cookie)?;
        }
        for old in old_rules.into_iter().filter(|r| *r != rules) {
            maps.clear_rules(old)?;
        }
    } else {
        // Configuration first, then the programs, connect4 last: a connection is only ever
        // redirected once everything that serves it is in place.
        maps.publish(&plan)?;
        links::install(&ebpf, dir, &program_names::ALL, target)?;
    }
    if plan.pod.has(flags::INBOUND_CAPTURE) {
        // Programs first: a listener opened from now on registers itself.
        register_existing_listener(&mut maps, netns, &plan);
    }
    Ok(Applied {
        instance_dir: dir.to_path_buf(),
        replaced: existing,
        rebuilt: false,
        rules,
    })
}

/// Removes an instance: links first, connect4 before the programs that serve redirected
/// connections, then the maps. Returns false when there was nothing to remove.
pub fn remove_instance(root: &Path, cgroup_id: u64) -> anyhow::Result<bool> {
    let base = bpffs::interceptor_dir(root);
    let dir = base.join(bpffs::instance_name(cgroup_id));
    if !dir.exists() {
        return Ok(false);
    }
    let _lock = lock_dir(&base).with_context(|| format!("locking {}", base.display()))?;
    let staging = staging_dir(&dir);
    if staging.exists() {
        remove_instance_dir(&staging)?;
    }
    remove_instance_dir(&dir)?;
    remove_if_empty(&base);
    Ok(true)
}

/// The last instance gone, the interceptor directory goes too: nothing of ours stays on bpffs.
/// Called with the directory locked; fails harmlessly when another instance is there.
pub fn remove_if_empty(base: &Path) {
    let _ = fs::remove_dir(base);
}

pub fn remove_instance_dir(dir: &Path) -> anyhow::Result<()> {
    for name in program_names::ALL.iter().rev() {
        let pin = link_pin(dir, name);
        if pin.exists() {
            fs::remove_file(&pin).with_context(|| format!("unpinning {}", pin.display()))?;
        }
    }
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replacement_is_built_beside_the_instance() {
        assert_eq!(
            staging_dir(Path::new("/sys/fs/bpf/interceptor/cgroup-42")),
            Path::new("/sys/fs/bpf/interceptor/cgroup-42-new")
        );
    }
}
