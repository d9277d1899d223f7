use super::super::testkit::*;
use super::super::{Fact, Tier};
use crate::events::reason::Reason;
use crate::events::record::{Family, Proto};
use crate::host::firewall::iptables::parse;
use crate::host::firewall::{Ruleset, Source};
use std::sync::Arc;

#[test]
fn firewall_drops_are_named_with_their_flow_and_direction() {
    let mut udp = drop(Reason::NETFILTER_DROP, 1_000);
    udp.proto = Some(Proto::Udp);
    udp.family = Some(Family::Ipv6);
    udp.dst = Some(ip("fd00::1"));
    udp.dport = Some(7777);
    let mut ping = drop(Reason::NETFILTER_DROP, 2_000);
    ping.proto = Some(Proto::Icmp);
    ping.dst = Some(ip("10.0.0.1"));
    ping.icmp_type = Some(8);
    ping.icmp_code = Some(0);
    let mut synack = tcp(
        drop(Reason::NETFILTER_DROP, 3_000),
        "10.61.4.2",
        8443,
        "10.61.9.7",
        40836,
    );
    synack.tcp_flags = Some("S.".into());
    let mut frag = drop(Reason::NETFILTER_DROP, 4_000);
    frag.proto = Some(Proto::Udp);
    frag.src = Some(ip("10.61.9.7"));
    frag.dst = Some(ip("10.61.4.2"));
    frag.fragment = true;
    let facts = [udp, ping, synack, frag].map(Fact::Drop).to_vec();
    let v = run(&mut Fake::default(), facts, 0);
    assert_eq!(kinds(&v), [("netfilter_drop", Tier::Proven); 4]);
    let s: Vec<&str> = v.iter().map(|v| v.summary.as_str()).collect();
    assert!(s[0].contains("udp from ? to [fd00::1]:7777"), "{}", s[0]);
    assert!(
        s[1].contains("icmp echo request from ? to 10.0.0.1"),
        "{}",
        s[1]
    );
    assert!(
        s[2].contains("tcp SYN-ACK from 10.61.4.2:8443 to 10.61.9.7:40836"),
        "{}",
        s[2]
    );
    assert!(
        s[3].contains("a non-first fragment (no ports) of udp from 10.61.9.7 to 10.61.4.2"),
        "{}",
        s[3]
    );
}

const GUARDED: &str = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
:EDGE-GUARD - [0:0]\n[7:420] -A FORWARD -j EDGE-GUARD\n\
[P1:60] -A EDGE-GUARD -p tcp -m tcp --dport 6300 -m comment --comment \"no 6300\" -j DROP\n\
[P2:60] -A EDGE-GUARD -p tcp -j REJECT\n[0:0] -A FORWARD -p udp -j DROP\nCOMMIT\n";

fn reading(read_ns: u64, p1: u64, p2: u64) -> Arc<Ruleset> {
    let text = GUARDED
        .replace("P1", &p1.to_string())
        .replace("P2", &p2.to_string());
    Arc::new(Ruleset {
        read_ns,
        chains: parse(&text, Source::IptablesNft, "ip"),
        unread: vec![],
    })
}

fn lab() -> Fake {
    Fake::with(vec![topo(NS, Some("lab"), vec![], vec![])])
}

fn forwarded(ts: u64) -> Fact {
    let mut d = tcp(
        drop(Reason::NETFILTER_DROP, ts),
        "10.61.9.7",
        40100,
        "10.61.4.2",
        6300,
    );
    d.tcp_flags = Some("S".into());
    d.ingress_ifindex = 3;
    d.location = "nft_do_chain+0x46f".into();
    Fact::Drop(d)
}

#[test]
fn the_only_rule_that_counted_is_named_with_its_jump_path_and_removed() {
    let mut src = lab();
    src.rulesets.insert(NS, vec![reading(1_500, 1, 0)]);
    let v = run(&mut src, vec![forwarded(1_000)], 0);
    assert_eq!(kinds(&v), [("netfilter_drop", Tier::Proven)]);
    let s = &v[0].summary;
    assert!(
        s.contains("dropped by rule 1 of chain EDGE-GUARD (table filter, hook forward, iptables-nft, reached by FORWARD -> EDGE-GUARD): `-A EDGE-GUARD -p tcp -m tcp --dport 6300 -m comment --comment \"no 6300\" -j DROP`"),
        "{s}"
    );
    let e = &v[0].evidence["rule"];
    assert_eq!(e["chain"], "EDGE-GUARD");
    assert_eq!(e["position"], 1);
    assert_eq!(e["comment"], "no 6300");
    assert_eq!(e["jump_path"], "FORWARD -> EDGE-GUARD");
    assert_eq!(
        v[0].fix_commands[0],
        ["ip netns exec lab iptables-nft -t filter -D EDGE-GUARD 1"]
    );
}

#[test]
fn two_rules_that_counted_are_suspects_until_the_counters_tell() {
    let mut src = lab();
    // Both counted before; between the readings only the REJECT rose
    // by the two drops seen.
    src.rulesets.insert(
        NS,
        vec![reading(1_000_500, 4, 9), reading(2_300_000_000, 4, 11)],
    );
    let facts = vec![
        forwarded(1_000_000),
        forwarded(1_000_000_000),
        forwarded(2_000_000_000),
    ];
    let v = run(&mut src, facts, 1_000_000_000);
    assert_eq!(kinds(&v), [("netfilter_drop", Tier::Proven)]);
    assert!(
        v[0].summary.contains("rule 2 of chain EDGE-GUARD"),
        "{}",
        v[0].summary
    );
    assert_eq!(
        v[0].fix_commands[0],
        ["ip netns exec lab iptables-nft -t filter -D EDGE-GUARD 2"]
    );
    let mut once = lab();
    once.rulesets.insert(NS, vec![reading(1_000_500, 4, 9)]);
    let v = run(&mut once, vec![forwarded(1_000_000)], 3_000_000_000);
    assert_eq!(kinds(&v), [("netfilter_drop", Tier::Suspected)]);
    assert_eq!(v[0].evidence["candidates"].as_array().unwrap().len(), 2);
    assert!(
        v[0].fix_commands.iter().all(|c| c.is_empty()),
        "{:?}",
        v[0].fix
    );
}

#[test]
fn an_invalid_state_rule_is_conntrack_invalid_with_why() {
    let nft = r#"{"nftables":[{"chain":{"family":"inet","table":"edge","name":"fw","hook":"forward","policy":"accept"}},
{"rule":{"family":"inet","table":"edge","chain":"fw","handle":5,"expr":[{"match":{}},{"drop":null}]}}]}"#;
    let text = "table inet edge { # handle 1\n\tchain fw { # handle 1\n\t\tct state invalid drop # handle 5\n\t}\n}\n";
    let rs = Arc::new(Ruleset {
        read_ns: 10,
        chains: crate::host::firewall::nft::parse(nft, text, &[]).unwrap(),
        unread: vec![],
    });
    let mut src = lab();
    src.rulesets.insert(NS, vec![rs]);
    let mut a = tcp(
        drop(Reason::NETFILTER_DROP, 1_000),
        "10.61.4.2",
        8443,
        "10.61.9.7",
        40001,
    );
    a.tcp_flags = Some("S.".into());
    a.ingress_ifindex = 3;
    // Another client's SYN-ACK from the same server: the same cause.
    let mut b = a.clone();
    b.ts_ns = 2_000;
    b.dport = Some(40002);
    let mut ack = tcp(
        drop(Reason::NETFILTER_DROP, 3_000),
        "10.61.9.7",
        40003,
        "10.61.4.3",
        22,
    );
    ack.tcp_flags = Some(".".into());
    ack.ingress_ifindex = 3;
    let v = run(
        &mut src,
        vec![Fact::Drop(a), Fact::Drop(b), Fact::Drop(ack)],
        0,
    );
    assert_eq!(
        kinds(&v),
        [
            ("conntrack_invalid", Tier::Proven),
            ("conntrack_invalid", Tier::Proven)
        ]
    );
    assert_eq!(v[0].drops, 2);
    assert_eq!(v[0].evidence["why"], "syn_ack_without_syn");
    assert_eq!(v[1].evidence["why"], "no_entry_or_out_of_window");
    assert_eq!(
        v[0].fix_commands[0],
        ["ip netns exec lab nft delete rule inet edge fw handle 5"]
    );
}

#[test]
fn a_second_flow_soon_after_reuses_the_reading_and_is_narrowed_later() {
    let mut src = lab();
    // Read once at the first drop; the next reading only at a tick.
    src.rulesets
        .insert(NS, vec![reading(1_500, 1, 0), reading(1_200_000_000, 1, 1)]);
    let first = forwarded(1_000);
    let Fact::Drop(mut second) = forwarded(100_000_000) else {
        unreachable!()
    };
    second.dport = Some(6301);
    let v = run(&mut src, vec![first, Fact::Drop(second)], 2_000_000_000);
    assert_eq!(
        kinds(&v),
        [
            ("netfilter_drop", Tier::Proven),
            ("netfilter_drop", Tier::Proven)
        ]
    );
    assert!(
        v[0].summary.contains("rule 1 of chain EDGE-GUARD"),
        "{}",
        v[0].summary
    );
    assert!(
        v[1].summary.contains("rule 2 of chain EDGE-GUARD"),
        "{}",
        v[1].summary
    );
}

/// Two native nftables rules without counters on the forward hook: the
/// second is what drops 6300 (the first only from another subnet).
fn uncounted(read_ns: u64) -> Arc<Ruleset> {
    use crate::host::firewall::{FwChain, FwRule};
    let rule = |position, handle, text: &str| FwRule {
        position,
        handle: Some(handle),
        text: text.into(),
        comment: None,
        target: Some("DROP".into()),
        goto: false,
        counter: None,
        vmap: None,
        sets: Vec::new(),
    };
    Arc::new(Ruleset {
        read_ns,
        chains: vec![FwChain {
            source: Source::Nftables,
            family: "inet".into(),
            table: "wall61".into(),
            name: "fwd61".into(),
            hook: Some("forward".into()),
            policy: Some("ACCEPT".into()),
            policy_counter: None,
            rules: vec![
                rule(1, 7, "ip saddr 10.99.0.0/24 tcp dport 6300 drop"),
                rule(2, 9, "tcp dport 6000-6999 drop"),
            ],
        }],
        unread: vec![],
    })
}

#[test]
fn nftrace_settles_uncounted_rules_and_without_it_they_stay_suspects() {
    use crate::host::firewall::nftrace::TraceHit;
    let facts = || vec![forwarded(1_000_000), forwarded(1_000_000_000)];
    let mut off = lab();
    off.rulesets.insert(NS, vec![uncounted(1_000_500)]);
    let v = run(&mut off, facts(), 3_000_000_000);
    assert_eq!(kinds(&v), [("netfilter_drop", Tier::Suspected)]);
    let mut on = lab();
    on.rulesets.insert(NS, vec![uncounted(1_000_500)]);
    let hit = |dport, handle| TraceHit {
        family: "inet".into(),
        table: "wall61".into(),
        chain: "fwd61".into(),
        handle: Some(handle),
        verdict: "drop".into(),
        dst: Some(ip("10.61.4.2")),
        dport: Some(dport),
        line: format!("trace id 1 inet wall61 fwd61 rule ... # handle {handle} (verdict drop)"),
    };
    // Another flow's trace (port 6400) must not settle this one.
    on.nftrace.insert(NS, vec![hit(6400, 7), hit(6300, 9)]);
    let v = run(&mut on, facts(), 3_000_000_000);
    assert_eq!(kinds(&v), [("netfilter_drop", Tier::Proven)]);
    assert_eq!(v[0].evidence["rule"]["handle"], 9);
    assert_eq!(v[0].evidence["nftrace"]["handle"], 9);
    assert!(v[0].summary.contains("Seen by nftrace"), "{}", v[0].summary);
    assert_eq!(
        v[0].fix_commands[0],
        ["ip netns exec lab nft delete rule inet wall61 fwd61 handle 9"]
    );
}

/// Flow A's drop is read at 500 ms (rule 2 counted it); flow B's, at
/// 1 s, finds only that reading from before it, at most 500 ms old. The
/// reading cannot name B's rule: the next one, after B, decides. Here no
/// rule's counter rose for B: with the namespace's conntrack table full
/// and refusing entries, B is `conntrack_table_full`'s and netfilter_drop
/// says nothing of it; with room in the table, B's drop is proven with its
/// rule unknown; and where rule 1 rose, rule 1 is named.
#[test]
fn a_reading_from_before_the_drop_names_no_rule_until_the_next_counts_it() {
    let flow = |ts, dport| {
        let Fact::Drop(mut d) = forwarded(ts) else {
            unreachable!()
        };
        d.dport = Some(dport);
        Fact::Drop(d)
    };
    for (full, later, named) in [
        (true, (0, 1), None),
        (false, (0, 1), Some("")),
        (true, (1, 1), Some("rule 1 of chain EDGE-GUARD")),
    ] {
        let mut t = topo(NS, Some("lab"), vec![], vec![]);
        t.exhaustion.conntrack.max = Some(24);
        t.exhaustion.conntrack.count = Some(if full { 24 } else { 3 });
        t.exhaustion.conntrack.drop = Some(if full { 9 } else { 0 });
        let mut src = Fake::with(vec![t]);
        src.rulesets.insert(
            NS,
            vec![reading(500, 0, 1), reading(1_600_000_000, later.0, later.1)],
        );
        let facts = vec![flow(400, 6301), flow(1_000, 6300)];
        let v = run(&mut src, facts, 3_000_000_000);
        let of_b: Vec<_> = v.iter().filter(|v| v.evidence["dport"] == 6300).collect();
        match named {
            None => assert!(of_b.is_empty(), "full={full}: {of_b:#?}"),
            Some(rule) => {
                assert_eq!(of_b.len(), 1, "{of_b:#?}");
                assert_eq!(of_b[0].tier, Tier::Proven);
                assert!(of_b[0].summary.contains(rule), "{}", of_b[0].summary);
                if rule.is_empty() {
                    assert!(of_b[0].evidence["rule"].is_null(), "{:?}", of_b[0].evidence);
                }
            }
        }
    }
}
