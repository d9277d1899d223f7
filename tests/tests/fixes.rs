//! Fixes tested by applying them: each lab breaks traffic one way, runs
//! `tracer diagnose -o json`, pastes the verdict's first fix
//! (`fix_commands[0]`) into `bash -c` as a user would, then shows the
//! traffic works and a second `diagnose` proves no fault. Names, subnets
//! and MTUs differ from the labs of `tracer lab`, so that no rule (and no
//! fix) keys on them.

use serde_json::Value;
use std::process::Command;
use std::time::Duration;
use tracer_tests::{apply_first_fix, diagnose_on, keep_recording, prefix, recording, Netlab};

/// Runs `tracer diagnose` on the lab namespaces `ns` while `traffic` runs,
/// plus the late evidence's time (neighbour failure, retransmissions), and
/// returns every JSON line.
fn diagnose_while(lab: &Netlab, ns: &[&str], traffic: impl FnOnce()) -> Vec<Value> {
    diagnose_to(lab, ns, None, traffic)
}

/// `diagnose_while`, recording to `rec` (`-w`) when given.
fn diagnose_to(
    lab: &Netlab,
    ns: &[&str],
    rec: Option<&std::path::Path>,
    traffic: impl FnOnce(),
) -> Vec<Value> {
    let run = diagnose_on(lab, ns, rec);
    traffic();
    std::thread::sleep(Duration::from_millis(3000));
    run.stop()
}

fn verdict<'a>(lines: &'a [Value], kind: &str) -> &'a Value {
    lines
        .iter()
        .find(|v| v["type"] == "verdict" && v["kind"] == kind && v["fault"] == true)
        .unwrap_or_else(|| {
            let got: Vec<&Value> = lines.iter().filter(|v| v["type"] == "verdict").collect();
            panic!("no proven {kind} verdict in {got:#?}")
        })
}

fn faults(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|v| v["type"] == "verdict" && v["fault"] == true)
        .collect()
}

/// Three pings from `ns` to `dst` with `size` bytes of payload; true
/// when at least one reply came back.
fn ping(lab: &Netlab, ns: &str, dst: &str, size: u32) -> bool {
    lab.try_exec(ns, &format!("ping -c 3 -i 0.2 -W 1 -s {size} {dst}"))
        .unwrap()
        .status
        .success()
}

/// The second run: the traffic works, and nothing is proven.
fn healed(lab: &Netlab, ns: &[&str], works: impl FnOnce() -> bool) {
    healed_but(lab, ns, works, None, &[])
}

/// `healed`, where a fault about the broken run's TCP connection (its
/// client port `old_port`) is not new: the server's socket outlives the
/// client and keeps retransmitting what the fix came too late for. Nor is
/// a firewall's drop of the ICMP those retransmissions draw, where the
/// broken run (`before`) named the same rule already: the fix applied was
/// another one (a clamp leaves the ICMP rule in place).
fn healed_but(
    lab: &Netlab,
    ns: &[&str],
    works: impl FnOnce() -> bool,
    old_port: Option<u16>,
    before: &[Value],
) {
    let mut ok = false;
    let lines = diagnose_while(lab, ns, || ok = works());
    assert!(ok, "the traffic still fails after the fix");
    // The same rule: its place and text, not its counters (which the
    // later run's drops have moved on).
    let same_rule = |a: &Value, b: &Value| {
        ["source", "table", "chain", "rule", "handle"]
            .iter()
            .all(|f| a["evidence"]["rule"][f] == b["evidence"]["rule"][f])
    };
    let named_before = |v: &Value| {
        faults(before).iter().any(|b| {
            b["kind"] == v["kind"] && b["netns_name"] == v["netns_name"] && same_rule(b, v)
        })
    };
    let new: Vec<&Value> = faults(&lines)
        .into_iter()
        .filter(|v| {
            let e = &v["evidence"];
            old_port.is_none_or(|p| e["sport"] != p && e["dport"] != p)
        })
        .filter(|v| !(old_port.is_some() && v["kind"] == "netfilter_drop" && named_before(v)))
        .collect();
    assert!(new.is_empty(), "{new:#?}");
}

/// A multi-homed server `srv` (10.66.0.9 on `up1`, through `gw` from the
/// client 10.61.3.7) whose route back to the client's network, `back`,
/// points out `side2` (towards `alt`) instead; rp_filter is `rp`.
fn multihomed_lab(test: &str, back: &str, rp: u8) -> Netlab {
    let mut lab = Netlab::new(&prefix(test)).unwrap();
    for n in ["cli", "gw", "srv", "alt"] {
        lab.ns(n).unwrap();
    }
    lab.veth("cli", "c0", "gw", "g0").unwrap();
    lab.veth("gw", "g1", "srv", "up1").unwrap();
    lab.veth("srv", "side2", "alt", "a0").unwrap();
    lab.exec("alt", "ip addr add 10.88.0.1/24 dev a0").unwrap();
    lab.exec(
        "cli",
        "ip addr add 10.61.3.7/24 dev c0 && ip route add default via 10.61.3.1",
    )
    .unwrap();
    lab.exec(
        "gw",
        "ip addr add 10.61.3.1/24 dev g0 && ip addr add 10.66.0.1/24 dev g1 && \
         sysctl -qw net.ipv4.ip_forward=1",
    )
    .unwrap();
    lab.exec(
        "srv",
        &format!(
            "ip addr add 10.66.0.9/24 dev up1 && ip route add default via 10.66.0.1 && \
             ip addr add 10.88.0.2/24 dev side2 && {back} && \
             sysctl -qw net.ipv4.conf.all.rp_filter={rp} net.ipv4.conf.up1.rp_filter={rp}"
        ),
    )
    .unwrap();
    lab
}

/// Strict rp_filter on the multi-homed server, whose more specific route
/// sends the client's network back through `alt`: the pings are dropped
/// on arrival. Fix 1 routes the client back where it arrives.
#[test]
fn rpfilter_route_conflict_fix_heals() {
    let lab = multihomed_lab(
        "fxrpf",
        "ip route add 10.61.0.0/16 via 10.88.0.1 dev side2",
        1,
    );
    let ns = ["cli", "gw", "srv"];
    let lines = diagnose_while(&lab, &ns, || {
        assert!(!ping(&lab, "cli", "10.66.0.9", 56));
    });
    let v = verdict(&lines, "rpfilter_route_conflict");
    assert_eq!(v["evidence"]["ingress_ifname"], "up1", "{v}");
    apply_first_fix(v);
    healed(&lab, &ns, || ping(&lab, "cli", "10.66.0.9", 56));
}

/// No rp_filter, and the client's network on-link on `side2`: the replies
/// ask ARP there, where nobody answers. Fix 1 routes the client back
/// where it arrives.
#[test]
fn asymmetric_route_fix_heals() {
    let lab = multihomed_lab("fxasym", "ip route add 10.61.0.0/16 dev side2", 0);
    let ns = ["cli", "gw", "srv"];
    let lines = diagnose_while(&lab, &ns, || {
        assert!(!ping(&lab, "cli", "10.66.0.9", 56));
    });
    let v = verdict(&lines, "asymmetric_route");
    apply_first_fix(v);
    healed(&lab, &ns, || ping(&lab, "cli", "10.66.0.9", 56));
}

/// The same over IPv6: `srv` (fd66::9 on `up1`) holds the client's
/// network fd61::/16 on-link on `side2`; its replies ask neighbour
/// discovery there, where nobody answers. Fix 1 routes the client back
/// where it arrives.
#[test]
fn ipv6_asymmetric_route_fix_heals() {
    let lab = multihomed_lab("fxasym6", "true", 0);
    lab.exec(
        "cli",
        "ip -6 addr add fd61:3::7/64 dev c0 nodad && ip -6 route add default via fd61:3::1",
    )
    .unwrap();
    lab.exec(
        "gw",
        "ip -6 addr add fd61:3::1/64 dev g0 nodad && ip -6 addr add fd66::1/64 dev g1 nodad && \
         sysctl -qw net.ipv6.conf.all.forwarding=1",
    )
    .unwrap();
    lab.exec(
        "srv",
        "ip -6 addr add fd66::9/64 dev up1 nodad && ip -6 route add default via fd66::1 && \
         ip -6 addr add fd88::2/64 dev side2 nodad && ip -6 route add fd61::/16 dev side2",
    )
    .unwrap();
    let ns = ["cli", "gw", "srv"];
    let ping6 = |lab: &Netlab| {
        lab.try_exec("cli", "ping -6 -c 3 -i 0.2 -W 1 fd66::9")
            .unwrap()
            .status
            .success()
    };
    let lines = diagnose_while(&lab, &ns, || assert!(!ping6(&lab)));
    let v = verdict(&lines, "asymmetric_route");
    assert_eq!(v["netns_name"], lab.name("srv"), "{v}");
    apply_first_fix(v);
    healed(&lab, &ns, || ping6(&lab));
}

/// Policy routing, as on a cloud host with a table per interface: `rule`
/// sends the server's reverse-path lookup to `table`, which holds the
/// server's own prefix on `up1` and a default out `side2`; main is right.
/// rp_filter=1 drops the client's pings; the proof names the table and
/// the rule, and fix 1, applied, routes the client back in that table
/// (a main-table route would be bypassed by the rule).
fn policy_rpfilter_heals(test: &str, rule: &str, table: u32, extra: &str) -> Value {
    let lab = multihomed_lab(
        test,
        &format!(
            "ip rule add {rule} lookup {table} pref 3210 && \
             ip route add 10.66.0.0/24 dev up1 table {table} && \
             ip route add default via 10.88.0.1 dev side2 table {table}{extra}"
        ),
        1,
    );
    let ns = ["cli", "gw", "srv"];
    let lines = diagnose_while(&lab, &ns, || {
        assert!(!ping(&lab, "cli", "10.66.0.9", 56));
    });
    let v = verdict(&lines, "rpfilter_route_conflict").clone();
    let e = &v["evidence"];
    assert_eq!(e["reverse_route_ifname"], "side2", "{v}");
    assert_eq!(e["reverse_route_table"], table, "{v}");
    assert_eq!(e["reverse_route_rule"]["rule_priority"], 3210, "{v}");
    let cmd = v["fix_commands"][0][0].as_str().unwrap();
    assert!(cmd.ends_with(&format!(" table {table}")), "{cmd}");
    apply_first_fix(&v);
    healed(&lab, &ns, || ping(&lab, "cli", "10.66.0.9", 56));
    v
}

/// The client `near` on-link with `host2`, whose rule sends replies from
/// its address to table 977, which lacks the link's prefix (only a
/// default out `wan0`): with rp_filter=1 `host2` ignores `near`'s ARP
/// requests, so `near` sees NEIGH_FAILED. Proven as the rp_filter conflict
/// in `host2` (not as a silent neighbour in `near`); fix 1 puts the
/// connected prefix in table 977.
#[test]
fn rpfilter_arp_suppression_fix_heals() {
    let mut lab = Netlab::new(&prefix("fxarp")).unwrap();
    for n in ["near", "host2", "isp"] {
        lab.ns(n).unwrap();
    }
    lab.veth("near", "n0", "host2", "lan7").unwrap();
    lab.veth("host2", "wan0", "isp", "i0").unwrap();
    lab.exec("isp", "ip addr add 10.93.1.1/24 dev i0").unwrap();
    lab.exec("near", "ip addr add 10.92.7.40/24 dev n0")
        .unwrap();
    lab.exec(
        "host2",
        "ip addr add 10.92.7.3/24 dev lan7 && ip addr add 10.93.1.2/24 dev wan0 && \
         ip rule add from 10.92.7.3 lookup 977 && \
         ip route add default via 10.93.1.1 dev wan0 table 977 && \
         sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.lan7.rp_filter=1",
    )
    .unwrap();
    let ns = ["near", "host2", "isp"];
    let lines = diagnose_while(&lab, &ns, || {
        assert!(!ping(&lab, "near", "10.92.7.3", 56));
    });
    let v = verdict(&lines, "rpfilter_route_conflict");
    assert_eq!(v["netns_name"], lab.name("host2"), "{v}");
    let e = &v["evidence"];
    assert_eq!(e["arp"], true, "{v}");
    assert_eq!(e["ingress_ifname"], "lan7", "{v}");
    assert_eq!(e["reverse_route_ifname"], "wan0", "{v}");
    assert_eq!(e["reverse_route_table"], 977, "{v}");
    assert_eq!(
        e["reverse_route_rule"]["rule"],
        "32765: from 10.92.7.3 lookup 977"
    );
    let blamed: Vec<&Value> = faults(&lines)
        .into_iter()
        .filter(|v| v["kind"] == "neighbor_unreachable")
        .collect();
    assert!(blamed.is_empty(), "{blamed:#?}");
    apply_first_fix(v);
    healed(&lab, &ns, || ping(&lab, "near", "10.92.7.3", 56));
}

/// A macvlan "container" `box` (10.157.0.5/16 on `mvx`, parent `up3` in
/// `hostm`) whose on-link /16 covers `remote` 10.157.44.4, which the
/// gateway `edge` routes in from `e1`: `box` asks ARP for it on `mvx`,
/// where nobody answers. The gateway's lookup shows the packets routed
/// into the segment, so this is asymmetric_route (not a silent
/// neighbour); fix 1 routes `remote` through the gateway.
#[test]
fn macvlan_overlap_is_asymmetric_and_fix_heals() {
    let mut lab = Netlab::new(&prefix("fxmvl")).unwrap();
    for n in ["box", "hostm", "edge", "remote"] {
        lab.ns(n).unwrap();
    }
    lab.veth("hostm", "up3", "edge", "e0").unwrap();
    lab.veth("edge", "e1", "remote", "x0").unwrap();
    lab.exec(
        "hostm",
        &format!(
            "ip link add mvx link up3 type macvlan mode bridge && ip link set mvx netns {}",
            lab.name("box")
        ),
    )
    .unwrap();
    lab.exec(
        "box",
        "ip link set mvx up && ip addr add 10.157.0.5/16 dev mvx && \
         ip route add default via 10.157.0.1",
    )
    .unwrap();
    lab.exec(
        "edge",
        "ip addr add 10.157.0.1/16 dev e0 && ip addr add 10.158.2.1/24 dev e1 && \
         ip route add 10.157.44.4/32 via 10.158.2.4 dev e1 && sysctl -qw net.ipv4.ip_forward=1",
    )
    .unwrap();
    lab.exec(
        "remote",
        "ip addr add 10.158.2.4/24 dev x0 && ip addr add 10.157.44.4/32 dev x0 && \
         ip route add default via 10.158.2.1 src 10.157.44.4",
    )
    .unwrap();
    let ns = ["box", "hostm", "edge", "remote"];
    let lines = diagnose_while(&lab, &ns, || {
        assert!(!ping(&lab, "remote", "10.157.0.5", 56));
    });
    let v = verdict(&lines, "asymmetric_route");
    assert_eq!(v["netns_name"], lab.name("box"), "{v}");
    assert_eq!(v["evidence"]["egress_kind"], "macvlan", "{v}");
    assert_eq!(v["evidence"]["ingress_ifname"], "e1", "{v}");
    assert_eq!(v["evidence"]["gateway"], "10.157.0.1", "{v}");
    let blamed: Vec<&Value> = faults(&lines)
        .into_iter()
        .filter(|v| v["kind"] == "neighbor_unreachable")
        .collect();
    assert!(blamed.is_empty(), "{blamed:#?}");
    apply_first_fix(v);
    healed(&lab, &ns, || ping(&lab, "remote", "10.157.0.5", 56));
}

/// `from <the server's address> lookup 213`.
#[test]
fn rpfilter_policy_rule_from_fix_heals() {
    let v = policy_rpfilter_heals("fxprf", "from 10.66.0.9", 213, "");
    let e = &v["evidence"]["reverse_route_rule"];
    assert_eq!(e["rule"], "3210: from 10.66.0.9 lookup 213", "{v}");
    assert_eq!(v["evidence"]["src_valid_mark"], false, "{v}");
}

/// `fwmark 0x30/0xf0 lookup 4711`, the mark set on arrival, and
/// src_valid_mark=1: the reverse-path lookup carries the mark.
#[test]
fn rpfilter_policy_rule_fwmark_fix_heals() {
    let v = policy_rpfilter_heals(
        "fxpmk",
        "fwmark 0x30/0xf0",
        4711,
        " && sysctl -qw net.ipv4.conf.all.src_valid_mark=1 && \
         iptables -t mangle -A PREROUTING -i up1 -j MARK --set-mark 0x37",
    );
    let e = &v["evidence"]["reverse_route_rule"];
    assert_eq!(
        e["rule"], "3210: from all fwmark 0x30/0xf0 lookup 4711",
        "{v}"
    );
    assert_eq!(e["fwmark"], 0x30, "{v}");
    assert_eq!(v["evidence"]["src_valid_mark"], true, "{v}");
}

/// A router with forwarding off between two links. Fix 1 turns it on.
#[test]
fn forwarding_disabled_fix_heals() {
    let mut lab = Netlab::new(&prefix("fxfwd")).unwrap();
    for n in ["lan", "mid", "far"] {
        lab.ns(n).unwrap();
    }
    lab.veth("lan", "l0", "mid", "m0").unwrap();
    lab.veth("mid", "m1", "far", "d0").unwrap();
    lab.exec(
        "lan",
        "ip addr add 10.203.44.2/24 dev l0 && ip route add default via 10.203.44.1",
    )
    .unwrap();
    lab.exec(
        "mid",
        "ip addr add 10.203.44.1/24 dev m0 && ip addr add 10.204.8.1/24 dev m1 && \
         sysctl -qw net.ipv4.ip_forward=0",
    )
    .unwrap();
    lab.exec(
        "far",
        "ip addr add 10.204.8.30/24 dev d0 && ip route add default via 10.204.8.1",
    )
    .unwrap();
    let ns = ["lan", "mid", "far"];
    let lines = diagnose_while(&lab, &ns, || {
        assert!(!ping(&lab, "lan", "10.204.8.30", 56));
    });
    let v = verdict(&lines, "forwarding_disabled");
    apply_first_fix(v);
    healed(&lab, &ns, || ping(&lab, "lan", "10.204.8.30", 56));
}

/// left (lx0, 10.231.5.1) -- right (rx0, 10.231.5.2), each end at its
/// own MTU.
fn l2_lab(test: &str, left_mtu: u32, right_mtu: u32) -> Netlab {
    let mut lab = Netlab::new(&prefix(test)).unwrap();
    for n in ["left", "right"] {
        lab.ns(n).unwrap();
    }
    lab.veth("left", "lx0", "right", "rx0").unwrap();
    lab.exec(
        "left",
        &format!("ip link set lx0 mtu {left_mtu} && ip addr add 10.231.5.1/24 dev lx0"),
    )
    .unwrap();
    lab.exec(
        "right",
        &format!("ip link set rx0 mtu {right_mtu} && ip addr add 10.231.5.2/24 dev rx0"),
    )
    .unwrap();
    lab
}

/// A veth whose ends disagree (1500 against 1280): large frames die on
/// the narrow end. Fix 1 gives both ends the same MTU.
#[test]
fn l2_mtu_mismatch_fix_heals() {
    let lab = l2_lab("fxl2", 1500, 1280);
    let ns = ["left", "right"];
    let lines = diagnose_while(&lab, &ns, || {
        // Small first: ARP resolves, so the large ones are sent at once.
        assert!(ping(&lab, "left", "10.231.5.2", 100));
        assert!(!ping(&lab, "left", "10.231.5.2", 1400));
    });
    let v = verdict(&lines, "l2_mtu_mismatch");
    apply_first_fix(v);
    healed(&lab, &ns, || ping(&lab, "left", "10.231.5.2", 1400));
}

/// The control: both ends narrow alike (1340), the same pings (the large
/// ones fragmented by the sender): nothing to say.
#[test]
fn a_veth_whose_ends_agree_on_a_narrow_mtu_is_silent() {
    let lab = l2_lab("fxl2ok", 1340, 1340);
    let ns = ["left", "right"];
    let lines = diagnose_while(&lab, &ns, || {
        assert!(ping(&lab, "left", "10.231.5.2", 100));
        assert!(ping(&lab, "left", "10.231.5.2", 1400));
        assert!(ping(&lab, "right", "10.231.5.1", 1400));
    });
    tracer_tests::assert_no_verdict(&lines);
}

/// Bytes of the file the origin serves in the MTU labs.
const BLOB: usize = 2 << 20;

/// pod 10.150.7.2 (MTU 1500) -- node (forwards; `tun9` MTU 1360) --
/// relay (MTU 1360 | 1500, drops its own ICMP frag-needed) -- origin
/// 10.152.4.20 (MTU 1500), which serves a 2 MiB file over HTTP. The pod's
/// download stalls: the origin's full-size segments do not fit the
/// narrow link and the ICMP that would shrink them is dropped.
fn mtu_lab(test: &str) -> Netlab {
    let mut lab = Netlab::new(&prefix(test)).unwrap();
    for n in ["pod", "node", "relay", "origin"] {
        lab.ns(n).unwrap();
    }
    lab.veth("pod", "p0", "node", "vpod").unwrap();
    lab.veth("node", "tun9", "relay", "e0").unwrap();
    lab.veth("relay", "e1", "origin", "o0").unwrap();
    lab.exec(
        "pod",
        "ip addr add 10.150.7.2/24 dev p0 && ip route add default via 10.150.7.1",
    )
    .unwrap();
    lab.exec(
        "node",
        "sysctl -qw net.ipv4.ip_forward=1 && ip addr add 10.150.7.1/24 dev vpod && \
         ip link set tun9 mtu 1360 && ip addr add 10.151.9.2/24 dev tun9 && \
         ip route add default via 10.151.9.1",
    )
    .unwrap();
    lab.exec(
        "relay",
        "sysctl -qw net.ipv4.ip_forward=1 && ip link set e0 mtu 1360 && \
         ip addr add 10.151.9.1/24 dev e0 && ip addr add 10.152.4.1/24 dev e1 && \
         ip route add 10.150.7.0/24 via 10.151.9.2 && \
         iptables -A OUTPUT -p icmp --icmp-type fragmentation-needed -j DROP",
    )
    .unwrap();
    lab.exec(
        "origin",
        "ip addr add 10.152.4.20/24 dev o0 && ip route add default via 10.152.4.1",
    )
    .unwrap();
    // A server that writes the body from memory: no file to clean up.
    lab.spawn(
        "origin",
        &format!(
            "/usr/bin/python3 -c 'import http.server as h\n\
             class H(h.BaseHTTPRequestHandler):\n\
             \x20def do_GET(s):\n\
             \x20 s.send_response(200); s.send_header(\"Content-Length\", \"{BLOB}\"); s.end_headers()\n\
             \x20 s.wfile.write(b\"x\" * {BLOB})\n\
             h.ThreadingHTTPServer((\"10.152.4.20\", 8181), H).serve_forever()'"
        ),
    )
    .unwrap();
    // The server is up once its port answers.
    lab.exec(
        "origin",
        "for i in $(seq 50); do bash -c 'echo > /dev/tcp/10.152.4.20/8181' 2>/dev/null && exit 0; sleep 0.1; done; exit 1",
    )
    .unwrap();
    lab
}

/// The pod's download from client port `port`: true when the whole file
/// arrived in time.
fn download(lab: &Netlab, port: u16) -> bool {
    let out = lab
        .try_exec(
            "pod",
            &format!(
                "curl -s -o /dev/null -w '%{{size_download}}' --max-time 5 --local-port {port} \
                 http://10.152.4.20:8181/blob"
            ),
        )
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == BLOB.to_string()
}

const MTU_NS: [&str; 4] = ["pod", "node", "relay", "origin"];

/// The client ports of the broken download and of the one after the fix.
const BROKEN_PORT: u16 = 41731;
const FIXED_PORT: u16 = 41732;

/// Fix 1 of mss_exceeds_mtu clamps the MSS where the SYN leaves by the
/// narrow link: no device's MTU changes, so no L2 mismatch can follow.
#[test]
fn mss_exceeds_mtu_fix_heals() {
    let lab = mtu_lab("fxmss");
    let lines = diagnose_while(&lab, &MTU_NS, || assert!(!download(&lab, BROKEN_PORT)));
    let v = verdict(&lines, "mss_exceeds_mtu");
    assert!(
        !v["fix_commands"][0].to_string().contains("link set"),
        "fix 1 changes an MTU: {v}"
    );
    apply_first_fix(v);
    // The clamp acts on new connections' SYNs: the broken one's segments
    // stay too big until its server gives up.
    healed_but(
        &lab,
        &MTU_NS,
        || download(&lab, FIXED_PORT),
        Some(BROKEN_PORT),
        &lines,
    );
}

/// Fix 1 of the PMTU black hole, where the ICMP is blocked, lets the ICMP
/// out: PMTU discovery then shrinks the segments itself.
#[test]
fn pmtu_blackhole_fix_heals() {
    let lab = mtu_lab("fxpmtu");
    let lines = diagnose_while(&lab, &MTU_NS, || assert!(!download(&lab, BROKEN_PORT)));
    let v = verdict(&lines, "pmtu_blackhole");
    assert_eq!(v["evidence"]["icmp_blocked"], true, "{v}");
    apply_first_fix(v);
    healed(&lab, &MTU_NS, || download(&lab, FIXED_PORT));
}

/// The relay lets its ICMP frag-needed out, but the origin (the sender
/// of the big segments) drops it at its INPUT: the black hole is proven
/// in the relay with icmp_blocked, the origin named as where the ICMP
/// died, and fix 1 (applied) lets it in there.
#[test]
fn pmtu_icmp_dropped_by_the_sender_is_linked_and_fix_heals() {
    let lab = mtu_lab("fxpmin");
    lab.exec(
        "relay",
        "iptables -D OUTPUT -p icmp --icmp-type fragmentation-needed -j DROP",
    )
    .unwrap();
    lab.exec(
        "origin",
        "iptables -A INPUT -p icmp --icmp-type fragmentation-needed -j DROP",
    )
    .unwrap();
    let lines = diagnose_while(&lab, &MTU_NS, || assert!(!download(&lab, BROKEN_PORT)));
    let v = verdict(&lines, "pmtu_blackhole");
    let e = &v["evidence"];
    assert_eq!(e["icmp_blocked"], true, "{v}");
    assert_eq!(e["icmp_dropped_netns"], lab.name("origin"), "{v}");
    assert_eq!(e["icmp_dropped_ifname"], "o0", "{v}");
    let cmd = v["fix_commands"][0][0].as_str().unwrap();
    assert!(
        cmd.contains(&lab.name("origin")) && cmd.contains(" -I INPUT "),
        "{cmd}"
    );
    // The dropped ICMP is a firewall drop in its own right, named.
    let nf = dropped_icmp(&lines, &lab.name("origin"));
    assert_eq!(nf["evidence"]["rule"]["chain"], "INPUT", "{nf}");
    assert_eq!(nf["evidence"]["rule"]["position"], 1, "{nf}");
    let s = nf["summary"].as_str().unwrap();
    assert!(
        s.starts_with("icmp frag needed from 10.152.4.1 to 10.152.4.20")
            && s.contains("Path MTU discovery needs this ICMP"),
        "{s}"
    );
    apply_first_fix(v);
    healed_but(
        &lab,
        &MTU_NS,
        || download(&lab, FIXED_PORT),
        Some(BROKEN_PORT),
        &lines,
    );
}

/// The proven netfilter_drop verdict of namespace `ns`, the only one there.
fn dropped_icmp<'a>(lines: &'a [Value], ns: &str) -> &'a Value {
    let nf: Vec<&Value> = faults(lines)
        .into_iter()
        .filter(|v| v["kind"] == "netfilter_drop" && v["netns_name"] == ns)
        .collect();
    assert_eq!(nf.len(), 1, "{:#?}", faults(lines));
    nf[0]
}

/// far (fd71:a::9) -- mid (forwards; `nx` MTU 1320) -- near
/// (fd71:b::9, MTU 1320): far's 1400-byte pings do not fit the narrow
/// link, and mid answers ICMPv6 packet too big.
fn v6_narrow_lab(test: &str) -> Netlab {
    let mut lab = Netlab::new(&prefix(test)).unwrap();
    for n in ["far", "mid", "near"] {
        lab.ns(n).unwrap();
    }
    lab.veth("far", "f0", "mid", "mx").unwrap();
    lab.veth("mid", "nx", "near", "n0").unwrap();
    lab.exec(
        "far",
        "ip addr add fd71:a::9/64 dev f0 nodad && ip route add default via fd71:a::1",
    )
    .unwrap();
    lab.exec(
        "mid",
        "ip addr add fd71:a::1/64 dev mx nodad && ip link set nx mtu 1320 && \
         ip addr add fd71:b::1/64 dev nx nodad && sysctl -qw net.ipv6.conf.all.forwarding=1",
    )
    .unwrap();
    lab.exec(
        "near",
        "ip link set n0 mtu 1320 && ip addr add fd71:b::9/64 dev n0 nodad && \
         ip route add default via fd71:b::1",
    )
    .unwrap();
    lab
}

/// Five 1400-byte pings from far to near, fragmented by far once it
/// learns the path MTU: true when one came back.
fn big_pings(lab: &Netlab) -> bool {
    lab.try_exec("far", "ping -6 -c 5 -i 0.3 -W 1 -M dont -s 1400 fd71:b::9")
        .unwrap()
        .status
        .success()
}

/// far's INPUT drops the ICMPv6 packet too big, so it never learns the
/// path MTU: a netfilter_drop verdict names the rule, and its fix 1,
/// pasted, removes it; far then learns, and its pings pass.
#[test]
fn ipv6_packet_too_big_dropped_by_a_firewall_is_named_and_fix_heals() {
    let lab = v6_narrow_lab("fxptb6");
    lab.exec(
        "far",
        "ip6tables -A INPUT -p ipv6-icmp --icmpv6-type echo-request -j ACCEPT && \
         ip6tables -A INPUT -p ipv6-icmp --icmpv6-type packet-too-big -j DROP",
    )
    .unwrap();
    let ns = ["far", "mid", "near"];
    let rec = recording("fxptb6");
    let _ = std::fs::remove_file(&rec);
    let lines = diagnose_to(&lab, &ns, Some(&rec), || assert!(!big_pings(&lab)));
    keep_recording(&rec, "ptb6-dropped-by-firewall.jsonl");
    let _ = std::fs::remove_file(&rec);
    let v = dropped_icmp(&lines, &lab.name("far"));
    let e = &v["evidence"];
    assert_eq!(e["family"], "ip6", "{v}");
    assert_eq!(e["rule"]["chain"], "INPUT", "{v}");
    assert_eq!(e["rule"]["position"], 2, "{v}");
    let s = v["summary"].as_str().unwrap();
    assert!(
        s.starts_with("icmp6 packet too big from fd71:a::1 to fd71:a::9"),
        "{s}"
    );
    apply_first_fix(v);
    healed(&lab, &ns, || big_pings(&lab));
}

/// The control: the same path with nothing dropping the ICMPv6; far
/// learns the path MTU from the first ping and nothing is said.
#[test]
fn ipv6_packet_too_big_let_in_stays_silent() {
    let lab = v6_narrow_lab("fxptb6ok");
    lab.exec(
        "far",
        "ip6tables -A INPUT -p ipv6-icmp --icmpv6-type echo-request -j DROP",
    )
    .unwrap();
    let ns = ["far", "mid", "near"];
    let lines = diagnose_while(&lab, &ns, || assert!(big_pings(&lab)));
    let said: Vec<&Value> = lines
        .iter()
        .filter(|v| v["type"] == "verdict" && v["kind"] == "netfilter_drop")
        .collect();
    assert!(said.is_empty(), "{said:#?}");
    assert!(faults(&lines).is_empty(), "{:#?}", faults(&lines));
}

/// IPv4, with policy routing: rt4 sends what arrives on `r-in` to table
/// 321, which lacks dst4's service address 10.173.0.9 (and so does main).
/// no_route names table 321; its fix 1 is advice, as no fact here says
/// which gateway is right: pasted with dst4 filled in as the gateway, it
/// heals.
#[test]
fn ipv4_no_route_in_a_policy_table_heals_once_the_gateway_is_filled_in() {
    let mut lab = Netlab::new(&prefix("fxnr4")).unwrap();
    for n in ["src4", "rt4", "dst4"] {
        lab.ns(n).unwrap();
    }
    lab.veth("src4", "s0", "rt4", "r-in").unwrap();
    lab.veth("rt4", "r-out", "dst4", "d0").unwrap();
    lab.exec(
        "src4",
        "ip addr add 10.171.2.5/24 dev s0 && ip route add default via 10.171.2.1",
    )
    .unwrap();
    lab.exec(
        "rt4",
        "ip addr add 10.171.2.1/24 dev r-in && ip addr add 10.172.6.1/24 dev r-out && \
         sysctl -qw net.ipv4.ip_forward=1 && ip rule add iif r-in lookup 321 pref 2100 && \
         ip route add 10.172.6.0/24 dev r-out table 321",
    )
    .unwrap();
    lab.exec(
        "dst4",
        "ip addr add 10.172.6.8/24 dev d0 && ip addr add 10.173.0.9/32 dev lo && \
         ip route add default via 10.172.6.1",
    )
    .unwrap();
    let ns = ["src4", "rt4", "dst4"];
    let lines = diagnose_while(&lab, &ns, || {
        assert!(!ping(&lab, "src4", "10.173.0.9", 56));
    });
    let v = verdict(&lines, "no_route");
    assert_eq!(v["netns_name"], lab.name("rt4"), "{v}");
    assert_eq!(v["evidence"]["route_table"], 321, "{v}");
    assert!(
        v["fix_commands"][0].as_array().unwrap().is_empty(),
        "a gateway nobody chose: {v}"
    );
    let text = v["fix"][0].as_str().unwrap();
    let cmd = text
        .strip_prefix("Add a route: ")
        .and_then(|t| t.split(" (or ").next())
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        cmd,
        format!(
            "ip netns exec {} ip route add 10.173.0.9/32 via <gateway> table 321",
            lab.name("rt4")
        )
    );
    let out = Command::new("bash")
        .args(["-c", &cmd.replace("<gateway>", "10.172.6.8")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{cmd}: {out:?}");
    healed(&lab, &ns, || ping(&lab, "src4", "10.173.0.9", 56));
}

/// IPv6: a router with forwarding off. Fix 1 turns it on.
#[test]
fn ipv6_forwarding_disabled_fix_heals() {
    let mut lab = Netlab::new(&prefix("fxfwd6")).unwrap();
    for n in ["edge", "core", "sink"] {
        lab.ns(n).unwrap();
    }
    lab.veth("edge", "x0", "core", "y0").unwrap();
    lab.veth("core", "y1", "sink", "z0").unwrap();
    // nodad: the addresses are usable at once.
    lab.exec(
        "edge",
        "ip addr add fd5e:71::2/64 dev x0 nodad && ip route add default via fd5e:71::1",
    )
    .unwrap();
    lab.exec(
        "core",
        "ip addr add fd5e:71::1/64 dev y0 nodad && ip addr add fd5e:72::1/64 dev y1 nodad && \
         sysctl -qw net.ipv6.conf.all.forwarding=0",
    )
    .unwrap();
    lab.exec(
        "sink",
        "ip addr add fd5e:72::40/64 dev z0 nodad && ip route add default via fd5e:72::1",
    )
    .unwrap();
    let ns = ["edge", "core", "sink"];
    let lines = diagnose_while(&lab, &ns, || {
        assert!(!ping(&lab, "edge", "fd5e:72::40", 56));
    });
    let v = verdict(&lines, "forwarding_disabled");
    assert_eq!(v["evidence"]["sysctl"], "net.ipv6.conf.all.forwarding");
    apply_first_fix(v);
    healed(&lab, &ns, || ping(&lab, "edge", "fd5e:72::40", 56));
}

/// tx, bystander and holder on one bridge (`sw9`, in `hub`); tx's
/// neighbour entries for holder's addresses point at bystander, as after
/// the addresses moved. Fix 1 deletes them on tx, which then finds holder.
#[test]
fn misdelivered_fix_heals() {
    let mut lab = Netlab::new(&prefix("fxmis")).unwrap();
    for n in ["tx", "hub", "bystander", "holder"] {
        lab.ns(n).unwrap();
    }
    lab.exec("hub", "ip link add sw9 type bridge && ip link set sw9 up")
        .unwrap();
    for (n, dev, port, last) in [
        ("tx", "t1", "q-tx", 5),
        ("bystander", "b1", "q-by", 6),
        ("holder", "h1", "q-ho", 77),
    ] {
        lab.veth(n, dev, "hub", port).unwrap();
        lab.exec("hub", &format!("ip link set {port} master sw9"))
            .unwrap();
        lab.exec(
            n,
            &format!(
                "ip addr add 10.93.12.{last}/24 dev {dev} && \
                 ip addr add fd93:12::{last}/64 dev {dev} nodad"
            ),
        )
        .unwrap();
    }
    let mac = lab
        .exec("bystander", "cat /sys/class/net/b1/address")
        .unwrap();
    let mac = mac.trim();
    lab.exec(
        "tx",
        &format!(
            "ip neigh replace 10.93.12.77 lladdr {mac} dev t1 && \
             ip -6 neigh replace fd93:12::77 lladdr {mac} dev t1"
        ),
    )
    .unwrap();
    let ns = ["tx", "hub", "bystander", "holder"];
    let dsts = ["10.93.12.77", "fd93:12::77"];
    let lines = diagnose_while(&lab, &ns, || {
        for d in dsts {
            assert!(!ping(&lab, "tx", d, 56));
        }
    });
    let found: Vec<&Value> = lines
        .iter()
        .filter(|v| v["type"] == "verdict" && v["kind"] == "misdelivered")
        .collect();
    assert_eq!(found.len(), 2, "{lines:#?}");
    for v in found {
        assert_eq!(v["fault"], true, "{v}");
        apply_first_fix(v);
    }
    healed(&lab, &ns, || dsts.iter().all(|d| ping(&lab, "tx", d, 56)));
}

/// Sends `n` UDP datagrams of 1000 bytes back to back from `qs` to `qr`,
/// from one socket in a tight loop (microseconds apart: a shell loop
/// once spaced them over a millisecond each on a loaded host, which the
/// 8 Mbit/s bucket drained, and nothing overflowed), and says whether all
/// arrived (`qr`'s UDP counters count them, delivered, refused or in
/// error: no receiver is needed, the port's refusal is only a note; the
/// device's packet count also took in the IPv6 router solicitations of a
/// link just up, and once made a burst with drops look whole).
fn udp_burst(lab: &Netlab, n: u32) -> bool {
    let rx = || -> u64 {
        lab.exec(
            "qr",
            "awk '/^Udp:/ {n++} /^Udp:/ && n==2 {print $2 + $3 + $4}' /proc/net/snmp",
        )
        .unwrap()
        .trim()
        .parse()
        .unwrap()
    };
    let before = rx();
    netlab::in_netns(&lab.name("qs"), move || {
        let s = std::net::UdpSocket::bind("10.177.30.1:0").unwrap();
        for _ in 0..n {
            // A queue's drop may come back as ENOBUFS: it is the point.
            let _ = s.send_to(&[b'x'; 1000], "10.177.30.2:7070");
        }
    })
    .join()
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    rx() - before >= n as u64
}

/// qs (w0, 10.177.30.1) -- qr (r0, 10.177.30.2), w0 shaped by a token
/// bucket whose queue holds `limit` bytes.
fn tbf_lab(test: &str, limit: u32) -> Netlab {
    let mut lab = Netlab::new(&prefix(test)).unwrap();
    for n in ["qs", "qr"] {
        lab.ns(n).unwrap();
    }
    lab.veth("qs", "w0", "qr", "r0").unwrap();
    lab.exec(
        "qs",
        &format!(
            "ip addr add 10.177.30.1/24 dev w0 && \
             tc qdisc add dev w0 root handle 8002: tbf rate 8mbit burst 3000 limit {limit}"
        ),
    )
    .unwrap();
    lab.exec("qr", "ip addr add 10.177.30.2/24 dev r0").unwrap();
    // ARP resolved first: the burst leaves at once.
    assert!(ping(&lab, "qs", "10.177.30.2", 56));
    lab
}

/// A token bucket whose queue holds 3000 bytes: a burst of eight
/// datagrams overflows it. Fix 1 gives the queue four times the room.
#[test]
fn qdisc_drop_fix_heals() {
    let lab = tbf_lab("fxtbf", 3000);
    let ns = ["qs", "qr"];
    let lines = diagnose_while(&lab, &ns, || assert!(!udp_burst(&lab, 8)));
    let v = verdict(&lines, "qdisc_drop");
    apply_first_fix(v);
    healed(&lab, &ns, || udp_burst(&lab, 8));
}

/// The control: the same shaper with room for the burst (40,000 bytes):
/// every datagram arrives and no queue is blamed (the closed port's
/// refusal is information, not a fault).
#[test]
fn a_shaper_with_room_for_the_burst_is_silent() {
    let lab = tbf_lab("fxtbfok", 40_000);
    let ns = ["qs", "qr"];
    let lines = diagnose_while(&lab, &ns, || assert!(udp_burst(&lab, 8)));
    assert!(faults(&lines).is_empty(), "{:#?}", faults(&lines));
    assert!(tracer_tests::verdicts(&lines, "qdisc_drop").is_empty());
}

/// port_closed's control: the same burst to a port that a socket holds
/// gives no verdict at all.
#[test]
fn datagrams_to_an_open_port_are_not_port_closed() {
    let lab = tbf_lab("fxopen", 40_000);
    let open = netlab::in_netns(&lab.name("qr"), || {
        std::net::UdpSocket::bind("10.177.30.2:7070").unwrap()
    })
    .join()
    .unwrap();
    // An application reading them: UDP counts a datagram as delivered
    // when it is read.
    open.set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        // Ends with the test's process; errors are the timeouts.
        loop {
            let _ = open.recv(&mut buf);
        }
    });
    let ns = ["qs", "qr"];
    let lines = diagnose_while(&lab, &ns, || assert!(udp_burst(&lab, 8)));
    tracer_tests::assert_no_verdict(&lines);
}
