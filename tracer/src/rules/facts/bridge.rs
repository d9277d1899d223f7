//! Bridge ports that do not forward: `bridge_port_blocked` proves them,
//! and `neighbor_unreachable` leaves alone a peer whose segment has one
//! (the peer may well answer; its answers are what the port drops).

use super::Observations;
use crate::events::reason::Reason;
use crate::events::record::DropRecord;
use crate::host::topology::{Link, NsTopology, BR_STATE_FORWARDING};

/// The bridge port a drop says is closed by its STP state
/// (`BRIDGE_INGRESS_STP_STATE`: a frame arriving on a port that is not
/// learning or forwarding, or only learning).
pub fn stp_blocked_port(d: &DropRecord) -> Option<i32> {
    if d.reason != Reason::BRIDGE_INGRESS_STP_STATE {
        return None;
    }
    let port = if d.ingress_ifindex > 0 {
        d.ingress_ifindex
    } else {
        d.ifindex
    };
    (port > 0).then_some(port)
}

/// A port whose STP state lets no frame through while it is up (the
/// disabled state of a port that is down is that of every down port).
pub fn port_state_blocks(l: &Link) -> bool {
    match l.brport_state {
        Some(0) => l.up,
        Some(s) => s != BR_STATE_FORWARDING,
        None => false,
    }
}

/// A port of the bridge that `egress` of `here` sends into (the bridge
/// itself, or through `egress`'s veth peer, whose namespace is `peer`)
/// that was seen dropping by its STP state or is in a state that does not
/// forward: the bridge's namespace and that port.
pub fn blocked_port_behind(
    obs: &Observations,
    here: &NsTopology,
    peer: Option<&NsTopology>,
    egress: &Link,
) -> Option<(u32, Link)> {
    let (topo, bridge) = if egress.kind.as_deref() == Some("bridge") {
        (here, egress.ifindex)
    } else {
        let peer = if egress.peer_netns == Some(here.inode) {
            here
        } else {
            peer.filter(|p| Some(p.inode) == egress.peer_netns)?
        };
        let other = peer.link(egress.link?)?;
        (peer, other.master?)
    };
    topo.links
        .iter()
        .filter(|l| l.master == Some(bridge))
        .find(|l| obs.blocked_ports.contains_key(&(topo.inode, l.ifindex)) || port_state_blocks(l))
        .map(|l| (topo.inode, l.clone()))
}
