//! The reverse path of a dropped packet: where replies to its source
//! would leave. `rpfilter_route_conflict` concludes a conflict from it,
//! `no_route` a missing route back, `asymmetric_route` and
//! `neighbor_unreachable` where a peer's packets came in.

use crate::events::reason::Reason;
use crate::events::record::{DropRecord, RouteRecord};
use crate::host::policy::Decision;
use crate::host::topology::{Link, NsTopology};
use std::net::IpAddr;
use std::sync::Arc;

/// A route lookup joins a drop as evidence only if it ran this close to it.
pub const ROUTE_JOIN_MAX_AGE_NS: u64 = 10_000_000_000;

/// The device the packet came in by (the drop's own device when the
/// kernel did not say).
pub fn ingress_of(d: &DropRecord) -> i32 {
    if d.ingress_ifindex > 0 {
        d.ingress_ifindex
    } else {
        d.ifindex
    }
}

/// The kernel's reverse lookup joined to the drop, if it ran close enough
/// to it to count as evidence.
pub fn kernel_reverse_route(d: &DropRecord) -> Option<&RouteRecord> {
    d.reverse_route
        .as_ref()
        .filter(|r| r.age_ns.unsigned_abs() < ROUTE_JOIN_MAX_AGE_NS)
}

/// Where replies to an `IP_RPFILTER` drop's source would leave.
pub enum ReversePath {
    /// No route back to the source at all: `err` is the kernel's reverse
    /// lookup's error, 0 if the table alone showed it.
    NoRouteBack { err: i32 },
    /// Out of `ifindex` (maybe the ingress device itself).
    Leaves { ifindex: i32, from_kernel: bool },
    /// Several ways, or none known (multipath, nexthop objects).
    Unknown,
}

/// An `IP_RPFILTER` drop with what is known about its paths.
pub struct RpFilterDrop {
    pub topo: Arc<NsTopology>,
    pub src: IpAddr,
    pub ingress: i32,
    pub in_link: Link,
    pub path: ReversePath,
    /// The policy rule and table of the reverse lookup (the kernel's
    /// table when its lookup was joined to the drop).
    pub policy: Option<Decision>,
}

/// The reverse path of an `IP_RPFILTER` drop: the kernel's own
/// reverse-path check (fib_validate_source looks up src from dst with
/// iif = loopback) when it ran around this drop; the topology's longest
/// match is the fallback. None for other drops, or when the source, the
/// topology (asked of `topo_of` only for these drops) or the ingress
/// device is unknown.
pub fn rpfilter_drop(
    d: &DropRecord,
    topo_of: impl FnOnce(u32) -> Option<Arc<NsTopology>>,
) -> Option<RpFilterDrop> {
    if d.reason != Reason::IP_RPFILTER {
        return None;
    }
    let (src, topo) = (d.src?, topo_of(d.netns)?);
    let ingress = ingress_of(d);
    let in_link = topo.link(ingress)?.clone();
    let kernel_rev = kernel_reverse_route(d);
    let kernel_ok = kernel_rev.filter(|r| r.err == 0 && r.ifindex > 0);
    // The rule that sent the kernel's lookup to its table; without the
    // kernel's word, the rules' own choice.
    let policy = kernel_ok
        .and_then(|r| topo.reverse_decision(src, d.dst, &in_link.name, Some(r.table)))
        .or_else(|| topo.reverse_decision(src, d.dst, &in_link.name, None));
    let path = if let Some(r) = kernel_rev.filter(|r| r.err != 0) {
        ReversePath::NoRouteBack { err: r.err }
    } else {
        let rev = kernel_ok
            .map(|r| r.ifindex)
            .or_else(|| policy.as_ref()?.route.as_ref()?.oif);
        match rev {
            Some(ifindex) => ReversePath::Leaves {
                ifindex,
                from_kernel: kernel_ok.is_some(),
            },
            // Only rules and tables with no route at all prove "no route
            // back"; a multipath or nexthop-object route has no single oif.
            None if policy.as_ref().is_none_or(|p| p.route.is_none()) => {
                ReversePath::NoRouteBack { err: 0 }
            }
            None => ReversePath::Unknown,
        }
    };
    Some(RpFilterDrop {
        topo,
        src,
        ingress,
        in_link,
        path,
        policy,
    })
}

/// The address a `NEIGH_FAILED` drop's ARP asked for: the route's gateway,
/// else the destination itself. IPv4 only (ND has no reverse-path check).
pub fn arp_target(d: &DropRecord, topo: &NsTopology) -> Option<IpAddr> {
    if d.reason != Reason::NEIGH_FAILED {
        return None;
    }
    let dst = d.dst.filter(IpAddr::is_ipv4)?;
    Some(topo.route_to(dst).and_then(|r| r.gateway).unwrap_or(dst))
}

/// A neighbour that holds the ARP's target but ignores the request: its
/// reverse-path check of the sender (arp_process only answers when
/// ip_route_input accepts sender -> target on the arrival device) leaves
/// by another device, often through a policy rule's table.
pub struct ArpRejected {
    /// The namespace that ignores the ARP, and its device that got it.
    pub netns: u32,
    pub topo: Arc<NsTopology>,
    pub link: Link,
    /// The ARP's sender address and the address asked for.
    pub sender: IpAddr,
    pub target: IpAddr,
    /// Where the holder's route back to the sender leaves (None: no route).
    pub reverse_if: Option<i32>,
    pub policy: Option<Decision>,
    pub rp_filter: u32,
}

/// Whether `holder` (the device holding the ARP's target, on the segment
/// the drop's device is on, with its namespace's topology) rejects the
/// ARP of a `NEIGH_FAILED` drop in `topo`'s namespace by its reverse-path
/// check. The sender address is the dropped packet's source when it is
/// local (arp_solicit's choice), else the device's address in the
/// target's prefix.
pub fn arp_rejected(
    d: &DropRecord,
    topo: &NsTopology,
    (netns, link): (u32, Link),
    holder_topo: Arc<NsTopology>,
) -> Option<ArpRejected> {
    let target = arp_target(d, topo)?;
    let out = topo.link(d.ifindex)?;
    let local = |a: &IpAddr| topo.links.iter().any(|l| l.addrs.iter().any(|x| x.0 == *a));
    let sender = d.src.filter(local).or_else(|| {
        out.addrs
            .iter()
            .find(|(a, l)| crate::host::route::prefix_contains(*a, *l, target))
            .or_else(|| out.addrs.iter().find(|(a, _)| a.is_ipv4()))
            .map(|(a, _)| *a)
    })?;
    let rp_filter = holder_topo.rp_filter(&link.name);
    if rp_filter == 0 {
        return None;
    }
    // An ARP carries no mark: the lookup's mark is 0 either way.
    let flow = crate::host::policy::Flow {
        src: Some(target),
        dst: sender,
        iif: Some("lo"),
        oif: None,
        mark: Some(0),
    };
    let policy = holder_topo.decide(&flow, None);
    let reverse_if = policy.as_ref().and_then(|p| p.route.as_ref()?.oif);
    let rejected = match reverse_if {
        Some(i) => rp_filter == 1 && i != link.ifindex,
        // No route back fails strict and loose checks alike; a route
        // without a single device (multipath) proves nothing.
        None => policy.as_ref().is_none_or(|p| p.route.is_none()),
    };
    rejected.then_some(ArpRejected {
        netns,
        topo: holder_topo,
        link,
        sender,
        target,
        reverse_if,
        policy,
        rp_filter,
    })
}
