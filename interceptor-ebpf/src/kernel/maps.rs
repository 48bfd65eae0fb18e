//! The maps, and the lookups every program shares. Sizes here are defaults; the loader sets
//! the real ones (`EbpfLoader::map_max_entries`) from its options.

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{
        BPF_F_CLONE, BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC, BPF_SK_STORAGE_GET_F_CREATE,
        bpf_map_type,
    },
    btf_maps::SkStorage,
    helpers::generated::bpf_sk_storage_get,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, SockHash, lpm_trie::Key},
    programs::SockAddrContext,
};
use interceptor_ebpf::{
    CIDR4_KEY_PREFIX_BITS, CIDR6_KEY_PREFIX_BITS, CaptureMark, Cidr4Key, Cidr6Key, CidrSet,
    Counter, InstanceMeta, ListenerKey, OrigDst4, OrigDst6, PodConfig, PodRecordBlob, PortKey,
    PortSet, SockTuple4, SockTuple6,
    decision::RuleSets,
    wire::{RawIpv4, RawIpv6},
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

/// (rules, set, IPv6 prefix) -> 1: the IPv6 ranges of `-i` and `-x`.
#[map]
pub static CIDR6: LpmTrie<Cidr6Key, u8> = LpmTrie::with_max_entries(65536, BPF_F_NO_PREALLOC);

/// Per-CPU LRU lists: an insert takes no lock shared by every CPU (the common list's), which
/// is most of what a redirected connect costs. Eviction is then per CPU, which is fine for
/// entries that live from connect to close.
const LRU_FLAGS: u32 = BPF_F_NO_COMMON_LRU;

/// Socket cookie -> original destination, from `connect4` until the connection is established.
#[map]
pub static ORIG_DST_BY_COOKIE: LruHashMap<u64, OrigDst4> =
    LruHashMap::with_max_entries(65536, LRU_FLAGS);

/// Connection -> original destination, from established until the client socket closes.
#[map]
pub static ORIG_DST_BY_TUPLE: LruHashMap<SockTuple4, OrigDst4> =
    LruHashMap::with_max_entries(65536, LRU_FLAGS);

/// Socket cookie -> IPv6 original destination, from `connect6` until established.
#[map]
pub static ORIG_DST6_BY_COOKIE: LruHashMap<u64, OrigDst6> =
    LruHashMap::with_max_entries(65536, LRU_FLAGS);

/// IPv6 connection -> original destination, from established until the client socket closes.
#[map]
pub static ORIG_DST6_BY_TUPLE: LruHashMap<SockTuple6, OrigDst6> =
    LruHashMap::with_max_entries(65536, LRU_FLAGS);
/// A redirected UDP socket's original destination (DNS capture), stored on the socket and
/// freed with it: UDP has no close callback that could clean a hash map. IPv4 destinations,
/// also those a dual-stack socket dialled as `::ffff:a.b.c.d`.
#[btf_map]
pub static UDP_ORIG_DST: SkStorage<OrigDst4> = SkStorage::new();

/// The same for IPv6 destinations.
#[btf_map]
pub static UDP_ORIG_DST6: SkStorage<OrigDst6> = SkStorage::new();

/// Stores `value` on the socket of `ctx` (a new entry, or over the previous one); false when
/// the kernel could not store it.
#[inline(always)]
pub fn store_on_socket<T: Copy>(map: &SkStorage<T>, ctx: &SockAddrContext, mut value: T) -> bool {
    // SAFETY: the context's socket is valid for the program's run; the kernel copies `value`
    // into a new entry, and an existing entry is overwritten through the returned pointer.
    let slot = unsafe { map.get_or_insert_ptr_mut(ctx, Some(&mut value)) };
    if slot.is_null() {
        return false;
    }
    // A plain `*slot = value` may become a call to `memmove` (the helper saw `value`'s
    // address), whose pointer subtraction the verifier only allows with CAP_PERFMON: copy as
    // non-overlapping, which is inlined into loads and stores.
    unsafe { core::ptr::copy_nonoverlapping(&value, slot, 1) };
    true
}

/// The value stored on the socket of `ctx`, if any.
#[inline(always)]
pub fn stored_on_socket<T: Copy>(map: &SkStorage<T>, ctx: &SockAddrContext) -> Option<T> {
    // SAFETY: as above; null or a valid entry back.
    let slot = unsafe { map.get_ptr_mut(ctx) };
    if slot.is_null() {
        None
    } else {
        Some(unsafe { *slot })
    }
}

/// `pod_index * Counter::COUNT + counter` -> count, per CPU.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// (pod, address family) -> the proxy's inbound capture listener. The kernel drops an entry
/// when its socket closes.
#[map]
pub static INBOUND_LISTENERS: SockHash<ListenerKey> = SockHash::with_max_entries(1024, 0);

/// Socket -> `CaptureMark`: the proxy's socket on the capture port, and (the map is
/// `BPF_F_CLONE`) every socket accepted from it.
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "CAPTURE_SOCKETS")]
pub static CAPTURE_SOCKETS: CloneSkStorage<CaptureMark> = CloneSkStorage::new();

/// A socket-storage map whose entries the kernel copies from a listener to the sockets it
/// accepts. aya-ebpf's own `SkStorage` cannot carry `BPF_F_CLONE`, so the map is declared here
/// in the BTF map format (each field's type encodes one attribute; the kernel requires BTF for
/// socket storage).
#[repr(C)]
pub struct CloneSkStorage<V> {
    r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const V,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; (BPF_F_NO_PREALLOC | BPF_F_CLONE) as usize],
}

// SAFETY: the fields are never dereferenced; the loader replaces the definition by a map.
unsafe impl<V> Sync for CloneSkStorage<V> {}

impl<V> CloneSkStorage<V> {
    const fn new() -> Self {
        Self {
            r#type: ptr::null(),
            key: ptr::null(),
            value: ptr::null(),
            max_entries: ptr::null(),
            map_flags: ptr::null(),
        }
    }

    /// The value stored on `sk` (a full socket: the verifier checks), if any.
    #[inline(always)]
    pub fn get(&self, sk: *mut c_void) -> Option<&V> {
        let map = ptr::from_ref(self).cast_mut().cast();
        // SAFETY: a map and a socket pointer the verifier accepts; null or a valid value back.
        unsafe {
            bpf_sk_storage_get(map, sk, ptr::null_mut(), 0)
                .cast::<V>()
                .as_ref()
        }
    }

    /// Stores `value` on `sk` unless something is stored already; true when `sk` has a value.
    #[inline(always)]
    pub fn get_or_insert(&self, sk: *mut c_void, value: &mut V) -> bool {
        let map = ptr::from_ref(self).cast_mut().cast();
        let flags = BPF_SK_STORAGE_GET_F_CREATE as u64;
        // SAFETY: as in `get`; the kernel copies `value` when it creates the entry.
        !unsafe { bpf_sk_storage_get(map, sk, ptr::from_mut(value).cast(), flags) }.is_null()
    }
}

/// The loader's description of this instance; never read by the programs.
#[map]
pub static INSTANCE_META: Array<InstanceMeta> = Array::with_max_entries(1, 0);

/// Node mode: the daemon's record of each registered pod; never read by the programs.
#[map]
pub static POD_RECORDS: HashMap<u64, PodRecordBlob> =
    HashMap::with_max_entries(1024, BPF_F_NO_PREALLOC);

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

    #[inline(always)]
    fn has_cidr6(&self, rules: u32, set: CidrSet, addr: RawIpv6) -> bool {
        let key = Key::new(
            CIDR6_KEY_PREFIX_BITS + 128,
            Cidr6Key {
                rules,
                set: set as u32,
                addr,
            },
        );
        CIDR6.get(&key).is_some()
    }

    #[inline(always)]
    fn route_excluded4(&self, rules: u32, addr: RawIpv4) -> bool {
        let key = Key::new(
            CIDR4_KEY_PREFIX_BITS + 32,
            Cidr4Key {
                rules,
                set: CidrSet::Route as u32,
                addr,
            },
        );
        CIDR4
            .get(&key)
            .is_some_and(|via_excluded| *via_excluded == 1)
    }

    #[inline(always)]
    fn route_excluded6(&self, rules: u32, addr: RawIpv6) -> bool {
        let key = Key::new(
            CIDR6_KEY_PREFIX_BITS + 128,
            Cidr6Key {
                rules,
                set: CidrSet::Route as u32,
                addr,
            },
        );
        CIDR6
            .get(&key)
            .is_some_and(|via_excluded| *via_excluded == 1)
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

/// The IPv6 address fields of a `bpf_sock`, read one 32-bit word at a time (the verifier
/// allows no wider access to them).
#[inline(always)]
pub fn read_ip6(words: &[u32; 4]) -> RawIpv6 {
    // SAFETY: reads of a context field the caller holds a reference to.
    unsafe {
        [
            core::ptr::read_volatile(&words[0]),
            core::ptr::read_volatile(&words[1]),
            core::ptr::read_volatile(&words[2]),
            core::ptr::read_volatile(&words[3]),
        ]
    }
}

/// Writes an IPv6 address into a context field (e.g. `bpf_sock_addr.user_ip6`) one 32-bit word
/// at a time, so that LLVM cannot merge the stores into an access the verifier rejects.
#[inline(always)]
pub fn write_ip6(words: &mut [u32; 4], addr: RawIpv6) {
    // SAFETY: writes to a context field the caller holds a mutable reference to.
    unsafe {
        core::ptr::write_volatile(&mut words[0], addr[0]);
        core::ptr::write_volatile(&mut words[1], addr[1]);
        core::ptr::write_volatile(&mut words[2], addr[2]);
        core::ptr::write_volatile(&mut words[3], addr[3]);
    }
}

/// IPv6 connection key from a `bpf_sock` seen on the client's side (src = client).
#[inline(always)]
pub fn tuple6_from_client_side(netns: u64, sk: &aya_ebpf::bindings::bpf_sock) -> SockTuple6 {
    use interceptor_ebpf::wire::{port_from_sock_dst, port_from_sock_src};
    SockTuple6 {
        netns,
        client_addr: read_ip6(&sk.src_ip6),
        server_addr: read_ip6(&sk.dst_ip6),
        client_port: port_from_sock_src(sk.src_port),
        server_port: port_from_sock_dst(sk.dst_port),
        _pad: 0,
    }
}

/// IPv6 connection key from a `bpf_sock` seen on the server's side (src = server).
#[inline(always)]
pub fn tuple6_from_server_side(netns: u64, sk: &aya_ebpf::bindings::bpf_sock) -> SockTuple6 {
    use interceptor_ebpf::wire::{port_from_sock_dst, port_from_sock_src};
    SockTuple6 {
        netns,
        client_addr: read_ip6(&sk.dst_ip6),
        server_addr: read_ip6(&sk.src_ip6),
        client_port: port_from_sock_dst(sk.dst_port),
        server_port: port_from_sock_src(sk.src_port),
        _pad: 0,
    }
}
