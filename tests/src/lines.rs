//! The wire formats shared by the test binaries and the tests: one definition for both sides.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

/// What `interceptor-probe connect` prints: one JSON line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub connected: bool,
    /// The first failure (bind, connect, write, read, timeout), if any; set also when connected.
    pub error: Option<String>,
    /// The socket's own address (`getsockname`).
    pub local: Option<SocketAddr>,
    /// What `getpeername` answered: the dialled address when interception is transparent.
    pub peer_name: Option<SocketAddr>,
    /// Lines received until EOF or timeout (the response body with `--http`).
    pub lines: Vec<String>,
    /// The first failure (the one `error` describes), classified: refused, timed out, reset...
    /// Absent from the output of older probes.
    #[serde(default)]
    pub failure: Option<ProbeFailure>,
}

/// Where a probe's connection failed and how, in the terms a client can tell apart (no
/// addresses, no port numbers): e.g. `connect refused`, `connect timed out`, `read reset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeFailure {
    /// `bind`, `socket`, `connect`, `write`, `shutdown` or `read`.
    pub stage: String,
    pub kind: FailureKind,
}

impl ProbeFailure {
    pub fn new(stage: &str, kind: FailureKind) -> Self {
        Self {
            stage: stage.to_owned(),
            kind,
        }
    }
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.stage, self.kind)
    }
}

/// How a socket call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// A reset answered the SYN (nothing listens, or a refusal).
    Refused,
    /// No answer before the probe's deadline (the SYN, or the data, was dropped).
    TimedOut,
    /// An established connection was reset.
    Reset,
    /// The kernel had no route, or an ICMP error came back.
    Unreachable,
    /// Any other error, by errno (0 when there was none, e.g. a malformed HTTP answer); shown
    /// by name where [`errno_name`] knows it.
    Errno(i32),
}

impl FailureKind {
    /// The kind of an I/O error from a socket call.
    pub fn of(error: &io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::ConnectionRefused => Self::Refused,
            io::ErrorKind::TimedOut => Self::TimedOut,
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => Self::Reset,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => Self::Unreachable,
            _ => Self::Errno(error.raw_os_error().unwrap_or(0)),
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused => f.write_str("refused"),
            Self::TimedOut => f.write_str("timed out"),
            Self::Reset => f.write_str("reset"),
            Self::Unreachable => f.write_str("unreachable"),
            Self::Errno(errno) => f.write_str(&errno_name(*errno)),
        }
    }
}

/// One connection of `interceptor-probe batch`: `TARGET`, or `TARGET@SOURCE` to bind the
/// source address first (e.g. `10.200.0.2:8080@127.0.0.6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeCase {
    pub target: SocketAddr,
    pub bind: Option<IpAddr>,
}

impl ProbeCase {
    pub fn to(target: SocketAddr) -> Self {
        Self { target, bind: None }
    }

    pub fn from_source(bind: IpAddr, target: SocketAddr) -> Self {
        Self {
            target,
            bind: Some(bind),
        }
    }
}

impl fmt::Display for ProbeCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.bind {
            Some(bind) => write!(f, "{}@{bind}", self.target),
            None => write!(f, "{}", self.target),
        }
    }
}

impl FromStr for ProbeCase {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        let (target, bind) = match text.split_once('@') {
            Some((target, bind)) => (target, Some(bind.parse().context("source address")?)),
            None => (text, None),
        };
        Ok(Self {
            target: target
                .parse()
                .with_context(|| format!("target {target:?}"))?,
            bind,
        })
    }
}

impl ProbeResult {
    pub fn parse(json: &str) -> Result<Self> {
        serde_json::from_str(json.trim()).with_context(|| format!("probe output {json:?}"))
    }

    /// The first `server ...` line, parsed.
    pub fn server_line(&self) -> Option<ServerLine> {
        self.lines.iter().find_map(|line| line.parse().ok())
    }

    /// The first `sidecar ...` line, parsed.
    pub fn sidecar_line(&self) -> Option<SidecarLine> {
        self.lines.iter().find_map(|line| line.parse().ok())
    }
}

/// What `interceptor-probe loop` prints when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopSummary {
    pub attempts: u64,
    /// Connections whose first line came from the sidecar (they were redirected).
    pub via_sidecar: u64,
    /// Connections whose first line came from the server itself (not redirected).
    pub direct: u64,
    pub failures: u64,
    /// The first few failures.
    pub errors: Vec<String>,
    /// True when stdin closed (the test's signal); false when a bound ended the loop.
    pub stopped_by_stdin: bool,
}

impl LoopSummary {
    pub fn fail(&mut self, error: String) {
        self.failures += 1;
        if self.errors.len() < 5 {
            self.errors.push(error);
        }
    }
}

/// What `interceptor-probe burst` prints: many connections opened at once, each classified by
/// its first line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BurstSummary {
    pub attempts: u64,
    /// The sidecar answered with the original destination the connection dialled.
    pub original_dst_kept: u64,
    /// The sidecar answered, but `SO_ORIGINAL_DST` failed (by errno name) or named another
    /// address (`wrong:<addr>`).
    pub original_dst_failed: std::collections::BTreeMap<String, u64>,
    /// The server answered itself: not redirected.
    pub direct: u64,
    /// No line (refused, reset, timed out...).
    pub failures: u64,
    /// The first few failures.
    pub errors: Vec<String>,
}

impl BurstSummary {
    pub fn fail(&mut self, error: String) {
        self.failures += 1;
        if self.errors.len() < 5 {
            self.errors.push(error);
        }
    }
}

/// How `interceptor-probe connect` should behave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOptions {
    /// Source address to bind before connecting (e.g. 127.0.0.6, Envoy's inbound passthrough).
    pub bind: Option<IpAddr>,
    /// Text to send after connecting (the write side is then shut down).
    pub send: Option<String>,
    /// Total bound for connect and read.
    pub timeout: Duration,
    /// Send `GET /` and report the response body.
    pub http: bool,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            bind: None,
            send: None,
            timeout: Duration::from_secs(3),
            http: false,
        }
    }
}

impl ProbeOptions {
    /// The probe's command line for `target`.
    pub fn args(&self, target: SocketAddr) -> Vec<String> {
        let mut args = vec![
            "connect".to_owned(),
            target.to_string(),
            "--timeout-ms".to_owned(),
            self.timeout.as_millis().to_string(),
        ];
        if let Some(bind) = self.bind {
            args.extend(["--bind".to_owned(), bind.to_string()]);
        }
        if let Some(send) = &self.send {
            args.extend(["--send".to_owned(), send.clone()]);
        }
        if self.http {
            args.push("--http".to_owned());
        }
        args
    }
}

/// The banner of `interceptor-test-server`: `server local=<ip:port> peer=<ip:port>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLine {
    /// The address the server accepted on.
    pub local: SocketAddr,
    /// The client as the server sees it.
    pub peer: SocketAddr,
}

impl fmt::Display for ServerLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server local={} peer={}", self.local, self.peer)
    }
}

impl FromStr for ServerLine {
    type Err = anyhow::Error;

    fn from_str(line: &str) -> Result<Self> {
        let rest = line
            .strip_prefix("server ")
            .ok_or_else(|| anyhow!("not a server line: {line:?}"))?;
        Ok(Self {
            local: field(rest, "local")?.parse()?,
            peer: field(rest, "peer")?.parse()?,
        })
    }
}

/// The announcement of `interceptor-sidecar --announce`:
/// `sidecar port=<listen port> orig=<ip:port>` or `... orig=error:<errno name>`, followed by
/// ` local=<ip:port>` (the accepted socket's `getsockname`) when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarLine {
    pub port: u16,
    /// The original destination from `SO_ORIGINAL_DST`, or the errno name it failed with.
    pub orig: Result<SocketAddr, String>,
    /// The accepted socket's own address: pod-ip:port for a connection steered inbound.
    pub local: Option<SocketAddr>,
}

impl fmt::Display for SidecarLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.orig {
            Ok(addr) => write!(f, "sidecar port={} orig={addr}", self.port)?,
            Err(errno) => write!(f, "sidecar port={} orig=error:{errno}", self.port)?,
        }
        match self.local {
            Some(local) => write!(f, " local={local}"),
            None => Ok(()),
        }
    }
}

impl FromStr for SidecarLine {
    type Err = anyhow::Error;

    fn from_str(line: &str) -> Result<Self> {
        let rest = line
            .strip_prefix("sidecar ")
            .ok_or_else(|| anyhow!("not a sidecar line: {line:?}"))?;
        let orig = field(rest, "orig")?;
        Ok(Self {
            port: field(rest, "port")?.parse()?,
            orig: match orig.strip_prefix("error:") {
                Some(errno) => Err(errno.to_owned()),
                None => Ok(orig.parse()?),
            },
            local: field(rest, "local").ok().map(str::parse).transpose()?,
        })
    }
}

/// The value of `key=value` among space-separated fields.
fn field<'a>(fields: &'a str, key: &str) -> Result<&'a str> {
    for pair in fields.split(' ') {
        if let Some(value) = pair.strip_prefix(key).and_then(|v| v.strip_prefix('=')) {
            return Ok(value);
        }
    }
    bail!("no {key}= in {fields:?}")
}

/// The symbolic name of the errnos `SO_ORIGINAL_DST` can fail with, else the number.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::ENOENT => "ENOENT",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        libc::EINVAL => "EINVAL",
        libc::EPERM => "EPERM",
        libc::ENOTCONN => "ENOTCONN",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EFAULT => "EFAULT",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EADDRINUSE => "EADDRINUSE",
        _ => return errno.to_string(),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_line_round_trips() {
        let line = ServerLine {
            local: "10.200.1.1:80".parse().unwrap(),
            peer: "10.200.0.2:40000".parse().unwrap(),
        };
        assert_eq!(line.to_string().parse::<ServerLine>().unwrap(), line);
    }

    #[test]
    fn sidecar_line_round_trips() {
        for orig in [
            Ok("10.200.1.1:80".parse().unwrap()),
            Err("ENOENT".to_owned()),
        ] {
            for local in [None, Some("10.200.0.2:9080".parse().unwrap())] {
                let line = SidecarLine {
                    port: 15001,
                    orig: orig.clone(),
                    local,
                };
                assert_eq!(line.to_string().parse::<SidecarLine>().unwrap(), line);
            }
        }
        assert_eq!(errno_name(libc::ENOPROTOOPT), "ENOPROTOOPT");
        assert_eq!(errno_name(9999), "9999");
    }

    #[test]
    fn probe_cases_and_failures_round_trip() {
        for text in [
            "10.200.0.2:8080",
            "[fd00:200::2]:8080@::6",
            "10.200.0.2:80@127.0.0.6",
        ] {
            assert_eq!(text.parse::<ProbeCase>().unwrap().to_string(), text);
        }
        assert!("10.200.0.2:8080@nowhere".parse::<ProbeCase>().is_err());
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        let failure = ProbeFailure::new("connect", FailureKind::of(&refused));
        assert_eq!(failure.to_string(), "connect refused");
        let json = serde_json::to_string(&failure).unwrap();
        assert_eq!(
            serde_json::from_str::<ProbeFailure>(&json).unwrap(),
            failure
        );
        let other = FailureKind::of(&io::Error::from_raw_os_error(libc::EADDRNOTAVAIL));
        assert_eq!(other.to_string(), "EADDRNOTAVAIL");
        assert_eq!(FailureKind::Errno(9999).to_string(), "9999");
    }

    #[test]
    fn probe_result_parses_and_finds_lines() {
        let json = r#"{"connected":true,"error":null,"local":"10.200.0.2:4000","peer_name":"10.200.1.1:80","lines":["sidecar port=15001 orig=10.200.1.1:80","server local=10.200.1.1:80 peer=10.200.0.2:4001","hi"]}"#;
        let result = ProbeResult::parse(json).unwrap();
        assert!(result.connected);
        assert_eq!(result.sidecar_line().unwrap().port, 15001);
        assert_eq!(
            result.server_line().unwrap().local,
            "10.200.1.1:80".parse().unwrap()
        );
        assert!(ProbeResult::parse("not json").is_err());
    }
}
