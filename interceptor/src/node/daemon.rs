//! `interceptor daemon`: the node agent. It starts (or re-adopts) the node instance, then
//! serves the pod API on a unix socket and, if asked, metrics over HTTP.
//!
//! It keeps no state of its own: everything is pinned on bpffs. Killing it (any signal, even
//! SIGKILL) leaves interception running; the next daemon picks it up, replacing the programs
//! in place. That is also how an upgrade works, so SIGTERM needs no handler.
//!
//! Everything runs on tokio. Each API connection is a task with one deadline for the whole
//! request (reading it, waiting for the node, handling it, writing the answer), so a client
//! that is slow, stuck or malicious holds up nobody else. The `Node` calls block (system calls
//! on bpffs and in the pod's namespace): they run on the blocking pool, one at a time under the
//! node's mutex, which a request waits for asynchronously and within its deadline.

use std::{
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use tokio::{
    io::{
        AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader, Interest,
        unix::AsyncFd,
    },
    net::{UnixListener, UnixStream},
    sync::Mutex,
    time::{Instant, timeout_at},
};

use super::{
    Node, NodeOptions, Snapshot,
    api::{self, Request, Response},
    metrics,
};
use crate::{
    datapath::{LoadOptions, Sizes, kernel_log},
    pod::Cgroup,
    sys,
};

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
    /// The datapath's sizes: pods, and connection set-ups at once (its identity: other
    /// sizes are another datapath).
    pub sizes: Sizes,
    /// aya-log level of the programs (0 = off ... 5 = trace).
    pub kernel_log_level: u8,
}

/// How often pods whose namespace vanished without a CNI DEL are looked for.
const GC_INTERVAL: Duration = Duration::from_secs(30);
/// Time kept for writing the answer at the end of a request's deadline: a request that ran
/// out of time still gets told why.
const ANSWER_RESERVE: Duration = Duration::from_secs(2);

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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("interceptor-daemon")
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(serve(args.clone(), cgroup));
    // A node call that never returns must not keep a failing daemon from exiting.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve(args: DaemonOptions, cgroup: Cgroup) -> anyhow::Result<()> {
    let cell = Arc::new(NodeCell::default());
    if let Some(addr) = args.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics {addr}: cannot listen"))?;
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
        tokio::spawn(metrics::serve(listener, cell.clone()));
    }

    let opts = NodeOptions {
        load: LoadOptions {
            bpffs_root: args.bpffs.clone(),
            sizes: args.sizes,
            kernel_log_level: args.kernel_log_level,
        },
    };
    let cgroup_path = cgroup.path.clone();
    let (started, done) = tokio::task::spawn_blocking(move || Node::start(&cgroup, opts))
        .await
        .context("starting the node instance")??;
    tracing::info!(
        cgroup = %cgroup_path.display(),
        instance = %started.dir().display(),
        adopted = done.adopted.len(),
        dropped = done.dropped.len(),
        "node instance {}",
        if done.created { "created" } else { "re-adopted, programs replaced in place" }
    );
    if args.kernel_log_level > 0 {
        forward_kernel_log(started.dir());
    }
    *cell.node.lock().await = Some(started);

    let socket = args.socket.clone();
    let listener = tokio::task::spawn_blocking(move || bind_socket(&socket))
        .await
        .context("binding the API socket")??;
    cell.ready.store(true, Ordering::SeqCst);
    tracing::info!(socket = %args.socket.display(), "ready for pods");

    tokio::spawn(collect_gone_pods(cell.clone()));
    serve_api(listener, cell, ApiLimits::DAEMON).await
}

/// Forwards the programs' aya-log records (`--kernel-log-level`) into this log as they come.
fn forward_kernel_log(datapath: &Path) {
    let reader = match kernel_log::open(datapath, kernel_log::ToTracing) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("the programs' log records cannot be read: {e:#}");
            return;
        }
    };
    // SAFETY: the reader owns its ring buffer's descriptor, open and the same until the
    // reader goes, which is when the `AsyncFd` goes.
    let registered = unsafe { AsyncFd::register_with_interest(reader, Interest::READABLE) };
    let mut reader = match registered {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("the programs' log records cannot be waited for: {e}");
            return;
        }
    };
    tracing::info!("forwarding the programs' log records");
    tokio::spawn(async move {
        loop {
            let Ok(mut ready) = reader.readable_mut().await else {
                return;
            };
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    });
}

/// Drops, every [`GC_INTERVAL`], pods whose namespace vanished without a CNI DEL.
async fn collect_gone_pods(cell: Arc<NodeCell>) {
    let mut tick = tokio::time::interval(GC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; start has just reconciled
    loop {
        tick.tick().await;
        let deadline = Instant::now() + GC_INTERVAL;
        if let Err(e) = cell.with_node(deadline, Node::collect_gone).await {
            tracing::warn!(error = %format!("{e:#}"), "looking for vanished pods");
        }
    }
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
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "--socket {}: another daemon is serving it (one daemon per node)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("--socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to root", path.display()))?;
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener).context("registering the API socket with the runtime")
}

/// The node instance (once started) and whether the API is up, shared by the API, the
/// endpoints and the collector of vanished pods.
#[derive(Default)]
struct NodeCell {
    node: Arc<Mutex<Option<Node>>>,
    ready: AtomicBool,
}

impl NodeCell {
    /// Runs `f` on the node, on the blocking pool, under the node's mutex: waiting for the
    /// mutex and the call itself end at `deadline`. A call still running then cannot be
    /// stopped: it finishes in the background (keeping the mutex until then), and the caller
    /// is told that its outcome is unknown.
    async fn with_node<T: Send + 'static>(
        &self,
        deadline: Instant,
        f: impl FnOnce(&mut Node) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let waited = Instant::now();
        let guard = timeout_at(deadline, self.node.clone().lock_owned())
            .await
            .map_err(|_| {
                anyhow!(
                    "the daemon is busy: other requests held the node for {} s; try again",
                    waited.elapsed().as_secs()
                )
            })?;
        let started = Instant::now();
        let call = tokio::task::spawn_blocking(move || {
            let mut guard = guard;
            match guard.as_mut() {
                Some(node) => f(node),
                None => Err(anyhow!("the daemon is starting")),
            }
        });
        match timeout_at(deadline, call).await {
            Ok(Ok(result)) => result,
            // A panic in a node call fails that request, not the daemon.
            Ok(Err(e)) => Err(anyhow!("the request failed inside the daemon: {e}")),
            Err(_) => Err(anyhow!(
                "the request did not finish within {} s; it goes on in the daemon and its \
                 outcome is unknown (`interceptor pod list` shows the pods registered)",
                started.elapsed().as_secs()
            )),
        }
    }
}

impl metrics::Source for NodeCell {
    async fn ready(&self, deadline: Instant) -> bool {
        self.ready.load(Ordering::SeqCst)
            && self
                .with_node(deadline, |node| Ok(node.attached()))
                .await
                .unwrap_or(false)
    }

    async fn snapshot(&self, deadline: Instant) -> anyhow::Result<Option<Snapshot>> {
        if !self.ready.load(Ordering::SeqCst) {
            return Ok(None);
        }
        self.with_node(deadline, |node| node.snapshot())
            .await
            .map(Some)
    }
}

/// How long a connection may take, and who may use the API.
#[derive(Clone, Copy, Debug)]
struct ApiLimits {
    /// Reading the request line.
    read: Duration,
    /// The whole request, answer included.
    total: Duration,
    /// The only uid allowed to connect (SO_PEERCRED).
    client_uid: u32,
}

impl ApiLimits {
    const DAEMON: ApiLimits = ApiLimits {
        read: api::READ_DEADLINE,
        total: api::REQUEST_DEADLINE,
        client_uid: 0,
    };
}

/// What the API serves a request with: the node, or a stand-in in tests.
trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request, deadline: Instant) -> impl Future<Output = Response> + Send;
}

impl Handler for NodeCell {
    async fn handle(&self, request: Request, deadline: Instant) -> Response {
        let result = match request {
            Request::Add(req) => self
                .with_node(deadline, move |node| node.add(&req))
                .await
                .map(|added| Response {
                    added: Some(added),
                    ..Response::default()
                }),
            Request::Remove(sel) => self
                .with_node(deadline, move |node| node.remove(&sel))
                .await
                .map(|pods| Response {
                    pods,
                    ..Response::default()
                }),
            Request::List => self
                .with_node(deadline, |node| node.list())
                .await
                .map(|pods| Response {
                    pods,
                    ..Response::default()
                }),
        };
        result.unwrap_or_else(|e| {
            tracing::warn!(error = %format!("{e:#}"), "request failed");
            Response::failure(&e)
        })
    }
}

/// Accepts API clients for ever, each on its own task.
async fn serve_api(
    listener: UnixListener,
    handler: Arc<impl Handler>,
    limits: ApiLimits,
) -> anyhow::Result<()> {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_client(stream, handler.clone(), limits));
            }
            Err(e) => {
                // Out of descriptors, typically: let the clients in flight finish.
                tracing::warn!(error = %e, "accepting a client");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One connection: one request, one answer, all within `limits.total`.
async fn serve_client(mut stream: UnixStream, handler: Arc<impl Handler>, limits: ApiLimits) {
    let accepted = Instant::now();
    let deadline = accepted + limits.total;
    let read_until = (accepted + limits.read).min(deadline);
    let response = match timeout_at(read_until, read_request(&mut stream, limits)).await {
        Ok(Ok(request)) => {
            handler
                .handle(request, deadline - ANSWER_RESERVE.min(limits.total / 2))
                .await
        }
        Ok(Err(refused)) => {
            tracing::warn!(error = %refused.message, "request refused");
            Response {
                error: Some(refused.message),
                usage: refused.usage,
                ..Response::default()
            }
        }
        Err(_) => {
            let message = format!(
                "no complete request within {} s (the daemon reads one JSON line per \
                 connection)",
                limits.read.as_secs_f64()
            );
            tracing::warn!("{message}");
            Response {
                error: Some(message),
                ..Response::default()
            }
        }
    };
    let mut line = serde_json::to_vec(&response).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    let answered = timeout_at(deadline, async {
        stream.write_all(&line).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(answered, Ok(Ok(()))) {
        tracing::debug!("a client left before reading its answer");
    }
}

/// Why a request was not read: sent back to the client as its answer.
struct Refused {
    message: String,
    /// The client's mistake (its request, not the daemon's state).
    usage: bool,
}

async fn read_request(stream: &mut UnixStream, limits: ApiLimits) -> Result<Request, Refused> {
    let refused = |message: String, usage| Refused { message, usage };
    // The file mode keeps others out; the peer's uid is checked too (a socket passed on).
    let uid = stream
        .peer_cred()
        .map_err(|e| refused(format!("reading the client's credentials: {e}"), false))?
        .uid();
    if uid != limits.client_uid {
        let allowed = match limits.client_uid {
            0 => "root".to_string(),
            other => format!("uid {other}"),
        };
        return Err(refused(
            format!(
                "permission denied: only {allowed} may use the interceptor API (client uid {uid})"
            ),
            false,
        ));
    }
    let mut line = Vec::new();
    BufReader::new((&mut *stream).take(api::MAX_REQUEST + 1))
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| refused(format!("reading the request: {e}"), false))?;
    if line.len() as u64 > api::MAX_REQUEST {
        return Err(refused(
            format!(
                "the request is larger than the daemon accepts ({} bytes, {} MiB); it was not \
                 read",
                api::MAX_REQUEST,
                api::MAX_REQUEST >> 20
            ),
            true,
        ));
    }
    serde_json::from_slice(&line).map_err(|e| refused(format!("an unreadable request: {e}"), true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{PodInfo, PodRecord};

    /// Answers `list` with one pod named after the request count, and never answers `remove`
    /// (a node call that hangs).
    struct Stub;

    impl Handler for Stub {
        async fn handle(&self, request: Request, deadline: Instant) -> Response {
            match request {
                Request::List => Response {
                    pods: vec![PodInfo {
                        record: PodRecord {
                            name: "listed".into(),
                            ..PodRecord::default()
                        },
                        ..PodInfo::default()
                    }],
                    ..Response::default()
                },
                _ => {
                    // As `NodeCell::with_node` does: the wait ends at the deadline.
                    let _ = timeout_at(deadline, std::future::pending::<()>()).await;
                    Response {
                        error: Some("did not finish".into()),
                        ..Response::default()
                    }
                }
            }
        }
    }

    /// A socket path removed on drop.
    struct Socket(PathBuf);

    impl Drop for Socket {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// The API with [`Stub`] behind it, with short deadlines, open to this test's own uid.
    async fn start(tag: &str) -> Socket {
        let path =
            std::env::temp_dir().join(format!("interceptor-api-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let limits = ApiLimits {
            read: Duration::from_millis(600),
            total: Duration::from_secs(2),
            // SAFETY: no arguments.
            client_uid: unsafe { libc::geteuid() },
        };
        tokio::spawn(serve_api(listener, Arc::new(Stub), limits));
        Socket(path)
    }

    async fn answer_of(stream: &mut UnixStream) -> Response {
        let mut text = String::new();
        BufReader::new(stream).read_line(&mut text).await.unwrap();
        serde_json::from_str(&text).unwrap()
    }

    async fn ask(path: &Path, line: &[u8]) -> Response {
        let mut s = UnixStream::connect(path).await.unwrap();
        s.write_all(line).await.unwrap();
        answer_of(&mut s).await
    }

    #[tokio::test]
    async fn a_slow_or_stuck_request_gets_its_reason_and_holds_up_no_other() {
        let socket = start("slow").await;
        let path = &socket.0;
        // A client that dribbles its request, one byte at a time.
        let mut slow = UnixStream::connect(path).await.unwrap();
        let dribble = tokio::spawn(async move {
            for b in br#"{"op":"list"}"# {
                if slow.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            slow
        });
        // A request whose handling never ends.
        let mut stuck = UnixStream::connect(path).await.unwrap();
        stuck.write_all(b"{\"op\":\"remove\"}\n").await.unwrap();
        // Meanwhile, others are answered.
        for _ in 0..3 {
            let r = ask(path, b"{\"op\":\"list\"}\n").await;
            assert_eq!(r.error, None);
            assert_eq!(r.pods[0].record.name, "listed");
        }
        let mut slow = dribble.await.unwrap();
        let r = answer_of(&mut slow).await;
        let e = r.error.unwrap();
        assert!(e.contains("no complete request within 0.6 s"), "{e}");
        let r = answer_of(&mut stuck).await;
        assert_eq!(r.error.as_deref(), Some("did not finish"));
    }

    #[tokio::test]
    async fn bad_requests_are_answered_with_the_reason() {
        let socket = start("bad").await;
        let path = &socket.0;
        let r = ask(path, b"{\"op\":\"reboot\"}\n").await;
        assert!(r.usage && r.error.unwrap().contains("unreadable request"));
        let r = ask(path, b"\n").await;
        assert!(r.error.unwrap().contains("unreadable request"));
        // Larger than the limit: answered without reading it all, though the client is still
        // sending (it sees a broken pipe, then reads the answer).
        let mut s = UnixStream::connect(path).await.unwrap();
        let big = vec![b'['; api::MAX_REQUEST as usize + (1 << 20)];
        let (mut rd, mut wr) = s.split();
        let (sent, answer) = tokio::join!(wr.write_all(&big), async {
            let mut text = String::new();
            BufReader::new(&mut rd).read_line(&mut text).await.unwrap();
            text
        });
        let _ = sent; // a broken pipe, unless the socket's buffers took the rest
        let r: Response = serde_json::from_str(&answer).unwrap();
        let e = r.error.unwrap();
        assert!(r.usage && e.contains("4194304 bytes"), "{e}");
        drop(s);
    }
}
