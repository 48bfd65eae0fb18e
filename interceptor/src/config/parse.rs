//! Parsers of single option values; each error names the flag and the value.

use super::{Cidr, IdResolver, OwnerGroups, defaults};
use crate::error::ConfigError;

/// Splits a comma list as istio-iptables does: commas only, empty elements dropped
/// (so the seed's `-b 9080,` is one port). Elements are trimmed of spaces, which
/// istio-iptables passes on to iptables verbatim.
pub fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|e| !e.is_empty())
}

pub(super) fn parse_port(flag: &'static str, s: &str) -> Result<u16, ConfigError> {
    match s.trim().parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(ConfigError::Port {
            flag,
            value: s.to_string(),
        }),
    }
}

pub(super) fn parse_ports(flag: &'static str, s: Option<&str>) -> Result<Vec<u16>, ConfigError> {
    let mut ports: Vec<u16> = Vec::new();
    for p in split_list(s.unwrap_or("")) {
        let port = parse_port(flag, p)?;
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    Ok(ports)
}

pub(super) fn parse_cidrs(flag: &'static str, s: Option<&str>) -> Result<Vec<Cidr>, ConfigError> {
    split_list(s.unwrap_or(""))
        .map(|c| {
            c.parse().map_err(|reason| ConfigError::Cidr {
                flag,
                value: c.to_string(),
                reason,
            })
        })
        .collect()
}

pub(super) fn parse_ids(
    flag: &'static str,
    s: &str,
    by_name: impl Fn(&str) -> Option<u32>,
) -> Result<Vec<u32>, ConfigError> {
    let mut ids = Vec::new();
    for id in split_list(s) {
        let value = match id.parse::<u32>() {
            Ok(n) => n,
            Err(_) => by_name(id).ok_or_else(|| ConfigError::UnknownId {
                flag,
                value: id.to_string(),
            })?,
        };
        if !ids.contains(&value) {
            ids.push(value);
        }
    }
    if ids.len() > interceptor_ebpf::MAX_PROXY_IDS {
        return Err(ConfigError::TooMany {
            flag,
            max: interceptor_ebpf::MAX_PROXY_IDS,
        });
    }
    Ok(ids)
}

pub(super) fn parse_interfaces(
    flag: &'static str,
    s: Option<&str>,
) -> Result<Vec<String>, ConfigError> {
    split_list(s.unwrap_or(""))
        .map(|name| {
            // IFNAMSIZ is 16 including the NUL; '/' and whitespace are never valid.
            let valid = name.len() < 16
                && name != "."
                && name != ".."
                && !name
                    .chars()
                    .any(|c| c == '/' || c == ':' || c.is_whitespace());
            if valid {
                Ok(name.to_string())
            } else {
                Err(ConfigError::Interface {
                    flag,
                    value: name.to_string(),
                })
            }
        })
        .collect()
}

/// A decimal number, or hexadecimal with `0x` (as iptables takes marks).
pub(super) fn parse_u32(flag: &'static str, s: &str) -> Result<u32, ConfigError> {
    let t = s.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.map_err(|_| ConfigError::Invalid {
        flag,
        value: s.to_string(),
        reason: "not a number from 0 to 4294967295".into(),
    })
}

pub(super) fn parse_owner_groups(
    include: Option<&str>,
    exclude: Option<&str>,
    ids: &impl IdResolver,
) -> Result<OwnerGroups, ConfigError> {
    const INCLUDE: &str = "ISTIO_OUTBOUND_OWNER_GROUPS";
    const EXCLUDE: &str = "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE";
    let groups = |flag: &'static str, s: &str| -> Result<Vec<u32>, ConfigError> {
        let mut gids = Vec::new();
        for g in split_list(s) {
            let gid = match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => ids.gid_of(g).ok_or_else(|| ConfigError::UnknownId {
                    flag,
                    value: g.to_string(),
                })?,
            };
            if !gids.contains(&gid) {
                gids.push(gid);
            }
        }
        Ok(gids)
    };
    // Unset is `*`; set to "" is an empty include list (nothing captured by group).
    match include.map(str::trim) {
        None | Some("*") => Ok(OwnerGroups::AllExcept(groups(
            EXCLUDE,
            exclude.unwrap_or(""),
        )?)),
        Some(list) => {
            let gids = groups(INCLUDE, list)?;
            if gids.len() > defaults::MAX_OWNER_GROUPS_INCLUDE {
                return Err(ConfigError::Invalid {
                    flag: INCLUDE,
                    value: list.to_string(),
                    reason: format!(
                        "at most {} groups (they become one rule)",
                        defaults::MAX_OWNER_GROUPS_INCLUDE
                    ),
                });
            }
            Ok(OwnerGroups::Only(gids))
        }
    }
}

pub(super) fn parse_loopback_cidr(s: Option<&str>) -> Result<Cidr, ConfigError> {
    const FLAG: &str = "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR";
    let Some(s) = s else {
        return Ok(defaults::ipv4_loopback_cidr());
    };
    let cidr: Cidr = s.trim().parse().map_err(|reason| ConfigError::Cidr {
        flag: FLAG,
        value: s.to_string(),
        reason,
    })?;
    if !cidr.is_ipv4() || !cidr.is_loopback() || !(8..=32).contains(&cidr.prefix_len) {
        return Err(ConfigError::Cidr {
            flag: FLAG,
            value: s.to_string(),
            reason: "must be an IPv4 loopback address with a prefix length from 8 to 32".into(),
        });
    }
    Ok(cidr)
}
