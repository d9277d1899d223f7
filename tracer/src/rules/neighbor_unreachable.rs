//! `neighbor_unreachable`: `NEIGH_FAILED` with no sign of asymmetric
//! routing (that case is `asymmetric_route`): the next hop does not
//! answer ARP/ND.

use super::ctx::{Ctx, Finding};
use super::facts::arrivals::neighbor_arrives_elsewhere;
use super::facts::bridge::blocked_port_behind;
use super::fix::{q, Fix};
use super::key::Key;
use super::{Fact, Rule, Tier};
use crate::events::reason::Reason;
use serde_json::json;

pub struct NeighborUnreachable;

impl Rule for NeighborUnreachable {
    fn kinds(&self) -> &'static [&'static str] {
        &["neighbor_unreachable"]
    }

    fn on_fact(&mut self, fact: &Fact, cx: &mut Ctx) {
        let Fact::Drop(d) = fact else { return };
        if d.reason != Reason::NEIGH_FAILED {
            return;
        }
        let (Some(peer), Some(topo)) = (d.dst, cx.topo(d.netns)) else {
            return;
        };
        let egress = d.ifindex;
        let Some(out_link) = topo.link(egress).cloned() else {
            return;
        };
        // A peer that arrives from elsewhere (outside the bridge) is not
        // a silent neighbour: that is asymmetric_route's verdict.
        if neighbor_arrives_elsewhere(d, cx.obs, &topo) {
            return;
        }
        // The neighbour is there but its reverse-path check ignores our
        // ARP: rpfilter_route_conflict's verdict, where it ignores it.
        if cx.arp_rejected(d).is_some() {
            return;
        }
        // A bridge port that does not forward on the way (its own verdict,
        // bridge_port_blocked) silences the peer as well as a dead one.
        let peer_topo = out_link.peer_netns.and_then(|n| cx.topo(n));
        if blocked_port_behind(cx.obs, &topo, peer_topo.as_deref(), &out_link).is_some() {
            return;
        }
        let key = Key::NeighborUnreachable {
            netns: d.netns,
            egress,
            peer,
        };
        cx.tally(&key, d.ts_ns);
        let hint = cx.ns_hint(d.netns);
        let gw = topo.route_to(peer).and_then(|r| r.gateway);
        let neighbour = gw.unwrap_or(peer);
        let summary = format!(
            "Packets to {peer} are dropped on {}: neighbour {neighbour} does not answer ARP/ND.",
            out_link.name
        );
        // Checks, not changes: what heals depends on why the peer is
        // silent, which these facts do not show.
        let fix = vec![
            Fix::advice(format!(
                "Check that {neighbour} is up and on {}'s link: {hint}ip neigh show dev {}",
                out_link.name,
                q(&out_link.name)
            )),
            Fix::advice(format!(
                "If {peer} should not be reached through {}, fix the route: {hint}ip route get {peer}",
                out_link.name
            )),
        ];
        let evidence = json!({
            "ifname": out_link.name,
            "neighbor": neighbour,
            "dst": peer,
            "neighbor_states": cx.obs.neigh.get(&(d.netns, egress, neighbour)),
        });
        cx.conclude(Finding {
            key,
            kind: "neighbor_unreachable",
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

    #[test]
    fn a_silent_neighbour_without_asymmetry() {
        let mut src = Fake::with(vec![topo(
            NS,
            Some("router"),
            vec![link(2, "eth0", None, 1500), link(3, "eth1", None, 1500)],
            vec![route("10.2.0.0", 24, 3, None)],
        )]);
        let mut d = drop(Reason::NEIGH_FAILED, 1_000);
        d.ifindex = 3;
        d.dst = Some(ip("10.2.0.77"));
        let v = run(&mut src, vec![Fact::Drop(d)], 0);
        assert_eq!(kinds(&v), [("neighbor_unreachable", Tier::Proven)]);
        assert_eq!(v[0].evidence["neighbor"], "10.2.0.77");
        assert!(v[0].fix[0].contains("ip netns exec router ip neigh show dev eth1"));
    }
}
