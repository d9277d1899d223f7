//! The finer reason behind a QDISC_DROP, caught on `qdisc:qdisc_drop` just
//! before the qdisc frees the skb, for the drop program to report.

use aya_ebpf::{
    macros::{btf_tracepoint, map},
    maps::PerCpuArray,
    programs::BtfTracePointContext,
};

/// The finer reason `qdisc:qdisc_drop` gave the skb it is about to free
/// with QDISC_DROP (kernels after 6.18; see `Config::qdisc_drop`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct QdiscReason {
    skb: u64,
    reason: u32,
    _pad: u32,
}

/// One slot per CPU: `__tcf_kfree_skb_list` fires qdisc_drop and then
/// kfree_skb for each skb in turn, on one CPU, so the last one is the one.
#[map]
static QDISC_REASON: PerCpuArray<QdiscReason> = PerCpuArray::with_max_entries(1, 0);

/// `qdisc_drop(qdisc, txq, dev, skb, enum qdisc_drop_reason reason)`.
#[btf_tracepoint(function = "qdisc_drop")]
pub fn qdisc_reason(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(3);
    let reason: u32 = ctx.arg(4);
    if let Some(p) = QDISC_REASON.get_ptr_mut(0) {
        // SAFETY: `p` points at this CPU's slot of a per-CPU array: valid and aligned,
        // and this program holds no other reference to it.
        unsafe {
            *p = QdiscReason {
                skb,
                reason,
                _pad: 0,
            }
        };
    }
    0
}

/// A QDISC_DROP's finer reason, if qdisc_drop just gave this skb one; the
/// slot is cleared so that a later free of the same address cannot take it.
#[inline(always)]
pub(crate) fn qdisc_reason_of(skb: *const u8, reason: u32) -> u32 {
    if let Some(p) = QDISC_REASON.get_ptr_mut(0) {
        // SAFETY: `p` points at this CPU's slot of a per-CPU array: valid and aligned,
        // and this program holds no other reference to it.
        let slot = unsafe { &mut *p };
        if slot.skb == skb as u64 && slot.reason != 0 {
            slot.skb = 0;
            return slot.reason;
        }
    }
    reason
}
