//! `asymmetric_route`: a reply lost on one device (`NEIGH_FAILED`, e.g. on
//! a bridge) while the peer's packets arrive on another (the kernel's
//! input-route lookup joined to the drop, or earlier drops from that
//! peer), with the peer asked for on-link on the egress device.

use super::ctx::{Ctx, Finding};
use super::fix::{bridge_fixes, net, route_via};
use super::rpfilter_route_conflict::ROUTE_JOIN_MAX_AGE_NS;
use super::{Fact, Rule, Tier};
use crate::event::DropRecord;
use crate::topology::{Link, NsTopology};
use serde_json::json;

pub struct AsymmetricRoute;

/// The device the peer's traffic arrives on, when it is not the one the
/// failed reply left by and the peer was asked for on-link there; None
/// when the drop shows no asymmetry (then it is `neighbor_unreachable`).
pub(super) fn peer_arrives_elsewhere(
    d: &DropRecord,
    cx: &mut Ctx,
    topo: &NsTopology,
) -> Option<Link> {
    let peer = d.dst?;
    let egress = d.ifindex;
    // Where the peer's packets came in: the kernel's input-route lookup
    // for peer -> us (joined as this drop's reverse route), else drops
    // seen earlier from that peer.
    let in_if = d
        .reverse_route
        .as_ref()
        .filter(|r| r.err == 0 && r.age_ns.unsigned_abs() < ROUTE_JOIN_MAX_AGE_NS)
        .map(|r| r.iif)
        .filter(|i| *i > 1)
        .or_else(|| cx.obs.ingress_of_peer.get(&(d.netns, peer)).copied())
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

impl Rule for AsymmetricRoute {
    fn on_fact(&mut self, fact: &Fact, cx: &mut Ctx) {
        let Fact::Drop(d) = fact else { return };
        if d.reason != "NEIGH_FAILED" {
            return;
        }
        let (Some(peer), Some(topo)) = (d.dst, cx.topo(d.netns)) else {
            return;
        };
        let egress = d.ifindex;
        let Some(out_link) = topo.link(egress).cloned() else {
            return;
        };
        let Some(in_link) = peer_arrives_elsewhere(d, cx, &topo) else {
            return;
        };
        let key = format!("asym/{}/{}/{}", d.netns, in_link.ifindex, egress);
        cx.tally(&key, d.ts_ns);
        let hint = cx.ns_hint(d.netns);
        let prefix = topo
            .prefix_on(egress, peer)
            .map(net)
            .unwrap_or_else(|| peer.to_string());
        let bridge = topo.is_bridge(egress);
        let summary = format!(
            "Traffic from {peer} arrives on {} but the replies are routed out {}{} ({prefix}), where {peer} never answers ARP/ND: they are dropped when the neighbour fails{}.",
            in_link.name,
            if bridge { "bridge " } else { "" },
            out_link.name,
            if bridge {
                "; the peer's network overlaps the bridge subnet"
            } else {
                ""
            }
        );
        let fix = if bridge {
            bridge_fixes(&topo, &out_link.name, &prefix, peer, &hint, in_link.ifindex)
        } else {
            vec![format!(
                "Route {peer} back out {}, where it arrives: {hint}ip route add {peer}/32 {}",
                in_link.name,
                route_via(&topo, in_link.ifindex)
            )]
        };
        let evidence = json!({
            "ingress_ifname": in_link.name,
            "egress_ifname": out_link.name,
            "peer": peer,
            "egress_prefix": prefix,
            "bridge": bridge,
            "local": d.src,
            "reason": d.reason,
            "neighbor_states": cx.obs.neigh.get(&(d.netns, egress, peer)),
            "route_from_kernel": d.route.is_some(),
        });
        cx.conclude(Finding {
            key,
            kind: "asymmetric_route",
            tier: Tier::Proven,
            netns: d.netns,
            summary,
            evidence,
            fix,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{Fact, Tier};

    fn host() -> Fake {
        Fake::with(vec![topo(
            NS,
            None,
            vec![
                link(2, "eth0", None, 1500),
                link(3, "docker0", Some("bridge"), 1500),
            ],
            vec![
                route("0.0.0.0", 0, 2, Some("10.99.0.1")),
                route("172.17.0.0", 16, 3, None),
            ],
        )])
    }

    fn synack_lost(with_input_route: bool) -> Fact {
        let mut d = tcp(
            drop("NEIGH_FAILED", 3_000_000_000),
            "10.99.0.2",
            8080,
            "172.17.5.5",
            40000,
        );
        d.ifindex = 3;
        if with_input_route {
            let mut r = lookup(2, "eth0", 1500, 0);
            r.iif = 2;
            d.reverse_route = Some(r);
        }
        Fact::Drop(d)
    }

    #[test]
    fn reply_into_the_bridge_while_the_peer_uses_the_uplink() {
        let v = run(&mut host(), vec![synack_lost(true)], 0);
        assert_eq!(kinds(&v), [("asymmetric_route", Tier::Proven)]);
        assert_eq!(v[0].evidence["ingress_ifname"], "eth0");
        assert_eq!(v[0].evidence["egress_ifname"], "docker0");
    }

    #[test]
    fn earlier_drops_from_the_peer_also_show_where_it_arrives() {
        let mut early = tcp(
            drop("NOT_SPECIFIED", 1_000),
            "172.17.5.5",
            40000,
            "10.99.0.2",
            8080,
        );
        early.ingress_ifindex = 2;
        let v = run(&mut host(), vec![Fact::Drop(early), synack_lost(false)], 0);
        assert_eq!(kinds(&v), [("asymmetric_route", Tier::Proven)]);
    }
}
