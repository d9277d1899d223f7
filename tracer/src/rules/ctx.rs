//! What every rule may use, below the rules so that none of them calls
//! back into the engine: the topology of a namespace (through a
//! [`TopologySource`], live or recorded), the observations several rules
//! share, drop tallies, and `conclude`, which turns a finding into a
//! verdict once per cause.

use super::{Tier, Verdict};
use crate::topology::{Link, NsTopology};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

/// Verdicts printed per kind before further ones are only counted: a port
/// scan or a default-deny firewall would otherwise print one per port.
pub const MAX_VERDICTS_PER_KIND: usize = 20;

/// Where rules get the topology of a namespace: netlink on a live run,
/// the recorded snapshots on a replay.
pub trait TopologySource {
    /// Topology of a namespace; None if unknown or gone.
    fn get(&mut self, netns: u32) -> Option<Arc<NsTopology>>;
    /// A link of a namespace. A live source re-reads the namespace once
    /// when its copy lacks the ifindex (an interface created since).
    fn link(&mut self, netns: u32, ifindex: i32) -> Option<Link> {
        self.get(netns)?.link(ifindex).cloned()
    }
    /// The namespace's name in /run/netns, if it has one.
    fn netns_name(&mut self, netns: u32) -> Option<String>;
    /// tracer's own namespace: commands for it need no prefix.
    fn own_netns(&self) -> u32;
    /// Whether dockerd runs on this host; only advice depends on it.
    fn dockerd_running(&mut self) -> bool;
}

/// (src, dst, sport, dport) of a TCP/UDP flow.
pub type FlowKey = (IpAddr, IpAddr, u16, u16);

/// A flow that hit PKT_TOO_BIG somewhere traced.
#[derive(Clone, Debug)]
pub struct TooBigFlow {
    pub first_ts: u64,
    pub last_ts: u64,
    pub count: u64,
    /// pmtu_blackhole proved that its big packets die.
    pub blackhole: bool,
}

/// Observations more than one rule relies on, kept by the engine from
/// every fact before the rules see it (and marked by pmtu_blackhole).
#[derive(Default)]
pub struct Observations {
    /// Where traffic from a peer entered: (netns, peer) -> ingress ifindex.
    pub ingress_of_peer: HashMap<(u32, IpAddr), i32>,
    /// Neighbour states seen: (netns, ifindex, addr) -> transitions in order.
    pub neigh: HashMap<(u32, i32, IpAddr), Vec<&'static str>>,
    /// ICMP "fragmentation needed" / ICMPv6 "packet too big" that were
    /// themselves dropped: (netns, the ICMP's destination) -> time.
    pub icmp_ptb_dropped: HashMap<(u32, IpAddr), u64>,
    /// Flows whose packets were too big for an egress MTU.
    pub too_big_flows: HashMap<FlowKey, TooBigFlow>,
}

impl Observations {
    /// Bounds the per-flow and per-peer memory of a long run (a scanned
    /// host sees endless new sources and ports).
    pub fn prune(&mut self, now_ns: u64) {
        const MAX: usize = 50_000;
        if self.ingress_of_peer.len() > MAX {
            self.ingress_of_peer.clear();
        }
        if self.neigh.len() > MAX {
            self.neigh.clear();
        }
        if self.too_big_flows.len() > MAX {
            self.too_big_flows.retain(|_, f| f.blackhole);
        }
        // An ICMP drop long past says nothing about today's path.
        self.icmp_ptb_dropped
            .retain(|_, ts| now_ns.saturating_sub(*ts) < 10_000_000_000);
    }
}

/// What a rule found: everything a verdict says except the bookkeeping.
pub struct Finding {
    /// One cause, one key: a verdict per key, further drops only counted.
    pub key: String,
    pub kind: &'static str,
    pub tier: Tier,
    pub netns: u32,
    pub summary: String,
    pub evidence: Value,
    pub fix: Vec<String>,
}

/// Verdict bookkeeping: what was concluded, what is new since the last
/// `take_new`, what was suppressed.
#[derive(Default)]
pub struct Book {
    /// Dedup key -> index into `verdicts`.
    seen: HashMap<String, usize>,
    pub verdicts: Vec<Verdict>,
    /// (first fact time, count) per dedup key, for latency and counts.
    pending_count: HashMap<String, (u64, u64)>,
    /// Verdicts not printed because their kind hit MAX_VERDICTS_PER_KIND.
    pub suppressed: u64,
    suppressed_keys: HashSet<String>,
    /// Indexes into `verdicts` concluded or upgraded since `take_new`.
    fresh: Vec<usize>,
}

impl Book {
    pub fn take_new(&mut self) -> Vec<Verdict> {
        std::mem::take(&mut self.fresh)
            .into_iter()
            .map(|i| self.verdicts[i].clone())
            .collect()
    }

    /// Forgets the verdicts whose cause was last seen before `before_ns`,
    /// with their counts, so a long run (`tracer agent`) holds only causes
    /// still around: one that comes back is concluded (and counted) again,
    /// and a namespace that is gone leaves nothing behind. Returns how many
    /// were forgotten.
    pub fn expire(&mut self, before_ns: u64) -> usize {
        let mut keys: Vec<Option<String>> = vec![None; self.verdicts.len()];
        for (k, i) in self.seen.drain() {
            keys[i] = Some(k);
        }
        let fresh: HashSet<usize> = self.fresh.drain(..).collect();
        let old = std::mem::take(&mut self.verdicts);
        let n = old.len();
        for (i, (v, k)) in old.into_iter().zip(keys).enumerate() {
            let Some(k) = k else { continue };
            if v.last_ns < before_ns {
                self.pending_count.remove(&k);
                continue;
            }
            if fresh.contains(&i) {
                self.fresh.push(self.verdicts.len());
            }
            self.seen.insert(k, self.verdicts.len());
            self.verdicts.push(v);
        }
        // Suppressed keys of a past burst may be concluded again now.
        self.suppressed_keys.clear();
        n - self.verdicts.len()
    }

    pub fn prune(&mut self) {
        if self.pending_count.len() > 50_000 {
            let seen = &self.seen;
            self.pending_count.retain(|k, _| seen.contains_key(k));
        }
    }
}

/// The services a rule gets for one fact (or tick).
pub struct Ctx<'a> {
    /// Now, in wall-clock ns: the live clock, or fact time on a replay.
    pub now_ns: u64,
    pub obs: &'a mut Observations,
    book: &'a mut Book,
    src: &'a mut dyn TopologySource,
}

impl<'a> Ctx<'a> {
    pub fn new(
        now_ns: u64,
        obs: &'a mut Observations,
        book: &'a mut Book,
        src: &'a mut dyn TopologySource,
    ) -> Self {
        Ctx {
            now_ns,
            obs,
            book,
            src,
        }
    }

    pub fn topo(&mut self, netns: u32) -> Option<Arc<NsTopology>> {
        self.src.get(netns)
    }

    pub fn link(&mut self, netns: u32, ifindex: i32) -> Option<Link> {
        if ifindex <= 0 {
            return None;
        }
        self.src.link(netns, ifindex)
    }

    /// The other end of a veth (or netkit) pair: (its netns, its link).
    pub fn veth_peer(&mut self, netns: u32, ifindex: i32) -> Option<(u32, Link)> {
        let l = self.link(netns, ifindex)?;
        if !matches!(l.kind.as_deref(), Some("veth") | Some("netkit")) {
            return None;
        }
        let peer_ns = l.peer_netns?;
        let peer = self.link(peer_ns, l.link?)?;
        Some((peer_ns, peer))
    }

    pub fn netns_name(&mut self, netns: u32) -> Option<String> {
        self.src.netns_name(netns)
    }

    /// Docker advice only where Docker is: a docker0 or br-* bridge in the
    /// namespace, or dockerd running on the host.
    pub fn docker_here(&mut self, netns: u32) -> bool {
        let bridge = self.topo(netns).is_some_and(|t| {
            t.links.iter().any(|l| {
                l.kind.as_deref() == Some("bridge")
                    && (l.name == "docker0" || l.name.starts_with("br-"))
            })
        });
        bridge || self.src.dockerd_running()
    }

    /// The prefix that runs a command in `netns`: nothing for our own,
    /// `ip netns exec NAME ` for a named one, else `nsenter --net=PATH `
    /// (container namespaces have no name) so a fix never lands on the
    /// host. Names are shell-quoted: `ip netns add 'q$(id)'` is legal.
    pub fn ns_hint(&mut self, netns: u32) -> String {
        if netns == self.src.own_netns() {
            return String::new();
        }
        if let Some(n) = self.netns_name(netns) {
            return format!("ip netns exec {} ", super::fix::q(&n));
        }
        match self.topo(netns) {
            Some(t) if !t.path.as_os_str().is_empty() => {
                format!(
                    "nsenter --net={} ",
                    super::fix::q(&t.path.to_string_lossy())
                )
            }
            _ => format!("nsenter --net=<path of netns {netns}> "),
        }
    }

    /// `ip -n NAME ` for a named namespace other than ours, else the
    /// `ns_hint` prefix followed by `ip `.
    pub fn ip_cmd(&mut self, netns: u32) -> String {
        if netns != self.src.own_netns() {
            if let Some(n) = self.netns_name(netns) {
                return format!("ip -n {} ", super::fix::q(&n));
            }
        }
        format!("{}ip ", self.ns_hint(netns))
    }

    /// Counts a fact towards `key`; returns (first time, count).
    pub fn tally(&mut self, key: &str, ts: u64) -> (u64, u64) {
        let e = self
            .book
            .pending_count
            .entry(key.to_string())
            .or_insert((ts, 0));
        e.0 = e.0.min(ts);
        e.1 += 1;
        if let Some(&i) = self.book.seen.get(key) {
            let v = &mut self.book.verdicts[i];
            v.drops = e.1;
            v.last_ns = v.last_ns.max(ts).max(self.now_ns);
        }
        *e
    }

    /// The tier `key` was concluded with, if it was.
    pub fn concluded(&self, key: &str) -> Option<Tier> {
        self.book.seen.get(key).map(|&i| self.book.verdicts[i].tier)
    }

    /// Concludes a finding, once per key: a later finding for the same
    /// key counts only if it is surer (a suspicion that gets proven is
    /// printed again, as proven).
    pub fn conclude(&mut self, f: Finding) {
        let existing = self.book.seen.get(&f.key).copied();
        if let Some(i) = existing {
            if self.book.verdicts[i].tier >= f.tier {
                return;
            }
        } else if self
            .book
            .verdicts
            .iter()
            .filter(|v| v.kind == f.kind)
            .count()
            >= MAX_VERDICTS_PER_KIND
        {
            if self.book.suppressed_keys.len() < 100_000 && self.book.suppressed_keys.insert(f.key)
            {
                self.book.suppressed += 1;
            }
            return;
        }
        let (first_ts, drops) = self
            .book
            .pending_count
            .get(&f.key)
            .copied()
            .unwrap_or((0, 1));
        let latency_ms = if first_ts > 0 && self.now_ns > first_ts {
            (self.now_ns - first_ts) as f64 / 1e6
        } else {
            0.0
        };
        let v = Verdict {
            kind_type: "verdict",
            kind: f.kind,
            tier: f.tier,
            netns: f.netns,
            netns_name: self.netns_name(f.netns),
            summary: f.summary,
            evidence: match f.evidence {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            fix: f.fix,
            drops,
            latency_ms,
            fault: f.tier == Tier::Proven,
            last_ns: self.now_ns,
        };
        let i = match existing {
            Some(i) => {
                self.book.verdicts[i] = v;
                i
            }
            None => {
                self.book.verdicts.push(v);
                self.book.seen.insert(f.key, self.book.verdicts.len() - 1);
                self.book.verdicts.len() - 1
            }
        };
        self.book.fresh.push(i);
    }
}

/// An ICMP "fragmentation needed" or ICMPv6 "packet too big".
pub fn is_ptb_icmp(d: &crate::event::DropRecord) -> bool {
    matches!(
        (d.proto.as_deref(), d.icmp_type, d.icmp_code),
        (Some("icmp"), Some(3), Some(4)) | (Some("icmp6"), Some(2), _)
    )
}
