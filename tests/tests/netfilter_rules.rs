//! `netfilter_drop` names the rule: live drops by an iptables-nft user
//! chain, an ip6tables INPUT chain, a native nftables `inet` table on the
//! forward hook and iptables-legacy, IPv4 and IPv6. Each asserts the
//! chain, rule, position or handle named, pastes the first fix (which
//! removes that rule), shows the connection then works and that a second
//! `diagnose` proves no fault. A control with a rule that does not match
//! stays silent.
//!
//! src 10.147.30.5 / fd47:30::5 -- gate (forwards) -- dst 10.147.88.40 /
//! fd47:88::40, where a listener answers on ports 6310-6313.

use serde_json::Value;
use std::process::Command;
use std::time::Duration;
use tracer_tests::{apply_first_fix, diagnose_on, prefix, verdicts, Netlab};

const DST4: &str = "10.147.88.40";
const DST6: &str = "fd47:88::40";

fn lab(test: &str) -> Netlab {
    let mut lab = Netlab::new(&prefix(test)).unwrap();
    for n in ["src", "gate", "dst"] {
        lab.ns(n).unwrap();
    }
    lab.veth("src", "s0", "gate", "g0").unwrap();
    lab.veth("gate", "g1", "dst", "d0").unwrap();
    lab.exec(
        "src",
        "ip addr add 10.147.30.5/24 dev s0 && ip route add default via 10.147.30.1 && \
         ip -6 addr add fd47:30::5/64 dev s0 nodad && ip -6 route add default via fd47:30::1",
    )
    .unwrap();
    lab.exec(
        "gate",
        "ip addr add 10.147.30.1/24 dev g0 && ip addr add 10.147.88.1/24 dev g1 && \
         ip -6 addr add fd47:30::1/64 dev g0 nodad && ip -6 addr add fd47:88::1/64 dev g1 nodad && \
         sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1",
    )
    .unwrap();
    lab.exec(
        "dst",
        "ip addr add 10.147.88.40/24 dev d0 && ip route add default via 10.147.88.1 && \
         ip -6 addr add fd47:88::40/64 dev d0 nodad && ip -6 route add default via fd47:88::1",
    )
    .unwrap();
    // One dual-stack listener per port, accepting and closing.
    lab.spawn(
        "dst",
        "/usr/bin/python3 -c 'import socket, threading\n\
         def serve(p):\n\
         \x20s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n\
         \x20s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"::\", p)); s.listen(64)\n\
         \x20while True: s.accept()[0].close()\n\
         for p in range(6310, 6314): threading.Thread(target=serve, args=(p,)).start()'",
    )
    .unwrap();
    assert!(connects(&lab, DST4, 6313, 50), "the listener never came up");
    lab
}

/// Whether a TCP connection from `src` to `addr:port` opens within
/// `tries` tenths of a second.
fn connects(lab: &Netlab, addr: &str, port: u16, tries: u32) -> bool {
    lab.try_exec(
        "src",
        &format!(
            "for i in $(seq {tries}); do timeout 1 bash -c 'echo > /dev/tcp/{addr}/{port}' 2>/dev/null && exit 0; sleep 0.1; done; exit 1"
        ),
    )
    .unwrap()
    .status
    .success()
}

/// A connection attempt left to retransmit its SYN for 3.5 s.
fn blocked(lab: &Netlab, addr: &str, port: u16) {
    let ok = lab
        .try_exec(
            "src",
            &format!("timeout 3.5 bash -c 'echo > /dev/tcp/{addr}/{port}' 2>/dev/null"),
        )
        .unwrap()
        .status
        .success();
    assert!(!ok, "{addr}:{port} connected through the firewall");
}

fn diagnose_while(lab: &Netlab, traffic: impl FnOnce()) -> Vec<Value> {
    let run = diagnose_on(lab, &["gate", "dst"], None);
    traffic();
    std::thread::sleep(Duration::from_millis(1500));
    run.stop()
}

/// The proven netfilter_drop verdict, the only one.
fn named(lines: &[Value]) -> &Value {
    let v = verdicts(lines, "netfilter_drop");
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(v[0]["tier"], "proven", "{:#}", v[0]);
    v[0]
}

/// After the fix: the connection opens, and nothing is proven.
fn healed(lab: &Netlab, addr: &str, port: u16) {
    let mut ok = false;
    let lines = diagnose_while(lab, || ok = connects(lab, addr, port, 20));
    assert!(ok, "{addr}:{port} still fails after the fix");
    let faults: Vec<&Value> = lines
        .iter()
        .filter(|v| v["type"] == "verdict" && v["fault"] == true)
        .collect();
    assert!(faults.is_empty(), "{faults:#?}");
}

#[test]
fn iptables_user_chain_rule_is_named_and_removed() {
    let lab = lab("nfuser");
    // A decoy first, so the rule that drops is the chain's second.
    lab.exec(
        "gate",
        "iptables -N EDGE-47 && iptables -A FORWARD -j EDGE-47 && \
         iptables -A EDGE-47 -p udp --dport 9 -j DROP && \
         iptables -A EDGE-47 -p tcp --dport 6310 -m comment --comment 'lab 47 block' -j DROP",
    )
    .unwrap();
    let lines = diagnose_while(&lab, || blocked(&lab, DST4, 6310));
    let v = named(&lines);
    let r = &v["evidence"]["rule"];
    assert_eq!(r["source"], "iptables-nft", "{r:#}");
    assert_eq!(r["table"], "filter");
    assert_eq!(r["chain"], "EDGE-47");
    assert_eq!(r["hook"], "forward");
    assert_eq!(r["position"], 2);
    assert_eq!(r["jump_path"], "FORWARD -> EDGE-47");
    assert_eq!(r["comment"], "lab 47 block");
    let s = v["summary"].as_str().unwrap();
    assert!(
        s.contains("tcp SYN from 10.147.30.5:") && s.contains("to 10.147.88.40:6310 is dropped by rule 2 of chain EDGE-47 (table filter, hook forward, iptables-nft, reached by FORWARD -> EDGE-47): `-A EDGE-47 -p tcp -m tcp --dport 6310 -m comment --comment \"lab 47 block\" -j DROP`"),
        "{s}"
    );
    apply_first_fix(v);
    healed(&lab, DST4, 6310);
}

#[test]
fn ip6tables_input_chain_rule_is_named_and_removed() {
    let lab = lab("nfin6");
    lab.exec(
        "dst",
        "ip6tables -N IN6-47 && ip6tables -A INPUT -j IN6-47 && \
         ip6tables -A IN6-47 -p tcp --dport 6311 -j DROP",
    )
    .unwrap();
    let lines = diagnose_while(&lab, || blocked(&lab, DST6, 6311));
    let v = named(&lines);
    let r = &v["evidence"]["rule"];
    assert_eq!(r["family"], "ip6", "{r:#}");
    assert_eq!(r["hook"], "input");
    assert_eq!(r["chain"], "IN6-47");
    assert_eq!(r["position"], 1);
    assert_eq!(r["jump_path"], "INPUT -> IN6-47");
    let fix = v["fix_commands"][0][0].as_str().unwrap();
    assert!(
        fix.ends_with("ip6tables-nft -t filter -D IN6-47 1"),
        "{fix}"
    );
    assert!(fix.contains(&lab.name("dst")), "{fix}");
    apply_first_fix(v);
    healed(&lab, DST6, 6311);
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn native_nftables_inet_forward_rule_is_named_by_handle() {
    assert!(
        have("nft"),
        "nft must be installed (cargo xtask test installs nftables)"
    );
    let lab = lab("nfinet");
    // No counter on the rule that drops: a counted decoy that never
    // matches is ruled out by its counter.
    lab.exec(
        "gate",
        "nft add table inet gate47 && \
         nft add chain inet gate47 pass47 '{ type filter hook forward priority 0; }' && \
         nft add rule inet gate47 pass47 udp dport 9 counter drop && \
         nft add rule inet gate47 pass47 tcp dport 6312 drop comment '\"no 6312\"'",
    )
    .unwrap();
    let listing = lab
        .exec("gate", "nft -a list chain inet gate47 pass47")
        .unwrap();
    let handle: u64 = listing
        .lines()
        .find(|l| l.contains("6312"))
        .and_then(|l| l.rsplit("# handle ").next())
        .and_then(|h| h.trim().parse().ok())
        .unwrap_or_else(|| panic!("{listing}"));
    for dst in [DST4, DST6] {
        let lines = diagnose_while(&lab, || blocked(&lab, dst, 6312));
        let v = named(&lines);
        let r = &v["evidence"]["rule"];
        assert_eq!(r["source"], "nftables", "{r:#}");
        assert_eq!(r["family"], "inet");
        assert_eq!(r["table"], "gate47");
        assert_eq!(r["chain"], "pass47");
        assert_eq!(r["hook"], "forward");
        assert_eq!(r["handle"], handle);
        assert_eq!(r["comment"], "no 6312");
        assert_eq!(r["rule"], "tcp dport 6312 drop comment \"no 6312\"");
        let fix = v["fix_commands"][0][0].as_str().unwrap();
        assert!(
            fix.ends_with(&format!(
                "nft delete rule inet gate47 pass47 handle {handle}"
            )),
            "{fix}"
        );
        if dst == DST6 {
            apply_first_fix(v);
        }
    }
    healed(&lab, DST4, 6312);
    healed(&lab, DST6, 6312);
}

#[test]
fn iptables_legacy_rules_are_named_v4_and_v6() {
    assert!(
        have("iptables-legacy") && have("ip6tables-legacy"),
        "iptables-legacy must be installed (Debian's iptables package has it)"
    );
    let lab = lab("nflegacy");
    lab.exec(
        "gate",
        "iptables-legacy -N OLD-47 && iptables-legacy -A FORWARD -j OLD-47 && \
         iptables-legacy -A OLD-47 -p tcp --dport 6313 -j DROP && \
         ip6tables-legacy -P FORWARD DROP",
    )
    .unwrap();
    let lines = diagnose_while(&lab, || blocked(&lab, DST4, 6313));
    let v = named(&lines);
    let r = &v["evidence"]["rule"];
    assert_eq!(r["source"], "iptables-legacy", "{r:#}");
    assert_eq!(r["chain"], "OLD-47");
    assert_eq!(r["jump_path"], "FORWARD -> OLD-47");
    assert_eq!(r["handle"], Value::Null);
    apply_first_fix(v);
    healed(&lab, DST4, 6313);
    // IPv6: the chain's policy drops it.
    let lines = diagnose_while(&lab, || blocked(&lab, DST6, 6313));
    let v = named(&lines);
    let r = &v["evidence"]["rule"];
    assert_eq!(r["source"], "iptables-legacy", "{r:#}");
    assert_eq!(r["family"], "ip6");
    assert_eq!(r["policy"], true);
    assert_eq!(r["chain"], "FORWARD");
    let fix = v["fix_commands"][0][0].as_str().unwrap();
    assert!(
        fix.ends_with("ip6tables-legacy -t filter -P FORWARD ACCEPT"),
        "{fix}"
    );
    apply_first_fix(v);
    healed(&lab, DST6, 6313);
}

/// The one proven drop of `lines`, by a native rule whose map or set
/// holds `key` with `comment` (`(table, lookup, name)`: its family and
/// table, "map" or "set", and its name); fix 1 deletes that element only.
fn element_named<'a>(
    lab: &Netlab,
    lines: &'a [Value],
    (table, lookup, name): (&str, &str, &str),
    key: &str,
    comment: &str,
) -> &'a Value {
    let v = named(lines);
    let r = &v["evidence"]["rule"];
    assert_eq!(r["source"], "nftables", "{r:#}");
    assert_eq!(r["element"][lookup], name, "{r:#}");
    assert_eq!(r["element"]["key"], key, "{r:#}");
    assert_eq!(r["element"]["comment"], comment, "{r:#}");
    assert_eq!(
        v["fix_commands"][0][0],
        format!(
            "ip netns exec {} nft delete element {table} {name} '{{ {key} }}'",
            lab.name("gate")
        )
    );
    v
}

/// A verdict map, as kube-proxy's nftables mode drops traffic to a
/// Service without endpoints: gate's forward hook looks up daddr . proto
/// . dport in `svc-gone`, whose element for 6311 drops and whose element
/// for 6312 goes to a chain that rejects. Each drop names the element
/// and its comment; fix 1 deletes that element only. Port 6313, in no
/// element, connects throughout and is never blamed.
#[test]
fn a_verdict_map_drop_names_the_element_and_its_comment() {
    assert!(
        have("nft"),
        "nft must be installed (cargo xtask test installs nftables)"
    );
    let lab = lab("nfvmap");
    lab.exec(
        "gate",
        "nft -f - <<'EOF'
table ip kpx71 {
  map svc-gone {
    type ipv4_addr . inet_proto . inet_service : verdict
    elements = { 10.147.88.40 . tcp . 6311 comment \"shop/web:http\" : drop,
                 10.147.88.40 . tcp . 6312 comment \"shop/api:grpc\" : goto refuse }
  }
  chain refuse {
    reject
  }
  chain filter-forward {
    type filter hook forward priority -110; policy accept;
    ip daddr . meta l4proto . th dport vmap @svc-gone
  }
}
EOF",
    )
    .unwrap();
    for (port, comment, verdict) in [
        (6311, "shop/web:http", "DROP"),
        (6312, "shop/api:grpc", "refuse"),
    ] {
        let mut open = false;
        let lines = diagnose_while(&lab, || {
            blocked(&lab, DST4, port);
            open = connects(&lab, DST4, 6313, 20);
        });
        assert!(open, "6313 is in no element");
        let key = format!("10.147.88.40 . tcp . {port}");
        let v = element_named(&lab, &lines, ("ip kpx71", "map", "svc-gone"), &key, comment);
        assert_eq!(v["evidence"]["rule"]["element"]["verdict"], verdict);
        let s = v["summary"].as_str().unwrap();
        assert!(
            s.contains(&format!("map element `{key}` (comment \"{comment}\")")),
            "{s}"
        );
        apply_first_fix(v);
        healed(&lab, DST4, port);
    }
}

/// A blocklist: two native rules without counters, each looking the
/// packet up in a set (an interval set of addresses, and an address .
/// port concatenation). Counters cannot tell them apart; the sets can:
/// each connection is in one, so its rule is proven and the element, with
/// its comment, named. Deleting the element heals it, and the rest of the
/// set stays in force (the other port is still dropped by it).
#[test]
fn a_set_drop_names_the_member_and_its_comment() {
    assert!(
        have("nft"),
        "nft must be installed (cargo xtask test installs nftables)"
    );
    let mut lab = lab("nfset");
    lab.exec(
        "gate",
        "nft -f - <<'EOF'
table inet edge58 {
  set deny-hosts {
    type ipv4_addr; flags interval;
    elements = { 10.147.90.0/24, 10.147.88.40 comment \"ticket 4471\" }
  }
  set deny-pairs {
    type ipv4_addr . inet_service;
    elements = { 10.147.88.41 . 6317 comment \"old billing\" }
  }
  chain relay {
    type filter hook forward priority 5; policy accept;
    ip daddr . tcp dport @deny-pairs drop
    tcp dport 6316 ip daddr @deny-hosts drop
  }
}
EOF",
    )
    .unwrap();
    lab.exec(
        "dst",
        "ip addr add 10.147.88.41/32 dev d0 && ip addr add 10.147.90.7/32 dev d0",
    )
    .unwrap();
    lab.exec("gate", "ip route add 10.147.90.0/24 dev g1")
        .unwrap();
    lab.spawn(
        "dst",
        "/usr/bin/python3 -c 'import socket, threading\n\
         def serve(p):\n\
         \x20s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         \x20s.bind((\"0.0.0.0\", p)); s.listen(64)\n\
         \x20while True: s.accept()[0].close()\n\
         for p in range(6316, 6319): threading.Thread(target=serve, args=(p,)).start()'",
    )
    .unwrap();
    assert!(
        connects(&lab, "10.147.90.7", 6318, 50),
        "the listener never came up"
    );
    for (dst, port, set, key, comment) in [
        (
            "10.147.88.40",
            6316,
            "deny-hosts",
            "10.147.88.40",
            "ticket 4471",
        ),
        (
            "10.147.88.41",
            6317,
            "deny-pairs",
            "10.147.88.41 . 6317",
            "old billing",
        ),
    ] {
        let mut open = false;
        let lines = diagnose_while(&lab, || {
            blocked(&lab, dst, port);
            open = connects(&lab, dst, 6318, 20);
        });
        assert!(open, "6318 is in no set");
        let v = element_named(&lab, &lines, ("inet edge58", "set", set), key, comment);
        let s = v["summary"].as_str().unwrap();
        assert!(
            s.contains(&format!(
                "matching element `{key}` (comment \"{comment}\") of set {set}"
            )),
            "{s}"
        );
        apply_first_fix(v);
        healed(&lab, dst, port);
    }
    // Only the element went: the rest of the set is still in force.
    let lines = diagnose_while(&lab, || blocked(&lab, "10.147.90.7", 6316));
    let r = &named(&lines)["evidence"]["rule"];
    assert_eq!(r["element"]["key"], "10.147.90.0/24", "{r:#}");
}

/// A DROP rule for another port: the connection works, nothing is said.
#[test]
fn a_rule_that_does_not_match_stays_silent() {
    let lab = lab("nfquiet");
    lab.exec(
        "gate",
        "iptables -N EDGE-48 && iptables -A FORWARD -j EDGE-48 && \
         iptables -A EDGE-48 -p tcp --dport 6399 -j DROP",
    )
    .unwrap();
    let mut ok = false;
    let lines = diagnose_while(&lab, || ok = connects(&lab, DST4, 6310, 20));
    assert!(ok);
    assert!(verdicts(&lines, "netfilter_drop").is_empty(), "{lines:#?}");
}

/// An asymmetric path, one per family: `src` reaches `dst` over a
/// direct link, but `dst` answers through `gate`, whose conntrack never
/// saw the SYN and whose FORWARD drops INVALID: the SYN-ACK dies there.
struct Asymmetric {
    tag: &'static str,
    /// On `src`: its address on the direct link and its route to `dst`.
    src: &'static str,
    /// On `dst`: its address on the direct link.
    dst: &'static str,
    /// On `gate`: the INVALID rule.
    rule: &'static str,
    to: &'static str,
    port: u16,
    family: &'static str,
    /// How the summary opens: the SYN-ACK's two ends.
    opens: &'static str,
}

fn syn_ack_dies_as_invalid(a: Asymmetric) {
    let lab = lab(a.tag);
    lab.veth("src", "s1", "dst", "d1").unwrap();
    lab.exec("src", a.src).unwrap();
    lab.exec("dst", a.dst).unwrap();
    lab.exec("gate", a.rule).unwrap();
    let lines = diagnose_while(&lab, || blocked(&lab, a.to, a.port));
    assert!(verdicts(&lines, "netfilter_drop").is_empty(), "{lines:#?}");
    let v = verdicts(&lines, "conntrack_invalid");
    assert_eq!(v.len(), 1, "{lines:#?}");
    let v = v[0];
    assert_eq!(v["tier"], "proven");
    assert_eq!(v["evidence"]["why"], "syn_ack_without_syn");
    assert_eq!(v["evidence"]["rule"]["chain"], "FORWARD");
    assert_eq!(v["evidence"]["rule"]["position"], 1);
    assert_eq!(v["evidence"]["rule"]["family"], a.family);
    let s = v["summary"].as_str().unwrap();
    assert!(
        s.starts_with(a.opens)
            && s.contains("dropped as conntrack state INVALID by rule 1 of chain FORWARD"),
        "{s}"
    );
    // Without the rule the SYN-ACK passes (conntrack still calls it
    // invalid, nothing drops it) and the connection opens.
    apply_first_fix(v);
    healed(&lab, a.to, a.port);
}

#[test]
fn syn_ack_without_syn_is_conntrack_invalid() {
    syn_ack_dies_as_invalid(Asymmetric {
        tag: "nfct",
        src: "ip addr add 10.147.99.5/24 dev s1 && \
              ip route add 10.147.88.40/32 via 10.147.99.40 dev s1 src 10.147.30.5",
        // The SYN-ACK leaves by another device than the SYN came in.
        dst: "ip addr add 10.147.99.40/24 dev d1 && \
              sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.d1.rp_filter=0",
        rule: "iptables -A FORWARD -m conntrack --ctstate INVALID -j DROP",
        to: DST4,
        port: 6312,
        family: "ip",
        opens: "tcp SYN-ACK from 10.147.88.40:6312 to 10.147.30.5:",
    });
}

#[test]
fn ipv6_syn_ack_without_syn_is_conntrack_invalid() {
    syn_ack_dies_as_invalid(Asymmetric {
        tag: "nfct6",
        src: "ip -6 addr add fd47:99::5/64 dev s1 nodad && \
              ip -6 route add fd47:88::40/128 via fd47:99::40 dev s1 src fd47:30::5",
        dst: "ip -6 addr add fd47:99::40/64 dev d1 nodad",
        rule: "ip6tables -A FORWARD -m conntrack --ctstate INVALID -j DROP",
        to: DST6,
        port: 6311,
        family: "ip6",
        opens: "tcp SYN-ACK from [fd47:88::40]:6311 to [fd47:30::5]:",
    });
}

/// The same path with only `ct state invalid` rules for another port
/// would be silent; here the control is the symmetric path: the same
/// INVALID rule, traffic through `gate` both ways, nothing said.
#[test]
fn conntrack_invalid_rule_on_a_symmetric_path_stays_silent() {
    let lab = lab("nfctok");
    lab.exec(
        "gate",
        "iptables -A FORWARD -m conntrack --ctstate INVALID -j DROP",
    )
    .unwrap();
    let mut ok = false;
    let lines = diagnose_while(&lab, || ok = connects(&lab, DST4, 6312, 20));
    assert!(ok);
    let said: Vec<&Value> = lines.iter().filter(|v| v["type"] == "verdict").collect();
    assert!(said.is_empty(), "{said:#?}");
}
