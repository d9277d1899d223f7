//! `tunnel_mtu`: a tunnel device (VXLAN, Geneve, GRE, gretap, IPIP, SIT)
//! whose MTU leaves no room for its encapsulation over the underlay. A
//! packet that fits the tunnel grows by the overhead (outer IP, and UDP,
//! the tunnel header and the inner Ethernet header, or GRE's 4 to 16
//! bytes, or nothing more for IPIP) and no longer fits the underlay
//! device; with the outer DF bit set (`df set`, GRE's and IPIP's default
//! path MTU discovery, or inherited), the kernel drops the outer packet
//! where it would fragment it (`ip_fragment`, reason `NOT_SPECIFIED`;
//! `PKT_TOO_BIG` over IPv6). Inner packets with DF set
//! are turned back at the tunnel with an ICMP instead (and freed as
//! consumed, not dropped): what is dropped here is what the sender did
//! not size itself (UDP, fragments allowed, frames bridged into the
//! tunnel).
//!
//! Tier: proven. The drop is an outer packet of the tunnel's protocol
//! (to its port, for UDP), from or to its endpoints, longer than the
//! device it leaves by; the tunnel MTU that fits is that device's MTU
//! minus the overhead. A GRE or IPIP device without a far end (the
//! `gre0`, `tunl0` and `sit0` every namespace gets with the module, or
//! one fed by routes) is never taken for the one that sent it.

use super::ctx::{Ctx, Finding};
use super::fix::{q, Fix};
use super::key::Key;
use super::{Fact, Rule, Tier};
use crate::events::reason::Reason;
use crate::events::record::{DropRecord, Proto};
use crate::host::topology::Link;
use serde_json::json;

pub struct TunnelMtu;

/// An outer packet too big for the device it left by: where the kernel
/// fragments (and drops what it may not fragment), or an IPv6 too-big.
fn outer_too_big(d: &DropRecord) -> bool {
    let at_fragment =
        d.location.starts_with("ip_fragment") || d.location.starts_with("ip6_fragment");
    let len = d.ip_len.unwrap_or(d.len);
    (at_fragment || d.reason == Reason::PKT_TOO_BIG) && d.mtu > 0 && len > d.mtu
}

/// The tunnel device of `links` whose outer packets `d` is: its port,
/// and its endpoints where it has them.
fn tunnel_of<'a>(links: &'a [Link], d: &DropRecord) -> Option<&'a Link> {
    let proto = d.proto?.number();
    links.iter().find(|l| {
        l.tunnel.as_ref().is_some_and(|t| {
            let udp = t.proto == Proto::Udp.number();
            t.proto == proto
                && (if udp {
                    d.dport == Some(t.port)
                } else {
                    t.remote.is_some()
                })
                && t.remote
                    .is_none_or(|r| Some(r) == d.dst || r.is_multicast())
                && t.local.is_none_or(|a| Some(a) == d.src)
        })
    })
}

impl Rule for TunnelMtu {
    fn kinds(&self) -> &'static [&'static str] {
        &["tunnel_mtu"]
    }

    fn on_fact(&mut self, fact: &Fact, cx: &mut Ctx) {
        let Fact::Drop(d) = fact else { return };
        if !outer_too_big(d) {
            return;
        }
        let Some(topo) = cx.topo(d.netns) else { return };
        let Some(tun) = tunnel_of(&topo.links, d).cloned() else {
            return;
        };
        let Some(t) = tun.tunnel.clone() else { return };
        let key = Key::TunnelMtu {
            netns: d.netns,
            tunnel: tun.ifindex,
        };
        cx.tally(&key, d.ts_ns);
        if cx.concluded(&key).is_some() {
            return;
        }
        let v6 = d.dst.is_some_and(|a| a.is_ipv6());
        let overhead = t.overhead(v6);
        let outer_len = d.ip_len.unwrap_or(d.len);
        let under_mtu = d.mtu;
        let under = d
            .ifname
            .clone()
            .or_else(|| topo.link(d.ifindex).map(|l| l.name.clone()))
            .unwrap_or_else(|| format!("if{}", d.ifindex));
        // What fits: the underlay's MTU less the overhead, and never more
        // than this packet shows (Geneve options add to the overhead).
        let excess = outer_len - under_mtu;
        let target = under_mtu
            .saturating_sub(overhead)
            .min(tun.mtu.saturating_sub(excess));
        let kind_name = match tun.kind.as_deref() {
            Some("vxlan") => "VXLAN",
            Some("geneve") => "Geneve",
            Some("gre") => "GRE",
            Some("gretap") => "GRE (gretap)",
            Some("ipip") => "IPIP",
            Some("sit") => "SIT",
            Some(k) => k,
            None => "tunnel",
        };
        let dst = d.dst.map_or_else(|| "?".to_string(), |a| a.to_string());
        let outer = match t.proto {
            17 => format!("UDP packets to {dst}:{}", t.port),
            47 => format!("GRE packets to {dst}"),
            4 => format!("IP-in-IP packets to {dst}"),
            41 => format!("IPv6-in-IPv4 packets to {dst}"),
            n => format!("protocol {n} packets to {dst}"),
        };
        let summary = format!(
            "{kind_name} device {} (MTU {}) leaves no room over its underlay {under} (MTU {under_mtu}): with {overhead} bytes of encapsulation a full packet becomes {} bytes, so the kernel drops the outer {outer} ({outer_len} bytes here, DF set) at {}. {} should be at most {target}.",
            tun.name,
            tun.mtu,
            tun.mtu + overhead,
            d.location,
            tun.name,
        );
        let ip = cx.ip_cmd(d.netns);
        let set = format!("{ip}link set dev {} mtu {target}", q(&tun.name));
        let fix = vec![
            Fix::run(
                format!(
                    "Size the tunnel to its underlay ({under_mtu} - {overhead}): {set}"
                ),
                vec![set],
            ),
            Fix::advice(format!(
                "Size the far end's tunnel the same (the endpoint at {dst}), and what sends into this overlay: a container network's MTU (Docker: the network's com.docker.network.driver.mtu, or \"mtu\" in daemon.json)"
            )),
            Fix::advice(format!(
                "Or, if every hop of the underlay carries it, raise {under}'s MTU to {}",
                tun.mtu + overhead
            )),
        ];
        let evidence = json!({
            "reason": d.reason,
            "location": d.location,
            "tunnel": tun.name,
            "tunnel_kind": tun.kind,
            "tunnel_mtu": tun.mtu,
            "overhead": overhead,
            "df": t.df,
            "underlay": under,
            "underlay_mtu": under_mtu,
            "outer_proto": d.proto,
            "outer_src": d.src,
            "outer_dst": d.dst,
            "outer_sport": d.sport,
            "outer_dport": d.dport,
            "outer_len": outer_len,
            "suggested_mtu": target,
        });
        cx.conclude(Finding {
            key,
            kind: "tunnel_mtu",
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
    use crate::events::record::Proto;
    use crate::host::topology::Tunnel;

    /// gn4 (Geneve, port 6081, 1500) over up9 (1280).
    fn lab() -> Fake {
        let mut gn = link(4, "gn4", Some("geneve"), 1500);
        gn.tunnel = Some(Tunnel {
            remote: Some(ip("10.31.8.2")),
            df: Some("set".into()),
            ..Tunnel::udp(6081)
        });
        Fake::with(vec![topo(
            NS,
            Some("vtep"),
            vec![link(3, "up9", Some("veth"), 1280), gn],
            vec![],
        )])
    }

    fn outer(dport: u16, len: u32, dst: &str) -> Fact {
        let mut d = drop(Reason::NOT_SPECIFIED, 1_000);
        d.location = "ip_fragment.constprop.0+0x84".into();
        d.proto = Some(Proto::Udp);
        d.src = Some(ip("10.31.8.1"));
        d.dst = Some(ip(dst));
        d.sport = Some(51000);
        d.dport = Some(dport);
        d.ifindex = 3;
        d.ifname = Some("up9".into());
        d.mtu = 1280;
        d.len = len;
        d.ip_len = Some(len);
        Fact::Drop(d)
    }

    #[test]
    fn a_geneve_outer_packet_too_big_sizes_the_tunnel() {
        let v = run(&mut lab(), vec![outer(6081, 1550, "10.31.8.2")], 0);
        assert_eq!(kinds(&v), [("tunnel_mtu", Tier::Proven)]);
        assert_eq!(v[0].evidence["suggested_mtu"], 1230);
        assert_eq!(
            v[0].fix_commands[0],
            ["ip -n vtep link set dev gn4 mtu 1230"]
        );
    }

    /// gr5 (GRE with a key, 1476) over up9 (1280), beside the gre0 every
    /// namespace gets with ip_gre (no far end).
    fn gre_lab() -> Fake {
        let mut fallback = link(2, "gre0", Some("gre"), 1476);
        fallback.tunnel = Tunnel::ip_tunnel("gre", []);
        let key = 0x2000u16.to_be_bytes();
        let remote = [10, 31, 8, 2];
        let mut gr = link(5, "gr5", Some("gre"), 1476);
        gr.tunnel = Tunnel::ip_tunnel("gre", [(3, &key[..]), (7, &remote[..]), (10, &[1][..])]);
        Fake::with(vec![topo(
            NS,
            Some("vtep"),
            vec![fallback, link(3, "up9", Some("veth"), 1280), gr],
            vec![],
        )])
    }

    #[test]
    fn a_gre_outer_packet_too_big_sizes_the_tunnel_with_its_key() {
        let gre = |dst: &str| {
            let Fact::Drop(mut d) = outer(0, 1500, dst) else {
                unreachable!()
            };
            d.proto = Some(Proto::Other(47));
            d.sport = None;
            d.dport = None;
            Fact::Drop(d)
        };
        let v = run(&mut gre_lab(), vec![gre("10.31.8.2")], 0);
        assert_eq!(kinds(&v), [("tunnel_mtu", Tier::Proven)]);
        let e = &v[0].evidence;
        assert_eq!(
            (e["tunnel"].as_str(), e["overhead"].as_u64()),
            (Some("gr5"), Some(28))
        );
        assert_eq!(e["df"], "set");
        assert_eq!(e["suggested_mtu"], 1252);
        assert!(
            v[0].summary.contains("outer GRE packets to 10.31.8.2"),
            "{}",
            v[0].summary
        );
        // Another far end: neither gr5's nor the fallback device's.
        assert!(run(&mut gre_lab(), vec![gre("10.31.8.77")], 0).is_empty());
    }

    /// Another port, or another far end: not this tunnel's packets.
    #[test]
    fn other_udp_is_not_the_tunnels() {
        let facts = vec![
            outer(4789, 1550, "10.31.8.2"),
            outer(6081, 1550, "10.31.8.77"),
        ];
        assert!(run(&mut lab(), facts, 0).is_empty());
    }
}
