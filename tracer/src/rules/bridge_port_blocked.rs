//! `bridge_port_blocked`: a bridge drops what arrives on a port because
//! of the port's STP state (`BRIDGE_INGRESS_STP_STATE`): the port is
//! listening, learning, blocking or disabled, not forwarding. Whatever
//! the host behind that port sends dies there, its ARP replies included,
//! so the hosts on the other ports see a silent neighbour.
//!
//! Tier: proven. The kernel names the reason and the port. The state is
//! the one netlink gives for the port (`IFLA_BRPORT_STATE`), and the
//! fix depends on who sets it: with STP off on the bridge a user (or a
//! tool) set it and setting it to forwarding heals; with STP on, STP set
//! it (a loop, or a port still in its forward delay), and forcing it
//! would open the loop STP closed.

use super::ctx::{Ctx, Finding};
use super::facts::bridge::stp_blocked_port;
use super::fix::{q, Fix};
use super::key::Key;
use super::{Fact, Rule, Tier};
use crate::host::topology::{brport_state_name, BR_STATE_FORWARDING};
use serde_json::json;

pub struct BridgePortBlocked;

impl Rule for BridgePortBlocked {
    fn kinds(&self) -> &'static [&'static str] {
        &["bridge_port_blocked"]
    }

    fn on_fact(&mut self, fact: &Fact, cx: &mut Ctx) {
        let Fact::Drop(d) = fact else { return };
        let Some(port_if) = stp_blocked_port(d) else {
            return;
        };
        let key = Key::BridgePortBlocked {
            netns: d.netns,
            port: port_if,
        };
        cx.tally(&key, d.ts_ns);
        if cx.concluded(&key).is_some() {
            return;
        }
        let topo = cx.topo(d.netns);
        let port = topo.as_ref().and_then(|t| t.link(port_if).cloned());
        let port_name = port
            .as_ref()
            .map(|l| l.name.clone())
            .or_else(|| d.ingress_ifname.clone())
            .or_else(|| d.ifname.clone())
            .unwrap_or_else(|| format!("if{port_if}"));
        let bridge = port
            .as_ref()
            .and_then(|p| p.master)
            .and_then(|b| topo.as_ref().and_then(|t| t.link(b).cloned()));
        let bridge_name = bridge.as_ref().map(|b| b.name.clone());
        let state = port.as_ref().and_then(|p| p.brport_state);
        let stp = bridge.as_ref().and_then(|b| b.bridge_stp);
        let state_text = match state {
            Some(s) => format!("in STP state {}", brport_state_name(s)),
            None => "not forwarding".to_string(),
        };
        let on = bridge_name
            .as_deref()
            .map_or(String::new(), |b| format!("Bridge {b} "));
        let summary = format!(
            "{on}drops every frame arriving on its port {port_name}: the port is {state_text}, so the hosts behind it cannot be reached and their replies (ARP included) are lost ({}).",
            d.reason
        );
        let hint = cx.ns_hint(d.netns);
        let show = format!("{hint}bridge link show dev {}", q(&port_name));
        let fix = if stp.is_some_and(|s| s != 0) {
            // STP owns the state: forcing it would undo what STP decided.
            vec![
                Fix::advice(format!(
                    "STP runs on {} and set {port_name} so: a loop through this port, or a port still in its forward delay. Find the loop (or wait forward_delay) rather than force the state: {show}",
                    bridge_name.as_deref().unwrap_or("the bridge")
                )),
            ]
        } else {
            let set = format!(
                "{hint}bridge link set dev {} state {BR_STATE_FORWARDING}",
                q(&port_name)
            );
            vec![
                Fix::run(
                    format!(
                        "STP is off, so the state was set by hand or by a tool: let the port forward: {set}"
                    ),
                    vec![set],
                ),
                Fix::advice(format!("See every port's state: {show}")),
            ]
        };
        let evidence = json!({
            "reason": d.reason,
            "bridge": bridge_name,
            "port": port_name,
            "port_ifindex": port_if,
            "stp_state": state.map(brport_state_name),
            "stp_state_value": state,
            "bridge_stp": stp,
            "src": d.src,
            "dst": d.dst,
            "proto": d.proto,
            "arp": d.arp,
        });
        cx.conclude(Finding {
            key,
            kind: "bridge_port_blocked",
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

    const SW: u32 = 4026532077;

    /// Switch namespace `sw`: bridge vbr3 with ports q1 (forwarding) and
    /// q2 (learning); a host namespace whose wire0 is q1's veth peer.
    fn lab(stp: u32) -> Fake {
        let mut br = link(5, "vbr3", Some("bridge"), 1500);
        br.bridge_stp = Some(stp);
        let mut q1 = link(6, "q1", Some("veth"), 1500);
        q1.master = Some(5);
        q1.brport_state = Some(3);
        let mut q2 = link(7, "q2", Some("veth"), 1500);
        q2.master = Some(5);
        q2.brport_state = Some(2);
        let mut wire = link(2, "wire0", Some("veth"), 1500);
        wire.link = Some(6);
        wire.peer_netns = Some(SW);
        wire.addrs.push((ip("10.88.14.1"), 24));
        Fake::with(vec![
            topo(SW, Some("sw"), vec![br, q1, q2], vec![]),
            topo(
                NS,
                Some("hosta"),
                vec![wire],
                vec![route("10.88.14.0", 24, 2, None)],
            ),
        ])
    }

    fn stp_drop(ts: u64) -> Fact {
        let mut d = drop(Reason::BRIDGE_INGRESS_STP_STATE, ts);
        d.netns = SW;
        d.ingress_ifindex = 7;
        d.ifindex = 7;
        d.src = Some(ip("10.88.14.2"));
        Fact::Drop(d)
    }

    fn neigh_failed(ts: u64) -> Fact {
        let mut d = drop(Reason::NEIGH_FAILED, ts);
        d.ifindex = 2;
        d.dst = Some(ip("10.88.14.2"));
        Fact::Drop(d)
    }

    #[test]
    fn an_stp_drop_names_the_port_its_state_and_the_command() {
        let v = run(&mut lab(0), vec![stp_drop(1_000), stp_drop(2_000)], 0);
        assert_eq!(kinds(&v), [("bridge_port_blocked", Tier::Proven)]);
        let e = &v[0].evidence;
        assert_eq!(e["bridge"], "vbr3");
        assert_eq!(e["port"], "q2");
        assert_eq!(e["stp_state"], "learning");
        assert_eq!(
            v[0].fix_commands[0],
            ["ip netns exec sw bridge link set dev q2 state 3"]
        );
        assert_eq!(v[0].drops, 2);
    }

    #[test]
    fn with_stp_on_the_state_is_not_forced() {
        let v = run(&mut lab(1), vec![stp_drop(1_000)], 0);
        assert_eq!(kinds(&v), [("bridge_port_blocked", Tier::Proven)]);
        assert!(v[0].fix_commands.iter().all(|c| c.is_empty()));
        assert!(v[0].fix[0].contains("STP runs on vbr3"), "{:?}", v[0].fix);
    }

    /// Issue 21, 8b: the peer behind the blocked port is not blamed,
    /// whether its frames were seen dropped first or not at all (the
    /// port's state alone says the segment is cut).
    #[test]
    fn a_blocked_port_on_the_segment_is_not_a_silent_neighbour() {
        let v = run(&mut lab(0), vec![stp_drop(1_000), neigh_failed(2_000)], 0);
        assert_eq!(kinds(&v), [("bridge_port_blocked", Tier::Proven)]);
        let v = run(&mut lab(0), vec![neigh_failed(2_000)], 0);
        assert!(v.is_empty(), "{v:?}");
    }

    /// The control: every port forwarding, the neighbour is blamed.
    #[test]
    fn with_every_port_forwarding_the_neighbour_is_blamed() {
        let mut src = lab(0);
        let sw = src.topo.get_mut(&SW).unwrap();
        std::sync::Arc::make_mut(sw).links[2].brport_state = Some(3);
        let v = run(&mut src, vec![neigh_failed(2_000)], 0);
        assert_eq!(kinds(&v), [("neighbor_unreachable", Tier::Proven)]);
    }
}
