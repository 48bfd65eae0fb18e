//! What an instance records about itself beside its maps (never read by the programs): who
//! made it, for which cgroup and namespace, with which configuration. `status` shows it.

use serde::{Deserialize, Serialize};

/// Who manages an instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceMode {
    /// `interceptor init`: one pod's cgroup and network namespace.
    #[default]
    Pod,
    /// `interceptor daemon`: a parent cgroup, pods registered over the daemon's socket.
    Node,
}

/// What `init` (or the daemon) records about an instance, for `status` (the programs never
/// read it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Absent in records of versions before node mode: those are `init`'s.
    #[serde(default)]
    pub mode: InstanceMode,
    pub version: String,
    pub cgroup: String,
    pub cgroup_id: u64,
    pub netns: String,
    pub netns_inode: u64,
    pub netns_cookie: u64,
    pub updated_unix: u64,
    /// The effective configuration (CIDR lists are cut short when they would not fit).
    pub config: serde_json::Value,
    /// What `--redirect-dns` captures (from the pod's resolv.conf).
    #[serde(default)]
    pub dns_capture: serde_json::Value,
}
