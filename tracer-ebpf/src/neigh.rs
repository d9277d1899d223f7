//! Neighbour events (`neigh_*`): ARP/ND entries that are resolving or have
//! failed.

use crate::config::netns_allowed;
use crate::events::{count, EVENTS};
use crate::kernel::{dev_ifindex, dev_netns, read, Probe};
use crate::off;
use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use tracer_abi::*;

/// `neigh_timer_handler(struct neighbour *, int)`: a resolving entry's
/// retry timer, where it turns FAILED.
#[btf_tracepoint(function = "neigh_timer_handler")]
pub fn neigh_timer(ctx: BtfTracePointContext) -> i32 {
    let n: *const u8 = ctx.arg(0);
    // SAFETY: `on_neigh` only probe-reads `n`, sound for any address.
    unsafe { on_neigh(n) };
    0
}

/// `neigh_event_send_done(struct neighbour *, int)`: a packet waits for an
/// entry that is not resolved yet (it becomes INCOMPLETE).
#[btf_tracepoint(function = "neigh_event_send_done")]
pub fn neigh_send(ctx: BtfTracePointContext) -> i32 {
    let n: *const u8 = ctx.arg(0);
    // SAFETY: `on_neigh` only probe-reads `n`, sound for any address.
    unsafe { on_neigh(n) };
    0
}

/// # Safety
///
/// None for the caller: the neighbour and what it points to are only
/// probe-read, so any `n` is sound; a wrong one gives wrong fields.
#[inline(always)]
unsafe fn on_neigh(n: *const u8) {
    let state = read::<u8>(n, off!(neigh_state)).unwrap_or(0);
    if state != NUD_INCOMPLETE && state != NUD_FAILED {
        return;
    }
    let dev = read::<*const u8>(n, off!(neigh_dev)).unwrap_or(core::ptr::null());
    if dev.is_null() {
        return;
    }
    let netns = dev_netns::<Probe>(dev);
    if !netns_allowed(netns) {
        return;
    }
    let tbl = read::<*const u8>(n, off!(neigh_tbl)).unwrap_or(core::ptr::null());
    let family = match read::<i32>(tbl, off!(tbl_family)).unwrap_or(0) {
        2 => FAMILY_V4,
        10 => FAMILY_V6,
        _ => return,
    };
    count(STAT_NEIGH);
    let Some(mut entry) = EVENTS.reserve::<NeighEvent>(0) else {
        count(STAT_LOST);
        return;
    };
    let e = entry.as_mut_ptr();
    (*e).kind = KIND_NEIGH;
    (*e).cpu = bpf_get_smp_processor_id();
    (*e).ts_ns = bpf_ktime_get_ns();
    (*e).netns = netns;
    (*e).ifindex = dev_ifindex::<Probe>(dev);
    (*e).family = family;
    (*e).state = state;
    (*e)._pad = 0;
    (*e)._pad2 = 0;
    // Straight into the event, zeroed first (see `words`): a stack copy
    // of `[0u8; 16]` was a memset call.
    let addr = &mut (*e).addr;
    crate::words::zero(addr);
    let len = if family == FAMILY_V4 { 4 } else { 16 };
    crate::kernel::read_into(n, off!(neigh_key), &mut addr[..len]);
    entry.submit(0);
}
