//! `fragment_reassembly_timeout`: the kernel held some fragments of a
//! datagram and gave up waiting for the rest (`FRAG_REASM_TIMEOUT`,
//! after `ipfrag_time`): the whole datagram is lost. Where tracer saw a
//! fragment of the same flow (source and destination, no ports: a
//! fragment after the first) dropped on its way, that drop is named as
//! the cause: typically a firewall dropping non-first fragments, which
//! carry no ports to match. Where that drop is a firewall's and one rule
//! of its namespace is named by the counters, fix 1 removes that rule, so
//! it can be pasted as it stands.
//!
//! Tier: proven. The kernel's reason says the datagram was lost for a
//! missing fragment.

use super::ctx::{Ctx, Finding};
use super::facts::firewall as fw;
use super::fix::Fix;
use super::key::Key;
use super::{Fact, Rule, Tier};
use crate::events::reason::Reason;
use crate::events::record::DropRecord;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::IpAddr;

/// Other drops of a flow's port-less packets are kept this long (the
/// longest usual `ipfrag_time` is 30 s).
const KEEP_NS: u64 = 60_000_000_000;

#[derive(Default)]
pub struct FragmentTimeout {
    /// (src, dst) -> the latest port-less drop of it elsewhere.
    lost: HashMap<(IpAddr, IpAddr), Lost>,
}

/// A fragment of a flow dropped on its way.
struct Lost {
    ts_ns: u64,
    netns: u32,
    /// What to show: the evidence and the words.
    at: Value,
    text: String,
    /// The firewall rule that dropped it, named, and the command that
    /// removes it.
    rule: Option<(String, String)>,
}

impl FragmentTimeout {
    /// Keeps a port-less drop of (src, dst) as the likely cause of a later
    /// reassembly timeout. A firewall's ruleset is read once per flow and
    /// namespace (a reading runs the listing tools), not per fragment.
    fn remember(&mut self, d: &DropRecord, src: IpAddr, dst: IpAddr, cx: &mut Ctx) {
        if let Some(l) = self.lost.get_mut(&(src, dst)) {
            if l.netns == d.netns && d.ts_ns.saturating_sub(l.ts_ns) < KEEP_NS {
                l.ts_ns = d.ts_ns;
                return;
            }
        }
        let ns = cx
            .netns_name(d.netns)
            .unwrap_or_else(|| d.netns.to_string());
        let rule = if d.reason == Reason::NETFILTER_DROP {
            dropping_rule(d, cx)
        } else {
            None
        };
        let at = json!({
            "netns": ns,
            "reason": d.reason,
            "location": d.location,
            "ifname": d.ifname,
            "rule": rule.as_ref().map(|r| r.0.clone()),
        });
        let text = format!("{} at {} in {ns}", d.reason, d.location);
        let rule = rule.map(|(_, name, rm)| (name, rm));
        let lost = Lost {
            ts_ns: d.ts_ns,
            netns: d.netns,
            at,
            text,
            rule,
        };
        self.lost.insert((src, dst), lost);
        if self.lost.len() > 10_000 {
            let now = d.ts_ns;
            self.lost
                .retain(|_, v| now.saturating_sub(v.ts_ns) < KEEP_NS);
        }
    }
}

/// The one rule of `d`'s namespace that the counters say dropped it:
/// (its evidence, its name, the command that removes it). None where
/// several fit, none does, or it is a chain's policy (opening a whole
/// chain is more than letting fragments through).
fn dropping_rule(d: &DropRecord, cx: &mut Ctx) -> Option<(Value, String, String)> {
    let rs = cx.ruleset(d.netns)?;
    let topo = cx.topo(d.netns);
    let hooks = fw::hooks_of(d, topo.as_deref());
    let fits = fw::first_fits(fw::candidates_for(d, &rs, hooks));
    let [one] = fits.as_slice() else {
        return None;
    };
    one.rule.as_ref()?;
    let hint = cx.ns_hint(d.netns);
    Some((
        fw::evidence(one),
        fw::name(one),
        fw::remove_command(one, &hint),
    ))
}

impl Rule for FragmentTimeout {
    fn kinds(&self) -> &'static [&'static str] {
        &["fragment_reassembly_timeout"]
    }

    fn on_fact(&mut self, fact: &Fact, cx: &mut Ctx) {
        let Fact::Drop(d) = fact else { return };
        let (Some(src), Some(dst)) = (d.src, d.dst) else {
            return;
        };
        if d.reason != Reason::FRAG_REASM_TIMEOUT {
            // A port-less TCP/UDP packet is a fragment after the first.
            if d.proto.is_some() && d.sport.is_none() && d.icmp_type.is_none() {
                self.remember(d, src, dst, cx);
            }
            return;
        }
        let key = Key::FragTimeout {
            netns: d.netns,
            src,
            dst,
        };
        cx.tally(&key, d.ts_ns);
        if cx.concluded(&key).is_some() {
            return;
        }
        let cause = self
            .lost
            .get(&(src, dst))
            .filter(|v| d.ts_ns.saturating_sub(v.ts_ns) < KEEP_NS);
        let proto = d.proto.map(|p| p.to_string());
        let flow = match (proto.as_deref(), d.dport) {
            (Some(p), Some(port)) => format!("{p} datagrams from {src} to {dst} port {port}"),
            (Some(p), None) => format!("{p} datagrams from {src} to {dst}"),
            _ => format!("datagrams from {src} to {dst}"),
        };
        let why = match cause {
            Some(Lost { text, .. }) => format!(
                " A later fragment of the same flow was dropped on its way: {text}."
            ),
            None => " The missing fragments were not seen dropped in a watched namespace: lost on the path, dropped by a firewall elsewhere, or a path MTU that splits them differently.".to_string(),
        };
        let summary = format!(
            "Fragmented {flow} are lost: the kernel held part of each and gave up waiting for the rest ({}).{why}",
            d.reason
        );
        let hint = cx.ns_hint(d.netns);
        let mut fix = Vec::new();
        match cause {
            // The root cause, named and removable: pasted, it heals.
            Some(Lost {
                at,
                rule: Some((name, rm)),
                ..
            }) => fix.push(Fix::run(
                format!(
                    "Let fragments through where they die ({}): {name} drops them; remove it, if this traffic should pass: {rm}",
                    at["netns"].as_str().unwrap_or("?"),
                ),
                vec![rm.clone()],
            )),
            Some(Lost { at, .. }) => fix.push(Fix::advice(format!(
                "Let fragments through where they die ({}, {}): a rule matching ports drops every fragment but the first (iptables -f, nftables 'ip frag-off'), so allow fragments there or reassemble first (conntrack does)",
                at["netns"].as_str().unwrap_or("?"),
                at["location"].as_str().unwrap_or("?")
            ))),
            None => {}
        }
        fix.push(Fix::advice(
            "Or avoid fragments: have the sender stay under the path MTU (smaller datagrams, DF and path MTU discovery)",
        ));
        fix.push(Fix::advice(format!(
            "See what is lost to reassembly here: {hint}nstat -az IpReasmFails IpReasmTimeout"
        )));
        let evidence = json!({
            "reason": d.reason,
            "src": src,
            "dst": dst,
            "proto": proto,
            "dport": d.dport,
            "ingress_ifname": d.ingress_ifname,
            "ip_len": d.ip_len,
            "fragment_dropped": cause.map(|c| c.at.clone()),
        });
        cx.conclude(Finding {
            key,
            kind: "fragment_reassembly_timeout",
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
    use crate::events::record::{Family, Proto};
    use crate::host::firewall::iptables::parse;
    use crate::host::firewall::{Ruleset, Source};
    use std::sync::Arc;

    fn udp(reason: Reason, ts: u64, netns: u32, dport: Option<u16>) -> Fact {
        let mut d = drop(reason, ts);
        d.netns = netns;
        d.proto = Some(Proto::Udp);
        d.src = Some(ip("10.70.3.3"));
        d.dst = Some(ip("10.70.9.9"));
        d.sport = dport.map(|_| 40000);
        d.dport = dport;
        Fact::Drop(d)
    }

    fn lab() -> Fake {
        Fake::with(vec![
            topo(NS, Some("rx"), vec![], vec![]),
            topo(OWN + 7, Some("fw"), vec![], vec![]),
        ])
    }

    #[test]
    fn a_fragment_dropped_on_the_way_is_the_cause() {
        let facts = vec![
            udp(Reason::NETFILTER_DROP, 1_000, OWN + 7, None),
            udp(Reason::FRAG_REASM_TIMEOUT, 2_000, NS, Some(5353)),
        ];
        let v = run(&mut lab(), facts, 0);
        let ours: Vec<_> = v
            .iter()
            .filter(|v| v.kind == "fragment_reassembly_timeout")
            .collect();
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0].tier, Tier::Proven);
        assert_eq!(ours[0].evidence["fragment_dropped"]["netns"], "fw");
        assert_eq!(ours[0].evidence["dport"], 5353);
    }

    #[test]
    fn with_nothing_seen_the_cause_stays_open() {
        let facts = vec![udp(Reason::FRAG_REASM_TIMEOUT, 2_000, NS, None)];
        let v = run(&mut lab(), facts, 0);
        assert_eq!(kinds(&v), [("fragment_reassembly_timeout", Tier::Proven)]);
        assert!(v[0].evidence["fragment_dropped"].is_null());
    }

    /// The router's `-f` rule, named by its counter: fix 1 removes it, a
    /// command that can be pasted as it stands.
    #[test]
    fn a_named_firewall_rule_is_removed_by_fix_1() {
        let mut src = lab();
        let text = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
            [0:0] -A FORWARD -p tcp -m tcp --dport 22 -j DROP\n[3:4500] -A FORWARD -f -j DROP\nCOMMIT\n";
        let reading = Ruleset {
            read_ns: 1_500,
            chains: parse(text, Source::IptablesNft, "ip"),
            unread: vec![],
        };
        src.rulesets.insert(OWN + 7, vec![Arc::new(reading)]);
        let mut frag = udp(Reason::NETFILTER_DROP, 1_000, OWN + 7, None);
        if let Fact::Drop(d) = &mut frag {
            d.family = Some(Family::Ipv4);
            d.ingress_ifindex = 4;
            d.ifindex = 4;
        }
        let facts = vec![frag, udp(Reason::FRAG_REASM_TIMEOUT, 2_000, NS, Some(5353))];
        let v = run(&mut src, facts, 0);
        let ours = v
            .iter()
            .find(|v| v.kind == "fragment_reassembly_timeout")
            .unwrap();
        let rule = &ours.evidence["fragment_dropped"]["rule"];
        assert_eq!(rule["position"], 2, "{rule}");
        assert_eq!(
            ours.fix_commands[0],
            ["ip netns exec fw iptables-nft -t filter -D FORWARD 2"]
        );
        assert!(
            ours.fix[0].contains("rule 2 of chain FORWARD"),
            "{}",
            ours.fix[0]
        );
    }
}
