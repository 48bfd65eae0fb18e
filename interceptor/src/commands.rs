//! The subcommands. Each returns `Ok(())` or an error whose kind decides the exit code.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};

use crate::{
    api::{self, Request, Response},
    cgroup::{self, Cgroup},
    cli::{
        Backend, CleanArgs, DaemonArgs, InitArgs, PodAddArgs, PodArgs, PodCommand, StatusArgs,
        TargetArgs,
    },
    config::{IdResolver, InterceptConfig, defaults},
    dns::DnsCapture,
    error::{ConfigError, RemoteError},
    iptables,
    loader::{self, InstanceRecord, LoadOptions},
    netns::{Netns, NetnsInfo},
    node::{AddPod, PodSelector},
    resolv_conf,
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
    cfg.check_ebpf_support()?;
    let dry_run = args.istio.dry_run;
    if !dry_run {
        require_root()?;
    }
    let cgroup = resolve_cgroup(&args.target)?;
    let netns = Netns::open(&netns_path(&args.target))?;
    let info = netns.inspect()?;
    let dns = dns_capture(&cfg, &args.resolv_conf)?;
    // Everything that depends on the namespace (e.g. -c names) is checked before loading.
    MapPlan::build(&cfg, &info, &dns, 1, 0)?;
    if dry_run {
        return print_dry_run(&cfg, &dns, &cgroup, &netns, &info);
    }

    let record = InstanceRecord {
        mode: loader::InstanceMode::Pod,
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
    if info.ipv6_enabled(cfg.dual_stack) {
        // As istio-iptables: Envoy's IPv6 inbound passthrough binds ::6.
        crate::iptables::command::add_inbound_passthrough_v6(&netns)?;
    }
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
        resolv_conf::nameservers(resolv_conf)?
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
            if let Some(name) = &pod.pod {
                println!("  pod:      {name} (netns cookie {})", pod.netns_cookie);
            }
            println!("  counters: {}", counters.join(" "));
        }
    }
    Ok(())
}

pub fn daemon(args: &DaemonArgs) -> anyhow::Result<()> {
    require_root()?;
    crate::daemon::run(args)
}

/// How long the client waits for a daemon that is (re)starting.
const CLIENT_WAIT: Duration = Duration::from_secs(10);

/// One request to the daemon; a failure it reports becomes this command's error.
fn ask(socket: &Path, request: &Request) -> anyhow::Result<Response> {
    let response = api::call(socket, request, CLIENT_WAIT)?;
    if let Some(message) = response.error.clone() {
        return Err(RemoteError {
            message,
            usage: response.usage,
        }
        .into());
    }
    Ok(response)
}

pub fn pod(args: &PodArgs) -> anyhow::Result<()> {
    match &args.command {
        PodCommand::Add(add) => pod_add(&args.socket, add),
        PodCommand::Remove(rm) => {
            let pod = rm
                .pod
                .as_deref()
                .map(|p| {
                    p.split_once('/')
                        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
                        .map(|(ns, name)| (ns.to_string(), name.to_string()))
                        .ok_or_else(|| ConfigError::PodName {
                            value: p.to_string(),
                        })
                })
                .transpose()?;
            let selector = PodSelector {
                container_id: rm.container_id.clone(),
                netns: rm.netns.clone(),
                pod,
            };
            let response = ask(&args.socket, &Request::Remove(selector))?;
            if response.pods.is_empty() {
                tracing::info!("no registered pod matched: nothing to remove");
            }
            for p in &response.pods {
                tracing::info!(
                    "removed {}/{} (netns cookie {})",
                    p.record.namespace,
                    p.record.name,
                    p.record.netns_cookie
                );
            }
            Ok(())
        }
        PodCommand::List { json } => {
            let response = ask(&args.socket, &Request::List)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&response.pods)?);
                return Ok(());
            }
            if response.pods.is_empty() {
                println!("no pods registered");
            }
            for p in &response.pods {
                let r = &p.record;
                let counters: Vec<String> = p
                    .counters
                    .iter()
                    .filter(|(_, v)| **v > 0)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                println!(
                    "{}/{}  netns {} (cookie {})  container {}  {}",
                    r.namespace,
                    r.name,
                    r.netns,
                    r.netns_cookie,
                    if r.container_id.is_empty() {
                        "-"
                    } else {
                        &r.container_id
                    },
                    counters.join(" ")
                );
            }
            Ok(())
        }
    }
}

fn pod_add(socket: &Path, add: &PodAddArgs) -> anyhow::Result<()> {
    if add.backend != Backend::Ebpf {
        return Err(ConfigError::DaemonBackend {
            value: "iptables".into(),
        }
        .into());
    }
    if add.istio.dry_run {
        return Err(ConfigError::DaemonDryRun.into());
    }
    let mut options = add.istio.raw();
    options.inbound_fail = add.inbound_fail.clone();
    let request = Request::Add(Box::new(AddPod {
        netns: absolute(&add.netns)?,
        name: add.name.clone(),
        namespace: add.namespace.clone(),
        container_id: add.container_id.clone(),
        options,
        resolv_conf: add.resolv_conf.as_deref().map(absolute).transpose()?,
    }));
    let response = ask(socket, &request)?;
    let added = response
        .added
        .ok_or_else(|| anyhow::anyhow!("the daemon's answer lacks the registration"))?;
    for w in &added.warnings {
        tracing::warn!("{w}");
    }
    if add.json {
        println!("{}", serde_json::to_string_pretty(&added)?);
    } else {
        tracing::info!(
            netns_cookie = added.pod.record.netns_cookie,
            pod_index = added.pod.record.pod_index,
            "pod {}/{} {}",
            added.pod.record.namespace,
            added.pod.record.name,
            if added.updated {
                "updated"
            } else {
                "registered"
            }
        );
    }
    Ok(())
}

/// The daemon resolves paths from its own working directory: send absolute ones.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    Ok(std::path::absolute(path)?)
}
