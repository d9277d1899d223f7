//! `cargo xtask bench --scale [--sizes 100,1000,3000] [--modes watch,diagnose,agent] [--idle S] [--tracer PATH]`:
//! `tracer watch`, `diagnose` and `agent` on a dense node (issue 22). For
//! each size N it builds
//! N namespaces `trscale-<pid>-<i>`, each with a veth `eth0` into one
//! bridge in `trscale-<pid>-hub` (a bridge per 1,000, joined to the first:
//! the kernel's limit is 1,024 ports) (IPv6 off, so that nothing but the
//! bench's own datagram ever drops: router solicitations flooded to a
//! thousand bridge ports are a drop storm, not idling), then measures:
//!
//! - ready: spawn to the `ready` line;
//! - idle CPU: utime + stime over `--idle` seconds (30), from 5 s after
//!   ready, as a share of one core;
//! - RSS at the start and end of that window, and its growth;
//! - threads at the end;
//! - drop to line and drop to verdict: one UDP datagram from the hub to a
//!   closed port of the last-made namespace, timed from just before it is
//!   sent to the `drop` line naming it and to the `port_closed` verdict
//!   (`watch` has no verdicts). The agent's "line" is its metric: the
//!   first scrape whose `tracer_drops_total` has a series for that
//!   namespace; its verdict is its `--log -` line. Its ready is the first
//!   `/healthz` that answers 200, and it adds two scrapes, each one GET
//!   /metrics, timed, with its series counted: one after the idle
//!   window, and one after a datagram to a closed port of every
//!   namespace, whose `tracer_drops_total` series the default
//!   `--max-series` bounds.
//!
//! With the largest size, the churn phase (`--churn 30` s, `--churn-rate
//! 200` namespaces made and deleted a second, see `churn`): no crash, every
//! drop in a live namespace named, no fd or thread leak.
//!
//! Then prints the curve, the cost per 1,000 namespaces and each target of
//! the issue with PASS/FAIL, and writes `target/bench/scale.json`. Every
//! namespace is deleted on exit, on error and on Ctrl-C; leftovers of a
//! killed run (whose pid is gone) are deleted first.

use super::churn;
use super::lab::{batch, catch_signals, check_interrupted, in_netns, sleep, Reaper};
use super::observers::{cpu_seconds, status_kb};
use anyhow::{bail, Context, Result};
use netlab::{free_port, http_get};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: cargo xtask bench --scale [--sizes 100,1000,3000] [--modes watch,diagnose,agent] [--idle SECONDS] [--churn SECONDS] [--churn-rate N] [--tracer PATH]";

/// The targets (at 1,000 namespaces; ready also at 3,000).
const READY_MS_1000: f64 = 300.0;
const READY_MS_3000: f64 = 600.0;
const IDLE_CPU_PCT: f64 = 1.0;
const RSS_MB: f64 = 80.0;
const RSS_GROWTH_MB: f64 = 1.0;
const DROP_MS: f64 = 50.0;
const SCRAPE_MS: f64 = 50.0;

/// Which command the bench measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Watch,
    Diagnose,
    Agent,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Watch, Mode::Diagnose, Mode::Agent];

    fn name(self) -> &'static str {
        match self {
            Mode::Watch => "watch",
            Mode::Diagnose => "diagnose",
            Mode::Agent => "agent",
        }
    }

    fn parse(s: &str) -> Result<Mode> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s.trim())
            .with_context(|| format!("--modes: unknown mode '{s}' ({USAGE})"))
    }

    /// `watch` only shows drops; the others prove verdicts.
    fn verdicts(self) -> bool {
        self != Mode::Watch
    }
}

struct Opts {
    sizes: Vec<usize>,
    modes: Vec<Mode>,
    idle: u64,
    /// The churn phase's length (0: none) and namespaces made per second.
    churn: u64,
    churn_rate: usize,
    tracer: PathBuf,
}

fn parse(root: &Path, args: &[&str]) -> Result<Opts> {
    let mut o = Opts {
        sizes: vec![100, 1000, 3000],
        modes: Mode::ALL.to_vec(),
        idle: 30,
        churn: 30,
        churn_rate: 200,
        tracer: root.join("target/release/tracer"),
    };
    let mut it = args.iter().filter(|a| **a != "--scale");
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .copied()
                .with_context(|| format!("{a} needs a value ({USAGE})"))
        };
        match *a {
            "--sizes" => {
                o.sizes = val()?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("--sizes: a list of numbers ({USAGE})"))?;
            }
            "--modes" => {
                o.modes = val()?.split(',').map(Mode::parse).collect::<Result<_>>()?;
            }
            "--idle" => {
                o.idle = val()?
                    .parse()
                    .with_context(|| format!("--idle ({USAGE})"))?
            }
            "--churn" => {
                o.churn = val()?
                    .parse()
                    .with_context(|| format!("--churn ({USAGE})"))?
            }
            "--churn-rate" => {
                o.churn_rate = val()?
                    .parse()
                    .with_context(|| format!("--churn-rate ({USAGE})"))?
            }
            "--tracer" => o.tracer = PathBuf::from(val()?),
            _ => bail!("bench: unknown argument {a} ({USAGE})"),
        }
    }
    if o.modes.is_empty() {
        bail!("--modes: at least one of watch, diagnose, agent ({USAGE})");
    }
    if o.sizes.is_empty() || o.sizes.iter().any(|n| *n == 0 || *n > 60_000) {
        bail!("--sizes: between 1 and 60000 namespaces each ({USAGE})");
    }
    Ok(o)
}

pub(crate) fn run(root: &Path, args: &[&str]) -> Result<()> {
    if args.iter().any(|a| *a == "--help" || *a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    let o = parse(root, args)?;
    catch_signals();
    sweep_stale();
    let mut rows = Vec::new();
    let mut churned = None;
    for (i, &n) in o.sizes.iter().enumerate() {
        let started = Instant::now();
        let star = Star::build(n)?;
        eprintln!(
            "bench --scale: {n} namespaces built in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        for &mode in &o.modes {
            let row = measure(&o, &star, mode)?;
            eprintln!("bench --scale:\n{TABLE_HEAD}\n{}", row_text(&row));
            rows.push(row);
        }
        // The churn runs once, on the largest node of the run.
        if o.churn > 0 && i + 1 == o.sizes.len() {
            let c = churn::run(&o.tracer, &star.prefix, o.churn_rate, o.churn)?;
            eprintln!("bench --scale: {n} namespaces, {}", c.text());
            churned = Some((n, c));
        }
        drop(star);
    }
    report(root, &rows, churned.as_ref())
}

/// Namespaces per bridge of the hub (see `Star::build`).
const PORTS_PER_BRIDGE: usize = 1000;

/// N namespaces with a veth each into a bridge in a hub namespace.
struct Star {
    prefix: String,
    n: usize,
}

fn addr_of(i: usize) -> String {
    format!("10.23.{}.{}", i / 250, i % 250 + 1)
}

/// A locally administered MAC per namespace, so that the hub's neighbour
/// entry for the last one is written before it exists.
fn mac_of(i: usize) -> String {
    format!("02:23:00:00:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff)
}

const HUB_ADDR: &str = "10.23.255.254";
const HUB_MAC: &str = "02:23:ff:ff:ff:fe";

impl Star {
    fn name(&self, short: &str) -> String {
        format!("{}{short}", self.prefix)
    }

    fn build(n: usize) -> Result<Star> {
        let star = Star {
            prefix: format!("trscale-{}-", std::process::id()),
            n,
        };
        let mut add = format!("netns add {}\n", star.name("hub"));
        for i in 1..=n {
            add.push_str(&format!("netns add {}\n", star.name(&i.to_string())));
        }
        batch(None, &add)?;
        for short in std::iter::once("hub".to_string()).chain((1..=n).map(|i| i.to_string())) {
            check_interrupted()?;
            no_ipv6(&star.name(&short))?;
        }
        // A bridge takes at most 1,024 ports (BR_MAX_PORTS): past 1,000
        // namespaces the ports go to more bridges, each joined to br0 by
        // a veth, so that the hub still reaches every namespace at L2.
        let bridges = n.div_ceil(PORTS_PER_BRIDGE).max(1);
        let mut hub = String::new();
        for b in 0..bridges {
            hub.push_str(&format!("link add br{b} type bridge\nlink set br{b} up\n"));
        }
        hub.push_str(&format!("link set br0 address {HUB_MAC}\n"));
        hub.push_str(&format!("addr add {HUB_ADDR}/16 dev br0\n"));
        for b in 1..bridges {
            hub.push_str(&format!(
                "link add bl{b} type veth peer name bp{b}\nlink set bl{b} master br0 up\nlink set bp{b} master br{b} up\n"
            ));
        }
        for i in 1..=n {
            let ns = star.name(&i.to_string());
            hub.push_str(&format!(
                "link add h{i} type veth peer name eth0 netns {ns}\n"
            ));
            let b = (i - 1) / PORTS_PER_BRIDGE;
            hub.push_str(&format!("link set h{i} master br{b} up\n"));
        }
        // The measured datagram and its ICMP answer go to known neighbours
        // (and bridges that learned where they are: `teach_bridges`): an
        // ARP broadcast to 3,000 ports overflows a CPU's backlog (1,000 by
        // default), a storm of CPU_BACKLOG drops that tracer proves
        // (cpu_backlog_full, reading the hub's whole topology), not the
        // one drop whose path the bench times.
        hub.push_str(&format!(
            "neigh replace {} lladdr {} dev br0 nud permanent\n",
            addr_of(n),
            mac_of(n)
        ));
        batch(Some(&star.name("hub")), &hub)?;
        for i in 1..=n {
            check_interrupted()?;
            let mut cmds = format!(
                "link set eth0 address {}\naddr add {}/16 dev eth0\nlink set eth0 up\nlink set lo up\n",
                mac_of(i),
                addr_of(i)
            );
            if i == n {
                cmds.push_str(&format!(
                    "neigh replace {HUB_ADDR} lladdr {HUB_MAC} dev eth0 nud permanent\n"
                ));
            }
            batch(Some(&star.name(&i.to_string())), &cmds)?;
        }
        Ok(star)
    }
}

impl Star {
    /// Lets the hub's bridges learn where the last namespace and the hub
    /// are, before the tracer starts: a unicast to an address no bridge
    /// has learned floods every port as a broadcast does (see `build`).
    fn teach_bridges(&self) -> Result<()> {
        let last = self.name(&self.n.to_string());
        for (from, to) in [
            (last, HUB_ADDR.to_string()),
            (self.name("hub"), addr_of(self.n)),
        ] {
            in_netns(&netlab::netns_path(&from), || {
                let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
                s.send_to(b"learn", format!("{to}:9"))?;
                Ok(())
            })?;
        }
        sleep(Duration::from_millis(500))
    }
}

impl Drop for Star {
    fn drop(&mut self) {
        let mut del = format!("netns del {}\n", self.name("hub"));
        for i in 1..=self.n {
            del.push_str(&format!("netns del {}\n", self.name(&i.to_string())));
        }
        let _ = batch(None, &del);
    }
}

/// IPv6 off in a namespace, written from a thread that joined it (no
/// process per namespace).
fn no_ipv6(ns: &str) -> Result<()> {
    let path = netlab::netns_path(ns);
    in_netns(&path, || {
        for f in ["all", "default"] {
            std::fs::write(format!("/proc/sys/net/ipv6/conf/{f}/disable_ipv6"), "1")?;
        }
        Ok(())
    })
}

/// Deletes the namespaces of earlier runs whose process is gone.
fn sweep_stale() {
    let Ok(rd) = std::fs::read_dir(netlab::NETNS_RUN_DIR) else {
        return;
    };
    let mut del = String::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("trscale-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            del.push_str(&format!("netns del {name}\n"));
        }
    }
    if !del.is_empty() {
        let _ = batch(None, &del);
    }
}

/// One size's figures in one mode.
struct Row {
    mode: Mode,
    n: usize,
    ready_ms: f64,
    cpu_pct: f64,
    rss0_mb: f64,
    rss1_mb: f64,
    threads: u64,
    line_ms: Option<f64>,
    verdict_ms: Option<f64>,
    /// The agent's: one idle scrape's time and its series.
    scrape: Option<(f64, usize)>,
    /// The agent's, once every namespace had a drop: the scrape's time
    /// and its `tracer_drops_total` series (see `Loaded`).
    loaded: Option<Loaded>,
}

/// The agent's `--max-series` (its default): `tracer_drops_total` holds a
/// series per label set up to it; later label sets are counted in `other`
/// series (`netns="other"` and so on, one per reason and label shape).
const MAX_SERIES: usize = 500;

/// The scrape after a drop in every namespace.
#[derive(Clone, Copy)]
struct Loaded {
    ms: f64,
    /// `tracer_drops_total` series with no `other` label.
    named: usize,
    /// Its `other` series.
    other: usize,
}

/// The tracer in `mode`, with its stdout's telling lines on a channel.
fn spawn(o: &Opts, mode: Mode, port: u16) -> Result<Child> {
    let mut cmd = Command::new(&o.tracer);
    match mode {
        Mode::Watch => cmd.args(["watch", "-o", "json"]),
        Mode::Diagnose => cmd.args(["diagnose", "-o", "json"]),
        Mode::Agent => cmd
            .args(["agent", "--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(["--max-series", &MAX_SERIES.to_string()])
            .args(["--log", "-"]),
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", o.tracer.display()))
}

fn measure(o: &Opts, star: &Star, mode: Mode) -> Result<Row> {
    star.teach_bridges()?;
    let port = if mode == Mode::Agent { free_port()? } else { 0 };
    let t0 = Instant::now();
    let mut child = spawn(o, mode, port)?;
    let guard = Reaper(&mut child);
    let pid = guard.0.id() as i32;
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    let stdout = guard.0.stdout.take().context("stdout")?;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let keep = line.starts_with("{\"type\":\"ready\"")
                || line.contains("\"port_closed\"")
                || line.contains("10.23.");
            if keep && tx.send((Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    let ready = if mode == Mode::Agent {
        healthy(port, Duration::from_secs(60))?
    } else {
        wait_for(&rx, Duration::from_secs(60), |l| {
            l.starts_with("{\"type\":\"ready\"")
        })?
    }
    .with_context(|| format!("tracer {} never became ready", mode.name()))?;
    let ready_ms = ms(ready.duration_since(t0));
    sleep(Duration::from_secs(5))?;
    let (c0, r0, w0) = (
        cpu_seconds(pid).unwrap_or(0.0),
        status_kb(pid, "VmRSS").unwrap_or(0),
        Instant::now(),
    );
    sleep(Duration::from_secs(o.idle))?;
    let (c1, r1) = (
        cpu_seconds(pid).unwrap_or(0.0),
        status_kb(pid, "VmRSS").unwrap_or(0),
    );
    let cpu_pct = 100.0 * (c1 - c0) / w0.elapsed().as_secs_f64();
    let threads = status_kb(pid, "Threads").unwrap_or(0);
    // After the CPU window: a scrape is work the idle figure leaves out.
    let scrape = if mode == Mode::Agent {
        let t = Instant::now();
        let (_, body) =
            http_get(port, "/metrics").context("the agent's /metrics did not answer")?;
        let series = body
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .count();
        Some((ms(t.elapsed()), series))
    } else {
        None
    };
    // The drop: from the hub, to a closed port of the last-made namespace.
    let dst = addr_of(star.n);
    let series = format!("netns=\"{}\"", star.name(&star.n.to_string()));
    let sent = Instant::now();
    in_netns(&netlab::netns_path(&star.name("hub")), || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.send_to(b"x", format!("{dst}:9"))?;
        Ok(())
    })?;
    let mut line_ms = None;
    let mut verdict_ms = None;
    let deadline = sent + Duration::from_secs(if mode.verdicts() { 60 } else { 10 });
    let done = |l: &Option<f64>, v: &Option<f64>| l.is_some() && (v.is_some() || !mode.verdicts());
    while !done(&line_ms, &verdict_ms) && Instant::now() < deadline {
        check_interrupted()?;
        if mode == Mode::Agent && line_ms.is_none() {
            let counted = http_get(port, "/metrics").is_some_and(|(_, b)| {
                b.lines()
                    .any(|l| l.starts_with("tracer_drops_total{") && l.contains(&series))
            });
            if counted {
                line_ms = Some(ms(sent.elapsed()));
            }
        }
        let Ok((at, l)) = rx.recv_timeout(Duration::from_millis(5)) else {
            continue;
        };
        if l.starts_with("{\"type\":\"drop\"") && l.contains(&format!("\"dst\":\"{dst}\"")) {
            line_ms.get_or_insert(ms(at.duration_since(sent)));
        } else if l.contains("\"port_closed\"") && l.contains(&dst) {
            verdict_ms = Some(ms(at.duration_since(sent)));
        }
    }
    let loaded = if mode == Mode::Agent {
        Some(scrape_after_drops(star, port)?)
    } else {
        None
    };
    drop(guard);
    Ok(Row {
        mode,
        n: star.n,
        ready_ms,
        cpu_pct,
        rss0_mb: r0 as f64 / 1024.0,
        rss1_mb: r1 as f64 / 1024.0,
        threads,
        line_ms,
        verdict_ms,
        scrape,
        loaded,
    })
}

/// One datagram from the hub to a closed port of every namespace (paced,
/// so that no CPU backlog overflows and adds a storm of its own), then,
/// once the agent counted them all, one timed scrape: its time, and its
/// `tracer_drops_total` series.
fn scrape_after_drops(star: &Star, port: u16) -> Result<Loaded> {
    let n = star.n;
    in_netns(&netlab::netns_path(&star.name("hub")), move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        for i in 1..=n {
            s.send_to(b"x", format!("{}:9", addr_of(i)))?;
            if i % 100 == 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    })?;
    // Until every namespace's drop is counted (named or `other`).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        check_interrupted()?;
        let counted: f64 = http_get(port, "/metrics")
            .map(|(_, body)| {
                body.lines()
                    .filter(|l| l.starts_with("tracer_drops_total{"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum()
            })
            .unwrap_or(0.0);
        if counted >= n as f64 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the agent counted {counted} drops of the {n} sent to every namespace");
        }
        sleep(Duration::from_millis(500))?;
    }
    let t = Instant::now();
    let (_, body) =
        http_get(port, "/metrics").context("the agent's /metrics did not answer after drops")?;
    let took = ms(t.elapsed());
    let (other, named): (Vec<&str>, Vec<&str>) = body
        .lines()
        .filter(|l| l.starts_with("tracer_drops_total{"))
        .partition(|l| l.contains("=\"other\""));
    Ok(Loaded {
        ms: took,
        named: named.len(),
        other: other.len(),
    })
}

/// When the agent's `/healthz` first answers 200 (polled every 5 ms).
fn healthy(port: u16, within: Duration) -> Result<Option<Instant>> {
    let end = Instant::now() + within;
    while Instant::now() < end {
        check_interrupted()?;
        if http_get(port, "/healthz").map(|r| r.0) == Some(200) {
            return Ok(Some(Instant::now()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(None)
}

fn wait_for(
    rx: &mpsc::Receiver<(Instant, String)>,
    within: Duration,
    want: impl Fn(&str) -> bool,
) -> Result<Option<Instant>> {
    let end = Instant::now() + within;
    while Instant::now() < end {
        check_interrupted()?;
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok((at, l)) if want(&l) => return Ok(Some(at)),
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the tracer exited"),
        }
    }
    Ok(None)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn opt_ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0} ms"))
        .unwrap_or_else(|| "none".into())
}

const TABLE_HEAD: &str = "  mode       namespaces   ready    idle CPU   RSS start -> end   threads   drop->line   drop->verdict   scrape";

/// One row of the curve (the agent's "line" is its metric), as the
/// progress and the final table print it.
fn row_text(r: &Row) -> String {
    format!(
        "  {:<8}   {:>10}   {:>5.0} ms   {:>6.2} %   {:>6.1} -> {:>6.1} MB   {:>7}   {:>10}   {:>13}   {}",
        r.mode.name(),
        r.n,
        r.ready_ms,
        r.cpu_pct,
        r.rss0_mb,
        r.rss1_mb,
        r.threads,
        opt_ms(r.line_ms),
        if r.mode.verdicts() {
            opt_ms(r.verdict_ms)
        } else {
            "-".into()
        },
        match (r.scrape, r.loaded) {
            (Some((t, n)), Some(l)) => format!(
                "{t:.1} ms, {n} series; after drops {:.1} ms, {} + {} other drop series",
                l.ms, l.named, l.other
            ),
            _ => "-".into(),
        }
    )
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

/// The curve, the cost per 1,000 namespaces, the targets, scale.json.
fn report(root: &Path, rows: &[Row], churned: Option<&(usize, churn::Churn)>) -> Result<()> {
    println!("\n{TABLE_HEAD}");
    for r in rows {
        println!("{}", row_text(r));
    }
    for mode in Mode::ALL {
        let of: Vec<&Row> = rows.iter().filter(|r| r.mode == mode).collect();
        if let (Some(a), Some(b)) = (of.first(), of.last()) {
            if b.n > a.n {
                let k = 1000.0 / (b.n - a.n) as f64;
                println!(
                    "\n  {}: cost per 1,000 namespaces: ready {:+.0} ms, idle CPU {:+.2} %, RSS {:+.1} MB",
                    mode.name(),
                    (b.ready_ms - a.ready_ms) * k,
                    (b.cpu_pct - a.cpu_pct) * k,
                    (b.rss1_mb - a.rss1_mb) * k
                );
            }
        }
    }
    println!("\n  targets (issue 22):");
    for r in rows {
        let ready_target = if r.n >= 3000 {
            READY_MS_3000
        } else {
            READY_MS_1000
        };
        let mut checks = vec![
            (
                format!("ready <= {ready_target:.0} ms"),
                r.ready_ms <= ready_target,
            ),
            (
                format!("idle CPU <= {IDLE_CPU_PCT} % of a core"),
                r.cpu_pct <= IDLE_CPU_PCT,
            ),
            (format!("RSS <= {RSS_MB:.0} MB"), r.rss1_mb <= RSS_MB),
            (
                format!("RSS growth <= {RSS_GROWTH_MB:.0} MB"),
                r.rss1_mb - r.rss0_mb <= RSS_GROWTH_MB,
            ),
            (
                format!(
                    "drop -> {} <= {DROP_MS:.0} ms",
                    if r.mode == Mode::Agent {
                        "metric"
                    } else {
                        "line"
                    }
                ),
                r.line_ms.is_some_and(|v| v <= DROP_MS),
            ),
        ];
        if r.mode.verdicts() {
            checks.push((
                format!("drop -> verdict <= {DROP_MS:.0} ms"),
                r.verdict_ms.is_some_and(|v| v <= DROP_MS),
            ));
        }
        if let Some((t, _)) = r.scrape {
            checks.push((format!("scrape <= {SCRAPE_MS:.0} ms"), t <= SCRAPE_MS));
        }
        if let Some(l) = r.loaded {
            checks.push((
                format!("scrape after drops <= {SCRAPE_MS:.0} ms"),
                l.ms <= SCRAPE_MS,
            ));
            // Every namespace's drop was counted (waited for), in a series
            // of its own up to the bound and in `other` past it.
            let bounded = l.named <= MAX_SERIES && l.named >= MAX_SERIES.min(r.n);
            checks.push((
                format!("drop series <= {MAX_SERIES} (--max-series)"),
                bounded && (r.n <= MAX_SERIES || l.other > 0),
            ));
        }
        for (what, ok) in checks {
            println!(
                "  {:<8} {:>6} namespaces  {what:<32} {}",
                r.mode.name(),
                r.n,
                pass(ok)
            );
        }
    }
    if let Some((n, c)) = churned {
        println!("\n  {}", c.text());
        for (what, ok) in c.checks() {
            println!("  {n:>6} namespaces  {what:<40} {}", pass(ok));
        }
    }
    let mut out: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"mode": r.mode.name(), "namespaces": r.n, "ready_ms": r.ready_ms, "idle_cpu_pct": r.cpu_pct,
                   "rss_start_mb": r.rss0_mb, "rss_end_mb": r.rss1_mb, "threads": r.threads,
                   "drop_to_line_ms": r.line_ms, "drop_to_verdict_ms": r.verdict_ms,
                   "scrape_ms": r.scrape.map(|s| s.0), "series": r.scrape.map(|s| s.1),
                   "scrape_after_drops_ms": r.loaded.map(|l| l.ms),
                   "drop_series_after_drops": r.loaded.map(|l| l.named),
                   "other_drop_series_after_drops": r.loaded.map(|l| l.other)})
        })
        .collect();
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    if let Some((n, c)) = churned {
        out.push(
            json!({"churn_on_namespaces": n, "made": c.made, "drops": c.drops,
                        "named": c.named, "fds": [c.fds.0, c.fds.1],
                        "threads": [c.threads.0, c.threads.1], "alive": c.alive}),
        );
    }
    std::fs::write(dir.join("scale.json"), serde_json::to_string_pretty(&out)?)?;
    Ok(())
}
