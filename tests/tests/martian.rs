//! `martian_source` and `martian_destination` against the real kernel:
//! edge (10.93.6.1) -- core (10.93.6.2), one veth. A DNAT in core to
//! 127.0.0.1 is a martian destination (`IP_LOCALNET`), fixed by pasting
//! the printed `route_localnet` command: the datagram then reaches the
//! service on loopback. A wrong SNAT in edge to core's own address is a
//! martian source (`IP_LOCAL_SOURCE`) with no sysctl offered. Plain
//! traffic (the control) gives neither. IPv4 only: both reasons and
//! both sysctls exist only for IPv4.

use serde_json::Value;
use std::net::UdpSocket;
use std::time::Duration;
use tracer_tests::{
    apply_first_fix, keep_recording, prefix, recording, replay, start, udp, Netlab,
};

/// A UDP socket bound to `addr` inside netns `ns`.
fn listen(ns: &str, addr: &'static str) -> UdpSocket {
    netlab::in_netns(ns, move || {
        let s = UdpSocket::bind(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        s
    })
    .join()
    .unwrap()
}

fn lab(test: &str) -> Netlab {
    let mut lab = Netlab::new(&prefix(test)).unwrap();
    lab.ns("edge").unwrap();
    lab.ns("core").unwrap();
    lab.veth("edge", "up0", "core", "dn0").unwrap();
    lab.exec("edge", "ip addr add 10.93.6.1/24 dev up0")
        .unwrap();
    lab.exec("core", "ip addr add 10.93.6.2/24 dev dn0")
        .unwrap();
    lab
}

fn verdicts<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|v| v["type"] == "verdict" && v["kind"] == kind)
        .collect()
}

fn martians(lines: &[Value]) -> Vec<&Value> {
    let mut v = verdicts(lines, "martian_source");
    v.extend(verdicts(lines, "martian_destination"));
    v
}

/// The command of a fix entry: what follows its last ": ".
fn fix_command(fix: &Value) -> String {
    fix.as_str()
        .unwrap()
        .rsplit(": ")
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn dnat_to_loopback_and_a_wrong_snat_are_martians_and_route_localnet_heals() {
    let lab = lab("mart");
    lab.exec(
        "core",
        "iptables -t nat -A PREROUTING -p udp --dport 5471 -j DNAT --to-destination 127.0.0.1:5471",
    )
    .unwrap();
    lab.exec(
        "edge",
        "iptables -t nat -A POSTROUTING -p udp --dport 5472 -j SNAT --to-source 10.93.6.2",
    )
    .unwrap();
    let service = listen(&lab.name("core"), "127.0.0.1:5471");
    let rec = recording("mart");
    let _ = std::fs::remove_file(&rec);
    let run = start(&[
        "diagnose",
        "--netns",
        &lab.name("core"),
        "-w",
        rec.to_str().unwrap(),
    ]);
    udp(&lab, "edge", "10.93.6.2", 5471);
    udp(&lab, "edge", "10.93.6.2", 5472);
    std::thread::sleep(Duration::from_millis(500));
    let lines = run.stop();
    keep_recording(&rec, "martian.jsonl");

    let dst = verdicts(&lines, "martian_destination");
    assert_eq!(dst.len(), 1, "{:#?}", martians(&lines));
    let d = dst[0];
    assert_eq!(d["tier"], "proven");
    assert_eq!(d["evidence"]["reason"], "IP_LOCALNET");
    assert_eq!(d["evidence"]["ingress_ifname"], "dn0");
    assert_eq!(d["evidence"]["src"], "10.93.6.1");
    assert_eq!(d["evidence"]["dst"], "127.0.0.1");
    assert_eq!(d["evidence"]["orig_dst"], "10.93.6.2");
    let cmd = fix_command(&d["fix"][0]);
    assert_eq!(
        cmd,
        format!(
            "ip netns exec {} sysctl -w net.ipv4.conf.dn0.route_localnet=1",
            lab.name("core")
        )
    );

    let src = verdicts(&lines, "martian_source");
    assert_eq!(src.len(), 1, "{:#?}", martians(&lines));
    let s = src[0];
    assert_eq!(s["evidence"]["reason"], "IP_LOCAL_SOURCE");
    assert_eq!(s["evidence"]["src"], "10.93.6.2");
    assert_eq!(s["evidence"]["source_held_by"], "dn0");
    // core's own address arriving on the device that holds it: a wrong
    // SNAT, not two devices wired together; no accept_local.
    assert!(
        !s["fix"].to_string().contains("accept_local"),
        "{}",
        s["fix"]
    );
    let replayed = replay(&rec).lines;
    let _ = std::fs::remove_file(&rec);
    assert_eq!(martians(&replayed).len(), 2, "{replayed:#?}");

    // Nothing got through before; the printed fix, pasted, lets the
    // DNATed datagram reach the service on loopback, with no martian.
    let mut buf = [0u8; 64];
    service
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert!(
        service.recv(&mut buf).is_err(),
        "got through before the fix"
    );
    assert_eq!(d["fix_commands"][0], serde_json::json!([cmd]));
    apply_first_fix(d);
    let run = start(&["diagnose", "--netns", &lab.name("core")]);
    udp(&lab, "edge", "10.93.6.2", 5471);
    std::thread::sleep(Duration::from_millis(300));
    let after = run.stop();
    service
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    assert!(
        service.recv(&mut buf).is_ok(),
        "nothing reached 127.0.0.1:5471"
    );
    assert!(martians(&after).is_empty(), "{:#?}", martians(&after));
}

/// The control: the same link, no NAT, a service on core's address.
#[test]
fn plain_traffic_is_no_martian() {
    let lab = lab("mctl");
    let service = listen(&lab.name("core"), "10.93.6.2:5471");
    let run = start(&["diagnose", "--netns", &lab.name("core")]);
    udp(&lab, "edge", "10.93.6.2", 5471);
    std::thread::sleep(Duration::from_millis(300));
    let lines = run.stop();
    let mut buf = [0u8; 64];
    assert!(service.recv(&mut buf).is_ok());
    assert!(martians(&lines).is_empty(), "{:#?}", martians(&lines));
}
