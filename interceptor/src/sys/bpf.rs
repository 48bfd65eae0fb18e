//! `bpf(2)` commands aya 0.14 keeps private or lacks: link create and update for every hook we
//! use (aya cannot turn `cgroup/getsockopt`'s link into a pinnable one), pinning and opening
//! pins, link info (the netns and cgroup a link is attached to, 0 once they are gone), and
//! run-time statistics. Attributes are `aya_obj::generated::bpf_attr`, filled by field name.

use std::{
    ffi::CString,
    io, mem,
    os::fd::{AsFd, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

pub use aya_obj::generated::bpf_attach_type;
use aya_obj::generated::{
    bpf_attr, bpf_cmd, bpf_link_info, bpf_link_type, bpf_prog_info, bpf_stats_type,
};

/// Runs one bpf command; the kernel's return value (an fd for the commands that make one).
fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: `attr` is a whole, initialised `bpf_attr` the kernel may read and write; every
    // pointer stored in it by the callers below outlives this call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            mem::size_of::<bpf_attr>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// A zeroed attribute: unused fields must be 0 for the kernel to accept it.
fn zeroed() -> bpf_attr {
    // SAFETY: `bpf_attr` is a C union of plain integers, for which all-zero bytes are valid.
    unsafe { mem::zeroed() }
}

/// Takes ownership of a descriptor the kernel has just returned.
fn owned_fd(fd: i64) -> OwnedFd {
    // SAFETY: `fd` is a new descriptor returned by the kernel, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn raw(fd: &impl AsFd) -> u32 {
    fd.as_fd().as_raw_fd() as u32
}

fn c_path(path: &Path) -> io::Result<CString> {
    Ok(CString::new(path.as_os_str().as_encoded_bytes())?)
}

/// `BPF_LINK_CREATE`: attaches `prog` to `target` (a cgroup, or a network namespace for
/// `BPF_SK_LOOKUP`). A link runs beside the target's other programs (a runtime's, a CNI's) and
/// is detached when its last fd or pin goes.
pub fn link_create(
    prog: &impl AsFd,
    target: &impl AsFd,
    attach_type: bpf_attach_type,
) -> io::Result<OwnedFd> {
    let mut attr = zeroed();
    attr.link_create.__bindgen_anon_1.prog_fd = raw(prog);
    attr.link_create.__bindgen_anon_2.target_fd = raw(target);
    attr.link_create.attach_type = attach_type as u32;
    bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr).map(owned_fd)
}

/// `BPF_PROG_ATTACH` of `prog` to the map `map` (`BPF_SK_MSG_VERDICT` on a sockhash): the map
/// keeps the program, and gives it to every socket put into it from then on; attaching again
/// replaces it.
pub fn map_prog_attach(
    prog: &impl AsFd,
    map: &impl AsFd,
    attach_type: bpf_attach_type,
) -> io::Result<()> {
    let mut attr = zeroed();
    attr.__bindgen_anon_5.__bindgen_anon_1.target_fd = raw(map);
    attr.__bindgen_anon_5.attach_bpf_fd = raw(prog);
    attr.__bindgen_anon_5.attach_type = attach_type as u32;
    bpf(bpf_cmd::BPF_PROG_ATTACH, &mut attr).map(drop)
}

/// `BPF_LINK_UPDATE`: swaps the program behind a link atomically; connections never see a
/// moment without a program.
pub fn link_update(link: &impl AsFd, new_prog: &impl AsFd) -> io::Result<()> {
    let mut attr = zeroed();
    attr.link_update.link_fd = raw(link);
    attr.link_update.__bindgen_anon_1.new_prog_fd = raw(new_prog);
    bpf(bpf_cmd::BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// `BPF_OBJ_PIN`: pins a BPF object (a link, a program) at `path` on a bpffs.
pub fn obj_pin(obj: &impl AsFd, path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    let mut attr = zeroed();
    attr.__bindgen_anon_4.pathname = c.as_ptr() as u64; // `c` outlives the call
    attr.__bindgen_anon_4.bpf_fd = raw(obj);
    bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr).map(drop)
}

/// `BPF_OBJ_GET`: opens a pinned object (aya offers no fd for a pinned link).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    let mut attr = zeroed();
    attr.__bindgen_anon_4.pathname = c.as_ptr() as u64; // `c` outlives the call
    bpf(bpf_cmd::BPF_OBJ_GET, &mut attr).map(owned_fd)
}

/// What `BPF_OBJ_GET_INFO_BY_FD` says of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub id: u32,
    pub prog_id: u32,
    /// A network-namespace link (`sk_lookup`): the namespace's inode, 0 once the namespace is
    /// gone (the kernel detaches such links itself). 0 for other links.
    pub netns_ino: u32,
    /// A cgroup link: the cgroup's id, 0 once the cgroup is gone. 0 for other links.
    pub cgroup_id: u64,
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a link (aya 0.14 has no netns field).
pub fn link_info(link: &impl AsFd) -> io::Result<LinkInfo> {
    // SAFETY: `bpf_link_info` is plain integers and unions of them: all-zero is valid.
    let mut info: bpf_link_info = unsafe { mem::zeroed() };
    let mut attr = zeroed();
    attr.info.bpf_fd = raw(link);
    attr.info.info_len = mem::size_of::<bpf_link_info>() as u32;
    attr.info.info = (&raw mut info) as u64; // `info` outlives the call
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let kind = info.type_;
    let netns_ino = if kind == bpf_link_type::BPF_LINK_TYPE_NETNS as u32 {
        // SAFETY: the union member the kernel filled for this link type (plain integers).
        unsafe { info.__bindgen_anon_1.netns.netns_ino }
    } else {
        0
    };
    let cgroup_id = if kind == bpf_link_type::BPF_LINK_TYPE_CGROUP as u32 {
        // SAFETY: as above.
        unsafe { info.__bindgen_anon_1.cgroup.cgroup_id }
    } else {
        0
    };
    Ok(LinkInfo {
        id: info.id,
        prog_id: info.prog_id,
        netns_ino,
        cgroup_id,
    })
}

/// What `BPF_OBJ_GET_INFO_BY_FD` says of a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgInfo {
    pub id: u32,
    /// Runs and the time they took, counted while run-time statistics are on.
    pub run_count: u64,
    pub run_time_ns: u64,
    /// Instructions the verifier went through.
    pub verified_insns: u32,
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a program.
pub fn prog_info(prog: &impl AsFd) -> io::Result<ProgInfo> {
    // SAFETY: `bpf_prog_info` is plain integers: all-zero is valid.
    let mut info: bpf_prog_info = unsafe { mem::zeroed() };
    let mut attr = zeroed();
    attr.info.bpf_fd = raw(prog);
    attr.info.info_len = mem::size_of::<bpf_prog_info>() as u32;
    attr.info.info = (&raw mut info) as u64; // `info` outlives the call
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(ProgInfo {
        id: info.id,
        run_count: info.run_cnt,
        run_time_ns: info.run_time_ns,
        verified_insns: info.verified_insns,
    })
}

/// `BPF_PROG_GET_FD_BY_ID`: a program by its id.
pub fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = zeroed();
    attr.__bindgen_anon_6.__bindgen_anon_1.prog_id = id;
    bpf(bpf_cmd::BPF_PROG_GET_FD_BY_ID, &mut attr).map(owned_fd)
}

/// A program's id.
pub fn prog_id(prog: &impl AsFd) -> io::Result<u32> {
    Ok(prog_info(prog)?.id)
}

/// `BPF_ENABLE_STATS(BPF_STATS_RUN_TIME)`: the kernel counts every program's runs and run time
/// while the returned fd is open (what `kernel.bpf_stats_enabled=1` does, scoped to a process).
pub fn enable_stats() -> io::Result<OwnedFd> {
    let mut attr = zeroed();
    attr.enable_stats.type_ = bpf_stats_type::BPF_STATS_RUN_TIME as u32;
    bpf(bpf_cmd::BPF_ENABLE_STATS, &mut attr).map(owned_fd)
}

/// `BPF_PROG_LOAD` of raw instructions (`insns`, as the kernel lays them out), as a probe of what
/// the kernel accepts: the program, or the errno and the verifier's log. Never attached: it
/// goes with its fd.
pub fn prog_load(
    prog_type: aya_obj::generated::bpf_prog_type,
    expected_attach_type: Option<bpf_attach_type>,
    insns: &[u64],
) -> Result<OwnedFd, (io::Error, String)> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = zeroed();
    attr.__bindgen_anon_3.prog_type = prog_type as u32;
    attr.__bindgen_anon_3.insn_cnt = insns.len() as u32;
    attr.__bindgen_anon_3.insns = insns.as_ptr() as u64; // `insns` outlives the call
    attr.__bindgen_anon_3.license = license.as_ptr() as u64;
    attr.__bindgen_anon_3.log_level = 1;
    attr.__bindgen_anon_3.log_size = log.len() as u32;
    attr.__bindgen_anon_3.log_buf = log.as_mut_ptr() as u64; // `log` outlives the call
    attr.__bindgen_anon_3.expected_attach_type = expected_attach_type.map_or(0, |t| t as u32);
    bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
        .map(owned_fd)
        .map_err(|e| {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            (e, String::from_utf8_lossy(&log[..end]).into_owned())
        })
}

/// `BPF_MAP_CREATE` of a map nobody else sees (it goes with its fd): a probe of a map type.
pub fn map_create(
    map_type: aya_obj::generated::bpf_map_type,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
) -> io::Result<OwnedFd> {
    let mut attr = zeroed();
    attr.__bindgen_anon_1.map_type = map_type as u32;
    attr.__bindgen_anon_1.key_size = key_size;
    attr.__bindgen_anon_1.value_size = value_size;
    attr.__bindgen_anon_1.max_entries = max_entries;
    attr.__bindgen_anon_1.map_flags = map_flags;
    bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr).map(owned_fd)
}

/// Whether the kernel knows `BPF_LINK_CREATE` (Linux 5.7), asked with no program and no target:
/// a kernel that knows the command fails on the descriptors (EBADF), one that does not on
/// the command (EINVAL). Nothing is attached either way.
pub fn knows_link_create() -> bool {
    let mut attr = zeroed();
    attr.link_create.__bindgen_anon_1.prog_fd = u32::MAX; // -1: no such descriptor
    attr.link_create.__bindgen_anon_2.target_fd = u32::MAX;
    attr.link_create.attach_type = bpf_attach_type::BPF_CGROUP_INET4_CONNECT as u32;
    match bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr) {
        Ok(fd) => {
            drop(owned_fd(fd)); // cannot happen with no descriptors; let it go at once
            true
        }
        Err(e) => e.raw_os_error() == Some(libc::EBADF),
    }
}
