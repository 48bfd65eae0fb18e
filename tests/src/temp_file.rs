//! A file under the temp directory, removed on drop (e.g. a pod's resolv.conf).

use std::path::{Path, PathBuf};

pub struct TempFile(PathBuf);

impl TempFile {
    /// Writes `contents` to `<tmp>/<name>`; use a unique name (e.g. the topology's).
    pub fn new(name: &str, contents: &str) -> std::io::Result<Self> {
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, contents)?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn path_str(&self) -> &str {
        self.0.to_str().expect("temp paths are UTF-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
