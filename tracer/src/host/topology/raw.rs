//! Fallback decoder for the messages netlink-packet-route rejects (a kernel
//! newer than the crate): it knows only the fields the topology keeps;
//! layouts from linux/rtnetlink.h, if_link.h, if_addr.h.

use super::*;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::host::route::{Route, RouteKind};

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
        up: flags & (libc::IFF_UP as u32) != 0,
        ..Link::default()
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
/// a tunnel's encapsulation (the kernel sends the kinds before
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
                Some(k) => l.tunnel = Tunnel::ip_tunnel(k, attrs(iv)),
                None => {}
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
    let mut t = Tunnel::udp(4789);
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
    let mut t = Tunnel::udp(6081);
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
