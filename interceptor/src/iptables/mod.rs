//! The iptables backend: istio-iptables' own rules, written into the pod's network namespace
//! with one atomic `iptables-restore --noflush` per address family.
//!
//! - [`ruleset`]: options, DNS capture and IPv6 -> the rules, rendered as istio-iptables
//!   renders them, pure;
//! - [`save`]: reading `iptables-save` output: which rules and chains are ours, pure;
//! - [`mode`]: legacy or nft binaries, and `auto` detection;
//! - [`restore`]: apply (replacing what an earlier run wrote) and clean, running the binaries
//!   inside the namespace (`pod::exec`).

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

/// One `iptables-restore` (IPv4) or `ip6tables-restore` (IPv6) run per family.
pub use crate::family::Family;
pub use mode::Mode;

pub fn is_our_chain(name: &str) -> bool {
    OUR_CHAINS.contains(&name)
}
