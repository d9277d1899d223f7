//! The drop program's per-CPU working memory and its coarse clock.

use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_ns},
    macros::map,
    maps::PerCpuArray,
};
use tracer_abi::*;

/// Per-CPU scratch space: the BPF stack is 512 bytes, too small for a
/// flow, route keys and header copies at once.
#[repr(C)]
pub struct Scratch {
    pub(crate) flow: Flow,
    pub(crate) key: RouteKey,
    /// Where filter results pass to become opaque (see `filter::Opaque`).
    pub(crate) opaque: u64,
    pub(crate) agg: AggKey,
    /// The CPU's drop rate: drops matched since `window_start`, and until
    /// when it aggregates (a storm was seen).
    pub(crate) window_start: u64,
    pub(crate) window_drops: u64,
    pub(crate) hold_until: u64,
    /// The last drop with a netns on this CPU (see `on_drop`).
    pub(crate) last_netns: u32,
    pub(crate) last_iif: i32,
    pub(crate) last_ts: u64,
    pub(crate) last_frag: u32,
    /// `coarse_ns`: the jiffy this CPU last read the clock in, and what
    /// it read.
    pub(crate) clock_jiffies: u64,
    pub(crate) clock_ns: u64,
}

/// The clock as this CPU first read it in the current jiffy (1 to 10 ms
/// behind at most). The storm logic (rate window, hold, sampling
/// interval, fragment inheritance) needs nothing finer, and reading the
/// clock is a helper call of about 50 ns here, a fifth of a storm drop's
/// cost; `bpf_jiffies64` is inlined into one load. Events still get the
/// exact clock.
#[inline(always)]
pub(crate) fn coarse_ns(sc: &mut Scratch) -> u64 {
    // SAFETY: a helper without arguments that only returns a number.
    let j = unsafe { bpf_jiffies64() };
    if j != sc.clock_jiffies {
        sc.clock_jiffies = j;
        // SAFETY: a helper without arguments that only returns a number.
        sc.clock_ns = unsafe { bpf_ktime_get_ns() };
    }
    sc.clock_ns
}

/// One `Scratch` per CPU.
#[map]
pub(crate) static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
