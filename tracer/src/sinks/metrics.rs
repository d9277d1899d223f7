//! The agent's Prometheus metrics: label values escaped so that no name
//! forges a series, counter families bounded to `max_series` series (past
//! it, an `other` series), and the process's own CPU, memory and fds.
//! `agent/` fills them from records and verdicts and serves them.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::Hash;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Instant;

/// The label value of the series that counts label sets past the limit.
pub const OTHER: &str = "other";

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
    /// The Kubernetes pod the container belongs to, from kubelet's labels
    /// as the runtime's API gives them (never from the process itself).
    pub pod: Label,
    pub pod_namespace: Label,
    pub ifname: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub kind: Label,
    pub tier: Label,
    pub netns: Label,
    pub container: Label,
    pub container_source: Label,
    pub pod: Label,
    pub pod_namespace: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: Label,
    pub kernel: Label,
    pub hook: Label,
}

/// A counter family with at most `max` series (plus the `other` ones,
/// which are as few as the labels kept whole: reasons, kinds).
pub struct Bounded<L: Clone + Hash + Eq> {
    pub family: Family<L, Counter>,
    last: HashMap<L, Instant>,
    /// How many keys of `last` are `other` series: kept so that `series`
    /// is not a walk (with a label set built per key) on every drop.
    others: usize,
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
            others: 0,
            max,
            other,
        }
    }

    pub fn add(&mut self, l: L, n: u64, now: Instant) {
        if n == 0 {
            return;
        }
        // A series seen before is the usual case (a storm repeats a few
        // label sets): it only bumps its time and counter, and builds no
        // `other` label set (that costs allocations on every drop).
        if let Some(t) = self.last.get_mut(&l) {
            *t = now;
            self.family.get_or_create(&l).inc_by(n);
            return;
        }
        let other = (self.other)(&l);
        let is_other = l == other;
        let (key, is_other) = if is_other || self.series() < self.max {
            (l, is_other)
        } else {
            (other, true)
        };
        if self.last.insert(key.clone(), now).is_none() && is_other {
            self.others += 1;
        }
        self.family.get_or_create(&key).inc_by(n);
    }

    /// Series other than the `other` ones.
    pub fn series(&self) -> usize {
        self.last.len() - self.others
    }

    /// Removes the series that did not grow since `before` (their rate
    /// is zero; a label set that comes back starts from its new count).
    pub fn sweep(&mut self, before: Instant) {
        let (family, other, others) = (&self.family, self.other, &mut self.others);
        self.last.retain(|l, t| {
            let keep = *t >= before;
            if !keep {
                family.remove(l);
                if *l == other(l) {
                    *others -= 1;
                }
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
        pod: o(&l.pod),
        pod_namespace: Label::default(),
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
        pod: Label::default(),
        pod_namespace: Label::default(),
    }
}

/// Everything the agent exports.
pub struct Metrics {
    pub drops: Bounded<DropLabels>,
    pub verdicts: Bounded<VerdictLabels>,
    pub active: Family<VerdictLabels, Gauge>,
    pub lost: Counter,
    pub matched: Counter,
    pub build: Family<BuildLabels, Gauge>,
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
    /// The process's CPU, memory and fds, read from /proc/self: called
    /// before each scrape, so they are as fresh as the scrape.
    pub fn refresh_process(&self) {
        self.process.refresh();
    }

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    pub(crate) fn dl(reason: &str, netns: &str) -> DropLabels {
        DropLabels {
            reason: reason.into(),
            netns: netns.into(),
            container: Label::default(),
            container_source: Label::default(),
            pod: Label::default(),
            pod_namespace: Label::default(),
            ifname: "eth0".into(),
        }
    }

    pub(crate) fn text(m: &Metrics) -> String {
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
                r#"tracer_drops_total{reason="IP_RPFILTER",netns="a",container="",container_source="",pod="",pod_namespace="",ifname="eth0"} 4"#
            ),
            "{t}"
        );
        assert!(
            t.contains(r#"tracer_drops_total{reason="IP_RPFILTER",netns="other",container="",container_source="",pod="",pod_namespace="",ifname="other"} 5"#),
            "{t}"
        );
        assert!(
            t.contains(r#"tracer_drops_total{reason="NO_SOCKET",netns="other",container="",container_source="",pod="",pod_namespace="",ifname="other"} 6"#),
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
            pod: "web-0".into(),
            pod_namespace: "shop\"".into(),
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
            r#"tracer_drops_total{reason="IP_RPFILTER",netns="a\\b",container="x\ntracer_drops_total{container=\"db-0\"} 99999",container_source="cgroup",pod="web-0",pod_namespace="shop\"",ifname="q\",ifname=\"e"} 1"#
        );
        assert_eq!(escape_label("plain"), "plain");
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
