//! What `status` and the node's metrics read back from the pins: each datapath's record,
//! programs (with their run statistics) and map occupancy; each pod's record, links, state and
//! counters; version 0.1's instances as they are.

use std::{collections::BTreeMap, fs, path::Path};

use anyhow::Context as _;
use interceptor_ebpf::{Counter, PodConfig, program_names};
use serde::Serialize;

use super::{
    Datapath, DatapathRecord, InstanceMode, PodRecord,
    bpffs::{self, PodDir},
    legacy::{self, LegacyStatus},
    links::{self, link_pin},
    pods::liveness,
};
use crate::{
    config::RawOptions,
    sys::{bpf, fs::lock_dir_shared},
};

/// Everything on the node.
#[derive(Debug, Default, Serialize)]
pub struct Status {
    pub datapaths: Vec<DatapathStatus>,
    pub pods: Vec<PodStatus>,
    /// Version 0.1's instances.
    pub legacy: Vec<LegacyStatus>,
}

#[derive(Debug, Default, Serialize)]
pub struct DatapathStatus {
    /// `datapath-<key>`.
    pub datapath: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub record: Option<DatapathRecord>,
    /// Every pinned program, by build (run statistics only while `kernel.bpf_stats_enabled`
    /// is 1 or a daemon runs with `--bpf-stats`).
    pub programs: Vec<BuildPrograms>,
    /// Node mode: the cgroups whose pods the daemon's links cover.
    pub nodes: Vec<NodeStatus>,
    /// (map, entries, capacity)
    pub maps: Vec<(&'static str, usize, u32)>,
    pub inbound_listeners: usize,
    /// Connections handed from an application to its proxy right now.
    pub connections_in_flight: usize,
    /// Nothing is enrolled in it any more (a loader killed before its first pod, or every pod
    /// gone): the next `init`, `clean` or daemon sweep removes it.
    pub unused: bool,
}

#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub cgroup_id: u64,
    pub links: Vec<String>,
}

/// One build's programs (`prog-<build>-<log level>`), or a pod's own `sk_lookup`
/// (`pod <cookie>`).
#[derive(Clone, Debug, Serialize)]
pub struct BuildPrograms {
    pub build: String,
    pub programs: Vec<ProgramStats>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProgramStats {
    /// The program's name (`redirect_connect4`, ...).
    pub name: String,
    pub id: u32,
    pub run_count: u64,
    pub run_time_ns: u64,
    pub avg_ns: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct PodStatus {
    pub datapath: String,
    /// Node mode: `namespace/name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub mode: InstanceMode,
    pub cgroup: String,
    pub cgroup_id: u64,
    pub netns: String,
    pub netns_cookie: u64,
    /// `active`; `gone: <why>` for a pod whose cgroup or namespace is gone; `incomplete: ..`
    /// for a registration cut short (its `init` or daemon killed before it published the
    /// pod's configuration, the last step). Neither intercepts anything; the next `init`,
    /// `clean` or daemon sweep reclaims them.
    pub state: String,
    pub links: Vec<String>,
    pub pod_index: u32,
    pub rules: u32,
    pub own_sk_lookup: bool,
    /// The proxy's inbound capture listeners registered (one per family).
    pub inbound_listeners: usize,
    pub options: Option<RawOptions>,
    pub config: Option<serde_json::Value>,
    pub counters: BTreeMap<&'static str, u64>,
}

/// Reads everything under the bpffs root `root`.
pub fn status(root: &Path) -> anyhow::Result<Status> {
    let base = bpffs::interceptor_dir(root);
    if !bpffs::is_mounted(root) || !base.exists() {
        return Ok(Status::default());
    }
    // Shared lock: no writer is half-way through while this reads.
    let _lock = lock_dir_shared(&base).with_context(|| format!("locking {}", base.display()))?;
    let mut out = Status {
        legacy: legacy::list(&base),
        ..Status::default()
    };
    for dir in bpffs::datapath_dirs(&base) {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match Datapath::existing(&dir) {
            Ok(dp) => {
                out.datapaths.push(dp.describe(&name)?);
                out.pods.extend(dp.pods(&name)?);
            }
            Err(e) => out.datapaths.push(DatapathStatus {
                datapath: name,
                error: Some(format!("{e:#}")),
                ..DatapathStatus::default()
            }),
        }
    }
    Ok(out)
}

fn link_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix("link_")
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

impl Datapath {
    fn describe(&self, name: &str) -> anyhow::Result<DatapathStatus> {
        let (in4, in6) = self.maps.in_flight();
        Ok(DatapathStatus {
            datapath: name.to_string(),
            error: None,
            record: self
                .maps
                .datapath_record()
                .and_then(|json| serde_json::from_slice(&json).ok()),
            programs: self.program_stats(),
            nodes: bpffs::node_dirs(&self.dir)
                .into_iter()
                .map(|(cgroup_id, dir)| NodeStatus {
                    cgroup_id,
                    links: link_names(&dir),
                })
                .collect(),
            maps: self.maps.occupancy()?,
            inbound_listeners: self.maps.listener_count(),
            connections_in_flight: in4 + in6,
            unused: Datapath::is_unused(&self.dir),
        })
    }

    /// Every pod with its record, state and counters.
    pub fn pods(&self, datapath: &str) -> anyhow::Result<Vec<PodStatus>> {
        let configs: BTreeMap<u64, PodConfig> = self.maps.pod_configs()?.into_iter().collect();
        let mut out = Vec::new();
        for pod in bpffs::pod_dirs(&self.dir) {
            let cookie = pod.cookie();
            let record = self.pod_record(cookie).unwrap_or_default();
            let config = configs.get(&cookie);
            let dir = pod.path(&self.dir);
            let state = match (config, liveness(&dir, pod)) {
                (None, _) => "incomplete: its registration was cut short before it was \
                              published (nothing of it intercepts; the next init, clean or \
                              daemon sweep removes it)"
                    .to_string(),
                (Some(_), Err(why)) => format!("gone: {why}"),
                (Some(_), Ok(())) => "active".to_string(),
            };
            let slot = config.map_or(record.pod_index, |c| c.pod_index);
            let counters = self
                .maps
                .pod_counters(slot)
                .map(|cs| cs.into_iter().map(|(c, v)| (c.name(), v)).collect())
                .unwrap_or_default();
            out.push(PodStatus {
                datapath: datapath.to_string(),
                pod: (!record.name.is_empty())
                    .then(|| format!("{}/{}", record.namespace, record.name)),
                mode: match pod {
                    PodDir::Init { .. } => InstanceMode::Pod,
                    PodDir::Node { .. } => InstanceMode::Node,
                },
                cgroup: record.cgroup.clone(),
                cgroup_id: match pod {
                    PodDir::Init { cgroup_id, .. } => cgroup_id,
                    PodDir::Node { .. } => record.cgroup_id,
                },
                netns: record.netns.clone(),
                netns_cookie: cookie,
                state,
                links: link_names(&dir),
                pod_index: slot,
                rules: config.map_or(0, |c| c.rules),
                own_sk_lookup: record.own_sk_lookup,
                inbound_listeners: self.maps.listeners_of(cookie),
                options: record.options.clone(),
                config: record.config.clone(),
                counters,
            });
        }
        Ok(out)
    }

    /// Run statistics of every pinned program of this datapath, and of the pods' own
    /// `sk_lookup` copies.
    pub fn program_stats(&self) -> Vec<BuildPrograms> {
        let mut out = Vec::new();
        for dir in bpffs::programs_dirs(&self.dir) {
            let build = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let programs = super::object::every_program()
                .filter_map(|name| {
                    let fd = bpf::obj_get(&dir.join(name)).ok()?;
                    Some(stats(name, bpf::prog_info(&fd).ok()?))
                })
                .collect();
            out.push(BuildPrograms { build, programs });
        }
        for pod in bpffs::pod_dirs(&self.dir) {
            if !self
                .pod_record(pod.cookie())
                .is_some_and(|r| r.own_sk_lookup)
            {
                continue;
            }
            let pin = link_pin(&pod.path(&self.dir), program_names::SK_LOOKUP);
            if let Ok(link) = links::info(&pin)
                && let Ok(fd) = bpf::prog_fd_by_id(link.prog_id)
                && let Ok(info) = bpf::prog_info(&fd)
            {
                out.push(BuildPrograms {
                    build: format!("pod {}", pod.cookie()),
                    programs: vec![stats(program_names::SK_LOOKUP, info)],
                });
            }
        }
        out
    }

    /// Every registered pod: its record, configuration and counters.
    pub fn registered(&self) -> anyhow::Result<Vec<Registration>> {
        let mut out = Vec::new();
        for (cookie, config) in self.maps.pod_configs()? {
            let mut record = self.pod_record(cookie).unwrap_or_default();
            record.netns_cookie = cookie;
            record.pod_index = config.pod_index;
            let counters = self.maps.pod_counters(config.pod_index)?;
            out.push((record, config, counters));
        }
        Ok(out)
    }
}

/// A registered pod: its record, configuration and counters.
pub type Registration = (PodRecord, PodConfig, Vec<(Counter, u64)>);

fn stats(name: &str, info: bpf::ProgInfo) -> ProgramStats {
    ProgramStats {
        name: name.to_string(),
        id: info.id,
        run_count: info.run_count,
        run_time_ns: info.run_time_ns,
        avg_ns: (info.run_count > 0 && info.run_time_ns > 0)
            .then(|| info.run_time_ns / info.run_count),
    }
}
