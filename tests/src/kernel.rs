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
