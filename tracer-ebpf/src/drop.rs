//! The drop programs: every `skb:kfree_skb`, with its reason (tp_btf; raw_tp
//! and the classic tracepoint are fallbacks for kernels where tp_btf won't
//! load), filtered, aggregated in a storm, joined to its route lookups and
//! sent as a `DropEvent`.

use crate::aggregate::aggregated;
use crate::config::{filter_matches, netns_allowed, setting};
use crate::events::{count, EVENTS};
use crate::kernel::{dev_ifindex, dev_mtu, dev_netns, sk_netns, Direct, Mem, Probe};
use crate::noise::is_noise;
use crate::qdisc::qdisc_reason_of;
use crate::route::route_for;
use crate::scratch::{coarse_ns, SCRATCH};
use crate::{extra, off, packet};
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel_buf, generated,
    },
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::Array,
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
    EbpfContext,
};
use tracer_abi::*;

/// Reasons the user included or excluded (`REASON_*`), indexed by reason.
#[map]
static REASONS: Array<u8> = Array::with_max_entries(REASON_SLOTS, 0);

/// How soon after a drop with a netns one without may inherit it. The
/// head and the rest of a fragment queue are freed microseconds apart on
/// hardware (an ICMP error is sent in between); 20 ms leaves room for a
/// slow or emulated CPU and for the coarse clock (`coarse_ns`), and the
/// same CPU and ingress device are required.
const INHERIT_NETNS_NS: u64 = 20_000_000;

#[btf_tracepoint(function = "kfree_skb")]
pub fn drop_btf(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    let reason: u32 = ctx.arg(2);
    // SAFETY: `skb` is this tp_btf program's argument, a BTF-typed pointer,
    // which `Direct` may load through.
    unsafe { on_drop::<Direct, _>(&ctx, skb, location, reason) };
    0
}

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn drop_raw(ctx: RawTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    let reason: u32 = ctx.arg(2);
    // SAFETY: `Probe` reads through bpf_probe_read_kernel, sound for any
    // address.
    unsafe { on_drop::<Probe, _>(&ctx, skb, location, reason) };
    0
}

/// `kfree_skb(skb, location)` before 5.17: no reason argument exists, and
/// reading one would fail verification, so these programs pass 0 (the
/// kernel never uses it for a drop) and userspace says the reason is unknown.
#[btf_tracepoint(function = "kfree_skb")]
pub fn drop_btf_noreason(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    // SAFETY: `skb` is this tp_btf program's argument, a BTF-typed pointer,
    // which `Direct` may load through.
    unsafe { on_drop::<Direct, _>(&ctx, skb, location, 0) };
    0
}

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn drop_raw_noreason(ctx: RawTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    // SAFETY: `Probe` reads through bpf_probe_read_kernel, sound for any
    // address.
    unsafe { on_drop::<Probe, _>(&ctx, skb, location, 0) };
    0
}

#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn drop_classic(ctx: TracePointContext) -> i32 {
    // SAFETY: `read_at` probe-reads the tracepoint record, sound for any
    // offset, and `on_drop::<Probe>` takes any address.
    unsafe {
        // The record layout differs across kernels; its offsets come from
        // the tracefs format file.
        let skb = ctx.read_at::<u64>(off!(tp_skbaddr) as usize).unwrap_or(0);
        let location = ctx.read_at::<u64>(off!(tp_location) as usize).unwrap_or(0);
        // Before 5.17 the record has no reason field (offset missing).
        let reason = match off!(tp_reason) {
            NO_OFFSET => 0,
            o => ctx.read_at::<u32>(o as usize).unwrap_or(0),
        };
        on_drop::<Probe, _>(&ctx, skb as *const u8, location, reason);
    }
    0
}

/// # Safety
///
/// `skb` must be NULL or a `struct sk_buff *` that `M` can read (see
/// `Mem::get`): the tp_btf argument with `Direct`, any value with `Probe`.
#[inline(always)]
unsafe fn on_drop<M: Mem, C: EbpfContext>(ctx: &C, skb: *const u8, location: u64, reason: u32) {
    if skb.is_null() {
        return;
    }
    count(STAT_DROPS_SEEN);

    // Cheapest filters first: reason, netns and device need no packet read.
    if setting!(reason_include) != 0 || setting!(reason_exclude) != 0 {
        // Out of range (a subsystem reason) is neither included nor excluded.
        let mark = REASONS.get(reason).copied().unwrap_or(0);
        if mark == REASON_EXCLUDE || (setting!(reason_include) != 0 && mark != REASON_INCLUDE) {
            return;
        }
    }
    // After the filters, which take the reason kfree_skb gives.
    let reason = if setting!(qdisc_drop) != 0 && reason == setting!(qdisc_drop) {
        qdisc_reason_of(skb, reason)
    } else {
        reason
    };
    let mut m = packet::meta::<M>(skb);
    // Whether the packet has a socket and no device, decided here, where
    // both pointers are tested anyway: the noise check testing them again
    // split the verifier's paths (null or not) for the rest of the
    // program. It walked 74.6k instructions for `watch` on 6.18, 54k
    // since (issue 22: the verifier is most of start-up). A fragment whose
    // device the block below clears is no such packet: it is IP.
    let (mut netns, socket_only) = if !m.dev.is_null() {
        (dev_netns::<M>(m.dev), false)
    } else if !m.sk.is_null() {
        (sk_netns(m.sk), true)
    } else {
        (0, false)
    };
    let iif = M::get::<i32>(skb, off!(skb_iif)).unwrap_or(0);
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let now = coarse_ns(&mut *scratch);
    // Fragments waiting for reassembly share `skb->dev` with the
    // reassembly queue's tree links or their offset (unions), so a
    // reassembly timeout frees them with no device, or a pointer that is
    // not one. The kernel frees the queue's head first, with its device
    // set, then the rest on the same CPU: they inherit the head's netns.
    {
        let sc = &mut *scratch;
        let frag = reason != 0 && reason == setting!(frag_reason);
        let follows =
            iif != 0 && sc.last_iif == iif && now.wrapping_sub(sc.last_ts) < INHERIT_NETNS_NS;
        // Before 6.15 or so the queue purge frees the rest without a
        // reason (NOT_SPECIFIED), right after the head.
        let purged = frag || (reason != 0 && reason == setting!(noise.not_specified));
        if purged && follows && sc.last_frag != 0 {
            netns = sc.last_netns;
            m.dev = core::ptr::null();
        } else if netns == 0 && follows {
            netns = sc.last_netns;
        }
        if netns != 0 {
            sc.last_netns = netns;
            sc.last_iif = iif;
            sc.last_ts = now;
            sc.last_frag = (frag || (purged && sc.last_frag != 0 && follows)) as u32;
        }
    }
    // A packet `tracer trace` follows ends its trail where it dies: in a
    // namespace or on a device not watched, and after NAT rewrote what
    // the expression matched, too.
    let followed = setting!(trace) != 0 && crate::hop::followed(skb);
    if !followed && !netns_allowed(netns) {
        return;
    }
    let ifindex = if m.dev.is_null() {
        0
    } else {
        dev_ifindex::<M>(m.dev)
    };
    let want_if = setting!(ifindex) as i32;
    if !followed && want_if != 0 && ifindex != want_if && iif != want_if {
        return;
    }

    let flow = &mut (*scratch).flow;
    crate::words::zero(flow);
    let mut opts = packet::SynOpts::NONE;
    packet::parse::<M>(skb, &m, flow, &mut opts);
    if setting!(hide_noise) != 0 && is_noise(reason, flow, m.l3_proto, socket_only) {
        return;
    }
    if !followed && !filter_matches(flow) {
        return;
    }
    // An aggregated drop is counted once, under STAT_AGGREGATED; userspace
    // adds the two for `drops_matched`. One counter update per storm drop.
    if setting!(aggregate) != 0 && aggregated(scratch, now, reason, location, netns, ifindex, iif) {
        return;
    }
    // `aggregated` borrowed the whole slot: borrow the flow anew rather
    // than use the earlier borrow after it.
    let flow = &(*scratch).flow;
    count(STAT_DROPS_MATCHED);

    let now = bpf_ktime_get_ns();
    // Stack and bytes, when asked for: sent just before the event.
    if setting!(extra) != 0 {
        extra::emit::<M, C>(ctx, skb, &m, now);
    }
    let Some(mut entry) = EVENTS.reserve::<DropEvent>(0) else {
        // Never lose an event silently: userspace reports this count.
        count(STAT_LOST);
        return;
    };
    let e = entry.as_mut_ptr();
    (*e).kind = KIND_DROP;
    (*e).cpu = bpf_get_smp_processor_id();
    (*e).ts_ns = now;
    (*e).location = location;
    (*e).reason = reason;
    (*e).netns = netns;
    (*e).ifindex = ifindex;
    (*e).ingress_ifindex = iif;
    (*e).len = m.len;
    (*e).pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    (*e).l3_proto = m.l3_proto;
    let (gso_size, gso_segs) = if m.head.is_null() {
        (0, 0)
    } else {
        packet::gso::<M>(skb, m.head)
    };
    (*e).gso_size = gso_size;
    (*e).gso_segs = gso_segs;
    (*e)._pad = 0;
    (*e).dev_mtu = if m.dev.is_null() {
        0
    } else {
        dev_mtu::<M>(m.dev)
    };
    // Straight into the event: the helper writes all 16 bytes (zeros
    // when it fails), and aya's wrapper zeroes a copy first (see `words`).
    generated::bpf_get_current_comm((*e).comm.as_mut_ptr().cast(), 16);
    crate::words::copy(&mut (*e).flow, flow);
    crate::words::zero(&mut (*e).route_fwd);
    crate::words::zero(&mut (*e).route_rev);
    if setting!(routes) != 0 && flow.family != FAMILY_NONE {
        let key = &mut (*scratch).key;
        key.netns = netns;
        key.family = flow.family as u32;
        key.dst = flow.dst;
        key.src = flow.src;
        route_for(key, &mut (*e).route_fwd);
        key.netns = netns;
        key.dst = flow.src;
        key.src = flow.dst;
        route_for(key, &mut (*e).route_rev);
    }
    packet::nat(skb, &mut (*e).orig);
    // A SYN's options as bytes: userspace reads its MSS (see `SynOpts`).
    // A failed read leaves zeros, as the helper clears its buffer.
    (*e).tcp_opts_len = 0;
    if opts.at.is_null() {
        crate::words::zero(&mut (*e).tcp_opts);
    } else if bpf_probe_read_kernel_buf(opts.at, &mut (*e).tcp_opts.0).is_ok() {
        (*e).tcp_opts_len = opts.len as u8;
    }
    entry.submit(0);
}
