//! Registering one pod in the node's datapath, and removing it. A pod is its configuration (by
//! network-namespace cookie), its sets (under one of its slot's two rule-set ids), its counter
//! slot, its record, the addresses inbound dispatch knows it by, and its links: the cgroup links
//! `init` attaches to the pod's cgroup (the node daemon's cover its pods instead) and an
//! `sk_lookup` link on its network namespace. Registering again replaces the configuration
//! atomically: the new sets are written beside the old ones and one map write publishes them.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::anyhow;
use interceptor_ebpf::{Counter, POD_RECORD_SIZE, flags, program_names};

use super::{
    Datapath, InstanceMode, PodRecord,
    bpffs::{self, PodDir},
    links::{self, Target},
    listeners::register_existing_listener,
    object,
    plan::MapPlan,
    programs,
};
use crate::{
    error::{LimitError, TargetError},
    pod::{Cgroup, Netns, PodFacts},
};

/// How long the programs that serve redirected connections outlive the ones that redirect,
/// when a pod's interception moves to another datapath (an upgrade that changes the layout).
pub const HANDOVER_GRACE: Duration = Duration::from_millis(250);

/// Who enrolls a pod, and so which links it gets.
#[derive(Clone, Copy)]
pub enum Enrolment<'a> {
    /// `init`: every program, attached to the pod's own cgroup (and netns).
    Init(&'a Cgroup),
    /// The node daemon: only `sk_lookup` on the pod's netns; the node's cgroup links cover it.
    Node,
}

/// What `unregister` removed.
#[derive(Clone, Debug, Default)]
pub struct Removed {
    pub record: Option<PodRecord>,
    /// Its counters, once nothing of it counted any more.
    pub counters: Vec<(Counter, u64)>,
}

/// What `register` did.
#[derive(Clone, Debug)]
pub struct Registered {
    /// The pod's directory (its links).
    pub dir: PathBuf,
    pub slot: u32,
    pub rules: u32,
    /// It was registered already and its configuration was replaced.
    pub updated: bool,
    /// Another pod has one of its addresses: it got an `sk_lookup` of its own.
    pub own_sk_lookup: bool,
    /// What was recorded.
    pub record: PodRecord,
}

/// The two rule-set ids of a slot; a re-registration takes the one not in use.
fn rule_ids(slot: u32) -> [u32; 2] {
    [2 * slot + 1, 2 * slot + 2]
}

/// Every address inbound dispatch knows a pod by.
fn addresses(facts: &PodFacts) -> Vec<IpAddr> {
    (facts.addrs4.iter().map(|a| IpAddr::V4(*a)))
        .chain(facts.addrs6.iter().map(|a| IpAddr::V6(*a)))
        .collect()
}

impl Datapath {
    /// The directory of the registered pod `cookie`, if any.
    pub fn pod_dir(&self, cookie: u64) -> Option<PodDir> {
        bpffs::pod_dirs(&self.dir)
            .into_iter()
            .find(|p| p.cookie() == cookie)
    }

    /// The record of the registered pod `cookie`.
    pub fn pod_record(&self, cookie: u64) -> Option<PodRecord> {
        serde_json::from_slice(&self.maps.pod_record(cookie)?).ok()
    }

    /// Registers the pod in `netns` (or replaces its configuration), with the plan `plan`
    /// builds for a rule-set id and a slot. `record` says who the pod is; the slot, addresses
    /// and the rest are filled in here. Whether the pod fits (a slot, room in the node's sets
    /// for its entries beside everyone else's, its current ones included until the new ones
    /// are live) is checked before anything is written. All or nothing: a failure leaves the
    /// pod, and the maps, as they were.
    pub fn register(
        &mut self,
        netns: &Netns,
        facts: &PodFacts,
        enrolment: Enrolment,
        mut record: PodRecord,
        plan: impl Fn(u32, u32) -> anyhow::Result<MapPlan>,
    ) -> anyhow::Result<Registered> {
        let cookie = facts.cookie()?;
        let previous = self.maps.pod_config(cookie)?;
        let previous_record = previous.and_then(|_| self.pod_record(cookie));
        let dir = match enrolment {
            Enrolment::Init(cgroup) => PodDir::Init {
                cgroup_id: cgroup.id,
                cookie,
            },
            Enrolment::Node => PodDir::Node { cookie },
        };
        if let Some(prev) = &previous_record {
            refuse_other_owner(prev, &record, enrolment)?;
        }
        let slot = match previous {
            Some(p) => p.pod_index,
            None => self.maps.first_free_slot()?.ok_or(LimitError::Pods {
                max: self.sizes.max_pods,
            })?,
        };
        let [a, b] = rule_ids(slot);
        let rules = if previous.is_some_and(|p| p.rules == a) {
            b
        } else {
            a
        };
        let plan = plan(rules, slot)?;
        let entries = plan.set_entries().map(|e| e.count);
        self.check_room(&plan, previous_record.as_ref())?;
        if previous.is_none() {
            self.maps.take_slot(slot)?;
        }
        // Until the new sets are live, the pod's old ones are there too: counted both.
        let old = previous_record.as_ref().map_or([0; 3], |r| r.set_entries);
        record.set_entries = std::array::from_fn(|i| old[i] + entries[i]);
        let result = self.write_pod(netns, facts, enrolment, dir, &mut record, &plan);
        match result {
            Ok(own_sk_lookup) => {
                if let Some(p) = previous {
                    self.maps.clear_rules(&[p.rules]);
                }
                if let Some(prev) = &previous_record {
                    for addr in prev
                        .addresses
                        .iter()
                        .filter(|a| !record.addresses.contains(a))
                    {
                        self.maps.remove_address(*addr, cookie);
                    }
                }
                // The pod is live: a record that still counts its old sets too only makes the
                // next capacity check stricter until its next update, not a failure.
                record.set_entries = entries;
                let counted = record
                    .to_json(POD_RECORD_SIZE)
                    .and_then(|json| self.maps.write_pod_record(cookie, &json));
                if let Err(e) = counted {
                    tracing::warn!(error = %format!("{e:#}"), "updating the pod's record");
                }
                Ok(Registered {
                    dir: dir.path(&self.dir),
                    slot,
                    rules,
                    updated: previous.is_some(),
                    own_sk_lookup,
                    record,
                })
            }
            Err(e) => {
                self.maps.clear_rules(&[rules]);
                if previous.is_none() {
                    let _ = self.forget(cookie, Some(slot), None);
                } else if let Some(prev) = &previous_record {
                    for addr in record
                        .addresses
                        .iter()
                        .filter(|a| !prev.addresses.contains(a))
                    {
                        self.maps.remove_address(*addr, cookie);
                    }
                    let _ = self
                        .maps
                        .write_pod_record(cookie, &prev.to_json(POD_RECORD_SIZE)?);
                }
                Err(e)
            }
        }
    }

    /// Entries of the node's shared sets in use, by set (ports, IPv4, IPv6 ranges), as the
    /// pods' records count them.
    pub fn set_usage(&self) -> [u64; 3] {
        #[derive(serde::Deserialize)]
        struct Usage {
            #[serde(default)]
            set_entries: [u64; 3],
        }
        let mut total = [0u64; 3];
        for (_, json) in self.maps.pod_records() {
            if let Ok(u) = serde_json::from_slice::<Usage>(&json) {
                for (t, n) in total.iter_mut().zip(u.set_entries) {
                    *t += n;
                }
            }
        }
        total
    }

    /// Whether `plan`'s entries fit in the node's sets beside every pod's (`previous`: the
    /// pod's own record, whose entries stay until the new ones are live).
    fn check_room(&self, plan: &MapPlan, previous: Option<&PodRecord>) -> Result<(), LimitError> {
        let in_use = self.set_usage();
        for (e, used) in plan.set_entries().into_iter().zip(in_use) {
            if e.count > 0 && used + e.count > u64::from(e.node_max) {
                return Err(LimitError::NodeEntries {
                    what: e.what,
                    count: e.count,
                    in_use: used,
                    capacity: u64::from(e.node_max),
                    update: if previous.is_some() {
                        " (the pod's current ones among them: they stay until its new ones \
                         are live)"
                    } else {
                        ""
                    },
                });
            }
        }
        Ok(())
    }

    /// The writes of `register`, in an order that never lets a connection be redirected before
    /// what serves it is in place. True when the pod got its own `sk_lookup`.
    fn write_pod(
        &mut self,
        netns: &Netns,
        facts: &PodFacts,
        enrolment: Enrolment,
        dir: PodDir,
        record: &mut PodRecord,
        plan: &MapPlan,
    ) -> anyhow::Result<bool> {
        let cookie = facts.cookie()?;
        let (slot, rules) = (plan.pod.pod_index, plan.pod.rules);
        if self.maps.pod_config(cookie)?.is_some() {
            // The spare rule-set id of a registered pod may hold leftovers of an interrupted
            // earlier update. A fresh slot is clean: slots are freed (and swept) only after
            // their sets are cleared, and scanning the sets costs a millisecond.
            self.maps.clear_rules(&[rules]);
        }
        // Inbound dispatch: the shared sk_lookup finds the pod by the address a connection
        // arrives for, unless another live pod of the node has that address too.
        let addrs = addresses(facts);
        let taken = addrs.iter().find(|a| {
            self.maps
                .address_owner(**a)
                .is_some_and(|o| o != cookie && self.maps.pod_config(o).ok().flatten().is_some())
        });
        let own_sk_lookup = taken.is_some();
        if let Some(addr) = taken {
            tracing::warn!(
                %addr,
                "another pod of this node has the address {addr}: this pod gets an sk_lookup \
                 program of its own (one program load)"
            );
        }
        record.pod_index = slot;
        record.netns_cookie = cookie;
        record.netns = netns.path.display().to_string();
        record.netns_inode = netns.inode;
        record.addresses = if own_sk_lookup { Vec::new() } else { addrs };
        record.own_sk_lookup = own_sk_lookup;
        // The record first: what it counts is in the sets from the next write on.
        self.maps
            .write_pod_record(cookie, &record.to_json(POD_RECORD_SIZE)?)?;
        self.maps.write_sets(plan)?;
        for addr in &record.addresses {
            self.maps.set_address_owner(*addr, cookie)?;
        }

        let own = if own_sk_lookup {
            Some(programs::own_sk_lookup(
                &self.dir,
                self.sizes,
                self.log_level,
                cookie,
            )?)
        } else {
            None
        };
        let names: Vec<&str> = match enrolment {
            Enrolment::Init(_) => program_names::ALL.to_vec(),
            Enrolment::Node => vec![program_names::SK_LOOKUP],
        };
        let programs = self
            .programs
            .as_ref()
            .ok_or_else(|| anyhow!("{}: opened without programs", self.dir.display()))?;
        let program = |name: &str| match (&own, name) {
            (Some(fd), program_names::SK_LOOKUP) => Ok(std::os::fd::AsFd::as_fd(fd)),
            _ => programs.fd(name),
        };
        let target = |name: &str| match enrolment {
            Enrolment::Init(cgroup) if name != program_names::SK_LOOKUP => Target::Cgroup(cgroup),
            _ => Target::Netns(netns),
        };
        links::install(&dir.path(&self.dir), &names, program, target)?;
        self.maps.publish(plan)?;
        if plan.pod.has(flags::INBOUND_CAPTURE) {
            // Programs first: a listener opened from now on registers itself.
            register_existing_listener(&mut self.maps, netns, plan);
        }
        Ok(own_sk_lookup)
    }

    /// Removes the pod `cookie`: its configuration first (its connections go direct from that
    /// write on), then its links, sets, addresses, listeners, record and slot. With a `grace`,
    /// the programs that serve connections redirected until then stay that long after the ones
    /// that redirect (see `links::unpin_links`); the pod's configuration then stays until they
    /// are gone, so that they still serve, and count, what was redirected meanwhile.
    pub fn unregister(&mut self, cookie: u64, grace: Option<Duration>) -> anyhow::Result<Removed> {
        let record = self.pod_record(cookie);
        let slot = match self.maps.pod_config(cookie)? {
            Some(c) => Some(c.pod_index),
            None => record.as_ref().map(|r| r.pod_index),
        };
        if grace.is_none() {
            self.maps.remove_pod(cookie)?;
        }
        if let Some(pod) = self.pod_dir(cookie) {
            links::detach_all(&pod.path(&self.dir), grace)?;
        }
        let counters = match slot {
            Some(s) => self.maps.pod_counters(s).unwrap_or_default(),
            None => Vec::new(),
        };
        self.maps.remove_pod(cookie)?;
        self.forget(cookie, slot, None)?;
        Ok(Removed { record, counters })
    }

    /// Everything of `cookie` but its configuration: links, sets, addresses, listeners,
    /// record, slot.
    fn forget(
        &mut self,
        cookie: u64,
        slot: Option<u32>,
        grace: Option<Duration>,
    ) -> anyhow::Result<()> {
        if let Some(pod) = self.pod_dir(cookie) {
            links::detach_all(&pod.path(&self.dir), grace)?;
        }
        if let Some(slot) = slot {
            self.maps.clear_rules(&rule_ids(slot));
        }
        self.maps.retain_addresses(|owner| owner != cookie);
        self.maps.remove_listeners(cookie);
        self.maps.remove_pod_record(cookie);
        if let Some(slot) = slot {
            self.maps.free_slot(slot)?;
        }
        Ok(())
    }
}

impl Datapath {
    /// Removes every pod the daemon of the cgroup `node_cgroup_id` registered.
    pub fn unregister_node_pods(&mut self, node_cgroup_id: u64) -> anyhow::Result<()> {
        for pod in bpffs::pod_dirs(&self.dir) {
            if let PodDir::Node { cookie } = pod
                && self
                    .pod_record(cookie)
                    .is_none_or(|r| r.cgroup_id == node_cgroup_id)
            {
                self.unregister(cookie, None)?;
            }
        }
        Ok(())
    }
}

/// A pod is registered once: by `init` for its cgroup, or by the node daemon.
fn refuse_other_owner(
    previous: &PodRecord,
    new: &PodRecord,
    enrolment: Enrolment,
) -> anyhow::Result<()> {
    match (previous.mode, enrolment) {
        (InstanceMode::Node, Enrolment::Init(cgroup)) => Err(TargetError::ManagedByDaemon {
            path: cgroup.path.display().to_string(),
        }
        .into()),
        (InstanceMode::Pod, Enrolment::Node) => Err(TargetError::ManagedByInit {
            path: previous.cgroup.clone(),
        }
        .into()),
        (InstanceMode::Node, Enrolment::Node) if previous.cgroup_id != new.cgroup_id => {
            Err(anyhow!(
                "the pod's network namespace ({}) is registered already with the daemon of \
                 the cgroup {}",
                new.netns,
                previous.cgroup
            ))
        }
        (InstanceMode::Pod, Enrolment::Init(cgroup)) if previous.cgroup_id != cgroup.id => {
            Err(anyhow!(
                "the pod's network namespace ({}) is intercepted already for the cgroup {}: \
                 `interceptor clean --cgroup {}` first",
                new.netns,
                previous.cgroup,
                previous.cgroup
            ))
        }
        _ => Ok(()),
    }
}

/// Whether a registered pod is still there: its cgroup (per-pod mode) and its network
/// namespace exist, as the kernel's links to them say. Why not, otherwise. A pod whose links
/// are partly missing (pins removed by hand) is still there: its next `init` attaches them.
pub fn liveness(dir: &Path, pod: PodDir) -> Result<(), String> {
    let mut seen = false;
    match links::info(&links::link_pin(dir, program_names::SK_LOOKUP)) {
        Ok(i) if i.netns_ino == 0 => return Err("its network namespace is gone".into()),
        Ok(_) => seen = true,
        Err(_) => {}
    }
    if let PodDir::Init { .. } = pod {
        // One cgroup link tells for all of them.
        for name in object::cgroup_programs() {
            match links::info(&links::link_pin(dir, name)) {
                Ok(i) if i.cgroup_id == 0 => return Err("its cgroup is gone".into()),
                Ok(_) => return Ok(()),
                Err(_) => {}
            }
        }
    }
    if seen {
        Ok(())
    } else {
        Err("it has no links".into())
    }
}
