//! `sk_lookup` on the pod's network namespace: a new inbound TCP connection that `-b`/`-d`
//! capture is handed to the proxy's listener on `-z` before the kernel looks for a socket on its
//! destination port. The connection keeps its destination (as under TPROXY): the proxy's
//! accepted socket is bound to pod-ip:port, and nothing is rewritten afterwards.
//!
//! Listeners are registered per address family. Envoy listens on 0.0.0.0:15006 and, with dual
//! stack, on an IPv6-only [::]:15006 beside it: each family goes to its own. An IPv4 connection
//! with no IPv4 listener goes to the IPv6 one, which takes it if it is dual-stack (the kernel
//! refuses an IPv6-only socket, and the connection is then treated as having no listener).

use aya_ebpf::{
    bindings::{
        bpf_sk_lookup,
        sk_action::{SK_DROP, SK_PASS},
    },
    macros::sk_lookup,
    programs::SkLookupContext,
};
use interceptor_ebpf::{
    Counter, ListenerKey, PodConfig,
    family::{V4, V6},
    flags,
    inbound::{
        InboundDecision, InboundLookup, InboundRule, InboundVerdict, decide_inbound,
        decide_inbound_by_rule,
    },
    trace::Outcome,
    wire::port_from_sk_lookup_local,
};

use crate::{
    family::KernelFamily,
    linux::{AF_INET, AF_INET6, IPPROTO_TCP},
    maps::{INBOUND_LISTENERS, count, pod_config},
    rule_sets::MapSets,
    trace,
};

/// 0 in the node's shared program; the cookie of its pod in a copy of the program a pod has
/// for itself (another pod of the node has one of its addresses). Set at load time:
/// `sk_lookup` programs cannot call `bpf_get_netns_cookie`.
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
    let family = l.family;
    if l.protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6) {
        return SK_PASS;
    }
    // SAFETY: the kernel sets this member of the outer union ...
    let inner = unsafe { l.__bindgen_anon_1.__bindgen_anon_1 };
    // SAFETY: ... and `sk` of the inner one.
    if !unsafe { inner.sk }.is_null() {
        // Another program (this one of another build, during an upgrade) chose already.
        return SK_PASS;
    }
    let Some(netns) = pod_of(l, family) else {
        return SK_PASS;
    };
    let Some(cfg) = pod_config(netns) else {
        return SK_PASS;
    };
    // As in `connect`: the rule is worked out only for a tracer.
    let traced = trace::tracing();
    let decided = if family == AF_INET {
        decide::<V4>(cfg, l, traced)
    } else {
        decide::<V6>(cfg, l, traced)
    };
    let (action, outcome, counter) = match decided.verdict {
        InboundVerdict::Pass(None) => return SK_PASS,
        InboundVerdict::Pass(Some(reason)) => (SK_PASS, Outcome::Direct, reason),
        InboundVerdict::Steer => {
            let assigned =
                assign(ctx, netns, family) || (family == AF_INET && assign(ctx, netns, AF_INET6));
            if assigned {
                (SK_PASS, Outcome::Steered, Counter::InboundSteered)
            } else if cfg.has(flags::INBOUND_FAIL_CLOSED) {
                // No listener: the connection is refused (RST), never given to the application.
                let refused = Counter::InboundNoListenerRefused;
                (SK_DROP, Outcome::NoListenerRefused, refused)
            } else {
                let passed = Counter::InboundNoListenerOpen;
                (SK_PASS, Outcome::NoListenerPassed, passed)
            }
        }
    };
    count(cfg, counter);
    if traced {
        trace::inbound(netns, l, decided.rule, outcome, counter);
    }
    action
}

/// The pod whose namespace this program runs in: its own (a copy's constant), or the one
/// whose address the connection arrives for. A namespace's sk_lookup link exists only for a
/// registered pod, and an address is registered for one pod only (a pod whose address another
/// pod has gets a copy of its own): so a connection is only ever steered within its namespace.
#[inline(always)]
fn pod_of(l: &bpf_sk_lookup, family: u32) -> Option<u64> {
    // SAFETY: a plain read of a constant the loader fills in (volatile: not folded to 0).
    let own = unsafe { core::ptr::read_volatile(&POD_NETNS_COOKIE) };
    if own != 0 {
        return Some(own);
    }
    if family == AF_INET {
        owner::<V4>(l)
    } else {
        owner::<V6>(l)
    }
}

/// The pod with the connection's local address, in family `F`.
#[inline(always)]
fn owner<F: KernelFamily>(l: &bpf_sk_lookup) -> Option<u64> {
    // SAFETY: the value is copied out at once.
    unsafe { F::pod_addrs().get(F::lookup_local(l)) }.copied()
}

/// The decision on the connection, in family `F`, and (for a tracer) the rule that decided.
#[inline(always)]
fn decide<F: KernelFamily>(cfg: &PodConfig, l: &bpf_sk_lookup, traced: bool) -> InboundDecision {
    let lookup = InboundLookup {
        port: port_from_sk_lookup_local(l.local_port),
        ifindex: l.ingress_ifindex,
        remote: F::lookup_remote(l),
    };
    if traced {
        return decide_inbound_by_rule::<F>(cfg, &lookup, &MapSets);
    }
    InboundDecision {
        verdict: decide_inbound::<F>(cfg, &lookup, &MapSets),
        rule: InboundRule::NotCaptured, // nobody asks
    }
}

/// Hands the connection to the pod's listener of `family`; false when there is none or the
/// kernel refuses it.
#[inline(always)]
fn assign(ctx: &SkLookupContext, netns: u64, family: u32) -> bool {
    let key = ListenerKey {
        netns,
        family,
        _pad: 0,
    };
    INBOUND_LISTENERS.redirect_sk_lookup(ctx, key, 0).is_ok()
}
