//! `forwarding_disabled`: `IP_INADDRERRORS` while the forwarding sysctl
//! that applies (the ingress device's for IPv4) is 0: packets to forward
//! are dropped silently.

use super::ctx::{Ctx, Finding};
use super::fix::q;
use super::{Fact, Rule, Tier};
use serde_json::json;

pub struct ForwardingDisabled;

impl Rule for ForwardingDisabled {
    fn kinds(&self) -> &'static [&'static str] {
        &["forwarding_disabled"]
    }

    fn on_fact(&mut self, fact: &Fact, cx: &mut Ctx) {
        let Fact::Drop(d) = fact else { return };
        if d.reason != "IP_INADDRERRORS" {
            return;
        }
        let Some(topo) = cx.topo(d.netns) else {
            return;
        };
        let v6 = d.family == Some("ipv6");
        let on = if v6 {
            topo.sysctls.ipv6_forwarding
        } else {
            match &d.ingress_ifname {
                Some(i) => topo.ipv4_forwarding_on(i),
                None => topo.sysctls.ipv4_forwarding,
            }
        };
        if on {
            return;
        }
        let key = format!("fwd/{}/{v6}", d.netns);
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
        let fix = vec![format!(
            "{hint}sysctl -w {} (persist it in /etc/sysctl.d/)",
            q(&format!("{sysctl}=1"))
        )];
        let evidence =
            json!({"ingress_ifname": d.ingress_ifname, "dst": d.dst, "sysctl": sysctl, "value": 0});
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

    #[test]
    fn forwarding_off_is_proven_from_the_sysctl() {
        let t = topo(NS, None, vec![link(2, "eth0", None, 1500)], vec![]);
        let mut on = t.clone();
        on.sysctls.ipv4_forwarding = true;
        let mut d = drop("IP_INADDRERRORS", 1_000);
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
}
