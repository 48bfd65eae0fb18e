//! What we read about a pod, once, for whichever backend intercepts it: its network namespace
//! and cgroup (where interception attaches), its addresses (which connections stay local, and
//! whether IPv6 is captured, as istio-iptables decides it), interfaces (`-c`), routes (`-c` for
//! outbound) and name servers (`--redirect-dns`). The one change both backends make to a pod
//! lives here too: `::6` on `lo` (Envoy's IPv6 inbound passthrough address).
//!
//! - [`netns`], [`cgroup`]: the two handles a pod is named by;
//! - [`routes`], [`resolv_conf`]: parsers of what the kernel and glibc say, pure;
//! - [`exec`]: running a program (`ip`, `iptables-restore`) inside the pod's namespace.

pub mod cgroup;
pub mod exec;
pub mod netns;
pub mod resolv_conf;
pub mod routes;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use anyhow::Context as _;
use thiserror::Error;

pub use cgroup::Cgroup;
pub use netns::Netns;
pub use routes::Route;

use crate::sys;

/// Where a pod's name servers come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameServers {
    /// DNS capture does not need them (off, or `--capture-all-dns`): nothing is read.
    NotNeeded,
    /// The pod's resolv.conf, read as glibc reads it.
    ResolvConf(PathBuf),
    /// Given directly (node mode: the cluster DNS address, before the pod's resolv.conf exists).
    Given(Vec<IpAddr>),
}

/// Everything the backends need to know about one pod, read from inside its namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFacts {
    /// `bpf_get_netns_cookie()` of the pod's sockets: the key of its configuration. `None` on
    /// a kernel without `SO_NETNS_COOKIE` (before 5.14), where only the iptables backend runs.
    pub netns_cookie: Option<u64>,
    /// Its own IPv4 addresses, loopback excluded, in the kernel's order.
    pub addrs4: Vec<Ipv4Addr>,
    /// Its own IPv6 addresses (link-local ones too), `::1` excluded, in the kernel's order.
    pub addrs6: Vec<Ipv6Addr>,
    /// Its interfaces: (name, index).
    pub interfaces: Vec<(String, u32)>,
    /// Its routes (main table).
    pub routes: Vec<Route>,
    /// The name servers DNS capture is about (empty when not needed).
    pub name_servers: Vec<IpAddr>,
}

/// istio-iptables refuses a namespace without a usable address.
#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "no valid local IP address found in the pod's network namespace (istio-iptables needs one to \
     decide whether IPv6 is enabled)"
)]
pub struct NoLocalAddress;

impl PodFacts {
    /// Reads the pod's facts from inside `netns`, and its name servers from `name_servers`.
    pub fn read(netns: &Netns, name_servers: &NameServers) -> anyhow::Result<PodFacts> {
        let mut facts = netns.run_inside(|| {
            let addrs = sys::net::interface_addrs().context("listing the namespace's addresses")?;
            let mut facts = PodFacts {
                netns_cookie: sys::net::current_netns_cookie().ok(),
                interfaces: sys::net::interfaces().context("listing the namespace's interfaces")?,
                routes: routes::read_current().context("reading the namespace's routes")?,
                ..PodFacts::default()
            };
            facts.set_addresses(&addrs);
            Ok(facts)
        })?;
        facts.name_servers = match name_servers {
            NameServers::NotNeeded => Vec::new(),
            NameServers::Given(list) => list.clone(),
            NameServers::ResolvConf(path) => resolv_conf::nameservers(path)
                .with_context(|| format!("--resolv-conf {}", path.display()))?,
        };
        Ok(facts)
    }

    /// The pod's network-namespace cookie, or why it is unknown.
    pub fn cookie(&self) -> anyhow::Result<u64> {
        self.netns_cookie.ok_or_else(|| {
            anyhow::anyhow!(
                "cannot read the pod's network-namespace cookie (SO_NETNS_COOKIE needs Linux                  5.14)"
            )
        })
    }

    /// Keeps the pod's own addresses of each family, in the kernel's order (IPv4 first).
    fn set_addresses(&mut self, addrs: &[IpAddr]) {
        for a in addrs {
            match a {
                IpAddr::V4(v4) if !v4.is_loopback() && !self.addrs4.contains(v4) => {
                    self.addrs4.push(*v4)
                }
                IpAddr::V6(v6) if !v6.is_loopback() && !self.addrs6.contains(v6) => {
                    self.addrs6.push(*v6)
                }
                _ => {}
            }
        }
    }

    /// Whether IPv6 is captured in this pod, as istio-iptables decides it (`EnableIPv6`, from
    /// `getLocalIP`): over the pod's addresses in kernel order, loopback and link-local ones
    /// skipped, the first one is IPv6 or, with `--dual-stack`, any one is.
    pub fn ipv6_enabled(&self, dual_stack: bool) -> Result<bool, NoLocalAddress> {
        let all = (self.addrs4.iter().map(|a| IpAddr::V4(*a)))
            .chain(self.addrs6.iter().map(|a| IpAddr::V6(*a)));
        let mut usable = all.map(|a| a.to_canonical()).filter(|a| {
            !a.is_loopback()
                && !match a {
                    IpAddr::V4(v4) => v4.is_link_local(),
                    IpAddr::V6(v6) => v6.is_unicast_link_local(),
                }
        });
        let first = usable.next().ok_or(NoLocalAddress)?;
        if !dual_stack {
            return Ok(first.is_ipv6());
        }
        Ok(first.is_ipv6() || usable.any(|a| a.is_ipv6()))
    }
}

/// istio-iptables puts `::6/128` on `lo` when IPv6 is enabled: Envoy's inbound passthrough
/// binds it (IPv6 `lo` holds only `::1`, unlike IPv4's 127/8). Both backends do, without
/// duplicate address detection, so that it can be bound as soon as `init` returns.
pub fn add_inbound_passthrough_v6(netns: &Netns) -> anyhow::Result<()> {
    let out = exec::run(
        netns,
        "ip",
        &["-6", "addr", "replace", "::6/128", "dev", "lo", "nodad"],
        None,
    )?;
    anyhow::ensure!(
        out.status.success(),
        "adding ::6/128 to lo in {} failed ({}): {}",
        netns.path.display(),
        out.status,
        out.stderr.trim()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(v: &[&str]) -> PodFacts {
        let addrs: Vec<IpAddr> = v.iter().map(|s| s.parse().unwrap()).collect();
        let mut f = PodFacts::default();
        f.set_addresses(&addrs);
        f
    }

    #[test]
    fn first_usable_address_decides_without_dual_stack() {
        let v4_then_v6 = facts(&["127.0.0.1", "10.0.0.2", "::1", "fd00::2", "fe80::1"]);
        assert_eq!(v4_then_v6.addrs4, vec![Ipv4Addr::new(10, 0, 0, 2)]);
        assert_eq!(
            v4_then_v6.addrs6.len(),
            2,
            "::1 is left out, link-local kept"
        );
        assert_eq!(v4_then_v6.ipv6_enabled(false), Ok(false));
        assert_eq!(v4_then_v6.ipv6_enabled(true), Ok(true));
        let v6_only = facts(&["127.0.0.1", "::1", "fe80::1", "fd00::2"]);
        assert_eq!(v6_only.ipv6_enabled(false), Ok(true));
        // Link-local addresses never count: a v4 pod with only fe80:: stays IPv4-only.
        let v4_link_local_v6 = facts(&["127.0.0.1", "10.0.0.2", "::1", "fe80::1"]);
        assert_eq!(v4_link_local_v6.ipv6_enabled(true), Ok(false));
        // IPv4-mapped addresses count as IPv4.
        assert_eq!(facts(&["::ffff:10.0.0.2"]).ipv6_enabled(true), Ok(false));
    }

    #[test]
    fn no_usable_address_is_an_error() {
        let lo_only = facts(&["127.0.0.1", "::1", "169.254.1.1", "fe80::1"]);
        assert_eq!(lo_only.ipv6_enabled(false), Err(NoLocalAddress));
        assert_eq!(facts(&[]).ipv6_enabled(true), Err(NoLocalAddress));
    }
}
