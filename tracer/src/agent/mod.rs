//! `tracer agent`: the diagnose probes and rules, long-running, for a
//! fleet. Drops and verdicts become Prometheus metrics on `GET /metrics`
//! (text exposition by `prometheus-client`, served by hyper on the same
//! tokio runtime as the event loop); verdicts (and, on request, drops) go
//! as JSON lines to stdout or a file for a log pipeline.
//!
//! Memory stays bounded whatever the namespace churn: every labelled
//! family holds at most `max_series` series (new label sets past that are
//! counted in an `other` series), series idle for `series_idle` are
//! removed, and causes not seen for twice the active window are forgotten
//! by the rules engine.

mod http;

use http::{serve, Shared};

use crate::diagnose::Diagnoser;
use crate::events::aggregate::AggregateRecord;
use crate::events::record::DropRecord;
use crate::host::containers::ContainerRef;
use crate::kernel::caps::{self, Cap, CapSet};
use crate::kernel::clock::wall_now_ns;
use crate::rules::Verdict;
use crate::session::{Consumer, Session, TraceOptions, Tracer};
use crate::sinks::metrics::{BuildLabels, DropLabels, Label, Metrics, VerdictLabels};
use crate::sinks::rolling::RollingDir;
use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracer_abi::{DropEvent, NeighEvent, SynEvent};

/// Which labels `tracer_drops_total` carries; the others stay empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropLabelChoice {
    pub reason: bool,
    pub netns: bool,
    pub container: bool,
    pub ifname: bool,
}

impl Default for DropLabelChoice {
    fn default() -> Self {
        DropLabelChoice {
            reason: true,
            netns: true,
            container: true,
            ifname: true,
        }
    }
}

impl DropLabelChoice {
    /// `reason,netns` and the like; an empty list or unknown name is refused.
    pub fn parse(s: &str) -> Result<Self> {
        let mut c = DropLabelChoice {
            reason: false,
            netns: false,
            container: false,
            ifname: false,
        };
        for w in s.split(',').map(str::trim) {
            match w {
                "reason" => c.reason = true,
                "netns" => c.netns = true,
                "container" => c.container = true,
                "ifname" => c.ifname = true,
                "" => bail!("empty label in --drop-labels '{s}'"),
                _ => bail!(
                    "unknown label '{w}' in --drop-labels: choose from reason, netns, container, ifname"
                ),
            }
        }
        Ok(c)
    }
}

/// What `tracer agent` was asked to do.
pub struct AgentOptions {
    pub metrics_addr: String,
    /// netns, hook, btf and the log file (`output_path`).
    pub trace: TraceOptions,
    /// Also log drops (and storm aggregates, SYN and neighbour context).
    pub log_drops: bool,
    /// The flight recorder: a rolling recording in DIR of at most SIZE bytes.
    pub record: Option<(std::path::PathBuf, u64)>,
    pub labels: DropLabelChoice,
    /// Series per labelled metric before new label sets count as `other`.
    pub max_series: usize,
    /// A cause counts as active this long after its last drop.
    pub active_window: Duration,
    /// A series that has not grown for this long is removed.
    pub series_idle: Duration,
}

/// The agent's consumer: the diagnoser, plus the metrics.
pub struct Agent {
    diag: Diagnoser,
    metrics: Arc<Mutex<Metrics>>,
    labels: DropLabelChoice,
    active_window: Duration,
    series_idle: Duration,
    log_drops: bool,
    last_lost: u64,
    last_matched: u64,
    ticks: u64,
}

impl Agent {
    /// Records and verdicts are already named by the container inventory
    /// (see `containers`): the container's name and where that name came
    /// from, and its pod and pod namespace, or all empty.
    fn container(c: &Option<ContainerRef>) -> [Label; 4] {
        match c {
            Some(c) => [
                c.name.clone().into(),
                c.source.clone().into(),
                c.pod.clone().unwrap_or_default().into(),
                c.pod_namespace.clone().unwrap_or_default().into(),
            ],
            None => Default::default(),
        }
    }

    fn netns_label(name: &Option<String>, netns: u32, own: u32) -> Label {
        match name {
            Some(n) => n.clone().into(),
            None if netns != 0 && netns == own => "host".into(),
            None => Label::default(),
        }
    }

    fn drop_labels(&mut self, d: &DropRecord, own: u32) -> DropLabels {
        let c = self.labels;
        let keep = |on: bool, l: Label| if on { l } else { Label::default() };
        let [container, container_source, pod, pod_namespace] = Self::container(&d.container);
        DropLabels {
            reason: keep(c.reason, d.reason.as_str().into()),
            netns: keep(c.netns, Self::netns_label(&d.netns_name, d.netns, own)),
            container: keep(c.container, container),
            container_source: keep(c.container, container_source),
            pod: keep(c.container, pod),
            pod_namespace: keep(c.container, pod_namespace),
            ifname: keep(c.ifname, d.ifname.clone().unwrap_or_default().into()),
        }
    }

    fn verdict_labels(&mut self, v: &Verdict, own: u32) -> VerdictLabels {
        let [container, container_source, pod, pod_namespace] = Self::container(&v.container);
        VerdictLabels {
            kind: v.kind.into(),
            tier: v.tier.as_str().into(),
            netns: Self::netns_label(&v.netns_name, v.netns, own),
            container,
            container_source,
            pod,
            pod_namespace,
        }
    }

    fn count_verdicts(&mut self, own: u32) {
        let now = Instant::now();
        for v in self.diag.take_emitted() {
            let l = self.verdict_labels(&v, own);
            self.lock().verdicts.add(l, 1, now);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Metrics> {
        self.metrics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Once a second: kernel counters, active causes; every 10 s forget
    /// what is old.
    fn second(&mut self, s: &mut Session) {
        let k = s.summary.kernel;
        {
            let m = self.lock();
            m.lost.inc_by(k.lost.saturating_sub(self.last_lost));
            m.matched
                .inc_by(k.drops_matched.saturating_sub(self.last_matched));
        }
        self.last_lost = self.last_lost.max(k.lost);
        self.last_matched = self.last_matched.max(k.drops_matched);
        let now_ns = wall_now_ns();
        let window = self.active_window.as_nanos() as u64;
        if self.ticks.is_multiple_of(40) {
            self.diag.expire(now_ns.saturating_sub(2 * window));
            let before = Instant::now()
                .checked_sub(self.series_idle)
                .unwrap_or_else(Instant::now);
            let mut m = self.lock();
            m.drops.sweep(before);
            m.verdicts.sweep(before);
        }
        // Rebuilt whole: a cause the engine forgot leaves no series; one
        // it remembers but no longer sees reads 0.
        let mut active: HashMap<VerdictLabels, i64> = HashMap::new();
        let own = s.own_netns;
        let verdicts: Vec<Verdict> = self.diag.verdicts().to_vec();
        for v in &verdicts {
            let l = self.verdict_labels(v, own);
            let on = i64::from(v.last_ns >= now_ns.saturating_sub(window));
            *active.entry(l).or_default() += on;
        }
        let m = self.lock();
        m.active.clear();
        for (l, n) in active {
            m.active.get_or_create(&l).set(n);
        }
    }
}

impl Consumer for Agent {
    fn drop(&mut self, raw: &DropEvent, s: &mut Session) -> std::io::Result<bool> {
        let rec = s.namer.drop_record(raw);
        let l = self.drop_labels(&rec, s.own_netns);
        self.lock().drops.add(l, 1, Instant::now());
        self.diag.on_drop(rec, s)?;
        self.count_verdicts(s.own_netns);
        Ok(true)
    }

    fn syn(&mut self, raw: &SynEvent, s: &mut Session) -> std::io::Result<()> {
        Consumer::syn(&mut self.diag, raw, s)?;
        self.count_verdicts(s.own_netns);
        Ok(())
    }

    fn neigh(&mut self, raw: &NeighEvent, s: &mut Session) -> std::io::Result<()> {
        Consumer::neigh(&mut self.diag, raw, s)?;
        self.count_verdicts(s.own_netns);
        Ok(())
    }

    fn aggregates(&mut self, recs: &[AggregateRecord], s: &mut Session) -> std::io::Result<()> {
        let now = Instant::now();
        for r in recs {
            let l = self.drop_labels(&r.as_drop, s.own_netns);
            self.lock().drops.add(l, r.count, now);
        }
        if self.log_drops {
            s.out.aggregates(recs)?;
        }
        Ok(())
    }

    fn tick(&mut self, s: &mut Session) -> std::io::Result<()> {
        Consumer::tick(&mut self.diag, s)?;
        self.count_verdicts(s.own_netns);
        self.ticks += 1;
        if self.ticks.is_multiple_of(4) {
            self.second(s);
        }
        Ok(())
    }

    fn finish(&mut self, s: &mut Session) -> std::io::Result<()> {
        Consumer::finish(&mut self.diag, s)?;
        self.count_verdicts(s.own_netns);
        Ok(())
    }
}

/// Capabilities the agent checks before loading, and what for.
const NEEDED: [(Cap, &str); 2] = [
    (caps::BPF, "to load the eBPF programs and maps"),
    (
        caps::PERFMON,
        "to attach tracing programs and read kernel memory",
    ),
];

/// One clear line naming the first capability missing, before any load
/// (the kernel would only say EPERM).
pub fn check_capabilities(eff: CapSet) -> Result<()> {
    if eff.has(caps::SYS_ADMIN) {
        return Ok(());
    }
    let missing: Vec<String> = NEEDED
        .iter()
        .filter(|(cap, _)| !eff.has(*cap))
        .map(|(cap, why)| format!("{} ({why})", cap.name))
        .collect();
    if !missing.is_empty() {
        bail!(
            "tracer agent lacks {}: grant it (securityContext.capabilities.add, setpriv --ambient-caps, or AmbientCapabilities=) or run as root",
            missing.join(" and ")
        );
    }
    Ok(())
}

/// `tracer agent`: bind, load, attach, serve until SIGTERM/SIGINT.
pub async fn run(mut opts: AgentOptions, started: Instant) -> Result<()> {
    let addr: SocketAddr = tokio::net::lookup_host(&opts.metrics_addr)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            anyhow!(
                "bad --metrics-addr '{}': give HOST:PORT, e.g. 0.0.0.0:9431",
                opts.metrics_addr
            )
        })?;
    let eff = CapSet::effective();
    check_capabilities(eff)?;
    if !eff.has(caps::SYS_ADMIN) {
        eprintln!(
            "tracer: warning: no CAP_SYS_ADMIN: the topology of other network namespaces (their routes, needed for most verdicts there) cannot be read; drops are still counted"
        );
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow!("cannot listen on {addr}: {e}"))?;
    let metrics = Arc::new(Mutex::new(Metrics::new(opts.max_series)));
    let registry = metrics.lock().unwrap().registry();
    let shared = Arc::new(Shared {
        registry,
        metrics: metrics.clone(),
        ready: AtomicBool::new(false),
    });
    let server = tokio::spawn(serve(listener, shared.clone()));

    // Refused before the probes attach, as every output is.
    let record = match &opts.record {
        Some((dir, max)) => Some(RollingDir::open(dir, *max)?),
        None => None,
    };
    opts.trace.format = Some(crate::sinks::Format::Json);
    opts.trace.no_aggregate = false;
    let tracer = Tracer::start(&opts.trace, true, started)?;
    metrics
        .lock()
        .unwrap()
        .build
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION").into(),
            kernel: crate::kernel::release().unwrap_or_default().into(),
            hook: tracer.hook().into(),
        })
        .set(1);
    let mut diag = Diagnoser::new(opts.log_drops);
    diag.keep_emitted = true;
    if let Some(set) = record {
        diag.record_rolling(set, &tracer.session)?;
    }
    let mut agent = Agent {
        diag,
        metrics,
        labels: opts.labels,
        active_window: opts.active_window,
        series_idle: opts.series_idle,
        log_drops: opts.log_drops,
        last_lost: 0,
        last_matched: 0,
        ticks: 0,
    };
    shared.ready.store(true, Ordering::SeqCst);
    eprintln!("tracer: agent serving http://{addr}/metrics");
    let r = tracer.run(&mut agent).await;
    shared.ready.store(false, Ordering::SeqCst);
    server.abort();
    r.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_choice() {
        let c = DropLabelChoice::parse("reason,netns").unwrap();
        assert!(c.reason && c.netns && !c.container && !c.ifname);
        let e = DropLabelChoice::parse("reason,pod")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown label 'pod'"), "{e}");
        assert!(DropLabelChoice::parse("").is_err());
    }

    #[test]
    fn missing_capabilities_are_named() {
        let bpf = 1u64 << 39;
        let perfmon = 1u64 << 38;
        let net_admin = 1u64 << 12;
        assert!(check_capabilities(CapSet(bpf | perfmon | net_admin)).is_ok());
        assert!(check_capabilities(CapSet(1 << 21)).is_ok());
        let e = check_capabilities(CapSet(perfmon | net_admin))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("lacks CAP_BPF (") && !e.contains("CAP_PERFMON"),
            "{e}"
        );
        let e = check_capabilities(CapSet(bpf)).unwrap_err().to_string();
        assert!(e.contains("lacks CAP_PERFMON ("), "{e}");
    }
}
