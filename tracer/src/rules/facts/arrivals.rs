//! Where a peer's packets arrive, against where the replies to it leave:
//! `asymmetric_route` proves the asymmetry from it, and
//! `neighbor_unreachable` leaves such a peer alone.

use super::reverse_path::kernel_reverse_route;
use super::Observations;
use crate::events::record::DropRecord;
use crate::host::topology::{Link, NsTopology};

/// The device the peer's traffic arrives on, when it is not the one the
/// failed reply (`d`, a `NEIGH_FAILED` drop) left by and the peer was
/// asked for on-link there; None when the drop shows no asymmetry (then
/// it is `neighbor_unreachable`).
pub fn peer_arrives_elsewhere(
    d: &DropRecord,
    obs: &Observations,
    topo: &NsTopology,
) -> Option<Link> {
    let peer = d.dst?;
    let egress = d.ifindex;
    // Where the peer's packets came in: the kernel's input-route lookup
    // for peer -> us (joined as this drop's reverse route), else drops
    // seen earlier from that peer.
    let in_if = kernel_reverse_route(d)
        .filter(|r| r.err == 0)
        .map(|r| r.iif)
        .filter(|i| *i > 1)
        .or_else(|| obs.ingress_of_peer.get(&(d.netns, peer)).copied())
        .filter(|i| *i != egress)?;
    // Asymmetry only explains the loss if the peer itself was asked for
    // on the egress link; behind a gateway the gateway failed.
    let on_link = topo
        .route_to(peer)
        .is_some_and(|r| r.gateway.is_none() && r.oif == Some(egress));
    if !on_link {
        return None;
    }
    topo.link(in_if).cloned()
}

/// The peer of a `NEIGH_FAILED` drop is known to arrive elsewhere: now,
/// from this drop, or earlier, from a neighbour event's arrivals.
pub fn neighbor_arrives_elsewhere(d: &DropRecord, obs: &Observations, topo: &NsTopology) -> bool {
    peer_arrives_elsewhere(d, obs, topo).is_some()
        || d.dst
            .is_some_and(|peer| obs.arrives_elsewhere.contains_key(&(d.netns, peer)))
}
