//! Drop reasons for kernels that report none (before 5.17).
//!
//! `kfree_skb` then carries only its caller. A caller's name alone rarely
//! proves why (`ip_forward` frees for TTL, policy and size alike), so a
//! reason is inferred only where the function has a single drop path, or
//! where the facts joined to the drop leave no doubt: its size against the
//! route's egress MTU, or the route lookups rp_filter itself made. Anything
//! else stays unknown. Records say `reason_source: "location"` for these.

use super::reason::Reason;
use super::record::DropRecord;

/// ENETUNREACH as fib lookups return it (negated).
const ENETUNREACH: i32 = -101;

/// The function of a location (`ip_rcv_finish_core.constprop.0+0x20e`
/// is `ip_rcv_finish_core`): compilers suffix the copies they make.
pub fn function(location: &str) -> &str {
    let f = location.split('+').next().unwrap_or_default();
    f.split('.').next().unwrap_or(f)
}

/// The reason `d` must have had, given where it was freed. `egress_mtu`
/// is the MTU of the device a forwarded packet was routed to.
pub fn infer(d: &DropRecord, egress_mtu: Option<u32>) -> Option<Reason> {
    match function(&d.location) {
        // Its only free is of the packets queued for a failed neighbour.
        "neigh_invalidate" => Some(Reason::NEIGH_FAILED),
        // NF_DROP is the only verdict nf_hook_slow frees for.
        "nf_hook_slow" => Some(Reason::NETFILTER_DROP),
        // Its only free is of a packet the backlog has no room for.
        "enqueue_to_backlog" => Some(Reason::CPU_BACKLOG),
        // Its only free is under `no_route`.
        "__ip_queue_xmit" => Some(Reason::IP_OUTNOROUTES),
        "ip_forward" | "ip6_forward" => too_big(d, egress_mtu).then_some(Reason::PKT_TOO_BIG),
        "ip_rcv_finish_core" => reverse_path_elsewhere(d).then_some(Reason::IP_RPFILTER),
        "ip_error" => d
            .route
            .as_ref()
            .is_some_and(|r| r.err == ENETUNREACH)
            .then_some(Reason::IP_INNOROUTES),
        _ => None,
    }
}

/// The reason of a drop the kernel frees without one although its place
/// says why: IPv6 frees the packets queued for a failed neighbour with a
/// plain kfree_skb (ndisc_error_report), where IPv4 says NEIGH_FAILED,
/// and neigh_invalidate frees nothing else.
pub fn unnamed(d: &DropRecord) -> Option<Reason> {
    (d.reason == Reason::NOT_SPECIFIED && function(&d.location) == "neigh_invalidate")
        .then_some(Reason::NEIGH_FAILED)
}

/// The packet (one segment of a GSO packet) is larger than the device its
/// forward route leaves by.
fn too_big(d: &DropRecord, egress_mtu: Option<u32>) -> bool {
    let mtu = match &d.route {
        Some(r) if r.err == 0 && r.mtu > 0 => r.mtu,
        _ => egress_mtu.unwrap_or(0),
    };
    mtu > 0 && d.wire_size() > mtu
}

/// The kernel's reverse-path lookup for the source resolved to another
/// device than the one the packet came in on: what strict rp_filter drops.
fn reverse_path_elsewhere(d: &DropRecord) -> bool {
    let Some(r) = &d.reverse_route else {
        return false;
    };
    d.ingress_ifindex != 0 && r.err == 0 && r.ifindex != 0 && r.ifindex != d.ingress_ifindex
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::record::RouteRecord;

    fn route(ifindex: i32, mtu: u32, err: i32) -> Option<RouteRecord> {
        Some(RouteRecord {
            age_ns: 0,
            table: 254,
            err,
            iif: 1,
            oif: 0,
            ifindex,
            ifname: None,
            mtu,
            dst: None,
            src: None,
            sport: 0,
            dport: 0,
        })
    }

    #[test]
    fn single_path_functions_name_their_reason() {
        let d = DropRecord::sample("neigh_invalidate+0x8c");
        assert_eq!(infer(&d, None), Some(Reason::NEIGH_FAILED));
        // IPv6's queued packets, freed with no reason at the same place.
        let mut d = DropRecord::sample("neigh_invalidate+0x7e");
        d.reason = Reason::NOT_SPECIFIED;
        assert_eq!(unnamed(&d), Some(Reason::NEIGH_FAILED));
        d.location = "ip6_mc_input+0x1e0".into();
        assert_eq!(unnamed(&d), None);
        let d = DropRecord::sample("enqueue_to_backlog+0x1a3");
        assert_eq!(infer(&d, None), Some(Reason::CPU_BACKLOG));
        let d = DropRecord::sample("nf_hook_slow+0x91");
        assert_eq!(infer(&d, None), Some(Reason::NETFILTER_DROP));
        // Ambiguous functions stay unknown without evidence.
        assert_eq!(infer(&DropRecord::sample("tcp_v4_rcv+0x91"), None), None);
        assert_eq!(infer(&DropRecord::sample("ip_forward+0x2c0"), None), None);
        assert_eq!(
            infer(&DropRecord::sample("ip_rcv_finish_core+0x25b"), None),
            None
        );
        assert_eq!(infer(&DropRecord::sample("ip_error+0x40"), None), None);
    }

    #[test]
    fn compiler_suffixes_are_the_same_function() {
        let mut d = DropRecord::sample("ip_rcv_finish_core.constprop.0+0x20e");
        d.reverse_route = route(5, 1500, 0);
        assert_eq!(infer(&d, None), Some(Reason::IP_RPFILTER));
        assert_eq!(function("neigh_invalidate.isra.0+0x8"), "neigh_invalidate");
    }

    #[test]
    fn too_big_without_a_lookup_uses_the_routing_tables_egress() {
        let mut d = DropRecord::sample("ip_forward+0x1b9");
        d.len = 1478;
        assert_eq!(infer(&d, Some(1400)), Some(Reason::PKT_TOO_BIG));
        assert_eq!(infer(&d, Some(1500)), None);
    }

    #[test]
    fn rp_filter_needs_the_reverse_lookup_elsewhere() {
        let mut d = DropRecord::sample("ip_rcv_finish_core+0x25b");
        d.reverse_route = route(5, 1500, 0); // docker0, not eth0 (2)
        assert_eq!(infer(&d, None), Some(Reason::IP_RPFILTER));
        d.reverse_route = route(2, 1500, 0); // back out the way it came
        assert_eq!(infer(&d, None), None);
        d.reverse_route = route(5, 1500, -101);
        assert_eq!(infer(&d, None), None);
    }

    #[test]
    fn too_big_compares_one_segment_with_the_egress_mtu() {
        let mut d = DropRecord::sample("ip_forward+0x2c0");
        // GSO: 5 segments of 1448 plus 52 bytes of headers = 1500 each.
        d.len = 7292;
        d.gso_size = 1448;
        d.gso_segs = 5;
        d.route = route(3, 1450, 0);
        assert_eq!(infer(&d, None), Some(Reason::PKT_TOO_BIG));
        d.route = route(3, 1500, 0);
        assert_eq!(infer(&d, None), None, "a 1500-byte segment fits 1500");
        let mut d = DropRecord::sample("ip6_forward+0x6e0");
        d.len = 1280;
        d.route = route(3, 1400, 0);
        assert_eq!(infer(&d, None), None);
        d.len = 1500;
        assert_eq!(infer(&d, None), Some(Reason::PKT_TOO_BIG));
    }

    #[test]
    fn no_route_comes_from_the_lookup_error() {
        let mut d = DropRecord::sample("ip_error+0x40");
        d.route = route(0, 0, ENETUNREACH);
        assert_eq!(infer(&d, None), Some(Reason::IP_INNOROUTES));
        d.route = route(0, 0, -113);
        assert_eq!(infer(&d, None), None);
    }
}
