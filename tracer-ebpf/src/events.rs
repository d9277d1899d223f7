//! What every program sends to userspace: the ring buffer of events and the
//! per-CPU counters of what was seen, matched and lost.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use tracer_abi::*;

/// Every event, in the order each CPU sent it.
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Counters by `STAT_*`, per CPU; userspace adds the CPUs up.
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// Adds one to counter `stat` on this CPU.
#[inline(always)]
pub(crate) fn count(stat: u32) {
    if let Some(p) = STATS.get_ptr_mut(stat) {
        // SAFETY: `p` points at this CPU's counter in a per-CPU array: a valid,
        // aligned `u64` the map owns.
        unsafe { *p += 1 };
    }
}
