//! The LPM-trie entries of a plan (`-i`, `-x` and `-c` routes), by family.

use std::net::IpAddr;

use interceptor_ebpf::{
    CIDR4_KEY_PREFIX_BITS, CIDR6_KEY_PREFIX_BITS, Cidr4Key, Cidr6Key, CidrSet,
    wire::{raw_ipv4, raw_ipv6},
};

use super::{Cidr6Entry, CidrEntry};
use crate::config::Cidr;

/// The LPM-trie entries of a plan, by family.
#[derive(Default)]
pub struct LpmEntries {
    pub cidrs4: Vec<CidrEntry>,
    pub cidrs6: Vec<Cidr6Entry>,
}

impl LpmEntries {
    /// Adds the network `net`/`len` to the trie of its family.
    pub fn add(&mut self, rules: u32, set: CidrSet, net: IpAddr, len: u8, value: u8) {
        match net {
            IpAddr::V4(a) => self.cidrs4.push(CidrEntry {
                prefix_len: CIDR4_KEY_PREFIX_BITS + u32::from(len),
                key: Cidr4Key {
                    rules,
                    set: set as u32,
                    addr: raw_ipv4(a.octets()),
                },
                value,
            }),
            IpAddr::V6(a) => self.cidrs6.push(Cidr6Entry {
                prefix_len: CIDR6_KEY_PREFIX_BITS + u32::from(len),
                key: Cidr6Key {
                    rules,
                    set: set as u32,
                    addr: raw_ipv6(a.octets()),
                },
                value,
            }),
        }
    }

    /// Adds `-i`/`-x` ranges (host bits cleared); how many went to each family.
    pub fn add_cidrs(&mut self, rules: u32, set: CidrSet, list: &[Cidr]) -> (usize, usize) {
        let before = (self.cidrs4.len(), self.cidrs6.len());
        for c in list {
            self.add(rules, set, c.network(), c.prefix_len, 1);
        }
        (self.cidrs4.len() - before.0, self.cidrs6.len() - before.1)
    }
}
