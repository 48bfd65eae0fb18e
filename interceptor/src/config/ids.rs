//! User and group names (`-u istio-proxy`, owner groups) to ids: injected into `resolve`, so
//! that the rest of `config` stays pure; `SystemIds` is this host's passwd and group databases.

use super::{InterceptConfig, RawOptions, defaults};
use crate::{error::ConfigError, sys};

/// Resolves user and group names (`-u istio-proxy`) to ids.
pub trait IdResolver {
    fn uid_of(&self, user: &str) -> Option<u32>;
    fn gid_of(&self, group: &str) -> Option<u32>;
}

/// Knows no user or group: names are errors, numbers are taken as they are (tests).
#[cfg(test)]
pub struct NoUsers;

#[cfg(test)]
impl IdResolver for NoUsers {
    fn uid_of(&self, _: &str) -> Option<u32> {
        None
    }
    fn gid_of(&self, _: &str) -> Option<u32> {
        None
    }
}

/// The passwd and group databases of this host.
pub struct SystemIds;

impl IdResolver for SystemIds {
    fn uid_of(&self, user: &str) -> Option<u32> {
        sys::users::uid_of(user)
    }
    fn gid_of(&self, group: &str) -> Option<u32> {
        sys::users::gid_of(group)
    }
}

impl RawOptions {
    /// `resolve` with this host's users and groups, and `ENVOY_USER` from the environment
    /// (whose uid is the default `-u`), as istio-iptables does.
    pub fn resolve_here(&self) -> Result<InterceptConfig, ConfigError> {
        let envoy_user =
            std::env::var("ENVOY_USER").unwrap_or_else(|_| defaults::ENVOY_USER.to_string());
        self.resolve(&SystemIds, &envoy_user)
    }
}
