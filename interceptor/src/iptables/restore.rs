//! Applying a rule set and cleaning, with `iptables-restore --noflush` inside the namespace.
//!
//! Apply, per family: read the current state (`-save`), then ONE restore whose input, table by
//! table, first removes whatever of ours is there (an earlier run's rules, whatever its
//! options) and then creates the new rules. The restore is atomic, so the namespace is never
//! without rules nor with a mix. If the IPv6 restore fails after the IPv4 one succeeded, the
//! IPv4 family is put back as it was. A family the rule set leaves out (IPv6 disabled now)
//! and the other flavour get what is ours there removed, once the new rules are in place.

use anyhow::Context as _;
use thiserror::Error;

use super::{
    Family, OUR_TABLES,
    mode::{Flavour, Tool},
    ruleset::{RuleSet, render_tables},
    save::{self, Ours, SavedTable},
};
use crate::pod::{Netns, exec};

/// How long a restore waits for the xtables lock (legacy; nft takes no lock).
const WAIT_ARG: &str = "--wait=30";

#[derive(Debug, Error)]
#[error("{program} failed in {netns} ({status}): {message}{}", failing_lines(.failing))]
pub struct RestoreError {
    pub program: String,
    pub netns: String,
    pub status: String,
    /// iptables' own message, without its "Try ... --help" hint.
    pub message: String,
    /// The input lines it names (1-based number, text).
    pub failing: Vec<(usize, String)>,
}

fn failing_lines(lines: &[(usize, String)]) -> String {
    let mut out = String::new();
    for (n, text) in lines {
        out.push_str(&format!("\n  line {n} of the input: {text}"));
        // Deleting one of our chains fails when a rule we do not own still jumps to it.
        if let Some(chain) = text.strip_prefix("-X ") {
            out.push_str(&format!(
                "\n  (a rule outside istio's chains still jumps to {chain}: remove it first)"
            ));
        }
    }
    out
}

/// The line numbers iptables-restore names: "line: N", "line N:" or "line N failed".
fn line_numbers(stderr: &str) -> Vec<usize> {
    let mut numbers = Vec::new();
    for (i, _) in stderr.match_indices("line") {
        let rest = stderr[i + 4..].trim_start_matches(':').trim_start();
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(n) = digits.parse::<usize>()
            && !numbers.contains(&n)
        {
            numbers.push(n);
        }
    }
    numbers
}

/// What [`apply`] did.
#[derive(Debug)]
pub struct Applied {
    pub flavour: Flavour,
    pub families: Vec<Family>,
    /// Whether rules of an earlier run were replaced.
    pub replaced: bool,
    pub rules: usize,
}

/// Reads and parses `-save` for one family (`None`: the binary is missing). Read only: without
/// `-t`, `-save` dumps the tables that exist and creates none.
pub fn read_state(
    netns: &Netns,
    flavour: Flavour,
    family: Family,
    required: bool,
) -> anyhow::Result<Option<Vec<SavedTable>>> {
    let program = flavour.binary(family, Tool::Save);
    let out = match exec::run(netns, &program, &[], None) {
        Ok(out) => out,
        Err(exec::ExecError::NotFound { .. }) if !required => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if !out.status.success() {
        anyhow::bail!(
            "{program} failed in {} ({}): {}",
            netns.path.display(),
            out.status,
            out.stderr.trim()
        );
    }
    Ok(Some(save::parse(&out.stdout)))
}

/// Runs one restore with `input`.
fn restore(netns: &Netns, flavour: Flavour, family: Family, input: &str) -> anyhow::Result<()> {
    let program = flavour.binary(family, Tool::Restore);
    tracing::debug!("{program} --noflush {WAIT_ARG} <<EOF\n{input}EOF");
    let out = exec::run(netns, &program, &["--noflush", WAIT_ARG], Some(input))?;
    if out.status.success() {
        return Ok(());
    }
    Err(restore_error(&program, netns, &out, input).into())
}

fn restore_error(program: &str, netns: &Netns, out: &exec::Output, input: &str) -> RestoreError {
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Try `"))
        .collect();
    let failing = line_numbers(&out.stderr)
        .into_iter()
        .filter_map(|n| Some((n, input.lines().nth(n.checked_sub(1)?)?.to_string())))
        .collect();
    RestoreError {
        program: program.to_string(),
        netns: netns.path.display().to_string(),
        status: out.status.to_string(),
        message: if lines.is_empty() {
            "no message".to_string()
        } else {
            lines.join(" ")
        },
        failing,
    }
}

/// Joins per-table line blocks into one restore input, tables in our order.
fn input_of(blocks: Vec<(String, Vec<String>)>) -> String {
    let mut out = String::new();
    for table in OUR_TABLES {
        let lines: Vec<&String> = blocks
            .iter()
            .filter(|(t, _)| t == table)
            .flat_map(|(_, l)| l)
            .collect();
        if lines.is_empty() {
            continue;
        }
        out.push_str("* ");
        out.push_str(table);
        out.push('\n');
        for l in lines {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// The restore input that replaces what of ours `current` holds with `new` (pure).
pub fn replacement_input(current: &[Ours], new: &[(String, Vec<String>)]) -> String {
    let mut blocks: Vec<(String, Vec<String>)> = current
        .iter()
        .map(|o| (o.table.clone(), o.removal()))
        .collect();
    blocks.extend(new.iter().cloned());
    input_of(blocks)
}

/// The restore input that removes what of ours `current` holds and puts `previous` back.
fn rollback_input(current: &[Ours], previous: &[Ours]) -> String {
    let mut blocks: Vec<(String, Vec<String>)> = current
        .iter()
        .map(|o| (o.table.clone(), o.removal()))
        .collect();
    blocks.extend(
        previous
            .iter()
            .map(|o| (o.table.clone(), o.reinstatement())),
    );
    input_of(blocks)
}

/// Writes `set` into `netns` with `flavour`, replacing what an earlier run wrote.
pub fn apply(netns: &Netns, flavour: Flavour, set: &RuleSet) -> anyhow::Result<Applied> {
    let families = set.families();
    let mut before = Vec::new();
    for &family in &families {
        let state = read_state(netns, flavour, family, true)?.unwrap_or_default();
        before.push((family, save::ours(&state)));
    }
    let mut replaced = before.iter().any(|(_, o)| !o.is_empty());

    let mut done: Vec<Family> = Vec::new();
    for (family, ours) in &before {
        let input = replacement_input(ours, &render_tables(set.rules(*family)));
        if let Err(e) = restore(netns, flavour, *family, &input) {
            for applied in &done {
                let previous = &before.iter().find(|(f, _)| f == applied).expect("saved").1;
                if let Err(re) = roll_back(netns, flavour, *applied, previous) {
                    tracing::error!("restoring the {applied} rules as they were failed: {re:#}");
                }
            }
            return Err(e.context(format!(
                "applying the {family} rules ({}); nothing was changed",
                flavour
            )));
        }
        done.push(*family);
    }

    // The new rules are in place: remove ours from the family left out and the other flavour.
    // Best effort: a failure here must not report the applied rules as not applied.
    let mut leftovers = vec![(flavour.other(), Family::V4), (flavour.other(), Family::V6)];
    if !families.contains(&Family::V6) {
        leftovers.insert(0, (flavour, Family::V6));
    }
    for (fl, family) in leftovers {
        match remove_ours(netns, fl, family) {
            Ok(removed) => replaced |= removed,
            Err(e) => tracing::warn!("earlier {family} rules ({fl}) may remain: {e:#}"),
        }
    }
    Ok(Applied {
        flavour,
        families,
        replaced,
        rules: set.v4.len() + set.v6.len(),
    })
}

fn roll_back(
    netns: &Netns,
    flavour: Flavour,
    family: Family,
    previous: &[Ours],
) -> anyhow::Result<()> {
    let state = read_state(netns, flavour, family, true)?.unwrap_or_default();
    let input = rollback_input(&save::ours(&state), previous);
    if input.is_empty() {
        return Ok(());
    }
    restore(netns, flavour, family, &input)
}

/// Removes what of ours one flavour and family holds, in one restore; `Ok(false)` when there
/// was nothing (or the binary is missing, so there can be nothing).
pub fn remove_ours(netns: &Netns, flavour: Flavour, family: Family) -> anyhow::Result<bool> {
    let Some(state) = read_state(netns, flavour, family, false)? else {
        return Ok(false);
    };
    let ours = save::ours(&state);
    if ours.is_empty() {
        return Ok(false);
    }
    restore(netns, flavour, family, &replacement_input(&ours, &[]))?;
    Ok(true)
}

/// `clean`: removes ours from both families of each flavour; whether anything was removed.
pub fn clean(netns: &Netns, flavours: &[Flavour]) -> anyhow::Result<bool> {
    let mut removed = false;
    for &flavour in flavours {
        for family in [Family::V4, Family::V6] {
            removed |= remove_ours(netns, flavour, family)
                .with_context(|| format!("cleaning the {family} rules ({flavour})"))?;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_line_numbers_of_both_flavours() {
        let legacy = "iptables-restore v1.8.9 (legacy): Couldn't load target `X':No such file or \
                      directory\n\nError occurred at line: 4\nTry `iptables-restore -h' for more.\n";
        assert_eq!(line_numbers(legacy), [4]);
        assert_eq!(line_numbers("iptables-restore: line 10 failed\n"), [10]);
        let nft = "iptables-nft-restore v1.8.9 (nf_tables): \nline 10: CHAIN_DEL failed (Device or \
                   resource busy): chain ISTIO_REDIRECT\nline 12: CHAIN_USER_ADD failed\n";
        assert_eq!(line_numbers(nft), [10, 12]);
        let msg = failing_lines(&[(10, "-X ISTIO_REDIRECT".into())]);
        assert!(
            msg.contains("line 10 of the input: -X ISTIO_REDIRECT"),
            "{msg}"
        );
        assert!(msg.contains("still jumps to ISTIO_REDIRECT"), "{msg}");
    }

    #[test]
    fn replacement_removes_then_creates_in_each_table() {
        let saved = save::parse(
            "*nat\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n-A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n\
             *raw\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT_DNS - [0:0]\n-A OUTPUT -j ISTIO_OUTPUT_DNS\nCOMMIT\n",
        );
        let new = vec![(
            "nat".to_string(),
            vec![
                "-N ISTIO_OUTPUT".to_string(),
                "-A OUTPUT -j ISTIO_OUTPUT".to_string(),
            ],
        )];
        assert_eq!(
            replacement_input(&save::ours(&saved), &new),
            "* nat\n-D OUTPUT -j ISTIO_OUTPUT\n-F ISTIO_OUTPUT\n-X ISTIO_OUTPUT\n-N ISTIO_OUTPUT\n\
             -A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n\
             * raw\n-D OUTPUT -j ISTIO_OUTPUT_DNS\n-F ISTIO_OUTPUT_DNS\n-X ISTIO_OUTPUT_DNS\nCOMMIT\n"
        );
        assert_eq!(replacement_input(&[], &[]), "");
    }
}
