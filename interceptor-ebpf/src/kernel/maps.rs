//! The maps, and the lookups every program shares. Sizes here are defaults; the loader sets
//! the real ones (`EbpfLoader::map_max_entries`) from its options.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
};
use interceptor_ebpf::{
    CIDR4_KEY_PREFIX_BITS, Cidr4Key, CidrSet, Counter, InstanceMeta, OrigDst4, PodConfig, PortKey,
    PortSet, SockTuple4, decision::RuleSets, wire::RawIpv4,
};

/// Network-namespace cookie -> the pod's configuration.
#[map]
pub static POD_CONFIG: HashMap<u64, PodConfig> = HashMap::with_max_entries(1024, 0);

/// (rules, set, port) -> 1: `-o` and `-q`.
#[map]
pub static PORT_SET: HashMap<PortKey, u8> = HashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// (rules, set, prefix) -> 1: `-i` and `-x`.
#[map]
pub static CIDR4: LpmTrie<Cidr4Key, u8> = LpmTrie::with_max_entries(65536, BPF_F_NO_PREALLOC);

/// Socket cookie -> original destination, from `connect4` until the connection is established.
#[map]
pub static ORIG_DST_BY_COOKIE: LruHashMap<u64, OrigDst4> = LruHashMap::with_max_entries(65536, 0);

/// Connection -> original destination, from established until the client socket closes.
#[map]
pub static ORIG_DST_BY_TUPLE: LruHashMap<SockTuple4, OrigDst4> =
    LruHashMap::with_max_entries(65536, 0);

/// A redirected UDP socket's original destination (DNS capture), stored on the socket and
/// freed with it: UDP has no close callback that could clean a hash map.
#[btf_map]
pub static UDP_ORIG_DST: SkStorage<OrigDst4> = SkStorage::new();

/// `pod_index * Counter::COUNT + counter` -> count, per CPU.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// The loader's description of this instance; never read by the programs.
#[map]
pub static INSTANCE_META: Array<InstanceMeta> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn pod_config(netns_cookie: u64) -> Option<&'static PodConfig> {
    // SAFETY: entries are plain data; a concurrent update replaces the value, which at worst
    // gives this call the previous configuration (never a torn read of `rules`).
    unsafe { POD_CONFIG.get(&netns_cookie) }
}

#[inline(always)]
pub fn count(cfg: &PodConfig, counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter.slot(cfg.pod_index)) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *slot += 1 };
    }
}

/// The per-pod sets, backed by `PORT_SET` and `CIDR4`.
pub struct MapSets;

impl RuleSets for MapSets {
    #[inline(always)]
    fn has_port(&self, rules: u32, set: PortSet, port: u16) -> bool {
        let key = PortKey {
            rules,
            set: set as u16,
            port,
        };
        unsafe { PORT_SET.get(&key) }.is_some()
    }

    #[inline(always)]
    fn has_cidr4(&self, rules: u32, set: CidrSet, addr: RawIpv4) -> bool {
        let key = Key::new(
            CIDR4_KEY_PREFIX_BITS + 32,
            Cidr4Key {
                rules,
                set: set as u32,
                addr,
            },
        );
        CIDR4.get(&key).is_some()
    }
}

/// Connection key from a `bpf_sock` seen on the client's side (src = client).
#[inline(always)]
pub fn tuple_from_client_side(netns: u64, sk: &aya_ebpf::bindings::bpf_sock) -> SockTuple4 {
    use interceptor_ebpf::wire::{port_from_sock_dst, port_from_sock_src};
    SockTuple4 {
        netns,
        client_addr: sk.src_ip4,
        server_addr: sk.dst_ip4,
        client_port: port_from_sock_src(sk.src_port),
        server_port: port_from_sock_dst(sk.dst_port),
        _pad: 0,
    }
}

/// Connection key from a `bpf_sock` seen on the server's side (src = server), e.g. the
/// proxy's accepted socket.
#[inline(always)]
pub fn tuple_from_server_side(netns: u64, sk: &aya_ebpf::bindings::bpf_sock) -> SockTuple4 {
    use interceptor_ebpf::wire::{port_from_sock_dst, port_from_sock_src};
    SockTuple4 {
        netns,
        client_addr: sk.dst_ip4,
        server_addr: sk.src_ip4,
        client_port: port_from_sock_dst(sk.dst_port),
        server_port: port_from_sock_src(sk.src_port),
        _pad: 0,
    }
}
