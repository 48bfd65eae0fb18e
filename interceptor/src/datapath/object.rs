//! The kernel programs this build carries: the object, what identifies it (its build, and the
//! layout of its maps), and loading it (maps pinned where the datapath keeps them, programs
//! verified by the kernel).

use std::{path::Path, sync::OnceLock};

use anyhow::{Context as _, anyhow, bail};
use aya::{Ebpf, EbpfLoader};
use interceptor_ebpf::{Counter, POD_NETNS_COOKIE_GLOBAL, map_names, program_names};

/// The compiled kernel programs.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/interceptor-ebpf"));

/// The maps a datapath keeps pinned: every map of the object but aya-log's buffer.
pub const DATAPATH_MAPS: [&str; 21] = [
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
    /// Entries of the sets every pod's options go into (`-o`/`-q`/`-b`/`-d` ports, `-i`/`-x`
    /// ranges and `-c` routes), shared by the node's pods.
    pub const SET_ENTRIES: u32 = 1 << 18;
    /// Addresses of one pod that inbound dispatch knows (as `PodConfig` holds them).
    pub const ADDRS_PER_POD: u32 = 8;
    /// Listener sockets of one pod: one per family.
    pub const LISTENERS_PER_POD: u32 = 2;
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
    let mut text = format!("pods={} conns={};", sizes.max_pods, sizes.max_connections);
    for name in names {
        let m = &object.maps[name];
        text.push_str(&format!(
            "{name}:{}:{}:{}:{};",
            m.map_type(),
            m.key_size(),
            m.value_size(),
            m.map_flags()
        ));
    }
    Ok(format!("{:016x}", fnv1a(text.bytes())))
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
    let pods = sizes.max_pods;
    let mut loader = EbpfLoader::new();
    for name in DATAPATH_MAPS {
        loader.map_pin_path(name, dir.join(name));
    }
    loader
        .map_max_entries(map_names::POD_CONFIG, pods)
        .map_max_entries(map_names::POD_RECORDS, pods)
        .map_max_entries(map_names::POD_SLOTS, pods.div_ceil(64))
        .map_max_entries(map_names::COUNTERS, Counter::COUNT * pods)
        .map_max_entries(map_names::POD_ADDRS4, Sizes::ADDRS_PER_POD * pods)
        .map_max_entries(map_names::POD_ADDRS6, Sizes::ADDRS_PER_POD * pods)
        .map_max_entries(
            map_names::INBOUND_LISTENERS,
            Sizes::LISTENERS_PER_POD * pods,
        )
        .map_max_entries(map_names::PORT_SET, Sizes::SET_ENTRIES)
        .map_max_entries(map_names::CIDR4, Sizes::SET_ENTRIES)
        .map_max_entries(map_names::CIDR6, Sizes::SET_ENTRIES)
        .map_max_entries(map_names::IN_FLIGHT4, sizes.max_connections)
        .map_max_entries(map_names::IN_FLIGHT6, sizes.max_connections)
        // Both pod-local ends of each accelerated connection.
        .map_max_entries(
            map_names::ACCEL_SOCKETS,
            sizes.max_connections.saturating_mul(2),
        )
        .override_global("AYA_LOG_LEVEL", &log_level, false)
        .override_global(POD_NETNS_COOKIE_GLOBAL, &netns_cookie, true);
    let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| {
        let e = anyhow::Error::new(e);
        if out_of_memory(&e) {
            e.context(
                "creating the node's maps: the kernel refused memory. Whoever creates the \
                 datapath is charged for it (about 21 MiB with the default sizes) in its memory \
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
