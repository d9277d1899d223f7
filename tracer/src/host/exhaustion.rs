//! The kernel's own exhaustion counters: what proves that a table or a
//! queue was full when a packet died. Read with a namespace's topology:
//! - conntrack, per namespace (a thread inside it): `nf_conntrack_count`
//!   against `nf_conntrack_max` (the host's value, read-only outside the
//!   initial namespace) and the statistics `conntrack -S` prints
//!   (/proc/thread-self/net/stat/nf_conntrack: drop, early_drop,
//!   insert_failed, summed over CPUs);
//! - the neighbour tables, host-wide: their entries against `gc_thresh3`
//!   and `table_fulls` (/proc/net/stat/arp_cache and ndisc_cache exist in
//!   the initial namespace only, and so do the gc_thresh sysctls on the
//!   guests' 6.12: they belong to the one global table);
//! - the per-CPU input backlog, host-wide: the `dropped` column of
//!   /proc/net/softnet_stat and `net.core.netdev_max_backlog` (registered
//!   in the initial namespace only).
//!
//! The host-wide part is read by the caller's thread (tracer's own
//! namespace), the rest inside the namespace. Every value is a counter or
//! a limit at read time; a rule compares two readings.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Conntrack of one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conntrack {
    /// Entries in this namespace's table (`nf_conntrack_count`).
    pub count: Option<u64>,
    /// The most entries a namespace may hold (`nf_conntrack_max`).
    pub max: Option<u64>,
    /// New entries refused: the table was full and nothing could be
    /// evicted (`drop`; the kernel logs "table full, dropping packet").
    pub drop: Option<u64>,
    /// Unconfirmed entries evicted to make room (`early_drop`).
    pub early_drop: Option<u64>,
    /// Entries that lost a race to be inserted (`insert_failed`).
    pub insert_failed: Option<u64>,
}

/// One neighbour table (ARP or NDISC), host-wide.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighTable {
    /// Entries of every namespace (`entries`).
    pub entries: Option<u64>,
    /// Times a new entry was refused because the table held gc_thresh3
    /// and forced garbage collection freed none (`table_fulls`).
    pub table_fulls: Option<u64>,
    /// Forced garbage collections (`forced_gc_runs`).
    pub forced_gc_runs: Option<u64>,
    /// The hard limit: no entry is made beyond it.
    pub gc_thresh3: Option<u64>,
    /// Above this, entries older than 5 s are collected.
    pub gc_thresh2: Option<u64>,
    pub gc_thresh1: Option<u64>,
}

/// The counters when tracer first read a namespace: what a verdict's
/// "before" is, whichever rule read the namespace again first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baseline {
    pub conntrack_drop: Option<u64>,
    pub conntrack_early_drop: Option<u64>,
    pub conntrack_insert_failed: Option<u64>,
    pub conntrack_count: Option<u64>,
    pub arp_table_fulls: Option<u64>,
    pub ndisc_table_fulls: Option<u64>,
    pub backlog_dropped: Option<u64>,
}

/// The counters and limits of one reading.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exhaustion {
    #[serde(default)]
    pub conntrack: Conntrack,
    #[serde(default)]
    pub arp: NeighTable,
    #[serde(default)]
    pub ndisc: NeighTable,
    /// Packets the CPUs' input backlogs turned away, summed over CPUs
    /// (softnet_stat's second column; 32 bits per CPU).
    pub backlog_dropped: Option<u64>,
    /// `net.core.netdev_max_backlog`: how many packets each CPU's backlog
    /// holds.
    pub netdev_max_backlog: Option<u64>,
    /// The counters of the namespace's first reading (set by the
    /// topology cache; None in hand-built topologies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_start: Option<Baseline>,
}

impl Exhaustion {
    /// This reading's counters, as a baseline for later ones.
    pub fn baseline(&self) -> Baseline {
        Baseline {
            conntrack_drop: self.conntrack.drop,
            conntrack_early_drop: self.conntrack.early_drop,
            conntrack_insert_failed: self.conntrack.insert_failed,
            conntrack_count: self.conntrack.count,
            arp_table_fulls: self.arp.table_fulls,
            ndisc_table_fulls: self.ndisc.table_fulls,
            backlog_dropped: self.backlog_dropped,
        }
    }

    /// The baseline to compare this reading with: the first reading's
    /// (`at_start`), else `first`'s.
    pub fn before(&self, first: &Exhaustion) -> Baseline {
        self.at_start.unwrap_or_else(|| first.baseline())
    }
    /// The per-namespace part, from a thread inside the namespace.
    pub fn read_here() -> Exhaustion {
        let ct = Path::new("/proc/sys/net/netfilter");
        let stat = read("/proc/thread-self/net/stat/nf_conntrack");
        let sum = |col: &str| stat.as_deref().and_then(|t| stat_column(t, col, true));
        Exhaustion {
            conntrack: Conntrack {
                count: read_u64(&ct.join("nf_conntrack_count")),
                max: read_u64(&ct.join("nf_conntrack_max")),
                drop: sum("drop"),
                early_drop: sum("early_drop"),
                insert_failed: sum("insert_failed"),
            },
            ..Exhaustion::default()
        }
    }

    /// Adds the host-wide part, read by the calling thread (in tracer's
    /// own namespace, where those files exist).
    pub fn add_host_wide(&mut self) {
        let tables = [
            (&mut self.arp, "arp_cache", "ipv4"),
            (&mut self.ndisc, "ndisc_cache", "ipv6"),
        ];
        for (t, file, family) in tables {
            *t = thresholds(family);
            if let Some(text) = read(&format!("/proc/thread-self/net/stat/{file}")) {
                t.entries = stat_column(&text, "entries", false);
                t.table_fulls = stat_column(&text, "table_fulls", true);
                t.forced_gc_runs = stat_column(&text, "forced_gc_runs", true);
            }
        }
        self.backlog_dropped = read("/proc/net/softnet_stat").and_then(|t| softnet_dropped(&t));
        self.netdev_max_backlog = read_u64(Path::new("/proc/sys/net/core/netdev_max_backlog"));
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn read_u64(path: &Path) -> Option<u64> {
    read(path.to_str()?)?.trim().parse().ok()
}

/// gc_thresh1..3 of a family's default neighbour parameters.
fn thresholds(family: &str) -> NeighTable {
    let at = |n: u8| {
        read_u64(Path::new(&format!(
            "/proc/sys/net/{family}/neigh/default/gc_thresh{n}"
        )))
    };
    NeighTable {
        gc_thresh1: at(1),
        gc_thresh2: at(2),
        gc_thresh3: at(3),
        ..NeighTable::default()
    }
}

/// A column of a /proc/net/stat file: a header line of names, then one
/// line of hex values per CPU. Summed over CPUs when `per_cpu`, else the
/// first line's (a global count every line repeats, like `entries`).
/// The columns differ between kernels, so they are found by name.
fn stat_column(text: &str, name: &str, per_cpu: bool) -> Option<u64> {
    let mut lines = text.lines();
    let at = lines.next()?.split_whitespace().position(|h| h == name)?;
    let mut total = 0u64;
    let mut any = false;
    for line in lines {
        let v = u64::from_str_radix(line.split_whitespace().nth(at)?, 16).ok()?;
        if !per_cpu {
            return Some(v);
        }
        total += v;
        any = true;
    }
    any.then_some(total)
}

/// The second column (dropped) of every CPU's line, summed.
fn softnet_dropped(text: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut any = false;
    for line in text.lines() {
        total += u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()?;
        any = true;
    }
    any.then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_columns_are_found_by_name_and_summed_over_cpus() {
        // 6.x names the second column clashres, 5.10 searched.
        let ct = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n\
                  00000040  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000001 0000000a 00000003 00000000  00000000 00000000 00000000 00000000\n\
                  00000040  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000006 00000000 00000000  00000000 00000000 00000000 00000000\n";
        assert_eq!(stat_column(ct, "drop", true), Some(16));
        assert_eq!(stat_column(ct, "early_drop", true), Some(3));
        assert_eq!(stat_column(ct, "insert_failed", true), Some(1));
        assert_eq!(stat_column(ct, "entries", false), Some(64));
        assert_eq!(stat_column(ct, "nosuch", true), None);
        assert_eq!(stat_column("entries\n", "entries", true), None);
    }

    #[test]
    fn softnet_drops_are_the_second_column() {
        let t = "0000a1b2 00000010 00000000 00000000\n00000001 00000005 00000002 00000000\n";
        assert_eq!(softnet_dropped(t), Some(21));
        assert_eq!(softnet_dropped(""), None);
    }

    #[test]
    fn this_host_reads() {
        let mut e = Exhaustion::read_here();
        e.add_host_wide();
        assert!(e.backlog_dropped.is_some());
        assert!(e.netdev_max_backlog.is_some_and(|n| n > 0));
        assert!(e.arp.gc_thresh3.is_some());
        assert!(e.arp.entries.is_some());
    }
}
