//! `sk_lookup` on the pod's network namespace: a new inbound TCP connection that `-b`/`-d`
//! capture is handed to the proxy's listener on `-z` before the kernel looks for a socket on its
//! destination port. The connection keeps its destination (as under TPROXY): the proxy's
//! accepted socket is bound to pod-ip:port, and nothing is rewritten afterwards.

use aya_ebpf::{macros::sk_lookup, programs::SkLookupContext};
use interceptor_ebpf::{
    Counter, ListenerKey,
    inbound::{InboundLookup, InboundVerdict, decide_inbound},
    wire::port_from_sk_lookup_local,
};

use crate::maps::{INBOUND_LISTENERS, MapSets, count, pod_config};

const AF_INET: u32 = 2;
const IPPROTO_TCP: u32 = 6;
const SK_DROP: u32 = 0;
const SK_PASS: u32 = 1;

/// The cookie of the namespace this copy of the program is attached to, set at load time
/// (`sk_lookup` programs cannot call `bpf_get_netns_cookie`).
#[unsafe(no_mangle)]
static POD_NETNS_COOKIE: u64 = 0;

#[sk_lookup]
pub fn steer_inbound(ctx: SkLookupContext) -> u32 {
    steer(&ctx)
}

#[inline(always)]
fn steer(ctx: &SkLookupContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    let l = unsafe { &*ctx.lookup };
    if l.protocol != IPPROTO_TCP || l.family != AF_INET {
        return SK_PASS;
    }
    // SAFETY: a plain read of a constant the loader fills in (volatile: not folded to 0).
    let netns = unsafe { core::ptr::read_volatile(&POD_NETNS_COOKIE) };
    let Some(cfg) = pod_config(netns) else {
        return SK_PASS;
    };
    let lookup = InboundLookup {
        port: port_from_sk_lookup_local(l.local_port),
        ifindex: l.ingress_ifindex,
        remote: l.remote_ip4,
    };
    match decide_inbound(cfg, &lookup, &MapSets) {
        InboundVerdict::Pass(None) => SK_PASS,
        InboundVerdict::Pass(Some(reason)) => {
            count(cfg, reason);
            SK_PASS
        }
        InboundVerdict::Steer => {
            let key = ListenerKey {
                netns,
                family: AF_INET,
                _pad: 0,
            };
            if INBOUND_LISTENERS.redirect_sk_lookup(ctx, key, 0).is_ok() {
                count(cfg, Counter::InboundSteered);
                SK_PASS
            } else if cfg.has(interceptor_ebpf::flags::INBOUND_FAIL_CLOSED) {
                // No listener: the connection is refused (RST), never given to the application.
                count(cfg, Counter::InboundNoListenerRefused);
                SK_DROP
            } else {
                count(cfg, Counter::InboundNoListenerOpen);
                SK_PASS
            }
        }
    }
}
