//! `l2_mtu_mismatch`: a frame longer than the MTU of the device that must
//! take it: the veth peer (found in its own netns) or a bridge port. The
//! kernel drops it as `NOT_SPECIFIED`, silently: no ICMP, no error.

use super::ctx::{Ctx, Finding};
use super::fix::{q, Fix};
use super::key::Key;
use super::{Fact, Rule, Tier};
use crate::events::reason::Reason;
use serde_json::json;

pub struct L2MtuMismatch;

impl Rule for L2MtuMismatch {
    fn kinds(&self) -> &'static [&'static str] {
        &["l2_mtu_mismatch"]
    }

    fn on_fact(&mut self, fact: &Fact, cx: &mut Ctx) {
        let Fact::Drop(d) = fact else { return };
        // GSO packets are segmented later; their length says nothing.
        if d.reason != Reason::NOT_SPECIFIED || d.gso_size > 0 || d.ifindex <= 0 {
            return;
        }
        let Some(topo) = cx.topo(d.netns) else {
            return;
        };
        let Some(link) = topo.link(d.ifindex).cloned() else {
            return;
        };
        // A bridge port narrower than the frame the bridge hands it (the
        // port may itself be a veth: the port is what drops it); else a
        // veth whose peer, in its own netns, is narrower.
        let bridge = link
            .master
            .and_then(|m| topo.link(m))
            .filter(|b| b.kind.as_deref() == Some("bridge"))
            .filter(|_| d.len > link.mtu + 18);
        let veth = bridge.is_none() && link.kind.as_deref() == Some("veth");
        let (sender, sender_mtu, peer_name, peer_mtu, peer_ns) = if let Some(b) = bridge {
            // A bridge's own MTU follows its narrowest port unless set by
            // hand; the frame's size comes from the port it entered by.
            let in_mtu = topo.link(d.ingress_ifindex).map(|l| l.mtu).unwrap_or(0);
            (
                b.name.clone(),
                b.mtu.max(in_mtu),
                link.name.clone(),
                link.mtu,
                d.netns,
            )
        } else if veth {
            match cx.veth_peer(d.netns, d.ifindex) {
                Some((ns, p)) => (link.name.clone(), link.mtu, p.name, p.mtu, ns),
                None => return,
            }
        } else {
            return;
        };
        // The frame still carries its Ethernet header here, and the kernel
        // allows a VLAN tag on top (is_skb_forwardable: mtu + 14 + 4).
        if d.len <= peer_mtu + 18 || (veth && sender_mtu <= peer_mtu) {
            return;
        }
        let key = Key::L2MtuMismatch {
            netns: d.netns,
            ifindex: d.ifindex,
        };
        cx.tally(&key, d.ts_ns);
        let peer_ip = cx.ip_cmd(peer_ns);
        let summary = format!(
            "Frames of {} bytes leave {sender} (MTU {sender_mtu}) but {peer_name} {} has MTU {peer_mtu}: the kernel drops them silently, no ICMP, no error to the sender.",
            d.len,
            if veth { "on the other side" } else { "(a port of that bridge)" }
        );
        // Both ends end up equal either way: raising the peer to the
        // sender's MTU, or (on a veth, whose two ends are the whole link)
        // lowering the sender to the peer's.
        let raise = format!("{peer_ip}link set dev {} mtu {sender_mtu}", q(&peer_name));
        let fix = vec![
            Fix::run(format!("Give both the same MTU: {raise}"), vec![raise]),
            if veth {
                let lower = format!(
                    "{}link set dev {} mtu {peer_mtu}",
                    cx.ip_cmd(d.netns),
                    q(&sender)
                );
                Fix::run(format!("or lower the sender: {lower}"), vec![lower])
            } else {
                Fix::advice(format!(
                    "or lower the MTU of every device that feeds {sender} to {peer_mtu}"
                ))
            },
        ];
        let evidence = json!({
            "ifname": sender,
            "mtu": sender_mtu,
            "peer_ifname": peer_name,
            "peer_mtu": peer_mtu,
            "peer_netns": peer_ns,
            "frame_len": d.len,
            "location": d.location,
        });
        cx.conclude(Finding {
            key,
            kind: "l2_mtu_mismatch",
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
    fn a_frame_too_long_for_the_veth_peer() {
        const PEER_NS: u32 = NS + 1;
        let mut a = link(2, "eth0", Some("veth"), 1500);
        a.link = Some(7);
        a.peer_netns = Some(PEER_NS);
        let mut src = Fake::with(vec![
            topo(NS, Some("a"), vec![a], vec![]),
            topo(
                PEER_NS,
                Some("b"),
                vec![link(7, "eth0", Some("veth"), 1400)],
                vec![],
            ),
        ]);
        let mut d = drop(Reason::NOT_SPECIFIED, 1_000);
        d.ifindex = 2;
        d.len = 1492;
        let small = {
            let mut s = d.clone();
            s.len = 100;
            s
        };
        let v = run(&mut src, vec![Fact::Drop(small), Fact::Drop(d)], 0);
        assert_eq!(kinds(&v), [("l2_mtu_mismatch", Tier::Proven)]);
        assert_eq!(v[0].evidence["peer_mtu"], 1400);
        assert!(
            v[0].fix[0].starts_with("Give both the same MTU: ip -n b link set dev eth0 mtu 1500")
        );
    }
}
