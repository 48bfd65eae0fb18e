//! Waiting, bounded, for what the kernel or a process does a little later.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

/// Waits until `done` holds, checking every 50 ms; an error naming `what` after `timeout`.
pub fn eventually(what: &str, timeout: Duration, done: impl Fn() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if done()? {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        thread::sleep(Duration::from_millis(50));
    }
}
