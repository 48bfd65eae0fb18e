//! What the datapath records about itself and about each pod beside the maps the programs use
//! (the programs never read it): who set a pod up and how, so that `status` can show it, `clean`
//! and the reclaiming of vanished pods can find everything of it, and a restarted or upgraded
//! daemon can take its pods over.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::config::RawOptions;

/// Who enrolled a pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceMode {
    /// `interceptor init`: the pod's own cgroup links.
    #[default]
    Pod,
    /// `interceptor daemon`: the node's cgroup links at the pods' parent cgroup.
    Node,
}

/// A datapath's own record (in `INSTANCE_META`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DatapathRecord {
    /// interceptor's version that created it.
    pub version: String,
    pub key: String,
    pub max_pods: u32,
    pub max_connections: u32,
    pub created_unix: u64,
    /// The names of a pod's counters, in their order in `COUNTERS`: any build reads any
    /// datapath's counters by name (a build that adds a counter makes a datapath of its own,
    /// and pods moving there keep the counts both builds know).
    #[serde(default)]
    pub counters: Vec<String>,
}

/// One pod's record (in `POD_RECORDS`, by netns cookie). Version 0.1's node records have the
/// same shape, without the fields added since (defaults).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PodRecord {
    pub mode: InstanceMode,
    /// interceptor's version that registered it.
    pub version: String,
    /// Node mode: the pod's name and Kubernetes namespace, and the runtime's sandbox id.
    pub name: String,
    pub namespace: String,
    pub container_id: String,
    /// Per-pod mode: the cgroup its links are attached to.
    pub cgroup: String,
    pub cgroup_id: u64,
    /// The namespace path it was registered with, and the namespace's identity.
    pub netns: String,
    pub netns_inode: u64,
    pub netns_cookie: u64,
    /// Its counter slot.
    pub pod_index: u32,
    pub registered_unix: u64,
    /// The options as given (`None` when they were too large to record).
    pub options: Option<RawOptions>,
    /// The effective configuration (`None` when too large to record).
    pub config: Option<serde_json::Value>,
    /// The name servers DNS capture uses.
    pub dns_servers: Vec<IpAddr>,
    /// The addresses inbound dispatch knows it by (none: it has its own `sk_lookup`).
    pub addresses: Vec<IpAddr>,
    /// Another pod of the node has one of its addresses: its `sk_lookup` is a copy of its own.
    pub own_sk_lookup: bool,
    /// Its entries in the node's shared sets: ports, IPv4 ranges, IPv6 ranges (what the
    /// capacity checks add up, without reading the sets).
    pub set_entries: [u64; 3],
}

impl PodRecord {
    /// `namespace/name`, or the cookie for a pod without a name.
    pub fn describe(&self) -> String {
        if self.name.is_empty() {
            format!("netns cookie {}", self.netns_cookie)
        } else {
            format!(
                "{}/{} (netns cookie {}, {})",
                self.namespace, self.name, self.netns_cookie, self.netns
            )
        }
    }

    /// The record as it fits in `max` bytes of JSON: whole, else without the configuration,
    /// else without the options too.
    pub fn to_json(&self, max: usize) -> anyhow::Result<Vec<u8>> {
        let mut record = self.clone();
        let mut json = serde_json::to_vec(&record)?;
        if json.len() > max {
            record.config = None;
            json = serde_json::to_vec(&record)?;
        }
        if json.len() > max {
            record.options = None;
            json = serde_json::to_vec(&record)?;
        }
        anyhow::ensure!(
            json.len() <= max,
            "the pod's record does not fit in {max} bytes"
        );
        Ok(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_0_1_node_record_reads_as_a_node_pod() {
        let old = r#"{"name":"web","namespace":"shop","container_id":"c1",
            "netns":"/run/netns/x","netns_inode":7,"netns_cookie":42,"pod_index":3,
            "registered_unix":1,"options":{"envoy_port":"15002"}}"#;
        let r: PodRecord = serde_json::from_str(old).unwrap();
        assert_eq!(r.netns_cookie, 42);
        assert_eq!(r.options.unwrap().envoy_port.as_deref(), Some("15002"));
        assert!(r.addresses.is_empty());
    }

    #[test]
    fn a_record_too_large_drops_the_configuration_first() {
        let mut r = PodRecord {
            config: Some(serde_json::json!({"cidrs": "x".repeat(5000)})),
            options: Some(RawOptions::default()),
            ..PodRecord::default()
        };
        let json = r.to_json(4092).unwrap();
        let back: PodRecord = serde_json::from_slice(&json).unwrap();
        assert!(back.config.is_none() && back.options.is_some());
        r.options = Some(RawOptions {
            service_cidr: Some("y".repeat(5000)),
            ..RawOptions::default()
        });
        let back: PodRecord = serde_json::from_slice(&r.to_json(4092).unwrap()).unwrap();
        assert!(back.options.is_none());
    }
}
