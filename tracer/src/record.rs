//! Recordings: everything a diagnosis needs, so that `diagnose --replay`
//! reaches the same verdicts offline, without a kernel or root.
//!
//! Format (JSON lines, versioned; see the README):
//! - line 1, the header: `{"type":"tracer-recording","version":1,
//!   "kernel","hostname","start_ns","own_netns","dockerd","netns","filter",
//!   "tracer"}`;
//! - `{"type":"topology","ts_ns","netns","topology":{..}}`: a namespace's
//!   topology, written when a rule first needs it and again whenever it
//!   has changed, always before the fact that needed it;
//! - `{"type":"container","ts_ns","container":{..}}` and
//!   `{"type":"docker_network","ts_ns","bridge","network":{..}}`: what a
//!   rule learnt about a container or a Docker network, when first asked
//!   and when changed, before the fact that needed it;
//! - `{"type":"ruleset","ts_ns","netns","ruleset":{..}}`: a namespace's
//!   firewall rules with their counters, each time a rule read them
//!   (`netfilter_drop` compares two readings), before the fact or tick
//!   that needed it;
//! - `{"type":"nftrace","ts_ns","netns","hits":[..]}`: with `--nftrace`,
//!   the drops the kernel's trace showed in a namespace so far, when they
//!   grew, before the fact or tick that needed them;
//! - `drop`, `syn`, `neigh`: the facts, exactly as `-o json` prints them;
//! - `{"type":"end","ts_ns"}`: when the run ended (a replay runs the
//!   rules' clocks up to it).
//!
//! A reader rejects another major `version`; unknown line types are
//! skipped, so a minor addition does not break older readers.
//!
//! A recording may come from anywhere, so the reader bounds what it costs:
//! a line over `MAX_LINE` bytes is refused (it is read at most that far,
//! so `--replay /dev/zero` ends at once), and the facts' and end's
//! timestamps must lie within `MAX_SPAN_NS` of the header's `start_ns` and
//! never step back by more than `MAX_STEP_BACK_NS`: the replay runs the rules'
//! clock every 250 ms of fact time, so a timestamp of 1, or one near 2^64,
//! would otherwise mean billions of ticks.

use crate::host::containers::{Container, DockerNetwork};
use crate::host::firewall::nftrace::TraceHit;
use crate::host::firewall::Ruleset;
use crate::host::topology::NsTopology;
use crate::kernel::clock::wall_now_ns;
use crate::rules::Fact;
use crate::sinks::rolling::{self, RollingDir};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const MAGIC: &str = "tracer-recording";
/// The major format version this tracer writes and reads.
pub const VERSION: u32 = 1;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Header {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    /// `uname -r` of the recording host.
    pub kernel: String,
    pub hostname: String,
    /// Wall clock at the start, ns since the Unix epoch.
    pub start_ns: u64,
    /// tracer's own namespace there (its fixes need no prefix).
    pub own_netns: u32,
    /// dockerd was running (only advice depends on it).
    #[serde(default)]
    pub dockerd: bool,
    /// The namespaces traced; empty for all.
    #[serde(default)]
    pub netns: Vec<u32>,
    #[serde(default)]
    pub filter: String,
    /// The tracer version that wrote it.
    #[serde(default)]
    pub tracer: String,
}

impl Header {
    /// A header describing this host now.
    pub fn here(own_netns: u32, netns: Vec<u32>, filter: &str, dockerd: bool) -> Header {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        Header {
            kind: MAGIC.into(),
            version: VERSION,
            kernel: crate::kernel::release().unwrap_or_default(),
            hostname: read("/proc/sys/kernel/hostname"),
            start_ns: wall_now_ns(),
            own_netns,
            dockerd,
            netns,
            filter: filter.into(),
            tracer: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

#[derive(Serialize)]
struct TopologyLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    ts_ns: u64,
    netns: u32,
    topology: &'a NsTopology,
    /// The namespace was last seen with another topology at this time (a
    /// path change since): flows first seen before it are stale.
    #[serde(skip_serializing_if = "Option::is_none")]
    changed_before_ns: Option<u64>,
}

/// Where a recording goes: one file (`diagnose -w`, buffered), or the
/// agent's rolling set (each line written whole at once, see
/// `sinks::rolling`).
enum Out {
    File(BufWriter<File>),
    Rolling(RollingDir),
}

/// Writes a recording as the run goes.
pub struct Recorder {
    out: Out,
    /// Written again at the top of each file of a rolling set.
    header: Header,
    /// The last snapshot written per namespace.
    last: HashMap<u32, Arc<NsTopology>>,
    /// The last container written per netns, network per bridge.
    containers: HashMap<u32, Arc<Container>>,
    networks: HashMap<String, DockerNetwork>,
}

impl Recorder {
    /// Starts a recording in `f` (opened by `sinks::file` before the
    /// probes attach, so a refused path fails fast).
    pub fn create(f: File, header: &Header) -> Result<Recorder> {
        Self::start(Out::File(BufWriter::new(f)), header)
    }

    /// Starts a recording spread over the rolling set `set`.
    pub fn rolling(set: RollingDir, header: &Header) -> Result<Recorder> {
        Self::start(Out::Rolling(set), header)
    }

    fn start(out: Out, header: &Header) -> Result<Recorder> {
        let mut r = Recorder {
            out,
            header: header.clone(),
            last: HashMap::new(),
            containers: HashMap::new(),
            networks: HashMap::new(),
        };
        r.line(header)?;
        Ok(r)
    }

    fn line<T: Serialize>(&mut self, v: &T) -> std::io::Result<()> {
        match &mut self.out {
            Out::File(w) => {
                serde_json::to_writer(&mut *w, v).map_err(std::io::Error::other)?;
                w.write_all(b"\n")
            }
            Out::Rolling(set) => {
                let mut line = serde_json::to_vec(v).map_err(std::io::Error::other)?;
                line.push(b'\n');
                set.write_line(&line)
            }
        }
    }

    /// In a rolling set whose file is full: the next file, which starts
    /// with the header and everything known so far, so it replays alone.
    fn roll_if_full(&mut self) -> std::io::Result<()> {
        let Out::Rolling(set) = &mut self.out else {
            return Ok(());
        };
        if !set.full() {
            return Ok(());
        }
        set.rotate()?;
        let header = self.header.clone();
        self.line(&header)?;
        let now = wall_now_ns();
        let topologies: Vec<Arc<NsTopology>> = self.last.values().cloned().collect();
        for t in topologies {
            self.line(&TopologyLine {
                kind: "topology",
                ts_ns: now,
                netns: t.inode,
                topology: &t,
                changed_before_ns: None,
            })?;
        }
        let containers: Vec<Arc<Container>> = self.containers.values().cloned().collect();
        for c in containers {
            self.line(&serde_json::json!({"type": "container", "ts_ns": now, "container": &*c}))?;
        }
        let networks: Vec<(String, DockerNetwork)> = self
            .networks
            .iter()
            .map(|(b, n)| (b.clone(), n.clone()))
            .collect();
        for (bridge, n) in networks {
            self.line(&serde_json::json!({"type": "docker_network", "ts_ns": now, "bridge": bridge, "network": n}))?;
        }
        Ok(())
    }

    /// Writes `c` unless it was the last written for its netns.
    pub fn container(&mut self, ts_ns: u64, c: &Arc<Container>) -> std::io::Result<()> {
        if self.containers.get(&c.netns).is_some_and(|p| p == c) {
            return Ok(());
        }
        self.containers.insert(c.netns, c.clone());
        self.line(&serde_json::json!({"type": "container", "ts_ns": ts_ns, "container": &**c}))
    }

    /// Writes `n` unless it was the last written for its bridge.
    pub fn docker_network(
        &mut self,
        ts_ns: u64,
        bridge: &str,
        n: &DockerNetwork,
    ) -> std::io::Result<()> {
        if self.networks.get(bridge).is_some_and(|p| p == n) {
            return Ok(());
        }
        self.networks.insert(bridge.to_string(), n.clone());
        self.line(&serde_json::json!({"type": "docker_network", "ts_ns": ts_ns, "bridge": bridge, "network": n}))
    }

    /// Writes a reading of `netns`'s firewall rules (every reading: the
    /// counters are the point).
    pub fn ruleset(&mut self, ts_ns: u64, netns: u32, rs: &Ruleset) -> std::io::Result<()> {
        self.line(
            &serde_json::json!({"type": "ruleset", "ts_ns": ts_ns, "netns": netns, "ruleset": rs}),
        )
    }

    /// Writes what `--nftrace` has traced in `netns` so far.
    pub fn nftrace(&mut self, ts_ns: u64, netns: u32, hits: &[TraceHit]) -> std::io::Result<()> {
        self.line(
            &serde_json::json!({"type": "nftrace", "ts_ns": ts_ns, "netns": netns, "hits": hits}),
        )
    }

    /// Writes `t` unless the last snapshot of its namespace says the same.
    pub fn topology(&mut self, ts_ns: u64, t: &Arc<NsTopology>) -> std::io::Result<()> {
        self.topology_changed(ts_ns, t, None)
    }

    /// Like `topology`, noting when the namespace last looked different.
    pub fn topology_changed(
        &mut self,
        ts_ns: u64,
        t: &Arc<NsTopology>,
        changed_before_ns: Option<u64>,
    ) -> std::io::Result<()> {
        if let Some(prev) = self.last.get(&t.inode) {
            // A new listen-overflow or exhaustion count is written too:
            // it is how a replay sees an overflow that no drop shows, and
            // the counters an exhaustion verdict compares.
            if Arc::ptr_eq(prev, t)
                || (prev.same_as(t) && prev.listen == t.listen && prev.exhaustion == t.exhaustion)
            {
                self.last.insert(t.inode, t.clone());
                return Ok(());
            }
        }
        self.last.insert(t.inode, t.clone());
        self.line(&TopologyLine {
            kind: "topology",
            ts_ns,
            netns: t.inode,
            topology: t,
            changed_before_ns,
        })
    }

    pub fn fact(&mut self, f: &Fact) -> std::io::Result<()> {
        match f {
            Fact::Drop(d) => self.line(d),
            Fact::Syn(s) => self.line(s),
            Fact::Neigh(n) => self.line(n),
        }?;
        // Only after a fact: the snapshots a fact needed stay in its file.
        self.roll_if_full()
    }

    /// Ends the recording (and flushes it).
    pub fn end(&mut self, ts_ns: u64) -> std::io::Result<()> {
        self.line(&serde_json::json!({"type": "end", "ts_ns": ts_ns}))?;
        match &mut self.out {
            Out::File(w) => w.flush(),
            Out::Rolling(_) => Ok(()),
        }
    }
}

/// One line of a recording after the header (read one at a time, so its
/// size does not matter).
#[allow(clippy::large_enum_variant)]
pub enum Line {
    /// A snapshot, and when the namespace last looked different.
    Topology(NsTopology, Option<u64>),
    Container(Container),
    DockerNetwork(String, DockerNetwork),
    /// A namespace's firewall rules, as read then.
    Ruleset(u32, Ruleset),
    /// What `--nftrace` had traced in a namespace then.
    NfTrace(u32, Vec<TraceHit>),
    Fact(Fact),
    End {
        ts_ns: u64,
    },
}

/// The longest line a reader accepts (a topology snapshot of a namespace
/// with thousands of routes is a few hundred kB).
pub const MAX_LINE: usize = 1 << 20;
/// How far from the header's `start_ns` a fact or the end may lie: a
/// replay runs up to 4 ticks per second of it (7 days: 2.4 M ticks).
pub const MAX_SPAN_NS: u64 = 7 * 24 * 3600 * 1_000_000_000;
/// Facts before `start_ns` by up to this much are fine: the header is
/// written once the probes are attached, after the first events.
pub const MAX_EARLY_NS: u64 = 60 * 1_000_000_000;
/// Events from different CPUs reach the ring buffer slightly out of
/// order; a step back larger than this is a broken recording.
pub const MAX_STEP_BACK_NS: u64 = 1_000_000_000;

/// Reads a recording line by line: one file, or a directory of the
/// agent's rolling set (`sinks::rolling`) read oldest first as one run.
pub struct Reader {
    pub header: Header,
    input: BufReader<File>,
    lineno: usize,
    name: String,
    /// The set's files still to read.
    rest: VecDeque<PathBuf>,
    /// The start of the file being read: its facts lie within
    /// `MAX_SPAN_NS` of it (a set may span several runs of the agent).
    span_start: u64,
    /// The latest fact or end timestamp read.
    latest_ns: Option<u64>,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader> {
        let mut files: VecDeque<PathBuf> = if path.is_dir() {
            rolling::list(path)?.into()
        } else {
            VecDeque::from([path.to_path_buf()])
        };
        let first = files.pop_front().ok_or_else(|| {
            anyhow!(
                "{} holds no tracer recordings (tracer-NNNNNNNN.jsonl, as agent --record-dir writes)",
                path.display()
            )
        })?;
        let (input, name) = Self::open_input(&first)?;
        let mut r = Reader {
            header: Header::default(),
            input,
            lineno: 0,
            name,
            rest: files,
            span_start: 0,
            latest_ns: None,
        };
        r.header = r.read_header()?;
        Ok(r)
    }

    fn open_input(path: &Path) -> Result<(BufReader<File>, String)> {
        let name = path.display().to_string();
        let f = File::open(path).with_context(|| format!("cannot open recording {name}"))?;
        Ok((BufReader::new(f), name))
    }

    /// The header of the file just opened, checked.
    fn read_header(&mut self) -> Result<Header> {
        let name = self.name.clone();
        let first = self
            .read_file_line()
            .transpose()?
            .ok_or_else(|| anyhow!("{name} is empty, not a tracer recording"))?;
        let h = parse_header(&first).map_err(|e| anyhow!("{name}: {e}"))?;
        self.span_start = h.start_ns;
        Ok(h)
    }

    /// Goes on with the set's next file.
    fn next_file(&mut self, path: &Path) -> Result<()> {
        (self.input, self.name) = Self::open_input(path)?;
        self.lineno = 0;
        self.read_header().map(|_| ())
    }

    /// The next line, read no further than `MAX_LINE` bytes; at the end of
    /// a file of a set, the next file's first line after its header.
    fn read_line(&mut self) -> Option<Result<String>> {
        loop {
            match self.read_file_line() {
                Some(l) => return Some(l),
                None => {
                    let next = self.rest.pop_front()?;
                    if let Err(e) = self.next_file(&next) {
                        return Some(Err(e));
                    }
                }
            }
        }
    }

    fn read_file_line(&mut self) -> Option<Result<String>> {
        let mut buf = Vec::new();
        let limit = MAX_LINE as u64 + 1;
        let n = match (&mut self.input).take(limit).read_until(b'\n', &mut buf) {
            Ok(0) => return None,
            Ok(n) => n,
            Err(e) => return Some(Err(anyhow!("cannot read {}: {e}", self.name))),
        };
        self.lineno += 1;
        let at = format!("{} line {}", self.name, self.lineno);
        if n as u64 == limit && buf.last() != Some(&b'\n') {
            return Some(Err(anyhow!(
                "{at} is longer than {} MB: not a tracer recording, or a damaged one",
                MAX_LINE >> 20
            )));
        }
        // The file's last line, cut short where its writer was killed: what
        // was written before it still replays.
        if buf.last() != Some(&b'\n') && serde_json::from_slice::<Value>(&buf).is_err() {
            eprintln!("tracer: {at} was cut short (its writer stopped mid-line): skipped");
            return None;
        }
        Some(String::from_utf8(buf).map_err(|_| anyhow!("{at} is not UTF-8 text")))
    }

    /// A fact's or the end's timestamp, checked against the header's start
    /// and the latest one read (see the module's doc).
    fn check_ts(&mut self, ts: u64) -> Result<()> {
        let start = self.span_start;
        let (lo, hi) = (start.saturating_sub(MAX_EARLY_NS), start + MAX_SPAN_NS);
        if ts < lo || ts > hi {
            bail!(
                "timestamp {ts} is out of range: the recording started at {start}, and its facts lie within 7 days of that"
            );
        }
        if let Some(latest) = self.latest_ns {
            if ts.saturating_add(MAX_STEP_BACK_NS) < latest {
                bail!("timestamp {ts} is out of order: an earlier line is at {latest}");
            }
        }
        self.latest_ns = Some(self.latest_ns.map_or(ts, |l| l.max(ts)));
        Ok(())
    }
}

/// Checks the magic and the major version before anything else, so that a
/// newer format fails with one clear line, not a field error.
pub fn parse_header(line: &str) -> Result<Header> {
    let v: Value =
        serde_json::from_str(line).map_err(|_| anyhow!("not a tracer recording (line 1)"))?;
    if v["type"] != MAGIC {
        bail!("not a tracer recording (line 1 is not a {MAGIC} header)");
    }
    match v["version"].as_u64() {
        Some(n) if n == u64::from(VERSION) => {}
        Some(n) => bail!(
            "recording format version {n} is not supported: this tracer reads version {VERSION}"
        ),
        None => bail!("recording header has no version"),
    }
    let h: Header = serde_json::from_value(v).map_err(|e| anyhow!("bad recording header: {e}"))?;
    // Far past any clock this format will see (year 2262), and it keeps
    // every sum with MAX_SPAN_NS and a tick from overflowing.
    if h.start_ns > u64::MAX / 2 {
        bail!(
            "bad recording header: start_ns {} is out of range",
            h.start_ns
        );
    }
    Ok(h)
}

impl Iterator for Reader {
    type Item = Result<Line>;

    fn next(&mut self) -> Option<Result<Line>> {
        loop {
            let line = match self.read_line()? {
                Ok(l) => l,
                Err(e) => return Some(Err(e)),
            };
            if line.trim().is_empty() {
                continue;
            }
            let at = format!("{} line {}", self.name, self.lineno);
            let parsed = (|| -> Result<Option<Line>> {
                let mut v: Value = serde_json::from_str(&line)?;
                let kind = v["type"].as_str().unwrap_or_default().to_string();
                Ok(match kind.as_str() {
                    "topology" => Some(Line::Topology(
                        serde_json::from_value(v["topology"].take())?,
                        v["changed_before_ns"].as_u64(),
                    )),
                    "container" => Some(Line::Container(serde_json::from_value(
                        v["container"].take(),
                    )?)),
                    "docker_network" => Some(Line::DockerNetwork(
                        v["bridge"].as_str().unwrap_or_default().to_string(),
                        serde_json::from_value(v["network"].take())?,
                    )),
                    "ruleset" => Some(Line::Ruleset(
                        v["netns"].as_u64().unwrap_or_default() as u32,
                        serde_json::from_value(v["ruleset"].take())?,
                    )),
                    "nftrace" => Some(Line::NfTrace(
                        v["netns"].as_u64().unwrap_or_default() as u32,
                        serde_json::from_value(v["hits"].take())?,
                    )),
                    "drop" => Some(Line::Fact(Fact::Drop(serde_json::from_value(v)?))),
                    "syn" => Some(Line::Fact(Fact::Syn(serde_json::from_value(v)?))),
                    "neigh" => Some(Line::Fact(Fact::Neigh(serde_json::from_value(v)?))),
                    "end" => Some(Line::End {
                        ts_ns: v["ts_ns"].as_u64().unwrap_or(0),
                    }),
                    // A later minor version's addition: not ours to read.
                    _ => None,
                })
            })();
            let ts = match &parsed {
                Ok(Some(Line::Fact(f))) => Some(f.ts_ns()),
                Ok(Some(Line::End { ts_ns })) => Some(*ts_ns),
                _ => None,
            };
            if let Some(Err(e)) = ts.map(|ts| self.check_ts(ts)) {
                return Some(Err(anyhow!("{at}: {e}")));
            }
            match parsed {
                Ok(Some(l)) => return Some(Ok(l)),
                Ok(None) => continue,
                Err(e) => return Some(Err(anyhow!("{at}: {e}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    const START: u64 = 1_795_965_131_510_474_190;

    /// A recording file of `lines` after a header that started at START.
    fn recording(name: &str, lines: &[String]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("trrec-{}-{name}.jsonl", std::process::id()));
        let mut h = Header::here(1, vec![], "", false);
        h.start_ns = START;
        let mut text = serde_json::to_string(&h).unwrap() + "\n";
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    fn neigh(ts: u64) -> String {
        format!(
            r#"{{"type":"neigh","ts_ns":{ts},"netns":1,"netns_name":"a","ifindex":3,"ifname":"eth1","neighbor":"10.99.0.2","state":"INCOMPLETE"}}"#
        )
    }

    /// Every line read, or the first error; quickly whatever the input.
    fn read_all(p: &Path) -> Result<usize> {
        let t0 = Instant::now();
        let r = Reader::open(p).and_then(|r| r.collect::<Result<Vec<Line>>>().map(|v| v.len()));
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t0.elapsed()
        );
        let _ = std::fs::remove_file(p);
        r
    }

    #[test]
    fn a_last_line_cut_short_by_a_kill_is_skipped_and_the_rest_replays() {
        let p = recording("torn", &[neigh(START + 1), neigh(START + 2)]);
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(br#"{"type":"neigh","ts_ns":17959651"#).unwrap();
        assert_eq!(read_all(&p).unwrap(), 2);
        // A whole line without its newline still counts.
        let p = recording("nonl", &[neigh(START + 1)]);
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(neigh(START + 2).as_bytes()).unwrap();
        assert_eq!(read_all(&p).unwrap(), 2);
        // Damage that is not at the end is still an error.
        let p = recording(
            "mid",
            &[neigh(START + 1), "{\"type\":".into(), neigh(START + 2)],
        );
        assert!(read_all(&p).is_err());
    }

    #[test]
    fn a_rolling_set_replays_as_one_run_and_its_newest_file_alone() {
        let dir = std::env::temp_dir().join(format!("trrec-{}-set", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let set = RollingDir::open(&dir, rolling::MIN_TOTAL).unwrap();
        let mut h = Header::here(1, vec![], "", false);
        h.start_ns = START;
        let mut rec = Recorder::rolling(set, &h).unwrap();
        let n = 2000;
        for i in 0..n {
            let f = Fact::Neigh(serde_json::from_str(&neigh(START + i)).unwrap());
            rec.fact(&f).unwrap();
        }
        drop(rec);
        let files = rolling::list(&dir).unwrap();
        assert!(files.len() >= 3, "{files:?}");
        let total: u64 = files.iter().map(|p| p.metadata().unwrap().len()).sum();
        assert!(total <= rolling::MIN_TOTAL + 1000, "{total}");
        // The oldest facts are gone; the newest are all there, in order.
        let facts: Vec<u64> = Reader::open(&dir)
            .unwrap()
            .map(|l| match l.unwrap() {
                Line::Fact(f) => f.ts_ns(),
                _ => 0,
            })
            .filter(|&ts| ts != 0)
            .collect();
        assert_eq!(*facts.last().unwrap(), START + n - 1);
        assert!(
            facts.len() > 50 && (facts.len() as u64) < n,
            "{}",
            facts.len()
        );
        assert!(facts.windows(2).all(|w| w[1] == w[0] + 1), "{facts:?}");
        // Each file is a recording of its own.
        let newest = Reader::open(files.last().unwrap()).unwrap();
        assert_eq!(newest.header.start_ns, START);
        assert!(read_all(&files[0]).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
        let empty = std::env::temp_dir().join(format!("trrec-{}-empty", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let e = Reader::open(&empty).err().unwrap().to_string();
        assert!(e.contains("holds no tracer recordings"), "{e}");
        std::fs::remove_dir_all(&empty).unwrap();
    }

    #[test]
    fn a_line_over_1_mb_is_refused_with_its_number() {
        let long = format!(r#"{{"type":"x","pad":"{}"}}"#, "a".repeat(MAX_LINE));
        let p = recording("long", &[neigh(START), long, neigh(START)]);
        let e = read_all(&p).unwrap_err().to_string();
        assert!(
            e.ends_with("line 3 is longer than 1 MB: not a tracer recording, or a damaged one"),
            "{e}"
        );
        // A header line with no end (`--replay /dev/zero`) stops at 1 MB too.
        let p = std::env::temp_dir().join(format!("trrec-{}-zero", std::process::id()));
        std::fs::write(&p, vec![0u8; 3 * MAX_LINE]).unwrap();
        let e = read_all(&p).unwrap_err().to_string();
        assert!(e.contains("line 1 is longer than 1 MB"), "{e}");
        // Just under the limit is fine.
        let ok = format!(r#"{{"type":"x","pad":"{}"}}"#, "a".repeat(MAX_LINE - 100));
        assert_eq!(read_all(&recording("ok", &[ok, neigh(START)])).unwrap(), 1);
    }

    #[test]
    fn timestamps_out_of_range_or_order_are_errors_not_loops() {
        for (name, ts) in [
            ("one", 1u64),
            ("max", u64::MAX - 5),
            ("late", START + MAX_SPAN_NS + 1),
        ] {
            let p = recording(name, &[neigh(START), neigh(ts)]);
            let e = read_all(&p).unwrap_err().to_string();
            assert!(
                e.contains("line 3: timestamp") && e.contains("out of range"),
                "{e}"
            );
        }
        // The end line is checked as facts are.
        let end = format!(r#"{{"type":"end","ts_ns":{}}}"#, u64::MAX);
        let e = read_all(&recording("end", &[neigh(START), end])).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        let p = recording("order", &[neigh(START + 5_000_000_000), neigh(START)]);
        let e = read_all(&p).unwrap_err().to_string();
        assert!(
            e.contains("line 3: timestamp") && e.contains("out of order"),
            "{e}"
        );
        // Events of different CPUs a little out of order, and the first
        // ones just before the header, are what live runs write.
        let fine = [
            neigh(START - 1_000_000),
            neigh(START + 500),
            neigh(START + 100),
        ];
        assert_eq!(read_all(&recording("fine", &fine)).unwrap(), 3);
        let mut h = Header::here(1, vec![], "", false);
        h.start_ns = u64::MAX - 1;
        let e = parse_header(&serde_json::to_string(&h).unwrap()).unwrap_err();
        assert!(e.to_string().contains("start_ns"), "{e}");
    }

    #[test]
    fn a_replay_of_a_hostile_first_timestamp_ends_at_once() {
        // The replay itself (ticks every 250 ms of fact time) must not spin.
        let p = recording("replay", &[neigh(1), neigh(START)]);
        let t0 = Instant::now();
        let r = crate::diagnose::replay(&p, |_| Ok(()));
        let _ = std::fs::remove_file(&p);
        assert!(r.is_err());
        assert!(t0.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn headers_of_other_versions_are_refused_in_one_line() {
        let ok = serde_json::to_string(&Header::here(1, vec![], "", false)).unwrap();
        assert_eq!(parse_header(&ok).unwrap().version, VERSION);
        let v2 = r#"{"type":"tracer-recording","version":2,"whatever":true}"#;
        let e = parse_header(v2).unwrap_err().to_string();
        assert_eq!(
            e,
            "recording format version 2 is not supported: this tracer reads version 1"
        );
        assert!(parse_header(r#"{"type":"drop"}"#).is_err());
        assert!(parse_header("garbage").is_err());
    }
}
