//! `martian_source` and `martian_destination`: IPv4 packets arriving on a
//! device with an address that cannot come from a link. The kernel says
//! which (`IP_LOCALNET`: a loopback source or destination while
//! `route_localnet` is off; `IP_LOCAL_SOURCE`: one of this host's own
//! addresses as the source while `accept_local` is off), so both are
//! proven.
//!
//! A sysctl is offered only where it is the fix: `route_localnet` for a
//! packet addressed (usually by a DNAT) to a loopback address, and
//! `accept_local` for a source held by another device of this host (two
//! of its devices wired together). A loopback source, or this host's
//! address arriving where the host itself holds it, comes from a wrong
//! SNAT, spoofing, a duplicate address or a loop: no knob fixes that.

use super::ctx::{Ctx, Finding};
use super::fix::{conf_arg, q, Fix};
use super::key::Key;
use super::{Fact, Rule, Tier};
use crate::events::reason::Reason;
use serde_json::json;

pub struct Martian;

impl Rule for Martian {
    fn kinds(&self) -> &'static [&'static str] {
        &["martian_source", "martian_destination"]
    }

    fn on_fact(&mut self, fact: &Fact, cx: &mut Ctx) {
        let Fact::Drop(d) = fact else { return };
        let localnet = d.reason == Reason::IP_LOCALNET;
        if !localnet && d.reason != Reason::IP_LOCAL_SOURCE {
            return;
        }
        let (Some(src), Some(dst)) = (d.src, d.dst) else {
            return;
        };
        let ifindex = if d.ingress_ifindex > 0 {
            d.ingress_ifindex
        } else {
            d.ifindex
        };
        // IP_LOCALNET covers both ends; a loopback source is the martian
        // even when the destination is loopback too.
        let is_dst = localnet && !src.is_loopback() && dst.is_loopback();
        let addr = if is_dst { dst } else { src };
        let key = Key::Martian {
            netns: d.netns,
            ifindex,
            addr,
            dst: is_dst,
        };
        cx.tally(&key, d.ts_ns);
        if cx.concluded(&key).is_some() {
            return;
        }
        let dev = d
            .ingress_ifname
            .clone()
            .or_else(|| d.ifname.clone())
            .or_else(|| cx.link(d.netns, ifindex).map(|l| l.name))
            .unwrap_or_else(|| format!("if{ifindex}"));
        let hint = cx.ns_hint(d.netns);
        // Looking is not fixing: advice, with no command to apply.
        let find_sender = Fix::advice(format!(
            "Find the sender (its MAC names it): {hint}tcpdump -eni {} src host {src}",
            q(&dev)
        ));
        // The device of this host that holds the source, if any.
        let holder = cx.topo(d.netns).and_then(|t| {
            t.links
                .iter()
                .find(|l| l.addrs.iter().any(|(a, _)| *a == src))
                .map(|l| (l.ifindex, l.name.clone()))
        });
        let nat = match (d.orig_dst, d.orig_dport) {
            (Some(o), Some(p)) if Some(o) != d.dst => {
                format!(" (a DNAT of what was sent to {o}:{p})")
            }
            (Some(o), None) if Some(o) != d.dst => format!(" (a DNAT of what was sent to {o})"),
            _ => String::new(),
        };
        let (kind, sysctl, summary, fix) = if is_dst {
            let sysctl = "route_localnet";
            (
                "martian_destination",
                Some(sysctl),
                format!(
                    "Packets from {src} arriving on {dev} are addressed to {dst}{nat}: the kernel routes a loopback destination from a link only with {sysctl} on, and it is off."
                ),
                {
                    let cmd = format!("{hint}sysctl -w {}", conf_arg(&dev, sysctl, 1));
                    vec![
                        Fix::run(
                            format!(
                                "If {dst} is where they should go (a service listening on loopback), let the kernel route them: {cmd}"
                            ),
                            vec![cmd],
                        ),
                        Fix::advice(format!(
                            "Or, without opening loopback to {dev}: have the service listen on an address of {dev} and send (DNAT) the traffic there"
                        )),
                    ]
                },
            )
        } else if localnet {
            (
                "martian_source",
                None,
                format!(
                    "Packets arriving on {dev} claim a loopback source, {src}, which no link can carry: the sender rewrites its source wrongly (SNAT), spoofs, or loops. No setting here fixes that."
                ),
                vec![find_sender],
            )
        } else {
            let other = holder
                .as_ref()
                .filter(|(i, name)| *i != ifindex && name != "lo");
            let held = match &holder {
                Some((_, name)) => format!(" (held by {name})"),
                None => String::new(),
            };
            let summary = format!(
                "Packets arriving on {dev} claim {src}, an address of this host{held}, as their source: another host uses the same address, the sender's SNAT uses it, or the packets looped back."
            );
            let mut fix = vec![find_sender];
            let mut sysctl = None;
            if let Some((_, name)) = other {
                let knob = "accept_local";
                sysctl = Some(knob);
                let cmd = format!("{hint}sysctl -w {}", conf_arg(&dev, knob, 1));
                fix.push(Fix::run(
                    format!(
                        "If {name} and {dev} are wired to each other on purpose (this host talking to itself across a link), accept it: {cmd}"
                    ),
                    vec![cmd],
                ));
            }
            ("martian_source", sysctl, summary, fix)
        };
        let evidence = json!({
            "reason": d.reason,
            "ingress_ifname": dev,
            "src": src,
            "dst": dst,
            "orig_dst": d.orig_dst,
            "orig_dport": d.orig_dport,
            "proto": d.proto,
            "source_held_by": holder.map(|(_, n)| n),
            "sysctl": sysctl.map(|k| format!("net.ipv4.conf.{dev}.{k}")),
            // The kernel drops these only while it is off (device and all).
            "sysctl_value": sysctl.map(|_| 0),
        });
        cx.conclude(Finding {
            key,
            kind,
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

    fn martian(reason: Reason, ts: u64, src: &str, dst: &str) -> Fact {
        let mut d = drop(reason, ts);
        d.proto = Some(Proto::Udp);
        d.src = Some(ip(src));
        d.dst = Some(ip(dst));
        d.ingress_ifindex = 2;
        d.ingress_ifname = Some("rim0".into());
        Fact::Drop(d)
    }

    fn lab() -> Fake {
        let mut rim = link(2, "rim0", Some("veth"), 1500);
        rim.addrs.push((ip("10.93.6.2"), 24));
        let mut side = link(3, "side1", Some("veth"), 1500);
        side.addrs.push((ip("10.94.1.2"), 24));
        Fake::with(vec![topo(NS, Some("core"), vec![rim, side], vec![])])
    }

    fn fix(v: &super::super::Verdict) -> String {
        v.fix.join("\n")
    }

    #[test]
    fn a_dnat_to_loopback_is_a_martian_destination_fixed_by_route_localnet() {
        let mut f = martian(Reason::IP_LOCALNET, 1_000, "10.93.6.1", "127.0.0.1");
        if let Fact::Drop(d) = &mut f {
            d.orig_dst = Some(ip("10.93.6.2"));
            d.orig_dport = Some(5471);
        }
        let again = martian(Reason::IP_LOCALNET, 2_000, "10.93.6.1", "127.0.0.1");
        let v = run(&mut lab(), vec![f, again], 0);
        assert_eq!(kinds(&v), [("martian_destination", Tier::Proven)]);
        assert!(v[0]
            .summary
            .contains("DNAT of what was sent to 10.93.6.2:5471"));
        assert!(
            fix(&v[0]).contains("ip netns exec core sysctl -w net.ipv4.conf.rim0.route_localnet=1"),
            "{}",
            fix(&v[0])
        );
    }

    #[test]
    fn a_loopback_source_gets_no_sysctl() {
        let f = martian(Reason::IP_LOCALNET, 1_000, "127.0.0.9", "10.93.6.2");
        let v = run(&mut lab(), vec![f], 0);
        assert_eq!(kinds(&v), [("martian_source", Tier::Proven)]);
        assert!(!fix(&v[0]).contains("sysctl"), "{}", fix(&v[0]));
    }

    #[test]
    fn accept_local_only_for_a_source_held_by_another_device() {
        // Held by the ingress device itself: a duplicate or a wrong SNAT.
        let own = martian(Reason::IP_LOCAL_SOURCE, 1_000, "10.93.6.2", "10.93.6.2");
        // Held by side1: two devices of this host wired together.
        let other = martian(Reason::IP_LOCAL_SOURCE, 2_000, "10.94.1.2", "10.93.6.2");
        let v = run(&mut lab(), vec![own, other], 0);
        assert_eq!(
            kinds(&v),
            [
                ("martian_source", Tier::Proven),
                ("martian_source", Tier::Proven)
            ]
        );
        assert!(!fix(&v[0]).contains("accept_local"), "{}", fix(&v[0]));
        assert_eq!(v[0].evidence["source_held_by"], "rim0");
        assert!(
            fix(&v[1]).contains("sysctl -w net.ipv4.conf.rim0.accept_local=1"),
            "{}",
            fix(&v[1])
        );
    }
}
