//! `diagnose`'s per-packet programs cost a call per packet even when they
//! return at once, so they are parked while they can find nothing: the
//! SYN/MSS check while the watched devices share one MTU, the route-lookup
//! programs while the host is busy and nothing drops. Each comes back when
//! it is needed.

use serde_json::Value;
use std::time::Duration;
use tracer_tests::{flood_at, is_drop, routed_lab, rpf_lab, start, syn};

/// client -- router -- server, every veth at 1500: parked. Then the
/// router's uplink to the server drops to 1400, as an overlay's would: the
/// next rescan attaches the check, and the client's SYN (MSS 1460, sized
/// for its 1500 device) is flagged where it leaves by the 1400 device.
#[test]
fn the_syn_check_parks_on_one_mtu_and_returns_when_mtus_mix() {
    let lab = routed_lab("syngate");
    let run = start(&["diagnose", "--netns", &lab.name("router")]);
    // The first scan ends in milliseconds; let the park be seen for a while.
    std::thread::sleep(Duration::from_millis(1500));
    lab.exec("router", "ip link set eth1 mtu 1400").unwrap();
    // One rescan (2 s) and a tick later the check is back.
    std::thread::sleep(Duration::from_millis(3000));
    let _ = lab.try_exec(
        "client",
        "timeout 2 bash -c 'echo > /dev/tcp/10.2.0.1/8080' 2>/dev/null",
    );
    let flagged = |v: &Value| v["type"] == "syn" && v["dport"] == 8080;
    run.wait_for(Duration::from_secs(5), flagged);
    let lines = run.stop();
    let summary = lines.last().unwrap();
    let parked = summary["syn_check_parked_ms"].as_u64().unwrap_or(0);
    assert!(
        (1000..4500).contains(&parked),
        "parked while all MTUs were 1500, and only then: {summary}"
    );
    let syn = lines
        .iter()
        .find(|v| flagged(v))
        .unwrap_or_else(|| panic!("the SYN through the 1400 device was not flagged: {summary}"));
    assert_eq!(syn["ifname"], "eth1", "{syn}");
    assert_eq!(syn["mtu"], 1400, "{syn}");
    assert_eq!(syn["mss"], 1460, "{syn}");
}

/// A busy host (a flood forwarded between two other namespaces, about
/// 50k packets/s received) and nothing dropping in the watched namespace
/// for longer than the route gate's 5 s: the route programs park. Then
/// strict rp_filter drops a SYN from 172.17.5.5: the verdict comes at that
/// first drop all the same (its reverse route from the routing table), and
/// the retransmitted SYN's drop is joined to the kernel's own lookup again.
#[test]
fn route_lookups_park_on_a_busy_quiet_host_and_a_drop_brings_them_back() {
    let lab = rpf_lab("routegate");
    let busy = routed_lab("rgbusy");
    let flood = flood_at(&busy.name("client"), "10.2.0.1:9", 1, Some(25_000));
    let run = start(&["diagnose", "--netns", &lab.name("host")]);
    std::thread::sleep(Duration::from_millis(7500));
    syn(&lab);
    let lines = run.stop();
    flood.stop();
    let summary = lines.last().unwrap();
    let parked = summary["routes_parked_ms"].as_u64().unwrap_or(0);
    assert!(
        (500..7500).contains(&parked),
        "parked after 5 s of quiet, until the first drop: {summary}"
    );
    let drops: Vec<&Value> = lines.iter().filter(|v| is_drop(v, "IP_RPFILTER")).collect();
    assert!(
        drops.len() >= 2,
        "the SYN and its retransmission: {summary}"
    );
    assert!(
        drops[0]["reverse_route"].is_null(),
        "the first drop came while the lookups were parked: {}",
        drops[0]
    );
    let joined = drops[1..]
        .iter()
        .find(|d| !d["reverse_route"].is_null())
        .unwrap_or_else(|| panic!("no later drop joined to a traced lookup: {drops:#?}"));
    assert_eq!(joined["reverse_route"]["ifname"], "docker0", "{joined}");
    let v = lines
        .iter()
        .find(|v| v["type"] == "verdict" && v["kind"] == "rpfilter_route_conflict")
        .unwrap_or_else(|| panic!("no verdict: {summary}"));
    assert_eq!(v["evidence"]["reverse_route_ifname"], "docker0", "{v}");
    assert_eq!(v["evidence"]["reverse_route_from_kernel"], false, "{v}");
}
