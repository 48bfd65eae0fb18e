//! Decision events for `interceptor trace`. The hooks call these only after `tracing()` said
//! a tracer is attached: with none, a decision costs one more array lookup (which the verifier
//! inlines) and nothing else. An event the full ring buffer cannot take is counted in
//! `TRACE_LOST`, which the tracer reports.

use aya_ebpf::{
    bindings::{bpf_sk_lookup, bpf_sock},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_get_current_comm, bpf_get_current_uid_gid},
    },
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use interceptor_ebpf::{
    Counter,
    decision::{Connect, Decision, Proto, Verdict},
    family::{V4, V6},
    inbound::InboundRule,
    trace::{EventKind, Outcome, PROTO_TCP, PROTO_UDP, TRACE_RING_BYTES, TraceEvent, event_flags},
    wire::{
        RawIpv4, RawIpv6, port_from_sk_lookup_local, port_from_sk_lookup_remote,
        port_from_sock_dst, port_from_sock_src,
    },
};

use crate::{family::KernelFamily, linux::AF_INET};

/// Not 0 while a tracer is attached (it sets and clears it).
#[map]
pub static TRACE_CONTROL: Array<u32> = Array::with_max_entries(1, 0);

/// The events, for the tracer.
#[map]
pub static TRACE_EVENTS: RingBuf = RingBuf::with_byte_size(TRACE_RING_BYTES, 0);

/// Events the full ring buffer could not take, per CPU.
#[map]
pub static TRACE_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// 1 where the kernel lets cgroup socket hooks read the current task's pid and `comm` (Linux
/// 6.1); set at load. Where it is 0, the verifier never sees those helper calls.
#[unsafe(no_mangle)]
static TRACE_TASK: u8 = 0;

/// 1 when the programs were loaded with their event-writing code (`TRACE_BUILT_GLOBAL`); set
/// at load. Where it is 0, the verifier never sees that code.
#[unsafe(no_mangle)]
static TRACE_BUILT: u8 = 0;

/// Whether a tracer is attached (never, in programs loaded without the event-writing code).
#[inline(always)]
pub fn tracing() -> bool {
    // SAFETY: a plain read of a constant the loader fills in (volatile: not folded to 0).
    if unsafe { core::ptr::read_volatile(&TRACE_BUILT) } == 0 {
        return false;
    }
    TRACE_CONTROL.get(0).is_some_and(|on| *on != 0)
}

/// An address of either family in an event's 16-byte slot (IPv4 in the first word).
pub trait EventAddr: Copy {
    fn event_slot(self) -> RawIpv6;
}

impl EventAddr for RawIpv4 {
    #[inline(always)]
    fn event_slot(self) -> RawIpv6 {
        [self, 0, 0, 0]
    }
}

impl EventAddr for RawIpv6 {
    #[inline(always)]
    fn event_slot(self) -> RawIpv6 {
        self
    }
}

/// 4 or 6.
#[inline(always)]
fn version<F: KernelFamily>() -> u8 {
    if F::BITS == 32 { 4 } else { 6 }
}

/// Writes one event: `fill` sets what the hook knows on a zeroed event.
#[inline(always)]
fn emit(kind: EventKind, netns: u64, fill: impl FnOnce(&mut TraceEvent)) {
    let Some(mut entry) = TRACE_EVENTS.reserve::<TraceEvent>(0) else {
        if let Some(lost) = TRACE_LOST.get_ptr_mut(0) {
            // SAFETY: this CPU's slot, no concurrent writer.
            unsafe { *lost += 1 };
        }
        return;
    };
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let event = entry.write(TraceEvent {
        ktime_ns: now,
        netns,
        tgid: 0,
        uid: 0,
        gid: 0,
        counter: TraceEvent::NO_COUNTER,
        ifindex_or_errno: 0,
        kind: kind as u8,
        family: 0,
        proto: PROTO_TCP,
        outcome: 0,
        rule: 0,
        rule_arg: 0,
        flags: 0,
        _pad: 0,
        port: 0,
        dst_port: 0,
        src_port: 0,
        _pad2: [0; 6],
        dst: [0; 4],
        src: [0; 4],
        comm: [0; 16],
    });
    fill(event);
    entry.submit(0);
}

/// The calling process's pid and `comm` (and, with `ids`, its uid and gid), where the kernel
/// lets this hook read them.
#[inline(always)]
fn with_task(event: &mut TraceEvent, ids: bool) {
    // SAFETY: a plain read of a constant the loader fills in (volatile: not folded to 0).
    if unsafe { core::ptr::read_volatile(&TRACE_TASK) } == 0 {
        return;
    }
    event.tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the event's own 16-byte `comm`, valid for the call.
    unsafe { bpf_get_current_comm(event.comm.as_mut_ptr().cast(), event.comm.len() as u32) };
    if ids {
        // SAFETY: no arguments.
        let uid_gid = unsafe { bpf_get_current_uid_gid() };
        event.uid = uid_gid as u32;
        event.gid = (uid_gid >> 32) as u32;
    }
    event.flags |= event_flags::TASK;
}

/// An outbound decision of family `F`: every TCP connect; UDP (a connect or a datagram) only
/// to port 53 or when redirected, which is what DNS capture is about.
#[inline(always)]
pub fn outbound<F: KernelFamily>(netns: u64, conn: &Connect<F::Addr>, d: &Decision, mapped: bool)
where
    F::Addr: EventAddr,
{
    let udp = conn.proto == Proto::Udp;
    if udp && conn.dst_port != 53 && matches!(d.verdict, Verdict::Direct(_)) {
        return;
    }
    let kind = if udp {
        EventKind::Datagram
    } else {
        EventKind::Connect
    };
    emit(kind, netns, |e| {
        e.family = version::<F>();
        e.proto = if udp { PROTO_UDP } else { PROTO_TCP };
        e.uid = conn.uid;
        e.gid = conn.gid;
        (e.outcome, e.port, e.counter) = match d.verdict {
            Verdict::Direct(c) => (Outcome::Direct as u8, 0, c as u32),
            Verdict::Redirect { port, counter } => {
                (Outcome::Redirected as u8, port, counter as u32)
            }
        };
        (e.rule, e.rule_arg) = d.rule.code();
        e.dst_port = conn.dst_port;
        e.dst = conn.dst.event_slot();
        e.src = conn.src.event_slot();
        if mapped {
            e.flags |= event_flags::MAPPED;
        }
        with_task(e, false);
    });
}

/// An inbound decision that inbound capture had a say in (`sk_lookup`; no process context).
#[inline(always)]
pub fn inbound(
    netns: u64,
    l: &bpf_sk_lookup,
    rule: InboundRule,
    outcome: Outcome,
    counter: Counter,
) {
    emit(EventKind::Inbound, netns, |e| {
        let v4 = l.family == AF_INET;
        e.family = if v4 { 4 } else { 6 };
        e.outcome = outcome as u8;
        e.counter = counter as u32;
        e.rule = rule.code();
        e.ifindex_or_errno = l.ingress_ifindex;
        e.dst_port = port_from_sk_lookup_local(l.local_port);
        e.src_port = port_from_sk_lookup_remote(l.remote_port);
        (e.dst, e.src) = if v4 {
            (
                V4::lookup_local(l).event_slot(),
                V4::lookup_remote(l).event_slot(),
            )
        } else {
            (V6::lookup_local(l), V6::lookup_remote(l))
        };
    });
}

/// `getsockopt(SO_ORIGINAL_DST)` (or `IP6T_SO_ORIGINAL_DST`) on the proxy's socket `sk`
/// answered with `errno`: its own address (where the proxy accepted) and its peer's.
#[inline(always)]
pub fn orig_dst_failed<F: KernelFamily>(netns: u64, sk: &bpf_sock, errno: i32)
where
    F::Addr: EventAddr,
{
    if !tracing() {
        return;
    }
    emit(EventKind::OrigDstFailed, netns, |e| {
        e.family = version::<F>();
        e.proto = sk.protocol as u8;
        e.outcome = Outcome::Failed as u8;
        e.ifindex_or_errno = errno as u32;
        e.dst = F::sock_src(sk).event_slot();
        e.dst_port = port_from_sock_src(sk.src_port);
        e.src = F::sock_dst(sk).event_slot();
        e.src_port = port_from_sock_dst(sk.dst_port);
        with_task(e, true);
    });
}
