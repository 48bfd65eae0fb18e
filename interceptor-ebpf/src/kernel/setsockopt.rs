//! `cgroup/setsockopt`: header inclusion (`IP_HDRINCL`, `IPV6_HDRINCL`) on a raw socket lets
//! an ICMP socket, which `sock_create` allows, write a TCP packet: refused (EPERM) to a
//! process of the pod other than the proxy, and counted. Turning it off, and every other
//! option, pass untouched.

use core::ptr;

use aya_ebpf::{macros::cgroup_sockopt, programs::SockoptContext};
use interceptor_ebpf::{
    Counter,
    raw_socket::{IP_HDRINCL, IPV6_HDRINCL, refuses_option},
};

use crate::{
    helpers::{caller_ids, netns_cookie},
    maps::{count, pod_config},
};

#[cgroup_sockopt(setsockopt)]
pub fn refuse_header_inclusion(ctx: SockoptContext) -> i32 {
    // SAFETY: the context is valid for the program's run, and this is its only borrow.
    let so = unsafe { &*ctx.sockopt };
    if so.optname != IP_HDRINCL && so.optname != IPV6_HDRINCL {
        return 1; // the common case, decided without a map lookup
    }
    // SAFETY: `sk` is the member of this union the kernel sets.
    let sk = unsafe { so.__bindgen_anon_1.sk };
    // SAFETY: a full socket valid for the program's run, or null.
    let Some(sk) = (unsafe { sk.as_ref() }) else {
        return 1;
    };
    let Some(cfg) = pod_config(netns_cookie(&ctx)) else {
        return 1;
    };
    let (uid, gid) = caller_ids();
    if !refuses_option(cfg, sk.type_, so.level, so.optname, uid, gid) {
        return 1;
    }
    if !turns_on(so) {
        return 1;
    }
    count(cfg, Counter::RawSocketRefused);
    0
}

/// Whether the option's value (an int, or a single byte, as `ip_setsockopt` reads it) is not
/// zero. A value the program cannot read counts as on.
#[inline(always)]
fn turns_on(so: &aya_ebpf::bindings::bpf_sockopt) -> bool {
    // SAFETY: `optval` is the member of this union the kernel sets.
    let start = unsafe { so.__bindgen_anon_2.optval }.cast::<u8>();
    // SAFETY: `optval_end` is the member of this union the kernel sets.
    let end = unsafe { so.__bindgen_anon_3.optval_end }.cast::<u8>();
    if so.optlen >= 4 && start.wrapping_add(4) <= end {
        // SAFETY: the four bytes are inside the option's buffer (checked above).
        return unsafe { ptr::read_unaligned(start.cast::<i32>()) } != 0;
    }
    if so.optlen >= 1 && start.wrapping_add(1) <= end {
        // SAFETY: the byte is inside the option's buffer (checked above).
        return unsafe { *start } != 0;
    }
    true
}
