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
                "  created by {} for {} pods, {} connections in hand-over at once",
                r.version, r.max_pods, r.max_connections
            );
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
            if !stats_on && b.programs.iter().all(|p| p.run_count == 0) {
                let ids: Vec<String> = b.programs.iter().map(|p| p.id.to_string()).collect();
                println!(
                    "  programs: {} ({} programs, ids {}): no run statistics \
                     (kernel.bpf_stats_enabled=0)",
                    b.build,
                    b.programs.len(),
                    ids.join(" ")
                );
                continue;
            }
            for p in &b.programs {
                match p.avg_ns {
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
        println!("  netns:    {} (cookie {})", p.netns, p.netns_cookie);
        println!("  links:    {}", p.links.join(", "));
        if let Some(o) = &p.options {
            println!("  options:  {}", options_set(o));
        }
        println!(
            "  counters: {}",
            nonzero(p.counters.iter().map(|(k, v)| (*k, *v)))
        );
    }
    for l in &s.legacy {
        println!("instance {} (version 0.1)", l.instance);
        if let Some(e) = &l.error {
            println!("  unreadable: {e}");
        }
        println!("  links:    {}", l.links.join(", "));
        for p in &l.pods {
            println!(
                "  pod:      netns cookie {}: {}",
                p.netns_cookie,
                nonzero(p.counters.iter().map(|(k, v)| (*k, *v)))
            );
        }
    }
}

/// The options a pod was given (those left at istio-iptables' defaults are not shown);
/// `--json` has them all.
fn options_set(options: &impl serde::Serialize) -> String {
    let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(options) else {
        return String::new();
    };
    let set: Vec<String> = fields
        .into_iter()
        .filter_map(|(name, value)| match value {
            serde_json::Value::Null | serde_json::Value::Bool(false) => None,
            serde_json::Value::Bool(true) => Some(name),
            serde_json::Value::String(s) => Some(format!("{name}={s:?}")),
            other => Some(format!("{name}={other}")),
        })
        .collect();
    if set.is_empty() {
        "istio-iptables' defaults".to_string()
    } else {
        set.join(" ")
    }
}

/// The counters that are not zero; `--json` has them all.
fn nonzero<'a>(counters: impl Iterator<Item = (&'a str, u64)>) -> String {
    let shown: Vec<String> = counters
        .filter(|(_, v)| *v != 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if shown.is_empty() {
        "none yet".to_string()
    } else {
        shown.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_only_the_options_given_and_the_counters_that_moved() {
        let options = serde_json::json!({
            "envoy_port": null, "service_cidr": "*", "redirect_dns": true,
            "dual_stack": false, "proxy_uid": "1337"
        });
        assert_eq!(
            options_set(&options),
            "proxy_uid=\"1337\" redirect_dns service_cidr=\"*\""
        );
        assert_eq!(
            options_set(&serde_json::json!({"envoy_port": null})),
            "istio-iptables' defaults"
        );
        assert_eq!(
            nonzero([("redirected", 3), ("direct_local_destination", 0)].into_iter()),
            "redirected=3"
        );
        assert_eq!(nonzero([("redirected", 0)].into_iter()), "none yet");
    }
}
