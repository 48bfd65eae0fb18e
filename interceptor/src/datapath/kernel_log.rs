//! The programs' aya-log records (`--kernel-log-level` at `init` or `daemon`): the datapath's
//! `AYA_LOGS` ring buffer, read with aya-log's own reader. `trace --kernel-log` prints them
//! ([`Printer`]); the node daemon forwards them into its `tracing` log ([`ToTracing`]).
//!
//! A ring buffer has one reader position: with a daemon running, read them in its log.

use std::{io::Write, path::Path, sync::Mutex};

use anyhow::{Context as _, anyhow};
use aya_log::EbpfLogger;
use interceptor_ebpf::program_names;

use super::bpffs;
use crate::sys::bpf;

/// A reader of one datapath's records, passing each to `L`.
pub type Reader<L> = EbpfLogger<L>;

/// Opens the records of the datapath at `dir`, for `logger`.
pub fn open<L: log::Log>(dir: &Path, logger: L) -> anyhow::Result<Reader<L>> {
    // The programs that write records reference the ring buffer: aya-log finds it through
    // one of them (any build's: the datapath's programs all share it).
    let program = bpffs::programs_dirs(dir)
        .into_iter()
        .map(|d| d.join(program_names::CONNECT4))
        .find(|p| p.exists())
        .ok_or_else(|| anyhow!("{}: no programs pinned", dir.display()))?;
    let fd = bpf::obj_get(&program).with_context(|| format!("opening {}", program.display()))?;
    let id = bpf::prog_id(&fd)?;
    EbpfLogger::init_from_id_with_logger(id, logger)
        .map_err(|e| anyhow!("opening the kernel log of {}: {e}", dir.display()))
}

/// Prints records as lines (or JSON objects) on a writer.
pub struct Printer<W: Write + Send> {
    out: Mutex<W>,
    json: bool,
    /// Lines written.
    pub lines: std::sync::atomic::AtomicU64,
}

impl<W: Write + Send> Printer<W> {
    pub fn new(out: W, json: bool) -> Self {
        Printer {
            out: Mutex::new(out),
            json,
            lines: 0.into(),
        }
    }
}

impl<W: Write + Send> log::Log for Printer<W> {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args().to_string();
        let line = if self.json {
            serde_json::json!({
                "level": record.level().as_str(),
                "target": record.target(),
                "message": message,
            })
            .to_string()
        } else {
            format!("{:<5} {}: {message}", record.level(), record.target())
        };
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
        self.lines
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn flush(&self) {}
}

/// Forwards records into this process's `tracing` log (the node daemon's), each with the field
/// `kernel` (the program's module) and its level. Errors and warnings keep theirs; the rest are
/// logged at info, so that what `--kernel-log-level` asks the programs to write is shown
/// whatever the log's own filter (`--log`).
pub struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        let kernel = record.target();
        match record.level() {
            log::Level::Error => tracing::error!(kernel, "{message}"),
            log::Level::Warn => tracing::warn!(kernel, "{message}"),
            level => tracing::info!(kernel, level = %level, "{message}"),
        }
    }

    fn flush(&self) {}
}
