//! What the kernel holds: counts of BPF programs, maps and links (all of the machine's), read
//! with the `bpf(2)` commands that walk their ids. For tests that check nothing is loaded or
//! left behind.

use std::io;

/// `bpf_cmd` values (linux/bpf.h).
const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_MAP_GET_NEXT_ID: libc::c_long = 12;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;

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

fn count(cmd: libc::c_long) -> io::Result<usize> {
    let mut n = 0;
    let mut id: u32 = 0;
    loop {
        // bpf_attr's `start_id` then `next_id` (the rest zero).
        let mut attr = [0u32; 32];
        attr[0] = id;
        // SAFETY: a zeroed bpf_attr of the size given, which the kernel fills in.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr) as u32,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ENOENT) {
                Ok(n)
            } else {
                Err(e)
            };
        }
        id = attr[1];
        n += 1;
    }
}

/// `bpf_cmd` values (linux/bpf.h) for reading a pinned map.
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
    // SAFETY: a bpf_attr-sized buffer the command reads (and may fill in).
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
