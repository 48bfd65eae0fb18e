//! The maps, and the lookups every program shares. Sizes here are defaults; the loader sets
//! the real ones (`EbpfLoader::map_max_entries`) from its options.

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{BPF_F_CLONE, BPF_F_NO_PREALLOC, BPF_SK_STORAGE_GET_F_CREATE, bpf_map_type},
    helpers::generated::bpf_sk_storage_get,
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, SockHash},
    programs::SockAddrContext,
};
use interceptor_ebpf::{
    AccelKey, CaptureMark, Cidr4Key, Cidr6Key, Counter, InFlight4, InFlight6, InstanceMeta,
    ListenerKey, OrigDst4, OrigDst6, PodConfig, PodRecordBlob, PortKey, SockTuple4, SockTuple6,
    wire::{RawIpv4, RawIpv6},
};

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

/// Connection -> original IPv4 destination, from the application's socket established to
/// the proxy's end established (microseconds): see `sockops`. Preallocated and not LRU: a
/// full map makes the insert fail, which is counted (`original_dst_lost`), never an eviction
/// of another connection's entry. User space removes entries a proxy never took.
#[map]
pub static IN_FLIGHT4: HashMap<SockTuple4, InFlight4> = HashMap::with_max_entries(65536, 0);

/// The same for IPv6 connections.
#[map]
pub static IN_FLIGHT6: HashMap<SockTuple6, InFlight6> = HashMap::with_max_entries(65536, 0);

/// A redirected application socket's original IPv4 destination (TCP or UDP), stored on the
/// socket and freed with it: `getpeername`, `recvmsg` and `sockops` read it back.
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "CLIENT_ORIG_DST4")]
pub static CLIENT_ORIG_DST4: SocketStorage<OrigDst4> = SocketStorage::new();

/// The same for IPv6 destinations.
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "CLIENT_ORIG_DST6")]
pub static CLIENT_ORIG_DST6: SocketStorage<OrigDst6> = SocketStorage::new();

/// The proxy's accepted socket of a redirected IPv4 connection: the original destination
/// `SO_ORIGINAL_DST` answers, freed with the socket.
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "PROXY_ORIG_DST4")]
pub static PROXY_ORIG_DST4: SocketStorage<OrigDst4> = SocketStorage::new();

/// The same for IPv6 (`IP6T_SO_ORIGINAL_DST`).
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "PROXY_ORIG_DST6")]
pub static PROXY_ORIG_DST6: SocketStorage<OrigDst6> = SocketStorage::new();

/// A pod's IPv4 address -> its netns cookie: the shared `sk_lookup` finds a connection's pod
/// by the address it arrives for.
#[map]
pub static POD_ADDRS4: HashMap<RawIpv4, u64> = HashMap::with_max_entries(8192, BPF_F_NO_PREALLOC);

/// The same for IPv6 addresses.
#[map]
pub static POD_ADDRS6: HashMap<RawIpv6, u64> = HashMap::with_max_entries(8192, BPF_F_NO_PREALLOC);

/// Which counter slots are taken, 64 a word; never read by the programs.
#[map]
pub static POD_SLOTS: Array<u64> = Array::with_max_entries(16, 0);

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
pub static CAPTURE_SOCKETS: SocketStorage<CaptureMark, CLONED> = SocketStorage::new();

/// `--accelerate`: the pod-local ends of accelerated connections (see `accelerate`). The
/// kernel drops an entry when its socket closes; the loader sizes it from `--max-connections`.
#[map]
pub static ACCEL_SOCKETS: SockHash<AccelKey> = SockHash::with_max_entries(65536, 0);

/// `--accelerate`: set on an end whose messages go through TCP from then on (1).
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "ACCEL_FALLBACK")]
pub static ACCEL_FALLBACK: SocketStorage<u8> = SocketStorage::new();

/// Socket storage's flags: entries made on demand.
const PLAIN: usize = BPF_F_NO_PREALLOC as usize;
/// ... and copied by the kernel from a listener to every socket it accepts.
const CLONED: usize = (BPF_F_NO_PREALLOC | BPF_F_CLONE) as usize;

/// A socket-storage map, declared in the BTF map format (each field's type encodes one
/// attribute; the kernel requires BTF for socket storage). aya-ebpf's own `SkStorage` takes
/// only a `cgroup/sock_addr` context and cannot carry `BPF_F_CLONE`; this one takes any full
/// socket the verifier accepts (`sockops`, `getsockopt`, `post_bind` have theirs).
#[repr(C)]
pub struct SocketStorage<V, const FLAGS: usize = PLAIN> {
    r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const V,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; FLAGS],
}

// SAFETY: the fields are never dereferenced; the loader replaces the definition by a map.
unsafe impl<V, const FLAGS: usize> Sync for SocketStorage<V, FLAGS> {}

impl<V: Copy, const FLAGS: usize> SocketStorage<V, FLAGS> {
    const fn new() -> Self {
        Self {
            r#type: ptr::null(),
            key: ptr::null(),
            value: ptr::null(),
            max_entries: ptr::null(),
            map_flags: ptr::null(),
        }
    }

    #[inline(always)]
    fn as_map(&self) -> *mut c_void {
        ptr::from_ref(self).cast_mut().cast()
    }

    /// The value stored on `sk` (a full socket: the verifier checks), if any.
    #[inline(always)]
    pub fn get(&self, sk: *mut c_void) -> Option<V> {
        // SAFETY: a map and a socket pointer the verifier accepts.
        let value = unsafe { bpf_sk_storage_get(self.as_map(), sk, ptr::null_mut(), 0) };
        // SAFETY: the socket's value, valid for the program's run, or null.
        unsafe { value.cast::<V>().as_ref() }.copied()
    }

    /// Stores `value` on `sk` unless something is stored already; true when `sk` has a value.
    #[inline(always)]
    pub fn get_or_insert(&self, sk: *mut c_void, value: &mut V) -> bool {
        let flags = BPF_SK_STORAGE_GET_F_CREATE as u64;
        // SAFETY: as in `get`; the kernel copies `value` when it creates the entry.
        !unsafe { bpf_sk_storage_get(self.as_map(), sk, ptr::from_mut(value).cast(), flags) }
            .is_null()
    }

    /// Stores `value` on `sk` (a new entry, or over the previous one); false when the kernel
    /// could not store it.
    #[inline(always)]
    pub fn set(&self, sk: *mut c_void, mut value: V) -> bool {
        let flags = BPF_SK_STORAGE_GET_F_CREATE as u64;
        // SAFETY: as in `get_or_insert`: a new entry is created with a copy of `value`, an
        // existing one is returned and overwritten below.
        let slot = unsafe {
            bpf_sk_storage_get(self.as_map(), sk, ptr::from_mut(&mut value).cast(), flags)
        }
        .cast::<V>();
        if slot.is_null() {
            return false;
        }
        // A plain `*slot = value` may become a call to `memmove` (the helper saw `value`'s
        // address), whose pointer subtraction the verifier only allows with CAP_PERFMON: copy
        // as non-overlapping, which is inlined into loads and stores.
        // SAFETY: `slot` is the socket's entry (not null), `value` a local: they cannot overlap.
        unsafe { ptr::copy_nonoverlapping(&value, slot, 1) };
        true
    }
}

/// The socket of a `cgroup/sock_addr` context (null before the kernel made one).
#[inline(always)]
pub fn socket_of(ctx: &SockAddrContext) -> *mut c_void {
    // SAFETY: the context is valid for the program's run.
    let sa = unsafe { &*ctx.sock_addr };
    // SAFETY: `sk` is the member of this union the kernel sets.
    unsafe { sa.__bindgen_anon_1.sk }.cast()
}

/// The datapath's record; never read by the programs.
#[map]
pub static INSTANCE_META: Array<InstanceMeta> = Array::with_max_entries(1, 0);

/// The record of each registered pod; never read by the programs.
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
