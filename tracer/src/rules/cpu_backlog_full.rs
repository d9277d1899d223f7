//! `cpu_backlog_full`: packets dropped because a CPU's input backlog
//! held `net.core.netdev_max_backlog` packets (`CPU_BACKLOG` at
//! enqueue_to_backlog; on kernels without reasons, that place, whose only
//! free is this). Packets that a device hands to the stack outside NAPI
//! (veth, loopback, tunnels, RPS steering to another CPU) wait there. The
//! proof is softnet_stat's `dropped` column rising between two readings
//! taken while the drops happened. The backlogs and their limit are the
//! host's: one verdict for the host.
//!
//! Tier: proven. That column counts only backlog drops.

use super::ctx::{Ctx, Finding};
use super::facts::exhaustion::{self as ex, Readings};
use super::fix::{q, Fix};
use super::key::Key;
use super::{Fact, Rule, Tier};
use crate::events::reason::Reason;
use crate::events::reason_inference::function;
use crate::events::record::DropRecord;
use crate::host::topology::NsTopology;
use serde_json::json;

#[derive(Default)]
pub struct CpuBacklogFull {
    readings: Readings,
    /// The first drop seen: the backlog is the host's, so one namespace
    /// is read for it (its topology carries the host-wide counters).
    first: Option<DropRecord>,
}

fn matches(d: &DropRecord) -> bool {
    d.reason == Reason::CPU_BACKLOG || function(&d.location) == "enqueue_to_backlog"
}

impl Rule for CpuBacklogFull {
    fn kinds(&self) -> &'static [&'static str] {
        &["cpu_backlog_full"]
    }

    fn on_fact(&mut self, fact: &Fact, cx: &mut Ctx) {
        let Fact::Drop(d) = fact else { return };
        if !matches(d) {
            return;
        }
        let key = Key::CpuBacklogFull;
        cx.tally(&key, d.ts_ns);
        if cx.concluded(&key).is_some() {
            return;
        }
        let netns = self.first.get_or_insert_with(|| d.clone()).netns;
        self.check(netns, cx);
    }

    fn tick(&mut self, cx: &mut Ctx) {
        for netns in self.readings.waiting() {
            self.check(netns, cx);
        }
    }
}

impl CpuBacklogFull {
    fn check(&mut self, netns: u32, cx: &mut Ctx) {
        // Readings run on the live clock (see `Ctx::wall_ns`).
        let now = cx.wall_ns;
        let Some(first) = self.readings.before(netns, now, || cx.topo(netns)) else {
            return;
        };
        let before = |t: &NsTopology| t.exhaustion.before(&first.exhaustion).backlog_dropped;
        let dropped =
            |t: &NsTopology| ex::rise(before(t), t.exhaustion.backlog_dropped).unwrap_or(0);
        let Some(after) = self.readings.after(netns, cx, |t| dropped(t) > 0) else {
            return;
        };
        let (b, a) = (before(&after), &after.exhaustion);
        let dropped = dropped(&after);
        let Some(d) = self.first.clone() else { return };
        let max = a.netdev_max_backlog.unwrap_or(1000);
        let want = ex::sized(max, dropped, 1000);
        let dev = d.ifname.as_deref().unwrap_or("?");
        let summary = format!(
            "A CPU's input backlog is full (net.core.netdev_max_backlog {max}): the kernel dropped packets arriving on {dev} before any protocol saw them ({}); softnet_stat counted {dropped} such drops while tracer watched ({} -> {}). The backlog and its limit are host-wide.",
            d.reason,
            b.unwrap_or(0),
            a.backlog_dropped.unwrap_or(0),
        );
        let set = format!(
            "sysctl -w {}",
            q(&format!("net.core.netdev_max_backlog={want}"))
        );
        let fix = vec![
            Fix::run(
                format!("Let each CPU's backlog hold more, on the host (host-wide): {set}"),
                vec![set.clone()],
            ),
            Fix::advice(ex::persist("net.core.netdev_max_backlog", want)),
            Fix::advice(
                "If one CPU takes all of it, spread the load (RPS: /sys/class/net/DEV/queues/rx-N/rps_cpus, or more NIC queues with RSS) and give each softirq run more room (net.core.netdev_budget); see the drops per CPU in the second column of /proc/net/softnet_stat",
            ),
        ];
        let evidence = json!({
            "reason": d.reason,
            "location": d.location,
            "ifname": d.ifname,
            "src": d.src, "dst": d.dst, "proto": d.proto,
            "netdev_max_backlog": a.netdev_max_backlog,
            "counters": {
                "softnet_dropped": {"before": b, "after": a.backlog_dropped},
            },
            "dropped": dropped,
            "suggested_max_backlog": want,
        });
        cx.conclude(Finding {
            key: Key::CpuBacklogFull,
            kind: "cpu_backlog_full",
            tier: Tier::Proven,
            netns: d.netns,
            summary,
            evidence,
            fix,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{Fact, Tier};
    use super::ex::REREAD_NS;
    use crate::host::topology::NsTopology;

    fn host(dropped: u64) -> NsTopology {
        let mut t = topo(NS, Some("bk"), vec![], vec![]);
        t.exhaustion.backlog_dropped = Some(dropped);
        t.exhaustion.netdev_max_backlog = Some(8);
        t
    }

    fn full(ts: u64, reason: &str, location: &str) -> Fact {
        let mut d = drop(Reason::new(reason), ts);
        d.location = location.into();
        d.ifname = Some("p3".into());
        Fact::Drop(d)
    }

    #[test]
    fn softnet_drops_rising_prove_a_full_backlog() {
        let f = |ts| full(ts, "CPU_BACKLOG", "enqueue_to_backlog+0x8d");
        let mut src = Fake::sequence(vec![host(100), host(1900)]);
        let v = run(&mut src, vec![f(1_000), f(2 * REREAD_NS)], 0);
        assert_eq!(kinds(&v), [("cpu_backlog_full", Tier::Proven)]);
        assert_eq!(v[0].evidence["dropped"], 1800);
        assert_eq!(
            v[0].fix_commands[0],
            ["sysctl -w net.core.netdev_max_backlog=4096"]
        );
        // 5.10: no reason, the place.
        let g = |ts| full(ts, "NOT_SPECIFIED", "enqueue_to_backlog+0x1a3");
        let mut src = Fake::sequence(vec![host(100), host(101)]);
        let v = run(&mut src, vec![g(1_000), g(2 * REREAD_NS)], 0);
        assert_eq!(kinds(&v), [("cpu_backlog_full", Tier::Proven)]);
    }

    #[test]
    fn no_verdict_while_the_counter_stands() {
        let f = |ts| full(ts, "CPU_BACKLOG", "enqueue_to_backlog+0x8d");
        let mut src = Fake::sequence(vec![host(100), host(100)]);
        assert!(run(&mut src, vec![f(1_000), f(2 * REREAD_NS)], 0).is_empty());
    }
}
