//! `diagnose --nftrace`: where nftables rules without counters leave
//! `netfilter_drop` with several candidates, the kernel's trace of the
//! flow's next packet names the one that dropped it; the trace table
//! never changes a packet's fate and never outlives tracer, even when it
//! is killed with SIGKILL. Without the flag nothing is added to the
//! ruleset and the verdict stays suspected.
//!
//! cli 10.63.4.2 -- srv 10.63.4.9, where `inet wall38` drops TCP to
//! 7400-7499 (no counter) after a decoy that drops the same port from
//! another subnet (no counter either): counters cannot tell them apart.

use serde_json::Value;
use std::time::{Duration, Instant};
use tracer_tests::{prefix, start, Netlab};

const SRV: &str = "10.63.4.9";

fn lab(test: &str) -> (Netlab, u64) {
    let mut lab = Netlab::new(&prefix(test)).unwrap();
    lab.ns("cli").unwrap();
    lab.ns("srv").unwrap();
    lab.veth("cli", "c38", "srv", "s38").unwrap();
    lab.exec("cli", "ip addr add 10.63.4.2/24 dev c38").unwrap();
    lab.exec(
        "srv",
        "ip addr add 10.63.4.9/24 dev s38 && \
         nft add table inet wall38 && \
         nft add chain inet wall38 in38 '{ type filter hook input priority 0; }' && \
         nft add rule inet wall38 in38 ip saddr 10.63.99.0/24 tcp dport 7420 drop && \
         nft add rule inet wall38 in38 tcp dport 7400-7499 drop",
    )
    .unwrap();
    // What the trace rule must let through: a listener on another port.
    lab.spawn(
        "srv",
        "/usr/bin/python3 -c 'import socket\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind((\"0.0.0.0\", 7600)); s.listen(16)\n\
         while True: s.accept()[0].close()'",
    )
    .unwrap();
    let listing = lab
        .exec("srv", "nft -a list chain inet wall38 in38")
        .unwrap();
    let handle = listing
        .lines()
        .find(|l| l.contains("7400-7499"))
        .and_then(|l| l.rsplit("# handle ").next())
        .and_then(|h| h.trim().parse().ok())
        .unwrap_or_else(|| panic!("{listing}"));
    (lab, handle)
}

/// One connection attempt to `port` (its SYN and retransmits); whether
/// it connected.
fn connect(lab: &Netlab, port: u16, secs: u32) -> bool {
    lab.exec(
        "cli",
        &format!("timeout {secs} bash -c 'echo > /dev/tcp/{SRV}/{port}'"),
    )
    .is_ok()
}

fn trace_tables(lab: &Netlab) -> Vec<String> {
    lab.exec("srv", "nft list tables")
        .unwrap()
        .lines()
        .filter(|l| l.contains("tracer_trace"))
        .map(str::to_string)
        .collect()
}

fn netfilter_verdict(lines: &[Value]) -> &Value {
    lines
        .iter()
        .rev()
        .find(|v| v["type"] == "verdict" && v["kind"] == "netfilter_drop")
        .unwrap_or_else(|| panic!("no netfilter_drop verdict: {lines:#?}"))
}

fn wait_until(what: &str, secs: u64, f: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "{what} within {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn nftrace_names_the_uncounted_rule_and_leaves_nothing() {
    let (lab, handle) = lab("nftr");
    let srv = lab.name("srv");
    let run = start(&["diagnose", "--nftrace", "--netns", &srv]);
    assert!(!connect(&lab, 7420, 6), "the firewall should drop 7420");
    let proven = run.wait_for(Duration::from_secs(10), |v| {
        v["type"] == "verdict" && v["kind"] == "netfilter_drop" && v["tier"] == "proven"
    });
    // The trace rule only marks packets: other traffic still flows.
    assert!(connect(&lab, 7600, 3), "the trace must not drop 7600");
    assert_eq!(trace_tables(&lab).len(), 1, "the trace table while tracing");
    let lines = run.stop();
    let v = proven.unwrap_or_else(|| netfilter_verdict(&lines).clone());
    assert_eq!(v["tier"], "proven", "{v:#}");
    assert_eq!(v["evidence"]["rule"]["handle"], handle, "{v:#}");
    assert_eq!(v["evidence"]["nftrace"]["handle"], handle, "{v:#}");
    assert!(v["summary"].as_str().unwrap().contains("nftrace"), "{v:#}");
    // The owner of the table is gone with tracer: so is the table.
    wait_until("the trace table is gone after exit", 3, || {
        trace_tables(&lab).is_empty()
    });
}

#[test]
fn a_killed_tracer_leaves_no_trace_table() {
    let (lab, _) = lab("nftk");
    let srv = lab.name("srv");
    let run = start(&["diagnose", "--nftrace", "--netns", &srv]);
    assert!(!connect(&lab, 7433, 2));
    wait_until("the trace table appears", 10, || {
        trace_tables(&lab).len() == 1
    });
    // SIGKILL: tracer runs no cleanup at all.
    unsafe { libc_kill(run.pid() as i32, 9) };
    wait_until("the kernel deletes the owned table", 5, || {
        trace_tables(&lab).is_empty()
    });
    drop(run);
}

#[test]
fn without_nftrace_nothing_is_added_and_the_rule_stays_suspected() {
    let (lab, _) = lab("nfts");
    let srv = lab.name("srv");
    let before = lab.exec("srv", "nft list ruleset").unwrap();
    let run = start(&["diagnose", "--netns", &srv]);
    assert!(!connect(&lab, 7451, 5));
    assert!(trace_tables(&lab).is_empty());
    let lines = run.stop();
    let v = netfilter_verdict(&lines);
    assert_eq!(v["tier"], "suspected", "{v:#}");
    assert_eq!(v["evidence"]["candidates"].as_array().unwrap().len(), 2);
    assert!(v["evidence"]["nftrace"].is_null());
    assert_eq!(lab.exec("srv", "nft list ruleset").unwrap(), before);
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
