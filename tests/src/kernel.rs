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

/// `bpf(cmd, attr)` with a `bpf_attr` of 128 bytes (the fields a command does not use zero):
/// its return value, or the errno.
fn bpf(cmd: libc::c_long, attr: &mut [u32; 32]) -> io::Result<libc::c_long> {
    // SAFETY: a bpf_attr of the size given, which the kernel reads and may fill in; the
    // commands used here take no pointers (or null ones).
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
    let mut n = 0;
    let mut id: u32 = 0;
    loop {
        // bpf_attr's `start_id` then `next_id` (the rest zero).
        let mut attr = [0u32; 32];
        attr[0] = id;
        match bpf(cmd, &mut attr) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(n),
            Err(e) => return Err(e),
        }
        id = attr[1];
        n += 1;
    }
}

/// How many programs are attached to the cgroup at `path` itself, over every attach type
/// (`BPF_PROG_QUERY`; links included).
pub fn cgroup_programs(path: &std::path::Path) -> io::Result<usize> {
    let dir = std::fs::File::open(path)?;
    let mut total = 0;
    for attach_type in 0..ATTACH_TYPES {
        match attached(&dir, attach_type) {
            Ok(n) => total += n as usize,
            // Attach types that are not a cgroup's.
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
    let mut attr = [0u32; 32];
    attr[0] = target.as_raw_fd() as u32;
    attr[1] = attach_type;
    bpf(BPF_PROG_QUERY, &mut attr)?;
    Ok(attr[6])
}

/// Whether the kernel still holds a program with this id.
pub fn program_exists(id: u32) -> io::Result<bool> {
    let mut attr = [0u32; 32];
    attr[0] = id;
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
