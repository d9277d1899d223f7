//! `conntrack_table_full`: new connections refused because the
//! namespace's conntrack table held `nf_conntrack_max` entries and none
//! could be evicted ("nf_conntrack: table full, dropping packet"). The
//! packet is freed as a netfilter drop (`NETFILTER_DROP` at nf_hook_slow;
//! on kernels without reasons inferred from that place), as a rule's DROP
//! is: what tells them apart is conntrack's own `drop` statistic, which
//! counts only entries refused. It must have risen between two readings
//! taken while the drops happened.
//!
//! Tier: proven. The counter moved with the drops, and the table is at
//! its limit.

use super::ctx::{Ctx, Finding};
use super::facts::exhaustion::{self as ex, Readings};
use super::facts::firewall::packet_words;
use super::fix::{q, Fix};
use super::key::Key;
use super::{Fact, Rule, Tier};
use crate::events::reason::Reason;
use crate::events::record::DropRecord;
use crate::host::exhaustion::{Baseline, Conntrack};
use crate::host::topology::NsTopology;
use serde_json::json;

#[derive(Default)]
pub struct ConntrackTableFull {
    readings: Readings,
}

impl Rule for ConntrackTableFull {
    fn kinds(&self) -> &'static [&'static str] {
        &["conntrack_table_full"]
    }

    fn on_fact(&mut self, fact: &Fact, cx: &mut Ctx) {
        let Fact::Drop(d) = fact else { return };
        if d.reason != Reason::NETFILTER_DROP {
            return;
        }
        let key = Key::ConntrackTableFull { netns: d.netns };
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

impl ConntrackTableFull {
    fn check(&mut self, netns: u32, cx: &mut Ctx) {
        // Readings run on the live clock (see `Ctx::wall_ns`).
        let now = cx.wall_ns;
        let Some(first) = self.readings.before(netns, now, || cx.topo(netns)) else {
            return;
        };
        // No conntrack in this namespace (module not loaded): not ours.
        if first.exhaustion.conntrack.max.is_none() {
            return;
        }
        let refused = |t: &NsTopology| {
            let b = t.exhaustion.before(&first.exhaustion);
            ex::rise(b.conntrack_drop, t.exhaustion.conntrack.drop).unwrap_or(0)
        };
        let Some(after) = self.readings.after(netns, cx, |t| refused(t) > 0) else {
            return;
        };
        let Some(d) = self.readings.first_drop(netns) else {
            return;
        };
        let b = after.exhaustion.before(&first.exhaustion);
        conclude(cx, &d, &b, &after.exhaustion.conntrack, refused(&after));
    }
}

fn conclude(cx: &mut Ctx, d: &DropRecord, b: &Baseline, a: &Conntrack, refused: u64) {
    let max = a.max.unwrap_or(0);
    let count = a.count.unwrap_or(0);
    let want = ex::sized(max, refused, 65_536);
    let hint = cx.ns_hint(d.netns);
    let dev = d.ifname.as_deref().unwrap_or("?");
    let summary = format!(
        "The conntrack table is full ({count} of {max} entries, nf_conntrack_max): it refused {refused} new connections while tracer watched (conntrack drop {} -> {}) and the kernel dropped their packets (\"nf_conntrack: table full, dropping packet\"), {} on {dev} first.",
        b.conntrack_drop.unwrap_or(0),
        a.drop.unwrap_or(0),
        packet_words(d),
    );
    let set = format!(
        "sysctl -w {}",
        q(&format!("net.netfilter.nf_conntrack_max={want}"))
    );
    let fix = vec![
        Fix::run(
            format!(
                "Raise the limit, on the host (nf_conntrack_max is host-wide, read-only inside a namespace): {set}"
            ),
            vec![set.clone()],
        ),
        Fix::advice(ex::persist("net.netfilter.nf_conntrack_max", want)),
        Fix::advice(format!(
            "Or hold fewer entries: shorter timeouts for the traffic that fills it (net.netfilter.nf_conntrack_udp_timeout, nf_conntrack_tcp_timeout_time_wait), or a NOTRACK rule in the raw table for flows that need no state; see them with {hint}conntrack -L and the counters with {hint}conntrack -S"
        )),
    ];
    let evidence = json!({
        "reason": d.reason,
        "location": d.location,
        "ifname": d.ifname,
        "src": d.src, "dst": d.dst, "proto": d.proto, "sport": d.sport, "dport": d.dport,
        "nf_conntrack_count": a.count,
        "nf_conntrack_max": a.max,
        "counters": {
            "drop": {"before": b.conntrack_drop, "after": a.drop},
            "early_drop": {"before": b.conntrack_early_drop, "after": a.early_drop},
            "insert_failed": {"before": b.conntrack_insert_failed, "after": a.insert_failed},
            "count": {"before": b.conntrack_count, "after": a.count},
        },
        "refused": refused,
        "suggested_max": want,
    });
    cx.conclude(Finding {
        key: Key::ConntrackTableFull { netns: d.netns },
        kind: "conntrack_table_full",
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
    use crate::events::record::Proto;
    use crate::host::topology::NsTopology;

    fn ct(count: u64, drop: u64) -> NsTopology {
        let mut t = topo(NS, Some("ct"), vec![], vec![]);
        let c = &mut t.exhaustion.conntrack;
        c.count = Some(count);
        c.max = Some(64);
        c.drop = Some(drop);
        c.early_drop = Some(2);
        c.insert_failed = Some(0);
        t
    }

    fn refused(ts: u64) -> Fact {
        let mut d = drop(Reason::NETFILTER_DROP, ts);
        d.location = "nf_hook_slow+0x91".into();
        d.proto = Some(Proto::Udp);
        d.src = Some(ip("10.93.4.1"));
        d.dst = Some(ip("10.93.4.2"));
        d.dport = Some(7001);
        Fact::Drop(d)
    }

    #[test]
    fn the_drop_counter_rising_proves_a_full_table() {
        // netfilter_drop reads the table too (and leaves the drops
        // alone, no rule having counted them): each re-read is later.
        let mut src = Fake::sequence(vec![ct(40, 0), ct(64, 100), ct(64, 136), ct(64, 200)]);
        let v = run(
            &mut src,
            vec![
                refused(1_000),
                refused(2 * REREAD_NS),
                refused(4 * REREAD_NS),
            ],
            0,
        );
        assert_eq!(kinds(&v), [("conntrack_table_full", Tier::Proven)]);
        let e = &v[0].evidence;
        assert!(
            e["counters"]["drop"]["after"].as_u64() > e["counters"]["drop"]["before"].as_u64(),
            "{e:?}"
        );
        assert!(e["refused"].as_u64().unwrap() > 0);
        assert_eq!(e["suggested_max"], 65536);
        assert!(
            v[0].summary.contains("64 of 64 entries"),
            "{}",
            v[0].summary
        );
        assert_eq!(
            v[0].fix_commands[0],
            ["sysctl -w net.netfilter.nf_conntrack_max=65536"]
        );
    }

    #[test]
    fn the_first_reading_of_the_namespace_is_the_before() {
        // Every copy after the run's first reading carries that reading's
        // counters: a copy another rule read after the drops still shows
        // the rise, whatever order the rules ran in.
        let mut full = ct(64, 150);
        full.exhaustion.at_start = Some(ct(37, 0).exhaustion.baseline());
        let mut src = Fake::sequence(vec![full.clone(), full]);
        let v = run(&mut src, vec![refused(1_000)], 0);
        assert_eq!(kinds(&v), [("conntrack_table_full", Tier::Proven)]);
        let c = &v[0].evidence["counters"];
        assert_eq!(c["drop"]["before"], 0);
        assert_eq!(c["count"]["before"], 37);
        assert_eq!(c["drop"]["after"], 150);
    }

    #[test]
    fn a_rule_drop_moves_no_conntrack_counter() {
        // Room in the table, the drop counter still: a rule's drop.
        let mut src = Fake::sequence(vec![ct(10, 0), ct(10, 0), ct(11, 0)]);
        let v = run(&mut src, vec![refused(1_000), refused(2 * REREAD_NS)], 0);
        assert_eq!(kinds(&v), [("netfilter_drop", Tier::Proven)]);
    }
}
