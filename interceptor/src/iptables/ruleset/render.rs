//! Rendering as istio-iptables' `buildRestore` does: per table (alphabetical), `-N` for each
//! non-builtin chain in order of first use, then `-N` for jump targets without rules of their
//! own, then the rules in generation order, then `COMMIT`.

use super::Rule;
use crate::iptables::{BUILTIN_CHAINS, OUR_TABLES};

/// The `iptables-restore` input of `rules`.
pub fn render(rules: &[Rule]) -> String {
    let mut out = String::new();
    for (table, lines) in render_tables(rules) {
        out.push_str("* ");
        out.push_str(&table);
        out.push('\n');
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// The lines of each table's block (without `* table` and `COMMIT`), tables with rules only,
/// in rendering order.
pub fn render_tables(rules: &[Rule]) -> Vec<(String, Vec<String>)> {
    let mut blocks = Vec::new();
    for table in OUR_TABLES {
        let in_table: Vec<&Rule> = rules.iter().filter(|r| r.table == table).collect();
        if in_table.is_empty() {
            continue;
        }
        let mut lines: Vec<String> = new_chains(&in_table)
            .iter()
            .map(|c| format!("-N {c}"))
            .collect();
        lines.extend(in_table.iter().map(|r| r.text()));
        blocks.push((table.to_string(), lines));
    }
    blocks
}

/// The chains a table's block creates: those with rules in order of first use, then jump
/// targets without rules.
fn new_chains<'a>(in_table: &[&'a Rule]) -> Vec<&'a str> {
    let mut chains: Vec<&str> = Vec::new();
    let with_rules = in_table.iter().map(|r| r.chain.as_str());
    let targets = in_table.iter().filter_map(|r| r.jump_target());
    for chain in with_rules.chain(targets) {
        if !BUILTIN_CHAINS.contains(&chain) && !chains.contains(&chain) {
            chains.push(chain);
        }
    }
    chains
}
