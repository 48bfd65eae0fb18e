//! The daemon's local API: one JSON request and one JSON response, each on one line, per
//! connection to a root-only unix socket. `interceptor pod` and `interceptor-cni` are clients.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
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
    /// The request is larger than the daemon reads: refused before anything is sent.
    #[error(
        "the request is {size} bytes, more than the daemon accepts ({limit} bytes, \
         {} MiB); nothing was sent",
        MAX_REQUEST >> 20
    )]
    TooLarge { size: usize, limit: u64 },
    #[error("talking to the daemon on {socket}: {reason}")]
    Io { socket: String, reason: String },
}

/// How long the daemon gives one request in all: reading it, handling it (waiting for other
/// requests to the node included) and writing the answer.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);
/// How long the daemon waits for the request line itself (part of [`REQUEST_DEADLINE`]).
pub const READ_DEADLINE: Duration = Duration::from_secs(10);
/// How long a client waits for the answer: the daemon's whole deadline, and a margin, so that
/// the daemon's own reason (a deadline it gave up at) reaches the client.
pub const ANSWER_WAIT: Duration = Duration::from_secs(REQUEST_DEADLINE.as_secs() + 10);
/// The largest answer a client reads (a `list` of every pod of a full node is a few MiB).
const MAX_ANSWER: u64 = 64 << 20;

/// Sends one request and reads the answer. While the socket is absent or refuses (a daemon
/// restarting or being upgraded), connecting is retried until `wait` has passed (any `wait`:
/// one too large to add to the clock means "keep trying"). A request larger than the daemon
/// reads is refused here, before connecting.
pub fn call(socket: &Path, request: &Request, wait: Duration) -> Result<Response, ClientError> {
    let shown = socket.display().to_string();
    let io = |reason: String| ClientError::Io {
        socket: shown.clone(),
        reason,
    };
    let mut line = serde_json::to_vec(request).map_err(|e| io(e.to_string()))?;
    line.push(b'\n');
    if line.len() as u64 > MAX_REQUEST {
        return Err(ClientError::TooLarge {
            size: line.len(),
            limit: MAX_REQUEST,
        });
    }
    let connect_until = Instant::now().checked_add(wait);
    let stream = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) => {
                let retry = matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                );
                if !retry || connect_until.is_some_and(|t| Instant::now() >= t) {
                    return Err(ClientError::Unreachable {
                        socket: shown,
                        reason: e.to_string(),
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    let answer_until = Instant::now() + ANSWER_WAIT;
    let sent = stream
        .set_write_timeout(Some(ANSWER_WAIT))
        .and_then(|()| (&stream).write_all(&line));
    // A daemon that refuses the request (too large, not allowed) answers and closes without
    // reading the rest: its answer is still there to read, and says more than EPIPE would.
    let answer = read_answer(&stream, answer_until);
    match (sent, answer) {
        (_, Ok(answer)) if !answer.is_empty() => serde_json::from_slice(&answer).map_err(|e| {
            io(format!(
                "unreadable answer {:?}: {e}",
                String::from_utf8_lossy(&answer)
            ))
        }),
        (Err(e), _) => Err(io(format!("sending the request: {e}"))),
        (Ok(()), Err(e)) => Err(io(format!("reading the answer: {e}"))),
        (Ok(()), Ok(_)) => Err(io(
            "the daemon closed the connection without an answer".into()
        )),
    }
}

/// The answer line, read until `until` in all (not per read).
fn read_answer(stream: &UnixStream, until: Instant) -> std::io::Result<Vec<u8>> {
    let mut answer = Vec::new();
    let mut reader = BufReader::new(stream.take(MAX_ANSWER));
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", ANSWER_WAIT.as_secs()),
            ));
        }
        stream.set_read_timeout(Some(left))?;
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(answer);
        }
        match buf.iter().position(|b| *b == b'\n') {
            Some(end) => {
                answer.extend_from_slice(&buf[..end]);
                return Ok(answer);
            }
            None => {
                let n = buf.len();
                answer.extend_from_slice(buf);
                reader.consume(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_wait_is_accepted_without_overflow() {
        // Not a socket's directory: refused at once, whatever the wait (Duration::MAX once
        // overflowed the clock and panicked).
        for wait in [Duration::ZERO, Duration::from_secs(u64::MAX), Duration::MAX] {
            let e = call(Path::new("/dev/null/sock"), &Request::List, wait).unwrap_err();
            assert!(matches!(e, ClientError::Unreachable { .. }), "{e}");
        }
    }

    #[test]
    fn a_request_over_the_limit_is_refused_before_connecting() {
        let request = Request::Add(Box::new(AddPod {
            name: "x".repeat(MAX_REQUEST as usize),
            ..AddPod::default()
        }));
        let e = call(Path::new("/nonexistent/sock"), &request, Duration::ZERO).unwrap_err();
        let ClientError::TooLarge { size, limit } = e else {
            panic!("{e}")
        };
        assert!(size as u64 > MAX_REQUEST && limit == MAX_REQUEST);
        let text = e.to_string();
        assert!(
            text.contains(&size.to_string()) && text.contains(&MAX_REQUEST.to_string()),
            "{text}"
        );
    }
}
