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
    CIDR_KEY_PREFIX_BITS, CaptureMark, Cidr4Key, Cidr6Key, CidrKey, CidrSet, Counter, InstanceMeta,
    ListenerKey, OrigDst4, OrigDst6, PodConfig, PodRecordBlob, PortKey, PortSet, SockTuple4,
    SockTuple6, decision::RuleSets,
};

use crate::family::KernelFamily;

/// Network-namespace cookie -> the pod's configuration.
#[map]
pub static POD_CONFIG: HashMap<u64, PodConfig> = HashMap::with_max_entries(1024, 0);

/// (rules, set, port) -> 1: `-o` and `-q`.
#[map]
pub static PORT_SET: HashMap<PortKey, u8> = HashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// (rules, set, prefix) -> 1: `-i` and `-x`; the pod's routes (`CidrSet::Route`).
#[map]
pub static CIDR4: LpmTrie<Cidr4Key, u8> = LpmTrie::with_max_entries(65536, BPF_F_NO_PREALLOC);

/// (rules, set, IPv6 prefix): the same for IPv6.
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
    // SAFETY: `slot` is the socket's entry (not null), `value` a local: they cannot overlap.
    unsafe { core::ptr::copy_nonoverlapping(&value, slot, 1) };
    true
}

/// The value stored on the socket of `ctx`, if any.
#[inline(always)]
pub fn stored_on_socket<T: Copy>(map: &SkStorage<T>, ctx: &SockAddrContext) -> Option<T> {
    // SAFETY: as above; null or a valid entry back.
    let slot = unsafe { map.get_ptr_mut(ctx) };
    // SAFETY: the socket's entry, valid for the program's run, or null.
    unsafe { slot.as_ref() }.copied()
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
        // SAFETY: a map and a socket pointer the verifier accepts.
        let value = unsafe { bpf_sk_storage_get(map, sk, ptr::null_mut(), 0) }.cast::<V>();
        // SAFETY: the socket's value, valid for the program's run, or null.
        unsafe { value.as_ref() }
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
    unsafe { POD_CONFIG.get(netns_cookie) }
}

#[inline(always)]
pub fn count(cfg: &PodConfig, counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter.slot(cfg.pod_index)) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *slot += 1 };
    }
}

/// `count` for the pod of network namespace `netns`, if it is one.
#[inline(always)]
pub fn count_in(netns: u64, counter: Counter) {
    if let Some(cfg) = pod_config(netns) {
        count(cfg, counter);
    }
}

/// The per-pod sets: `PORT_SET`, and `CIDR4` or `CIDR6`.
pub struct MapSets;

impl<F: KernelFamily> RuleSets<F> for MapSets {
    #[inline(always)]
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value, LLVM packs the key into a register before storing it: more \
                  instructions in every connect (measured with the xlated length)"
    )]
    fn has_port(&self, rules: u32, set: PortSet, port: u16) -> bool {
        let key = PortKey {
            rules,
            set: set as u16,
            port,
        };
        // SAFETY: only whether an entry exists is read.
        unsafe { PORT_SET.get(&key) }.is_some()
    }

    #[inline(always)]
    fn longest_match(&self, rules: u32, set: CidrSet, addr: F::Addr) -> Option<u8> {
        let key = CidrKey {
            rules,
            set: set as u32,
            addr,
        };
        F::cidrs()
            .get(Key::new(CIDR_KEY_PREFIX_BITS + F::BITS, key))
            .copied()
    }
}
