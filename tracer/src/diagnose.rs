//! From drops to causes. Each verdict is proven by combining three kinds
//! of facts: the drop itself (reason, device, flow), the route lookups the
//! kernel made for that flow (joined to the drop in the kernel), and the
//! topology of the namespace (links, bridges, MTUs, routes, sysctls). A
//! verdict says what happened, the facts that prove it, and what to change.
//!
//! Rules never depend on names (docker0, eth0), subnets or MTU values.

use crate::event::{DropRecord, RouteRecord, SynRecord};
use crate::topology::{NsTopology, Route};
use crate::watch::{Consumer, Session};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use tracer_abi::{DropEvent, NeighEvent, SynEvent};

/// One proven cause, printed once when proven and counted afterwards.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    #[serde(rename = "type")]
    pub kind_type: &'static str,
    pub kind: &'static str,
    pub netns: u32,
    pub netns_name: Option<String>,
    pub summary: String,
    pub evidence: Map<String, Value>,
    pub fix: Vec<String>,
    /// Drops attributed to this cause when it was printed.
    pub drops: u64,
    /// Milliseconds from the first drop (or SYN) of this cause to the verdict.
    pub latency_ms: f64,
    /// True for causes that are faults; false for notes such as a closed port.
    pub fault: bool,
}

/// Verdicts printed per kind before further ones are only counted.
const MAX_VERDICTS_PER_KIND: usize = 20;

/// How long a too-large MSS waits for signs that PMTU discovery works.
const SYN_WINDOW: std::time::Duration = std::time::Duration::from_millis(2500);

/// A route lookup joins a drop as evidence only if it ran this close to it.
const ROUTE_JOIN_MAX_AGE_NS: u64 = 10_000_000_000;

/// Too-big drops further apart than this belong to separate episodes.
const TOO_BIG_EPISODE_NS: u64 = 5_000_000_000;

/// A flow seen with PKT_TOO_BIG, waiting for proof that PMTU discovery fails.
struct TooBig {
    first_ts: u64,
    last_ts: u64,
    count: u64,
    rec: DropRecord,
}

#[derive(Default)]
pub struct Diagnoser {
    /// Dedup key -> index into `verdicts`.
    seen: HashMap<String, usize>,
    pub verdicts: Vec<Verdict>,
    /// First drop time per dedup key, for latency and counts.
    pending_count: HashMap<String, (u64, u64)>,
    too_big: HashMap<String, TooBig>,
    /// ICMP "fragmentation needed" / ICMPv6 "packet too big" that were
    /// themselves dropped: (netns, destination) -> time.
    icmp_ptb_dropped: HashMap<(u32, IpAddr), u64>,
    /// Where traffic from a peer entered: (netns, peer) -> ingress ifindex.
    ingress_of_peer: HashMap<(u32, IpAddr), i32>,
    /// Print drops as context (text and JSON).
    pub show_drops: bool,
    /// Forwarded SYNs with too large an MSS, waiting to see whether PMTU
    /// discovery rescues their connections: key -> (SYN, when seen).
    pending_syn: HashMap<String, (SynRecord, std::time::Instant)>,
    /// Flows (src, dst, sport, dport) that hit PKT_TOO_BIG anywhere, and
    /// whether a PMTU black hole was proven for them.
    ptb_flows: HashMap<(IpAddr, IpAddr, u16, u16), bool>,
    /// Neighbour states seen: (netns, ifindex, addr) -> states in order.
    neigh: HashMap<(u32, i32, IpAddr), Vec<&'static str>>,
    /// Verdicts not printed because their kind hit MAX_VERDICTS_PER_KIND.
    pub suppressed: u64,
    suppressed_keys: std::collections::HashSet<String>,
    /// Notify once every kind listed has been proven (the lab's early stop).
    pub stop_when: Option<(Vec<String>, Arc<tokio::sync::Notify>)>,
}

fn wall_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn net(r: &Route) -> String {
    format!("{}/{}", r.dst, r.prefix_len)
}

/// Header overhead from the IP header to the end of a bare TCP header.
fn tcp_overhead(a: Option<IpAddr>) -> u32 {
    match a {
        Some(IpAddr::V6(_)) => 60,
        _ => 40,
    }
}

fn is_ptb_icmp(d: &DropRecord) -> bool {
    matches!(
        (d.proto.as_deref(), d.icmp_type, d.icmp_code),
        (Some("icmp"), Some(3), Some(4)) | (Some("icmp6"), Some(2), _)
    )
}

/// A private subnet that overlaps nothing routed or addressed in `topo`
/// and not `avoid`: a concrete value for "move the bridge elsewhere".
fn free_subnet(topo: &NsTopology, avoid: IpAddr) -> String {
    let candidates = [
        ("192.168.203.0", 24u8),
        ("10.213.0.0", 16),
        ("172.31.240.0", 20),
        ("192.168.250.0", 24),
    ];
    for (a, len) in candidates {
        let base: IpAddr = a.parse().expect("literal");
        let overlaps = |n: IpAddr, l: u8| {
            let m = l.min(len);
            crate::topology::prefix_contains(n, m, base)
                || crate::topology::prefix_contains(base, m, n)
        };
        let clash = topo
            .routes
            .iter()
            .any(|r| r.dst.is_ipv4() && r.prefix_len > 0 && overlaps(r.dst, r.prefix_len))
            || topo
                .links
                .iter()
                .flat_map(|l| l.addrs.iter())
                .any(|(ad, pl)| ad.is_ipv4() && overlaps(*ad, *pl))
            || crate::topology::prefix_contains(base, len, avoid);
        if !clash {
            return format!("{a}/{len}");
        }
    }
    "192.168.203.0/24".to_string()
}

/// `via GW dev IF` towards `ifindex`'s gateway, or `dev IF` when on-link.
fn route_via(topo: &NsTopology, ifindex: i32) -> String {
    let name = topo
        .link(ifindex)
        .map(|l| l.name.clone())
        .unwrap_or_else(|| format!("if{ifindex}"));
    match topo
        .routes
        .iter()
        .find(|r| r.oif == Some(ifindex) && r.gateway.is_some())
        .and_then(|r| r.gateway)
    {
        Some(gw) => format!("via {gw} dev {name}"),
        None => format!("dev {name}"),
    }
}

fn bridge_fixes(
    topo: &NsTopology,
    bridge: &str,
    prefix: &str,
    peer: IpAddr,
    ns_hint: &str,
    ingress: i32,
) -> Vec<String> {
    let free = free_subnet(topo, peer);
    let gw = free
        .split('/')
        .next()
        .and_then(|a| a.parse::<std::net::Ipv4Addr>().ok())
        .map(|a| std::net::Ipv4Addr::from(u32::from(a) + 1).to_string())
        .unwrap_or_default();
    let len = free.split('/').nth(1).unwrap_or("24");
    // Name the knob of whoever manages the bridge; the verdict itself never
    // depends on the name, only this advice does.
    let mut fixes = if bridge == "docker0" {
        vec![format!(
            "Move {bridge} ({prefix}) off the peer's network: set \"bip\": \"{gw}/{len}\" (and \"default-address-pools\" for new networks) in /etc/docker/daemon.json, then systemctl restart docker"
        )]
    } else if bridge.starts_with("br-") {
        vec![format!(
            "Move {bridge} ({prefix}) off the peer's network: if it is a docker network, docker network rm <net> && docker network create --subnet {free} <net> (and set \"default-address-pools\" in /etc/docker/daemon.json so new networks avoid it)"
        )]
    } else {
        vec![format!(
            "Move {bridge} ({prefix}) off the peer's network, e.g. to {free}: {ns_hint}ip addr replace {gw}/{len} dev {bridge} (then update whatever manages it: libvirt net-edit, lxc network set, docker \"bip\")"
        )]
    };
    fixes.push(
        format!(
            "Stopgap without moving the bridge: route the peer back the way its packets arrive, more specifically than the bridge: {ns_hint}ip route add {peer}/32 {}",
            route_via(topo, ingress)
        ),
    );
    fixes
}

impl Diagnoser {
    pub fn new(show_drops: bool) -> Self {
        Diagnoser {
            show_drops,
            ..Default::default()
        }
    }

    /// Bounds the per-flow and per-peer memory of a long run (a scanned
    /// host sees endless new sources and ports).
    fn prune(&mut self) {
        const MAX: usize = 50_000;
        if self.ingress_of_peer.len() > MAX {
            self.ingress_of_peer.clear();
        }
        if self.ptb_flows.len() > MAX {
            self.ptb_flows.retain(|_, proven| *proven);
        }
        if self.pending_count.len() > MAX {
            let seen = &self.seen;
            self.pending_count.retain(|k, _| seen.contains_key(k));
        }
        if self.neigh.len() > MAX {
            self.neigh.clear();
        }
        if self.pending_syn.len() > MAX {
            self.pending_syn.clear();
        }
    }

    /// Counts a drop towards `key`, returns (first_ts, count).
    fn tally(&mut self, key: &str, ts: u64) -> (u64, u64) {
        let e = self.pending_count.entry(key.to_string()).or_insert((ts, 0));
        e.1 += 1;
        if let Some(&i) = self.seen.get(key) {
            self.verdicts[i].drops = e.1;
        }
        *e
    }

    #[allow(clippy::too_many_arguments)]
    fn conclude(
        &mut self,
        s: &mut Session,
        key: String,
        kind: &'static str,
        netns: u32,
        summary: String,
        evidence: Value,
        fix: Vec<String>,
        fault: bool,
    ) -> std::io::Result<()> {
        if self.seen.contains_key(&key) {
            return Ok(());
        }
        // A port scan or a default-deny firewall would otherwise print one
        // verdict per port: past a few of a kind, only the count grows.
        if self.verdicts.iter().filter(|v| v.kind == kind).count() >= MAX_VERDICTS_PER_KIND {
            if self.suppressed_keys.len() < 100_000 && self.suppressed_keys.insert(key) {
                self.suppressed += 1;
            }
            return Ok(());
        }
        let (first_ts, drops) = self.pending_count.get(&key).copied().unwrap_or((0, 1));
        let now = wall_now_ns();
        let latency_ms = if first_ts > 0 && now > first_ts {
            (now - first_ts) as f64 / 1e6
        } else {
            0.0
        };
        let v = Verdict {
            kind_type: "verdict",
            kind,
            netns,
            netns_name: s.namer.topology.netns_name(netns),
            summary,
            evidence: match evidence {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            fix,
            drops,
            latency_ms,
            fault,
        };
        self.seen.insert(key, self.verdicts.len());
        s.summary.verdicts += 1;
        print_verdict(s, &v)?;
        self.verdicts.push(v);
        if let Some((kinds, n)) = &self.stop_when {
            if kinds
                .iter()
                .all(|k| self.verdicts.iter().any(|v| v.kind == k))
            {
                n.notify_one();
            }
        }
        Ok(())
    }

    fn topo(&self, s: &mut Session, netns: u32) -> Option<Arc<NsTopology>> {
        s.namer.topology.get(netns)
    }

    /// The prefix that runs a command in `netns`: nothing for our own,
    /// `ip netns exec NAME ` for a named one, else `nsenter --net=PATH `
    /// (container namespaces have no name) so a fix never lands on the host.
    fn ns_hint(s: &mut Session, netns: u32) -> String {
        if netns == s.own_netns {
            return String::new();
        }
        match s.namer.topology.netns_name(netns) {
            Some(n) => format!("ip netns exec {n} "),
            None => match crate::netns::find(netns) {
                Some(info) => format!("nsenter --net={} ", info.path.display()),
                None => format!("nsenter --net=<path of netns {netns}> "),
            },
        }
    }

    /// `ip -n NAME ` for a named namespace other than ours, else the
    /// `ns_hint` prefix followed by `ip `.
    fn ip_cmd(s: &mut Session, netns: u32) -> String {
        match s.namer.topology.netns_name(netns) {
            Some(n) if netns != s.own_netns => format!("ip -n {n} "),
            _ => format!("{}ip ", Self::ns_hint(s, netns)),
        }
    }

    fn on_drop(&mut self, d: &DropRecord, s: &mut Session) -> std::io::Result<()> {
        // Remember where each peer's traffic enters, for asymmetry proofs.
        if let (Some(src), true) = (d.src, d.ingress_ifindex > 1) {
            self.ingress_of_peer
                .insert((d.netns, src), d.ingress_ifindex);
        }
        if is_ptb_icmp(d) {
            if let Some(dst) = d.dst {
                self.icmp_ptb_dropped.insert((d.netns, dst), d.ts_ns);
            }
            // The PKT_TOO_BIG rule explains these; no separate verdict.
            return self.check_too_big(s);
        }
        match d.reason.as_str() {
            "IP_RPFILTER" => self.rp_filter(d, s),
            "NEIGH_FAILED" => self.neigh_failed(d, s),
            "PKT_TOO_BIG" => {
                self.record_too_big(d);
                self.check_too_big(s)
            }
            "NETFILTER_DROP" => self.netfilter(d, s),
            "IP_INNOROUTES" | "IP_OUTNOROUTES" => self.no_route(d, s),
            "IP_INADDRERRORS" => self.forwarding(d, s),
            "NO_SOCKET" => self.port_closed(d, s),
            "NOT_SPECIFIED" => self.l2_mtu(d, s),
            _ => Ok(()),
        }
    }

    fn rp_filter(&mut self, d: &DropRecord, s: &mut Session) -> std::io::Result<()> {
        let (Some(src), Some(topo)) = (d.src, self.topo(s, d.netns)) else {
            return Ok(());
        };
        let ingress = if d.ingress_ifindex > 0 {
            d.ingress_ifindex
        } else {
            d.ifindex
        };
        let Some(in_link) = topo.link(ingress) else {
            return Ok(());
        };
        // The kernel's own reverse-path check (fib_validate_source looks up
        // src from dst with iif = loopback) when it ran around this drop;
        // the topology's longest match is the fallback.
        let kernel_rev = d
            .reverse_route
            .as_ref()
            .filter(|r| r.age_ns.unsigned_abs() < ROUTE_JOIN_MAX_AGE_NS);
        if let Some(r) = kernel_rev.filter(|r| r.err != 0) {
            // No route back at all: a different cause than a conflict.
            return self.no_route_back(d, s, src, r.err);
        }
        let from_kernel = kernel_rev.is_some_and(|r| r.ifindex > 0);
        let rev = kernel_rev
            .filter(|r| r.ifindex > 0)
            .map(|r| r.ifindex)
            .or_else(|| topo.route_to(src).and_then(|r| r.oif));
        let Some(rev_if) = rev else {
            // Only a table with no route at all proves "no route back"; a
            // multipath or nexthop-object route has no single oif.
            if topo.route_to(src).is_none() {
                return self.no_route_back(d, s, src, 0);
            }
            return Ok(());
        };
        if rev_if == ingress {
            return Ok(());
        }
        let Some(rev_link) = topo.link(rev_if) else {
            return Ok(());
        };
        let key = format!("rpf/{}/{}/{}", d.netns, ingress, rev_if);
        self.tally(&key, d.ts_ns);
        let prefix = topo
            .prefix_on(rev_if, src)
            .map(net)
            .unwrap_or_else(|| src.to_string());
        let bridge = topo.is_bridge(rev_if);
        let rp = topo.rp_filter(&in_link.name);
        let hint = Self::ns_hint(s, d.netns);
        let summary = format!(
            "Packets from {src} arrive on {} but the route back to {src} points into {}{} ({prefix}), so rp_filter={rp} drops them{}.",
            in_link.name,
            if bridge { "bridge " } else { "" },
            rev_link.name,
            if bridge {
                ": the peer's network overlaps the bridge subnet"
            } else {
                ""
            }
        );
        let mut fix = if bridge {
            bridge_fixes(&topo, &rev_link.name, &prefix, src, &hint, ingress)
        } else {
            vec![format!(
                "Route {src} back out {}, where it arrives: {hint}ip route add {src}/32 {}",
                in_link.name,
                route_via(&topo, ingress)
            )]
        };
        if bridge {
            fix.push(format!(
                "Loosening rp_filter ({hint}sysctl -w net.ipv4.conf.{}.rp_filter=2 and conf.all) only moves the failure: replies to {src} would still be routed into {}",
                in_link.name, rev_link.name
            ));
        } else {
            fix.push(format!(
                "If the asymmetry is intended (multi-homing), use loose mode: {hint}sysctl -w net.ipv4.conf.{}.rp_filter=2 net.ipv4.conf.all.rp_filter=2",
                in_link.name
            ));
        }
        let evidence = json!({
            "ingress_ifname": in_link.name,
            "src": src,
            "dst": d.dst,
            "reverse_route_ifname": rev_link.name,
            "reverse_route_prefix": prefix,
            "reverse_route_from_kernel": from_kernel,
            "rp_filter": rp,
            "bridge": bridge,
            "location": d.location,
        });
        self.conclude(
            s,
            key,
            "rpfilter_route_conflict",
            d.netns,
            summary,
            evidence,
            fix,
            true,
        )
    }

    /// rp_filter dropped a packet because there is no route back to its
    /// source at all.
    fn no_route_back(
        &mut self,
        d: &DropRecord,
        s: &mut Session,
        src: IpAddr,
        err: i32,
    ) -> std::io::Result<()> {
        let key = format!("noroute-back/{}/{}", d.netns, src);
        self.tally(&key, d.ts_ns);
        let hint = Self::ns_hint(s, d.netns);
        let ingress = d.ingress_ifname.clone().unwrap_or_else(|| "?".into());
        let summary = format!(
            "Packets from {src} arrive on {ingress} but there is no route back to {src}, so rp_filter drops them."
        );
        let fix = vec![format!(
            "Add a route back to {src}: {hint}ip route add {src}/32 via <gateway on {ingress}> dev {ingress} (or a default route); check {hint}ip route get {src}"
        )];
        let evidence = json!({
            "dst": src, "src": d.dst, "ingress_ifname": d.ingress_ifname,
            "route_err": if err != 0 { Some(err) } else { None }, "reason": d.reason,
        });
        self.conclude(s, key, "no_route", d.netns, summary, evidence, fix, true)
    }

    fn neigh_failed(&mut self, d: &DropRecord, s: &mut Session) -> std::io::Result<()> {
        let (Some(peer), Some(topo)) = (d.dst, self.topo(s, d.netns)) else {
            return Ok(());
        };
        let egress = d.ifindex;
        let Some(out_link) = topo.link(egress) else {
            return Ok(());
        };
        // Where the peer's packets came in: the kernel's input-route lookup
        // for peer -> us (joined as this drop's reverse route), else drops
        // seen earlier from that peer.
        let in_if = d
            .reverse_route
            .as_ref()
            .filter(|r: &&RouteRecord| {
                r.err == 0 && r.age_ns.unsigned_abs() < ROUTE_JOIN_MAX_AGE_NS
            })
            .map(|r| r.iif)
            .filter(|i| *i > 1)
            .or_else(|| self.ingress_of_peer.get(&(d.netns, peer)).copied())
            .filter(|i| *i != egress);
        // Asymmetry only explains the loss if the peer itself was asked for
        // on the egress link; behind a gateway the gateway failed.
        let on_link = topo
            .route_to(peer)
            .is_some_and(|r| r.gateway.is_none() && r.oif == Some(egress));
        let in_if = in_if.filter(|_| on_link);
        let hint = Self::ns_hint(s, d.netns);
        if let Some(in_link) = in_if.and_then(|i| topo.link(i)) {
            let key = format!("asym/{}/{}/{}", d.netns, in_link.ifindex, egress);
            self.tally(&key, d.ts_ns);
            let prefix = topo
                .prefix_on(egress, peer)
                .map(net)
                .unwrap_or_else(|| peer.to_string());
            let bridge = topo.is_bridge(egress);
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
            let fix = if bridge {
                bridge_fixes(&topo, &out_link.name, &prefix, peer, &hint, in_link.ifindex)
            } else {
                vec![format!(
                    "Route {peer} back out {}, where it arrives: {hint}ip route add {peer}/32 {}",
                    in_link.name,
                    route_via(&topo, in_link.ifindex)
                )]
            };
            let evidence = json!({
                "ingress_ifname": in_link.name,
                "egress_ifname": out_link.name,
                "peer": peer,
                "egress_prefix": prefix,
                "bridge": bridge,
                "local": d.src,
                "reason": d.reason,
                "neighbor_states": self.neigh.get(&(d.netns, egress, peer)),
                "route_from_kernel": d.route.is_some(),
            });
            return self.conclude(
                s,
                key,
                "asymmetric_route",
                d.netns,
                summary,
                evidence,
                fix,
                true,
            );
        }
        let key = format!("neigh/{}/{}/{}", d.netns, egress, peer);
        self.tally(&key, d.ts_ns);
        let gw = topo.route_to(peer).and_then(|r| r.gateway);
        let neighbour = gw.unwrap_or(peer);
        let summary = format!(
            "Packets to {peer} are dropped on {}: neighbour {neighbour} does not answer ARP/ND.",
            out_link.name
        );
        let fix = vec![
            format!("Check that {neighbour} is up and on {}'s link: {hint}ip neigh show dev {}", out_link.name, out_link.name),
            format!("If {peer} should not be reached through {}, fix the route: {hint}ip route get {peer}", out_link.name),
        ];
        let evidence = json!({
            "ifname": out_link.name,
            "neighbor": neighbour,
            "dst": peer,
            "neighbor_states": self.neigh.get(&(d.netns, egress, neighbour)),
        });
        self.conclude(
            s,
            key,
            "neighbor_unreachable",
            d.netns,
            summary,
            evidence,
            fix,
            true,
        )
    }

    /// The verdict key of a too-big drop: its netns and egress device.
    fn pmtu_key(d: &DropRecord) -> String {
        let egress = d.route.as_ref().map(|r| r.ifindex).unwrap_or(0);
        format!("pmtu/{}/{}", d.netns, egress)
    }

    fn record_too_big(&mut self, d: &DropRecord) {
        if let (Some(a), Some(b), Some(sp), Some(dp)) = (d.src, d.dst, d.sport, d.dport) {
            self.ptb_flows.entry((a, b, sp, dp)).or_insert(false);
        }
        self.tally(&Self::pmtu_key(d), d.ts_ns);
        let key = format!(
            "{}/{:?}/{:?}/{:?}/{:?}",
            d.netns, d.src, d.dst, d.sport, d.dport
        );
        let e = self.too_big.entry(key).or_insert(TooBig {
            first_ts: d.ts_ns,
            last_ts: d.ts_ns,
            count: 0,
            rec: d.clone(),
        });
        // A burst long ago (a PMTU cache that expired) is a new episode.
        if d.ts_ns.saturating_sub(e.last_ts) > TOO_BIG_EPISODE_NS {
            e.first_ts = d.ts_ns;
            e.count = 0;
        }
        // Records from different CPUs arrive slightly out of order.
        e.first_ts = e.first_ts.min(d.ts_ns);
        e.last_ts = e.last_ts.max(d.ts_ns);
        e.count += 1;
    }

    /// PMTU discovery fails when the ICMP that should shrink the sender is
    /// itself dropped, or when the same flow keeps sending too-big packets
    /// for over a second (nobody answers, or the sender ignores it). One
    /// early burst that stops is discovery working: no verdict.
    fn check_too_big(&mut self, s: &mut Session) -> std::io::Result<()> {
        let now = wall_now_ns();
        // Forget flows that went quiet, and ICMP drops long past.
        self.too_big
            .retain(|_, t| now.saturating_sub(t.last_ts) < 2 * TOO_BIG_EPISODE_NS);
        self.icmp_ptb_dropped
            .retain(|_, ts| now.saturating_sub(*ts) < 2 * TOO_BIG_EPISODE_NS);
        let mut proven = Vec::new();
        for (k, t) in &self.too_big {
            let Some(src) = t.rec.src else { continue };
            let blocked = self
                .icmp_ptb_dropped
                .get(&(t.rec.netns, src))
                .is_some_and(|ts| ts.abs_diff(t.last_ts) < 2_000_000_000);
            // Only TCP retransmits the same too-big segment; UDP senders
            // probing the path MTU (QUIC, tracepath) do this on purpose.
            let persists = t.rec.proto.as_deref() == Some("tcp")
                && t.count >= 3
                && t.last_ts.saturating_sub(t.first_ts) >= 1_000_000_000;
            if blocked || persists {
                proven.push((k.clone(), blocked));
            }
        }
        let any = !proven.is_empty();
        for (k, blocked) in proven {
            let Some(t) = self.too_big.remove(&k) else {
                continue;
            };
            self.pmtu_verdict(s, t, blocked)?;
        }
        if any {
            self.check_syns(s, false)?;
        }
        Ok(())
    }

    fn pmtu_verdict(&mut self, s: &mut Session, t: TooBig, blocked: bool) -> std::io::Result<()> {
        let d = &t.rec;
        if let (Some(a), Some(b), Some(sp), Some(dp)) = (d.src, d.dst, d.sport, d.dport) {
            self.ptb_flows.insert((a, b, sp, dp), true);
        }
        let topo = self.topo(s, d.netns);
        let (egress, egress_mtu) = match (&d.route, &topo) {
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
        };
        let egress_name = egress.unwrap_or_else(|| "?".to_string());
        let overhead = tcp_overhead(d.src);
        // A GSO packet is one event for many segments: what must fit the
        // MTU is one segment. skb->len holds the headers once plus every
        // segment's payload, so when the segments are full the headers are
        // len - segs * gso_size; otherwise assume bare TCP headers.
        let packet_size = if d.gso_size > 0 {
            let payload = d.gso_segs as u32 * d.gso_size as u32;
            let hdr = d.len.saturating_sub(payload);
            let hdr = if d.gso_segs > 0 && d.len > payload && hdr <= 120 {
                hdr
            } else {
                overhead
            };
            d.gso_size as u32 + hdr
        } else {
            d.len
        };
        // The key record_too_big has been counting under.
        let key = Self::pmtu_key(d);
        let hint = Self::ns_hint(s, d.netns);
        let (src, dst) = (
            d.src.map(|a| a.to_string()).unwrap_or_default(),
            d.dst.map(|a| a.to_string()).unwrap_or_default(),
        );
        let summary = format!(
            "Packets of {src} -> {dst} ({packet_size} bytes) do not fit out {egress_name} (MTU {egress_mtu}), and {}: a PMTU black hole, the connection stalls.",
            if blocked {
                "the ICMP \"fragmentation needed\" that would make the sender shrink them is itself dropped"
            } else {
                "the sender keeps sending them: PMTU discovery is not working"
            }
        );
        let ipt = if d.family == Some("ipv6") {
            "ip6tables"
        } else {
            "iptables"
        };
        let mut fix = vec![
            format!(
                "Clamp TCP MSS to the path MTU where traffic is forwarded: {hint}{ipt} -t mangle -A FORWARD -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"
            ),
            format!(
                "Or give containers an MTU that fits: dockerd --mtu={egress_mtu} (\"mtu\": {egress_mtu} in /etc/docker/daemon.json), or docker network create -o com.docker.network.driver.mtu={egress_mtu}"
            ),
        ];
        if blocked {
            fix.push(if d.family == Some("ipv6") {
                format!("Let ICMPv6 packet-too-big out: {hint}ip6tables -I OUTPUT -p icmpv6 --icmpv6-type packet-too-big -j ACCEPT (and in FORWARD)")
            } else {
                format!("Let ICMP fragmentation-needed out: {hint}iptables -I OUTPUT -p icmp --icmp-type fragmentation-needed -j ACCEPT (and in FORWARD)")
            });
        }
        let evidence = json!({
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
        self.conclude(
            s,
            key,
            "pmtu_blackhole",
            d.netns,
            summary,
            evidence,
            fix,
            true,
        )
    }

    fn on_syn(&mut self, r: &SynRecord, _s: &mut Session) -> std::io::Result<()> {
        // Only forwarded SYNs from the connection's initiator: a local
        // SYN's MSS already follows its route, and the SYN-ACK is clamped
        // by the same rule that fixes the SYN.
        if r.ingress_ifindex <= 0 || r.ingress_ifindex == r.ifindex || r.tcp_flags != "S" {
            return Ok(());
        }
        let key = format!("mss/{}/{}", r.netns, r.ifindex);
        self.tally(&key, r.ts_ns);
        if !self.seen.contains_key(&key) {
            self.pending_syn
                .entry(key)
                .or_insert_with(|| (r.clone(), std::time::Instant::now()));
        }
        Ok(())
    }

    /// A too-large MSS is a fault unless PMTU discovery visibly rescues the
    /// connection: its reverse flow hit PKT_TOO_BIG here, and no black hole
    /// was proven for it. The wait also covers the real incident, where the
    /// big segments die outside this host and nothing else is seen.
    fn check_syns(&mut self, s: &mut Session, force: bool) -> std::io::Result<()> {
        let keys: Vec<String> = self.pending_syn.keys().cloned().collect();
        for key in keys {
            let Some((r, at)) = self.pending_syn.get(&key).cloned() else {
                continue;
            };
            let reverse = match (r.dst, r.src) {
                (Some(a), Some(b)) => self.ptb_flows.get(&(a, b, r.dport, r.sport)).copied(),
                _ => None,
            };
            // At the end of a run, a SYN seen less than a second ago has had
            // no chance to show anything either way: leave it unjudged.
            let decide = (force && at.elapsed() >= std::time::Duration::from_secs(1))
                || reverse == Some(true)
                || at.elapsed() >= SYN_WINDOW;
            if !decide {
                continue;
            }
            self.pending_syn.remove(&key);
            if reverse == Some(false) {
                // PMTU discovery worked for this connection: benign.
                continue;
            }
            self.mss_verdict(s, key, &r)?;
        }
        Ok(())
    }

    fn mss_verdict(&mut self, s: &mut Session, key: String, r: &SynRecord) -> std::io::Result<()> {
        let topo = self.topo(s, r.netns);
        let in_link = topo
            .as_ref()
            .and_then(|t| t.link(r.ingress_ifindex).cloned());
        let in_name = in_link
            .as_ref()
            .map(|l| l.name.clone())
            .or_else(|| r.ingress_ifname.clone())
            .unwrap_or_else(|| format!("if{}", r.ingress_ifindex));
        let out_name = r
            .ifname
            .clone()
            .unwrap_or_else(|| format!("if{}", r.ifindex));
        let overhead = tcp_overhead(r.src);
        let fits = r.mtu.saturating_sub(overhead);
        let hint = Self::ns_hint(s, r.netns);
        let ipt = if r.family == Some("ipv6") {
            "ip6tables"
        } else {
            "iptables"
        };
        let summary = format!(
            "SYNs forwarded from {in_name} out {out_name} advertise MSS {} but {out_name}'s MTU {} carries at most MSS {fits}: full-size segments of these connections will not fit (HTTPS hangs while small requests work).",
            r.mss, r.mtu
        );
        let fix = vec![
            format!("{hint}{ipt} -t mangle -A FORWARD -o {out_name} -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"),
            format!("or a fixed value: {hint}{ipt} -t mangle -A FORWARD -o {out_name} -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --set-mss {fits}"),
            format!(
                "or lower the container MTU to {}: dockerd --mtu={} (\"mtu\" in /etc/docker/daemon.json) or docker network create -o com.docker.network.driver.mtu={}",
                r.mtu, r.mtu, r.mtu
            ),
        ];
        let evidence = json!({
            "ingress_ifname": in_name,
            "ingress_mtu": in_link.as_ref().map(|l| l.mtu),
            "egress_ifname": out_name,
            "egress_mtu": r.mtu,
            "mss": r.mss,
            "max_mss": fits,
            "src": r.src,
            "dst": r.dst,
            "dport": r.dport,
        });
        self.conclude(
            s,
            key,
            "mss_exceeds_mtu",
            r.netns,
            summary,
            evidence,
            fix,
            true,
        )
    }

    fn l2_mtu(&mut self, d: &DropRecord, s: &mut Session) -> std::io::Result<()> {
        // GSO packets are segmented later; their length says nothing.
        if d.gso_size > 0 || d.ifindex <= 0 {
            return Ok(());
        }
        let Some(topo) = self.topo(s, d.netns) else {
            return Ok(());
        };
        let Some(link) = topo.link(d.ifindex).cloned() else {
            return Ok(());
        };
        // A bridge port narrower than the frame the bridge hands it (the
        // port may itself be a veth: the port is what drops it); else a
        // veth whose peer, in its own netns, is narrower.
        let bridge = link
            .master
            .and_then(|m| topo.link(m))
            .filter(|b| b.kind.as_deref() == Some("bridge"))
            .filter(|_| d.len > link.mtu + 18);
        let veth = bridge.is_none() && link.kind.as_deref() == Some("veth");
        let (sender, sender_mtu, peer_name, peer_mtu, peer_ns) = if let Some(b) = bridge {
            // A bridge's own MTU follows its narrowest port unless set by
            // hand; the frame's size comes from the port it entered by.
            let in_mtu = topo.link(d.ingress_ifindex).map(|l| l.mtu).unwrap_or(0);
            (
                b.name.clone(),
                b.mtu.max(in_mtu),
                link.name.clone(),
                link.mtu,
                d.netns,
            )
        } else if veth {
            match s.namer.topology.veth_peer(d.netns, d.ifindex) {
                Some((ns, p)) => (link.name.clone(), link.mtu, p.name, p.mtu, ns),
                None => return Ok(()),
            }
        } else {
            return Ok(());
        };
        // The frame still carries its Ethernet header here, and the kernel
        // allows a VLAN tag on top (is_skb_forwardable: mtu + 14 + 4).
        if d.len <= peer_mtu + 18 || (veth && sender_mtu <= peer_mtu) {
            return Ok(());
        }
        let key = format!("l2/{}/{}", d.netns, d.ifindex);
        self.tally(&key, d.ts_ns);
        let peer_hint = Self::ip_cmd(s, peer_ns);
        let summary = format!(
            "Frames of {} bytes leave {sender} (MTU {sender_mtu}) but {peer_name} {} has MTU {peer_mtu}: the kernel drops them silently, no ICMP, no error to the sender.",
            d.len,
            if veth { "on the other side" } else { "(a port of that bridge)" }
        );
        let fix = vec![
            format!("Give both the same MTU: {peer_hint}link set dev {peer_name} mtu {sender_mtu}"),
            if veth {
                format!(
                    "or lower the sender: {}link set dev {sender} mtu {peer_mtu}",
                    Self::ip_cmd(s, d.netns)
                )
            } else {
                format!("or lower the MTU of every device that feeds {sender} to {peer_mtu}")
            },
        ];
        let evidence = json!({
            "ifname": sender,
            "mtu": sender_mtu,
            "peer_ifname": peer_name,
            "peer_mtu": peer_mtu,
            "peer_netns": peer_ns,
            "frame_len": d.len,
            "location": d.location,
        });
        self.conclude(
            s,
            key,
            "l2_mtu_mismatch",
            d.netns,
            summary,
            evidence,
            fix,
            true,
        )
    }

    fn netfilter(&mut self, d: &DropRecord, s: &mut Session) -> std::io::Result<()> {
        let key = format!("nf/{}/{:?}/{:?}/{:?}", d.netns, d.proto, d.dst, d.dport);
        self.tally(&key, d.ts_ns);
        let hint = Self::ns_hint(s, d.netns);
        let what = match (&d.proto, d.dport) {
            (Some(p), Some(port)) => format!(
                "{p} to {}:{port}",
                d.dst.map(|a| a.to_string()).unwrap_or_default()
            ),
            (Some(p), None) => format!(
                "{p} to {}",
                d.dst.map(|a| a.to_string()).unwrap_or_default()
            ),
            _ => "packets".to_string(),
        };
        let summary = format!(
            "A firewall rule drops {what} on {} ({}).",
            d.ifname.clone().unwrap_or_else(|| "?".into()),
            d.location
        );
        let fix = vec![
            format!("Find the rule whose counters rise: {hint}iptables -L -v -n --line-numbers (all tables) or {hint}nft list ruleset"),
            format!("If it is conntrack state INVALID: {hint}conntrack -S"),
        ];
        let evidence = json!({
            "ifname": d.ifname, "ingress_ifname": d.ingress_ifname,
            "src": d.src, "dst": d.dst, "proto": d.proto, "dport": d.dport,
            "location": d.location,
        });
        self.conclude(
            s,
            key,
            "netfilter_drop",
            d.netns,
            summary,
            evidence,
            fix,
            true,
        )
    }

    fn no_route(&mut self, d: &DropRecord, s: &mut Session) -> std::io::Result<()> {
        let Some(dst) = d.dst else { return Ok(()) };
        let topo = self.topo(s, d.netns);
        // Proof: the kernel's lookup failed, or the table has no route.
        let kernel_err = d.route.as_ref().map(|r| r.err).filter(|e| *e != 0);
        let table_route = topo.as_ref().and_then(|t| t.route_to(dst).cloned());
        if kernel_err.is_none() && table_route.is_some() {
            return Ok(());
        }
        let key = format!("noroute/{}/{}", d.netns, dst);
        self.tally(&key, d.ts_ns);
        let hint = Self::ns_hint(s, d.netns);
        let summary = format!(
            "No route to {dst}{}: the kernel drops the packet{}.",
            d.ingress_ifname
                .as_ref()
                .map(|i| format!(" for traffic forwarded from {i}"))
                .unwrap_or_default(),
            if d.reason == "IP_INNOROUTES" {
                " and answers ICMP net-unreachable"
            } else {
                ""
            }
        );
        let fix = vec![format!(
            "Add a route: {hint}ip route add {dst}/32 via <gateway> (or a default route); check {hint}ip route get {dst}"
        )];
        let evidence = json!({
            "dst": dst, "src": d.src, "ingress_ifname": d.ingress_ifname,
            "route_err": kernel_err, "reason": d.reason,
        });
        self.conclude(s, key, "no_route", d.netns, summary, evidence, fix, true)
    }

    fn forwarding(&mut self, d: &DropRecord, s: &mut Session) -> std::io::Result<()> {
        let Some(topo) = self.topo(s, d.netns) else {
            return Ok(());
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
            return Ok(());
        }
        let key = format!("fwd/{}/{v6}", d.netns);
        self.tally(&key, d.ts_ns);
        let hint = Self::ns_hint(s, d.netns);
        // Globally on but off on the ingress device: name that knob.
        let sysctl = if v6 {
            "net.ipv6.conf.all.forwarding".to_string()
        } else {
            match &d.ingress_ifname {
                Some(i) if topo.sysctls.ipv4_forwarding => format!("net.ipv4.conf.{i}.forwarding"),
                _ => "net.ipv4.ip_forward".to_string(),
            }
        };
        let summary = format!(
            "This namespace receives packets to forward (to {}) but {sysctl}=0: they are dropped silently.",
            d.dst.map(|a| a.to_string()).unwrap_or_default()
        );
        let fix = vec![format!(
            "{hint}sysctl -w {sysctl}=1 (persist it in /etc/sysctl.d/)"
        )];
        let evidence =
            json!({"ingress_ifname": d.ingress_ifname, "dst": d.dst, "sysctl": sysctl, "value": 0});
        self.conclude(
            s,
            key,
            "forwarding_disabled",
            d.netns,
            summary,
            evidence,
            fix,
            true,
        )
    }

    fn port_closed(&mut self, d: &DropRecord, s: &mut Session) -> std::io::Result<()> {
        let (Some(proto), Some(dst), Some(port)) = (&d.proto, d.dst, d.dport) else {
            return Ok(());
        };
        // A TCP connection attempt is a SYN; late segments of a closed
        // connection also hit NO_SOCKET and mean nothing.
        if !(proto == "udp" || (proto == "tcp" && d.tcp_flags.as_deref() == Some("S"))) {
            return Ok(());
        }
        let key = format!("port/{}/{proto}/{dst}/{port}", d.netns);
        self.tally(&key, d.ts_ns);
        let summary = format!(
            "Nothing listens on {proto} {dst}:{port}: the peer is refused ({}), not lost.",
            if proto == "tcp" {
                "RST"
            } else {
                "ICMP port unreachable"
            }
        );
        let fix = vec![format!(
            "Start the service on {dst}:{port}, or point the client at the right port; {}ss -lnp shows what listens",
            Self::ns_hint(s, d.netns)
        )];
        let evidence = json!({"proto": proto, "dst": dst, "dport": port, "src": d.src});
        self.conclude(
            s,
            key,
            "port_closed",
            d.netns,
            summary,
            evidence,
            fix,
            false,
        )
    }
}

fn print_verdict(s: &mut Session, v: &Verdict) -> std::io::Result<()> {
    use crate::output::Format;
    if s.out.format == Format::Json {
        return s.out.json(v);
    }
    let ns = s.out.netns_label(v.netns, &v.netns_name);
    let mut lines = vec![String::new()];
    // mss_exceeds_mtu counts SYNs, every other kind counts drops.
    let what = if v.kind == "mss_exceeds_mtu" {
        "SYN"
    } else {
        "drop"
    };
    lines.push(s.out.bold_red(&format!(
        "VERDICT {} (netns {ns}, {} {what}{}, {:.0} ms after the first)",
        v.kind,
        v.drops,
        if v.drops == 1 { "" } else { "s" },
        v.latency_ms
    )));
    lines.push(s.out.bold(&format!("  {}", v.summary)));
    lines.push("  evidence:".to_string());
    for (k, val) in &v.evidence {
        let shown = match val {
            Value::String(x) => x.clone(),
            Value::Null => "-".to_string(),
            other => other.to_string(),
        };
        lines.push(format!("    {k:<26} {shown}"));
    }
    lines.push("  fix:".to_string());
    for (i, f) in v.fix.iter().enumerate() {
        lines.push(format!("    {}. {f}", i + 1));
    }
    lines.push(String::new());
    for l in lines {
        s.out.line(&l)?;
    }
    Ok(())
}

impl Consumer for Diagnoser {
    fn drop(&mut self, raw: &DropEvent, s: &mut Session) -> std::io::Result<bool> {
        let rec = s.namer.drop_record(raw);
        s.summary.count(&rec);
        if self.show_drops {
            s.out.drop(&rec)?;
        }
        self.on_drop(&rec, s)?;
        Ok(true)
    }

    fn neigh(&mut self, raw: &NeighEvent, s: &mut Session) -> std::io::Result<()> {
        let rec = s.namer.neigh_record(raw);
        if let Some(a) = rec.neighbor {
            let v = self.neigh.entry((rec.netns, rec.ifindex, a)).or_default();
            // Keep transitions, not every retry of the same state, and
            // only the recent ones.
            if v.last() != Some(&rec.state) {
                if v.len() >= 8 {
                    v.remove(0);
                }
                v.push(rec.state);
                if self.show_drops {
                    s.out.neigh(&rec)?;
                }
            }
        }
        Ok(())
    }

    fn syn(&mut self, raw: &SynEvent, s: &mut Session) -> std::io::Result<()> {
        let rec = s.namer.syn_record(raw);
        if self.show_drops {
            s.out.syn(&rec)?;
        }
        self.on_syn(&rec, s)
    }

    fn tick(&mut self, s: &mut Session) -> std::io::Result<()> {
        self.prune();
        self.check_too_big(s)?;
        self.check_syns(s, false)
    }

    fn finish(&mut self, s: &mut Session) -> std::io::Result<()> {
        // A run that ends before the window closes still reports a SYN
        // whose connection showed no sign of PMTU discovery working.
        self.check_syns(s, true)?;
        s.summary.verdict_kinds = self
            .verdicts
            .iter()
            .map(|v| (v.kind.to_string(), v.drops))
            .collect();
        s.summary.verdicts_suppressed = self.suppressed;
        if self.suppressed > 0 {
            s.out.note(&format!(
                "{} more verdicts of kinds already shown {MAX_VERDICTS_PER_KIND} times were not printed",
                self.suppressed
            ))?;
        }
        if s.out.format == crate::output::Format::Text && self.verdicts.is_empty() {
            s.out
                .note("No fault proven: the drops seen (if any) do not match a known cause.")?;
        }
        Ok(())
    }
}
