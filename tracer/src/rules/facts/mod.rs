//! Facts derived from the raw records that more than one rule relies on:
//! the lowest layer of the rules, below [`super::ctx`]. The engine keeps
//! [`Observations`] up to date from every fact (and tick) before any rule
//! sees it, so no rule's result depends on the order rules run in; the
//! functions here are the questions several rules ask of one drop.
//!
//! Nothing here concludes a verdict, and nothing here imports a rule.

pub mod arrivals;
pub mod bridge;
pub mod exhaustion;
pub mod firewall;
pub mod forwarding;
pub mod nat;
pub mod pmtu;
pub mod reverse_path;
pub mod route_policy;

use super::key::Key;
use super::Fact;
use crate::events::reason::Reason;
use crate::events::record::NudState;
use pmtu::{Episodes, TooBigFlow};
use std::collections::HashMap;
use std::net::IpAddr;

/// (src, dst, sport, dport) of a TCP/UDP flow.
pub type FlowKey = (IpAddr, IpAddr, u16, u16);

/// Observations more than one rule relies on, kept by the engine from
/// every fact before the rules see it.
#[derive(Default)]
pub struct Observations {
    /// Where traffic from a peer entered: (netns, peer) -> ingress ifindex.
    pub ingress_of_peer: HashMap<(u32, IpAddr), i32>,
    /// Neighbour states seen: (netns, ifindex, addr) -> transitions in order.
    pub neigh: HashMap<(u32, i32, IpAddr), Vec<NudState>>,
    /// ICMP "fragmentation needed" / ICMPv6 "packet too big" that were
    /// themselves dropped: (netns, the ICMP's destination) -> time.
    pub icmp_ptb_dropped: HashMap<(u32, IpAddr), u64>,
    /// The same drops by the ICMP's destination alone, with where they
    /// were: an ICMP dropped in another namespace than the too-big drop.
    pub icmp_ptb_dropped_at: HashMap<IpAddr, pmtu::IcmpDropSite>,
    /// Flows whose packets were too big for an egress MTU.
    pub too_big_flows: HashMap<FlowKey, TooBigFlow>,
    /// Too-big episodes per flow, and those proven black holes by the
    /// latest fact or tick.
    pub pmtu: Episodes,
    /// Peers whose traffic is proven to arrive elsewhere than where the
    /// replies to them go (from neighbour events' arrivals), per (netns
    /// of the replies, peer): the dedup key of that verdict. Written by
    /// `asymmetric_route` when it concludes from a neighbour event, read
    /// on later drops only (never on the same fact), so no rule order
    /// matters.
    pub arrives_elsewhere: HashMap<(u32, IpAddr), Key>,
    /// When each flow (either direction, as first seen) was first seen.
    pub flow_first_seen: HashMap<FlowKey, u64>,
    /// Bridge ports seen dropping what arrives on them because their STP
    /// state does not let it in: (netns, port ifindex) -> last time.
    pub blocked_ports: HashMap<(u32, i32), u64>,
    /// Connections conntrack translated: the tuple a packet or SYN showed
    /// (after NAT, as seen) -> the connection's original tuple (its
    /// initiator first). A Docker host's SYN after MASQUERADE carries it,
    /// so a verdict about the same connection elsewhere (a router's
    /// too-big drops of the download) leads back to the container.
    pub nat_origins: HashMap<FlowKey, FlowKey>,
}

impl Observations {
    /// When a flow was first seen, in either direction.
    pub fn first_seen(&self, k: &FlowKey) -> Option<u64> {
        let rev = (k.1, k.0, k.3, k.2);
        match (self.flow_first_seen.get(k), self.flow_first_seen.get(&rev)) {
            (Some(a), Some(b)) => Some(*a.min(b)),
            (a, b) => a.or(b).copied(),
        }
    }

    /// The original tuple of the connection `k` belongs to (in either
    /// direction), when conntrack translated it and a packet of it showed
    /// that.
    pub fn pre_nat(&self, k: &FlowKey) -> Option<FlowKey> {
        let rev = (k.1, k.0, k.3, k.2);
        self.nat_origins
            .get(k)
            .or_else(|| self.nat_origins.get(&rev))
            .copied()
    }

    fn saw_nat(&mut self, seen: FlowKey, orig: Option<FlowKey>) {
        if let Some(o) = orig.filter(|o| *o != seen) {
            self.nat_origins.insert(seen, o);
        }
    }

    /// Notes a flow's packet at `ts`.
    pub fn saw_flow(&mut self, k: FlowKey, ts: u64) {
        let e = self.flow_first_seen.entry(k).or_insert(ts);
        *e = (*e).min(ts);
    }

    /// Takes in one fact at `now_ns`, before any rule sees it. Returns
    /// false for a neighbour event that only repeats the entry's last
    /// state (not worth showing again).
    pub fn observe(&mut self, fact: &Fact, now_ns: u64) -> bool {
        self.pmtu.proven.clear();
        match fact {
            Fact::Drop(d) => {
                if let (Some(a), Some(b), Some(sp), Some(dp)) = (d.src, d.dst, d.sport, d.dport) {
                    self.saw_flow((a, b, sp, dp), d.ts_ns);
                    let orig = match (d.orig_src, d.orig_dst, d.orig_sport, d.orig_dport) {
                        (Some(oa), Some(ob), Some(osp), Some(odp)) => Some((oa, ob, osp, odp)),
                        _ => None,
                    };
                    self.saw_nat((a, b, sp, dp), orig);
                }
                // Where each peer's traffic enters, for asymmetry proofs.
                if let (Some(src), true) = (d.src, d.ingress_ifindex > 1) {
                    self.ingress_of_peer
                        .insert((d.netns, src), d.ingress_ifindex);
                }
                if let Some(port) = bridge::stp_blocked_port(d) {
                    self.blocked_ports.insert((d.netns, port), d.ts_ns);
                }
                let ptb = pmtu::is_ptb_icmp(d);
                if ptb {
                    if let Some(dst) = d.dst {
                        self.icmp_ptb_dropped.insert((d.netns, dst), d.ts_ns);
                        if let Some(site) = pmtu::IcmpDropSite::of(d) {
                            self.icmp_ptb_dropped_at.insert(dst, site);
                        }
                    }
                }
                if d.reason == Reason::PKT_TOO_BIG {
                    if let (Some(a), Some(b), Some(sp), Some(dp)) = (d.src, d.dst, d.sport, d.dport)
                    {
                        let f = self
                            .too_big_flows
                            .entry((a, b, sp, dp))
                            .or_insert(TooBigFlow {
                                first_ts: d.ts_ns,
                                last_ts: d.ts_ns,
                                count: 0,
                                blackhole: false,
                            });
                        f.first_ts = f.first_ts.min(d.ts_ns);
                        f.last_ts = f.last_ts.max(d.ts_ns);
                        f.count += 1;
                    }
                }
                if d.reason == Reason::PKT_TOO_BIG && !ptb {
                    self.pmtu.record(d);
                    self.check_pmtu(now_ns);
                } else if ptb {
                    // A blocked ICMP may prove a flow now.
                    self.check_pmtu(now_ns);
                }
                true
            }
            Fact::Neigh(n) => {
                let Some(a) = n.neighbor else { return false };
                let v = self.neigh.entry((n.netns, n.ifindex, a)).or_default();
                // Keep transitions, not every retry of the same state, and
                // only the recent ones.
                if v.last() == Some(&n.state) {
                    return false;
                }
                if v.len() >= 8 {
                    v.remove(0);
                }
                v.push(n.state);
                true
            }
            Fact::Syn(s) => {
                if let (Some(a), Some(b)) = (s.src, s.dst) {
                    self.saw_flow((a, b, s.sport, s.dport), s.ts_ns);
                    let orig = match (s.orig_src, s.orig_dst, s.orig_sport, s.orig_dport) {
                        (Some(oa), Some(ob), Some(osp), Some(odp)) => Some((oa, ob, osp, odp)),
                        _ => None,
                    };
                    self.saw_nat((a, b, s.sport, s.dport), orig);
                }
                true
            }
        }
    }

    /// About every 250 ms, before the rules' tick: episodes that time
    /// proves, and bounded memory.
    pub fn tick(&mut self, now_ns: u64) {
        self.pmtu.proven.clear();
        self.prune(now_ns);
        self.check_pmtu(now_ns);
    }

    /// Proves the episodes that now show a black hole, and marks their
    /// flows as such.
    fn check_pmtu(&mut self, now_ns: u64) {
        self.pmtu
            .check(now_ns, &self.icmp_ptb_dropped, &self.icmp_ptb_dropped_at);
        for p in &self.pmtu.proven {
            let d = &p.episode.rec;
            if let (Some(a), Some(b), Some(sp), Some(dp)) = (d.src, d.dst, d.sport, d.dport) {
                if let Some(f) = self.too_big_flows.get_mut(&(a, b, sp, dp)) {
                    f.blackhole = true;
                }
            }
        }
    }

    /// Bounds the per-flow and per-peer memory of a long run (a scanned
    /// host sees endless new sources and ports).
    fn prune(&mut self, now_ns: u64) {
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
        if self.arrives_elsewhere.len() > MAX {
            self.arrives_elsewhere.clear();
        }
        if self.blocked_ports.len() > MAX {
            self.blocked_ports.clear();
        }
        if self.flow_first_seen.len() > MAX {
            self.flow_first_seen.clear();
        }
        if self.nat_origins.len() > MAX {
            self.nat_origins.clear();
        }
        // An ICMP drop long past says nothing about today's path.
        self.icmp_ptb_dropped
            .retain(|_, ts| now_ns.saturating_sub(*ts) < 10_000_000_000);
        self.icmp_ptb_dropped_at
            .retain(|_, s| now_ns.saturating_sub(s.ts) < 10_000_000_000);
    }
}
