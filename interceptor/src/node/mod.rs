//! Node mode: one instance at a parent cgroup (the kubepods cgroup), with pods registered and
//! removed one by one. The cgroup programs are attached once; each pod adds its configuration
//! (keyed by its network-namespace cookie), its rule sets, a counter slot, a record, and its own
//! `sk_lookup` link (that program carries the pod's cookie as a load-time constant).
//!
//! Everything lives pinned under the instance directory, so the daemon can die at any moment:
//! interception goes on, and the next daemon re-adopts what is pinned (`Node::start`).
//!
//! - [`api`]: the local API's wire format and its client (`interceptor pod`, the CNI plugin);
//! - [`daemon`]: the agent serving it; [`metrics`]: its HTTP endpoints.

pub mod api;
pub mod daemon;
pub mod metrics;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow};
use interceptor_ebpf::{Counter, POD_RECORD_SIZE, program_names};

use crate::{
    config::DnsCapture,
    datapath::{
        InstanceMode, InstanceRecord, LoadOptions, MapPlan, bpffs,
        instance::{self, Existing},
        links::{self, Target},
        listeners::register_existing_listener,
        maps::Maps,
        object,
        status::{self, ProgramStats},
    },
    error::TargetError,
    pod::{self, Cgroup, NameServers, Netns, PodFacts},
    sys::{self, bpf, fs::DirLock},
};
pub use api::{AddPod, Added, PodInfo, PodRecord, PodSelector};

/// How the daemon runs its instance.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub load: LoadOptions,
    /// Pods the maps have room for (fixed when the instance is first created).
    pub max_pods: u32,
}

/// What `start` found and did, one line per pod.
#[derive(Clone, Debug, Default)]
pub struct Reconciled {
    pub created: bool,
    pub adopted: Vec<String>,
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

/// The node instance, held open by the daemon.
pub struct Node {
    root: PathBuf,
    dir: PathBuf,
    opts: NodeOptions,
    maps: Maps,
    /// Counter slots (pods) the pinned maps were made with.
    slots: u32,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The pin of a pod's `sk_lookup` link.
fn pod_link_pin(dir: &Path, cookie: u64) -> PathBuf {
    dir.join(format!("link_{}@{cookie}", program_names::SK_LOOKUP))
}

/// The cookies of every pod link pinned in `dir`.
fn pinned_pod_links(dir: &Path) -> anyhow::Result<Vec<u64>> {
    let prefix = format!("link_{}@", program_names::SK_LOOKUP);
    Ok(fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix(&prefix)?
                .parse::<u64>()
                .ok()
        })
        .collect())
}

impl Node {
    /// Creates the instance at `cgroup`, or re-adopts the one pinned there: the cgroup programs
    /// and every pod's `sk_lookup` are replaced in place by this binary's (an upgrade never
    /// leaves a moment without interception), and pods whose network namespace is gone, or
    /// whose registration a crash cut short, are dropped.
    pub fn start(cgroup: &Cgroup, opts: NodeOptions) -> anyhow::Result<(Node, Reconciled)> {
        let root = bpffs::ensure_ready(&opts.load.bpffs_root)?;
        let _lock =
            sys::fs::lock_dir(&root).with_context(|| format!("locking {}", root.display()))?;
        let dir = root.join(bpffs::instance_name(cgroup.id));
        let existing = match instance::inspect_existing(&dir)? {
            Existing::Nothing => {
                if dir.exists() {
                    // Pins of a start that failed before attaching: start over.
                    instance::remove_instance_dir(&dir)?;
                }
                fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
                false
            }
            Existing::Current => true,
            Existing::Outdated(reason) => anyhow::bail!(
                "the node instance {} was made by a build whose maps this one cannot use \
                 ({reason}); programs can only be replaced in place over compatible maps. \
                 Run the previous version, or remove it (`interceptor clean --cgroup {}`) and \
                 register the pods again",
                dir.display(),
                cgroup.path.display()
            ),
        };
        if existing && instance::instance_mode(&dir) != InstanceMode::Node {
            return Err(TargetError::ManagedByInit {
                path: cgroup.path.display().to_string(),
            }
            .into());
        }
        let started = (|| {
            let programs = object::cgroup_programs();
            let mut ebpf = object::load(&dir, &opts.load, opts.max_pods, 0, &programs)?;
            let mut maps = Maps::from_ebpf(&mut ebpf, &dir)?;
            maps.write_record(&InstanceRecord {
                mode: InstanceMode::Node,
                version: env!("CARGO_PKG_VERSION").to_string(),
                cgroup: cgroup.path.display().to_string(),
                cgroup_id: cgroup.id,
                netns: String::new(),
                netns_inode: 0,
                netns_cookie: 0,
                updated_unix: now_unix(),
                config: serde_json::json!({ "max_pods": opts.max_pods }),
                dns_capture: serde_json::Value::Null,
            })?;
            links::install(&ebpf, &dir, &programs, |_| Target::Cgroup(cgroup))?;
            let slots = maps.counter_slots()?;
            Ok::<_, anyhow::Error>(Node {
                root: root.clone(),
                dir: dir.clone(),
                opts: opts.clone(),
                maps,
                slots,
            })
        })();
        let mut node = match started {
            Ok(node) => node,
            Err(e) => {
                if !existing {
                    instance::discard_new_instance(&root, &dir);
                }
                return Err(e);
            }
        };
        let mut done = Reconciled {
            created: !existing,
            ..Reconciled::default()
        };
        if existing {
            node.reconcile(&mut done)?;
        }
        Ok((node, done))
    }

    /// The instance directory on bpffs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn records(&self) -> BTreeMap<u64, PodRecord> {
        self.maps
            .pod_records()
            .into_iter()
            .map(|(cookie, json)| (cookie, serde_json::from_slice(&json).unwrap_or_default()))
            .collect()
    }

    fn describe(record: Option<&PodRecord>, cookie: u64) -> String {
        match record {
            Some(r) if !r.name.is_empty() => {
                format!(
                    "{}/{} (netns cookie {cookie}, {})",
                    r.namespace, r.name, r.netns
                )
            }
            _ => format!("netns cookie {cookie}"),
        }
    }

    fn reconcile(&mut self, done: &mut Reconciled) -> anyhow::Result<()> {
        let records = self.records();
        let configs = self.maps.pod_configs()?;
        let links = pinned_pod_links(&self.dir)?;
        for (cookie, cfg) in &configs {
            let who = Self::describe(records.get(cookie), *cookie);
            let pin = pod_link_pin(&self.dir, *cookie);
            let verdict = if !pin.exists() {
                Err("its registration was cut short (no inbound link)".to_string())
            } else {
                match Self::netns_alive(&pin) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err("its network namespace is gone".to_string()),
                    Err(e) => Err(format!("its inbound link is unreadable: {e:#}")),
                }
            };
            match verdict {
                Ok(()) => {
                    let ebpf = self.load_sk_lookup(*cookie)?;
                    links::replace_program(&ebpf, program_names::SK_LOOKUP, &pin)?;
                    tracing::info!("re-adopted pod {who}: programs replaced in place");
                    done.adopted.push(who);
                }
                Err(reason) => {
                    self.drop_pod(*cookie, cfg.rules);
                    tracing::info!("dropped pod {who}: {reason}");
                    done.dropped.push(format!("{who}: {reason}"));
                }
            }
        }
        // Leftovers of a crash between steps: a link or record without a configuration.
        for cookie in links {
            if !configs.iter().any(|(c, _)| *c == cookie) {
                let _ = fs::remove_file(pod_link_pin(&self.dir, cookie));
                tracing::info!("removed the inbound link of unregistered netns cookie {cookie}");
            }
        }
        for cookie in records.keys() {
            if !configs.iter().any(|(c, _)| c == cookie) {
                self.maps.remove_pod_record(*cookie);
            }
        }
        Ok(())
    }

    /// Whether the namespace a pod's `sk_lookup` link is attached to still exists.
    fn netns_alive(pin: &Path) -> anyhow::Result<bool> {
        let link = bpf::obj_get(pin)?;
        Ok(bpf::link_info(&link)?.netns_ino != 0)
    }

    /// Drops pods whose network namespace went away without a `remove` (a runtime that
    /// crashed before its CNI DEL). Returns what it dropped.
    pub fn collect_gone(&mut self) -> anyhow::Result<Vec<String>> {
        let _lock = self.lock()?;
        let records = self.records();
        let mut dropped = Vec::new();
        for (cookie, cfg) in self.maps.pod_configs()? {
            let pin = pod_link_pin(&self.dir, cookie);
            if pin.exists() && !Self::netns_alive(&pin).unwrap_or(true) {
                let who = Self::describe(records.get(&cookie), cookie);
                self.drop_pod(cookie, cfg.rules);
                tracing::info!("dropped pod {who}: its network namespace is gone");
                dropped.push(who);
            }
        }
        Ok(dropped)
    }

    fn lock(&self) -> anyhow::Result<DirLock> {
        sys::fs::lock_dir(&self.root).with_context(|| format!("locking {}", self.root.display()))
    }

    /// Loads a copy of `sk_lookup` for one pod (the maps are the instance's).
    fn load_sk_lookup(&self, cookie: u64) -> anyhow::Result<aya::Ebpf> {
        object::load(
            &self.dir,
            &self.opts.load,
            self.opts.max_pods,
            cookie,
            &[program_names::SK_LOOKUP],
        )
    }

    /// Removes everything of one pod; configuration first, so its connections go direct
    /// from that moment on. Best effort: each step is independent.
    fn drop_pod(&mut self, cookie: u64, rules: u32) {
        let _ = self.maps.remove_pod(cookie);
        let _ = fs::remove_file(pod_link_pin(&self.dir, cookie));
        let _ = self.maps.clear_rules(rules);
        self.maps.remove_listeners(cookie);
        self.maps.remove_pod_record(cookie);
    }

    /// Registers a pod, or replaces its configuration when its namespace is registered already
    /// (atomically, as `init` does: new rule sets beside the old, one map write publishes).
    pub fn add(&mut self, req: &AddPod) -> anyhow::Result<Added> {
        let cfg = req.options.resolve_here()?;
        cfg.check_ebpf_support()?;
        let netns = Netns::open(&req.netns)?;
        let name_servers = match &req.resolv_conf {
            _ if !req.dns_servers.is_empty() => NameServers::Given(req.dns_servers.clone()),
            Some(path) if cfg.needs_name_servers() => NameServers::ResolvConf(path.clone()),
            _ => NameServers::NotNeeded,
        };
        let info = PodFacts::read(&netns, &name_servers)?;
        let (dns, dns_warning) = DnsCapture::resolve(&cfg, &info.name_servers);
        let warnings: Vec<String> = dns_warning.into_iter().collect();
        // Validate everything that depends on the namespace before touching the maps.
        let cookie = MapPlan::build(&cfg, &info, &dns, 1, 0)?.netns_cookie;

        let _lock = self.lock()?;
        let configs = self.maps.pod_configs()?;
        let previous = configs.iter().find(|(c, _)| *c == cookie).map(|(_, c)| *c);
        let pod_index = match previous {
            Some(p) => p.pod_index,
            None => (0..self.slots)
                .find(|i| !configs.iter().any(|(_, c)| c.pod_index == *i))
                .ok_or_else(|| {
                    anyhow!(
                        "the node has {} pods registered, as many as its maps hold \
                         (--max-pods when the instance was created)",
                        configs.len()
                    )
                })?,
        };
        let rules = (1..=u32::MAX)
            .find(|r| !configs.iter().any(|(_, c)| c.rules == *r))
            .expect("fewer pods than rule ids");
        let plan = MapPlan::build(&cfg, &info, &dns, rules, pod_index)?;
        if info.ipv6_enabled(cfg.dual_stack).unwrap_or(false) {
            // As istio-iptables: Envoy's IPv6 inbound passthrough binds ::6.
            pod::add_inbound_passthrough_v6(&netns)?;
        }
        let record = PodRecord {
            name: req.name.clone(),
            namespace: req.namespace.clone(),
            container_id: req.container_id.clone(),
            netns: netns.path.display().to_string(),
            netns_inode: netns.inode,
            netns_cookie: cookie,
            pod_index,
            registered_unix: now_unix(),
            options: Some(req.options.clone()),
        };
        let mut json = serde_json::to_vec(&record)?;
        if json.len() > POD_RECORD_SIZE {
            json = serde_json::to_vec(&PodRecord {
                options: None,
                ..record.clone()
            })?;
        }

        let pin = pod_link_pin(&self.dir, cookie);
        let result = (|| {
            self.maps.clear_rules(rules)?; // leftovers of an interrupted earlier run
            self.maps.write_sets(&plan)?;
            if previous.is_none() {
                self.maps.zero_counters(pod_index)?;
            }
            if !pin.exists() {
                // Inbound steering before the configuration: until it is published, the
                // program lets everything pass.
                let ebpf = self.load_sk_lookup(cookie)?;
                let link = links::attach(&ebpf, program_names::SK_LOOKUP, Target::Netns(&netns))?;
                bpf::obj_pin(&link, &pin).context("pinning the pod's inbound link")?;
            }
            self.maps.write_pod_record(cookie, &json)?;
            self.maps.publish(&plan)
        })();
        if let Err(e) = result {
            let _ = self.maps.clear_rules(rules);
            if previous.is_none() {
                let _ = fs::remove_file(&pin);
                self.maps.remove_pod_record(cookie);
            }
            return Err(e);
        }
        if let Some(old) = previous {
            self.maps.clear_rules(old.rules)?;
        }
        if plan.pod.has(interceptor_ebpf::flags::INBOUND_CAPTURE) {
            register_existing_listener(&mut self.maps, &netns, &plan);
        }
        tracing::info!(
            pod = %format!("{}/{}", req.namespace, req.name),
            netns = %netns.path.display(),
            netns_cookie = cookie,
            pod_index,
            rules,
            "pod {}",
            if previous.is_some() { "configuration replaced" } else { "registered" }
        );
        Ok(Added {
            pod: PodInfo {
                record,
                rules,
                counters: self.counters(pod_index)?,
            },
            updated: previous.is_some(),
            warnings,
        })
    }

    fn counters(&self, pod_index: u32) -> anyhow::Result<BTreeMap<String, u64>> {
        Ok(self
            .maps
            .pod_counters(pod_index)?
            .into_iter()
            .map(|(c, v): (Counter, u64)| (c.name().to_string(), v))
            .collect())
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
        let records = self.records();
        let mut removed = Vec::new();
        for (c, cfg) in self.maps.pod_configs()? {
            let record = records.get(&c).cloned().unwrap_or_default();
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
            let counters = self.counters(cfg.pod_index).unwrap_or_default();
            self.drop_pod(c, cfg.rules);
            tracing::info!("removed pod {}", Self::describe(Some(&record), c));
            removed.push(PodInfo {
                record,
                rules: cfg.rules,
                counters,
            });
        }
        Ok(removed)
    }

    /// Every registered pod with its counters.
    pub fn list(&self) -> anyhow::Result<Vec<PodInfo>> {
        let records = self.records();
        let mut out = Vec::new();
        for (cookie, cfg) in self.maps.pod_configs()? {
            let mut record = records.get(&cookie).cloned().unwrap_or_default();
            record.netns_cookie = cookie;
            record.pod_index = cfg.pod_index;
            out.push(PodInfo {
                record,
                rules: cfg.rules,
                counters: self.counters(cfg.pod_index)?,
            });
        }
        out.sort_by(|a, b| {
            (&a.record.namespace, &a.record.name).cmp(&(&b.record.namespace, &b.record.name))
        });
        Ok(out)
    }

    /// Whether every cgroup program is attached (its link pinned): `/readyz`.
    pub fn attached(&self) -> bool {
        object::cgroup_programs()
            .iter()
            .all(|p| links::link_pin(&self.dir, p).exists())
    }

    /// What `/metrics` shows.
    pub fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let mut maps = self.maps.occupancy()?;
        maps.extend(status::connection_map_occupancy(&self.dir)?);
        Ok(Snapshot {
            pods: self.list()?,
            programs: status::program_stats(&self.dir)?,
            maps,
        })
    }
}
