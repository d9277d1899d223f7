//! `no_route`: `IP_INNOROUTES` / `IP_OUTNOROUTES` with a failed kernel
//! lookup or no route in the table; also an `IP_RPFILTER` drop whose
//! reverse-path lookup failed (no route back to the source), concluded
//! through [`no_route_back`].

use super::ctx::{Ctx, Finding};
use super::facts::reverse_path::{rpfilter_drop, ReversePath};
use super::facts::route_policy;
use super::fix::Fix;
use super::key::Key;
use super::{Fact, Rule, Tier};
use crate::events::protocols::{errno_name, sender_errno};
use crate::events::reason::Reason;
use crate::events::record::DropRecord;
use crate::host::policy::FibRule;
use crate::host::route::RT_TABLE_MAIN;
use serde_json::json;
use std::net::IpAddr;

pub struct NoRoute;

impl Rule for NoRoute {
    fn kinds(&self) -> &'static [&'static str] {
        &["no_route"]
    }

    fn on_fact(&mut self, fact: &Fact, cx: &mut Ctx) {
        let Fact::Drop(d) = fact else { return };
        if d.reason == Reason::IP_RPFILTER {
            if let Some(rpf) = rpfilter_drop(d, |ns| cx.topo(ns)) {
                if let ReversePath::NoRouteBack { err } = rpf.path {
                    no_route_back(d, cx, rpf.src, err);
                }
            }
            return;
        }
        if ![Reason::IP_INNOROUTES, Reason::IP_OUTNOROUTES].contains(&d.reason) {
            return;
        }
        let Some(dst) = d.dst else { return };
        if link_scoped(dst, d.src) {
            return;
        }
        let topo = cx.topo(d.netns);
        // Proof: the kernel's lookup failed, or the table has no route.
        let kernel_err = d.route.as_ref().map(|r| r.err).filter(|e| *e != 0);
        let table_route = topo.as_ref().and_then(|t| t.route_to(dst).cloned());
        if kernel_err.is_none() && table_route.is_some() {
            return;
        }
        let key = Key::NoRoute {
            netns: d.netns,
            dst,
        };
        cx.tally(&key, d.ts_ns);
        let hint = cx.ns_hint(d.netns);
        let summary = format!(
            "No route to {dst}{}: the kernel drops the packet{}.",
            d.ingress_ifname
                .as_ref()
                .map(|i| format!(" for traffic forwarded from {i}"))
                .unwrap_or_default(),
            if d.reason != Reason::IP_INNOROUTES {
                ""
            } else if dst.is_ipv6() {
                " and answers ICMPv6 destination unreachable (no route)"
            } else {
                " and answers ICMP net-unreachable"
            }
        );
        // The rules this flow passes, and the first table past `local`
        // they send it to: where the route belongs.
        let (tried, table) = topo
            .as_ref()
            .map(|t| route_policy::tried(d, t))
            .unwrap_or_default();
        let table_arg = table
            .filter(|t| *t != RT_TABLE_MAIN)
            .map(|t| format!(" table {}", FibRule::table_name(t)))
            .unwrap_or_default();
        // Advice only: which gateway is right is not in these facts.
        let fix = vec![Fix::advice(format!(
            "Add a route: {hint}ip route add {} via <gateway>{table_arg} (or one for the missing prefix, or a default route); check {hint}ip route get {dst}",
            host_prefix(dst)
        ))];
        let err = kernel_err.map(sender_errno);
        let evidence = json!({
            "dst": dst, "src": d.src, "ingress_ifname": d.ingress_ifname,
            "route_err": err.map(errno_name), "route_errno": err,
            "reason": d.reason, "route_table": table, "route_rules_tried": tried,
        });
        cx.conclude(Finding {
            key,
            kind: "no_route",
            tier: Tier::Proven,
            netns: d.netns,
            summary,
            evidence,
            fix,
        });
    }
}

/// rp_filter dropped a packet because there is no route back to its
/// source at all (`err` is the reverse lookup's error, 0 if the table
/// alone showed it).
fn no_route_back(d: &DropRecord, cx: &mut Ctx, src: IpAddr, err: i32) {
    let key = Key::NoRouteBack {
        netns: d.netns,
        src,
    };
    cx.tally(&key, d.ts_ns);
    let hint = cx.ns_hint(d.netns);
    let ingress = d.ingress_ifname.clone().unwrap_or_else(|| "?".into());
    let summary = format!(
        "Packets from {src} arrive on {ingress} but there is no route back to {src}, so rp_filter drops them."
    );
    let dev = super::fix::q(&ingress);
    let fix = vec![Fix::advice(format!(
        "Add a route back to {src}: {hint}ip route add {} via <gateway on {ingress}> dev {dev} (or a default route); check {hint}ip route get {src}",
        host_prefix(src)
    ))];
    let err = (err != 0).then_some(sender_errno(err));
    let evidence = json!({
        "dst": src, "src": d.dst, "ingress_ifname": d.ingress_ifname,
        "route_err": err.map(errno_name), "route_errno": err, "reason": d.reason,
    });
    cx.conclude(Finding {
        key,
        kind: "no_route",
        tier: Tier::Proven,
        netns: d.netns,
        summary,
        evidence,
        fix,
    });
}

/// `A/32` or `A/128`: a route for this one host. An IPv6 address with
/// `/32` would route a whole /32 block (`fd00:2::/32`) instead.
fn host_prefix(a: IpAddr) -> String {
    let len = if a.is_ipv6() { 128 } else { 32 };
    format!("{a}/{len}")
}

/// Traffic that never needs a route of the table, so its failed lookup
/// proves nothing: link-local and multicast destinations (what a link
/// sends as it comes up: IPv6 DAD, MLD reports, router solicitations,
/// before the kernel has installed its `ff00::/8` and `fe80::/64`
/// routes), and packets sent from the unspecified address (DAD and MLD
/// while the link has no address yet, DHCP).
fn link_scoped(dst: IpAddr, src: Option<IpAddr>) -> bool {
    if src.is_some_and(|s| s.is_unspecified()) {
        return true;
    }
    match dst {
        IpAddr::V4(a) => {
            let o = a.octets();
            // 224.0.0.0/24: the local network control block (IGMP, OSPF,
            // mDNS), never routed; and the limited broadcast.
            (o[0], o[1], o[2]) == (224, 0, 0) || a.is_broadcast()
        }
        IpAddr::V6(a) => {
            let s0 = a.segments()[0];
            a.is_multicast() || (s0 & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{Fact, Tier};
    use crate::events::record::Family;
    use crate::events::record::Proto;

    #[test]
    fn a_failed_lookup_names_its_errno() {
        let mut src = Fake::with(vec![topo(
            NS,
            None,
            vec![],
            vec![route("10.1.0.0", 24, 2, None)],
        )]);
        let mut d = drop(Reason::IP_INNOROUTES, 1_000);
        d.dst = Some(ip("203.0.113.9"));
        d.route = Some(lookup(0, "", 0, -11));
        let v = run(&mut src, vec![Fact::Drop(d)], 0);
        assert_eq!(kinds(&v), [("no_route", Tier::Proven)]);
        assert_eq!(v[0].evidence["route_err"], "ENETUNREACH");
        // The table's -EAGAIN is what the sender sees as -ENETUNREACH.
        assert_eq!(v[0].evidence["route_errno"], -101);
        assert!(v[0].fix[0].contains("ip route add 203.0.113.9/32 via"));
    }

    /// A source rule sends the flow to table 64, which has no route:
    /// the evidence lists the rules tried, and the advice adds the route
    /// in table 64 (main's would be bypassed).
    #[test]
    fn a_rule_s_table_is_where_the_route_belongs() {
        use crate::host::policy::{FibRule, RuleKind};
        let mut t = topo(NS, None, vec![], vec![route("10.1.0.0", 24, 2, None)]);
        t.rules = vec![FibRule {
            ipv6: false,
            priority: 500,
            kind: RuleKind::Lookup,
            table: 64,
            goto: None,
            from: Some((ip("10.9.9.0"), 24)),
            to: None,
            iif: None,
            oif: None,
            fwmark: None,
            fwmask: None,
            invert: false,
            suppress_prefixlen: None,
            other_selectors: false,
        }];
        t.rules.push(FibRule {
            from: None,
            priority: 32766,
            table: 254,
            ..t.rules[0].clone()
        });
        let mut d = drop(Reason::IP_OUTNOROUTES, 1_000);
        d.src = Some(ip("10.9.9.4"));
        d.dst = Some(ip("198.51.100.7"));
        d.route = Some(lookup(0, "", 0, -11));
        let v = run(&mut Fake::with(vec![t]), vec![Fact::Drop(d)], 0);
        assert_eq!(kinds(&v), [("no_route", Tier::Proven)]);
        assert_eq!(v[0].evidence["route_table"], 64);
        assert_eq!(
            v[0].evidence["route_rules_tried"][0],
            "500: from 10.9.9.0/24 lookup 64"
        );
        assert!(
            v[0].fix[0].contains("via <gateway> table 64"),
            "{:?}",
            v[0].fix
        );
    }

    fn v6_drop(src: &str, dst: &str) -> super::DropRecord {
        let mut d = drop(Reason::IP_OUTNOROUTES, 1_000);
        d.family = Some(Family::Ipv6);
        d.proto = Some(Proto::Icmp6);
        d.src = Some(ip(src));
        d.dst = Some(ip(dst));
        d.route = Some(lookup(0, "", 0, -101));
        d
    }

    #[test]
    fn link_scoped_traffic_of_a_link_coming_up_proves_nothing() {
        // No route at all, as in a namespace whose link has just come up.
        let t = || topo(NS, None, vec![link(2, "ve-a", Some("veth"), 1500)], vec![]);
        for (src, dst) in [
            ("::", "ff02::16"),         // MLD report during DAD
            ("::", "ff02::1:ff00:7"),   // DAD neighbour solicitation
            ("fe80::5:1", "ff02::2"),   // router solicitation
            ("fe80::5:1", "fe80::5:2"), // link-local unicast
            ("fd42:7::1", "ff05::1:3"), // site-scoped multicast
        ] {
            let v = run(
                &mut Fake::with(vec![t()]),
                vec![Fact::Drop(v6_drop(src, dst))],
                0,
            );
            assert!(v.is_empty(), "{src} > {dst}: {v:?}");
        }
        for (src, dst) in [("0.0.0.0", "255.255.255.255"), ("10.8.0.3", "224.0.0.22")] {
            let mut d = drop(Reason::IP_OUTNOROUTES, 1_000);
            d.src = Some(ip(src));
            d.dst = Some(ip(dst));
            let v = run(&mut Fake::with(vec![t()]), vec![Fact::Drop(d)], 0);
            assert!(v.is_empty(), "{src} > {dst}: {v:?}");
        }
    }

    #[test]
    fn a_missing_ipv6_route_is_still_proven_with_a_host_route_fix() {
        let t = topo(NS, Some("r-9"), vec![link(2, "up0", None, 1480)], vec![]);
        let mut d = v6_drop("fd42:7::1", "fd42:9::20");
        d.reason = Reason::IP_INNOROUTES;
        d.ingress_ifname = Some("up0".into());
        let v = run(&mut Fake::with(vec![t]), vec![Fact::Drop(d)], 0);
        assert_eq!(kinds(&v), [("no_route", Tier::Proven)]);
        let fix = &v[0].fix[0];
        assert!(
            fix.contains("ip netns exec r-9 ip route add fd42:9::20/128 via <gateway>"),
            "{fix}"
        );
        assert!(!fix.contains("/32"), "{fix}");
        assert!(v[0].summary.contains("ICMPv6"), "{}", v[0].summary);
        assert_eq!(v[0].evidence["route_errno"], -101);
    }
}
