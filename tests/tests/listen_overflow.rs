//! `listen_overflow` against the real kernel: a listener that never
//! accepts, in a namespace whose net.core.somaxconn (per namespace) caps
//! its backlog at 3, and a client opening 12 connections. The kernel
//! turns the extra ones away and frees them without a drop; tracer sees
//! TcpExt ListenOverflows rise. The printed fix (somaxconn) is applied
//! and the listener restarted: the same 12 connections fit and a second
//! run is silent. The control: a listener that accepts stays silent.

use serde_json::Value;
use std::process::{Child, Command};
use std::time::Duration;
use tracer_tests::{
    all_verdicts, apply_first_fix, assert_no_verdict, diagnose_on, keep_recording, prefix,
    recording, replay, Netlab,
};

/// The server's address: IPv4 or IPv6.
const V4: &str = "10.166.52.2";
const V6: &str = "fd5e:52::2";

/// cli (10.166.52.1, fd5e:52::1) -- srv (10.166.52.2, fd5e:52::2),
/// somaxconn 3 in srv.
fn lab(test: &str) -> Netlab {
    let mut lab = Netlab::new(&prefix(test)).unwrap();
    lab.ns("cli").unwrap();
    lab.ns("srv").unwrap();
    lab.veth("cli", "k0", "srv", "k1").unwrap();
    lab.exec(
        "cli",
        "ip addr add 10.166.52.1/24 dev k0 && ip addr add fd5e:52::1/64 dev k0 nodad",
    )
    .unwrap();
    lab.exec(
        "srv",
        "ip addr add 10.166.52.2/24 dev k1 && ip addr add fd5e:52::2/64 dev k1 nodad && \
         sysctl -qw net.core.somaxconn=3",
    )
    .unwrap();
    lab
}

/// Python's address family for `addr`.
fn family(addr: &str) -> &'static str {
    if addr.contains(':') {
        "socket.AF_INET6"
    } else {
        "socket.AF_INET"
    }
}

/// A python listener on `addr`:8517 asking for a 4096 backlog,
/// accepting (and closing) connections only if `accepts`.
fn listener(lab: &Netlab, accepts: bool, addr: &str) -> Child {
    let body = if accepts {
        "held = []\nwhile True: held.append(s.accept()[0])"
    } else {
        "time.sleep(60)"
    };
    let py = format!(
        "import socket, time\n\
         s = socket.socket({fam}); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('{addr}', 8517)); s.listen(4096)\n{body}\n",
        fam = family(addr)
    );
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.name("srv"), "python3", "-c", &py])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    child
}

/// 12 connections from cli to `addr`:8517, opened at once or `gap_ms`
/// apart, held 1 s; how many completed.
fn connect_burst(lab: &Netlab, gap_ms: u32, addr: &str) -> u32 {
    let py = "import socket, time\n\
              def up(c):\n\
              \x20   try: return c.getpeername() is not None\n\
              \x20   except OSError: return False\n\
              cs = [socket.socket(FAM) for _ in range(12)]\n\
              for c in cs: c.setblocking(False); c.connect_ex((ADDR, 8517)); time.sleep(GAP)\n\
              time.sleep(1)\n\
              print(sum(1 for c in cs if up(c)))\n";
    let out = lab
        .exec(
            "cli",
            &format!(
                "python3 -c \"import socket\nGAP = {}\nFAM = {}\nADDR = '{addr}'\n{py}\" 2>/dev/null || echo 0",
                f64::from(gap_ms) / 1000.0,
                family(addr)
            ),
        )
        .unwrap();
    out.trim().parse().unwrap_or(0)
}

fn overflows(lab: &Netlab) -> u64 {
    lab.exec(
        "srv",
        "nstat -az TcpExtListenOverflows | awk 'NR>1 {print $2}'",
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap()
}

/// The topology (and its counters) is re-read every 5 s: a run lasts past that.
const SETTLE: Duration = Duration::from_millis(6500);

/// A listener on `addr` that never accepts: proven, named, and fix 1
/// pasted lets the same burst in silently. `keep`: the recording's name.
fn never_accepts(test: &str, addr: &str, keep: Option<&str>) {
    let lab = lab(test);
    let rec = recording(test);
    let _ = std::fs::remove_file(&rec);
    let mut srv = listener(&lab, false, addr);
    let run = diagnose_on(&lab, &["srv"], Some(&rec));
    let before = overflows(&lab);
    connect_burst(&lab, 0, addr);
    std::thread::sleep(SETTLE);
    let lines = run.stop();
    let lost = overflows(&lab) - before;
    let _ = srv.kill();
    let _ = srv.wait();
    if let Some(name) = keep {
        keep_recording(&rec, name);
    }
    assert!(lost > 0, "the kernel counted no overflow");
    assert!(
        !lines.iter().any(|v| v["type"] == "drop"),
        "an overflow is no drop"
    );
    let got = all_verdicts(&lines);
    assert_eq!(got.len(), 1, "{got:#?}");
    let v = got[0];
    assert_eq!(v["kind"], "listen_overflow");
    assert_eq!(v["tier"], "proven");
    let e = &v["evidence"];
    assert_eq!(e["local_addr"], addr);
    assert_eq!(e["local_port"], 8517);
    assert_eq!(e["somaxconn"], 3);
    assert_eq!(e["backlog"], 3);
    assert_eq!(e["accept_queue"], 4);
    assert_eq!(e["comm"], "python3");
    assert!(e["overflows"].as_u64().unwrap() > 0, "{e}");
    // The recording proves the same, with no drop in it.
    let replayed = replay(&rec).lines;
    let _ = std::fs::remove_file(&rec);
    let kinds: Vec<&Value> = all_verdicts(&replayed).iter().map(|v| &v["kind"]).collect();
    assert_eq!(kinds, ["listen_overflow"]);

    // somaxconn binds, so it is fix 1: pasted, then the listener restarted.
    let cmds = v["fix_commands"][0].as_array().unwrap();
    assert!(cmds[0]
        .as_str()
        .unwrap()
        .contains("sysctl -w net.core.somaxconn="));
    apply_first_fix(v);
    assert_eq!(burst_is_silent(&lab, false, 0, addr), 12);
}

#[test]
fn a_listener_that_never_accepts_is_listen_overflow_and_somaxconn_heals() {
    never_accepts("lsnfull", V4, Some("listen-overflow.jsonl"));
}

#[test]
fn an_ipv6_listener_that_never_accepts_is_listen_overflow_too() {
    never_accepts("lsnfull6", V6, None);
}

/// A listener (accepting or not) and a burst of 12 connections `gap_ms`
/// apart under diagnose: no overflow is counted and nothing is said.
/// Returns how many connections completed.
fn burst_is_silent(lab: &Netlab, accepts: bool, gap_ms: u32, addr: &str) -> u32 {
    let mut srv = listener(lab, accepts, addr);
    let run = diagnose_on(lab, &["srv"], None);
    let before = overflows(lab);
    let done = connect_burst(lab, gap_ms, addr);
    std::thread::sleep(SETTLE);
    let lines = run.stop();
    let _ = srv.kill();
    let _ = srv.wait();
    assert_eq!(overflows(lab), before);
    assert_no_verdict(&lines);
    done
}

/// The control: the same cap, a listener that accepts what comes.
#[test]
fn a_listener_that_accepts_gives_no_verdict() {
    let lab = lab("lsnok");
    // Paced as the listener keeps up: its queue never fills.
    assert_eq!(burst_is_silent(&lab, true, 50, V4), 12);
    assert_eq!(burst_is_silent(&lab, true, 50, V6), 12);
}
