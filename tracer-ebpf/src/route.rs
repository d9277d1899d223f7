//! Route lookups (`route4` on `fib_table_lookup`, `route6` on
//! `fib6_table_lookup`): kept in the `ROUTES` map and joined to the drops
//! of the same flow (`route_for`); never sent on their own.

use crate::config::netns_allowed;
use crate::events::count;
use crate::kernel::{self, dev_ifindex, dev_mtu, dev_netns, read, Direct, Mem};
use crate::off;
use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_jiffies64, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map},
    maps::{LruHashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use core::mem::MaybeUninit;
use tracer_abi::*;

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

/// The newest lookup for `key` in its netns, or a lookup with no netns
/// (failed IPv4 lookups carry no device) that ran on this CPU just before:
/// the same packet's failed lookup, not another namespace's.
///
/// # Safety
///
/// None for the caller: it only reads `ROUTES` entries through the map
/// helpers, and copies them (other CPUs update them in place).
#[inline(always)]
pub(crate) unsafe fn route_for(key: &mut RouteKey, out: &mut RouteHit) {
    if let Some(h) = ROUTES.get(&*key) {
        crate::words::copy(out, h);
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
    let h = key.netns
        ^ w(&key.dst, 0)
        ^ w(&key.dst, 12)
        ^ w(&key.src, 0).rotate_left(16)
        ^ w(&key.src, 12);
    h.wrapping_mul(0x9E37_79B1) >> 29
}

/// How long a stored lookup stands for identical ones on the same CPU.
const ROUTE_REFRESH_NS: u64 = 10_000_000;

/// # Safety
///
/// None for the caller: the pointers it follows come from map lookups
/// of per-CPU slots and of `ROUTES`, which this program updates in place.
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
///
/// # Safety
///
/// None for the caller: it only touches this CPU's `SEEN4` slot.
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
    // SAFETY: every pointer is this tp_btf program's argument or a pointer member
    // loaded through one, BTF-typed, so `Direct` may load through it;
    // `read` probe-reads any address.
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
        // Zeroed in place (see `words`): a literal's zero arrays were a
        // memset call on every route lookup.
        let mut slot = MaybeUninit::<RouteKey>::uninit();
        let key = crate::words::zeroed(&mut slot);
        key.netns = hit.netns;
        key.family = FAMILY_V4 as u32;
        key.src[..4].copy_from_slice(&saddr.to_ne_bytes());
        key.dst[..4].copy_from_slice(&daddr.to_ne_bytes());
        remember_route(key, &hit);
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
///
/// # Safety
///
/// `dev` must be NULL or a BTF-typed `struct net_device *` (it is read
/// with `Direct`, see `Mem::get`).
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
    // SAFETY: every pointer is this tp_btf program's argument or a pointer member
    // loaded through one, BTF-typed, so `Direct` may load through it;
    // `read` probe-reads any address.
    unsafe {
        let netns = kernel::net_inum::<Direct>(net);
        // Zeroed in place and the addresses read straight into it (the
        // helper writes zeros when it fails): `unwrap_or([0; 16])` was a
        // memset call on every route lookup (see `words`).
        let mut slot = MaybeUninit::<RouteKey>::uninit();
        let key = crate::words::zeroed(&mut slot);
        key.netns = netns;
        key.family = FAMILY_V6 as u32;
        kernel::read_into(fl, off!(fl6_daddr), &mut key.dst);
        kernel::read_into(fl, off!(fl6_saddr), &mut key.src);
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
        remember_route(key, &hit);
    }
    0
}
