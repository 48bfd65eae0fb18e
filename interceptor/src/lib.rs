//! interceptor: the user-space side. Options (`config`, `cli`) become map entries (`rules`);
//! the loader attaches the kernel programs to a pod's cgroup and pins them (`loader`, `bpffs`),
//! reading what it needs of the pod from its cgroup and network namespace (`cgroup`, `netns`).

pub mod api;
pub mod bpffs;
pub mod cgroup;
pub mod cli;
pub mod cni;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod dns;
pub mod error;
pub mod iptables;
pub mod listeners;
pub mod loader;
pub mod metrics;
pub mod netns;
pub mod node;
pub mod resolv_conf;
pub mod routes;
pub mod rules;
pub mod sys;
