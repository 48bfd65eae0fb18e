//! `check`: the kernel's features the eBPF backend uses, probed without changing anything.

use crate::{check, datapath::object, iptables::mode, sys::users::require_root};

use super::args::CheckArgs;

pub fn check(args: &CheckArgs) -> anyhow::Result<()> {
    require_root("it loads probe programs into the kernel (never attached)")?;
    let report = check::run(&check::Probes {
        own_programs: &object::verify_all,
        iptables: &mode::usable_here,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    // A script can ask `interceptor check && ...`.
    match report.missing() {
        None => Ok(()),
        Some(r) => anyhow::bail!(
            "the eBPF backend cannot run on this kernel: {} is missing",
            r.feature
        ),
    }
}
