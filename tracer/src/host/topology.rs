//! Network topology of the namespaces drop events come from: links, addresses,
//! routes and the sysctls that decide reverse-path filtering and forwarding.
//!
//! Everything is read over rtnetlink from the one long-lived thread that
//! visits namespaces (see [`crate::host::netns_worker`]), synchronously: this runs off the event path
//! behind the [`Topology`] cache, so an async runtime would buy nothing.
//!
//! Decoding: messages are decoded with netlink-packet-route, but a message the
//! crate rejects (a kernel newer than the crate can emit attribute layouts it
//! does not expect) is decoded again by a small raw parser that knows only the
//! fields we keep, so one odd interface never hides the whole namespace.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoBridge, InfoBridgePort, InfoData, InfoGeneve, InfoPortData, InfoVxlan, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteVia};
use netlink_packet_route::rule::RuleMessage;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use serde::{Deserialize, Serialize};

use crate::host::exhaustion::Exhaustion;
use crate::host::listen::ListenCounters;
use crate::host::netns::{self, NetnsInfo};
use crate::host::netns_worker;
use crate::host::policy::{self, Decision, FibRule, Flow};
use crate::host::qdisc::{self, Qdisc};
use crate::host::route::{
    Route, RouteKind, RTN_THROW, RT_TABLE_DEFAULT, RT_TABLE_LOCAL, RT_TABLE_MAIN,
};
use crate::host::snmp::UdpCounters;
use netlink_packet_route::tc::TcMessage;

/// Topologies older than this are re-read on the next [`Topology::get`].
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(5);
/// Naming an event ([`Topology::ifname`], [`Topology::cached`]) re-reads
/// a copy only past this age: names change with events that invalidate
/// every copy (a namespace made or deleted) or that a copy lacks (a new
/// ifindex), and re-reading every namespace an event names every 5 s cost
/// most of a CPU at 1,000 namespaces (issue 22).
pub const NAME_MAX_AGE: Duration = Duration::from_secs(60);
/// See [`Topology::with_timing`].
pub const DEFAULT_RECHECK: Duration = Duration::from_millis(250);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub ifindex: i32,
    pub name: String,
    /// "veth", "bridge", "vxlan", ... from IFLA_INFO_KIND; None for devices
    /// without rtnl_link_ops (physical NICs, lo).
    pub kind: Option<String>,
    pub mtu: u32,
    /// IFF_UP (administratively up).
    pub up: bool,
    /// IFLA_MASTER: the bridge/bond/VRF this link is enslaved to.
    pub master: Option<i32>,
    /// IFLA_LINK: for veth the peer's ifindex (in `peer_netns`); for vlan,
    /// macvlan, ... the lower device.
    pub link: Option<i32>,
    /// IFLA_LINK_NETNSID: nsid, relative to this netns, of the netns `link`
    /// lives in; absent when that is this netns.
    pub link_netnsid: Option<i32>,
    /// Inode of the netns `link` lives in: this netns if no nsid was given,
    /// else the nsid resolved; None if it could not be resolved.
    pub peer_netns: Option<u32>,
    pub addrs: Vec<(IpAddr, u8)>,
    /// IFLA_TXQLEN: the queue length pfifo_fast and pfifo take as limit.
    #[serde(default)]
    pub txqlen: u32,
    /// IFLA_ADDRESS of an Ethernet-like device (`02:5e:..`): the source
    /// MAC of its frames, which names a sender in evidence. Absent from
    /// older recordings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// A bridge port's STP state (IFLA_BRPORT_STATE: 0 disabled, 1
    /// listening, 2 learning, 3 forwarding, 4 blocking); None for a device
    /// that is no bridge port. Absent from older recordings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brport_state: Option<u8>,
    /// A bridge's IFLA_BR_STP_STATE (0 off, 1 kernel STP, 2 user-space
    /// STP): while STP runs, it and not the user sets its ports' states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge_stp: Option<u32>,
    /// A UDP tunnel's (VXLAN, Geneve) encapsulation, from IFLA_INFO_DATA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<Tunnel>,
}

/// What a UDP tunnel device encapsulates into: enough to know its outer
/// packets and how much each adds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunnel {
    /// The outer UDP destination port (4789, 6081 unless set otherwise).
    pub port: u16,
    /// The far end (or the multicast group); None for a tunnel with no
    /// default destination (fdb entries, metadata mode).
    pub remote: Option<IpAddr>,
    pub local: Option<IpAddr>,
    /// IFLA_VXLAN_LINK: the underlay device it was bound to, if any.
    pub underlay: Option<i32>,
    /// How the outer DF bit is set: "set", "unset" or "inherit".
    pub df: Option<String>,
}

impl Tunnel {
    /// Bytes each packet grows by: outer IP, UDP, the tunnel's 8-byte
    /// header and the inner Ethernet header (Geneve options not counted).
    pub fn overhead(&self, outer_v6: bool) -> u32 {
        let ip = if outer_v6 { 40 } else { 20 };
        ip + 8 + 8 + 14
    }
}

fn df_text(v: u8) -> String {
    match v {
        0 => "unset".into(),
        1 => "set".into(),
        2 => "inherit".into(),
        n => n.to_string(),
    }
}

/// The encapsulation of a VXLAN or Geneve device; None for any other.
fn tunnel_of(data: &InfoData) -> Option<Tunnel> {
    let mut t = Tunnel {
        port: 0,
        remote: None,
        local: None,
        underlay: None,
        df: None,
    };
    match data {
        InfoData::Vxlan(v) => {
            t.port = 4789;
            for a in v {
                match a {
                    InfoVxlan::Port(p) => t.port = *p,
                    InfoVxlan::Group(g) => t.remote = Some(IpAddr::V4(*g)),
                    InfoVxlan::Group6(g) => t.remote = Some(IpAddr::V6(*g)),
                    InfoVxlan::Local(g) => t.local = Some(IpAddr::V4(*g)),
                    InfoVxlan::Local6(g) => t.local = Some(IpAddr::V6(*g)),
                    InfoVxlan::Link(l) => t.underlay = nonzero(*l),
                    InfoVxlan::Df(d) => t.df = Some(df_text(*d)),
                    _ => {}
                }
            }
        }
        InfoData::Geneve(v) => {
            t.port = 6081;
            for a in v {
                match a {
                    InfoGeneve::Port(p) => t.port = *p,
                    InfoGeneve::Remote(g) => t.remote = Some(IpAddr::V4(*g)),
                    InfoGeneve::Remote6(g) => t.remote = Some(IpAddr::V6(*g)),
                    InfoGeneve::Df(d) => t.df = Some(df_text(u8::from(*d))),
                    _ => {}
                }
            }
        }
        _ => return None,
    }
    // An unspecified address is no address.
    t.remote = t.remote.filter(|a| !a.is_unspecified());
    t.local = t.local.filter(|a| !a.is_unspecified());
    Some(t)
}

/// The name of a bridge port STP state (`bridge link` prints the same).
pub fn brport_state_name(state: u8) -> &'static str {
    match state {
        0 => "disabled",
        1 => "listening",
        2 => "learning",
        3 => "forwarding",
        4 => "blocking",
        _ => "unknown",
    }
}

/// The STP state in which a bridge port forwards frames.
pub const BR_STATE_FORWARDING: u8 = 3;

/// `aa:bb:cc:dd:ee:ff` for a 6-byte hardware address; None otherwise
/// (loopback's is all zeros, tunnels have none or a longer one).
pub fn mac_text(b: &[u8]) -> Option<String> {
    if b.len() != 6 || b.iter().all(|&x| x == 0) {
        return None;
    }
    let parts: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    Some(parts.join(":"))
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sysctls {
    pub rp_filter_all: u32,
    /// Per ifname, from net.ipv4.conf.<ifname>.rp_filter (includes "default").
    pub rp_filter: HashMap<String, u32>,
    /// net.ipv4.conf.<ifname>.src_valid_mark, "all" included, where set:
    /// the reverse-path check then looks up with the packet's mark.
    #[serde(default)]
    pub src_valid_mark: HashMap<String, bool>,
    /// net.ipv4.conf.all.forwarding
    pub ipv4_forwarding: bool,
    /// Per ifname, net.ipv4.conf.<ifname>.forwarding: the kernel checks
    /// the ingress device's value, not only `all`.
    #[serde(default)]
    pub ipv4_forwarding_dev: HashMap<String, bool>,
    /// net.ipv6.conf.all.forwarding (false when IPv6 is disabled).
    pub ipv6_forwarding: bool,
    /// The nftables ruleset generation (`NFT_MSG_GETGEN`): it changes with
    /// every ruleset change, iptables-nft's included (an MSS clamp added),
    /// so a changed value is a change on the path. None without nftables.
    #[serde(default)]
    pub nft_genid: Option<u32>,
    /// net.core.rmem_max: the most SO_RCVBUF may ask for (host-wide:
    /// read-only, the host's value, in other namespaces).
    #[serde(default)]
    pub rmem_max: Option<u64>,
    /// net.core.rmem_default: the receive buffer of a socket that sets none.
    #[serde(default)]
    pub rmem_default: Option<u64>,
}

/// One namespace's topology; also a recording's snapshot (serde), where
/// `read_at` is not kept: a replay has no clock of its own.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NsTopology {
    pub inode: u32,
    pub name: Option<String>,
    /// Sorted by ifindex.
    pub links: Vec<Link>,
    /// All tables, IPv4 then IPv6, in kernel dump order.
    pub routes: Vec<Route>,
    /// The policy rules (`ip rule`), IPv4 then IPv6; empty in recordings
    /// made before they were read (the kernel's defaults are assumed).
    #[serde(default)]
    pub rules: Vec<FibRule>,
    pub sysctls: Sysctls,
    /// Queue disciplines of every device, with their counters at read time.
    #[serde(default)]
    pub qdiscs: Vec<Qdisc>,
    /// UDP receive-buffer errors counted so far (a counter, so not part
    /// of what `same_as` compares).
    #[serde(default)]
    pub udp: UdpCounters,
    /// TCP accept-queue overflows counted so far, and the listeners with
    /// connections waiting (counters, not compared by `same_as`).
    #[serde(default)]
    pub listen: ListenCounters,
    /// The kernel's exhaustion counters and limits (conntrack, neighbour
    /// tables, CPU backlogs) at read time: counters, not compared by
    /// `same_as`.
    #[serde(default)]
    pub exhaustion: Exhaustion,
    #[serde(skip, default = "Instant::now")]
    pub read_at: Instant,
    /// Where the netns was opened from: a different path for the same
    /// inode means the kernel reused the inode for a new namespace.
    pub path: std::path::PathBuf,
}

impl NsTopology {
    /// Reads links, addresses, routes and sysctls of `ns` from a thread that
    /// joined it.
    pub fn read(ns: &NetnsInfo) -> anyhow::Result<NsTopology> {
        let inode = ns.inode;
        let (links, routes, rules, sysctls, qdiscs, udp, listen, mut exhaustion) =
            netns_worker::read_in(&ns.path, move || read_here(inode))
                .with_context(|| format!("cannot enter netns {}", ns.path.display()))?
                .with_context(|| format!("reading topology of netns {}", ns.label()))?;
        exhaustion.add_host_wide();
        Ok(NsTopology {
            inode,
            name: ns.name.clone(),
            links,
            routes,
            rules,
            sysctls,
            qdiscs,
            udp,
            listen,
            exhaustion,
            read_at: Instant::now(),
            path: ns.path.clone(),
        })
    }

    /// What naming an event needs (see [`Topology::name_link`]): the links
    /// of `ns` with their addresses and peers, no routes, sysctls or queues
    /// (empty in the copy). One link and one address dump.
    pub fn read_names(ns: &NetnsInfo) -> anyhow::Result<NsTopology> {
        let inode = ns.inode;
        let links = netns_worker::read_in(&ns.path, move || names_here(inode))
            .with_context(|| format!("cannot enter netns {}", ns.path.display()))?
            .with_context(|| format!("reading links of netns {}", ns.label()))?;
        Ok(NsTopology {
            inode,
            name: ns.name.clone(),
            links,
            routes: Vec::new(),
            rules: Vec::new(),
            sysctls: Sysctls::default(),
            qdiscs: Vec::new(),
            udp: UdpCounters::default(),
            listen: ListenCounters::default(),
            exhaustion: Exhaustion::default(),
            read_at: Instant::now(),
            path: ns.path.clone(),
        })
    }

    /// Only the links of `ns` (no addresses, routes, sysctls or queues):
    /// what a scan of every namespace needs, at a fraction of the cost.
    pub fn read_links(ns: &NetnsInfo) -> anyhow::Result<Vec<Link>> {
        let inode = ns.inode;
        netns_worker::read_in(&ns.path, move || links_here(inode))
            .with_context(|| format!("cannot enter netns {}", ns.path.display()))?
            .with_context(|| format!("reading links of netns {}", ns.label()))
    }

    /// Only the links of the namespace the calling thread is in (the caller
    /// made sure which: see [`crate::host::netns_worker::Visitor::visit_inode`]).
    pub fn links_of_this_netns() -> anyhow::Result<Vec<Link>> {
        dump_links(&mut Rtnl::open().context("rtnetlink socket")?)
    }

    /// Same namespace contents (when it was read aside).
    pub fn same_as(&self, other: &NsTopology) -> bool {
        self.inode == other.inode
            && self.name == other.name
            && self.links == other.links
            && self.routes == other.routes
            && self.rules == other.rules
            && self.sysctls == other.sysctls
            && self.path == other.path
            && self.qdiscs.len() == other.qdiscs.len()
            && self
                .qdiscs
                .iter()
                .zip(&other.qdiscs)
                .all(|(a, b)| a.same_config(b))
    }

    /// The egress qdiscs of a device, root first.
    pub fn qdiscs_of(&self, ifindex: i32) -> impl Iterator<Item = &Qdisc> {
        self.qdiscs
            .iter()
            .filter(move |q| q.ifindex == ifindex && q.is_egress())
    }

    pub fn link(&self, ifindex: i32) -> Option<&Link> {
        self.links.iter().find(|l| l.ifindex == ifindex)
    }

    pub fn link_by_name(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    /// The route the kernel would pick for `dst` under the default policy
    /// rules (local, main, default tables in that order), without any other
    /// policy rules: longest prefix, then lowest metric; a `throw` route
    /// sends the lookup on to the next table, as in the kernel.
    pub fn route_to(&self, dst: IpAddr) -> Option<&Route> {
        for table in [RT_TABLE_LOCAL, RT_TABLE_MAIN, RT_TABLE_DEFAULT] {
            let best = self
                .routes
                .iter()
                .filter(|r| r.table == table && r.contains(dst))
                .max_by_key(|r| (r.prefix_len, std::cmp::Reverse(r.metric)));
            match best {
                Some(r) if r.kind == RouteKind::Other(RTN_THROW) => continue,
                Some(r) => return Some(r),
                None => continue,
            }
        }
        None
    }

    /// The most specific unicast route whose prefix contains `addr` and that
    /// points out of `ifindex` (e.g. the connected route of a bridge). The
    /// local table is skipped: its /32 `local` entries would always win and
    /// say nothing about which subnet lives behind the interface. Ties go to
    /// the main table, then the lowest metric.
    pub fn prefix_on(&self, ifindex: i32, addr: IpAddr) -> Option<&Route> {
        self.routes
            .iter()
            .filter(|r| {
                r.oif == Some(ifindex)
                    && r.table != RT_TABLE_LOCAL
                    && r.kind == RouteKind::Unicast
                    && r.contains(addr)
            })
            .max_by_key(|r| {
                (
                    r.prefix_len,
                    r.table == RT_TABLE_MAIN,
                    std::cmp::Reverse(r.metric),
                )
            })
    }

    /// Effective IPv4 rp_filter of an interface: max(conf.all, conf.<ifname>),
    /// as the kernel's IN_DEV_RPFILTER computes it. For an unknown ifname only
    /// conf.all is known, so that is returned.
    /// Whether IPv4 packets arriving on `ifname` may be forwarded: the
    /// device's own conf.<ifname>.forwarding (which `all` propagates to).
    pub fn ipv4_forwarding_on(&self, ifname: &str) -> bool {
        self.sysctls
            .ipv4_forwarding_dev
            .get(ifname)
            .copied()
            .unwrap_or(self.sysctls.ipv4_forwarding)
    }

    pub fn rp_filter(&self, ifname: &str) -> u32 {
        let dev = self.sysctls.rp_filter.get(ifname).copied().unwrap_or(0);
        self.sysctls.rp_filter_all.max(dev)
    }

    /// Whether the reverse-path check on `ifname` looks up with the
    /// packet's mark: conf.all or conf.<ifname> src_valid_mark.
    pub fn src_valid_mark(&self, ifname: &str) -> bool {
        let on = |n: &str| self.sysctls.src_valid_mark.get(n).copied() == Some(true);
        on("all") || on(ifname)
    }

    /// The rule and table the kernel uses for `flow`; with `table` (the
    /// one the kernel reported), the rule that led there.
    pub fn decide(&self, flow: &Flow, table: Option<u32>) -> Option<Decision> {
        policy::decide(&self.rules, &self.routes, flow, table)
    }

    /// The policy rules that may match `flow`, in order.
    pub fn rules_for(&self, flow: &Flow) -> Vec<FibRule> {
        policy::matching(&self.rules, flow)
    }

    /// The policy decision of the reverse-path check for a packet from
    /// `src` to `dst` arriving on `in_name` (fib_validate_source: src and
    /// dst swapped, iif loopback, the mark only with src_valid_mark).
    pub fn reverse_decision(
        &self,
        src: IpAddr,
        dst: Option<IpAddr>,
        in_name: &str,
        table: Option<u32>,
    ) -> Option<Decision> {
        let flow = Flow {
            src: dst,
            dst: src,
            iif: Some("lo"),
            oif: None,
            mark: (!self.src_valid_mark(in_name)).then_some(0),
        };
        self.decide(&flow, table)
    }

    /// Is this ifindex a Linux bridge?
    pub fn is_bridge(&self, ifindex: i32) -> bool {
        self.link(ifindex)
            .is_some_and(|l| l.kind.as_deref() == Some("bridge"))
    }
}

fn links_here(inode: u32) -> anyhow::Result<Vec<Link>> {
    let actual = netns::thread_inode().context("netns of reader thread")?;
    if actual != inode {
        bail!("path now opens netns {actual}, not {inode}");
    }
    dump_links(&mut Rtnl::open().context("rtnetlink socket")?)
}

/// Runs on the thread inside the netns.
type Read = (
    Vec<Link>,
    Vec<Route>,
    Vec<FibRule>,
    Sysctls,
    Vec<Qdisc>,
    UdpCounters,
    ListenCounters,
    Exhaustion,
);

fn read_here(expected: u32) -> anyhow::Result<Read> {
    // The path may have been recycled (pid reuse) between lookup and setns.
    let actual = netns::thread_inode().context("netns of reader thread")?;
    if actual != expected {
        bail!("path now opens netns {actual}, not {expected}");
    }
    let mut nl = Rtnl::open().context("rtnetlink socket")?;
    let (mut links, devconf) = dump_links_conf(&mut nl).context("dumping links")?;
    let addrs = dump_addrs(&mut nl).context("dumping addresses")?;
    let mut routes = dump_routes(&mut nl, AddressFamily::Inet).context("dumping IPv4 routes")?;
    match dump_routes(&mut nl, AddressFamily::Inet6) {
        Ok(r) => routes.extend(r),
        // IPv6 disabled (ipv6.disable=1): no v6 routes is the truth then.
        Err(_) if !Path::new("/proc/sys/net/ipv6").exists() => {}
        Err(e) => return Err(e.context("dumping IPv6 routes")),
    }
    let mut rules = dump_rules(&mut nl, AddressFamily::Inet).context("dumping IPv4 rules")?;
    // No IPv6 rules where IPv6 is off: the IPv4 ones still stand.
    rules.extend(dump_rules(&mut nl, AddressFamily::Inet6).unwrap_or_default());
    let sysctls = read_sysctls(&links, &devconf).context("reading sysctls")?;
    let txqlen: HashMap<i32, u32> = links.iter().map(|l| (l.ifindex, l.txqlen)).collect();
    // Queue disciplines only name a queue that drops; without them the
    // rest of the topology still stands.
    let qdiscs = dump_qdiscs(&mut nl, &txqlen).unwrap_or_default();
    join_links(&mut nl, &mut links, addrs, expected);
    Ok((
        links,
        routes,
        rules,
        sysctls,
        qdiscs,
        UdpCounters::read_here(),
        ListenCounters::read_here(),
        Exhaustion::read_here(),
    ))
}

/// Links with their addresses and the namespaces of their peers, sorted
/// by ifindex.
fn join_links(nl: &mut Rtnl, links: &mut [Link], addrs: Vec<(i32, IpAddr, u8)>, expected: u32) {
    let by_index: HashMap<i32, usize> = links
        .iter()
        .enumerate()
        .map(|(i, l)| (l.ifindex, i))
        .collect();
    for (ifindex, addr, len) in addrs {
        if let Some(&i) = by_index.get(&ifindex) {
            links[i].addrs.push((addr, len));
        }
    }

    let wanted: HashSet<i32> = links.iter().filter_map(|l| l.link_netnsid).collect();
    let nsids = resolve_nsids(nl, &wanted, expected);
    for l in links.iter_mut() {
        l.peer_netns = match l.link_netnsid {
            Some(id) => nsids.get(&id).copied(),
            None if l.link.is_some() => Some(expected),
            None => None,
        };
    }
    links.sort_by_key(|l| l.ifindex);
}

/// What naming needs of the namespace the thread is in: its links, their
/// addresses and peers; no routes, sysctls or queues.
fn names_here(expected: u32) -> anyhow::Result<Vec<Link>> {
    let actual = netns::thread_inode().context("netns of reader thread")?;
    if actual != expected {
        bail!("path now opens netns {actual}, not {expected}");
    }
    let mut nl = Rtnl::open().context("rtnetlink socket")?;
    let mut links = dump_links(&mut nl).context("dumping links")?;
    let addrs = dump_addrs(&mut nl).context("dumping addresses")?;
    join_links(&mut nl, &mut links, addrs, expected);
    Ok(links)
}

/// Maps nsids (as seen from the current netns) to netns inodes.
///
/// The kernel only reports nsids, which are per-netns numbers. The reverse
/// mapping is to ask, for each live netns, "what nsid does it have here?":
/// RTM_GETNSID with NETNSA_FD. That query does not allocate ids (unlike
/// dumping a link does), so it changes nothing on the machine.
///
/// Asking every namespace made each read cost O(namespaces) (issue 22: a
/// bridge's namespace and each of its 1,000 peers), so the likely answers
/// are asked first (see [`NsidMemo`]) and the walk stops once all are found.
fn resolve_nsids(nl: &mut Rtnl, wanted: &HashSet<i32>, own: u32) -> HashMap<i32, u32> {
    if wanted.is_empty() {
        return HashMap::new();
    }
    let all = netns::list();
    let by_inode: HashMap<u32, &NetnsInfo> = all.iter().map(|c| (c.inode, c)).collect();
    let mut out = NsidAnswers::known(own, wanted, &by_inode);
    if out.len() == wanted.len() {
        return out;
    }
    let first = NsidMemo::likely(own);
    let firsts: HashSet<u32> = first.iter().copied().collect();
    let answered: HashSet<u32> = out.values().copied().collect();
    let ordered = first
        .iter()
        .filter_map(|i| by_inode.get(i).copied())
        .chain(all.iter().filter(|c| !firsts.contains(&c.inode)));
    for cand in ordered {
        if cand.inode == own || answered.contains(&cand.inode) {
            continue;
        }
        let Ok(file) = File::open(&cand.path) else {
            continue;
        };
        // Trust the fd, not the listing: the path may have changed meaning.
        let Ok(inode) = file.metadata().map(|m| m.ino()) else {
            continue;
        };
        let Ok(inode) = u32::try_from(inode) else {
            continue;
        };
        if let Ok(Some(id)) = nl.nsid_of_fd(file.as_raw_fd()) {
            if wanted.contains(&id) {
                out.insert(id, inode);
                if out.len() == wanted.len() {
                    break;
                }
            }
        }
    }
    NsidMemo::note(own, out.values().copied());
    NsidAnswers::note(own, &out, &by_inode);
    out
}

/// Resolves, from a thread inside namespace `own`, the peers of its links
/// into other namespaces, so that a later read finds them answered (see
/// [`NsidAnswers`]): the MTU scan calls it for namespaces with many such
/// links (a bridge's), off the event path.
pub fn warm_peers_here(own: u32, links: &[Link]) {
    let wanted: HashSet<i32> = links.iter().filter_map(|l| l.link_netnsid).collect();
    if let Ok(mut nl) = Rtnl::open() {
        resolve_nsids(&mut nl, &wanted, own);
    }
}

/// nsid answers of the kernel, trusted while the namespace answered still
/// opens from the same path in the index: an nsid is only freed when the
/// namespace it names dies, and a death is an index event (runtimes
/// bind-mount their namespaces where the index watches; a `/proc/PID`
/// path goes with its process). A bridge's namespace with 1,000 ports
/// otherwise costs 1,000 opens and queries per read (issue 22). Inode and
/// path both recycled between two reads is what this cannot tell.
struct NsidAnswers;

/// (namespace asked in, nsid) -> (inode, path it opened from).
type Answers = HashMap<(u32, i32), (u32, std::path::PathBuf)>;

static NSID_ANSWERS: std::sync::Mutex<Option<Answers>> = std::sync::Mutex::new(None);

impl NsidAnswers {
    fn known(
        own: u32,
        wanted: &HashSet<i32>,
        live: &HashMap<u32, &NetnsInfo>,
    ) -> HashMap<i32, u32> {
        let g = NSID_ANSWERS.lock().unwrap_or_else(|e| e.into_inner());
        let Some(m) = g.as_ref() else {
            return HashMap::new();
        };
        wanted
            .iter()
            .filter_map(|id| {
                let (inode, path) = m.get(&(own, *id))?;
                (live.get(inode)?.path == *path).then_some((*id, *inode))
            })
            .collect()
    }

    fn note(own: u32, found: &HashMap<i32, u32>, live: &HashMap<u32, &NetnsInfo>) {
        let mut g = NSID_ANSWERS.lock().unwrap_or_else(|e| e.into_inner());
        let m = g.get_or_insert_with(HashMap::new);
        if m.len() > 262_144 {
            // Churn: the answers of the dead are never asked again.
            m.retain(|_, (inode, path)| live.get(inode).is_some_and(|n| n.path == *path));
        }
        for (id, inode) in found {
            if let Some(n) = live.get(inode) {
                m.insert((own, *id), (*inode, n.path.clone()));
            }
        }
    }
}

/// Which namespaces a namespace's links led to, and back: a veth's two
/// ends each name the other's namespace, so once one side is resolved the
/// other side's answer is known to be likely. Answers are always asked
/// again of the kernel (nsids are reused); only the order comes from here.
struct NsidMemo;

static NSID_MEMO: std::sync::Mutex<Option<HashMap<u32, Vec<u32>>>> = std::sync::Mutex::new(None);

impl NsidMemo {
    fn likely(own: u32) -> Vec<u32> {
        let g = NSID_MEMO.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref()
            .and_then(|m| m.get(&own).cloned())
            .unwrap_or_default()
    }

    fn note(own: u32, peers: impl Iterator<Item = u32>) {
        let mut g = NSID_MEMO.lock().unwrap_or_else(|e| e.into_inner());
        let m = g.get_or_insert_with(HashMap::new);
        if m.len() > 65_536 {
            m.clear();
        }
        for p in peers {
            for (a, b) in [(own, p), (p, own)] {
                let v = m.entry(a).or_default();
                if !v.contains(&b) {
                    v.push(b);
                }
            }
        }
    }
}

/// A sysctl that may be absent or unreadable: None then.
fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_u32(path: &Path) -> io::Result<u32> {
    let s = fs::read_to_string(path)?;
    s.trim().parse().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

/// Must run on the thread inside the netns: /proc/sys/net resolves against
/// the reading thread's netns. The per-device values come from the link
/// dump (`devconf`: the same array `conf/<dev>/*` shows), not from three
/// files per device: a bridge's namespace with 1,000 ports was 3,000 file
/// reads on the event path (issue 22). `all` and `default` are files.
fn read_sysctls(links: &[Link], devconf: &HashMap<i32, DevConf>) -> anyhow::Result<Sysctls> {
    let conf = Path::new("/proc/sys/net/ipv4/conf");
    let all = conf.join("all");
    let rp_filter_all =
        read_u32(&all.join("rp_filter")).with_context(|| format!("{}/rp_filter", all.display()))?;
    let mut rp_filter = HashMap::new();
    let mut ipv4_forwarding_dev = HashMap::new();
    let mut src_valid_mark = HashMap::new();
    // Only where it is on: the map stays empty on most hosts.
    if read_u32(&all.join("src_valid_mark")).is_ok_and(|v| v != 0) {
        src_valid_mark.insert("all".to_string(), true);
    }
    let default = conf.join("default");
    let default_conf = DevConf {
        forwarding: read_u32(&default.join("forwarding")).unwrap_or(0),
        rp_filter: read_u32(&default.join("rp_filter")).unwrap_or(0),
        src_valid_mark: read_u32(&default.join("src_valid_mark")).unwrap_or(0),
    };
    let named = links
        .iter()
        .filter_map(|l| Some((l.name.clone(), *devconf.get(&l.ifindex)?)));
    for (name, c) in std::iter::once(("default".to_string(), default_conf)).chain(named) {
        if c.src_valid_mark != 0 {
            src_valid_mark.insert(name.clone(), true);
        }
        ipv4_forwarding_dev.insert(name.clone(), c.forwarding != 0);
        rp_filter.insert(name, c.rp_filter);
    }
    let ipv4_forwarding = read_u32(&all.join("forwarding"))
        .with_context(|| format!("{}/forwarding", all.display()))?
        != 0;
    let ipv6_forwarding = read_u32(Path::new("/proc/sys/net/ipv6/conf/all/forwarding"))
        .map(|v| v != 0)
        .unwrap_or(false);
    Ok(Sysctls {
        rp_filter_all,
        rp_filter,
        src_valid_mark,
        ipv4_forwarding,
        ipv4_forwarding_dev,
        ipv6_forwarding,
        nft_genid: nft_genid(),
        rmem_max: read_u64(Path::new("/proc/sys/net/core/rmem_max")),
        rmem_default: read_u64(Path::new("/proc/sys/net/core/rmem_default")),
    })
}

/// The nftables generation id of the calling thread's netns, over
/// NETLINK_NETFILTER (`NFT_MSG_GETGEN`); None if nftables is absent.
fn nft_genid() -> Option<u32> {
    const NETLINK_NETFILTER: isize = 12;
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NFT_MSG_GETGEN: u16 = 16;
    const NFTA_GEN_ID: u16 = 1;
    let mut sock = Socket::new(NETLINK_NETFILTER).ok()?;
    sock.bind_auto().ok()?;
    sock.connect(&SocketAddr::new(0, 0)).ok()?;
    sock.set_non_blocking(false).ok()?;
    // nlmsghdr (16) + nfgenmsg (4): family AF_UNSPEC, version 0, res_id 0.
    let mut req = Vec::with_capacity(20);
    req.extend_from_slice(&20u32.to_ne_bytes());
    req.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN).to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[0, 0, 0, 0]);
    sock.send(&req, 0).ok()?;
    // Never wait for an answer that does not come.
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: setsockopt on our own socket with a timeval we own.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    let mut buf = vec![0u8; 4096];
    let n = sock.recv(&mut &mut buf[..], 0).ok()?;
    parse_genid(&buf[..n], NFTA_GEN_ID)
}

/// NFTA_GEN_ID (big endian) from an NFT_MSG_NEWGEN reply.
fn parse_genid(msg: &[u8], attr: u16) -> Option<u32> {
    if msg.len() < 20 {
        return None;
    }
    let len = u32::from_ne_bytes(msg[0..4].try_into().ok()?) as usize;
    let ty = u16::from_ne_bytes(msg[4..6].try_into().ok()?);
    // NLMSG_ERROR (2): nftables not available.
    if ty == 2 || len > msg.len() {
        return None;
    }
    let mut at = 20;
    while at + 4 <= len {
        let alen = u16::from_ne_bytes(msg[at..at + 2].try_into().ok()?) as usize;
        let aty = u16::from_ne_bytes(msg[at + 2..at + 4].try_into().ok()?) & 0x3fff;
        if alen < 4 || at + alen > len {
            return None;
        }
        if aty == attr && alen >= 8 {
            return Some(u32::from_be_bytes(msg[at + 4..at + 8].try_into().ok()?));
        }
        at += (alen + 3) & !3;
    }
    None
}

// ---------------------------------------------------------------------------
// rtnetlink plumbing

/// One message of a reply: the crate's decoding, plus the raw payload for the
/// fallback decoder.
struct Reply {
    parsed: Option<RouteNetlinkMessage>,
    payload: Vec<u8>,
}

struct Rtnl {
    sock: Socket,
    seq: u32,
}

const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const NLMSG_HDRLEN: usize = 16;

impl Rtnl {
    fn open() -> io::Result<Rtnl> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // The kernel always answers, but a reader stuck forever would freeze
        // the cache's owner; a timeout turns that into an error.
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: valid socket fd, pointer/length describe `tv`.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Rtnl { sock, seq: 0 })
    }

    /// Dumps are retried when the kernel flags them inconsistent (the table
    /// changed mid-dump); after a few tries the last answer is used anyway.
    fn request(&mut self, msg: RouteNetlinkMessage, dump: bool) -> anyhow::Result<Vec<Reply>> {
        let mut last = Vec::new();
        for _ in 0..3 {
            let (replies, interrupted) = self.request_once(msg.clone(), dump)?;
            if !interrupted {
                return Ok(replies);
            }
            last = replies;
        }
        Ok(last)
    }

    fn request_once(
        &mut self,
        msg: RouteNetlinkMessage,
        dump: bool,
    ) -> anyhow::Result<(Vec<Reply>, bool)> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut pkt = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        pkt.header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
        pkt.header.sequence_number = seq;
        pkt.finalize();
        let mut buf = vec![0u8; pkt.buffer_len()];
        pkt.serialize(&mut buf);
        self.sock.send(&buf, 0)?;

        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            if data.is_empty() {
                bail!("netlink socket returned no data");
            }
            let mut off = 0;
            while data.len().saturating_sub(off) >= NLMSG_HDRLEN {
                let nb = NetlinkBuffer::new_checked(&data[off..])
                    .map_err(|e| anyhow::anyhow!("malformed netlink message: {e}"))?;
                let len = nb.length() as usize;
                let msg_bytes = &data[off..off + len];
                off += (len + 3) & !3;
                if nb.sequence_number() != seq {
                    // Leftover of an earlier request that failed half-way.
                    continue;
                }
                if nb.flags() & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match nb.message_type() {
                    NLMSG_NOOP => continue,
                    NLMSG_DONE => return Ok((out, interrupted)),
                    NLMSG_OVERRUN => bail!("netlink overrun"),
                    NLMSG_ERROR => {
                        let p = nb.payload();
                        let code = p
                            .get(..4)
                            .and_then(|b| b.try_into().ok())
                            .map(i32::from_ne_bytes)
                            .unwrap_or(-libc::EPROTO);
                        if code == 0 {
                            // An ACK: only ends non-dump requests.
                            if !dump {
                                return Ok((out, interrupted));
                            }
                            continue;
                        }
                        return Err(io::Error::from_raw_os_error(code.saturating_abs()).into());
                    }
                    _ => {
                        let parsed =
                            match NetlinkMessage::<RouteNetlinkMessage>::deserialize(msg_bytes) {
                                Ok(m) => match m.payload {
                                    NetlinkPayload::InnerMessage(i) => Some(i),
                                    _ => None,
                                },
                                Err(_) => None,
                            };
                        out.push(Reply {
                            parsed,
                            payload: nb.payload().to_vec(),
                        });
                        if !dump {
                            return Ok((out, interrupted));
                        }
                    }
                }
            }
        }
    }

    /// nsid that the netns behind `fd` has in the socket's netns; None if
    /// unassigned.
    fn nsid_of_fd(&mut self, fd: std::os::fd::RawFd) -> anyhow::Result<Option<i32>> {
        let fd = u32::try_from(fd).context("negative fd")?;
        let mut msg = NsidMessage::default();
        msg.attributes.push(NsidAttribute::Fd(fd));
        for r in self.request(RouteNetlinkMessage::GetNsId(msg), false)? {
            let attrs = match r.parsed {
                Some(RouteNetlinkMessage::NewNsId(m)) => m.attributes,
                _ => continue,
            };
            for a in attrs {
                if let NsidAttribute::Id(id) = a {
                    return Ok((id >= 0).then_some(id));
                }
            }
        }
        Ok(None)
    }
}

fn dump_links(nl: &mut Rtnl) -> anyhow::Result<Vec<Link>> {
    Ok(dump_links_conf(nl)?.0)
}

/// A device's IPv4 settings the rules read (`net.ipv4.conf.<dev>.*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct DevConf {
    forwarding: u32,
    rp_filter: u32,
    src_valid_mark: u32,
}

/// The links, and each IPv4 device's settings from the same dump.
fn dump_links_conf(nl: &mut Rtnl) -> anyhow::Result<(Vec<Link>, HashMap<i32, DevConf>)> {
    let replies = nl.request(RouteNetlinkMessage::GetLink(LinkMessage::default()), true)?;
    let mut conf = HashMap::new();
    let links = replies
        .iter()
        .filter_map(|r| {
            let l = match &r.parsed {
                Some(RouteNetlinkMessage::NewLink(m)) => Some(link_from_msg(m)),
                _ => raw::link(&r.payload),
            }?;
            if let Some(c) = raw::devconf(&r.payload) {
                conf.insert(l.ifindex, c);
            }
            Some(l)
        })
        .collect();
    Ok((links, conf))
}

fn dump_addrs(nl: &mut Rtnl) -> anyhow::Result<Vec<(i32, IpAddr, u8)>> {
    let replies = nl.request(
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        true,
    )?;
    Ok(replies
        .iter()
        .filter_map(|r| match &r.parsed {
            Some(RouteNetlinkMessage::NewAddress(m)) => addr_from_msg(m),
            _ => raw::addr(&r.payload),
        })
        .collect())
}

fn dump_routes(nl: &mut Rtnl, family: AddressFamily) -> anyhow::Result<Vec<Route>> {
    let mut req = RouteMessage::default();
    req.header.address_family = family;
    let replies = nl.request(RouteNetlinkMessage::GetRoute(req), true)?;
    Ok(replies
        .iter()
        .filter_map(|r| match &r.parsed {
            Some(RouteNetlinkMessage::NewRoute(m)) => route_from_msg(m),
            _ => raw::route(&r.payload),
        })
        .collect())
}

/// `ip rule` of one family. A rule the crate cannot decode is left out:
/// the lookups then assume it does not match.
fn dump_rules(nl: &mut Rtnl, family: AddressFamily) -> anyhow::Result<Vec<FibRule>> {
    let mut req = RuleMessage::default();
    req.header.family = family;
    let replies = nl.request(RouteNetlinkMessage::GetRule(req), true)?;
    Ok(replies
        .iter()
        .filter_map(|r| match &r.parsed {
            Some(RouteNetlinkMessage::NewRule(m)) => FibRule::from_msg(m),
            _ => None,
        })
        .collect())
}

fn dump_qdiscs(nl: &mut Rtnl, txqlen: &HashMap<i32, u32>) -> anyhow::Result<Vec<Qdisc>> {
    let replies = nl.request(
        RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
        true,
    )?;
    Ok(replies
        .iter()
        .filter_map(|r| match &r.parsed {
            Some(RouteNetlinkMessage::NewQueueDiscipline(m)) => {
                qdisc::from_msg(m, |i| txqlen.get(&i).copied())
            }
            _ => None,
        })
        .collect())
}

fn nonzero(v: u32) -> Option<i32> {
    i32::try_from(v).ok().filter(|&v| v != 0)
}

fn link_from_msg(m: &LinkMessage) -> Link {
    let mut l = Link {
        ifindex: i32::try_from(m.header.index).unwrap_or(0),
        name: String::new(),
        kind: None,
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        master: None,
        link: None,
        link_netnsid: None,
        peer_netns: None,
        addrs: Vec::new(),
        txqlen: 0,
        mac: None,
        brport_state: None,
        bridge_stp: None,
        tunnel: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::TxQueueLen(v) => l.txqlen = *v,
            LinkAttribute::Address(b) => l.mac = mac_text(b),
            LinkAttribute::Controller(v) => l.master = nonzero(*v),
            LinkAttribute::Link(v) => l.link = nonzero(*v),
            LinkAttribute::LinkNetNsId(v) => l.link_netnsid = Some(*v),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => l.kind = Some(k.to_string()),
                        LinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                            l.brport_state = port.iter().find_map(|a| match a {
                                InfoBridgePort::State(s) => Some(u8::from(*s)),
                                _ => None,
                            });
                        }
                        LinkInfo::Data(InfoData::Bridge(br)) => {
                            l.bridge_stp = br.iter().find_map(|a| match a {
                                InfoBridge::StpState(s) => Some(*s),
                                _ => None,
                            });
                        }
                        LinkInfo::Data(data) => {
                            if let Some(t) = tunnel_of(data) {
                                l.tunnel = Some(t);
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    l
}

fn addr_from_msg(m: &AddressMessage) -> Option<(i32, IpAddr, u8)> {
    let mut local = None;
    let mut address = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    // IPv4 point-to-point: IFA_ADDRESS is the peer, IFA_LOCAL ours.
    let ip = local.or(address)?;
    Some((i32::try_from(m.header.index).ok()?, ip, m.header.prefix_len))
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

fn route_from_msg(m: &RouteMessage) -> Option<Route> {
    let dst = match m.header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut r = Route {
        dst,
        prefix_len: m.header.destination_prefix_length,
        table: u32::from(m.header.table),
        kind: RouteKind::from(u8::from(m.header.kind)),
        oif: None,
        gateway: None,
        metric: 0,
        src: None,
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => r.dst = route_addr(d)?,
            RouteAttribute::Oif(i) => r.oif = nonzero(*i),
            RouteAttribute::Gateway(g) => r.gateway = route_addr(g),
            RouteAttribute::Via(RouteVia::Inet(g)) => r.gateway = Some(IpAddr::V4(*g)),
            RouteAttribute::Via(RouteVia::Inet6(g)) => r.gateway = Some(IpAddr::V6(*g)),
            RouteAttribute::Priority(p) => r.metric = *p,
            RouteAttribute::PrefSource(s) => r.src = route_addr(s),
            RouteAttribute::Table(t) => r.table = *t,
            RouteAttribute::MultiPath(hops) => {
                if let Some(h) = hops.first() {
                    r.oif = r.oif.or(nonzero(h.interface_index));
                    for ha in &h.attributes {
                        match ha {
                            RouteAttribute::Gateway(g) => r.gateway = r.gateway.or(route_addr(g)),
                            RouteAttribute::Via(RouteVia::Inet(g)) => {
                                r.gateway = r.gateway.or(Some(IpAddr::V4(*g)))
                            }
                            RouteAttribute::Via(RouteVia::Inet6(g)) => {
                                r.gateway = r.gateway.or(Some(IpAddr::V6(*g)))
                            }
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Some(r)
}

/// Fallback decoder for messages netlink-packet-route rejects. Knows only the
/// fields this module keeps; layouts from linux/rtnetlink.h, if_link.h,
/// if_addr.h.
mod raw {
    use super::*;

    const NLA_TYPE_MASK: u16 = 0x3fff;

    /// (type, value) pairs; stops at the first malformed attribute.
    pub(super) fn attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
        let mut out = Vec::new();
        while buf.len() >= 4 {
            let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
            let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
            if len < 4 || len > buf.len() {
                break;
            }
            out.push((kind, &buf[4..len]));
            let adv = ((len + 3) & !3).min(buf.len());
            buf = &buf[adv..];
        }
        out
    }

    fn u32_of(v: &[u8]) -> Option<u32> {
        Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
    }

    fn i32_of(v: &[u8]) -> Option<i32> {
        Some(i32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
    }

    fn string_of(v: &[u8]) -> String {
        let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
        String::from_utf8_lossy(&v[..end]).into_owned()
    }

    fn ip_of(family: u8, v: &[u8]) -> Option<IpAddr> {
        match i32::from(family) {
            libc::AF_INET => {
                let b: [u8; 4] = v.get(..4)?.try_into().ok()?;
                Some(IpAddr::V4(Ipv4Addr::from(b)))
            }
            libc::AF_INET6 => {
                let b: [u8; 16] = v.get(..16)?.try_into().ok()?;
                Some(IpAddr::V6(Ipv6Addr::from(b)))
            }
            _ => None,
        }
    }

    /// ifinfomsg (16 bytes) + IFLA_* attributes.
    pub(super) fn link(p: &[u8]) -> Option<Link> {
        const IFLA_ADDRESS: u16 = 1;
        const IFLA_IFNAME: u16 = 3;
        const IFLA_MTU: u16 = 4;
        const IFLA_LINK: u16 = 5;
        const IFLA_MASTER: u16 = 10;
        const IFLA_TXQLEN: u16 = 13;
        const IFLA_LINKINFO: u16 = 18;
        const IFLA_LINK_NETNSID: u16 = 37;
        let ifindex = i32_of(p.get(4..8)?)?;
        let flags = u32_of(p.get(8..12)?)?;
        let mut l = Link {
            ifindex,
            name: String::new(),
            kind: None,
            mtu: 0,
            up: flags & (libc::IFF_UP as u32) != 0,
            master: None,
            link: None,
            link_netnsid: None,
            peer_netns: None,
            addrs: Vec::new(),
            txqlen: 0,
            mac: None,
            brport_state: None,
            bridge_stp: None,
            tunnel: None,
        };
        for (kind, v) in attrs(p.get(16..)?) {
            match kind {
                IFLA_ADDRESS => l.mac = mac_text(v),
                IFLA_IFNAME => l.name = string_of(v),
                IFLA_MTU => l.mtu = u32_of(v).unwrap_or(0),
                IFLA_LINK => l.link = u32_of(v).and_then(nonzero),
                IFLA_MASTER => l.master = u32_of(v).and_then(nonzero),
                IFLA_TXQLEN => l.txqlen = u32_of(v).unwrap_or(0),
                IFLA_LINK_NETNSID => l.link_netnsid = i32_of(v),
                IFLA_LINKINFO => link_info(&mut l, v),
                _ => {}
            }
        }
        Some(l)
    }

    /// IFLA_AF_SPEC / AF_INET / IFLA_INET_CONF of an ifinfomsg: the
    /// device's `ipv4_devconf` array (IPV4_DEVCONF_* are 1-based indexes
    /// of u32 values); None for a device without IPv4.
    pub(super) fn devconf(p: &[u8]) -> Option<DevConf> {
        const IFLA_AF_SPEC: u16 = 26;
        const IFLA_INET_CONF: u16 = 1;
        const FORWARDING: usize = 1;
        const RP_FILTER: usize = 8;
        const SRC_VMARK: usize = 24;
        let spec = attrs(p.get(16..)?)
            .into_iter()
            .find(|(k, _)| *k == IFLA_AF_SPEC)?
            .1;
        let inet = attrs(spec)
            .into_iter()
            .find(|(k, _)| i32::from(*k) == libc::AF_INET)?
            .1;
        let arr = attrs(inet)
            .into_iter()
            .find(|(k, _)| *k == IFLA_INET_CONF)?
            .1;
        let at = |i: usize| u32_of(arr.get((i - 1) * 4..)?);
        Some(DevConf {
            forwarding: at(FORWARDING)?,
            rp_filter: at(RP_FILTER)?,
            src_valid_mark: at(SRC_VMARK)?,
        })
    }

    /// IFLA_LINKINFO: the kind, a bridge's STP, a bridge port's state and
    /// a UDP tunnel's encapsulation (the kernel sends the kinds before
    /// the data they qualify).
    fn link_info(l: &mut Link, v: &[u8]) {
        const IFLA_INFO_KIND: u16 = 1;
        const IFLA_INFO_DATA: u16 = 2;
        const IFLA_INFO_SLAVE_KIND: u16 = 4;
        const IFLA_INFO_SLAVE_DATA: u16 = 5;
        const IFLA_BR_STP_STATE: u16 = 5;
        const IFLA_BRPORT_STATE: u16 = 1;
        let mut port_kind = String::new();
        for (k, iv) in attrs(v) {
            match k {
                IFLA_INFO_KIND => l.kind = Some(string_of(iv)),
                IFLA_INFO_SLAVE_KIND => port_kind = string_of(iv),
                IFLA_INFO_DATA => match l.kind.as_deref() {
                    Some("bridge") => {
                        l.bridge_stp = attrs(iv)
                            .into_iter()
                            .find(|(k, _)| *k == IFLA_BR_STP_STATE)
                            .and_then(|(_, x)| u32_of(x));
                    }
                    Some("vxlan") => l.tunnel = Some(vxlan(iv)),
                    Some("geneve") => l.tunnel = Some(geneve(iv)),
                    _ => {}
                },
                IFLA_INFO_SLAVE_DATA if port_kind == "bridge" => {
                    l.brport_state = attrs(iv)
                        .into_iter()
                        .find(|(k, _)| *k == IFLA_BRPORT_STATE)
                        .and_then(|(_, x)| x.first().copied());
                }
                _ => {}
            }
        }
    }

    fn be16(v: &[u8]) -> Option<u16> {
        Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?))
    }

    fn specified(a: Option<IpAddr>) -> Option<IpAddr> {
        a.filter(|a| !a.is_unspecified())
    }

    fn vxlan(v: &[u8]) -> Tunnel {
        const GROUP: u16 = 2;
        const LINK: u16 = 3;
        const LOCAL: u16 = 4;
        const PORT: u16 = 15;
        const GROUP6: u16 = 16;
        const LOCAL6: u16 = 17;
        const DF: u16 = 29;
        let (v4, v6) = (libc::AF_INET as u8, libc::AF_INET6 as u8);
        let mut t = Tunnel {
            port: 4789,
            remote: None,
            local: None,
            underlay: None,
            df: None,
        };
        for (k, x) in attrs(v) {
            match k {
                GROUP => t.remote = ip_of(v4, x),
                GROUP6 => t.remote = ip_of(v6, x),
                LOCAL => t.local = ip_of(v4, x),
                LOCAL6 => t.local = ip_of(v6, x),
                LINK => t.underlay = u32_of(x).and_then(nonzero),
                PORT => t.port = be16(x).unwrap_or(t.port),
                DF => t.df = x.first().map(|d| df_text(*d)),
                _ => {}
            }
        }
        t.remote = specified(t.remote);
        t.local = specified(t.local);
        t
    }

    fn geneve(v: &[u8]) -> Tunnel {
        const REMOTE: u16 = 2;
        const PORT: u16 = 5;
        const REMOTE6: u16 = 7;
        const DF: u16 = 13;
        let mut t = Tunnel {
            port: 6081,
            remote: None,
            local: None,
            underlay: None,
            df: None,
        };
        for (k, x) in attrs(v) {
            match k {
                REMOTE => t.remote = ip_of(libc::AF_INET as u8, x),
                REMOTE6 => t.remote = ip_of(libc::AF_INET6 as u8, x),
                PORT => t.port = be16(x).unwrap_or(t.port),
                DF => t.df = x.first().map(|d| df_text(*d)),
                _ => {}
            }
        }
        t.remote = specified(t.remote);
        t
    }

    /// ifaddrmsg (8 bytes) + IFA_* attributes.
    pub(super) fn addr(p: &[u8]) -> Option<(i32, IpAddr, u8)> {
        const IFA_ADDRESS: u16 = 1;
        const IFA_LOCAL: u16 = 2;
        let family = *p.first()?;
        let prefix_len = *p.get(1)?;
        let index = i32::try_from(u32_of(p.get(4..8)?)?).ok()?;
        let mut local = None;
        let mut address = None;
        for (kind, v) in attrs(p.get(8..)?) {
            match kind {
                IFA_ADDRESS => address = ip_of(family, v),
                IFA_LOCAL => local = ip_of(family, v),
                _ => {}
            }
        }
        Some((index, local.or(address)?, prefix_len))
    }

    /// rtmsg (12 bytes) + RTA_* attributes.
    pub(super) fn route(p: &[u8]) -> Option<Route> {
        const RTA_DST: u16 = 1;
        const RTA_OIF: u16 = 4;
        const RTA_GATEWAY: u16 = 5;
        const RTA_PRIORITY: u16 = 6;
        const RTA_PREFSRC: u16 = 7;
        const RTA_MULTIPATH: u16 = 9;
        const RTA_TABLE: u16 = 15;
        const RTA_VIA: u16 = 18;
        let family = *p.first()?;
        let dst = match i32::from(family) {
            libc::AF_INET => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            libc::AF_INET6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => return None,
        };
        let mut r = Route {
            dst,
            prefix_len: *p.get(1)?,
            table: u32::from(*p.get(4)?),
            kind: RouteKind::from(*p.get(7)?),
            oif: None,
            gateway: None,
            metric: 0,
            src: None,
        };
        // struct rtvia: u16 family, then the address.
        let via = |v: &[u8]| -> Option<IpAddr> {
            let fam = u16::from_ne_bytes(v.get(..2)?.try_into().ok()?);
            ip_of(u8::try_from(fam).ok()?, v.get(2..)?)
        };
        for (kind, v) in attrs(p.get(12..)?) {
            match kind {
                RTA_DST => r.dst = ip_of(family, v)?,
                RTA_OIF => r.oif = u32_of(v).and_then(nonzero),
                RTA_GATEWAY => r.gateway = ip_of(family, v),
                RTA_VIA => r.gateway = via(v),
                RTA_PRIORITY => r.metric = u32_of(v).unwrap_or(0),
                RTA_PREFSRC => r.src = ip_of(family, v),
                RTA_TABLE => r.table = u32_of(v).unwrap_or(r.table),
                RTA_MULTIPATH => {
                    // First struct rtnexthop: u16 len, u8 flags, u8 hops,
                    // i32 ifindex, then its own attributes.
                    let len = usize::from(u16::from_ne_bytes(v.get(..2)?.try_into().ok()?));
                    let hop = v.get(..len.min(v.len()))?;
                    r.oif = r.oif.or(u32_of(hop.get(4..8)?).and_then(nonzero));
                    for (hk, hv) in attrs(hop.get(8..).unwrap_or(&[])) {
                        match hk {
                            RTA_GATEWAY => r.gateway = r.gateway.or(ip_of(family, hv)),
                            RTA_VIA => r.gateway = r.gateway.or(via(hv)),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Some(r)
    }
}

// ---------------------------------------------------------------------------
// Cache

/// What an (netns, ifindex) pair is called.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IfName {
    Name(String),
    /// The netns exists but the ifindex is not there (any more).
    Gone,
    NetnsGone,
    /// ifindex 0: no interface.
    None,
}

struct Entry {
    topo: Arc<NsTopology>,
    /// A full read; else only what naming needs ([`NsTopology::read_names`]).
    full: bool,
    stale: bool,
    /// Last time the netns was confirmed alive.
    checked_at: Instant,
}

/// A cache over all namespaces, used on the event path: cheap hits, reads on
/// miss, re-reads when stale.
///
/// Timing (see [`Topology::with_timing`]): a copy is served until it is
/// `max_age` old or invalidated. Every `recheck` a hit also confirms, with
/// one stat, that the netns still exists, so a deleted netns turns into None
/// within `recheck`. `recheck` also bounds how often one netns is re-read
/// because an event named an ifindex the copy lacks, and how often a failed
/// read is retried, so an event storm costs a few reads per second at most.
/// An interface deleted after a read keeps its cached name until the copy is
/// `name_max_age` old (or invalidated): events queued just before the
/// deletion still get the right name; after that it is [`IfName::Gone`].
/// A namespace made or deleted (the namespace index's events) invalidates
/// every copy, since veths die and appear with them.
pub struct Topology {
    entries: HashMap<u32, Entry>,
    /// Netns whose last read failed, and when: no retry within `recheck`.
    failed: HashMap<u32, Instant>,
    max_age: Duration,
    name_max_age: Duration,
    recheck: Duration,
    last_error: Option<String>,
    /// netns names by inode, so that naming an event costs no syscall.
    names: HashMap<u32, (Option<String>, Instant)>,
    /// (netns, ifindex) not found in a fresh re-read, and when.
    link_misses: HashMap<(u32, i32), Instant>,
    /// A coarse "now" set once per batch of events (`set_clock`): reading
    /// the clock several times per event showed up in storm profiles.
    clock: Option<Instant>,
    /// Each namespace's ListenOverflows at its first read: what overflowed
    /// since is what this run saw.
    listen_base: HashMap<u32, u64>,
    /// Each namespace's exhaustion counters at its first full read: the
    /// "before" of an exhaustion verdict, whichever rule read it since.
    exhaustion_base: HashMap<u32, crate::host::exhaustion::Baseline>,
    /// When each namespace's overflow count was last polled.
    listen_polled: HashMap<u32, Instant>,
    /// The namespace index's generation last seen (see
    /// [`netns::generation`]).
    netns_generation: Option<u64>,
}

/// How often an idle namespace's accept-queue overflow count is polled.
const LISTEN_POLL: Duration = Duration::from_secs(2);

/// How long a netns name is trusted before it is looked up again. Names
/// come and go with events that clear them all (`set_clock`); this bounds
/// only what those cannot see: a process that held an unnamed namespace
/// exiting.
const NAME_TTL: Duration = Duration::from_secs(5);

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

impl Topology {
    pub fn new() -> Self {
        let mut t = Self::with_timing(DEFAULT_MAX_AGE, DEFAULT_RECHECK);
        t.name_max_age = NAME_MAX_AGE;
        t
    }

    /// Copies older than `max_age` are re-read, for naming as for rules.
    pub fn with_timing(max_age: Duration, recheck: Duration) -> Self {
        Topology {
            name_max_age: max_age,
            entries: HashMap::new(),
            failed: HashMap::new(),
            max_age,
            recheck,
            last_error: None,
            names: HashMap::new(),
            link_misses: HashMap::new(),
            clock: None,
            listen_base: HashMap::new(),
            exhaustion_base: HashMap::new(),
            listen_polled: HashMap::new(),
            netns_generation: None,
        }
    }

    /// Cached topology of one netns (read on first use; re-read if older
    /// than `max_age` or when `invalidate` was called). None if the netns is
    /// gone (or could never be read: see [`Topology::last_error`]). When a
    /// re-read fails the previous copy keeps being served.
    pub fn get(&mut self, inode: u32) -> Option<Arc<NsTopology>> {
        self.get_aged(inode, self.max_age, true)
    }

    /// [`Topology::get`] for naming an event: a copy serves until it is
    /// `name_max_age` old (see [`NAME_MAX_AGE`]).
    pub fn cached(&mut self, inode: u32) -> Option<Arc<NsTopology>> {
        self.get_aged(inode, self.name_max_age, true)
    }

    /// What naming needs of a namespace (links, addresses, peers): a copy
    /// made by [`NsTopology::read_names`] serves, so an event never waits
    /// for a namespace's routes, sysctls and queues (issue 22: a neighbour
    /// event on a bridge of 1,000 ports read them all first).
    pub fn names(&mut self, inode: u32) -> Option<Arc<NsTopology>> {
        self.get_aged(inode, self.name_max_age, false)
    }

    /// `full`: routes, sysctls and queues are wanted, not only links.
    fn get_aged(&mut self, inode: u32, max_age: Duration, full: bool) -> Option<Arc<NsTopology>> {
        let now = self.now();
        if let Some(e) = self.entries.get_mut(&inode) {
            let enough = e.full || !full;
            if enough && !e.stale && now.saturating_duration_since(e.topo.read_at) < max_age {
                if now.duration_since(e.checked_at) < self.recheck {
                    return Some(e.topo.clone());
                }
                // Not rate-limited: a false "gone" would drop a good copy,
                // and a true one removes the entry, so this scans once.
                match netns::find_now(inode) {
                    Some(info) if info.path == e.topo.path => {
                        e.checked_at = now;
                        return Some(e.topo.clone());
                    }
                    // The inode now names another namespace: read it anew.
                    Some(_) => {
                        self.entries.remove(&inode);
                        self.names.remove(&inode);
                        return self.load(inode, full);
                    }
                    None => {
                        self.entries.remove(&inode);
                        return None;
                    }
                }
            }
        }
        if let Some(t) = self.failed.get(&inode) {
            if now.duration_since(*t) < self.recheck {
                return self.kept(inode, full);
            }
        }
        self.load(inode, full)
    }

    /// The copy kept of `inode`, if it has what is wanted.
    fn kept(&self, inode: u32, full: bool) -> Option<Arc<NsTopology>> {
        self.entries
            .get(&inode)
            .filter(|e| e.full || !full)
            .map(|e| e.topo.clone())
    }

    /// Reads `inode`: all of it when `full`, else what naming needs (one
    /// targeted look; a drop never waits for routes and sysctls to be
    /// named).
    fn load(&mut self, inode: u32, full: bool) -> Option<Arc<NsTopology>> {
        // A read takes milliseconds: move the coarse clock past it.
        if self.clock.is_some() {
            self.clock = Some(Instant::now());
        }
        let Some(info) = netns::find(inode) else {
            self.entries.remove(&inode);
            self.failed.remove(&inode);
            return None;
        };
        let read = if full {
            NsTopology::read(&info)
        } else {
            NsTopology::read_names(&info)
        };
        match read {
            Ok(mut t) => {
                if let Some(n) = t.listen.overflows {
                    let base = *self.listen_base.entry(inode).or_insert(n);
                    t.listen.overflows_at_start = Some(base.min(n));
                }
                if full {
                    let now = t.exhaustion.baseline();
                    t.exhaustion.at_start = Some(*self.exhaustion_base.entry(inode).or_insert(now));
                }
                let topo = Arc::new(t);
                self.failed.remove(&inode);
                self.entries.insert(
                    inode,
                    Entry {
                        topo: topo.clone(),
                        full,
                        stale: false,
                        checked_at: Instant::now(),
                    },
                );
                Some(topo)
            }
            Err(e) => {
                self.last_error = Some(format!("{e:#}"));
                // Most failures are the netns dying between find and setns.
                if netns::find_now(inode).is_none() {
                    self.entries.remove(&inode);
                    self.failed.remove(&inode);
                    return None;
                }
                self.failed.insert(inode, Instant::now());
                self.kept(inode, full)
            }
        }
    }

    /// The firewall rules of a namespace, read now (never cached: their
    /// counters are what the caller wants). None if the namespace is gone
    /// or cannot be entered.
    pub fn ruleset(&mut self, inode: u32, read_ns: u64) -> Option<super::firewall::Ruleset> {
        let info = netns::find(inode)?;
        match super::firewall::read(&info, read_ns) {
            Ok(rs) => Some(rs),
            Err(e) => {
                self.last_error = Some(format!("reading the ruleset of {}: {e}", info.label()));
                None
            }
        }
    }

    /// Whether the accept-queue overflow count of `inode` differs from its
    /// cached copy's (then the copy is marked stale, so the next `get`
    /// reads it all and a recording keeps the new count). One file read
    /// on the reader thread: an idle namespace is polled for this without
    /// re-reading its links, routes and sysctls. True when there is no
    /// copy yet (the caller's `get` reads it) or it cannot tell.
    pub fn listen_moved(&mut self, inode: u32) -> bool {
        let Some(cached) = self.entries.get(&inode).map(|e| e.topo.listen.overflows) else {
            return true;
        };
        // At most one poll per LISTEN_POLL: the rules tick four times a
        // second. The real clock: `now` stands still while no event comes.
        let now_t = Instant::now();
        match self.listen_polled.get(&inode) {
            Some(t) if now_t.duration_since(*t) < LISTEN_POLL => return false,
            _ => {
                self.listen_polled.insert(inode, now_t);
            }
        }
        let Some(info) = netns::find(inode) else {
            return true;
        };
        let now = netns_worker::read_in(&info.path, ListenCounters::read_overflows_here)
            .ok()
            .flatten();
        if now.is_some() && now == cached {
            return false;
        }
        self.invalidate(inode);
        true
    }

    /// Forces a re-read on the next `get`.
    pub fn invalidate(&mut self, inode: u32) {
        if let Some(e) = self.entries.get_mut(&inode) {
            e.stale = true;
        }
    }

    /// Drops every cached copy.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.failed.clear();
    }

    /// Why the last failed read failed (for diagnostics).
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// A link by (netns, ifindex), re-reading the netns once (rate-limited by
    /// `recheck`) when the cached copy lacks the ifindex.
    pub fn link(&mut self, inode: u32, ifindex: i32) -> Result<Link, IfName> {
        self.link_aged(inode, ifindex, self.max_age, true)
    }

    /// [`Topology::link`] for naming an event (see [`Topology::cached`]).
    pub fn name_link(&mut self, inode: u32, ifindex: i32) -> Result<Link, IfName> {
        self.link_aged(inode, ifindex, self.name_max_age, false)
    }

    fn link_aged(
        &mut self,
        inode: u32,
        ifindex: i32,
        max_age: Duration,
        full: bool,
    ) -> Result<Link, IfName> {
        if ifindex <= 0 {
            return Err(IfName::None);
        }
        let topo = self
            .get_aged(inode, max_age, full)
            .ok_or(IfName::NetnsGone)?;
        if let Some(l) = topo.link(ifindex) {
            return Ok(l.clone());
        }
        // Re-read once per missing ifindex per `recheck`: an interface created
        // after the copy was read gets its name (even in a burst of new
        // ones), and a storm on a vanished one costs one read per recheck.
        let key = (inode, ifindex);
        if self
            .link_misses
            .get(&key)
            .is_some_and(|t| t.elapsed() < self.recheck)
        {
            return Err(IfName::Gone);
        }
        if self.link_misses.len() > 4096 {
            self.link_misses.clear();
        }
        self.link_misses.insert(key, Instant::now());
        self.invalidate(inode);
        let topo = self
            .get_aged(inode, max_age, full)
            .ok_or(IfName::NetnsGone)?;
        topo.link(ifindex).cloned().ok_or(IfName::Gone)
    }

    /// Name of an ifindex in a netns. If the ifindex is not in the cached
    /// copy, re-read once (rate-limited, so an event storm on a vanished
    /// interface does not re-read thousands of times a second) before giving
    /// up.
    /// Sets the coarse clock the cache uses until the next call.
    /// Also notices namespaces being added or removed (the namespace
    /// index's generation: no syscall beyond a non-blocking read of its
    /// watch) and then forgets every name and negative answer: the kernel
    /// reuses a deleted namespace's inode for the next one, and a cached
    /// "gone" would misname the newcomer.
    pub fn set_clock(&mut self, now: Instant) {
        self.clock = Some(now);
        let generation = Some(netns::generation());
        if generation != self.netns_generation {
            // Not on the first call: nothing is cached before it.
            if self.netns_generation.is_some() {
                self.entries.values_mut().for_each(|e| e.stale = true);
            }
            self.netns_generation = generation;
            self.names.clear();
            self.failed.clear();
            self.link_misses.clear();
        }
    }

    fn now(&self) -> Instant {
        self.clock.unwrap_or_else(Instant::now)
    }

    /// Drops copies not refreshed for a minute (namespaces that died or
    /// went quiet), so pod churn cannot pile up route tables. Cheap enough
    /// to call on every tick.
    pub fn sweep(&mut self) {
        let idle = Duration::from_secs(60);
        self.entries.retain(|_, e| e.topo.read_at.elapsed() < idle);
        self.failed.retain(|_, at| at.elapsed() < idle);
        self.names.retain(|_, (_, at)| at.elapsed() < idle);
        self.link_misses.retain(|_, at| at.elapsed() < idle);
        self.listen_polled.retain(|_, at| at.elapsed() < idle);
    }

    /// The name of a netns in /run/netns, if it has one.
    pub fn netns_name(&mut self, inode: u32) -> Option<String> {
        if inode == 0 {
            return None;
        }
        if let Some((name, at)) = self.names.get(&inode) {
            if self.now().saturating_duration_since(*at) < NAME_TTL {
                return name.clone();
            }
        }
        if self.names.len() > 4096 {
            // Namespace churn: forget everything rather than grow.
            self.names.clear();
        }
        let name = netns::find(inode).and_then(|n| n.name);
        self.names.insert(inode, (name.clone(), Instant::now()));
        name
    }

    pub fn ifname(&mut self, inode: u32, ifindex: i32) -> IfName {
        match self.name_link(inode, ifindex) {
            Ok(l) => IfName::Name(l.name),
            Err(n) => n,
        }
    }

    /// The other end of a veth (or netkit) pair: (its netns inode, its link).
    /// None if `ifindex` is not such a device or the peer cannot be found.
    pub fn veth_peer(&mut self, inode: u32, ifindex: i32) -> Option<(u32, Link)> {
        let l = self.name_link(inode, ifindex).ok()?;
        if !matches!(l.kind.as_deref(), Some("veth") | Some("netkit")) {
            return None;
        }
        let peer_ns = l.peer_netns?;
        let peer = self.name_link(peer_ns, l.link?).ok()?;
        Some((peer_ns, peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::netns::test_support::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn route(dst: &str, len: u8, table: u32, kind: RouteKind, oif: i32, metric: u32) -> Route {
        Route {
            dst: ip(dst),
            prefix_len: len,
            table,
            kind,
            oif: Some(oif),
            gateway: None,
            metric,
            src: None,
        }
    }

    fn synthetic(routes: Vec<Route>) -> NsTopology {
        NsTopology {
            inode: 1,
            name: None,
            links: Vec::new(),
            routes,
            rules: Vec::new(),
            sysctls: Sysctls::default(),
            qdiscs: Vec::new(),
            udp: Default::default(),
            listen: Default::default(),
            exhaustion: Default::default(),
            read_at: Instant::now(),
            path: std::path::PathBuf::new(),
        }
    }

    #[test]
    fn route_selection_rules() {
        use RouteKind::*;
        let t = synthetic(vec![
            route("0.0.0.0", 0, RT_TABLE_MAIN, Unicast, 1, 0),
            route("10.0.0.0", 8, RT_TABLE_MAIN, Unicast, 2, 100),
            route("10.0.0.0", 8, RT_TABLE_MAIN, Unicast, 3, 10),
            route("10.9.0.0", 16, RT_TABLE_MAIN, Other(RTN_THROW), 0, 0),
            route("10.9.0.0", 16, RT_TABLE_DEFAULT, Unicast, 5, 0),
            route("10.1.1.1", 32, RT_TABLE_LOCAL, Local, 4, 0),
            route("10.1.1.0", 24, 100, Unicast, 6, 0),
            route("2001:db8::", 64, RT_TABLE_MAIN, Unicast, 7, 256),
        ]);
        let oif = |d: &str| t.route_to(ip(d)).and_then(|r| r.oif);
        assert_eq!(
            oif("10.2.3.4"),
            Some(3),
            "lowest metric among equal prefixes"
        );
        assert_eq!(oif("192.0.2.1"), Some(1), "default route");
        assert_eq!(
            t.route_to(ip("10.1.1.1")).unwrap().kind,
            Local,
            "local table first"
        );
        assert_eq!(oif("10.1.1.2"), Some(3), "table 100 is not consulted");
        assert_eq!(
            oif("10.9.1.1"),
            Some(5),
            "throw continues to the next table"
        );
        assert_eq!(oif("2001:db8::5"), Some(7));
        assert_eq!(t.route_to(ip("2001:db9::5")), None, "no v4 route for v6");

        assert_eq!(t.prefix_on(6, ip("10.1.1.9")).unwrap().table, 100);
        assert_eq!(t.prefix_on(4, ip("10.1.1.1")), None, "local table skipped");
        assert_eq!(t.prefix_on(3, ip("10.1.1.9")).unwrap().prefix_len, 8);
        assert_eq!(t.prefix_on(2, ip("11.0.0.1")), None);
    }

    #[test]
    fn rp_filter_is_max_of_all_and_dev() {
        let mut t = synthetic(Vec::new());
        t.sysctls.rp_filter_all = 1;
        t.sysctls.rp_filter.insert("a".into(), 0);
        t.sysctls.rp_filter.insert("b".into(), 2);
        assert_eq!(t.rp_filter("a"), 1);
        assert_eq!(t.rp_filter("b"), 2);
        assert_eq!(t.rp_filter("nope"), 1);
    }

    #[test]
    fn raw_attr_parser_rejects_garbage() {
        assert!(raw::attrs(&[]).is_empty());
        // len 2 < header: stop.
        assert!(raw::attrs(&[2, 0, 1, 0]).is_empty());
        // len beyond buffer: stop.
        assert!(raw::attrs(&[200, 0, 1, 0, 0, 0]).is_empty());
        assert_eq!(raw::link(&[0; 8]), None);
        assert_eq!(raw::route(&[99; 12]), None);
        assert_eq!(raw::addr(&[2, 24, 0, 0]), None);
    }

    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(value);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    /// A message whose IFLA_MTU is 2 bytes long: the crate rejects the whole
    /// message, the fallback keeps every other field.
    #[test]
    fn raw_fallback_decodes_what_the_crate_rejects() {
        let mut payload = Vec::new();
        payload.extend_from_slice(&[0, 0]);
        payload.extend_from_slice(&1u16.to_ne_bytes());
        payload.extend_from_slice(&7i32.to_ne_bytes());
        payload.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
        payload.extend_from_slice(&0u32.to_ne_bytes());
        payload.extend(nla(3, b"x0\0"));
        payload.extend(nla(4, &[0xdc, 0x05]));
        payload.extend(nla(5, &9u32.to_ne_bytes()));
        payload.extend(nla(37, &3i32.to_ne_bytes()));
        payload.extend(nla(0x8000 | 18, &nla(1, b"veth\0")));
        let mut msg = Vec::new();
        msg.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&16u16.to_ne_bytes()); // RTM_NEWLINK
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&payload);
        assert!(NetlinkMessage::<RouteNetlinkMessage>::deserialize(&msg).is_err());
        let l = raw::link(&payload).unwrap();
        assert_eq!(l.ifindex, 7);
        assert_eq!(l.name, "x0");
        assert_eq!(l.kind.as_deref(), Some("veth"));
        assert!(l.up);
        assert_eq!(l.mtu, 0);
        assert_eq!((l.link, l.link_netnsid), (Some(9), Some(3)));
    }

    /// The raw fallback decoder must agree with netlink-packet-route on
    /// everything the kernel actually sends (run on a real namespace).
    fn assert_raw_decoder_agrees(ns: &TestNs) {
        let (n_links, n_routes) = netns::run_in(&ns.path(), || {
            let mut nl = Rtnl::open().unwrap();
            let links = nl
                .request(RouteNetlinkMessage::GetLink(LinkMessage::default()), true)
                .unwrap();
            for r in &links {
                let Some(RouteNetlinkMessage::NewLink(m)) = &r.parsed else {
                    panic!("crate failed to decode a link");
                };
                assert_eq!(raw::link(&r.payload), Some(link_from_msg(m)));
            }
            let addrs = nl
                .request(
                    RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                    true,
                )
                .unwrap();
            for r in &addrs {
                let Some(RouteNetlinkMessage::NewAddress(m)) = &r.parsed else {
                    panic!("crate failed to decode an address");
                };
                assert_eq!(raw::addr(&r.payload), addr_from_msg(m));
            }
            let mut n_routes = 0;
            for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
                let mut req = RouteMessage::default();
                req.header.address_family = fam;
                for r in nl
                    .request(RouteNetlinkMessage::GetRoute(req), true)
                    .unwrap()
                {
                    let Some(RouteNetlinkMessage::NewRoute(m)) = &r.parsed else {
                        panic!("crate failed to decode a route");
                    };
                    assert_eq!(raw::route(&r.payload), route_from_msg(m));
                    n_routes += 1;
                }
            }
            (links.len(), n_routes)
        })
        .unwrap();
        assert!(
            n_links >= 3 && n_routes >= 5,
            "{n_links} links, {n_routes} routes"
        );
    }

    /// Two namespaces: A has a bridge with a same-netns veth port, and a veth
    /// into B.
    ///
    ///   A: br0 (10.N.1.1/24) <- vp0 (master br0) <-> vq0
    ///      va0 (10.N.2.1/24, 2001:db8:N::1/64, rp_filter=1) <-> B: vb0 (mtu 1400)
    ///   A routes: 10.N.0.0/16 via 10.N.2.2, 10.N.3.0/24 dev br0,
    ///             blackhole 10.N.5.0/24, 10.N.6.0/24 via 10.N.2.2 table 100
    struct Lab {
        a: TestNs,
        b: TestNs,
        n: u8,
    }

    fn lab(tag: &str) -> Lab {
        let a = TestNs::new(&format!("{tag}a"));
        let b = TestNs::new(&format!("{tag}b"));
        // Vary the subnet per run; harmless either way (private namespaces).
        let n = (std::process::id() % 200) as u8 + 20;
        let lab = Lab { a, b, n };
        let (a, b) = (&lab.a, &lab.b);
        a.ip(&format!(
            "link add va0 type veth peer name vb0 netns {}",
            b.name
        ));
        a.ip("link add vp0 type veth peer name vq0");
        a.ip("link add br0 type bridge");
        a.ip("link set vp0 master br0");
        // A tunnel, so both decoders read an encapsulation.
        a.ip(&format!(
            "link add vx5 type vxlan id 5 local 10.{n}.1.1 remote 10.{n}.1.9 dstport 4790 df set"
        ));
        b.ip("link set vb0 mtu 1400");
        for dev in ["lo", "va0", "vp0", "vq0", "br0"] {
            a.ip(&format!("link set {dev} up"));
        }
        b.ip("link set lo up");
        b.ip("link set vb0 up");
        a.ip(&format!("addr add 10.{n}.1.1/24 dev br0"));
        a.ip(&format!("addr add 10.{n}.2.1/24 dev va0"));
        a.ip(&format!("addr add 2001:db8:{n}::1/64 dev va0 nodad"));
        b.ip(&format!("addr add 10.{n}.2.2/24 dev vb0"));
        a.ip(&format!(
            "route add 10.{n}.0.0/16 via 10.{n}.2.2 dev va0 metric 50"
        ));
        a.ip(&format!("route add 10.{n}.3.0/24 dev br0"));
        a.ip(&format!("route add blackhole 10.{n}.5.0/24"));
        a.ip(&format!(
            "route add 10.{n}.6.0/24 via 10.{n}.2.2 dev va0 table 100"
        ));
        a.ip(&format!("rule add from 10.{n}.1.1 lookup 100 pref 1234"));
        a.ip("rule add fwmark 0x40/0xf0 iif va0 lookup 100 pref 1235");
        a.sysctl("net.ipv4.conf.va0.src_valid_mark=1");
        a.sysctl("net.ipv4.conf.all.rp_filter=0");
        a.sysctl("net.ipv4.conf.va0.rp_filter=1");
        a.sysctl("net.ipv4.conf.br0.rp_filter=0");
        a.sysctl("net.ipv4.conf.all.forwarding=1");
        a.sysctl("net.ipv6.conf.all.forwarding=1");
        b.sysctl("net.ipv4.conf.all.rp_filter=2");
        b.sysctl("net.ipv4.conf.vb0.rp_filter=0");
        b.sysctl("net.ipv4.conf.all.forwarding=0");
        b.sysctl("net.ipv6.conf.all.forwarding=0");
        lab
    }

    /// `ip rule` as the kernel holds it, and the lookups it steers.
    fn check_rules(ta: &NsTopology, tb: &NsTopology, n: u8) {
        let texts: Vec<String> = ta
            .rules
            .iter()
            .filter(|r| !r.ipv6)
            .map(|r| r.text())
            .collect();
        assert_eq!(
            texts,
            [
                "0: from all lookup local".to_string(),
                format!("1234: from 10.{n}.1.1 lookup 100"),
                "1235: from all fwmark 0x40/0xf0 iif va0 lookup 100".to_string(),
                "32766: from all lookup main".to_string(),
                "32767: from all lookup default".to_string(),
            ]
        );
        assert!(ta.rules.iter().any(|r| r.ipv6 && r.table == RT_TABLE_MAIN));
        assert!(ta.src_valid_mark("va0") && !ta.src_valid_mark("br0"));
        assert!(!tb.src_valid_mark("vb0"));
        // From 10.N.1.1 the rule sends 10.N.6.9 to table 100; from
        // elsewhere main's /16 answers.
        let flow = |src: &str| Flow {
            src: Some(ip(src)),
            dst: ip(&format!("10.{n}.6.9")),
            iif: Some("lo"),
            oif: None,
            mark: Some(0),
        };
        let d = ta.decide(&flow(&format!("10.{n}.1.1")), None).unwrap();
        assert_eq!((d.table, d.rule.priority), (100, 1234));
        let d = ta.decide(&flow(&format!("10.{n}.2.1")), None).unwrap();
        assert_eq!((d.table, d.route.unwrap().prefix_len), (RT_TABLE_MAIN, 16));
    }

    #[test]
    fn reads_links_routes_and_sysctls() {
        let lab = lab("rd");
        let (a, b, n) = (&lab.a, &lab.b, lab.n);
        let ta = NsTopology::read(&a.info()).unwrap();
        let tb = NsTopology::read(&b.info()).unwrap();
        assert_eq!(ta.inode, a.inode);
        assert_eq!(ta.name.as_deref(), Some(a.name.as_str()));

        check_links_and_addresses(&lab, &ta, &tb);
        check_routes(&ta, n);
        check_route_to(&ta, n);
        check_prefix_on(&ta, n);
        check_sysctls(&ta, &tb);
        check_rules(&ta, &tb, n);

        // serializable for reports
        let va0 = ta.link_by_name("va0").unwrap();
        let js = serde_json::to_string(va0).unwrap();
        assert!(js.contains("\"kind\":\"veth\""), "{js}");
        let r16 = ta
            .routes
            .iter()
            .find(|r| r.prefix_len == 16 && r.table == RT_TABLE_MAIN)
            .unwrap();
        assert!(serde_json::to_string(r16).unwrap().contains("\"Unicast\""));
        assert!(serde_json::to_string(&ta.sysctls).is_ok());

        let vx5 = ta.link_by_name("vx5").unwrap();
        let t = vx5.tunnel.as_ref().unwrap();
        assert_eq!((t.port, t.df.as_deref()), (4790, Some("set")));
        assert_eq!(t.remote, Some(format!("10.{n}.1.9").parse().unwrap()));
        assert_eq!(t.overhead(false), 50);
        assert_eq!(ta.link_by_name("vp0").unwrap().brport_state, Some(3));
        assert_eq!(ta.link_by_name("br0").unwrap().bridge_stp, Some(0));

        assert_raw_decoder_agrees(a);
    }

    /// Kind, MTU, state, master, veth peers (across and within a netns)
    /// and addresses.
    fn check_links_and_addresses(lab: &Lab, ta: &NsTopology, tb: &NsTopology) {
        let (a, b, n) = (&lab.a, &lab.b, lab.n);
        let va0 = ta.link_by_name("va0").unwrap();
        let vb0 = tb.link_by_name("vb0").unwrap();
        let vp0 = ta.link_by_name("vp0").unwrap();
        let vq0 = ta.link_by_name("vq0").unwrap();
        let br0 = ta.link_by_name("br0").unwrap();
        let lo = ta.link_by_name("lo").unwrap();

        assert_eq!(va0.ifindex, a.ifindex("va0"));
        assert_eq!(vb0.ifindex, b.ifindex("vb0"));
        assert_eq!(ta.link(va0.ifindex), Some(va0));

        // kind / mtu / up
        assert_eq!(va0.kind.as_deref(), Some("veth"));
        assert_eq!(br0.kind.as_deref(), Some("bridge"));
        assert_eq!(lo.kind, None);
        assert_eq!(vb0.mtu, 1400);
        assert_eq!(va0.mtu, 1500);
        assert!(va0.up && br0.up && vb0.up);

        // master
        assert_eq!(vp0.master, Some(br0.ifindex));
        assert_eq!(va0.master, None);
        assert!(ta.is_bridge(br0.ifindex));
        assert!(!ta.is_bridge(vp0.ifindex));

        // veth peers across netns
        assert_eq!(va0.link, Some(vb0.ifindex));
        assert!(va0.link_netnsid.is_some());
        assert_eq!(va0.peer_netns, Some(b.inode));
        assert_eq!(vb0.link, Some(va0.ifindex));
        assert!(vb0.link_netnsid.is_some());
        assert_eq!(vb0.peer_netns, Some(a.inode));
        // ... and within one netns
        assert_eq!(vp0.link, Some(vq0.ifindex));
        assert_eq!(vp0.link_netnsid, None);
        assert_eq!(vp0.peer_netns, Some(a.inode));
        assert_eq!(lo.link, None);
        assert_eq!(lo.peer_netns, None);

        // addresses
        let br0_v4: Vec<_> = br0.addrs.iter().filter(|(a, _)| a.is_ipv4()).collect();
        assert_eq!(br0_v4, vec![&(ip(&format!("10.{n}.1.1")), 24)]);
        assert!(br0
            .addrs
            .iter()
            .any(|(a, l)| a.to_string().starts_with("fe80:") && *l == 64));
        assert!(va0.addrs.contains(&(ip(&format!("10.{n}.2.1")), 24)));
        assert!(va0.addrs.contains(&(ip(&format!("2001:db8:{n}::1")), 64)));
        assert!(lo.addrs.contains(&(ip("127.0.0.1"), 8)));
    }

    /// Every table's routes, with kind, device, gateway, source and metric.
    fn check_routes(ta: &NsTopology, n: u8) {
        let va0 = ta.link_by_name("va0").unwrap();
        let br0 = ta.link_by_name("br0").unwrap();
        let find = |dst: &str, len: u8, table: u32| {
            ta.routes
                .iter()
                .find(|r| r.dst == ip(dst) && r.prefix_len == len && r.table == table)
                .unwrap_or_else(|| panic!("no route {dst}/{len} table {table}: {:#?}", ta.routes))
        };
        let r16 = find(&format!("10.{n}.0.0"), 16, RT_TABLE_MAIN);
        assert_eq!(r16.kind, RouteKind::Unicast);
        assert_eq!(r16.oif, Some(va0.ifindex));
        assert_eq!(r16.gateway, Some(ip(&format!("10.{n}.2.2"))));
        assert_eq!(r16.metric, 50);
        let conn = find(&format!("10.{n}.1.0"), 24, RT_TABLE_MAIN);
        assert_eq!(conn.oif, Some(br0.ifindex));
        assert_eq!(conn.gateway, None);
        assert_eq!(conn.src, Some(ip(&format!("10.{n}.1.1"))));
        let local = find(&format!("10.{n}.1.1"), 32, RT_TABLE_LOCAL);
        assert_eq!(local.kind, RouteKind::Local);
        let bcast = find(&format!("10.{n}.1.255"), 32, RT_TABLE_LOCAL);
        assert_eq!(bcast.kind, RouteKind::Broadcast);
        assert_eq!(
            find(&format!("10.{n}.5.0"), 24, RT_TABLE_MAIN).kind,
            RouteKind::Blackhole
        );
        assert_eq!(find(&format!("10.{n}.6.0"), 24, 100).oif, Some(va0.ifindex));
        let v6 = find(&format!("2001:db8:{n}::"), 64, RT_TABLE_MAIN);
        assert_eq!(v6.oif, Some(va0.ifindex));
    }

    /// Longest prefix, local table first, no default route.
    fn check_route_to(ta: &NsTopology, n: u8) {
        let va0 = ta.link_by_name("va0").unwrap();
        let to = |d: &str| ta.route_to(ip(d)).map(|r| (r.dst, r.prefix_len, r.table));
        assert_eq!(
            to(&format!("10.{n}.3.9")),
            Some((ip(&format!("10.{n}.3.0")), 24, 254))
        );
        assert_eq!(
            to(&format!("10.{n}.4.9")),
            Some((ip(&format!("10.{n}.0.0")), 16, 254))
        );
        assert_eq!(
            to(&format!("10.{n}.2.7")),
            Some((ip(&format!("10.{n}.2.0")), 24, 254))
        );
        assert_eq!(
            to(&format!("10.{n}.1.1")),
            Some((ip(&format!("10.{n}.1.1")), 32, 255))
        );
        assert_eq!(
            ta.route_to(ip(&format!("10.{n}.5.1"))).unwrap().kind,
            RouteKind::Blackhole
        );
        assert_eq!(
            to(&format!("10.{n}.6.1")),
            Some((ip(&format!("10.{n}.0.0")), 16, 254))
        );
        assert_eq!(to("192.0.2.1"), None);
        assert_eq!(
            ta.route_to(ip(&format!("2001:db8:{n}::99")))
                .and_then(|r| r.oif),
            Some(va0.ifindex)
        );
    }

    fn check_prefix_on(ta: &NsTopology, n: u8) {
        let va0 = ta.link_by_name("va0").unwrap();
        let vp0 = ta.link_by_name("vp0").unwrap();
        let br0 = ta.link_by_name("br0").unwrap();
        let p = ta
            .prefix_on(br0.ifindex, ip(&format!("10.{n}.1.77")))
            .unwrap();
        assert_eq!((p.dst, p.prefix_len), (ip(&format!("10.{n}.1.0")), 24));
        assert_eq!(ta.prefix_on(vp0.ifindex, ip(&format!("10.{n}.1.77"))), None);
        assert_eq!(ta.prefix_on(br0.ifindex, ip(&format!("10.{n}.2.77"))), None);
        assert_eq!(ta.prefix_on(va0.ifindex, ip("192.0.2.1")), None);
        // Via va0 the /16 also covers br0's subnet: the most specific on va0.
        let p = ta
            .prefix_on(va0.ifindex, ip(&format!("10.{n}.1.77")))
            .unwrap();
        assert_eq!(p.prefix_len, 16);
        let p = ta
            .prefix_on(va0.ifindex, ip(&format!("10.{n}.9.9")))
            .unwrap();
        assert_eq!(p.prefix_len, 16);
        let p = ta
            .prefix_on(va0.ifindex, ip(&format!("10.{n}.6.9")))
            .unwrap();
        assert_eq!((p.prefix_len, p.table), (24, 100));
    }

    /// Read inside each netns (the host's values are not these).
    fn check_sysctls(ta: &NsTopology, tb: &NsTopology) {
        assert_eq!(ta.sysctls.rp_filter_all, 0);
        assert_eq!(ta.sysctls.rp_filter.get("va0"), Some(&1));
        assert_eq!(ta.rp_filter("va0"), 1);
        assert_eq!(ta.rp_filter("br0"), 0);
        assert!(ta.sysctls.ipv4_forwarding);
        assert!(ta.sysctls.ipv6_forwarding);
        assert_eq!(tb.sysctls.rp_filter_all, 2);
        assert_eq!(tb.sysctls.rp_filter.get("vb0"), Some(&0));
        assert_eq!(tb.rp_filter("vb0"), 2, "max(all=2, vb0=0)");
        assert!(!tb.sysctls.ipv4_forwarding);
        assert!(!tb.sysctls.ipv6_forwarding);
        assert!(!ta.sysctls.rp_filter.contains_key("all"));
        assert!(ta.sysctls.rp_filter.contains_key("default"));
        // Per device, from the link dump's devconf: what conf/<dev> shows.
        assert_eq!(ta.sysctls.ipv4_forwarding_dev.get("va0"), Some(&true));
        assert_eq!(tb.sysctls.ipv4_forwarding_dev.get("vb0"), Some(&false));
        assert!(ta.sysctls.ipv4_forwarding_dev.contains_key("default"));
    }

    /// Sysctls must be the netns' own even when the host's differ and while
    /// another netns is read concurrently.
    #[test]
    fn sysctls_are_per_netns_not_host() {
        let host = |p: &str| {
            fs::read_to_string(p)
                .unwrap()
                .trim()
                .parse::<u32>()
                .unwrap()
        };
        let host_rp = host("/proc/sys/net/ipv4/conf/all/rp_filter");
        let host_fwd = host("/proc/sys/net/ipv4/conf/all/forwarding");
        let a = TestNs::new("sya");
        let b = TestNs::new("syb");
        let (ra, rb) = ((host_rp + 1) % 3, (host_rp + 2) % 3);
        a.sysctl(&format!("net.ipv4.conf.all.rp_filter={ra}"));
        b.sysctl(&format!("net.ipv4.conf.all.rp_filter={rb}"));
        a.sysctl(&format!(
            "net.ipv4.conf.all.forwarding={}",
            1 - host_fwd.min(1)
        ));
        let (ia, ib) = (a.info(), b.info());
        let ha = std::thread::spawn(move || NsTopology::read(&ia).unwrap());
        let hb = std::thread::spawn(move || NsTopology::read(&ib).unwrap());
        let (ta, tb) = (ha.join().unwrap(), hb.join().unwrap());
        assert_eq!(ta.sysctls.rp_filter_all, ra);
        assert_eq!(tb.sysctls.rp_filter_all, rb);
        assert_eq!(ta.sysctls.ipv4_forwarding, host_fwd == 0);
        let own = crate::host::netns::resolve("/proc/self/ns/net").unwrap();
        let th = NsTopology::read(&own).unwrap();
        assert_eq!(th.sysctls.rp_filter_all, host_rp);
        assert_eq!(host("/proc/sys/net/ipv4/conf/all/rp_filter"), host_rp);
        assert_eq!(host("/proc/sys/net/ipv4/conf/all/forwarding"), host_fwd);
    }

    #[test]
    fn a_ruleset_change_changes_the_topology() {
        // An MSS clamp is a change on the path even though no route, link
        // or sysctl moves: the nftables generation says so.
        let a = TestNs::new("nft");
        let before = NsTopology::read(&a.info()).unwrap();
        let g0 = before.sysctls.nft_genid.expect("nftables generation");
        let out = std::process::Command::new("ip")
            .args([
                "netns", "exec", &a.name, "iptables", "-t", "mangle", "-A", "FORWARD",
            ])
            .args(["-p", "tcp", "--tcp-flags", "SYN,RST", "SYN", "-j", "TCPMSS"])
            .arg("--clamp-mss-to-pmtu")
            .status()
            .unwrap();
        assert!(out.success());
        let after = NsTopology::read(&a.info()).unwrap();
        assert_ne!(after.sysctls.nft_genid, Some(g0));
        assert!(!after.same_as(&before));
        assert_eq!(parse_genid(&[0u8; 8], 1), None);
    }

    #[test]
    fn cache_ifname_peer_and_gone() {
        let lab = lab("ca");
        let (a, b) = (&lab.a, &lab.b);
        let recheck = Duration::from_millis(100);
        let max_age = Duration::from_millis(800);
        let mut topo = Topology::with_timing(max_age, recheck);

        let t1 = topo.get(a.inode).unwrap();
        let t2 = topo.get(a.inode).unwrap();
        assert!(Arc::ptr_eq(&t1, &t2), "hit must not re-read");
        topo.invalidate(a.inode);
        let t3 = topo.get(a.inode).unwrap();
        assert!(!Arc::ptr_eq(&t1, &t3), "invalidate forces a re-read");

        let va0 = a.ifindex("va0");
        let vb0 = b.ifindex("vb0");
        assert_eq!(topo.ifname(a.inode, va0), IfName::Name("va0".into()));
        assert_eq!(topo.ifname(b.inode, vb0), IfName::Name("vb0".into()));
        assert_eq!(topo.ifname(a.inode, 0), IfName::None);

        let (pns, peer) = topo.veth_peer(a.inode, va0).unwrap();
        assert_eq!(pns, b.inode);
        assert_eq!(peer.name, "vb0");
        assert_eq!(peer.mtu, 1400);
        let (pns, peer) = topo.veth_peer(b.inode, vb0).unwrap();
        assert_eq!((pns, peer.ifindex), (a.inode, va0));
        let (pns, peer) = topo.veth_peer(a.inode, a.ifindex("vp0")).unwrap();
        assert_eq!((pns, peer.name.as_str()), (a.inode, "vq0"));
        assert_eq!(topo.veth_peer(a.inode, a.ifindex("br0")), None);

        // An interface created after the read is found by the miss re-read.
        std::thread::sleep(recheck);
        a.ip("link add nw0 type veth peer name nw1");
        let nw0 = a.ifindex("nw0");
        assert_eq!(topo.ifname(a.inode, nw0), IfName::Name("nw0".into()));

        // Deleting one veth end removes both. Cached names outlive the
        // interface by up to `max_age` (events queued before the deletion
        // still get named), then turn Gone.
        a.ip("link del va0");
        assert_eq!(topo.ifname(a.inode, va0), IfName::Name("va0".into()));
        std::thread::sleep(max_age);
        assert_eq!(topo.ifname(a.inode, va0), IfName::Gone);
        assert_eq!(topo.ifname(b.inode, vb0), IfName::Gone);
        assert_eq!(topo.veth_peer(a.inode, va0), None);

        // A storm on the vanished ifindex does not re-read each time.
        let before = topo.get(b.inode).unwrap();
        for _ in 0..1000 {
            assert_eq!(topo.ifname(b.inode, vb0), IfName::Gone);
        }
        assert!(Arc::ptr_eq(&before, &topo.get(b.inode).unwrap()));

        // Netns deleted: NetnsGone within `recheck`.
        b.delete();
        std::thread::sleep(recheck);
        assert_eq!(topo.ifname(b.inode, vb0), IfName::NetnsGone);
        assert!(topo.get(b.inode).is_none());
        assert_eq!(topo.veth_peer(b.inode, vb0), None);
        // Unknown netns altogether.
        assert_eq!(topo.ifname(u32::MAX, 1), IfName::NetnsGone);
    }

    #[test]
    fn own_netns_reads() {
        let own = crate::host::netns::own_inode().unwrap();
        let mut topo = Topology::new();
        let t = topo.get(own).expect("own netns");
        assert!(t.link_by_name("lo").is_some());
        assert_eq!(topo.ifname(own, 1), IfName::Name("lo".into()));
    }
}
