//! The system calls user space makes that neither std nor aya wraps, grouped by family as
//! aya's own `sys/` is. Each wrapper is safe: its `unsafe` is one call with its arguments'
//! validity stated, and it returns `io::Result`.
//!
//! - [`bpf`]: the `bpf(2)` commands aya 0.14 keeps private or lacks (links, pins, info, stats),
//!   built on `aya_obj::generated`'s `bpf_attr` with the kernel's names;
//! - [`fs`]: file-system magic, mounting bpffs, directory locks, mountinfo's escapes;
//! - [`net`]: a namespace's interfaces and addresses, its cookie, `setns`;
//! - [`process`]: other processes' file descriptors (`pidfd_getfd`);
//! - [`time`]: the monotonic clock the programs stamp with;
//! - [`users`]: the passwd and group databases, and whether we are root.

pub mod bpf;
pub mod fs;
pub mod net;
pub mod process;
pub mod time;
pub mod users;
