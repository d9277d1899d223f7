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

use crate::diagnose::Diagnoser;
use crate::events::aggregate::AggregateRecord;
use crate::events::record::DropRecord;
use crate::host::containers::ContainerRef;
use crate::kernel::caps::{self, Cap, CapSet};
use crate::kernel::clock::wall_now_ns;
use crate::rules::Verdict;
use crate::session::{Consumer, Session, TraceOptions, Tracer};
use crate::sinks::rolling::RollingDir;
use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracer_abi::{DropEvent, NeighEvent, SynEvent};

/// The label value of the series that counts label sets past the limit.
pub const OTHER: &str = "other";

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

/// A label value, escaped as the exposition format requires when it is
/// written. prometheus-client 0.24 writes label values verbatim, so a name
/// holding `"` or a newline (an interface any user can name in their own
/// namespace, a /run/netns file) would close the value early and forge
/// labels or whole series, or make the scrape unparsable. Every label the
/// agent exports is of this type, so escaping happens here and only here.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct Label(pub String);

impl Label {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Label {
    fn from(s: String) -> Self {
        Label(s)
    }
}

impl From<&str> for Label {
    fn from(s: &str) -> Self {
        Label(s.to_string())
    }
}

/// Backslash, double quote and newline escaped (the only three the text
/// format and OpenMetrics define; everything else is literal UTF-8).
pub fn escape_label(s: &str) -> Cow<'_, str> {
    if !s.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

impl EncodeLabelValue for Label {
    fn encode(&self, enc: &mut LabelValueEncoder) -> std::fmt::Result {
        enc.write_str(&escape_label(&self.0))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: Label,
    pub netns: Label,
    pub container: Label,
    /// Where the container's name came from (`docker_api`, or `cgroup`
    /// when only the cgroup path named it and the name is its id).
    pub container_source: Label,
    pub ifname: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub kind: Label,
    pub tier: Label,
    pub netns: Label,
    pub container: Label,
    pub container_source: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: Label,
    kernel: Label,
    hook: Label,
}

/// A counter family with at most `max` series (plus the `other` ones,
/// which are as few as the labels kept whole: reasons, kinds).
pub struct Bounded<L: Clone + Hash + Eq> {
    pub family: Family<L, Counter>,
    last: HashMap<L, Instant>,
    max: usize,
    other: fn(&L) -> L,
}

impl<L> Bounded<L>
where
    L: Clone + Hash + Eq + std::fmt::Debug + EncodeLabelSet + Send + Sync + 'static,
{
    pub fn new(max: usize, other: fn(&L) -> L) -> Self {
        Bounded {
            family: Family::default(),
            last: HashMap::new(),
            max,
            other,
        }
    }

    pub fn add(&mut self, l: L, n: u64, now: Instant) {
        if n == 0 {
            return;
        }
        let other = (self.other)(&l);
        let key = if l == other || self.last.contains_key(&l) || self.series() < self.max {
            l
        } else {
            other
        };
        self.last.insert(key.clone(), now);
        self.family.get_or_create(&key).inc_by(n);
    }

    /// Series other than the `other` ones.
    pub fn series(&self) -> usize {
        self.last.keys().filter(|l| **l != (self.other)(l)).count()
    }

    /// Removes the series that did not grow since `before` (their rate
    /// is zero; a label set that comes back starts from its new count).
    pub fn sweep(&mut self, before: Instant) {
        let family = &self.family;
        self.last.retain(|l, t| {
            let keep = *t >= before;
            if !keep {
                family.remove(l);
            }
            keep
        });
    }
}

fn drop_other(l: &DropLabels) -> DropLabels {
    let o = |v: &Label| {
        if v.is_empty() {
            Label::default()
        } else {
            Label::from(OTHER)
        }
    };
    DropLabels {
        reason: l.reason.clone(),
        netns: o(&l.netns),
        container: o(&l.container),
        container_source: Label::default(),
        ifname: o(&l.ifname),
    }
}

fn verdict_other(l: &VerdictLabels) -> VerdictLabels {
    VerdictLabels {
        kind: l.kind.clone(),
        tier: l.tier.clone(),
        netns: Label::from(OTHER),
        container: Label::default(),
        container_source: Label::default(),
    }
}

/// Everything the agent exports.
pub struct Metrics {
    pub drops: Bounded<DropLabels>,
    pub verdicts: Bounded<VerdictLabels>,
    pub active: Family<VerdictLabels, Gauge>,
    pub lost: Counter,
    pub matched: Counter,
    build: Family<BuildLabels, Gauge>,
    process: Process,
}

/// The process's own metrics, read from /proc/self at each scrape.
#[derive(Default)]
struct Process {
    cpu: Counter<f64, AtomicU64>,
    cpu_seen: Mutex<f64>,
    rss: Gauge,
    vsize: Gauge,
    fds: Gauge,
    start: Gauge<f64, AtomicU64>,
}

impl Process {
    fn refresh(&self) {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
            return;
        };
        // Fields after the command name, which may hold spaces.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            return;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // SAFETY: sysconf only reads configuration.
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as i64;
        // rest[0] is field 3 (state): utime 14, stime 15, starttime 22,
        // vsize 23, rss 24.
        let cpu = (num(11) + num(12)) as f64 / tck;
        let mut seen = self.cpu_seen.lock().unwrap_or_else(|e| e.into_inner());
        if cpu > *seen {
            self.cpu.inc_by(cpu - *seen);
            *seen = cpu;
        }
        self.vsize.set(num(20) as i64);
        self.rss.set(num(21) as i64 * page);
        let btime = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        self.start.set(btime as f64 + num(19) as f64 / tck);
        if let Ok(rd) = std::fs::read_dir("/proc/self/fd") {
            self.fds.set(rd.count() as i64);
        }
    }
}

impl Metrics {
    pub fn new(max_series: usize) -> Self {
        Metrics {
            drops: Bounded::new(max_series, drop_other),
            verdicts: Bounded::new(max_series, verdict_other),
            active: Family::default(),
            lost: Counter::default(),
            matched: Counter::default(),
            build: Family::default(),
            process: Process::default(),
        }
    }

    /// A registry over these metrics (they share their values with it).
    pub fn registry(&self) -> Registry {
        let mut r = Registry::default();
        r.register(
            "tracer_drops",
            "Packets the kernel dropped, sampled and aggregated in storms alike",
            self.drops.family.clone(),
        );
        r.register(
            "tracer_verdicts",
            "Root causes concluded (a cause seen again after it was forgotten counts again)",
            self.verdicts.family.clone(),
        );
        r.register(
            "tracer_verdict_active",
            "Causes of this kind still observed within the active window",
            self.active.clone(),
        );
        r.register(
            "tracer_events_lost",
            "Drop events the kernel matched but could not queue (ring buffer full)",
            self.lost.clone(),
        );
        r.register(
            "tracer_kernel_drops_matched",
            "Drops the kernel matched: the sum of tracer_drops_total plus lost events",
            self.matched.clone(),
        );
        r.register(
            "tracer_build_info",
            "Version, kernel release and drop hook",
            self.build.clone(),
        );
        let p = &self.process;
        r.register(
            "process_cpu_seconds",
            "User and system CPU time",
            p.cpu.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "Resident memory",
            p.rss.clone(),
        );
        r.register(
            "process_virtual_memory_bytes",
            "Virtual memory",
            p.vsize.clone(),
        );
        r.register("process_open_fds", "Open file descriptors", p.fds.clone());
        r.register(
            "process_start_time_seconds",
            "Start time since the Unix epoch",
            p.start.clone(),
        );
        r
    }
}

/// Shared between the event loop and the HTTP server.
struct Shared {
    registry: Registry,
    metrics: Arc<Mutex<Metrics>>,
    ready: AtomicBool,
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
    /// from, or both empty.
    fn container(c: &Option<ContainerRef>) -> (Label, Label) {
        match c {
            Some(c) => (c.name.clone().into(), c.source.clone().into()),
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
        let (container, container_source) = Self::container(&d.container);
        DropLabels {
            reason: keep(c.reason, d.reason.as_str().into()),
            netns: keep(c.netns, Self::netns_label(&d.netns_name, d.netns, own)),
            container: keep(c.container, container),
            container_source: keep(c.container, container_source),
            ifname: keep(c.ifname, d.ifname.clone().unwrap_or_default().into()),
        }
    }

    fn verdict_labels(&mut self, v: &Verdict, own: u32) -> VerdictLabels {
        let (container, container_source) = Self::container(&v.container);
        VerdictLabels {
            kind: v.kind.into(),
            tier: v.tier.as_str().into(),
            netns: Self::netns_label(&v.netns_name, v.netns, own),
            container,
            container_source,
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

/// Connections served at once. Past it, each new connection closes the
/// oldest one still open, so that a flood of idle or half-sent
/// connections (anyone who can reach the port can open them) can neither
/// exhaust the agent's fds and memory nor lock out the kubelet's
/// `/healthz` probe and the scraper, which are served in milliseconds.
const MAX_CONNECTIONS: usize = 256;
/// Headers must arrive within this; a whole connection lives at most
/// `CONNECTION_LIFETIME` (a scraper simply reconnects).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// Per-connection read buffer: a request is a few hundred bytes, and
/// larger headers get 431.
const MAX_BUF: usize = 16 * 1024;

/// The open connections, oldest first (by accept order).
#[derive(Default)]
struct Connections {
    open: std::collections::BTreeMap<u64, tokio::task::AbortHandle>,
    next: u64,
}

async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let conns = Arc::new(Mutex::new(Connections::default()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of fds and the like: try again shortly.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let shared = shared.clone();
        let mut c = conns.lock().unwrap_or_else(|e| e.into_inner());
        while c.open.len() >= MAX_CONNECTIONS {
            if let Some((_, oldest)) = c.open.pop_first() {
                oldest.abort();
            }
        }
        let id = c.next;
        c.next += 1;
        let done = conns.clone();
        let task = tokio::spawn(async move {
            serve_one(stream, shared).await;
            done.lock()
                .unwrap_or_else(|e| e.into_inner())
                .open
                .remove(&id);
        });
        // The task removes itself under this lock, so after this insert.
        c.open.insert(id, task.abort_handle());
    }
}

async fn serve_one(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let svc = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(&shared, &req)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_BUF)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
    let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
}

/// Prometheus asks for OpenMetrics in its Accept header; curl, promtool
/// and older scrapers do not, and get the classic text format.
fn wants_openmetrics<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .any(|v| {
            v.to_str()
                .is_ok_and(|v| v.contains("application/openmetrics-text"))
        })
}

/// OpenMetrics text as the classic format 0.0.4: there a counter's HELP
/// and TYPE name its sample (`tracer_drops_total`, where OpenMetrics says
/// `tracer_drops`), and there is no `# EOF`. Label values are escaped the
/// same way in both.
fn classic_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut help: Option<&str> = None;
    for line in om.lines() {
        if line.starts_with("# HELP ") {
            // Held until its TYPE line says whether it is a counter.
            help = Some(line);
            continue;
        }
        let counter = line
            .strip_prefix("# TYPE ")
            .and_then(|t| t.strip_suffix(" counter"));
        let help_line = help.take();
        match counter {
            Some(name) => {
                if let Some(h) = help_line.and_then(|h| h.strip_prefix("# HELP ")) {
                    let text = h.strip_prefix(name).unwrap_or(h);
                    let _ = writeln!(out, "# HELP {name}_total{text}");
                }
                let _ = writeln!(out, "# TYPE {name}_total counter");
            }
            None if line == "# EOF" || line.starts_with("# UNIT ") => {}
            None => {
                if let Some(h) = help_line {
                    out.push_str(h);
                    out.push('\n');
                }
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

fn handle(shared: &Shared, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let reply = |code: StatusCode, ctype: &str, body: String| {
        Response::builder()
            .status(code)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts")
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            shared
                .metrics
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .process
                .refresh();
            let mut body = String::new();
            if prometheus_client::encoding::text::encode(&mut body, &shared.registry).is_err() {
                return reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "encoding failed\n".into(),
                );
            }
            if wants_openmetrics(req) {
                return reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                );
            }
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                classic_text(&body),
            )
        }
        "/healthz" if shared.ready.load(Ordering::SeqCst) => {
            reply(StatusCode::OK, "text/plain", "ok\n".into())
        }
        "/healthz" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "probes not attached\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics or /healthz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dl(reason: &str, netns: &str) -> DropLabels {
        DropLabels {
            reason: reason.into(),
            netns: netns.into(),
            container: Label::default(),
            container_source: Label::default(),
            ifname: "eth0".into(),
        }
    }

    fn text(m: &Metrics) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &m.registry()).unwrap();
        s
    }

    #[test]
    fn drops_past_the_limit_go_to_other_and_totals_stay_exact() {
        let mut m = Metrics::new(2);
        let now = Instant::now();
        m.drops.add(dl("IP_RPFILTER", "a"), 3, now);
        m.drops.add(dl("IP_RPFILTER", "b"), 4, now);
        m.drops.add(dl("IP_RPFILTER", "c"), 5, now);
        m.drops.add(dl("NO_SOCKET", "d"), 6, now);
        m.drops.add(dl("IP_RPFILTER", "a"), 1, now);
        let t = text(&m);
        assert!(
            t.contains(
                r#"tracer_drops_total{reason="IP_RPFILTER",netns="a",container="",container_source="",ifname="eth0"} 4"#
            ),
            "{t}"
        );
        assert!(
            t.contains(r#"tracer_drops_total{reason="IP_RPFILTER",netns="other",container="",container_source="",ifname="other"} 5"#),
            "{t}"
        );
        assert!(
            t.contains(r#"tracer_drops_total{reason="NO_SOCKET",netns="other",container="",container_source="",ifname="other"} 6"#),
            "{t}"
        );
        assert_eq!(m.drops.series(), 2);
        let total: u64 = t
            .lines()
            .filter(|l| l.starts_with("tracer_drops_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(total, 3 + 4 + 5 + 6 + 1);
    }

    #[test]
    fn churn_never_grows_past_the_limit_and_idle_series_go() {
        let mut m = Metrics::new(50);
        let t0 = Instant::now();
        for i in 0..10_000 {
            m.drops.add(dl("IP_RPFILTER", &format!("ns{i}")), 1, t0);
        }
        assert_eq!(m.drops.series(), 50);
        assert_eq!(m.drops.last.len(), 51);
        m.drops.sweep(t0 + Duration::from_secs(1));
        assert!(m.drops.last.is_empty());
        assert!(!text(&m).contains("tracer_drops_total{"));
        // Room again for new label sets.
        m.drops.add(dl("IP_RPFILTER", "new"), 1, t0);
        assert!(text(&m).contains(r#"netns="new""#));
    }

    #[test]
    fn label_values_are_escaped_and_forge_nothing() {
        let mut m = Metrics::new(10);
        let hostile = DropLabels {
            reason: "IP_RPFILTER".into(),
            netns: "a\\b".into(),
            container: "x\ntracer_drops_total{container=\"db-0\"} 99999".into(),
            container_source: "cgroup".into(),
            ifname: "q\",ifname=\"e".into(),
        };
        m.drops.add(hostile, 1, Instant::now());
        let t = text(&m);
        let lines: Vec<&str> = t
            .lines()
            .filter(|l| l.starts_with("tracer_drops_total"))
            .collect();
        assert_eq!(lines.len(), 1, "{t}");
        assert_eq!(
            lines[0],
            r#"tracer_drops_total{reason="IP_RPFILTER",netns="a\\b",container="x\ntracer_drops_total{container=\"db-0\"} 99999",container_source="cgroup",ifname="q\",ifname=\"e"} 1"#
        );
        assert_eq!(escape_label("plain"), "plain");
    }

    #[test]
    fn classic_text_names_counters_by_their_samples() {
        let mut m = Metrics::new(10);
        m.drops.add(dl("IP_RPFILTER", "a"), 2, Instant::now());
        let t = classic_text(&text(&m));
        assert!(
            t.contains("# HELP tracer_drops_total Packets the kernel dropped"),
            "{t}"
        );
        assert!(
            t.contains("# TYPE tracer_drops_total counter\ntracer_drops_total{"),
            "{t}"
        );
        assert!(
            t.contains("# TYPE process_open_fds gauge\nprocess_open_fds "),
            "{t}"
        );
        assert!(
            !t.contains("# EOF") && !t.contains("# TYPE tracer_drops counter"),
            "{t}"
        );
    }

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

    #[test]
    fn process_metrics_are_read() {
        let m = Metrics::new(1);
        m.process.refresh();
        let t = text(&m);
        let rss: f64 = t
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(rss > 1e6, "{t}");
        assert!(t.contains("process_cpu_seconds_total"), "{t}");
    }
}
