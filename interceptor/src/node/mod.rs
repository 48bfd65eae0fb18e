//! Node mode: the node daemon attaches the cgroup programs once, at the pods' parent cgroup (the
//! kubepods cgroup), and registers pods one by one in the node's datapath, the same one per-pod
//! `init` uses: each pod adds its configuration (keyed by its network-namespace cookie), its
//! sets, a counter slot, a record, and an `sk_lookup` link on its namespace. No program is
//! loaded per pod.
//!
//! Everything lives pinned, so the daemon can die at any moment: interception goes on, and the
//! next daemon takes over what is pinned (`Node::start`): its programs are swapped in place when
//! the map layout is the same; otherwise (an upgrade that changed it, or a version 0.1 daemon's
//! instance) every pod is registered anew in this build's datapath before the old one goes.
//!
//! - [`api`]: the local API's wire format and its client (`interceptor pod`, the CNI plugin);
//! - [`daemon`]: the agent serving it; [`metrics`]: its HTTP endpoints.

pub mod api;
pub mod daemon;
pub mod metrics;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};
use interceptor_ebpf::{Counter, program_names};

use crate::{
    config::DnsCapture,
    datapath::{
        self, Datapath, Enrolment, InstanceMode, LoadOptions, MapPlan,
        bpffs::{self, PodDir},
        gc, legacy,
        links::{self, Target},
        now_unix, object,
        pods::{HANDOVER_GRACE, liveness},
        programs,
        status::ProgramStats,
    },
    error::TargetError,
    pod::{self, Cgroup, NameServers, Netns, PodFacts},
    sys::fs::DirLock,
};
pub use api::{AddPod, Added, PodInfo, PodRecord, PodSelector};

/// How the daemon runs its datapath.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub load: LoadOptions,
}

/// What `start` found and did, one line per pod.
#[derive(Clone, Debug, Default)]
pub struct Reconciled {
    /// No daemon had run here before (no node links at this cgroup).
    pub created: bool,
    pub adopted: Vec<String>,
    /// Pods taken over from another build's datapath or a version 0.1 instance.
    pub migrated: Vec<String>,
    pub dropped: Vec<String>,
}

/// Metrics inputs, read under the daemon's lock.
#[derive(Debug)]
pub struct Snapshot {
    pub pods: Vec<PodInfo>,
    pub programs: Vec<ProgramStats>,
    /// (map, entries, capacity)
    pub maps: Vec<(&'static str, usize, u32)>,
}

/// The node's datapath as the daemon holds it.
pub struct Node {
    base: PathBuf,
    cgroup: Cgroup,
    dp: Datapath,
    /// `node-<cgroup id>` in the datapath: the cgroup links.
    links: PathBuf,
}

/// A pod's record as the API shows it.
fn api_record(r: &datapath::PodRecord) -> PodRecord {
    PodRecord {
        name: r.name.clone(),
        namespace: r.namespace.clone(),
        container_id: r.container_id.clone(),
        netns: r.netns.clone(),
        netns_inode: r.netns_inode,
        netns_cookie: r.netns_cookie,
        pod_index: r.pod_index,
        registered_unix: r.registered_unix,
        options: r.options.clone(),
    }
}

fn counters(values: Vec<(Counter, u64)>) -> BTreeMap<String, u64> {
    values
        .into_iter()
        .map(|(c, v)| (c.name().to_string(), v))
        .collect()
}

impl Node {
    /// Opens this build's datapath, attaches (or swaps in place) the cgroup programs at
    /// `cgroup`, and takes over every pod pinned for it: re-adopted when still alive, moved
    /// over from another build's datapath or a version 0.1 instance, dropped when its network
    /// namespace is gone.
    pub fn start(cgroup: &Cgroup, opts: NodeOptions) -> anyhow::Result<(Node, Reconciled)> {
        let base = bpffs::ensure_ready(&opts.load.bpffs_root)?;
        let _lock = Datapath::lock(&base)?;
        gc::sweep(&base)?;
        refuse_per_pod(&base, cgroup)?;
        let dp = Datapath::open(&base, opts.load.sizes, opts.load.kernel_log_level)?;
        let links_dir = bpffs::node_dir(&dp.dir, cgroup.id);
        let mut node = Node {
            base: base.clone(),
            cgroup: Cgroup::open(&cgroup.path)?,
            links: links_dir,
            dp,
        };
        let mut done = Reconciled {
            created: !node.links.exists(),
            ..Reconciled::default()
        };
        let installed = node.install_links();
        if let Err(e) = installed {
            if Datapath::is_unused(&node.dp.dir) {
                let _ = std::fs::remove_dir_all(&node.dp.dir);
            }
            return Err(e);
        }
        node.adopt(&mut done)?;
        node.take_over_other_builds(&mut done)?;
        Ok((node, done))
    }

    /// The cgroup programs at the node's cgroup: attached, or swapped in place.
    fn install_links(&self) -> anyhow::Result<()> {
        let programs = self
            .dp
            .programs
            .as_ref()
            .ok_or_else(|| anyhow!("the datapath was opened without programs"))?;
        links::install(
            &self.links,
            &object::cgroup_programs(),
            |name| programs.fd(name),
            |_| Target::Cgroup(&self.cgroup),
        )
    }

    /// Whether the daemon registered this pod (not `init`, not another daemon).
    fn owns(&self, record: &datapath::PodRecord) -> bool {
        record.mode == InstanceMode::Node && record.cgroup_id == self.cgroup.id
    }

    /// The datapath directory on bpffs.
    pub fn dir(&self) -> &Path {
        &self.dp.dir
    }

    fn lock(&self) -> anyhow::Result<DirLock> {
        Datapath::lock(&self.base)
    }

    /// Pods this datapath holds for the daemon: their `sk_lookup` runs this build's program
    /// from now on, or they are dropped when their namespace is gone.
    fn adopt(&mut self, done: &mut Reconciled) -> anyhow::Result<()> {
        for pod in bpffs::pod_dirs(&self.dp.dir) {
            let PodDir::Node { cookie } = pod else {
                continue;
            };
            let Some(record) = self.dp.pod_record(cookie) else {
                continue; // a registration cut short: the sweep takes it
            };
            if record.cgroup_id != self.cgroup.id {
                continue; // another daemon's pod
            }
            let who = record.describe();
            let dir = pod.path(&self.dp.dir);
            match liveness(&dir, pod) {
                Ok(()) => {
                    self.refresh_sk_lookup(cookie, &dir)?;
                    tracing::info!("re-adopted pod {who}: programs replaced in place");
                    done.adopted.push(who);
                }
                Err(reason) => {
                    self.dp.unregister(cookie, None)?;
                    tracing::info!("dropped pod {who}: {reason}");
                    done.dropped.push(format!("{who}: {reason}"));
                }
            }
        }
        Ok(())
    }

    /// Puts this build's `sk_lookup` (shared, or a copy of the pod's own) behind a pod's link.
    fn refresh_sk_lookup(&self, cookie: u64, dir: &Path) -> anyhow::Result<()> {
        let pin = links::link_pin(dir, program_names::SK_LOOKUP);
        let own = self.dp.pod_record(cookie).is_some_and(|r| r.own_sk_lookup);
        if own {
            let fd =
                programs::own_sk_lookup(&self.dp.dir, self.dp.sizes, self.dp.log_level, cookie)?;
            links::replace(
                &pin,
                program_names::SK_LOOKUP,
                std::os::fd::AsFd::as_fd(&fd),
            )
        } else {
            let programs = self
                .dp
                .programs
                .as_ref()
                .ok_or_else(|| anyhow!("the datapath was opened without programs"))?;
            links::replace(
                &pin,
                program_names::SK_LOOKUP,
                programs.fd(program_names::SK_LOOKUP)?,
            )
        }
    }

    /// Pods a daemon of another build left for this cgroup (another datapath, or a version 0.1
    /// instance) are registered here; then the old links go, the programs that redirect first
    /// and, after a grace, those that serve connections redirected until then. The pods'
    /// counters go on from the old ones.
    fn take_over_other_builds(&mut self, done: &mut Reconciled) -> anyhow::Result<()> {
        // (old datapath or None for version 0.1, old cookie, old slot) -> new slot
        let mut moved: Vec<(Option<PathBuf>, u64, u32, u32)> = Vec::new();
        let mut old_node_dirs = Vec::new();
        for dir in bpffs::datapath_dirs(&self.base) {
            let node_dir = bpffs::node_dir(&dir, self.cgroup.id);
            if dir == self.dp.dir || !node_dir.exists() {
                continue;
            }
            let other = Datapath::existing(&dir)?;
            for pod in bpffs::pod_dirs(&dir) {
                if let PodDir::Node { cookie } = pod
                    && let Some(record) = other.pod_record(cookie)
                    && record.cgroup_id == self.cgroup.id
                {
                    let old_slot = record.pod_index;
                    if let Some(slot) = self.take_pod(record, done) {
                        moved.push((Some(dir.clone()), cookie, old_slot, slot));
                    }
                }
            }
            old_node_dirs.push((dir, node_dir));
        }
        let legacy_dir = legacy::find(&self.base, self.cgroup.id)
            .filter(|d| legacy::record(d).is_some_and(|r| r.mode == InstanceMode::Node));
        if let Some(dir) = &legacy_dir {
            for pod in legacy::node_pods(dir)? {
                let mut record = pod.record;
                if record.dns_servers.is_empty()
                    && let Some(config) = pod.config
                {
                    record.dns_servers = legacy::dns_servers(&config);
                }
                let (cookie, old_slot) = (record.netns_cookie, record.pod_index);
                let old_slot = pod.config.map_or(old_slot, |c| c.pod_index);
                if let Some(slot) = self.take_pod(record, done) {
                    moved.push((None, cookie, old_slot, slot));
                }
            }
        }
        // The old links go: the node's (redirecting programs first, then after a grace the
        // ones serving what they redirected), then each pod's; then the counts they made.
        for (dir, node_dir) in old_node_dirs {
            links::detach_all(&node_dir, Some(HANDOVER_GRACE))?;
            let mut other = Datapath::existing(&dir)?;
            for (_, cookie, _, slot) in moved.iter().filter(|m| m.0.as_ref() == Some(&dir)) {
                let removed = other.unregister(*cookie, None)?;
                self.dp.maps.add_counters(*slot, &removed.counters)?;
            }
            other.unregister_node_pods(self.cgroup.id)?;
            if Datapath::is_unused(&dir) {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
            }
        }
        if let Some(dir) = legacy_dir {
            let from_legacy: Vec<_> = moved.iter().filter(|m| m.0.is_none()).collect();
            let old_slots: Vec<u32> = from_legacy.iter().map(|m| m.2).collect();
            for (counters, (_, _, _, slot)) in legacy::remove(&dir, &old_slots)?
                .into_iter()
                .zip(from_legacy)
            {
                self.dp.maps.add_counters(*slot, &counters)?;
            }
        }
        Ok(())
    }

    /// Registers here a pod another build registered; its new slot, or `None` when it could
    /// not be (it is dropped: its namespace is gone, say).
    fn take_pod(&mut self, record: datapath::PodRecord, done: &mut Reconciled) -> Option<u32> {
        let who = record.describe();
        match self.register_record(record) {
            Ok(slot) => {
                tracing::info!(
                    "took pod {who} over from another datapath (other --max-pods or \
                     --max-connections, another build's map layout, or version 0.1)"
                );
                done.migrated.push(who);
                Some(slot)
            }
            Err(e) => {
                tracing::warn!("dropped pod {who}: {e:#}");
                done.dropped.push(format!("{who}: {e:#}"));
                None
            }
        }
    }

    /// Registers a pod another build registered, from its record; its slot.
    fn register_record(&mut self, old: datapath::PodRecord) -> anyhow::Result<u32> {
        let netns = Netns::open(Path::new(&old.netns))?;
        anyhow::ensure!(
            old.netns_inode == 0 || netns.inode == old.netns_inode,
            "its network namespace {} is another one now",
            old.netns
        );
        let request = AddPod {
            netns: PathBuf::from(&old.netns),
            name: old.name.clone(),
            namespace: old.namespace.clone(),
            container_id: old.container_id.clone(),
            options: old.options.clone().unwrap_or_default(),
            resolv_conf: None,
            dns_servers: old.dns_servers.clone(),
        };
        Ok(self.register(&request, &netns)?.pod.record.pod_index)
    }

    /// Registers a pod, or replaces its configuration when its namespace is registered already
    /// (atomically, as `init` does: new sets beside the old, one map write publishes).
    pub fn add(&mut self, req: &AddPod) -> anyhow::Result<Added> {
        let netns = Netns::open(&req.netns)?;
        let _lock = self.lock()?;
        self.register(req, &netns)
    }

    fn register(&mut self, req: &AddPod, netns: &Netns) -> anyhow::Result<Added> {
        let cfg = req.options.resolve_here()?;
        cfg.check_ebpf_support()?;
        let name_servers = match &req.resolv_conf {
            _ if !req.dns_servers.is_empty() => NameServers::Given(req.dns_servers.clone()),
            Some(path) if cfg.needs_name_servers() => NameServers::ResolvConf(path.clone()),
            _ => NameServers::NotNeeded,
        };
        let facts = PodFacts::read(netns, &name_servers)?;
        let (dns, dns_warning) = DnsCapture::resolve(&cfg, &facts.name_servers);
        let warnings: Vec<String> = dns_warning.into_iter().collect();
        // Validate everything that depends on the namespace before touching the maps.
        MapPlan::build(&cfg, &facts, &dns, 1, 0)?;
        if facts.ipv6_enabled(cfg.dual_stack).unwrap_or(false) {
            // As istio-iptables: Envoy's IPv6 inbound passthrough binds ::6.
            pod::add_inbound_passthrough_v6(netns)?;
        }
        let record = datapath::PodRecord {
            mode: InstanceMode::Node,
            version: env!("CARGO_PKG_VERSION").to_string(),
            // The daemon's cgroup: several daemons (one per parent cgroup) may share a datapath.
            cgroup: self.cgroup.path.display().to_string(),
            cgroup_id: self.cgroup.id,
            name: req.name.clone(),
            namespace: req.namespace.clone(),
            container_id: req.container_id.clone(),
            registered_unix: now_unix(),
            options: Some(req.options.clone()),
            config: serde_json::to_value(&cfg).ok(),
            dns_servers: facts.name_servers.clone(),
            ..datapath::PodRecord::default()
        };
        let registered = self
            .dp
            .register(netns, &facts, Enrolment::Node, record, |r, s| {
                MapPlan::build(&cfg, &facts, &dns, r, s)
            })?;
        tracing::info!(
            pod = %format!("{}/{}", req.namespace, req.name),
            netns = %netns.path.display(),
            netns_cookie = registered.record.netns_cookie,
            pod_index = registered.slot,
            rules = registered.rules,
            "pod {}",
            if registered.updated { "configuration replaced" } else { "registered" }
        );
        Ok(Added {
            pod: PodInfo {
                record: api_record(&registered.record),
                rules: registered.rules,
                counters: counters(self.dp.maps.pod_counters(registered.slot)?),
            },
            updated: registered.updated,
            warnings,
        })
    }

    /// Removes the pods `sel` names; their connections go direct from then on. Removing a
    /// pod that is not registered is not an error (CNI DEL is idempotent).
    pub fn remove(&mut self, sel: &PodSelector) -> anyhow::Result<Vec<PodInfo>> {
        anyhow::ensure!(
            !sel.is_empty(),
            "name the pod to remove: by container id, network namespace or namespace/name"
        );
        // A namespace that still exists is matched by its cookie; a gone one by its path.
        let cookie = sel
            .netns
            .as_ref()
            .and_then(|p| Netns::open(p).ok())
            .and_then(|n| n.cookie().ok());
        let _lock = self.lock()?;
        let mut removed = Vec::new();
        for (record, config, values) in self.dp.registered()? {
            if !self.owns(&record) {
                continue;
            }
            let c = record.netns_cookie;
            let matches =
                sel.container_id
                    .as_ref()
                    .is_none_or(|id| *id == record.container_id)
                    && sel.netns.as_ref().is_none_or(|p| {
                        cookie == Some(c) || Path::new(&record.netns) == p.as_path()
                    })
                    && sel
                        .pod
                        .as_ref()
                        .is_none_or(|(ns, name)| *ns == record.namespace && *name == record.name);
            if !matches {
                continue;
            }
            self.dp.unregister(c, None)?;
            tracing::info!("removed pod {}", record.describe());
            removed.push(PodInfo {
                record: api_record(&record),
                rules: config.rules,
                counters: counters(values),
            });
        }
        Ok(removed)
    }

    /// Every pod registered with the daemon, with its counters.
    pub fn list(&self) -> anyhow::Result<Vec<PodInfo>> {
        let mut out: Vec<PodInfo> = self
            .dp
            .registered()?
            .into_iter()
            .filter(|(r, _, _)| self.owns(r))
            .map(|(record, config, values)| PodInfo {
                record: api_record(&record),
                rules: config.rules,
                counters: counters(values),
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.record.namespace, &a.record.name).cmp(&(&b.record.namespace, &b.record.name))
        });
        Ok(out)
    }

    /// Reclaims what pods gone without a `remove` held (a runtime that crashed before its CNI
    /// DEL, or deleted the namespace first). Returns what it removed.
    pub fn collect_gone(&mut self) -> anyhow::Result<Vec<String>> {
        let _lock = self.lock()?;
        let swept = gc::sweep(&self.base)?;
        Ok(swept.removed)
    }

    /// Whether every cgroup program is attached (its link pinned): `/readyz`.
    pub fn attached(&self) -> bool {
        object::cgroup_programs()
            .iter()
            .all(|p| links::link_pin(&self.links, p).exists())
    }

    /// What `/metrics` shows.
    pub fn snapshot(&self) -> anyhow::Result<Snapshot> {
        Ok(Snapshot {
            pods: self.list()?,
            programs: self
                .dp
                .program_stats()
                .into_iter()
                .flat_map(|b| b.programs)
                .collect(),
            maps: self.dp.maps.occupancy()?,
        })
    }
}

/// The daemon does not take a cgroup that `init` intercepts as one pod.
fn refuse_per_pod(base: &Path, cgroup: &Cgroup) -> anyhow::Result<()> {
    let per_pod = bpffs::datapath_dirs(base).iter().any(|d| {
        bpffs::pod_dirs(d)
            .iter()
            .any(|p| matches!(p, PodDir::Init { cgroup_id, .. } if *cgroup_id == cgroup.id))
    }) || legacy::find(base, cgroup.id)
        .is_some_and(|d| legacy::record(&d).is_some_and(|r| r.mode == InstanceMode::Pod));
    if per_pod {
        return Err(TargetError::ManagedByInit {
            path: cgroup.path.display().to_string(),
        }
        .into());
    }
    Ok(())
}
