//! What the exhaustion rules (conntrack, neighbour table, CPU backlog)
//! share: the two readings of the kernel's counters a verdict compares,
//! and whether a namespace's conntrack table is full (which
//! `netfilter_drop` asks too, so that a table-full drop is never taken
//! for a rule's).
//!
//! A reading is the namespace's topology (its `exhaustion` part). The
//! first is the copy in hand at the first matching drop (read before the
//! drops if tracer had read the namespace already); later ones read the
//! counters anew (not the links and routes: see `Ctx::recount`), at most every [`REREAD_NS`] of the live clock (fact time on a replay) and [`MAX_READS`] times,
//! until the counter that proves the cause has moved.

use crate::events::record::DropRecord;
use crate::host::exhaustion::Exhaustion;
use crate::host::topology::NsTopology;
use crate::rules::ctx::Ctx;
use crate::rules::key::Key;
use std::collections::HashMap;
use std::sync::Arc;

/// How long after a reading the next may be taken.
pub const REREAD_NS: u64 = 250_000_000;
/// Readings per namespace at most: a counter that never moves stops
/// costing reads (about 5 s of drops).
pub const MAX_READS: u32 = 20;

struct Watch {
    first: Arc<NsTopology>,
    last_read_ns: u64,
    reads: u32,
}

/// The readings a rule took, per namespace, and the first drop of each
/// (what its verdict names).
#[derive(Default)]
pub struct Readings {
    watches: HashMap<u32, Watch>,
    first: HashMap<u32, DropRecord>,
}

impl Readings {
    /// Takes in a drop of the rule's cause under `key` (counted for the
    /// verdict): the namespace to check now, unless `key` has its verdict.
    pub fn drop(&mut self, d: &DropRecord, key: &Key, cx: &mut Ctx) -> Option<u32> {
        cx.tally(key, d.ts_ns);
        if cx.concluded(key).is_some() {
            return None;
        }
        if self.first.len() < 1024 {
            self.first.entry(d.netns).or_insert_with(|| d.clone());
        }
        Some(d.netns)
    }

    /// The first drop taken in for `netns`.
    pub fn first_drop(&self, netns: u32) -> Option<DropRecord> {
        self.first.get(&netns).cloned()
    }

    /// The first reading of `netns`, taken with `read` on the first call.
    pub fn before(
        &mut self,
        netns: u32,
        now_ns: u64,
        read: impl FnOnce() -> Option<Arc<NsTopology>>,
    ) -> Option<Arc<NsTopology>> {
        if let Some(w) = self.watches.get(&netns) {
            return Some(w.first.clone());
        }
        // Bounded: a drop in each of thousands of namespaces must not
        // keep a copy of each for ever.
        if self.watches.len() >= 1024 {
            self.watches.clear();
        }
        let first = read()?;
        self.watches.insert(
            netns,
            Watch {
                first: first.clone(),
                last_read_ns: now_ns,
                reads: 1,
            },
        );
        Some(first)
    }

    /// Whether `netns` may be read again now (and counts the reading).
    pub fn due(&mut self, netns: u32, now_ns: u64) -> bool {
        let Some(w) = self.watches.get_mut(&netns) else {
            return false;
        };
        if w.reads >= MAX_READS || now_ns < w.last_read_ns + REREAD_NS {
            return false;
        }
        w.last_read_ns = now_ns;
        w.reads += 1;
        true
    }

    /// Namespaces with a first reading still waiting for a later one.
    pub fn waiting(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .watches
            .iter()
            .filter(|(_, w)| w.reads < MAX_READS)
            .map(|(n, _)| *n)
            .collect();
        v.sort_unstable();
        v
    }

    /// A reading of `netns` where `rose` holds (the counter moved since
    /// the first reading): the copy in hand may show it already (another
    /// rule read the namespace since), else a new reading when one is
    /// due. Found, `netns` is read no more.
    pub fn after(
        &mut self,
        netns: u32,
        cx: &mut Ctx,
        rose: impl Fn(&NsTopology) -> bool,
    ) -> Option<Arc<NsTopology>> {
        let mut after = cx.topo(netns).filter(|t| rose(t));
        if after.is_none() && self.due(netns, cx.wall_ns) {
            after = cx.recount(netns).filter(|t| rose(t));
        }
        if after.is_some() {
            self.done(netns);
        }
        after
    }

    /// Stops reading `netns` (its verdict is concluded).
    pub fn done(&mut self, netns: u32) {
        if let Some(w) = self.watches.get_mut(&netns) {
            w.reads = MAX_READS;
        }
    }
}

/// How much a counter rose between two readings (None if either lacks it).
pub fn rise(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    Some(after?.saturating_sub(before?))
}

/// The namespace's conntrack table is at its limit and has refused new
/// entries: a NETFILTER_DROP now is as likely conntrack's as a rule's.
pub fn conntrack_full(e: &Exhaustion) -> bool {
    let c = &e.conntrack;
    matches!((c.count, c.max), (Some(n), Some(m)) if m > 0 && n >= m) && c.drop.unwrap_or(0) > 0
}

/// A limit with room for what was refused, doubled for headroom, as a
/// power of two and never below `floor`.
pub fn sized(limit: u64, refused: u64, floor: u64) -> u64 {
    ((limit + refused) * 2).next_power_of_two().max(floor)
}

/// The advice that keeps a host-wide sysctl across reboots.
pub fn persist(knob: &str, value: u64) -> String {
    format!(
        "Keep it across reboots: a line `{knob} = {value}` in /etc/sysctl.d/90-tracer.conf (applied by `sysctl --system`)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_wait_between_reads_and_stop_when_done() {
        let t = Arc::new(crate::rules::testkit::topo(7, None, vec![], vec![]));
        let mut r = Readings::default();
        assert!(!r.due(7, 0), "no first reading yet");
        assert!(r.before(7, 1_000, || Some(t.clone())).is_some());
        // The first is kept: a second read function is never called.
        assert!(r.before(7, 2_000, || panic!("read twice")).is_some());
        assert!(!r.due(7, 1_000 + REREAD_NS - 1));
        assert!(r.due(7, 1_000 + REREAD_NS));
        assert!(!r.due(7, 1_000 + REREAD_NS + 1));
        assert_eq!(r.waiting(), [7]);
        r.done(7);
        assert!(r.waiting().is_empty());
        assert!(!r.due(7, u64::MAX / 2));
    }

    #[test]
    fn a_full_table_must_have_refused_entries() {
        let mut e = Exhaustion::default();
        e.conntrack.count = Some(64);
        e.conntrack.max = Some(64);
        assert!(!conntrack_full(&e), "full, but nothing refused yet");
        e.conntrack.drop = Some(3);
        assert!(conntrack_full(&e));
        e.conntrack.count = Some(63);
        assert!(!conntrack_full(&e));
    }

    #[test]
    fn sizes_are_powers_of_two_with_headroom() {
        assert_eq!(sized(64, 136, 0), 512);
        assert_eq!(sized(1000, 0, 4096), 4096);
        assert_eq!(rise(Some(3), Some(10)), Some(7));
        assert_eq!(rise(None, Some(10)), None);
        assert_eq!(rise(Some(10), Some(3)), Some(0));
    }
}
