//! The iptables backend: istio-iptables' own rules, written into the pod's network namespace
//! with one atomic `iptables-restore --noflush` per address family.
//!
//! - [`facts`]: what the rules depend on besides the options (DNS servers, IPv6), pure;
//! - [`ruleset`]: options + facts -> the rules, rendered as istio-iptables renders them, pure;
//! - [`save`]: reading `iptables-save` output: which rules and chains are ours, pure;
//! - [`mode`]: legacy or nft binaries, and `auto` detection;
//! - [`exec`]: running an iptables binary inside the namespace;
//! - [`restore`]: apply (replacing what an earlier run wrote) and clean;
//! - [`command`]: `init` and `clean` with `--backend iptables`.

pub mod command;
pub mod exec;
pub mod facts;
pub mod mode;
pub mod restore;
pub mod ruleset;
pub mod save;

/// Every chain istio-iptables creates, in any table. `clean` removes exactly these (and the
/// rules that jump to them).
pub const OUR_CHAINS: [&str; 8] = [
    ISTIO_INBOUND,
    ISTIO_REDIRECT,
    ISTIO_IN_REDIRECT,
    ISTIO_OUTPUT,
    ISTIO_OUTPUT_DNS,
    ISTIO_DIVERT,
    ISTIO_TPROXY,
    ISTIO_DROP,
];

pub const ISTIO_INBOUND: &str = "ISTIO_INBOUND";
pub const ISTIO_REDIRECT: &str = "ISTIO_REDIRECT";
pub const ISTIO_IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
pub const ISTIO_OUTPUT: &str = "ISTIO_OUTPUT";
pub const ISTIO_OUTPUT_DNS: &str = "ISTIO_OUTPUT_DNS";
pub const ISTIO_DIVERT: &str = "ISTIO_DIVERT";
pub const ISTIO_TPROXY: &str = "ISTIO_TPROXY";
pub const ISTIO_DROP: &str = "ISTIO_DROP";

/// Chains and targets that are never created with `-N`.
pub const BUILTIN_CHAINS: [&str; 8] = [
    "INPUT",
    "OUTPUT",
    "FORWARD",
    "PREROUTING",
    "POSTROUTING",
    "ACCEPT",
    "RETURN",
    "DROP",
];

/// The tables our rules live in, in the order istio-iptables renders them (alphabetical).
pub const OUR_TABLES: [&str; 3] = ["mangle", "nat", "raw"];

/// An address family: one `iptables-restore` (v4) or `ip6tables-restore` (v6) run each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const fn prefix(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

pub fn is_our_chain(name: &str) -> bool {
    OUR_CHAINS.contains(&name)
}
