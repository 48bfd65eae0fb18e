//! The installer (the DaemonSet's init container): puts this binary into the node's CNI
//! binary directory and chains `entry` (the plugin's configuration) at the end of the node's
//! primary network configuration, the lexically first file in `conf_dir` as runtimes pick it.
//! A `.conf` (one plugin) becomes a `.conflist`. Re-running replaces the entry. Each file is
//! written beside its target and renamed over it: a runtime never reads half a file.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

const PLUGIN: &str = "interceptor-cni";

/// The configuration file the runtime uses.
pub fn primary_conf(conf_dir: &Path) -> anyhow::Result<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(conf_dir)
        .with_context(|| format!("reading {}", conf_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conf" | "conflist" | "json")
                )
        })
        .collect();
    files.sort();
    files.into_iter().next().with_context(|| {
        format!(
            "no network configuration in {} yet (the main CNI plugin writes it first)",
            conf_dir.display()
        )
    })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("interceptor-tmp");
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// Chains `entry` into the primary configuration; returns the file written.
pub fn chain(conf_dir: &Path, entry: &Value) -> anyhow::Result<PathBuf> {
    let path = primary_conf(conf_dir)?;
    let text = fs::read_to_string(&path)?;
    let mut conf: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut entry = entry.clone();
    entry["type"] = json!(PLUGIN);
    let (target, list) = if conf.get("plugins").is_some() {
        (path.clone(), conf)
    } else {
        // A single-plugin .conf: the same network as a list, name and version on top.
        let mut plugin = conf.clone();
        let obj = plugin.as_object_mut().context("a JSON object")?;
        let name = obj.remove("name").unwrap_or(json!("k8s-pod-network"));
        let version = obj.remove("cniVersion").unwrap_or(json!("1.0.0"));
        conf = json!({ "cniVersion": version, "name": name, "plugins": [plugin] });
        (path.with_extension("conflist"), conf)
    };
    let mut list = list;
    let plugins = list["plugins"]
        .as_array_mut()
        .context("plugins is a list")?;
    plugins.retain(|p| p["type"] != PLUGIN);
    if plugins.is_empty() {
        bail!("{}: no plugin to chain after", path.display());
    }
    plugins.push(entry);
    write_atomically(&target, serde_json::to_string_pretty(&list)?.as_bytes())?;
    if target != path {
        fs::remove_file(&path)?;
    }
    Ok(target)
}

/// Removes the entry again (the plugin binary stays: pods being deleted still call DEL).
pub fn unchain(conf_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let path = primary_conf(conf_dir)?;
    let mut conf: Value = serde_json::from_str(&fs::read_to_string(&path)?)?;
    let Some(plugins) = conf.get_mut("plugins").and_then(Value::as_array_mut) else {
        return Ok(None);
    };
    let before = plugins.len();
    plugins.retain(|p| p["type"] != PLUGIN);
    if plugins.len() == before {
        return Ok(None);
    }
    write_atomically(&path, serde_json::to_string_pretty(&conf)?.as_bytes())?;
    Ok(Some(path))
}

/// Copies `binary` into `bin_dir` as `interceptor-cni`.
pub fn copy_binary(binary: &Path, bin_dir: &Path) -> anyhow::Result<PathBuf> {
    let target = bin_dir.join(PLUGIN);
    let tmp = bin_dir.join(format!(".{PLUGIN}.tmp"));
    fs::copy(binary, &tmp).with_context(|| format!("copying to {}", tmp.display()))?;
    fs::rename(&tmp, &target).with_context(|| format!("renaming to {}", target.display()))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn dir(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("interceptor-cni-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    #[test]
    fn chains_into_the_first_conflist_once() {
        let d = dir("list");
        fs::write(
            d.0.join("10-flannel.conflist"),
            r#"{"cniVersion":"1.0.0","name":"cbr0","plugins":[{"type":"flannel"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        fs::write(d.0.join("99-other.conf"), r#"{"type":"bridge"}"#).unwrap();
        let entry = json!({"socket": "/run/interceptor/interceptor.sock"});
        for _ in 0..2 {
            let p = chain(&d.0, &entry).unwrap();
            assert_eq!(p, d.0.join("10-flannel.conflist"));
        }
        let conf: Value =
            serde_json::from_str(&fs::read_to_string(d.0.join("10-flannel.conflist")).unwrap())
                .unwrap();
        let types: Vec<&str> = conf["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["flannel", "portmap", "interceptor-cni"]);
        assert_eq!(conf["name"], "cbr0");
        unchain(&d.0).unwrap();
        let conf: Value =
            serde_json::from_str(&fs::read_to_string(d.0.join("10-flannel.conflist")).unwrap())
                .unwrap();
        assert_eq!(conf["plugins"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_single_conf_becomes_a_list() {
        let d = dir("conf");
        fs::write(
            d.0.join("10-calico.conf"),
            r#"{"cniVersion":"0.4.0","name":"k8s","type":"calico","ipam":{"type":"calico-ipam"}}"#,
        )
        .unwrap();
        let p = chain(&d.0, &json!({})).unwrap();
        assert_eq!(p, d.0.join("10-calico.conflist"));
        assert!(!d.0.join("10-calico.conf").exists());
        let conf: Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(conf["cniVersion"], "0.4.0");
        assert_eq!(conf["plugins"][0]["type"], "calico");
        assert!(conf["plugins"][0].get("name").is_none());
        assert_eq!(conf["plugins"][1]["type"], "interceptor-cni");
    }
}
