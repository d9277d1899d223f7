//! Drop reasons for kernels that report none (before 5.17).
//!
//! `kfree_skb` then carries only its caller. A caller's name alone rarely
//! proves why (`ip_forward` frees for TTL, policy and size alike), so a
//! reason is inferred only where the function has a single drop path, or
//! where the facts joined to the drop leave no doubt: its size against the
//! route's egress MTU, or the route lookups rp_filter itself made. Anything
//! else stays unknown. Records say `reason_source: "location"` for these.

use crate::event::DropRecord;

/// ENETUNREACH as fib lookups return it (negated).
const ENETUNREACH: i32 = -101;

/// The reason `d` must have had, given where it was freed.
pub fn infer(d: &DropRecord) -> Option<&'static str> {
    let func = d.location.split('+').next().unwrap_or_default();
    match func {
        // Its only free is of the packets queued for a failed neighbour.
        "neigh_invalidate" => Some("NEIGH_FAILED"),
        // NF_DROP is the only verdict nf_hook_slow frees for.
        "nf_hook_slow" => Some("NETFILTER_DROP"),
        // Its only free is under `no_route`.
        "__ip_queue_xmit" => Some("IP_OUTNOROUTES"),
        "ip_forward" | "ip6_forward" => too_big(d).then_some("PKT_TOO_BIG"),
        "ip_rcv_finish_core" => reverse_path_elsewhere(d).then_some("IP_RPFILTER"),
        "ip_error" => d
            .route
            .as_ref()
            .is_some_and(|r| r.err == ENETUNREACH)
            .then_some("IP_INNOROUTES"),
        _ => None,
    }
}

/// The packet (one segment of a GSO packet) is larger than the device its
/// forward route leaves by.
fn too_big(d: &DropRecord) -> bool {
    let Some(r) = &d.route else { return false };
    r.err == 0 && r.mtu > 0 && d.wire_size() > r.mtu
}

/// The kernel's reverse-path lookup for the source resolved to another
/// device than the one the packet came in on: what strict rp_filter drops.
fn reverse_path_elsewhere(d: &DropRecord) -> bool {
    let Some(r) = &d.reverse_route else {
        return false;
    };
    d.ingress_ifindex != 0 && r.err == 0 && r.ifindex != 0 && r.ifindex != d.ingress_ifindex
}
