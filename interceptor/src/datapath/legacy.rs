//! Version 0.1's instances: `<bpffs>/interceptor/cgroup-<id>/`, each with maps and programs of
//! its own (one per pod for `init`, one at the parent cgroup for the daemon). This build leaves
//! a running one alone, shows it in `status`, reclaims it when its pod is gone, and moves a pod
//! out of it when `init` runs again for that pod or a new daemon takes the node over.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use interceptor_ebpf::{
    Counter, INSTANCE_META_SIZE, InstanceMeta, POD_RECORD_SIZE, PodConfig, PodRecordBlob,
    map_names, program_names, wire::ipv6_octets,
};
use serde::{Deserialize, Serialize};

use super::{
    InstanceMode, PodRecord, bpffs,
    links::{self, link_pin},
    maps::open_pinned,
    pods::HANDOVER_GRACE,
};

/// Version 0.1 counted this many events per pod (the first of `Counter::ALL`).
const COUNTERS_V01: u32 = 23;

/// What a version 0.1 instance recorded about itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LegacyRecord {
    pub mode: InstanceMode,
    pub version: String,
    pub cgroup: String,
    pub cgroup_id: u64,
    pub netns: String,
    pub netns_inode: u64,
    pub netns_cookie: u64,
    pub updated_unix: u64,
    pub config: serde_json::Value,
    pub dns_capture: serde_json::Value,
}

/// A pod of a version 0.1 node instance, as a new daemon takes it over.
#[derive(Clone, Debug)]
pub struct LegacyPod {
    pub record: PodRecord,
    /// Its configuration, when its layout is this build's (its name servers, for one).
    pub config: Option<PodConfig>,
    /// Its counters.
    pub counters: Vec<(Counter, u64)>,
}

/// What `status` shows of a version 0.1 instance.
#[derive(Debug, Default, Serialize)]
pub struct LegacyStatus {
    pub instance: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub record: Option<LegacyRecord>,
    pub links: Vec<String>,
    /// (netns cookie, `namespace/name` if the daemon named it, counters)
    pub pods: Vec<LegacyPodStatus>,
}

#[derive(Debug, Serialize)]
pub struct LegacyPodStatus {
    pub netns_cookie: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub counters: BTreeMap<&'static str, u64>,
}

/// The version 0.1 instance attached to the cgroup `cgroup_id`, if any.
pub fn find(base: &Path, cgroup_id: u64) -> Option<PathBuf> {
    let dir = base.join(bpffs::legacy_instance_name(cgroup_id));
    dir.exists().then_some(dir)
}

/// What an instance recorded about itself.
pub fn record(dir: &Path) -> Option<LegacyRecord> {
    let meta: Array<MapData, InstanceMeta> =
        Array::try_from(open_pinned(dir, map_names::INSTANCE_META).ok()?).ok()?;
    let m = meta.get(&0, 0).ok()?;
    serde_json::from_slice(&m.json[..(m.len as usize).min(INSTANCE_META_SIZE)]).ok()
}

/// Detaches an instance (its redirecting programs first, the rest after a grace) and removes
/// its maps. Returns the counters of the pods `slots` names, as they were once nothing counted
/// any more.
pub fn remove(dir: &Path, slots: &[u32]) -> anyhow::Result<Vec<Vec<(Counter, u64)>>> {
    links::unpin_links(dir, Some(HANDOVER_GRACE))?;
    let counts = slots.iter().map(|slot| counters(dir, *slot)).collect();
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(counts)
}

/// Why a per-pod instance's pod is gone (its cgroup or namespace), or `None` while it lives.
/// Node instances are never judged here: their daemon may be running.
pub fn gone(dir: &Path) -> Option<String> {
    if record(dir).is_some_and(|r| r.mode == InstanceMode::Node) {
        return None;
    }
    let connect = link_pin(dir, program_names::CONNECT4);
    match links::info(&connect) {
        Ok(i) if i.cgroup_id == 0 => return Some("its cgroup is gone".into()),
        Ok(_) => {}
        Err(_) => return Some("it has no links (an init that did not finish)".into()),
    }
    match links::info(&link_pin(dir, program_names::SK_LOOKUP)) {
        Ok(i) if i.netns_ino == 0 => Some("its network namespace is gone".into()),
        _ => None,
    }
}

/// The pods of a node instance, with what a new daemon needs to take them over.
pub fn node_pods(dir: &Path) -> anyhow::Result<Vec<LegacyPod>> {
    let records: HashMap<MapData, u64, PodRecordBlob> =
        HashMap::try_from(open_pinned(dir, map_names::POD_RECORDS)?)?;
    let configs = configs(dir);
    let mut out = Vec::new();
    for (cookie, blob) in records.iter().filter_map(Result::ok) {
        let json = &blob.json[..(blob.len as usize).min(POD_RECORD_SIZE)];
        let Ok(mut record) = serde_json::from_slice::<PodRecord>(json) else {
            continue;
        };
        record.mode = InstanceMode::Node;
        record.netns_cookie = cookie;
        let config = configs.get(&cookie).copied();
        let slot = config.map_or(record.pod_index, |c| c.pod_index);
        out.push(LegacyPod {
            config,
            counters: counters(dir, slot),
            record,
        });
    }
    Ok(out)
}

/// The name servers a pod's configuration captures DNS for.
pub fn dns_servers(cfg: &PodConfig) -> Vec<IpAddr> {
    let v4 = cfg.dns4[..(cfg.n_dns4 as usize).min(cfg.dns4.len())]
        .iter()
        .map(|a| IpAddr::from(Ipv4Addr::from(a.to_ne_bytes())));
    let v6 = cfg.dns6[..(cfg.n_dns6 as usize).min(cfg.dns6.len())]
        .iter()
        .map(|a| IpAddr::from(Ipv6Addr::from(ipv6_octets(*a))));
    v4.chain(v6).collect()
}

/// A pod's counters in a version 0.1 instance (`slot`: its `pod_index`).
pub fn counters(dir: &Path, slot: u32) -> Vec<(Counter, u64)> {
    let Ok(map) = open_pinned(dir, map_names::COUNTERS) else {
        return Vec::new();
    };
    let Ok(counters) = PerCpuArray::<MapData, u64>::try_from(map) else {
        return Vec::new();
    };
    Counter::ALL
        .iter()
        .take(COUNTERS_V01 as usize)
        .enumerate()
        .filter_map(|(i, c)| {
            let per_cpu = counters.get(&(slot * COUNTERS_V01 + i as u32), 0).ok()?;
            Some((*c, per_cpu.iter().sum()))
        })
        .collect()
}

/// The instance's pod configurations, when their layout is this build's.
fn configs(dir: &Path) -> BTreeMap<u64, PodConfig> {
    let Ok(map) = open_pinned(dir, map_names::POD_CONFIG) else {
        return BTreeMap::new();
    };
    match HashMap::<MapData, u64, PodConfig>::try_from(map) {
        Ok(m) => m.iter().filter_map(Result::ok).collect(),
        Err(_) => BTreeMap::new(),
    }
}

/// Every version 0.1 instance under `base`, for `status`.
pub fn list(base: &Path) -> Vec<LegacyStatus> {
    bpffs::legacy_instance_dirs(base)
        .into_iter()
        .map(|(_, dir)| {
            let instance = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            read(&dir).unwrap_or_else(|e| LegacyStatus {
                instance: instance.clone(),
                error: Some(format!("{e:#}")),
                ..LegacyStatus::default()
            })
        })
        .collect()
}

fn read(dir: &Path) -> anyhow::Result<LegacyStatus> {
    let names: BTreeMap<u64, String> = node_pods(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let name = format!("{}/{}", p.record.namespace, p.record.name);
            (p.record.netns_cookie, name)
        })
        .collect();
    let mut pods = Vec::new();
    for (cookie, cfg) in configs(dir) {
        pods.push(LegacyPodStatus {
            netns_cookie: cookie,
            pod: names.get(&cookie).cloned(),
            counters: counters(dir, cfg.pod_index)
                .into_iter()
                .map(|(c, v)| (c.name(), v))
                .collect(),
        });
    }
    let mut links: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("link_")
                .map(str::to_string)
        })
        .collect();
    links.sort();
    Ok(LegacyStatus {
        instance: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        error: None,
        record: record(dir),
        links,
        pods,
    })
}
