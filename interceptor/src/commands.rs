//! The subcommands. Each returns `Ok(())` or an error whose kind decides the exit code.

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};

use crate::{
    cgroup::{self, Cgroup},
    cli::{Backend, CleanArgs, InitArgs, StatusArgs, TargetArgs},
    config::{IdResolver, InterceptConfig, defaults},
    dns::{self, DnsCapture},
    iptables,
    loader::{self, InstanceRecord, LoadOptions},
    netns::{Netns, NetnsInfo},
    rules::MapPlan,
    sys,
};

/// The passwd and group databases.
pub struct SystemIds;

impl IdResolver for SystemIds {
    fn uid_of(&self, user: &str) -> Option<u32> {
        sys::uid_of(user)
    }
    fn gid_of(&self, group: &str) -> Option<u32> {
        sys::gid_of(group)
    }
}

fn require_root() -> anyhow::Result<()> {
    if !sys::is_root() {
        bail!(
            "interceptor must run as root (it loads BPF programs and attaches them to cgroups: \
             CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)"
        );
    }
    Ok(())
}

fn resolve_cgroup(target: &TargetArgs) -> anyhow::Result<Cgroup> {
    let path = match &target.cgroup {
        Some(p) => p.clone(),
        None => cgroup::default_pod_cgroup()?,
    };
    Ok(Cgroup::open(&path)?)
}

fn netns_path(target: &TargetArgs) -> PathBuf {
    target
        .netns
        .clone()
        .unwrap_or_else(|| PathBuf::from("/proc/self/ns/net"))
}

pub fn init(args: &InitArgs) -> anyhow::Result<()> {
    let envoy_user = std::env::var("ENVOY_USER").unwrap_or_else(|_| defaults::ENVOY_USER.into());
    let mut raw = args.istio.raw();
    raw.inbound_fail = args.inbound_fail.clone();
    let cfg = raw.resolve(&SystemIds, &envoy_user)?;
    match args.backend.backend {
        Backend::Ebpf => init_ebpf(args, cfg),
        Backend::Iptables => iptables::command::init(args, &cfg),
    }
}

fn init_ebpf(args: &InitArgs, cfg: InterceptConfig) -> anyhow::Result<()> {
    let dry_run = args.istio.dry_run;
    if !dry_run {
        require_root()?;
    }
    let cgroup = resolve_cgroup(&args.target)?;
    let netns = Netns::open(&netns_path(&args.target))?;
    for note in cfg.not_enforced() {
        tracing::warn!("{note}");
    }
    let info = netns.inspect()?;
    let dns = dns_capture(&cfg, &args.resolv_conf)?;
    // Everything that depends on the namespace (e.g. -c names) is checked before loading.
    MapPlan::build(&cfg, &info, &dns, 1, 0)?;
    if dry_run {
        return print_dry_run(&cfg, &dns, &cgroup, &netns, &info);
    }

    let record = InstanceRecord {
        version: env!("CARGO_PKG_VERSION").to_string(),
        cgroup: cgroup.path.display().to_string(),
        cgroup_id: cgroup.id,
        netns: netns.path.display().to_string(),
        netns_inode: netns.inode,
        netns_cookie: info.cookie,
        updated_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        config: serde_json::to_value(&cfg)?,
        dns_capture: serde_json::to_value(&dns)?,
    };
    let opts = LoadOptions {
        bpffs_root: args.target.bpffs.clone(),
        max_connections: args.max_connections.max(1),
        kernel_log_level: args.kernel_log_level.as_aya_level(),
    };
    let applied = loader::apply(&cgroup, &netns, &record, &opts, |rules| {
        MapPlan::build(&cfg, &info, &dns, rules, 0)
    })?;
    tracing::info!(
        instance = %applied.instance_dir.display(),
        cgroup = %cgroup.path.display(),
        netns = %netns.path.display(),
        netns_cookie = info.cookie,
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
    Ok(())
}

/// What `--redirect-dns` captures for this pod, from its resolv.conf.
fn dns_capture(cfg: &InterceptConfig, resolv_conf: &Path) -> anyhow::Result<DnsCapture> {
    let servers = if cfg.redirect_dns && !cfg.capture_all_dns {
        dns::nameservers(resolv_conf)?
    } else {
        Vec::new()
    };
    let (capture, warning) = DnsCapture::resolve(cfg, servers);
    if let Some(w) = warning {
        tracing::warn!(resolv_conf = %resolv_conf.display(), "{w}");
    }
    Ok(capture)
}

fn print_dry_run(
    cfg: &InterceptConfig,
    dns: &DnsCapture,
    cgroup: &Cgroup,
    netns: &Netns,
    info: &NetnsInfo,
) -> anyhow::Result<()> {
    let plan = MapPlan::build(cfg, info, dns, 1, 0)?;
    let out = serde_json::json!({
        "dry_run": true,
        "cgroup": cgroup.path,
        "netns": netns.path,
        "config": cfg,
        "dns_capture": dns,
        "not_enforced": cfg.not_enforced(),
        "maps": plan.describe(),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

pub fn clean(args: &CleanArgs) -> anyhow::Result<()> {
    if args.backend.backend == Backend::Iptables {
        return iptables::command::clean(args);
    }
    require_root()?;
    let root = &args.target.bpffs;
    let removed = match &args.instance {
        Some(name) => remove_by_name(root, name)?,
        None => {
            let cgroup = resolve_cgroup(&args.target)?;
            loader::remove_instance(root, cgroup.id)?
        }
    };
    if removed {
        tracing::info!("interception removed");
    } else {
        tracing::info!("nothing to clean: no instance for this cgroup");
    }
    Ok(())
}

fn remove_by_name(root: &Path, name: &str) -> anyhow::Result<bool> {
    let id = name
        .strip_prefix("cgroup-")
        .and_then(|n| n.parse::<u64>().ok())
        .with_context(|| format!("--instance {name:?}: not an instance name (cgroup-<id>)"))?;
    loader::remove_instance(root, id)
}

pub fn status(args: &StatusArgs) -> anyhow::Result<()> {
    require_root()?;
    let instances = loader::list_instances(&args.bpffs)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&instances)?);
        return Ok(());
    }
    if instances.is_empty() {
        println!("no interceptor instances on this node");
    }
    for inst in &instances {
        println!("instance {}", inst.instance);
        if let Some(e) = &inst.error {
            println!("  unreadable: {e}");
        }
        if let Some(r) = &inst.record {
            println!("  cgroup:   {} (id {})", r.cgroup, r.cgroup_id);
            println!("  netns:    {} (cookie {})", r.netns, r.netns_cookie);
            println!("  version:  {}", r.version);
            println!("  config:   {}", r.config);
        }
        println!("  links:    {}", inst.links.join(", "));
        println!(
            "  connections: {} being set up, {} established and tracked",
            inst.connections_pending, inst.connections_tracked
        );
        println!(
            "  inbound:  {} capture listener(s) registered",
            inst.inbound_listeners
        );
        let stats_on = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .is_ok_and(|v| v.trim() != "0");
        for p in &inst.programs {
            if p.run_count == 0 && !stats_on {
                println!(
                    "  program:  {} (id {}): no run statistics (kernel.bpf_stats_enabled=0)",
                    p.name, p.id
                );
                continue;
            }
            let avg = p
                .avg_ns
                .map(|n| format!(", {n} ns/run"))
                .unwrap_or_default();
            println!(
                "  program:  {} (id {}): {} runs{avg}",
                p.name, p.id, p.run_count
            );
        }
        for pod in &inst.pods {
            let counters: Vec<String> = pod
                .counters
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!("  counters: {}", counters.join(" "));
        }
    }
    Ok(())
}
