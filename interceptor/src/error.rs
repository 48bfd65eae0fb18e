//! Typed errors where a caller branches on them, and the command's exit codes.

use thiserror::Error;

/// Exit code of a usage error (bad option value), as clap uses.
pub const EXIT_USAGE: i32 = 2;
/// Exit code of a runtime failure.
pub const EXIT_FAILURE: i32 = 1;

/// A bad option value. Always a usage error (exit 2).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{flag}: invalid port {value:?} (a port is a number from 1 to 65535)")]
    Port { flag: &'static str, value: String },
    #[error("{flag}: invalid CIDR {value:?}: {reason}")]
    Cidr {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "{flag}: unknown user or group {value:?} (not a number, and not in the passwd/group database)"
    )]
    UnknownId { flag: &'static str, value: String },
    #[error("{flag}: at most {max} ids are supported")]
    TooMany { flag: &'static str, max: usize },
    #[error("-m/--istio-inbound-interception-mode: invalid mode {value:?} (REDIRECT or TPROXY)")]
    Mode { value: String },
    #[error("{flag}: invalid interface name {value:?}")]
    Interface { flag: &'static str, value: String },
    #[error("{flag}: invalid value {value:?}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("{flag}: {reason}")]
    Unsupported { flag: &'static str, reason: String },
    #[error("{flag}: no interface {value:?} in the pod's network namespace")]
    NoSuchInterface { flag: &'static str, value: String },
    #[error("--inbound-fail: invalid value {value:?} (open or closed)")]
    InboundFail { value: String },
    #[error("--raw-sockets: invalid value {value:?} (refuse or allow)")]
    RawSockets { value: String },
    #[error(
        "--backend {value:?}: the node daemon intercepts with eBPF only (for iptables, run \
         `interceptor init --backend iptables` in the pod)"
    )]
    DaemonBackend { value: String },
    #[error("-n/--dry-run: not available for pods of the node daemon (use `init --dry-run`)")]
    DaemonDryRun,
    #[error("--pod {value:?}: expected NAMESPACE/NAME")]
    PodName { value: String },
}

/// Where the programs would attach is unusable: also the caller's mistake (exit 2).
#[derive(Debug, Error)]
pub enum TargetError {
    #[error("--cgroup {path}: no such directory")]
    CgroupMissing { path: String },
    #[error("--cgroup {path}: not a cgroup v2 directory (cgroup2 is mounted at {mount})")]
    NotCgroup2 { path: String, mount: String },
    #[error(
        "--cgroup {path}: refusing to attach to the root cgroup (it holds every process of the node)"
    )]
    RootCgroup { path: String },
    #[error("--netns {path}: cannot open it as a network namespace: {reason}")]
    Netns { path: String, reason: String },
    #[error(
        "--cgroup {path}: the node daemon manages interception here; register the pod with \
         `interceptor pod add` instead"
    )]
    ManagedByDaemon { path: String },
    #[error(
        "--cgroup {path}: `interceptor init` manages interception here (one pod); remove it with \
         `interceptor clean --cgroup {path}` or give the daemon a parent cgroup of the pods"
    )]
    ManagedByInit { path: String },
}

impl TargetError {
    pub const fn exit_code(&self) -> i32 {
        EXIT_USAGE
    }
}

/// A limit of the node's datapath: a size out of its bounds, or a pod that does not fit. The
/// caller's to fix (exit 2), and refused before anything changes.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LimitError {
    #[error("{flag} {value}: out of range: {min} to {max} ({what})")]
    OutOfRange {
        flag: &'static str,
        value: u64,
        min: u64,
        max: u64,
        what: &'static str,
    },
    #[error(
        "{what}: the pod has {count} entries, more than the {max} one pod may have (a node's \
         datapath holds {node} for all its pods)"
    )]
    PodEntries {
        what: &'static str,
        count: u64,
        max: u64,
        node: u64,
    },
    #[error(
        "{what}: the pod's {count} entries do not fit in the node's datapath: it holds {capacity} \
         for all its pods, {in_use} are in use{update}; remove pods or shorten their lists"
    )]
    NodeEntries {
        what: &'static str,
        count: u64,
        in_use: u64,
        capacity: u64,
        /// Said for an update: the pod's current entries stay until its new ones are live.
        update: &'static str,
    },
    #[error(
        "the node's datapath holds {max} pods, as many as it has room for (--max-pods {max}); \
         pods of other --max-pods or --max-connections go to a datapath of their own"
    )]
    Pods { max: u32 },
}

/// A failure the daemon reported for a request.
#[derive(Debug, Error)]
#[error("{message}")]
pub struct RemoteError {
    pub message: String,
    /// The daemon judged it the caller's mistake.
    pub usage: bool,
}

/// Whether an error is the caller's mistake (bad option value or unusable target): exit 2.
pub fn is_usage(err: &anyhow::Error) -> bool {
    err.downcast_ref::<ConfigError>().is_some()
        || err.downcast_ref::<TargetError>().is_some()
        || err.downcast_ref::<LimitError>().is_some()
        || err.downcast_ref::<RemoteError>().is_some_and(|e| e.usage)
}
