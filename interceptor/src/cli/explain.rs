//! `explain`: one connection (or, with `--batch`, one per line of stdin), explained by the
//! backend asked for.

use std::io::{BufRead as _, Write as _};

use anyhow::{Context as _, anyhow};
use clap::Parser as _;

use super::{
    args::{ConnectionArgs, ConnectionLine, ExplainArgs, ExplainBackend},
    init::iptables_mode,
};
use crate::{
    error::ConfigError,
    explain::{
        Connection, Explanation, Inbound, Outbound, default_peer,
        ebpf::{self, PodTarget},
        iptables::LiveRules,
    },
    sys::users::require_root,
};

pub fn explain(args: &ExplainArgs) -> anyhow::Result<()> {
    require_root("it reads the pinned BPF maps, or the namespace's iptables rules")?;
    let mut answer = answerer(args)?;
    let mut out = std::io::stdout().lock();
    if !args.batch {
        let conn = connection(&args.connection)?;
        let e = answer(&conn)?;
        let text = if args.json {
            serde_json::to_string_pretty(&e)? + "\n"
        } else {
            e.text()
        };
        out.write_all(text.as_bytes())?;
        return Ok(());
    }
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let answered = ConnectionLine::try_parse_from(line.split_whitespace())
            .map_err(|e| anyhow!("{}", e.to_string().trim()))
            .and_then(|l| connection(&l.connection))
            .and_then(|c| answer(&c));
        let text = match (answered, args.json) {
            (Ok(e), true) => serde_json::to_string(&e)?,
            (Ok(e), false) => one_line(&e),
            (Err(e), true) => serde_json::json!({ "error": format!("{e:#}") }).to_string(),
            (Err(e), false) => format!("error: {e:#}"),
        };
        writeln!(out, "{text}")?;
        out.flush()?;
    }
    Ok(())
}

/// Answers one connection from what was read of the pod.
type Answerer = Box<dyn FnMut(&Connection) -> anyhow::Result<Explanation>>;

/// Reads the pod once, and answers each connection from what was read.
fn answerer(args: &ExplainArgs) -> anyhow::Result<Answerer> {
    match args.backend {
        ExplainBackend::Iptables => {
            let netns = args.netns.clone().ok_or_else(|| {
                anyhow!("--backend iptables explains a namespace's rules: give --netns")
            })?;
            let rules = LiveRules::read(&netns, iptables_mode(args.iptables_mode))
                .with_context(|| format!("reading the rules of {}", netns.display()))?;
            Ok(Box::new(move |c| rules.explain(c)))
        }
        ExplainBackend::Ebpf => {
            let target = PodTarget {
                bpffs: args.bpffs.clone(),
                netns: args.netns.clone(),
                cgroup: args.cgroup.clone(),
                pod: args.pod.clone(),
            };
            let pod = ebpf::find_pod(&target)?;
            let found = ebpf::pod_facts(&pod, target.netns.as_deref());
            let opts = ebpf::live_options(&pod, found.as_ref().map(|(_, f)| f));
            Ok(Box::new(move |c| {
                let (netns, facts) = match &found {
                    Some((n, f)) => (Some(n), Some(f)),
                    None => (None, None),
                };
                ebpf::explain_for(&pod, netns, facts, &opts, c)
            }))
        }
    }
}

/// The connection the options describe, or the first thing wrong with them.
fn connection(c: &ConnectionArgs) -> anyhow::Result<Connection> {
    let bad = |flag: &'static str, reason: &str| -> anyhow::Error {
        ConfigError::Unsupported {
            flag,
            reason: reason.to_string(),
        }
        .into()
    };
    let Some(to) = c.to else {
        return Err(bad(
            "--to",
            "the connection's destination (ADDR:PORT) is required",
        ));
    };
    if c.inbound {
        if c.udp || c.uid.is_some() || c.gid.is_some() {
            return Err(bad(
                "--inbound",
                "an inbound connection is TCP from outside the pod: no --udp, --uid or --gid",
            ));
        }
        let from = c.from.unwrap_or_else(|| default_peer(&to));
        if from.to_canonical().is_ipv4() != to.ip().is_ipv4() {
            return Err(bad("--from", "the peer must be of --to's address family"));
        }
        return Ok(Connection::Inbound(Inbound {
            from: from.to_canonical(),
            to,
            interface: c.interface.clone(),
        }));
    }
    if c.interface.is_some() {
        return Err(bad(
            "--interface",
            "it names where an --inbound connection arrives",
        ));
    }
    let Some(uid) = c.uid else {
        return Err(bad("--uid", "the connecting process's uid is required"));
    };
    Ok(Connection::Outbound(Outbound {
        udp: c.udp,
        uid,
        gid: c.gid.unwrap_or(uid),
        from: c.from,
        to,
    }))
}

/// A batch answer in words, on one line.
fn one_line(e: &Explanation) -> String {
    let rule = e
        .rules
        .first()
        .map(|r| format!(" | {r}"))
        .unwrap_or_default();
    let note = e
        .note
        .as_ref()
        .map(|n| format!(" | {n}"))
        .unwrap_or_default();
    format!(
        "{}: {} ({}){rule}{note}",
        e.connection,
        crate::explain::verdict_words(&e.verdict),
        e.outcome
    )
}
