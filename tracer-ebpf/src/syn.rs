//! The SYN check (`syn_xmit` on `net_dev_start_xmit`): SYNs that leave a
//! device with an MSS its MTU cannot carry.

use crate::config::{filter_matches, netns_allowed};
use crate::events::{count, EVENTS};
use crate::kernel::{dev_ifindex, dev_mtu, dev_netns, Direct, Mem};
use crate::scratch::SCRATCH;
use crate::{off, packet};
use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map},
    maps::Array,
    programs::BtfTracePointContext,
};
use tracer_abi::*;

/// `net_dev_start_xmit(const struct sk_buff *, const struct net_device *)`:
/// flags SYNs whose MSS the egress MTU cannot carry. Runs for every
/// transmitted packet, so it bails out on length before reading headers.
#[btf_tracepoint(function = "net_dev_start_xmit")]
pub fn syn_xmit(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let dev: *const u8 = ctx.arg(1);
    // SAFETY: `skb` and `dev` are this tp_btf program's arguments, BTF-typed
    // pointers.
    unsafe { on_xmit(skb, dev) };
    0
}

/// The largest MTU of a device (loopback aside) that transmitted a packet
/// short enough to be a SYN, since the program was loaded.
#[map]
static MTU_SEEN: Array<u32> = Array::with_max_entries(1, 0);

/// # Safety
///
/// `skb` and `dev` must be NULL or BTF-typed pointers to a `struct
/// sk_buff` and a `struct net_device` (tp_btf arguments): they are read
/// with `Direct` (see `Mem::get`).
#[inline(always)]
unsafe fn on_xmit(skb: *const u8, dev: *const u8) {
    // A SYN is at most 14 + 60 (IPv6 with a few options) + 60 bytes.
    // Runs for every transmitted packet while attached (userspace parks it
    // where no connected devices mix MTUs): a long one costs one load.
    let len = Direct::get::<u32>(skb, off!(skb_len)).unwrap_or(u32::MAX);
    if len > 160 {
        return;
    }
    // A SYN's MSS is sized for the device that sent it, and that device
    // transmitted it through here first (in whichever netns). So a device
    // whose MTU is at least the largest seen so far cannot be outgrown by
    // a SYN of this host: it returns before any packet read, which is what
    // this program costs per small packet. On an overlay host the 1500
    // side skips and the 1450 uplink is still checked. Loopback is left
    // out: its 64k MTU would make every other device look small. What this
    // gives up: a SYN from a remote peer whose MSS is above every local
    // MTU (jumbo frames beyond a 1500 hop of this host).
    let mtu = dev_mtu::<Direct>(dev);
    if mtu != 0 {
        if dev_ifindex::<Direct>(dev) == LOOPBACK_IFINDEX {
            return;
        }
        if let Some(seen) = MTU_SEEN.get_ptr_mut(0) {
            if mtu >= *seen {
                if mtu > *seen {
                    *seen = mtu;
                }
                return;
            }
        }
    }
    if !packet::maybe_syn::<Direct>(skb) {
        return;
    }
    let m = packet::meta::<Direct>(skb);
    // The flow lives in this CPU's scratch slot: the stack has no room
    // for it beside the header parse and the filter.
    let Some(sc) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let flow = &mut (*sc).flow;
    crate::words::zero(flow);
    if !packet::parse_with_mss::<Direct>(skb, &m, flow)
        || flow.proto != IPPROTO_TCP
        || flow.mss == 0
    {
        return;
    }
    let overhead: u32 = if flow.family == FAMILY_V6 { 60 } else { 40 };
    if flow.mss as u32 + overhead <= mtu {
        return;
    }
    let netns = dev_netns::<Direct>(dev);
    if !netns_allowed(netns) {
        return;
    }
    if !filter_matches(flow) {
        return;
    }
    count(STAT_SYNS_FLAGGED);
    let Some(mut entry) = EVENTS.reserve::<SynEvent>(0) else {
        count(STAT_LOST);
        return;
    };
    let e = entry.as_mut_ptr();
    (*e).kind = KIND_SYN;
    (*e).cpu = bpf_get_smp_processor_id();
    (*e).ts_ns = bpf_ktime_get_ns();
    (*e).netns = netns;
    (*e).ifindex = dev_ifindex::<Direct>(dev);
    (*e).ingress_ifindex = Direct::get::<i32>(skb, off!(skb_iif)).unwrap_or(0);
    (*e).mtu = mtu;
    crate::words::copy(&mut (*e).flow, flow);
    // Only flagged SYNs get here (rare): the conntrack reads cost nothing
    // per packet.
    packet::nat(skb, &mut (*e).orig);
    (*e)._pad = 0;
    entry.submit(0);
}
