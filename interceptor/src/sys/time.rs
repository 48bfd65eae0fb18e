//! The clock the kernel programs stamp things with.

use std::mem;

/// `CLOCK_MONOTONIC` in nanoseconds: what `bpf_ktime_get_ns()` returns in the programs.
pub fn monotonic_ns() -> u64 {
    // SAFETY: `timespec` is plain integers: all-zero is valid.
    let mut ts: libc::timespec = unsafe { mem::zeroed() };
    // SAFETY: a valid clock id and out pointer; CLOCK_MONOTONIC cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}
