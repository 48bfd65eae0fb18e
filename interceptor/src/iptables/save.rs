//! Reading `iptables-save` output: which chains and rules in it are ours, and the
//! `iptables-restore --noflush` lines that remove them (or put them back). Pure.
//!
//! Ours are: the chains istio-iptables creates ([`OUR_CHAINS`]) in the tables it writes
//! ([`OUR_TABLES`]); every rule of a builtin chain there that jumps to one of them; and the
//! two rule shapes istio-iptables puts into builtin chains without a jump, for `-c` and `-k`:
//! `PREROUTING -i IFACE -j RETURN` and `OUTPUT -o IFACE -j RETURN` (nat and mangle). Nothing
//! else is touched, whatever the table or chain.

use super::{BUILTIN_CHAINS, OUR_TABLES, is_our_chain};

/// One table of `iptables-save` output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SavedTable {
    pub name: String,
    /// Chains declared with `:NAME POLICY [counters]`, in order.
    pub chains: Vec<String>,
    /// `-A` lines, in order.
    pub rules: Vec<SavedRule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedRule {
    pub chain: String,
    /// The whole line, starting with `-A CHAIN`.
    pub line: String,
}

impl SavedRule {
    /// The rule without `-A CHAIN`.
    fn spec(&self) -> &str {
        self.line.splitn(3, ' ').nth(2).unwrap_or_default()
    }

    fn tokens(&self) -> Vec<&str> {
        self.spec().split_whitespace().collect()
    }

    fn jumps_to_ours(&self) -> bool {
        let t = self.tokens();
        t.windows(2).any(|w| {
            (w[0] == "-j" || w[0] == "--jump" || w[0] == "-g" || w[0] == "--goto")
                && is_our_chain(w[1])
        })
    }

    /// Is this rule, in a builtin chain of `table`, one istio-iptables writes?
    fn is_ours_in_builtin(&self, table: &str) -> bool {
        if self.jumps_to_ours() {
            return true;
        }
        let iface_return =
            |flag: &str| matches!(self.tokens().as_slice(), [f, _, "-j", "RETURN"] if *f == flag);
        matches!(table, "nat" | "mangle")
            && match self.chain.as_str() {
                "PREROUTING" => iface_return("-i"),
                "OUTPUT" => iface_return("-o"),
                _ => false,
            }
    }
}

/// Parses `iptables-save` output (comments and counters ignored).
pub fn parse(text: &str) -> Vec<SavedTable> {
    let mut tables: Vec<SavedTable> = Vec::new();
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(name) = line.strip_prefix('*') {
            tables.push(SavedTable {
                name: name.trim().to_string(),
                ..Default::default()
            });
            continue;
        }
        let Some(table) = tables.last_mut() else {
            continue;
        };
        if let Some(decl) = line.strip_prefix(':') {
            if let Some(name) = decl.split_whitespace().next() {
                table.chains.push(name.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("-A ")
            && let Some(chain) = rest.split_whitespace().next()
        {
            table.rules.push(SavedRule {
                chain: chain.to_string(),
                line: line.to_string(),
            });
        }
    }
    tables
}

/// What of ours one table holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ours {
    pub table: String,
    pub chains: Vec<String>,
    /// Our rules in builtin chains, each with its 1-based position in its chain.
    pub builtin_rules: Vec<(SavedRule, usize)>,
    /// The rules of our chains.
    pub chain_rules: Vec<SavedRule>,
}

impl Ours {
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.builtin_rules.is_empty()
    }

    /// Restore lines (inside this table's block) that remove all of it: the builtin-chain
    /// rules first (they may jump to our chains), then every chain is flushed before any is
    /// deleted (they jump to each other).
    pub fn removal(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .builtin_rules
            .iter()
            .map(|(r, _)| {
                format!("-D {} {}", r.chain, r.spec())
                    .trim_end()
                    .to_string()
            })
            .collect();
        lines.extend(self.chains.iter().map(|c| format!("-F {c}")));
        lines.extend(self.chains.iter().map(|c| format!("-X {c}")));
        lines
    }

    /// Restore lines that put it back where it was (after [`Ours::removal`] of whatever
    /// replaced it): chains, their rules, then the builtin-chain rules at their positions.
    pub fn reinstatement(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.chains.iter().map(|c| format!("-N {c}")).collect();
        lines.extend(self.chain_rules.iter().map(|r| r.line.clone()));
        lines.extend(self.builtin_rules.iter().map(|(r, pos)| {
            format!("-I {} {pos} {}", r.chain, r.spec())
                .trim_end()
                .to_string()
        }));
        lines
    }
}

/// Our chains and rules in each of our tables present in `saved`.
pub fn ours(saved: &[SavedTable]) -> Vec<Ours> {
    let mut found = Vec::new();
    for table in saved
        .iter()
        .filter(|t| OUR_TABLES.contains(&t.name.as_str()))
    {
        let mut o = Ours {
            table: table.name.clone(),
            chains: table
                .chains
                .iter()
                .filter(|c| is_our_chain(c))
                .cloned()
                .collect(),
            ..Default::default()
        };
        let mut positions: Vec<(&str, usize)> = Vec::new();
        for rule in &table.rules {
            let pos = match positions.iter_mut().find(|(c, _)| *c == rule.chain) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    positions.push((&rule.chain, 1));
                    1
                }
            };
            if is_our_chain(&rule.chain) {
                o.chain_rules.push(rule.clone());
            } else if BUILTIN_CHAINS.contains(&rule.chain.as_str())
                && rule.is_ours_in_builtin(&table.name)
            {
                o.builtin_rules.push((rule.clone(), pos));
            }
        }
        if !o.is_empty() {
            found.push(o);
        }
    }
    found
}

/// Whether `saved` holds anything of ours.
pub fn has_ours(saved: &[SavedTable]) -> bool {
    !ours(saved).is_empty()
}

/// The number of rules (`-A` lines) in `iptables-save` output: how `auto` tells which flavour
/// a namespace uses.
pub fn rule_count(text: &str) -> usize {
    text.lines().filter(|l| l.starts_with("-A ")).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = "# Generated by iptables-save v1.8.9 on Thu Nov 26 15:28:18 2026
*filter
:INPUT ACCEPT [0:0]
:ISTIO_OUTPUT - [0:0]
-A INPUT -j ISTIO_OUTPUT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:ISTIO_INBOUND - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
:USER_CHAIN - [0:0]
-A PREROUTING -i eth9 -j RETURN
-A PREROUTING -p tcp -m tcp --dport 22 -j RETURN
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A OUTPUT -p udp -m udp --dport 9999 -j RETURN
-A OUTPUT -j ISTIO_OUTPUT
-A POSTROUTING -o eth0 -j MASQUERADE
-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A USER_CHAIN -m comment --comment \"a b\" -j RETURN
COMMIT
# Completed on Thu Nov 26 15:28:18 2026
";

    #[test]
    fn finds_our_chains_jumps_and_interface_returns_only() {
        let found = ours(&parse(SAVED));
        assert_eq!(found.len(), 1, "filter is not one of our tables: {found:?}");
        let nat = &found[0];
        assert_eq!(nat.table, "nat");
        assert_eq!(
            nat.chains,
            ["ISTIO_INBOUND", "ISTIO_OUTPUT", "ISTIO_REDIRECT"]
        );
        let builtin: Vec<(&str, usize)> = nat
            .builtin_rules
            .iter()
            .map(|(r, p)| (r.line.as_str(), *p))
            .collect();
        assert_eq!(
            builtin,
            [
                ("-A PREROUTING -i eth9 -j RETURN", 1),
                ("-A PREROUTING -p tcp -j ISTIO_INBOUND", 3),
                ("-A OUTPUT -j ISTIO_OUTPUT", 2),
            ]
        );
        assert_eq!(nat.chain_rules.len(), 3);
    }

    #[test]
    fn removal_deletes_rules_then_flushes_then_deletes_chains() {
        let nat = &ours(&parse(SAVED))[0];
        assert_eq!(
            nat.removal(),
            [
                "-D PREROUTING -i eth9 -j RETURN",
                "-D PREROUTING -p tcp -j ISTIO_INBOUND",
                "-D OUTPUT -j ISTIO_OUTPUT",
                "-F ISTIO_INBOUND",
                "-F ISTIO_OUTPUT",
                "-F ISTIO_REDIRECT",
                "-X ISTIO_INBOUND",
                "-X ISTIO_OUTPUT",
                "-X ISTIO_REDIRECT",
            ]
        );
    }

    #[test]
    fn reinstatement_puts_rules_back_at_their_positions() {
        let nat = &ours(&parse(SAVED))[0];
        let lines = nat.reinstatement();
        assert_eq!(
            &lines[..3],
            ["-N ISTIO_INBOUND", "-N ISTIO_OUTPUT", "-N ISTIO_REDIRECT"]
        );
        assert_eq!(
            lines[3],
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN"
        );
        assert_eq!(
            &lines[6..],
            [
                "-I PREROUTING 1 -i eth9 -j RETURN",
                "-I PREROUTING 3 -p tcp -j ISTIO_INBOUND",
                "-I OUTPUT 2 -j ISTIO_OUTPUT",
            ]
        );
    }

    #[test]
    fn nothing_of_ours_and_rule_counts() {
        let clean =
            "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp --dport 1 -j RETURN\nCOMMIT\n";
        assert!(!has_ours(&parse(clean)));
        assert!(has_ours(&parse(SAVED)));
        assert_eq!(rule_count(SAVED), 11);
        assert_eq!(rule_count(""), 0);
    }

    #[test]
    fn a_chain_of_ours_without_rules_still_counts() {
        let text = "*raw\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT_DNS - [0:0]\nCOMMIT\n";
        let found = ours(&parse(text));
        assert_eq!(
            found[0].removal(),
            ["-F ISTIO_OUTPUT_DNS", "-X ISTIO_OUTPUT_DNS"]
        );
    }
}
