//! `mss_exceeds_mtu`: a forwarded SYN whose MSS + 40 (IPv4) or + 60
//! (IPv6) exceeds the egress MTU.
//!
//! An MSS too big for the next hop alone is not a fault: PMTU discovery
//! exists to handle it (the router drops the first big segment, sends
//! ICMP frag-needed / packet-too-big, and the sender shrinks). So:
//! - proven: big segments of one of these connections die for good, i.e.
//!   pmtu_blackhole was proven for the connection (in either direction);
//! - no verdict: segments of the connection were too big here, the ICMP
//!   went out, and no black hole followed (PMTU discovery works);
//! - suspected: nothing about the connection's big segments was seen here
//!   within the window (they may die beyond this host, as in an overlay,
//!   or PMTU discovery may rescue them there).

use super::ctx::{Ctx, Finding};
use super::facts::nat;
use super::facts::pmtu::{is_ptb_icmp, TooBigFlow};
use super::facts::FlowKey;
use super::fix::{iptables_for, q, tcp_overhead, Fix};
use super::key::Key;
use super::{Fact, Rule, Tier};
use crate::events::reason::Reason;
use crate::events::record::SynRecord;
use crate::host::containers::Container;
use serde_json::json;
use std::collections::HashMap;

/// How long a too-large MSS waits for signs of PMTU discovery, either way.
const SYN_WINDOW_NS: u64 = 2_500_000_000;
/// Connections remembered per verdict key, to find their segments.
const MAX_FLOWS: usize = 64;

struct Pending {
    /// The first SYN of this key, for the verdict's wording.
    syn: SynRecord,
    first_ts: u64,
    /// The connections seen under this key.
    flows: Vec<FlowKey>,
    /// Concluded as a suspicion; still watched for proof.
    suspected: bool,
}

#[derive(Default)]
pub struct MssExceedsMtu {
    /// Verdict key (netns, egress device) -> SYNs waiting for evidence.
    pending: HashMap<Key, Pending>,
}

/// What became of a connection's big segments.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Fate {
    Unseen,
    /// Too big somewhere traced, then quiet for RESCUED_QUIET_NS with no
    /// black hole proven: PMTU discovery worked.
    Rescued,
    /// Too big lately, not proven either way yet: the proof of a black
    /// hole may still come (it took 10 s in a slow guest, long after the
    /// SYN window, and the connection was once judged rescued meanwhile).
    Open,
    Died,
}

/// How long a flow's too-big drops must have stopped, with no black hole
/// proven, before PMTU discovery counts as having worked.
const RESCUED_QUIET_NS: u64 = 2_000_000_000;

impl Rule for MssExceedsMtu {
    fn kinds(&self) -> &'static [&'static str] {
        &["mss_exceeds_mtu"]
    }

    fn on_fact(&mut self, fact: &Fact, cx: &mut Ctx) {
        match fact {
            Fact::Syn(r) => self.on_syn(r, cx),
            // The facts layer may just have proven a flow a black hole.
            Fact::Drop(d) if d.reason == Reason::PKT_TOO_BIG || is_ptb_icmp(d) => {
                self.decide(cx, false)
            }
            _ => {}
        }
    }

    fn tick(&mut self, cx: &mut Ctx) {
        if self.pending.len() > 50_000 {
            self.pending.clear();
        }
        self.decide(cx, false);
    }

    fn finish(&mut self, cx: &mut Ctx) {
        self.decide(cx, true);
    }
}

impl MssExceedsMtu {
    fn on_syn(&mut self, r: &SynRecord, cx: &mut Ctx) {
        // Only forwarded SYNs from the connection's initiator: a local
        // SYN's MSS already follows its route, and the SYN-ACK is clamped
        // by the same rule that fixes the SYN.
        if r.ingress_ifindex <= 0 || r.ingress_ifindex == r.ifindex || r.tcp_flags != "S" {
            return;
        }
        let key = Key::MssExceedsMtu {
            netns: r.netns,
            egress: r.ifindex,
        };
        cx.tally(&key, r.ts_ns);
        if cx.concluded(&key) == Some(Tier::Proven) {
            return;
        }
        let p = self.pending.entry(key).or_insert_with(|| Pending {
            syn: r.clone(),
            first_ts: r.ts_ns,
            flows: Vec::new(),
            suspected: false,
        });
        if let (Some(s), Some(d)) = (r.src, r.dst) {
            if p.flows.len() < MAX_FLOWS {
                p.flows.push((s, d, r.sport, r.dport));
            }
        }
        // Seen after MASQUERADE: the connection's segments may die before
        // it (a Docker host's own too-big drops show the container's
        // address), so its pre-NAT tuple is one of its flows too.
        if let (Some(s), Some(d), Some(sp), Some(dp)) =
            (r.orig_src, r.orig_dst, r.orig_sport, r.orig_dport)
        {
            if p.flows.len() < MAX_FLOWS {
                p.flows.push((s, d, sp, dp));
            }
        }
    }

    fn fate(cx: &Ctx, flows: &[FlowKey]) -> Fate {
        let quiet = |f: &TooBigFlow| cx.now_ns.saturating_sub(f.last_ts) >= RESCUED_QUIET_NS;
        let mut fate = Fate::Unseen;
        for &(s, d, sp, dp) in flows {
            // Either direction: an upload's segments follow the SYN, a
            // download's come back the other way.
            for k in [(s, d, sp, dp), (d, s, dp, sp)] {
                if let Some(f) = cx.obs.too_big_flows.get(&k) {
                    fate = fate.max(if f.blackhole {
                        Fate::Died
                    } else if quiet(f) {
                        Fate::Rescued
                    } else {
                        Fate::Open
                    });
                }
            }
        }
        fate
    }

    fn decide(&mut self, cx: &mut Ctx, end: bool) {
        let keys: Vec<Key> = self.pending.keys().cloned().collect();
        for key in keys {
            let p = &self.pending[&key];
            let fate = Self::fate(cx, &p.flows);
            let age = cx.now_ns.saturating_sub(p.first_ts);
            if fate == Fate::Died {
                let p = self.pending.remove(&key).expect("listed");
                verdict(cx, key, &p.syn, Tier::Proven);
                continue;
            }
            if p.suspected {
                // Watched for proof a while longer, then forgotten.
                if age > 10 * SYN_WINDOW_NS {
                    self.pending.remove(&key);
                }
                continue;
            }
            // At the end of a run, a SYN seen less than a second ago has had
            // no chance to show anything either way: leave it unjudged.
            let due = age >= SYN_WINDOW_NS || (end && age >= 1_000_000_000);
            if !due {
                continue;
            }
            if fate == Fate::Rescued {
                // PMTU discovery worked for these connections: benign.
                self.pending.remove(&key);
                continue;
            }
            if fate == Fate::Open {
                // Too big lately: wait for the black hole's proof or for
                // quiet; at the end of a run, left unjudged.
                continue;
            }
            let syn = p.syn.clone();
            verdict(cx, key.clone(), &syn, Tier::Suspected);
            if let Some(p) = self.pending.get_mut(&key) {
                p.suspected = true;
            }
        }
    }
}

fn verdict(cx: &mut Ctx, key: Key, r: &SynRecord, tier: Tier) {
    let in_link = cx.link(r.netns, r.ingress_ifindex);
    let in_name = in_link
        .as_ref()
        .map(|l| l.name.clone())
        .or_else(|| r.ingress_ifname.clone())
        .unwrap_or_else(|| format!("if{}", r.ingress_ifindex));
    let out_name = r
        .ifname
        .clone()
        .unwrap_or_else(|| format!("if{}", r.ifindex));
    let fits = r.mtu.saturating_sub(tcp_overhead(r.src));
    let hint = cx.ns_hint(r.netns);
    let ipt = iptables_for(r.family);
    let proven = tier == Tier::Proven;
    // A SYN seen after MASQUERADE shows the host's address: its pre-NAT
    // tuple names the container that sent it.
    let owner = match (r.src, r.dst) {
        (Some(a), Some(b)) => cx.nat_container(r.netns, (a, b, r.sport, r.dport)),
        _ => None,
    };
    let of = owner
        .as_ref()
        .map(|(c, o)| format!(" of {}", nat::connections(c, *o)))
        .unwrap_or_default();
    let summary = if proven {
        format!(
            "SYNs{of} forwarded from {in_name} out {out_name} advertise MSS {} but {out_name}'s MTU {} carries at most MSS {fits}, and the full-size segments of these connections die (PMTU black hole): HTTPS hangs while small requests work.",
            r.mss, r.mtu
        )
    } else {
        format!(
            "Possible MTU problem, not proven: SYNs{of} forwarded from {in_name} out {out_name} advertise MSS {} but {out_name}'s MTU {} carries at most MSS {fits}. This is harmless if ICMP frag-needed/packet-too-big reaches the senders (PMTU discovery); if the path drops it, connections that send full-size segments will hang. No full-size segment of these connections was seen here.",
            r.mss, r.mtu
        )
    };
    let out_q = q(&out_name);
    // Clamping first: it heals every connection through here at once and
    // changes no link, so it cannot make an MTU mismatch.
    let clamp = format!("{hint}{ipt} -t mangle -A FORWARD -o {out_q} -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu");
    let fixed = format!("{hint}{ipt} -t mangle -A FORWARD -o {out_q} -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --set-mss {fits}");
    let mut fix = vec![
        Fix::run(clamp.clone(), vec![clamp]),
        Fix::run(format!("or a fixed value: {fixed}"), vec![fixed]),
    ];
    fix.push(mtu_advice(
        cx,
        r,
        &in_name,
        owner.as_ref().map(|(c, _)| &**c),
    ));
    if !proven {
        fix.insert(
            0,
            Fix::advice(format!(
                "To confirm: trace the namespaces along the path (PKT_TOO_BIG drops whose ICMP is dropped prove a black hole), or watch the sender retransmit full-size segments: {hint}ss -ti dst {}",
                r.dst.map(|a| a.to_string()).unwrap_or_default()
            )),
        );
    }
    let mut evidence = json!({
        "ingress_ifname": in_name,
        "ingress_mtu": in_link.as_ref().map(|l| l.mtu),
        "egress_ifname": out_name,
        "egress_mtu": r.mtu,
        "mss": r.mss,
        "max_mss": fits,
        "src": r.src,
        "dst": r.dst,
        "dport": r.dport,
        "segments_died": proven,
    });
    if let Some((c, o)) = owner {
        evidence["pre_nat"] = nat::pre_nat(o);
        cx.name_container(&key, c);
    }
    if let (Some(a), Some(b)) = (r.src, r.dst) {
        cx.about_flow(&key, (a, b, r.sport, r.dport));
    }
    cx.conclude(Finding {
        key,
        kind: "mss_exceeds_mtu",
        tier,
        netns: r.netns,
        summary,
        evidence,
        fix,
    });
}

/// The advice that changes MTUs: the container's (Docker's, on its
/// network) where Docker is or the connections are a container's, else
/// every device from the senders, never one end of a link.
fn mtu_advice(cx: &mut Ctx, r: &SynRecord, in_name: &str, owner: Option<&Container>) -> Fix {
    if cx.docker_here(r.netns) || owner.is_some() {
        let net = owner.map(nat::on_networks).unwrap_or_default();
        Fix::advice(format!(
            "or lower the container MTU to {}{net}: dockerd --mtu={} (\"mtu\" in /etc/docker/daemon.json) or docker network create -o com.docker.network.driver.mtu={}",
            r.mtu, r.mtu, r.mtu
        ))
    } else {
        // Advice only: lowering one end of a link (this side's device)
        // makes an L2 MTU mismatch with the sender; every device from the
        // senders to here must change together.
        Fix::advice(format!(
            "or lower the MTU of the senders behind {in_name} to {}: every device from them to {}, both ends of each link, never one end alone",
            r.mtu,
            q(in_name)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{Engine, Fact, Tier};
    use crate::events::record::Proto;

    const MS: u64 = 1_000_000;
    const ROUTER: u32 = NS + 1;

    fn host(docker: bool) -> Fake {
        let bridge = if docker { "docker0" } else { "lan0" };
        Fake::with(vec![topo(
            NS,
            Some("host"),
            vec![
                link(2, "eth0", None, 1450),
                link(3, bridge, Some("bridge"), 1500),
            ],
            vec![],
        )])
    }

    fn syn_at(ts: u64, v6: bool) -> Fact {
        let (c, s, mss) = if v6 {
            ("fd00:99::2", "fd00:200::2", 1440)
        } else {
            ("10.99.0.2", "10.200.0.2", 1460)
        };
        Fact::Syn(syn(ts, (3, "br"), (2, "eth0", 1450), mss, c, 50000, s, 443))
    }

    /// A too-big drop in the router, of the client's segments (upload)
    /// or of the server's (download).
    fn too_big(ts: u64, upload: bool, v6: bool) -> Fact {
        let (c, s) = if v6 {
            ("fd00:99::2", "fd00:200::2")
        } else {
            ("10.99.0.2", "10.200.0.2")
        };
        let mut d = if upload {
            tcp(drop(Reason::PKT_TOO_BIG, ts), c, 50000, s, 443)
        } else {
            tcp(drop(Reason::PKT_TOO_BIG, ts), s, 443, c, 50000)
        };
        d.netns = ROUTER;
        d.len = 1500;
        d.route = Some(lookup(2, "eth1", 1400, 0));
        Fact::Drop(d)
    }

    fn icmp_dropped(ts: u64) -> Fact {
        let mut d = drop(Reason::NETFILTER_DROP, ts);
        d.netns = ROUTER;
        d.proto = Some(Proto::Icmp);
        d.dst = Some(ip("10.200.0.2"));
        d.icmp_type = Some(3);
        d.icmp_code = Some(4);
        Fact::Drop(d)
    }

    #[test]
    fn an_mss_over_the_mtu_alone_is_only_a_suspicion() {
        let v = run(&mut host(false), vec![syn_at(0, false)], 3_000 * MS);
        assert_eq!(kinds(&v), [("mss_exceeds_mtu", Tier::Suspected)]);
        assert!(!v[0].fault);
        assert!(v[0].summary.starts_with("Possible MTU problem, not proven"));
        // No Docker on this host: no Docker advice.
        assert!(
            v[0].fix.iter().all(|f| !f.contains("docker")),
            "{:?}",
            v[0].fix
        );
        let v = run(&mut host(true), vec![syn_at(0, false)], 3_000 * MS);
        assert!(v[0].fix.iter().any(|f| f.contains("dockerd --mtu=1450")));
    }

    #[test]
    fn healthy_pmtu_discovery_of_an_upload_is_no_verdict() {
        for v6 in [false, true] {
            let facts = vec![
                syn_at(0, v6),
                too_big(5 * MS, true, v6),
                too_big(6 * MS, true, v6),
            ];
            let v = run(&mut host(false), facts, 3_000 * MS);
            assert!(v.is_empty(), "v6={v6}: {v:?}");
        }
    }

    #[test]
    fn healthy_pmtu_discovery_of_a_download_is_no_verdict() {
        let facts = vec![syn_at(0, false), too_big(5 * MS, false, false)];
        assert!(run(&mut host(false), facts, 3_000 * MS).is_empty());
    }

    #[test]
    fn segments_dying_in_a_black_hole_prove_it() {
        let facts = vec![
            syn_at(0, false),
            icmp_dropped(5 * MS),
            too_big(5 * MS, false, false),
        ];
        let v = run(&mut host(true), facts, 100 * MS);
        // The dropped ICMP is a firewall drop of its own too.
        assert_eq!(
            kinds(&v),
            [
                ("netfilter_drop", Tier::Proven),
                ("pmtu_blackhole", Tier::Proven),
                ("mss_exceeds_mtu", Tier::Proven)
            ]
        );
        let v = &v[1..];
        assert!(v[1].fault);
    }

    /// A slow host's ring buffer hands every fact in 10.5 s late, and the
    /// download's retransmissions back off past the 2 s quiet window: the
    /// windows run on fact time, so the black hole and the MSS behind it
    /// are still proven (on the live clock the episode was forgotten as
    /// soon as it was read, and the connection judged rescued).
    #[test]
    fn a_backlog_of_late_facts_still_proves_the_black_hole() {
        let lag = 10_500 * MS;
        let mut src = host(false);
        let mut e = Engine::new();
        let mut facts = vec![syn_at(0, false)];
        for t in [200, 2_600, 5_400] {
            facts.push(icmp_dropped(t * MS));
            facts.push(too_big(t * MS, false, false));
        }
        let mut wall = lag;
        for f in &facts {
            while wall + 250 * MS <= f.ts_ns() + lag {
                wall += 250 * MS;
                e.tick(wall, &mut src);
            }
            e.on_fact(f, f.ts_ns() + lag, &mut src);
        }
        e.finish(wall + 500 * MS, &mut src);
        let kinds: Vec<_> = e.verdicts().iter().map(|v| (v.kind, v.tier)).collect();
        for k in ["pmtu_blackhole", "mss_exceeds_mtu"] {
            assert!(kinds.contains(&(k, Tier::Proven)), "{k}: {kinds:?}");
        }
        // How late the verdict came still counts the backlog.
        let v = e.verdicts().iter().find(|v| v.kind == "pmtu_blackhole");
        assert!(
            v.unwrap().latency_ms >= 10_000.0,
            "{:?}",
            v.map(|v| v.latency_ms)
        );
    }

    #[test]
    fn a_suspicion_is_upgraded_when_proof_arrives() {
        let mut src = host(false);
        let mut e = Engine::new();
        e.on_fact(&syn_at(0, false), 0, &mut src);
        e.tick(2_600 * MS, &mut src);
        let first = e.take_new();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].tier, Tier::Suspected);
        for f in [icmp_dropped(2_700 * MS), too_big(2_700 * MS, false, false)] {
            e.on_fact(&f, 2_700 * MS, &mut src);
        }
        let kinds: Vec<_> = e.take_new().iter().map(|v| (v.kind, v.tier)).collect();
        assert!(
            kinds.contains(&("mss_exceeds_mtu", Tier::Proven)),
            "{kinds:?}"
        );
        assert_eq!(
            e.verdicts()
                .iter()
                .filter(|v| v.kind == "mss_exceeds_mtu")
                .count(),
            1
        );
    }

    /// The Docker host's SYN after MASQUERADE (from the host's uplink
    /// address), with its conntrack tuple: container api-7 at 172.23.0.9.
    fn nat_syn(ts: u64, orig: Option<&str>) -> Fact {
        let mut r = syn(
            ts,
            (3, "docker0"),
            (2, "eth0", 1450),
            1460,
            "10.61.0.1",
            40001,
            "10.200.0.2",
            443,
        );
        if let Some(o) = orig {
            r.orig_src = Some(ip(o));
            r.orig_dst = Some(ip("10.200.0.2"));
            r.orig_sport = Some(40001);
            r.orig_dport = Some(443);
        }
        Fact::Syn(r)
    }

    /// The router's too-big drop of the download, addressed to the host.
    fn nat_too_big(ts: u64) -> Fact {
        let mut d = tcp(
            drop(Reason::PKT_TOO_BIG, ts),
            "10.200.0.2",
            443,
            "10.61.0.1",
            40001,
        );
        d.netns = ROUTER;
        d.len = 1500;
        d.route = Some(lookup(2, "eth1", 1450, 0));
        Fact::Drop(d)
    }

    fn docker_host() -> Fake {
        use crate::host::containers::{Container, ContainerNet, ContainerRef, Registry};
        let mut h = host(true);
        let api = Container {
            r: ContainerRef {
                runtime: "docker".into(),
                name: "api-7".into(),
                ..Default::default()
            },
            netns: NS + 5,
            networks: vec![ContainerNet {
                name: "bridge".into(),
                address: Some("172.23.0.9".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        h.containers = Registry::new(vec![api], vec![], true);
        h
    }

    #[test]
    fn a_nated_connection_names_the_container_that_opened_it() {
        let facts = vec![
            nat_syn(0, Some("172.23.0.9")),
            icmp_dropped(5 * MS),
            nat_too_big(5 * MS),
        ];
        let v = run(&mut docker_host(), facts, 100 * MS);
        // The dropped ICMP is a firewall drop of its own too.
        assert_eq!(
            kinds(&v),
            [
                ("netfilter_drop", Tier::Proven),
                ("pmtu_blackhole", Tier::Proven),
                ("mss_exceeds_mtu", Tier::Proven)
            ]
        );
        let v = &v[1..];
        for v in v {
            let c = v.container.as_ref().unwrap_or_else(|| panic!("{v:?}"));
            assert_eq!(c.name, "api-7");
            assert!(
                v.summary
                    .contains("container api-7's connections to 10.200.0.2:443"),
                "{}",
                v.summary
            );
            assert_eq!(v.evidence["pre_nat"]["src"], "172.23.0.9");
            assert_eq!(v.evidence["pre_nat"]["sport"], 40001);
            assert_eq!(v.host_ifname, None, "not the container's namespace");
            assert!(
                v.fix
                    .iter()
                    .any(|f| f.contains("container api-7 is on Docker network bridge")),
                "{:?}",
                v.fix
            );
        }
    }

    #[test]
    fn without_nat_or_a_container_at_the_origin_no_container_is_named() {
        // The host's own connection (no NAT), and a NATed one whose
        // original source is no container's address.
        for orig in [None, Some("10.61.0.77")] {
            let facts = vec![nat_syn(0, orig), icmp_dropped(5 * MS), nat_too_big(5 * MS)];
            let v = run(&mut docker_host(), facts, 100 * MS);
            assert_eq!(v.len(), 3, "{orig:?}: {v:?}");
            for v in &v[1..] {
                assert!(v.container.is_none(), "{orig:?}: {v:?}");
                assert!(v.evidence.get("pre_nat").is_none());
                assert!(!v.summary.contains("container"), "{}", v.summary);
            }
        }
    }

    #[test]
    fn a_syn_after_masquerade_joins_the_segments_dying_before_it() {
        // The upload's too-big drops on the Docker host itself are seen
        // before SNAT (from the container's address): the SYN's pre-NAT
        // tuple is what ties them to it.
        let mut up = tcp(
            drop(Reason::PKT_TOO_BIG, 5 * MS),
            "172.23.0.9",
            40001,
            "10.200.0.2",
            443,
        );
        up.len = 1500;
        up.route = Some(lookup(2, "eth0", 1450, 0));
        let mut icmp = drop(Reason::NETFILTER_DROP, 5 * MS);
        icmp.proto = Some(Proto::Icmp);
        icmp.dst = Some(ip("172.23.0.9"));
        icmp.icmp_type = Some(3);
        icmp.icmp_code = Some(4);
        let facts = vec![
            nat_syn(0, Some("172.23.0.9")),
            Fact::Drop(icmp),
            Fact::Drop(up),
        ];
        let v = run(&mut docker_host(), facts, 100 * MS);
        let mss = v.iter().find(|v| v.kind == "mss_exceeds_mtu").unwrap();
        assert_eq!(mss.tier, Tier::Proven, "{v:?}");
        assert_eq!(mss.container.as_ref().unwrap().name, "api-7");
    }
}
