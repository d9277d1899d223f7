//! `cargo xtask soak --agent [--minutes N]`: the release `tracer agent`
//! for N minutes (10 by default) on a host that keeps changing, scraped
//! every second by a real Prometheus (Debian's package):
//!
//! - a private rootful podman (`netlab::runtimes`) starts a container
//!   labelled as a pod every 10 s in a fresh namespace, and removes the
//!   one started 30 s before, with its namespace;
//! - a namespace is made every 2 s, drops a datagram to a closed port, and
//!   is deleted 8 s later (new label sets for the series bound);
//! - a closed-port storm runs 10 s of every 60 through a router namespace.
//!
//! It reports RSS and open fds (after a minute of warm-up, and at the
//! end), the largest series count, Prometheus's own scrape durations and
//! the events the agent lost, against the targets: RSS flat within 5 MB,
//! series within `--max-series` per family, scrapes under 50 ms, 0 lost.

use crate::bench::lab::{check_interrupted, new_lab, routed_lab, sleep};
use crate::bench::observers::status_kb;
use anyhow::{bail, Context, Result};
use netlab::runtimes::{stop, Podman, Scratch};
use netlab::{flood, FloodOpts, Netlab};
use netlab::{free_port, http_get};
use serde_json::Value;
use std::collections::VecDeque;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `--max-series` of the soaked agent: small, so that the namespace churn
/// goes past it within minutes and the bound is really exercised.
const MAX_SERIES: usize = 50;
const RSS_FLAT_KB: i64 = 5 * 1024;
const SCRAPE_MAX_S: f64 = 0.050;

pub fn run(tracer: &Path, minutes: f64) -> Result<bool> {
    let podman = Podman::start().context("the agent soak starts containers with podman")?;
    let storm_lab = routed_lab("trsoakag")?;
    let mut churn = new_lab("trsoakch")?;
    let port = free_port()?;
    let mut agent = start_agent(tracer, port, &podman.env())?;
    let prom = Prometheus::start(port)?;
    let mut w = World {
        podman,
        churn: &mut churn,
        containers: VecDeque::new(),
        namespaces: VecDeque::new(),
        n: 0,
    };
    let r = soak(&mut w, &storm_lab, &prom, agent.id() as i32, minutes);
    stop(&mut agent);
    drop(prom);
    Ok(r?.report())
}

/// What the loop saw of the agent.
struct Samples {
    rss_warm_kb: u64,
    rss_end_kb: u64,
    rss_max_kb: u64,
    /// The heap's share (RssAnon): the ring buffer's pages, mapped from
    /// the kernel, count in VmRSS once touched but are not the agent's
    /// to leak.
    anon_warm_kb: u64,
    anon_end_kb: u64,
    fds_warm: usize,
    fds_end: usize,
    series_max: usize,
    lost: f64,
    scrape_p99_s: f64,
    scrape_max_s: f64,
    scrapes: f64,
    containers: usize,
    namespaces: usize,
    storms: usize,
}

impl Samples {
    fn report(&self) -> bool {
        let drift = self.rss_end_kb as i64 - self.rss_warm_kb as i64;
        let rss_ok = drift.abs() <= RSS_FLAT_KB;
        // Per family: drops, verdicts and active verdicts, each with at
        // most MAX_SERIES label sets plus their `other` series.
        let series_ok = self.series_max <= 3 * (MAX_SERIES + 20);
        let scrape_ok = self.scrapes > 0.0 && self.scrape_max_s < SCRAPE_MAX_S;
        let lost_ok = self.lost == 0.0;
        let fds_ok = self.fds_end <= self.fds_warm + 10;
        let pass = crate::bench::report::pass;
        println!(
            "soak --agent: {} containers, {} namespaces, {} storms",
            self.containers, self.namespaces, self.storms
        );
        println!(
            "  RSS after 1 min {:.1} MB, at the end {:.1} MB (max {:.1}), drift {:+.1} MB (target within 5 MB)  {}",
            self.rss_warm_kb as f64 / 1024.0,
            self.rss_end_kb as f64 / 1024.0,
            self.rss_max_kb as f64 / 1024.0,
            drift as f64 / 1024.0,
            pass(rss_ok)
        );
        println!(
            "  of which heap (RssAnon) {:.1} -> {:.1} MB",
            self.anon_warm_kb as f64 / 1024.0,
            self.anon_end_kb as f64 / 1024.0
        );
        println!(
            "  open fds {} -> {}  {}",
            self.fds_warm,
            self.fds_end,
            pass(fds_ok)
        );
        println!(
            "  series at most {} (--max-series {MAX_SERIES} per family)  {}",
            self.series_max,
            pass(series_ok)
        );
        println!(
            "  {:.0} scrapes by Prometheus every 1 s: p99 {:.1} ms, max {:.1} ms (target < 50 ms)  {}",
            self.scrapes,
            self.scrape_p99_s * 1e3,
            self.scrape_max_s * 1e3,
            pass(scrape_ok)
        );
        println!("  events lost {} (target 0)  {}", self.lost, pass(lost_ok));
        rss_ok && series_ok && scrape_ok && lost_ok && fds_ok
    }
}

/// What the loop changes.
struct World<'a> {
    podman: Podman,
    churn: &'a mut Netlab,
    /// (container, its namespace), oldest first.
    containers: VecDeque<(String, String)>,
    namespaces: VecDeque<String>,
    n: usize,
}

impl World<'_> {
    /// A namespace with its loopback up.
    fn namespace(&mut self, short: &str) -> Result<()> {
        self.churn.ns(short)?;
        self.churn.exec(short, "ip link set lo up")?;
        Ok(())
    }

    fn start_container(&mut self) -> Result<()> {
        self.n += 1;
        let short = format!("p{}", self.n);
        self.namespace(&short)?;
        let name = format!("trsoak-{}-{}", std::process::id(), self.n);
        self.podman.run(
            &name,
            &self.churn.name(&short),
            &format!("web-{}", self.n),
            "soak",
        )?;
        // Its first drops, so that it is named on a series.
        closed_port(self.churn, &short)?;
        self.containers.push_back((name, short));
        if self.containers.len() > 3 {
            let (old, ns) = self.containers.pop_front().unwrap();
            self.podman.remove(&old)?;
            self.churn.remove(&ns);
        }
        Ok(())
    }

    fn churn_namespace(&mut self) -> Result<()> {
        self.n += 1;
        let short = format!("c{}", self.n);
        self.namespace(&short)?;
        closed_port(self.churn, &short)?;
        self.namespaces.push_back(short);
        if self.namespaces.len() > 4 {
            let old = self.namespaces.pop_front().unwrap();
            self.churn.remove(&old);
        }
        Ok(())
    }
}

/// A datagram to a closed port on the namespace's loopback.
fn closed_port(lab: &Netlab, short: &str) -> Result<()> {
    lab.exec(short, "bash -c 'echo x > /dev/udp/127.0.0.1/9' || true")
        .map(|_| ())
}

fn soak(
    w: &mut World,
    storm_lab: &Netlab,
    prom: &Prometheus,
    pid: i32,
    minutes: f64,
) -> Result<Samples> {
    let t0 = Instant::now();
    let total = Duration::from_secs_f64(minutes * 60.0);
    let (mut containers, mut namespaces, mut storms) = (0, 0, 0);
    let mut storm = None;
    let mut warm = None;
    let mut rss_max = 0;
    let mut series_max = 0;
    let mut tick = 0u64;
    while t0.elapsed() < total {
        check_interrupted()?;
        if tick.is_multiple_of(10) {
            w.start_container()?;
            containers += 1;
        }
        if tick % 2 == 1 {
            w.churn_namespace()?;
            namespaces += 1;
        }
        match tick % 60 {
            30 => {
                let dst = "10.201.2.1:9".parse()?;
                let opts = FloodOpts {
                    threads: 1,
                    len: 64,
                    pps: None,
                };
                storm = Some(flood(&storm_lab.path("cli"), dst, opts)?);
                storms += 1;
            }
            40 => storm = None,
            _ => {}
        }
        let rss = status_kb(pid, "VmRSS").context("the agent is gone")?;
        rss_max = rss_max.max(rss);
        if tick == 60 {
            warm = Some((rss, open_fds(pid), status_kb(pid, "RssAnon").unwrap_or(0)));
        }
        if tick.is_multiple_of(5) {
            if let Some(n) = prom.value("count({__name__=~\"tracer_.+\"})") {
                series_max = series_max.max(n as usize);
            }
        }
        tick += 1;
        sleep(Duration::from_secs(1).saturating_sub(Duration::from_millis(
            (t0.elapsed().as_millis() % 1000) as u64,
        )))?;
    }
    drop(storm);
    // Let the last storm's records drain before the figures are read.
    sleep(Duration::from_secs(3))?;
    let (rss_warm, fds_warm, anon_warm) = warm.unwrap_or((rss_max, 0, 0));
    let range = format!("{}s", t0.elapsed().as_secs());
    let q = |e: String| prom.value(&e).unwrap_or(f64::NAN);
    Ok(Samples {
        rss_warm_kb: rss_warm,
        rss_end_kb: status_kb(pid, "VmRSS").unwrap_or(0),
        rss_max_kb: rss_max,
        anon_warm_kb: anon_warm,
        anon_end_kb: status_kb(pid, "RssAnon").unwrap_or(0),
        fds_warm,
        fds_end: open_fds(pid),
        series_max,
        lost: q("max(tracer_events_lost_total)".into()),
        scrape_p99_s: q(format!(
            "quantile_over_time(0.99, scrape_duration_seconds[{range}])"
        )),
        scrape_max_s: q(format!("max_over_time(scrape_duration_seconds[{range}])")),
        scrapes: q(format!("count_over_time(scrape_duration_seconds[{range}])")),
        containers,
        namespaces,
        storms,
    })
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The agent on every namespace, asking only the soak's podman.
fn start_agent(tracer: &Path, port: u16, podman_env: &str) -> Result<Child> {
    let mut child = Command::new("env")
        .args([
            "DOCKER_HOST=unix:///nonexistent/docker.sock",
            "CONTAINERD_ADDRESS=/nonexistent/containerd.sock",
            podman_env,
        ])
        .arg(tracer)
        .args(["agent", "--metrics-addr", &format!("127.0.0.1:{port}")])
        .args(["--max-series", &MAX_SERIES.to_string()])
        .args(["--series-idle", "60s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start tracer agent")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(port, "/healthz").map(|r| r.0) != Some(200) {
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            let _ = child.kill();
            bail!("the agent never became healthy");
        }
        sleep(Duration::from_millis(100))?;
    }
    Ok(child)
}

/// Debian's Prometheus scraping the agent every second, with private
/// storage in a scratch directory.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: Scratch,
}

impl Prometheus {
    fn start(target: u16) -> Result<Prometheus> {
        let dir = Scratch::new("prom")?;
        let config = dir.path("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: tracer-agent\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{target}']\n"
            ),
        )?;
        let port = free_port()?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start prometheus (Debian's package)")?;
        let p = Prometheus {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while p.value("up").is_none() {
            if Instant::now() > deadline {
                bail!("prometheus never scraped the agent");
            }
            sleep(Duration::from_millis(250))?;
        }
        Ok(p)
    }

    /// The first value of an instant query.
    fn value(&self, q: &str) -> Option<f64> {
        let enc: String = q
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (code, body) = http_get(self.port, &format!("/api/v1/query?query={enc}"))?;
        if code != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"].as_array()?.first()?["value"][1]
            .as_str()?
            .parse()
            .ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}
