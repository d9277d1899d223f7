//! What every rule may use, below the rules so that none of them calls
//! back into the engine: the topology of a namespace (through a
//! [`TopologySource`], live or recorded), the observations several rules
//! share (kept in [`super::facts`]), drop tallies, and `conclude`, which
//! turns a finding into a verdict once per cause.

use super::facts::forwarding::holds;
use super::facts::reverse_path::{arp_rejected, arp_target, ArpRejected};
use super::facts::{FlowKey, Observations};
use super::key::Key;
use super::{Tier, Verdict};
use crate::events::record::DropRecord;
use crate::host::containers::{Container, DockerNetwork};
use crate::host::firewall::nftrace::{TraceFlow, TraceHit};
use crate::host::firewall::Ruleset;
use crate::host::topology::{Link, NsTopology};
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
    /// The container whose namespace `netns` is, if any.
    fn container(&mut self, _netns: u32) -> Option<Arc<Container>> {
        None
    }
    /// The Docker network a bridge device carries (`docker0` is `bridge`).
    fn docker_network(&mut self, _bridge: &str) -> Option<DockerNetwork> {
        None
    }
    /// The container that has `addr` on one of its networks.
    fn container_by_addr(&mut self, _addr: IpAddr) -> Option<Arc<Container>> {
        None
    }
    /// The firewall rules of `netns` with their counters, read now (a
    /// live source reads every time: callers ask sparingly); on a replay,
    /// the latest reading recorded so far. None if they cannot be read.
    fn ruleset(&mut self, _netns: u32) -> Option<Arc<Ruleset>> {
        None
    }
    /// Wall time before which `netns`'s topology was last seen different
    /// from now: a flow first seen before it began before a path change.
    fn changed_before(&mut self, _netns: u32) -> Option<u64> {
        None
    }
    /// The namespaces this run watches (`--netns`, else tracer's own):
    /// where a rule looks for what no drop shows (accept-queue overflows).
    fn watched(&mut self) -> Vec<u32> {
        vec![self.own_netns()]
    }
    /// Whether `netns`'s accept-queue overflow count may have moved since
    /// its topology was read: a live source reads that one counter, so
    /// that polling an idle namespace never re-reads all of it (issue 22:
    /// a bridge's 200 ports are 600 sysctl files); a replay's snapshots
    /// already carry every count.
    fn listen_moved(&mut self, _netns: u32) -> bool {
        true
    }
    /// With `--nftrace`: starts a trace of `flow` in `netns` (once) and
    /// returns the drops traced there so far; None where tracing is off or
    /// impossible (a replay returns what was recorded).
    fn nftrace(&mut self, _netns: u32, _flow: &TraceFlow) -> Option<Vec<TraceHit>> {
        None
    }
    /// `netns`'s topology read anew now (a live source drops its copy
    /// first; a replay has only what it recorded).
    fn reread(&mut self, netns: u32) -> Option<Arc<NsTopology>> {
        self.get(netns)
    }
    /// `netns`'s copy with its exhaustion counters read anew and the
    /// rest as it was (a replay: what it recorded).
    fn recount(&mut self, netns: u32) -> Option<Arc<NsTopology>> {
        self.reread(netns)
    }
}

/// What a rule found: everything a verdict says except the bookkeeping.
pub struct Finding {
    /// One cause, one key: a verdict per key, further drops only counted.
    pub key: Key,
    pub kind: &'static str,
    pub tier: Tier,
    pub netns: u32,
    pub summary: String,
    pub evidence: Value,
    /// Root cause's fix first.
    pub fix: Vec<super::fix::Fix>,
}

/// Verdict bookkeeping: what was concluded, what is new since the last
/// `take_new`, what was suppressed.
#[derive(Default)]
pub struct Book {
    /// Dedup key -> index into `verdicts`.
    seen: HashMap<Key, usize>,
    pub verdicts: Vec<Verdict>,
    /// (first fact time, count) per dedup key, for latency and counts.
    pending_count: HashMap<Key, (u64, u64)>,
    /// Verdicts not printed because their kind hit MAX_VERDICTS_PER_KIND.
    pub suppressed: u64,
    suppressed_keys: HashSet<Key>,
    /// Indexes into `verdicts` concluded or upgraded since `take_new`.
    fresh: Vec<usize>,
    /// The flow a key's verdict is about, for its first-seen time.
    flows: HashMap<Key, FlowKey>,
    /// The container whose connections a key's verdict is about, where
    /// the verdict's namespace is not a container's (see `nat_container`).
    named: HashMap<Key, Arc<Container>>,
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
        let mut keys: Vec<Option<Key>> = vec![None; self.verdicts.len()];
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
                self.named.remove(&k);
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
    /// Now, in wall-clock ns, as far as the facts go: the live clock less
    /// how late the facts arrive (a backlog), or fact time on a replay.
    /// Every window a rule keeps ("quiet for 2 s") is measured on it.
    pub now_ns: u64,
    /// The live clock itself (fact time on a replay). How often the
    /// kernel is read again (a ruleset, counters) runs on it: a reading
    /// shows the kernel as it is now, however late the facts are, and
    /// is stamped with it. How long after its first drop a verdict came
    /// (`latency_ms`) counts the backlog too.
    pub wall_ns: u64,
    pub obs: &'a mut Observations,
    book: &'a mut Book,
    src: &'a mut dyn TopologySource,
}

impl<'a> Ctx<'a> {
    pub fn new(
        (now_ns, wall_ns): (u64, u64),
        obs: &'a mut Observations,
        book: &'a mut Book,
        src: &'a mut dyn TopologySource,
    ) -> Self {
        Ctx {
            now_ns,
            wall_ns: wall_ns.max(now_ns),
            obs,
            book,
            src,
        }
    }

    pub fn topo(&mut self, netns: u32) -> Option<Arc<NsTopology>> {
        self.src.get(netns)
    }

    /// See [`TopologySource::nftrace`].
    pub fn nftrace(&mut self, netns: u32, flow: &TraceFlow) -> Option<Vec<TraceHit>> {
        self.src.nftrace(netns, flow)
    }

    /// See [`TopologySource::reread`].
    pub fn reread(&mut self, netns: u32) -> Option<Arc<NsTopology>> {
        self.src.reread(netns)
    }

    /// See [`TopologySource::recount`].
    pub fn recount(&mut self, netns: u32) -> Option<Arc<NsTopology>> {
        self.src.recount(netns)
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

    /// See [`TopologySource::watched`].
    pub fn watched(&mut self) -> Vec<u32> {
        self.src.watched()
    }

    /// See [`TopologySource::listen_moved`].
    pub fn listen_moved(&mut self, netns: u32) -> bool {
        self.src.listen_moved(netns)
    }

    pub fn container(&mut self, netns: u32) -> Option<Arc<Container>> {
        self.src.container(netns)
    }

    pub fn docker_network(&mut self, bridge: &str) -> Option<DockerNetwork> {
        self.src.docker_network(bridge)
    }

    pub fn ruleset(&mut self, netns: u32) -> Option<Arc<Ruleset>> {
        self.src.ruleset(netns)
    }

    pub fn dockerd_running(&mut self) -> bool {
        self.src.dockerd_running()
    }

    pub fn container_by_addr(&mut self, addr: IpAddr) -> Option<Arc<Container>> {
        self.src.container_by_addr(addr)
    }

    /// Who holds `addr` on the segment behind `ifindex` of `netns`: the
    /// veth peer itself, the bridge it is a port of, or another port's
    /// veth peer on that bridge. (netns, the device holding it.)
    pub fn holder_behind(&mut self, netns: u32, ifindex: i32, addr: IpAddr) -> Option<(u32, Link)> {
        let (pns, peer) = self.veth_peer(netns, ifindex)?;
        if holds(&peer, addr) {
            return Some((pns, peer));
        }
        let bridge = peer.master?;
        let ptopo = self.topo(pns)?;
        if let Some(b) = ptopo.link(bridge).filter(|b| holds(b, addr)) {
            return Some((pns, b.clone()));
        }
        let ports = ptopo
            .links
            .iter()
            .filter(|l| l.master == Some(bridge) && l.ifindex != peer.ifindex);
        for port in ports {
            if let Some((qns, q)) = self.veth_peer(pns, port.ifindex) {
                if holds(&q, addr) {
                    return Some((qns, q));
                }
            }
        }
        None
    }

    /// The neighbour holding the target of a `NEIGH_FAILED` drop's ARP, on
    /// the same segment, if its reverse-path check ignores the request:
    /// `rpfilter_route_conflict` proves it there, `neighbor_unreachable`
    /// then stays silent.
    pub fn arp_rejected(&mut self, d: &DropRecord) -> Option<ArpRejected> {
        let topo = self.topo(d.netns)?;
        let target = arp_target(d, &topo)?;
        let holder = self.holder_behind(d.netns, d.ifindex, target)?;
        let holder_topo = self.topo(holder.0)?;
        arp_rejected(d, &topo, holder, holder_topo)
    }

    /// Starts `key`'s clock at `ts` without counting a drop (evidence that
    /// precedes any loss, such as the first packet of the failing flow).
    pub fn clock_from(&mut self, key: &Key, ts: u64) {
        let e = self
            .book
            .pending_count
            .entry(key.clone())
            .or_insert((ts, 0));
        e.0 = e.0.min(ts);
    }

    /// The verdict of `key` is about `flow`: it gets the flow's first-seen
    /// time, and is marked stale if the flow began before the latest
    /// change of its namespace's topology.
    pub fn about_flow(&mut self, key: &Key, flow: FlowKey) {
        if self.book.flows.len() < 100_000 {
            self.book.flows.insert(key.clone(), flow);
        }
    }

    /// The container whose connection `flow` (as seen in `netns`) is,
    /// through NAT: the connection's original tuple (from this packet, or
    /// from another packet or SYN of it) starts at a container's address.
    /// None in a container's own namespace (the verdict is already its),
    /// and without NAT: a host's own connections name no container.
    pub fn nat_container(
        &mut self,
        netns: u32,
        flow: FlowKey,
    ) -> Option<(Arc<Container>, FlowKey)> {
        if self.src.container(netns).is_some() {
            return None;
        }
        let orig = self.obs.pre_nat(&flow)?;
        let c = self.src.container_by_addr(orig.0)?;
        Some((c, orig))
    }

    /// `key`'s verdict is about `c`'s connections (its `container`).
    pub fn name_container(&mut self, key: &Key, c: Arc<Container>) {
        if self.book.named.len() < 100_000 {
            self.book.named.insert(key.clone(), c);
        }
    }

    /// Docker advice only where Docker is: a Docker network's bridge (or a
    /// docker0 / br-* bridge) in the namespace, a container's namespace,
    /// or dockerd's own namespace (ours) while dockerd runs. A router
    /// namespace on a host that also runs dockerd gets no Docker advice.
    pub fn docker_here(&mut self, netns: u32) -> bool {
        let topo = self.topo(netns);
        let bridges: Vec<String> = topo
            .iter()
            .flat_map(|t| t.links.iter())
            .filter(|l| l.kind.as_deref() == Some("bridge"))
            .map(|l| l.name.clone())
            .collect();
        if bridges
            .iter()
            .any(|b| b == "docker0" || b.starts_with("br-"))
            || bridges.iter().any(|b| self.src.docker_network(b).is_some())
        {
            return true;
        }
        if self
            .src
            .container(netns)
            .is_some_and(|c| c.r.runtime == "docker")
        {
            return true;
        }
        netns == self.src.own_netns() && self.src.dockerd_running()
    }

    /// Docker manages `bridge` of `netns`: Some(its network, if the API
    /// named it); None when Docker advice does not belong here.
    pub fn docker_owner(&mut self, netns: u32, bridge: &str) -> Option<Option<DockerNetwork>> {
        if let Some(n) = self.docker_network(bridge) {
            return Some(Some(n));
        }
        let named = bridge == "docker0" || bridge.starts_with("br-");
        (named && self.docker_here(netns)).then_some(None)
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
    pub fn tally(&mut self, key: &Key, ts: u64) -> (u64, u64) {
        let e = self
            .book
            .pending_count
            .entry(key.clone())
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
    pub fn concluded(&self, key: &Key) -> Option<Tier> {
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
        let latency_ms = if first_ts > 0 && self.wall_ns > first_ts {
            (self.wall_ns - first_ts) as f64 / 1e6
        } else {
            0.0
        };
        let container = self.src.container(f.netns);
        // Only a container's own namespace has a host-side veth for the
        // interface concerned; one named through NAT is another namespace's.
        let host_ifname = container.as_ref().and_then(|c| {
            let named = ["egress_ifname", "ifname", "ingress_ifname"]
                .iter()
                .find_map(|k| f.evidence.get(*k).and_then(|v| v.as_str()))
                .and_then(|n| c.interfaces.iter().find(|i| i.ifname == n))
                .map(|i| i.ifindex)
                .unwrap_or(0);
            c.host_ifname(named)
        });
        let first_seen_ns = self
            .book
            .flows
            .get(&f.key)
            .and_then(|k| self.obs.first_seen(k));
        let stale = match first_seen_ns {
            Some(t) => self.src.changed_before(f.netns).is_some_and(|c| t < c),
            None => false,
        };
        let v = Verdict {
            kind_type: "verdict",
            kind: f.kind,
            tier: f.tier,
            netns: f.netns,
            netns_name: self.netns_name(f.netns),
            container_by_nat: container.is_none() && self.book.named.contains_key(&f.key),
            container: container
                .or_else(|| self.book.named.get(&f.key).cloned())
                .map(|c| c.r.clone()),
            host_ifname,
            summary: f.summary,
            evidence: match f.evidence {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            fix: f.fix.iter().map(|x| x.text.clone()).collect(),
            fix_commands: f.fix.into_iter().map(|x| x.commands).collect(),
            drops,
            latency_ms,
            fault: f.tier == Tier::Proven,
            last_ns: self.now_ns,
            first_seen_ns,
            stale,
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
