//! The options as given, before validation: what the CLI, the node API and the CNI
//! configuration all produce, and what `resolve` validates.

use serde::Serialize;

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
    /// `--raw-sockets` (interceptor's own option): `refuse` or `allow`.
    pub raw_sockets: Option<String>,
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
    /// `--accelerate` (interceptor's own option, eBPF only): sockmap acceleration of the
    /// pod-local hop.
    pub accelerate: bool,
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
            "raw-sockets" => self.raw_sockets = text,
            "redirect-dns" => self.redirect_dns = boolean()?,
            "capture-all-dns" => self.capture_all_dns = boolean()?,
            "drop-invalid" => self.drop_invalid = boolean()?,
            "istio-inbound-tproxy-mark" => self.tproxy_mark = text,
            "istio-inbound-tproxy-route-table" => self.tproxy_route_table = text,
            "dual-stack" => self.dual_stack = boolean()?,
            "accelerate" => self.accelerate = boolean()?,
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
