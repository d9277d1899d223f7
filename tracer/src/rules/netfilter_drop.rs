//! `netfilter_drop`: a `NETFILTER_DROP`: some firewall rule (or conntrack
//! state INVALID) drops the flow. A dropped ICMP frag-needed /
//! packet-too-big is left to pmtu_blackhole, which explains it.

use super::ctx::{Ctx, Finding};
use super::facts::pmtu::is_ptb_icmp;
use super::fix::{host_port, Fix};
use super::key::Key;
use super::{Fact, Rule, Tier};
use crate::events::protocols::icmp_name;
use crate::events::reason::Reason;
use serde_json::json;

pub struct NetfilterDrop;

impl Rule for NetfilterDrop {
    fn kinds(&self) -> &'static [&'static str] {
        &["netfilter_drop"]
    }

    fn on_fact(&mut self, fact: &Fact, cx: &mut Ctx) {
        let Fact::Drop(d) = fact else { return };
        if d.reason != Reason::NETFILTER_DROP || is_ptb_icmp(d) {
            return;
        }
        let key = Key::Netfilter {
            netns: d.netns,
            proto: d.proto,
            dst: d.dst,
            dport: d.dport,
        };
        cx.tally(&key, d.ts_ns);
        let hint = cx.ns_hint(d.netns);
        let icmp = match (d.proto, d.icmp_type, d.icmp_code) {
            (Some(p), Some(t), Some(c)) => icmp_name(p, t, c),
            _ => None,
        };
        let dst = d.dst.map(|a| a.to_string()).unwrap_or_default();
        let what = match (&d.proto, d.dport, d.dst, icmp) {
            (Some(p), Some(port), Some(a), _) => format!("{p} to {}", host_port(a, port)),
            (Some(p), _, _, Some(name)) => format!("{p} {name} to {dst}"),
            (Some(p), _, _, None) => format!("{p} to {dst}"),
            _ => "packets".to_string(),
        };
        let summary = format!(
            "A firewall rule drops {what} on {} ({}).",
            d.ifname.clone().unwrap_or_else(|| "?".into()),
            d.location
        );
        // Which rule to change is the user's call: these only look.
        let fix = vec![
            Fix::advice(format!("Find the rule whose counters rise: {hint}iptables -L -v -n --line-numbers (all tables) or {hint}nft list ruleset")),
            Fix::advice(format!("If it is conntrack state INVALID: {hint}conntrack -S")),
        ];
        let evidence = json!({
            "ifname": d.ifname, "ingress_ifname": d.ingress_ifname,
            "src": d.src, "dst": d.dst, "proto": d.proto, "dport": d.dport,
            "icmp": icmp,
            "location": d.location,
        });
        cx.conclude(Finding {
            key,
            kind: "netfilter_drop",
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
    use crate::events::record::Family;
    use crate::events::record::Proto;

    #[test]
    fn firewall_drops_are_named_with_their_flow() {
        let mut udp = drop(Reason::NETFILTER_DROP, 1_000);
        udp.proto = Some(Proto::Udp);
        udp.family = Some(Family::Ipv6);
        udp.dst = Some(ip("fd00::1"));
        udp.dport = Some(7777);
        let mut ping = drop(Reason::NETFILTER_DROP, 2_000);
        ping.proto = Some(Proto::Icmp);
        ping.dst = Some(ip("10.0.0.1"));
        ping.icmp_type = Some(8);
        ping.icmp_code = Some(0);
        let v = run(
            &mut Fake::default(),
            vec![Fact::Drop(udp), Fact::Drop(ping)],
            0,
        );
        assert_eq!(
            kinds(&v),
            [
                ("netfilter_drop", Tier::Proven),
                ("netfilter_drop", Tier::Proven)
            ]
        );
        assert!(
            v[0].summary.contains("udp to [fd00::1]:7777"),
            "{}",
            v[0].summary
        );
        assert!(
            v[1].summary.contains("icmp echo request to 10.0.0.1"),
            "{}",
            v[1].summary
        );
    }
}
