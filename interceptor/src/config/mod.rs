//! istio-iptables' options and environment, parsed and validated into an `InterceptConfig`
//! that both backends take as it is. Pure: no I/O except the passwd/group look-up of user and
//! group names, which is injected (`ids`).
//!
//! - [`raw`]: the options as given (`RawOptions`), from the CLI, the node API or CNI;
//! - [`resolve`]: validation, one concern at a time ([`parse`] reads single values);
//! - [`cidr`], [`defaults`], [`ids`];
//! - [`dns`]: what DNS capture does for a pod, given its name servers (one decision for both
//!   backends).

mod cidr;
pub mod defaults;
pub mod dns;
mod ids;
mod parse;
mod raw;
mod resolve;

use serde::{Deserialize, Serialize};

pub use cidr::Cidr;
pub use dns::DnsCapture;
#[cfg(test)]
pub use ids::NoUsers;
pub use ids::{IdResolver, SystemIds};
pub use parse::split_list;
pub use raw::{OptionError, RawOptions};

use crate::error::ConfigError;

/// `-i`: which outbound destinations are redirected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboundInclude {
    /// `-i '*'`
    All,
    /// `-i CIDR,...` (empty: no CIDR-based redirection; `-q` ports still are).
    Cidrs(Vec<Cidr>),
}

/// `-b`: which inbound ports are captured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InboundPorts {
    /// `-b '*'` (minus `-d`).
    All,
    /// `-b PORT,...` (empty: no inbound capture).
    Ports(Vec<u16>),
}

/// `-m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InterceptionMode {
    Redirect,
    Tproxy,
}

/// `ISTIO_OUTBOUND_OWNER_GROUPS` / `ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE`: which processes'
/// outbound connections are captured, by group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerGroups {
    /// Include `*` (the default): every group except these (the exclude list).
    AllExcept(Vec<u32>),
    /// Only these groups. Empty (the include variable set to ""): none.
    Only(Vec<u32>),
}

/// `--inbound-fail`: what happens to a connection inbound capture selects while the proxy has
/// no listener registered (not started yet, restarting).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InboundFail {
    /// It reaches the application directly, as if it were not captured.
    #[default]
    Open,
    /// It is refused (the client gets a reset).
    Closed,
}

/// `--raw-sockets`: whether the pod's processes other than the proxy may open raw sockets that
/// could carry TCP or UDP past the rules (and include their own IP headers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawSockets {
    /// Refused (EPERM), but ICMP (ping): what istio's nat rules would redirect cannot leave
    /// the pod directly through a raw socket.
    #[default]
    Refuse,
    /// Allowed: for pods that need raw sockets; their packets are not intercepted.
    Allow,
}

/// A validated configuration: everything the backends need, nothing they must re-check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterceptConfig {
    pub envoy_port: u16,
    pub inbound_capture_port: u16,
    pub inbound_tunnel_port: u16,
    pub proxy_uids: Vec<u32>,
    pub proxy_gids: Vec<u32>,
    pub outbound_include: OutboundInclude,
    pub outbound_exclude: Vec<Cidr>,
    pub outbound_ports_include: Vec<u16>,
    pub outbound_ports_exclude: Vec<u16>,
    pub inbound_mode: InterceptionMode,
    pub inbound_ports: InboundPorts,
    pub inbound_ports_exclude: Vec<u16>,
    pub inbound_fail: InboundFail,
    #[serde(default)]
    pub raw_sockets: RawSockets,
    pub exclude_interfaces: Vec<String>,
    pub kube_virt_interfaces: Vec<String>,
    pub redirect_dns: bool,
    pub capture_all_dns: bool,
    pub drop_invalid: bool,
    /// Env-only `ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]`.
    pub owner_groups: OwnerGroups,
    /// Env-only `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`: the IPv4 "localhost" (default 127.0.0.1/32).
    pub ipv4_loopback_cidr: Cidr,
    /// `-t`: the fwmark of TPROXY-captured packets.
    pub tproxy_mark: u32,
    /// `-r`: the routing table TPROXY-marked packets are looked up in.
    pub tproxy_route_table: u32,
    /// `--dual-stack`: IPv6 is enabled when the pod has any IPv6 address, not only when its
    /// first address is one.
    pub dual_stack: bool,
    /// `--accelerate`: the payload of connections between the application and its proxy moves
    /// socket to socket (sockmap and `sk_msg`) instead of through TCP/IP over lo.
    #[serde(default)]
    pub accelerate: bool,
}

impl InterceptConfig {
    /// Whether an `-i` range holds a loopback address (changes the proxy rules over lo).
    pub fn loopback_included(&self) -> bool {
        matches!(&self.outbound_include, OutboundInclude::Cidrs(c) if c.iter().any(Cidr::is_loopback))
    }

    /// Refuses what the eBPF backend cannot honour (the iptables backend can), naming the option.
    pub fn check_ebpf_support(&self) -> Result<(), ConfigError> {
        if !self.kube_virt_interfaces.is_empty() {
            return Err(ConfigError::Unsupported {
                flag: "-k/--kube-virt-interfaces",
                reason: "the eBPF backend decides per socket of the pod; a KubeVirt VM's traffic \
                         enters on these interfaces as forwarded packets, which no socket hook \
                         sees: use --backend iptables for KubeVirt pods"
                    .to_string(),
            });
        }
        if self.drop_invalid {
            return Err(ConfigError::Unsupported {
                flag: "--drop-invalid (DROP_INVALID, INVALID_DROP)",
                reason: "the eBPF backend rewrites no packet, so there is no conntrack-INVALID \
                         packet that could escape NAT and nothing for this rule to drop: leave \
                         it unset, or use --backend iptables"
                    .to_string(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
