//! `interceptor check` and `--backend auto`: does this kernel have every hook, helper and map
//! type the eBPF backend uses? Each is probed by loading a minimal program (or creating a map)
//! that nothing attaches and that goes as soon as it is made ([`probe`]), so asking changes
//! nothing on the node. The last probe loads this build's own programs the same way.
//!
//! Tests hide features from the probes with `INTERCEPTOR_TEST_HIDE_FEATURES` (a comma list of
//! feature ids, `check --json` shows them): the fall-back path can be tested on a kernel that
//! has everything. It is for tests only.

pub mod probe;

use aya_obj::generated::{
    bpf_attach_type as at, bpf_func_id as h, bpf_map_type, bpf_prog_type as pt,
};
use serde::Serialize;

use self::probe::{Found, Hook};

/// The test-only variable that hides features from the probes (see the module's text).
pub const HIDE_FEATURES_ENV: &str = "INTERCEPTOR_TEST_HIDE_FEATURES";

/// One thing the eBPF backend needs from the kernel.
#[derive(Clone, Copy, Debug)]
pub struct Feature {
    /// Short name (what `INTERCEPTOR_TEST_HIDE_FEATURES` takes).
    pub id: &'static str,
    /// What it is, in the kernel's terms.
    pub what: &'static str,
    /// The Linux release that introduced it.
    pub since: &'static str,
    /// What the eBPF backend loses without it.
    pub loses: &'static str,
    /// Without it the eBPF backend does not run (`--backend auto` then uses iptables); else it
    /// runs with less.
    pub required: bool,
    probe: Probe,
}

#[derive(Clone, Copy, Debug)]
enum Probe {
    /// Programs of these hooks load.
    Programs(&'static [Hook]),
    /// Programs of these hooks may call this helper.
    Helper(&'static [Hook], h),
    Map {
        map_type: bpf_map_type,
        key: u32,
        value: u32,
        max_entries: u32,
        flags: u32,
    },
    LinkCreate,
    NetnsCookieSockopt,
    /// `getsockopt(SO_NETNS_COOKIE)` on a socket of this process's namespace.
    SoNetnsCookie,
    TaskHelpers,
    /// This build's own programs, loaded and verified (never attached).
    OwnPrograms,
    /// The iptables backend's tools of one flavour, read only.
    Iptables(&'static str),
}

const fn sock_addr(attach: at) -> Hook {
    Hook::new(pt::BPF_PROG_TYPE_CGROUP_SOCK_ADDR, attach)
}

const CONNECT: &[Hook] = &[
    sock_addr(at::BPF_CGROUP_INET4_CONNECT),
    sock_addr(at::BPF_CGROUP_INET6_CONNECT),
];
const SENDMSG: &[Hook] = &[
    sock_addr(at::BPF_CGROUP_UDP4_SENDMSG),
    sock_addr(at::BPF_CGROUP_UDP6_SENDMSG),
];
const RECVMSG: &[Hook] = &[
    sock_addr(at::BPF_CGROUP_UDP4_RECVMSG),
    sock_addr(at::BPF_CGROUP_UDP6_RECVMSG),
];
const GETPEERNAME: &[Hook] = &[
    sock_addr(at::BPF_CGROUP_INET4_GETPEERNAME),
    sock_addr(at::BPF_CGROUP_INET6_GETPEERNAME),
];
const POST_BIND: &[Hook] = &[
    Hook::new(
        pt::BPF_PROG_TYPE_CGROUP_SOCK,
        at::BPF_CGROUP_INET4_POST_BIND,
    ),
    Hook::new(
        pt::BPF_PROG_TYPE_CGROUP_SOCK,
        at::BPF_CGROUP_INET6_POST_BIND,
    ),
];
const SOCKOPS: &[Hook] = &[Hook::without_attach_type(pt::BPF_PROG_TYPE_SOCK_OPS)];
const GETSOCKOPT: &[Hook] = &[Hook::new(
    pt::BPF_PROG_TYPE_CGROUP_SOCKOPT,
    at::BPF_CGROUP_GETSOCKOPT,
)];
const SK_LOOKUP: &[Hook] = &[Hook::new(pt::BPF_PROG_TYPE_SK_LOOKUP, at::BPF_SK_LOOKUP)];
/// The hooks that keep something on a socket.
const STORAGE_HOOKS: &[Hook] = &[
    sock_addr(at::BPF_CGROUP_INET4_CONNECT),
    Hook::without_attach_type(pt::BPF_PROG_TYPE_SOCK_OPS),
    Hook::new(pt::BPF_PROG_TYPE_CGROUP_SOCKOPT, at::BPF_CGROUP_GETSOCKOPT),
    Hook::new(
        pt::BPF_PROG_TYPE_CGROUP_SOCK,
        at::BPF_CGROUP_INET4_POST_BIND,
    ),
];
/// The cgroup hooks that find their pod by network-namespace cookie before 5.15.
const COOKIE_HOOKS: &[Hook] = &[
    sock_addr(at::BPF_CGROUP_INET4_CONNECT),
    Hook::new(
        pt::BPF_PROG_TYPE_CGROUP_SOCK,
        at::BPF_CGROUP_INET4_POST_BIND,
    ),
];

/// Everything the eBPF backend uses, in the order the table shows it.
pub const FEATURES: &[Feature] = &[
    Feature {
        id: "connect",
        what: "cgroup/connect4, cgroup/connect6 programs",
        since: "4.17",
        loses: "outbound capture: no connection is redirected",
        required: true,
        probe: Probe::Programs(CONNECT),
    },
    Feature {
        id: "post_bind",
        what: "cgroup/post_bind4, cgroup/post_bind6 programs",
        since: "4.17",
        loses: "the proxy's capture listener is not recognised: no inbound capture",
        required: true,
        probe: Probe::Programs(POST_BIND),
    },
    Feature {
        id: "sendmsg",
        what: "cgroup/sendmsg4, cgroup/sendmsg6 programs",
        since: "4.18",
        loses: "DNS capture of unconnected UDP (--redirect-dns)",
        required: true,
        probe: Probe::Programs(SENDMSG),
    },
    Feature {
        id: "recvmsg",
        what: "cgroup/recvmsg4, cgroup/recvmsg6 programs",
        since: "5.2",
        loses: "captured DNS answers appear from the DNS proxy, and resolvers drop them",
        required: true,
        probe: Probe::Programs(RECVMSG),
    },
    Feature {
        id: "getpeername",
        what: "cgroup/getpeername4, cgroup/getpeername6 programs",
        since: "5.8",
        loses: "getpeername() shows 127.0.0.1:15001 instead of the address dialled",
        required: true,
        probe: Probe::Programs(GETPEERNAME),
    },
    Feature {
        id: "sockops",
        what: "sockops programs",
        since: "4.13",
        loses: "SO_ORIGINAL_DST of redirected connections; the inbound listener's registration",
        required: true,
        probe: Probe::Programs(SOCKOPS),
    },
    Feature {
        id: "getsockopt",
        what: "cgroup/getsockopt programs",
        since: "5.3",
        loses: "SO_ORIGINAL_DST: the proxy cannot tell where a connection was going",
        required: true,
        probe: Probe::Programs(GETSOCKOPT),
    },
    Feature {
        id: "sk_lookup",
        what: "sk_lookup programs (network namespace)",
        since: "5.9",
        loses: "inbound capture (-b)",
        required: true,
        probe: Probe::Programs(SK_LOOKUP),
    },
    Feature {
        id: "sk_assign",
        what: "bpf_sk_assign() in sk_lookup",
        since: "5.9",
        loses: "inbound capture (-b)",
        required: true,
        probe: Probe::Helper(SK_LOOKUP, h::BPF_FUNC_sk_assign),
    },
    Feature {
        id: "lpm_trie",
        what: "LPM trie maps",
        since: "4.11",
        loses: "-i and -x CIDRs, and -c's routes",
        required: true,
        probe: Probe::Map {
            map_type: bpf_map_type::BPF_MAP_TYPE_LPM_TRIE,
            key: 8,
            value: 1,
            max_entries: 1,
            flags: 1, // BPF_F_NO_PREALLOC, which LPM tries require
        },
    },
    Feature {
        id: "sockhash",
        what: "sockhash maps",
        since: "4.18",
        loses: "the registry of the proxy's inbound listeners: no inbound capture",
        required: true,
        probe: Probe::Map {
            map_type: bpf_map_type::BPF_MAP_TYPE_SOCKHASH,
            key: 4,
            value: 4,
            max_entries: 1,
            flags: 0,
        },
    },
    Feature {
        id: "ringbuf",
        what: "ring buffer maps",
        since: "5.8",
        loses: "kernel logs and decision traces (the programs declare them: nothing loads)",
        required: true,
        probe: Probe::Map {
            map_type: bpf_map_type::BPF_MAP_TYPE_RINGBUF,
            key: 0,
            value: 0,
            max_entries: 4096,
            flags: 0,
        },
    },
    Feature {
        id: "sk_storage",
        what: "bpf_sk_storage_get() in connect, sockops, getsockopt, post_bind",
        since: "5.3 (post_bind: 5.9)",
        loses: "original destinations kept on sockets: SO_ORIGINAL_DST, getpeername()",
        required: true,
        probe: Probe::Helper(STORAGE_HOOKS, h::BPF_FUNC_sk_storage_get),
    },
    Feature {
        id: "netns_cookie",
        what: "bpf_get_netns_cookie() in cgroup socket hooks",
        since: "5.7",
        loses: "finding a connection's pod: nothing is intercepted",
        required: true,
        probe: Probe::Helper(COOKIE_HOOKS, h::BPF_FUNC_get_netns_cookie),
    },
    Feature {
        id: "netns_cookie_sockops",
        what: "bpf_get_netns_cookie() in sockops and cgroup/getsockopt",
        since: "5.15",
        loses: "SO_ORIGINAL_DST and the inbound listener's registration",
        required: true,
        probe: Probe::NetnsCookieSockopt,
    },
    Feature {
        id: "so_netns_cookie",
        what: "getsockopt(SO_NETNS_COOKIE)",
        since: "5.14",
        loses: "init cannot learn the pod's key",
        required: true,
        probe: Probe::SoNetnsCookie,
    },
    Feature {
        id: "cgroup_link",
        what: "BPF links for cgroup programs (BPF_LINK_CREATE)",
        since: "5.7",
        loses: "pinned, replaceable attachments: interception cannot outlive init",
        required: true,
        probe: Probe::LinkCreate,
    },
    Feature {
        id: "task_helpers",
        what: "current pid and comm in cgroup socket hooks",
        since: "6.1",
        loses: "trace shows no pid or command (everything else works)",
        required: false,
        probe: Probe::TaskHelpers,
    },
    Feature {
        id: "iptables_legacy",
        what: "iptables-legacy (x_tables), for --backend iptables",
        since: "any",
        loses: "nothing of the eBPF backend; the iptables backend's legacy flavour",
        required: false,
        probe: Probe::Iptables("legacy"),
    },
    Feature {
        id: "iptables_nft",
        what: "iptables-nft (nf_tables), for --backend iptables",
        since: "any",
        loses: "nothing of the eBPF backend; the iptables backend's nft flavour",
        required: false,
        probe: Probe::Iptables("nft"),
    },
    Feature {
        id: "programs",
        what: "this build's programs load and pass the verifier",
        since: "5.15",
        loses: "everything: the eBPF backend cannot run",
        required: true,
        probe: Probe::OwnPrograms,
    },
];

/// One row of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub id: &'static str,
    pub feature: &'static str,
    pub since: &'static str,
    pub present: bool,
    pub required: bool,
    pub loses: &'static str,
    /// Why it is absent: the kernel's words, or that a test hid it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// What `check` found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `uname -r`.
    pub kernel: String,
    pub rows: Vec<Row>,
    /// Features hidden by `INTERCEPTOR_TEST_HIDE_FEATURES`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hidden: Vec<String>,
}

impl Report {
    /// Whether the row `id` is present.
    pub fn has(&self, id: &str) -> bool {
        self.rows.iter().any(|r| r.id == id && r.present)
    }

    /// The first required feature this kernel lacks, if any: what keeps the eBPF backend from
    /// running.
    pub fn missing(&self) -> Option<&Row> {
        self.rows.iter().find(|r| r.required && !r.present)
    }

    /// The report as a table, with a last line saying what `--backend auto` picks.
    pub fn table(&self) -> String {
        let width = self.rows.iter().map(|r| r.feature.len()).max().unwrap_or(0);
        let mut out = format!("kernel {}\n\n", self.kernel);
        out.push_str(&format!(
            "{:<width$}  {:<21}  {:<4}  without it\n",
            "feature", "since Linux", "here"
        ));
        for r in &self.rows {
            let here = match (r.present, r.required) {
                (true, _) => "yes",
                (false, true) => "NO",
                (false, false) => "no",
            };
            out.push_str(&format!(
                "{:<width$}  {:<21}  {here:<4}  {}\n",
                r.feature, r.since, r.loses
            ));
            if let Some(why) = &r.why {
                out.push_str(&format!("{:<width$}  {:<21}  {:<4}  ({why})\n", "", "", ""));
            }
        }
        if !self.hidden.is_empty() {
            out.push_str(&format!(
                "\nhidden by {HIDE_FEATURES_ENV} (tests only): {}\n",
                self.hidden.join(", ")
            ));
        }
        out.push_str(&match self.missing() {
            None => "\nthe eBPF backend runs here (--backend auto: ebpf)\n".to_string(),
            Some(r) => format!(
                "\nthe eBPF backend cannot run here: {} is missing (--backend auto: iptables)\n",
                r.feature
            ),
        });
        out
    }
}

/// The features hidden from the probes by the test-only variable.
pub fn hidden_features() -> Vec<String> {
    std::env::var(HIDE_FEATURES_ENV)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The probes that live with the backends: this build's programs (the datapath's loader) and
/// the iptables tools (the iptables backend), passed in.
pub struct Probes<'a> {
    /// Loads and verifies this build's programs, attaching nothing.
    pub own_programs: &'a dyn Fn() -> anyhow::Result<()>,
    /// Whether a flavour's tools (`legacy`, `nft`) work here, reading only.
    pub iptables: &'a dyn Fn(&str) -> Result<(), String>,
}

/// Probes every feature (needs CAP_BPF, or root).
pub fn run(probes: &Probes<'_>) -> Report {
    let hidden = hidden_features();
    let rows = FEATURES
        .iter()
        .map(|f| {
            let found = if hidden.iter().any(|h| h == f.id) {
                Found::Absent(format!("hidden by {HIDE_FEATURES_ENV} (tests only)"))
            } else {
                probe_one(f, probes)
            };
            Row {
                id: f.id,
                feature: f.what,
                since: f.since,
                present: found.is_present(),
                required: f.required,
                loses: f.loses,
                why: match found {
                    Found::Present => None,
                    Found::Absent(why) => Some(why),
                },
            }
        })
        .collect();
    Report {
        kernel: kernel_release(),
        rows,
        hidden,
    }
}

/// Every probe but loading this build's programs: what `--backend auto` asks before an
/// `init`, which loads them anyway.
pub fn run_without_own_programs(iptables: &dyn Fn(&str) -> Result<(), String>) -> Report {
    let mut report = run(&Probes {
        own_programs: &|| Ok(()),
        iptables,
    });
    report.rows.retain(|r| r.id != "programs");
    report
}

fn probe_one(f: &Feature, probes: &Probes<'_>) -> Found {
    let all = |hooks: &[Hook], one: &dyn Fn(Hook) -> Found| {
        hooks
            .iter()
            .map(|&hook| one(hook))
            .find(|found| !found.is_present())
            .unwrap_or(Found::Present)
    };
    match f.probe {
        Probe::SoNetnsCookie => match crate::sys::net::current_netns_cookie() {
            Ok(_) => Found::Present,
            Err(e) => Found::Absent(e.to_string()),
        },
        Probe::Programs(hooks) => all(hooks, &probe::program),
        Probe::Helper(hooks, helper) => all(hooks, &|hook| probe::helper(hook, helper)),
        Probe::Map {
            map_type,
            key,
            value,
            max_entries,
            flags,
        } => probe::map(map_type, key, value, max_entries, flags),
        Probe::LinkCreate => {
            if crate::sys::bpf::knows_link_create() {
                Found::Present
            } else {
                Found::Absent("BPF_LINK_CREATE: unknown command".into())
            }
        }
        Probe::NetnsCookieSockopt => {
            let hooks = [SOCKOPS[0], GETSOCKOPT[0]];
            all(&hooks, &|hook| {
                probe::helper(hook, h::BPF_FUNC_get_netns_cookie)
            })
        }
        Probe::TaskHelpers => {
            if probe::task_helpers_in_cgroup_hooks() {
                Found::Present
            } else {
                Found::Absent("the verifier refuses pid/comm helpers in cgroup hooks".into())
            }
        }
        Probe::OwnPrograms => match (probes.own_programs)() {
            Ok(()) => Found::Present,
            Err(e) => Found::Absent(format!("{e:#}")),
        },
        Probe::Iptables(flavour) => match (probes.iptables)(flavour) {
            Ok(()) => Found::Present,
            Err(why) => Found::Absent(why),
        },
    }
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_ids_are_unique_and_every_feature_says_what_is_lost() {
        let mut ids: Vec<&str> = FEATURES.iter().map(|f| f.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), FEATURES.len());
        for f in FEATURES {
            assert!(!f.loses.is_empty() && !f.since.is_empty(), "{}", f.id);
        }
        // The programs row is last: it says whether everything above adds up.
        assert_eq!(FEATURES.last().map(|f| f.id), Some("programs"));
    }
}
