//! The kernel programs this build carries: the object, what identifies it (its build, and the
//! layout of its maps), and loading it (maps pinned where the datapath keeps them, programs
//! verified by the kernel).

use std::{path::Path, sync::OnceLock};

use anyhow::{Context as _, anyhow, bail};
use aya::{Ebpf, EbpfLoader};
use interceptor_ebpf::{
    Counter, POD_NETNS_COOKIE_GLOBAL, map_names, program_names,
    trace::{TRACE_BUILT_GLOBAL, TRACE_TASK_GLOBAL},
};

use crate::error::LimitError;

/// The compiled kernel programs.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/interceptor-ebpf"));

/// The maps a datapath keeps pinned: every map of the object.
pub const DATAPATH_MAPS: [&str; 24] = [
    map_names::POD_CONFIG,
    map_names::PORT_SET,
    map_names::CIDR4,
    map_names::CIDR6,
    map_names::COUNTERS,
    map_names::INSTANCE_META,
    map_names::POD_RECORDS,
    map_names::POD_SLOTS,
    map_names::POD_ADDRS4,
    map_names::POD_ADDRS6,
    map_names::INBOUND_LISTENERS,
    map_names::CAPTURE_SOCKETS,
    map_names::CLIENT_ORIG_DST4,
    map_names::CLIENT_ORIG_DST6,
    map_names::PROXY_ORIG_DST4,
    map_names::PROXY_ORIG_DST6,
    map_names::IN_FLIGHT4,
    map_names::IN_FLIGHT6,
    map_names::AYA_LOGS,
    map_names::TRACE_CONTROL,
    map_names::TRACE_EVENTS,
    map_names::TRACE_LOST,
    map_names::ACCEL_SOCKETS,
    map_names::ACCEL_FALLBACK,
];

/// Every program this build loads: the ones attached to cgroups and namespaces, then the ones
/// attached to a map.
pub fn every_program() -> impl Iterator<Item = &'static str> {
    program_names::ALL
        .into_iter()
        .chain(program_names::MAP_ATTACHED)
}

/// The programs attached to a cgroup (all but `sk_lookup`, which goes to a network
/// namespace), in attach order.
pub fn cgroup_programs() -> Vec<&'static str> {
    program_names::ALL
        .into_iter()
        .filter(|p| *p != program_names::SK_LOOKUP)
        .collect()
}

/// The sizes a datapath's maps are created with; part of its identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// Pods the maps hold.
    pub max_pods: u32,
    /// Connections being handed from the application to the proxy at once, node-wide, per
    /// address family (`IN_FLIGHT4`, `IN_FLIGHT6`).
    pub max_connections: u32,
}

impl Sizes {
    /// Entries of the port set every pod's `-o`/`-q`/`-b`/`-d` ports go into, shared by the
    /// node's pods (a hash map without preallocation: memory only for what is used, but its
    /// bucket array, 16 bytes an entry, is allocated whole).
    pub const PORT_ENTRIES: u32 = 1 << 18;
    /// Entries of each family's range set (`-i`, `-x` ranges and `-c` routes), shared by the
    /// node's pods (LPM tries without preallocation: memory only for what is used).
    pub const CIDR_ENTRIES: u32 = 1 << 20;
    /// Port entries one pod may have: a quarter of the node's, so that one pod never holds
    /// more than its share and a pod's update (old and new sets side by side) always fits
    /// beside it.
    pub const POD_PORT_ENTRIES: u32 = Self::PORT_ENTRIES / 4;
    /// Range entries of one family one pod may have: an eighth of the node's.
    pub const POD_CIDR_ENTRIES: u32 = Self::CIDR_ENTRIES / 8;
    /// Addresses of one pod that inbound dispatch knows (as `PodConfig` holds them).
    pub const ADDRS_PER_POD: u32 = 8;
    /// Listener sockets of one pod: one per family.
    pub const LISTENERS_PER_POD: u32 = 2;

    /// `--max-pods`: at least one, at most this many.
    pub const MAX_PODS: u32 = 16384;
    /// `--max-connections`: each unit takes about 240 bytes of kernel memory (an IPv4 and an
    /// IPv6 entry, preallocated when the datapath is made): 1024 is 240 KiB, the most 1 GiB.
    pub const MIN_CONNECTIONS: u32 = 1024;
    pub const MAX_CONNECTIONS: u32 = 1 << 22;

    /// Sizes checked against their bounds: what is out of range is refused, naming the flag,
    /// the value and the bounds, before anything changes.
    pub fn checked(max_pods: u32, max_connections: u32) -> Result<Self, LimitError> {
        let check = |flag, value: u32, min, max, what| {
            if (min..=max).contains(&value) {
                Ok(value)
            } else {
                Err(LimitError::OutOfRange {
                    flag,
                    value: u64::from(value),
                    min: u64::from(min),
                    max: u64::from(max),
                    what,
                })
            }
        };
        Ok(Sizes {
            max_pods: check(
                "--max-pods",
                max_pods,
                1,
                Self::MAX_PODS,
                "pods one datapath holds",
            )?,
            max_connections: check(
                "--max-connections",
                max_connections,
                Self::MIN_CONNECTIONS,
                Self::MAX_CONNECTIONS,
                "connection set-ups in progress at once, node-wide, per address family",
            )?,
        })
    }
}

fn object() -> anyhow::Result<&'static aya_obj::Object> {
    static OBJECT: OnceLock<Result<aya_obj::Object, String>> = OnceLock::new();
    OBJECT
        .get_or_init(|| aya_obj::Object::parse(EBPF_OBJECT).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| anyhow!("parsing the kernel programs' object: {e}"))
}

/// FNV-1a, 64 bits: a stable fingerprint (the same on every build and host, unlike std's
/// hasher), enough to tell layouts and builds apart.
fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// What identifies this build's programs: a fingerprint of the object.
pub fn build_id() -> String {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| format!("{:016x}", fnv1a(EBPF_OBJECT.iter().copied())))
        .clone()
}

/// What identifies a datapath: the layout of every map this build declares (name, type, key
/// and value size, flags) and the sizes they are made with. Builds that agree on it share the
/// node's maps, so an upgrade is a program swap; builds that differ run side by side.
pub fn datapath_key(sizes: Sizes) -> anyhow::Result<String> {
    let object = object()?;
    let mut names: Vec<&String> = object.maps.keys().collect();
    names.sort();
    let entries: std::collections::BTreeMap<&str, u32> = map_entries(sizes).into_iter().collect();
    let mut text = String::new();
    for name in names {
        let m = &object.maps[name];
        // The entries of every sized map: they follow from the sizes and from per-pod
        // constants (a pod's counters, addresses, listeners) that a build may change.
        let max_entries = entries
            .get(name.as_str())
            .copied()
            .unwrap_or(m.max_entries());
        text.push_str(&format!(
            "{name}:{}:{}:{}:{}:{max_entries};",
            m.map_type(),
            m.key_size(),
            m.value_size(),
            m.map_flags()
        ));
    }
    Ok(format!("{:016x}", fnv1a(text.bytes())))
}

/// The entries of each map the sizes decide (the others keep the size the programs declare).
fn map_entries(sizes: Sizes) -> [(&'static str, u32); 13] {
    let pods = sizes.max_pods;
    [
        (map_names::POD_CONFIG, pods),
        (map_names::POD_RECORDS, pods),
        (map_names::POD_SLOTS, pods.div_ceil(64)),
        (map_names::COUNTERS, Counter::COUNT * pods),
        (map_names::POD_ADDRS4, Sizes::ADDRS_PER_POD * pods),
        (map_names::POD_ADDRS6, Sizes::ADDRS_PER_POD * pods),
        (
            map_names::INBOUND_LISTENERS,
            Sizes::LISTENERS_PER_POD * pods,
        ),
        (map_names::PORT_SET, Sizes::PORT_ENTRIES),
        (map_names::CIDR4, Sizes::CIDR_ENTRIES),
        (map_names::CIDR6, Sizes::CIDR_ENTRIES),
        (map_names::IN_FLIGHT4, sizes.max_connections),
        (map_names::IN_FLIGHT6, sizes.max_connections),
        // Both pod-local ends of each accelerated connection.
        (
            map_names::ACCEL_SOCKETS,
            sizes.max_connections.saturating_mul(2),
        ),
    ]
}

/// (key size, value size) of a map as the programs this build carries declare it.
pub fn expected_layout(name: &str) -> anyhow::Result<(u32, u32)> {
    let map = object()?
        .maps
        .get(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))?;
    Ok((map.key_size(), map.value_size()))
}

/// Loads the object with the datapath's maps (pinned in `dir`, created there on first use with
/// `sizes`) and the programs `programs` into the kernel. `netns_cookie` is the constant a copy
/// of `sk_lookup` of its own carries (0: the shared one, which finds the pod by address).
pub fn load(
    dir: &Path,
    sizes: Sizes,
    log_level: u8,
    netns_cookie: u64,
    programs: &[&str],
) -> anyhow::Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    for name in DATAPATH_MAPS {
        loader.map_pin_path(name, dir.join(name));
    }
    for (name, entries) in map_entries(sizes) {
        loader.map_max_entries(name, entries);
    }
    loader
        .override_global("AYA_LOG_LEVEL", &log_level, false)
        .override_global(POD_NETNS_COOKIE_GLOBAL, &netns_cookie, true)
        .override_global(TRACE_TASK_GLOBAL, trace_task(), true)
        .override_global(TRACE_BUILT_GLOBAL, trace_built(), true);
    let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| {
        let e = anyhow::Error::new(e);
        if out_of_memory(&e) {
            e.context(
                "creating the node's maps: the kernel refused memory. Whoever creates the \
                 datapath is charged for it (about 23 MiB with the default sizes) in its memory \
                 cgroup: raise the memory limit of the first pod's init container, or the \
                 daemon's",
            )
        } else {
            e.context(
                "loading the kernel programs (needs Linux >= 5.14 with cgroup BPF, sockops and \
                 BTF)",
            )
        }
    })?;
    for name in programs {
        load_program(&mut ebpf, name)?;
    }
    Ok(ebpf)
}

/// 1 when the kernel lets the cgroup hooks read the current task (probed once per process):
/// trace events then name the process.
/// Whether the programs this process loads carry their event-writing code: only when the
/// verifier will take it from this process (see `TRACE_BUILT_GLOBAL`).
pub fn trace_built() -> &'static u8 {
    static BUILT: OnceLock<u8> = OnceLock::new();
    BUILT.get_or_init(|| u8::from(crate::sys::process::may_load_privileged_programs()))
}

fn trace_task() -> &'static u8 {
    static TASK: OnceLock<u8> = OnceLock::new();
    TASK.get_or_init(|| u8::from(crate::check::probe::task_helpers_in_cgroup_hooks()))
}

/// Loads this build's programs into the kernel, which verifies them, with small maps of their
/// own that are neither pinned nor shared, and lets it all go: `check`'s last probe. Nothing
/// is attached.
pub fn verify_all() -> anyhow::Result<()> {
    let mut loader = EbpfLoader::new();
    for name in [
        map_names::POD_CONFIG,
        map_names::POD_RECORDS,
        map_names::POD_SLOTS,
        map_names::COUNTERS,
        map_names::POD_ADDRS4,
        map_names::POD_ADDRS6,
        map_names::INBOUND_LISTENERS,
        map_names::PORT_SET,
        map_names::CIDR4,
        map_names::CIDR6,
        map_names::IN_FLIGHT4,
        map_names::IN_FLIGHT6,
    ] {
        loader.map_max_entries(name, 1);
    }
    loader
        .map_max_entries(map_names::COUNTERS, Counter::COUNT)
        .override_global(POD_NETNS_COOKIE_GLOBAL, &0u64, true)
        .override_global(TRACE_TASK_GLOBAL, trace_task(), true)
        .override_global(TRACE_BUILT_GLOBAL, trace_built(), true);
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .context("creating the programs' maps")?;
    for name in program_names::ALL {
        load_program(&mut ebpf, name)?;
    }
    Ok(())
}

/// Whether the kernel's answer somewhere in `e` is ENOMEM (a memory cgroup's limit, usually).
fn out_of_memory(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            == Some(libc::ENOMEM)
    })
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
        aya::programs::Program::SkMsg(p) => p.load(),
        other => bail!("unexpected program type {:?} for {name}", other.prog_type()),
    };
    loaded.with_context(|| format!("the kernel refused program {name}"))
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use interceptor_ebpf::{Cidr6Key, PodConfig};

    use super::*;

    #[test]
    fn the_object_declares_every_datapath_map_with_the_model_layouts() {
        for name in DATAPATH_MAPS {
            expected_layout(name).unwrap();
        }
        assert_eq!(
            expected_layout(map_names::POD_CONFIG).unwrap(),
            (8, size_of::<PodConfig>() as u32)
        );
        // LPM keys carry the prefix length in front of the data.
        assert_eq!(
            expected_layout(map_names::CIDR6).unwrap(),
            (4 + size_of::<Cidr6Key>() as u32, 1)
        );
    }

    #[test]
    fn sizes_out_of_their_bounds_are_refused_naming_flag_value_and_bounds() {
        assert!(Sizes::checked(1024, 65536).is_ok());
        assert!(Sizes::checked(1, Sizes::MIN_CONNECTIONS).is_ok());
        assert!(Sizes::checked(Sizes::MAX_PODS, Sizes::MAX_CONNECTIONS).is_ok());
        for (pods, conns, text) in [
            (
                0,
                65536,
                "--max-pods 0: out of range: 1 to 16384 (pods one datapath holds)",
            ),
            (16385, 65536, "--max-pods 16385: out of range: 1 to 16384"),
            (
                1024,
                0,
                "--max-connections 0: out of range: 1024 to 4194304",
            ),
            (
                1024,
                100_000_000,
                "--max-connections 100000000: out of range: 1024 to 4194304",
            ),
        ] {
            let err = Sizes::checked(pods, conns).unwrap_err().to_string();
            assert!(err.starts_with(text), "{err}");
        }
    }

    #[test]
    fn the_datapath_key_depends_on_the_sizes_and_is_stable() {
        let a = Sizes {
            max_pods: 1024,
            max_connections: 65536,
        };
        let b = Sizes {
            max_connections: 1024,
            ..a
        };
        assert_eq!(datapath_key(a).unwrap(), datapath_key(a).unwrap());
        assert_ne!(datapath_key(a).unwrap(), datapath_key(b).unwrap());
        assert_eq!(build_id().len(), 16);
        // FNV-1a's published test vector: the fingerprint never changes between builds.
        assert_eq!(fnv1a(*b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
