//! `socket_buffer_full` against the real kernel: a UDP socket that never
//! reads, with a small receive buffer, flooded from another namespace
//! over IPv4 and IPv6; the same socket drained by its application (the
//! control) and given a big SO_RCVBUF (the fix tracer suggests, applied
//! by the application: net.core.rmem_max is host-wide on this kernel and
//! read-only in a namespace, so the lab never changes it).

use serde_json::Value;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tracer_tests::{keep_recording, prefix, recording, replay, start, Netlab};

extern "C" {
    fn setsockopt(fd: i32, level: i32, name: i32, val: *const u8, len: u32) -> i32;
}

const SOL_SOCKET: i32 = 1;
const SO_RCVBUF: i32 = 8;

/// A UDP socket bound in `ns` with SO_RCVBUF `rcvbuf` (the kernel
/// doubles it, and caps it at net.core.rmem_max).
fn receiver(ns: &str, addr: &str, rcvbuf: u32) -> UdpSocket {
    let addr: SocketAddr = addr.parse().unwrap();
    netlab::in_netns(ns, move || {
        let s = UdpSocket::bind(addr).unwrap();
        let v = rcvbuf.to_ne_bytes();
        let rc = unsafe { setsockopt(s.as_raw_fd(), SOL_SOCKET, SO_RCVBUF, v.as_ptr(), 4) };
        assert_eq!(rc, 0, "SO_RCVBUF");
        s
    })
    .join()
    .unwrap()
}

/// Reads `s` until stopped: an application that keeps up. `got` counts
/// what it read, so a sender can wait for each datagram to be read.
struct Drain {
    stop: Arc<AtomicBool>,
    got: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

fn drain(s: UdpSocket) -> Drain {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicU64::new(0));
    let (st, g) = (stop.clone(), got.clone());
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !st.load(Ordering::Relaxed) {
            if s.recv(&mut buf).is_ok() {
                g.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Drain {
        stop,
        got,
        thread: Some(thread),
    }
}

impl Drain {
    /// Waits (up to 2 s) until `n` datagrams were read.
    fn wait_for(&self, n: u64) {
        let t0 = std::time::Instant::now();
        while self.got.load(Ordering::Relaxed) < n {
            assert!(t0.elapsed() < Duration::from_secs(2), "reader stuck");
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.got.load(Ordering::Relaxed)
    }
}

/// `n` 200-byte datagrams from `ns` to `dst`, a burst of 50 every 20 ms:
/// far more than a few KiB of buffer holds, nothing a reader misses.
fn send(ns: &str, dst: &str, n: usize) {
    let dst: SocketAddr = dst.parse().unwrap();
    netlab::in_netns(ns, move || {
        let any = if dst.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
        let s = UdpSocket::bind(any).unwrap();
        let buf = [7u8; 200];
        for i in 0..n {
            s.send_to(&buf, dst).unwrap();
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    })
    .join()
    .unwrap();
}

/// The receive-buffer errors counted in `ns` (IPv4 + IPv6).
fn rcvbuf_errors(lab: &Netlab, ns: &str) -> u64 {
    let out = lab
        .exec(
            ns,
            "awk '/^Udp:/ {n++} /^Udp:/ && n==2 {print $6} /^Udp6RcvbufErrors/ {print $2}' /proc/net/snmp /proc/net/snmp6",
        )
        .unwrap();
    out.split_whitespace()
        .map(|w| w.parse::<u64>().unwrap())
        .sum()
}

/// tx (10.61.37.1, fd61:37::1) -- rx (10.61.37.2, fd61:37::2), one veth.
fn lab(test: &str) -> Netlab {
    let mut lab = Netlab::new(&prefix(test)).unwrap();
    lab.ns("tx").unwrap();
    lab.ns("rx").unwrap();
    lab.veth("tx", "up0", "rx", "dn0").unwrap();
    for (ns, dev, n) in [("tx", "up0", 1), ("rx", "dn0", 2)] {
        lab.exec(
            ns,
            &format!(
                "sysctl -qw net.ipv6.conf.{dev}.accept_dad=0 && \
                 ip addr add 10.61.37.{n}/24 dev {dev} && \
                 ip addr add fd61:37::{n}/64 dev {dev} nodad"
            ),
        )
        .unwrap();
    }
    lab
}

fn verdicts(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|v| v["type"] == "verdict").collect()
}

fn full(lines: &[Value]) -> Vec<&Value> {
    verdicts(lines)
        .into_iter()
        .filter(|v| v["kind"] == "socket_buffer_full")
        .collect()
}

#[test]
fn a_socket_that_never_reads_is_socket_buffer_full_v4_and_v6() {
    let lab = lab("sbuf");
    let rec = recording("sbuf");
    let _ = std::fs::remove_file(&rec);
    let v4 = receiver(&lab.name("rx"), "10.61.37.2:6389", 2048);
    let v6 = receiver(&lab.name("rx"), "[fd61:37::2]:6390", 2048);
    // Overflowing before tracer starts too, as a socket that has been
    // falling behind for a while: however early tracer reads the
    // namespace, the socket has dropped and its holder is looked up.
    send(&lab.name("tx"), "10.61.37.2:6389", 20);
    send(&lab.name("tx"), "[fd61:37::2]:6390", 20);
    let run = start(&[
        "diagnose",
        "--netns",
        &lab.name("rx"),
        "-w",
        rec.to_str().unwrap(),
    ]);
    // A few datagrams past what the buffer holds: the recording stays small.
    send(&lab.name("tx"), "10.61.37.2:6389", 20);
    send(&lab.name("tx"), "[fd61:37::2]:6390", 20);
    std::thread::sleep(Duration::from_millis(800));
    let lines = run.stop();
    drop((v4, v6));
    keep_recording(&rec, "socket-buffer-full.jsonl");
    let got = full(&lines);
    assert_eq!(got.len(), 2, "{:#?}", verdicts(&lines));
    for (v, addr, port) in [(got[0], "10.61.37.2", 6389), (got[1], "fd61:37::2", 6390)] {
        assert_eq!(v["tier"], "proven");
        assert_eq!(v["fault"], true);
        let e = &v["evidence"];
        assert_eq!(e["reason"], "SOCKET_RCVBUFF");
        assert_eq!(e["proto"], "udp");
        assert_eq!(e["local_addr"], addr);
        assert_eq!(e["local_port"], port);
        assert!(e["rmem_max"].as_u64().unwrap() > 0, "{e}");
        // This test process holds both sockets.
        assert_eq!(e["pid"], std::process::id(), "{e}");
        assert!(e["socket_drops"].as_u64().unwrap() > 0, "{e}");
        let fix: Vec<&str> = v["fix"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        let ss = format!(
            "ip netns exec {} ss -uanpm 'sport = :{port}'",
            lab.name("rx")
        );
        assert!(fix.iter().any(|f| f.ends_with(&ss)), "{fix:#?}");
        assert!(
            fix.iter()
                .any(|f| f.contains("sysctl -w net.core.rmem_max=")),
            "{fix:#?}"
        );
    }
    assert!(rcvbuf_errors(&lab, "rx") >= 40);
    // The recording proves the same.
    let replayed = replay(&rec).lines;
    let _ = std::fs::remove_file(&rec);
    assert_eq!(full(&replayed).len(), 2, "{replayed:#?}");
}

/// The control: the same small buffer, read as fast as it fills.
#[test]
fn a_socket_that_is_drained_gives_no_verdict() {
    let lab = lab("sdrain");
    let v4 = drain(receiver(&lab.name("rx"), "10.61.37.2:6389", 2048));
    let v6 = drain(receiver(&lab.name("rx"), "[fd61:37::2]:6390", 2048));
    let run = start(&["diagnose", "--netns", &lab.name("rx")]);
    // Lock-step: each datagram is read before the next is sent, so the
    // buffer never holds more than one.
    let (s4, s6) = netlab::in_netns(&lab.name("tx"), || {
        (
            UdpSocket::bind("0.0.0.0:0").unwrap(),
            UdpSocket::bind("[::]:0").unwrap(),
        )
    })
    .join()
    .unwrap();
    for i in 1..=200 {
        s4.send_to(&[1u8; 200], "10.61.37.2:6389").unwrap();
        s6.send_to(&[1u8; 200], "[fd61:37::2]:6390").unwrap();
        v4.wait_for(i);
        v6.wait_for(i);
    }
    std::thread::sleep(Duration::from_millis(500));
    let lines = run.stop();
    let (r4, r6) = (v4.stop(), v6.stop());
    assert_eq!((r4, r6), (200, 200));
    assert!(full(&lines).is_empty(), "{:#?}", verdicts(&lines));
    assert_eq!(rcvbuf_errors(&lab, "rx"), 0);
}

/// The fix, applied by the application: the same burst into a socket that
/// still never reads but asked for a 1 MiB SO_RCVBUF (room left under the
/// host's net.core.rmem_max) loses nothing.
#[test]
fn a_bigger_so_rcvbuf_stops_the_drops() {
    let lab = lab("sfix");
    let v4 = receiver(&lab.name("rx"), "10.61.37.2:6389", 1 << 20);
    let v6 = receiver(&lab.name("rx"), "[fd61:37::2]:6390", 1 << 20);
    let run = start(&["diagnose", "--netns", &lab.name("rx")]);
    send(&lab.name("tx"), "10.61.37.2:6389", 400);
    send(&lab.name("tx"), "[fd61:37::2]:6390", 400);
    std::thread::sleep(Duration::from_millis(500));
    let lines = run.stop();
    drop((v4, v6));
    assert!(full(&lines).is_empty(), "{:#?}", verdicts(&lines));
    assert_eq!(rcvbuf_errors(&lab, "rx"), 0);
}
