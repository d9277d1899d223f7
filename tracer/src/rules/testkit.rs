//! Facts and topologies built by hand, and a source that serves them, so
//! each rule is tested without a kernel.

use super::{Engine, Fact, TopologySource, Verdict};
pub use crate::events::reason::Reason;
use crate::events::record::Family;
use crate::events::record::Proto;
use crate::events::record::ReasonSource;
use crate::events::record::{DropRecord, RouteRecord, SynRecord};
use crate::host::route::{Route, RouteKind, RT_TABLE_MAIN};
use crate::host::topology::{Link, NsTopology, Sysctls};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

pub const NS: u32 = 4026532001;
pub const OWN: u32 = 4026531840;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn link(ifindex: i32, name: &str, kind: Option<&str>, mtu: u32) -> Link {
    Link {
        ifindex,
        name: name.into(),
        kind: kind.map(str::to_string),
        mtu,
        up: true,
        ..Link::default()
    }
}

pub fn route(dst: &str, len: u8, oif: i32, gateway: Option<&str>) -> Route {
    Route {
        dst: ip(dst),
        prefix_len: len,
        table: RT_TABLE_MAIN,
        kind: RouteKind::Unicast,
        oif: Some(oif),
        gateway: gateway.map(ip),
        metric: 0,
        src: None,
    }
}

pub fn topo(inode: u32, name: Option<&str>, links: Vec<Link>, routes: Vec<Route>) -> NsTopology {
    NsTopology {
        inode,
        name: name.map(str::to_string),
        links,
        routes,
        rules: Vec::new(),
        sysctls: Sysctls::default(),
        qdiscs: Vec::new(),
        udp: Default::default(),
        listen: Default::default(),
        exhaustion: Default::default(),
        read_at: std::time::Instant::now(),
        path: format!("/run/netns/{}", name.unwrap_or("x")).into(),
    }
}

/// A drop with nothing but its reason, netns and time; tests fill the rest.
pub fn drop(reason: Reason, ts_ns: u64) -> DropRecord {
    let mut d = DropRecord::sample("somewhere+0x1");
    d.ts_ns = ts_ns;
    d.reason = reason;
    d.reason_source = Some(ReasonSource::Kernel);
    d.netns = NS;
    d.ifindex = 0;
    d.ingress_ifindex = 0;
    d.proto = None;
    d.src = None;
    d.dst = None;
    d.sport = None;
    d.dport = None;
    d.tcp_flags = None;
    d.mss = None;
    d
}

pub fn tcp(mut d: DropRecord, src: &str, sport: u16, dst: &str, dport: u16) -> DropRecord {
    d.proto = Some(Proto::Tcp);
    d.family = Some(if src.contains(':') {
        Family::Ipv6
    } else {
        Family::Ipv4
    });
    d.src = Some(ip(src));
    d.dst = Some(ip(dst));
    d.sport = Some(sport);
    d.dport = Some(dport);
    d.tcp_flags = Some("P.".into());
    d
}

pub fn lookup(ifindex: i32, ifname: &str, mtu: u32, err: i32) -> RouteRecord {
    RouteRecord {
        age_ns: 1000,
        table: RT_TABLE_MAIN,
        err,
        iif: 1,
        oif: 0,
        ifindex,
        ifname: Some(ifname.into()),
        mtu,
        dst: None,
        src: None,
        sport: 0,
        dport: 0,
    }
}

#[allow(clippy::too_many_arguments)]
pub fn syn(
    ts_ns: u64,
    ingress: (i32, &str),
    egress: (i32, &str, u32),
    mss: u16,
    src: &str,
    sport: u16,
    dst: &str,
    dport: u16,
) -> SynRecord {
    SynRecord {
        kind: "syn",
        ts_ns,
        netns: NS,
        netns_name: None,
        container: None,
        ifindex: egress.0,
        ifname: Some(egress.1.into()),
        ingress_ifindex: ingress.0,
        ingress_ifname: Some(ingress.1.into()),
        host_ifname: None,
        mtu: egress.2,
        mss,
        family: Some(if src.contains(':') {
            Family::Ipv6
        } else {
            Family::Ipv4
        }),
        src: Some(ip(src)),
        dst: Some(ip(dst)),
        sport,
        dport,
        orig_src: None,
        orig_dst: None,
        orig_sport: None,
        orig_dport: None,
        tcp_flags: "S".into(),
    }
}

/// Serves hand-built topologies.
#[derive(Default)]
pub struct Fake {
    pub topo: HashMap<u32, Arc<NsTopology>>,
    pub dockerd: bool,
    pub containers: crate::host::containers::Registry,
    /// netns -> wall time its topology last looked different.
    pub changed_before: HashMap<u32, u64>,
    /// netns -> the readings its `ruleset` returns, oldest first (the
    /// last one stays).
    pub rulesets: HashMap<u32, Vec<Arc<crate::host::firewall::Ruleset>>>,
    /// netns -> what `--nftrace` traced there (None: tracing off).
    pub nftrace: HashMap<u32, Vec<crate::host::firewall::nftrace::TraceHit>>,
    /// netns -> what each `reread` finds next, oldest first (each becomes
    /// the namespace's copy).
    pub rereads: HashMap<u32, Vec<NsTopology>>,
}

impl Fake {
    pub fn with(topos: Vec<NsTopology>) -> Fake {
        Fake {
            topo: topos.into_iter().map(|t| (t.inode, Arc::new(t))).collect(),
            dockerd: false,
            containers: Default::default(),
            changed_before: HashMap::new(),
            rulesets: HashMap::new(),
            nftrace: HashMap::new(),
            rereads: HashMap::new(),
        }
    }

    /// One namespace read as `first`, then as each of `later` on each
    /// re-read.
    pub fn sequence(mut topos: Vec<NsTopology>) -> Fake {
        let later = topos.split_off(1);
        let inode = topos[0].inode;
        let mut f = Fake::with(topos);
        f.rereads.insert(inode, later);
        f
    }
}

impl TopologySource for Fake {
    fn get(&mut self, netns: u32) -> Option<Arc<NsTopology>> {
        self.topo.get(&netns).cloned()
    }
    fn netns_name(&mut self, netns: u32) -> Option<String> {
        self.topo.get(&netns).and_then(|t| t.name.clone())
    }
    fn own_netns(&self) -> u32 {
        OWN
    }
    fn dockerd_running(&mut self) -> bool {
        self.dockerd
    }
    fn container(&mut self, netns: u32) -> Option<Arc<crate::host::containers::Container>> {
        self.containers.by_netns(netns).cloned()
    }
    fn docker_network(&mut self, bridge: &str) -> Option<crate::host::containers::DockerNetwork> {
        self.containers.network_by_bridge(bridge).cloned()
    }
    fn changed_before(&mut self, netns: u32) -> Option<u64> {
        self.changed_before.get(&netns).copied()
    }
    fn nftrace(
        &mut self,
        netns: u32,
        _flow: &crate::host::firewall::nftrace::TraceFlow,
    ) -> Option<Vec<crate::host::firewall::nftrace::TraceHit>> {
        self.nftrace.get(&netns).cloned()
    }
    fn reread(&mut self, netns: u32) -> Option<Arc<NsTopology>> {
        if let Some(next) = self.rereads.get_mut(&netns).filter(|r| !r.is_empty()) {
            self.topo.insert(netns, Arc::new(next.remove(0)));
        }
        self.get(netns)
    }
    fn ruleset(&mut self, netns: u32) -> Option<Arc<crate::host::firewall::Ruleset>> {
        let r = self.rulesets.get_mut(&netns)?;
        if r.len() > 1 {
            Some(r.remove(0))
        } else {
            r.first().cloned()
        }
    }
    fn container_by_addr(
        &mut self,
        addr: std::net::IpAddr,
    ) -> Option<Arc<crate::host::containers::Container>> {
        self.containers.by_addr(addr).cloned()
    }
}

/// Feeds the facts in order (each at its own time, with 250 ms ticks in
/// between), runs the clock `tail_ns` past the last, and returns every
/// verdict.
pub fn run(src: &mut Fake, facts: Vec<Fact>, tail_ns: u64) -> Vec<Verdict> {
    let mut e = Engine::new();
    let mut now = facts.first().map(|f| f.ts_ns()).unwrap_or(0);
    for f in &facts {
        while now + 250_000_000 <= f.ts_ns() {
            now += 250_000_000;
            e.tick(now, src);
        }
        e.on_fact(f, f.ts_ns(), src);
    }
    let end = now + tail_ns;
    while now + 250_000_000 <= end {
        now += 250_000_000;
        e.tick(now, src);
    }
    e.finish(end, src);
    e.verdicts().to_vec()
}

pub fn kinds(v: &[Verdict]) -> Vec<(&'static str, super::Tier)> {
    v.iter().map(|v| (v.kind, v.tier)).collect()
}
