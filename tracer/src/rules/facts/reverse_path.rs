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
