//! The per-pod rule sets as the decision functions read them: `PORT_SET`, and `CIDR4` or
//! `CIDR6` by family.

use aya_ebpf::maps::lpm_trie::Key;
use interceptor_ebpf::{
    CIDR_KEY_PREFIX_BITS, CidrKey, CidrSet, PortKey, PortSet, decision::RuleSets,
};

use crate::{family::KernelFamily, maps::PORT_SET};

/// The per-pod sets: `PORT_SET`, and `CIDR4` or `CIDR6`.
pub struct MapSets;

impl<F: KernelFamily> RuleSets<F> for MapSets {
    #[inline(always)]
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value, LLVM packs the key into a register before storing it: more \
                  instructions in every connect (measured with the xlated length)"
    )]
    fn has_port(&self, rules: u32, set: PortSet, port: u16) -> bool {
        let key = PortKey {
            rules,
            set: set as u16,
            port,
        };
        // SAFETY: only whether an entry exists is read.
        unsafe { PORT_SET.get(&key) }.is_some()
    }

    #[inline(always)]
    fn longest_match(&self, rules: u32, set: CidrSet, addr: F::Addr) -> Option<u8> {
        let key = CidrKey {
            rules,
            set: set as u32,
            addr,
        };
        F::cidrs()
            .get(Key::new(CIDR_KEY_PREFIX_BITS + F::BITS, key))
            .copied()
    }
}
