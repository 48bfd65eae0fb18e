//! `interceptor trace`: the programs' decisions as they happen, one line each, like `hubble
//! observe`: time, pod, process, owner, protocol, original destination, verdict, and the rule
//! that decided in the words `explain` uses (the same naming, from the same live options).
//!
//! The tracer attaches to every datapath of the node (the programs write events only while one
//! is attached), reads their ring buffers, and names pods as it meets them, so a pod registered
//! while it runs is followed. Events the full ring buffer could not take are counted by the
//! programs and reported as they happen, and in the summary.
//!
//! `trace --kernel-log` prints the programs' aya-log records instead ([`print_kernel_log`]).

use std::{
    collections::HashMap,
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use interceptor_ebpf::{
    Counter,
    decision::OutboundRule,
    inbound::InboundRule,
    trace::{EventKind, Outcome, PROTO_UDP, TraceEvent, event_flags},
    wire::{ipv4_octets, ipv6_octets},
};
use serde::Serialize;

use crate::{
    datapath::{
        Datapath, PodRecord, bpffs, kernel_log,
        trace::{Attached, TraceMaps},
    },
    explain::ebpf::{LiveOptions, options_of},
    family::Family,
    iptables::ruleset::words::{self, Context, NamedRule, Subject, Words},
    pod::{NameServers, Netns, PodFacts},
};

/// Which pods to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodFilter {
    All,
    /// By network-namespace cookie.
    Cookie(u64),
    /// By `namespace/name` (node mode), whenever it is registered.
    Name(String),
}

/// What to trace and how to show it.
#[derive(Clone, Debug)]
pub struct TraceOptions {
    pub bpffs: PathBuf,
    pub pods: PodFilter,
    /// Verdict names (`TraceLine::verdict`); empty: all.
    pub verdicts: Vec<&'static str>,
    /// Original destination ports (inbound: local ports); empty: all.
    pub ports: Vec<u16>,
    pub json: bool,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
}

/// One decision, as `trace` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct TraceLine {
    /// Wall-clock time, UTC.
    pub time: String,
    pub pod: String,
    pub netns_cookie: u64,
    /// `connect` (TCP), `datagram` (UDP), `inbound`, `orig_dst` (a failed `SO_ORIGINAL_DST`).
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// 4 or 6: the connection's family (a dual-stack socket's IPv4 connection is 4).
    pub family: u8,
    pub proto: &'static str,
    /// The original destination (inbound: the address it arrived for; `orig_dst`: where the
    /// proxy accepted it).
    pub dst: SocketAddr,
    /// The bound source (outbound, when bound), the peer (inbound and `orig_dst`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<SocketAddr>,
    /// A dual-stack socket's IPv4 connection (`::ffff:a.b.c.d`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub mapped: bool,
    /// `redirected`, `direct`, `steered`, `passed`, `refused` or `failed`.
    pub verdict: &'static str,
    /// Where it was sent (redirected), or the capture port (steered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counter: Option<&'static str>,
    /// `orig_dst`: the error returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<&'static str>,
    /// The deciding rule first, then those of the chains it jumped to.
    pub rules: Vec<NamedRule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl TraceLine {
    /// The line in words.
    pub fn text(&self) -> String {
        let who = match (self.pid, &self.comm) {
            (Some(pid), Some(comm)) => format!(" {pid}/{comm}"),
            _ => String::new(),
        };
        let owner = match (self.uid, self.gid) {
            (Some(u), Some(g)) if u == g => format!(" uid={u}"),
            (Some(u), Some(g)) => format!(" uid={u} gid={g}"),
            _ => String::new(),
        };
        let src = match (self.kind, self.src) {
            ("inbound", Some(s)) | ("orig_dst", Some(s)) => format!(" from {s}"),
            (_, Some(s)) => format!(" bound {}", s.ip()),
            _ => String::new(),
        };
        let verdict = match (self.verdict, self.port, self.errno) {
            (_, _, Some(errno)) => format!("failed {errno}"),
            (v, Some(p), _) => format!("{v}:{p}"),
            (v, None, _) => v.to_string(),
        };
        let kind = match self.kind {
            "inbound" => " inbound",
            "orig_dst" => " SO_ORIGINAL_DST",
            _ => "",
        };
        let why = match (self.rules.first(), &self.note) {
            (Some(r), _) => format!(" | {r}"),
            (None, Some(n)) => format!(" | {n}"),
            (None, None) => String::new(),
        };
        format!(
            "{} {}{who}{owner}{kind} {} {}{}{src} {verdict}{why}",
            self.time,
            self.pod,
            self.proto,
            self.dst,
            if self.mapped { " (mapped)" } else { "" },
        )
    }

    fn matches(&self, opts: &TraceOptions) -> bool {
        (opts.verdicts.is_empty() || opts.verdicts.contains(&self.verdict))
            && (opts.ports.is_empty() || opts.ports.contains(&self.dst.port()))
    }
}

/// What a run saw.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Summary {
    pub shown: u64,
    pub events: u64,
    pub lost: u64,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Ctrl-C and SIGTERM end the run (and detach) instead of killing the process.
pub fn stop_on_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            libc::signal(
                signal,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

/// Whether a signal asked to stop.
pub fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// A datapath traced: its maps, what the tracer knows of its pods, and its attachment.
struct Traced {
    maps: TraceMaps,
    datapath: Datapath,
    pods: HashMap<u64, PodView>,
    lost_at_start: u64,
    lost_reported: u64,
    _attached: Attached,
}

/// A pod as the tracer names its decisions.
struct PodView {
    name: String,
    rules: u32,
    options: LiveOptions,
    facts: Option<PodFacts>,
}

/// Traces until stopped (a signal, `count`, `duration`), writing lines to `out`; `attached`
/// is told once events flow.
pub fn run(
    opts: &TraceOptions,
    out: &mut impl Write,
    attached: impl FnOnce(usize),
) -> anyhow::Result<Summary> {
    let base = bpffs::interceptor_dir(&opts.bpffs);
    if !bpffs::is_mounted(&opts.bpffs) || !base.exists() {
        bail!(
            "no interception on this node (nothing under {})",
            base.display()
        );
    }
    let mut traced = Vec::new();
    for dir in bpffs::datapath_dirs(&base) {
        let Some(mut maps) = TraceMaps::open(&dir)? else {
            tracing::info!(datapath = %dir.display(), "made by a build without trace events");
            continue;
        };
        let datapath = Datapath::existing(&dir)?;
        let attached = maps.attach()?;
        let lost = maps.lost();
        traced.push(Traced {
            maps,
            datapath,
            pods: HashMap::new(),
            lost_at_start: lost,
            lost_reported: lost,
            _attached: attached,
        });
    }
    if traced.is_empty() {
        bail!("no datapath of this node has trace events (made by an older build?)");
    }
    attached(traced.len());
    let clock = Clock::now();
    let started = Instant::now();
    let mut summary = Summary::default();
    let mut last_lost_check = Instant::now();
    loop {
        if stopping()
            || opts.count.is_some_and(|n| summary.shown >= n)
            || opts.duration.is_some_and(|d| started.elapsed() >= d)
        {
            break;
        }
        wait_readable(&traced, Duration::from_millis(200))?;
        for t in &mut traced {
            while let Some(event) = t.maps.next_event() {
                summary.events += 1;
                let Some(line) = t.line(&event, &clock, &opts.pods) else {
                    continue;
                };
                if !line.matches(opts) {
                    continue;
                }
                if opts.json {
                    writeln!(out, "{}", serde_json::to_string(&line)?)?;
                } else {
                    writeln!(out, "{}", line.text())?;
                }
                summary.shown += 1;
                if opts.count.is_some_and(|n| summary.shown >= n) {
                    break;
                }
            }
        }
        if last_lost_check.elapsed() >= Duration::from_secs(1) {
            last_lost_check = Instant::now();
            report_lost(&mut traced, out, opts.json)?;
        }
        out.flush()?;
    }
    report_lost(&mut traced, out, opts.json)?;
    summary.lost = traced
        .iter()
        .map(|t| t.maps.lost().saturating_sub(t.lost_at_start))
        .sum();
    out.flush()?;
    Ok(summary)
}

/// Says how many events were lost since the last report, if any: never silent.
fn report_lost(traced: &mut [Traced], out: &mut impl Write, json: bool) -> anyhow::Result<()> {
    for t in traced {
        let lost = t.maps.lost();
        if lost > t.lost_reported {
            let n = lost - t.lost_reported;
            t.lost_reported = lost;
            if json {
                writeln!(out, "{}", serde_json::json!({ "lost": n }))?;
            } else {
                writeln!(
                    out,
                    "lost {n} event(s): the ring buffer was full (the tracer fell behind)"
                )?;
            }
        }
    }
    Ok(())
}

/// Waits until one of the ring buffers has events, or `timeout`.
fn wait_readable(traced: &[Traced], timeout: Duration) -> anyhow::Result<()> {
    let mut fds: Vec<libc::pollfd> = traced
        .iter()
        .map(|t| libc::pollfd {
            fd: t.maps.fd().as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `fds` is a valid array of the length given, alive for the call.
    let rc = unsafe {
        libc::poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            timeout.as_millis() as libc::c_int,
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e).context("waiting for trace events");
        }
    }
    Ok(())
}

impl Traced {
    /// The event as a line, if it is of a pod the filter keeps.
    fn line(&mut self, e: &TraceEvent, clock: &Clock, filter: &PodFilter) -> Option<TraceLine> {
        if let PodFilter::Cookie(c) = filter
            && *c != e.netns
        {
            return None;
        }
        let view = self.pod(e.netns)?;
        if let PodFilter::Name(name) = filter
            && view.name != *name
        {
            return None;
        }
        Some(describe(e, view, clock))
    }

    /// What the tracer knows of the pod `cookie`, refreshed when its configuration changed;
    /// `None` for a pod the maps no longer hold.
    fn pod(&mut self, cookie: u64) -> Option<&PodView> {
        let maps = &self.datapath.maps;
        let config = maps.pod_config(cookie).ok().flatten();
        let stale = match (self.pods.get(&cookie), &config) {
            (Some(v), Some(c)) => v.rules != c.rules,
            (None, _) => true,
            (Some(_), None) => false, // gone since: name it as it was
        };
        if stale {
            let config = config?;
            let record: PodRecord = self.datapath.pod_record(cookie).unwrap_or_default();
            let facts = (!record.netns.is_empty())
                .then(|| Netns::open(std::path::Path::new(&record.netns)).ok())
                .flatten()
                .and_then(|n| PodFacts::read(&n, &NameServers::NotNeeded).ok())
                .filter(|f| f.netns_cookie == Some(cookie));
            let options = options_of(maps, &config, &record, facts.as_ref());
            let name = if !record.name.is_empty() {
                format!("{}/{}", record.namespace, record.name)
            } else if !record.cgroup.is_empty() {
                // Per-pod instances: the cgroup's own name (kubelet's `pod<uid>`).
                let dir = std::path::Path::new(&record.cgroup);
                let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
                format!(
                    "cgroup:{}",
                    name.unwrap_or_else(|| record.cgroup_id.to_string())
                )
            } else {
                format!("netns:{cookie}")
            };
            self.pods.insert(
                cookie,
                PodView {
                    name,
                    rules: config.rules,
                    options,
                    facts,
                },
            );
        }
        self.pods.get(&cookie)
    }
}

/// The address an event's slot holds, in its family.
fn address(slot: [u32; 4], family: u8) -> IpAddr {
    if family == 4 {
        IpAddr::V4(Ipv4Addr::from(ipv4_octets(slot[0])))
    } else {
        IpAddr::V6(Ipv6Addr::from(ipv6_octets(slot)))
    }
}

/// The decision an event records, in `trace`'s words.
fn describe(e: &TraceEvent, view: &PodView, clock: &Clock) -> TraceLine {
    let kind = EventKind::from_code(e.kind);
    let outcome = Outcome::from_code(e.outcome);
    let udp = e.proto == PROTO_UDP;
    let dst = address(e.dst, e.family);
    let src = address(e.src, e.family);
    let task = e.flags & event_flags::TASK != 0;
    let family = if e.family == 4 {
        Family::V4
    } else {
        Family::V6
    };
    let opts = &view.options;
    let ctx = Context::with_set(&opts.cfg, &opts.dns, opts.ipv6, &opts.rules);
    let subject = |interface| Subject {
        family,
        udp,
        dst,
        dst_port: e.dst_port,
        interface,
    };
    let words = match kind {
        Some(EventKind::Connect | EventKind::Datagram) => {
            match OutboundRule::from_code(e.rule, e.rule_arg) {
                Some(rule) => {
                    let ifc = view
                        .facts
                        .as_ref()
                        .and_then(|f| crate::explain::out_interface(f, dst));
                    words::outbound(&ctx, rule, &subject(ifc))
                }
                None => Words::default(),
            }
        }
        Some(EventKind::Inbound) => match InboundRule::from_code(e.rule) {
            Some(rule) => {
                let ifc = view.facts.as_ref().and_then(|f| {
                    f.interfaces
                        .iter()
                        .find(|(_, i)| *i == e.ifindex_or_errno)
                        .map(|(n, _)| n.clone())
                });
                words::inbound(&ctx, rule, &subject(ifc))
            }
            None => Words::default(),
        },
        _ => Words::default(),
    };
    let verdict = match outcome {
        Some(Outcome::Direct) => "direct",
        Some(Outcome::Redirected) => "redirected",
        Some(Outcome::Steered) => "steered",
        Some(Outcome::NoListenerPassed) => "passed",
        Some(Outcome::NoListenerRefused) => "refused",
        Some(Outcome::Failed) => "failed",
        None => "unknown",
    };
    let counter = Counter::ALL
        .iter()
        .find(|c| **c as u32 == e.counter)
        .map(|c| c.name());
    let orig_dst = kind == Some(EventKind::OrigDstFailed);
    let inbound = kind == Some(EventKind::Inbound);
    let note = match (outcome, &words.note) {
        (Some(Outcome::NoListenerPassed), _) => {
            Some("the proxy has no listener: passed to the application".to_string())
        }
        (Some(Outcome::NoListenerRefused), _) => {
            Some("the proxy has no listener: refused (--inbound-fail closed)".to_string())
        }
        (_, n) => n.clone(),
    };
    TraceLine {
        time: clock.wall(e.ktime_ns),
        pod: view.name.clone(),
        netns_cookie: e.netns,
        kind: match kind {
            Some(EventKind::Connect) => "connect",
            Some(EventKind::Datagram) => "datagram",
            Some(EventKind::Inbound) => "inbound",
            Some(EventKind::OrigDstFailed) => "orig_dst",
            None => "unknown",
        },
        pid: task.then_some(e.tgid),
        comm: task.then(|| {
            let end = e.comm.iter().position(|&b| b == 0).unwrap_or(e.comm.len());
            String::from_utf8_lossy(&e.comm[..end]).into_owned()
        }),
        uid: (!inbound && (!orig_dst || task)).then_some(e.uid),
        gid: (!inbound && (!orig_dst || task)).then_some(e.gid),
        family: e.family,
        proto: if udp { "udp" } else { "tcp" },
        dst: SocketAddr::new(dst, e.dst_port),
        src: (inbound || orig_dst || !src.is_unspecified())
            .then(|| SocketAddr::new(src, e.src_port)),
        mapped: e.flags & event_flags::MAPPED != 0,
        verdict,
        port: match outcome {
            Some(Outcome::Redirected) => Some(e.port),
            Some(Outcome::Steered) => Some(view.options.cfg.inbound_capture_port),
            _ => None,
        },
        counter: if orig_dst { None } else { counter },
        errno: orig_dst.then(|| errno_name(e.ifindex_or_errno)),
        rules: words.rules,
        note,
    }
}

/// Reads every datapath's records until stopped (a signal, `duration`, `count` lines).
pub fn print_kernel_log(
    bpffs_root: &Path,
    json: bool,
    duration: Option<Duration>,
    count: Option<u64>,
    attached: impl FnOnce(usize),
) -> anyhow::Result<u64> {
    let base = bpffs::interceptor_dir(bpffs_root);
    if !bpffs::is_mounted(bpffs_root) || !base.exists() {
        bail!(
            "no interception on this node (nothing under {})",
            base.display()
        );
    }
    let printer: &'static kernel_log::Printer<std::io::Stdout> =
        Box::leak(Box::new(kernel_log::Printer::new(std::io::stdout(), json)));
    let mut readers = Vec::new();
    for dir in bpffs::datapath_dirs(&base) {
        readers.push(kernel_log::open(&dir, printer)?);
    }
    if readers.is_empty() {
        bail!("no datapath on this node");
    }
    attached(readers.len());
    let started = Instant::now();
    let shown = || printer.lines.load(std::sync::atomic::Ordering::Relaxed);
    while !stopping()
        && duration.is_none_or(|d| started.elapsed() < d)
        && count.is_none_or(|n| shown() < n)
    {
        let mut fds: Vec<libc::pollfd> = readers
            .iter()
            .map(|r| libc::pollfd {
                fd: r.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of the length given, alive for the call.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
        for r in &mut readers {
            r.flush();
        }
    }
    Ok(shown())
}

fn errno_name(errno: u32) -> &'static str {
    match errno as i32 {
        libc::ENOENT => "ENOENT",
        libc::EINVAL => "EINVAL",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        libc::EFAULT => "EFAULT",
        _ => "error",
    }
}

/// Turns the programs' clock (CLOCK_MONOTONIC) into wall-clock time.
struct Clock {
    /// Realtime minus monotonic, in ns, at the start.
    offset_ns: i128,
}

impl Clock {
    fn now() -> Self {
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        Clock {
            offset_ns: real - i128::from(crate::sys::time::monotonic_ns()),
        }
    }

    /// `ktime_ns` as UTC, `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    fn wall(&self, ktime_ns: u64) -> String {
        let ns = i128::from(ktime_ns) + self.offset_ns;
        let secs = ns.div_euclid(1_000_000_000) as libc::time_t;
        let micros = ns.rem_euclid(1_000_000_000) / 1_000;
        // SAFETY: `tm` is plain integers (and a pointer the call sets or leaves null).
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to a time and to the `tm` it fills, both alive for the call.
        if unsafe { libc::gmtime_r(&secs, &mut tm) }.is_null() {
            return format!("{ktime_ns}ns");
        }
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_with_microseconds() {
        let clock = Clock { offset_ns: 0 };
        assert_eq!(clock.wall(1_500_000), "1970-01-01T00:00:00.001500Z");
        // 2000-02-29T12:34:56.789012Z, a leap day.
        let t = 951_827_696_789_012_000;
        assert_eq!(clock.wall(t), "2000-02-29T12:34:56.789012Z");
    }
}
