//! The iptables flavour (legacy x_tables or nf_tables) and its binaries, and `auto`: use the
//! flavour the namespace already uses, as istio-iptables and Kubernetes' iptables-wrapper do.

use super::{Family, save};
use crate::pod::{Netns, exec};

/// Which flavour to write with (`--iptables-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The one the namespace already uses (more rules wins), else nft, else legacy.
    Auto,
    Legacy,
    Nft,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    Legacy,
    Nft,
}

impl Flavour {
    /// Those `clean` removes rules of in `mode`: with `auto`, both.
    pub fn cleaned_by(mode: Mode) -> &'static [Flavour] {
        match mode {
            Mode::Auto => &Flavour::ALL,
            Mode::Legacy => &[Flavour::Legacy],
            Mode::Nft => &[Flavour::Nft],
        }
    }

    pub const ALL: [Flavour; 2] = [Flavour::Legacy, Flavour::Nft];

    pub const fn name(self) -> &'static str {
        match self {
            Flavour::Legacy => "legacy",
            Flavour::Nft => "nft",
        }
    }

    /// `iptables-legacy-save`, `ip6tables-nft-restore`, ...
    pub fn binary(self, family: Family, tool: Tool) -> String {
        let tool = match tool {
            Tool::Save => "-save",
            Tool::Restore => "-restore",
        };
        let prefix = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        format!("{prefix}-{}{tool}", self.name())
    }

    pub fn other(self) -> Flavour {
        match self {
            Flavour::Legacy => Flavour::Nft,
            Flavour::Nft => Flavour::Legacy,
        }
    }
}

impl std::fmt::Display for Flavour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    Save,
    Restore,
}

/// The `auto` rule, on the IPv4 rule counts of each flavour (`None`: its binary is missing
/// or does not work here): the flavour with more rules; on a tie nft, else legacy.
pub fn choose(legacy_rules: Option<usize>, nft_rules: Option<usize>) -> Option<Flavour> {
    match (legacy_rules, nft_rules) {
        (Some(l), Some(n)) if l > n => Some(Flavour::Legacy),
        (_, Some(_)) => Some(Flavour::Nft),
        (Some(_), None) => Some(Flavour::Legacy),
        (None, None) => None,
    }
}

/// Whether the tools of `flavour` (`legacy` or `nft`) work in the caller's network namespace:
/// `iptables-<flavour>-save` runs and succeeds. Read only: without `-t`, `-save` dumps the
/// tables that exist and creates none (asking for a table by name would create it).
pub fn usable_here(flavour: &str) -> Result<(), String> {
    let program = format!("iptables-{flavour}-save");
    match std::process::Command::new(&program)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "{program}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("{program}: {e}")),
    }
}

/// The flavour to write with in `netns`.
pub fn resolve(mode: Mode, netns: &Netns) -> anyhow::Result<Flavour> {
    match mode {
        Mode::Legacy => Ok(Flavour::Legacy),
        Mode::Nft => Ok(Flavour::Nft),
        Mode::Auto => {
            let count = |f: Flavour| -> Option<usize> {
                let program = f.binary(Family::V4, Tool::Save);
                match exec::run(netns, &program, &[], None) {
                    Ok(out) if out.status.success() => Some(save::rule_count(&out.stdout)),
                    Ok(out) => {
                        tracing::debug!(%program, stderr = %out.stderr.trim(), "not usable");
                        None
                    }
                    Err(e) => {
                        tracing::debug!(%program, "not usable: {e:#}");
                        None
                    }
                }
            };
            let (legacy, nft) = (count(Flavour::Legacy), count(Flavour::Nft));
            let chosen = choose(legacy, nft).ok_or_else(|| {
                anyhow::anyhow!(
                    "--iptables-mode auto: neither iptables-legacy-save nor iptables-nft-save \
                     works here (install iptables 1.8 or later)"
                )
            })?;
            tracing::debug!(?legacy, ?nft, "iptables flavour: {chosen}");
            Ok(chosen)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries() {
        assert_eq!(
            Flavour::Legacy.binary(Family::V4, Tool::Save),
            "iptables-legacy-save"
        );
        assert_eq!(
            Flavour::Nft.binary(Family::V6, Tool::Restore),
            "ip6tables-nft-restore"
        );
    }

    #[test]
    fn auto_prefers_the_flavour_in_use_then_nft() {
        assert_eq!(choose(Some(12), Some(0)), Some(Flavour::Legacy));
        assert_eq!(choose(Some(0), Some(12)), Some(Flavour::Nft));
        assert_eq!(choose(Some(0), Some(0)), Some(Flavour::Nft));
        assert_eq!(choose(Some(3), Some(3)), Some(Flavour::Nft));
        assert_eq!(choose(Some(0), None), Some(Flavour::Legacy));
        assert_eq!(choose(None, Some(0)), Some(Flavour::Nft));
        assert_eq!(choose(None, None), None);
    }
}
