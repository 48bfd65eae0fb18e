//! The kernel programs this build carries: the object, its maps as this build lays them out,
//! and loading it (maps pinned where they live, programs verified by the kernel).

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use anyhow::{Context as _, anyhow, bail};
use aya::{Ebpf, EbpfLoader};
use interceptor_ebpf::{Counter, POD_NETNS_COOKIE_GLOBAL, map_names, program_names};

/// The compiled kernel programs.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/interceptor-ebpf"));

/// Maps that live in the instance directory and survive re-runs and program upgrades.
pub const PERSISTENT_MAPS: [&str; 15] = [
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

/// (key size, value size) of a map as the programs this build carries declare it.
pub fn expected_layout(name: &str) -> anyhow::Result<(u32, u32)> {
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

/// Loads the object with the instance's maps (pinned in `dir`, created there on first use,
/// sized for `pods` pods) and the programs `programs` into the kernel. `netns_cookie` is the
/// constant `sk_lookup` carries (0 when it is not loaded).
pub fn load(
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

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use interceptor_ebpf::{Cidr6Key, PodConfig};

    use super::*;

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
}
