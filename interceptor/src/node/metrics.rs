//! The daemon's HTTP endpoint: `/metrics` (Prometheus text format 0.0.4), `/healthz` (the
//! process answers) and `/readyz` (the node instance is attached and the API is up).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use interceptor_ebpf::Counter;

use super::{Node, Snapshot};

pub fn serve(listener: TcpListener, node: Arc<Mutex<Option<Node>>>, ready: Arc<AtomicBool>) {
    for stream in listener.incoming().filter_map(Result::ok) {
        let (node, ready) = (node.clone(), ready.clone());
        std::thread::spawn(move || {
            if let Err(e) = answer(stream, &node, &ready) {
                tracing::debug!(error = %e, "metrics client");
            }
        });
    }
}

fn answer(
    mut stream: TcpStream,
    node: &Mutex<Option<Node>>,
    ready: &AtomicBool,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    // The request line is all that matters; read the head (bounded).
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path) {
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") => {
            let attached = node
                .lock()
                .map(|n| n.as_ref().is_some_and(Node::attached))
                .unwrap_or(false);
            if ready.load(Ordering::SeqCst) && attached {
                ("200 OK", "text/plain", "ready\n".to_string())
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    "not ready\n".to_string(),
                )
            }
        }
        ("GET", "/metrics") => {
            let snapshot = node
                .lock()
                .ok()
                .and_then(|n| n.as_ref().map(Node::snapshot));
            match snapshot {
                Some(Ok(s)) => (
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    render(&s),
                ),
                Some(Err(e)) => (
                    "500 Internal Server Error",
                    "text/plain",
                    format!("{e:#}\n"),
                ),
                None => (
                    "503 Service Unavailable",
                    "text/plain",
                    "starting\n".to_string(),
                ),
            }
        }
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// A label value escaped as the text format wants.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics in Prometheus' text format.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "# HELP interceptor_pods Pods registered with the daemon."
    );
    let _ = writeln!(w, "# TYPE interceptor_pods gauge");
    let _ = writeln!(w, "interceptor_pods {}", s.pods.len());

    let _ = writeln!(
        w,
        "# HELP interceptor_pod_events_total What the kernel programs did for each pod \
         (event: redirected, direct_*, original_dst_*, inbound_*, dns_*)."
    );
    let _ = writeln!(w, "# TYPE interceptor_pod_events_total counter");
    let mut lost = 0;
    for pod in &s.pods {
        let r = &pod.record;
        for c in Counter::ALL {
            let value = pod.counters.get(c.name()).copied().unwrap_or(0);
            if c == Counter::OrigDstLost {
                lost += value;
            }
            let _ = writeln!(
                w,
                "interceptor_pod_events_total{{namespace=\"{}\",pod=\"{}\",netns_cookie=\"{}\",event=\"{}\"}} {value}",
                label(&r.namespace),
                label(&r.name),
                r.netns_cookie,
                c.name()
            );
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
    let _ = writeln!(
        w,
        "# HELP interceptor_program_runs_total Runs of each kernel program (counted while BPF \
         statistics are on: daemon --bpf-stats or kernel.bpf_stats_enabled=1)."
    );
    let _ = writeln!(w, "# TYPE interceptor_program_runs_total counter");
    for (name, (runs, _)) in &programs {
        let _ = writeln!(
            w,
            "interceptor_program_runs_total{{program=\"{name}\"}} {runs}"
        );
    }
    let _ = writeln!(
        w,
        "# HELP interceptor_program_run_seconds_total Kernel time spent in each program."
    );
    let _ = writeln!(w, "# TYPE interceptor_program_run_seconds_total counter");
    for (name, (_, ns)) in &programs {
        let _ = writeln!(
            w,
            "interceptor_program_run_seconds_total{{program=\"{name}\"}} {}",
            *ns as f64 / 1e9
        );
    }

    let _ = writeln!(w, "# HELP interceptor_map_entries Entries in each map.");
    let _ = writeln!(w, "# TYPE interceptor_map_entries gauge");
    for (name, entries, _) in &s.maps {
        let _ = writeln!(w, "interceptor_map_entries{{map=\"{name}\"}} {entries}");
    }
    let _ = writeln!(
        w,
        "# HELP interceptor_map_capacity Most entries each map holds (LRU maps evict beyond)."
    );
    let _ = writeln!(w, "# TYPE interceptor_map_capacity gauge");
    for (name, _, capacity) in &s.maps {
        let _ = writeln!(w, "interceptor_map_capacity{{map=\"{name}\"}} {capacity}");
    }
    let _ = writeln!(
        w,
        "# HELP interceptor_connection_map_evictions_total Redirected connections whose \
         original destination was evicted from the LRU connection maps before it was used \
         (sum of the pods' original_dst_lost)."
    );
    let _ = writeln!(
        w,
        "# TYPE interceptor_connection_map_evictions_total counter"
    );
    let _ = writeln!(w, "interceptor_connection_map_evictions_total {lost}");
    out
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
        let text = render(&s);
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
            text.contains("interceptor_program_run_seconds_total{program=\"steer_inbound\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("interceptor_map_entries{map=\"ORIG_DST_BY_TUPLE\"} 5\n"));
        assert!(text.contains("interceptor_map_capacity{map=\"ORIG_DST_BY_TUPLE\"} 65536\n"));
        assert!(text.contains("interceptor_connection_map_evictions_total 2\n"));
        // Every sample line belongs to a declared metric.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{line}");
        }
    }
}
