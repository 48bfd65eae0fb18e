//! `RawOptions` -> `InterceptConfig`: every option validated, in a fixed order, the first bad
//! value the error (naming its flag and value).

use super::{
    Cidr, IdResolver, InboundFail, InboundPorts, InterceptConfig, InterceptionMode,
    OutboundInclude, RawOptions, RawSockets, defaults, parse::*,
};
use crate::error::ConfigError;

impl RawOptions {
    /// Validates every option; the first bad value is the error, naming flag and value.
    pub fn resolve(
        &self,
        ids: &impl IdResolver,
        envoy_user: &str,
    ) -> Result<InterceptConfig, ConfigError> {
        let [envoy_port, inbound_capture_port, inbound_tunnel_port] = self.ports()?;
        let (proxy_uids, proxy_gids) = self.proxy_ids(ids, envoy_user)?;
        let (outbound_include, outbound_exclude) = self.outbound_cidrs()?;
        let inbound_mode = self.inbound_mode()?;
        let inbound_ports = match self.inbound_ports.as_deref().map(str::trim) {
            Some("*") => InboundPorts::All,
            other => InboundPorts::Ports(parse_ports("-b/--istio-inbound-ports", other)?),
        };
        let inbound_fail = self.inbound_fail()?;
        let raw_sockets = self.raw_sockets()?;
        let exclude_interfaces = self.exclude_interfaces()?;
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
            raw_sockets,
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
            tproxy_mark: self.number_or(
                "-t/--istio-inbound-tproxy-mark",
                &self.tproxy_mark,
                defaults::TPROXY_MARK,
            )?,
            tproxy_route_table: self.number_or(
                "-r/--istio-inbound-tproxy-route-table",
                &self.tproxy_route_table,
                defaults::TPROXY_ROUTE_TABLE,
            )?,
            dual_stack: self.dual_stack,
            accelerate: self.accelerate,
        })
    }

    /// `-p`, `-z`, `-e`.
    fn ports(&self) -> Result<[u16; 3], ConfigError> {
        let port_or = |flag, v: &Option<String>, default| match v.as_deref() {
            None => Ok(default),
            Some(s) => parse_port(flag, s),
        };
        Ok([
            port_or("-p/--envoy-port", &self.envoy_port, defaults::ENVOY_PORT)?,
            port_or(
                "-z/--inbound-capture-port",
                &self.inbound_capture_port,
                defaults::INBOUND_CAPTURE_PORT,
            )?,
            port_or(
                "-e/--inbound-tunnel-port",
                &self.inbound_tunnel_port,
                defaults::INBOUND_TUNNEL_PORT,
            )?,
        ])
    }

    /// `-u` and `-g`, as istio-iptables reads them: `-u` empty or absent is the uid of
    /// `ENVOY_USER` if it exists, else 1337; `-g` empty or absent is the same list as `-u`.
    fn proxy_ids(
        &self,
        ids: &impl IdResolver,
        envoy_user: &str,
    ) -> Result<(Vec<u32>, Vec<u32>), ConfigError> {
        let given = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        let uid_text = given(&self.proxy_uid).unwrap_or_else(|| {
            ids.uid_of(envoy_user)
                .unwrap_or(defaults::PROXY_UID)
                .to_string()
        });
        let uids = parse_ids("-u/--proxy-uid", &uid_text, |n| ids.uid_of(n))?;
        let gids = match given(&self.proxy_gid) {
            Some(text) => parse_ids("-g/--proxy-gid", &text, |n| ids.gid_of(n))?,
            None => uids.clone(),
        };
        Ok((uids, gids))
    }

    /// `-i` (CIDRs or `*`) and `-x` (CIDRs; `*` would exclude everything).
    fn outbound_cidrs(&self) -> Result<(OutboundInclude, Vec<Cidr>), ConfigError> {
        let include = match self.service_cidr.as_deref().map(str::trim) {
            Some("*") => OutboundInclude::All,
            other => OutboundInclude::Cidrs(parse_cidrs("-i/--istio-service-cidr", other)?),
        };
        const EXCLUDE: &str = "-x/--istio-service-exclude-cidr";
        if self.service_exclude_cidr.as_deref().map(str::trim) == Some("*") {
            return Err(ConfigError::Cidr {
                flag: EXCLUDE,
                value: "*".into(),
                reason: "'*' is not allowed here (it would exclude everything)".into(),
            });
        }
        let exclude = parse_cidrs(EXCLUDE, self.service_exclude_cidr.as_deref())?;
        Ok((include, exclude))
    }

    /// `-m`.
    fn inbound_mode(&self) -> Result<InterceptionMode, ConfigError> {
        match self.interception_mode.as_deref().map(str::trim) {
            None | Some("") | Some("REDIRECT") => Ok(InterceptionMode::Redirect),
            Some("TPROXY") => Ok(InterceptionMode::Tproxy),
            Some(other) => Err(ConfigError::Mode {
                value: other.to_string(),
            }),
        }
    }

    /// `--inbound-fail`.
    fn inbound_fail(&self) -> Result<InboundFail, ConfigError> {
        match self.inbound_fail.as_deref().map(str::trim) {
            None | Some("open") => Ok(InboundFail::Open),
            Some("closed") => Ok(InboundFail::Closed),
            Some(other) => Err(ConfigError::InboundFail {
                value: other.to_string(),
            }),
        }
    }

    /// `--raw-sockets`.
    fn raw_sockets(&self) -> Result<RawSockets, ConfigError> {
        match self.raw_sockets.as_deref().map(str::trim) {
            None | Some("refuse") => Ok(RawSockets::Refuse),
            Some("allow") => Ok(RawSockets::Allow),
            Some(other) => Err(ConfigError::RawSockets {
                value: other.to_string(),
            }),
        }
    }

    /// `-c`, at most as many as the programs' configuration holds.
    fn exclude_interfaces(&self) -> Result<Vec<String>, ConfigError> {
        const FLAG: &str = "-c/--istio-exclude-interfaces";
        let names = parse_interfaces(FLAG, self.exclude_interfaces.as_deref())?;
        if names.len() > interceptor_ebpf::MAX_EXCLUDE_IFACES {
            return Err(ConfigError::TooMany {
                flag: FLAG,
                max: interceptor_ebpf::MAX_EXCLUDE_IFACES,
            });
        }
        Ok(names)
    }

    /// `-t`, `-r`: decimal or `0x` hexadecimal.
    fn number_or(
        &self,
        flag: &'static str,
        value: &Option<String>,
        default: u32,
    ) -> Result<u32, ConfigError> {
        value.as_deref().map_or(Ok(default), |s| parse_u32(flag, s))
    }
}
