//! The tracing session shared by `watch` and `diagnose`: turn the user's
//! options into kernel filters, attach, pump the ring buffer into a
//! `Consumer`, stop on Ctrl-C / SIGTERM / --duration / --count, and
//! summarise.

use crate::events::aggregate::{AggregateRecord, Aggregator};
use crate::events::decode::{decode, Event};
use crate::events::decode::{decode_extra, kind_of, Extra};
use crate::events::namer::Namer;
use crate::events::record::DropRecord;
use crate::filter;
use crate::host::netns;
use crate::host::topology::Topology;
use crate::kernel::btf::KernelBtf;
use crate::kernel::probes::{DropHook, ProbeConfig, Probes};
use crate::kernel::route_gate::RouteGate;
use crate::kernel::shed::StormShed;
use crate::kernel::syn_gate::SynGate;
use crate::sinks::pcapng::PcapSink;
use crate::sinks::{Format, Output, Summary};
use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, SignalKind};
use tracer_abi::{
    ring_drop_capacity, Config, DropEvent, HopEvent, NeighEvent, SynEvent, EXTRA_PACKET, EXTRA_SKB,
    EXTRA_STACK, KIND_DROP_EXTRA, KIND_HOP, MAX_NETNS, MAX_SNAPLEN, NO_OFFSET,
};

/// Records handled per wake-up before the loop looks at signals again,
/// and the time a batch may take at most.
const BATCH: usize = 4096;
const BATCH_TIME: Duration = Duration::from_millis(20);

/// What the user asked to trace (the flags `watch` and `diagnose` share).
#[derive(Clone, Debug, Default)]
pub struct TraceOptions {
    /// Filter expression words, joined with spaces.
    pub expr: Vec<String>,
    pub netns: Vec<String>,
    pub iface: Option<String>,
    pub reasons: Vec<String>,
    pub exclude_reasons: Vec<String>,
    /// Show the benign noise that is hidden by default.
    pub all: bool,
    pub duration: Option<Duration>,
    pub count: Option<u64>,
    pub hook: Option<DropHook>,
    pub format: Option<Format>,
    /// Kernel BTF to use instead of /sys/kernel/btf/vmlinux.
    pub btf: Option<std::path::PathBuf>,
    /// Send every drop as an event, even in a storm.
    pub no_aggregate: bool,
    /// Write the output (JSON lines or text) to this file instead of
    /// stdout.
    pub output_path: Option<std::path::PathBuf>,
    /// What to do with an existing `output_path`, `pcap` or recording
    /// (`--force`, `--append`; refused by default).
    pub existing: crate::sinks::file::Existing,
    /// Write the dropped packets as pcapng here (`-` is stdout).
    pub pcap: Option<std::path::PathBuf>,
    /// Packet bytes to capture for `pcap` (default `DEFAULT_SNAPLEN`).
    pub snaplen: Option<u32>,
    /// Each drop's kernel stack.
    pub stack: bool,
    /// Follow matching packets through the host (`tracer trace`).
    pub trace: bool,
}

/// Bytes of each dropped packet written to pcapng unless --snaplen says
/// otherwise: every header of a TCP/UDP packet over IPv6 with options,
/// and the start of its payload.
pub const DEFAULT_SNAPLEN: u32 = 256;

/// Aggregation starts on a CPU that matched more drops than this in one
/// `AGG_WINDOW_NS` (100 ms): 10k drops/s per CPU, which userspace still
/// prints comfortably and the ring buffer (about 20k events) absorbs.
const AGG_BURST: u32 = 1000;
/// While aggregating, this many drops per key per CPU per second are still
/// sent in full (what `diagnose` and a reader need to see the flow).
const AGG_PER_KEY: u32 = 5;
/// Ticks (250 ms each) between reads of the storm counts.
const AGG_TICKS: u32 = 4;

/// The stack from the tracepoint's caller on: the frames of our own
/// program and of the tracepoint machinery above it say nothing.
pub fn trim_probe_frames(frames: Vec<String>) -> Vec<String> {
    let probe = |f: &String| {
        f.starts_with("bpf_prog_")
            || f.starts_with("bpf_trace_run")
            || f.starts_with("__bpf_trace_")
            || f.starts_with("perf_trace_")
            || f.starts_with("trace_event_raw_event_")
            || f.starts_with("__traceiter_")
    };
    match frames.iter().rposition(probe) {
        Some(i) => frames[i + 1..].to_vec(),
        None => frames,
    }
}

/// Receives every event of a session.
pub trait Consumer {
    /// Return false to stop counting this drop towards --count.
    fn drop(&mut self, raw: &DropEvent, s: &mut Session) -> std::io::Result<bool>;
    fn syn(&mut self, _raw: &SynEvent, _s: &mut Session) -> std::io::Result<()> {
        Ok(())
    }
    fn neigh(&mut self, _raw: &NeighEvent, _s: &mut Session) -> std::io::Result<()> {
        Ok(())
    }
    /// A followed packet passed a tracepoint (`tracer trace`).
    fn hop(&mut self, _raw: &HopEvent, _s: &mut Session) -> std::io::Result<()> {
        Ok(())
    }
    /// Called about every 250 ms, for conclusions that need time to pass.
    fn tick(&mut self, _s: &mut Session) -> std::io::Result<()> {
        Ok(())
    }
    /// What the kernel counted by key in a storm since the last call
    /// (about once a second); by default printed.
    fn aggregates(&mut self, recs: &[AggregateRecord], s: &mut Session) -> std::io::Result<()> {
        s.out.aggregates(recs)
    }
    /// Called once before the summary.
    fn finish(&mut self, _s: &mut Session) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a consumer can use: the names and the output.
pub struct Session {
    pub namer: Namer,
    pub out: Output,
    pub summary: Summary,
    /// The namespaces the user restricted tracing to; empty for all.
    pub netns: Vec<u32>,
    pub own_netns: u32,
    pub filter: filter::Filter,
    /// `--all`: also show benign noise (see `namer::noise_kind`).
    pub show_noise: bool,
    /// The pcapng file of `-w`.
    pub pcap: Option<PcapSink>,
    /// Name each drop's kernel stack (`--stack`).
    pub stack: bool,
    /// The latest `DropExtra` per CPU, waiting for its drop event.
    extras: HashMap<u32, Extra>,
}

/// An extra older than this is not the one of the drop that follows it
/// (its own drop event was lost). Taking a stack can take a while.
const EXTRA_PAIR_NS: u64 = 100_000_000;

impl Session {
    pub fn new(namer: Namer, out: Output, own_netns: u32, filter: filter::Filter) -> Self {
        Session {
            namer,
            out,
            summary: Summary::new(),
            netns: Vec::new(),
            own_netns,
            filter,
            show_noise: false,
            pcap: None,
            stack: false,
            extras: HashMap::new(),
        }
    }

    /// The stack and bytes the kernel sent just before this drop.
    pub fn take_extra(&mut self, raw: &DropEvent) -> Option<Extra> {
        let x = self.extras.remove(&raw.cpu)?;
        (x.hdr.ts_ns <= raw.ts_ns && raw.ts_ns - x.hdr.ts_ns < EXTRA_PAIR_NS).then_some(x)
    }

    /// A drop named, with its stack when asked for, and its extra.
    pub fn name_drop(&mut self, raw: &DropEvent) -> (DropRecord, Option<Extra>) {
        let mut rec = self.namer.drop_record(raw);
        let extra = self.take_extra(raw);
        if self.stack {
            let frames: Vec<String> = extra
                .iter()
                .flat_map(|x| x.stack())
                .map(|a| self.namer.symbolize(a))
                .collect();
            rec.stack = Some(trim_probe_frames(frames));
        }
        (rec, extra)
    }

    /// Writes the drop to the pcapng file, if there is one.
    pub fn capture(
        &mut self,
        rec: &DropRecord,
        extra: Option<&Extra>,
        verdicts: &[String],
    ) -> std::io::Result<()> {
        if self.pcap.is_none() {
            return Ok(());
        }
        let label = self.out.netns_label(rec.netns, &rec.netns_name);
        match &mut self.pcap {
            Some(p) => p.packet(rec, extra, &label, verdicts),
            None => Ok(()),
        }
    }

    /// An interface's name, if it (and its netns) still exist.
    pub fn namer_ifname(&mut self, netns: u32, ifindex: i32) -> Option<String> {
        if netns == 0 || ifindex == 0 {
            return None;
        }
        match self.namer.topology.ifname(netns, ifindex) {
            crate::host::topology::IfName::Name(n) => Some(n),
            _ => None,
        }
    }

    /// Flushes the output and the pcapng file.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        if let Some(p) = &mut self.pcap {
            p.flush()?;
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct Ready<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    hook: String,
    routes: bool,
    syn_check: bool,
    neigh: bool,
    netns: &'a [u32],
    filter: &'a str,
    startup_ms: f64,
}

/// A loaded, attached tracer with its session state.
pub struct Tracer {
    probes: Probes,
    pub session: Session,
    duration: Option<Duration>,
    count: Option<u64>,
    started: Instant,
    stop: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// Taken before `ready` is printed, so a signal sent the moment a
    /// caller sees it still ends the run with a summary.
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    /// Bytes of the record sent before each drop when capturing (0 if not):
    /// the ring then holds fewer drops (see `--count`).
    extra_bytes: u64,
}

impl Tracer {
    /// Validates every option (one clear error per bad input), then loads
    /// and attaches. `diagnose` adds the route, SYN and neighbour probes.
    pub fn start(opts: &TraceOptions, diagnose: bool, started: Instant) -> Result<Tracer> {
        let format = opts.format.unwrap_or(Format::Text);
        // Parse user input before touching the kernel, so typos fail fast
        // and without root.
        let filter = filter::compile(&opts.expr.join(" ")).map_err(|e| anyhow!("{e}"))?;
        let snaplen = opts.snaplen.unwrap_or(DEFAULT_SNAPLEN);
        if snaplen == 0 || snaplen > MAX_SNAPLEN {
            bail!("bad --snaplen {snaplen}: give 1 to {MAX_SNAPLEN} bytes");
        }
        if opts.snaplen.is_some() && opts.pcap.is_none() {
            bail!("--snaplen applies to the packets written with -w (pcapng): add -w FILE");
        }
        let own_netns = netns::own_inode().map_err(|e| anyhow!("cannot read own netns: {e}"))?;
        let mut namespaces = Vec::new();
        for arg in &opts.netns {
            namespaces.push(netns::resolve(arg)?);
        }
        let namespaces = once_each(namespaces);
        if namespaces.len() > MAX_NETNS {
            bail!("too many --netns: the kernel filter takes at most {MAX_NETNS}");
        }
        // aya needs its own parse of the kernel BTF; do it on a second
        // core while we resolve names and offsets with btf-rs.
        let btf_path = opts
            .btf
            .clone()
            .unwrap_or_else(|| crate::kernel::btf::VMLINUX.into());
        let kbtf = KernelBtf::from_file(&btf_path)?;
        let aya_btf = std::thread::spawn(move || {
            aya::Btf::parse_file(&btf_path, object::Endianness::default())
        });
        let reasons = kbtf.drop_reasons_or_none()?;
        let include = reasons.parse_list("--reason", &opts.reasons)?;
        let exclude = reasons.parse_list("--exclude-reason", &opts.exclude_reasons)?;
        if let Some(both) = include.iter().find(|c| exclude.contains(c)) {
            bail!(
                "{} is both included (--reason) and excluded (--exclude-reason)",
                reasons.name(*both)
            );
        }
        let mut topology = Topology::new();
        // Container names: the inventory runs while the programs load.
        let containers = crate::host::containers::Containers::start();

        let mut config = Config::new();
        let mut inodes: Vec<u32> = namespaces.iter().map(|n| n.inode).collect();
        if let Some(ifname) = &opts.iface {
            // An ifindex means nothing without its netns: -i names an
            // interface of --netns, or of tracer's own netns.
            if inodes.len() > 1 {
                bail!("-i needs a single --netns to name the interface in");
            }
            let inode = inodes.first().copied().unwrap_or(own_netns);
            let label = namespaces
                .first()
                .and_then(|n| n.name.clone())
                .unwrap_or_else(|| {
                    if inode == own_netns {
                        "host".to_string()
                    } else {
                        inode.to_string()
                    }
                });
            let topo = topology
                .get(inode)
                .ok_or_else(|| anyhow!("cannot read the interfaces of netns {label}"))?;
            // An ifindex works too, as with `ip link show 8`.
            let link = match ifname.parse::<i32>() {
                Ok(index) if index > 0 => topo.link(index),
                _ => topo.link_by_name(ifname),
            };
            let Some(link) = link else {
                bail!(
                    "unknown interface '{ifname}' in netns {label}{}",
                    elsewhere(&mut topology, ifname, inode)
                );
            };
            config.ifindex = link.ifindex as u32;
            inodes = vec![inode];
        }
        for (i, n) in inodes.iter().enumerate() {
            config.netns[i] = *n;
        }
        config.netns_count = inodes.len() as u32;
        config.reason_include = u32::from(!include.is_empty());
        config.reason_exclude = u32::from(!exclude.is_empty());
        config.hide_noise = u32::from(!opts.all);
        // Before 5.17 every drop carries reason 0: multicast nobody
        // listens to is still noise whatever its reason, the others need one.
        config.noise.not_specified = if reasons.is_empty() {
            0
        } else {
            reasons.code("NOT_SPECIFIED").unwrap_or(u32::MAX)
        };
        config.noise.no_socket = reasons.code("NO_SOCKET").unwrap_or(u32::MAX);
        config.noise.queue_purge = reasons.code("QUEUE_PURGE").unwrap_or(u32::MAX);
        config.frag_reason = reasons.code("FRAG_REASM_TIMEOUT").unwrap_or(u32::MAX);
        config.aggregate = u32::from(!opts.no_aggregate);
        config.agg_burst = AGG_BURST;
        config.agg_per_key = AGG_PER_KEY;
        config.routes = u32::from(diagnose);
        config.syn_check = u32::from(diagnose);
        config.neigh = u32::from(diagnose);
        let (ops, len) = filter.to_kernel();
        config.filter = ops;
        config.filter_len = len;
        if opts.pcap.is_some() {
            config.extra |= EXTRA_PACKET;
            config.snaplen = snaplen;
            let o = kbtf.offsets()?;
            if [o.skb_mac_header, o.skb_tail, o.skb_data].contains(&NO_OFFSET) {
                bail!("this kernel's BTF lacks sk_buff.mac_header/tail/data: packets cannot be captured");
            }
        }
        if opts.stack {
            config.extra |= EXTRA_STACK;
        }
        if opts.trace {
            config.trace = 1;
            config.extra |= EXTRA_SKB;
        }
        let config_extra = config.extra;
        // The files are opened before attaching, so a bad path fails fast.
        let pcap = match &opts.pcap {
            Some(p) => Some(PcapSink::create(p, opts.existing)?),
            None => None,
        };
        let pcap_stdout = pcap.as_ref().is_some_and(|p| p.stdout);
        // `-w -` owns stdout: the lines go to stderr, as tcpdump's do.
        let out = match &opts.output_path {
            Some(p) => Output::to_file(p, opts.existing, format, own_netns)?,
            None if pcap_stdout => Output::stderr(format, own_netns),
            None => Output::stdout(format, own_netns),
        };

        let aya_btf = aya_btf
            .join()
            .map_err(|_| anyhow!("reading kernel BTF failed"))?
            .map_err(|e| anyhow!("cannot read kernel BTF: {e}"))?;
        let mut probes = Probes::load(
            &kbtf,
            &aya_btf,
            &ProbeConfig {
                config,
                include_reasons: include,
                exclude_reasons: exclude,
                hook: opts.hook,
                drop_reasons: !reasons.is_empty(),
            },
        )?;
        let mut namer = Namer::loading_symbols(reasons, topology);
        namer.containers = containers.ready(Duration::from_millis(1500));
        namer.routes = probes.take_routes();
        let mut session = Session::new(namer, out, own_netns, filter);
        session.netns = inodes;
        session.pcap = pcap;
        session.stack = opts.stack;
        session.show_noise = opts.all;
        let mut t = Tracer {
            probes,
            session,
            duration: opts.duration,
            count: opts.count,
            started,
            stop: None,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            extra_bytes: if config_extra == 0 {
                0
            } else {
                (std::mem::size_of::<tracer_abi::DropExtra>() + tracer_abi::MAX_SNAPLEN as usize)
                    as u64
            },
        };
        t.announce()?;
        Ok(t)
    }

    fn announce(&mut self) -> Result<()> {
        let startup_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let s = &mut self.session;
        for w in &self.probes.warnings {
            eprintln!("tracer: warning: {w}");
        }
        if s.out.format == Format::Json {
            s.out.json(&Ready {
                kind: "ready",
                hook: self.probes.hook.to_string(),
                routes: self.probes.routes_attached,
                syn_check: self.probes.syn_attached,
                neigh: self.probes.neigh_attached,
                netns: &s.netns,
                filter: &s.filter.text,
                startup_ms,
            })?;
            s.out.flush()?;
        } else {
            let scope = if s.netns.is_empty() {
                "all namespaces".to_string()
            } else {
                let names: Vec<String> = s
                    .netns
                    .iter()
                    .map(|n| s.out.netns_label(*n, &s.namer.topology.netns_name(*n)))
                    .collect();
                format!("netns {}", names.join(", "))
            };
            eprintln!(
                "tracer: attached to skb:kfree_skb ({}) in {startup_ms:.0} ms, watching {scope}{}; Ctrl-C to stop",
                self.probes.hook,
                if s.filter.is_empty() {
                    String::new()
                } else {
                    format!(" for '{}'", s.filter.text)
                }
            );
        }
        Ok(())
    }

    /// The drop hook that attached (`tp_btf`, `raw_tp`, `tracepoint`).
    pub fn hook(&self) -> String {
        self.probes.hook.to_string()
    }

    /// Also stop when `n` is notified (the lab stops when its traffic ends).
    pub fn stop_on(&mut self, n: std::sync::Arc<tokio::sync::Notify>) {
        self.stop = Some(n);
    }

    /// Pumps events until a stop condition; returns the final summary.
    ///
    /// Stopping is ordered so the summary adds up exactly: detach (nothing
    /// new arrives), drain what the ring still holds, then read the
    /// kernel's counters. Then `drops + lost + not_shown` equals
    /// `kernel.drops_matched` whatever ended the run.
    pub async fn run(self, consumer: &mut dyn Consumer) -> Result<Summary> {
        let t0 = Instant::now();
        let deadline = self.duration.map(|d| tokio::time::Instant::now() + d);
        let sleep_until = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep_until);
        let mut ticker = tokio::time::interval(Duration::from_millis(250));
        let Tracer {
            mut probes,
            mut session,
            count,
            stop,
            mut term,
            mut int,
            mut hup,
            extra_bytes,
            ..
        } = self;
        let stopped = async move {
            match stop {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stopped);
        // SAFETY: the AsyncFd owns the ring buffer, so its fd stays open
        // for as long as it is registered.
        let mut events = unsafe { AsyncFd::register(probes.take_events()?)? };
        let mut pump = Pump {
            consumer,
            count,
            shown: 0,
            not_shown: 0,
            records: 0,
        };
        // Lost events counted before --count was reached; the kernel's
        // count after that is of events nobody asked for.
        let mut lost_at_count = None;
        let mut broken_pipe = false;
        let mut aggregator = Aggregator::starting(crate::kernel::clock::monotonic_ns());
        let mut shed = StormShed::default();
        let mut syn_gate = SynGate::start(&probes, session.netns.clone());
        let mut route_gate = RouteGate::new(&probes);
        let mut ticks: u32 = 0;
        loop {
            tokio::select! {
                _ = &mut sleep_until => break,
                _ = &mut stopped => break,
                _ = term.recv() => { session.summary.interrupted = true; break }
                _ = int.recv() => { session.summary.interrupted = true; break }
                // A dropped SSH session: end with the summary, as on SIGTERM.
                _ = hup.recv() => { session.summary.interrupted = true; break }
                _ = ticker.tick() => {
                    session.namer.topology.set_clock(Instant::now());
                    session.namer.topology.sweep();
                    shed.tick(&mut probes);
                    syn_gate.tick(&mut probes);
                    route_gate.tick(&mut probes);
                    probes.heal();
                    ticks += 1;
                    let aggregates = if ticks.is_multiple_of(AGG_TICKS) {
                        // Live counters for a long run (`tracer agent`).
                        session.summary.kernel = probes.stats();
                        report_aggregates(&mut aggregator, &probes, &mut session, &mut *pump.consumer)
                    } else {
                        Ok(())
                    };
                    if let Err(e) = aggregates
                        .and_then(|_| pump.consumer.tick(&mut session))
                        .and_then(|_| session.flush())
                    {
                        broken_pipe = is_pipe(&e);
                        if broken_pipe { break; }
                        return Err(e.into());
                    }
                }
                guard = events.readable_mut() => {
                    let mut guard = guard?;
                    let rb = guard.get_inner_mut();
                    // A bounded batch, then back to select!: under a drop
                    // storm the ring never empties, and signals, --duration
                    // and ticks must still be served.
                    let batch_start = Instant::now();
                    session.namer.topology.set_clock(batch_start);
                    let before = pump.records;
                    let r = pump.batch(rb, &mut session, Some(batch_start));
                    if pump.records != before {
                        route_gate.event(&mut probes);
                    }
                    let drained = matches!(r, Ok(Batch::Drained));
                    // Keep the readiness while records remain: the ring
                    // buffer only wakes a reader that has caught up.
                    if drained {
                        guard.clear_ready();
                    }
                    match r.and_then(|b| session.flush().map(|_| b)) {
                        Ok(Batch::CountReached) => {
                            // The reader took fewer than --count records, so
                            // while the ring was full the count-th drop was
                            // in it: every loss came after it, and nothing
                            // the user asked for was lost. A larger count
                            // than the ring holds keeps its real losses.
                            let lost = probes.stats().lost;
                            lost_at_count = Some(if count.unwrap_or(0) <= ring_drop_capacity(extra_bytes) {
                                0
                            } else {
                                lost
                            });
                            break;
                        }
                        Ok(Batch::Drained) => {}
                        Ok(Batch::More) => {
                            // On a current-thread runtime the signal driver
                            // only runs when this task yields.
                            drop(guard);
                            tokio::task::yield_now().await;
                        }
                        Err(e) => {
                            broken_pipe = is_pipe(&e);
                            if broken_pipe { break; }
                            return Err(e.into());
                        }
                    }
                }
            }
        }
        // Detach, then drain: what the ring holds was matched before the
        // stop and belongs in the output (or, past --count or a closed
        // pipe, in `not_shown`).
        session.summary.storm_paused_ms = shed.total_ms();
        session.summary.syn_check_parked_ms = syn_gate.parked_ms();
        session.summary.routes_parked_ms = route_gate.parked_ms();
        probes.detach();
        session.namer.topology.set_clock(Instant::now());
        let rb = events.get_mut();
        if broken_pipe {
            pump.count = Some(0);
        }
        loop {
            match pump.batch(rb, &mut session, None) {
                Ok(Batch::Drained) => break,
                Ok(_) => {}
                Err(e) if is_pipe(&e) => {
                    broken_pipe = true;
                    pump.count = Some(0);
                }
                Err(e) => return Err(e.into()),
            }
        }
        // The last interval's storm counts, now final too; past --count
        // they are drops nobody asked to see.
        if pump.count.is_some_and(|c| pump.shown >= c) {
            let recs = aggregator.poll(probes.aggregate_counts(), &mut session.namer, 0);
            pump.not_shown += recs.iter().map(|r| r.count).sum::<u64>();
        } else if !broken_pipe {
            if let Err(e) =
                report_aggregates(&mut aggregator, &probes, &mut session, &mut *pump.consumer)
            {
                broken_pipe = is_pipe(&e);
                if !broken_pipe {
                    return Err(e.into());
                }
            }
        }
        let stats = probes.stats();
        session.summary.kernel = stats;
        session.summary.lost = lost_at_count.unwrap_or(stats.lost);
        session.summary.not_shown = pump.not_shown + (stats.lost - session.summary.lost);
        session.summary.syns_flagged = stats.syns_flagged;
        session.summary.duration_s = t0.elapsed().as_secs_f64();
        if !broken_pipe {
            let mut conclude = || -> std::io::Result<()> {
                pump.consumer.finish(&mut session)?;
                if let Some(p) = &mut session.pcap {
                    p.finish()?;
                }
                let summary = session.summary.clone();
                session.out.summary(&summary)?;
                session.out.flush()
            };
            match conclude() {
                Ok(()) => {}
                // The reader went away: a quiet end, as for any filter.
                Err(e) if is_pipe(&e) => {}
                // A full disk must not pass for success.
                Err(e) => return Err(anyhow!("cannot write the output: {e}")),
            }
        }
        drop(events);
        drop(probes);
        Ok(session.summary)
    }
}

/// Each namespace once, in the order first named: `--netns a --netns a`,
/// or a name and the inode of the same namespace, is one namespace (in
/// the kernel filter and the `ready` line).
fn once_each(namespaces: Vec<netns::NetnsInfo>) -> Vec<netns::NetnsInfo> {
    let mut seen = std::collections::HashSet::new();
    namespaces
        .into_iter()
        .filter(|n| seen.insert(n.inode))
        .collect()
}

/// Prints (and counts) what the kernel counted by key since the last call.
fn report_aggregates(
    aggregator: &mut Aggregator,
    probes: &Probes,
    session: &mut Session,
    consumer: &mut dyn Consumer,
) -> std::io::Result<()> {
    let recs = aggregator.poll(
        probes.aggregate_counts(),
        &mut session.namer,
        crate::kernel::clock::monotonic_ns(),
    );
    for r in &recs {
        session.summary.count_aggregate(r);
    }
    if let Some(p) = &mut session.pcap {
        let out = &session.out;
        p.aggregates(&recs, |r| out.netns_label(r.netns, &r.netns_name));
    }
    consumer.aggregates(&recs, session)
}

/// How a batch of ring-buffer records ended.
enum Batch {
    /// The ring is empty.
    Drained,
    /// Time or size was up; more records wait.
    More,
    /// --count drops were shown.
    CountReached,
}

/// Hands ring-buffer records to the consumer and counts what it shows.
struct Pump<'a> {
    consumer: &'a mut dyn Consumer,
    count: Option<u64>,
    shown: u64,
    /// Drops matched in the kernel but not shown: past --count, or after
    /// the reader closed the pipe.
    not_shown: u64,
    /// Records read from the ring, of every kind.
    records: u64,
}

impl Pump<'_> {
    /// Up to BATCH records, or BATCH_TIME when `started` is given.
    fn batch(
        &mut self,
        rb: &mut aya::maps::RingBuf<aya::maps::MapData>,
        session: &mut Session,
        started: Option<Instant>,
    ) -> std::io::Result<Batch> {
        for i in 0..BATCH {
            if i % 256 == 255 && started.is_some_and(|t| t.elapsed() > BATCH_TIME) {
                return Ok(Batch::More);
            }
            let Some(item) = rb.next() else {
                return Ok(Batch::Drained);
            };
            self.records += 1;
            if kind_of(&item) == KIND_HOP {
                let done = self.count.is_some_and(|c| self.shown >= c);
                let r = match crate::events::decode::decode_hop(&item) {
                    Ok(h) if !done => self.consumer.hop(&h, session),
                    Ok(_) => Ok(()),
                    Err(_) => {
                        session.summary.undecodable += 1;
                        Ok(())
                    }
                };
                drop(item);
                r?;
                continue;
            }
            if kind_of(&item) == KIND_DROP_EXTRA {
                // Kept for the drop event that follows it on its CPU.
                match decode_extra(&item) {
                    Ok(x) => {
                        session.extras.insert(x.hdr.cpu, x);
                    }
                    Err(_) => session.summary.undecodable += 1,
                }
                continue;
            }
            let done = self.count.is_some_and(|c| self.shown >= c);
            let r = match decode(&item) {
                Ok(Event::Drop(_)) if done => {
                    self.not_shown += 1;
                    Ok(())
                }
                Ok(_) if done => Ok(()),
                Ok(Event::Drop(d)) => self.consumer.drop(&d, session).map(|counted| {
                    if counted {
                        self.shown += 1;
                    } else {
                        // Hidden by the consumer, still accounted for.
                        self.not_shown += 1;
                    }
                }),
                Ok(Event::Syn(s)) => self.consumer.syn(&s, session),
                Ok(Event::Neigh(n)) => self.consumer.neigh(&n, session),
                Err(_) => {
                    session.summary.undecodable += 1;
                    Ok(())
                }
            };
            drop(item);
            r?;
            if !done && self.count.is_some_and(|c| self.shown >= c) {
                return Ok(Batch::CountReached);
            }
        }
        Ok(Batch::More)
    }
}

fn is_pipe(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}

/// `tracer watch`: print every drop.
pub struct Printer;

impl Consumer for Printer {
    fn drop(&mut self, raw: &DropEvent, s: &mut Session) -> std::io::Result<bool> {
        let (rec, extra) = s.name_drop(raw);
        if rec.noise.is_some() && !s.show_noise {
            s.summary.hide(&rec);
            return Ok(false);
        }
        s.summary.count(&rec);
        s.out.drop(&rec)?;
        s.capture(&rec, extra.as_ref(), &[])?;
        Ok(true)
    }
}

/// Where else an interface of that name lives, as a hint for `-i`: the
/// user probably meant a namespace's interface without `--netns`.
fn elsewhere(topology: &mut Topology, ifname: &str, searched: u32) -> String {
    let found: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| n.inode != searched)
        .filter(|n| {
            topology
                .get(n.inode)
                .is_some_and(|t| t.link_by_name(ifname).is_some())
        })
        .map(|n| n.label())
        .take(3)
        .collect();
    match found.first() {
        None => String::new(),
        Some(first) => format!(
            " (an interface of that name is in netns {}: add --netns {})",
            found.join(", "),
            shlex::try_quote(first).unwrap_or_default()
        ),
    }
}

/// Parses `10s`, `2m`, `500ms`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    if t.starts_with('-') {
        bail!("bad duration '{s}': it cannot be negative");
    }
    match humantime::parse_duration(t) {
        Ok(d) => Ok(d),
        Err(_) => bail!("bad duration '{s}': use a value like 10s, 2m or 500ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_netns_is_listed_once() {
        let ns = |inode: u32, name: &str| netns::NetnsInfo {
            inode,
            name: Some(name.into()),
            path: format!("/run/netns/{name}").into(),
        };
        // By name twice, and once by a path to the same namespace.
        let got = once_each(vec![ns(7, "a"), ns(9, "b"), ns(7, "a"), ns(7, "x")]);
        let inodes: Vec<u32> = got.iter().map(|n| n.inode).collect();
        assert_eq!(inodes, [7, 9]);
    }

    #[test]
    fn stacks_start_at_the_tracepoint_caller() {
        let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            trim_probe_frames(f(&[
                "bpf_prog_37ba_drop_btf+0x19aa",
                "bpf_trace_run4+0x10d",
                "sk_skb_reason_drop+0x90",
                "ip_rcv_finish_core+0x25b",
            ])),
            f(&["sk_skb_reason_drop+0x90", "ip_rcv_finish_core+0x25b"])
        );
        assert_eq!(trim_probe_frames(f(&["a+0x1"])), f(&["a+0x1"]));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        let e = parse_duration("soon").unwrap_err().to_string();
        assert!(e.contains("'soon'"), "{e}");
    }
}
