//! `forwarding_disabled`: `IP_INADDRERRORS` while the forwarding sysctl
//! that applies (the ingress device's for IPv4) is 0, in a namespace that
//! could forward the packet (two or more layer-3 devices and a route to
//! the destination out of another one): packets to forward are dropped
//! silently. On a host that could not forward it, the packet was
//! misdelivered instead (see `misdelivered`), and turning forwarding on
//! would make a plain host a router.

use super::ctx::{Ctx, Finding};
use super::facts::forwarding::not_forwarded;
use super::facts::route_policy;
use super::fix::{q, Fix};
use super::key::Key;
use super::{Fact, Rule, Tier};
use crate::events::record::Family;
use serde_json::json;

pub struct ForwardingDisabled;

impl Rule for ForwardingDisabled {
    fn kinds(&self) -> &'static [&'static str] {
        &["forwarding_disabled"]
    }

    fn on_fact(&mut self, fact: &Fact, cx: &mut Ctx) {
        let Fact::Drop(d) = fact else { return };
        // Not forwarded where it could have been; else it is
        // `misdelivered`'s, or no fault.
        let Some(nf) = not_forwarded(d, |ns| cx.topo(ns)).filter(|nf| nf.could_forward) else {
            return;
        };
        let topo = nf.topo;
        let v6 = d.family == Some(Family::Ipv6);
        let key = Key::ForwardingDisabled { netns: d.netns, v6 };
        cx.tally(&key, d.ts_ns);
        let hint = cx.ns_hint(d.netns);
        // Globally on but off on the ingress device: name that knob.
        let sysctl = if v6 {
            "net.ipv6.conf.all.forwarding".to_string()
        } else {
            match &d.ingress_ifname {
                Some(i) if topo.sysctls.ipv4_forwarding => {
                    if i.contains('.') {
                        format!("net/ipv4/conf/{i}/forwarding")
                    } else {
                        format!("net.ipv4.conf.{i}.forwarding")
                    }
                }
                _ => "net.ipv4.ip_forward".to_string(),
            }
        };
        let summary = format!(
            "This namespace receives packets to forward (to {}) but {sysctl}=0: they are dropped silently.",
            d.dst.map(|a| a.to_string()).unwrap_or_default()
        );
        let cmd = format!("{hint}sysctl -w {}", q(&format!("{sysctl}=1")));
        let fix = vec![Fix::run(
            format!("{cmd} (persist it in /etc/sysctl.d/)"),
            vec![cmd],
        )];
        let (table, rule) = route_policy::evidence(route_policy::forward(d, &topo).as_ref());
        let evidence = json!({
            "ingress_ifname": d.ingress_ifname, "dst": d.dst, "sysctl": sysctl, "value": 0,
            "route_table": table, "route_rule": rule,
        });
        cx.conclude(Finding {
            key,
            kind: "forwarding_disabled",
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

    /// A router: two links, the destination's subnet behind the second.
    fn router() -> crate::host::topology::NsTopology {
        topo(
            NS,
            None,
            vec![link(2, "eth0", None, 1500), link(3, "wan7", None, 1500)],
            vec![
                route("10.1.0.0", 24, 2, None),
                route("10.2.0.0", 24, 3, None),
            ],
        )
    }

    #[test]
    fn forwarding_off_is_proven_from_the_sysctl() {
        let t = router();
        let mut on = t.clone();
        on.sysctls.ipv4_forwarding = true;
        let mut d = drop(Reason::IP_INADDRERRORS, 1_000);
        d.ifindex = 2;
        d.dst = Some(ip("10.2.0.1"));
        let v = run(&mut Fake::with(vec![t]), vec![Fact::Drop(d.clone())], 0);
        assert_eq!(kinds(&v), [("forwarding_disabled", Tier::Proven)]);
        assert_eq!(v[0].evidence["sysctl"], "net.ipv4.ip_forward");
        assert!(
            v[0].fix[0].starts_with("nsenter --net=/run/netns/x sysctl -w net.ipv4.ip_forward=1")
        );
        // Forwarding on: the drop has another cause.
        assert!(run(&mut Fake::with(vec![on]), vec![Fact::Drop(d)], 0).is_empty());
    }

    #[test]
    fn a_host_that_could_not_forward_is_not_told_to() {
        // One link: the packet for 10.1.0.9 could only go back out eth0.
        let one = topo(
            NS,
            None,
            vec![link(1, "lo", None, 65536), link(2, "eth0", None, 1500)],
            vec![route("10.1.0.0", 24, 2, None)],
        );
        // Two links, but the destination is behind the one it came in by.
        let hairpin = router();
        let mut d = drop(Reason::IP_INADDRERRORS, 1_000);
        d.ifindex = 2;
        d.dst = Some(ip("10.1.0.9"));
        for t in [one, hairpin] {
            let v = run(&mut Fake::with(vec![t]), vec![Fact::Drop(d.clone())], 0);
            assert!(v.iter().all(|v| v.kind != "forwarding_disabled"), "{v:?}");
        }
    }
}
