//! The work directory every pod shares: nginx's configurations (the server for outbound runs,
//! the application in the pod and a stock TCP proxy in front of it as the inbound sidecar,
//! nginx's stream module), the wrk script and the large response.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use anyhow::Result;

use super::modes::{APP_PORT, HTTP_PORT, INBOUND_CAPTURE_PORT};

pub const SMALL_PATH: &str = "/";
pub const LARGE_PATH: &str = "/large.bin";
/// The server's nginx (outbound), the application's in the pod (inbound) and the inbound
/// sidecar's, in the work directory.
pub const SERVER_CONF: &str = "nginx.conf";
pub const APP_CONF: &str = "app-nginx.conf";
pub const INBOUND_SIDECAR_CONF: &str = "inbound-sidecar.conf";
/// Where Debian's `libnginx-mod-stream` puts the stream module (nginx is built with
/// `--with-stream=dynamic` there); elsewhere it is assumed built in.
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
/// A directory anyone may write (sticky, as /tmp): the pid files of nginx running as the
/// proxy user.
pub const RUN_DIR: &str = "run";

/// The files every pod shares: nginx's configurations, the wrk script and the large response,
/// in a directory the unprivileged client and nginx's workers can read.
pub fn write_workdir(
    dir: &Path,
    small_body: usize,
    large_body: usize,
    nginx_workers: u32,
) -> Result<()> {
    fs::create_dir_all(dir.join("www"))?;
    fs::create_dir_all(dir.join(RUN_DIR))?;
    for d in [dir.to_path_buf(), dir.join("www")] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755))?;
    }
    fs::set_permissions(dir.join(RUN_DIR), fs::Permissions::from_mode(0o1777))?;
    fs::write(
        dir.join(SERVER_CONF),
        nginx_conf(dir, small_body, nginx_workers, HTTP_PORT),
    )?;
    fs::write(
        dir.join(APP_CONF),
        nginx_conf(dir, small_body, nginx_workers, APP_PORT),
    )?;
    let stream_module = Path::new(STREAM_MODULE);
    fs::write(
        dir.join(INBOUND_SIDECAR_CONF),
        inbound_sidecar_conf(stream_module.is_file().then_some(stream_module)),
    )?;
    fs::write(dir.join("report.lua"), WRK_SCRIPT)?;
    fs::write(dir.join("www/large.bin"), vec![b'x'; large_body])?;
    for f in [
        SERVER_CONF,
        APP_CONF,
        INBOUND_SIDECAR_CONF,
        "report.lua",
        "www/large.bin",
    ] {
        fs::set_permissions(dir.join(f), fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// A stock TCP proxy as the inbound sidecar: nginx's stream module on the capture port,
/// relaying to the application on loopback (it never reads the original destination: every
/// captured connection is for the application's port). One worker: the pod's processes share
/// one CPU. `proxy_half_close` (off by default) lets the path check's probe, which shuts down
/// its write side after the request, read the answer.
fn inbound_sidecar_conf(stream_module: Option<&Path>) -> String {
    let load = stream_module
        .map(|m| format!("load_module {};\n", m.display()))
        .unwrap_or_default();
    format!(
        r#"# Written by `cargo xtask bench`.
{load}worker_processes 1;
daemon off;
error_log stderr warn;
events {{
    worker_connections 8192;
}}
stream {{
    server {{
        listen {INBOUND_CAPTURE_PORT} backlog=4096;
        proxy_pass 127.0.0.1:{APP_PORT};
        # As Envoy's TCP proxy: a client that shuts down its write side still gets the answer.
        proxy_half_close on;
    }}
}}
"#
    )
}

fn nginx_conf(dir: &Path, small_body: usize, workers: u32, port: u16) -> String {
    // `return` text may not hold a quote or `$`: a run of letters is fine.
    let body = "x".repeat(small_body);
    format!(
        r#"# Written by `cargo xtask bench`.
worker_processes {workers};
daemon off;
error_log stderr warn;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    # Keep-alive runs must never see a connection closed by the server.
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
    sendfile on;
    server {{
        listen {port} backlog=4096;
        root {www};
        location = / {{
            return 200 "{body}";
        }}
        # The client address nginx saw: tells whether a connection came through the sidecar.
        location = /whoami {{
            return 200 "$remote_addr:$remote_port\n";
        }}
        location = /large.bin {{
        }}
    }}
}}
"#,
        www = dir.join("www").display()
    )
}

/// Runs at the end of a wrk run only (no per-request Lua): prints the figures as one line.
const WRK_SCRIPT: &str = r#"-- Written by `cargo xtask bench`: the figures as one JSON line, latencies in microseconds.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH-JSON {"duration_us":%d,"requests":%d,"bytes":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"mean":%.3f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_serves_a_fixed_small_body() {
        let conf = nginx_conf(Path::new("/tmp/b"), 64, 2, 8080);
        assert!(conf.contains(&format!("return 200 \"{}\";", "x".repeat(64))));
        assert!(conf.contains("root /tmp/b/www;"));
        assert!(conf.contains("worker_processes 2;"));
        assert!(conf.contains("listen 8080 backlog=4096;"));
    }

    #[test]
    fn the_inbound_sidecar_relays_the_capture_port_to_the_application() {
        let module = Path::new("/usr/lib/nginx/modules/ngx_stream_module.so");
        let conf = inbound_sidecar_conf(Some(module));
        assert!(conf.starts_with(&format!(
            "# Written by `cargo xtask bench`.\nload_module {};\n",
            module.display()
        )));
        assert!(conf.contains("listen 15006 backlog=4096;"));
        assert!(conf.contains("proxy_pass 127.0.0.1:8080;"));
        assert!(!inbound_sidecar_conf(None).contains("load_module"));
    }
}
