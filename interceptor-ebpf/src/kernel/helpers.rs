//! The kernel helpers every hook calls, as safe functions.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_uid_gid, generated::bpf_get_netns_cookie},
};

/// The cookie of the network namespace of the context's socket: the key of its pod.
#[inline(always)]
pub fn netns_cookie(ctx: &impl EbpfContext) -> u64 {
    // SAFETY: the helper reads the program's own context, valid for the program's run.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
}

/// The calling process's uid and (primary) gid.
#[inline(always)]
pub fn caller_ids() -> (u32, u32) {
    let uid_gid = bpf_get_current_uid_gid();
    (uid_gid as u32, (uid_gid >> 32) as u32)
}
