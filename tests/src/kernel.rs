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
        if let Err(e) = bpf(cmd, &mut attr) {
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

/// One `bpf(2)` command on `attr`, a zeroed `bpf_attr` but for what the command reads.
fn bpf(cmd: libc::c_long, attr: &mut [u32; 32]) -> io::Result<()> {
    // SAFETY: a bpf_attr of the size given, alive for the call, which the kernel fills in.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `BPF_PROG_QUERY`.
const BPF_PROG_QUERY: libc::c_long = 16;

/// The attach points interceptor uses: sockops, connect4/6, post_bind4/6, sendmsg4/6,
/// recvmsg4/6, getsockopt, getpeername4/6 (cgroups); sk_lookup (network namespaces).
pub const CGROUP_ATTACH_TYPES: [u32; 12] = [3, 10, 11, 12, 13, 14, 15, 19, 20, 21, 29, 30];
pub const SK_LOOKUP: u32 = 36;

/// Programs attached to `target` (an open cgroup directory or network namespace) for
/// `attach_type`, by the kernel's account.
pub fn attached(target: &std::fs::File, attach_type: u32) -> io::Result<u32> {
    use std::os::fd::AsRawFd as _;
    // bpf_attr's `query`: target_fd, attach_type, query_flags, attach_flags, prog_ids (u64,
    // none: only the count), prog_cnt (filled in); the rest zero.
    let mut attr = [0u32; 32];
    attr[0] = target.as_raw_fd() as u32;
    attr[1] = attach_type;
    bpf(BPF_PROG_QUERY, &mut attr)?;
    Ok(attr[6])
}
