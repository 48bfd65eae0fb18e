//! `interceptor-cni`: a CNI 1.0 plugin, chained after the plugin that sets up the pod's
//! network. ADD registers the pod with the node daemon and prints `prevResult` back unchanged;
//! DEL removes it (and succeeds when the daemon or the namespace is gone); CHECK asks the
//! daemon whether the pod is registered for this namespace; VERSION lists the versions.
//!
//! Network configuration (besides `cniVersion`, `name`, `type`, `prevResult`):
//! - `socket`: the daemon's API socket (default `/run/interceptor/interceptor.sock`);
//! - `options`: defaults for every pod, by `init`'s long flag names
//!   (`{"istio-service-cidr": "*", "proxy-uid": "1337", "redirect-dns": true}`);
//! - `excludeNamespaces`: Kubernetes namespaces whose pods are never registered;
//! - `daemonWaitSeconds`: how long ADD and CHECK wait for a daemon that is (re)starting (a whole
//!   number of seconds, default 10, at most [`MAX_DAEMON_WAIT_SECONDS`]).
//!
//! Per-pod overrides, later ones winning: `CNI_ARGS` keys `INTERCEPTOR_<FLAG>` (the long flag
//! name in upper case with `_`, e.g. `INTERCEPTOR_ENVOY_PORT=15002`), then
//! `runtimeConfig.interceptor` (same keys as `options`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub mod install;

use crate::{
    config::RawOptions,
    node::api::{self, AddPod, ClientError, PodSelector, Request},
    pod::Netns,
};

/// The versions this plugin speaks. It only echoes `prevResult`, whose format it never
/// changes, so every version with chaining is fine; CHECK exists from 0.4.0 on.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// The spec's error codes.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENV: u32 = 4;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Plugin-specific (100+): the daemon refused or failed the registration.
    pub const REGISTRATION_FAILED: u32 = 100;
    /// Plugin-specific: CHECK found the pod not registered (or registered for another netns).
    pub const NOT_REGISTERED: u32 = 101;
    /// Plugin-specific: the plugin itself failed (a bug); `details` says where.
    pub const INTERNAL: u32 = 102;
}

/// How long ADD and CHECK wait for a daemon unless told (`daemonWaitSeconds`).
pub const DEFAULT_DAEMON_WAIT_SECONDS: u64 = 10;
/// The longest `daemonWaitSeconds` taken: a runtime gives a whole sandbox creation a few
/// minutes (kubelet's runtime request timeout is 2 minutes), so a longer wait only hides a
/// daemon that is not coming back.
pub const MAX_DAEMON_WAIT_SECONDS: u64 = 300;

/// The spec's error object, printed on stdout with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

pub fn err(code: u32, msg: impl Into<String>) -> CniError {
    CniError {
        cni_version: "1.0.0".into(),
        code,
        msg: msg.into(),
        details: String::new(),
    }
}

impl CniError {
    /// The same error with `details`.
    pub fn with_details(self, details: impl Into<String>) -> CniError {
        CniError {
            details: details.into(),
            ..self
        }
    }
}

/// The CNI environment variables.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
}

impl Env {
    /// The variables of this process; one that is not UTF-8 is the spec's "invalid
    /// environment variables" error.
    pub fn from_process() -> Result<Self, CniError> {
        let var = |n: &str| match std::env::var(n) {
            Ok(v) => Ok(v),
            Err(std::env::VarError::NotPresent) => Ok(String::new()),
            Err(std::env::VarError::NotUnicode(v)) => Err(err(
                code::INVALID_ENV,
                format!("{n} is not valid UTF-8: {}", v.to_string_lossy()),
            )),
        };
        Ok(Env {
            command: var("CNI_COMMAND")?,
            container_id: var("CNI_CONTAINERID")?,
            netns: var("CNI_NETNS")?,
            ifname: var("CNI_IFNAME")?,
            args: var("CNI_ARGS")?,
        })
    }
}

#[derive(Debug, Deserialize)]
struct NetConf {
    #[serde(rename = "cniVersion", default)]
    cni_version: String,
    #[serde(default)]
    name: String,
    #[serde(rename = "prevResult")]
    prev_result: Option<Box<RawValue>>,
    #[serde(default)]
    socket: Option<PathBuf>,
    #[serde(default)]
    options: BTreeMap<String, serde_json::Value>,
    #[serde(rename = "excludeNamespaces", default)]
    exclude_namespaces: Vec<String>,
    /// Checked by [`daemon_wait`]: taken as any JSON value so that a bad one is named.
    #[serde(rename = "daemonWaitSeconds", default)]
    daemon_wait_seconds: Option<serde_json::Value>,
    /// The pods' name servers for `redirect-dns` (the cluster DNS service address): a pod's
    /// resolv.conf is written after the CNI ADD.
    #[serde(rename = "dnsServers", default)]
    dns_servers: Vec<std::net::IpAddr>,
    #[serde(rename = "runtimeConfig", default)]
    runtime_config: RuntimeConfig,
}

#[derive(Debug, Default, Deserialize)]
struct RuntimeConfig {
    #[serde(default)]
    interceptor: BTreeMap<String, serde_json::Value>,
}

/// `CNI_ARGS` (`K=V;K=V`) as pairs; a pair without `=` is an error.
pub fn parse_cni_args(args: &str) -> Result<Vec<(String, String)>, CniError> {
    args.split(';')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    err(
                        code::INVALID_ENV,
                        format!("CNI_ARGS: {pair:?} is not KEY=VALUE"),
                    )
                })
        })
        .collect()
}

/// An option value from JSON as the flag's text: strings as they are, booleans and numbers
/// spelled out, lists joined with commas.
fn option_text(name: &str, value: &serde_json::Value) -> Result<String, CniError> {
    use serde_json::Value;
    Ok(match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) => items
            .iter()
            .map(|i| option_text(name, i))
            .collect::<Result<Vec<_>, _>>()?
            .join(","),
        _ => {
            return Err(err(
                code::INVALID_CONFIG,
                format!("option {name:?}: expected a string, number, boolean or list"),
            ));
        }
    })
}

/// The pod's options: the configuration's defaults, then `CNI_ARGS`, then `runtimeConfig`.
fn pod_options(conf: &NetConf, cni_args: &[(String, String)]) -> Result<RawOptions, CniError> {
    let mut raw = RawOptions::default();
    for (source, map) in [("options", &conf.options)] {
        for (k, v) in map {
            raw.set(k, &option_text(k, v)?)
                .map_err(|e| err(code::INVALID_CONFIG, format!("{source}: {e}")))?;
        }
    }
    for (k, v) in cni_args {
        if let Some(flag) = k.strip_prefix("INTERCEPTOR_") {
            let name = flag.to_ascii_lowercase().replace('_', "-");
            raw.set(&name, v)
                .map_err(|e| err(code::INVALID_ENV, format!("CNI_ARGS {k}: {e}")))?;
        }
    }
    for (k, v) in &conf.runtime_config.interceptor {
        raw.set(k, &option_text(k, v)?).map_err(|e| {
            err(
                code::INVALID_CONFIG,
                format!("runtimeConfig.interceptor: {e}"),
            )
        })?;
    }
    Ok(raw)
}

fn arg<'a>(cni_args: &'a [(String, String)], key: &str) -> &'a str {
    cni_args
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// `daemonWaitSeconds`, bounded: a whole number of seconds up to [`MAX_DAEMON_WAIT_SECONDS`].
fn daemon_wait(conf: &NetConf) -> Result<Duration, CniError> {
    let Some(value) = &conf.daemon_wait_seconds else {
        return Ok(Duration::from_secs(DEFAULT_DAEMON_WAIT_SECONDS));
    };
    match value.as_u64() {
        Some(seconds) if seconds <= MAX_DAEMON_WAIT_SECONDS => Ok(Duration::from_secs(seconds)),
        _ => Err(err(
            code::INVALID_CONFIG,
            format!(
                "daemonWaitSeconds {value}: expected a whole number of seconds from 0 to \
                 {MAX_DAEMON_WAIT_SECONDS} (how long ADD and CHECK wait for a restarting daemon)"
            ),
        )),
    }
}

fn require(value: &str, name: &str) -> Result<(), CniError> {
    if value.is_empty() {
        return Err(err(code::INVALID_ENV, format!("{name} is not set")));
    }
    Ok(())
}

/// Runs one command. `Ok(Some(text))` is printed on stdout; errors are printed as the spec's
/// error object by the caller.
pub fn run(env: &Env, stdin: &str) -> Result<Option<String>, CniError> {
    if env.command == "VERSION" {
        return Ok(Some(
            serde_json::json!({
                "cniVersion": "1.0.0",
                "supportedVersions": SUPPORTED_VERSIONS,
            })
            .to_string(),
        ));
    }
    let conf: NetConf = serde_json::from_str(stdin).map_err(|e| CniError {
        details: e.to_string(),
        ..err(
            code::DECODE,
            "cannot decode the network configuration on stdin",
        )
    })?;
    let version = |e: CniError| CniError {
        cni_version: if conf.cni_version.is_empty() {
            e.cni_version.clone()
        } else {
            conf.cni_version.clone()
        },
        ..e
    };
    run_with(env, &conf).map_err(version)
}

fn run_with(env: &Env, conf: &NetConf) -> Result<Option<String>, CniError> {
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(err(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {:?} is not supported (supported: {})",
                conf.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    let cni_args = parse_cni_args(&env.args)?;
    let namespace = arg(&cni_args, "K8S_POD_NAMESPACE");
    let pod = Invocation {
        namespace,
        name: arg(&cni_args, "K8S_POD_NAME"),
        excluded: !namespace.is_empty() && conf.exclude_namespaces.iter().any(|n| n == namespace),
        socket: conf
            .socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(api::DEFAULT_SOCKET)),
        cni_args: &cni_args,
    };
    match env.command.as_str() {
        "ADD" => add(env, conf, &pod),
        "DEL" => del(env, &pod),
        "CHECK" => check(env, conf, &pod),
        other => Err(err(
            code::INVALID_ENV,
            format!("CNI_COMMAND {other:?}: expected ADD, DEL, CHECK or VERSION"),
        )),
    }
}

/// What every command needs to know about the pod it is called for.
struct Invocation<'a> {
    namespace: &'a str,
    name: &'a str,
    /// In one of `excludeNamespaces`: passed through untouched.
    excluded: bool,
    socket: PathBuf,
    cni_args: &'a [(String, String)],
}

/// ADD: registers the pod (unless excluded) and hands the previous result on.
fn add(env: &Env, conf: &NetConf, pod: &Invocation) -> Result<Option<String>, CniError> {
    let wait = daemon_wait(conf)?;
    require(&env.container_id, "CNI_CONTAINERID")?;
    require(&env.netns, "CNI_NETNS")?;
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        err(
            code::INVALID_CONFIG,
            format!(
                "network {:?}: interceptor-cni must be chained after the plugin that sets up \
                 the pod's network (no prevResult)",
                conf.name
            ),
        )
    })?;
    if !pod.excluded {
        let options = pod_options(conf, pod.cni_args)?;
        let request = Request::Add(Box::new(AddPod {
            netns: PathBuf::from(&env.netns),
            name: pod.name.to_string(),
            namespace: pod.namespace.to_string(),
            container_id: env.container_id.clone(),
            options,
            resolv_conf: None,
            dns_servers: conf.dns_servers.clone(),
        }));
        let response = call(&pod.socket, &request, wait)?;
        if let Some(e) = response.error {
            let c = if response.usage {
                code::INVALID_CONFIG
            } else {
                code::REGISTRATION_FAILED
            };
            return Err(err(c, format!("registering the pod with the daemon: {e}")));
        }
        for w in response.added.iter().flat_map(|a| &a.warnings) {
            eprintln!("interceptor-cni: {w}");
        }
    }
    // Unchanged, byte for byte.
    Ok(Some(prev.get().to_string()))
}

/// DEL: removes the pod; succeeds when there is nothing left to undo.
fn del(env: &Env, pod: &Invocation) -> Result<Option<String>, CniError> {
    require(&env.container_id, "CNI_CONTAINERID")?;
    if pod.excluded {
        return Ok(None);
    }
    let selector = PodSelector {
        container_id: Some(env.container_id.clone()),
        ..PodSelector::default()
    };
    // No daemon means no registration survives a restart that does not find the namespace.
    match api::call(&pod.socket, &Request::Remove(selector), Duration::ZERO) {
        Ok(r) => match r.error {
            Some(e) => Err(err(
                code::REGISTRATION_FAILED,
                format!("removing the pod from the daemon: {e}"),
            )),
            None => Ok(None),
        },
        Err(ClientError::Unreachable { .. }) => Ok(None),
        Err(e) => Err(err(code::TRY_AGAIN_LATER, e.to_string())),
    }
}

/// CHECK: fails unless the pod is registered for its namespace.
fn check(env: &Env, conf: &NetConf, pod: &Invocation) -> Result<Option<String>, CniError> {
    let wait = daemon_wait(conf)?;
    require(&env.container_id, "CNI_CONTAINERID")?;
    require(&env.netns, "CNI_NETNS")?;
    if conf.prev_result.is_none() {
        return Err(err(code::INVALID_CONFIG, "CHECK needs prevResult"));
    }
    if pod.excluded {
        return Ok(None);
    }
    let response = call(&pod.socket, &Request::List, wait)?;
    if let Some(e) = response.error {
        return Err(err(code::TRY_AGAIN_LATER, e));
    }
    let cookie = netns_cookie(Path::new(&env.netns))?;
    let registered = response
        .pods
        .iter()
        .any(|p| p.record.container_id == env.container_id && p.record.netns_cookie == cookie);
    if !registered {
        return Err(err(
            code::NOT_REGISTERED,
            format!(
                "container {} ({}/{}) is not registered with the daemon for {}",
                env.container_id, pod.namespace, pod.name, env.netns
            ),
        ));
    }
    Ok(None)
}

fn call(socket: &Path, request: &Request, wait: Duration) -> Result<api::Response, CniError> {
    api::call(socket, request, wait).map_err(|e| match e {
        // Too many options for one request: the configuration's (or the pod's) mistake.
        ClientError::TooLarge { .. } => err(code::INVALID_CONFIG, e.to_string()),
        ClientError::Unreachable { .. } | ClientError::Io { .. } => {
            err(code::TRY_AGAIN_LATER, e.to_string())
        }
    })
}

fn netns_cookie(path: &Path) -> Result<u64, CniError> {
    let netns = Netns::open(path).map_err(|e| err(code::INVALID_ENV, format!("CNI_NETNS: {e}")))?;
    netns
        .cookie()
        .map_err(|e| err(code::INVALID_ENV, format!("CNI_NETNS: {e:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(json: &str) -> NetConf {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn options_merge_defaults_then_cni_args_then_runtime_config() {
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"n","type":"interceptor-cni",
                "options":{"envoy-port":15001,"istio-service-cidr":["10.0.0.0/8","10.1.0.0/16"],
                           "redirect-dns":true,"proxy-uid":"1337"},
                "runtimeConfig":{"interceptor":{"proxy-uid":"1400"}}}"#,
        );
        let args = parse_cni_args(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web;INTERCEPTOR_ENVOY_PORT=15002;\
             INTERCEPTOR_PROXY_UID=1300",
        )
        .unwrap();
        let raw = pod_options(&c, &args).unwrap();
        assert_eq!(
            raw.envoy_port.as_deref(),
            Some("15002"),
            "CNI_ARGS over defaults"
        );
        assert_eq!(raw.proxy_uid.as_deref(), Some("1400"), "runtimeConfig last");
        assert_eq!(raw.service_cidr.as_deref(), Some("10.0.0.0/8,10.1.0.0/16"));
        assert!(raw.redirect_dns);
        assert_eq!(arg(&args, "K8S_POD_NAME"), "web");
        let c = conf(r#"{"cniVersion":"1.0.0","dnsServers":["10.96.0.10","fd00:10::a"]}"#);
        assert_eq!(
            c.dns_servers,
            vec![
                "10.96.0.10".parse::<std::net::IpAddr>().unwrap(),
                "fd00:10::a".parse().unwrap()
            ]
        );
    }

    #[test]
    fn bad_input_is_the_specs_error_object() {
        let unknown = pod_options(
            &conf(r#"{"cniVersion":"1.0.0","options":{"envoy-prot":"1"}}"#),
            &[],
        )
        .unwrap_err();
        assert_eq!(unknown.code, code::INVALID_CONFIG);
        assert!(unknown.msg.contains("envoy-prot"), "{}", unknown.msg);
        assert_eq!(parse_cni_args("A=1;B").unwrap_err().code, code::INVALID_ENV);

        let env = Env {
            command: "ADD".into(),
            container_id: "c1".into(),
            netns: "/run/netns/x".into(),
            ..Env::default()
        };
        let e = run(&env, "{not json").unwrap_err();
        assert_eq!(e.code, code::DECODE);
        let e = run(&env, r#"{"cniVersion":"9.9.9","name":"n"}"#).unwrap_err();
        assert_eq!(
            (e.code, e.cni_version.as_str()),
            (code::INCOMPATIBLE_VERSION, "9.9.9")
        );
        let e = run(&env, r#"{"cniVersion":"1.0.0","name":"n"}"#).unwrap_err();
        assert_eq!(
            e.code,
            code::INVALID_CONFIG,
            "ADD without prevResult: {e:?}"
        );
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["code"], 7);
        assert!(json["msg"].as_str().unwrap().contains("chained"));
        let e = run(
            &Env {
                command: "ADD".into(),
                ..Env::default()
            },
            r#"{"cniVersion":"1.0.0","name":"n","prevResult":{}}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("CNI_CONTAINERID"));
    }

    #[test]
    fn daemon_wait_is_a_bounded_whole_number_of_seconds() {
        let env = Env {
            command: "ADD".into(),
            container_id: "c1".into(),
            netns: "/run/netns/x".into(),
            ..Env::default()
        };
        for bad in [
            "18446744073709551615",
            "301",
            "-1",
            "1.5",
            "\"10\"",
            "true",
            "1e30",
        ] {
            let stdin = format!(
                r#"{{"cniVersion":"1.0.0","name":"n","socket":"/dev/null/s",
                     "daemonWaitSeconds":{bad},"prevResult":{{}}}}"#
            );
            for command in ["ADD", "CHECK"] {
                let env = Env {
                    command: command.into(),
                    ..env.clone()
                };
                let e = run(&env, &stdin).unwrap_err();
                assert_eq!(e.code, code::INVALID_CONFIG, "{bad}: {e:?}");
                let shown: serde_json::Value = serde_json::from_str(bad).unwrap();
                assert!(
                    e.msg.contains(&format!("daemonWaitSeconds {shown}"))
                        && e.msg.contains("from 0 to 300"),
                    "{}",
                    e.msg
                );
            }
        }
        // The limit itself, and null (the default), are taken: no daemon, so "try again".
        for good in ["0", "null"] {
            let stdin = format!(
                r#"{{"cniVersion":"1.0.0","name":"n","socket":"/dev/null/s",
                     "daemonWaitSeconds":{good},"prevResult":{{}}}}"#
            );
            let e = run(&env, &stdin).unwrap_err();
            assert_eq!(e.code, code::TRY_AGAIN_LATER, "{good}: {e:?}");
        }
        let conf: NetConf = serde_json::from_str(r#"{"daemonWaitSeconds":300}"#).unwrap();
        assert_eq!(daemon_wait(&conf).unwrap(), Duration::from_secs(300));
    }

    #[test]
    fn version_and_excluded_namespaces_need_no_daemon() {
        let v = run(
            &Env {
                command: "VERSION".into(),
                ..Env::default()
            },
            r#"{"cniVersion":"1.0.0"}"#,
        )
        .unwrap()
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&v).unwrap();
        assert_eq!(v["supportedVersions"][3], "1.0.0");

        // An excluded pod's ADD echoes prevResult byte for byte, without asking any daemon.
        let prev = r#"{"cniVersion":"1.0.0", "ips":[{"address":"10.9.0.5/24"}],"zz":1,"a":2}"#;
        let stdin = format!(
            r#"{{"cniVersion":"1.0.0","name":"n","socket":"/nonexistent/s",
                 "excludeNamespaces":["kube-system"],"prevResult":{prev}}}"#
        );
        let env = Env {
            command: "ADD".into(),
            container_id: "c1".into(),
            netns: "/run/netns/x".into(),
            args: "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns".into(),
            ..Env::default()
        };
        assert_eq!(run(&env, &stdin).unwrap().as_deref(), Some(prev));
        // DEL without a daemon succeeds (idempotent), excluded or not.
        let del = Env {
            command: "DEL".into(),
            args: String::new(),
            ..env
        };
        assert_eq!(run(&del, &stdin).unwrap(), None);
    }
}
