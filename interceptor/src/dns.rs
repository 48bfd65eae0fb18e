//! DNS capture (`--redirect-dns`, `--capture-all-dns`): which traffic to port 53 goes to the
//! agent's DNS proxy, and the pod's name servers it depends on. Pure, except `nameservers`.

use std::{fs, net::IpAddr, path::Path};

use anyhow::Context as _;
use serde::Serialize;

use crate::config::InterceptConfig;

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

impl DnsCapture {
    /// istio-iptables' rule: with `--redirect-dns` but neither `--capture-all-dns` nor a name
    /// server, capture is off (and it says so). The warning, if any, is returned.
    pub fn resolve(cfg: &InterceptConfig, servers: Vec<IpAddr>) -> (Self, Option<String>) {
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
        (DnsCapture::Servers(servers), None)
    }
}

/// The `nameserver` addresses of a resolv.conf, in order, as the resolver reads them:
/// `nameserver ADDR` lines, `#`/`;` comments, an IPv6 zone (`%eth0`) dropped, unparsable
/// addresses skipped. A missing file means no name servers.
pub fn nameservers(path: &Path) -> anyhow::Result<Vec<IpAddr>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(parse_nameservers(&text))
}

fn parse_nameservers(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else { continue };
        let addr = addr.split('%').next().unwrap_or(addr);
        if let Ok(ip) = addr.parse::<IpAddr>()
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nameserver_lines_only() {
        let text = "# generated\nsearch svc.cluster.local\nnameserver 10.96.0.10\n\
                    ;nameserver 1.1.1.1\n  nameserver   fd00::a%eth0  # zone dropped\n\
                    nameserver not-an-ip\nnameserver\noptions ndots:5\nnameserver 10.96.0.10\n";
        assert_eq!(
            parse_nameservers(text),
            vec![
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "fd00::a".parse().unwrap()
            ]
        );
    }

    #[test]
    fn a_missing_file_has_no_servers() {
        assert!(
            nameservers(Path::new("/nonexistent/resolv.conf"))
                .unwrap()
                .is_empty()
        );
    }
}
