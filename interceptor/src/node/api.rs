//! The daemon's local API: one JSON request and one JSON response, each on one line, per
//! connection to a root-only unix socket. `interceptor pod` and `interceptor-cni` are clients.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::RawOptions;

/// Where the daemon listens unless told otherwise (`--socket`).
pub const DEFAULT_SOCKET: &str = "/run/interceptor/interceptor.sock";

/// Largest request the daemon reads (10,000 CIDRs fit easily).
pub const MAX_REQUEST: u64 = 4 << 20;

/// A pod to register: where it is, who it is, and `init`'s options for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AddPod {
    /// The pod's network namespace (e.g. `/var/run/netns/cni-...`).
    pub netns: PathBuf,
    pub name: String,
    pub namespace: String,
    /// The runtime's id of the pod sandbox (CNI_CONTAINERID), if any: `remove` can name it.
    pub container_id: String,
    pub options: RawOptions,
    /// The pod's resolv.conf, for `--redirect-dns` without `--capture-all-dns`.
    pub resolv_conf: Option<PathBuf>,
    /// The pod's name servers, given directly (wins over `resolv_conf`): on Kubernetes the
    /// cluster DNS service address kubelet writes into every ClusterFirst pod's resolv.conf,
    /// which does not exist yet when the CNI plugin runs.
    pub dns_servers: Vec<std::net::IpAddr>,
}

/// Which registered pods to remove (any field given must match).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PodSelector {
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    /// (namespace, name)
    pub pod: Option<(String, String)>,
}

impl PodSelector {
    pub fn is_empty(&self) -> bool {
        self.container_id.is_none() && self.netns.is_none() && self.pod.is_none()
    }
}

/// What the daemon remembers of a pod (in `POD_RECORDS`, beside its configuration).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PodRecord {
    pub name: String,
    pub namespace: String,
    pub container_id: String,
    /// The namespace path it was registered with.
    pub netns: String,
    pub netns_inode: u64,
    pub netns_cookie: u64,
    pub pod_index: u32,
    pub registered_unix: u64,
    /// The options as given (`None` when they were too large to record).
    pub options: Option<RawOptions>,
}

/// A registered pod, as `list` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    #[serde(flatten)]
    pub record: PodRecord,
    pub rules: u32,
    pub counters: BTreeMap<String, u64>,
}

/// What `add` did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Added {
    pub pod: PodInfo,
    /// True when the pod was registered already and its configuration was replaced.
    pub updated: bool,
    /// Options accepted but not enforced, as `init` warns.
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Add(Box<AddPod>),
    Remove(PodSelector),
    List,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Response {
    /// Set on failure: what went wrong, in one sentence naming the bad value.
    pub error: Option<String>,
    /// The failure is the caller's mistake (a bad option value or target): exit 2.
    pub usage: bool,
    pub added: Option<Added>,
    /// `remove`: the pods removed (empty when none matched); `list`: every pod.
    pub pods: Vec<PodInfo>,
}

impl Response {
    pub fn failure(err: &anyhow::Error) -> Self {
        Response {
            error: Some(format!("{err:#}")),
            usage: crate::error::is_usage(err),
            ..Response::default()
        }
    }
}

#[derive(Debug, Error)]
pub enum ClientError {
    /// Nobody listens on the socket (no daemon, or it is restarting).
    #[error("no daemon answers on {socket}: {reason} (is `interceptor daemon` running?)")]
    Unreachable { socket: String, reason: String },
    #[error("talking to the daemon on {socket}: {reason}")]
    Io { socket: String, reason: String },
}

/// Sends one request and reads the answer. While the socket is absent or refuses (a daemon
/// restarting or being upgraded), connecting is retried until `wait` has passed.
pub fn call(socket: &Path, request: &Request, wait: Duration) -> Result<Response, ClientError> {
    let shown = socket.display().to_string();
    let deadline = Instant::now() + wait;
    let stream = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) => {
                let retry = matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                );
                if !retry || Instant::now() >= deadline {
                    return Err(ClientError::Unreachable {
                        socket: shown,
                        reason: e.to_string(),
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    let io = |e: std::io::Error| ClientError::Io {
        socket: shown.clone(),
        reason: e.to_string(),
    };
    // Registration reads the pod's namespace and may load programs: allow it time.
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io)?;
    let mut line = serde_json::to_vec(request).map_err(|e| io(e.into()))?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|e| ClientError::Io {
        socket: shown.clone(),
        reason: format!("unreadable answer {answer:?}: {e}"),
    })
}
