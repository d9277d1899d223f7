//! Whether a namespace forwards, and could: `forwarding_disabled` and
//! `misdelivered` split the `IP_INADDRERRORS` drops between them by it.

use super::reverse_path::ingress_of;
use crate::events::reason::Reason;
use crate::events::record::DropRecord;
use crate::events::record::Family;
use crate::host::policy::Flow;
use crate::host::route::RouteKind;
use crate::host::topology::{Link, NsTopology};
use std::net::IpAddr;
use std::sync::Arc;

/// Does this device carry `addr`?
pub fn holds(l: &Link, addr: IpAddr) -> bool {
    l.addrs.iter().any(|(a, _)| *a == addr)
}

/// Is `a` one of the namespace's own addresses (any device)?
pub fn owns_addr(topo: &NsTopology, a: IpAddr) -> bool {
    topo.links.iter().any(|l| holds(l, a))
}

/// Whether the forwarding sysctl that applies to this drop is on: the
/// ingress device's for IPv4, `all` for IPv6.
pub fn forwarding_on(topo: &NsTopology, d: &DropRecord) -> bool {
    if d.family == Some(Family::Ipv6) {
        return topo.sysctls.ipv6_forwarding;
    }
    match &d.ingress_ifname {
        Some(i) => topo.ipv4_forwarding_on(i),
        None => topo.sysctls.ipv4_forwarding,
    }
}

/// Whether the namespace is shaped like a router for `dst` arriving on
/// `ingress`: two or more layer-3 devices (not loopback, not a bridge's
/// port) and a route to `dst` out of a device other than `ingress`. A
/// one-link host that receives a packet for someone else could not
/// forward it anywhere but back where it came from.
pub fn could_forward(topo: &NsTopology, ingress: i32, dst: IpAddr, src: Option<IpAddr>) -> bool {
    let l3 = topo
        .links
        .iter()
        .filter(|l| l.name != "lo" && l.master.is_none())
        .count();
    // The route the rules choose for this packet, as it arrived.
    let flow = Flow {
        src,
        dst,
        iif: topo.link(ingress).map(|l| l.name.as_str()),
        oif: None,
        mark: None,
    };
    let out = topo
        .decide(&flow, None)
        .and_then(|p| p.route)
        .filter(|r| r.kind == RouteKind::Unicast)
        .and_then(|r| r.oif);
    l3 >= 2 && out.is_some_and(|o| o != ingress)
}

/// An `IP_INADDRERRORS` drop in a namespace whose forwarding is off: a
/// packet for someone else that this namespace did not forward.
pub struct NotForwarded {
    pub topo: Arc<NsTopology>,
    pub dst: IpAddr,
    pub ingress: i32,
    /// The namespace is shaped like a router for it (`could_forward`).
    pub could_forward: bool,
    /// `dst` is one of the namespace's own addresses.
    pub dst_is_local: bool,
}

/// None for other drops, a namespace that forwards, or an unknown
/// destination or topology (asked of `topo_of` only for these drops).
pub fn not_forwarded(
    d: &DropRecord,
    topo_of: impl FnOnce(u32) -> Option<Arc<NsTopology>>,
) -> Option<NotForwarded> {
    if d.reason != Reason::IP_INADDRERRORS {
        return None;
    }
    let (topo, dst) = (topo_of(d.netns)?, d.dst?);
    if forwarding_on(&topo, d) {
        return None;
    }
    let ingress = ingress_of(d);
    Some(NotForwarded {
        could_forward: could_forward(&topo, ingress, dst, d.src),
        dst_is_local: owns_addr(&topo, dst),
        topo,
        dst,
        ingress,
    })
}
