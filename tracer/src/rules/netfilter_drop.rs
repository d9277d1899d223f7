//! `netfilter_drop`: a `NETFILTER_DROP`, named down to the rule. A dropped
//! ICMP frag-needed / packet-too-big gets its verdict too (the rule is
//! the thing to remove), and says that path MTU discovery needs it:
//! pmtu_blackhole links the same drop to the flow it stalls.
//!
//! No kprobe, and no trace rule unless asked: the hook comes from where the packet was
//! (sent from here, received for here, or forwarded), the candidates are
//! the DROP and REJECT rules and DROP policies reachable from that hook's
//! base chains in the namespace's ruleset (iptables-nft, iptables-legacy,
//! native nftables), and the per-rule counters pick one. The ruleset is
//! read at the first drop: a rule whose counter is still 0 did not drop
//! it. If several remain, it is read again after further drops of the
//! same flow: only a rule whose counter rose by at least as many drops
//! can be the one. A rule without a counter (nftables) is never ruled
//! out, so until one candidate is left the verdict is `suspected`, with
//! the candidates. With `--nftrace`, such a flow's later packets are
//! traced in the kernel, and the rule its trace ends in settles it.
//! A drop no rule counted while the namespace's conntrack
//! table is full and refusing entries is left to `conntrack_table_full`.

use super::ctx::{Ctx, Finding};
use super::facts::exhaustion as ex;
use super::facts::firewall::{self as fw, packet_words};
use super::facts::pmtu::is_ptb_icmp;
use super::fix::Fix;
use super::key::Key;
use super::{Fact, Rule, Tier};
use crate::events::reason::Reason;
use crate::events::record::DropRecord;
use crate::host::firewall::nftrace::{TraceFlow, TraceHit};
use crate::host::firewall::walk::Candidate;
use crate::host::firewall::Ruleset;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// How often a flow's ruleset is read again while candidates remain.
const REREAD_NS: u64 = 1_000_000_000;
/// Readings per flow at most: a flow whose rule cannot be told apart
/// stops costing reads.
const MAX_READS: u32 = 6;
/// A namespace's ruleset is read at most this often for new flows (a
/// reading runs four listing tools: 8.5 ms on a 2-core VM with a small
/// ruleset, more with a large one): a port scan through a default-deny
/// firewall must not stall the event loop once per port.
const MIN_READ_GAP_NS: u64 = 500_000_000;
/// How often a namespace's conntrack table is checked for being full.
const CONNTRACK_CHECK_NS: u64 = 500_000_000;

/// A flow whose dropping rule is not yet the only one left.
struct Pending {
    first: DropRecord,
    hooks: &'static [&'static str],
    last: Arc<Ruleset>,
    fits: Vec<Candidate>,
    /// Times of the drops seen since `last` was read (at most a few
    /// hundred: only their count up to the next reading matters).
    since: Vec<u64>,
    reads: u32,
    /// A reading has counted the first drop. Until one has, `fits` are
    /// only the rules that could have dropped it, and none is named.
    counted: bool,
}

#[derive(Default)]
pub struct NetfilterDrop {
    pending: HashMap<Key, Pending>,
    /// The latest reading of each namespace.
    latest: HashMap<u32, Arc<Ruleset>>,
    /// Per namespace: when its conntrack table was last checked, and
    /// whether it was full.
    conntrack: HashMap<u32, (u64, bool)>,
}

impl NetfilterDrop {
    /// A reading for a drop at `ts`: a fresh one, unless the latest was
    /// taken after the drop (it counts it) or too recently to read again.
    /// Returns whether the reading counts the drop.
    fn reading(&mut self, cx: &mut Ctx, netns: u32, ts: u64) -> Option<(Arc<Ruleset>, bool)> {
        if let Some(r) = self.latest.get(&netns) {
            if r.read_ns >= ts {
                return Some((r.clone(), true));
            }
            if cx.wall_ns < r.read_ns + MIN_READ_GAP_NS {
                return Some((r.clone(), false));
            }
        }
        let r = cx.ruleset(netns)?;
        if self.latest.len() > 1000 {
            self.latest.clear();
        }
        self.latest.insert(netns, r.clone());
        Some((r, true))
    }
}

impl NetfilterDrop {
    /// With `--nftrace`: where the kernel's trace of a later packet of
    /// the flow ended in one of its candidates, that candidate is proven.
    fn settle_by_trace(&mut self, cx: &mut Ctx, key: &Key) {
        let Some(p) = self.pending.get(key) else {
            return;
        };
        let Some(flow) = trace_flow(&p.first) else {
            return;
        };
        let Some(hits) = cx.nftrace(p.first.netns, &flow) else {
            return;
        };
        let found = hits
            .iter()
            .filter(|h| h.dst == Some(flow.dst) && (flow.dport.is_none() || h.dport == flow.dport))
            .find_map(|h| {
                p.fits
                    .iter()
                    .find(|c| ends_in(c, h))
                    .map(|c| (c.clone(), h))
            });
        let Some((c, hit)) = found else {
            return;
        };
        let rs = p.last.clone();
        let (first, hooks) = (p.first.clone(), p.hooks);
        conclude(cx, key.clone(), &first, hooks, &[c], Some(&rs), Some(hit));
        self.pending.remove(key);
    }

    /// Whether `netns`'s conntrack table is full and refusing entries
    /// (see `facts::exhaustion::conntrack_full`), read anew at most every
    /// CONNTRACK_CHECK_NS: a full table's drops come at the rate of new
    /// connections, one reading serves them all.
    fn conntrack_full(&mut self, cx: &mut Ctx, netns: u32) -> bool {
        let now = cx.wall_ns;
        if let Some(&(t, full)) = self.conntrack.get(&netns) {
            if now < t + CONNTRACK_CHECK_NS {
                return full;
            }
        }
        // Without conntrack in the namespace nothing is read again.
        let loaded = cx
            .topo(netns)
            .is_some_and(|t| t.exhaustion.conntrack.max.is_some());
        let full = loaded
            && cx
                .reread(netns)
                .is_some_and(|t| ex::conntrack_full(&t.exhaustion));
        if self.conntrack.len() > 1000 {
            self.conntrack.clear();
        }
        self.conntrack.insert(netns, (now, full));
        full
    }
}

/// The flow of a drop, as `--nftrace` matches it.
fn trace_flow(d: &DropRecord) -> Option<TraceFlow> {
    Some(TraceFlow {
        src: d.src,
        dst: d.dst?,
        proto: d.proto?.number(),
        dport: d.dport,
    })
}

/// Whether a trace ended in this candidate: its chain, and its rule's
/// handle (or, for a policy, no rule).
fn ends_in(c: &Candidate, h: &TraceHit) -> bool {
    c.id.family == h.family
        && c.id.table == h.table
        && c.id.chain == h.chain
        && match (&c.rule, h.handle) {
            (Some(r), Some(handle)) => r.handle == Some(handle),
            (None, None) => true,
            _ => false,
        }
}

impl Rule for NetfilterDrop {
    fn kinds(&self) -> &'static [&'static str] {
        &["netfilter_drop", "conntrack_invalid"]
    }

    fn on_fact(&mut self, fact: &Fact, cx: &mut Ctx) {
        let Fact::Drop(d) = fact else { return };
        if d.reason != Reason::NETFILTER_DROP {
            return;
        }
        // A SYN-ACK is keyed by its server end: every client's
        // connection dies of the same cause, not one verdict per
        // ephemeral port.
        let (addr, port) = if d.tcp_flags.as_deref() == Some("S.") {
            (d.src, d.sport)
        } else {
            (d.dst, d.dport)
        };
        let key = Key::Netfilter {
            netns: d.netns,
            proto: d.proto,
            dst: addr,
            dport: port,
        };
        cx.tally(&key, d.ts_ns);
        if let Some(p) = self.pending.get_mut(&key) {
            if p.since.len() < 512 {
                p.since.push(d.ts_ns);
            }
            self.settle_by_trace(cx, &key);
            return;
        }
        if cx.concluded(&key).is_some() {
            return;
        }
        let topo = cx.topo(d.netns);
        let hooks = fw::hooks_of(d, topo.as_deref());
        let Some((rs, counted)) = self.reading(cx, d.netns, d.ts_ns) else {
            if !self.conntrack_full(cx, d.netns) {
                conclude(cx, key, d, hooks, &[], None, None);
            }
            return;
        };
        let all = fw::candidates_for(d, &rs, hooks);
        // A reading from before the drop cannot rule out a rule at 0.
        let fits = if counted { fw::first_fits(all) } else { all };
        // No rule counted it and conntrack refuses new entries: the
        // drop is conntrack_table_full's, decided by conntrack's counters.
        if fits.is_empty() && self.conntrack_full(cx, d.netns) {
            return;
        }
        // A reading from before the drop names no rule: a rule at 0 there
        // may be the one, or none may be (a full conntrack table drops
        // at the same hook). The next reading, which counts it, decides
        // (rules without counters it cannot tell apart: named at once).
        let defer =
            !counted && fits.iter().any(|c| c.counter.is_some()) && self.pending.len() < 1000;
        if !defer {
            conclude(cx, key.clone(), d, hooks, &fits, Some(&rs), None);
        }
        if (fits.len() > 1 || defer) && self.pending.len() < 1000 {
            // Starts the trace of its next packets (with --nftrace).
            if let Some(flow) = trace_flow(d) {
                cx.nftrace(d.netns, &flow);
            }
            let p = Pending {
                first: d.clone(),
                hooks,
                last: rs,
                fits,
                // A reading from before the drop: the next one must
                // count it.
                since: if counted { Vec::new() } else { vec![d.ts_ns] },
                reads: 1,
                counted,
            };
            self.pending.insert(key, p);
        }
    }

    fn tick(&mut self, cx: &mut Ctx) {
        // Readings are stamped on the live clock (see `Ctx::wall_ns`).
        let now = cx.wall_ns;
        // One reading per namespace per tick serves all its flows.
        let mut read: HashMap<u32, Option<Arc<Ruleset>>> = HashMap::new();
        let keys: Vec<Key> = self.pending.keys().cloned().collect();
        for key in keys {
            self.settle_by_trace(cx, &key);
        }
        let mut done = Vec::new();
        // Flows whose drop no candidate counted: no rule's.
        let mut unnamed = Vec::new();
        for (key, p) in self.pending.iter_mut() {
            if p.since.is_empty() || now < p.last.read_ns + REREAD_NS {
                continue;
            }
            let netns = p.first.netns;
            let Some(rs) = read
                .entry(netns)
                .or_insert_with(|| cx.ruleset(netns))
                .clone()
            else {
                continue;
            };
            self.latest.insert(netns, rs.clone());
            // On a replay the reading may not have been taken yet.
            if rs.read_ns <= p.last.read_ns {
                continue;
            }
            let drops = p.since.iter().filter(|&&t| t <= rs.read_ns).count() as u64;
            let after = fw::candidates_for(&p.first, &rs, p.hooks);
            let left = fw::narrow(&p.fits, after, drops);
            p.since.retain(|&t| t > rs.read_ns);
            p.last = rs.clone();
            p.reads += 1;
            if left.is_empty() && !p.counted {
                unnamed.push((key.clone(), rs.clone()));
                continue;
            }
            p.counted = true;
            // None left: the ruleset changed under us; keep the old fits.
            if !left.is_empty() {
                p.fits = left;
            }
            if p.fits.len() == 1 {
                conclude(cx, key.clone(), &p.first, p.hooks, &p.fits, Some(&rs), None);
            }
            if p.fits.len() == 1 || p.reads >= MAX_READS {
                done.push(key.clone());
            }
        }
        for k in done {
            self.pending.remove(&k);
        }
        for (k, rs) in unnamed {
            let Some(p) = self.pending.remove(&k) else {
                continue;
            };
            // Conntrack refusing entries is conntrack_table_full's to say.
            if !self.conntrack_full(cx, p.first.netns) {
                conclude(cx, k, &p.first, p.hooks, &[], Some(&rs), None);
            }
        }
    }
}

/// Concludes what the candidates left allow: one named rule (proven),
/// several (suspected, each listed), or none seen (the drop is proven,
/// its rule unknown).
fn conclude(
    cx: &mut Ctx,
    key: Key,
    d: &DropRecord,
    hooks: &[&str],
    fits: &[Candidate],
    rs: Option<&Ruleset>,
    traced: Option<&TraceHit>,
) {
    let hint = cx.ns_hint(d.netns);
    let what = packet_words(d);
    let dev = d.ifname.clone().unwrap_or_else(|| "?".into());
    let mut evidence = json!({
        "ifname": d.ifname, "ingress_ifname": d.ingress_ifname,
        "src": d.src, "dst": d.dst, "proto": d.proto, "sport": d.sport, "dport": d.dport,
        "tcp_flags": d.tcp_flags, "fragment": d.fragment,
        "location": d.location, "family": fw::ip_family(d), "hooks": hooks,
        "rule": Value::Null, "candidates": [],
        "unread": rs.map(|r| r.unread.clone()).unwrap_or_default(),
    });
    let mut kind = "netfilter_drop";
    let (tier, summary, mut fix) = match fits {
        [one] if mentions_invalid(one) => {
            kind = "conntrack_invalid";
            evidence["rule"] = fw::evidence(one);
            let (why, words) = invalid_why(d);
            evidence["why"] = why.into();
            let s = format!(
                "{what} is dropped as conntrack state INVALID by {}. {words}",
                fw::name(one)
            );
            (Tier::Proven, s, invalid_fixes(one, &hint))
        }
        [one] => {
            evidence["rule"] = fw::evidence(one);
            let mut s = format!("{what} is dropped by {}.{}", fw::name(one), ptb_words(d));
            if let Some(h) = traced {
                evidence["nftrace"] = json!({"line": h.line, "handle": h.handle});
                s.push_str(" Seen by nftrace: the kernel's trace of a later packet of the flow ended there.");
            }
            (Tier::Proven, s, fw::fixes_for(one, &hint))
        }
        [] => {
            let s = match rs {
                Some(r) => format!(
                    "A firewall drops {what} on {dev} ({}), but no DROP or REJECT rule or DROP policy on hook {} {}.",
                    d.location,
                    hooks.join("/"),
                    unseen(r)
                ),
                None => format!(
                    "A firewall drops {what} on {dev} ({}); its ruleset could not be read.",
                    d.location
                ),
            };
            (Tier::Proven, s, fw::looks(&[], fw::ip_family(d), &hint))
        }
        many => {
            evidence["candidates"] = many.iter().map(fw::evidence).collect();
            let names: Vec<String> = many.iter().take(3).map(fw::name).collect();
            let more = many.len().saturating_sub(3);
            let s = format!(
                "A firewall rule drops {what} on {dev}; {} rules could have (their counters did not tell them apart yet): {}{}.",
                many.len(),
                names.join("; "),
                if more > 0 { format!("; and {more} more") } else { String::new() }
            );
            (Tier::Suspected, s, fw::looks(many, fw::ip_family(d), &hint))
        }
    };
    if kind == "netfilter_drop" && fits.iter().any(mentions_invalid) {
        fix.push(Fix::advice(format!(
            "The rule drops conntrack state INVALID: see why with {hint}conntrack -S"
        )));
    }
    cx.conclude(Finding {
        key,
        kind,
        tier,
        netns: d.netns,
        summary,
        evidence,
        fix,
    });
}

/// What a dropped ICMP frag-needed / packet-too-big breaks.
fn ptb_words(d: &DropRecord) -> &'static str {
    if is_ptb_icmp(d) {
        " Path MTU discovery needs this ICMP: without it the sender keeps sending packets too big for the path, which are dropped."
    } else {
        ""
    }
}

/// Why no candidate may be what could not be read.
fn unseen(r: &Ruleset) -> String {
    if r.unread.iter().any(|u| u.starts_with("nft")) {
        "fits (native nftables tables could not be read: is nft installed?)".into()
    } else {
        "fits the counters".into()
    }
}

/// A rule that drops what conntrack calls invalid (`-m conntrack
/// --ctstate INVALID`, `-m state --state INVALID`, `ct state invalid`).
fn mentions_invalid(c: &Candidate) -> bool {
    c.rule.as_ref().is_some_and(|r| {
        let w: Vec<&str> = r.text.split_whitespace().collect();
        w.windows(2).any(|p| {
            matches!(p[0], "--ctstate" | "--state") && p[1].split(',').any(|s| s == "INVALID")
        }) || r.text.contains("ct state invalid")
    })
}

/// Why conntrack found the packet invalid, where the packet says: (a
/// code for scripts, the words).
fn invalid_why(d: &DropRecord) -> (&'static str, &'static str) {
    match d.tcp_flags.as_deref() {
        Some("S.") => (
            "syn_ack_without_syn",
            "Conntrack here never saw the SYN this SYN-ACK answers: the SYN reached the server by another path, and only the replies come back through this namespace (asymmetric routing).",
        ),
        Some(f) if !f.contains('S') && !f.contains('R') => (
            "no_entry_or_out_of_window",
            "Conntrack has no entry for this connection (its first packets took another path, or the table was flushed) or the segment lies outside the TCP window.",
        ),
        _ => (
            "unknown",
            "Conntrack's own counters say why (conntrack -S: invalid, insert_failed).",
        ),
    }
}

/// The fixes of a conntrack_invalid drop: the path first (the rule is
/// usually right to drop what conntrack cannot follow), then the rule.
fn invalid_fixes(c: &Candidate, hint: &str) -> Vec<Fix> {
    let rm = fw::remove_command(c, hint);
    let look = fw::look_command(&c.id, hint);
    vec![
        Fix::run(
            format!("Route both directions of the connection through this namespace; or, if the asymmetry is intended, remove the rule: {rm}"),
            vec![rm],
        ),
        Fix::advice(format!("See its counters: {look}")),
        Fix::advice(format!("Conntrack's reasons: {hint}conntrack -S (or {hint}cat /proc/net/stat/nf_conntrack)")),
    ]
}

#[cfg(test)]
mod tests;
