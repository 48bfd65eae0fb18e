//! Fixtures for interceptor's integration tests, demo and benchmarks on a real kernel.
//!
//! A [`Topology`] is a "pod" (network namespace + cgroup2 directory) and a "server" namespace
//! joined by a veth pair. Processes are placed in the pod with [`Topology::command`] (cgroup
//! first, then namespace, then uid/gid) and are killed, and every resource removed, when the
//! topology is dropped. The test peers are binaries of this crate:
//! - `interceptor-sidecar`: plays Envoy: forwards to `SO_ORIGINAL_DST`;
//! - `interceptor-test-server`: announces the addresses it sees, then echoes or speaks HTTP;
//! - `interceptor-probe`: the application: connects and reports what it saw as one JSON line;
//! - `interceptor-dns-query`: a DNS client (unconnected or connected UDP, or TCP);
//! - `interceptor-dns-proxy`: plays istio-agent's DNS proxy on 15053.
//!
//! [`podman::Podman`] runs `deploy/` under a real container runtime, from images it builds out of
//! the static binaries `cargo xtask test` stages (`$INTERCEPTOR_IMAGE_CONTEXTS`).
//!
//! Safety on a shared machine: everything is created under unique names (tag, pid, counter),
//! and only what was created is removed. Traffic stays inside the two namespaces.

pub mod bpffs;
mod cgroup;
pub mod cni_node;
pub mod dns;
mod dns_peers;
pub mod family;
pub mod flag_sets;
mod intercepted;
pub mod kernel;
mod leftovers;
pub mod light_pod;
mod lines;
pub mod manifests;
mod netns;
pub mod outcome;
pub mod podman;
mod process;
mod temp_file;
mod topology;
pub mod tracer;
mod wait;

use std::env;
use std::path::PathBuf;

use anyhow::{Result, bail};

pub use cgroup::{OwnedCgroup, cgroup2_mount};
pub use dns_peers::DnsTransport;
pub use intercepted::{
    BPFFS, Backend, Intercepted, IptablesMode, Route, SEED_FLAGS, addr, addr6, any, any6,
    instance_dir, interceptor, interceptor_bin, interceptor_env, route_of,
};
pub use lines::{
    BurstSummary, FailureKind, LoopSummary, ProbeCase, ProbeFailure, ProbeOptions, ProbeResult,
    ServerLine, SidecarLine, errno_name,
};
pub use netns::{is_listening, netns_path, run_in_netns};
pub use process::{Finished, Identity, Process, in_cgroup, raise_open_files_limit};
pub use temp_file::TempFile;
pub use topology::{Place, PodInterface, Side, Topology};
pub use wait::eventually;

pub const SIDECAR_BIN: &str = "interceptor-sidecar";
pub const SERVER_BIN: &str = "interceptor-test-server";
pub const PROBE_BIN: &str = "interceptor-probe";
pub const DNS_QUERY_BIN: &str = "interceptor-dns-query";
pub const DNS_PROXY_BIN: &str = "interceptor-dns-proxy";

/// The path of a binary built with this workspace (the test peers, or `interceptor`).
///
/// Looks in `$INTERCEPTOR_TEST_BIN_DIR` when set (the xtask sets it); otherwise next to the
/// running executable and in its parent directory, since cargo puts test executables in
/// `target/<profile>/deps` and binaries in `target/<profile>`.
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let dirs: Vec<PathBuf> = match env::var_os("INTERCEPTOR_TEST_BIN_DIR") {
        Some(dir) => vec![dir.into()],
        None => {
            let exe = env::current_exe()?;
            exe.ancestors().skip(1).take(2).map(PathBuf::from).collect()
        }
    };
    for dir in &dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "{name} not found in {dirs:?}: build it (`cargo build -p interceptor-tests`) or set \
         INTERCEPTOR_TEST_BIN_DIR"
    )
}
