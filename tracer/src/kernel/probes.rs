//! Loads tracer's eBPF object, fills its globals from the running kernel's
//! BTF and the user's filters, attaches the programs, and hands out the
//! ring buffer and counters. Everything kernel-facing lives here.

use crate::kernel::btf::KernelBtf;
use crate::kernel::per_packet::PerPacket;
use anyhow::{anyhow, bail, Result};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::tp_btf::BtfTracePointLinkId;
use aya::programs::{BtfTracePoint, RawTracePoint, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader};
use std::fmt;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tracer_abi::{
    names, AggKey, AggSlot, AggVal, Config, Offsets, NO_OFFSET, REASON_EXCLUDE, REASON_INCLUDE,
    REASON_SLOTS,
};

/// The object built by `cargo xtask build-ebpf` (see build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("TRACER_BPF_OBJECT"));

/// How the drop program is attached, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DropHook {
    /// BTF-enabled tracepoint: typed arguments, lowest overhead.
    #[value(name = "tp_btf", alias = "tp-btf")]
    TpBtf,
    /// Raw tracepoint: same arguments, for kernels where tp_btf won't load.
    #[value(name = "raw_tp", alias = "raw-tp")]
    RawTp,
    /// Classic tracepoint through tracefs, record offsets from its format file.
    Tracepoint,
}

impl fmt::Display for DropHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DropHook::TpBtf => "tp_btf",
            DropHook::RawTp => "raw_tp",
            DropHook::Tracepoint => "tracepoint",
        })
    }
}

/// What to load.
#[derive(Clone, Debug, Default)]
pub struct ProbeConfig {
    pub config: Config,
    pub include_reasons: Vec<u32>,
    pub exclude_reasons: Vec<u32>,
    /// Attach only this drop hook instead of trying them in order.
    pub hook: Option<DropHook>,
    /// The kernel's `kfree_skb` has a reason argument (5.17+).
    pub drop_reasons: bool,
}

/// Kernel-side counters (summed over CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelStats {
    pub drops_seen: u64,
    pub drops_matched: u64,
    pub lost: u64,
    pub route_lookups: u64,
    pub syns_flagged: u64,
    pub neigh_events: u64,
    /// Drops counted by key in a storm instead of sent as events.
    pub aggregated: u64,
    /// Runs the kernel skipped because one of our programs was already
    /// running on that CPU (an interrupt nested in it): events that were
    /// never seen, reported rather than lost silently.
    pub recursion_misses: u64,
    /// Runs of the drop probe and the time spent in them, from
    /// `bpf_prog_info` (zero unless BPF run-time stats are enabled, e.g.
    /// by `cargo xtask bench`): the kernel-side cost per drop.
    pub drop_probe_runs: u64,
    pub drop_probe_ns: u64,
    /// Instructions the verifier walked to load the drop probe (5.16 and
    /// later, else 0). A loop over packet bytes multiplies it and pushes
    /// start-up towards the verifier's 1M limit: tests hold it to a budget.
    pub drop_probe_verified_insns: u64,
}

type RouteMap = BpfHashMap<MapData, tracer_abi::RouteKey, tracer_abi::RouteHit>;

/// The kernel's `ROUTES` map (latest route lookup per netns, dst, src) and
/// `ARRIVALS` (lookups displaced by one from another input device), read
/// by userspace only for neighbour events (see `Namer::arrivals`).
pub struct RouteTable {
    latest: RouteMap,
    displaced: Option<RouteMap>,
    /// Lookups stored before this kernel time are ignored: the route
    /// programs were parked since, so a flow's stored lookup may be stale
    /// (see `Probes::forget_routes`).
    since: Arc<AtomicU64>,
}

impl RouteTable {
    /// The latest lookup for `key`, and the one it displaced if that came
    /// from another input device.
    pub fn get(&self, key: &tracer_abi::RouteKey) -> Vec<tracer_abi::RouteHit> {
        let mut v: Vec<_> = self.latest.get(key, 0).ok().into_iter().collect();
        if let Some(h) = self.displaced.as_ref().and_then(|m| m.get(key, 0).ok()) {
            if !v.iter().any(|x| x.iif == h.iif && x.ts_ns == h.ts_ns) {
                v.push(h);
            }
        }
        v.retain(|h| self.fresh(h));
        v
    }

    /// Whether a lookup (from this map, or joined to a drop in the
    /// kernel) was stored since the route programs were last parked.
    pub fn fresh(&self, h: &tracer_abi::RouteHit) -> bool {
        h.ts_ns >= self.since.load(Ordering::Relaxed)
    }
}

pub struct Probes {
    // Dropping the Ebpf detaches every program; the ring buffer and the
    // counters were taken out of it, so they outlive a detach.
    ebpf: Option<Ebpf>,
    /// Program counters read at detach time, when the programs go.
    prog_counters: Option<(Option<ProgCounters>, u64)>,
    pub hook: DropHook,
    pub routes_attached: bool,
    pub syn_attached: bool,
    pub neigh_attached: bool,
    /// The hop probes of `tracer trace` that attached.
    pub hops_attached: Vec<&'static str>,
    drop_reasons: bool,
    events: Option<RingBuf<MapData>>,
    routes: Option<RouteTable>,
    stats: PerCpuArray<MapData, u64>,
    /// Storm counts by key (see `aggregate_counts`).
    agg: aya::maps::PerCpuHashMap<MapData, AggKey, AggVal>,
    agg_slots: PerCpuArray<MapData, AggSlot>,
    pub warnings: Vec<String>,
    /// The route-lookup and SYN programs, shed in storms and parked
    /// while they can find nothing.
    per_packet: PerPacket,
    /// Shared with the `RouteTable`: see `forget_routes`.
    routes_since: Arc<AtomicU64>,
}

/// Fails with one clear line unless we may load tracing programs.
pub fn check_privileges() -> Result<()> {
    if crate::kernel::caps::CapSet::effective().can_load() {
        Ok(())
    } else {
        bail!("tracer needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN) to load its eBPF programs")
    }
}

/// Record offsets of the classic `skb:kfree_skb` tracepoint, from tracefs.
fn classic_offsets(o: &mut Offsets, want_reason: bool) -> Result<()> {
    let candidates = [
        "/sys/kernel/tracing/events/skb/kfree_skb/format",
        "/sys/kernel/debug/tracing/events/skb/kfree_skb/format",
    ];
    let text = candidates
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .ok_or_else(|| anyhow!("tracefs is not mounted, so skb:kfree_skb has no format file"))?;
    let field = |name: &str| -> Option<u32> {
        text.lines()
            .find(|l| l.contains(&format!(" {name};")))
            .and_then(|l| l.split("offset:").nth(1))
            .and_then(|r| r.split(';').next())
            .and_then(|v| v.trim().parse().ok())
    };
    o.tp_skbaddr = field("skbaddr").ok_or_else(|| anyhow!("kfree_skb format lacks skbaddr"))?;
    o.tp_location = field("location").ok_or_else(|| anyhow!("kfree_skb format lacks location"))?;
    o.tp_reason = match field("reason") {
        Some(off) => off,
        None if !want_reason => NO_OFFSET,
        None => bail!("kfree_skb format lacks reason"),
    };
    Ok(())
}

/// The object with its globals filled in, nothing attached yet; and
/// whether the classic tracepoint's record layout could be read.
fn load_object(
    kbtf: &KernelBtf,
    btf: &Btf,
    config: &Config,
    drop_reasons: bool,
    loader: EbpfLoader<'_>,
) -> Result<(Ebpf, Result<()>)> {
    if OBJECT.is_empty() {
        // build.rs put a stub here: the build had no eBPF object.
        bail!("this tracer was built without its eBPF object: build it with `cargo xtask build`");
    }
    let mut offsets = kbtf.offsets()?;
    let classic = classic_offsets(&mut offsets, drop_reasons);
    let mut config = *config;
    config.qdisc_drop = kbtf.qdisc_drop_code();
    let mut loader = loader;
    let ebpf = loader
        .btf(Some(btf))
        .override_global(names::GLOBAL_CONFIG, &config, true)
        .override_global(names::GLOBAL_OFFSETS, &offsets, true)
        .load(OBJECT)
        .map_err(|e| anyhow!("cannot load tracer's eBPF object: {e}"))?;
    Ok((ebpf, classic))
}

/// aya's loader, to make on a thread of its own at start: `EbpfLoader::new`
/// parses the kernel BTF from sysfs (some 40 ms), even though the loader
/// is then given the copy already parsed (see `load_object`). Made early,
/// that parse runs beside the BTF reads of start-up instead of after them
/// (issue 22).
pub fn new_loader() -> EbpfLoader<'static> {
    EbpfLoader::new()
}

/// One program of the object tried on this kernel by `tracer check`.
#[derive(Debug)]
pub struct HookCheck {
    /// What it gives the user: "drop", "routes", "xmit", "neighbours".
    pub role: &'static str,
    /// `tp_btf kfree_skb`, `tracepoint skb:kfree_skb`, ...
    pub hook: String,
    pub result: Result<()>,
}

/// Loads and attaches every program on its own (and detaches them all on
/// return), so `tracer check` reports what really works on this kernel,
/// verifier included. The filter matches no namespace, so nothing is sent.
pub fn check_hooks(kbtf: &KernelBtf, btf: &Btf, drop_reasons: bool) -> Result<Vec<HookCheck>> {
    check_privileges()?;
    let mut config = Config::new();
    config.netns_count = 1;
    config.netns[0] = 1; // no namespace has inode 1
    let (mut ebpf, classic) = load_object(kbtf, btf, &config, drop_reasons, EbpfLoader::new())?;
    let mut out = Vec::new();
    for h in [DropHook::TpBtf, DropHook::RawTp, DropHook::Tracepoint] {
        let prog = drop_prog(h, drop_reasons);
        let (hook, result) = match h {
            DropHook::TpBtf => (
                "tp_btf kfree_skb",
                attach_btf(&mut ebpf, prog, "kfree_skb", btf),
            ),
            DropHook::RawTp => ("raw_tp kfree_skb", attach_raw(&mut ebpf, prog, "kfree_skb")),
            DropHook::Tracepoint => (
                "tracepoint skb:kfree_skb",
                match &classic {
                    Ok(()) => attach_classic(&mut ebpf, prog),
                    Err(e) => Err(anyhow!("{e}")),
                },
            ),
        };
        out.push(HookCheck {
            role: "drop",
            hook: hook.to_string(),
            result,
        });
    }
    // Only where the tracepoint exists (after 6.18): elsewhere there is
    // nothing to miss.
    if kbtf.qdisc_drop_code() != 0 {
        out.push(HookCheck {
            role: "qdisc",
            hook: "tp_btf qdisc_drop".to_string(),
            result: attach_btf(&mut ebpf, names::PROG_QDISC_REASON, "qdisc_drop", btf),
        });
    }
    for (role, prog, func) in [
        ("routes", names::PROG_FIB4, "fib_table_lookup"),
        ("routes", names::PROG_FIB6, "fib6_table_lookup"),
        ("xmit", names::PROG_SYN_XMIT, "net_dev_start_xmit"),
        ("neighbours", names::PROG_NEIGH_TIMER, "neigh_timer_handler"),
        (
            "neighbours",
            names::PROG_NEIGH_SEND,
            "neigh_event_send_done",
        ),
    ] {
        out.push(HookCheck {
            role,
            hook: format!("tp_btf {func}"),
            result: attach_btf(&mut ebpf, prog, func, btf),
        });
    }
    Ok(out)
}

impl Probes {
    /// `loader`: see [`new_loader`].
    pub fn load(
        kbtf: &KernelBtf,
        btf: &Btf,
        pc: &ProbeConfig,
        loader: EbpfLoader<'_>,
    ) -> Result<Self> {
        check_privileges()?;
        let (mut ebpf, classic) = load_object(kbtf, btf, &pc.config, pc.drop_reasons, loader)?;
        mark_reasons(&mut ebpf, pc)?;
        verify_in_parallel(&mut ebpf, btf, kbtf, pc);
        let hook = attach_drop(&mut ebpf, btf, pc, &classic)?;
        let mut a = Attached::default();
        a.qdisc(&mut ebpf, kbtf, btf);
        if pc.config.routes != 0 {
            a.routes(&mut ebpf, btf);
        }
        if pc.config.syn_check != 0 {
            a.syn(&mut ebpf, btf);
        }
        if pc.config.neigh != 0 {
            a.neigh(&mut ebpf, btf);
        }
        if pc.config.trace != 0 {
            a.hops(&mut ebpf, btf)?;
        }
        Probes::assemble(ebpf, hook, a, pc.drop_reasons)
    }

    /// The maps taken out of the object, so they outlive a detach.
    fn assemble(mut ebpf: Ebpf, hook: DropHook, a: Attached, drop_reasons: bool) -> Result<Self> {
        let events = take_map(&mut ebpf, names::MAP_EVENTS)?;
        let routes_since = Arc::new(AtomicU64::new(0));
        let routes = if a.routes {
            let displaced = ebpf
                .take_map(names::MAP_ARRIVALS)
                .and_then(|m| BpfHashMap::try_from(m).ok());
            ebpf.take_map(names::MAP_ROUTES)
                .and_then(|m| BpfHashMap::try_from(m).ok())
                .map(|latest| RouteTable {
                    latest,
                    displaced,
                    since: routes_since.clone(),
                })
        } else {
            None
        };
        Ok(Probes {
            stats: take_map(&mut ebpf, names::MAP_STATS)?,
            agg: take_map(&mut ebpf, names::MAP_AGG)?,
            agg_slots: take_map(&mut ebpf, names::MAP_AGG_SLOTS)?,
            ebpf: Some(ebpf),
            prog_counters: None,
            hook,
            routes_attached: a.routes,
            syn_attached: a.syn,
            neigh_attached: a.neigh,
            hops_attached: a.hops,
            drop_reasons,
            events: Some(events),
            routes,
            warnings: a.warnings,
            per_packet: a.per_packet,
            routes_since,
        })
    }

    /// The route-lookup map, handed out once (diagnose).
    pub fn take_routes(&mut self) -> Option<RouteTable> {
        self.routes.take()
    }

    /// The ring buffer, handed to the reader once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        self.events
            .take()
            .ok_or_else(|| anyhow!("the ring buffer was already taken"))
    }

    /// Sheds (`on`) the programs that run for every packet rather than
    /// for every drop, or attaches again those not parked. A storm costs
    /// the host several route lookups per dropped packet, and even a
    /// program that returns at once costs its call; the storm's own flows
    /// had their lookups stored before it began, and the map keeps them.
    /// Returns whether anything changed.
    pub fn shed(&mut self, on: bool) -> bool {
        self.per_packet.shed(self.ebpf.as_mut(), on)
    }

    /// Parks per-packet programs (they can find nothing now), or lets
    /// them go, as a gate decides (see `PerPacket::park`).
    pub fn park(&mut self, progs: &[&'static str], park: bool) {
        self.per_packet.park(self.ebpf.as_mut(), progs, park);
    }

    /// From now on, lookups stored so far are not joined to drops: the
    /// route programs are parked, and a flow's stored lookup would grow
    /// stale while its packets go on being routed unseen.
    pub fn forget_routes(&self) {
        self.routes_since
            .store(crate::kernel::clock::monotonic_ns(), Ordering::Relaxed);
    }

    /// Attaches again what should be attached and is not (an attach that
    /// failed when a storm ended or a gate let go); called on every tick.
    pub fn heal(&mut self) {
        self.per_packet.heal(self.ebpf.as_mut());
    }

    /// Whether some per-packet program is shed for a storm.
    pub fn shedding(&self) -> bool {
        self.per_packet.shedding()
    }

    /// Drops counted under a storm key so far (all CPUs): it grows only
    /// while some CPU aggregates.
    pub fn aggregated_now(&self) -> u64 {
        self.stats
            .get(&tracer_abi::STAT_AGGREGATED, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Detaches every program: nothing new reaches the ring buffer or the
    /// counters after this, so what they hold is final.
    pub fn detach(&mut self) {
        if self.ebpf.is_some() {
            self.prog_counters = Some(self.prog_counters());
            self.ebpf = None;
        }
    }

    /// The drop program's counters and every program's recursion misses.
    fn prog_counters(&self) -> (Option<ProgCounters>, u64) {
        if let Some(c) = self.prog_counters {
            return c;
        }
        let Some(ebpf) = &self.ebpf else {
            return (None, 0);
        };
        let drop_prog = drop_prog(self.hook, self.drop_reasons);
        let drop_info = ebpf
            .program(drop_prog)
            .and_then(|p| p.fd().ok())
            .and_then(|fd| prog_info(fd.as_fd()));
        let misses = ebpf
            .programs()
            .filter_map(|(_, p)| p.fd().ok())
            .filter_map(|fd| prog_info(fd.as_fd()).map(|i| i.recursion_misses))
            .sum();
        (drop_info, misses)
    }

    /// Every storm key with the drops counted under it so far, summed over
    /// CPUs. The counts only grow, so the difference of two reads is
    /// exactly what was counted in between.
    /// A key is counted in per-CPU slots and in the map; both only grow
    /// and a count never moves between them, so reads need no lock.
    pub fn aggregate_counts(&self) -> Vec<(AggKey, u64)> {
        let mut counts: std::collections::HashMap<AggKey, u64> = self
            .agg
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, per_cpu)| (k, per_cpu.iter().map(|v| v.suppressed).sum()))
            .collect();
        for i in 0..tracer_abi::AGG_SLOTS {
            let Ok(per_cpu) = self.agg_slots.get(&i, 0) else {
                continue;
            };
            for s in per_cpu.iter().filter(|s| s.used != 0) {
                *counts.entry(s.key).or_default() += s.val.suppressed;
            }
        }
        counts.into_iter().collect()
    }

    pub fn stats(&self) -> KernelStats {
        let (drop_info, recursion_misses) = self.prog_counters();
        let sum = |i: u32| -> u64 { self.stats.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0) };
        let aggregated = sum(tracer_abi::STAT_AGGREGATED);
        KernelStats {
            drops_seen: sum(tracer_abi::STAT_DROPS_SEEN),
            // The kernel counts a matched drop once: sent (MATCHED) or
            // counted by key (AGGREGATED).
            drops_matched: sum(tracer_abi::STAT_DROPS_MATCHED) + aggregated,
            lost: sum(tracer_abi::STAT_LOST),
            route_lookups: sum(tracer_abi::STAT_ROUTES_SEEN),
            syns_flagged: sum(tracer_abi::STAT_SYNS_FLAGGED),
            neigh_events: sum(tracer_abi::STAT_NEIGH),
            aggregated,
            recursion_misses,
            drop_probe_runs: drop_info.map(|i| i.run_cnt).unwrap_or(0),
            drop_probe_ns: drop_info.map(|i| i.run_time_ns).unwrap_or(0),
            drop_probe_verified_insns: drop_info.map(|i| i.verified_insns).unwrap_or(0),
        }
    }
}

/// A map of the object, taken out of it.
fn take_map<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("eBPF object lacks map {name}"))?;
    Ok(T::try_from(map)?)
}

/// Marks the reasons of --reason and --exclude-reason for the kernel.
fn mark_reasons(ebpf: &mut Ebpf, pc: &ProbeConfig) -> Result<()> {
    let map = ebpf
        .map_mut(names::MAP_REASONS)
        .ok_or_else(|| anyhow!("eBPF object lacks map {}", names::MAP_REASONS))?;
    let mut reasons: aya::maps::Array<_, u8> = aya::maps::Array::try_from(map)?;
    let marks = pc
        .include_reasons
        .iter()
        .map(|r| (*r, REASON_INCLUDE))
        .chain(pc.exclude_reasons.iter().map(|r| (*r, REASON_EXCLUDE)));
    for (r, mark) in marks {
        if r >= REASON_SLOTS {
            bail!("drop reason {r} is beyond the {REASON_SLOTS} that --reason and --exclude-reason can filter");
        }
        reasons.set(r, mark, 0)?;
    }
    Ok(())
}

/// Attaches the drop program: the hook asked for, or the best that works.
fn attach_drop(
    ebpf: &mut Ebpf,
    btf: &Btf,
    pc: &ProbeConfig,
    classic: &Result<()>,
) -> Result<DropHook> {
    let order: Vec<DropHook> = match pc.hook {
        Some(h) => vec![h],
        None => vec![DropHook::TpBtf, DropHook::RawTp, DropHook::Tracepoint],
    };
    let mut errors = Vec::new();
    for h in order {
        let r = match h {
            DropHook::TpBtf => attach_btf(ebpf, drop_prog(h, pc.drop_reasons), "kfree_skb", btf),
            DropHook::RawTp => attach_raw(ebpf, drop_prog(h, pc.drop_reasons), "kfree_skb"),
            DropHook::Tracepoint => match classic {
                Ok(()) => attach_classic(ebpf, names::PROG_DROP_CLASSIC),
                Err(e) => Err(anyhow!("{e}")),
            },
        };
        match r {
            Ok(()) => return Ok(h),
            Err(e) => errors.push(format!("{h}: {e:#}")),
        }
    }
    bail!(
        "cannot attach to the skb:kfree_skb tracepoint ({})",
        errors.join("; ")
    )
}

/// The tp_btf programs a run will attach besides the drop program, with
/// their tracepoints (what [`Attached`] attaches, in its order).
fn wanted_besides_drop(kbtf: &KernelBtf, pc: &ProbeConfig) -> Vec<(&'static str, &'static str)> {
    let mut v = Vec::new();
    if kbtf.qdisc_drop_code() != 0 {
        v.push((names::PROG_QDISC_REASON, "qdisc_drop"));
    }
    if pc.config.routes != 0 {
        v.push((names::PROG_FIB4, "fib_table_lookup"));
        v.push((names::PROG_FIB6, "fib6_table_lookup"));
    }
    if pc.config.syn_check != 0 {
        v.push((names::PROG_SYN_XMIT, "net_dev_start_xmit"));
    }
    if pc.config.neigh != 0 {
        v.push((names::PROG_NEIGH_TIMER, "neigh_timer_handler"));
        v.push((names::PROG_NEIGH_SEND, "neigh_event_send_done"));
    }
    if pc.config.trace != 0 {
        v.push((names::PROG_HOP_RECEIVE, "netif_receive_skb"));
        v.push((names::PROG_HOP_QUEUE, "net_dev_queue"));
        v.push((names::PROG_HOP_XMIT, "net_dev_xmit"));
        v.push((names::PROG_HOP_CONSUME, "consume_skb"));
    }
    v
}

/// Has the kernel verify the tp_btf drop program on this thread and the
/// other programs on a second one, at the same time. Verifying is most of
/// the start-up (the drop program and the SYN check take about 120 and
/// 80 ms each, one after the other, issue 22), and a load is one
/// syscall per program that runs on its caller's CPU. Only loads: the
/// attach order and its messages stay those of `attach_drop` and
/// [`Attached`], which skip the load of a program loaded here and load
/// again one that failed here, to say why.
fn verify_in_parallel(ebpf: &mut Ebpf, btf: &Btf, kbtf: &KernelBtf, pc: &ProbeConfig) {
    let first = match pc.hook {
        None | Some(DropHook::TpBtf) => Some(drop_prog(DropHook::TpBtf, pc.drop_reasons)),
        Some(_) => None,
    };
    let rest = wanted_besides_drop(kbtf, pc);
    let mut drop_p = None;
    let mut others = Vec::new();
    for (name, p) in ebpf.programs_mut() {
        if Some(name) == first {
            drop_p = Some(p);
        } else if let Some((_, func)) = rest.iter().find(|(n, _)| *n == name) {
            others.push((*func, p));
        }
    }
    let load = |p: &mut aya::programs::Program, func: &str| {
        if let Ok(p) = <&mut BtfTracePoint>::try_from(p) {
            // Errors are told by the attach, which loads it again.
            let _ = p.load(func, btf);
        }
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            for (func, p) in others {
                load(p, func);
            }
        });
        if let Some(p) = drop_p {
            load(p, "kfree_skb");
        }
    });
}

/// What attached besides the drop program, and what did not (warnings).
#[derive(Default)]
struct Attached {
    routes: bool,
    syn: bool,
    neigh: bool,
    hops: Vec<&'static str>,
    per_packet: PerPacket,
    warnings: Vec<String>,
}

impl Attached {
    /// Kernels after 6.18 give a qdisc's finer drop reason only to this
    /// tracepoint; without it such drops read QDISC_DROP.
    fn qdisc(&mut self, ebpf: &mut Ebpf, kbtf: &KernelBtf, btf: &Btf) {
        if kbtf.qdisc_drop_code() == 0 {
            return;
        }
        if let Err(e) = attach_btf(ebpf, names::PROG_QDISC_REASON, "qdisc_drop", btf) {
            self.warnings.push(format!(
                "qdisc drops show as QDISC_DROP, without their finer reason: {e:#}"
            ));
        }
    }

    fn routes(&mut self, ebpf: &mut Ebpf, btf: &Btf) {
        for (prog, what) in [
            (names::PROG_FIB4, "fib_table_lookup"),
            (names::PROG_FIB6, "fib6_table_lookup"),
        ] {
            match attach_btf_link(ebpf, prog, what, btf) {
                Ok(id) => {
                    self.routes = true;
                    self.per_packet.attached(prog, id);
                }
                Err(e) => self
                    .warnings
                    .push(format!("route lookups ({what}) not traced: {e:#}")),
            }
        }
    }

    fn syn(&mut self, ebpf: &mut Ebpf, btf: &Btf) {
        match attach_btf_link(ebpf, names::PROG_SYN_XMIT, "net_dev_start_xmit", btf) {
            Ok(id) => {
                self.syn = true;
                self.per_packet.attached(names::PROG_SYN_XMIT, id);
            }
            Err(e) => self
                .warnings
                .push(format!("SYN/MSS check not available: {e:#}")),
        }
    }

    fn neigh(&mut self, ebpf: &mut Ebpf, btf: &Btf) {
        let a = attach_btf(ebpf, names::PROG_NEIGH_TIMER, "neigh_timer_handler", btf);
        let b = attach_btf(ebpf, names::PROG_NEIGH_SEND, "neigh_event_send_done", btf);
        self.neigh = a.is_ok() || b.is_ok();
        for r in [a, b] {
            if let Err(e) = r {
                self.warnings
                    .push(format!("neighbour states not traced: {e:#}"));
            }
        }
    }

    /// The hop probes of `tracer trace`: at least one must attach.
    fn hops(&mut self, ebpf: &mut Ebpf, btf: &Btf) -> Result<()> {
        for (prog, func) in [
            (names::PROG_HOP_RECEIVE, "netif_receive_skb"),
            (names::PROG_HOP_QUEUE, "net_dev_queue"),
            (names::PROG_HOP_XMIT, "net_dev_xmit"),
            (names::PROG_HOP_CONSUME, "consume_skb"),
        ] {
            match attach_btf(ebpf, prog, func, btf) {
                Ok(()) => self.hops.push(func),
                Err(e) => self
                    .warnings
                    .push(format!("hops at {func} not traced: {e:#}")),
            }
        }
        if self.hops.is_empty() {
            bail!(
                "cannot follow packets: no hop tracepoint attached ({})",
                self.warnings.join("; ")
            );
        }
        Ok(())
    }
}

/// The drop program for a hook: before 5.17 tp_btf and raw_tp need the
/// variants that do not read a reason argument.
fn drop_prog(hook: DropHook, reasons: bool) -> &'static str {
    match (hook, reasons) {
        (DropHook::TpBtf, true) => names::PROG_DROP_BTF,
        (DropHook::TpBtf, false) => names::PROG_DROP_BTF_NOREASON,
        (DropHook::RawTp, true) => names::PROG_DROP_RAW,
        (DropHook::RawTp, false) => names::PROG_DROP_RAW_NOREASON,
        (DropHook::Tracepoint, _) => names::PROG_DROP_CLASSIC,
    }
}

/// The `bpf_prog_info` counters aya 0.14 does not expose.
#[derive(Clone, Copy)]
struct ProgCounters {
    run_time_ns: u64,
    run_cnt: u64,
    recursion_misses: u64,
    verified_insns: u64,
}

/// Reads `bpf_prog_info` with BPF_OBJ_GET_INFO_BY_FD. The struct is UAPI
/// and only ever grows, so these offsets are stable; the kernel fills at
/// most the length we pass and says how much it wrote.
fn prog_info(fd: std::os::fd::BorrowedFd<'_>) -> Option<ProgCounters> {
    use std::os::fd::AsRawFd;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const RUN_TIME_NS: usize = 192;
    const RUN_CNT: usize = 200;
    const RECURSION_MISSES: usize = 208;
    const VERIFIED_INSNS: usize = 216;
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = [0u8; 232];
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: attr points at our buffer and says how long it is; the kernel
    // writes at most info_len bytes into it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if r != 0 || (attr.info_len as usize) < RECURSION_MISSES + 8 {
        return None;
    }
    let at = |o: usize| -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&info[o..o + 8]);
        u64::from_ne_bytes(b)
    };
    // A u32, absent before 5.16 (the kernel then writes less).
    let verified_insns = if attr.info_len as usize >= VERIFIED_INSNS + 4 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&info[VERIFIED_INSNS..VERIFIED_INSNS + 4]);
        u32::from_ne_bytes(b) as u64
    } else {
        0
    };
    Some(ProgCounters {
        run_time_ns: at(RUN_TIME_NS),
        run_cnt: at(RUN_CNT),
        recursion_misses: at(RECURSION_MISSES),
        verified_insns,
    })
}

fn attach_btf(ebpf: &mut Ebpf, prog: &str, func: &str, btf: &Btf) -> Result<()> {
    attach_btf_link(ebpf, prog, func, btf).map(|_| ())
}

fn attach_btf_link(
    ebpf: &mut Ebpf,
    prog: &str,
    func: &str,
    btf: &Btf,
) -> Result<BtfTracePointLinkId> {
    let p: &mut BtfTracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| anyhow!("eBPF object lacks program {prog}"))?
        .try_into()?;
    // Maybe verified already (see `verify_in_parallel`).
    if p.fd().is_err() {
        p.load(func, btf)
            .map_err(|e| anyhow!("tracepoint {func} (tp_btf) did not load: {}", load_error(e)))?;
    }
    p.attach()
        .map_err(|e| anyhow!("tracepoint {func} (tp_btf) did not attach: {e}"))
}

fn attach_raw(ebpf: &mut Ebpf, prog: &str, tp: &str) -> Result<()> {
    let p: &mut RawTracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| anyhow!("eBPF object lacks program {prog}"))?
        .try_into()?;
    p.load()
        .map_err(|e| anyhow!("raw tracepoint {tp} did not load: {}", load_error(e)))?;
    p.attach(tp)
        .map_err(|e| anyhow!("raw tracepoint {tp} did not attach: {e}"))?;
    Ok(())
}

fn attach_classic(ebpf: &mut Ebpf, prog: &str) -> Result<()> {
    let p: &mut TracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| anyhow!("eBPF object lacks program {prog}"))?
        .try_into()?;
    p.load()
        .map_err(|e| anyhow!("tracepoint skb:kfree_skb did not load: {}", load_error(e)))?;
    p.attach("skb", "kfree_skb")
        .map_err(|e| anyhow!("tracepoint skb:kfree_skb did not attach: {e}"))?;
    Ok(())
}

/// A load error in one line: the errno and, when the verifier refused the
/// program, the last lines of its log (where it says why), not all of it.
fn load_error(e: aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = lines[lines.len().saturating_sub(6)..].join(" | ");
            if tail.is_empty() {
                format!("{io_error}")
            } else {
                format!("{io_error}; verifier: {tail}")
            }
        }
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};

    /// No program calls `memset`, `memmove` or `memcpy`: bpf-linker's are
    /// byte-at-a-time loops, called as BPF functions. One on the storm
    /// drop's path (a zeroed header buffer) was 16 % of the drop probe's
    /// cost, and the verifier walked each loop again on every path
    /// (54.0k instructions for `watch` with them, 37.6k without). Write
    /// such code with `words::zero` and `words::copy` (tracer-ebpf).
    #[test]
    fn no_program_calls_a_byte_loop_mem_function() {
        let file = object::File::parse(super::OBJECT).expect("the eBPF object parses");
        let mut calls = Vec::new();
        for section in file.sections() {
            for (_, reloc) in section.relocations() {
                let RelocationTarget::Symbol(i) = reloc.target() else {
                    continue;
                };
                let Ok(name) = file.symbol_by_index(i).and_then(|s| s.name()) else {
                    continue;
                };
                if matches!(name, "memset" | "memmove" | "memcpy") {
                    calls.push(format!("{} -> {name}", section.name().unwrap_or("?")));
                }
            }
        }
        assert!(calls.is_empty(), "{calls:#?}");
    }
}
