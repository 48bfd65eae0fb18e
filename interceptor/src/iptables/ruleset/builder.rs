//! The rule list of both families, as istio-iptables' `IptablesRuleBuilder` keeps it:
//! `AppendRule` and `InsertRule` for both families, their `V4`/`V6` forms for one, and
//! `AppendVersionedRule` for a rule whose address differs by family.

use super::{FAMILIES, Family, Rule, RuleSet};

pub(super) struct Builder {
    v4: Vec<Rule>,
    v6: Vec<Rule>,
    ipv6: bool,
}

impl Builder {
    /// Without `ipv6`, IPv6 rules are dropped silently, as istio-iptables does.
    pub(super) fn new(ipv6: bool) -> Self {
        Builder {
            v4: Vec::new(),
            v6: Vec::new(),
            ipv6,
        }
    }

    /// `-A chain rule` in both families.
    pub(super) fn append(&mut self, table: &'static str, chain: &str, rule: impl AsRef<str>) {
        for family in FAMILIES {
            self.append_for(family, table, chain, rule.as_ref());
        }
    }

    /// `-A chain rule` in one family.
    pub(super) fn append_for(
        &mut self,
        family: Family,
        table: &'static str,
        chain: &str,
        rule: impl AsRef<str>,
    ) {
        self.push(family, table, chain, ["-A", chain], rule.as_ref());
    }

    /// `-I chain position rule` in both families.
    pub(super) fn insert(
        &mut self,
        table: &'static str,
        chain: &str,
        position: u32,
        rule: impl AsRef<str>,
    ) {
        for family in FAMILIES {
            self.insert_for(family, table, chain, position, rule.as_ref());
        }
    }

    /// `-I chain position rule` in one family.
    pub(super) fn insert_for(
        &mut self,
        family: Family,
        table: &'static str,
        chain: &str,
        position: u32,
        rule: impl AsRef<str>,
    ) {
        let position = position.to_string();
        self.push(
            family,
            table,
            chain,
            ["-I", chain, &position],
            rule.as_ref(),
        );
    }

    /// `-A chain rule(family)` in each family: the same rule with that family's address.
    pub(super) fn append_versioned(
        &mut self,
        table: &'static str,
        chain: &str,
        rule: impl Fn(Family) -> String,
    ) {
        for family in FAMILIES {
            self.append_for(family, table, chain, rule(family));
        }
    }

    fn push<const N: usize>(
        &mut self,
        family: Family,
        table: &'static str,
        chain: &str,
        command: [&str; N],
        rule: &str,
    ) {
        debug_assert!(
            !rule.is_empty() && !rule.contains("  "),
            "a rule with an empty value: {rule:?}"
        );
        let rules = match family {
            Family::V4 => &mut self.v4,
            Family::V6 if self.ipv6 => &mut self.v6,
            Family::V6 => return,
        };
        rules.push(Rule {
            table,
            chain: chain.to_string(),
            params: command
                .into_iter()
                .chain(rule.split(' '))
                .map(str::to_string)
                .collect(),
        });
    }

    pub(super) fn finish(self) -> RuleSet {
        RuleSet {
            v4: self.v4,
            v6: self.v6,
            ipv6: self.ipv6,
        }
    }
}
