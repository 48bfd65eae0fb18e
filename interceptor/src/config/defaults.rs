//! The defaults istio-iptables uses.

pub const ENVOY_PORT: u16 = 15001;
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
pub const INBOUND_TUNNEL_PORT: u16 = 15008;
pub const PROXY_UID: u32 = 1337;
/// The user whose uid is the default `-u` when it exists (env `ENVOY_USER` overrides).
pub const ENVOY_USER: &str = "istio-proxy";
pub const TPROXY_MARK: u32 = 1337;
pub const TPROXY_ROUTE_TABLE: u32 = 133;
/// istio-iptables' limit: all included groups become one rule of N matches.
pub const MAX_OWNER_GROUPS_INCLUDE: usize = 64;

/// `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`'s default.
pub fn ipv4_loopback_cidr() -> super::Cidr {
    super::Cidr {
        addr: std::net::Ipv4Addr::LOCALHOST.into(),
        prefix_len: 32,
    }
}
