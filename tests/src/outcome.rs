//! What a finished `interceptor` run must have shown: its exit code and a word of its message.

use std::fmt::Debug;
use std::process::Output;

/// Asserts that `out` exited with `code` and that its stderr contains `needle`; `case` names
/// what was run in the failure message. Returns stderr.
#[track_caller]
pub fn assert_exit(out: &Output, code: i32, needle: &str, case: &dyn Debug) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{case:?}: {err}");
    assert!(err.contains(needle), "{case:?}: {err}");
    err
}

/// Asserts that `out` succeeded, showing its stderr if not.
#[track_caller]
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
