//! `asymmetric_route`: replies to a peer go out one device while the
//! peer's packets arrive on another, and the peer is asked for on-link
//! where it is not (typically a bridge whose subnet overlaps the peer's
//! network). Proven two ways:
//!
//! - a reply lost (`NEIGH_FAILED`) while the peer's packets arrive
//!   elsewhere (the kernel's input-route lookup joined to the drop, or
//!   earlier drops from that peer);
//! - earlier, within milliseconds of the first packet: a neighbour event
//!   (ARP/ND starts for the peer on the reply's device) whose arrivals
//!   (the kernel's input-route lookups of the peer's packets, in this
//!   namespace or in the host behind a container's veth) show the peer
//!   entering by another device than the bridge. This is the published
//!   port case under loose (2) or no (0) rp_filter: the SYN is DNAT'd into
//!   a container that has the bridge subnet on-link, so it ARPs for the
//!   client on the bridge, where nobody answers. Strict rp_filter (1)
//!   drops the SYN on arrival instead: that is `rpfilter_route_conflict`.

use super::ctx::{Ctx, Finding};
use super::facts::arrivals::peer_arrives_elsewhere;
use super::facts::route_policy;
use super::fix::{bridge_fixes, host_route, net, route_via, BridgeOwner, Fix};
use super::key::Key;
use super::{Fact, Rule, Tier};
use crate::events::reason::Reason;
use crate::events::record::{Arrival, DropRecord, NeighRecord};
use crate::host::topology::{Link, NsTopology};
use serde_json::json;
use std::net::IpAddr;

pub struct AsymmetricRoute;

/// The key of a verdict about replies to `peer` lost on `egress` of
/// `netns` while the peer enters `in_netns` on `in_if`.
fn key(netns: u32, in_netns: u32, in_if: i32, egress: i32) -> Key {
    Key::Asymmetric {
        netns,
        in_netns,
        in_if,
        egress,
    }
}

impl Rule for AsymmetricRoute {
    fn kinds(&self) -> &'static [&'static str] {
        &["asymmetric_route"]
    }

    fn on_fact(&mut self, fact: &Fact, cx: &mut Ctx) {
        match fact {
            Fact::Drop(d) => on_drop(d, cx),
            Fact::Neigh(n) => on_neigh(n, cx),
            Fact::Syn(_) => {}
        }
    }
}

fn on_drop(d: &DropRecord, cx: &mut Ctx) {
    if d.reason != Reason::NEIGH_FAILED {
        return;
    }
    let (Some(peer), Some(topo)) = (d.dst, cx.topo(d.netns)) else {
        return;
    };
    let egress = d.ifindex;
    let Some(out_link) = topo.link(egress).cloned() else {
        return;
    };
    let Some(in_link) = peer_arrives_elsewhere(d, cx.obs, &topo) else {
        // Proven earlier from the neighbour's arrivals: these are its
        // replies dying now.
        if let Some(k) = cx.obs.arrives_elsewhere.get(&(d.netns, peer)).cloned() {
            cx.tally(&k, d.ts_ns);
        }
        return;
    };
    let key = key(d.netns, d.netns, in_link.ifindex, egress);
    cx.tally(&key, d.ts_ns);
    host_verdict(
        cx,
        key,
        d.netns,
        &topo,
        &in_link,
        &out_link,
        peer,
        d.src,
        d.reason.as_str(),
        d.route.is_some(),
    );
}

#[allow(clippy::too_many_arguments)]
fn host_verdict(
    cx: &mut Ctx,
    key: Key,
    netns: u32,
    topo: &NsTopology,
    in_link: &Link,
    out_link: &Link,
    peer: IpAddr,
    local: Option<IpAddr>,
    reason: &str,
    route_from_kernel: bool,
) {
    let egress = out_link.ifindex;
    let hint = cx.ns_hint(netns);
    let prefix = topo
        .prefix_on(egress, peer)
        .map(net)
        .unwrap_or_else(|| peer.to_string());
    let bridge = topo.is_bridge(egress);
    let reply = route_policy::reply(topo, local, peer);
    let table_arg = reply.as_ref().map(|p| p.table_arg()).unwrap_or_default();
    let (table, rule) = route_policy::evidence(reply.as_ref());
    let summary = format!(
        "Traffic from {peer} arrives on {} but the replies are routed out {}{} ({prefix}), where {peer} never answers ARP/ND: they are dropped when the neighbour fails{}.",
        in_link.name,
        if bridge { "bridge " } else { "" },
        out_link.name,
        if bridge {
            "; the peer's network overlaps the bridge subnet"
        } else {
            ""
        }
    );
    let owner = if bridge {
        cx.docker_owner(netns, &out_link.name)
    } else {
        None
    };
    let fix = if bridge {
        bridge_fixes(
            topo,
            &out_link.name,
            &prefix,
            peer,
            &hint,
            in_link.ifindex,
            match &owner {
                Some(n) => BridgeOwner::Docker(n.as_ref()),
                None => BridgeOwner::Other,
            },
            None,
        )
    } else {
        let cmd = format!(
            "{hint}ip route add {} {}{table_arg}",
            host_route(peer),
            route_via(topo, in_link.ifindex, peer)
        );
        vec![Fix::run(
            format!(
                "Route {peer} back out {}, where it arrives: {cmd}",
                in_link.name
            ),
            vec![cmd],
        )]
    };
    let evidence = json!({
        "ingress_ifname": in_link.name,
        "egress_ifname": out_link.name,
        "peer": peer,
        "egress_prefix": prefix,
        "bridge": bridge,
        "docker_network": owner.flatten().map(|n| n.name),
        "local": local,
        "reason": reason,
        "neighbor_states": cx.obs.neigh.get(&(netns, egress, peer)),
        "route_from_kernel": route_from_kernel,
        "route_table": table,
        "route_rule": rule,
    });
    cx.conclude(Finding {
        key,
        kind: "asymmetric_route",
        tier: Tier::Proven,
        netns,
        summary,
        evidence,
        fix,
    });
}

/// A neighbour being resolved (or failed) whose own packets, as the
/// kernel's input-route lookups saw them, entered by another device.
fn on_neigh(n: &NeighRecord, cx: &mut Ctx) {
    let Some(peer) = n.neighbor else { return };
    if n.arrivals.is_empty() || cx.obs.arrives_elsewhere.contains_key(&(n.netns, peer)) {
        return;
    }
    let Some(topo) = cx.topo(n.netns) else { return };
    let egress = n.ifindex;
    let Some(out_link) = topo.link(egress).cloned() else {
        return;
    };
    // The replies ask for the peer itself on this link (not a gateway).
    let on_link = topo
        .route_to(peer)
        .is_some_and(|r| r.gateway.is_none() && r.oif == Some(egress));
    if !on_link {
        return;
    }
    // Behind a veth (a container): the host side, and its bridge.
    let host = cx.veth_peer(n.netns, egress);
    let host_topo = host.as_ref().and_then(|(h, _)| cx.topo(*h));
    let host_bridge = host
        .as_ref()
        .and_then(|(_, p)| p.master)
        .and_then(|m| host_topo.as_ref().and_then(|t| t.link(m)).cloned());
    for a in &n.arrivals {
        if a.netns == n.netns {
            // Entered right here: fine if by the reply's device (or a port
            // of it, when it is a bridge).
            let Some(in_link) = topo.link(a.iif).cloned() else {
                continue;
            };
            if a.iif == egress || in_link.master == Some(egress) {
                continue;
            }
            let k = key(n.netns, n.netns, a.iif, egress);
            cx.obs.arrives_elsewhere.insert((n.netns, peer), k.clone());
            cx.clock_from(&k, n.ts_ns.saturating_sub(a.age_ns.max(0) as u64));
            host_verdict(
                cx,
                k,
                n.netns,
                &topo,
                &in_link,
                &out_link,
                peer,
                Some(a.dst),
                "NEIGH_INCOMPLETE",
                true,
            );
            return;
        }
        if routed_into_segment(cx, n, peer, &topo, &out_link, a) {
            return;
        }
        let (Some((h, port)), Some(ht)) = (&host, &host_topo) else {
            continue;
        };
        if a.netns != *h {
            continue;
        }
        let Some(in_link) = ht.link(a.iif).cloned() else {
            continue;
        };
        let via_bridge = host_bridge
            .as_ref()
            .is_some_and(|b| a.iif == b.ifindex || in_link.master == Some(b.ifindex));
        if a.iif == port.ifindex || via_bridge {
            continue;
        }
        let k = key(n.netns, *h, a.iif, egress);
        cx.obs.arrives_elsewhere.insert((n.netns, peer), k.clone());
        cx.clock_from(&k, n.ts_ns.saturating_sub(a.age_ns.max(0) as u64));
        container_verdict(
            cx,
            k,
            n,
            peer,
            &topo,
            &out_link,
            *h,
            ht,
            &in_link,
            port,
            host_bridge.as_ref(),
            a.dst,
        );
        return;
    }
}

/// A macvlan or ipvlan whose on-link prefix covers a peer that a gateway
/// on the parent's segment routes in (the arrival: that gateway's lookup
/// took the peer's packet from another device into the segment): the
/// replies ask for the peer on-link, where it is not. Concluded (and true
/// returned) when `a` shows it.
fn routed_into_segment(
    cx: &mut Ctx,
    n: &NeighRecord,
    peer: IpAddr,
    topo: &NsTopology,
    out_link: &Link,
    a: &Arrival,
) -> bool {
    let shares_parent = matches!(
        out_link.kind.as_deref(),
        Some("macvlan" | "ipvlan" | "macvtap" | "ipvtap")
    );
    let (Some(pns), Some(pif)) = (out_link.peer_netns, out_link.link) else {
        return false;
    };
    if !shares_parent || a.iif == a.ifindex {
        return false;
    }
    let gw_side = cx.veth_peer(pns, pif).map(|(q, l)| (q, l.ifindex));
    if (a.netns, a.ifindex) != (pns, pif) && Some((a.netns, a.ifindex)) != gw_side {
        return false;
    }
    let Some(gt) = cx.topo(a.netns) else {
        return false;
    };
    let (Some(seg), Some(from)) = (gt.link(a.ifindex).cloned(), gt.link(a.iif).cloned()) else {
        return false;
    };
    let prefix = topo.prefix_on(out_link.ifindex, peer).cloned();
    let reply = route_policy::reply(topo, Some(a.dst), peer);
    let table_arg = reply.as_ref().map(|p| p.table_arg()).unwrap_or_default();
    let (table, rule) = route_policy::evidence(reply.as_ref());
    // The gateway's own address on the segment, inside our prefix.
    let gw = seg
        .addrs
        .iter()
        .map(|(x, _)| *x)
        .find(|x| prefix.as_ref().is_some_and(|p| p.contains(*x)));
    let k = key(n.netns, a.netns, a.iif, out_link.ifindex);
    cx.obs.arrives_elsewhere.insert((n.netns, peer), k.clone());
    cx.clock_from(&k, n.ts_ns.saturating_sub(a.age_ns.max(0) as u64));
    let hint = cx.ns_hint(n.netns);
    let gw_ns = cx
        .netns_name(a.netns)
        .unwrap_or_else(|| a.netns.to_string());
    let prefix = prefix.as_ref().map(net).unwrap_or_else(|| peer.to_string());
    let summary = format!(
        "Traffic from {peer} is routed into {}'s segment by {gw_ns} (from {} to {}), but the replies ask for {peer} on-link on {} ({prefix}), where it never answers ARP/ND: the peer's network overlaps the {} subnet.",
        out_link.name,
        from.name,
        seg.name,
        out_link.name,
        out_link.kind.as_deref().unwrap_or("link"),
    );
    let mut fix = Vec::new();
    if let Some(g) = gw {
        let cmd = format!(
            "{hint}ip route add {} via {g} dev {}{table_arg}",
            host_route(peer),
            super::fix::q(&out_link.name)
        );
        fix.push(Fix::run(
            format!("Route {peer} through the gateway {g} that it arrives from: {cmd}"),
            vec![cmd],
        ));
    }
    fix.push(Fix::advice(format!(
        "Narrow {}'s prefix ({prefix}) so that it no longer covers {peer}'s network",
        out_link.name
    )));
    let evidence = json!({
        "ingress_netns": gw_ns,
        "ingress_ifname": from.name,
        "gateway_ifname": seg.name,
        "gateway": gw,
        "egress_ifname": out_link.name,
        "egress_kind": out_link.kind,
        "peer": peer,
        "egress_prefix": prefix,
        "local": a.dst,
        "reason": "NEIGH_INCOMPLETE",
        "neighbor_states": cx.obs.neigh.get(&(n.netns, out_link.ifindex, peer)),
        "route_from_kernel": true,
        "route_table": table,
        "route_rule": rule,
    });
    cx.conclude(Finding {
        key: k,
        kind: "asymmetric_route",
        tier: Tier::Proven,
        netns: n.netns,
        summary,
        evidence,
        fix,
    });
    true
}

/// The published-port case: the peer reaches a container through the
/// host's `in_link`, and the container answers on `out_link` (its veth
/// into `bridge`), where it has the peer's address on-link.
#[allow(clippy::too_many_arguments)]
fn container_verdict(
    cx: &mut Ctx,
    key: Key,
    n: &NeighRecord,
    peer: IpAddr,
    topo: &NsTopology,
    out_link: &Link,
    host_ns: u32,
    host_topo: &NsTopology,
    in_link: &Link,
    port: &Link,
    bridge: Option<&Link>,
    container_addr: IpAddr,
) {
    let (container, name, who) = named(cx, n.netns);
    let prefix = topo
        .prefix_on(out_link.ifindex, peer)
        .map(net)
        .unwrap_or_else(|| peer.to_string());
    let bridge_name = bridge.map(|b| b.name.clone());
    let owner = bridge_name
        .as_deref()
        .and_then(|b| cx.docker_owner(host_ns, b));
    let docker_net = owner.clone().flatten().map(|d| d.name);
    let ports = container
        .as_ref()
        .map(|c| c.ports_text())
        .filter(|p| !p.is_empty());
    let via = match (&docker_net, &bridge_name) {
        (Some(d), Some(b)) => format!("Docker network {d}, bridge {b}"),
        (None, Some(b)) => format!("bridge {b}"),
        _ => format!("host side {}", port.name),
    };
    let summary = format!(
        "Traffic from {peer} to {who}{} arrives on the host's {}, but {who} has {prefix} on-link on its {} ({via}), so its replies ask ARP/ND for {peer} inside the bridge, where nobody answers: {peer}'s network overlaps the {} subnet. The replies die when the neighbour fails (about 3 s after each connection attempt).",
        ports
            .as_ref()
            .map(|p| format!(" (published {p}, at {container_addr})"))
            .unwrap_or_else(|| format!(" at {container_addr}")),
        in_link.name,
        out_link.name,
        if docker_net.is_some() { "Docker network's" } else { "bridge's" },
    );
    let host_hint = cx.ns_hint(host_ns);
    let fix = match &bridge_name {
        Some(b) => bridge_fixes(
            host_topo,
            b,
            &prefix,
            peer,
            &host_hint,
            in_link.ifindex,
            match &owner {
                Some(n) => BridgeOwner::Docker(n.as_ref()),
                None => BridgeOwner::Other,
            },
            Some(&name),
        ),
        None => vec![Fix::advice(format!(
            "Give {who} a route to {peer} through its gateway instead of on-link, or move its subnet off {peer}'s network"
        ))],
    };
    let evidence = json!({
        "ingress_ifname": in_link.name,
        "egress_ifname": out_link.name,
        "peer": peer,
        "egress_prefix": prefix,
        "bridge": true,
        "bridge_ifname": bridge_name,
        "docker_network": docker_net,
        "container": container.as_ref().map(|c| c.r.name.clone()),
        "container_addr": container_addr,
        "published_ports": ports,
        "host_ifname": port.name,
        "rp_filter": host_topo.rp_filter(&in_link.name),
        "neighbor_state": n.state,
        "route_from_kernel": true,
    });
    cx.conclude(Finding {
        key,
        kind: "asymmetric_route",
        tier: Tier::Proven,
        netns: n.netns,
        summary,
        evidence,
        fix,
    });
}

/// The container in `netns` and how a verdict names it: `container web`,
/// or `the namespace in netns NAME` where no container is known.
fn named(
    cx: &mut Ctx,
    netns: u32,
) -> (
    Option<std::sync::Arc<crate::host::containers::Container>>,
    String,
    String,
) {
    let container = cx.container(netns);
    let name = match &container {
        Some(c) => c.r.name.clone(),
        None => format!(
            "in netns {}",
            cx.netns_name(netns).unwrap_or_else(|| netns.to_string())
        ),
    };
    let who = if container.is_some() {
        format!("container {name}")
    } else {
        format!("the namespace {name}")
    };
    (container, name, who)
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{Fact, Tier};
    use crate::events::record::NudState;
    use crate::events::record::{Arrival, NeighRecord};
    use crate::host::containers::{
        Container, ContainerRef, DockerNetwork, PublishedPort, Registry,
    };

    fn host() -> Fake {
        Fake::with(vec![topo(
            NS,
            None,
            vec![
                link(2, "eth0", None, 1500),
                link(3, "docker0", Some("bridge"), 1500),
            ],
            vec![
                route("0.0.0.0", 0, 2, Some("10.99.0.1")),
                route("172.17.0.0", 16, 3, None),
            ],
        )])
    }

    fn synack_lost(with_input_route: bool) -> Fact {
        let mut d = tcp(
            drop(Reason::NEIGH_FAILED, 3_000_000_000),
            "10.99.0.2",
            8080,
            "172.17.5.5",
            40000,
        );
        d.ifindex = 3;
        if with_input_route {
            let mut r = lookup(2, "eth0", 1500, 0);
            r.iif = 2;
            d.reverse_route = Some(r);
        }
        Fact::Drop(d)
    }

    #[test]
    fn reply_into_the_bridge_while_the_peer_uses_the_uplink() {
        let v = run(&mut host(), vec![synack_lost(true)], 0);
        assert_eq!(kinds(&v), [("asymmetric_route", Tier::Proven)]);
        assert_eq!(v[0].evidence["ingress_ifname"], "eth0");
        assert_eq!(v[0].evidence["egress_ifname"], "docker0");
    }

    #[test]
    fn earlier_drops_from_the_peer_also_show_where_it_arrives() {
        let mut early = tcp(
            drop(Reason::NOT_SPECIFIED, 1_000),
            "172.17.5.5",
            40000,
            "10.99.0.2",
            8080,
        );
        early.ingress_ifindex = 2;
        let v = run(&mut host(), vec![Fact::Drop(early), synack_lost(false)], 0);
        assert_eq!(kinds(&v), [("asymmetric_route", Tier::Proven)]);
    }

    const CT: u32 = 4026532999;

    /// The host (NS): uplink eth0 (2), docker0 (3), the container's host
    /// veth (9, a docker0 port). The container (CT): eth0 (2), peer 9.
    fn published() -> Fake {
        let mut veth = link(9, "veth1a2b", Some("veth"), 1500);
        veth.master = Some(3);
        veth.link = Some(2);
        veth.peer_netns = Some(CT);
        let mut ct_eth0 = link(2, "eth0", Some("veth"), 1500);
        ct_eth0.link = Some(9);
        ct_eth0.peer_netns = Some(NS);
        ct_eth0.addrs = vec![(ip("172.17.0.2"), 16)];
        let mut f = Fake::with(vec![
            topo(
                NS,
                None,
                vec![
                    link(2, "eth0", None, 1500),
                    link(3, "docker0", Some("bridge"), 1500),
                    veth,
                ],
                vec![
                    route("0.0.0.0", 0, 2, Some("10.199.0.254")),
                    route("10.199.0.0", 24, 2, None),
                    route("172.17.0.0", 16, 3, None),
                ],
            ),
            topo(
                CT,
                None,
                vec![ct_eth0],
                vec![
                    route("0.0.0.0", 0, 2, Some("172.17.0.1")),
                    route("172.17.0.0", 16, 2, None),
                ],
            ),
        ]);
        f.containers = Registry::new(
            vec![Container {
                r: ContainerRef {
                    runtime: "docker".into(),
                    id: "c0ffee".into(),
                    name: "web-1".into(),
                    image: Some("tiny".into()),
                    ..Default::default()
                },
                netns: CT,
                ports: vec![PublishedPort {
                    host_ip: "0.0.0.0".into(),
                    host_port: 8080,
                    container_port: 8080,
                    proto: "tcp".into(),
                }],
                ..Default::default()
            }],
            vec![DockerNetwork {
                name: "bridge".into(),
                id: "n1".into(),
                driver: "bridge".into(),
                bridge: Some("docker0".into()),
                subnets: vec!["172.17.0.0/16".into()],
            }],
            true,
        );
        f
    }

    fn arp_for_client(ts: u64, state: NudState, iif: i32) -> Fact {
        Fact::Neigh(NeighRecord {
            kind: "neigh",
            ts_ns: ts,
            netns: CT,
            netns_name: None,
            container: None,
            ifindex: 2,
            ifname: Some("eth0".into()),
            host_ifname: None,
            neighbor: Some(ip("172.17.5.5")),
            state,
            arrivals: vec![Arrival {
                netns: NS,
                iif,
                iifname: None,
                ifindex: 3,
                ifname: Some("docker0".into()),
                dst: ip("172.17.0.2"),
                age_ns: 2_000_000,
            }],
        })
    }

    #[test]
    fn published_port_is_proven_from_the_first_arp_not_as_neighbor_unreachable() {
        let mut lost = tcp(
            drop(Reason::NEIGH_FAILED, 3_100_000_000),
            "172.17.0.2",
            8080,
            "172.17.5.5",
            40000,
        );
        lost.netns = CT;
        lost.ifindex = 2;
        let facts = vec![
            arp_for_client(100_000_000, NudState::Incomplete, 2),
            Fact::Drop(lost),
        ];
        let v = run(&mut published(), facts, 0);
        assert_eq!(kinds(&v), [("asymmetric_route", Tier::Proven)]);
        let v = &v[0];
        assert_eq!(v.container.as_ref().unwrap().name, "web-1");
        assert_eq!(v.evidence["ingress_ifname"], "eth0");
        assert_eq!(v.evidence["bridge_ifname"], "docker0");
        assert_eq!(v.evidence["docker_network"], "bridge");
        assert_eq!(v.evidence["host_ifname"], "veth1a2b");
        assert_eq!(v.evidence["published_ports"], "0.0.0.0:8080->8080/tcp");
        // From the SYN's arrival (2 ms before the ARP), not from a loss.
        assert!((v.latency_ms - 2.0).abs() < 0.01, "{}", v.latency_ms);
        assert_eq!(v.drops, 1, "the NEIGH_FAILED drop counted later");
        assert!(v.summary.contains("web-1") && v.summary.contains("172.17.5.5"));
        assert!(v.fix[0].contains("\"bip\""), "{:?}", v.fix);
        assert!(v.fix[0].contains("default-address-pools"), "{:?}", v.fix);
        assert!(
            !v.fix.iter().any(|f| f.contains("/32")),
            "no host-route stopgap for a container's flow: {:?}",
            v.fix
        );
        // The suggested subnets overlap neither the host's networks nor the client.
        let bip = v.fix[0].split("\"bip\": \"").nth(1).unwrap();
        let pool = v.fix[0].split("\"base\": \"").nth(1).unwrap();
        for s in [bip, pool] {
            assert!(
                !s.starts_with("172.17.") && !s.starts_with("10.199."),
                "{s}"
            );
        }
    }

    #[test]
    fn a_client_that_arrives_through_the_bridge_proves_nothing() {
        // iif 9: the container's own host veth, i.e. from inside the bridge.
        let v = run(
            &mut published(),
            vec![arp_for_client(100_000_000, NudState::Incomplete, 3)],
            0,
        );
        assert_eq!(kinds(&v), []);
    }
}
