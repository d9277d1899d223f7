//! Storms, userspace half. In a storm the kernel sends only the first few
//! drops of each key per interval and counts the rest by key (see
//! `aggregated` in tracer-ebpf). Once a second this reads those counts and
//! turns what grew into `aggregate` records: one per key per interval,
//! named like a drop. Drop lines plus aggregate counts then equal the
//! kernel's count of matched drops, however fast the host drops.

use crate::events::namer::Namer;
use crate::events::record::{DropRecord, Family, Proto, ReasonSource};
use serde::Serialize;
use std::collections::HashMap;
use std::net::IpAddr;
use tracer_abi::{AggKey, DropEvent, Flow, KIND_DROP};

/// Drops of one key counted (not sent) during one interval.
#[derive(Clone, Debug, Serialize)]
pub struct AggregateRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub count: u64,
    pub interval_s: f64,
    pub reason: Option<String>,
    pub reason_source: Option<ReasonSource>,
    pub location: String,
    pub netns: u32,
    pub netns_name: Option<String>,
    pub ifindex: i32,
    pub ifname: Option<String>,
    pub ingress_ifindex: i32,
    pub ingress_ifname: Option<String>,
    pub family: Option<Family>,
    pub proto: Option<Proto>,
    /// Null when the kernel ran out of keys and counted without addresses.
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    /// The key as a drop, for the text table and the summary.
    #[serde(skip)]
    pub as_drop: DropRecord,
}

/// Remembers the last counts read, so each interval reports only growth.
pub struct Aggregator {
    last: HashMap<AggKey, u64>,
    /// Monotonic ns of the last read, or of the start: the first
    /// interval runs from when counting began, never from 0 (which
    /// printed `"interval_s":0.0` for a second's counts).
    last_read_ns: u64,
}

impl Aggregator {
    /// Counting starts at `now_ns` (monotonic).
    pub fn starting(now_ns: u64) -> Self {
        Aggregator {
            last: HashMap::new(),
            last_read_ns: now_ns,
        }
    }

    /// Seconds since the last read (or the start), and now is the last read.
    fn interval_s(&mut self, now_ns: u64) -> f64 {
        let s = now_ns.saturating_sub(self.last_read_ns) as f64 / 1e9;
        self.last_read_ns = self.last_read_ns.max(now_ns);
        s
    }

    /// The records for what the kernel counted since the previous call.
    /// `now_ns` is monotonic time, for the interval.
    pub fn poll(
        &mut self,
        counts: Vec<(AggKey, u64)>,
        namer: &mut Namer,
        now_ns: u64,
    ) -> Vec<AggregateRecord> {
        let interval_s = self.interval_s(now_ns);
        let mut out = Vec::new();
        for (key, total) in counts {
            let before = self.last.insert(key, total).unwrap_or(0);
            let grew = total.saturating_sub(before);
            if grew == 0 {
                continue;
            }
            let mut d = namer.drop_record(&as_event(&key, now_ns));
            // Keys hold no ports (a scan is one key): print none.
            (d.sport, d.dport, d.tcp_flags, d.len) = (None, None, None, 0);
            out.push(AggregateRecord {
                kind: "aggregate",
                count: grew,
                interval_s,
                reason: (!d.reason.is_empty()).then(|| d.reason.to_string()),
                reason_source: d.reason_source,
                location: d.location.clone(),
                netns: d.netns,
                netns_name: d.netns_name.clone(),
                ifindex: d.ifindex,
                ifname: d.ifname.clone(),
                ingress_ifindex: d.ingress_ifindex,
                ingress_ifname: d.ingress_ifname.clone(),
                family: d.family,
                proto: d.proto,
                src: d.src.filter(|a| !a.is_unspecified()),
                dst: d.dst.filter(|a| !a.is_unspecified()),
                as_drop: d,
            });
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.count));
        out
    }
}

/// A key dressed as a drop event, so it is named exactly as drops are.
fn as_event(k: &AggKey, now_ns: u64) -> DropEvent {
    let flow = Flow {
        family: k.family,
        proto: k.proto,
        src: k.src,
        dst: k.dst,
        ..Flow::default()
    };
    DropEvent {
        kind: KIND_DROP,
        ts_ns: now_ns,
        location: k.location,
        reason: k.reason,
        netns: k.netns,
        ifindex: k.ifindex,
        ingress_ifindex: k.ingress_ifindex,
        flow,
        ..DropEvent::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_interval_runs_from_the_start() {
        let mut a = Aggregator::starting(5_000_000_000);
        assert_eq!(a.interval_s(6_000_000_000), 1.0);
        assert_eq!(a.interval_s(7_500_000_000), 1.5);
        // The final read past --count passes no time: it moves nothing.
        assert_eq!(a.interval_s(0), 0.0);
        assert_eq!(a.interval_s(8_500_000_000), 1.0);
    }
}
