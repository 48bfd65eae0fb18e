//! `status`: every datapath, pod and version 0.1 instance on the node, read back from the pins.

use super::args::StatusArgs;
use crate::{
    datapath::status::{self, Status},
    sys::users::require_root,
};

pub fn status(args: &StatusArgs) -> anyhow::Result<()> {
    require_root("it reads the pinned BPF maps")?;
    let status = status::status(&args.bpffs)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print(&status);
    }
    Ok(())
}

fn print(s: &Status) {
    if s.datapaths.is_empty() && s.legacy.is_empty() {
        println!("no interception on this node");
    }
    let stats_on = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .is_ok_and(|v| v.trim() != "0");
    for d in &s.datapaths {
        println!("datapath {}", d.datapath);
        if let Some(e) = &d.error {
            println!("  unreadable: {e}");
        }
        if let Some(r) = &d.record {
            println!(
                "  created by {} for {} pods (--max-pods) and {} connection set-ups at once \
                 per family (--max-connections)",
                r.version, r.max_pods, r.max_connections
            );
        }
        if d.unused {
            println!("  unused:   no pod left; the next init, clean or daemon sweep removes it");
        }
        for (name, entries, capacity) in &d.maps {
            println!("  map:      {name}: {entries} of {capacity}");
        }
        println!(
            "  inbound:  {} capture listener(s) registered; {} connection(s) in hand-over",
            d.inbound_listeners, d.connections_in_flight
        );
        for n in &d.nodes {
            println!(
                "  node:     cgroup {} ({} links)",
                n.cgroup_id,
                n.links.len()
            );
        }
        for b in &d.programs {
            for p in &b.programs {
                match p.avg_ns {
                    _ if p.run_count == 0 && !stats_on => println!(
                        "  program:  {} {} (id {}): no run statistics \
                         (kernel.bpf_stats_enabled=0)",
                        b.build, p.name, p.id
                    ),
                    Some(avg) => println!(
                        "  program:  {} {} (id {}): {} runs, {avg} ns/run",
                        b.build, p.name, p.id, p.run_count
                    ),
                    None => println!(
                        "  program:  {} {} (id {}): {} runs",
                        b.build, p.name, p.id, p.run_count
                    ),
                }
            }
        }
    }
    for p in &s.pods {
        let who = p
            .pod
            .clone()
            .unwrap_or_else(|| format!("cgroup {} ({})", p.cgroup_id, p.cgroup));
        println!("pod {who}");
        println!("  state:    {}", p.state);
        // Its datapath's sizes: a pod enrolled with other ones is in another datapath.
        let sizes = s
            .datapaths
            .iter()
            .find(|d| d.datapath == p.datapath)
            .and_then(|d| d.record.as_ref());
        match sizes {
            Some(r) => {
                println!(
                    "  datapath: {} (--max-pods {}, --max-connections {})",
                    p.datapath, r.max_pods, r.max_connections
                );
            }
            _ => println!("  datapath: {}", p.datapath),
        }
        println!("  netns:    {} (cookie {})", p.netns, p.netns_cookie);
        println!("  links:    {}", p.links.join(", "));
        if let Some(o) = &p.options {
            println!(
                "  options:  {}",
                serde_json::to_string(o).unwrap_or_default()
            );
        }
        let counters: Vec<String> = p.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("  counters: {}", counters.join(" "));
    }
    for l in &s.legacy {
        println!("instance {} (version 0.1)", l.instance);
        if let Some(e) = &l.error {
            println!("  unreadable: {e}");
        }
        println!("  links:    {}", l.links.join(", "));
        for p in &l.pods {
            let counters: Vec<String> =
                p.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!(
                "  pod:      netns cookie {}: {}",
                p.netns_cookie,
                counters.join(" ")
            );
        }
    }
}
