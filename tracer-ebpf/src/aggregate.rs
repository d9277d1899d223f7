//! Storm aggregation: past a drop rate, drops are counted by key in the
//! kernel instead of each being sent.

use crate::config::setting;
use crate::events::count;
use crate::scratch::Scratch;
use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap},
};
use tracer_abi::*;

/// The first place a storm's key is counted (see `AggSlot`).
#[map]
static AGGSLOTS: PerCpuArray<AggSlot> = PerCpuArray::with_max_entries(AGG_SLOTS, 0);

/// Drops counted by key during a storm (see `aggregated`).
#[map]
static AGG: PerCpuHashMap<AggKey, AggVal> = PerCpuHashMap::with_max_entries(AGG_KEYS, 0);

/// During a storm, counts the drop under its key instead of sending it,
/// once the key's first `agg_per_key` events of this interval went out.
/// A CPU storms when it matched more than `agg_burst` drops in one
/// `AGG_WINDOW_NS`, and keeps aggregating for `AGG_HOLD_NS` after: the ring
/// buffer and userspace then see a bounded rate whatever the drop rate, and
/// every drop is still counted exactly (event or key count).
///
/// # Safety
///
/// `scratch` must point at this CPU's `SCRATCH` slot; the function
/// borrows the whole slot mutably while it runs.
#[inline(always)]
pub(crate) unsafe fn aggregated(
    scratch: *mut Scratch,
    now: u64,
    reason: u32,
    location: u64,
    netns: u32,
    ifindex: i32,
    iif: i32,
) -> bool {
    let sc = &mut *scratch;
    if now.wrapping_sub(sc.window_start) > AGG_WINDOW_NS {
        sc.window_start = now;
        sc.window_drops = 0;
    }
    sc.window_drops += 1;
    if sc.window_drops > setting!(agg_burst) as u64 {
        sc.hold_until = now + AGG_HOLD_NS;
    }
    if now >= sc.hold_until {
        return false;
    }
    let f = &sc.flow;
    let key = &mut sc.agg;
    key.location = location;
    key.reason = reason;
    key.netns = netns;
    key.ifindex = ifindex;
    key.ingress_ifindex = iif;
    key.family = f.family;
    key.proto = f.proto;
    // `_pad` is left as it is: zero since the map made the slot, as
    // nothing writes it, and writing it here was a call to a
    // byte-at-a-time memset on every storm drop.
    key.src = f.src;
    key.dst = f.dst;
    let epoch = (now >> AGG_EPOCH_SHIFT) as u32;
    // Most storms are one or a few keys: count them in their per-CPU slot.
    if let Some(slot) = AGGSLOTS.get_ptr_mut(key.slot()) {
        let slot = &mut *slot;
        if slot.used == 0 {
            crate::words::copy(&mut slot.key, key);
            crate::words::zero(&mut slot.val);
            slot.used = 1;
        }
        if slot.key.same(key) {
            return count_or_sample(&mut slot.val, epoch);
        }
    }
    // A full map (a storm from random addresses) falls back to one key
    // without addresses; if even that cannot be stored, send the event.
    for coarse in [false, true] {
        if coarse {
            crate::words::zero(&mut key.src);
            crate::words::zero(&mut key.dst);
        }
        if let Some(v) = AGG.get_ptr_mut(&*key) {
            return count_or_sample(&mut *v, epoch);
        }
        let first = AggVal {
            suppressed: 0,
            epoch,
            sent: 1,
        };
        if AGG.insert(&*key, &first, 0).is_ok() {
            return false;
        }
    }
    false
}

/// The key's first `agg_per_key` drops of each interval are sent (false),
/// the rest counted (true).
#[inline(always)]
fn count_or_sample(v: &mut AggVal, epoch: u32) -> bool {
    if v.epoch != epoch {
        v.epoch = epoch;
        v.sent = 0;
    }
    if v.sent < setting!(agg_per_key) {
        v.sent += 1;
        return false;
    }
    v.suppressed += 1;
    count(STAT_AGGREGATED);
    true
}
