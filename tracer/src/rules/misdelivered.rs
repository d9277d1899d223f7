//! `misdelivered`: `IP_INADDRERRORS` on a host that does not forward and
//! could not (one layer-3 device, or the destination behind the device
//! the packet came in by), for a destination that is not one of its
//! addresses. The frame was addressed to this host's MAC for someone
//! else's IP: the sender's neighbour entry is stale (the address moved,
//! or the entry was set by hand), or a static route upstream points here.
//! Turning forwarding on would only make a plain host a router, so the
//! fix is on the sender's side.

use super::ctx::{Ctx, Finding};
use super::facts::forwarding::not_forwarded;
use super::fix::{q, Fix};
use super::key::Key;
use super::{Fact, Rule, Tier};
use crate::events::record::DropRecord;
use crate::host::topology::Link;
use serde_json::json;
use std::net::IpAddr;

pub struct Misdelivered;

/// The likely causes, most common first.
const CAUSES: [&str; 3] = [
    "stale neighbour entry on the sender",
    "address moved to another host",
    "wrong static route upstream",
];

/// Where the frame came from, as far as the namespaces traced show it.
struct Sender {
    netns: u32,
    link: Link,
    /// It holds the packet's source address (else it is the last hop).
    holds_src: bool,
}

impl Rule for Misdelivered {
    fn kinds(&self) -> &'static [&'static str] {
        &["misdelivered"]
    }

    fn on_fact(&mut self, fact: &Fact, cx: &mut Ctx) {
        let Fact::Drop(d) = fact else { return };
        // Not forwarded, could not have been, and not ours; else it is
        // `forwarding_disabled`'s, or no fault.
        let Some(nf) =
            not_forwarded(d, |ns| cx.topo(ns)).filter(|nf| !nf.could_forward && !nf.dst_is_local)
        else {
            return;
        };
        let (topo, dst, ingress) = (nf.topo, nf.dst, nf.ingress);
        let key = Key::Misdelivered {
            netns: d.netns,
            dst,
        };
        cx.tally(&key, d.ts_ns);
        let our_mac = topo.link(ingress).and_then(|l| l.mac.clone());
        let sender = find_sender(cx, d, ingress);
        let finding = describe(cx, key, d, dst, our_mac, sender.as_ref());
        cx.conclude(finding);
    }
}

/// The device that holds the source address on the segment behind the
/// ingress device; else the veth peer that handed the frame over (a
/// router's last hop), unless that is a bridge port (then anyone on the
/// bridge may have sent it).
fn find_sender(cx: &mut Ctx, d: &DropRecord, ingress: i32) -> Option<Sender> {
    if let Some((netns, link)) = d.src.and_then(|s| cx.holder_behind(d.netns, ingress, s)) {
        return Some(Sender {
            netns,
            link,
            holds_src: true,
        });
    }
    let (netns, link) = cx.veth_peer(d.netns, ingress)?;
    (link.master.is_none()).then_some(Sender {
        netns,
        link,
        holds_src: false,
    })
}

fn describe(
    cx: &mut Ctx,
    key: Key,
    d: &DropRecord,
    dst: IpAddr,
    our_mac: Option<String>,
    sender: Option<&Sender>,
) -> Finding {
    let ingress = d.ingress_ifname.clone().unwrap_or_else(|| "?".into());
    let src = d.src.map(|a| a.to_string()).unwrap_or_else(|| "?".into());
    let sender_mac = sender.and_then(|s| s.link.mac.clone());
    let from = match &sender_mac {
        Some(m) => format!("from {src}, source MAC {m}"),
        None => format!("from {src}"),
    };
    let summary = format!(
        "{dst} is not an address of this host, yet packets for it arrive on {ingress} ({from}): \
         the sender maps {dst} to this host's MAC (a stale neighbour entry, or the address moved), \
         or a static route upstream sends it here. This host does not forward, so it drops them."
    );
    let sender_ns = match sender {
        Some(s) => cx.netns_name(s.netns),
        None => None,
    };
    let evidence = json!({
        "dst": dst, "src": d.src, "ingress_ifname": d.ingress_ifname,
        "ingress_mac": our_mac, "sender_mac": sender_mac,
        "sender_netns": sender.map(|s| s.netns), "sender_netns_name": sender_ns,
        "sender_ifname": sender.map(|s| s.link.name.clone()),
        "sender_holds_src": sender.map(|s| s.holds_src),
        "dst_is_local": false, "forwarding": 0,
        "likely_causes": CAUSES,
    });
    Finding {
        key,
        kind: "misdelivered",
        tier: Tier::Proven,
        netns: d.netns,
        summary,
        evidence,
        fix: fixes(cx, d, dst, our_mac.as_deref(), sender, &ingress),
    }
}

fn fixes(
    cx: &mut Ctx,
    d: &DropRecord,
    dst: IpAddr,
    our_mac: Option<&str>,
    sender: Option<&Sender>,
    ingress: &str,
) -> Vec<Fix> {
    let points = our_mac
        .map(|m| format!(" (it points at {m}, this host)"))
        .unwrap_or_default();
    let first = match sender {
        Some(s) => {
            let cmd = format!(
                "{}neigh del {dst} dev {}",
                cx.ip_cmd(s.netns),
                q(&s.link.name)
            );
            Fix::run(
                format!("Delete the sender's stale neighbour entry for {dst}{points}, so it resolves {dst} again to whoever holds it now: {cmd}"),
                vec![cmd],
            )
        }
        // The sender is not watched: its device is unknown.
        None => Fix::advice(format!(
            "On the sender of {}, delete its stale neighbour entry for {dst}{points}: ip neigh del {dst} dev <its device towards this link> (ip neigh show {dst} names it)",
            d.src.map(|a| a.to_string()).unwrap_or_else(|| "these packets".into())
        )),
    };
    let hint = cx.ns_hint(d.netns);
    vec![
        first,
        Fix::advice(format!(
            "If a router upstream sends {dst} here, correct its static route. If {dst} should be this host's, add it: {hint}ip addr add {dst}/<prefix length> dev {}; do not turn on forwarding on a host that is not a router",
            q(ingress)
        )),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{Fact, Tier};
    use crate::events::record::Family;
    use crate::events::record::Proto;
    use crate::host::topology::NsTopology;

    /// A one-link host `h-31` holding `addr`, its eth1 a veth whose peer
    /// `snd0` (ifindex 5) lives in namespace `sender-x` (inode 77) with
    /// `peer_addr`.
    fn host_and_sender(addr: &str, len: u8, peer_addr: &str) -> (NsTopology, NsTopology) {
        let mut eth = link(3, "eth1", Some("veth"), 1450);
        eth.addrs = vec![(ip(addr), len)];
        eth.mac = Some("02:aa:00:00:00:03".into());
        (eth.link, eth.peer_netns) = (Some(5), Some(77));
        let net = if addr.contains(':') {
            "fd31::"
        } else {
            "10.31.0.0"
        };
        let host = topo(
            NS,
            Some("h-31"),
            vec![link(1, "lo", None, 65536), eth],
            vec![route(net, len, 3, None)],
        );
        let mut snd = link(5, "snd0", Some("veth"), 1450);
        snd.addrs = vec![(ip(peer_addr), len)];
        snd.mac = Some("02:bb:00:00:00:05".into());
        (snd.link, snd.peer_netns) = (Some(3), Some(NS));
        let sender = topo(
            77,
            Some("sender x"),
            vec![snd],
            vec![route(net, len, 5, None)],
        );
        (host, sender)
    }

    fn misdelivered(src: &str, dst: &str) -> crate::events::record::DropRecord {
        let mut d = drop(Reason::IP_INADDRERRORS, 1_000);
        (d.ifindex, d.ingress_ifindex) = (3, 3);
        d.ingress_ifname = Some("eth1".into());
        d.family = Some(if dst.contains(':') {
            Family::Ipv6
        } else {
            Family::Ipv4
        });
        d.proto = Some(Proto::Udp);
        d.src = Some(ip(src));
        d.dst = Some(ip(dst));
        d
    }

    #[test]
    fn a_plain_host_gets_misdelivered_naming_the_sender() {
        for (addr, len, peer, dst) in [
            ("10.31.0.2", 24, "10.31.0.1", "10.31.0.9"),
            ("fd31::2", 64, "fd31::1", "fd31::9"),
        ] {
            let (h, s) = host_and_sender(addr, len, peer);
            let v = run(
                &mut Fake::with(vec![h, s]),
                vec![Fact::Drop(misdelivered(peer, dst))],
                0,
            );
            assert_eq!(kinds(&v), [("misdelivered", Tier::Proven)], "{dst}");
            let e = &v[0].evidence;
            assert_eq!(e["sender_mac"], "02:bb:00:00:00:05");
            assert_eq!(e["ingress_mac"], "02:aa:00:00:00:03");
            assert_eq!(e["sender_ifname"], "snd0");
            assert!(v[0].summary.contains("not an address of this host"));
            assert_eq!(
                v[0].fix[0].rsplit(": ").next().unwrap(),
                format!("ip -n 'sender x' neigh del {dst} dev snd0")
            );
            assert!(!v.iter().any(|v| v.fix.iter().any(|f| f.contains("sysctl"))));
        }
    }

    #[test]
    fn an_address_of_the_host_or_a_forwarding_host_is_not_misdelivered() {
        let (mut h, s) = host_and_sender("10.31.0.2", 24, "10.31.0.1");
        let d = misdelivered("10.31.0.1", "10.31.0.2");
        let v = run(
            &mut Fake::with(vec![h.clone(), s.clone()]),
            vec![Fact::Drop(d)],
            0,
        );
        assert!(v.is_empty(), "{v:?}");
        h.sysctls.ipv4_forwarding = true;
        let d = misdelivered("10.31.0.1", "10.31.0.9");
        assert!(run(&mut Fake::with(vec![h, s]), vec![Fact::Drop(d)], 0).is_empty());
    }
}
