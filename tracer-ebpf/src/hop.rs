//! `tracer trace`: follow the packets that match through the host, on
//! tracepoints only. A packet is marked by its `struct sk_buff` address
//! the first time it is seen matching (received or queued for a device);
//! every later tracepoint that sees that address reports a hop with the
//! same id, until it is consumed or dropped (then the mark goes).

use crate::config::{filter_matches, netns_allowed, setting};
use crate::events::{count, EVENTS};
use crate::kernel::{dev_ifindex, dev_netns, Direct};
use crate::packet;
use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map},
    maps::{LruHashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use tracer_abi::*;

/// Followed packets: skb address to id.
#[map]
static TRACKED: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// The flow of the packet at hand (the stack is too small for it and
/// the filter; the drop program has its own scratch).
#[map]
static HOPFLOW: PerCpuArray<Flow> = PerCpuArray::with_max_entries(1, 0);

/// The packet's mark goes when it is freed (its address may be reused).
///
/// # Safety
///
/// None for the caller: `skb` is only a number here (the map key).
#[inline(always)]
pub unsafe fn forget(skb: *const u8) {
    let _ = TRACKED.remove(&(skb as u64));
}

/// Whether `tracer trace` follows this packet: then its drop is reported
/// wherever it happens, so a trail begun in a watched namespace ends
/// with the drop even in one that is not watched.
///
/// # Safety
///
/// None for the caller: `skb` is only a number here (the map key).
#[inline(always)]
pub unsafe fn followed(skb: *const u8) -> bool {
    TRACKED.get(&(skb as u64)).is_some()
}

/// # Safety
///
/// `skb` and the device in `xmit` must be NULL or BTF-typed pointers
/// (tp_btf arguments): they are read with `Direct` (see `Mem::get`).
#[inline(always)]
unsafe fn on_hop(skb: *const u8, event: u32, may_start: bool, xmit: Option<(*const u8, u32)>) {
    if skb.is_null() || setting!(trace) == 0 {
        return;
    }
    let key = skb as u64;
    let m = packet::meta::<Direct>(skb);
    // net_dev_xmit fires after a veth has already moved the skb into its
    // peer: the sending device and length come from its arguments.
    let (dev, len) = match xmit {
        Some((d, l)) => (d, l),
        None => (m.dev, m.len),
    };
    let netns = if dev.is_null() {
        0
    } else {
        dev_netns::<Direct>(dev)
    };
    let Some(flow) = HOPFLOW.get_ptr_mut(0) else {
        return;
    };
    let flow = &mut *flow;
    crate::words::zero(flow);
    let id = match TRACKED.get(&key) {
        Some(id) => {
            let id = *id;
            packet::parse_with_mss::<Direct>(skb, &m, flow);
            id
        }
        None => {
            if !may_start || !netns_allowed(netns) {
                return;
            }
            if !packet::parse_with_mss::<Direct>(skb, &m, flow) || !filter_matches(flow) {
                return;
            }
            let id = bpf_ktime_get_ns();
            if TRACKED.insert(&key, &id, 0).is_err() {
                return;
            }
            id
        }
    };
    if event == HOP_CONSUME {
        forget(skb);
    }
    let Some(mut entry) = EVENTS.reserve::<HopEvent>(0) else {
        count(STAT_LOST);
        return;
    };
    let e = entry.as_mut_ptr();
    (*e).kind = KIND_HOP;
    (*e).event = event;
    (*e).ts_ns = bpf_ktime_get_ns();
    (*e).skb = key;
    (*e).id = id;
    (*e).netns = netns;
    (*e).ifindex = if dev.is_null() {
        0
    } else {
        dev_ifindex::<Direct>(dev)
    };
    (*e).len = len;
    (*e).cpu = bpf_get_smp_processor_id();
    crate::words::copy(&mut (*e).flow, flow);
    entry.submit(0);
}

#[btf_tracepoint(function = "netif_receive_skb")]
pub fn hop_receive(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    // SAFETY: `skb` is this tp_btf program's argument, a BTF-typed pointer.
    unsafe { on_hop(skb, HOP_RECEIVE, true, None) };
    0
}

#[btf_tracepoint(function = "net_dev_queue")]
pub fn hop_queue(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    // SAFETY: `skb` is this tp_btf program's argument, a BTF-typed pointer.
    unsafe { on_hop(skb, HOP_QUEUE, true, None) };
    0
}

#[btf_tracepoint(function = "net_dev_xmit")]
pub fn hop_xmit(ctx: BtfTracePointContext) -> i32 {
    // (skb, rc, dev, skb_len)
    let skb: *const u8 = ctx.arg(0);
    let dev: *const u8 = ctx.arg(2);
    let len: u32 = ctx.arg(3);
    // SAFETY: `skb` and `dev` are this tp_btf program's arguments, BTF-typed
    // pointers.
    unsafe { on_hop(skb, HOP_XMIT, false, Some((dev, len))) };
    0
}

#[btf_tracepoint(function = "consume_skb")]
pub fn hop_consume(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    // SAFETY: `skb` is this tp_btf program's argument, a BTF-typed pointer.
    unsafe { on_hop(skb, HOP_CONSUME, false, None) };
    0
}
