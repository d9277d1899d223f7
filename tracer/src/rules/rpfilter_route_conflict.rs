//! `rpfilter_route_conflict`: an `IP_RPFILTER` drop whose reverse path
//! (the kernel's own reverse-path lookup joined to the drop, else the
//! route table) leaves by another device than the one the packet came in
//! on. With a bridge on the reverse path, the peer's network overlaps the
//! bridge subnet.

use super::ctx::{Ctx, Finding};
use super::facts::reverse_path::{rpfilter_drop, ArpRejected, ReversePath};
use super::fix::{bridge_fixes, conf_arg, host_route, net, q, route_via, BridgeOwner, Fix};
use super::key::Key;
use super::{Fact, Rule, Tier};
use crate::events::reason::Reason;
use crate::events::record::DropRecord;
use crate::host::policy::Decision;
use serde_json::json;

pub struct RpFilterRouteConflict;

impl Rule for RpFilterRouteConflict {
    fn kinds(&self) -> &'static [&'static str] {
        &["rpfilter_route_conflict"]
    }

    fn on_fact(&mut self, fact: &Fact, cx: &mut Ctx) {
        let Fact::Drop(d) = fact else { return };
        if d.reason == Reason::NEIGH_FAILED {
            if let Some(a) = cx.arp_rejected(d) {
                arp_ignored(d, a, cx);
            }
            return;
        }
        on_rpfilter_drop(d, cx);
    }
}

/// An `IP_RPFILTER` drop whose route back leaves by another device.
fn on_rpfilter_drop(d: &DropRecord, cx: &mut Ctx) {
    let Some(rpf) = rpfilter_drop(d, |ns| cx.topo(ns)) else {
        return;
    };
    let (topo, src, ingress, in_link) = (rpf.topo, rpf.src, rpf.ingress, rpf.in_link);
    // No route back at all is `no_route`'s verdict, not a conflict.
    let ReversePath::Leaves {
        ifindex: rev_if,
        from_kernel,
    } = rpf.path
    else {
        return;
    };
    if rev_if == ingress {
        return;
    }
    let Some(rev_link) = topo.link(rev_if) else {
        return;
    };
    let key = Key::RpFilter {
        netns: d.netns,
        ingress,
        reverse: rev_if,
    };
    cx.tally(&key, d.ts_ns);
    let policy = rpf.policy.as_ref();
    let prefix = reverse_prefix(policy, &topo, rev_if, src);
    let table_arg = policy.map(|p| p.table_arg()).unwrap_or_default();
    let bridge = topo.is_bridge(rev_if);
    let rp = topo.rp_filter(&in_link.name);
    let hint = cx.ns_hint(d.netns);
    let summary =
        summary(src, &in_link.name, &rev_link.name, bridge, &prefix, rp) + &policy_note(policy);
    // A published port: the packet was DNAT'd to a container, whose
    // replies no host route can steer.
    let container = d.dst.and_then(|a| cx.container_by_addr(a));
    let container_name = container.as_ref().map(|c| c.r.name.clone()).or_else(|| {
        (d.orig_dst.is_some() && d.orig_dst != d.dst)
            .then(|| format!("at {}", d.dst.map(|a| a.to_string()).unwrap_or_default()))
    });
    let owner = cx.docker_owner(d.netns, &rev_link.name);
    let docker_net = owner.clone().flatten().map(|n| n.name);
    let mut fix = if bridge {
        bridge_fixes(
            &topo,
            &rev_link.name,
            &prefix,
            src,
            &hint,
            ingress,
            match &owner {
                Some(n) => BridgeOwner::Docker(n.as_ref()),
                None => BridgeOwner::Other,
            },
            container_name.as_deref(),
        )
    } else {
        vec![route_back_fix(
            &topo,
            &hint,
            src,
            (ingress, &in_link.name),
            &table_arg,
        )]
    };
    fix.push(loosen_fix(
        bridge,
        &hint,
        &in_link.name,
        &rev_link.name,
        src,
    ));
    let evidence = json!({
        "ingress_ifname": in_link.name,
        "src": src,
        "dst": d.dst,
        "reverse_route_ifname": rev_link.name,
        "reverse_route_prefix": prefix,
        "reverse_route_from_kernel": from_kernel,
        "reverse_route_table": policy.map(|p| p.table),
        "reverse_route_rule": policy.map(|p| p.evidence()),
        "src_valid_mark": topo.src_valid_mark(&in_link.name),
        "rp_filter": rp,
        "bridge": bridge,
        "location": d.location,
        "docker_network": docker_net,
        "container": container.as_ref().map(|c| c.r.name.clone()),
        "orig_dst": d.orig_dst,
        "orig_dport": d.orig_dport,
    });
    cx.conclude(Finding {
        key,
        kind: "rpfilter_route_conflict",
        tier: Tier::Proven,
        netns: d.netns,
        summary,
        evidence,
        fix,
    });
}

/// The route the reverse lookup took, where known; else the most
/// specific one out of that device.
fn reverse_prefix(
    policy: Option<&Decision>,
    topo: &crate::host::topology::NsTopology,
    rev_if: i32,
    src: std::net::IpAddr,
) -> String {
    policy
        .and_then(|p| p.route.as_ref())
        .filter(|r| r.oif == Some(rev_if))
        .or_else(|| topo.prefix_on(rev_if, src))
        .map(net)
        .unwrap_or_else(|| src.to_string())
}

/// " The rule ... sends the reverse lookup to table N." when a rule sent
/// it past main; empty otherwise.
fn policy_note(policy: Option<&Decision>) -> String {
    match policy.filter(|p| p.policy_routed()) {
        Some(p) => format!(
            " The rule \"{}\" sends the reverse lookup to table {}.",
            p.rule.text(),
            p.table
        ),
        None => String::new(),
    }
}

/// The ARP's target ignores the request: proven where it is ignored,
/// with the sender's failed neighbour entry as the symptom.
fn arp_ignored(d: &DropRecord, a: ArpRejected, cx: &mut Ctx) {
    let rev = a.reverse_if.and_then(|i| a.topo.link(i)).cloned();
    let key = Key::RpFilter {
        netns: a.netns,
        ingress: a.link.ifindex,
        reverse: a.reverse_if.unwrap_or(0),
    };
    cx.tally(&key, d.ts_ns);
    let hint = cx.ns_hint(a.netns);
    let policy = a.policy.as_ref();
    let prefix = policy
        .and_then(|p| p.route.as_ref())
        .map(net)
        .unwrap_or_else(|| "no route".into());
    let table_arg = policy.map(|p| p.table_arg()).unwrap_or_default();
    let sender_ns = cx
        .netns_name(d.netns)
        .unwrap_or_else(|| d.netns.to_string());
    let mut summary = format!(
        "ARP requests from {} for {} arrive on {} but the route back to {} {}, so rp_filter={} ignores them: {} never learns {}'s address and its packets die as NEIGH_FAILED in {sender_ns}.",
        a.sender,
        a.target,
        a.link.name,
        a.sender,
        match &rev {
            Some(r) => format!("points into {} ({prefix})", r.name),
            None => "does not exist".into(),
        },
        a.rp_filter,
        a.sender,
        a.target,
    );
    summary.push_str(&policy_note(policy));
    let mut fix = vec![route_back_fix(
        &a.topo,
        &hint,
        a.sender,
        (a.link.ifindex, &a.link.name),
        &table_arg,
    )];
    if let Some(r) = &rev {
        fix.push(loosen_fix(false, &hint, &a.link.name, &r.name, a.sender));
    }
    let evidence = json!({
        "ingress_ifname": a.link.name,
        "src": a.sender,
        "dst": a.target,
        "arp": true,
        "reverse_route_ifname": rev.as_ref().map(|r| r.name.clone()),
        "reverse_route_prefix": prefix,
        "reverse_route_from_kernel": false,
        "reverse_route_table": policy.map(|p| p.table),
        "reverse_route_rule": policy.map(|p| p.evidence()),
        "src_valid_mark": a.topo.src_valid_mark(&a.link.name),
        "rp_filter": a.rp_filter,
        "bridge": false,
        "arp_sender_netns": sender_ns,
        "arp_sender_ifname": d.ifname,
        "neighbor_states": cx.obs.neigh.get(&(d.netns, d.ifindex, a.target)),
    });
    cx.conclude(Finding {
        key,
        kind: "rpfilter_route_conflict",
        tier: Tier::Proven,
        netns: a.netns,
        summary,
        evidence,
        fix,
    });
}

/// Routes the source back out the device it arrives on, in the table
/// the reverse lookup uses (`table_arg`, empty for main): on-link when a
/// connected prefix there holds it, else through that device's gateway.
fn route_back_fix(
    topo: &crate::host::topology::NsTopology,
    hint: &str,
    src: std::net::IpAddr,
    (ingress, in_name): (i32, &str),
    table_arg: &str,
) -> Fix {
    let on_link = topo
        .prefix_on(ingress, src)
        .filter(|r| r.gateway.is_none() && r.prefix_len > 0);
    let (dst, via) = match on_link {
        // Another table lacks the connected prefix main has: copy it.
        Some(r) if !table_arg.is_empty() => (net(r), format!("dev {}", q(in_name))),
        Some(_) => (host_route(src), format!("dev {}", q(in_name))),
        None => (host_route(src), route_via(topo, ingress, src)),
    };
    let cmd = format!("{hint}ip route add {dst} {via}{table_arg}");
    Fix::run(
        format!("Route {src} back out {in_name}, where it arrives: {cmd}"),
        vec![cmd],
    )
}

/// One line: where the packets arrive, where the route back points.
fn summary(
    src: std::net::IpAddr,
    in_name: &str,
    rev_name: &str,
    bridge: bool,
    prefix: &str,
    rp: impl std::fmt::Display,
) -> String {
    format!(
        "Packets from {src} arrive on {} but the route back to {src} points into {}{} ({prefix}), so rp_filter={rp} drops them{}.",
        in_name,
        if bridge { "bridge " } else { "" },
        rev_name,
        if bridge {
            ": the peer's network overlaps the bridge subnet"
        } else {
            ""
        }
    )
}

/// Loose mode: the fix where the asymmetry is intended, and only advice
/// for a bridge overlap, which it does not heal.
fn loosen_fix(
    bridge: bool,
    hint: &str,
    in_name: &str,
    rev_name: &str,
    src: std::net::IpAddr,
) -> Fix {
    if bridge {
        // Advice only: loosening does not heal a bridge overlap.
        Fix::advice(format!(
            "Loosening rp_filter ({hint}sysctl -w {} net.ipv4.conf.all.rp_filter=2) only moves the failure: replies to {src} would still be routed into {}",
            conf_arg(in_name, "rp_filter", 2),
            q(rev_name)
        ))
    } else {
        let cmd = format!(
            "{hint}sysctl -w {} net.ipv4.conf.all.rp_filter=2",
            conf_arg(in_name, "rp_filter", 2)
        );
        Fix::run(
            format!("If the asymmetry is intended (multi-homing), use loose mode: {cmd}"),
            vec![cmd],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{Fact, Tier};

    /// eth0 (2) uplink with the default route; docker0 (3) a bridge whose
    /// subnet covers the peer.
    fn host(name: Option<&str>) -> Fake {
        let mut t = topo(
            NS,
            name,
            vec![
                link(1, "lo", None, 65536),
                link(2, "eth0", None, 1500),
                link(3, "docker0", Some("bridge"), 1500),
            ],
            vec![
                route("0.0.0.0", 0, 2, Some("10.99.0.1")),
                route("172.17.0.0", 16, 3, None),
            ],
        );
        t.sysctls.rp_filter_all = 1;
        Fake::with(vec![t])
    }

    fn syn_dropped() -> Fact {
        let mut d = tcp(
            drop(Reason::IP_RPFILTER, 1_000),
            "172.17.5.5",
            40000,
            "10.99.0.2",
            8080,
        );
        d.ifindex = 2;
        d.ingress_ifindex = 2;
        d.reverse_route = Some(lookup(3, "docker0", 1500, 0));
        Fact::Drop(d)
    }

    #[test]
    fn reverse_path_into_a_bridge_is_proven() {
        let v = run(&mut host(None), vec![syn_dropped()], 0);
        assert_eq!(kinds(&v), [("rpfilter_route_conflict", Tier::Proven)]);
        let e = &v[0].evidence;
        assert_eq!(e["reverse_route_ifname"], "docker0");
        assert_eq!(e["reverse_route_prefix"], "172.17.0.0/16");
        assert_eq!(e["rp_filter"], 1);
        assert!(v[0].fault);
    }

    #[test]
    fn hostile_namespace_names_are_quoted_in_every_fix() {
        let name = "q$(id)";
        let v = run(&mut host(Some(name)), vec![syn_dropped()], 0);
        assert_eq!(v.len(), 1);
        let cmds: Vec<&String> = v[0]
            .fix
            .iter()
            .filter(|f| f.contains("ip netns exec"))
            .collect();
        assert!(!cmds.is_empty(), "{:?}", v[0].fix);
        for f in cmds {
            assert!(f.contains("ip netns exec 'q$(id)' "), "{f}");
            // Pasted into a shell, the name stays one literal word.
            let cmd = &f[f.find("ip netns exec").unwrap()..];
            let words = shlex::split(cmd).unwrap();
            assert_eq!(words[3], name, "{f}");
        }
        // The commands to run are the quoted ones the text shows.
        let run: Vec<&String> = v[0].fix_commands.iter().flatten().collect();
        assert!(!run.is_empty(), "{:?}", v[0].fix_commands);
        for c in run {
            assert_eq!(shlex::split(c).unwrap()[3], name, "{c}");
        }
    }

    /// A source rule sends the reverse lookup to table 57, whose default
    /// leaves by eth1; main would have said eth0. The kernel's lookup
    /// (table 57) is joined to the drop; the proof names the rule, and fix
    /// 1 adds the route back in table 57, where the rule looks.
    #[test]
    fn a_policy_rule_is_named_and_its_table_fixed() {
        use crate::host::policy::{FibRule, RuleKind};
        let mut t = topo(
            NS,
            Some("mh"),
            vec![
                link(1, "lo", None, 65536),
                link(2, "eth0", None, 1500),
                link(4, "eth1", None, 1500),
            ],
            vec![
                route("0.0.0.0", 0, 2, Some("10.40.0.1")),
                route("10.40.0.0", 24, 2, None),
                route("10.41.0.0", 24, 4, None),
                route("0.0.0.0", 0, 4, Some("10.41.0.1")),
            ],
        );
        t.routes[3].table = 57;
        t.sysctls.rp_filter_all = 1;
        t.rules = vec![FibRule {
            ipv6: false,
            priority: 900,
            kind: RuleKind::Lookup,
            table: 57,
            goto: None,
            from: Some(("10.40.0.7".parse().unwrap(), 32)),
            to: None,
            iif: None,
            oif: None,
            fwmark: None,
            fwmask: None,
            invert: false,
            suppress_prefixlen: None,
            other_selectors: false,
        }];
        let mut d = tcp(
            drop(Reason::IP_RPFILTER, 1_000),
            "192.0.2.50",
            40000,
            "10.40.0.7",
            443,
        );
        d.ifindex = 2;
        d.ingress_ifindex = 2;
        let v = run(
            &mut Fake::with(vec![t.clone()]),
            vec![Fact::Drop(d.clone())],
            0,
        );
        assert_eq!(kinds(&v), [("rpfilter_route_conflict", Tier::Proven)]);
        let e = &v[0].evidence;
        assert_eq!(e["reverse_route_ifname"], "eth1");
        assert_eq!(e["reverse_route_table"], 57);
        assert_eq!(
            e["reverse_route_rule"]["rule"],
            "900: from 10.40.0.7 lookup 57"
        );
        assert_eq!(
            v[0].fix_commands[0],
            ["ip netns exec mh ip route add 192.0.2.50/32 via 10.40.0.1 dev eth0 table 57"]
        );
        // Without the rule, main answers by eth0: no conflict at all.
        t.rules.clear();
        let v = run(&mut Fake::with(vec![t]), vec![Fact::Drop(d)], 0);
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn a_failed_reverse_lookup_is_no_route() {
        let Fact::Drop(mut d) = syn_dropped() else {
            unreachable!()
        };
        d.reverse_route = Some(lookup(0, "", 0, -101));
        let v = run(&mut host(None), vec![Fact::Drop(d)], 0);
        assert_eq!(kinds(&v), [("no_route", Tier::Proven)]);
        assert_eq!(v[0].evidence["route_err"], "ENETUNREACH");
    }
}
