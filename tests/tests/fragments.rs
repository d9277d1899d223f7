//! `fragment_reassembly_timeout` against the real kernel: a UDP datagram
//! of 2600 bytes, fragmented by its sender, crosses a router whose
//! firewall drops every fragment after the first (`-f`). The receiver
//! holds the first and times out (`ipfrag_time` 1 s): the verdict names
//! the flow and the router's drop as the cause. Without the rule (the
//! control), the datagram is reassembled and nothing is proven.

use netlab::Routed;
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tracer_tests::{
    all_verdicts, apply_first_fix, assert_no_verdict, diagnose_on, keep_recording, prefix,
    recording, replay, verdicts, Netlab,
};

/// snd 10.57.1.7 -- gw (10.57.1.254 | 10.57.2.254) -- rcv 10.57.2.9.
fn lab(test: &str, drop_fragments: bool) -> Netlab {
    let mut lab = Netlab::new(&prefix(test)).unwrap();
    Routed {
        client: "snd",
        router: "gw",
        server: "rcv",
        server_if: "r0",
        client_addr: Ipv4Addr::new(10, 57, 1, 7),
        router_client_addr: Ipv4Addr::new(10, 57, 1, 254),
        router_server_addr: Ipv4Addr::new(10, 57, 2, 254),
        server_addr: Ipv4Addr::new(10, 57, 2, 9),
        forwarding: true,
    }
    .build(&mut lab)
    .unwrap();
    if drop_fragments {
        lab.exec("gw", "iptables -A FORWARD -f -j DROP").unwrap();
    }
    lab.exec("rcv", "sysctl -qw net.ipv4.ipfrag_time=1")
        .unwrap();
    lab
}

/// One 2600-byte datagram to rcv:4127 (bash's /dev/udp: no tool needed).
fn send(lab: &Netlab) {
    lab.exec(
        "snd",
        "bash -c \"head -c 2600 /dev/zero | tr '\\\\0' q > /dev/udp/10.57.2.9/4127\"",
    )
    .unwrap();
}

/// diagnose on the router and the receiver, recording to `rec` when given.
fn diagnose(lab: &Netlab, rec: Option<&Path>) -> tracer_tests::TracerRun {
    diagnose_on(lab, &["gw", "rcv"], rec)
}

/// Sends with `send` until a reassembly timeout is proven, twice at
/// most: on a loaded host (the suite runs two lanes at once) the first
/// datagram's timeout was once not seen within 10 s.
fn sent_until_timed_out(run: &tracer_tests::TracerRun, send: impl Fn()) -> Option<Value> {
    for _ in 0..2 {
        send();
        let got = run.wait_for(Duration::from_secs(10), |v| {
            v["type"] == "verdict" && v["kind"] == "fragment_reassembly_timeout"
        });
        if got.is_some() {
            return got;
        }
    }
    None
}

#[test]
fn a_firewall_dropping_fragments_is_named_by_the_reassembly_timeout() {
    let lab = lab("fragto", true);
    let rec = recording("fragto");
    let _ = std::fs::remove_file(&rec);
    let run = diagnose(&lab, Some(&rec));
    let got = sent_until_timed_out(&run, || send(&lab));
    let lines = run.stop();
    keep_recording(&rec, "fragment-timeout.jsonl");
    let v = got.unwrap_or_else(|| panic!("{:#?}", all_verdicts(&lines)));
    assert_eq!(v["tier"], "proven");
    assert_eq!(v["netns_name"], lab.name("rcv"));
    let e = &v["evidence"];
    assert_eq!(e["reason"], "FRAG_REASM_TIMEOUT");
    assert_eq!(e["src"], "10.57.1.7");
    assert_eq!(e["dst"], "10.57.2.9");
    assert_eq!(e["dport"], 4127);
    let at = &e["fragment_dropped"];
    assert_eq!(at["netns"], lab.name("gw"), "{e}");
    assert_eq!(at["reason"], "NETFILTER_DROP", "{e}");
    // The recording proves the same.
    let replayed = replay(&rec).lines;
    let _ = std::fs::remove_file(&rec);
    assert!(!verdicts(&replayed, "fragment_reassembly_timeout").is_empty());

    // Fix 1 names gw's rule and removes it: pasted as printed, the
    // datagram is reassembled and read, and nothing is proven.
    assert_eq!(at["rule"]["rule"], "-A FORWARD -f -j DROP", "{e}");
    let cmds = v["fix_commands"][0].as_array().unwrap();
    assert_eq!(
        cmds[0],
        format!(
            "ip netns exec {} iptables-nft -t filter -D FORWARD 1",
            lab.name("gw")
        )
    );
    apply_first_fix(&v);
    let run = diagnose(&lab, None);
    assert_eq!(received(&lab), "2600");
    std::thread::sleep(Duration::from_millis(2000));
    let lines = run.stop();
    let faults: Vec<&Value> = all_verdicts(&lines)
        .into_iter()
        .filter(|v| v["fault"] == true)
        .collect();
    assert!(faults.is_empty(), "{faults:#?}");
}

/// The control: no firewall; the datagram is reassembled and read.
#[test]
fn fragments_that_all_arrive_give_no_verdict() {
    let lab = lab("fragok", false);
    let run = diagnose(&lab, None);
    assert_eq!(received(&lab), "2600");
    std::thread::sleep(Duration::from_millis(2000));
    let lines = run.stop();
    assert_no_verdict(&lines);
    let timeouts = lab
        .exec("rcv", "nstat -az IpReasmTimeout | awk 'NR>1 {print $2}'")
        .unwrap();
    assert_eq!(timeouts.trim(), "0");
}

/// Sends the datagram to a receiver in rcv and returns what it printed:
/// the size of the datagram it got, or nothing within 10 s.
fn received(lab: &Netlab) -> String {
    let rx = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.name("rcv"),
            "timeout",
            "10",
            "python3",
            "-c",
        ])
        .arg(
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.bind(('10.57.2.9', 4127))\nprint(len(s.recv(4096)))",
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Sent only once the receiver is bound (python may start slowly).
    let t0 = std::time::Instant::now();
    while lab
        .exec("rcv", "ss -Huln 'sport = :4127'")
        .unwrap()
        .trim()
        .is_empty()
    {
        assert!(t0.elapsed() < Duration::from_secs(8), "receiver not bound");
        std::thread::sleep(Duration::from_millis(50));
    }
    send(lab);
    let got = rx.wait_with_output().unwrap();
    String::from_utf8_lossy(&got.stdout).trim().to_string()
}

/// The same over IPv6: snd fd57:1::7 -- gw -- rcv fd57:2::9, gw's
/// ip6tables dropping every last fragment (`-m frag --fraglast`), rcv
/// giving up after `ip6frag_time` 1 s.
fn lab6(test: &str, drop_fragments: bool) -> Netlab {
    let lab = lab(test, false);
    lab.exec(
        "snd",
        "ip -6 addr add fd57:1::7/64 dev eth0 nodad && ip -6 route add default via fd57:1::fe",
    )
    .unwrap();
    lab.exec(
        "gw",
        "ip -6 addr add fd57:1::fe/64 dev eth0 nodad && ip -6 addr add fd57:2::fe/64 dev eth1 nodad && \
         sysctl -qw net.ipv6.conf.all.forwarding=1",
    )
    .unwrap();
    lab.exec(
        "rcv",
        "ip -6 addr add fd57:2::9/64 dev r0 nodad && ip -6 route add default via fd57:2::fe && \
         sysctl -qw net.ipv6.ip6frag_time=1",
    )
    .unwrap();
    if drop_fragments {
        lab.exec("gw", "ip6tables -A FORWARD -m frag --fraglast -j DROP")
            .unwrap();
    }
    lab
}

/// One 2600-byte datagram to [fd57:2::9]:4127, fragmented by the sender.
fn send6(lab: &Netlab) {
    lab.exec(
        "snd",
        "bash -c \"head -c 2600 /dev/zero | tr '\\\\0' q > /dev/udp/fd57:2::9/4127\"",
    )
    .unwrap();
}

#[test]
fn an_ipv6_firewall_dropping_fragments_is_named_by_the_reassembly_timeout() {
    let lab = lab6("fragto6", true);
    let run = diagnose(&lab, None);
    let got = sent_until_timed_out(&run, || send6(&lab));
    let lines = run.stop();
    let v = got.unwrap_or_else(|| panic!("{:#?}", all_verdicts(&lines)));
    assert_eq!(v["tier"], "proven");
    assert_eq!(v["netns_name"], lab.name("rcv"));
    let e = &v["evidence"];
    assert_eq!(e["src"], "fd57:1::7");
    assert_eq!(e["dst"], "fd57:2::9");
    let at = &e["fragment_dropped"];
    assert_eq!(at["netns"], lab.name("gw"), "{e}");
    assert_eq!(at["reason"], "NETFILTER_DROP", "{e}");
    assert_eq!(
        at["rule"]["rule"], "-A FORWARD -m frag --fraglast -j DROP",
        "{e}"
    );
    let timeouts = || {
        lab.exec("rcv", "nstat -az Ip6ReasmTimeout | awk 'NR>1 {print $2}'")
            .unwrap()
    };
    let before = timeouts();
    apply_first_fix(&v);
    let run = diagnose(&lab, None);
    send6(&lab);
    std::thread::sleep(Duration::from_millis(2500));
    let lines = run.stop();
    // Reassembled: the closed port's refusal is information, no fault.
    let faults: Vec<&Value> = all_verdicts(&lines)
        .into_iter()
        .filter(|v| v["fault"] == true)
        .collect();
    assert!(faults.is_empty(), "{faults:#?}");
    assert_eq!(timeouts(), before, "a datagram timed out after the fix");
}
