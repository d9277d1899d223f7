//! Helpers for the integration tests: run the real `tracer` binary with
//! `-o json`, wait until it is attached, make the kernel drop packets in
//! throwaway namespaces, then stop it and look at what it printed.

pub mod oracle;

use netlab::{BridgeConflict, FloodOpts, Routed};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub use netlab::{Flood, Netlab};

/// The binary under test: `TRACER_BIN`, else the workspace's debug build
/// (`cargo xtask test` builds it first).
pub fn tracer_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TRACER_BIN") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/tracer")
}

/// A unique namespace prefix per test and process, so parallel tests and
/// other people's namespaces never collide (and `tracer lab clean`, which
/// removes `trlab-*`, never touches a running test).
pub fn prefix(test: &str) -> String {
    format!("trtest-{}-{}-", std::process::id(), test)
}

/// client 10.1.0.1 -- router (10.1.0.254 | 10.2.0.254) -- server 10.2.0.1,
/// the routed topology several tests share.
pub fn routed_lab(test: &str) -> Netlab {
    let mut lab = Netlab::new(&prefix(test)).unwrap();
    Routed {
        client: "client",
        router: "router",
        server: "server",
        server_if: "eth0",
        client_addr: Ipv4Addr::new(10, 1, 0, 1),
        router_client_addr: Ipv4Addr::new(10, 1, 0, 254),
        router_server_addr: Ipv4Addr::new(10, 2, 0, 254),
        server_addr: Ipv4Addr::new(10, 2, 0, 1),
        forwarding: true,
    }
    .build(&mut lab)
    .unwrap();
    lab
}

/// A `start_in` wrapper for the classic tracepoint hook, which needs
/// tracefs: this machine does not mount it, so a private mount namespace
/// does, invisible to the host.
pub const WITH_TRACEFS: &[&str] = &[
    "unshare",
    "-m",
    "--propagation",
    "private",
    "sh",
    "-c",
    "{ mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing; } && exec \"$0\" \"$@\"",
];

/// Three UDP datagrams from namespace `ns`; bash's /dev/udp needs no tool.
pub fn udp(lab: &Netlab, ns: &str, dst: &str, port: u16) {
    lab.exec(
        ns,
        &format!(
            "for i in 1 2 3; do bash -c 'echo x > /dev/udp/{dst}/{port}' || true; sleep 0.1; done"
        ),
    )
    .unwrap();
}

type Lines = Arc<(Mutex<Vec<Value>>, Condvar)>;

pub struct TracerRun {
    child: Child,
    lines: Lines,
    stderr: Arc<Mutex<String>>,
    /// Told when the reader has read the last line (tracer's stdout
    /// closed).
    eof: std::sync::mpsc::Receiver<()>,
}

/// Starts `tracer ARGS -o json` and waits for its `ready` line.
pub fn start(args: &[&str]) -> TracerRun {
    start_in(&[], args)
}

/// Like `start`, with the tracer run through `wrapper` (e.g. `unshare -m sh -c ...`):
/// the wrapper's last word receives the tracer command line appended.
pub fn start_in(wrapper: &[&str], args: &[&str]) -> TracerRun {
    start_bin(&tracer_bin(), wrapper, args)
}

/// The optimized binary: `TRACER_BIN`, else `TRACER_RELEASE_BIN` (`cargo
/// xtask test` points it at the static binary `cargo xtask dist` built),
/// else that static binary or the workspace's release build where one
/// exists. For tests that start hundreds of tracers, where a debug
/// build's start-up (BTF, loading) is 4 s, not 0.6.
pub fn tracer_release_bin() -> PathBuf {
    for var in ["TRACER_BIN", "TRACER_RELEASE_BIN"] {
        if let Some(p) = std::env::var_os(var) {
            return PathBuf::from(p);
        }
    }
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    let candidates = [
        target.join("x86_64-unknown-linux-gnu/release/tracer"),
        target.join("release/tracer"),
    ];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!("no optimized tracer: cargo xtask dist (or cargo build --release -p tracer)")
        })
}

/// Like `start_in`, with binary `bin`.
pub fn start_bin(bin: &std::path::Path, wrapper: &[&str], args: &[&str]) -> TracerRun {
    let mut run = spawn_bin(bin, wrapper, args);
    run.ready();
    run
}

/// Starts tracer without waiting for it to attach (`TracerRun::ready`
/// waits): many tracers then start side by side.
pub fn spawn_bin(bin: &std::path::Path, wrapper: &[&str], args: &[&str]) -> TracerRun {
    let mut cmd = if wrapper.is_empty() {
        let mut c = Command::new(bin);
        c.args(args);
        c
    } else {
        let mut c = Command::new(wrapper[0]);
        c.args(&wrapper[1..]);
        c.arg(bin);
        c.args(args);
        c
    };
    let mut child = cmd
        .args(["-o", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tracer");
    let lines: Lines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
    let stdout = child.stdout.take().unwrap();
    let l = lines.clone();
    let (eof_tx, eof) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("tracer printed non-JSON line {line:?}: {e}"));
            l.0.lock().unwrap().push(v);
            l.1.notify_all();
        }
        let _ = eof_tx.send(());
    });
    let stderr = Arc::new(Mutex::new(String::new()));
    let s = stderr.clone();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            s.lock().unwrap().push_str(&line);
            s.lock().unwrap().push('\n');
        }
    });
    TracerRun {
        child,
        lines,
        stderr,
        eof,
    }
}

/// `d` stretched by TRACER_TEST_TIME_SCALE (default 1). The kernel
/// matrix sets it in its guests: under emulation, with several guests
/// sharing two cores, start-up and traffic run several times slower, and
/// a wait sized for a real machine failed there for nothing.
pub fn scaled(d: Duration) -> Duration {
    let scale = std::env::var("TRACER_TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|&s| s > 0)
        .unwrap_or(1);
    d * scale
}

impl TracerRun {
    /// Waits until tracer has attached; panics with its stderr if it never does.
    pub fn ready(&mut self) {
        if self
            .wait_for(Duration::from_secs(30), |v| v["type"] == "ready")
            .is_none()
        {
            let _ = self.child.kill();
            panic!(
                "tracer never became ready; stderr: {}",
                self.stderr.lock().unwrap()
            );
        }
    }

    /// The tracer's process id (to attach strace or read /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a printed line satisfies `pred` (for `timeout`, scaled).
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + scaled(timeout);
        let (m, cv) = &*self.lines;
        let mut g = m.lock().unwrap();
        loop {
            if let Some(v) = g.iter().find(|v| pred(v)) {
                return Some(v.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    /// SIGINT, wait for exit, return every line printed (ready ... summary).
    /// The exit status must be 0, or 3 exactly when the summary counts a
    /// proven fault (`diagnose`).
    pub fn stop(mut self) -> Vec<Value> {
        unsafe { libc_kill(self.child.id() as i32, 2) };
        let deadline = Instant::now() + scaled(Duration::from_secs(10));
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("tracer did not exit within 10 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader drains the pipe to its end: the last lines (the
        // verdicts concluded at exit, the summary) come after the exit
        // status, and a slow guest once read them later than a fixed wait.
        let _ = self.eof.recv_timeout(scaled(Duration::from_secs(5)));
        let lines = self.lines.0.lock().unwrap().clone();
        assert_eq!(
            status.code(),
            Some(expected_status(&lines)),
            "tracer exited with {status}; stderr: {}",
            self.stderr.lock().unwrap()
        );
        lines
    }
}

impl Drop for TracerRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// `tracer diagnose` exits with this when it proved a fault.
pub const EXIT_FAULT_PROVEN: i32 = 3;

/// The status a run that printed `lines` must end with: 3 when its
/// summary counts proven faults, else 0.
pub fn expected_status(lines: &[Value]) -> i32 {
    let faults = lines
        .iter()
        .rev()
        .find(|v| v["type"] == "summary")
        .and_then(|s| s["faults"].as_u64())
        .unwrap_or(0);
    if faults > 0 {
        EXIT_FAULT_PROVEN
    } else {
        0
    }
}

pub fn drops(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|v| v["type"] == "drop").collect()
}

/// Runs the tracer with bad input and returns (exit code, stderr).
pub fn run_bad(args: &[&str]) -> (i32, String) {
    let out = Command::new(tracer_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run tracer");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether the running kernel reports drop reasons (Linux 5.17+). Before
/// that, a drop is known by the function that freed it.
pub fn kernel_reasons() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        tracer::kernel::btf::KernelBtf::load()
            .map(|b| b.has_drop_reasons())
            .unwrap_or(false)
    })
}

/// The functions that free the drops these tests cause, by reason: what a
/// kernel without drop reasons shows instead.
fn dropping_functions(reason: &str) -> &'static [&'static str] {
    match reason {
        "IP_RPFILTER" => &["ip_rcv_finish_core"],
        "NO_SOCKET" => &["__udp4_lib_rcv", "__udp6_lib_rcv"],
        "NETFILTER_DROP" => &["nf_hook_slow"],
        "IP_INNOROUTES" => &["ip_error"],
        "PKT_TOO_BIG" => &["ip_forward", "ip6_forward"],
        "NEIGH_FAILED" => &["neigh_invalidate"],
        _ => &[],
    }
}

/// Is `v` a drop for `reason`? On kernels with drop reasons, by its
/// reason; before 5.17, by the function that freed it, with the reason
/// either unknown or inferred (and then marked as inferred).
pub fn is_drop(v: &Value, reason: &str) -> bool {
    if v["type"] != "drop" {
        return false;
    }
    if kernel_reasons() {
        return v["reason"] == reason && v["reason_source"] == "kernel";
    }
    let func = v["location"]
        .as_str()
        .and_then(|l| l.split('+').next())
        // Compilers suffix the copies they make: `ip_rcv_finish_core.constprop.0`.
        .and_then(|f| f.split('.').next())
        .unwrap_or_default();
    dropping_functions(reason).contains(&func)
        && (v["reason"].is_null() || (v["reason"] == reason && v["reason_source"] == "location"))
}

/// client 10.1.0.1 (source 172.17.5.5) -- router -- host 10.99.0.2 with
/// docker0 172.17.0.1/16 and a container; rp_filter=1 on the host.
pub fn rpf_lab(test: &str) -> Netlab {
    let mut lab = Netlab::new(&prefix(test)).unwrap();
    BridgeConflict {
        path: Routed {
            client: "client",
            router: "router",
            server: "host",
            server_if: "eth0",
            client_addr: Ipv4Addr::new(10, 1, 0, 1),
            router_client_addr: Ipv4Addr::new(10, 1, 0, 254),
            router_server_addr: Ipv4Addr::new(10, 99, 0, 1),
            server_addr: Ipv4Addr::new(10, 99, 0, 2),
            forwarding: true,
        },
        container: "ctr",
        bridge: "docker0",
        bridge_addr: Ipv4Addr::new(172, 17, 0, 1),
        bridge_len: 16,
        port: "veth0",
        container_addr: Ipv4Addr::new(172, 17, 0, 2),
        container_default_route: false,
        client_source: Some(Ipv4Addr::new(172, 17, 5, 5)),
        rp_filter: 1,
        host_forwarding: false,
    }
    .build(&mut lab)
    .unwrap();
    lab
}

/// Three SYNs (connect retries) from the client to the host's port 8080.
pub fn syn(lab: &Netlab) {
    let _ = lab.try_exec(
        "client",
        "timeout 2 bash -c 'echo > /dev/tcp/10.99.0.2/8080' 2>/dev/null",
    );
}

/// Two threads in netns `ns` sending 16-byte datagrams to `dst` as fast
/// as they can.
pub fn flood(ns: &str, dst: &str) -> Flood {
    flood_at(ns, dst, 2, None)
}

/// `threads` senders in netns `ns`, each at most `pps` datagrams a second
/// (as fast as it can when None).
pub fn flood_at(ns: &str, dst: &str, threads: usize, pps: Option<u64>) -> Flood {
    let opts = FloodOpts {
        threads,
        pps,
        ..FloodOpts::default()
    };
    netlab::flood(&netlab::netns_path(ns), dst.parse().unwrap(), opts).unwrap()
}

/// Where a test's `diagnose -w` recording goes: a temp file named after
/// the test's prefix, so that parallel tests never share one.
pub fn recording(test: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}rec.jsonl", prefix(test)))
}

/// With `TRACER_KEEP_RECORDING=DIR`, copies a test's recording there as
/// `name`: how the recordings under tracer/tests/recordings/ are made.
pub fn keep_recording(rec: &std::path::Path, name: &str) {
    if let Some(dir) = std::env::var_os("TRACER_KEEP_RECORDING") {
        std::fs::copy(rec, std::path::Path::new(&dir).join(name)).unwrap();
    }
}

/// What `tracer diagnose --replay PATH -o json` printed (PATH a file or a
/// flight recorder's directory), with its exit status and stderr.
pub struct Replayed {
    pub status: Option<i32>,
    pub lines: Vec<Value>,
    pub stderr: String,
}

pub fn replay(path: &std::path::Path) -> Replayed {
    let out = Command::new(tracer_bin())
        .args(["diagnose", "--replay"])
        .arg(path)
        .args(["-o", "json"])
        .output()
        .unwrap();
    Replayed {
        status: out.status.code(),
        lines: String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub use netlab::{free_port, http_get};

/// The verdict lines of `kind`.
pub fn verdicts<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    all_verdicts(lines)
        .into_iter()
        .filter(|v| v["kind"] == kind)
        .collect()
}

/// Every verdict line, of any kind.
pub fn all_verdicts(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|v| v["type"] == "verdict").collect()
}

/// Starts `tracer diagnose` on the lab's namespaces `ns`, recording to
/// `rec` (`-w`) when given.
pub fn diagnose_on(lab: &Netlab, ns: &[&str], rec: Option<&std::path::Path>) -> TracerRun {
    let mut args = vec!["diagnose".to_string()];
    for n in ns {
        args.push("--netns".into());
        args.push(lab.name(n));
    }
    if let Some(r) = rec {
        args.push("-w".into());
        args.push(r.to_string_lossy().into_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start(&args)
}

/// Pastes the first fix of verdict `v` as a user would: every command of
/// `fix_commands[0]` through `bash -c`, each of which must succeed and be
/// one the fix's text shows (the PMTU fix shows its FORWARD twin as "(and
/// in FORWARD)"). Fix 1 must not be advice only.
pub fn apply_first_fix(v: &Value) {
    let text = v["fix"][0].as_str().unwrap();
    let cmds = v["fix_commands"][0].as_array().unwrap();
    assert!(!cmds.is_empty(), "fix 1 is advice only: {v}");
    for c in cmds {
        let c = c.as_str().unwrap();
        let shown = text.contains(c) || text.contains(&c.replace(" -I FORWARD ", " -I OUTPUT "));
        assert!(shown, "{c:?} is not what fix 1 shows: {text:?}");
        let out = Command::new("bash").args(["-c", c]).output().unwrap();
        assert!(
            out.status.success(),
            "{c}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Asserts that `lines` hold no verdict at all (a control, or a run after
/// the fix), showing those there are.
pub fn assert_no_verdict(lines: &[Value]) {
    let said = all_verdicts(lines);
    assert!(said.is_empty(), "{said:#?}");
}
