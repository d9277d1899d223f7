//! How records reach the user: one aligned, coloured line per drop for a
//! person, or one JSON object per line for a program; and the summary.

pub mod file;
pub mod log_file;
pub mod metrics;
pub mod pcapng;
pub mod printable;
pub mod rolling;
pub mod verdict;

use crate::events::aggregate::AggregateRecord;
use crate::events::record::{DropRecord, Family, NudState, ReasonSource, SynRecord};
use crate::kernel::probes::KernelStats;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub struct Output {
    pub format: Format,
    color: bool,
    out: Box<dyn Write + Send>,
    header_done: bool,
    /// Name of the tracer's own netns, shown as "host".
    own_netns: u32,
}

const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const CYAN: &str = "\x1b[36m";
const RESET: &str = "\x1b[0m";

/// Width of the REASON column: the longest drop reasons of 6.18
/// (`BRIDGE_INGRESS_STP_STATE`, `TCP_INVALID_END_SEQUENCE`, 24) and the
/// `~` of an inferred one, so no reason pushes the columns after it.
const REASON_W: usize = 25;

impl Output {
    /// Buffered: the event loop flushes after each batch, so a storm costs
    /// one write per batch instead of one per line. Colour only for text
    /// on a terminal, unless NO_COLOR is set.
    fn to<W: Write + Send + 'static>(format: Format, own_netns: u32, w: W, tty: bool) -> Self {
        Output {
            format,
            color: format == Format::Text && tty && std::env::var_os("NO_COLOR").is_none(),
            out: Box::new(std::io::BufWriter::with_capacity(1 << 16, w)),
            header_done: false,
            own_netns,
        }
    }

    pub fn stdout(format: Format, own_netns: u32) -> Self {
        let tty = std::io::stdout().is_terminal();
        Self::to(format, own_netns, std::io::stdout(), tty)
    }

    /// Writes to a file (a log that a collector tails), never coloured;
    /// opened by the rules of `file` (`existing`: `--append` or not).
    /// Lines to a log file that survives a full disk and rotates past
    /// `max` bytes (see `log_file`).
    pub fn to_log(
        path: &std::path::Path,
        existing: file::Existing,
        max: Option<u64>,
        format: Format,
        own_netns: u32,
    ) -> anyhow::Result<Self> {
        let f = log_file::LogFile::open(path, existing, max)?;
        Ok(Self::to(format, own_netns, f, false))
    }

    /// Lines into memory, never coloured: what tests compare.
    #[cfg(test)]
    pub(crate) fn to_buffer(format: Format, own_netns: u32) -> (Self, TestBuffer) {
        let buf = TestBuffer::default();
        (Self::to(format, own_netns, buf.clone(), false), buf)
    }

    /// Lines to stderr: stdout carries the pcapng of `-w -`.
    pub fn stderr(format: Format, own_netns: u32) -> Self {
        let tty = std::io::stderr().is_terminal();
        Self::to(format, own_netns, std::io::stderr(), tty)
    }

    /// `s` in colour on a terminal. Its own control characters are
    /// escaped here, so the only escape sequences a line holds are these.
    pub(crate) fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("{code}{}{RESET}", printable::escape(s))
        } else {
            s.to_string()
        }
    }

    pub fn bold(&self, s: &str) -> String {
        self.paint(BOLD, s)
    }

    pub fn bold_red(&self, s: &str) -> String {
        self.paint(&format!("{BOLD}{RED}"), s)
    }

    /// One JSON line; write errors (a closed pipe) end the run upstream.
    pub fn json<T: Serialize>(&mut self, v: &T) -> std::io::Result<()> {
        // Keep the io error's kind: a closed pipe must read as one.
        serde_json::to_writer(&mut self.out, v).map_err(|e| match e.io_error_kind() {
            Some(kind) => std::io::Error::new(kind, e),
            None => std::io::Error::other(e),
        })?;
        self.out.write_all(b"\n")
    }

    /// Every text line ends here, so this is where names from the system
    /// (interfaces, namespaces, containers, replayed recordings) lose any
    /// byte that could drive the terminal or forge a line. In colour, only
    /// the SGR sequences of `paint` pass (names are escaped where they are
    /// formatted as well; see `printable`).
    pub fn line(&mut self, s: &str) -> std::io::Result<()> {
        let s = if self.color {
            printable::escape_keeping_colour(s)
        } else {
            printable::escape(s)
        };
        writeln!(self.out, "{s}")
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// The netns as text shows it (escaped: see `printable`).
    pub fn netns_label(&self, inode: u32, name: &Option<String>) -> String {
        match name {
            Some(n) => printable::escape(n).into_owned(),
            None if inode != 0 && inode == self.own_netns => "host".to_string(),
            None if inode == 0 => "?".to_string(),
            None => inode.to_string(),
        }
    }

    /// The NETNS column: a pod's `namespace/name` where the namespace is a
    /// pod's (its containers share it, so the pod is what owns it), a
    /// container's name where it is one's, else as `netns_label`.
    pub fn ns_label(
        &self,
        inode: u32,
        name: &Option<String>,
        container: Option<&crate::host::containers::ContainerRef>,
    ) -> String {
        match container {
            Some(c) => match (&c.pod, &c.pod_namespace) {
                (Some(pod), Some(ns)) => printable::escape(&format!("{ns}/{pod}")).into_owned(),
                _ if !c.name.is_empty() => printable::escape(&c.name).into_owned(),
                _ => self.netns_label(inode, name),
            },
            None => self.netns_label(inode, name),
        }
    }

    /// Column titles, once, before the first event line.
    fn header(&mut self) -> std::io::Result<()> {
        if self.header_done {
            return Ok(());
        }
        self.header_done = true;
        // FLOW last: it is the only column whose width varies much.
        let h = format!(
            "{:<15} {:<18} {:<16} {:<REASON_W$} {:<30} {:>5}  {}",
            "TIME", "NETNS", "DEV", "REASON", "LOCATION", "LEN", "FLOW"
        );
        let h = self.paint(DIM, &h);
        self.line(&h)
    }

    pub fn drop(&mut self, d: &DropRecord) -> std::io::Result<()> {
        if self.format == Format::Json {
            return self.json(d);
        }
        self.header()?;
        let time = clock(d.ts_ns);
        let ns = self.ns_label(d.netns, &d.netns_name, d.container.as_ref());
        let dev = dev_label(d);
        let dev = printable::escape(&dev);
        let reason = self.paint(
            &format!("{BOLD}{RED}"),
            &format!("{:<REASON_W$}", reason_label(d)),
        );
        let flow = flow_text(d);
        let line = format!(
            "{time:<15} {ns:<18} {dev:<16} {reason} {:<30} {:>5}  {flow}",
            d.location,
            d.ip_len.unwrap_or(d.len)
        );
        self.line(&line)?;
        if let Some(stack) = &d.stack {
            for f in stack {
                let l = self.paint(DIM, &format!("{:>15}   at {f}", ""));
                self.line(&l)?;
            }
        }
        Ok(())
    }

    pub fn syn(&mut self, s: &SynRecord) -> std::io::Result<()> {
        if self.format == Format::Json {
            return self.json(s);
        }
        self.header()?;
        let ns = self.ns_label(s.netns, &s.netns_name, s.container.as_ref());
        let line = format!(
            "{:<15} {:<18} {:<16} {} {}:{} > {}:{} [{}] mss {} > mtu {} - {}",
            clock(s.ts_ns),
            ns,
            s.ifname
                .as_deref()
                .map(|n| printable::escape(n).into_owned())
                .unwrap_or_else(|| format!("if{}", s.ifindex)),
            self.paint(YELLOW, "SYN_MSS_TOO_BIG     "),
            fmt_addr(s.src),
            s.sport,
            fmt_addr(s.dst),
            s.dport,
            s.tcp_flags,
            s.mss,
            s.mtu,
            if s.family == Some(Family::Ipv6) {
                60
            } else {
                40
            }
        );
        self.line(&line)
    }

    pub fn neigh(&mut self, n: &crate::events::record::NeighRecord) -> std::io::Result<()> {
        if self.format == Format::Json {
            return self.json(n);
        }
        self.header()?;
        let ns = self.ns_label(n.netns, &n.netns_name, n.container.as_ref());
        let line = format!(
            "{:<15} {:<18} {:<16} {} {} {}",
            clock(n.ts_ns),
            ns,
            n.ifname
                .as_deref()
                .map(|n| printable::escape(n).into_owned())
                .unwrap_or_else(|| format!("if{}", n.ifindex)),
            self.paint(
                YELLOW,
                &format!("{:<REASON_W$}", format!("NEIGH_{}", n.state))
            ),
            n.neighbor.map(|a| a.to_string()).unwrap_or_default(),
            if n.state == NudState::Failed {
                "(no ARP/ND answer)"
            } else {
                "(resolving)"
            }
        );
        self.line(&line)
    }

    pub fn note(&mut self, s: &str) -> std::io::Result<()> {
        if self.format == Format::Json {
            return Ok(());
        }
        let s = self.paint(CYAN, s);
        self.line(&s)
    }

    /// One interval's storm counts: a JSON line each, or in text a table
    /// of the busiest keys, like `top`.
    pub fn aggregates(&mut self, recs: &[AggregateRecord]) -> std::io::Result<()> {
        if recs.is_empty() {
            return Ok(());
        }
        if self.format == Format::Json {
            for r in recs {
                self.json(r)?;
            }
            return Ok(());
        }
        const SHOWN: usize = 10;
        let total: u64 = recs.iter().map(|r| r.count).sum();
        let interval = recs[0].interval_s;
        let head = format!(
            "STORM {total} drops counted in {interval:.1}s by key, not printed one by one (--no-aggregate prints all):"
        );
        let head = self.paint(&format!("{BOLD}{YELLOW}"), &head);
        self.line(&head)?;
        for r in recs.iter().take(SHOWN) {
            let d = &r.as_drop;
            let ns = self.netns_label(d.netns, &d.netns_name);
            let flow = if d.src.is_some_and(|a| !a.is_unspecified()) {
                flow_text(d)
            } else {
                d.proto
                    .map(|p| p.to_string().to_uppercase())
                    .unwrap_or_default()
            };
            let line = format!(
                "{:>15} {ns:<18} {:<16} {:<REASON_W$} {:<30}        {flow}",
                r.count,
                dev_label(d),
                reason_label(d),
                d.location
            );
            self.line(&line)?;
        }
        if recs.len() > SHOWN {
            let rest: u64 = recs[SHOWN..].iter().map(|r| r.count).sum();
            self.line(&format!("{:>15} in {} more keys", rest, recs.len() - SHOWN))?;
        }
        Ok(())
    }

    pub fn summary(&mut self, s: &Summary) -> std::io::Result<()> {
        if self.format == Format::Json {
            return self.json(s);
        }
        let mut lines = vec![String::new()];
        lines.push(self.paint(
            BOLD,
            &format!(
                "--- {} drop{} shown in {:.1}s ({} seen by the kernel, {} lost)",
                s.drops,
                if s.drops == 1 { "" } else { "s" },
                s.duration_s,
                s.kernel.drops_seen,
                s.lost
            ),
        ));
        if s.aggregated > 0 {
            lines.push(format!(
                "    {} more counted by key during storms (aggregate lines)",
                s.aggregated
            ));
        }
        lines.extend(detached_lines(s));
        if s.kernel.recursion_misses > 0 {
            lines.push(self.paint(
                RED,
                &format!(
                    "    {} probe runs were skipped by the kernel (nested on a busy CPU): those drops were not seen",
                    s.kernel.recursion_misses
                ),
            ));
        }
        if s.lost > 0 {
            lines.push(self.paint(
                RED,
                &format!(
                    "    {} events could not be queued (ring buffer full): narrow the filter",
                    s.lost
                ),
            ));
        }
        let mut reasons: Vec<_> = s.by_reason.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        if !s.verdict_kinds.is_empty() {
            lines.push(self.paint(BOLD, &verdicts_line(s)));
        }
        for (r, n) in reasons {
            lines.push(format!("    {n:>7}  {r}"));
        }
        if !s.noise_hidden.is_empty() {
            let parts: Vec<String> = s
                .noise_hidden
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            lines.push(format!(
                "    benign container-host drops hidden (--all shows them): {}",
                parts.join(", ")
            ));
        }
        if !s.by_ifname.is_empty() {
            let mut ifs: Vec<_> = s.by_ifname.iter().collect();
            ifs.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let parts: Vec<String> = ifs.iter().map(|(i, n)| format!("{i} {n}")).collect();
            lines.push(format!("    by interface: {}", parts.join(", ")));
        }
        for l in lines {
            self.line(&l)?;
        }
        Ok(())
    }
}

/// How long the per-packet programs were shed or parked, in words.
fn detached_lines(s: &Summary) -> Vec<String> {
    let mut lines = Vec::new();
    if s.storm_shed_ms > 0 {
        lines.push(format!(
            "    route lookups and SYN checks paused {:.1}s during storms (the storms' flows were traced before)",
            s.storm_shed_ms as f64 / 1000.0
        ));
    }
    if s.routes_parked_ms > 0 {
        lines.push(format!(
            "    route lookups parked {:.1}s: the host was busy and nothing dropped (a drop traces them again)",
            s.routes_parked_ms as f64 / 1000.0
        ));
    }
    if s.syn_check_parked_ms > 0 {
        lines.push(format!(
            "    SYN/MSS check parked {:.1}s: no connected devices mixed MTUs, so no SYN could outgrow one",
            s.syn_check_parked_ms as f64 / 1000.0
        ));
    }
    lines
}

/// The verdicts by kind, in one line: a port scan must not repeat itself.
fn verdicts_line(s: &Summary) -> String {
    let parts: Vec<String> = s
        .verdict_kinds
        .iter()
        .map(|(k, n)| {
            if *n == 1 {
                k.clone()
            } else {
                format!("{k} x{n}")
            }
        })
        .collect();
    let faults = if s.faults == 0 {
        "no fault proven".to_string()
    } else {
        format!(
            "{} proven fault{}",
            s.faults,
            if s.faults == 1 { "" } else { "s" }
        )
    };
    format!("    verdicts ({faults}): {}", parts.join(", "))
}

/// Counts for the end-of-run summary.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub drops: u64,
    pub by_reason: BTreeMap<String, u64>,
    pub by_ifname: BTreeMap<String, u64>,
    /// Events the kernel matched but could not queue.
    pub lost: u64,
    /// Drops matched in the kernel and not shown: after --count, after the
    /// reader closed the pipe, or hidden by diagnose. With `drops` and
    /// `lost` it adds up to `kernel.drops_matched`.
    pub not_shown: u64,
    /// Drops counted by key in a storm (the sum of the aggregate lines).
    /// `drops + aggregated + lost + not_shown = kernel.drops_matched`.
    pub aggregated: u64,
    /// Ring-buffer records that did not decode (never expected).
    pub undecodable: u64,
    pub syns_flagged: u64,
    pub verdicts: u64,
    /// The run ended on SIGINT/SIGTERM.
    #[serde(skip)]
    pub interrupted: bool,
    /// Verdicts proven but not printed (more than 20 of one kind).
    #[serde(skip_serializing_if = "is_zero")]
    pub verdicts_suppressed: u64,
    /// Benign container-host drops not shown (see `namer::noise_kind`),
    /// per kind; `--all` shows them.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub noise_hidden: BTreeMap<String, u64>,
    /// Verdicts per kind, for `diagnose`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub verdict_kinds: BTreeMap<String, u64>,
    /// Proven faults among the verdicts.
    #[serde(skip_serializing_if = "is_zero")]
    pub faults: u64,
    /// Milliseconds the route-lookup and SYN programs were shed because
    /// the kernel was aggregating a drop storm (`diagnose`). Its JSON name
    /// predates the word "shed" and stays, as readers rely on it.
    #[serde(rename = "storm_paused_ms", skip_serializing_if = "is_zero")]
    pub storm_shed_ms: u64,
    /// Milliseconds the SYN check was detached because no connected
    /// devices mixed MTUs, so no SYN could be flagged (`diagnose`).
    #[serde(skip_serializing_if = "is_zero")]
    pub syn_check_parked_ms: u64,
    /// Milliseconds the route-lookup programs were detached because the
    /// host was busy and nothing had happened for a while (`diagnose`).
    /// Like `syn_check_parked_ms`, it may overlap `storm_shed_ms`: a
    /// storm sheds every per-packet program, parked or not.
    #[serde(skip_serializing_if = "is_zero")]
    pub routes_parked_ms: u64,
    pub duration_s: f64,
    pub kernel: KernelStats,
}

impl Summary {
    pub fn new() -> Self {
        Summary {
            kind: "summary",
            ..Default::default()
        }
    }

    /// An aggregate line's drops, in the per-reason and per-device counts.
    pub fn count_aggregate(&mut self, a: &AggregateRecord) {
        self.aggregated += a.count;
        let reason = a.reason.as_deref().unwrap_or("unknown");
        *self.by_reason.entry(reason.to_string()).or_default() += a.count;
        *self.by_ifname.entry(dev_label(&a.as_drop)).or_default() += a.count;
    }

    /// Counts a drop hidden as noise.
    pub fn hide(&mut self, d: &DropRecord) {
        if let Some(k) = d.noise {
            *self.noise_hidden.entry(k.as_str().to_string()).or_default() += 1;
        }
    }

    pub fn count(&mut self, d: &DropRecord) {
        self.drops += 1;
        let reason = if d.reason.is_empty() {
            "unknown"
        } else {
            d.reason.as_str()
        };
        *self.by_reason.entry(reason.to_string()).or_default() += 1;
        *self.by_ifname.entry(dev_label(d)).or_default() += 1;
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// `HH:MM:SS.micros` local time of a wall-clock timestamp.
pub fn clock_text(ts_ns: u64) -> String {
    clock(ts_ns)
}

fn clock(ts_ns: u64) -> String {
    let secs = (ts_ns / 1_000_000_000) as libc::time_t;
    let micros = (ts_ns % 1_000_000_000) / 1000;
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: localtime_r fills the tm we own from a valid time_t.
    unsafe { libc::localtime_r(&secs, &mut tm) };
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        tm.tm_hour, tm.tm_min, tm.tm_sec, micros
    )
}

/// `eth0`, `if7(gone)`, or `veth1<-eth0` when it arrived elsewhere.
pub fn dev_label(d: &DropRecord) -> String {
    let dev = match (&d.ifname, d.ifindex) {
        (Some(n), _) => n.clone(),
        (None, 0) => "-".to_string(),
        (None, i) if d.ifname_gone => format!("if{i}(gone)"),
        (None, i) => format!("if{i}"),
    };
    if d.ingress_ifindex != 0 && d.ingress_ifindex != d.ifindex {
        let inn = d
            .ingress_ifname
            .clone()
            .unwrap_or_else(|| format!("if{}", d.ingress_ifindex));
        format!("{dev}<-{inn}")
    } else {
        dev
    }
}

fn fmt_addr(a: Option<IpAddr>) -> String {
    match a {
        Some(IpAddr::V6(v6)) => format!("[{v6}]"),
        Some(a) => a.to_string(),
        None => "?".to_string(),
    }
}

/// `TCP 172.17.5.5:40000 > 10.99.0.2:8080 [S] mss 1460`, tcpdump-like.
pub fn flow_text(d: &DropRecord) -> String {
    if let Some(a) = &d.arp {
        return arp_text(a);
    }
    let Some(proto) = &d.proto else {
        return "(no IP header)".to_string();
    };
    let p = proto.to_string().to_uppercase();
    let mut s = match (d.sport, d.dport) {
        (Some(sp), Some(dp)) => {
            format!("{p} {}:{sp} > {}:{dp}", fmt_addr(d.src), fmt_addr(d.dst))
        }
        _ => format!("{p} {} > {}", fmt_addr(d.src), fmt_addr(d.dst)),
    };
    if let Some(f) = &d.tcp_flags {
        s.push_str(&format!(" [{f}]"));
    }
    if let Some(m) = d.mss {
        s.push_str(&format!(" mss {m}"));
    }
    if let (Some(t), Some(c)) = (d.icmp_type, d.icmp_code) {
        match crate::events::protocols::icmp_name(*proto, t, c) {
            Some(name) => s.push_str(&format!(" {name} (type {t} code {c})")),
            None => s.push_str(&format!(" type {t} code {c}")),
        }
    }
    if d.gso_size != 0 {
        s.push_str(&format!(" gso {}x{}", d.gso_segs, d.gso_size));
    }
    if d.from_socket {
        s.push_str(" (from socket)");
    }
    s
}

/// `ARP who-has 10.0.0.9 tell 10.0.0.1`, as tcpdump says it (without
/// the MACs, which the kernel side does not read).
fn arp_text(a: &crate::events::record::Arp) -> String {
    match a.op.as_str() {
        "request" => format!("ARP who-has {} tell {}", a.target, a.sender),
        "reply" => format!("ARP reply {} to {}", a.sender, a.target),
        op => format!("ARP op {op} {} > {}", a.sender, a.target),
    }
}

/// A drop's reason as text: `~NAME` when inferred from the dropping
/// function on a kernel without drop reasons, `?` when unknown.
pub fn reason_label(d: &DropRecord) -> String {
    match (d.reason.is_empty(), d.reason_source) {
        (true, _) => "?".to_string(),
        (false, Some(ReasonSource::Location)) => format!("~{}", d.reason),
        (false, _) => d.reason.to_string(),
    }
}

/// A writer a test reads back after `Output` took it.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct TestBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl TestBuffer {
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[cfg(test)]
impl Write for TestBuffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_frames_say_who_asked_for_whom() {
        let mut d = DropRecord::sample("br_handle_frame+0x1f0");
        (d.family, d.proto, d.src, d.dst) = (None, None, None, None);
        assert_eq!(flow_text(&d), "(no IP header)");
        d.arp = Some(crate::events::record::Arp {
            op: "request".into(),
            sender: "10.61.0.1".parse().unwrap(),
            target: "10.61.0.7".parse().unwrap(),
        });
        assert_eq!(flow_text(&d), "ARP who-has 10.61.0.7 tell 10.61.0.1");
        d.arp.as_mut().unwrap().op = "reply".into();
        assert_eq!(flow_text(&d), "ARP reply 10.61.0.1 to 10.61.0.7");
    }

    #[test]
    fn the_longest_reasons_stay_in_their_column() {
        let (mut out, buf) = Output::to_buffer(Format::Text, 1);
        for (reason, source) in [
            ("BRIDGE_INGRESS_STP_STATE", Some(ReasonSource::Kernel)),
            ("TCP_INVALID_END_SEQUENCE", Some(ReasonSource::Location)),
        ] {
            let mut d = DropRecord::sample("br_handle_frame+0x1f0");
            d.reason = crate::events::reason::Reason::new(reason);
            d.reason_source = source;
            out.drop(&d).unwrap();
        }
        out.flush().unwrap();
        let text = buf.text();
        let lines: Vec<&str> = text.lines().collect();
        let col = lines[0].find("LOCATION").unwrap();
        for l in &lines[1..] {
            assert_eq!(l.find("br_handle_frame"), Some(col), "{text}");
        }
    }
}
