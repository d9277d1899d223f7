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

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
#[cfg(test)]
use netlink_packet_route::link::{InfoData, InfoGeneve, InfoVxlan};
use serde::{Deserialize, Serialize};

use crate::host::exhaustion::Exhaustion;
use crate::host::listen::ListenCounters;
use crate::host::netns::NetnsInfo;
use crate::host::netns_worker;
use crate::host::policy::{self, Decision, FibRule, Flow};
use crate::host::qdisc::Qdisc;
use crate::host::route::{
    Route, RouteKind, RTN_THROW, RT_TABLE_DEFAULT, RT_TABLE_LOCAL, RT_TABLE_MAIN,
};
use crate::host::snmp::UdpCounters;

mod cache;
mod raw;
mod read;
mod rtnl;
#[cfg(test)]
mod tests;

pub use cache::{IfName, Topology};
pub use read::warm_peers_here;
use read::*;
use rtnl::*;

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

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// A tunnel's encapsulation (VXLAN, Geneve, GRE, IPIP, SIT), from
    /// IFLA_INFO_DATA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<Tunnel>,
}

/// What a tunnel device encapsulates into: enough to know its outer
/// packets and how much each adds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunnel {
    /// The outer IP protocol: 17 (UDP: VXLAN, Geneve), 47 (GRE), 4
    /// (IPIP), 41 (SIT). Recordings from before GRE and IPIP hold UDP
    /// tunnels only.
    #[serde(default = "udp")]
    pub proto: u8,
    /// The outer UDP destination port (4789, 6081 unless set otherwise);
    /// 0 for a tunnel that is not UDP.
    pub port: u16,
    /// Bytes each packet grows by past the outer IP header: UDP 8, the
    /// tunnel's 8 and the inner Ethernet 14 for VXLAN and Geneve (Geneve
    /// options not counted); GRE 4, 4 more for each of key, checksum and
    /// sequence number, and 14 more for gretap; none for IPIP and SIT.
    #[serde(default = "udp_header")]
    pub header: u32,
    /// The far end (or the multicast group); None for a tunnel with no
    /// default destination (fdb entries, metadata mode).
    pub remote: Option<IpAddr>,
    pub local: Option<IpAddr>,
    /// IFLA_VXLAN_LINK: the underlay device it was bound to, if any.
    pub underlay: Option<i32>,
    /// How the outer DF bit is set: "set", "unset" or "inherit".
    pub df: Option<String>,
}

fn udp() -> u8 {
    17
}

fn udp_header() -> u32 {
    UDP_TUNNEL_HEADER
}

/// UDP 8 + VXLAN or Geneve 8 + inner Ethernet 14.
const UDP_TUNNEL_HEADER: u32 = 8 + 8 + 14;

impl Tunnel {
    /// A VXLAN or Geneve device's, to its UDP `port`.
    pub fn udp(port: u16) -> Tunnel {
        Tunnel {
            proto: 17,
            port,
            header: UDP_TUNNEL_HEADER,
            remote: None,
            local: None,
            underlay: None,
            df: None,
        }
    }

    /// Bytes each packet grows by: the outer IP header and [`Self::header`].
    pub fn overhead(&self, outer_v6: bool) -> u32 {
        let ip = if outer_v6 { 40 } else { 20 };
        ip + self.header
    }

    /// A GRE, gretap, IPIP or SIT device's, from its IFLA_INFO_DATA
    /// attributes (IFLA_GRE_* or IFLA_IPTUN_*, IPv4 endpoints); None for
    /// any other kind.
    pub fn ip_tunnel<'a>(
        kind: &str,
        attrs: impl IntoIterator<Item = (u16, &'a [u8])>,
    ) -> Option<Tunnel> {
        // IFLA_GRE_LINK, _OFLAGS, _LOCAL, _REMOTE, _PMTUDISC; IFLA_IPTUN_
        // LINK, _LOCAL, _REMOTE, _PMTUDISC.
        let (proto, local, remote, oflags, pmtudisc) = match kind {
            "gre" | "gretap" => (47, 6, 7, Some(3), 10),
            "ipip" => (4, 2, 3, None, 10),
            "sit" => (41, 2, 3, None, 10),
            _ => return None,
        };
        let v4 = |x: &[u8]| -> Option<IpAddr> {
            let b: [u8; 4] = x.get(..4)?.try_into().ok()?;
            Some(IpAddr::from(b)).filter(|a| !a.is_unspecified())
        };
        let mut t = Tunnel {
            proto,
            port: 0,
            header: if kind == "gretap" {
                4 + 14
            } else if proto == 47 {
                4
            } else {
                0
            },
            ..Tunnel::udp(0)
        };
        for (k, x) in attrs {
            if k == 1 {
                let b: Option<[u8; 4]> = x.get(..4).and_then(|b| b.try_into().ok());
                t.underlay = b.map(i32::from_ne_bytes).filter(|i| *i > 0);
            } else if k == local {
                t.local = v4(x);
            } else if k == remote {
                t.remote = v4(x);
            } else if Some(k) == oflags {
                // GRE_CSUM, GRE_KEY and GRE_SEQ each add 4 bytes.
                let f = x.get(..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
                t.header += 4 * (f & (0x8000 | 0x2000 | 0x1000)).count_ones();
            } else if k == pmtudisc {
                // With path MTU discovery the outer DF is set; without it
                // the inner packet's is copied.
                t.df = x
                    .first()
                    .map(|p| if *p != 0 { "set" } else { "inherit" }.into());
            }
        }
        Some(t)
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

/// The encapsulation of a tunnel device of `kind`; None for any other.
#[cfg(test)]
fn tunnel_of(kind: Option<&str>, data: &InfoData) -> Option<Tunnel> {
    use netlink_packet_utils::nla::Nla;
    // The crate leaves the IP tunnels' attributes undecoded.
    fn pairs<N: Nla>(v: &[N]) -> Vec<(u16, Vec<u8>)> {
        v.iter()
            .map(|n| {
                let mut b = vec![0; n.value_len()];
                n.emit_value(&mut b);
                (n.kind(), b)
            })
            .collect()
    }
    let ip_tunnel = |p: Vec<(u16, Vec<u8>)>| {
        Tunnel::ip_tunnel(kind?, p.iter().map(|(k, v)| (*k, v.as_slice())))
    };
    let mut t = Tunnel::udp(0);
    match data {
        InfoData::GreTun(v) => return ip_tunnel(pairs(v)),
        InfoData::GreTap(v) => return ip_tunnel(pairs(v)),
        InfoData::SitTun(v) => return ip_tunnel(pairs(v)),
        InfoData::Other(b) => {
            let p = raw::attrs(b)
                .into_iter()
                .map(|(k, v)| (k, v.to_vec()))
                .collect();
            return ip_tunnel(p);
        }
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
        Self::read_with(ns, None)
    }

    /// [`NsTopology::read`] with the links `named` already read (see
    /// [`NsTopology::read_names`]): only the rest is asked of the kernel.
    fn read_with(ns: &NetnsInfo, named: Option<Named>) -> anyhow::Result<NsTopology> {
        let inode = ns.inode;
        let (links, routes, rules, sysctls, qdiscs, udp, listen, mut exhaustion) =
            netns_worker::read_in(&ns.path, move || read_here(inode, named))
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
    /// (empty in the copy). One link and one address dump. Also returns
    /// the devices' IPv4 settings, which [`NsTopology::read_with`] needs
    /// (with the links) to skip those dumps.
    fn read_names(ns: &NetnsInfo) -> anyhow::Result<(NsTopology, HashMap<i32, DevConf>)> {
        let inode = ns.inode;
        let (links, devconf) = netns_worker::read_in(&ns.path, move || names_here(inode))
            .with_context(|| format!("cannot enter netns {}", ns.path.display()))?
            .with_context(|| format!("reading links of netns {}", ns.label()))?;
        let topo = NsTopology {
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
        };
        Ok((topo, devconf))
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
