//! Reliability under stress, kept short enough for every push (about
//! 15 s of wall time in all, the tests running in parallel):
//! - SIGTERM / SIGINT in the middle of a drop storm: exit within 1 s, with
//!   the summary line and status 0, and every eBPF program and link the
//!   tracer held is gone afterwards;
//! - `kill -9` of a lab run, then `tracer lab clean` removes its namespaces;
//! - a full lab run leaves the root netns (links, addresses, routes,
//!   forwarding and conf.all sysctls) exactly as it found it;
//! - a 3 s storm whose accounting adds up: the kernel's count of
//!   datagrams to a closed port == delivered drops + lost.
//!
//! The storms are driven by sender threads that `setns` into a test
//! namespace and blast 16-byte UDP datagrams at a port nobody listens on.

use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracer_tests::{flood, prefix, tracer_bin, Netlab};

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn syscall(num: i64, ...) -> i64;
    fn close(fd: i32) -> i32;
}

const SIGHUP: i32 = 1;
const SIGINT: i32 = 2;
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;
#[cfg(target_arch = "x86_64")]
const SYS_BPF: i64 = 321;
#[cfg(target_arch = "aarch64")]
const SYS_BPF: i64 = 280;
const BPF_PROG_GET_FD_BY_ID: i64 = 13;
const BPF_LINK_GET_FD_BY_ID: i64 = 30;

/// The lab tests run `tracer lab clean`, which removes every `trlab-*`
/// namespace: they must not overlap with each other.
static LAB_LOCK: Mutex<()> = Mutex::new(());

// ----------------------------------------------------------------- storm

/// a (10.203.0.1) -- b (10.203.0.2); nothing listens in b.
fn pair_lab(test: &str) -> Netlab {
    let mut lab = Netlab::new(&prefix(test)).unwrap();
    lab.ns("a").unwrap();
    lab.ns("b").unwrap();
    lab.veth("a", "eth0", "b", "eth0").unwrap();
    lab.exec("a", "ip addr add 10.203.0.1/24 dev eth0").unwrap();
    lab.exec("b", "ip addr add 10.203.0.2/24 dev eth0").unwrap();
    lab.exec("a", "ping -c1 -W2 10.203.0.2 >/dev/null").unwrap();
    lab
}

/// `Udp: NoPorts` of a namespace: datagrams the kernel dropped for want of
/// a socket.
fn udp_noports(lab: &Netlab, short: &str) -> u64 {
    let snmp = lab.exec(short, "cat /proc/net/snmp").unwrap();
    let lines: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp: ")).collect();
    let i = lines[0]
        .split_whitespace()
        .position(|f| f == "NoPorts")
        .unwrap();
    lines[1].split_whitespace().nth(i).unwrap().parse().unwrap()
}

// ----------------------------------------------------------- the tracer

/// What the tracer printed, counted rather than parsed (a storm prints
/// hundreds of thousands of lines).
#[derive(Default)]
struct Printed {
    drop_lines: u64,
    /// The sum of the aggregate lines' counts.
    aggregated: u64,
    last: String,
}

/// `tracer ARGS -o json`, with stdout counted by a thread.
struct Tracer {
    child: Child,
    reader: Option<JoinHandle<Printed>>,
    stderr: Arc<Mutex<String>>,
}

impl Tracer {
    fn start(args: &[&str]) -> Tracer {
        let mut child = Command::new(tracer_bin())
            .args(args)
            .args(["-o", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tracer");
        let mut out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut p = Printed::default();
            let mut buf = vec![0u8; 1 << 20];
            let mut pending: Vec<u8> = Vec::new();
            let mut tx = Some(tx);
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                pending.extend_from_slice(&buf[..n]);
                let mut start = 0;
                while let Some(off) = pending[start..].iter().position(|&b| b == b'\n') {
                    let line = &pending[start..start + off];
                    if line.starts_with(b"{\"type\":\"drop\"") {
                        p.drop_lines += 1;
                    } else if line.starts_with(b"{\"type\":\"aggregate\"") {
                        let v: Value = serde_json::from_slice(line).unwrap();
                        p.aggregated += v["count"].as_u64().unwrap();
                    } else if line.starts_with(b"{\"type\":\"ready\"") {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    p.last = String::from_utf8_lossy(line).into_owned();
                    start += off + 1;
                }
                pending.drain(..start);
            }
            p
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let s = stderr.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            s.lock().unwrap().push_str(&text);
        });
        let t = Tracer {
            child,
            reader: Some(reader),
            stderr,
        };
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            panic!("tracer never became ready: {}", t.stderr.lock().unwrap());
        }
        // No pause needed: tracer takes SIGINT/SIGTERM from before it
        // prints `ready` (see `signal_right_after_ready`).
        t
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `sig` and waits (up to 10 s) for the exit: (status, time to exit,
    /// what it printed).
    fn signal(mut self, sig: i32) -> (std::process::ExitStatus, Duration, Printed, String) {
        let t0 = Instant::now();
        unsafe { kill(self.pid(), sig) };
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                break self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let took = t0.elapsed();
        let printed = self.reader.take().unwrap().join().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let err = self.stderr.lock().unwrap().clone();
        (status, took, printed, err)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The eBPF program and link ids a process holds (from its fdinfo).
fn bpf_ids(pid: i32) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let (mut progs, mut links) = (BTreeSet::new(), BTreeSet::new());
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let Ok(info) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        for l in info.lines() {
            if let Some(v) = l.strip_prefix("prog_id:") {
                progs.insert(v.trim().parse().unwrap());
            } else if let Some(v) = l.strip_prefix("link_id:") {
                links.insert(v.trim().parse().unwrap());
            }
        }
    }
    (progs, links)
}

/// True if a BPF object with this id still exists in the kernel.
fn bpf_id_exists(cmd: i64, id: u32) -> bool {
    let mut attr = [0u32; 4];
    attr[0] = id;
    let fd = unsafe { syscall(SYS_BPF, cmd, attr.as_mut_ptr(), 16u32) };
    if fd >= 0 {
        unsafe { close(fd as i32) };
        return true;
    }
    let err = std::io::Error::last_os_error();
    assert_eq!(
        err.raw_os_error(),
        Some(2),
        "bpf(GET_FD_BY_ID, {id}) failed oddly: {err}"
    );
    false
}

fn signal_mid_storm(test: &str, sig: i32) {
    let lab = pair_lab(test);
    let t = Tracer::start(&["watch", "--netns", &lab.name("b")]);
    let (progs, links) = bpf_ids(t.pid());
    assert!(
        !progs.is_empty() && !links.is_empty(),
        "the running tracer holds no eBPF program or link (progs {progs:?}, links {links:?})"
    );
    let f = flood(&lab.name("a"), "10.203.0.2:9");
    std::thread::sleep(Duration::from_millis(1500));
    let (status, took, printed, stderr) = t.signal(sig);
    let sent = f.stop();
    assert!(sent > 1000, "the storm never got going ({sent} datagrams)");
    assert!(
        took <= Duration::from_secs(1),
        "tracer took {took:?} to exit after signal {sig} in a storm"
    );
    assert_eq!(
        status.code(),
        Some(0),
        "tracer exited with {status} after signal {sig}; stderr: {stderr}"
    );
    let summary: Value = serde_json::from_str(&printed.last)
        .unwrap_or_else(|e| panic!("last line {:?} is not JSON: {e}", printed.last));
    assert_eq!(summary["type"], "summary", "last line: {}", printed.last);
    let drops = summary["drops"].as_u64().unwrap();
    assert_eq!(drops, printed.drop_lines, "summary drops vs drop lines");
    assert!(drops > 0, "no drop delivered during the storm: {summary}");
    let matched = summary["kernel"]["drops_matched"].as_u64().unwrap();
    let lost = summary["lost"].as_u64().unwrap();
    let not_shown = summary["not_shown"].as_u64().unwrap();
    let aggregated = summary["aggregated"].as_u64().unwrap();
    // Detach, drain, then count: the sum is exact, nothing left in the ring.
    assert_eq!(
        drops + aggregated + lost + not_shown,
        matched,
        "delivered {drops} + aggregated {aggregated} + lost {lost} + not shown {not_shown} vs drops_matched {matched}"
    );
    assert_eq!(
        aggregated, printed.aggregated,
        "summary aggregated vs the aggregate lines' counts"
    );
    assert_eq!(lost, 0, "a storm is aggregated, not lost: {summary}");
    assert_eq!(not_shown, 0, "a signal hides nothing: {summary}");
    // Everything the tracer attached is released with it.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let left: Vec<u32> = progs
            .iter()
            .copied()
            .filter(|id| bpf_id_exists(BPF_PROG_GET_FD_BY_ID, *id))
            .collect();
        let left_links: Vec<u32> = links
            .iter()
            .copied()
            .filter(|id| bpf_id_exists(BPF_LINK_GET_FD_BY_ID, *id))
            .collect();
        if left.is_empty() && left_links.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after exit, programs {left:?} and links {left_links:?} are still loaded"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_mid_storm_exits_cleanly_and_detaches() {
    signal_mid_storm("sigterm", SIGTERM);
}

#[test]
fn sigint_mid_storm_exits_cleanly_and_detaches() {
    signal_mid_storm("sigint", SIGINT);
}

/// A dropped SSH session (SIGHUP) keeps the accounting too.
#[test]
fn sighup_mid_storm_ends_like_sigterm() {
    signal_mid_storm("sighup", SIGHUP);
}

/// `--count` ends the run; what the kernel matched after it is `not_shown`,
/// never `lost`, and the sum still adds up.
#[test]
fn count_in_a_storm_loses_nothing() {
    let lab = pair_lab("cnt");
    let f = flood(&lab.name("a"), "10.203.0.2:9");
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new(tracer_bin())
        .args([
            "watch",
            "--netns",
            &lab.name("b"),
            "--count",
            "3",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    let sent = f.stop();
    assert!(sent > 1000, "the storm never got going ({sent} datagrams)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let summary: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let drop_lines = text
        .lines()
        .filter(|l| l.starts_with("{\"type\":\"drop\""))
        .count();
    assert_eq!(drop_lines, 3, "{summary}");
    assert_eq!(summary["drops"], 3);
    assert_eq!(
        summary["lost"], 0,
        "events after the count are not lost: {summary}"
    );
    let matched = summary["kernel"]["drops_matched"].as_u64().unwrap();
    let not_shown = summary["not_shown"].as_u64().unwrap();
    assert_eq!(3 + not_shown, matched, "{summary}");
}

/// A reader that goes away (`| head`) ends the run quietly with status 0,
/// in JSON as in text; a write that fails otherwise is an error.
#[test]
fn closed_pipe_is_quiet_and_a_full_disk_is_an_error() {
    let lab = pair_lab("pipe");
    let f = flood(&lab.name("a"), "10.203.0.2:9");
    let bin = tracer_bin();
    for format in ["json", "text"] {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "set -o pipefail; {bin:?} watch --netns {ns:?} -o {format} --duration 10 | head -3 >/dev/null",
                ns = lab.name("b"),
            ))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{format}: {} {err}", out.status);
        assert!(!err.contains("error"), "{format}: {err}");
    }
    f.stop();
    let out = Command::new(&bin)
        .args(["watch", "--duration", "1"])
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
}

/// `ready` means attached: a signal sent the moment that line is read must
/// still end the run with its summary, not kill the process outright.
#[test]
fn signal_right_after_ready() {
    for sig in [SIGINT, SIGTERM] {
        let mut child = Command::new(tracer_bin())
            .args(["watch", "-o", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut got = Vec::new();
        let mut b = [0u8; 4096];
        while !got.contains(&b'\n') {
            let n = out.read(&mut b).unwrap();
            assert!(n > 0, "no ready line");
            got.extend_from_slice(&b[..n]);
        }
        assert!(got.starts_with(b"{\"type\":\"ready\""));
        unsafe { kill(child.id() as i32, sig) };
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        let status = child.wait().unwrap();
        assert!(
            status.success() && rest.contains("\"type\":\"summary\""),
            "signal {sig} right after ready: exit {status}, printed {rest:?}"
        );
    }
}

#[test]
fn storm_accounting_adds_up() {
    let lab = pair_lab("acct");
    let t = Tracer::start(&["watch", "--netns", &lab.name("b"), "--reason", "NO_SOCKET"]);
    let before = udp_noports(&lab, "b");
    let f = flood(&lab.name("a"), "10.203.0.2:9");
    std::thread::sleep(Duration::from_secs(3));
    let sent = f.stop();
    // Let the tracer drain its ring buffer before stopping it.
    std::thread::sleep(Duration::from_millis(1500));
    let kernel = udp_noports(&lab, "b") - before;
    let (status, _, printed, stderr) = t.signal(SIGINT);
    assert!(status.success(), "tracer exited with {status}: {stderr}");
    let summary: Value = serde_json::from_str(&printed.last).unwrap();
    assert_eq!(summary["type"], "summary");
    let drops = summary["drops"].as_u64().unwrap();
    let lost = summary["lost"].as_u64().unwrap();
    let matched = summary["kernel"]["drops_matched"].as_u64().unwrap();
    eprintln!(
        "storm: sent {sent}, kernel NoPorts {kernel}, delivered {drops}, lost {lost}, matched {matched}"
    );
    let aggregated = summary["aggregated"].as_u64().unwrap();
    assert!(kernel > 10_000, "too small a storm: {kernel} drops");
    assert_eq!(drops, printed.drop_lines, "summary drops vs drop lines");
    assert_eq!(aggregated, printed.aggregated, "summary vs aggregate lines");
    assert_eq!(lost, 0, "a storm is aggregated, not lost: {summary}");
    assert!(
        aggregated > drops,
        "a storm is mostly counted by key: {summary}"
    );
    assert_eq!(
        kernel,
        drops + aggregated,
        "kernel dropped {kernel}, tracer printed {drops} and counted {aggregated} by key"
    );
    assert_eq!(
        matched,
        drops + aggregated,
        "drops_matched vs printed + counted"
    );
}

/// `--no-aggregate` sends every drop; in a storm the ring may overflow,
/// and what it could not hold is counted as lost, never silently.
#[test]
fn no_aggregate_sends_every_drop() {
    let lab = pair_lab("noagg");
    let t = Tracer::start(&["watch", "--netns", &lab.name("b"), "--no-aggregate"]);
    let f = flood(&lab.name("a"), "10.203.0.2:9");
    std::thread::sleep(Duration::from_secs(2));
    f.stop();
    std::thread::sleep(Duration::from_millis(500));
    let (status, _, printed, stderr) = t.signal(SIGINT);
    assert!(status.success(), "{stderr}");
    let summary: Value = serde_json::from_str(&printed.last).unwrap();
    assert_eq!(summary["aggregated"], 0, "{summary}");
    assert_eq!(printed.aggregated, 0);
    let matched = summary["kernel"]["drops_matched"].as_u64().unwrap();
    let lost = summary["lost"].as_u64().unwrap();
    assert_eq!(printed.drop_lines + lost, matched, "{summary}");
}

// ------------------------------------------------------------------ labs

fn lab_namespaces(prefix: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[test]
fn killed_lab_is_removed_by_lab_clean() {
    let _g = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = Command::new(tracer_bin())
        .args(["lab", "run", "bridge-subnet-strict"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ours = format!("trlab-{}-", child.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    while lab_namespaces(&ours).is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "lab run ended before creating a namespace"
        );
        assert!(Instant::now() < deadline, "no {ours}* namespace appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    unsafe { kill(child.id() as i32, SIGKILL) };
    child.wait().unwrap();
    // An `ip` the lab had started may still be finishing its command.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !lab_namespaces(&ours).is_empty(),
        "kill -9 left nothing behind: the test proves nothing"
    );
    let out = Command::new(tracer_bin())
        .args(["lab", "clean"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "lab clean: {out:?}");
    let left = lab_namespaces(&ours);
    assert!(left.is_empty(), "lab clean left {left:?}");
}

/// `lab clean` removes only what a lab recorded making: a `trlab-*`
/// namespace someone made by hand (with a process in it), and one whose
/// marker names another inode (deleted and re-created since), survive.
#[test]
fn lab_clean_leaves_namespaces_it_did_not_make() {
    let _g = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let foreign = format!("trlab-{}-foreign", std::process::id());
    let reused = format!("trlab-{}-reused", std::process::id());
    for n in [&foreign, &reused] {
        let ok = Command::new("ip")
            .args(["netns", "add", n])
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let mut resident = Command::new("ip")
        .args(["netns", "exec", &foreign, "sleep", "60"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // A marker from a creator that is gone, for a namespace of another inode.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let marker = Path::new(netlab::MARKERS).join(&reused);
    std::fs::create_dir_all(netlab::MARKERS).unwrap();
    std::fs::write(&marker, format!("pid={} inode=1\n", gone.id())).unwrap();

    let out = Command::new(tracer_bin())
        .args(["lab", "clean"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let left = lab_namespaces(&format!("trlab-{}-", std::process::id()));
    let alive = resident.try_wait().unwrap().is_none();
    let _ = resident.kill();
    let _ = resident.wait();
    for n in [&foreign, &reused] {
        let _ = Command::new("ip").args(["netns", "del", n]).status();
    }
    let stale_marker_left = marker.exists();
    let _ = std::fs::remove_file(&marker);
    assert!(out.status.success(), "lab clean: {out:?}");
    assert!(
        left.contains(&foreign) && left.contains(&reused),
        "{left:?}"
    );
    assert!(alive, "lab clean killed a process it did not start");
    assert!(!stale_marker_left, "the stale marker stays");
}

/// The root netns, minus what changes by itself (address lifetimes).
fn root_snapshot() -> String {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("valid_life_time");
                m.remove("preferred_life_time");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut s = String::new();
    for args in [
        &["-j", "link"][..],
        &["-j", "addr"],
        &["-j", "route"],
        &["-j", "-6", "route"],
    ] {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}");
        let mut v: Value = serde_json::from_slice(&out.stdout).unwrap();
        strip(&mut v);
        s.push_str(&format!("ip {args:?}: {v}\n"));
    }
    let mut files = vec![
        "/proc/sys/net/ipv4/ip_forward".to_string(),
        "/proc/sys/net/ipv6/conf/all/forwarding".to_string(),
    ];
    let mut conf: Vec<String> = std::fs::read_dir("/proc/sys/net/ipv4/conf/all")
        .unwrap()
        .flatten()
        .map(|e| e.path().display().to_string())
        .collect();
    conf.sort();
    files.extend(conf);
    for f in files {
        if let Ok(v) = std::fs::read_to_string(Path::new(&f)) {
            s.push_str(&format!("{f} = {}\n", v.trim()));
        }
    }
    s
}

#[test]
fn lab_run_leaves_the_root_netns_alone() {
    let _g = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let before = root_snapshot();
    assert!(before.contains("ip_forward"), "snapshot: {before}");
    let out = Command::new(tracer_bin())
        .args(["lab", "run", "veth-mtu-mismatch"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lab run veth-mtu-mismatch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = root_snapshot();
    if before != after {
        let changed: Vec<(&str, &str)> = before
            .lines()
            .zip(after.lines())
            .filter(|(a, b)| a != b)
            .collect();
        panic!("the lab changed the root netns: {changed:#?}");
    }
}

/// In a storm `diagnose` detaches its per-packet programs (route lookups,
/// the SYN check) while the kernel aggregates, and attaches them again a
/// second after: a drop after the storm is joined to a fresh lookup.
#[test]
fn a_storm_pauses_route_tracing_and_resumes_it() {
    let lab = pair_lab("shed");
    let run = tracer_tests::start(&["diagnose", "--netns", &lab.name("b")]);
    let f = flood(&lab.name("a"), "10.203.0.2:9");
    std::thread::sleep(Duration::from_secs(2));
    f.stop();
    // Quiet for longer than the second it takes to come back.
    std::thread::sleep(Duration::from_secs(2));
    lab.exec("a", "bash -c 'echo x > /dev/udp/10.203.0.2/7777'")
        .unwrap();
    let after = |v: &Value| v["type"] == "drop" && v["dport"] == 7777;
    run.wait_for(Duration::from_secs(5), after);
    let lines = run.stop();
    let summary = lines.last().unwrap();
    let paused = summary["storm_paused_ms"].as_u64().unwrap_or(0);
    assert!(paused >= 500, "no pause in a 2 s storm: {summary}");
    let d = lines
        .iter()
        .find(|v| after(v))
        .expect("the drop after the storm");
    let age = d["route"]["age_ns"]
        .as_i64()
        .expect("a joined route lookup");
    assert!(
        (0..100_000_000).contains(&age),
        "the lookup is not fresh, the route program did not come back: {d}"
    );
}
