//! The daemon's HTTP endpoint: `/metrics` (Prometheus text format 0.0.4, through the
//! Prometheus project's `prometheus-client`), `/healthz` (the process answers) and `/readyz`
//! (the node instance is attached and the API is up), served by hyper on tokio. One request per
//! connection, each connection bounded in time: a slow or stuck client holds up no other.

use std::{collections::BTreeMap, convert::Infallible, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use interceptor_ebpf::Counter;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, prometheus_text},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};
use tokio::{net::TcpListener, time::Instant};

use super::Snapshot;

/// The headers of a request must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole connection (one request and its answer) ends within this.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(15);
/// Reading the node's state for one answer ends within this (less than the connection's).
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);

/// What the endpoints read from the daemon.
pub trait Source: Send + Sync + 'static {
    /// `/readyz`: the node instance is attached and the API is up.
    fn ready(&self, deadline: Instant) -> impl Future<Output = bool> + Send;
    /// `/metrics`: `None` while the daemon is starting.
    fn snapshot(
        &self,
        deadline: Instant,
    ) -> impl Future<Output = anyhow::Result<Option<Snapshot>>> + Send;
}

/// Serves the endpoints for ever, each connection on its own task.
pub async fn serve(listener: TcpListener, source: Arc<impl Source>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accepting a client");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let source = source.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let source = source.clone();
                async move { Ok::<_, Infallible>(respond(&*source, &request).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_DEADLINE, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics client"),
                Err(_) => tracing::debug!("metrics client: connection deadline passed"),
            }
        });
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

async fn respond(source: &impl Source, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if request.method() != Method::GET {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "GET only\n".into());
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return r;
    }
    let deadline = Instant::now() + ANSWER_DEADLINE;
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" => {
            if source.ready(deadline).await {
                text(StatusCode::OK, PLAIN, "ready\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "not ready\n".into())
            }
        }
        "/metrics" => match source.snapshot(deadline).await {
            Ok(Some(snapshot)) => text(
                StatusCode::OK,
                prometheus_text::CONTENT_TYPE,
                render(snapshot),
            ),
            Ok(None) => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "starting\n".into()),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, PLAIN, format!("{e:#}\n")),
        },
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n".into()),
    }
}

/// The metrics in Prometheus' text format (0.0.4).
pub fn render(snapshot: Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotMetrics(snapshot)));
    let mut out = String::new();
    // Writing into a String cannot fail; a metric that cannot be encoded is a bug, shown.
    if let Err(e) = prometheus_text::encode(&mut out, &registry) {
        out.push_str(&format!("# encoding failed: {e}\n"));
    }
    out
}

/// One snapshot of the node, exposed as it was read (the counters live in the kernel's maps:
/// each scrape reads them afresh, so they are constant metrics here).
#[derive(Debug)]
struct SnapshotMetrics(Snapshot);

impl Collector for SnapshotMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let pods = encoder.encode_descriptor(
            "interceptor_pods",
            "Pods registered with the daemon.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(s.pods.len() as i64).encode(pods)?;

        let mut events = encoder.encode_descriptor(
            "interceptor_pod_events",
            "What the kernel programs did for each pod \
             (event: redirected, direct_*, original_dst_*, inbound_*, dns_*).",
            None,
            MetricType::Counter,
        )?;
        let mut lost = 0;
        for pod in &s.pods {
            let r = &pod.record;
            let cookie = r.netns_cookie.to_string();
            for c in Counter::ALL {
                let value = pod.counters.get(c.name()).copied().unwrap_or(0);
                if c == Counter::OrigDstLost {
                    lost += value;
                }
                let labels = [
                    ("namespace", r.namespace.as_str()),
                    ("pod", r.name.as_str()),
                    ("netns_cookie", cookie.as_str()),
                    ("event", c.name()),
                ];
                ConstCounter::new(value).encode(events.encode_family(&labels)?)?;
            }
        }

        // Several links (one sk_lookup per pod) may run copies of one program: summed per name.
        let mut programs: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for p in &s.programs {
            let name = p.name.split('@').next().unwrap_or(&p.name);
            let e = programs.entry(name).or_default();
            e.0 += p.run_count;
            e.1 += p.run_time_ns;
        }
        let mut runs = encoder.encode_descriptor(
            "interceptor_program_runs",
            "Runs of each kernel program (counted while BPF statistics are on: daemon \
             --bpf-stats or kernel.bpf_stats_enabled=1).",
            None,
            MetricType::Counter,
        )?;
        for (name, (count, _)) in &programs {
            ConstCounter::new(*count).encode(runs.encode_family(&[("program", *name)])?)?;
        }
        let mut time = encoder.encode_descriptor(
            "interceptor_program_run",
            "Kernel time spent in each program.",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?;
        for (name, (_, ns)) in &programs {
            ConstCounter::new(*ns as f64 / 1e9)
                .encode(time.encode_family(&[("program", *name)])?)?;
        }

        let mut entries = encoder.encode_descriptor(
            "interceptor_map_entries",
            "Entries in each map.",
            None,
            MetricType::Gauge,
        )?;
        for (name, count, _) in &s.maps {
            ConstGauge::new(*count as i64).encode(entries.encode_family(&[("map", *name)])?)?;
        }
        let mut capacity = encoder.encode_descriptor(
            "interceptor_map_capacity",
            "Most entries each map holds (a full in-flight map refuses new connections' \
             original destinations: counted in original_dst_lost).",
            None,
            MetricType::Gauge,
        )?;
        for (name, _, most) in &s.maps {
            ConstGauge::new(i64::from(*most)).encode(capacity.encode_family(&[("map", *name)])?)?;
        }
        let evictions = encoder.encode_descriptor(
            "interceptor_connection_map_evictions",
            "Redirected connections whose original destination could not be kept for the \
             proxy (the in-flight map was full, or the kernel refused socket storage): the sum \
             of the pods' original_dst_lost. The name is v0.1's, whose LRU maps evicted.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(lost).encode(evictions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        datapath::status::ProgramStats,
        node::{PodInfo, PodRecord},
    };

    #[test]
    fn renders_pods_programs_and_maps_in_text_format() {
        let mut counters = BTreeMap::new();
        counters.insert("redirected".to_string(), 7);
        counters.insert("original_dst_lost".to_string(), 2);
        let s = Snapshot {
            pods: vec![PodInfo {
                record: PodRecord {
                    name: "web\"1".into(),
                    namespace: "shop".into(),
                    netns_cookie: 42,
                    ..PodRecord::default()
                },
                rules: 1,
                counters,
            }],
            programs: vec![
                ProgramStats {
                    name: "steer_inbound@42".into(),
                    id: 1,
                    run_count: 3,
                    run_time_ns: 1_500_000_000,
                    avg_ns: None,
                },
                ProgramStats {
                    name: "steer_inbound@43".into(),
                    id: 2,
                    run_count: 1,
                    run_time_ns: 500_000_000,
                    avg_ns: None,
                },
            ],
            maps: vec![("ORIG_DST_BY_TUPLE", 5, 65536)],
        };
        let text = render(s);
        assert!(text.contains("interceptor_pods 1\n"), "{text}");
        assert!(
            text.contains(
                "interceptor_pod_events_total{namespace=\"shop\",pod=\"web\\\"1\",netns_cookie=\"42\",event=\"redirected\"} 7\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("interceptor_program_runs_total{program=\"steer_inbound\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("interceptor_program_run_seconds_total{program=\"steer_inbound\"} 2.0\n"),
            "{text}"
        );
        assert!(text.contains("interceptor_map_entries{map=\"ORIG_DST_BY_TUPLE\"} 5\n"));
        assert!(text.contains("interceptor_map_capacity{map=\"ORIG_DST_BY_TUPLE\"} 65536\n"));
        assert!(text.contains("interceptor_connection_map_evictions_total 2\n"));
        // Every sample line belongs to a declared metric, of the type it had.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{line}");
        }
        for (name, kind) in [
            ("interceptor_pods", "gauge"),
            ("interceptor_pod_events_total", "counter"),
            ("interceptor_program_runs_total", "counter"),
            ("interceptor_program_run_seconds_total", "counter"),
            ("interceptor_map_entries", "gauge"),
            ("interceptor_map_capacity", "gauge"),
            ("interceptor_connection_map_evictions_total", "counter"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name}: {text}"
            );
            assert!(text.contains(&format!("# HELP {name} ")), "{name}: {text}");
        }
        // Prometheus text 0.0.4, not OpenMetrics: no `# EOF`, no `# UNIT`.
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
    }

    /// Stands in for the daemon: ready or not, and a snapshot that waits for `release`.
    struct Fake {
        ready: std::sync::atomic::AtomicBool,
        release: tokio::sync::Notify,
    }

    impl Source for Fake {
        async fn ready(&self, _: Instant) -> bool {
            self.ready.load(std::sync::atomic::Ordering::SeqCst)
        }
        async fn snapshot(&self, _: Instant) -> anyhow::Result<Option<Snapshot>> {
            if !self.ready.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(None);
            }
            self.release.notified().await;
            Ok(Some(Snapshot {
                pods: Vec::new(),
                programs: Vec::new(),
                maps: vec![("POD_CONFIG", 0, 16)],
            }))
        }
    }

    /// One HTTP/1.1 exchange on a fresh connection: (status, head, body).
    async fn get(addr: std::net::SocketAddr, request: String) -> (u16, String, String) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, head.to_string(), body.to_string())
    }

    #[tokio::test]
    async fn endpoints_answer_and_a_stalled_client_holds_up_no_other() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = Arc::new(Fake {
            ready: false.into(),
            release: tokio::sync::Notify::new(),
        });
        tokio::spawn(serve(listener, fake.clone()));
        let req = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");

        // Starting: alive, not ready, no metrics yet.
        assert_eq!(get(addr, req("/healthz")).await.0, 200);
        assert_eq!(get(addr, req("/readyz")).await.0, 503);
        assert_eq!(get(addr, req("/metrics")).await.0, 503);
        fake.ready.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(get(addr, req("/readyz")).await.0, 200);
        assert_eq!(get(addr, req("/nowhere")).await.0, 404);
        let (status, head, _) = get(addr, "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n".into()).await;
        assert_eq!(status, 405);
        assert!(head.to_ascii_lowercase().contains("allow: get"), "{head}");

        // A client that never finishes its headers, and a scrape whose snapshot is slow:
        // neither holds up anybody else.
        let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
        {
            use tokio::io::AsyncWriteExt as _;
            stalled
                .write_all(b"GET /metrics HTTP/1.1\r\nHo")
                .await
                .unwrap();
        }
        let scrape = tokio::spawn(get(addr, req("/metrics")));
        assert_eq!(get(addr, req("/healthz")).await.0, 200);
        assert_eq!(get(addr, req("/readyz")).await.0, 200);
        fake.release.notify_one();
        let (status, head, body) = scrape.await.unwrap();
        assert_eq!(status, 200);
        assert!(
            head.contains("text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        assert!(
            body.contains("interceptor_map_capacity{map=\"POD_CONFIG\"} 16\n"),
            "{body}"
        );
        // The stalled client is cut off (its headers never came): the server closes.
        let mut rest = Vec::new();
        use tokio::io::AsyncReadExt as _;
        let closed = tokio::time::timeout(
            CONNECTION_DEADLINE + Duration::from_secs(5),
            stalled.read_to_end(&mut rest),
        )
        .await;
        assert!(
            closed.is_ok(),
            "the server closes a connection whose headers never come"
        );
    }
}
