//! `tracer agent` with real parts: a real Prometheus (Debian's package)
//! scrapes it while the test makes the kernel drop a known number of
//! packets; the agent runs with only the capabilities the DaemonSet
//! grants, and names the one that is missing.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tracer_tests::{flood_at, free_port, http_get, prefix, replay, scaled, tracer_bin, Netlab};

/// Datagrams the test sends; each is one IP_RPFILTER drop.
const SENT: u64 = 7;

/// An unfamiliar rp_filter conflict: `peer` sends from 10.62.7.7 into
/// `edge`'s wan0, but `edge` routes 10.62.0.0/16 out svc0 (a veth to `svc`), and
/// strict rp_filter drops every datagram. Returns the lab and edge's name.
fn rpf_lab(test: &str) -> (Netlab, String) {
    let mut lab = Netlab::new(&prefix(test)).unwrap();
    lab.ns("peer").unwrap();
    let edge = lab.ns("edge").unwrap();
    lab.ns("svc").unwrap();
    lab.veth("peer", "eth0", "edge", "wan0").unwrap();
    lab.veth("svc", "eth0", "edge", "svc0").unwrap();
    lab.exec(
        "edge",
        "ip link set wan0 address 02:00:00:00:61:01 && ip addr add 10.61.0.1/24 dev wan0 && \
         ip addr add 10.62.0.1/16 dev svc0 && \
         sysctl -qw net.ipv4.conf.all.rp_filter=1 net/ipv4/conf/wan0/rp_filter=1",
    )
    .unwrap();
    // A static neighbour: edge would not answer ARP from 10.62.7.7 either.
    lab.exec(
        "peer",
        "ip addr add 10.61.0.2/24 dev eth0 && ip addr add 10.62.7.7/32 dev eth0 && \
         ip route add 10.61.0.1/32 dev eth0 src 10.62.7.7 && \
         ip neigh replace 10.61.0.1 lladdr 02:00:00:00:61:01 dev eth0 nud permanent",
    )
    .unwrap();
    (lab, edge)
}

fn send_drops(lab: &Netlab) {
    lab.exec(
        "peer",
        &format!(
            "for i in $(seq {SENT}); do bash -c 'echo x > /dev/udp/10.61.0.1/5999' || true; done"
        ),
    )
    .unwrap();
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of a metric line in a scrape, summed over the lines that
/// contain every needle.
fn scraped(body: &str, metric: &str, needles: &[&str]) -> u64 {
    body.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

struct Agent {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Agent {
    /// `wrapper` runs in front of the tracer (setpriv ...).
    fn spawn(wrapper: &[&str], netns: &[&str], log: PathBuf) -> (Agent, u16) {
        Self::spawn_with(wrapper, netns, log, &[])
    }

    /// Like `spawn`, with more agent flags (`--log-drops`).
    fn spawn_with(wrapper: &[&str], netns: &[&str], log: PathBuf, extra: &[&str]) -> (Agent, u16) {
        let port = free_port().unwrap();
        let addr = format!("127.0.0.1:{port}");
        let mut args: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
        args.push(tracer_bin().to_string_lossy().into_owned());
        args.extend(["agent", "--metrics-addr", &addr].map(String::from));
        for n in netns {
            args.extend(["--netns".to_string(), n.to_string()]);
        }
        args.extend(["--log".to_string(), log.to_string_lossy().into_owned()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(&args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tracer agent");
        (Agent { child, port, log }, port)
    }

    /// Waits for /healthz to answer 200 (it answers 503 while loading).
    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut saw = Vec::new();
        loop {
            if let Some((code, _)) = http_get(self.port, "/healthz") {
                if code == 200 {
                    return;
                }
                saw.push(code);
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("agent exited with {st}: {}", self.stderr());
            }
            assert!(Instant::now() < deadline, "agent never healthy: {saw:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    /// SIGTERM: the agent must be gone (everything detached) within a second.
    fn terminate(mut self) -> Vec<Value> {
        let t0 = Instant::now();
        unsafe { kill(self.child.id() as i32, 15) };
        let st = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(1),
                "agent still running 1 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(st.success(), "agent exited with {st}: {}", self.stderr());
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("trtest-{}-{name}", std::process::id()))
}

/// A real Prometheus server scraping one target every 500 ms.
struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target_port: u16) -> Prometheus {
        let dir = temp("prometheus");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 500ms\n  evaluation_interval: 500ms\n\
                 rule_files: ['{rules}']\n\
                 scrape_configs:\n  - job_name: tracer-agent\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{target_port}']\n",
                rules = repo().join("deploy/alerts/tracer.rules.yaml").display()
            ),
        )
        .unwrap();
        let port = free_port().unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (cargo xtask test installs Debian's package)");
        Prometheus { child, port, dir }
    }

    /// An instant query's result vector.
    fn query(&self, q: &str) -> Option<Vec<Value>> {
        let (code, body) = http_get(self.port, &format!("/api/v1/query?query={}", urlencode(q)))?;
        if code != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"].as_array().cloned()
    }

    /// The single value of a query, once it has one.
    fn value(&self, q: &str) -> Option<f64> {
        let r = self.query(q)?;
        r.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Polls `q` until `ok` holds for its value; returns the last value.
    fn wait(&self, q: &str, timeout: Duration, ok: impl Fn(f64) -> bool) -> Option<f64> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            last = self.value(q);
            if last.is_some_and(&ok) {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        last
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every PromQL expression of deploy/grafana-dashboard.json, with Grafana's
/// variables as a dashboard showing all nodes would expand them.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("deploy/grafana-dashboard.json")).unwrap();
    let d: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let e = t["expr"].as_str().unwrap();
            out.push(
                e.replace("$__rate_interval", "1m")
                    .replace("$instance", ".*"),
            );
        }
    }
    // The node picker: label_values(METRIC, LABEL) needs METRIC.
    let pick = d["templating"]["list"][1]["definition"].as_str().unwrap();
    let metric = pick
        .strip_prefix("label_values(")
        .and_then(|r| r.split(',').next())
        .unwrap();
    out.push(metric.to_string());
    assert!(out.len() >= 10, "{out:?}");
    out
}

#[test]
fn prometheus_counts_the_drops_caused_and_the_verdict() {
    let (lab, edge) = rpf_lab("agprom");
    let peer = lab.name("peer");
    let (mut agent, port) = Agent::spawn(&[], &[&edge, &peer], temp("agprom.log"));
    agent.wait_healthy();
    let prom = Prometheus::start(port);
    // Prometheus is up and has scraped the agent at least once.
    let up = prom.wait(r#"up{job="tracer-agent"}"#, Duration::from_secs(30), |v| {
        v == 1.0
    });
    assert_eq!(up, Some(1.0), "prometheus never scraped the agent");

    send_drops(&lab);
    let drops_q = format!(r#"sum(tracer_drops_total{{reason="IP_RPFILTER",netns="{edge}"}})"#);
    let got = prom.wait(&drops_q, Duration::from_secs(20), |v| v >= SENT as f64);
    assert_eq!(got, Some(SENT as f64), "{drops_q}");
    let verdict_q = format!(
        r#"sum(tracer_verdicts_total{{kind="rpfilter_route_conflict",tier="proven",netns="{edge}"}})"#
    );
    let v = prom.wait(&verdict_q, Duration::from_secs(20), |v| v >= 1.0);
    assert!(v.is_some_and(|v| v >= 1.0), "{verdict_q}: {v:?}");
    let active_q =
        format!(r#"tracer_verdict_active{{kind="rpfilter_route_conflict",netns="{edge}"}}"#);
    // The gauge may first appear one scrape after the counter.
    let active = prom.wait(&active_q, Duration::from_secs(10), |v| v == 1.0);
    assert_eq!(active, Some(1.0), "{active_q}");
    // Two more scrapes later, still exactly what was sent: nothing counted twice.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(prom.value(&drops_q), Some(SENT as f64), "{drops_q}");
    let lost = prom.value("tracer_events_lost_total");
    assert_eq!(lost, Some(0.0));
    let build = prom.query(r#"tracer_build_info{hook!=""}"#).unwrap();
    assert_eq!(build.len(), 1, "{build:?}");
    let rss = prom.value("process_resident_memory_bytes").unwrap();
    assert!(rss > 1e6, "{rss}");
    // The shipped alert sees the agent's own series: pending now, as its
    // `for:` has not passed yet.
    let alert_q = format!(
        r#"ALERTS{{alertname="TracerFaultProven",kind="rpfilter_route_conflict",netns="{edge}"}}"#
    );
    let alert = prom.wait(&alert_q, Duration::from_secs(10), |v| v == 1.0);
    assert_eq!(alert, Some(1.0), "{alert_q}");
    // The agent is attached: TracerAgentNotAttached stays silent.
    assert_eq!(
        prom.query(r#"ALERTS{alertname="TracerAgentNotAttached"}"#),
        Some(vec![])
    );
    // Every query of the shipped dashboard parses and returns data.
    for q in dashboard_queries() {
        let r = prom.query(&q);
        assert!(
            r.as_ref().is_some_and(|r| !r.is_empty()),
            "dashboard query {q} returned {r:?}"
        );
    }
    // Print what the report quotes.
    let (_, scrape) = http_get(port, "/metrics").unwrap();
    for l in scrape.lines().filter(|l| l.contains(&edge)) {
        eprintln!("scrape: {l}");
    }
    eprintln!("query: {drops_q} = {got:?}; {verdict_q} = {v:?}");

    let log = agent.terminate();
    let verdicts: Vec<&Value> = log.iter().filter(|v| v["type"] == "verdict").collect();
    assert!(
        verdicts
            .iter()
            .any(|v| v["kind"] == "rpfilter_route_conflict" && v["netns_name"] == edge.as_str()),
        "{log:#?}"
    );
    // Drops are not logged unless asked (--log-drops).
    assert!(!log.iter().any(|v| v["type"] == "drop"), "{log:#?}");
    drop(lab);
}

const CAPS: &str = "bpf,+perfmon,+net_admin";

fn setpriv(caps: &str) -> Vec<String> {
    // noroot: uid 0 gains no capabilities on exec; the ambient set is all
    // the agent holds.
    let set = format!("-all,+{caps}");
    vec![
        "setpriv".into(),
        "--securebits".into(),
        "+noroot,+noroot_locked,+no_setuid_fixup,+no_setuid_fixup_locked".into(),
        "--bounding-set".into(),
        set.clone(),
        "--inh-caps".into(),
        set.clone(),
        "--ambient-caps".into(),
        set,
        "--".into(),
    ]
}

fn cap_eff(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let v = s.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap();
    u64::from_str_radix(v.trim(), 16).unwrap()
}

#[test]
fn agent_runs_with_only_bpf_perfmon_net_admin() {
    let (lab, edge) = rpf_lab("agcaps");
    let peer = lab.name("peer");
    for (caps, verdict) in [
        (CAPS.to_string(), false),
        (format!("{CAPS},+sys_admin"), true),
    ] {
        let w = setpriv(&caps);
        let w: Vec<&str> = w.iter().map(String::as_str).collect();
        let (mut agent, port) = Agent::spawn(&w, &[&edge, &peer], temp("agcaps.log"));
        agent.wait_healthy();
        let want = (1u64 << 39) | (1 << 38) | (1 << 12) | if verdict { 1 << 21 } else { 0 };
        assert_eq!(
            cap_eff(agent.child.id()),
            want,
            "{caps}: the agent holds other capabilities"
        );
        send_drops(&lab);
        let needles = ["reason=\"IP_RPFILTER\"", &format!("netns=\"{edge}\"")];
        let deadline = Instant::now() + Duration::from_secs(15);
        let (mut drops, mut verdicts) = (0, 0);
        while Instant::now() < deadline {
            let (_, body) = http_get(port, "/metrics").unwrap();
            drops = scraped(&body, "tracer_drops_total", &needles);
            verdicts = scraped(
                &body,
                "tracer_verdicts_total",
                &["kind=\"rpfilter_route_conflict\""],
            );
            if drops >= SENT && (verdicts >= 1 || !verdict) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(drops, SENT, "{caps}");
        if verdict {
            // Entering edge's namespace for its routes needs CAP_SYS_ADMIN.
            assert!(verdicts >= 1, "{caps}: no verdict");
        }
        agent.terminate();
    }
    drop(lab);
}

#[test]
fn agent_names_the_missing_capability() {
    for (caps, missing) in [
        ("perfmon,+net_admin", "CAP_BPF"),
        ("bpf,+net_admin", "CAP_PERFMON"),
    ] {
        let out = Command::new("setpriv")
            .args(&setpriv(caps)[1..])
            .arg(tracer_bin())
            .args(["agent", "--metrics-addr", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{caps}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(&format!("lacks {missing} (")), "{caps}: {err}");
    }
    // Without CAP_SYS_ADMIN it runs, and says what that costs.
    let (mut agent, _) = Agent::spawn(
        &setpriv(CAPS).iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
        temp("agwarn.log"),
    );
    agent.wait_healthy();
    unsafe { kill(agent.child.id() as i32, 15) };
    let err = agent.stderr();
    assert!(err.contains("no CAP_SYS_ADMIN"), "{err}");
}

#[test]
fn agent_bad_input_is_one_line() {
    for (args, needle, code) in [
        (
            vec!["agent", "--metrics-addr", "nowhere"],
            "bad --metrics-addr 'nowhere'",
            1,
        ),
        (
            vec![
                "agent",
                "--metrics-addr",
                "127.0.0.1:0",
                "--drop-labels",
                "reason,pod",
            ],
            "unknown label 'pod'",
            2,
        ),
        (
            vec![
                "agent",
                "--metrics-addr",
                "127.0.0.1:0",
                "--max-series",
                "0",
            ],
            "1 or more",
            2,
        ),
        (vec!["agent"], "--metrics-addr", 2),
        (
            vec![
                "agent",
                "--metrics-addr",
                "127.0.0.1:0",
                "--record-dir",
                "/tmp",
            ],
            "--record-dir /tmp must be owned by uid 0 and writable by no one else",
            1,
        ),
        (
            vec![
                "agent",
                "--metrics-addr",
                "127.0.0.1:0",
                "--record-dir",
                "/run/trtest-never-made",
                "--record-max",
                "10k",
            ],
            "10k is too small: at least 64 KiB",
            2,
        ),
        (
            vec![
                "agent",
                "--metrics-addr",
                "127.0.0.1:0",
                "--record-max",
                "1GiB",
            ],
            "--record-dir",
            2,
        ),
    ] {
        let (c, err) = tracer_tests::run_bad(&args);
        assert_eq!(c, code, "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// A process that claims to be pod `db-0` through a HOSTNAME holding a
/// newline and a whole forged series, in a cgroup shaped like a Kubernetes
/// container's (`.../kubepods/.../<64 hex>`, on the cgroup2 hierarchy),
/// in network namespace `ns`. Removed (process and cgroups) on drop.
struct FakePod {
    child: Child,
    root: PathBuf,
    leaf: PathBuf,
    id: String,
}

const FORGED: &str = "db-0\ntracer_drops_total{reason=\"NO_SOCKET\",netns=\"x\",container=\"db-0\",container_source=\"docker_api\",ifname=\"eth0\"} 99999";

impl FakePod {
    fn start(ns: &str) -> FakePod {
        let base = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.subtree_control").exists())
            .expect("a cgroup2 hierarchy");
        let root = base.join(format!("trtest-{}-kubepods", std::process::id()));
        let id = format!("fa4e{:060x}", std::process::id());
        let leaf = root.join("besteffort").join(&id);
        std::fs::create_dir_all(&leaf).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "sleep", "300"])
            .env("HOSTNAME", FORGED)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        // `ip netns exec` execs sleep in place: the child is the process.
        std::thread::sleep(Duration::from_millis(200));
        std::fs::write(leaf.join("cgroup.procs"), child.id().to_string()).unwrap();
        let env = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap();
        assert!(
            env.windows(9).any(|w| w == b"HOSTNAME=".as_slice()),
            "the pod process carries the hostile HOSTNAME"
        );
        FakePod {
            child,
            root,
            leaf,
            id,
        }
    }
}

impl Drop for FakePod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // rmdir, deepest first: a cgroup directory goes once it is empty.
        let _ = std::fs::remove_dir(&self.leaf);
        let _ = self.leaf.parent().map(std::fs::remove_dir);
        let _ = std::fs::remove_dir(&self.root);
    }
}

/// `promtool check metrics` on a scrape: (success, what it said).
fn promtool(scrape: &str) -> (bool, String) {
    let mut c = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package)");
    c.stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = c.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}

/// A tenant names a veth `q",ifname="e` and runs a process claiming pod
/// `db-0` with a newline in its HOSTNAME; drops on both must scrape as
/// valid exposition text with no forged series and no claimed name.
#[test]
fn metrics_cannot_be_forged_by_names_or_hostname() {
    const HOSTILE_IF: &str = "q\",ifname=\"e";
    let mut lab = Netlab::new(&prefix("agforge")).unwrap();
    lab.ns("peer").unwrap();
    let edge = lab.ns("edge").unwrap();
    let pod_ns = lab.ns("pod").unwrap();
    lab.veth("peer", "eth0", "edge", HOSTILE_IF).unwrap();
    lab.veth("peer", "eth1", "pod", "eth0").unwrap();
    lab.exec(
        "peer",
        "ip addr add 10.71.0.2/24 dev eth0 && ip addr add 10.72.0.2/24 dev eth1",
    )
    .unwrap();
    std::process::Command::new("ip")
        .args([
            "-n",
            &edge,
            "addr",
            "add",
            "10.71.0.1/24",
            "dev",
            HOSTILE_IF,
        ])
        .status()
        .unwrap();
    lab.exec("pod", "ip addr add 10.72.0.1/24 dev eth0")
        .unwrap();
    let pod = FakePod::start(&pod_ns);

    let (mut agent, port) = Agent::spawn_with(
        &[],
        &[&edge, &pod_ns],
        temp("agforge.log"),
        &["--log-drops"],
    );
    agent.wait_healthy();
    // Three datagrams to closed ports in each: NO_SOCKET drops.
    tracer_tests::udp(&lab, "peer", "10.71.0.1", 5999);
    tracer_tests::udp(&lab, "peer", "10.72.0.1", 5999);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut body = String::new();
    while Instant::now() < deadline {
        body = http_get(port, "/metrics").unwrap().1;
        // Counted leniently: a broken scrape must reach promtool below.
        let n: f64 = body
            .lines()
            .filter(|l| l.starts_with("tracer_drops_total{") && l.contains("NO_SOCKET"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if n >= 6.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let drops: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("tracer_drops_total{"))
        .collect();
    eprintln!("scrape:\n{}", drops.join("\n"));
    let (ok, said) = promtool(&body);
    assert!(ok, "promtool rejects the scrape: {said}\n{body}");
    // The interface's name is one escaped value of one label.
    let on_if = format!(
        r#"netns="{edge}",container="",container_source="",pod="",pod_namespace="",ifname="q\",ifname=\"e"}} 3"#
    );
    assert!(drops.iter().any(|l| l.ends_with(&on_if)), "{on_if}\n{body}");
    // The pod is named by its cgroup, and says so; its own claim is nowhere.
    let on_pod = format!(
        r#"netns="{pod_ns}",container="{}",container_source="cgroup",pod="",pod_namespace="",ifname="eth0"}} 3"#,
        &pod.id[..12]
    );
    assert!(
        drops.iter().any(|l| l.ends_with(&on_pod)),
        "{on_pod}\n{body}"
    );
    assert!(!body.contains("db-0") && !body.contains("99999"), "{body}");
    assert_eq!(drops.len(), 2, "{body}");

    let log = agent.terminate();
    let pod_drops: Vec<&Value> = log
        .iter()
        .filter(|v| v["type"] == "drop" && v["netns_name"] == pod_ns.as_str())
        .collect();
    assert_eq!(pod_drops.len(), 3, "{log:#?}");
    for d in pod_drops {
        assert_eq!(d["container"]["source"], "cgroup", "{d}");
        assert_eq!(d["container"]["name"], &pod.id[..12], "{d}");
        assert!(d["container"]["pod"].is_null(), "{d}");
    }
    drop(pod);
    drop(lab);
}

/// The flight recorder: the agent keeps a rolling recording in
/// --record-dir. It is killed with SIGKILL while a stream of drops is being
/// written; `diagnose --replay DIR` then reaches the verdict the live agent
/// logged, from the files that are left (the oldest were removed to stay
/// within --record-max, so the newest must carry the topology again).
#[test]
fn a_killed_agents_rolling_recording_replays_with_its_verdict() {
    let (lab, edge) = rpf_lab("agrec");
    let peer = lab.name("peer");
    let dir = temp("agrec.d");
    let _ = std::fs::remove_dir_all(&dir);
    let max = 256 * 1024;
    let (mut agent, _) = Agent::spawn_with(
        &[],
        &[&edge, &peer],
        temp("agrec.log"),
        &[
            "--record-dir",
            dir.to_str().unwrap(),
            "--record-max",
            "256KiB",
        ],
    );
    agent.wait_healthy();
    send_drops(&lab);
    let verdict = |v: &Value| {
        v["type"] == "verdict"
            && v["kind"] == "rpfilter_route_conflict"
            && v["netns_name"] == edge.as_str()
    };
    let deadline = Instant::now() + scaled(Duration::from_secs(20));
    let logged = loop {
        let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
        if log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| verdict(&v))
        {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(logged, "the live agent never logged the verdict");
    // Enough drops to fill the set several times over, then SIGKILL while
    // they are still being written.
    let flood = flood_at(&peer, "10.61.0.1:5999", 1, Some(3000));
    std::thread::sleep(Duration::from_secs(3));
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    flood.stop();

    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let total: u64 = files.iter().map(|p| p.metadata().unwrap().len()).sum();
    assert!(files.len() >= 3, "the set never rolled: {files:?}");
    assert!(total <= max + 64 * 1024, "{total} bytes in {files:?}");
    eprintln!("{} files, {total} bytes: {files:?}", files.len());
    let first = dir.join("tracer-00000000.jsonl");
    assert!(!first.exists(), "the oldest file was never removed");

    let out = replay(&dir);
    assert_eq!(out.status, Some(3), "a proven fault: {}", out.stderr);
    let replayed = &out.lines;
    assert!(
        replayed.iter().any(verdict),
        "{}\n{replayed:#?}",
        out.stderr
    );
    drop(lab);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The agent's heap in memory (`RssAnon`), in bytes: what its
/// connections cost. VmRSS also counts the ring buffer's pages once drops
/// elsewhere on the host touch them, which no connection caused.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// /healthz's status and how long it took.
fn timed_healthz(port: u16) -> (Option<u16>, Duration) {
    let t0 = Instant::now();
    let code = http_get(port, "/healthz").map(|(c, _)| c);
    (code, t0.elapsed())
}

/// Anyone who can reach the metrics port can hold connections open: 3,000
/// of them (half idle, half stopped mid-header) must neither lock out the
/// kubelet's /healthz probe nor grow the agent's fds and memory.
#[test]
fn the_agent_stays_up_while_3000_connections_are_held() {
    let mut lab = Netlab::new(&prefix("agconn")).unwrap();
    let quiet = lab.ns("quiet").unwrap();
    let (mut agent, port) = Agent::spawn(&[], &[&quiet], temp("agconn.log"));
    agent.wait_healthy();
    let pid = agent.child.id();
    let (rss0, fds0) = (rss(pid), open_fds(pid));
    let mut held = Vec::new();
    for i in 0..3000 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        if i % 2 == 1 {
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ")
                .unwrap();
        }
        held.push(s);
        if i % 500 == 499 {
            let (code, took) = timed_healthz(port);
            assert_eq!(code, Some(200), "/healthz with {} held", i + 1);
            assert!(took < Duration::from_secs(1), "/healthz took {took:?}");
        }
    }
    // Each connection is held, from this side, until the end.
    let (code, took) = timed_healthz(port);
    assert_eq!(code, Some(200));
    assert!(took < Duration::from_secs(1), "/healthz took {took:?}");
    let (_, metrics) = http_get(port, "/metrics").expect("a scrape while 3,000 are held");
    assert!(metrics.contains("tracer_events_lost"), "{metrics}");
    // A closed connection's task ends at its next poll: on a loaded host
    // the last hundreds may take a moment to go.
    let settle = Instant::now() + scaled(Duration::from_secs(5));
    while open_fds(pid) >= fds0 + 300 && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (rss1, fds1) = (rss(pid), open_fds(pid));
    eprintln!("held 3000: rss {rss0} -> {rss1}, fds {fds0} -> {fds1}");
    assert!(fds1 < fds0 + 300, "fds {fds0} -> {fds1}");
    assert!(rss1 < rss0 + (20 << 20), "rss {rss0} -> {rss1}");
    drop(held);
    assert!(agent.child.try_wait().unwrap().is_none(), "the agent died");
    agent.terminate();
}

/// The system calls the unit's `SystemCallFilter=` allows, expanded by
/// systemd's own tables (`systemd-analyze syscall-filter`).
fn unit_syscall_filter() -> std::collections::BTreeSet<String> {
    let unit = std::fs::read_to_string(repo().join("deploy/tracer-agent.service")).unwrap();
    let entries: Vec<String> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("SystemCallFilter="))
        .flat_map(|v| v.split_whitespace().map(String::from).collect::<Vec<_>>())
        .collect();
    assert!(!entries.is_empty(), "the unit has no SystemCallFilter=");
    let out = Command::new("systemd-analyze")
        .args(["syscall-filter", "--no-pager"])
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    let mut groups: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut current = None;
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        if l.starts_with('@') {
            current = Some(l.split_whitespace().next().unwrap().to_string());
            continue;
        }
        let item = l.trim();
        if let Some(g) = &current {
            if !item.is_empty() && !item.starts_with('#') {
                groups.entry(g.clone()).or_default().push(item.to_string());
            }
        }
    }
    fn expand(
        e: &str,
        groups: &std::collections::HashMap<String, Vec<String>>,
        out: &mut std::collections::BTreeSet<String>,
    ) {
        match groups.get(e) {
            Some(items) => items.iter().for_each(|i| expand(i, groups, out)),
            None => {
                out.insert(e.to_string());
            }
        }
    }
    let mut allowed = std::collections::BTreeSet::new();
    for e in &entries {
        expand(e, &groups, &mut allowed);
    }
    assert!(allowed.len() > 100, "{entries:?} expanded to {allowed:?}");
    allowed
}

/// The unit's syscall filter cannot be tried without a running systemd,
/// so the agent runs under strace instead, through start, drops, a
/// verdict, a scrape and SIGTERM: every call it makes must be one the
/// filter allows, or the hardened unit would kill it on a real host.
#[test]
fn the_units_syscall_filter_allows_every_call_the_agent_makes() {
    let allowed = unit_syscall_filter();
    let (lab, edge) = rpf_lab("agsys");
    let peer = lab.name("peer");
    let trace = temp("agsys.strace");
    let trace_arg = trace.to_string_lossy().into_owned();
    let (mut agent, port) = Agent::spawn_with(
        &["strace", "-f", "-qq", "-o", &trace_arg],
        &[&edge, &peer],
        temp("agsys.log"),
        &[],
    );
    agent.wait_healthy();
    send_drops(&lab);
    let deadline = Instant::now() + scaled(Duration::from_secs(20));
    while !http_get(port, "/metrics").is_some_and(|(_, b)| b.contains("rpfilter_route_conflict")) {
        assert!(Instant::now() < deadline, "no verdict under strace");
        std::thread::sleep(Duration::from_millis(200));
    }
    // SIGTERM to the agent itself (strace's child), then strace ends.
    let strace_pid = agent.child.id();
    let children =
        std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children")).unwrap();
    let pid: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    unsafe { kill(pid, 15) };
    let st = agent.child.wait().unwrap();
    assert!(st.success(), "{st}: {}", agent.stderr());
    let text = std::fs::read_to_string(&trace).unwrap();
    let _ = std::fs::remove_file(&trace);
    let used: std::collections::BTreeSet<String> = text
        .lines()
        .filter_map(|l| {
            let call = l.split_once(' ')?.1.trim_start();
            let name = call.split('(').next()?;
            (!name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
            .then(|| name.to_string())
        })
        .collect();
    assert!(used.contains("bpf") && used.len() > 30, "{used:?}");
    let denied: Vec<&String> = used.difference(&allowed).collect();
    assert!(denied.is_empty(), "the unit's filter denies {denied:?}");
    drop(lab);
}

/// A full disk under `--log` must not end the agent: it says once which
/// file it cannot write, and goes on counting drops for /metrics. The log
/// is on a 48 KiB tmpfs mounted in the agent's own mount namespace (the
/// host's mounts are untouched), filled by a stream of logged drops.
#[test]
fn a_full_disk_under_the_log_is_named_once_and_the_metrics_go_on() {
    let (lab, edge) = rpf_lab("agfull");
    let peer = lab.name("peer");
    let dir = temp("agfull.d");
    std::fs::create_dir_all(&dir).unwrap();
    let mount = format!(
        "mount -t tmpfs -o size=48k tracer-test {} && exec \"$@\"",
        dir.display()
    );
    let log = dir.join("agent.log");
    let (mut agent, port) = Agent::spawn_with(
        &[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &mount,
            "sh",
        ],
        &[&edge, &peer],
        log.clone(),
        &["--log-drops"],
    );
    agent.wait_healthy();
    let flood = flood_at(&peer, "10.61.0.1:5999", 1, Some(2000));
    std::thread::sleep(Duration::from_secs(3));
    flood.stop();
    let q = format!("reason=\"IP_RPFILTER\",netns=\"{edge}\"");
    let deadline = Instant::now() + scaled(Duration::from_secs(10));
    let counted = loop {
        let n = http_get(port, "/metrics")
            .map(|(_, b)| scraped(&b, "tracer_drops_total", &[&q]))
            .unwrap_or(0);
        if n >= 3000 || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        counted >= 3000,
        "drops counted while the log was full: {counted}"
    );
    assert!(agent.child.try_wait().unwrap().is_none(), "the agent ended");
    // SIGTERM: it still stops cleanly; then what it said.
    unsafe { kill(agent.child.id() as i32, 15) };
    let st = agent.child.wait().unwrap();
    let said = agent.stderr();
    assert!(st.success(), "{st}: {said}");
    let needle = format!(
        "cannot write --log {}: No space left on device",
        log.display()
    );
    assert_eq!(said.matches(&needle).count(), 1, "{said}");
    drop(lab);
    let _ = std::fs::remove_dir(&dir);
}
