//! `interceptor trace` running beside a test: started and waited for until it says it is
//! attached, then stopped (it ends by itself at `--duration`, `--count`, or SIGINT) and its
//! output collected. Killed on drop if it still runs.

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::interceptor_bin;

/// Bound for the tracer to attach, and to end once asked.
const TRACER_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug)]
pub struct Tracer {
    child: Option<Child>,
    stderr: mpsc::Receiver<String>,
    stdout: Option<std::thread::JoinHandle<String>>,
}

/// What a tracer printed.
#[derive(Debug)]
pub struct Traced {
    pub stdout: String,
    pub stderr: String,
}

impl Traced {
    /// Its `--json` lines.
    pub fn json(&self) -> Result<Vec<serde_json::Value>> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("trace line {l:?}")))
            .collect()
    }
}

impl Tracer {
    /// `interceptor trace ARGS`, returned once it is attached. With `read_stdout` false its
    /// output is left in the pipe until [`Tracer::finish`] (a tracer that falls behind).
    pub fn start(args: &[&str], read_stdout: bool) -> Result<Self> {
        let mut child = Command::new(interceptor_bin())
            .arg("trace")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting interceptor trace")?;
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().context("trace's stderr")?;
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdout = if read_stdout {
            let mut out = child.stdout.take().context("trace's stdout")?;
            Some(std::thread::spawn(move || {
                let mut s = String::new();
                let _ = out.read_to_string(&mut s);
                s
            }))
        } else {
            None
        };
        let tracer = Tracer {
            child: Some(child),
            stderr: rx,
            stdout,
        };
        let mut said = Vec::new();
        loop {
            match tracer.stderr.recv_timeout(TRACER_TIMEOUT) {
                Ok(line) if line.contains("tracing") => return Ok(tracer),
                Ok(line) => said.push(line),
                Err(_) => bail!("the tracer did not attach: {}", said.join("\n")),
            }
        }
    }

    /// Asks it to stop (SIGINT, as Ctrl-C), and collects what it printed.
    pub fn stop(self) -> Result<Traced> {
        if let Some(child) = &self.child {
            // SAFETY: a signal to our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        }
        self.finish()
    }

    /// Waits for it to end by itself (`--duration`, `--count`), and collects what it printed.
    /// A tracer still running after [`TRACER_TIMEOUT`] is killed, and that is an error.
    pub fn finish(mut self) -> Result<Traced> {
        let mut child = self.child.take().context("the tracer ran")?;
        // Its output is read while it runs: a tracer whose pipe is full never ends.
        let reader = match self.stdout.take() {
            Some(reader) => reader,
            None => {
                let mut out = child.stdout.take().context("trace's stdout")?;
                std::thread::spawn(move || {
                    let mut s = String::new();
                    let _ = out.read_to_string(&mut s);
                    s
                })
            }
        };
        let deadline = std::time::Instant::now() + TRACER_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the tracer did not end within {TRACER_TIMEOUT:?}: killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = reader.join().unwrap_or_default();
        let stderr: Vec<String> = self.stderr.try_iter().collect();
        let stderr = stderr.join("\n");
        if !status.success() {
            bail!("the tracer failed ({status}): {stderr}");
        }
        Ok(Traced { stdout, stderr })
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
