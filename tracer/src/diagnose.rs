//! `tracer diagnose`, live or from a recording: the glue between a source
//! of facts (the kernel session, or a recording), the rules engine, the
//! output, and an optional recorder. The rules themselves live in
//! [`crate::rules`]; how verdicts print, in [`crate::sinks::verdict`].

use crate::events::decode::Extra;
use crate::events::record::{DropRecord, NeighRecord};
use crate::host::firewall::nftrace::{NfTrace, TraceFlow, TraceHit};
use crate::host::firewall::Ruleset;
use crate::host::topology::{Link, NsTopology, Topology};
use crate::kernel::clock::wall_now_ns;
use crate::record::{Header, Line, Reader, Recorder};
use crate::rules::{Engine, Fact, TopologySource, Verdict};
use crate::session::{Consumer, Session, TraceOptions, Tracer};
use crate::sinks::file;
use crate::sinks::rolling::RollingDir;
use crate::sinks::{Format, Output, Summary};
use anyhow::Result;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tracer_abi::{DropEvent, NeighEvent, SynEvent};

/// Whether dockerd runs on this host (advice only): one scan of /proc.
pub fn dockerd_running() -> bool {
    crate::host::proc::runs("dockerd")
}

/// When each namespace's topology was last seen as it was before its
/// latest change (see `TopologySource::changed_before`).
#[derive(Default)]
struct Changes {
    /// netns -> (the snapshot, last wall time seen so, changed before).
    seen: HashMap<u32, (Arc<NsTopology>, u64, Option<u64>)>,
}

impl Changes {
    /// Notes `t` seen at `now`; returns the namespace's changed-before time
    /// and whether this snapshot is a change.
    fn note(&mut self, t: &Arc<NsTopology>, now: u64) -> (Option<u64>, bool) {
        match self.seen.get_mut(&t.inode) {
            Some((prev, last, before)) => {
                if Arc::ptr_eq(prev, t) || prev.same_as(t) {
                    *last = now;
                    (*before, false)
                } else {
                    *before = Some(*last);
                    *prev = t.clone();
                    *last = now;
                    (*before, true)
                }
            }
            None => {
                self.seen.insert(t.inode, (t.clone(), now, None));
                (None, false)
            }
        }
    }
}

/// The live topology: netlink through the [`Topology`] cache, with every
/// snapshot a rule used copied into the recording (when there is one).
struct LiveSource<'a> {
    topology: &'a mut Topology,
    containers: &'a crate::host::containers::Containers,
    changes: &'a mut Changes,
    own_netns: u32,
    dockerd: bool,
    recorder: Option<&'a mut Recorder>,
    /// `--netns` (empty: tracer's own).
    watched: &'a [u32],
    now_ns: u64,
    /// First write error of the recorder, reported after the fact.
    error: Option<std::io::Error>,
    /// `--nftrace`: the run's traces.
    nftrace: Option<&'a mut Traced>,
}

/// `--nftrace`'s traces, and how many hits of each namespace the
/// recording already has.
#[derive(Default)]
pub struct Traced {
    traces: NfTrace,
    recorded: HashMap<u32, usize>,
}

impl LiveSource<'_> {
    /// Notes a copy served to the rules, and records it when it differs
    /// from the last recorded.
    fn record(&mut self, t: &Arc<NsTopology>) {
        let (before, _) = self.changes.note(t, self.now_ns);
        if let Some(r) = self.recorder.as_deref_mut() {
            if let Err(e) = r.topology_changed(self.now_ns, t, before) {
                self.error.get_or_insert(e);
            }
        }
    }
}

impl TopologySource for LiveSource<'_> {
    fn get(&mut self, netns: u32) -> Option<Arc<NsTopology>> {
        let t = self.topology.get(netns)?;
        self.record(&t);
        Some(t)
    }

    fn container(&mut self, netns: u32) -> Option<Arc<crate::host::containers::Container>> {
        let c = self.containers.snapshot().by_netns(netns).cloned()?;
        if let Some(r) = self.recorder.as_deref_mut() {
            if let Err(e) = r.container(self.now_ns, &c) {
                self.error.get_or_insert(e);
            }
        }
        Some(c)
    }

    fn docker_network(&mut self, bridge: &str) -> Option<crate::host::containers::DockerNetwork> {
        let n = self
            .containers
            .snapshot()
            .network_by_bridge(bridge)
            .cloned()?;
        if let Some(r) = self.recorder.as_deref_mut() {
            if let Err(e) = r.docker_network(self.now_ns, bridge, &n) {
                self.error.get_or_insert(e);
            }
        }
        Some(n)
    }

    fn changed_before(&mut self, netns: u32) -> Option<u64> {
        self.changes.seen.get(&netns).and_then(|s| s.2)
    }

    fn listen_moved(&mut self, netns: u32) -> bool {
        self.topology.listen_moved(netns)
    }

    fn reread(&mut self, netns: u32) -> Option<Arc<NsTopology>> {
        self.topology.invalidate(netns);
        self.get(netns)
    }

    fn recount(&mut self, netns: u32) -> Option<Arc<NsTopology>> {
        let t = self.topology.recount(netns)?;
        // Recorded as a read is: the new counters are what a replay's
        // verdict compares.
        self.record(&t);
        Some(t)
    }

    fn nftrace(&mut self, netns: u32, flow: &TraceFlow) -> Option<Vec<TraceHit>> {
        let t = self.nftrace.as_deref_mut()?;
        let info = crate::host::netns::find(netns)?;
        let hits = t.traces.trace(&info, flow)?;
        let seen = t.recorded.entry(netns).or_default();
        if hits.len() != *seen {
            *seen = hits.len();
            if let Some(r) = self.recorder.as_deref_mut() {
                if let Err(e) = r.nftrace(self.now_ns, netns, &hits) {
                    self.error.get_or_insert(e);
                }
            }
        }
        Some(hits)
    }

    fn ruleset(&mut self, netns: u32) -> Option<Arc<Ruleset>> {
        let rs = Arc::new(self.topology.ruleset(netns, wall_now_ns())?);
        if let Some(r) = self.recorder.as_deref_mut() {
            if let Err(e) = r.ruleset(self.now_ns, netns, &rs) {
                self.error.get_or_insert(e);
            }
        }
        Some(rs)
    }

    fn container_by_addr(
        &mut self,
        addr: std::net::IpAddr,
    ) -> Option<Arc<crate::host::containers::Container>> {
        let c = self.containers.snapshot().by_addr(addr).cloned()?;
        if let Some(r) = self.recorder.as_deref_mut() {
            if let Err(e) = r.container(self.now_ns, &c) {
                self.error.get_or_insert(e);
            }
        }
        Some(c)
    }

    fn link(&mut self, netns: u32, ifindex: i32) -> Option<Link> {
        // May re-read the namespace; `get` then records the new copy.
        let l = self.topology.link(netns, ifindex).ok();
        self.get(netns);
        l
    }

    fn netns_name(&mut self, netns: u32) -> Option<String> {
        self.topology.netns_name(netns)
    }

    fn watched(&mut self) -> Vec<u32> {
        if self.watched.is_empty() {
            vec![self.own_netns]
        } else {
            self.watched.to_vec()
        }
    }

    fn own_netns(&self) -> u32 {
        self.own_netns
    }

    fn dockerd_running(&mut self) -> bool {
        self.dockerd
    }
}

/// The live consumer of `diagnose` and `lab run`.
pub struct Diagnoser {
    engine: Engine,
    /// Print drops, flagged SYNs and neighbour events as context.
    pub show_drops: bool,
    recorder: Option<Recorder>,
    dockerd: bool,
    changes: Changes,
    /// Notify once every kind listed has been proven (the lab's early stop).
    pub stop_when: Option<(Vec<String>, Arc<tokio::sync::Notify>)>,
    /// Keep the verdicts printed since the last `take_emitted` (the agent
    /// counts them).
    pub keep_emitted: bool,
    emitted: Vec<Verdict>,
    /// `--nftrace` (None: off).
    nftrace: Option<Traced>,
}

impl Diagnoser {
    pub fn new(show_drops: bool) -> Self {
        Diagnoser {
            engine: Engine::new(),
            show_drops,
            recorder: None,
            dockerd: dockerd_running(),
            changes: Changes::default(),
            stop_when: None,
            keep_emitted: false,
            emitted: Vec::new(),
            nftrace: None,
        }
    }

    /// `--nftrace`: where counters leave several rules, trace the flow's
    /// next packet in the kernel (see [`crate::host::firewall::nftrace`]).
    pub fn enable_nftrace(&mut self) {
        self.nftrace = Some(Traced::default());
    }

    /// Also write a recording of the run to `path`.
    pub fn record_to(&mut self, f: std::fs::File, s: &Session) -> Result<()> {
        let header = Header::here(s.own_netns, s.netns.clone(), &s.filter.text, self.dockerd);
        self.recorder = Some(Recorder::create(f, &header)?);
        Ok(())
    }

    /// Also keep a rolling recording of the run in `set` (the agent's
    /// flight recorder).
    pub fn record_rolling(&mut self, set: RollingDir, s: &Session) -> Result<()> {
        let header = Header::here(s.own_netns, s.netns.clone(), &s.filter.text, self.dockerd);
        self.recorder = Some(Recorder::rolling(set, &header)?);
        Ok(())
    }

    /// Verdicts printed since the last call (with `keep_emitted`).
    pub fn take_emitted(&mut self) -> Vec<Verdict> {
        std::mem::take(&mut self.emitted)
    }

    /// Forgets causes last seen before `before_ns` (a long run).
    pub fn expire(&mut self, before_ns: u64) -> usize {
        self.engine.expire(before_ns)
    }

    /// A drop already named: counted, printed as context, fed to the rules.
    pub fn on_drop(&mut self, rec: DropRecord, s: &mut Session) -> std::io::Result<()> {
        self.on_drop_with(rec, None, s).map(|_| ())
    }

    /// The same, with the drop's captured bytes and stack: in pcapng the
    /// packet carries the verdicts it proved as comments.
    fn on_drop_with(
        &mut self,
        rec: DropRecord,
        extra: Option<&Extra>,
        s: &mut Session,
    ) -> std::io::Result<bool> {
        // Noise is hidden, not ignored: the rules still learn from it
        // (a retransmitted SYN shows where the peer enters).
        let shown = rec.noise.is_none() || s.show_noise;
        if shown {
            s.summary.count(&rec);
            if self.show_drops {
                s.out.drop(&rec)?;
            }
        } else {
            s.summary.hide(&rec);
        }
        let fact = Fact::Drop(rec);
        self.feed(&fact, s)?;
        if s.pcap.is_none() || !shown {
            self.emit(s)?;
            return Ok(shown);
        }
        let verdicts = self.emit_lines(s)?;
        if let Fact::Drop(rec) = &fact {
            s.capture(rec, extra, &verdicts)?;
        }
        Ok(shown)
    }

    /// Every verdict so far, at its latest tier.
    pub fn verdicts(&self) -> &[Verdict] {
        self.engine.verdicts()
    }

    fn with_source<T>(
        &mut self,
        s: &mut Session,
        f: impl FnOnce(&mut Engine, &mut LiveSource) -> T,
    ) -> std::io::Result<T> {
        let mut src = LiveSource {
            topology: &mut s.namer.topology,
            containers: &s.namer.containers,
            changes: &mut self.changes,
            own_netns: s.own_netns,
            dockerd: self.dockerd,
            recorder: self.recorder.as_mut(),
            watched: &s.netns,
            now_ns: wall_now_ns(),
            error: None,
            nftrace: self.nftrace.as_mut(),
        };
        let r = f(&mut self.engine, &mut src);
        match src.error {
            Some(e) => Err(e),
            None => Ok(r),
        }
    }

    fn feed(&mut self, fact: &Fact, s: &mut Session) -> std::io::Result<bool> {
        let news = self.with_source(s, |e, src| e.on_fact(fact, src.now_ns, src))?;
        // After the rules: the topology they asked for precedes the fact.
        if let Some(r) = &mut self.recorder {
            r.fact(fact)?;
        }
        Ok(news)
    }

    /// Prints the new verdicts; in pcapng they become comments of the
    /// next packet (or, at the end, of the statistics block).
    fn emit(&mut self, s: &mut Session) -> std::io::Result<()> {
        let lines = self.emit_lines(s)?;
        if let Some(p) = &mut s.pcap {
            for l in lines {
                p.note(l);
            }
        }
        Ok(())
    }

    /// Prints the new verdicts; returns them in one line each (for the
    /// pcapng comment of the drop that proved them).
    fn emit_lines(&mut self, s: &mut Session) -> std::io::Result<Vec<String>> {
        let mut lines = Vec::new();
        for v in self.engine.take_new() {
            crate::sinks::verdict::print(&mut s.out, &v)?;
            lines.push(format!(
                "verdict {} ({}): {}",
                v.kind,
                v.tier.as_str(),
                v.summary
            ));
            if self.keep_emitted {
                self.emitted.push(v);
            }
        }
        if let Some((kinds, n)) = &self.stop_when {
            let v = self.engine.verdicts();
            if kinds
                .iter()
                .all(|k| v.iter().any(|v| v.tier.concluded() && v.kind == k))
            {
                n.notify_one();
            }
        }
        Ok(lines)
    }
}

/// Fills the summary's verdict counts and prints what is left to say.
fn conclude_summary(
    engine: &Engine,
    summary: &mut Summary,
    out: &mut Output,
) -> std::io::Result<()> {
    let v = engine.verdicts();
    summary.verdicts = v.len() as u64;
    summary.faults = v.iter().filter(|v| v.fault).count() as u64;
    summary.verdict_kinds.clear();
    for x in v {
        *summary.verdict_kinds.entry(x.kind.to_string()).or_default() += 1;
    }
    summary.verdicts_suppressed = engine.suppressed();
    if engine.suppressed() > 0 {
        out.note(&format!(
            "{} more verdicts of kinds already shown {} times were not printed",
            engine.suppressed(),
            crate::rules::ctx::MAX_VERDICTS_PER_KIND
        ))?;
    }
    if out.format == Format::Text && summary.faults == 0 {
        out.note(if v.is_empty() {
            "No fault proven: the drops seen (if any) do not match a known cause."
        } else {
            "No fault proven (see the notes and suspicions above)."
        })?;
    }
    Ok(())
}

impl Consumer for Diagnoser {
    fn drop(&mut self, raw: &DropEvent, s: &mut Session) -> std::io::Result<bool> {
        let (rec, extra) = s.name_drop(raw);
        self.on_drop_with(rec, extra.as_ref(), s)
    }

    fn neigh(&mut self, raw: &NeighEvent, s: &mut Session) -> std::io::Result<()> {
        let rec: NeighRecord = s.namer.neigh_record(raw);
        let fact = Fact::Neigh(rec);
        if self.feed(&fact, s)? && self.show_drops {
            if let Fact::Neigh(rec) = &fact {
                s.out.neigh(rec)?;
            }
        }
        self.emit(s)
    }

    fn syn(&mut self, raw: &SynEvent, s: &mut Session) -> std::io::Result<()> {
        let rec = s.namer.syn_record(raw);
        if self.show_drops {
            s.out.syn(&rec)?;
        }
        self.feed(&Fact::Syn(rec), s)?;
        self.emit(s)
    }

    fn tick(&mut self, s: &mut Session) -> std::io::Result<()> {
        self.with_source(s, |e, src| e.tick(src.now_ns, src))?;
        self.emit(s)
    }

    fn finish(&mut self, s: &mut Session) -> std::io::Result<()> {
        // A run that ends before a window closes still reports what it
        // can judge (see the rules' `finish`).
        self.with_source(s, |e, src| e.finish(src.now_ns, src))?;
        self.emit(s)?;
        if let Some(r) = &mut self.recorder {
            r.end(wall_now_ns())?;
        }
        conclude_summary(&self.engine, &mut s.summary, &mut s.out)
    }
}

/// `tracer diagnose` on the live kernel, optionally recording to `write`.
/// Returns whether a fault was proven (the exit status says so).
pub async fn live(
    opts: &TraceOptions,
    write: Option<&Path>,
    nftrace: bool,
    started: Instant,
) -> Result<bool> {
    let file = write.map(|p| file::open(p, opts.existing)).transpose()?;
    let tracer = Tracer::start(opts, true, started)?;
    let mut d = Diagnoser::new(true);
    if nftrace {
        d.enable_nftrace();
    }
    if let Some(f) = file {
        d.record_to(f, &tracer.session)?;
    }
    tracer.run(&mut d).await?;
    Ok(d.verdicts().iter().any(|v| v.fault))
}

/// The recorded topology: the latest snapshot of each namespace read so far.
pub struct ReplaySource {
    topo: HashMap<u32, Arc<NsTopology>>,
    changed_before: HashMap<u32, u64>,
    containers: HashMap<u32, Arc<crate::host::containers::Container>>,
    networks: HashMap<String, crate::host::containers::DockerNetwork>,
    rulesets: HashMap<u32, Arc<Ruleset>>,
    nftraces: HashMap<u32, Vec<TraceHit>>,
    own_netns: u32,
    dockerd: bool,
    /// The recorded run's `--netns` (empty: its own).
    watched: Vec<u32>,
}

impl TopologySource for ReplaySource {
    fn watched(&mut self) -> Vec<u32> {
        if self.watched.is_empty() {
            vec![self.own_netns]
        } else {
            self.watched.clone()
        }
    }

    fn container(&mut self, netns: u32) -> Option<Arc<crate::host::containers::Container>> {
        self.containers.get(&netns).cloned()
    }

    fn docker_network(&mut self, bridge: &str) -> Option<crate::host::containers::DockerNetwork> {
        self.networks.get(bridge).cloned()
    }

    fn changed_before(&mut self, netns: u32) -> Option<u64> {
        self.changed_before.get(&netns).copied()
    }

    fn ruleset(&mut self, netns: u32) -> Option<Arc<Ruleset>> {
        self.rulesets.get(&netns).cloned()
    }

    fn nftrace(&mut self, netns: u32, _flow: &TraceFlow) -> Option<Vec<TraceHit>> {
        self.nftraces.get(&netns).cloned()
    }

    fn container_by_addr(
        &mut self,
        addr: std::net::IpAddr,
    ) -> Option<Arc<crate::host::containers::Container>> {
        let a = addr.to_string();
        self.containers
            .values()
            .find(|c| c.networks.iter().any(|n| n.address.as_deref() == Some(&a)))
            .cloned()
    }

    fn get(&mut self, netns: u32) -> Option<Arc<NsTopology>> {
        self.topo.get(&netns).cloned()
    }

    fn netns_name(&mut self, netns: u32) -> Option<String> {
        self.topo.get(&netns).and_then(|t| t.name.clone())
    }

    fn own_netns(&self) -> u32 {
        self.own_netns
    }

    fn dockerd_running(&mut self) -> bool {
        self.dockerd
    }
}

/// What a replay hands its caller, in order.
pub enum Replayed<'a> {
    /// A fact; `news` is false for a neighbour event repeating its state.
    Fact(&'a Fact, bool),
    Verdict(&'a Verdict),
}

/// The live tick period, reproduced in fact time.
const TICK_NS: u64 = 250_000_000;

/// Runs the rules over a recording, as they ran live: snapshots replace
/// the namespace's topology where they occur, ticks are replayed every
/// 250 ms of fact time, and the run ends at the recorded end. Returns the
/// header and the engine (its verdicts and counts).
pub fn replay(
    path: &Path,
    seen: impl FnMut(Replayed) -> std::io::Result<()>,
) -> Result<(Header, Engine)> {
    replay_with(path, Engine::new(), seen)
}

/// [`replay`] through the given engine (its rules).
fn replay_with(
    path: &Path,
    mut engine: Engine,
    mut seen: impl FnMut(Replayed) -> std::io::Result<()>,
) -> Result<(Header, Engine)> {
    let reader = Reader::open(path)?;
    let header = reader.header.clone();
    let mut src = ReplaySource {
        topo: HashMap::new(),
        changed_before: HashMap::new(),
        containers: HashMap::new(),
        networks: HashMap::new(),
        rulesets: HashMap::new(),
        nftraces: HashMap::new(),
        own_netns: header.own_netns,
        dockerd: header.dockerd,
        watched: header.netns.clone(),
    };
    let mut next_tick: Option<u64> = None;
    let mut end = None;
    let flush = |engine: &mut Engine, seen: &mut dyn FnMut(Replayed) -> std::io::Result<()>| {
        for v in engine.take_new() {
            seen(Replayed::Verdict(&v))?;
        }
        Ok::<(), std::io::Error>(())
    };
    for line in reader {
        match line? {
            Line::Topology(t, before) => {
                if let Some(b) = before {
                    src.changed_before.insert(t.inode, b);
                }
                src.topo.insert(t.inode, Arc::new(t));
            }
            Line::Container(c) => {
                src.containers.insert(c.netns, Arc::new(c));
            }
            Line::DockerNetwork(bridge, n) => {
                src.networks.insert(bridge, n);
            }
            Line::Ruleset(netns, rs) => {
                src.rulesets.insert(netns, Arc::new(rs));
            }
            Line::NfTrace(netns, hits) => {
                src.nftraces.insert(netns, hits);
            }
            Line::Fact(f) => {
                let ts = f.ts_ns();
                let tick = next_tick.get_or_insert(ts + TICK_NS);
                while *tick <= ts {
                    engine.tick(*tick, &mut src);
                    *tick += TICK_NS;
                    flush(&mut engine, &mut seen)?;
                }
                let news = engine.on_fact(&f, ts, &mut src);
                seen(Replayed::Fact(&f, news))?;
                flush(&mut engine, &mut seen)?;
            }
            Line::End { ts_ns } => end = Some(ts_ns),
        }
    }
    let end = end.unwrap_or(engine.now_ns());
    if let Some(mut tick) = next_tick {
        while tick <= end {
            engine.tick(tick, &mut src);
            tick += TICK_NS;
            flush(&mut engine, &mut seen)?;
        }
    }
    engine.finish(end, &mut src);
    flush(&mut engine, &mut seen)?;
    Ok((header, engine))
}

/// `tracer diagnose --replay FILE`: no kernel, no root. Returns whether
/// a fault was proven.
pub fn replay_cmd(path: &Path, format: Format) -> Result<bool> {
    let header = Reader::open(path)?.header;
    if format == Format::Text {
        // The recording's words, escaped as every name in text is.
        let shown = format!(
            "tracer: replaying {} (recorded on {}, kernel {})",
            path.display(),
            header.hostname,
            header.kernel
        );
        eprintln!("{}", crate::sinks::printable::escape(&shown));
    }
    replay_to(path, Output::stdout(format, header.own_netns))
}

/// The lines of `tracer diagnose --replay`, written to `out`.
fn replay_to(path: &Path, mut out: Output) -> Result<bool> {
    let mut summary = Summary::new();
    let mut first_ts = None;
    let mut last_ts = 0;
    let (_, engine) = replay(path, |r| match r {
        Replayed::Fact(f, news) => {
            first_ts.get_or_insert(f.ts_ns());
            last_ts = f.ts_ns();
            match f {
                Fact::Drop(d) if d.noise.is_some() => {
                    summary.hide(d);
                    Ok(())
                }
                Fact::Drop(d) => {
                    summary.count(d);
                    out.drop(d)
                }
                Fact::Syn(s) => out.syn(s),
                Fact::Neigh(n) if news => out.neigh(n),
                Fact::Neigh(_) => Ok(()),
            }
        }
        Replayed::Verdict(v) => crate::sinks::verdict::print(&mut out, v),
    })?;
    summary.duration_s = last_ts.saturating_sub(first_ts.unwrap_or(last_ts)) as f64 / 1e9;
    conclude_summary(&engine, &mut summary, &mut out)?;
    out.summary(&summary)?;
    out.flush()?;
    Ok(summary.faults > 0)
}

#[cfg(test)]
mod tests {
    //! Replays of recordings captured from real runs of the labs
    //! (`tracer lab run NAME -w FILE`): the same verdicts, offline.
    use super::*;
    use crate::events::reason::Reason;
    use crate::events::record::Noise;
    use crate::events::record::NudState;
    use crate::rules::Tier;

    fn replayed(name: &str) -> Vec<(&'static str, Tier)> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/recordings")
            .join(format!("{name}.jsonl"));
        let mut facts = 0;
        let (header, engine) = replay(&path, |r| {
            if let Replayed::Fact(..) = r {
                facts += 1;
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(header.version, crate::record::VERSION);
        assert!(facts > 0, "{name}: no facts");
        engine.verdicts().iter().map(|v| (v.kind, v.tier)).collect()
    }

    #[test]
    fn replay_bridge_subnet_strict() {
        assert_eq!(
            replayed("bridge-subnet-strict"),
            [("rpfilter_route_conflict", Tier::Proven)]
        );
    }

    #[test]
    fn expired_causes_are_forgotten_and_recent_ones_kept() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/recordings/bridge-subnet-strict.jsonl");
        let (_, mut engine) = replay(&path, |_| Ok(())).unwrap();
        let last = engine.verdicts()[0].last_ns;
        assert!(last > 0);
        assert_eq!(engine.expire(last), 0);
        assert_eq!(engine.verdicts().len(), 1);
        assert_eq!(engine.expire(last + 1), 1);
        assert!(engine.verdicts().is_empty());
    }

    /// Policy routing (a `from` rule, and a `fwmark` rule with
    /// src_valid_mark): the proof names the table the kernel's reverse
    /// lookup used and the rule that sent it there; fix 1 acts there.
    #[test]
    fn replay_policy_rpfilter() {
        for (name, rule) in [
            ("policy-rpfilter-from", "32765: from 10.66.0.9 lookup 213"),
            (
                "policy-rpfilter-fwmark",
                "32765: from all fwmark 0x5 lookup 213",
            ),
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("tests/recordings/{name}.jsonl"));
            let (_, engine) = replay(&path, |_| Ok(())).unwrap();
            let v = engine.verdicts();
            assert_eq!(v.len(), 1, "{name}");
            assert_eq!(
                (v[0].kind, v[0].tier),
                ("rpfilter_route_conflict", Tier::Proven)
            );
            let e = &v[0].evidence;
            assert_eq!(e["reverse_route_table"], 213, "{name}");
            assert_eq!(e["reverse_route_rule"]["rule"], rule, "{name}");
            assert_eq!(e["src_valid_mark"], name.ends_with("fwmark"), "{name}");
            assert!(
                v[0].fix_commands[0][0].ends_with("via 10.66.0.1 dev up1 table 213"),
                "{:?}",
                v[0].fix_commands
            );
        }
    }

    /// The client's ARP ignored by a peer whose rule sends the reverse
    /// lookup to a table without the link's prefix: proven where the ARP
    /// is ignored (polz-srv), not as a silent neighbour where the
    /// NEIGH_FAILED drops are (polz-cli).
    #[test]
    fn replay_policy_rpfilter_arp() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/recordings/policy-rpfilter-arp.jsonl");
        let (_, engine) = replay(&path, |_| Ok(())).unwrap();
        let v = engine.verdicts();
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(
            (v[0].kind, v[0].tier),
            ("rpfilter_route_conflict", Tier::Proven)
        );
        assert_eq!(v[0].netns_name.as_deref(), Some("polz-srv"));
        assert_eq!(v[0].evidence["arp"], true);
        assert_eq!(v[0].evidence["reverse_route_table"], 318);
        assert_eq!(
            v[0].fix_commands[0],
            ["ip netns exec polz-srv ip route add 10.70.4.0/24 dev up1 table 318"]
        );
    }

    /// A macvlan whose on-link /16 covers a peer the gateway routes in:
    /// the gateway's lookup (an arrival behind the parent's veth) proves
    /// asymmetric_route, and the NEIGH_FAILED drops prove no silent
    /// neighbour.
    #[test]
    fn replay_macvlan_overlap() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/recordings/macvlan-overlap.jsonl");
        let (_, engine) = replay(&path, |_| Ok(())).unwrap();
        let v = engine.verdicts();
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!((v[0].kind, v[0].tier), ("asymmetric_route", Tier::Proven));
        assert_eq!(v[0].evidence["egress_kind"], "macvlan");
        assert_eq!(v[0].evidence["ingress_netns"], "polm-rtr");
        assert_eq!(
            v[0].fix_commands[0],
            ["ip netns exec polm-ctr ip route add 10.140.9.9/32 via 10.140.0.1 dev mv7"]
        );
    }

    /// IPv6's queued packets, freed as NOT_SPECIFIED at neigh_invalidate,
    /// were recorded as NEIGH_FAILED (by location): the silent neighbour is
    /// proven as for IPv4.
    #[test]
    fn replay_neighbor_down_ipv6() {
        assert_eq!(
            replayed("neighbor-down-ipv6"),
            [("neighbor_unreachable", Tier::Proven)]
        );
    }

    /// The relay's ICMP frag-needed dropped at the sender's INPUT, in
    /// another namespace: the black hole is linked to it (icmp_blocked),
    /// and fix 1 lets it in where it died.
    #[test]
    fn replay_pmtu_icmp_dropped_by_sender() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/recordings/pmtu-icmp-dropped-by-sender.jsonl");
        let (_, engine) = replay(&path, |_| Ok(())).unwrap();
        let v = engine.verdicts();
        let p = v.iter().find(|v| v.kind == "pmtu_blackhole").unwrap();
        assert_eq!(p.tier, Tier::Proven);
        assert_eq!(p.evidence["icmp_blocked"], true);
        assert_eq!(p.evidence["icmp_dropped_netns"], "polp-origin");
        assert!(
            p.fix_commands[0][0].starts_with("ip netns exec polp-origin iptables -I INPUT"),
            "{:?}",
            p.fix_commands
        );
    }

    /// tests/fixes.rs: far's INPUT drops the ICMPv6 packet too big that
    /// mid sends: the drop is a netfilter_drop verdict of its own, naming
    /// the rule, besides being linked to the black hole.
    #[test]
    fn replay_ptb6_dropped_by_firewall_names_the_rule() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/recordings/ptb6-dropped-by-firewall.jsonl");
        let (_, engine) = replay(&path, |_| Ok(())).unwrap();
        let v = engine.verdicts();
        let nf = v.iter().find(|v| v.kind == "netfilter_drop").unwrap();
        assert_eq!(nf.tier, Tier::Proven);
        assert_eq!(nf.evidence["rule"]["chain"], "INPUT");
        assert_eq!(nf.evidence["rule"]["position"], 2);
        assert!(
            nf.fix_commands[0][0].ends_with("ip6tables-nft -t filter -D INPUT 2"),
            "{:?}",
            nf.fix_commands
        );
        let p = v.iter().find(|v| v.kind == "pmtu_blackhole").unwrap();
        assert_eq!(p.evidence["icmp_blocked"], true);
    }

    #[test]
    fn replay_bridge_subnet_loose() {
        assert_eq!(
            replayed("bridge-subnet-loose"),
            [("asymmetric_route", Tier::Proven)]
        );
    }

    #[test]
    fn replay_overlay_mtu_blackhole() {
        for name in ["overlay-mtu-blackhole", "overlay-mtu-blackhole-ipv6"] {
            assert_eq!(
                replayed(name),
                [
                    // The router's own dropped ICMP, a firewall drop too.
                    ("netfilter_drop", Tier::Proven),
                    ("pmtu_blackhole", Tier::Proven),
                    ("mss_exceeds_mtu", Tier::Proven)
                ],
                "{name}"
            );
        }
    }

    #[test]
    fn replay_docker_published_port() {
        // A real dockerd, a container publishing 8080, the client inside
        // docker0's subnet, loose rp_filter: proven from the container's
        // first ARP for the client, and its SYN-ACKs that die 3 s later
        // count towards the same verdict, never as neighbor_unreachable.
        assert_eq!(
            replayed("docker-published-port"),
            [("asymmetric_route", Tier::Proven)]
        );
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/recordings/docker-published-port.jsonl");
        let (mut first_arp, mut verdict_at, mut neigh_failed, mut hidden) = (None, None, 0, 0);
        let (_, engine) = replay(&path, |r| {
            match r {
                Replayed::Fact(Fact::Neigh(n), _) if n.state == NudState::Incomplete => {
                    first_arp.get_or_insert(n.ts_ns);
                    assert_eq!(n.container.as_ref().unwrap().name, "trdk-web");
                }
                Replayed::Fact(Fact::Drop(d), _) => {
                    assert_eq!(d.container.as_ref().unwrap().name, "trdk-web");
                    assert_eq!(d.host_ifname.as_deref(), Some("veth250abc2"));
                    if d.reason == Reason::NEIGH_FAILED {
                        neigh_failed += 1;
                    }
                    if d.noise == Some(Noise::SynRetransmit) {
                        hidden += 1;
                    }
                }
                Replayed::Verdict(_) => {
                    verdict_at.get_or_insert(first_arp.unwrap());
                }
                _ => {}
            }
            Ok(())
        })
        .unwrap();
        assert!(neigh_failed >= 1 && hidden >= 1, "{neigh_failed} {hidden}");
        // Concluded at the first ARP, not at the neighbour failure 3 s later.
        assert_eq!(verdict_at, first_arp);
        let v = &engine.verdicts()[0];
        assert_eq!(v.container.as_ref().unwrap().name, "trdk-web");
        assert_eq!(v.evidence["docker_network"], "bridge");
        assert_eq!(v.evidence["bridge_ifname"], "docker0");
        assert_eq!(v.evidence["ingress_ifname"], "eth0");
        assert_eq!(v.evidence["peer"], "172.17.5.5");
        assert_eq!(v.drops, neigh_failed, "the lost SYN-ACKs count towards it");
        assert!(v.fix[0].contains("\"bip\""), "{:?}", v.fix);
        assert!(!v.fix.iter().any(|f| f.contains("ip route add")));
    }

    #[test]
    fn replay_veth_mtu_mismatch() {
        assert_eq!(
            replayed("veth-mtu-mismatch"),
            [("l2_mtu_mismatch", Tier::Proven)]
        );
    }

    #[test]
    fn replay_everyday_faults() {
        for (name, kind, tier) in [
            ("port-closed", "port_closed", Tier::Info),
            ("firewall-drop", "netfilter_drop", Tier::Proven),
            ("no-route", "no_route", Tier::Proven),
            ("forwarding-off", "forwarding_disabled", Tier::Proven),
            ("neighbor-down", "neighbor_unreachable", Tier::Proven),
            ("qdisc-full", "qdisc_drop", Tier::Proven),
        ] {
            assert_eq!(replayed(name), [(kind, tier)], "{name}");
        }
    }

    #[test]
    fn replay_netfilter_drop_names_the_rule() {
        // Recorded with the netfilter_rules test's topology (src, gate,
        // dst), 10.171.0.0/16 and fd71::/16. LAB-71 (from FORWARD) holds
        // two DROP rules that both counted before the run: suspected
        // until the second reading, when only rule 2's counter rose.
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/recordings/firewall-user-chain.jsonl");
        let (_, engine) = replay(&path, |_| Ok(())).unwrap();
        let v = engine.verdicts();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].tier, Tier::Proven);
        assert_eq!(v[0].evidence["rule"]["jump_path"], "FORWARD -> LAB-71");
        assert_eq!(v[0].evidence["rule"]["position"], 2);
        assert!(v[0].fix_commands[0][0].ends_with("iptables-nft -t filter -D LAB-71 2"));
        // A native inet table on the forward hook drops IPv6: named by
        // handle; the counted decoy never counted.
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/recordings/firewall-nft-inet-ipv6.jsonl");
        let (_, engine) = replay(&path, |_| Ok(())).unwrap();
        let v = engine.verdicts();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].tier, Tier::Proven);
        assert_eq!(v[0].evidence["rule"]["handle"], 3);
        assert!(v[0].fix_commands[0][0].ends_with("nft delete rule inet lab71 fw71 handle 3"));
    }

    #[test]
    fn replay_conntrack_invalid_says_the_syn_took_another_path() {
        // The SYN reached the server over a direct link; its SYN-ACK came
        // back through `gate`, whose FORWARD rule 2 drops INVALID.
        assert_eq!(
            replayed("conntrack-invalid-asymmetric"),
            [("conntrack_invalid", Tier::Proven)]
        );
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/recordings/conntrack-invalid-asymmetric.jsonl");
        let (_, engine) = replay(&path, |_| Ok(())).unwrap();
        let v = &engine.verdicts()[0];
        assert_eq!(v.evidence["why"], "syn_ack_without_syn");
        assert_eq!(v.evidence["rule"]["comment"], "stateful edge");
        assert!(v.fix_commands[0][0].ends_with("iptables-nft -t filter -D FORWARD 2"));
    }

    #[test]
    fn replay_socket_buffer_full_names_each_socket() {
        // tests/socket_buffer.rs: a UDP socket that never reads, on
        // 10.61.37.2:6389 and [fd61:37::2]:6390, flooded from a peer.
        assert_eq!(
            replayed("socket-buffer-full"),
            [
                ("socket_buffer_full", Tier::Proven),
                ("socket_buffer_full", Tier::Proven)
            ]
        );
    }

    #[test]
    fn replay_martians_offer_route_localnet_only_for_a_loopback_destination() {
        // tests/martian.rs: a DNAT to 127.0.0.1 and a wrong SNAT to the
        // receiver's own address, both arriving on dn0.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/recordings/martian.jsonl");
        let (_, engine) = replay(&path, |_| Ok(())).unwrap();
        let v = engine.verdicts();
        let kinds: Vec<_> = v.iter().map(|v| (v.kind, v.tier)).collect();
        assert_eq!(
            kinds,
            [
                ("martian_destination", Tier::Proven),
                ("martian_source", Tier::Proven)
            ]
        );
        assert!(v[0].fix[0].ends_with("sysctl -w net.ipv4.conf.dn0.route_localnet=1"));
        assert!(v[1].fix.iter().all(|f| !f.contains("sysctl")));
    }

    #[test]
    fn replay_bridge_port_blocked_is_not_a_silent_neighbour() {
        // tests/bridge_port.rs: port rp of lan5 set to learning; both
        // hosts ping each other and each one's neighbour fails.
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/recordings/bridge-port-blocked.jsonl");
        let (_, engine) = replay(&path, |_| Ok(())).unwrap();
        let v = engine.verdicts();
        let kinds: Vec<_> = v.iter().map(|v| (v.kind, v.tier)).collect();
        assert_eq!(kinds, [("bridge_port_blocked", Tier::Proven)]);
        assert_eq!(v[0].evidence["port"], "rp");
        assert_eq!(v[0].evidence["stp_state"], "learning");
        assert!(v[0].fix_commands[0][0].ends_with("bridge link set dev rp state 3"));
    }

    #[test]
    fn replay_exhaustion_joins_each_drop_to_the_counter_that_moved() {
        // tests/exhaustion.rs, recorded in the 6.12 guest of `cargo xtask
        // kernels` (its labs lower host-wide limits: never on a host).
        for (name, kind, counter) in [
            ("conntrack-table-full", "conntrack_table_full", "drop"),
            ("neighbor-table-full", "neighbor_table_full", "table_fulls"),
            ("cpu-backlog-full", "cpu_backlog_full", "softnet_dropped"),
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/recordings")
                .join(format!("{name}.jsonl"));
            let (_, engine) = replay(&path, |_| Ok(())).unwrap();
            let all = engine.verdicts();
            let v: Vec<_> = all.iter().filter(|v| v.kind == kind).collect();
            assert_eq!(v.len(), 1, "{name}");
            assert_eq!(v[0].tier, Tier::Proven);
            let c = &v[0].evidence["counters"][counter];
            assert!(c["after"].as_u64() > c["before"].as_u64(), "{name}: {c}");
            assert!(v[0].fix_commands[0][0].starts_with("sysctl -w "), "{name}");
            // The table-full drops are NETFILTER_DROPs no rule counted:
            // never a rule's.
            assert!(all.iter().all(|v| v.kind != "netfilter_drop"), "{name}");
        }
    }

    #[test]
    fn replay_tunnel_mtu_sizes_each_end() {
        // tests/tunnel_mtu.rs: VXLAN vx919 at 1420 over a 1360 underlay,
        // both ends pinging with fragmentation allowed.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/recordings/tunnel-mtu.jsonl");
        let (_, engine) = replay(&path, |_| Ok(())).unwrap();
        let v = engine.verdicts();
        let kinds: Vec<_> = v.iter().map(|v| (v.kind, v.tier)).collect();
        assert_eq!(
            kinds,
            [("tunnel_mtu", Tier::Proven), ("tunnel_mtu", Tier::Proven)]
        );
        for v in v {
            assert_eq!(v.evidence["suggested_mtu"], 1310);
            assert!(v.fix_commands[0][0].ends_with("link set dev vx919 mtu 1310"));
        }
    }

    #[test]
    fn replay_listen_overflow_from_a_recording_with_no_drop() {
        // tests/listen_overflow.rs: somaxconn 3, a listener on
        // 10.166.52.2:8517 that never accepts, 12 connections at once.
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/recordings/listen-overflow.jsonl");
        let (_, engine) = replay(&path, |_| Ok(())).unwrap();
        let v = engine.verdicts();
        let kinds: Vec<_> = v.iter().map(|v| (v.kind, v.tier)).collect();
        assert_eq!(kinds, [("listen_overflow", Tier::Proven)]);
        assert_eq!(v[0].evidence["local_port"], 8517);
        assert_eq!(v[0].evidence["somaxconn"], 3);
        assert!(v[0].fix_commands[0][0].ends_with("sysctl -w net.core.somaxconn=4096"));
    }

    #[test]
    fn replay_fragment_timeout_names_the_firewall() {
        // tests/fragments.rs: gw drops non-first fragments (-f), rcv
        // times the datagram out after 1 s.
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/recordings/fragment-timeout.jsonl");
        let (_, engine) = replay(&path, |_| Ok(())).unwrap();
        let v = engine.verdicts();
        let kinds: Vec<_> = v.iter().map(|v| (v.kind, v.tier)).collect();
        assert_eq!(
            kinds,
            [
                ("netfilter_drop", Tier::Proven),
                ("fragment_reassembly_timeout", Tier::Proven)
            ]
        );
        assert_eq!(
            v[1].evidence["fragment_dropped"]["reason"],
            "NETFILTER_DROP"
        );
        assert_eq!(v[1].evidence["dport"], 4127);
        // The rule is named, and fix 1 removes it: a command, not advice.
        assert_eq!(
            v[1].evidence["fragment_dropped"]["rule"]["rule"],
            "-A FORWARD -f -j DROP"
        );
        let gw = v[1].evidence["fragment_dropped"]["netns"].as_str().unwrap();
        assert_eq!(
            v[1].fix_commands[0],
            [format!(
                "ip netns exec {gw} iptables-nft -t filter -D FORWARD 1"
            )]
        );
    }

    #[test]
    fn replay_misdelivered_names_the_sender_not_forwarding() {
        // A one-link host gets packets for 10.47.3.9 and fd47:3::9, which
        // its neighbour on the bridge maps to this host's MAC.
        assert_eq!(
            replayed("misdelivered"),
            [
                ("misdelivered", Tier::Proven),
                ("misdelivered", Tier::Proven)
            ]
        );
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/recordings/misdelivered.jsonl");
        let (_, engine) = replay(&path, |_| Ok(())).unwrap();
        for (v, dst) in engine.verdicts().iter().zip(["10.47.3.9", "fd47:3::9"]) {
            assert_eq!(v.evidence["dst"], dst);
            assert_eq!(v.evidence["sender_ifname"], "a1");
            assert!(v.evidence["sender_mac"].is_string(), "{:?}", v.evidence);
            assert!(
                v.fix[0].ends_with(&format!("ip -n trrec-30303-snd neigh del {dst} dev a1")),
                "{}",
                v.fix[0]
            );
            assert!(!v.fix.iter().any(|f| f.contains("sysctl")), "{:?}", v.fix);
        }
    }

    #[test]
    fn replay_names_the_queue_and_its_limits() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/recordings/qdisc-full.jsonl");
        let (_, engine) = replay(&path, |_| Ok(())).unwrap();
        let v = &engine.verdicts()[0];
        assert_eq!(v.evidence["ifname"], "eth0");
        assert_eq!(v.evidence["qdisc"]["kind"], "tbf");
        assert_eq!(v.evidence["qdisc"]["handle"], "8001:");
        assert!(
            v.summary.contains("rate 1Mbit burst 1600b limit 3000b"),
            "{}",
            v.summary
        );
        assert!(v.drops > 1, "{}", v.drops);
    }

    #[test]
    fn replay_docker_nat_blackhole_names_the_container() {
        // A real dockerd: the container's download goes out through the
        // host's MASQUERADE and a 1380 uplink whose router drops its ICMP
        // frag-needed. The router's too-big drops show the host's address,
        // the host's SYN is seen after NAT; its conntrack tuple leads both
        // verdicts to the container (issue 21 item 9).
        let name = "docker-nat-blackhole";
        assert_eq!(
            replayed(name),
            [
                ("netfilter_drop", Tier::Proven),
                ("pmtu_blackhole", Tier::Proven),
                ("mss_exceeds_mtu", Tier::Proven)
            ]
        );
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/recordings")
            .join(format!("{name}.jsonl"));
        let (_, engine) = replay(&path, |_| Ok(())).unwrap();
        // The router's dropped ICMP is about no container's flow.
        for v in engine
            .verdicts()
            .iter()
            .filter(|v| v.kind != "netfilter_drop")
        {
            assert_eq!(v.container.as_ref().unwrap().name, "web-t23536natbh");
            assert!(
                v.summary
                    .contains("container web-t23536natbh's connections to 10.84.3.7:8000"),
                "{}",
                v.summary
            );
            assert_eq!(v.evidence["pre_nat"]["src"], "172.29.0.2");
            // Neither verdict is in the container's namespace.
            assert_ne!(v.netns_name, None);
        }
    }

    /// Every recording replays to exactly the lines stored in
    /// `tests/expected` (made by `tracer diagnose --replay FILE -o json`
    /// and `-o text` with TZ=UTC): refactors of the rules, the records
    /// and their types must not change a byte of the output.
    #[test]
    fn replay_output_is_byte_identical_to_the_stored_lines() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        // Text shows local time; the stored text is UTC's.
        let utc = crate::sinks::clock_text(0) == "00:00:00.000000";
        let mut compared = 0;
        for e in std::fs::read_dir(root.join("tests/recordings")).unwrap() {
            let path = e.unwrap().path();
            let name = path.file_stem().unwrap().to_str().unwrap().to_string();
            for (format, ext) in [(Format::Json, "json"), (Format::Text, "txt")] {
                if format == Format::Text && !utc {
                    continue;
                }
                let (out, buf) =
                    Output::to_buffer(format, Reader::open(&path).unwrap().header.own_netns);
                replay_to(&path, out).unwrap();
                let got = buf.text();
                let want_path = root.join(format!("tests/expected/{name}.{ext}"));
                let want = std::fs::read_to_string(&want_path)
                    .unwrap_or_else(|e| panic!("{}: {e}", want_path.display()));
                if got != want {
                    let line = got
                        .lines()
                        .zip(want.lines())
                        .position(|(g, w)| g != w)
                        .unwrap_or(got.lines().count().min(want.lines().count()));
                    panic!(
                        "{name}.{ext} differs at line {}:\n got: {:?}\nwant: {:?}",
                        line + 1,
                        got.lines().nth(line),
                        want.lines().nth(line)
                    );
                }
                compared += 1;
            }
        }
        assert!(compared >= 16, "{compared}");
    }

    /// What a rule concludes does not depend on the order the rules run
    /// in: every recording gives the same verdicts (as a set) with the
    /// rules reversed.
    #[test]
    fn rule_order_does_not_change_the_verdicts() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/recordings");
        let verdicts = |path: &Path, engine: Engine| {
            let (_, engine) = replay_with(path, engine, |_| Ok(())).unwrap();
            let mut v: Vec<String> = engine
                .verdicts()
                .iter()
                .map(|v| serde_json::to_string(v).unwrap())
                .collect();
            v.sort();
            (v, engine.suppressed())
        };
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let mut reversed = crate::rules::all();
            reversed.reverse();
            assert_eq!(
                verdicts(&path, Engine::new()),
                verdicts(&path, Engine::with_rules(reversed)),
                "{}",
                path.display()
            );
        }
    }

    /// A rule's kinds all come out of some real recording: adding a rule
    /// means adding a lab (or a captured run) that proves it.
    #[test]
    fn every_verdict_kind_is_replayed_from_a_recording() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/recordings");
        let mut seen = std::collections::HashSet::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let (_, engine) = replay(&path, |_| Ok(())).unwrap();
            seen.extend(engine.verdicts().iter().map(|v| v.kind));
        }
        for rule in crate::rules::all() {
            for k in rule.kinds() {
                assert!(seen.contains(k), "no recording proves {k}");
            }
        }
    }

    #[test]
    fn replay_controls_prove_no_fault() {
        for name in ["overlay-mtu-clamped", "pmtud-healthy", "pmtud-healthy-ipv6"] {
            assert_eq!(replayed(name), [], "{name}");
        }
    }

    #[test]
    fn replay_of_a_healthy_pmtud_recording_saw_the_trap() {
        // The control is only meaningful if the run showed what used to
        // be misread: a SYN whose MSS exceeds the egress MTU and too-big
        // drops of that connection.
        for name in ["pmtud-healthy", "pmtud-healthy-ipv6"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/recordings")
                .join(format!("{name}.jsonl"));
            let (mut syns, mut too_big) = (0, 0);
            replay(&path, |r| {
                match r {
                    Replayed::Fact(Fact::Syn(s), _) if s.tcp_flags == "S" => syns += 1,
                    Replayed::Fact(Fact::Drop(d), _) if d.reason == Reason::PKT_TOO_BIG => {
                        too_big += 1
                    }
                    _ => {}
                }
                Ok(())
            })
            .unwrap();
            assert!(
                syns >= 1 && too_big >= 1,
                "{name}: {syns} SYNs, {too_big} too-big"
            );
        }
    }
}
