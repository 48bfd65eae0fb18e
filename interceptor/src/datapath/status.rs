//! What `status` and the node's metrics read back from the pins: each instance's record,
//! links, pods and counters, map occupancy, and each attached program's run statistics.

use std::{fs, path::Path};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData, PerCpuArray, SockHash};
use interceptor_ebpf::{
    Counter, INSTANCE_META_SIZE, InstanceMeta, ListenerKey, POD_RECORD_SIZE, PodConfig,
    PodRecordBlob, map_names, program_names,
};
use serde::Serialize;

use super::{bpffs, links::link_pin, maps::open_pinned, record::InstanceRecord};
use crate::sys::{self, fs::lock_dir_shared};

/// What `status` shows of one instance.
#[derive(Debug, Default, Serialize)]
pub struct InstanceStatus {
    pub instance: String,
    /// Set when the instance could not be read (e.g. a crashed loader left it incomplete).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub record: Option<InstanceRecord>,
    pub links: Vec<String>,
    pub pods: Vec<PodStatus>,
    pub connections_pending: usize,
    pub connections_tracked: usize,
    /// Inbound capture listeners registered (one per pod and address family).
    pub inbound_listeners: usize,
    /// Run counts and kernel time of each attached program (time counts only while
    /// `kernel.bpf_stats_enabled` is 1).
    pub programs: Vec<ProgramStats>,
}

#[derive(Debug, Serialize)]
pub struct ProgramStats {
    pub name: String,
    pub id: u32,
    pub run_count: u64,
    pub run_time_ns: u64,
    pub avg_ns: Option<u64>,
}

/// Statistics of the program behind each pinned link of an instance (`link_<program>`, and in
/// node mode `link_<program>@<netns cookie>` for each pod's `sk_lookup`), named after the pin.
pub fn program_stats(dir: &Path) -> anyhow::Result<Vec<ProgramStats>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)?.filter_map(Result::ok) {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(name) = file.strip_prefix("link_") else {
            continue;
        };
        let link = sys::bpf::obj_get(&entry.path())
            .with_context(|| format!("opening the pinned link {file}"))?;
        ids.push((name.to_string(), sys::bpf::link_info(&link)?.prog_id));
    }
    let mut out = Vec::new();
    for info in aya::programs::loaded_programs().filter_map(Result::ok) {
        for (name, id) in ids.iter().filter(|(_, id)| *id == info.id()) {
            let run_time_ns = info.run_time().as_nanos() as u64;
            let run_count = info.run_count();
            out.push(ProgramStats {
                name: name.clone(),
                id: *id,
                run_count,
                run_time_ns,
                avg_ns: (run_count > 0 && run_time_ns > 0).then(|| run_time_ns / run_count),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[derive(Debug, Serialize)]
pub struct PodStatus {
    pub netns_cookie: u64,
    /// Node mode: the pod as the daemon registered it (`namespace/name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub rules: u32,
    pub counters: std::collections::BTreeMap<&'static str, u64>,
}

/// Reads every instance under the bpffs root.
pub fn list_instances(root: &Path) -> anyhow::Result<Vec<InstanceStatus>> {
    let base = bpffs::interceptor_dir(root);
    if !bpffs::is_mounted(root) || !base.exists() {
        return Ok(Vec::new());
    }
    // Shared lock: loaders are not half-way through an instance while it is read.
    let _lock = lock_dir_shared(&base).with_context(|| format!("locking {}", base.display()))?;
    let mut out = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(&base)?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let dir = entry.path();
        if !dir.is_dir() {
            continue;
        }
        match read_instance(&dir) {
            Ok(status) => out.push(status),
            Err(e) => out.push(InstanceStatus {
                instance: entry.file_name().to_string_lossy().into_owned(),
                error: Some(format!("{e:#}")),
                ..InstanceStatus::default()
            }),
        }
    }
    Ok(out)
}

fn read_instance(dir: &Path) -> anyhow::Result<InstanceStatus> {
    let meta: Array<MapData, InstanceMeta> =
        Array::try_from(open_pinned(dir, map_names::INSTANCE_META)?)?;
    let m = meta.get(&0, 0)?;
    let record = serde_json::from_slice(&m.json[..(m.len as usize).min(INSTANCE_META_SIZE)]).ok();
    let pods_map: HashMap<MapData, u64, PodConfig> =
        HashMap::try_from(open_pinned(dir, map_names::POD_CONFIG)?)?;
    let counters: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(open_pinned(dir, map_names::COUNTERS)?)?;
    // Node mode keeps a record of each pod; `init`'s instances have none.
    let names: std::collections::BTreeMap<u64, String> =
        if dir.join(map_names::POD_RECORDS).exists() {
            let records: HashMap<MapData, u64, PodRecordBlob> =
                HashMap::try_from(open_pinned(dir, map_names::POD_RECORDS)?)?;
            records
                .iter()
                .filter_map(Result::ok)
                .filter_map(|(cookie, blob)| {
                    let json = &blob.json[..(blob.len as usize).min(POD_RECORD_SIZE)];
                    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
                    Some((
                        cookie,
                        format!("{}/{}", v["namespace"].as_str()?, v["name"].as_str()?),
                    ))
                })
                .collect()
        } else {
            Default::default()
        };
    let mut pods = Vec::new();
    for item in pods_map.iter() {
        let (cookie, cfg) = item?;
        let mut values = std::collections::BTreeMap::new();
        for c in Counter::ALL {
            let per_cpu = counters.get(&c.slot(cfg.pod_index), 0)?;
            values.insert(c.name(), per_cpu.iter().sum());
        }
        pods.push(PodStatus {
            netns_cookie: cookie,
            pod: names.get(&cookie).cloned(),
            rules: cfg.rules,
            counters: values,
        });
    }
    let mut links: Vec<String> = program_names::ALL
        .iter()
        .filter(|p| link_pin(dir, p).exists())
        .map(|p| p.to_string())
        .collect();
    links.sort();
    Ok(InstanceStatus {
        instance: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        record,
        links,
        pods,
        connections_pending: count_keys(dir, map_names::ORIG_DST_BY_COOKIE)?
            + count_keys(dir, map_names::ORIG_DST6_BY_COOKIE)?,
        connections_tracked: count_keys(dir, map_names::ORIG_DST_BY_TUPLE)?
            + count_keys(dir, map_names::ORIG_DST6_BY_TUPLE)?,
        inbound_listeners: count_listeners(dir)?,
        programs: program_stats(dir)?,
        error: None,
    })
}

/// Entries and capacity of the connection-tracking maps (LRU: full means evicting).
pub fn connection_map_occupancy(dir: &Path) -> anyhow::Result<Vec<(&'static str, usize, u32)>> {
    let mut out = Vec::new();
    for name in [
        map_names::ORIG_DST_BY_COOKIE,
        map_names::ORIG_DST_BY_TUPLE,
        map_names::ORIG_DST6_BY_COOKIE,
        map_names::ORIG_DST6_BY_TUPLE,
    ] {
        let capacity = aya::maps::MapInfo::from_pin(dir.join(name))?.max_entries();
        out.push((name, count_keys(dir, name)?, capacity));
    }
    Ok(out)
}

/// Registered capture listeners; 0 for an instance made by a version without inbound capture.
fn count_listeners(dir: &Path) -> anyhow::Result<usize> {
    if !dir.join(map_names::INBOUND_LISTENERS).exists() {
        return Ok(0);
    }
    let map = open_pinned(dir, map_names::INBOUND_LISTENERS)?;
    Ok(SockHash::<MapData, ListenerKey>::try_from(map)?
        .keys()
        .count())
}

fn count_keys(dir: &Path, name: &str) -> anyhow::Result<usize> {
    use interceptor_ebpf::{OrigDst4, OrigDst6, SockTuple4, SockTuple6};
    if !dir.join(name).exists() {
        return Ok(0); // an instance made by a version without this map (IPv6)
    }
    let m = open_pinned(dir, name)?;
    Ok(match name {
        map_names::ORIG_DST_BY_COOKIE => HashMap::<MapData, u64, OrigDst4>::try_from(m)?
            .keys()
            .count(),
        map_names::ORIG_DST6_BY_COOKIE => HashMap::<MapData, u64, OrigDst6>::try_from(m)?
            .keys()
            .count(),
        map_names::ORIG_DST6_BY_TUPLE => HashMap::<MapData, SockTuple6, OrigDst6>::try_from(m)?
            .keys()
            .count(),
        _ => HashMap::<MapData, SockTuple4, OrigDst4>::try_from(m)?
            .keys()
            .count(),
    })
}
