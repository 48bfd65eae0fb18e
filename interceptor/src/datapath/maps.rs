//! Typed handles on a datapath's pinned maps, and the writes that register a pod in them: its
//! configuration (by network-namespace cookie), its sets (under its rule-set id), its counter
//! slot, its record, the addresses inbound dispatch knows it by, its listeners.

use std::{
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::maps::{
    Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, SkStorage, SockHash,
    lpm_trie::Key as LpmKey,
};
use interceptor_ebpf::{
    AccelKey, CIDR_KEY_PREFIX_BITS, CaptureMark, Cidr4Key, Cidr6Key, CidrKey, CidrSet, Counter,
    IN_FLIGHT_CLOCK_SHIFT, INSTANCE_META_SIZE, InFlight4, InFlight6, InstanceMeta, ListenerKey,
    POD_RECORD_SIZE, PodConfig, PodRecordBlob, PortKey, PortSet, SockTuple4, SockTuple6, map_names,
    wire::{RawIpv4, RawIpv6, raw_ipv4, raw_ipv6},
};

use super::{plan::MapPlan, record::DatapathRecord};
use crate::{family::Family, sys};

/// `bpf_map_update_elem` flag: fail with EEXIST when the key is present.
const BPF_NOEXIST: u64 = 1;

/// Opens the map `name` pinned in `dir`.
pub fn open_pinned(dir: &Path, name: &str) -> anyhow::Result<Map> {
    let data = MapData::from_pin(dir.join(name)).with_context(|| format!("opening map {name}"))?;
    Ok(Map::from_map_data(data)?)
}

/// The size a pinned map was created with.
pub fn capacity(dir: &Path, name: &str) -> anyhow::Result<u32> {
    Ok(aya::maps::MapInfo::from_pin(dir.join(name))
        .with_context(|| format!("reading map {name}'s size"))?
        .max_entries())
}

/// Typed handles on a datapath's maps.
pub struct Maps {
    pod_config: HashMap<MapData, u64, PodConfig>,
    port_set: HashMap<MapData, PortKey, u8>,
    cidr4: LpmTrie<MapData, Cidr4Key, u8>,
    cidr6: LpmTrie<MapData, Cidr6Key, u8>,
    meta: Array<MapData, InstanceMeta>,
    records: HashMap<MapData, u64, PodRecordBlob>,
    slots: Array<MapData, u64>,
    addrs4: HashMap<MapData, RawIpv4, u64>,
    addrs6: HashMap<MapData, RawIpv6, u64>,
    listeners: SockHash<MapData, ListenerKey>,
    capture: SkStorage<MapData, CaptureMark>,
    counters: PerCpuArray<MapData, u64>,
    in_flight4: HashMap<MapData, SockTuple4, InFlight4>,
    in_flight6: HashMap<MapData, SockTuple6, InFlight6>,
    /// A pod's counters in `COUNTERS` as the datapath's creator laid them out: which of this
    /// build's counters each one is (`None`: one this build does not have).
    counter_layout: Vec<Option<Counter>>,
    /// Pods the datapath has slots for (the size of its configuration map).
    slots_count: u32,
    /// `--accelerate`'s paired sockets (read only: the kernel files and drops them).
    accel_sockets: SockHash<MapData, AccelKey>,
    /// The datapath directory (sizes are read from the pins).
    dir: PathBuf,
}

impl Maps {
    /// Opens the maps pinned in the datapath directory `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let open = |name: &str| open_pinned(dir, name);
        let slots_count = capacity(dir, map_names::POD_CONFIG)?;
        let mut maps = Maps {
            pod_config: HashMap::try_from(open(map_names::POD_CONFIG)?)?,
            port_set: HashMap::try_from(open(map_names::PORT_SET)?)?,
            cidr4: LpmTrie::try_from(open(map_names::CIDR4)?)?,
            cidr6: LpmTrie::try_from(open(map_names::CIDR6)?)?,
            meta: Array::try_from(open(map_names::INSTANCE_META)?)?,
            records: HashMap::try_from(open(map_names::POD_RECORDS)?)?,
            slots: Array::try_from(open(map_names::POD_SLOTS)?)?,
            addrs4: HashMap::try_from(open(map_names::POD_ADDRS4)?)?,
            addrs6: HashMap::try_from(open(map_names::POD_ADDRS6)?)?,
            listeners: SockHash::try_from(open(map_names::INBOUND_LISTENERS)?)?,
            capture: SkStorage::try_from(open(map_names::CAPTURE_SOCKETS)?)?,
            counters: PerCpuArray::try_from(open(map_names::COUNTERS)?)?,
            in_flight4: HashMap::try_from(open(map_names::IN_FLIGHT4)?)?,
            in_flight6: HashMap::try_from(open(map_names::IN_FLIGHT6)?)?,
            counter_layout: Counter::ALL.into_iter().map(Some).collect(),
            slots_count,
            accel_sockets: SockHash::try_from(open(map_names::ACCEL_SOCKETS)?)?,
            dir: dir.to_path_buf(),
        };
        maps.read_counter_layout();
        Ok(maps)
    }

    // --- pods' configurations -------------------------------------------------------------

    /// Every registered pod: (netns cookie, configuration).
    pub fn pod_configs(&self) -> anyhow::Result<Vec<(u64, PodConfig)>> {
        Ok(self.pod_config.iter().collect::<Result<_, _>>()?)
    }

    /// The configuration of the pod `cookie`, if registered.
    pub fn pod_config(&self, cookie: u64) -> anyhow::Result<Option<PodConfig>> {
        match self.pod_config.get(&cookie, 0) {
            Ok(c) => Ok(Some(c)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("reading a pod configuration"),
        }
    }

    /// Publishes a plan: one map write switches every lookup of the pod to it.
    pub fn publish(&mut self, plan: &MapPlan) -> anyhow::Result<()> {
        self.pod_config
            .insert(plan.netns_cookie, plan.pod, 0)
            .context("writing the pod configuration")
    }

    /// Unpublishes a pod: its connections go direct from this write on.
    pub fn remove_pod(&mut self, cookie: u64) -> anyhow::Result<()> {
        match self.pod_config.remove(&cookie) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(e) => Err(e).context("removing a pod configuration"),
        }
    }

    // --- sets ------------------------------------------------------------------------------

    /// Writes a plan's sets under its rule-set id (not live until `publish`).
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

    /// Removes every set entry of the rule-set ids `rules`.
    pub fn clear_rules(&mut self, rules: &[u32]) {
        let ports: Vec<PortKey> = self
            .port_set
            .keys()
            .filter_map(Result::ok)
            .filter(|k| rules.contains(&k.rules))
            .collect();
        for k in ports {
            let _ = self.port_set.remove(&k);
        }
        let cidrs: Vec<LpmKey<Cidr4Key>> = self
            .cidr4
            .keys()
            .filter_map(Result::ok)
            .filter(|k| rules.contains(&k.data().rules))
            .collect();
        for k in cidrs {
            let _ = self.cidr4.remove(&k);
        }
        let cidrs6: Vec<LpmKey<Cidr6Key>> = self
            .cidr6
            .keys()
            .filter_map(Result::ok)
            .filter(|k| rules.contains(&k.data().rules))
            .collect();
        for k in cidrs6 {
            let _ = self.cidr6.remove(&k);
        }
    }

    /// Whether the port set `set` of the rule-set id `rules` holds `port` (what the programs
    /// look up).
    pub fn has_port(&self, rules: u32, set: PortSet, port: u16) -> bool {
        let key = PortKey {
            rules,
            set: set as u16,
            port,
        };
        self.port_set.get(&key, 0).is_ok()
    }

    /// The value of the most specific IPv4 range of `set` holding `addr` (the programs' lookup).
    pub fn longest_match4(&self, rules: u32, set: CidrSet, addr: RawIpv4) -> Option<u8> {
        longest_match(&self.cidr4, rules, set, addr, 32)
    }

    /// The same for IPv6.
    pub fn longest_match6(&self, rules: u32, set: CidrSet, addr: RawIpv6) -> Option<u8> {
        longest_match(&self.cidr6, rules, set, addr, 128)
    }

    /// Every entry of the rule-set id `rules`: its ports, and its IPv4 and IPv6 ranges as
    /// (set, address, prefix length, value).
    pub fn rule_set(&self, rules: u32) -> RuleSetEntries {
        let ports = self
            .port_set
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.rules == rules)
            .collect();
        RuleSetEntries {
            ports,
            cidrs4: trie_entries(&self.cidr4, rules),
            cidrs6: trie_entries(&self.cidr6, rules),
        }
    }

    /// Whether the pod `cookie` has a capture listener of `family` registered.
    pub fn has_listener(&self, cookie: u64, family: Family) -> bool {
        self.listeners
            .keys()
            .filter_map(Result::ok)
            .any(|k| k.netns == cookie && k.family == family.af())
    }

    // --- counter slots ---------------------------------------------------------------------

    /// Reads the counter layout from the datapath's record; a datapath without one (being
    /// created now) has this build's.
    fn read_counter_layout(&mut self) {
        let names = self
            .datapath_record()
            .and_then(|json| serde_json::from_slice::<DatapathRecord>(&json).ok())
            .map(|r| r.counters)
            .unwrap_or_default();
        if !names.is_empty() {
            self.counter_layout = counter_layout(&names);
        }
    }

    /// Counters per pod in `COUNTERS`.
    fn counter_stride(&self) -> u32 {
        self.counter_layout.len() as u32
    }

    /// Where `counter` of the pod in `slot` is in `COUNTERS`, if the datapath has it.
    fn counter_index(&self, slot: u32, counter: Counter) -> Option<u32> {
        counter_index(&self.counter_layout, slot, counter)
    }

    /// Pods the datapath has slots for.
    pub fn slot_count(&self) -> anyhow::Result<u32> {
        Ok(self.slots_count)
    }

    /// A free slot, or none when every slot is in use (nothing is written: see `take_slot`).
    pub fn first_free_slot(&self) -> anyhow::Result<Option<u32>> {
        let slots = self.slot_count()?;
        for word in 0..slots.div_ceil(64) {
            let used = self.slots.get(&word, 0)?;
            if used == u64::MAX {
                continue;
            }
            let slot = word * 64 + used.trailing_ones();
            return Ok((slot < slots).then_some(slot));
        }
        Ok(None)
    }

    /// Takes the free slot `slot`, its counters zeroed.
    pub fn take_slot(&mut self, slot: u32) -> anyhow::Result<()> {
        let (word, bit) = (slot / 64, slot % 64);
        let used = self.slots.get(&word, 0)?;
        anyhow::ensure!(used & (1 << bit) == 0, "pod slot {slot} is taken already");
        self.zero_counters(slot)?;
        self.slots
            .set(word, used | (1 << bit), 0)
            .context("taking a pod slot")
    }

    /// Gives a slot back (once nothing of its pod is left in the sets).
    pub fn free_slot(&mut self, slot: u32) -> anyhow::Result<()> {
        let (word, bit) = (slot / 64, slot % 64);
        let used = self.slots.get(&word, 0)?;
        self.slots
            .set(word, used & !(1 << bit), 0)
            .context("freeing a pod slot")
    }

    /// The slots marked in use.
    pub fn used_slots(&self) -> anyhow::Result<Vec<u32>> {
        let mut out = Vec::new();
        for word in 0..self.slot_count()?.div_ceil(64) {
            let used = self.slots.get(&word, 0)?;
            out.extend(
                (0..64)
                    .filter(|b| used & (1 << b) != 0)
                    .map(|b| word * 64 + b),
            );
        }
        Ok(out)
    }

    /// A pod's counters that this build knows, summed over CPUs, in `Counter::ALL` order.
    pub fn pod_counters(&self, slot: u32) -> anyhow::Result<Vec<(Counter, u64)>> {
        let mut out = Vec::with_capacity(Counter::ALL.len());
        for c in Counter::ALL {
            if let Some(index) = self.counter_index(slot, c) {
                let per_cpu = self.counters.get(&index, 0)?;
                out.push((c, per_cpu.iter().sum()));
            }
        }
        Ok(out)
    }

    /// Adds counts to a slot's counters (a pod moving here from another datapath keeps
    /// counting where it was).
    pub fn add_counters(&mut self, slot: u32, counts: &[(Counter, u64)]) -> anyhow::Result<()> {
        for (c, add) in counts.iter().filter(|(_, v)| *v > 0) {
            let Some(index) = self.counter_index(slot, *c) else {
                continue; // a counter this datapath does not have
            };
            let mut values: Vec<u64> = self.counters.get(&index, 0)?.iter().copied().collect();
            if let Some(first) = values.first_mut() {
                *first += add;
            }
            let values = aya::maps::PerCpuValues::try_from(values)?;
            self.counters
                .set(index, values, 0)
                .context("carrying a pod's counters over")?;
        }
        Ok(())
    }

    fn zero_counters(&mut self, slot: u32) -> anyhow::Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        for i in 0..self.counter_stride() {
            let zeros = aya::maps::PerCpuValues::try_from(vec![0u64; cpus])?;
            self.counters
                .set(slot * self.counter_stride() + i, zeros, 0)
                .context("zeroing a pod's counters")?;
        }
        Ok(())
    }

    // --- records ---------------------------------------------------------------------------

    /// Every pod's record (JSON).
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

    /// The cookies that have a record (the records themselves not read).
    pub fn pod_record_cookies(&self) -> Vec<u64> {
        self.records.keys().filter_map(Result::ok).collect()
    }

    /// One pod's record (JSON), if any.
    pub fn pod_record(&self, cookie: u64) -> Option<Vec<u8>> {
        let blob = self.records.get(&cookie, 0).ok()?;
        Some(blob.json[..(blob.len as usize).min(POD_RECORD_SIZE)].to_vec())
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

    /// The datapath's own record (JSON), if written.
    pub fn datapath_record(&self) -> Option<Vec<u8>> {
        let meta = self.meta.get(&0, 0).ok()?;
        let len = (meta.len as usize).min(INSTANCE_META_SIZE);
        (len > 0).then(|| meta.json[..len].to_vec())
    }

    pub fn write_datapath_record(&mut self, json: &[u8]) -> anyhow::Result<()> {
        anyhow::ensure!(
            json.len() <= INSTANCE_META_SIZE,
            "datapath record too large"
        );
        let mut meta = InstanceMeta {
            len: json.len() as u32,
            json: [0; INSTANCE_META_SIZE],
        };
        meta.json[..json.len()].copy_from_slice(json);
        self.meta
            .set(0, meta, 0)
            .context("writing the datapath record")
    }

    // --- inbound dispatch by address -------------------------------------------------------

    /// The pod whose address `addr` is, for the shared `sk_lookup`.
    pub fn address_owner(&self, addr: std::net::IpAddr) -> Option<u64> {
        match addr {
            std::net::IpAddr::V4(a) => self.addrs4.get(&raw_ipv4(a.octets()), 0).ok(),
            std::net::IpAddr::V6(a) => self.addrs6.get(&raw_ipv6(a.octets()), 0).ok(),
        }
    }

    pub fn set_address_owner(&mut self, addr: std::net::IpAddr, cookie: u64) -> anyhow::Result<()> {
        let written = match addr {
            std::net::IpAddr::V4(a) => self.addrs4.insert(raw_ipv4(a.octets()), cookie, 0),
            std::net::IpAddr::V6(a) => self.addrs6.insert(raw_ipv6(a.octets()), cookie, 0),
        };
        written.with_context(|| format!("writing the pod's address {addr}"))
    }

    /// Forgets `addr` if it belongs to `cookie`.
    pub fn remove_address(&mut self, addr: std::net::IpAddr, cookie: u64) {
        if self.address_owner(addr) == Some(cookie) {
            let _ = match addr {
                std::net::IpAddr::V4(a) => self.addrs4.remove(&raw_ipv4(a.octets())),
                std::net::IpAddr::V6(a) => self.addrs6.remove(&raw_ipv6(a.octets())),
            };
        }
    }

    /// Forgets every address whose owner `keep` refuses.
    pub fn retain_addresses(&mut self, keep: impl Fn(u64) -> bool) {
        let gone4: Vec<RawIpv4> = self
            .addrs4
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, c)| !keep(*c))
            .map(|(a, _)| a)
            .collect();
        for a in gone4 {
            let _ = self.addrs4.remove(&a);
        }
        let gone6: Vec<RawIpv6> = self
            .addrs6
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, c)| !keep(*c))
            .map(|(a, _)| a)
            .collect();
        for a in gone6 {
            let _ = self.addrs6.remove(&a);
        }
    }

    // --- listeners -------------------------------------------------------------------------

    /// Marks `socket` as the pod's capture listener and registers it, unless one is registered
    /// already (the kernel's registration of a newer listener wins). True when registered.
    pub fn register_listener(
        &mut self,
        netns_cookie: u64,
        family: Family,
        socket: &OwnedFd,
    ) -> anyhow::Result<bool> {
        let key = ListenerKey {
            netns: netns_cookie,
            family: family.af(),
            _pad: 0,
        };
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

    /// Forgets a pod's registered capture listeners (both families).
    pub fn remove_listeners(&mut self, cookie: u64) {
        for family in Family::BOTH {
            let _ = self.listeners.remove(&ListenerKey {
                netns: cookie,
                family: family.af(),
                _pad: 0,
            });
        }
    }

    /// Registered capture listeners.
    pub fn listener_count(&self) -> usize {
        self.listeners.keys().count()
    }

    /// The pod's registered capture listeners (one per family at most). (A socket map's
    /// values cannot be read from user space; its keys can.)
    pub fn listeners_of(&self, cookie: u64) -> usize {
        self.listeners
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.netns == cookie)
            .count()
    }

    // --- connections in flight -------------------------------------------------------------

    /// Connections handed from an application to its proxy right now: (IPv4, IPv6).
    pub fn in_flight(&self) -> (usize, usize) {
        (
            self.in_flight4.keys().count(),
            self.in_flight6.keys().count(),
        )
    }

    /// Removes hand-overs older than `max_age_ns`: the proxy never took them (it never
    /// accepted the connection, and the client gave up). Returns how many went.
    pub fn sweep_in_flight(&mut self, max_age_ns: u64) -> usize {
        let now = sys::time::monotonic_ns() >> IN_FLIGHT_CLOCK_SHIFT;
        let max_age = max_age_ns >> IN_FLIGHT_CLOCK_SHIFT;
        let old = |since: u32| now.saturating_sub(u64::from(since)) > max_age;
        let stale4: Vec<SockTuple4> = self
            .in_flight4
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| old(v.since))
            .map(|(k, _)| k)
            .collect();
        let stale6: Vec<SockTuple6> = self
            .in_flight6
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| old(v.since))
            .map(|(k, _)| k)
            .collect();
        let n = stale4.len() + stale6.len();
        for k in stale4 {
            let _ = self.in_flight4.remove(&k);
        }
        for k in stale6 {
            let _ = self.in_flight6.remove(&k);
        }
        n
    }

    // --- what metrics and status show ------------------------------------------------------

    /// Entries and capacity of the shared maps: (name, entries, capacity).
    pub fn occupancy(&self) -> anyhow::Result<Vec<(&'static str, usize, u32)>> {
        let (in4, in6) = self.in_flight();
        let mut out = Vec::new();
        for (name, entries) in [
            (map_names::POD_CONFIG, self.pod_config.keys().count()),
            (map_names::PORT_SET, self.port_set.keys().count()),
            (map_names::CIDR4, self.cidr4.keys().count()),
            (map_names::CIDR6, self.cidr6.keys().count()),
            (map_names::IN_FLIGHT4, in4),
            (map_names::IN_FLIGHT6, in6),
            // Two per accelerated connection open now.
            (map_names::ACCEL_SOCKETS, self.accel_sockets.keys().count()),
        ] {
            out.push((name, entries, capacity(&self.dir, name)?));
        }
        Ok(out)
    }
}

/// The value of the most specific range of `set` under `rules` holding `addr` (of `bits`).
fn longest_match<A: Copy>(
    trie: &LpmTrie<MapData, CidrKey<A>, u8>,
    rules: u32,
    set: CidrSet,
    addr: A,
    bits: u32,
) -> Option<u8>
where
    CidrKey<A>: aya::Pod,
{
    let key = CidrKey {
        rules,
        set: set as u32,
        addr,
    };
    trie.get(&LpmKey::new(CIDR_KEY_PREFIX_BITS + bits, key), 0)
        .ok()
}

/// The entries of `rules` in one family's trie: (set, address, prefix length, value).
fn trie_entries<A: Copy>(
    trie: &LpmTrie<MapData, CidrKey<A>, u8>,
    rules: u32,
) -> Vec<(u32, A, u32, u8)>
where
    CidrKey<A>: aya::Pod,
{
    trie.iter()
        .filter_map(Result::ok)
        .filter(|(k, _)| k.data().rules == rules)
        .map(|(k, v)| {
            let d = k.data();
            (d.set, d.addr, k.prefix_len() - CIDR_KEY_PREFIX_BITS, v)
        })
        .collect()
}

/// The entries of one rule-set id (see `Maps::rule_set`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSetEntries {
    pub ports: Vec<PortKey>,
    /// (set, address, prefix length, value).
    pub cidrs4: Vec<(u32, RawIpv4, u32, u8)>,
    pub cidrs6: Vec<(u32, RawIpv6, u32, u8)>,
}

impl std::fmt::Debug for Maps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maps").field("dir", &self.dir).finish()
    }
}

/// Which of this build's counters each of a datapath's counters (by name, in their order) is.
fn counter_layout(names: &[String]) -> Vec<Option<Counter>> {
    names.iter().map(|n| Counter::from_name(n)).collect()
}

/// Where `counter` of the pod in `slot` is, in a `COUNTERS` map laid out as `layout`.
fn counter_index(layout: &[Option<Counter>], slot: u32, counter: Counter) -> Option<u32> {
    let i = layout.iter().position(|c| *c == Some(counter))?;
    Some(slot * layout.len() as u32 + i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_found_by_name_in_another_builds_layout() {
        let ours: Vec<String> = Counter::ALL.iter().map(|c| c.name().to_string()).collect();
        let layout = counter_layout(&ours);
        assert_eq!(
            counter_index(&layout, 3, Counter::OrigDstLost),
            Some(Counter::OrigDstLost.slot(3)),
            "this build's own layout is Counter::slot's"
        );
        // A build with one counter more (first) and one fewer (`redirected`).
        let mut theirs = vec!["a_counter_of_a_newer_build".to_string()];
        theirs.extend(
            ours.iter()
                .filter(|n| n.as_str() != Counter::Redirected.name())
                .cloned(),
        );
        let layout = counter_layout(&theirs);
        let stride = theirs.len() as u32;
        assert_eq!(layout[0], None);
        assert_eq!(counter_index(&layout, 2, Counter::Redirected), None);
        let lost = theirs
            .iter()
            .position(|n| n == Counter::OrigDstLost.name())
            .unwrap() as u32;
        assert_eq!(
            counter_index(&layout, 2, Counter::OrigDstLost),
            Some(2 * stride + lost)
        );
    }
}
