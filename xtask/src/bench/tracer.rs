//! What `interceptor trace` costs: new connections per second (wrk, a new connection per
//! request) and `redirect_connect4`'s kernel time per call (the kernel's BPF run statistics),
//! with no tracer attached and with one attached that reads every event (`trace --json`, its
//! output drained), and optionally with another build's programs (`--tracer-baseline`, e.g.
//! the build before tracing existed), each in a fresh eBPF pod, in turns within each round.
//! The programs write events only while a tracer is attached: the `off` figures are the ones
//! that must not move.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, Result, ensure};

use super::kernel::{self, BpfStats, Snapshot};
use super::modes::Mode;
use super::pod::{BenchPod, Tools};
use super::results::{Arm, Flow, Settings, TracerSample};
use super::workdir::SMALL_PATH;
use super::workloads::{self, Http};

/// A tracer reading every event, its output counted and thrown away.
struct Reading {
    child: Child,
    lines: Option<std::thread::JoinHandle<u64>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Reading {
    fn start(tools: &Tools) -> Result<Self> {
        let mut child = Command::new(&tools.interceptor)
            .arg("trace")
            .args(tools.bpffs_args())
            .arg("--json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting interceptor trace")?;
        let mut err = child.stderr.take().context("trace's stderr")?;
        // It says on stderr when events flow.
        let mut said = Vec::new();
        let mut byte = [0u8; 1];
        while !String::from_utf8_lossy(&said).contains("tracing") {
            ensure!(
                err.read(&mut byte)? == 1,
                "the tracer ended: {}",
                String::from_utf8_lossy(&said)
            );
            said.push(byte[0]);
        }
        let stderr = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = err.read_to_string(&mut rest);
            rest
        });
        let mut out = child.stdout.take().context("trace's stdout")?;
        let lines = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut lines = 0u64;
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            }
            lines
        });
        Ok(Reading {
            child,
            lines: Some(lines),
            stderr: Some(stderr),
        })
    }

    /// Stops it (SIGINT): (lines printed, events it reported lost).
    fn stop(mut self) -> Result<(u64, u64)> {
        // SAFETY: a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait()?;
        ensure!(status.success(), "the tracer failed ({status})");
        let lines = self.lines.take().and_then(|h| h.join().ok()).unwrap_or(0);
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Ok((lines, lost_in(&stderr)))
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The events the tracer's summary (`... shown of N event(s); M lost`) says were lost.
fn lost_in(summary: &str) -> u64 {
    summary
        .lines()
        .filter_map(|l| {
            let n = l.trim().strip_suffix(" lost")?.rsplit(' ').next()?;
            n.parse::<u64>().ok()
        })
        .sum()
}

/// The arms of one round, in an order that alternates between rounds (a slow spell of the
/// machine hits each alike).
pub fn arms(round: u32, baseline: bool) -> Vec<Arm> {
    let mut arms = vec![Arm::Off, Arm::On];
    if baseline {
        arms.insert(0, Arm::Baseline);
    }
    if round.is_multiple_of(2) {
        arms.reverse();
    }
    arms
}

/// Measures one arm: a fresh eBPF pod, a load for the rate, then a load with the kernel's
/// statistics on for `redirect_connect4`'s time per call.
pub fn measure(tools: &Tools, settings: &Settings, round: u32, arm: Arm) -> Result<TracerSample> {
    let pod = BenchPod::new(Mode::Ebpf, 0, Flow::OUTBOUND, tools)?;
    let reading = match arm {
        Arm::On => Some(Reading::start(tools)?),
        _ => None,
    };
    let load = Http {
        conns: settings.close_conns,
        threads: settings.wrk_threads,
        close: true,
        path: SMALL_PATH,
        duration_s: settings.duration_s,
    };
    let (rate, _) = workloads::run_wrk(&pod, load, &tools.wrk_script())?;
    let programs = kernel::attached(
        &pod.topology().pod_cgroup,
        &BTreeSet::from([pod.netns_inode()?]),
    )?;
    let stats = BpfStats::enable()?;
    let before = Snapshot::take()?.runs(&programs);
    workloads::run_wrk(&pod, load, &tools.wrk_script())?;
    let after = Snapshot::take()?.runs(&programs);
    drop(stats);
    let connect4 = kernel::runs_since(&after, &before)
        .into_iter()
        .find(|p| p.name == "redirect_connect4")
        .context("redirect_connect4 is not attached to the pod")?;
    let (traced, lost) = match reading {
        Some(r) => r.stop()?,
        None => (0, 0),
    };
    Ok(TracerSample {
        round,
        arm,
        conns_per_s: rate.requests as f64 / rate.duration_s,
        connect4_runs: connect4.run_count,
        connect4_ns: connect4.run_time_ns,
        traced,
        lost,
    })
}

/// The tools with another build's `interceptor` (the baseline arm).
pub fn baseline_tools(tools: &Tools, interceptor: PathBuf) -> Tools {
    Tools {
        interceptor,
        sidecar: tools.sidecar.clone(),
        probe: tools.probe.clone(),
        workdir: tools.workdir.clone(),
        pod_cpus: tools.pod_cpus.clone(),
        server_cpus: tools.server_cpus.clone(),
        bpffs: tools.bpffs.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arms_alternate_between_rounds() {
        assert_eq!(arms(1, false), [Arm::Off, Arm::On]);
        assert_eq!(arms(2, false), [Arm::On, Arm::Off]);
        assert_eq!(arms(1, true), [Arm::Baseline, Arm::Off, Arm::On]);
        assert_eq!(arms(2, true), [Arm::On, Arm::Off, Arm::Baseline]);
        let s = TracerSample {
            round: 1,
            arm: Arm::Off,
            conns_per_s: 1.0,
            connect4_runs: 4,
            connect4_ns: 1000,
            traced: 0,
            lost: 0,
        };
        assert_eq!(s.connect4_ns_per_run(), Some(250.0));
        let summary = "interceptor: tracing 1 datapath(s)\ninterceptor: 9 line(s) shown of 12 \
                       event(s); 3 lost\n";
        assert_eq!(lost_in(summary), 3);
    }
}
