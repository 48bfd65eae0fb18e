//! `trace`: decisions as they happen (or, with `--kernel-log`, the programs' log records).

use std::time::Duration;

use super::args::{TraceArgs, TraceVerdict};
use crate::{
    explain::ebpf::{PodTarget, find_pod},
    sys::users::require_root,
    trace::{self, PodFilter, TraceOptions},
};

pub fn trace(args: &TraceArgs) -> anyhow::Result<()> {
    require_root("it reads the programs' ring buffers")?;
    trace::stop_on_signals();
    let duration = args.duration.map(Duration::from_secs);
    // Said on stderr once events flow, so that a script (or a test) knows when to start.
    let attached = |n: usize| eprintln!("interceptor: tracing {n} datapath(s); Ctrl-C stops");
    if args.kernel_log {
        let lines =
            trace::print_kernel_log(&args.bpffs, args.json, duration, args.count, attached)?;
        eprintln!("interceptor: {lines} kernel log record(s)");
        return Ok(());
    }
    let pods = match (&args.netns, &args.cgroup, &args.pod) {
        (None, None, None) => PodFilter::All,
        (None, None, Some(name)) => PodFilter::Name(name.clone()),
        (netns, cgroup, _) => {
            let pod = find_pod(&PodTarget {
                bpffs: args.bpffs.clone(),
                netns: netns.clone(),
                cgroup: cgroup.clone(),
                pod: None,
            })?;
            PodFilter::Cookie(pod.cookie)
        }
    };
    let opts = TraceOptions {
        bpffs: args.bpffs.clone(),
        pods,
        verdicts: args.verdict.iter().map(|v| verdict_name(*v)).collect(),
        ports: args.port.clone(),
        json: args.json,
        count: args.count,
        duration,
    };
    let mut out = std::io::stdout().lock();
    let summary = trace::run(&opts, &mut out, attached)?;
    eprintln!(
        "interceptor: {} line(s) shown of {} event(s); {} lost",
        summary.shown, summary.events, summary.lost
    );
    Ok(())
}

fn verdict_name(v: TraceVerdict) -> &'static str {
    match v {
        TraceVerdict::Redirected => "redirected",
        TraceVerdict::Direct => "direct",
        TraceVerdict::Steered => "steered",
        TraceVerdict::Passed => "passed",
        TraceVerdict::Refused => "refused",
        TraceVerdict::Failed => "failed",
    }
}
