//! Typed handles on an instance's pinned maps, and the writes that put a `MapPlan` into them.

use std::{
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{
        Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, SkStorage, SockHash,
        lpm_trie::Key as LpmKey,
    },
};
use interceptor_ebpf::{
    CaptureMark, Cidr4Key, Cidr6Key, Counter, INSTANCE_META_SIZE, InstanceMeta, ListenerKey,
    POD_RECORD_SIZE, PodConfig, PodRecordBlob, PortKey, map_names,
};

use super::{plan::MapPlan, record::InstanceRecord};
use crate::family::Family;

/// `bpf_map_update_elem` flag: fail with EEXIST when the key is present.
const BPF_NOEXIST: u64 = 1;

/// Typed handles on an instance's persistent maps.
pub struct Maps {
    pod_config: HashMap<MapData, u64, PodConfig>,
    port_set: HashMap<MapData, PortKey, u8>,
    cidr4: LpmTrie<MapData, Cidr4Key, u8>,
    cidr6: LpmTrie<MapData, Cidr6Key, u8>,
    meta: Array<MapData, InstanceMeta>,
    listeners: SockHash<MapData, ListenerKey>,
    capture: SkStorage<MapData, CaptureMark>,
    records: HashMap<MapData, u64, PodRecordBlob>,
    counters: PerCpuArray<MapData, u64>,
    /// The instance directory (capacities are read from the pins).
    dir: PathBuf,
}

impl Maps {
    pub fn from_ebpf(ebpf: &mut Ebpf, dir: &Path) -> anyhow::Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the object"))
        };
        Ok(Maps {
            pod_config: HashMap::try_from(take(map_names::POD_CONFIG)?)?,
            port_set: HashMap::try_from(take(map_names::PORT_SET)?)?,
            cidr4: LpmTrie::try_from(take(map_names::CIDR4)?)?,
            cidr6: LpmTrie::try_from(take(map_names::CIDR6)?)?,
            meta: Array::try_from(take(map_names::INSTANCE_META)?)?,
            listeners: SockHash::try_from(take(map_names::INBOUND_LISTENERS)?)?,
            capture: SkStorage::try_from(take(map_names::CAPTURE_SOCKETS)?)?,
            records: HashMap::try_from(take(map_names::POD_RECORDS)?)?,
            counters: PerCpuArray::try_from(take(map_names::COUNTERS)?)?,
            dir: dir.to_path_buf(),
        })
    }

    /// The size a pinned map was created with.
    fn capacity(&self, name: &str) -> anyhow::Result<u32> {
        Ok(aya::maps::MapInfo::from_pin(self.dir.join(name))
            .with_context(|| format!("reading map {name}'s size"))?
            .max_entries())
    }

    pub fn pod_configs(&self) -> anyhow::Result<Vec<(u64, PodConfig)>> {
        Ok(self.pod_config.iter().collect::<Result<_, _>>()?)
    }

    /// Pods the `COUNTERS` map has room for.
    pub fn counter_slots(&self) -> anyhow::Result<u32> {
        Ok(self.capacity(map_names::COUNTERS)? / Counter::COUNT)
    }

    /// A pod's counters, summed over CPUs, in `Counter::ALL` order.
    pub fn pod_counters(&self, pod_index: u32) -> anyhow::Result<Vec<(Counter, u64)>> {
        let mut out = Vec::with_capacity(Counter::ALL.len());
        for c in Counter::ALL {
            let per_cpu = self.counters.get(&c.slot(pod_index), 0)?;
            out.push((c, per_cpu.iter().sum()));
        }
        Ok(out)
    }

    /// Zeroes a pod slot's counters (before the slot serves a new pod).
    pub fn zero_counters(&mut self, pod_index: u32) -> anyhow::Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        for c in Counter::ALL {
            let zeros = aya::maps::PerCpuValues::try_from(vec![0u64; cpus])?;
            self.counters
                .set(c.slot(pod_index), zeros, 0)
                .context("zeroing a pod's counters")?;
        }
        Ok(())
    }

    /// The daemon's JSON record of every registered pod.
    pub fn pod_records(&self) -> Vec<(u64, Vec<u8>)> {
        self.records
            .iter()
            .filter_map(Result::ok)
            .map(|(cookie, blob)| {
                let len = (blob.len as usize).min(POD_RECORD_SIZE);
                (cookie, blob.json[..len].to_vec())
            })
            .collect()
    }

    /// Stores a pod's record; `json` must fit (`POD_RECORD_SIZE`).
    pub fn write_pod_record(&mut self, cookie: u64, json: &[u8]) -> anyhow::Result<()> {
        anyhow::ensure!(json.len() <= POD_RECORD_SIZE, "pod record too large");
        let mut blob = PodRecordBlob {
            len: json.len() as u32,
            json: [0; POD_RECORD_SIZE],
        };
        blob.json[..json.len()].copy_from_slice(json);
        self.records
            .insert(cookie, blob, 0)
            .context("writing the pod record")
    }

    pub fn remove_pod_record(&mut self, cookie: u64) {
        let _ = self.records.remove(&cookie);
    }

    /// Forgets a pod's registered capture listener (IPv4 and IPv6 keys).
    pub fn remove_listeners(&mut self, cookie: u64) {
        for family in Family::BOTH {
            let _ = self.listeners.remove(&ListenerKey {
                netns: cookie,
                family: family.af(),
                _pad: 0,
            });
        }
    }

    /// Entries and capacity of a map pinned in the instance (for metrics).
    pub fn occupancy(&self) -> anyhow::Result<Vec<(&'static str, usize, u32)>> {
        Ok(vec![
            (
                map_names::POD_CONFIG,
                self.pod_config.keys().count(),
                self.capacity(map_names::POD_CONFIG)?,
            ),
            (
                map_names::PORT_SET,
                self.port_set.keys().count(),
                self.capacity(map_names::PORT_SET)?,
            ),
            (
                map_names::CIDR4,
                self.cidr4.keys().count(),
                self.capacity(map_names::CIDR4)?,
            ),
            (
                map_names::CIDR6,
                self.cidr6.keys().count(),
                self.capacity(map_names::CIDR6)?,
            ),
        ])
    }
}

impl Maps {
    pub fn write_sets(&mut self, plan: &MapPlan) -> anyhow::Result<()> {
        for key in &plan.ports {
            self.port_set
                .insert(key, 1, 0)
                .with_context(|| format!("writing port {} to {}", key.port, map_names::PORT_SET))?;
        }
        for e in &plan.cidrs4 {
            self.cidr4
                .insert(&LpmKey::new(e.prefix_len, e.key), e.value, 0)
                .with_context(|| format!("writing a CIDR to {}", map_names::CIDR4))?;
        }
        for e in &plan.cidrs6 {
            self.cidr6
                .insert(&LpmKey::new(e.prefix_len, e.key), e.value, 0)
                .with_context(|| format!("writing a CIDR to {}", map_names::CIDR6))?;
        }
        Ok(())
    }

    pub fn publish(&mut self, plan: &MapPlan) -> anyhow::Result<()> {
        self.pod_config
            .insert(plan.netns_cookie, plan.pod, 0)
            .context("writing the pod configuration")
    }

    pub fn remove_pod(&mut self, cookie: u64) -> anyhow::Result<()> {
        self.pod_config
            .remove(&cookie)
            .context("removing a stale pod configuration")
    }

    pub fn clear_rules(&mut self, rules: u32) -> anyhow::Result<()> {
        let ports: Vec<PortKey> = self
            .port_set
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.rules == rules)
            .collect();
        for k in ports {
            let _ = self.port_set.remove(&k);
        }
        let cidrs: Vec<LpmKey<Cidr4Key>> = self
            .cidr4
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.data().rules == rules)
            .collect();
        for k in cidrs {
            let _ = self.cidr4.remove(&k);
        }
        let cidrs6: Vec<LpmKey<Cidr6Key>> = self
            .cidr6
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.data().rules == rules)
            .collect();
        for k in cidrs6 {
            let _ = self.cidr6.remove(&k);
        }
        Ok(())
    }

    /// Marks `socket` as the pod's capture listener and registers it, unless one is registered
    /// already (the kernel's registration of a newer listener wins). True when registered.
    pub fn register_listener(
        &mut self,
        netns_cookie: u64,
        family: Family,
        socket: &OwnedFd,
    ) -> anyhow::Result<bool> {
        use std::os::fd::AsRawFd as _;
        let key = ListenerKey {
            netns: netns_cookie,
            family: family.af(),
            _pad: 0,
        };
        if self.listeners.get(&key, 0).is_ok() {
            return Ok(false);
        }
        let mark = CaptureMark {
            netns: netns_cookie,
        };
        self.capture
            .insert(socket, mark, 0)
            .context("marking the listener")?;
        match self.listeners.insert(key, socket.as_raw_fd(), BPF_NOEXIST) {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                Ok(false)
            }
            Err(e) => Err(e).context("registering the listener"),
        }
    }

    pub fn write_record(&mut self, record: &InstanceRecord) -> anyhow::Result<()> {
        let mut json = serde_json::to_vec(record)?;
        if json.len() > INSTANCE_META_SIZE {
            let mut short = record.clone();
            short.config = serde_json::json!({
                "note": "configuration too large to record; see the maps",
            });
            json = serde_json::to_vec(&short)?;
        }
        let mut meta = InstanceMeta {
            len: json.len() as u32,
            json: [0; INSTANCE_META_SIZE],
        };
        meta.json[..json.len()].copy_from_slice(&json);
        self.meta
            .set(0, meta, 0)
            .context("writing the instance record")
    }
}

pub fn open_pinned(dir: &Path, name: &str) -> anyhow::Result<Map> {
    let data = MapData::from_pin(dir.join(name)).with_context(|| format!("opening map {name}"))?;
    Ok(Map::from_map_data(data)?)
}
