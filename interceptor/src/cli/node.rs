//! `daemon` (node mode) and `pod add|remove|list`, its client.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::args::{Backend, DaemonArgs, PodAddArgs, PodArgs, PodCommand};
use crate::{
    datapath::Sizes,
    error::{ConfigError, RemoteError},
    node::{
        AddPod, PodSelector,
        api::{self, ClientError, Request, Response},
        daemon::{self, DaemonOptions},
    },
};

pub fn daemon(args: &DaemonArgs) -> anyhow::Result<()> {
    // Checked before anything changes (or even is looked at).
    let sizes = Sizes::checked(args.max_pods, args.max_connections)?;
    daemon::run(&DaemonOptions {
        cgroup: args.cgroup.clone(),
        socket: args.socket.clone(),
        bpffs: args.bpffs.clone(),
        metrics: args.metrics,
        bpf_stats: args.bpf_stats,
        sizes,
        kernel_log_level: args.kernel_log_level.as_aya_level(),
    })
}

/// How long the client waits for a daemon that is (re)starting.
const CLIENT_WAIT: Duration = Duration::from_secs(10);

/// One request to the daemon; a failure it reports becomes this command's error, and so does
/// a request larger than it reads (the caller's mistake: exit 2).
fn ask(socket: &Path, request: &Request) -> anyhow::Result<Response> {
    let response = match api::call(socket, request, CLIENT_WAIT) {
        Ok(response) => response,
        Err(e @ ClientError::TooLarge { .. }) => {
            return Err(ConfigError::Unsupported {
                flag: "pod add",
                reason: format!("{e} (fewer CIDRs, ports or ids per pod)"),
            }
            .into());
        }
        Err(e) => return Err(e.into()),
    };
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
        let value = if add.backend == Backend::Auto {
            "auto"
        } else {
            "iptables"
        };
        return Err(ConfigError::DaemonBackend {
            value: value.into(),
        }
        .into());
    }
    if add.istio.dry_run {
        return Err(ConfigError::DaemonDryRun.into());
    }
    let mut options = add.istio.raw();
    options.inbound_fail = add.inbound_fail.clone();
    options.raw_sockets = add.raw_sockets.clone();
    options.accelerate = add.accelerate;
    let request = Request::Add(Box::new(AddPod {
        netns: absolute(&add.netns)?,
        name: add.name.clone(),
        namespace: add.namespace.clone(),
        container_id: add.container_id.clone(),
        options,
        resolv_conf: add.resolv_conf.as_deref().map(absolute).transpose()?,
        dns_servers: add.dns_servers.clone(),
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
