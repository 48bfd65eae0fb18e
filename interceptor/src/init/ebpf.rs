//! `init` and `clean` with the eBPF backend: one instance per pod cgroup.

use std::{
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;

use super::{CleanOptions, InitOptions, name_servers};
use crate::{
    config::{DnsCapture, InterceptConfig},
    datapath::{self, InstanceMode, InstanceRecord, LoadOptions, MapPlan, instance},
    pod::{self, Cgroup, Netns, PodFacts},
    sys::users::require_root,
};

const ROOT_NEEDED: &str =
    "it loads BPF programs and attaches them to cgroups (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)";

pub fn init(opts: &InitOptions, cfg: InterceptConfig) -> anyhow::Result<Option<String>> {
    cfg.check_ebpf_support()?;
    if !opts.dry_run {
        require_root(ROOT_NEEDED)?;
    }
    let cgroup = open_cgroup(opts.target.cgroup.as_deref())?;
    let netns = Netns::open(&opts.target.netns)?;
    let facts = PodFacts::read(&netns, &name_servers(&cfg, &opts.resolv_conf))?;
    let (dns, warning) = DnsCapture::resolve(&cfg, &facts.name_servers);
    if let Some(w) = warning {
        tracing::warn!(resolv_conf = %opts.resolv_conf.display(), "{w}");
    }
    // Everything that depends on the pod (e.g. -c names) is checked before loading.
    let plan = MapPlan::build(&cfg, &facts, &dns, 1, 0)?;
    if opts.dry_run {
        let out = serde_json::json!({
            "dry_run": true,
            "cgroup": cgroup.path,
            "netns": netns.path,
            "config": cfg,
            "dns_capture": dns,
            "maps": plan.describe(),
        });
        return Ok(Some(serde_json::to_string_pretty(&out)? + "\n"));
    }

    let record = InstanceRecord {
        mode: InstanceMode::Pod,
        version: env!("CARGO_PKG_VERSION").to_string(),
        cgroup: cgroup.path.display().to_string(),
        cgroup_id: cgroup.id,
        netns: netns.path.display().to_string(),
        netns_inode: netns.inode,
        netns_cookie: plan.netns_cookie,
        updated_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        config: serde_json::to_value(&cfg)?,
        dns_capture: serde_json::to_value(&dns)?,
    };
    if facts.ipv6_enabled(cfg.dual_stack).unwrap_or(false) {
        pod::add_inbound_passthrough_v6(&netns)?;
    }
    let load = LoadOptions {
        bpffs_root: opts.target.bpffs.clone(),
        max_connections: opts.max_connections.max(1),
        kernel_log_level: opts.kernel_log_level,
    };
    let applied = instance::apply(&cgroup, &netns, &record, &load, |rules| {
        MapPlan::build(&cfg, &facts, &dns, rules, 0)
    })?;
    tracing::info!(
        instance = %applied.instance_dir.display(),
        cgroup = %cgroup.path.display(),
        netns = %netns.path.display(),
        netns_cookie = plan.netns_cookie,
        rules = applied.rules,
        "interception {}",
        if applied.rebuilt {
            "active (the older instance was replaced)"
        } else if applied.replaced {
            "updated in place"
        } else {
            "active"
        }
    );
    Ok(None)
}

pub fn clean(opts: &CleanOptions) -> anyhow::Result<()> {
    require_root(ROOT_NEEDED)?;
    let root = &opts.target.bpffs;
    let cgroup_id = match &opts.instance {
        Some(name) => datapath::bpffs::parse_instance_name(name)
            .with_context(|| format!("--instance {name:?}: not an instance name (cgroup-<id>)"))?,
        None => open_cgroup(opts.target.cgroup.as_deref())?.id,
    };
    if instance::remove_instance(root, cgroup_id)? {
        tracing::info!("interception removed");
    } else {
        tracing::info!("nothing to clean: no instance for this cgroup");
    }
    Ok(())
}

/// The pod's cgroup: the one given, else the parent of the caller's own.
fn open_cgroup(path: Option<&Path>) -> anyhow::Result<Cgroup> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => pod::cgroup::default_pod_cgroup()?,
    };
    Ok(Cgroup::open(&path)?)
}
