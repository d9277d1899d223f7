//! `neighbor_table_full`: packets dropped because no neighbour entry
//! could be made for their next hop: the ARP (or NDISC) table held
//! `gc_thresh3` entries and forced garbage collection freed none
//! (`NEIGH_CREATEFAIL` at ip_finish_output2 / ip6_finish_output2; on
//! kernels without reasons the same place, which frees nothing else but
//! on an allocation failure). `NEIGH_QUEUEFULL` is taken too, where the
//! same counter moved. The proof is the table's own `table_fulls`
//! counter rising between two readings taken while the drops happened.
//! The table and its limits are the host's, whichever namespace drops:
//! Linux keeps one table per family for every namespace.
//!
//! Tier: proven. `table_fulls` counts only entries refused at the limit.

use super::ctx::{Ctx, Finding};
use super::facts::exhaustion::{self as ex, Readings};
use super::fix::{q, Fix};
use super::key::Key;
use super::{Fact, Rule, Tier};
use crate::events::reason::Reason;
use crate::events::reason_inference::function;
use crate::events::record::DropRecord;
use crate::host::exhaustion::NeighTable;
use crate::host::topology::NsTopology;
use serde_json::json;

#[derive(Default)]
pub struct NeighborTableFull {
    /// With the first drop seen per namespace (its IP version too).
    readings: Readings,
}

/// A drop that a full neighbour table explains, and its IP version.
fn matches(d: &DropRecord) -> Option<bool> {
    let f = function(&d.location);
    let named = d.reason == Reason::NEIGH_CREATEFAIL || d.reason == Reason::NEIGH_QUEUEFULL;
    // Without reasons (5.10): the place alone, the counter decides.
    let placed = (d.reason.is_empty() || d.reason == Reason::NOT_SPECIFIED)
        && matches!(f, "ip_finish_output2" | "ip6_finish_output2");
    if !(named || placed) {
        return None;
    }
    Some(match d.dst {
        Some(a) => a.is_ipv6(),
        None => f == "ip6_finish_output2",
    })
}

impl Rule for NeighborTableFull {
    fn kinds(&self) -> &'static [&'static str] {
        &["neighbor_table_full"]
    }

    fn on_fact(&mut self, fact: &Fact, cx: &mut Ctx) {
        let Fact::Drop(d) = fact else { return };
        let Some(v6) = matches(d) else { return };
        let key = Key::NeighborTableFull { v6 };
        if let Some(netns) = self.readings.drop(d, &key, cx) {
            self.check(netns, cx);
        }
    }

    fn tick(&mut self, cx: &mut Ctx) {
        for netns in self.readings.waiting() {
            self.check(netns, cx);
        }
    }
}

impl NeighborTableFull {
    fn check(&mut self, netns: u32, cx: &mut Ctx) {
        // Readings run on the live clock (see `Ctx::wall_ns`).
        let now = cx.wall_ns;
        let Some(first) = self.readings.before(netns, now, || cx.topo(netns)) else {
            return;
        };
        let Some(d) = self.readings.first_drop(netns) else {
            return;
        };
        let v6 = matches(&d).unwrap_or(false);
        let table = |t: &NsTopology| {
            if v6 {
                t.exhaustion.ndisc.clone()
            } else {
                t.exhaustion.arp.clone()
            }
        };
        let before = |t: &NsTopology| {
            let b = t.exhaustion.before(&first.exhaustion);
            if v6 {
                b.ndisc_table_fulls
            } else {
                b.arp_table_fulls
            }
        };
        let refused = |t: &NsTopology| ex::rise(before(t), table(t).table_fulls).unwrap_or(0);
        let Some(after) = self.readings.after(netns, cx, |t| refused(t) > 0) else {
            return;
        };
        conclude(cx, &d, v6, before(&after), &table(&after), refused(&after));
    }
}

fn conclude(
    cx: &mut Ctx,
    d: &DropRecord,
    v6: bool,
    fulls_before: Option<u64>,
    a: &NeighTable,
    refused: u64,
) {
    let family = if v6 { "ipv6" } else { "ipv4" };
    let name = if v6 { "NDISC (IPv6)" } else { "ARP (IPv4)" };
    let thresh3 = a.gc_thresh3.unwrap_or(1024);
    let entries = a.entries.unwrap_or(0);
    let want = ex::sized(thresh3.max(entries), refused, 4096);
    let peer = d.dst.map_or("?".to_string(), |a| a.to_string());
    let dev = d.ifname.as_deref().unwrap_or("?");
    let summary = format!(
        "The {name} neighbour table is full ({entries} entries, gc_thresh3 {thresh3}): no entry could be made for {peer} on {dev}, and the kernel dropped the packet ({}); it refused {refused} entries while tracer watched (table_fulls {} -> {}). The table and its limit are host-wide, shared by every namespace.",
        d.reason,
        fulls_before.unwrap_or(0),
        a.table_fulls.unwrap_or(0),
    );
    let knob = |n: u8| format!("net.{family}.neigh.default.gc_thresh{n}");
    let set3 = format!("sysctl -w {}", q(&format!("{}={want}", knob(3))));
    let set2 = format!("sysctl -w {}", q(&format!("{}={}", knob(2), want / 2)));
    let fix = vec![
        Fix::run(
            format!(
                "Raise the hard limit and the soft one under it, on the host (the neighbour table is host-wide): {set3}; {set2}"
            ),
            vec![set3.clone(), set2.clone()],
        ),
        Fix::advice(ex::persist(&knob(3), want)),
        Fix::advice(format!(
            "If one interface resolves a whole subnet (a scan, or a route straight onto a large network), route it through a gateway instead; see the table with {}ip -s neigh",
            cx.ns_hint(d.netns)
        )),
    ];
    let evidence = json!({
        "reason": d.reason,
        "location": d.location,
        "ifname": d.ifname,
        "next_hop": d.dst,
        "src": d.src,
        "family": family,
        "entries": a.entries,
        "gc_thresh1": a.gc_thresh1,
        "gc_thresh2": a.gc_thresh2,
        "gc_thresh3": a.gc_thresh3,
        "counters": {
            "table_fulls": {"before": fulls_before, "after": a.table_fulls},
        },
        "refused": refused,
        "suggested_gc_thresh3": want,
    });
    cx.conclude(Finding {
        key: Key::NeighborTableFull { v6 },
        kind: "neighbor_table_full",
        tier: Tier::Proven,
        netns: d.netns,
        summary,
        evidence,
        fix,
    });
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{Fact, Tier};
    use super::ex::REREAD_NS;
    use crate::host::topology::NsTopology;

    fn arp(entries: u64, fulls: u64) -> NsTopology {
        let mut t = topo(NS, Some("nb"), vec![], vec![]);
        let a = &mut t.exhaustion.arp;
        a.entries = Some(entries);
        a.table_fulls = Some(fulls);
        a.gc_thresh2 = Some(16);
        a.gc_thresh3 = Some(24);
        t
    }

    fn createfail(ts: u64, reason: &str, location: &str) -> Fact {
        let mut d = drop(Reason::new(reason), ts);
        d.location = location.into();
        d.src = Some(ip("10.84.0.1"));
        d.dst = Some(ip("10.84.0.77"));
        d.ifname = Some("nb0".into());
        Fact::Drop(d)
    }

    #[test]
    fn table_fulls_rising_proves_a_full_table() {
        let mut src = Fake::sequence(vec![arp(20, 0), arp(24, 31)]);
        let f = |ts| createfail(ts, "NEIGH_CREATEFAIL", "ip_finish_output2+0x2d1");
        let v = run(&mut src, vec![f(1_000), f(2 * REREAD_NS)], 0);
        assert_eq!(kinds(&v), [("neighbor_table_full", Tier::Proven)]);
        assert_eq!(v[0].evidence["refused"], 31);
        assert_eq!(v[0].evidence["next_hop"], "10.84.0.77");
        assert_eq!(
            v[0].fix_commands[0],
            [
                "sysctl -w net.ipv4.neigh.default.gc_thresh3=4096",
                "sysctl -w net.ipv4.neigh.default.gc_thresh2=2048"
            ]
        );
    }

    #[test]
    fn without_reasons_the_place_counts_only_with_the_counter() {
        let f = |ts| createfail(ts, "NOT_SPECIFIED", "ip_finish_output2+0x1b0");
        let mut src = Fake::sequence(vec![arp(20, 5), arp(24, 9)]);
        let v = run(&mut src, vec![f(1_000), f(2 * REREAD_NS)], 0);
        assert_eq!(kinds(&v), [("neighbor_table_full", Tier::Proven)]);
        // The counter still: an allocation failure, not a full table.
        let mut src = Fake::sequence(vec![arp(20, 5), arp(20, 5)]);
        assert!(run(&mut src, vec![f(1_000), f(2 * REREAD_NS)], 0).is_empty());
        // Elsewhere: not a neighbour at all.
        let g = |ts| createfail(ts, "NOT_SPECIFIED", "ip_rcv_core+0x10");
        let mut src = Fake::sequence(vec![arp(20, 5), arp(24, 9)]);
        assert!(run(&mut src, vec![g(1_000), g(2 * REREAD_NS)], 0).is_empty());
    }
}
