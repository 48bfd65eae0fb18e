//! DNS capture (`--redirect-dns`, `--capture-all-dns`): which traffic to port 53 goes to the
//! agent's DNS proxy, given the pod's name servers (`resolv_conf`). Pure.

use std::net::IpAddr;

use serde::Serialize;

use super::InterceptConfig;

/// What DNS capture does for one pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsCapture {
    Off,
    /// Port 53 to these addresses (the pod's resolv.conf name servers).
    Servers(Vec<IpAddr>),
    /// Port 53 to any address (`--capture-all-dns`).
    All,
}

impl InterceptConfig {
    /// Whether DNS capture depends on the pod's name servers (`--redirect-dns` without
    /// `--capture-all-dns`): only then are they read.
    pub fn needs_name_servers(&self) -> bool {
        self.redirect_dns && !self.capture_all_dns
    }
}

impl DnsCapture {
    /// istio-iptables' rule: with `--redirect-dns` but neither `--capture-all-dns` nor a name
    /// server, capture is off (and it says so). The warning, if any, is returned.
    pub fn resolve(cfg: &InterceptConfig, servers: &[IpAddr]) -> (Self, Option<String>) {
        if !cfg.redirect_dns {
            return (DnsCapture::Off, None);
        }
        if cfg.capture_all_dns {
            return (DnsCapture::All, None);
        }
        if servers.is_empty() {
            return (
                DnsCapture::Off,
                Some(
                    "--redirect-dns is set, but --capture-all-dns is not and the pod's \
                     resolv.conf names no name server: DNS capture is off"
                        .to_string(),
                ),
            );
        }
        (DnsCapture::Servers(servers.to_vec()), None)
    }
}
