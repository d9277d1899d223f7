//! `bridge_port_blocked` against the real kernel: a bridge in a switch
//! namespace whose port towards one host is set to STP state learning by
//! hand (STP off). The host behind it can send nothing through: its ARP
//! dies at the port (`BRIDGE_INGRESS_STP_STATE`), and the other host sees
//! a silent neighbour, which must not be blamed (issue 21, 8b). The fix
//! tracer prints is applied, then traffic flows and a second run is
//! silent; the control (every port forwarding) is silent too.

use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use tracer_tests::{
    all_verdicts, apply_first_fix, assert_no_verdict, diagnose_on, keep_recording, prefix,
    recording, replay, Netlab,
};

/// left (10.142.9.11) -- [lp | br "lan5" | rp] -- right (10.142.9.12),
/// IPv6 fd42:9::11 and ::12 on the same wires.
fn lab(test: &str) -> Netlab {
    let mut lab = Netlab::new(&prefix(test)).unwrap();
    for ns in ["left", "right", "sw"] {
        lab.ns(ns).unwrap();
    }
    lab.exec(
        "sw",
        "ip link add lan5 type bridge stp_state 0 forward_delay 0 && ip link set lan5 up",
    )
    .unwrap();
    for (ns, dev, port, n) in [("left", "wl0", "lp", 11), ("right", "wr0", "rp", 12)] {
        lab.veth(ns, dev, "sw", port).unwrap();
        lab.exec("sw", &format!("ip link set {port} master lan5 up"))
            .unwrap();
        lab.exec(
            ns,
            &format!(
                "sysctl -qw net.ipv6.conf.{dev}.accept_dad=0 && \
                 ip addr add 10.142.9.{n}/24 dev {dev} && \
                 ip addr add fd42:9::{n}/64 dev {dev} nodad && ip link set {dev} up"
            ),
        )
        .unwrap();
    }
    lab
}

/// Pings from `ns` to `dst` (`count`, 0.3 s apart); true if any came back.
fn ping(lab: &Netlab, ns: &str, dst: &str, count: u32) -> bool {
    lab.try_exec(ns, &format!("ping -c {count} -i 0.3 -W 1 {dst}"))
        .unwrap()
        .status
        .success()
}

/// Both hosts ping each other at once, over IPv4 and IPv6, for about 4 s:
/// long enough for the left host's ARP/ND to give up (NEIGH_FAILED).
/// Returns whether each direction got replies.
fn cross_pings(lab: &Netlab) -> [bool; 4] {
    std::thread::scope(|s| {
        let a = s.spawn(|| ping(lab, "left", "10.142.9.12", 12));
        let b = s.spawn(|| ping(lab, "right", "10.142.9.11", 12));
        let c = s.spawn(|| ping(lab, "left", "fd42:9::12", 12));
        let d = s.spawn(|| ping(lab, "right", "fd42:9::11", 12));
        [a, b, c, d].map(|h| h.join().unwrap())
    })
}

/// diagnose on the three namespaces, recording to `rec` when given.
fn diagnose(lab: &Netlab, rec: Option<&Path>) -> tracer_tests::TracerRun {
    diagnose_on(lab, &["left", "sw", "right"], rec)
}

#[test]
fn a_port_left_learning_is_bridge_port_blocked_not_a_silent_neighbour() {
    let lab = lab("brblk");
    lab.exec("sw", "bridge link set dev rp state 2").unwrap();
    let rec = recording("brblk");
    let _ = std::fs::remove_file(&rec);
    let run = diagnose(&lab, Some(&rec));
    assert_eq!(cross_pings(&lab), [false; 4]);
    std::thread::sleep(Duration::from_millis(500));
    let lines = run.stop();
    keep_recording(&rec, "bridge-port-blocked.jsonl");
    // The left host's neighbour resolution failed: what used to be blamed.
    let failed = lines
        .iter()
        .filter(|v| v["type"] == "drop" && v["reason"] == "NEIGH_FAILED")
        .count();
    assert!(
        failed >= 1,
        "no NEIGH_FAILED seen: {:#?}",
        all_verdicts(&lines)
    );
    let got = all_verdicts(&lines);
    assert_eq!(got.len(), 1, "{got:#?}");
    let v = got[0];
    assert_eq!(v["kind"], "bridge_port_blocked");
    assert_eq!(v["tier"], "proven");
    assert_eq!(v["netns_name"], lab.name("sw"));
    let e = &v["evidence"];
    assert_eq!(e["reason"], "BRIDGE_INGRESS_STP_STATE");
    assert_eq!(e["bridge"], "lan5");
    assert_eq!(e["port"], "rp");
    assert_eq!(e["stp_state"], "learning");
    assert_eq!(e["bridge_stp"], 0);
    // The recording proves the same.
    let replayed = replay(&rec).lines;
    let _ = std::fs::remove_file(&rec);
    let kinds: Vec<&Value> = all_verdicts(&replayed).iter().map(|v| &v["kind"]).collect();
    assert_eq!(kinds, ["bridge_port_blocked"]);

    // The fix, pasted as printed: traffic flows and nothing is proven.
    let cmds = v["fix_commands"][0].as_array().unwrap();
    assert_eq!(
        cmds[0],
        format!(
            "ip netns exec {} bridge link set dev rp state 3",
            lab.name("sw")
        )
    );
    apply_first_fix(v);
    let run = diagnose(&lab, None);
    assert_eq!(cross_pings(&lab), [true; 4]);
    let lines = run.stop();
    assert_no_verdict(&lines);
}

/// The control: the same bridge with both ports forwarding.
#[test]
fn a_bridge_whose_ports_forward_gives_no_verdict() {
    let lab = lab("brfwd");
    let run = diagnose(&lab, None);
    assert_eq!(cross_pings(&lab), [true; 4]);
    let lines = run.stop();
    assert_no_verdict(&lines);
    assert!(!lines
        .iter()
        .any(|v| v["type"] == "drop" && v["reason"] == "BRIDGE_INGRESS_STP_STATE"));
}
