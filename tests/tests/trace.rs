//! `tracer trace`: one SYN followed from the client's namespace through
//! the router to its IP_RPFILTER drop in the host, under one skb_id.

use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;
use tracer_tests::{is_drop, rpf_lab, run_bad, start, syn};

#[test]
fn trace_follows_a_syn_across_namespaces_to_its_rpfilter_drop() {
    let lab = rpf_lab("trace");
    let (client, router, host) = (lab.name("client"), lab.name("router"), lab.name("host"));
    let run = start(&[
        "trace", "--netns", &client, "--netns", &router, "--netns", &host, "tcp", "port", "8080",
    ]);
    syn(&lab);
    run.wait_for(Duration::from_secs(15), |v| is_drop(v, "IP_RPFILTER"));
    let lines = run.stop();
    let drop = lines
        .iter()
        .find(|v| is_drop(v, "IP_RPFILTER"))
        .expect("an IP_RPFILTER drop")
        .clone();
    let id = drop["skb_id"].as_u64().expect("the drop names its trail");
    let hops: Vec<&Value> = lines
        .iter()
        .filter(|v| v["type"] == "hop" && v["skb_id"] == id)
        .collect();
    let places: Vec<(String, String, String)> = hops
        .iter()
        .map(|h| {
            (
                h["netns_name"].as_str().unwrap_or("?").to_string(),
                h["ifname"].as_str().unwrap_or("?").to_string(),
                h["event"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let netns: BTreeSet<&str> = places.iter().map(|p| p.0.as_str()).collect();
    assert!(netns.len() >= 2, "one skb_id across namespaces: {places:?}");
    // The path, in order: queued in the client, received and forwarded
    // by the router, received by the host, dropped there.
    let want = [
        (client.as_str(), "eth0", "queue"),
        (router.as_str(), "eth0", "receive"),
        (router.as_str(), "eth1", "queue"),
        (host.as_str(), "eth0", "receive"),
    ];
    let mut at = 0;
    for p in &places {
        if at < want.len() && (p.0.as_str(), p.1.as_str(), p.2.as_str()) == want[at] {
            at += 1;
        }
    }
    assert_eq!(at, want.len(), "path {places:?} lacks {:?}", want.get(at));
    for h in &hops {
        assert_eq!(h["src"], "172.17.5.5");
        assert_eq!(h["dport"], 8080);
        assert_eq!(h["tcp_flags"], "S");
        assert!(h["len"].as_u64().unwrap() >= 60);
    }
    assert_eq!(drop["netns_name"], host.as_str());
    let last_hop = hops.last().unwrap()["ts_ns"].as_u64().unwrap();
    assert!(
        drop["ts_ns"].as_u64().unwrap() >= last_hop,
        "the drop ends the trail"
    );
}

#[test]
fn trace_without_an_expression_is_refused() {
    let (code, err) = run_bad(&["trace"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("filter expression"), "{err}");
}
