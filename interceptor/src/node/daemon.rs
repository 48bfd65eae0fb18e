//! `interceptor daemon`: the node agent. It starts (or re-adopts) the node instance, then
//! serves the pod API on a unix socket and, if asked, metrics over HTTP.
//!
//! It keeps no state of its own: everything is pinned on bpffs. Killing it (any signal, even
//! SIGKILL) leaves interception running; the next daemon picks it up, replacing the programs
//! in place. That is also how an upgrade works, so SIGTERM needs no handler.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::{
        fs::{FileTypeExt as _, PermissionsExt as _},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::{
    Node, NodeOptions,
    api::{self, Request, Response},
    metrics,
};
use crate::{datapath::LoadOptions, pod::Cgroup, sys};

/// How the daemon runs (`interceptor daemon`'s options).
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// The parent cgroup of the pods (cgroup v2).
    pub cgroup: PathBuf,
    /// The API socket (root-only).
    pub socket: PathBuf,
    /// Where bpffs is (mounted there if it is not).
    pub bpffs: PathBuf,
    /// Serve /metrics, /healthz and /readyz here.
    pub metrics: Option<std::net::SocketAddr>,
    /// Have the kernel count each program's run time while the daemon runs.
    pub bpf_stats: bool,
    /// Pods the maps hold (fixed when the node instance is first created).
    pub max_pods: u32,
    /// Entries of each connection-tracking map, shared by every pod.
    pub max_connections: u32,
    /// aya-log level of the programs (0 = off ... 5 = trace).
    pub kernel_log_level: u8,
}

/// How often pods whose namespace vanished without a CNI DEL are looked for.
const GC_INTERVAL: Duration = Duration::from_secs(30);
/// A client gets this long to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(args: &DaemonOptions) -> anyhow::Result<()> {
    sys::users::require_root("it loads BPF programs and attaches them to cgroups")?;
    let cgroup = Cgroup::open(&args.cgroup)?;
    // Per-program run time for /metrics: counted only while this fd is open.
    let _stats = if args.bpf_stats {
        // Metrics without run times are still worth serving: a warning, not a failure.
        sys::bpf::enable_stats()
            .inspect_err(|e| {
                tracing::warn!(
                    error = %e,
                    "--bpf-stats: cannot enable BPF run-time statistics (needs CAP_SYS_ADMIN); \
                     program run times stay 0"
                )
            })
            .ok()
    } else {
        None
    };
    let ready = Arc::new(AtomicBool::new(false));
    let node: Arc<Mutex<Option<Node>>> = Arc::new(Mutex::new(None));
    if let Some(addr) = args.metrics {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("--metrics {addr}: cannot listen"))?;
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
        let (node, ready) = (node.clone(), ready.clone());
        std::thread::spawn(move || metrics::serve(listener, node, ready));
    }

    let opts = NodeOptions {
        load: LoadOptions {
            bpffs_root: args.bpffs.clone(),
            max_connections: args.max_connections.max(1),
            kernel_log_level: args.kernel_log_level,
        },
        max_pods: args.max_pods.max(1),
    };
    let (started, done) = Node::start(&cgroup, opts)?;
    tracing::info!(
        cgroup = %cgroup.path.display(),
        instance = %started.dir().display(),
        adopted = done.adopted.len(),
        dropped = done.dropped.len(),
        "node instance {}",
        if done.created { "created" } else { "re-adopted, programs replaced in place" }
    );
    *node.lock().expect("node lock") = Some(started);

    let listener = bind_socket(&args.socket)?;
    ready.store(true, Ordering::SeqCst);
    tracing::info!(socket = %args.socket.display(), "ready for pods");

    {
        let node = node.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(GC_INTERVAL);
                if let Some(n) = node.lock().expect("node lock").as_mut()
                    && let Err(e) = n.collect_gone()
                {
                    tracing::warn!(error = %format!("{e:#}"), "looking for vanished pods");
                }
            }
        });
    }

    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let node = node.clone();
                std::thread::spawn(move || serve_client(stream, &node));
            }
            Err(e) => tracing::warn!(error = %e, "accepting a client"),
        }
    }
    Ok(())
}

/// Binds the API socket, root-only. A socket file left by a dead daemon is replaced; one a
/// live daemon answers on is not.
fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("--socket: creating {}", parent.display()))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("--socket {}: exists and is not a socket", path.display());
        }
        if UnixStream::connect(path).is_ok() {
            bail!(
                "--socket {}: another daemon is serving it (one daemon per node)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("--socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to root", path.display()))?;
    Ok(listener)
}

fn serve_client(stream: UnixStream, node: &Mutex<Option<Node>>) {
    let response = match read_request(&stream) {
        Ok(request) => handle(request, node),
        Err(e) => Response::failure(&e),
    };
    let mut line = serde_json::to_vec(&response).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    let _ = (&stream).write_all(&line);
}

fn read_request(stream: &UnixStream) -> anyhow::Result<Request> {
    // The file mode keeps others out; the peer's uid is checked too (a socket passed on).
    let uid = sys::process::peer_uid(stream).context("reading the client's credentials")?;
    if uid != 0 {
        bail!("permission denied: only root may use the interceptor API (client uid {uid})");
    }
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(stream.take(api::MAX_REQUEST))
        .read_line(&mut line)
        .context("reading the request")?;
    serde_json::from_str(&line).context("an unreadable request")
}

fn handle(request: Request, node: &Mutex<Option<Node>>) -> Response {
    let mut guard = node.lock().expect("node lock");
    let Some(node) = guard.as_mut() else {
        return Response::failure(&anyhow::anyhow!("the daemon is starting"));
    };
    let result = match request {
        Request::Add(req) => node.add(&req).map(|added| Response {
            added: Some(added),
            ..Response::default()
        }),
        Request::Remove(sel) => node.remove(&sel).map(|pods| Response {
            pods,
            ..Response::default()
        }),
        Request::List => node.list().map(|pods| Response {
            pods,
            ..Response::default()
        }),
    };
    result.unwrap_or_else(|e| {
        tracing::warn!(error = %format!("{e:#}"), "request failed");
        Response::failure(&e)
    })
}
