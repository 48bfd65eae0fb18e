//! Reclaiming what vanished pods held. Kubernetes deletes a pod by removing its cgroup and its
//! network namespace; nobody runs `clean`. The kernel detaches the pod's links then (a cgroup
//! link's cgroup and a netns link's namespace read as 0), and this sweep, which `init`, `clean`
//! and the node daemon (every 30 s) run with the datapaths locked, removes the rest: the pod's
//! entries, record, slot and link pins, a datapath nobody uses any more (maps and programs), a
//! build's programs no link runs, connections handed over to a proxy that never took them,
//! and the leftovers of a registration or a load that was killed half-way.

use std::{collections::BTreeSet, fs, path::Path};

use anyhow::Context as _;
use interceptor_ebpf::program_names;

use super::{
    Datapath,
    bpffs::{self, PodDir},
    legacy,
    links::{self, link_pin},
    object,
    pods::liveness,
};
use crate::sys::bpf;

/// A connection handed from the application to its proxy is taken within microseconds; one a
/// proxy has not taken after this long never will be (the handshake's retries are over).
const IN_FLIGHT_MAX_AGE_NS: u64 = 180 * 1_000_000_000;

/// What one sweep removed, one line each.
#[derive(Debug, Default)]
pub struct Swept {
    pub removed: Vec<String>,
    /// Stale connection hand-overs removed.
    pub in_flight: usize,
}

/// Sweeps every datapath and version 0.1 instance under `base` (`<bpffs>/interceptor`,
/// locked by the caller).
pub fn sweep(base: &Path) -> anyhow::Result<Swept> {
    let mut swept = Swept::default();
    for dir in bpffs::datapath_dirs(base) {
        match Datapath::existing(&dir) {
            // What cannot be reclaimed now is left for a later sweep: never a reason to fail
            // the `init`, `clean` or daemon start that sweeps first.
            Ok(mut dp) => {
                if let Err(e) = dp.sweep(&mut swept) {
                    tracing::warn!(
                        datapath = %dir.display(),
                        error = %format!("{e:#}"),
                        "cannot reclaim what a datapath holds"
                    );
                }
                // A tracer killed without detaching left the programs' events on.
                match super::trace::clear_if_unattended(&dir) {
                    Ok(true) => swept
                        .removed
                        .push(format!("{}: trace events of no tracer", dir.display())),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(
                        datapath = %dir.display(),
                        error = %format!("{e:#}"),
                        "cannot turn off the trace events of no tracer"
                    ),
                }
            }
            Err(e) if Datapath::is_unused(&dir) => {
                // Created by a loader killed before it was complete: nothing uses it.
                tracing::debug!(error = %format!("{e:#}"), dir = %dir.display(), "incomplete");
                remove_datapath(&dir, &mut swept)?;
            }
            Err(e) => tracing::warn!(
                datapath = %dir.display(),
                error = %format!("{e:#}"),
                "cannot read a datapath to reclaim what it holds"
            ),
        }
    }
    for (_, dir) in bpffs::legacy_instance_dirs(base) {
        if let Some(reason) = legacy::gone(&dir) {
            links::detach_all(&dir, None)?;
            swept
                .removed
                .push(format!("version 0.1 instance {}: {reason}", dir.display()));
        }
    }
    for line in &swept.removed {
        tracing::info!("reclaimed {line}");
    }
    Ok(swept)
}

fn remove_datapath(dir: &Path, swept: &mut Swept) -> anyhow::Result<()> {
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    swept
        .removed
        .push(format!("datapath {}: no pod uses it", dir.display()));
    Ok(())
}

impl Datapath {
    /// Sweeps this datapath (see the module's documentation).
    pub fn sweep(&mut self, swept: &mut Swept) -> anyhow::Result<()> {
        self.sweep_nodes(swept)?;
        let configs: BTreeSet<u64> = self
            .maps
            .pod_configs()?
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        let nodes: BTreeSet<u64> = bpffs::node_dirs(&self.dir)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let mut with_dir = BTreeSet::new();
        for pod in bpffs::pod_dirs(&self.dir) {
            let cookie = pod.cookie();
            with_dir.insert(cookie);
            let reason = if !configs.contains(&cookie) {
                Some("its registration was cut short (no configuration)".to_string())
            } else if matches!(pod, PodDir::Node { .. })
                && !self
                    .pod_record(cookie)
                    .is_some_and(|r| nodes.contains(&r.cgroup_id))
            {
                Some("no node daemon's links cover it any more".to_string())
            } else {
                liveness(&pod.path(&self.dir), pod).err()
            };
            if let Some(reason) = reason {
                let who = self
                    .pod_record(cookie)
                    .map(|r| r.describe())
                    .unwrap_or_else(|| format!("netns cookie {cookie}"));
                self.unregister(cookie, None)?;
                swept.removed.push(format!("pod {who}: {reason}"));
            }
        }
        // Configurations without links: a registration killed half-way.
        for cookie in configs.difference(&with_dir) {
            self.unregister(*cookie, None)?;
            swept.removed.push(format!(
                "netns cookie {cookie}: its registration was cut short (no links)"
            ));
        }
        self.sweep_entries()?;
        swept.in_flight += self.maps.sweep_in_flight(IN_FLIGHT_MAX_AGE_NS);
        self.sweep_programs(swept)?;
        if Datapath::is_unused(&self.dir) {
            remove_datapath(&self.dir, swept)?;
        }
        Ok(())
    }

    /// Node directories whose cgroup is gone.
    fn sweep_nodes(&mut self, swept: &mut Swept) -> anyhow::Result<()> {
        for (cgroup_id, dir) in bpffs::node_dirs(&self.dir) {
            let first = object::cgroup_programs()[0];
            let gone = match links::info(&link_pin(&dir, first)) {
                Ok(i) => i.cgroup_id == 0,
                Err(_) => true,
            };
            if gone {
                links::detach_all(&dir, None)?;
                swept.removed.push(format!(
                    "node links of cgroup {cgroup_id}: the cgroup is gone"
                ));
            }
        }
        Ok(())
    }

    /// Slots, records and addresses no registered pod owns.
    fn sweep_entries(&mut self) -> anyhow::Result<()> {
        let configs = self.maps.pod_configs()?;
        let owners: BTreeSet<u64> = configs.iter().map(|(c, _)| *c).collect();
        let slots: BTreeSet<u32> = configs.iter().map(|(_, c)| c.pod_index).collect();
        for slot in self.maps.used_slots()? {
            if !slots.contains(&slot) {
                self.maps.clear_rules(&[2 * slot + 1, 2 * slot + 2]);
                self.maps.free_slot(slot)?;
            }
        }
        for cookie in self.maps.pod_record_cookies() {
            if !owners.contains(&cookie) {
                self.maps.remove_pod_record(cookie);
            }
        }
        self.maps.retain_addresses(|owner| owners.contains(&owner));
        Ok(())
    }

    /// Programs of other builds that no link of this datapath runs any more.
    fn sweep_programs(&mut self, swept: &mut Swept) -> anyhow::Result<()> {
        let dirs = bpffs::programs_dirs(&self.dir);
        // One set of programs is the one the pods' links run (a datapath nobody uses is
        // removed whole): nothing to look up, which keeps a sweep from opening every link of
        // every pod, the cost that grew `init` with the node's pods.
        if dirs.len() <= 1 {
            return Ok(());
        }
        let current = self.programs.as_ref().map(|p| p.dir.clone());
        let others: Vec<_> = dirs
            .iter()
            .filter(|d| Some(*d) != current.as_ref())
            .collect();
        if others.is_empty() {
            return Ok(());
        }
        let running = self.running_programs();
        for dir in others {
            let ids: Vec<u32> = program_names::ALL
                .iter()
                .filter_map(|p| bpf::obj_get(&dir.join(p)).ok())
                .filter_map(|fd| bpf::prog_id(&fd).ok())
                .collect();
            if !ids.iter().any(|id| running.contains(id)) {
                fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
                swept
                    .removed
                    .push(format!("programs {}: no link runs them", dir.display()));
            }
        }
        Ok(())
    }

    /// The ids of the programs behind every link pinned in this datapath.
    fn running_programs(&self) -> BTreeSet<u32> {
        let mut dirs: Vec<_> = bpffs::pod_dirs(&self.dir)
            .into_iter()
            .map(|p| p.path(&self.dir))
            .collect();
        dirs.extend(bpffs::node_dirs(&self.dir).into_iter().map(|(_, d)| d));
        let mut ids = BTreeSet::new();
        for dir in dirs {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for pin in entries.filter_map(Result::ok).map(|e| e.path()) {
                if let Ok(info) = links::info(&pin) {
                    ids.insert(info.prog_id);
                }
            }
        }
        ids
    }
}
