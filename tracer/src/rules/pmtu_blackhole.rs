//! `pmtu_blackhole`: `PKT_TOO_BIG` on forwarded packets, and either the
//! ICMP frag-needed / packet-too-big that should shrink the sender is
//! itself dropped, or the same TCP flow keeps sending too-big packets for
//! over a second. One early burst that stops is PMTU discovery working:
//! no verdict.

use super::ctx::{Ctx, Finding};
use super::facts::forwarding::owns_addr;
use super::facts::nat;
use super::facts::pmtu::{is_ptb_icmp, IcmpDropSite, Proven};
use super::fix::{iptables_for, Fix};
use super::key::Key;
use super::{Fact, Rule, Tier};
use crate::events::reason::Reason;
use crate::events::record::DropRecord;
use crate::events::record::Family;
use crate::host::containers::Container;
use serde_json::json;
use std::net::IpAddr;

/// Concludes the black holes that the facts layer
/// ([`super::facts::pmtu`]) proves from too-big episodes.
#[derive(Default)]
pub struct PmtuBlackhole;

/// The verdict key of a too-big drop: its netns and egress device.
fn pmtu_key(d: &DropRecord) -> Key {
    let egress = d.route.as_ref().map(|r| r.ifindex).unwrap_or(0);
    Key::PmtuBlackhole {
        netns: d.netns,
        egress,
    }
}

impl Rule for PmtuBlackhole {
    fn kinds(&self) -> &'static [&'static str] {
        &["pmtu_blackhole"]
    }

    fn on_fact(&mut self, fact: &Fact, cx: &mut Ctx) {
        let Fact::Drop(d) = fact else { return };
        if d.reason == Reason::PKT_TOO_BIG && !is_ptb_icmp(d) {
            cx.tally(&pmtu_key(d), d.ts_ns);
        }
        conclude_proven(cx);
    }

    fn tick(&mut self, cx: &mut Ctx) {
        conclude_proven(cx);
    }
}

/// A verdict for each episode the latest fact or tick proved.
fn conclude_proven(cx: &mut Ctx) {
    for p in cx.obs.pmtu.proven.clone() {
        verdict(cx, p);
    }
}

fn verdict(cx: &mut Ctx, p: Proven) {
    let (t, blocked) = (p.episode.clone(), p.icmp_blocked);
    let d = &t.rec;
    let topo = cx.topo(d.netns);
    let (egress, egress_mtu) = egress_of(d, topo.as_deref());
    let egress_name = egress.unwrap_or_else(|| "?".to_string());
    // One segment of a GSO packet is what must fit the MTU.
    let packet_size = d.wire_size();
    let key = pmtu_key(d);
    let (src, dst) = (
        d.src.map(|a| a.to_string()).unwrap_or_default(),
        d.dst.map(|a| a.to_string()).unwrap_or_default(),
    );
    let flow = match (d.src, d.dst, d.sport, d.dport) {
        (Some(a), Some(b), Some(sp), Some(dp)) => Some((a, b, sp, dp)),
        _ => None,
    };
    // Seen after NAT (a router's too-big drops of a Docker host's download
    // show the host's address): the pre-NAT tuple names the container.
    let owner = flow.and_then(|f| cx.nat_container(d.netns, f));
    let whose = owner
        .as_ref()
        .map(|(c, o)| format!("{}, here {src} -> {dst}", nat::connections(c, *o)))
        .unwrap_or_else(|| format!("{src} -> {dst}"));
    let summary = format!(
        "Packets of {whose} ({packet_size} bytes) do not fit out {egress_name} (MTU {egress_mtu}), and {}: a PMTU black hole, the connection stalls.",
        if blocked {
            "the ICMP \"fragmentation needed\" that would make the sender shrink them is itself dropped"
        } else {
            "the sender keeps sending them: PMTU discovery is not working"
        }
    );
    let fix = fixes(
        cx,
        d,
        (blocked, p.icmp_site.as_ref()),
        egress_mtu,
        owner.as_ref().map(|(c, _)| &**c),
    );
    let mut evidence = json!({
        "egress_ifname": egress_name,
        "egress_mtu": egress_mtu,
        "packet_size": packet_size,
        "gso_size": d.gso_size,
        "len": d.len,
        "icmp_blocked": blocked,
        "src": d.src,
        "dst": d.dst,
        "sport": d.sport,
        "dport": d.dport,
        "too_big_drops": t.count,
        "location": d.location,
    });
    if let Some((_, o)) = &owner {
        evidence["pre_nat"] = nat::pre_nat(*o);
    }
    // Where the ICMP died, when elsewhere (only then in the evidence).
    if let Some(s) = &p.icmp_site {
        let site_ns = cx
            .netns_name(s.netns)
            .unwrap_or_else(|| s.netns.to_string());
        evidence["icmp_dropped_netns"] = json!(site_ns);
        evidence["icmp_dropped_ifname"] = json!(s.ifname);
        evidence["icmp_dropped_location"] = json!(s.location);
    }
    if let Some(f) = flow {
        cx.about_flow(&key, f);
    }
    if let Some((c, _)) = owner {
        cx.name_container(&key, c);
    }
    cx.conclude(Finding {
        key,
        kind: "pmtu_blackhole",
        tier: Tier::Proven,
        netns: d.netns,
        summary,
        evidence,
        fix,
    });
}

/// The fixes, root cause first; Docker advice where Docker is or where
/// the connections are a container's (named through NAT).
fn fixes(
    cx: &mut Ctx,
    d: &DropRecord,
    (blocked, icmp_site): (bool, Option<&IcmpDropSite>),
    egress_mtu: u32,
    owner: Option<&Container>,
) -> Vec<Fix> {
    let ipt = iptables_for(d.family);
    let hint = cx.ns_hint(d.netns);
    let mut fix = Vec::new();
    // The blocked ICMP is the root cause: letting it through heals PMTU
    // discovery for every protocol, so it comes first.
    if blocked {
        fix.push(allow_icmp_fix(cx, d, &hint, icmp_site));
    }
    let clamp = format!(
        "{hint}{ipt} -t mangle -A FORWARD -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"
    );
    fix.push(Fix::run(
        format!("Clamp TCP MSS to the path MTU where traffic is forwarded: {clamp}"),
        vec![clamp],
    ));
    if cx.docker_here(d.netns) || owner.is_some() {
        let net = owner.map(nat::on_networks).unwrap_or_default();
        fix.push(Fix::advice(format!(
            "Or give containers an MTU that fits{net}: dockerd --mtu={egress_mtu} (\"mtu\": {egress_mtu} in /etc/docker/daemon.json), or docker network create -o com.docker.network.driver.mtu={egress_mtu}"
        )));
    } else if let Some(src_addr) = d.src {
        fix.push(Fix::advice(format!(
            "Or lower the MTU on the sender's side of the path (the host of {src_addr}) to {egress_mtu}"
        )));
    }
    fix
}

/// Lets the "too big" ICMP through where it was dropped: out of (and
/// through) the too-big drop's namespace, or, when it died in another one,
/// in the chain it met there: INPUT where it was addressed to (the
/// sender), OUTPUT where it was made, else FORWARD.
fn allow_icmp_fix(cx: &mut Ctx, d: &DropRecord, hint: &str, site: Option<&IcmpDropSite>) -> Fix {
    let (ipt6, what, kind) = if d.family == Some(Family::Ipv6) {
        (
            "ip6tables",
            "-p icmpv6 --icmpv6-type packet-too-big",
            "ICMPv6 packet-too-big",
        )
    } else {
        (
            "iptables",
            "-p icmp --icmp-type fragmentation-needed",
            "ICMP fragmentation-needed",
        )
    };
    let Some(s) = site else {
        let out = format!("{hint}{ipt6} -I OUTPUT {what} -j ACCEPT");
        let fwd = format!("{hint}{ipt6} -I FORWARD {what} -j ACCEPT");
        return Fix::run(
            format!("Let {kind} out: {out} (and in FORWARD)"),
            vec![out, fwd],
        );
    };
    let topo = cx.topo(s.netns);
    let owns = |a: Option<IpAddr>| a.zip(topo.as_deref()).is_some_and(|(a, t)| owns_addr(t, a));
    let (chain, how) = if owns(Some(s.dst)) {
        ("INPUT", "in, where the sender drops it")
    } else if owns(s.src) {
        ("OUTPUT", "out, where it is dropped")
    } else {
        ("FORWARD", "through, where it is dropped")
    };
    let there = cx.ns_hint(s.netns);
    let cmd = format!("{there}{ipt6} -I {chain} {what} -j ACCEPT");
    Fix::run(format!("Let {kind} {how}: {cmd}"), vec![cmd])
}

/// The device the too-big packets were to leave by, and its MTU: the
/// joined route lookup's, else the namespace's routing table's.
fn egress_of(
    d: &DropRecord,
    topo: Option<&crate::host::topology::NsTopology>,
) -> (Option<String>, u32) {
    match (&d.route, topo) {
        (Some(r), _) if r.ifindex > 0 => (r.ifname.clone(), r.mtu),
        (_, Some(tp)) => {
            let l = d
                .dst
                .and_then(|a| tp.route_to(a))
                .and_then(|r| r.oif)
                .and_then(|i| tp.link(i));
            (l.map(|l| l.name.clone()), l.map(|l| l.mtu).unwrap_or(0))
        }
        _ => (None, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{Fact, Tier};
    use crate::events::record::DropRecord;
    use crate::events::record::Proto;

    fn too_big(ts: u64) -> Fact {
        let mut d = tcp(
            drop(Reason::PKT_TOO_BIG, ts),
            "10.200.0.2",
            443,
            "10.99.0.2",
            50000,
        );
        d.len = 7292;
        d.gso_size = 1448;
        d.gso_segs = 5;
        d.route = Some(lookup(2, "eth0", 1450, 0));
        Fact::Drop(d)
    }

    fn icmp_dropped(ts: u64) -> DropRecord {
        let mut d = drop(Reason::NETFILTER_DROP, ts);
        d.proto = Some(Proto::Icmp);
        d.src = Some(ip("10.200.0.1"));
        d.dst = Some(ip("10.200.0.2"));
        d.icmp_type = Some(3);
        d.icmp_code = Some(4);
        d
    }

    #[test]
    fn blocked_frag_needed_proves_a_black_hole() {
        let v = run(
            &mut Fake::default(),
            vec![Fact::Drop(icmp_dropped(1_000)), too_big(2_000)],
            0,
        );
        // The ICMP drop is linked here, and is a firewall drop of its own.
        assert_eq!(
            kinds(&v),
            [
                ("netfilter_drop", Tier::Proven),
                ("pmtu_blackhole", Tier::Proven)
            ]
        );
        let v = &v[1..];
        let e = &v[0].evidence;
        assert_eq!(e["icmp_blocked"], true);
        assert_eq!(e["packet_size"], 1500, "one segment, not skb->len");
        // No Docker here: no Docker advice.
        assert!(
            v[0].fix.iter().all(|f| !f.contains("dockerd")),
            "{:?}",
            v[0].fix
        );
    }

    /// The ICMP dropped in the sender's own namespace (its INPUT), not
    /// where the too-big drop is: still linked, and fix 1 lets it in there.
    #[test]
    fn an_icmp_dropped_at_the_sender_is_linked() {
        let mut snd = topo(
            NS + 7,
            Some("sender"),
            vec![link(2, "o0", Some("veth"), 1500)],
            vec![],
        );
        snd.links[0].addrs.push((ip("10.200.0.2"), 24));
        let mut icmp = icmp_dropped(1_000);
        icmp.netns = NS + 7;
        icmp.ifname = Some("o0".into());
        let v = run(
            &mut Fake::with(vec![snd]),
            vec![Fact::Drop(icmp), too_big(2_000)],
            0,
        );
        assert_eq!(
            kinds(&v),
            [
                ("netfilter_drop", Tier::Proven),
                ("pmtu_blackhole", Tier::Proven)
            ]
        );
        assert_eq!(v[0].netns_name.as_deref(), Some("sender"));
        let v = &v[1..];
        let e = &v[0].evidence;
        assert_eq!(e["icmp_blocked"], true);
        assert_eq!(e["icmp_dropped_netns"], "sender");
        assert_eq!(e["icmp_dropped_ifname"], "o0");
        assert_eq!(
            v[0].fix_commands[0],
            ["ip netns exec sender iptables -I INPUT -p icmp --icmp-type fragmentation-needed -j ACCEPT"]
        );
    }

    #[test]
    fn a_flow_older_than_the_last_path_change_is_marked_stale() {
        // The flow's first packet came before the path last changed (an
        // MSS clamp added, say): the verdict says so, with its first-seen.
        let mut old = Fake::default();
        old.changed_before.insert(NS, 1_500);
        let v = run(
            &mut old,
            vec![
                Fact::Drop(icmp_dropped(1_000)),
                too_big(1_000),
                too_big(2_000),
            ],
            0,
        );
        assert_eq!(
            kinds(&v),
            [
                ("netfilter_drop", Tier::Proven),
                ("pmtu_blackhole", Tier::Proven)
            ]
        );
        let v = &v[1..];
        assert!(v[0].stale);
        assert_eq!(v[0].first_seen_ns, Some(1_000));
        // A flow that began after the change is news.
        let mut new = Fake::default();
        new.changed_before.insert(NS, 500);
        let v = run(
            &mut new,
            vec![
                Fact::Drop(icmp_dropped(1_000)),
                too_big(1_000),
                too_big(2_000),
            ],
            0,
        );
        assert_eq!(v[1].kind, "pmtu_blackhole");
        assert!(!v[1].stale);
        assert_eq!(v[1].first_seen_ns, Some(1_000));
    }

    #[test]
    fn one_burst_that_stops_is_discovery_working() {
        let v = run(
            &mut Fake::default(),
            vec![too_big(1_000), too_big(2_000)],
            4_000_000_000,
        );
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn too_big_for_over_a_second_is_a_black_hole() {
        let ms = 1_000_000;
        let facts = [10, 300, 700, 1500].map(|t| too_big(t * ms)).to_vec();
        let v = run(&mut Fake::default(), facts, 0);
        assert_eq!(kinds(&v), [("pmtu_blackhole", Tier::Proven)]);
        assert_eq!(v[0].evidence["icmp_blocked"], false);
    }
}
