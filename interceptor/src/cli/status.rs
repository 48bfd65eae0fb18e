//! `status`: every instance on the node, read back from its pins.

use super::args::StatusArgs;
use crate::{datapath::status, sys::users::require_root};

pub fn status(args: &StatusArgs) -> anyhow::Result<()> {
    require_root("it reads the pinned BPF maps")?;
    let instances = status::list_instances(&args.bpffs)?;
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
