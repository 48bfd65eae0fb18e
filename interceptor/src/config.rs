//! Options as istio-iptables takes them, parsed and validated into an `InterceptConfig`.
//! Pure: no I/O except the passwd/group look-up of user and group names, which is injected.

use std::{fmt, net::IpAddr, str::FromStr};

use serde::Serialize;

use crate::error::ConfigError;

/// A CIDR as given (`10.0.0.1/8` is accepted, as istio-iptables does; its host bits are
/// ignored when matching).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether the prefix's address is a loopback address (istio-iptables' `HasLoopBackIP`).
    pub fn is_loopback(&self) -> bool {
        self.addr.is_loopback()
    }

    /// The address with its host bits cleared.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                IpAddr::V6((bits & mask).into())
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| "no '/' (a CIDR is ADDRESS/PREFIX-LENGTH)".to_string())?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len: u8 = match len.parse() {
            Ok(n) if n <= max && !(len.len() > 1 && len.starts_with('0')) => n,
            _ => {
                return Err(format!(
                    "prefix length {len:?} is not a number from 0 to {max}"
                ));
            }
        };
        Ok(Cidr { addr, prefix_len })
    }
}

/// `-i`: which outbound destinations are redirected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboundInclude {
    /// `-i '*'`
    All,
    /// `-i CIDR,...` (empty: no CIDR-based redirection; `-q` ports still are).
    Cidrs(Vec<Cidr>),
}

/// `-b`: which inbound ports are captured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InboundPorts {
    /// `-b '*'` (minus `-d`).
    All,
    /// `-b PORT,...` (empty: no inbound capture).
    Ports(Vec<u16>),
}

/// `-m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InterceptionMode {
    Redirect,
    Tproxy,
}

/// `ISTIO_OUTBOUND_OWNER_GROUPS` / `ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE`: which processes'
/// outbound connections are captured, by group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerGroups {
    /// Include `*` (the default): every group except these (the exclude list).
    AllExcept(Vec<u32>),
    /// Only these groups. Empty (the include variable set to ""): none.
    Only(Vec<u32>),
}

/// `--inbound-fail`: what happens to a connection inbound capture selects while the proxy has
/// no listener registered (not started yet, restarting).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InboundFail {
    /// It reaches the application directly, as if it were not captured.
    #[default]
    Open,
    /// It is refused (the client gets a reset).
    Closed,
}

/// A validated configuration: everything the backends need, nothing they must re-check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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

/// Raw option values, as strings, after the flag-over-environment precedence is applied.
/// `None` means "not given" (the default applies); `Some("")` means "given empty".
/// It is also what `interceptor pod add` sends to the daemon (environment already applied on
/// the client's side, like `init`'s).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(default)]
pub struct RawOptions {
    pub envoy_port: Option<String>,
    pub inbound_capture_port: Option<String>,
    pub inbound_tunnel_port: Option<String>,
    pub proxy_uid: Option<String>,
    pub proxy_gid: Option<String>,
    pub service_cidr: Option<String>,
    pub service_exclude_cidr: Option<String>,
    pub outbound_ports: Option<String>,
    pub local_outbound_ports_exclude: Option<String>,
    pub interception_mode: Option<String>,
    pub inbound_ports: Option<String>,
    pub local_exclude_ports: Option<String>,
    pub exclude_interfaces: Option<String>,
    pub kube_virt_interfaces: Option<String>,
    /// `--inbound-fail` (interceptor's own option): `open` or `closed`.
    pub inbound_fail: Option<String>,
    pub redirect_dns: bool,
    pub capture_all_dns: bool,
    pub drop_invalid: bool,
    /// `ISTIO_OUTBOUND_OWNER_GROUPS` (env only; `None`: unset, i.e. `*`).
    pub owner_groups_include: Option<String>,
    /// `ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE` (env only).
    pub owner_groups_exclude: Option<String>,
    /// `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR` (env only).
    pub ipv4_loopback_cidr: Option<String>,
    pub tproxy_mark: Option<String>,
    pub tproxy_route_table: Option<String>,
    pub dual_stack: bool,
}

/// An option name `RawOptions::set` does not know.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    #[error(
        "unknown option {0:?} (options are init's long flag names, e.g. \"istio-service-cidr\")"
    )]
    Unknown(String),
    #[error("option {name:?}: {value:?} is not a boolean (true or false)")]
    NotBool { name: String, value: String },
}

impl RawOptions {
    /// Sets one option by `init`'s long flag name (without `--`), as configuration files name
    /// them (the CNI plugin's `options`). Booleans take `true`/`false`.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), OptionError> {
        let text = Some(value.to_string());
        let boolean = || match value {
            "true" | "1" => Ok(true),
            "false" | "0" | "" => Ok(false),
            _ => Err(OptionError::NotBool {
                name: name.to_string(),
                value: value.to_string(),
            }),
        };
        match name {
            "envoy-port" => self.envoy_port = text,
            "inbound-capture-port" => self.inbound_capture_port = text,
            "inbound-tunnel-port" => self.inbound_tunnel_port = text,
            "proxy-uid" => self.proxy_uid = text,
            "proxy-gid" => self.proxy_gid = text,
            "istio-service-cidr" => self.service_cidr = text,
            "istio-service-exclude-cidr" => self.service_exclude_cidr = text,
            "istio-outbound-ports" => self.outbound_ports = text,
            "istio-local-outbound-ports-exclude" => self.local_outbound_ports_exclude = text,
            "istio-inbound-interception-mode" => self.interception_mode = text,
            "istio-inbound-ports" => self.inbound_ports = text,
            "istio-local-exclude-ports" => self.local_exclude_ports = text,
            "istio-exclude-interfaces" => self.exclude_interfaces = text,
            "kube-virt-interfaces" => self.kube_virt_interfaces = text,
            "inbound-fail" => self.inbound_fail = text,
            "redirect-dns" => self.redirect_dns = boolean()?,
            "capture-all-dns" => self.capture_all_dns = boolean()?,
            "drop-invalid" => self.drop_invalid = boolean()?,
            "istio-inbound-tproxy-mark" => self.tproxy_mark = text,
            "istio-inbound-tproxy-route-table" => self.tproxy_route_table = text,
            "dual-stack" => self.dual_stack = boolean()?,
            // istio-iptables reads these from the environment only; here they are named by
            // the variable's name in lower case with dashes.
            "istio-outbound-owner-groups" => self.owner_groups_include = text,
            "istio-outbound-owner-groups-exclude" => self.owner_groups_exclude = text,
            "istio-outbound-ipv4-loopback-cidr" => self.ipv4_loopback_cidr = text,
            _ => return Err(OptionError::Unknown(name.to_string())),
        }
        Ok(())
    }
}

/// Resolves user and group names (`-u istio-proxy`) to ids.
pub trait IdResolver {
    fn uid_of(&self, user: &str) -> Option<u32>;
    fn gid_of(&self, group: &str) -> Option<u32>;
}

/// The defaults istio-iptables uses.
pub mod defaults {
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
}

/// Splits a comma list as istio-iptables does: commas only, empty elements dropped
/// (so the seed's `-b 9080,` is one port). Elements are trimmed of spaces, which
/// istio-iptables passes on to iptables verbatim.
pub fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|e| !e.is_empty())
}

fn parse_port(flag: &'static str, s: &str) -> Result<u16, ConfigError> {
    match s.trim().parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(ConfigError::Port {
            flag,
            value: s.to_string(),
        }),
    }
}

fn parse_ports(flag: &'static str, s: Option<&str>) -> Result<Vec<u16>, ConfigError> {
    let mut ports: Vec<u16> = Vec::new();
    for p in split_list(s.unwrap_or("")) {
        let port = parse_port(flag, p)?;
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    Ok(ports)
}

fn parse_cidrs(flag: &'static str, s: Option<&str>) -> Result<Vec<Cidr>, ConfigError> {
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

fn parse_ids(
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

fn parse_interfaces(flag: &'static str, s: Option<&str>) -> Result<Vec<String>, ConfigError> {
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
fn parse_u32(flag: &'static str, s: &str) -> Result<u32, ConfigError> {
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

fn parse_owner_groups(
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

fn parse_loopback_cidr(s: Option<&str>) -> Result<Cidr, ConfigError> {
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

impl RawOptions {
    /// Validates every option; the first bad value is the error, naming flag and value.
    pub fn resolve(
        &self,
        ids: &impl IdResolver,
        envoy_user: &str,
    ) -> Result<InterceptConfig, ConfigError> {
        let port_or = |flag, v: &Option<String>, default| match v.as_deref() {
            None => Ok(default),
            Some(s) => parse_port(flag, s),
        };
        let envoy_port = port_or("-p/--envoy-port", &self.envoy_port, defaults::ENVOY_PORT)?;
        let inbound_capture_port = port_or(
            "-z/--inbound-capture-port",
            &self.inbound_capture_port,
            defaults::INBOUND_CAPTURE_PORT,
        )?;
        let inbound_tunnel_port = port_or(
            "-e/--inbound-tunnel-port",
            &self.inbound_tunnel_port,
            defaults::INBOUND_TUNNEL_PORT,
        )?;

        // -u empty or absent: the uid of ENVOY_USER if it exists, else 1337.
        let uid_text = match self.proxy_uid.as_deref() {
            Some(s) if !s.trim().is_empty() => s.to_string(),
            _ => ids
                .uid_of(envoy_user)
                .unwrap_or(defaults::PROXY_UID)
                .to_string(),
        };
        let proxy_uids = parse_ids("-u/--proxy-uid", &uid_text, |n| ids.uid_of(n))?;
        // -g empty or absent: the same list as -u (as text: istio-iptables copies the string).
        let gid_text = match self.proxy_gid.as_deref() {
            Some(s) if !s.trim().is_empty() => s.to_string(),
            _ => uid_text.clone(),
        };
        let gid_flag = "-g/--proxy-gid";
        let proxy_gids = if self
            .proxy_gid
            .as_deref()
            .is_some_and(|s| !s.trim().is_empty())
        {
            parse_ids(gid_flag, &gid_text, |n| ids.gid_of(n))?
        } else {
            proxy_uids.clone()
        };

        let outbound_include = match self.service_cidr.as_deref().map(str::trim) {
            Some("*") => OutboundInclude::All,
            other => OutboundInclude::Cidrs(parse_cidrs("-i/--istio-service-cidr", other)?),
        };
        if self.service_exclude_cidr.as_deref().map(str::trim) == Some("*") {
            return Err(ConfigError::Cidr {
                flag: "-x/--istio-service-exclude-cidr",
                value: "*".into(),
                reason: "'*' is not allowed here (it would exclude everything)".into(),
            });
        }
        let outbound_exclude = parse_cidrs(
            "-x/--istio-service-exclude-cidr",
            self.service_exclude_cidr.as_deref(),
        )?;

        let inbound_mode = match self.interception_mode.as_deref().map(str::trim) {
            None | Some("") | Some("REDIRECT") => InterceptionMode::Redirect,
            Some("TPROXY") => InterceptionMode::Tproxy,
            Some(other) => {
                return Err(ConfigError::Mode {
                    value: other.to_string(),
                });
            }
        };
        let inbound_ports = match self.inbound_ports.as_deref().map(str::trim) {
            Some("*") => InboundPorts::All,
            other => InboundPorts::Ports(parse_ports("-b/--istio-inbound-ports", other)?),
        };

        let inbound_fail = match self.inbound_fail.as_deref().map(str::trim) {
            None | Some("open") => InboundFail::Open,
            Some("closed") => InboundFail::Closed,
            Some(other) => {
                return Err(ConfigError::InboundFail {
                    value: other.to_string(),
                });
            }
        };
        let exclude_interfaces = parse_interfaces(
            "-c/--istio-exclude-interfaces",
            self.exclude_interfaces.as_deref(),
        )?;
        if exclude_interfaces.len() > interceptor_ebpf::MAX_EXCLUDE_IFACES {
            return Err(ConfigError::TooMany {
                flag: "-c/--istio-exclude-interfaces",
                max: interceptor_ebpf::MAX_EXCLUDE_IFACES,
            });
        }

        Ok(InterceptConfig {
            envoy_port,
            inbound_capture_port,
            inbound_tunnel_port,
            proxy_uids,
            proxy_gids,
            outbound_include,
            outbound_exclude,
            outbound_ports_include: parse_ports(
                "-q/--istio-outbound-ports",
                self.outbound_ports.as_deref(),
            )?,
            outbound_ports_exclude: parse_ports(
                "-o/--istio-local-outbound-ports-exclude",
                self.local_outbound_ports_exclude.as_deref(),
            )?,
            inbound_mode,
            inbound_ports,
            inbound_ports_exclude: parse_ports(
                "-d/--istio-local-exclude-ports",
                self.local_exclude_ports.as_deref(),
            )?,
            inbound_fail,
            exclude_interfaces,
            kube_virt_interfaces: parse_interfaces(
                "-k/--kube-virt-interfaces",
                self.kube_virt_interfaces.as_deref(),
            )?,
            redirect_dns: self.redirect_dns,
            capture_all_dns: self.capture_all_dns,
            drop_invalid: self.drop_invalid,
            owner_groups: parse_owner_groups(
                self.owner_groups_include.as_deref(),
                self.owner_groups_exclude.as_deref(),
                ids,
            )?,
            ipv4_loopback_cidr: parse_loopback_cidr(self.ipv4_loopback_cidr.as_deref())?,
            tproxy_mark: match self.tproxy_mark.as_deref() {
                None => defaults::TPROXY_MARK,
                Some(s) => parse_u32("-t/--istio-inbound-tproxy-mark", s)?,
            },
            tproxy_route_table: match self.tproxy_route_table.as_deref() {
                None => defaults::TPROXY_ROUTE_TABLE,
                Some(s) => parse_u32("-r/--istio-inbound-tproxy-route-table", s)?,
            },
            dual_stack: self.dual_stack,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Passwd;
    impl IdResolver for Passwd {
        fn uid_of(&self, user: &str) -> Option<u32> {
            (user == "istio-proxy").then_some(1337)
        }
        fn gid_of(&self, group: &str) -> Option<u32> {
            (group == "istio-proxy").then_some(1337)
        }
    }
    struct NoUsers;
    impl IdResolver for NoUsers {
        fn uid_of(&self, _: &str) -> Option<u32> {
            None
        }
        fn gid_of(&self, _: &str) -> Option<u32> {
            None
        }
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn the_seed_invocation_resolves() {
        // -p 15001 -u 1337 -m REDIRECT -i '*' -x "" -b 9080, -d ""
        let raw = RawOptions {
            envoy_port: s("15001"),
            proxy_uid: s("1337"),
            interception_mode: s("REDIRECT"),
            service_cidr: s("*"),
            service_exclude_cidr: s(""),
            inbound_ports: s("9080,"),
            local_exclude_ports: s(""),
            ..Default::default()
        };
        let cfg = raw.resolve(&NoUsers, "istio-proxy").unwrap();
        assert_eq!(cfg.envoy_port, 15001);
        assert_eq!(cfg.proxy_uids, vec![1337]);
        assert_eq!(cfg.proxy_gids, vec![1337], "gids default to the uids");
        assert_eq!(cfg.outbound_include, OutboundInclude::All);
        assert!(cfg.outbound_exclude.is_empty());
        assert_eq!(cfg.inbound_ports, InboundPorts::Ports(vec![9080]));
        assert_eq!(cfg.inbound_capture_port, 15006);
        assert_eq!(cfg.inbound_tunnel_port, 15008);
        assert_eq!(cfg.inbound_mode, InterceptionMode::Redirect);
        assert_eq!(cfg.inbound_fail, InboundFail::Open);
    }

    #[test]
    fn inbound_fail_and_interfaces() {
        let raw = RawOptions {
            inbound_fail: s("closed"),
            exclude_interfaces: s("eth1,eth2,"),
            kube_virt_interfaces: s("vnet0"),
            ..Default::default()
        };
        let cfg = raw.resolve(&NoUsers, "istio-proxy").unwrap();
        assert_eq!(cfg.inbound_fail, InboundFail::Closed);
        assert_eq!(cfg.exclude_interfaces, vec!["eth1", "eth2"]);
        // -k is refused by the eBPF backend (the iptables backend writes its rules).
        let err = cfg.check_ebpf_support().unwrap_err().to_string();
        assert!(err.starts_with("-k/--kube-virt-interfaces: "), "{err}");
    }

    #[test]
    fn defaults_follow_istio_iptables() {
        let cfg = RawOptions::default()
            .resolve(&NoUsers, "istio-proxy")
            .unwrap();
        assert_eq!(cfg.proxy_uids, vec![1337]);
        assert_eq!(cfg.outbound_include, OutboundInclude::Cidrs(vec![]));
        assert_eq!(cfg.inbound_ports, InboundPorts::Ports(vec![]));
        // ENVOY_USER that exists gives its uid.
        let raw = RawOptions::default();
        let cfg = raw.resolve(&Passwd, "istio-proxy").unwrap();
        assert_eq!(cfg.proxy_uids, vec![1337]);
    }

    #[test]
    fn lists_names_and_dedup() {
        let raw = RawOptions {
            proxy_uid: s("istio-proxy,1338,1338"),
            proxy_gid: s("2000, 2001,"),
            service_cidr: s("10.0.0.0/8, 192.168.1.1/24"),
            outbound_ports: s("80,443,80"),
            local_outbound_ports_exclude: s(",15020,"),
            ..Default::default()
        };
        let cfg = raw.resolve(&Passwd, "istio-proxy").unwrap();
        assert_eq!(cfg.proxy_uids, vec![1337, 1338]);
        assert_eq!(cfg.proxy_gids, vec![2000, 2001]);
        assert_eq!(cfg.outbound_ports_include, vec![80, 443]);
        assert_eq!(cfg.outbound_ports_exclude, vec![15020]);
        let OutboundInclude::Cidrs(c) = &cfg.outbound_include else {
            panic!()
        };
        assert_eq!(c[1].to_string(), "192.168.1.1/24");
        assert_eq!(c[1].network().to_string(), "192.168.1.0");
    }

    #[test]
    fn gid_defaults_to_uid_list_text() {
        let raw = RawOptions {
            proxy_uid: s("3,4"),
            ..Default::default()
        };
        let cfg = raw.resolve(&NoUsers, "istio-proxy").unwrap();
        assert_eq!(cfg.proxy_gids, vec![3, 4]);
    }

    #[test]
    fn loopback_in_include_is_detected() {
        let raw = RawOptions {
            service_cidr: s("10.0.0.0/8,127.0.0.1/32"),
            ..Default::default()
        };
        assert!(raw.resolve(&NoUsers, "x").unwrap().loopback_included());
        let raw = RawOptions {
            service_cidr: s("*"),
            ..Default::default()
        };
        assert!(!raw.resolve(&NoUsers, "x").unwrap().loopback_included());
    }

    #[test]
    fn env_only_settings_and_tproxy_values() {
        let cfg = RawOptions::default().resolve(&Passwd, "x").unwrap();
        assert_eq!(cfg.owner_groups, OwnerGroups::AllExcept(vec![]));
        assert_eq!(cfg.ipv4_loopback_cidr.to_string(), "127.0.0.1/32");
        assert_eq!((cfg.tproxy_mark, cfg.tproxy_route_table), (1337, 133));
        let raw = RawOptions {
            owner_groups_include: s("*"),
            owner_groups_exclude: s("istio-proxy,888,"),
            ipv4_loopback_cidr: s("127.0.0.1/8"),
            tproxy_mark: s("0x539"),
            tproxy_route_table: s("200"),
            ..Default::default()
        };
        let cfg = raw.resolve(&Passwd, "x").unwrap();
        assert_eq!(cfg.owner_groups, OwnerGroups::AllExcept(vec![1337, 888]));
        assert_eq!(cfg.ipv4_loopback_cidr.to_string(), "127.0.0.1/8");
        assert_eq!((cfg.tproxy_mark, cfg.tproxy_route_table), (1337, 200));
        // Include given: exclude is not used; set but empty: no group at all.
        let raw = RawOptions {
            owner_groups_include: s("1,2"),
            owner_groups_exclude: s("nosuchgroup"),
            ..Default::default()
        };
        assert_eq!(
            raw.resolve(&Passwd, "x").unwrap().owner_groups,
            OwnerGroups::Only(vec![1, 2])
        );
        let raw = RawOptions {
            owner_groups_include: s(""),
            ..Default::default()
        };
        assert_eq!(
            raw.resolve(&Passwd, "x").unwrap().owner_groups,
            OwnerGroups::Only(vec![])
        );
    }

    #[test]
    fn bad_env_only_values_name_the_variable() {
        let many: Vec<String> = (0..65).map(|g| g.to_string()).collect();
        let cases: Vec<(RawOptions, &str)> = vec![
            (
                RawOptions {
                    owner_groups_include: Some(many.join(",")),
                    ..Default::default()
                },
                "ISTIO_OUTBOUND_OWNER_GROUPS: invalid value",
            ),
            (
                RawOptions {
                    owner_groups_exclude: s("nosuchgroup"),
                    ..Default::default()
                },
                "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE: unknown user or group \"nosuchgroup\"",
            ),
            (
                RawOptions {
                    ipv4_loopback_cidr: s("10.0.0.1/32"),
                    ..Default::default()
                },
                "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR: invalid CIDR \"10.0.0.1/32\"",
            ),
            (
                RawOptions {
                    ipv4_loopback_cidr: s("127.0.0.1/7"),
                    ..Default::default()
                },
                "prefix length from 8 to 32",
            ),
            (
                RawOptions {
                    tproxy_mark: s("mark"),
                    ..Default::default()
                },
                "-t/--istio-inbound-tproxy-mark: invalid value \"mark\"",
            ),
        ];
        for (raw, expected) in cases {
            let err = raw.resolve(&NoUsers, "x").unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn bad_values_name_flag_and_value() {
        let cases: Vec<(RawOptions, &str)> = vec![
            (
                RawOptions {
                    envoy_port: s("0"),
                    ..Default::default()
                },
                "-p/--envoy-port: invalid port \"0\"",
            ),
            (
                RawOptions {
                    outbound_ports: s("80,65536"),
                    ..Default::default()
                },
                "\"65536\"",
            ),
            (
                RawOptions {
                    local_outbound_ports_exclude: s("http"),
                    ..Default::default()
                },
                "-o/--istio-local-outbound-ports-exclude: invalid port \"http\"",
            ),
            (
                RawOptions {
                    service_cidr: s("10.0.0.1"),
                    ..Default::default()
                },
                "-i/--istio-service-cidr: invalid CIDR \"10.0.0.1\"",
            ),
            (
                RawOptions {
                    service_exclude_cidr: s("10.0.0.0/33"),
                    ..Default::default()
                },
                "\"10.0.0.0/33\"",
            ),
            (
                RawOptions {
                    service_exclude_cidr: s("10.0.0.0/08"),
                    ..Default::default()
                },
                "\"10.0.0.0/08\"",
            ),
            (
                RawOptions {
                    service_cidr: s("*,10.0.0.0/8"),
                    ..Default::default()
                },
                "invalid CIDR \"*\"",
            ),
            (
                RawOptions {
                    service_exclude_cidr: s("*"),
                    ..Default::default()
                },
                "-x/--istio-service-exclude-cidr",
            ),
            (
                RawOptions {
                    proxy_uid: s("nosuchuser"),
                    ..Default::default()
                },
                "-u/--proxy-uid: unknown user or group \"nosuchuser\"",
            ),
            (
                RawOptions {
                    proxy_uid: s("1,2,3,4,5,6,7,8,9"),
                    ..Default::default()
                },
                "at most 8",
            ),
            (
                RawOptions {
                    interception_mode: s("tproxy"),
                    ..Default::default()
                },
                "\"tproxy\"",
            ),
            (
                RawOptions {
                    exclude_interfaces: s("eth0,a/b"),
                    ..Default::default()
                },
                "\"a/b\"",
            ),
            (
                RawOptions {
                    exclude_interfaces: s("a,b,c,d,e,f,g,h,i"),
                    ..Default::default()
                },
                "-c/--istio-exclude-interfaces: at most 8",
            ),
            (
                RawOptions {
                    inbound_fail: s("maybe"),
                    ..Default::default()
                },
                "--inbound-fail: invalid value \"maybe\"",
            ),
        ];
        for (raw, expected) in cases {
            let err = raw
                .resolve(&NoUsers, "istio-proxy")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }
}
