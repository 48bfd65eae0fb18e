//! What the kernel holds: counts of BPF programs, maps and links (all of the machine's), read
//! with the `bpf(2)` commands that walk their ids; whether a given program is still loaded;
//! what is attached to a cgroup or a network namespace. For tests that check nothing is loaded or left behind.

use std::io;

/// `bpf_cmd` values (linux/bpf.h).
const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_MAP_GET_NEXT_ID: libc::c_long = 12;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// The cgroup attach types of sockets, sysctls and devices (`bpf_attach_type`: INET_INGRESS to
/// INET_SOCK_RELEASE). Only these are asked: the query of another type reads the descriptor as
/// something else (an interface index for tcx, whose answer then depends on the descriptor's
/// number).
const CGROUP_ATTACH_TYPES: [u32; 24] = [
    0, 1, 2, 3, 6, 8, 9, 10, 11, 12, 13, 14, 15, 18, 19, 20, 21, 22, 23, 29, 30, 31, 32, 34,
];

/// BPF objects in the kernel, of every owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BpfObjects {
    pub programs: usize,
    pub maps: usize,
    pub links: usize,
}

/// Counts the kernel's BPF programs, maps and links.
pub fn bpf_objects() -> io::Result<BpfObjects> {
    Ok(BpfObjects {
        programs: count(BPF_PROG_GET_NEXT_ID)?,
        maps: count(BPF_MAP_GET_NEXT_ID)?,
        links: count(BPF_LINK_GET_NEXT_ID)?,
    })
}

/// `bpf(cmd, attr)` with a `bpf_attr` of 128 bytes (the fields a command does not use zero):
/// its return value, or the errno.
fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
    // SAFETY: a bpf_attr of the size given, which the kernel reads and may fill in; pointers
    // in it point at buffers of the sizes it names, alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn count(cmd: libc::c_long) -> io::Result<usize> {
    Ok(ids(cmd)?.len())
}

/// How many programs are attached to the cgroup at `path` itself, over every socket, sysctl and
/// device attach type (`BPF_PROG_QUERY`; links included).
pub fn cgroup_programs(path: &std::path::Path) -> io::Result<usize> {
    let dir = std::fs::File::open(path)?;
    let mut total = 0;
    for attach_type in CGROUP_ATTACH_TYPES {
        match attached(&dir, attach_type) {
            Ok(n) => total += n as usize,
            // An attach type this kernel does not know.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// `BPF_SK_LOOKUP`, the attach type of a network namespace's sk_lookup programs.
pub const SK_LOOKUP: u32 = 36;

/// Programs attached to `target` (an open cgroup directory or network namespace) for
/// `attach_type`, by the kernel's account (`BPF_PROG_QUERY`; links included).
pub fn attached(target: &std::fs::File, attach_type: u32) -> io::Result<u32> {
    use std::os::fd::AsRawFd as _;
    // bpf_attr's query: target_fd, attach_type, query_flags, attach_flags, prog_ids (u64,
    // null: only the count is asked for), prog_cnt.
    let mut attr = [0u64; 16];
    attr[0] = target.as_raw_fd() as u32 as u64 | (u64::from(attach_type) << 32);
    bpf(BPF_PROG_QUERY, &mut attr)?;
    // prog_cnt: the u32 at byte 24.
    Ok(attr[3] as u32)
}

/// Whether the kernel still holds a program with this id.
pub fn program_exists(id: u32) -> io::Result<bool> {
    let mut attr = [0u64; 16];
    attr[0] = u64::from(id);
    match bpf(BPF_PROG_GET_FD_BY_ID, &mut attr) {
        Ok(fd) => {
            // SAFETY: the descriptor the kernel just gave us, closed once.
            unsafe { libc::close(fd as libc::c_int) };
            Ok(true)
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}
/// Every entry of the map pinned at `pin` (key bytes -> value bytes), read with the map
/// commands: to tell that a failed change left a map exactly as it was. Maps whose values
/// user space cannot read (socket maps, socket storage) give their keys with empty values.
pub fn map_entries(
    pin: &std::path::Path,
) -> io::Result<std::collections::BTreeMap<Vec<u8>, Vec<u8>>> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(pin.as_os_str().as_bytes())?;
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: a descriptor the kernel just returned to us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // bpf_map_info: type, id, key_size, value_size, max_entries, map_flags, ...
    let mut info = [0u32; 32];
    let mut attr = [0u64; 16];
    attr[0] = fd.as_raw_fd() as u64 | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let (key_size, value_size) = (info[2] as usize, info[3] as usize);
    // Per-CPU maps (hash, array, LRU hash, cgroup storage) have a value per CPU: not read here.
    if matches!(info[0], 5 | 6 | 10 | 21) {
        return Err(io::Error::other(format!(
            "{}: a per-CPU map",
            pin.display()
        )));
    }
    let mut out = std::collections::BTreeMap::new();
    let mut key: Option<Vec<u8>> = None;
    loop {
        let mut next = vec![0u8; key_size];
        let mut attr = [0u64; 16];
        attr[0] = fd.as_raw_fd() as u64;
        attr[1] = key.as_ref().map_or(0, |k| k.as_ptr() as u64);
        attr[2] = next.as_mut_ptr() as u64;
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => return Err(e),
        }
        let mut value = vec![0u8; value_size];
        let mut attr = [0u64; 16];
        attr[0] = fd.as_raw_fd() as u64;
        attr[1] = next.as_ptr() as u64;
        attr[2] = value.as_mut_ptr() as u64;
        if bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).is_err() {
            value.clear();
        }
        out.insert(next.clone(), value);
        key = Some(next);
    }
}

/// The ids of the kernel's BPF programs, maps and links, of every owner.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BpfIds {
    pub programs: std::collections::BTreeSet<u32>,
    pub maps: std::collections::BTreeSet<u32>,
    pub links: std::collections::BTreeSet<u32>,
}

impl BpfIds {
    pub fn is_empty(&self) -> bool {
        self.programs.is_empty() && self.maps.is_empty() && self.links.is_empty()
    }

    pub fn counts(&self) -> BpfObjects {
        BpfObjects {
            programs: self.programs.len(),
            maps: self.maps.len(),
            links: self.links.len(),
        }
    }
}

/// Every BPF object id in the kernel now.
pub fn bpf_ids() -> io::Result<BpfIds> {
    Ok(BpfIds {
        programs: ids(BPF_PROG_GET_NEXT_ID)?,
        maps: ids(BPF_MAP_GET_NEXT_ID)?,
        links: ids(BPF_LINK_GET_NEXT_ID)?,
    })
}

fn ids(cmd: libc::c_long) -> io::Result<std::collections::BTreeSet<u32>> {
    let mut out = std::collections::BTreeSet::new();
    let mut id: u32 = 0;
    loop {
        let mut attr = [0u64; 16];
        attr[0] = u64::from(id);
        match bpf(cmd, &mut attr) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => return Err(e),
        }
        id = (attr[0] >> 32) as u32;
        out.insert(id);
    }
}

/// What BPF objects made since `before` are still in the kernel, but for those someone else
/// holds: a process's descriptor, a pin on a bpffs other than `own_bpffs`, and what these
/// hold in turn (a link's program, a program's maps). On a machine where others load BPF
/// meanwhile, this is what a test left behind; alone on the machine (CI), the counts say the
/// same as [`bpf_objects`].
pub fn left_since(before: &BpfIds, own_bpffs: &std::path::Path) -> io::Result<BpfIds> {
    let now = bpf_ids()?;
    let held = held_elsewhere(own_bpffs);
    let left = |now: &std::collections::BTreeSet<u32>,
                before: &std::collections::BTreeSet<u32>,
                held: &std::collections::BTreeSet<u32>| {
        now.iter()
            .filter(|id| !before.contains(id) && !held.contains(id))
            .copied()
            .collect()
    };
    Ok(BpfIds {
        programs: left(&now.programs, &before.programs, &held.programs),
        maps: left(&now.maps, &before.maps, &held.maps),
        links: left(&now.links, &before.links, &held.links),
    })
}

/// The objects every process's descriptors and every other bpffs's pins hold.
fn held_elsewhere(own_bpffs: &std::path::Path) -> BpfIds {
    let mut held = BpfIds::default();
    // Descriptors of every process (this one holds none between calls).
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            if let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) {
                for fd in fds.flatten() {
                    if let Ok(text) = std::fs::read_to_string(fd.path()) {
                        note_fdinfo(&text, &mut held);
                    }
                }
            }
        }
    }
    // Pins of the other bpffs mounts, opened to read what they are.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mounts.lines() {
        let Some((fields, fs)) = line.split_once(" - ") else {
            continue;
        };
        if fs.split(' ').next() != Some("bpf") {
            continue;
        }
        let Some(point) = fields.split(' ').nth(4) else {
            continue;
        };
        let point = std::path::Path::new(point);
        if point == own_bpffs {
            continue;
        }
        note_pins(point, &mut held);
    }
    // What those hold in turn: each program's maps.
    for prog in held.programs.clone() {
        for map in program_maps(prog).unwrap_or_default() {
            held.maps.insert(map);
        }
    }
    held
}

fn note_fdinfo(text: &str, held: &mut BpfIds) {
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let Ok(id) = value.trim().parse::<u32>() else {
            continue;
        };
        match key {
            "prog_id" => held.programs.insert(id),
            "map_id" => held.maps.insert(id),
            "link_id" => held.links.insert(id),
            _ => false,
        };
    }
}

fn note_pins(dir: &std::path::Path, held: &mut BpfIds) {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            note_pins(&path, held);
            continue;
        }
        let Ok(name) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
            continue;
        };
        let mut attr = [0u64; 16];
        attr[0] = name.as_ptr() as u64;
        let Ok(fd) = bpf(BPF_OBJ_GET, &mut attr) else {
            continue;
        };
        // SAFETY: a descriptor the kernel just returned to us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        if let Ok(text) = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())) {
            note_fdinfo(&text, held);
        }
    }
}

/// The maps a program uses.
fn program_maps(id: u32) -> io::Result<Vec<u32>> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let mut attr = [0u64; 16];
    attr[0] = u64::from(id);
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: a descriptor the kernel just returned to us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut maps = vec![0u32; 64];
    // bpf_prog_info: nr_map_ids at byte 52, map_ids (a pointer) at 56.
    let mut info = [0u32; 64];
    info[13] = maps.len() as u32;
    let ptr = maps.as_mut_ptr() as u64;
    info[14] = ptr as u32;
    info[15] = (ptr >> 32) as u32;
    let mut attr = [0u64; 16];
    attr[0] = fd.as_raw_fd() as u64 | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    maps.truncate((info[13] as usize).min(64));
    Ok(maps)
}
