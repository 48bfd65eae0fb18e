//! Probes of what the running kernel accepts, each one loaded and thrown away: a minimal program
//! of a type and attach type (`r0 = 1; exit`), a helper called from a program of a type (the
//! verifier's log says whether the type may call it), a map of a type. Nothing is attached or
//! pinned, so nothing outlives the call; the kernel's own state is not changed.

use aya_obj::generated::{bpf_attach_type, bpf_func_id, bpf_map_type, bpf_prog_type};

use crate::sys::bpf;

/// One BPF instruction as the kernel lays it out: opcode, registers (dst low nibble, src high),
/// offset, immediate.
const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    (code as u64)
        | (((dst | (src << 4)) as u64) << 8)
        | ((off as u16 as u64) << 16)
        | ((imm as u32 as u64) << 32)
}

/// `r0 = 1` (BPF_ALU64 | BPF_MOV | BPF_K): every hook we use accepts 1 as its return value.
const R0_IS_1: u64 = insn(0xb7, 0, 0, 0, 1);
/// `exit`.
const EXIT: u64 = insn(0x95, 0, 0, 0, 0);

/// A call to `helper` (BPF_JMP | BPF_CALL).
const fn call(helper: bpf_func_id) -> u64 {
    insn(0x85, 0, 0, 0, helper as i32)
}

/// A program type with the attach type it is loaded for.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    pub prog_type: bpf_prog_type,
    pub attach: Option<bpf_attach_type>,
}

impl Hook {
    pub const fn new(prog_type: bpf_prog_type, attach: bpf_attach_type) -> Self {
        Hook {
            prog_type,
            attach: Some(attach),
        }
    }

    pub const fn without_attach_type(prog_type: bpf_prog_type) -> Self {
        Hook {
            prog_type,
            attach: None,
        }
    }
}

/// What a probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    Present,
    /// Absent, with the kernel's words.
    Absent(String),
}

impl Found {
    pub fn is_present(&self) -> bool {
        *self == Found::Present
    }
}

/// Whether the kernel loads a program of `hook`'s type for its attach type.
pub fn program(hook: Hook) -> Found {
    match bpf::prog_load(hook.prog_type, hook.attach, &[R0_IS_1, EXIT]) {
        Ok(_fd) => Found::Present,
        Err((e, log)) => Found::Absent(first_line(&log).unwrap_or_else(|| e.to_string())),
    }
}

/// Whether a program of `hook`'s type may call `helper`. The call is made with whatever the
/// argument registers hold, which the verifier refuses for most helpers; what tells is whether
/// it refuses the helper itself (as bpftool's feature probes read it).
pub fn helper(hook: Hook, helper: bpf_func_id) -> Found {
    match bpf::prog_load(hook.prog_type, hook.attach, &[call(helper), R0_IS_1, EXIT]) {
        Ok(_fd) => Found::Present,
        Err((e, log)) => match refused_helper(&log) {
            Some(line) => Found::Absent(line),
            // The program type itself is refused (an older kernel): say so, not the helper.
            None if log.is_empty() => Found::Absent(e.to_string()),
            None => Found::Present,
        },
    }
}

/// The verifier's line refusing a helper, if that is what the log says.
fn refused_helper(log: &str) -> Option<String> {
    log.lines()
        .find(|l| {
            l.contains("unknown func")
                || l.contains("invalid func")
                || l.contains("cannot use helper")
        })
        .map(str::to_string)
}

fn first_line(log: &str) -> Option<String> {
    log.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// Whether the kernel creates a map of `map_type` with these sizes.
pub fn map(map_type: bpf_map_type, key: u32, value: u32, max_entries: u32, flags: u32) -> Found {
    match bpf::map_create(map_type, key, value, max_entries, flags) {
        Ok(_fd) => Found::Present,
        Err(e) => Found::Absent(e.to_string()),
    }
}

/// Whether the programs of cgroup socket hooks may read the current task's pid and `comm`
/// (Linux 6.1): what `trace` shows of the process that made a connection.
pub fn task_helpers_in_cgroup_hooks() -> bool {
    let connect = Hook::new(
        bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        bpf_attach_type::BPF_CGROUP_INET4_CONNECT,
    );
    let getsockopt = Hook::new(
        bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCKOPT,
        bpf_attach_type::BPF_CGROUP_GETSOCKOPT,
    );
    [connect, getsockopt].into_iter().all(|hook| {
        [
            bpf_func_id::BPF_FUNC_get_current_pid_tgid,
            bpf_func_id::BPF_FUNC_get_current_comm,
            bpf_func_id::BPF_FUNC_get_current_uid_gid,
        ]
        .into_iter()
        .all(|h| helper(hook, h).is_present())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_are_laid_out_as_the_kernel_reads_them() {
        // r0 = 1: opcode 0xb7, dst r0, imm 1 in the upper word.
        assert_eq!(R0_IS_1.to_le_bytes(), [0xb7, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(EXIT.to_le_bytes(), [0x95, 0, 0, 0, 0, 0, 0, 0]);
        let c = call(bpf_func_id::BPF_FUNC_get_netns_cookie);
        assert_eq!(c.to_le_bytes(), [0x85, 0, 0, 0, 122, 0, 0, 0]);
        // Registers: dst in the low nibble, src in the high one; a negative offset.
        assert_eq!(
            insn(0xbf, 1, 6, -2, 0).to_le_bytes(),
            [0xbf, 0x61, 0xfe, 0xff, 0, 0, 0, 0]
        );
    }

    /// Needs root (CAP_BPF), as every test of the crate run by `cargo xtask test`.
    #[test]
    fn probes_tell_what_a_hook_may_do_from_what_it_may_not() {
        let connect = Hook::new(
            bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            bpf_attach_type::BPF_CGROUP_INET4_CONNECT,
        );
        let sk_lookup = Hook::new(
            bpf_prog_type::BPF_PROG_TYPE_SK_LOOKUP,
            bpf_attach_type::BPF_SK_LOOKUP,
        );
        assert!(program(connect).is_present(), "a connect4 program loads");
        assert!(helper(sk_lookup, bpf_func_id::BPF_FUNC_sk_assign).is_present());
        // sk_assign is for sk_lookup (and tc), never for connect: the verifier says so.
        match helper(connect, bpf_func_id::BPF_FUNC_sk_assign) {
            Found::Absent(why) => assert!(why.contains("sk_assign"), "{why}"),
            Found::Present => panic!("connect4 may not call bpf_sk_assign"),
        }
        // A connect program loaded for a getsockopt attach point is refused.
        let wrong = Hook::new(
            bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            bpf_attach_type::BPF_CGROUP_GETSOCKOPT,
        );
        assert!(!program(wrong).is_present());
        assert!(map(bpf_map_type::BPF_MAP_TYPE_RINGBUF, 0, 0, 4096, 0).is_present());
        assert!(
            !map(bpf_map_type::BPF_MAP_TYPE_RINGBUF, 0, 0, 4095, 0).is_present(),
            "not a page multiple"
        );
    }

    #[test]
    fn the_verifier_refusing_a_helper_is_told_from_other_errors() {
        let refused = "0: (85) call bpf_get_current_comm#16\nprogram of this type cannot use \
                       helper bpf_get_current_comm#16\nprocessed 1 insns";
        assert_eq!(
            refused_helper(refused).as_deref(),
            Some("program of this type cannot use helper bpf_get_current_comm#16")
        );
        assert!(refused_helper("0: (85) call unknown#200\ninvalid func unknown#200").is_some());
        assert!(refused_helper("unknown func bpf_get_netns_cookie#122").is_some());
        // Known helper, bad arguments: present.
        assert_eq!(
            refused_helper("0: (85) call bpf_sk_assign#124\nR1 type=ctx expected=fp"),
            None
        );
    }
}
