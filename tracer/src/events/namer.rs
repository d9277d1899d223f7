//! Turns decoded events into records: names reasons, symbols, netns,
//! interfaces and containers (from host/ and kernel/), joins route
//! lookups, infers reasons on kernels without them, and marks noise.

use super::decode::{addr, comm, family_of, flow_dst, flow_src, nud_state_of, proto_of, tcp_flags};
use super::protocols::tcp_mss;
use super::reason::Reason;
use super::reason_inference;
use super::record::{
    Arp, Arrival, DropRecord, NatDir, NeighRecord, Noise, ReasonSource, RouteRecord, SynRecord,
};
use crate::host::containers::{ContainerRef, Containers};
use crate::host::topology::{IfName, Topology};
use crate::kernel::btf::Reasons;
use crate::kernel::clock::clock_ns;
use crate::kernel::probes::RouteTable;
use crate::kernel::symbols::Symbols;
use std::net::{IpAddr, Ipv4Addr};
use tracer_abi::*;

/// Turns raw events into records: holds everything needed to name things.
pub struct Namer {
    pub reasons: Reasons,
    symbols: SymbolsSlot,
    pub topology: Topology,
    /// realtime - monotonic, to turn bpf_ktime_get_ns into wall time.
    clock_offset: i128,
    /// Which container a netns is (empty without a container runtime).
    pub containers: Containers,
    /// The kernel's latest route lookups (diagnose only), for a neighbour
    /// event's arrivals.
    pub routes: Option<RouteTable>,
    /// When arrivals were last looked up per (netns, ifindex, neighbour):
    /// a neighbour that stays unresolved fires an event per queued packet.
    arrivals_checked: std::collections::HashMap<(u32, i32, [u8; 16]), u64>,
}

/// kallsyms takes ~50 ms to read; it loads on a thread during start-up
/// and is joined at the first event that needs it.
enum SymbolsSlot {
    Loading(std::thread::JoinHandle<Symbols>),
    Ready(Symbols),
    Empty,
}

impl SymbolsSlot {
    fn get(&mut self) -> &Symbols {
        if let SymbolsSlot::Loading(_) = self {
            let SymbolsSlot::Loading(h) = std::mem::replace(self, SymbolsSlot::Empty) else {
                unreachable!()
            };
            *self = SymbolsSlot::Ready(h.join().unwrap_or_else(|_| Symbols::empty()));
        }
        match self {
            SymbolsSlot::Ready(s) => s,
            _ => {
                *self = SymbolsSlot::Ready(Symbols::empty());
                self.get()
            }
        }
    }
}

impl Namer {
    /// kallsyms is read on a background thread (see `SymbolsSlot`).
    pub fn loading_symbols(reasons: Reasons, topology: Topology) -> Self {
        let clock_offset = clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC);
        Namer {
            reasons,
            symbols: SymbolsSlot::Loading(std::thread::spawn(Symbols::load)),
            topology,
            clock_offset,
            containers: Containers::empty(),
            routes: None,
            arrivals_checked: Default::default(),
        }
    }

    /// The container of `netns` and the host-side veth of `ifindex` there.
    fn container(&self, netns: u32, ifindex: i32) -> (Option<ContainerRef>, Option<String>) {
        let reg = self.containers.snapshot();
        match reg.by_netns(netns) {
            Some(c) => (Some(c.r.clone()), c.host_ifname(ifindex)),
            None => (None, None),
        }
    }

    /// `function+0xoffset` of a kernel text address.
    pub fn symbolize(&mut self, addr: u64) -> String {
        self.symbols.get().format(addr)
    }

    pub fn wall_ns(&self, mono: u64) -> u64 {
        (mono as i128 + self.clock_offset).max(0) as u64
    }

    fn ifname(&mut self, netns: u32, ifindex: i32) -> (Option<String>, bool) {
        if ifindex == 0 || netns == 0 {
            return (None, false);
        }
        match self.topology.ifname(netns, ifindex) {
            IfName::Name(n) => (Some(n), false),
            IfName::Gone | IfName::NetnsGone => (None, true),
            IfName::None => (None, false),
        }
    }

    fn route(
        &mut self,
        h: &RouteHit,
        drop_ts: u64,
        netns: u32,
        dst: Option<IpAddr>,
        src: Option<IpAddr>,
    ) -> Option<RouteRecord> {
        if h.valid == 0 || self.routes.as_ref().is_some_and(|t| !t.fresh(h)) {
            return None;
        }
        let ns = if h.netns != 0 { h.netns } else { netns };
        let (ifname, _) = self.ifname(ns, h.dev_ifindex);
        Some(RouteRecord {
            age_ns: drop_ts as i64 - h.ts_ns as i64,
            table: h.table,
            err: h.err,
            iif: h.iif,
            oif: h.oif,
            ifindex: h.dev_ifindex,
            ifname,
            mtu: h.dev_mtu,
            dst,
            src,
            sport: h.sport,
            dport: h.dport,
        })
    }

    pub fn drop_record(&mut self, e: &DropEvent) -> DropRecord {
        let f = &e.flow;
        let (ifname, ifname_gone) = self.ifname(e.netns, e.ifindex);
        let (ingress_ifname, _) = self.ifname(e.netns, e.ingress_ifindex);
        let has_l3 = f.family != FAMILY_NONE;
        // No L4 fields in a non-first fragment, nor past the packet's
        // end (the kernel side flags both): shown as null, never as
        // another packet's bytes.
        let l4 = has_l3 && f.flags & (FLOW_FRAGMENT | FLOW_L4_SHORT) == 0;
        let has_ports =
            l4 && (f.proto == IPPROTO_TCP || f.proto == IPPROTO_UDP || f.proto == IPPROTO_SCTP);
        let is_icmp = l4 && (f.proto == IPPROTO_ICMP || f.proto == IPPROTO_ICMPV6);
        let has_tcp_flags = has_ports && f.proto == IPPROTO_TCP && f.flags & FLOW_TCP_SHORT == 0;
        let kernel_reasons = !self.reasons.is_empty();
        let o = &e.orig;
        let nat = o.flags & NAT_VALID != 0 && o.family != FAMILY_NONE;
        let nat_ports = nat && (o.proto == IPPROTO_TCP || o.proto == IPPROTO_UDP);
        let (container, host_ifname) = self.container(
            e.netns,
            if e.ingress_ifindex > 0 {
                e.ingress_ifindex
            } else {
                e.ifindex
            },
        );
        let mut rec = DropRecord {
            kind: "drop",
            ts_ns: self.wall_ns(e.ts_ns),
            reason: if kernel_reasons {
                Reason::new(&self.reasons.name(e.reason))
            } else {
                Reason::NONE
            },
            reason_source: kernel_reasons.then_some(ReasonSource::Kernel),
            reason_code: e.reason,
            location: self.symbols.get().format(e.location),
            netns: e.netns,
            netns_name: self.topology.netns_name(e.netns),
            container,
            ifindex: e.ifindex,
            ifname,
            ifname_gone,
            ingress_ifindex: e.ingress_ifindex,
            ingress_ifname,
            host_ifname,
            len: e.len,
            ip_len: (f.ip_len != 0).then_some(f.ip_len as u32),
            gso_size: e.gso_size,
            gso_segs: e.gso_segs,
            mtu: e.dev_mtu,
            family: family_of(f.family),
            proto: has_l3.then(|| proto_of(f.proto)),
            src: flow_src(f),
            dst: flow_dst(f),
            sport: has_ports.then_some(f.sport),
            dport: has_ports.then_some(f.dport),
            orig_src: nat.then(|| addr(o.family, &o.src)).flatten(),
            orig_dst: nat.then(|| addr(o.family, &o.dst)).flatten(),
            orig_sport: nat_ports.then_some(o.sport),
            orig_dport: nat_ports.then_some(o.dport),
            nat_dir: nat.then_some(if o.flags & NAT_REPLY != 0 {
                NatDir::Reply
            } else {
                NatDir::Original
            }),
            tcp_flags: has_tcp_flags.then(|| tcp_flags(f.tcp_flags)),
            // The drop probe sends a SYN's option bytes, not its MSS.
            mss: tcp_mss(&e.tcp_opts.0[..(e.tcp_opts_len as usize).min(TCP_OPTS_MAX)]),
            icmp_type: is_icmp.then_some(f.icmp_type),
            icmp_code: is_icmp.then_some(f.icmp_code),
            from_socket: f.flags & FLOW_FROM_SOCKET != 0,
            cpu: e.cpu,
            pid: e.pid,
            comm: comm(&e.comm),
            route: self.route(&e.route_fwd, e.ts_ns, e.netns, flow_dst(f), flow_src(f)),
            reverse_route: self.route(&e.route_rev, e.ts_ns, e.netns, flow_src(f), flow_dst(f)),
            stack: None,
            noise: None,
            arp: arp_of(f),
            fragment: has_l3 && f.flags & FLOW_FRAGMENT != 0,
        };
        self.judge_too_big(&mut rec, kernel_reasons);
        rec.noise = noise_kind(&rec);
        rec
    }

    /// Where a forwarded packet was to leave: what a too-big drop is
    /// shown on, and (without kernel reasons) what proves it too big.
    fn judge_too_big(&mut self, rec: &mut DropRecord, kernel_reasons: bool) {
        let forwarded = matches!(
            reason_inference::function(&rec.location),
            "ip_forward" | "ip6_forward"
        );
        let egress = if rec.reason == Reason::PKT_TOO_BIG || (!kernel_reasons && forwarded) {
            self.forward_egress(rec)
        } else {
            None
        };
        if !kernel_reasons {
            let mtu = egress.as_ref().map(|(_, l)| l.mtu);
            if let Some(r) = reason_inference::infer(rec, mtu) {
                rec.reason = r;
                rec.reason_source = Some(ReasonSource::Location);
            }
        } else if let Some(r) = reason_inference::unnamed(rec) {
            rec.reason = r;
            rec.reason_source = Some(ReasonSource::Location);
        }
        if let Some((ifindex, link)) = egress {
            Self::too_big_egress(rec, ifindex, &link);
        }
    }

    /// The device a forwarded packet was routed out of: the joined route
    /// lookup's, else the one the namespace's routing table gives.
    fn forward_egress(&mut self, d: &DropRecord) -> Option<(i32, crate::host::topology::Link)> {
        let ifindex = match &d.route {
            Some(r) if r.err == 0 && r.ifindex > 0 => Some(r.ifindex),
            _ => d.dst.and_then(|dst| {
                self.topology
                    .cached(d.netns)
                    .and_then(|t| t.route_to(dst).and_then(|r| r.oif))
            }),
        }?;
        let link = self.topology.name_link(d.netns, ifindex).ok()?;
        Some((ifindex, link))
    }

    /// A packet too big to forward is shown on the device it did not fit,
    /// arriving from its ingress (`eth0<-eth1`). IPv6 sets skb->dev to the
    /// egress before it drops; IPv4 leaves the ingress there.
    fn too_big_egress(d: &mut DropRecord, egress: i32, link: &crate::host::topology::Link) {
        if d.reason != Reason::PKT_TOO_BIG
            || d.ifindex != d.ingress_ifindex
            || d.ingress_ifindex == 0
            || egress == d.ingress_ifindex
        {
            return;
        }
        d.ifindex = egress;
        d.ifname = Some(link.name.clone());
        d.mtu = link.mtu;
    }

    pub fn syn_record(&mut self, e: &SynEvent) -> SynRecord {
        let f = &e.flow;
        let (container, host_ifname) = self.container(e.netns, e.ifindex);
        let o = &e.orig;
        // A SYN is TCP: a translated entry always has its ports.
        let nat = o.flags & NAT_VALID != 0 && o.family != FAMILY_NONE;
        SynRecord {
            kind: "syn",
            ts_ns: self.wall_ns(e.ts_ns),
            netns: e.netns,
            netns_name: self.topology.netns_name(e.netns),
            container,
            ifindex: e.ifindex,
            ifname: self.ifname(e.netns, e.ifindex).0,
            ingress_ifindex: e.ingress_ifindex,
            ingress_ifname: self.ifname(e.netns, e.ingress_ifindex).0,
            host_ifname,
            mtu: e.mtu,
            mss: f.mss,
            family: family_of(f.family),
            src: flow_src(f),
            dst: flow_dst(f),
            sport: f.sport,
            dport: f.dport,
            orig_src: nat.then(|| addr(o.family, &o.src)).flatten(),
            orig_dst: nat.then(|| addr(o.family, &o.dst)).flatten(),
            orig_sport: nat.then_some(o.sport),
            orig_dport: nat.then_some(o.dport),
            tcp_flags: tcp_flags(f.tcp_flags),
        }
    }
}

impl Namer {
    pub fn neigh_record(&mut self, e: &NeighEvent) -> NeighRecord {
        let (container, host_ifname) = self.container(e.netns, e.ifindex);
        let arrivals = self.arrivals(e);
        NeighRecord {
            kind: "neigh",
            ts_ns: self.wall_ns(e.ts_ns),
            netns: e.netns,
            netns_name: self.topology.netns_name(e.netns),
            container,
            ifindex: e.ifindex,
            ifname: self.ifname(e.netns, e.ifindex).0,
            host_ifname,
            neighbor: addr(e.family, &e.addr),
            state: nud_state_of(e.state),
            arrivals,
        }
    }

    /// The kernel's input-route lookups of packets from the neighbour of
    /// `e` towards any address of its namespace, in that namespace and in
    /// the one behind the device's veth peer (a container's host): where
    /// the neighbour's traffic really enters. A few map lookups, at most
    /// every 200 ms per neighbour.
    fn arrivals(&mut self, e: &NeighEvent) -> Vec<Arrival> {
        const RECHECK_NS: u64 = 200_000_000;
        const MAX_AGE_NS: i64 = 10_000_000_000;
        if self.routes.is_none() || e.family == FAMILY_NONE {
            return Vec::new();
        }
        let key = (e.netns, e.ifindex, e.addr);
        if self
            .arrivals_checked
            .get(&key)
            .is_some_and(|t| e.ts_ns.saturating_sub(*t) < RECHECK_NS)
        {
            return Vec::new();
        }
        if self.arrivals_checked.len() > 10_000 {
            self.arrivals_checked.clear();
        }
        self.arrivals_checked.insert(key, e.ts_ns);
        let Some(topo) = self.topology.names(e.netns) else {
            return Vec::new();
        };
        let v4 = e.family == FAMILY_V4;
        let locals: Vec<IpAddr> = topo
            .links
            .iter()
            .filter(|l| l.name != "lo")
            .flat_map(|l| l.addrs.iter().map(|(a, _)| *a))
            .filter(|a| a.is_ipv4() == v4 && !a.is_loopback())
            .take(16)
            .collect();
        let mut spaces = vec![e.netns];
        if let Some((peer_ns, _)) = self.topology.veth_peer(e.netns, e.ifindex) {
            spaces.push(peer_ns);
        }
        // A macvlan or ipvlan shares its parent's segment: the parent's
        // namespace, and the one behind the parent's veth (a gateway),
        // see the neighbour's packets routed into that segment.
        let shares_parent = topo.link(e.ifindex).filter(|l| {
            matches!(
                l.kind.as_deref(),
                Some("macvlan" | "ipvlan" | "macvtap" | "ipvtap")
            )
        });
        if let Some((pns, pif)) = shares_parent.and_then(|l| Some((l.peer_netns?, l.link?))) {
            spaces.push(pns);
            if let Some((qns, _)) = self.topology.veth_peer(pns, pif) {
                spaces.push(qns);
            }
        }
        let mut seen = std::collections::HashSet::new();
        spaces.retain(|ns| seen.insert(*ns));
        let mut out = Vec::new();
        for ns in spaces {
            for local in &locals {
                let mut k = RouteKey {
                    netns: ns,
                    family: e.family as u32,
                    dst: [0; 16],
                    src: e.addr,
                };
                match local {
                    IpAddr::V4(a) => k.dst[..4].copy_from_slice(&a.octets()),
                    IpAddr::V6(a) => k.dst = a.octets(),
                }
                let hits = self.routes.as_ref().map(|r| r.get(&k)).unwrap_or_default();
                for h in hits {
                    let age = e.ts_ns as i64 - h.ts_ns as i64;
                    if h.valid == 0 || h.err != 0 || h.iif <= 1 || age.abs() > MAX_AGE_NS {
                        continue;
                    }
                    let hns = if h.netns != 0 { h.netns } else { ns };
                    out.push(Arrival {
                        netns: hns,
                        iif: h.iif,
                        iifname: self.ifname(hns, h.iif).0,
                        ifindex: h.dev_ifindex,
                        ifname: self.ifname(hns, h.dev_ifindex).0,
                        dst: *local,
                        age_ns: arrival_age(e.ts_ns, h.ts_ns),
                    });
                }
            }
        }
        out
    }
}

/// How long before the neighbour event the arrival's lookup was made.
/// A lookup stamped after the event (a later packet of the same peer, or
/// another CPU's clock a hair ahead) counts as simultaneous: an age is
/// never negative.
fn arrival_age(event_ts: u64, lookup_ts: u64) -> i64 {
    i64::try_from(event_ts.saturating_sub(lookup_ts)).unwrap_or(i64::MAX)
}

/// What a dropped ARP packet said, from its flow.
fn arp_of(f: &Flow) -> Option<Arp> {
    if f.flags & FLOW_ARP == 0 {
        return None;
    }
    let v4 = |b: &[u8; 16]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    Some(Arp {
        op: match f.proto {
            1 => "request".into(),
            2 => "reply".into(),
            n => n.to_string(),
        },
        sender: v4(&f.src),
        target: v4(&f.dst),
    })
}

/// Benign drops that every Docker host shows, recognised in userspace
/// (the kernel filter knows no containers):
/// - `ipv6_disabled`: `IPV6DISABLED` inside a container's namespace, where
///   Docker turns IPv6 off;
/// - `syn_retransmit`: `NOT_SPECIFIED` in `tcp_v4_rcv`/`tcp_v6_rcv` of a
///   bare SYN, a retransmission that met the pending connection request
///   (the kernel answers it by resending its SYN-ACK). The SYN-ACK's own
///   fate is the drop that matters and stays visible.
pub fn noise_kind(d: &DropRecord) -> Option<Noise> {
    if d.reason == Reason::IPV6DISABLED && d.container.is_some() {
        return Some(Noise::Ipv6Disabled);
    }
    let func = reason_inference::function(&d.location);
    // AF_UNIX sockets free their queued messages through kfree_skb too
    // (`SOCKET_CLOSE` at unix_release_sock, dozens per `socat EXEC`):
    // no network packet, no device, no IP family.
    if func.starts_with("unix_") && d.family.is_none() {
        return Some(Noise::UnixSocket);
    }
    if d.reason == Reason::NOT_SPECIFIED
        && matches!(func, "tcp_v4_rcv" | "tcp_v6_rcv")
        && d.tcp_flags.as_deref() == Some("S")
    {
        return Some(Noise::SynRetransmit);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_arp_flow_names_its_opcode_and_addresses() {
        let mut f = Flow {
            flags: FLOW_ARP,
            proto: 1,
            ..Flow::default()
        };
        f.src[..4].copy_from_slice(&[10, 61, 0, 1]);
        f.dst[..4].copy_from_slice(&[10, 61, 0, 7]);
        let a = arp_of(&f).unwrap();
        assert_eq!(
            (a.op.as_str(), a.sender.to_string(), a.target.to_string()),
            ("request", "10.61.0.1".into(), "10.61.0.7".into())
        );
        f.flags = 0;
        assert_eq!(arp_of(&f), None);
    }

    #[test]
    fn arrival_ages_are_never_negative() {
        assert_eq!(arrival_age(5_000, 1_000), 4_000);
        assert_eq!(arrival_age(1_000, 5_000), 0);
        assert_eq!(arrival_age(7, 7), 0);
        // Recorded before the fix: read clamped.
        let a: Arrival = serde_json::from_str(
            r#"{"netns":1,"iif":2,"iifname":"e","ifindex":3,"ifname":"b","dst":"10.0.0.1","age_ns":-31877}"#,
        )
        .unwrap();
        assert_eq!(a.age_ns, 0);
    }

    #[test]
    fn unix_socket_frees_are_noise_not_network_drops() {
        let mut d = DropRecord::sample("unix_release_sock+0x1a2");
        d.reason = Reason::SOCKET_CLOSE;
        d.family = None;
        d.ifindex = 0;
        assert_eq!(noise_kind(&d), Some(Noise::UnixSocket));
        // The same reason on an IP socket is shown.
        let mut tcp = DropRecord::sample("tcp_close+0x2b1");
        tcp.reason = Reason::SOCKET_CLOSE;
        assert_eq!(noise_kind(&tcp), None);
    }

    #[test]
    fn docker_noise_is_narrow() {
        let mut d = DropRecord::sample("tcp_v4_rcv+0x99");
        d.reason = Reason::NOT_SPECIFIED;
        assert_eq!(noise_kind(&d), Some(Noise::SynRetransmit));
        // A SYN-ACK, a data segment, another reason or function: real.
        for (flags, reason, loc) in [
            ("S.", Reason::NOT_SPECIFIED, "tcp_v4_rcv+0x99"),
            ("P.", Reason::NOT_SPECIFIED, "tcp_v4_rcv+0x99"),
            ("S", Reason::NO_SOCKET, "tcp_v4_rcv+0x99"),
            ("S", Reason::NOT_SPECIFIED, "ip_forward+0x10"),
        ] {
            d.tcp_flags = Some(flags.into());
            d.reason = reason.clone();
            d.location = loc.into();
            assert_eq!(noise_kind(&d), None, "{flags} {reason} {loc}");
        }
        let mut v6 = DropRecord::sample("ip6_rcv_core+0x1c");
        v6.reason = Reason::IPV6DISABLED;
        assert_eq!(noise_kind(&v6), None, "outside a container it is shown");
        v6.container = Some(crate::host::containers::ContainerRef {
            runtime: "docker".into(),
            name: "web-1".into(),
            ..Default::default()
        });
        assert_eq!(noise_kind(&v6), Some(Noise::Ipv6Disabled));
    }
}
