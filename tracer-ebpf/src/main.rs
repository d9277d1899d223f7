//! tracer's kernel side: capture facts cheaply, filter early, explain
//! nothing. Userspace (the `tracer` crate) names, joins and diagnoses.
//!
//! - `drop_*`: every `skb:kfree_skb`, with its reason (tp_btf; raw_tp and the
//!   classic tracepoint are fallbacks for kernels where tp_btf won't load).
//! - `route4` / `route6`: route lookups, kept in the `ROUTES` map and joined
//!   to the drops of the same flow; never sent on their own.
//! - `syn_xmit`: SYNs that leave a device with an MSS its MTU cannot carry.
//! - `neigh_*`: neighbours (ARP/ND) that are resolving or have failed.
#![no_std]
#![no_main]

mod extra;
mod hop;
mod kernel;
mod packet;

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id,
        bpf_jiffies64, bpf_ktime_get_ns, bpf_probe_read_kernel_buf,
    },
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
    EbpfContext,
};
use kernel::{dev_ifindex, dev_mtu, dev_netns, read, sk_netns, Direct, Mem, Probe};
use tracer_abi::*;

#[no_mangle]
pub static CONFIG: Config = Config::new();

#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// Reasons the user included or excluded (`REASON_*`), indexed by reason.
#[map]
static REASONS: Array<u8> = Array::with_max_entries(REASON_SLOTS, 0);

/// Per-CPU scratch space: the BPF stack is 512 bytes, too small for a
/// flow, route keys and header copies at once.
#[repr(C)]
pub struct Scratch {
    flow: Flow,
    key: RouteKey,
    /// Where filter results pass to become opaque (see `filter::Opaque`).
    opaque: u64,
    agg: AggKey,
    /// The CPU's drop rate: drops matched since `window_start`, and until
    /// when it aggregates (a storm was seen).
    window_start: u64,
    window_drops: u64,
    hold_until: u64,
    /// The last drop with a netns on this CPU (see `on_drop`).
    last_netns: u32,
    last_iif: i32,
    last_ts: u64,
    last_frag: u32,
    /// `coarse_ns`: the jiffy this CPU last read the clock in, and what
    /// it read.
    clock_jiffies: u64,
    clock_ns: u64,
}

/// The clock as this CPU first read it in the current jiffy (1 to 10 ms
/// behind at most). The storm logic (rate window, hold, sampling
/// interval, fragment inheritance) needs nothing finer, and reading the
/// clock is a helper call of about 50 ns here, a fifth of a storm drop's
/// cost; `bpf_jiffies64` is inlined into one load. Events still get the
/// exact clock.
#[inline(always)]
fn coarse_ns(sc: &mut Scratch) -> u64 {
    let j = unsafe { bpf_jiffies64() };
    if j != sc.clock_jiffies {
        sc.clock_jiffies = j;
        sc.clock_ns = unsafe { bpf_ktime_get_ns() };
    }
    sc.clock_ns
}

/// How soon after a drop with a netns one without may inherit it. The
/// head and the rest of a fragment queue are freed microseconds apart on
/// hardware (an ICMP error is sent in between); 20 ms leaves room for a
/// slow or emulated CPU and for the coarse clock (`coarse_ns`), and the
/// same CPU and ingress device are required.
const INHERIT_NETNS_NS: u64 = 20_000_000;

/// The first place a storm's key is counted (see `AggSlot`).
#[map]
static AGGSLOTS: PerCpuArray<AggSlot> = PerCpuArray::with_max_entries(AGG_SLOTS, 0);

/// Drops counted by key during a storm (see `aggregated`).
#[map]
static AGG: PerCpuHashMap<AggKey, AggVal> = PerCpuHashMap::with_max_entries(AGG_KEYS, 0);

/// Hides a value from the verifier by a store and a load through map
/// memory, whose contents it does not track.
struct MapOpaque(*mut u64);

impl filter::Opaque for MapOpaque {
    #[inline(always)]
    fn hide(&self, v: u64) -> u64 {
        unsafe {
            core::ptr::write_volatile(self.0, v);
            core::ptr::read_volatile(self.0)
        }
    }
}


#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// The latest route lookup per (netns, dst, src).
#[map]
static ROUTES: LruHashMap<RouteKey, RouteHit> = LruHashMap::with_max_entries(16384, 0);

/// Route lookups displaced from `ROUTES` by a lookup of the same key from
/// another input device: where a peer's packets entered before something
/// else (an ARP for the peer, a bridged copy) looked up the same pair.
/// Userspace reads it for neighbour events only; written only when the
/// input device changes, so a steady flow never touches it.
#[map]
static ARRIVALS: LruHashMap<RouteKey, RouteHit> = LruHashMap::with_max_entries(4096, 0);

/// `CONFIG` seen through an opaque pointer: rustc knows the placeholder
/// initializer of an immutable static and would fold reads of it (the
/// filter program would compile to "always END"); userspace rewrites it
/// before load.
#[inline(always)]
fn config() -> &'static Config {
    let p: *const Config = &CONFIG;
    unsafe { &*core::ptr::read_volatile(&p) }
}

macro_rules! cfg {
    ($($field:tt)+) => {
        unsafe { core::ptr::read_volatile(&CONFIG.$($field)+) }
    };
}

/// The filter, run with its results kept opaque to the verifier.
#[inline(always)]
pub(crate) unsafe fn filter_matches(flow: &Flow) -> bool {
    if cfg!(filter_len) == 0 {
        return true;
    }
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    filter::eval(
        &config().filter,
        cfg!(filter_len),
        flow,
        &MapOpaque(&mut (*s).opaque),
    )
}

#[inline(always)]
pub(crate) fn netns_allowed(netns: u32) -> bool {
    let n = cfg!(netns_count);
    if n == 0 {
        return true;
    }
    for i in 0..MAX_NETNS {
        if (i as u32) < n && cfg!(netns[i]) == netns {
            return true;
        }
    }
    false
}

#[inline(always)]
pub(crate) fn cfg_extra() -> u32 {
    cfg!(extra)
}

#[inline(always)]
pub(crate) fn cfg_snaplen() -> u32 {
    cfg!(snaplen)
}

#[inline(always)]
pub(crate) fn cfg_trace() -> u32 {
    cfg!(trace)
}

#[inline(always)]
pub(crate) fn count(stat: u32) {
    if let Some(p) = STATS.get_ptr_mut(stat) {
        unsafe { *p += 1 };
    }
}

#[btf_tracepoint(function = "kfree_skb")]
pub fn drop_btf(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    let reason: u32 = ctx.arg(2);
    unsafe { on_drop::<Direct, _>(&ctx, skb, location, reason) };
    0
}

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn drop_raw(ctx: RawTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    let reason: u32 = ctx.arg(2);
    unsafe { on_drop::<Probe, _>(&ctx, skb, location, reason) };
    0
}

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
fn qdisc_reason_of(skb: *const u8, reason: u32) -> u32 {
    if let Some(p) = QDISC_REASON.get_ptr_mut(0) {
        let slot = unsafe { &mut *p };
        if slot.skb == skb as u64 && slot.reason != 0 {
            slot.skb = 0;
            return slot.reason;
        }
    }
    reason
}

/// `kfree_skb(skb, location)` before 5.17: no reason argument exists, and
/// reading one would fail verification, so these programs pass 0 (the
/// kernel never uses it for a drop) and userspace says the reason is unknown.
#[btf_tracepoint(function = "kfree_skb")]
pub fn drop_btf_noreason(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    unsafe { on_drop::<Direct, _>(&ctx, skb, location, 0) };
    0
}

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn drop_raw_noreason(ctx: RawTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    unsafe { on_drop::<Probe, _>(&ctx, skb, location, 0) };
    0
}

#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn drop_classic(ctx: TracePointContext) -> i32 {
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

#[inline(always)]
fn is_multicast(f: &Flow) -> bool {
    match f.family {
        FAMILY_V4 => f.dst[0] & 0xf0 == 0xe0,
        FAMILY_V6 => f.dst[0] == 0xff,
        _ => false,
    }
}

/// Known benign frees (see the README): socket queues purged on close,
/// multicast nobody listens to, echo replies handed to ping's raw socket,
/// a FIN that arrives after its socket closed, and non-IP packets freed by
/// a socket layer (vsock between a VM and its host).
#[inline(always)]
fn is_noise(reason: u32, f: &Flow, m: &packet::SkbMeta) -> bool {
    if reason == cfg!(noise.queue_purge) {
        return true;
    }
    let not_specified = reason == cfg!(noise.not_specified);
    if not_specified && is_multicast(f) {
        return true;
    }
    // Reason 0 is every drop on kernels without reasons: these two need a
    // real NOT_SPECIFIED to be told apart from drops that matter.
    if not_specified && reason != 0 {
        let fin_only = f.proto == IPPROTO_TCP && f.tcp_flags & 0x07 == 0x01;
        let socket_non_ip = f.family == FAMILY_NONE && m.l3_proto == 0 && m.dev.is_null() && !m.sk.is_null();
        if fin_only || socket_non_ip {
            return true;
        }
    }
    if reason == cfg!(noise.no_socket)
        && ((f.proto == IPPROTO_ICMP && f.icmp_type == 0)
            || (f.proto == IPPROTO_ICMPV6 && f.icmp_type == 129))
    {
        return true;
    }
    false
}

#[inline(always)]
unsafe fn on_drop<M: Mem, C: EbpfContext>(ctx: &C, skb: *const u8, location: u64, reason: u32) {
    if skb.is_null() {
        return;
    }
    count(STAT_DROPS_SEEN);

    // Cheapest filters first: reason, netns and device need no packet read.
    if cfg!(reason_include) != 0 || cfg!(reason_exclude) != 0 {
        // Out of range (a subsystem reason) is neither included nor excluded.
        let mark = REASONS.get(reason).copied().unwrap_or(0);
        if mark == REASON_EXCLUDE || (cfg!(reason_include) != 0 && mark != REASON_INCLUDE) {
            return;
        }
    }
    // After the filters, which take the reason kfree_skb gives.
    let reason = if cfg!(qdisc_drop) != 0 && reason == cfg!(qdisc_drop) {
        qdisc_reason_of(skb, reason)
    } else {
        reason
    };
    let mut m = packet::meta::<M>(skb);
    let mut netns = if !m.dev.is_null() {
        dev_netns::<M>(m.dev)
    } else if !m.sk.is_null() {
        sk_netns(m.sk)
    } else {
        0
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
        let frag = reason != 0 && reason == cfg!(frag_reason);
        let follows =
            iif != 0 && sc.last_iif == iif && now.wrapping_sub(sc.last_ts) < INHERIT_NETNS_NS;
        // Before 6.15 or so the queue purge frees the rest without a
        // reason (NOT_SPECIFIED), right after the head.
        let purged = frag || (reason != 0 && reason == cfg!(noise.not_specified));
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
    if !netns_allowed(netns) {
        return;
    }
    let ifindex = if m.dev.is_null() {
        0
    } else {
        dev_ifindex::<M>(m.dev)
    };
    let want_if = cfg!(ifindex) as i32;
    if want_if != 0 && ifindex != want_if && iif != want_if {
        return;
    }

    let flow = &mut (*scratch).flow;
    packet::clear(flow);
    let mut opts = packet::SynOpts::NONE;
    packet::parse::<M>(skb, &m, flow, &mut opts);
    if cfg!(hide_noise) != 0 && is_noise(reason, flow, &m) {
        return;
    }
    if !filter_matches(flow) {
        return;
    }
    // An aggregated drop is counted once, under STAT_AGGREGATED; userspace
    // adds the two for `drops_matched`. One counter update per storm drop.
    if cfg!(aggregate) != 0 && aggregated(scratch, now, reason, location, netns, ifindex, iif) {
        return;
    }
    count(STAT_DROPS_MATCHED);

    let now = bpf_ktime_get_ns();
    // Stack and bytes, when asked for: sent just before the event.
    if cfg!(extra) != 0 {
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
    (*e).comm = bpf_get_current_comm().unwrap_or([0; 16]);
    (*e).flow = *flow;
    (*e).route_fwd = RouteHit::default();
    (*e).route_rev = RouteHit::default();
    if cfg!(routes) != 0 && flow.family != FAMILY_NONE {
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
        (*e).tcp_opts = TcpOpts([0; TCP_OPTS_MAX]);
    } else if bpf_probe_read_kernel_buf(opts.at, &mut (*e).tcp_opts.0).is_ok() {
        (*e).tcp_opts_len = opts.len as u8;
    }
    entry.submit(0);
}

/// During a storm, counts the drop under its key instead of sending it,
/// once the key's first `agg_per_key` events of this interval went out.
/// A CPU storms when it matched more than `agg_burst` drops in one
/// `AGG_WINDOW_NS`, and keeps aggregating for `AGG_HOLD_NS` after: the ring
/// buffer and userspace then see a bounded rate whatever the drop rate, and
/// every drop is still counted exactly (event or key count).
#[inline(always)]
unsafe fn aggregated(
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
    if sc.window_drops > cfg!(agg_burst) as u64 {
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
    key._pad = [0; 6];
    key.src = f.src;
    key.dst = f.dst;
    let epoch = (now >> AGG_EPOCH_SHIFT) as u32;
    // Most storms are one or a few keys: count them in their per-CPU slot.
    if let Some(slot) = AGGSLOTS.get_ptr_mut(key.slot()) {
        let slot = &mut *slot;
        if slot.used == 0 {
            slot.key = *key;
            slot.val = AggVal::default();
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
            key.src = [0; 16];
            key.dst = [0; 16];
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
    if v.sent < cfg!(agg_per_key) {
        v.sent += 1;
        return false;
    }
    v.suppressed += 1;
    count(STAT_AGGREGATED);
    true
}

/// The newest lookup for `key` in its netns, or a lookup with no netns
/// (failed IPv4 lookups carry no device) that ran on this CPU just before:
/// the same packet's failed lookup, not another namespace's.
#[inline(always)]
unsafe fn route_for(key: &mut RouteKey, out: &mut RouteHit) {
    if let Some(h) = ROUTES.get(&*key) {
        *out = *h;
    }
    key.netns = 0;
    if let Some(p) = ROUTES.get(&*key) {
        // Entries are updated in place by other CPUs: judge and keep one
        // consistent copy.
        let h = *p;
        let now = bpf_ktime_get_ns();
        if h.cpu == bpf_get_smp_processor_id()
            && now.wrapping_sub(h.ts_ns) < UNSCOPED_ROUTE_JOIN_NS
            && h.ts_ns > out.ts_ns
        {
            *out = h;
        }
    }
}

/// How recent a netns-less lookup must be to join a drop on its CPU.
const UNSCOPED_ROUTE_JOIN_NS: u64 = 1_000_000;

/// The last lookup stored from this CPU.
#[repr(C)]
pub struct LastRoute {
    key: RouteKey,
    hit: RouteHit,
}

#[map]
static LASTROUTE: PerCpuArray<LastRoute> = PerCpuArray::with_max_entries(ROUTE_SLOTS, 0);

/// Lookups remembered per CPU. One packet is looked up in several
/// namespaces on the same CPU (the sender's output route, the router's
/// input route, the receiver's local one), so a single slot would be
/// overwritten by the next lookup every time and every packet would pay
/// for a hash-map update.
const ROUTE_SLOTS: u32 = 8;

/// The slot of a lookup: its netns and the words of its addresses that
/// differ most (IPv4 uses the first four bytes, IPv6 the last four),
/// mixed by a Fibonacci multiply whose top bits pick one of 8.
#[inline(always)]
fn route_slot(key: &RouteKey) -> u32 {
    let w = |b: &[u8; 16], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let h = key.netns ^ w(&key.dst, 0) ^ w(&key.dst, 12) ^ w(&key.src, 0).rotate_left(16) ^ w(&key.src, 12);
    h.wrapping_mul(0x9E37_79B1) >> 29
}

/// How long a stored lookup stands for identical ones on the same CPU.
const ROUTE_REFRESH_NS: u64 = 10_000_000;

#[inline(always)]
unsafe fn remember_route(key: &RouteKey, hit: &RouteHit) {
    if key.netns != 0 && !netns_allowed(key.netns) {
        return;
    }
    // A forwarding host looks up the same flow for every packet: when this
    // CPU stored the very same answer less than 10 ms ago, the map already
    // says it, and skipping the hash update makes tracing nearly free on
    // the fast path. Failed lookups (no netns) are always stored: their
    // join to a drop depends on a fresh timestamp.
    if let Some(c) = LASTROUTE.get_ptr_mut(route_slot(key)) {
        let c = &mut *c;
        if key.netns != 0
            && c.key == *key
            && c.hit.err == hit.err
            && c.hit.iif == hit.iif
            && c.hit.oif == hit.oif
            && c.hit.dev_ifindex == hit.dev_ifindex
            && c.hit.dev_mtu == hit.dev_mtu
            && c.hit.table == hit.table
            && c.hit.sport == hit.sport
            && c.hit.dport == hit.dport
            && hit.ts_ns.wrapping_sub(c.hit.ts_ns) < ROUTE_REFRESH_NS
        {
            return;
        }
        c.key = *key;
        c.hit = *hit;
    }
    count(STAT_ROUTES_SEEN);
    // Update in place when the entry exists: cheaper than an LRU insert on
    // a forwarding host that looks up the same flow for every packet.
    if let Some(p) = ROUTES.get_ptr_mut(key) {
        let old = *p;
        if old.iif != hit.iif && old.iif > 1 && old.err == 0 {
            let _ = ARRIVALS.insert(key, &old, 0);
        }
        *p = *hit;
    } else {
        let _ = ROUTES.insert(key, hit, 0);
    }
}

/// What identifies an IPv4 lookup and its answer, as read straight from
/// the tracepoint's arguments: the flow's addresses, interfaces and
/// ports, the table, and the nexthop it resolved to.
/// Integers, not byte arrays: an array is loaded, stored and compared a
/// byte at a time, on a path that runs for every forwarded packet.
#[repr(C)]
#[derive(Clone, Copy, PartialEq)]
pub struct Lookup4 {
    saddr: u32,
    daddr: u32,
    oif: i32,
    iif: i32,
    ports: u32,
    table: u32,
    nhc: u64,
    jiffies: u64,
}

#[map]
static SEEN4: PerCpuArray<Lookup4> = PerCpuArray::with_max_entries(ROUTE_SLOTS, 0);

/// True when this CPU saw the very same successful lookup, resolving to
/// the same nexthop, in this jiffy or the one before (1 to 20 ms at
/// HZ=1000..100): the map already holds its answer. Jiffies, not
/// `bpf_ktime_get_ns`: the verifier inlines `bpf_jiffies64` as one load,
/// where reading the clock is a helper call that would cost every
/// forwarded packet more than the rest of this check. A packet can cost half a dozen lookups (output
/// route, input route, source validation, the ICMP error's route), so
/// this check comes before anything else is read: no device, no netns,
/// no map update. A different nexthop, interface or table is a new key
/// and takes the full path.
#[inline(always)]
unsafe fn repeated4(cur: &Lookup4) -> bool {
    let h = cur.saddr.rotate_left(16) ^ cur.daddr ^ (cur.iif as u32);
    let Some(p) = SEEN4.get_ptr_mut(h.wrapping_mul(0x9E37_79B1) >> 29) else {
        return false;
    };
    let p = &mut *p;
    if p.saddr == cur.saddr
        && p.daddr == cur.daddr
        && p.oif == cur.oif
        && p.iif == cur.iif
        && p.ports == cur.ports
        && p.table == cur.table
        && p.nhc == cur.nhc
        && cur.jiffies.wrapping_sub(p.jiffies) <= 1
    {
        return true;
    }
    *p = *cur;
    false
}

/// `fib_table_lookup(u32 tb_id, const struct flowi4 *, const struct fib_nh_common *, int err)`
#[btf_tracepoint(function = "fib_table_lookup")]
pub fn route4(ctx: BtfTracePointContext) -> i32 {
    let table: u32 = ctx.arg(0);
    let fl: *const u8 = ctx.arg(1);
    let nhc: *const u8 = ctx.arg(2);
    let err: i32 = ctx.arg(3);
    unsafe {
        // This runs for every forwarded packet: one 4-byte load per
        // member (addresses in network order, kept as they are), and
        // nothing else before the repeat check.
        let saddr = Direct::get::<u32>(fl, off!(fl4_saddr)).unwrap_or(0);
        let daddr = Direct::get::<u32>(fl, off!(fl4_daddr)).unwrap_or(0);
        let oif = Direct::get::<i32>(fl, off!(fl4_oif)).unwrap_or(0);
        let iif = Direct::get::<i32>(fl, off!(fl4_iif)).unwrap_or(0);
        // uli.ports is { dport, sport }, both big-endian. Two loads: the
        // 5.10 verifier refuses one that spans both members.
        let (dport, sport) = match off!(fl4_dport) {
            NO_OFFSET => (0, 0),
            o => (
                Direct::get::<u16>(fl, o).unwrap_or(0),
                Direct::get::<u16>(fl, o + 2).unwrap_or(0),
            ),
        };
        let ports = dport as u32 | (sport as u32) << 16;
        // Failed lookups carry no netns and join a drop only when fresh:
        // they always take the full path.
        if err == 0 {
            let cur = Lookup4 {
                saddr,
                daddr,
                oif,
                iif,
                ports,
                table,
                nhc: nhc as u64,
                jiffies: bpf_jiffies64(),
            };
            if repeated4(&cur) {
                return 0;
            }
        }
        let now = bpf_ktime_get_ns();
        let mut hit = RouteHit {
            ts_ns: now,
            valid: 1,
            table,
            err,
            iif,
            oif,
            dev_ifindex: 0,
            dev_mtu: 0,
            netns: 0,
            cpu: bpf_get_smp_processor_id(),
            sport: u16::from_be(sport),
            dport: u16::from_be(dport),
        };
        if err == 0 {
            let dev = Direct::get::<*const u8>(nhc, off!(nhc_dev)).unwrap_or(core::ptr::null());
            if !dev.is_null() {
                let d = dev_info(dev, hit.ts_ns);
                hit.dev_ifindex = d.ifindex;
                hit.dev_mtu = d.mtu;
                hit.netns = d.netns;
            }
        }
        let mut key = RouteKey {
            netns: hit.netns,
            family: FAMILY_V4 as u32,
            dst: [0; 16],
            src: [0; 16],
        };
        key.src[..4].copy_from_slice(&saddr.to_ne_bytes());
        key.dst[..4].copy_from_slice(&daddr.to_ne_bytes());
        remember_route(&key, &hit);
    }
    0
}

/// The last device a route lookup resolved to, per CPU.
#[repr(C)]
pub struct DevInfo {
    dev: u64,
    ts_ns: u64,
    ifindex: i32,
    mtu: u32,
    netns: u32,
    _pad: u32,
}

#[map]
static DEVCACHE: PerCpuArray<DevInfo> = PerCpuArray::with_max_entries(1, 0);

/// ifindex, MTU and netns of `dev`, remembered per CPU for 100 ms: a
/// forwarding flow resolves to the same device packet after packet, and
/// this saves four reads each time. The age bound covers a device freed
/// and another allocated at the same address, or an MTU change.
#[inline(always)]
unsafe fn dev_info(dev: *const u8, now: u64) -> DevInfo {
    if let Some(c) = DEVCACHE.get_ptr_mut(0) {
        if (*c).dev == dev as u64 && now.wrapping_sub((*c).ts_ns) < 100_000_000 {
            return DevInfo {
                dev: (*c).dev,
                ts_ns: (*c).ts_ns,
                ifindex: (*c).ifindex,
                mtu: (*c).mtu,
                netns: (*c).netns,
                _pad: 0,
            };
        }
        (*c).dev = dev as u64;
        (*c).ts_ns = now;
        (*c).ifindex = dev_ifindex::<Direct>(dev);
        (*c).mtu = dev_mtu::<Direct>(dev);
        (*c).netns = dev_netns::<Direct>(dev);
        return DevInfo {
            dev: (*c).dev,
            ts_ns: now,
            ifindex: (*c).ifindex,
            mtu: (*c).mtu,
            netns: (*c).netns,
            _pad: 0,
        };
    }
    DevInfo {
        dev: dev as u64,
        ts_ns: now,
        ifindex: dev_ifindex::<Direct>(dev),
        mtu: dev_mtu::<Direct>(dev),
        netns: dev_netns::<Direct>(dev),
        _pad: 0,
    }
}

/// `fib6_table_lookup(const struct net *, const struct fib6_result *, struct fib6_table *, const struct flowi6 *)`
#[btf_tracepoint(function = "fib6_table_lookup")]
pub fn route6(ctx: BtfTracePointContext) -> i32 {
    let net: *const u8 = ctx.arg(0);
    let res: *const u8 = ctx.arg(1);
    let table: *const u8 = ctx.arg(2);
    let fl: *const u8 = ctx.arg(3);
    unsafe {
        let netns = kernel::net_inum::<Direct>(net);
        let mut key = RouteKey {
            netns,
            family: FAMILY_V6 as u32,
            dst: read::<[u8; 16]>(fl, off!(fl6_daddr)).unwrap_or([0; 16]),
            src: read::<[u8; 16]>(fl, off!(fl6_saddr)).unwrap_or([0; 16]),
        };
        // IPv6 reports failure as a route type, not an errno.
        let err = match read::<u8>(res, off!(f6res_type)).unwrap_or(0) {
            6 => -22,  // RTN_BLACKHOLE: -EINVAL, as IPv4 reports it
            7 => -113, // RTN_UNREACHABLE: -EHOSTUNREACH
            8 => -13,  // RTN_PROHIBIT: -EACCES
            _ => 0,
        };
        let mut hit = RouteHit {
            ts_ns: bpf_ktime_get_ns(),
            valid: 1,
            table: read::<u32>(table, off!(f6table_id)).unwrap_or(0),
            err,
            iif: read::<i32>(fl, off!(fl6_iif)).unwrap_or(0),
            oif: read::<i32>(fl, off!(fl6_oif)).unwrap_or(0),
            dev_ifindex: 0,
            dev_mtu: 0,
            netns,
            cpu: bpf_get_smp_processor_id(),
            sport: 0,
            dport: 0,
        };
        if err == 0 {
            let nh = Direct::get::<*const u8>(res, off!(f6res_nh)).unwrap_or(core::ptr::null());
            let dev = Direct::get::<*const u8>(nh, off!(f6nh_dev)).unwrap_or(core::ptr::null());
            if !dev.is_null() {
                hit.dev_ifindex = dev_ifindex::<Direct>(dev);
                hit.dev_mtu = dev_mtu::<Direct>(dev);
            }
        }
        key.netns = netns;
        remember_route(&key, &hit);
    }
    0
}

/// `net_dev_start_xmit(const struct sk_buff *, const struct net_device *)`:
/// flags SYNs whose MSS the egress MTU cannot carry. Runs for every
/// transmitted packet, so it bails out on length before reading headers.
#[btf_tracepoint(function = "net_dev_start_xmit")]
pub fn syn_xmit(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let dev: *const u8 = ctx.arg(1);
    unsafe { on_xmit(skb, dev) };
    0
}

/// The largest MTU of a device (loopback aside) that transmitted a packet
/// short enough to be a SYN, since the program was loaded.
#[map]
static MTU_SEEN: Array<u32> = Array::with_max_entries(1, 0);

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
    let mut flow = Flow::default();
    if !packet::parse_with_mss::<Direct>(skb, &m, &mut flow) || flow.proto != IPPROTO_TCP || flow.mss == 0 {
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
    if !filter_matches(&flow) {
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
    (*e).flow = flow;
    (*e)._pad = 0;
    entry.submit(0);
}

/// `neigh_timer_handler(struct neighbour *, int)`: a resolving entry's
/// retry timer, where it turns FAILED.
#[btf_tracepoint(function = "neigh_timer_handler")]
pub fn neigh_timer(ctx: BtfTracePointContext) -> i32 {
    let n: *const u8 = ctx.arg(0);
    unsafe { on_neigh(n) };
    0
}

/// `neigh_event_send_done(struct neighbour *, int)`: a packet waits for an
/// entry that is not resolved yet (it becomes INCOMPLETE).
#[btf_tracepoint(function = "neigh_event_send_done")]
pub fn neigh_send(ctx: BtfTracePointContext) -> i32 {
    let n: *const u8 = ctx.arg(0);
    unsafe { on_neigh(n) };
    0
}

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
    let mut addr = [0u8; 16];
    if family == FAMILY_V4 {
        if let Some(a) = read::<[u8; 4]>(n, off!(neigh_key)) {
            addr[..4].copy_from_slice(&a);
        }
    } else if let Some(a) = read::<[u8; 16]>(n, off!(neigh_key)) {
        addr = a;
    }
    (*e).addr = addr;
    entry.submit(0);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
