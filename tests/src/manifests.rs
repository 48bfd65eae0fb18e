//! The manifests in `deploy/`, read as JSON by the YAML parser of the `kubernetes-validate`
//! virtualenv that `cargo xtask setup` installs (PyYAML), for the tests that check and run them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, ensure};
use serde_json::Value;

/// The repository's `deploy/`.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The `kubernetes-validate` executable (`$INTERCEPTOR_KUBERNETES_VALIDATE`, set by the xtask).
pub fn validator() -> Result<PathBuf> {
    let path = std::env::var_os("INTERCEPTOR_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/tools/k8s-venv/bin/kubernetes-validate")
        });
    ensure!(
        path.is_file(),
        "{} missing: run `cargo xtask setup`",
        path.display()
    );
    Ok(path)
}

/// `deploy/<relative>` as JSON.
pub fn load(relative: &str) -> Result<Value> {
    let python = validator()?.with_file_name("python");
    let out = Command::new(python)
        .args([
            "-c",
            "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(deploy_dir().join(relative))
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}
