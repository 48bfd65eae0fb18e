//! What the kernel holds: counts of BPF programs, maps and links (all of the machine's), read
//! with the `bpf(2)` commands that walk their ids; whether a given program is still loaded;
//! what is attached to a cgroup. For tests that check nothing is loaded or left behind.

use std::io;

/// `bpf_cmd` values (linux/bpf.h).
const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_MAP_GET_NEXT_ID: libc::c_long = 12;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
/// Past every `bpf_attach_type` there is (the query refuses those that are not a cgroup's).
const ATTACH_TYPES: u32 = 64;

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

/// How many programs are attached to the cgroup at `path` itself, over every attach type
/// (`BPF_PROG_QUERY`; links included).
pub fn cgroup_programs(path: &std::path::Path) -> io::Result<usize> {
    use std::os::fd::AsRawFd as _;
    let dir = std::fs::File::open(path)?;
    let mut total = 0;
    for attach_type in 0..ATTACH_TYPES {
        // bpf_attr's query: target_fd, attach_type, query_flags, attach_flags, prog_ids (u64),
        // prog_cnt.
        let mut attr = [0u32; 32];
        attr[0] = dir.as_raw_fd() as u32;
        attr[1] = attach_type;
        // SAFETY: a bpf_attr of the size given, which the kernel reads and fills in; no
        // program ids are asked for (prog_ids is null), only their count.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr) as u32,
            )
        };
        if rc == 0 {
            total += attr[6] as usize;
            continue;
        }
        let e = io::Error::last_os_error();
        // Attach types that are not a cgroup's.
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
    }
    Ok(total)
}

/// Whether the kernel still holds a program with this id.
pub fn program_exists(id: u32) -> io::Result<bool> {
    let mut attr = [0u32; 32];
    attr[0] = id;
    // SAFETY: a bpf_attr of the size given; the returned descriptor is closed at once.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr) as u32,
        )
    };
    if fd >= 0 {
        // SAFETY: the descriptor the kernel just gave us.
        unsafe { libc::close(fd as libc::c_int) };
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENOENT) {
        Ok(false)
    } else {
        Err(e)
    }
}
