//! Loads the kernel programs, fills the maps, attaches all-or-nothing, and pins the result;
//! re-runs swap programs in place (bpf link update) and publish a new configuration with one
//! map write; `clean` takes it all away. An instance whose maps an older build laid out
//! differently cannot be updated in place: a new one is attached beside it, then the old one
//! goes.

use std::{
    fs,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, SkStorage, SockHash,
        lpm_trie::Key as LpmKey,
    },
};
use interceptor_ebpf::{
    CaptureMark, Cidr4Key, Cidr6Key, Counter, INSTANCE_META_SIZE, InstanceMeta, ListenerKey,
    POD_NETNS_COOKIE_GLOBAL, POD_RECORD_SIZE, PodConfig, PodRecordBlob, PortKey, flags, map_names,
    program_names,
};
use serde::{Deserialize, Serialize};

use crate::{
    bpffs, cgroup::Cgroup, error::TargetError, listeners, netns::Netns, rules::MapPlan, sys,
};

/// The compiled kernel programs.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/interceptor-ebpf"));

/// Maps that live in the instance directory and survive re-runs and program upgrades.
const PERSISTENT_MAPS: [&str; 15] = [
    map_names::POD_CONFIG,
    map_names::PORT_SET,
    map_names::CIDR4,
    map_names::ORIG_DST_BY_COOKIE,
    map_names::ORIG_DST_BY_TUPLE,
    map_names::COUNTERS,
    map_names::INSTANCE_META,
    map_names::UDP_ORIG_DST,
    map_names::INBOUND_LISTENERS,
    map_names::CAPTURE_SOCKETS,
    map_names::CIDR6,
    map_names::ORIG_DST6_BY_COOKIE,
    map_names::ORIG_DST6_BY_TUPLE,
    map_names::POD_RECORDS,
    map_names::UDP_ORIG_DST6,
];

/// The programs attached to a cgroup (all but `sk_lookup`, which goes to a network
/// namespace), in attach order.
pub fn cgroup_programs() -> Vec<&'static str> {
    program_names::ALL
        .into_iter()
        .filter(|p| *p != program_names::SK_LOOKUP)
        .collect()
}

/// Address families of `ListenerKey`.
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// `bpf_map_update_elem` flag: fail with EEXIST when the key is present.
const BPF_NOEXIST: u64 = 1;

/// Rule-set ids alternate between these two in a single-pod instance.
const RULES_A: u32 = 1;
const RULES_B: u32 = 2;

/// How to load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Where bpffs is (mounted if it is not).
    pub bpffs_root: PathBuf,
    /// Size of each connection map (entries); LRU eviction beyond.
    pub max_connections: u32,
    /// aya-log level compiled into the programs' view (0 = off ... 5 = trace).
    pub kernel_log_level: u8,
}

/// Who manages an instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceMode {
    /// `interceptor init`: one pod's cgroup and network namespace.
    #[default]
    Pod,
    /// `interceptor daemon`: a parent cgroup, pods registered over the daemon's socket.
    Node,
}

/// What `init` (or the daemon) records about an instance, for `status` (the programs never
/// read it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Absent in records of versions before node mode: those are `init`'s.
    #[serde(default)]
    pub mode: InstanceMode,
    pub version: String,
    pub cgroup: String,
    pub cgroup_id: u64,
    pub netns: String,
    pub netns_inode: u64,
    pub netns_cookie: u64,
    pub updated_unix: u64,
    /// The effective configuration (CIDR lists are cut short when they would not fit).
    pub config: serde_json::Value,
    /// What `--redirect-dns` captures (from the pod's resolv.conf).
    #[serde(default)]
    pub dns_capture: serde_json::Value,
}

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

pub(crate) fn link_pin(dir: &Path, program: &str) -> PathBuf {
    dir.join(format!("link_{program}"))
}

/// The mode recorded in an instance's metadata (`Pod` when unreadable: only `init` made
/// instances before node mode existed).
pub(crate) fn instance_mode(dir: &Path) -> InstanceMode {
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
pub(crate) enum Existing {
    /// Nothing attached: no directory, or the pins of a run that failed before attaching.
    Nothing,
    /// An instance this build updates in place (adding the links of programs it lacks).
    Current,
    /// An attached instance whose maps this build's programs cannot use, and why.
    Outdated(String),
}

pub(crate) fn inspect_existing(dir: &Path) -> anyhow::Result<Existing> {
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
        let want = expected_layout(name)?;
        let have = (info.key_size(), info.value_size());
        if have != want {
            return Ok(Existing::Outdated(format!(
                "its map {name} has (key, value) sizes {have:?}, this build's {want:?}"
            )));
        }
    }
    Ok(Existing::Current)
}

/// (key size, value size) of a map as the programs this build carries declare it.
fn expected_layout(name: &str) -> anyhow::Result<(u32, u32)> {
    static OBJECT: OnceLock<Result<aya_obj::Object, String>> = OnceLock::new();
    let object = OBJECT
        .get_or_init(|| aya_obj::Object::parse(EBPF_OBJECT).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| anyhow!("parsing the kernel programs' object: {e}"))?;
    let map = object
        .maps
        .get(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))?;
    Ok((map.key_size(), map.value_size()))
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
    let _lock = sys::lock_dir(&root).with_context(|| format!("locking {}", root.display()))?;
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
pub(crate) fn discard_new_instance(root: &Path, dir: &Path) {
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
    let mut ebpf = load(dir, opts, 1, record.netns_cookie, &program_names::ALL)?;
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
        install(&ebpf, dir, &program_names::ALL, target)?;
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
        install(&ebpf, dir, &program_names::ALL, target)?;
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

/// Registers the capture listeners (one per address family) the proxy opened before the
/// programs were attached. Best effort: without it, inbound capture starts when the proxy next
/// listens.
pub(crate) fn register_existing_listener(writer: &mut Maps, netns: &Netns, plan: &MapPlan) {
    let pod = plan.pod;
    let found = listeners::find_existing(netns, pod.inbound_capture_port, |uid, gid| {
        pod.is_proxy_uid(uid) || gid.is_some_and(|g| pod.is_proxy_gid(g))
    });
    let found = match found {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(
                error = %format!("{e:#}"),
                "cannot look for an existing inbound listener"
            );
            return;
        }
    };
    if found.is_empty() {
        tracing::debug!(
            port = pod.inbound_capture_port,
            "no proxy listener yet: it registers when it listens"
        );
    }
    for l in found {
        let family = l.socket.family;
        match writer.register_listener(plan.netns_cookie, family, &l.fd) {
            Ok(true) => tracing::info!(
                pid = l.pid,
                uid = l.socket.uid,
                port = pod.inbound_capture_port,
                family = family.name(),
                "registered the proxy's existing inbound listener"
            ),
            Ok(false) => {} // the kernel registered one already
            Err(e) => tracing::warn!(
                pid = l.pid,
                family = family.name(),
                error = %format!("{e:#}"),
                "cannot register the proxy's existing inbound listener"
            ),
        }
    }
}

/// Where a program attaches.
#[derive(Clone, Copy)]
pub(crate) enum Target<'a> {
    Cgroup(&'a Cgroup),
    Netns(&'a Netns),
}

/// Puts `ebpf`'s programs `names` behind the links pinned in `dir`: a pinned link gets the new
/// program in place (`BPF_LINK_UPDATE`: no moment without a program); a missing one is attached
/// (an instance made by an earlier version without that hook, or a new instance). New links
/// are pinned only once every program is in, so a failure leaves none of them attached.
pub(crate) fn install<'a>(
    ebpf: &Ebpf,
    dir: &Path,
    names: &[&str],
    target: impl Fn(&str) -> Target<'a>,
) -> anyhow::Result<()> {
    let mut new = Vec::new();
    for &name in names {
        let pin = link_pin(dir, name);
        if pin.exists() {
            replace_program(ebpf, name, &pin)?;
        } else {
            new.push((name, attach(ebpf, name, target(name))?));
        }
    }
    for (name, link) in &new {
        sys::bpf_obj_pin(link, &link_pin(dir, name))
            .with_context(|| format!("pinning the link of {name}"))?;
    }
    Ok(())
}

/// Swaps the program behind the link pinned at `pin` for `ebpf`'s `name`.
pub(crate) fn replace_program(ebpf: &Ebpf, name: &str, pin: &Path) -> anyhow::Result<()> {
    let link =
        sys::bpf_obj_get(pin).with_context(|| format!("opening the pinned link of {name}"))?;
    let prog = ebpf
        .program(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?;
    sys::bpf_link_update(&link, prog.fd().context("program fd")?)
        .with_context(|| format!("replacing program {name} in its link"))
}

/// Loads the object with the instance's maps (pinned in `dir`, created there on first use,
/// sized for `pods` pods) and the programs `programs` into the kernel. `netns_cookie` is the
/// constant `sk_lookup` carries (0 when it is not loaded).
pub(crate) fn load(
    dir: &Path,
    opts: &LoadOptions,
    pods: u32,
    netns_cookie: u64,
    programs: &[&str],
) -> anyhow::Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    for name in PERSISTENT_MAPS {
        loader.map_pin_path(name, dir.join(name));
    }
    loader
        .map_max_entries(map_names::ORIG_DST_BY_COOKIE, opts.max_connections)
        .map_max_entries(map_names::ORIG_DST_BY_TUPLE, opts.max_connections)
        .map_max_entries(map_names::COUNTERS, Counter::COUNT * pods)
        .map_max_entries(map_names::POD_CONFIG, pods.max(4))
        .map_max_entries(map_names::POD_RECORDS, pods.max(4))
        .map_max_entries(map_names::PORT_SET, 4 * 65536)
        .map_max_entries(map_names::CIDR4, 1 << 18)
        .map_max_entries(map_names::ORIG_DST6_BY_COOKIE, opts.max_connections)
        .map_max_entries(map_names::ORIG_DST6_BY_TUPLE, opts.max_connections)
        .map_max_entries(map_names::CIDR6, 1 << 18)
        .map_max_entries(map_names::INBOUND_LISTENERS, (2 * pods).max(8))
        .override_global("AYA_LOG_LEVEL", &opts.kernel_log_level, false)
        .override_global(POD_NETNS_COOKIE_GLOBAL, &netns_cookie, true);
    let mut ebpf = loader.load(EBPF_OBJECT).context(
        "loading the kernel programs (needs Linux >= 5.14 with cgroup BPF, sockops and BTF)",
    )?;
    for name in programs {
        load_program(&mut ebpf, name)?;
    }
    Ok(ebpf)
}

fn load_program(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<()> {
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?;
    let loaded = match prog {
        aya::programs::Program::CgroupSockAddr(p) => p.load(),
        aya::programs::Program::SockOps(p) => p.load(),
        aya::programs::Program::CgroupSockopt(p) => p.load(),
        aya::programs::Program::CgroupSock(p) => p.load(),
        aya::programs::Program::SkLookup(p) => p.load(),
        other => bail!("unexpected program type {:?} for {name}", other.prog_type()),
    };
    loaded.with_context(|| format!("the kernel refused program {name}"))
}

/// The attach type of each program (`bpf_attach_type`).
fn attach_type(program: &str) -> u32 {
    match program {
        program_names::SOCKOPS => 3,       // BPF_CGROUP_SOCK_OPS
        program_names::GETSOCKOPT => 21,   // BPF_CGROUP_GETSOCKOPT
        program_names::GETPEERNAME4 => 29, // BPF_CGROUP_INET4_GETPEERNAME
        program_names::GETPEERNAME6 => 30, // BPF_CGROUP_INET6_GETPEERNAME
        program_names::RECVMSG4 => 19,     // BPF_CGROUP_UDP4_RECVMSG
        program_names::RECVMSG6 => 20,     // BPF_CGROUP_UDP6_RECVMSG
        program_names::SENDMSG4 => 14,     // BPF_CGROUP_UDP4_SENDMSG
        program_names::SENDMSG6 => 15,     // BPF_CGROUP_UDP6_SENDMSG
        program_names::CONNECT4 => 10,     // BPF_CGROUP_INET4_CONNECT
        program_names::CONNECT6 => 11,     // BPF_CGROUP_INET6_CONNECT
        program_names::POST_BIND4 => 12,   // BPF_CGROUP_INET4_POST_BIND
        program_names::POST_BIND6 => 13,   // BPF_CGROUP_INET6_POST_BIND
        program_names::SK_LOOKUP => 36,    // BPF_SK_LOOKUP (a network namespace)
        other => unreachable!("no attach type for {other}"),
    }
}

/// Attaches one program to its cgroup (or, `sk_lookup`, network namespace) with a bpf link
/// (detached when its last fd or pin goes).
pub(crate) fn attach(ebpf: &Ebpf, name: &str, target: Target) -> anyhow::Result<OwnedFd> {
    // A link always runs beside other programs of the cgroup or namespace (a runtime's, a
    // CNI's); the kernel takes no flags for it.
    let prog = ebpf
        .program(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?;
    let prog = prog.fd().context("program fd")?;
    match target {
        Target::Netns(netns) => sys::bpf_link_create(prog, &netns.file, attach_type(name), 0)
            .map_err(|e| {
                anyhow!(
                    "attaching {name} to the network namespace {}: {e} (sk_lookup needs Linux >= 5.9)",
                    netns.path.display()
                )
            }),
        Target::Cgroup(cgroup) => {
            sys::bpf_link_create_cgroup(prog, &cgroup.dir, attach_type(name), 0).map_err(|e| {
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

/// Removes an instance: links first, connect4 before the programs that serve redirected
/// connections, then the maps. Returns false when there was nothing to remove.
pub fn remove_instance(root: &Path, cgroup_id: u64) -> anyhow::Result<bool> {
    let base = bpffs::interceptor_dir(root);
    let dir = base.join(bpffs::instance_name(cgroup_id));
    if !dir.exists() {
        return Ok(false);
    }
    let _lock = sys::lock_dir(&base).with_context(|| format!("locking {}", base.display()))?;
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
pub(crate) fn remove_if_empty(base: &Path) {
    let _ = fs::remove_dir(base);
}

pub(crate) fn remove_instance_dir(dir: &Path) -> anyhow::Result<()> {
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
    pub(crate) fn from_ebpf(ebpf: &mut Ebpf, dir: &Path) -> anyhow::Result<Self> {
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

    pub(crate) fn pod_configs(&self) -> anyhow::Result<Vec<(u64, PodConfig)>> {
        Ok(self.pod_config.iter().collect::<Result<_, _>>()?)
    }

    /// Pods the `COUNTERS` map has room for.
    pub(crate) fn counter_slots(&self) -> anyhow::Result<u32> {
        Ok(self.capacity(map_names::COUNTERS)? / Counter::COUNT)
    }

    /// A pod's counters, summed over CPUs, in `Counter::ALL` order.
    pub(crate) fn pod_counters(&self, pod_index: u32) -> anyhow::Result<Vec<(Counter, u64)>> {
        let mut out = Vec::with_capacity(Counter::ALL.len());
        for c in Counter::ALL {
            let per_cpu = self.counters.get(&c.slot(pod_index), 0)?;
            out.push((c, per_cpu.iter().sum()));
        }
        Ok(out)
    }

    /// Zeroes a pod slot's counters (before the slot serves a new pod).
    pub(crate) fn zero_counters(&mut self, pod_index: u32) -> anyhow::Result<()> {
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
    pub(crate) fn pod_records(&self) -> Vec<(u64, Vec<u8>)> {
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
    pub(crate) fn write_pod_record(&mut self, cookie: u64, json: &[u8]) -> anyhow::Result<()> {
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

    pub(crate) fn remove_pod_record(&mut self, cookie: u64) {
        let _ = self.records.remove(&cookie);
    }

    /// Forgets a pod's registered capture listener (IPv4 and IPv6 keys).
    pub(crate) fn remove_listeners(&mut self, cookie: u64) {
        for family in [AF_INET, AF_INET6] {
            let _ = self.listeners.remove(&ListenerKey {
                netns: cookie,
                family,
                _pad: 0,
            });
        }
    }

    /// Entries and capacity of a map pinned in the instance (for metrics).
    pub(crate) fn occupancy(&self) -> anyhow::Result<Vec<(&'static str, usize, u32)>> {
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
    pub(crate) fn write_sets(&mut self, plan: &MapPlan) -> anyhow::Result<()> {
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

    pub(crate) fn publish(&mut self, plan: &MapPlan) -> anyhow::Result<()> {
        self.pod_config
            .insert(plan.netns_cookie, plan.pod, 0)
            .context("writing the pod configuration")
    }

    pub(crate) fn remove_pod(&mut self, cookie: u64) -> anyhow::Result<()> {
        self.pod_config
            .remove(&cookie)
            .context("removing a stale pod configuration")
    }

    pub(crate) fn clear_rules(&mut self, rules: u32) -> anyhow::Result<()> {
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
    fn register_listener(
        &mut self,
        netns_cookie: u64,
        family: listeners::Family,
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

    pub(crate) fn write_record(&mut self, record: &InstanceRecord) -> anyhow::Result<()> {
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
pub(crate) fn program_stats(dir: &Path) -> anyhow::Result<Vec<ProgramStats>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)?.filter_map(Result::ok) {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(name) = file.strip_prefix("link_") else {
            continue;
        };
        let link = sys::bpf_obj_get(&entry.path())
            .with_context(|| format!("opening the pinned link {file}"))?;
        ids.push((name.to_string(), sys::bpf_link_info(&link)?.prog_id));
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
    let _lock =
        sys::lock_dir_shared(&base).with_context(|| format!("locking {}", base.display()))?;
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

pub(crate) fn open_pinned(dir: &Path, name: &str) -> anyhow::Result<Map> {
    let data = MapData::from_pin(dir.join(name)).with_context(|| format!("opening map {name}"))?;
    Ok(Map::from_map_data(data)?)
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
pub(crate) fn connection_map_occupancy(
    dir: &Path,
) -> anyhow::Result<Vec<(&'static str, usize, u32)>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn the_object_declares_every_persistent_map_with_the_model_layouts() {
        for name in PERSISTENT_MAPS {
            expected_layout(name).unwrap();
        }
        // What `init` compares a pinned instance's maps against.
        assert_eq!(
            expected_layout(map_names::POD_CONFIG).unwrap(),
            (8, size_of::<PodConfig>() as u32)
        );
        assert_eq!(
            expected_layout(map_names::ORIG_DST6_BY_TUPLE).unwrap(),
            (
                size_of::<interceptor_ebpf::SockTuple6>() as u32,
                size_of::<interceptor_ebpf::OrigDst6>() as u32
            )
        );
        // LPM keys carry the prefix length in front of the data.
        assert_eq!(
            expected_layout(map_names::CIDR6).unwrap(),
            (4 + size_of::<Cidr6Key>() as u32, 1)
        );
    }

    #[test]
    fn a_replacement_is_built_beside_the_instance() {
        assert_eq!(
            staging_dir(Path::new("/sys/fs/bpf/interceptor/cgroup-42")),
            Path::new("/sys/fs/bpf/interceptor/cgroup-42-new")
        );
    }
}
