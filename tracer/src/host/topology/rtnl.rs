//! The rtnetlink socket and its dumps, decoded with netlink-packet-route
//! (and by `raw` where the crate rejects a message).

use super::*;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use anyhow::{bail, Context};
use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::LinkMessage;
#[cfg(test)]
use netlink_packet_route::link::{
    InfoBridge, InfoBridgePort, InfoData, InfoPortData, LinkAttribute, LinkFlags, LinkInfo,
};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteVia};
use netlink_packet_route::rule::RuleMessage;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::host::policy::FibRule;
use crate::host::qdisc::{self, Qdisc};
use crate::host::route::{Route, RouteKind};
use netlink_packet_route::tc::TcMessage;

/// One message of a reply: the crate's decoding, plus the raw payload for the
/// fallback decoder.
pub(super) struct Reply {
    pub(super) parsed: Option<RouteNetlinkMessage>,
    pub(super) payload: Vec<u8>,
}

pub(super) struct Rtnl {
    pub(super) sock: Socket,
    pub(super) seq: u32,
}

pub(super) const NLMSG_NOOP: u16 = 1;
pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLMSG_DONE: u16 = 3;
pub(super) const NLMSG_OVERRUN: u16 = 4;
pub(super) const NLMSG_HDRLEN: usize = 16;

impl Rtnl {
    pub(super) fn open() -> io::Result<Rtnl> {
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
    pub(super) fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        dump: bool,
    ) -> anyhow::Result<Vec<Reply>> {
        self.request_decoded(msg, dump, true)
    }

    /// [`Rtnl::request`] leaving every reply to the raw decoder (`parsed`
    /// is None): the crate decodes all of a link's attributes, and builds
    /// an error context with the attribute's bytes formatted for each of
    /// them whether it fails or not, which was most of the user time of
    /// a link dump of a bridge's namespace with 1,000 ports (issue 22).
    pub(super) fn request_raw(
        &mut self,
        msg: RouteNetlinkMessage,
        dump: bool,
    ) -> anyhow::Result<Vec<Reply>> {
        self.request_decoded(msg, dump, false)
    }

    fn request_decoded(
        &mut self,
        msg: RouteNetlinkMessage,
        dump: bool,
        decode: bool,
    ) -> anyhow::Result<Vec<Reply>> {
        let mut last = Vec::new();
        for _ in 0..3 {
            let (replies, interrupted) = self.request_once(msg.clone(), dump, decode)?;
            if !interrupted {
                return Ok(replies);
            }
            last = replies;
        }
        Ok(last)
    }

    pub(super) fn request_once(
        &mut self,
        msg: RouteNetlinkMessage,
        dump: bool,
        decode: bool,
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
                    _ if !decode => {
                        out.push(Reply {
                            parsed: None,
                            payload: nb.payload().to_vec(),
                        });
                        if !dump {
                            return Ok((out, interrupted));
                        }
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
    pub(super) fn nsid_of_fd(&mut self, fd: std::os::fd::RawFd) -> anyhow::Result<Option<i32>> {
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

pub(super) fn dump_links(nl: &mut Rtnl) -> anyhow::Result<Vec<Link>> {
    Ok(dump_links_conf(nl)?.0)
}

/// A device's IPv4 settings the rules read (`net.ipv4.conf.<dev>.*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct DevConf {
    pub(super) forwarding: u32,
    pub(super) rp_filter: u32,
    pub(super) src_valid_mark: u32,
}

/// The links, and each IPv4 device's settings from the same dump.
/// Decoded by `raw` only (see [`Rtnl::request_raw`]; a test holds it to
/// the crate's decoding).
pub(super) fn dump_links_conf(nl: &mut Rtnl) -> anyhow::Result<(Vec<Link>, HashMap<i32, DevConf>)> {
    let replies = nl.request_raw(RouteNetlinkMessage::GetLink(LinkMessage::default()), true)?;
    let mut conf = HashMap::new();
    let links = replies
        .iter()
        .filter_map(|r| {
            let l = raw::link(&r.payload)?;
            if let Some(c) = raw::devconf(&r.payload) {
                conf.insert(l.ifindex, c);
            }
            Some(l)
        })
        .collect();
    Ok((links, conf))
}

pub(super) fn dump_addrs(nl: &mut Rtnl) -> anyhow::Result<Vec<(i32, IpAddr, u8)>> {
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

pub(super) fn dump_routes(nl: &mut Rtnl, family: AddressFamily) -> anyhow::Result<Vec<Route>> {
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
pub(super) fn dump_rules(nl: &mut Rtnl, family: AddressFamily) -> anyhow::Result<Vec<FibRule>> {
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

pub(super) fn dump_qdiscs(nl: &mut Rtnl, txqlen: &HashMap<i32, u32>) -> anyhow::Result<Vec<Qdisc>> {
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

pub(super) fn nonzero(v: u32) -> Option<i32> {
    i32::try_from(v).ok().filter(|&v| v != 0)
}

/// The crate's decoding of a link: what [`raw::link`] is held to.
#[cfg(test)]
pub(super) fn link_from_msg(m: &LinkMessage) -> Link {
    let mut l = Link {
        ifindex: i32::try_from(m.header.index).unwrap_or(0),
        up: m.header.flags.contains(LinkFlags::Up),
        ..Link::default()
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
                            if let Some(t) = tunnel_of(l.kind.as_deref(), data) {
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

pub(super) fn addr_from_msg(m: &AddressMessage) -> Option<(i32, IpAddr, u8)> {
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

pub(super) fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

pub(super) fn route_from_msg(m: &RouteMessage) -> Option<Route> {
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
