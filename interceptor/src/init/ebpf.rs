//! `init` and `clean` with the eBPF backend: the pod joins the node's datapath (the first pod
//! of a node and build loads the programs; the others only attach them and write their
//! entries), and `clean` takes it out again.

use std::path::Path;

use anyhow::Context as _;

use super::{CleanOptions, InitOptions, name_servers};
use crate::{
    config::{DnsCapture, InterceptConfig},
    datapath::{
        Datapath, Enrolment, InstanceMode, MapPlan, PodRecord,
        bpffs::{self, PodDir},
        gc, legacy, now_unix,
        pods::HANDOVER_GRACE,
    },
    error::TargetError,
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
    // Everything that depends on the pod (e.g. -c names) is checked before anything changes.
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
    if facts.ipv6_enabled(cfg.dual_stack).unwrap_or(false) {
        pod::add_inbound_passthrough_v6(&netns)?;
    }
    let sizes = opts.sizes;
    let base = bpffs::ensure_ready(&opts.target.bpffs)?;
    let _lock = Datapath::lock(&base)?;
    gc::sweep(&base)?;
    refuse_node_cgroup(&base, &cgroup)?;
    let mut dp = Datapath::open(&base, sizes, opts.kernel_log_level)?;
    let record = PodRecord {
        mode: InstanceMode::Pod,
        version: env!("CARGO_PKG_VERSION").to_string(),
        cgroup: cgroup.path.display().to_string(),
        cgroup_id: cgroup.id,
        registered_unix: now_unix(),
        options: Some(opts.options.clone()),
        config: serde_json::to_value(&cfg).ok(),
        dns_servers: facts.name_servers.clone(),
        ..PodRecord::default()
    };
    let registered = dp.register(&netns, &facts, Enrolment::Init(&cgroup), record, |r, s| {
        MapPlan::build(&cfg, &facts, &dns, r, s)
    });
    let registered = match registered {
        Ok(r) => r,
        Err(e) => {
            // All or nothing: a datapath made for this pod alone goes with it.
            if Datapath::is_unused(&dp.dir) {
                let _ = std::fs::remove_dir_all(&dp.dir);
            }
            return Err(e);
        }
    };
    let moved = move_out(&base, &mut dp, cgroup.id, registered.slot)?;
    let sizes = format!(
        "--max-pods {}, --max-connections {}",
        dp.sizes.max_pods, dp.sizes.max_connections
    );
    tracing::info!(
        pod = %registered.dir.display(),
        cgroup = %cgroup.path.display(),
        netns = %netns.path.display(),
        netns_cookie = plan.netns_cookie,
        rules = registered.rules,
        programs_loaded = dp.loaded,
        "interception {}",
        match moved {
            Some(from) => format!(
                "active, moved from {from} to the datapath of this build with {sizes} \
                 (counters carried over)"
            ),
            None if registered.updated => "updated in place".to_string(),
            None => "active".to_string(),
        }
    );
    Ok(None)
}

/// The pod's interception elsewhere (a datapath of other sizes or another build's map layout,
/// or a version 0.1 instance) goes, now that this one is in place; its counters go on in
/// `slot`. Where it was, if anywhere.
fn move_out(
    base: &Path,
    dp: &mut Datapath,
    cgroup_id: u64,
    slot: u32,
) -> anyhow::Result<Option<String>> {
    let mut moved = None;
    let others = bpffs::datapath_dirs(base)
        .into_iter()
        .filter(|d| *d != dp.dir);
    for dir in others.collect::<Vec<_>>() {
        for pod in bpffs::pod_dirs(&dir) {
            let PodDir::Init {
                cgroup_id: id,
                cookie,
            } = pod
            else {
                continue;
            };
            if id != cgroup_id {
                continue;
            }
            let mut other = Datapath::existing(&dir)?;
            let why = if other.sizes == dp.sizes {
                "another build's map layout".to_string()
            } else {
                format!(
                    "--max-pods {}, --max-connections {}",
                    other.sizes.max_pods, other.sizes.max_connections
                )
            };
            let removed = other.unregister(cookie, Some(HANDOVER_GRACE))?;
            dp.maps.add_counters(slot, &removed.counters)?;
            if Datapath::is_unused(&dir) {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
            }
            let name = dir.file_name().unwrap_or_default().to_string_lossy();
            moved = Some(format!("{name} ({why})"));
        }
    }
    if let Some(dir) = legacy::find(base, cgroup_id) {
        // One pod per instance, in slot 0.
        for counters in legacy::remove(&dir, &[0])? {
            dp.maps.add_counters(slot, &counters)?;
        }
        moved = Some(format!("the version 0.1 instance {}", dir.display()));
    }
    Ok(moved)
}

/// `init` does not enroll a pod the node daemon covers: its cgroup is the daemon's, or below it.
fn refuse_node_cgroup(base: &Path, cgroup: &Cgroup) -> anyhow::Result<()> {
    let nodes: Vec<u64> = bpffs::datapath_dirs(base)
        .iter()
        .flat_map(|d| bpffs::node_dirs(d).into_iter().map(|(id, _)| id))
        .chain(
            bpffs::legacy_instance_dirs(base)
                .into_iter()
                .filter(|(_, d)| legacy::record(d).is_some_and(|r| r.mode == InstanceMode::Node))
                .map(|(id, _)| id),
        )
        .collect();
    if nodes.is_empty() {
        return Ok(());
    }
    for dir in cgroup.path.ancestors() {
        let id = std::os::unix::fs::MetadataExt::ino(&match std::fs::metadata(dir) {
            Ok(m) => m,
            Err(_) => break,
        });
        if nodes.contains(&id) {
            return Err(TargetError::ManagedByDaemon {
                path: cgroup.path.display().to_string(),
            }
            .into());
        }
    }
    Ok(())
}

pub fn clean(opts: &CleanOptions) -> anyhow::Result<()> {
    require_root(ROOT_NEEDED)?;
    let root = &opts.target.bpffs;
    let cgroup_id = match &opts.instance {
        Some(name) => bpffs::parse_legacy_instance_name(name)
            .with_context(|| format!("--instance {name:?}: not an instance name (cgroup-<id>)"))?,
        None => open_cgroup(opts.target.cgroup.as_deref())?.id,
    };
    let base = bpffs::interceptor_dir(root);
    if !bpffs::is_mounted(root) || !base.exists() {
        tracing::info!("nothing to clean: no interception on this node");
        return Ok(());
    }
    let _lock = Datapath::lock(&base)?;
    gc::sweep(&base)?;
    let mut removed = false;
    for dir in bpffs::datapath_dirs(&base) {
        if bpffs::node_dirs(&dir)
            .iter()
            .any(|(id, _)| *id == cgroup_id)
        {
            remove_node(&dir, cgroup_id)?;
            removed = true;
        }
        for pod in bpffs::pod_dirs(&dir) {
            if let PodDir::Init {
                cgroup_id: id,
                cookie,
            } = pod
                && id == cgroup_id
            {
                Datapath::existing(&dir)?.unregister(cookie, None)?;
                removed = true;
            }
        }
        if Datapath::is_unused(&dir) {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    if let Some(dir) = legacy::find(&base, cgroup_id) {
        crate::datapath::links::detach_all(&dir, None)?;
        removed = true;
    }
    let _ = std::fs::remove_dir(&base); // the last of ours gone: nothing stays on bpffs
    if removed {
        tracing::info!("interception removed");
    } else {
        tracing::info!("nothing to clean: no interception for this cgroup");
    }
    Ok(())
}

/// `clean` of a node daemon's cgroup: its links and every pod it registered.
fn remove_node(dir: &Path, cgroup_id: u64) -> anyhow::Result<()> {
    crate::datapath::links::detach_all(&bpffs::node_dir(dir, cgroup_id), None)?;
    Datapath::existing(dir)?.unregister_node_pods(cgroup_id)
}

/// The pod's cgroup: the one given, else the parent of the caller's own.
fn open_cgroup(path: Option<&Path>) -> anyhow::Result<Cgroup> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => pod::cgroup::default_pod_cgroup()?,
    };
    Ok(Cgroup::open(&path)?)
}
