//! Events as they leave the ring buffer (decoded without trusting a byte)
//! and as the user sees them (named: reasons, symbols, netns, interfaces).

use super::protocols::tcp_mss;
use crate::host::containers::{ContainerRef, Containers};
use crate::host::topology::{IfName, Topology};
use crate::kernel::btf::Reasons;
use crate::kernel::clock::clock_ns;
use crate::kernel::probes::RouteTable;
use crate::kernel::symbols::Symbols;
use serde::{Deserialize, Deserializer, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use tracer_abi::*;

/// A decoded ring-buffer record.
// Drops are nearly every record and are consumed at once: boxing the
// large variant would allocate per drop to save stack on the rare ones.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Drop(DropEvent),
    Syn(SynEvent),
    Neigh(NeighEvent),
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Short { kind: u32, len: usize, want: usize },
    UnknownKind(u32),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Short { kind, len, want } => {
                write!(f, "event of kind {kind} has {len} bytes, expected {want}")
            }
            DecodeError::UnknownKind(k) => write!(f, "unknown event kind {k}"),
        }
    }
}

/// Reads a POD struct from the front of `buf`. Every type in tracer-abi is
/// made of integers only, so any bytes are a valid value.
fn pod<T: Copy>(buf: &[u8], kind: u32) -> Result<T, DecodeError> {
    let want = std::mem::size_of::<T>();
    if buf.len() < want {
        return Err(DecodeError::Short {
            kind,
            len: buf.len(),
            want,
        });
    }
    // SAFETY: length checked above; T is a repr(C) struct of integers and
    // byte arrays (see tracer-abi), valid for every bit pattern.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr() as *const T) })
}

/// A drop's stack and bytes (`KIND_DROP_EXTRA`), sent just before its
/// `DropEvent` on the same CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extra {
    pub hdr: tracer_abi::DropExtra,
    /// The packet's bytes, from its MAC or IP header (`hdr.link`).
    pub data: Vec<u8>,
}

impl Extra {
    /// The stack's return addresses, innermost first.
    pub fn stack(&self) -> impl Iterator<Item = u64> + '_ {
        let n = (self.hdr.stack_bytes as usize / 8).min(MAX_STACK_DEPTH);
        self.hdr.stack[..n].iter().copied().filter(|a| *a != 0)
    }
}

/// Reads a `KIND_DROP_EXTRA` record: its header and the bytes after it.
pub fn decode_extra(buf: &[u8]) -> Result<Extra, DecodeError> {
    let hdr = pod::<tracer_abi::DropExtra>(buf, KIND_DROP_EXTRA)?;
    let at = std::mem::size_of::<tracer_abi::DropExtra>();
    let n = (hdr.cap_len as usize).min(buf.len() - at);
    Ok(Extra {
        hdr,
        data: buf[at..at + n].to_vec(),
    })
}

/// Reads a `KIND_HOP` record.
pub fn decode_hop(buf: &[u8]) -> Result<HopEvent, DecodeError> {
    pod::<HopEvent>(buf, KIND_HOP)
}

/// The kind of a ring-buffer record, 0 if too short.
pub fn kind_of(buf: &[u8]) -> u32 {
    match buf {
        [a, b, c, d, ..] => u32::from_ne_bytes([*a, *b, *c, *d]),
        _ => 0,
    }
}

pub fn decode(buf: &[u8]) -> Result<Event, DecodeError> {
    if buf.len() < 4 {
        return Err(DecodeError::Short {
            kind: 0,
            len: buf.len(),
            want: 4,
        });
    }
    let kind = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    match kind {
        KIND_DROP => pod::<DropEvent>(buf, kind).map(Event::Drop),
        KIND_SYN => pod::<SynEvent>(buf, kind).map(Event::Syn),
        KIND_NEIGH => pod::<NeighEvent>(buf, kind).map(Event::Neigh),
        k => Err(DecodeError::UnknownKind(k)),
    }
}

pub fn flow_src(f: &Flow) -> Option<IpAddr> {
    addr(f.family, &f.src)
}

pub fn flow_dst(f: &Flow) -> Option<IpAddr> {
    addr(f.family, &f.dst)
}

fn addr(family: u8, b: &[u8; 16]) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        FAMILY_V6 => Some(IpAddr::V6(Ipv6Addr::from(*b))),
        _ => None,
    }
}

pub fn family_name(family: u8) -> Option<&'static str> {
    match family {
        FAMILY_V4 => Some("ipv4"),
        FAMILY_V6 => Some("ipv6"),
        _ => None,
    }
}

pub fn proto_name(p: u8) -> String {
    match p {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_ICMP => "icmp".into(),
        IPPROTO_ICMPV6 => "icmp6".into(),
        IPPROTO_SCTP => "sctp".into(),
        2 => "igmp".into(),
        n => n.to_string(),
    }
}

/// TCP flags as tcpdump prints them: `S`, `S.`, `F.`, `R`, `P.`.
pub fn tcp_flags(f: u8) -> String {
    let mut s = String::new();
    for (bit, c) in [
        (0x01, 'F'),
        (0x02, 'S'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x20, 'U'),
    ] {
        if f & bit != 0 {
            s.push(c);
        }
    }
    if f & 0x10 != 0 {
        s.push('.');
    }
    if s.is_empty() {
        s.push_str("none");
    }
    s
}

/// A route lookup joined to a drop, named.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteRecord {
    /// Nanoseconds between the lookup and the drop (negative: lookup after).
    pub age_ns: i64,
    pub table: u32,
    pub err: i32,
    pub iif: i32,
    pub oif: i32,
    pub ifindex: i32,
    pub ifname: Option<String>,
    pub mtu: u32,
    /// The lookup's flow: destination and source (as joined to the drop),
    /// and its ports when it had some.
    pub dst: Option<IpAddr>,
    pub src: Option<IpAddr>,
    pub sport: u16,
    pub dport: u16,
}

/// A drop as the user sees it; also the JSON schema (see README).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DropRecord {
    #[serde(rename = "type", skip_deserializing, default = "drop_kind")]
    pub kind: &'static str,
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// The reason's name; empty (JSON null) when the kernel reports none
    /// and none could be inferred.
    #[serde(serialize_with = "empty_as_null", deserialize_with = "null_as_empty")]
    pub reason: String,
    /// `"kernel"`, or `"location"` when inferred on a kernel without drop
    /// reasons (see reason_inference); null when unknown.
    #[serde(default, deserialize_with = "opt_static_str")]
    pub reason_source: Option<StaticName>,
    pub reason_code: u32,
    pub location: String,
    pub netns: u32,
    pub netns_name: Option<String>,
    /// The container whose namespace this is, if any.
    #[serde(default)]
    pub container: Option<ContainerRef>,
    pub ifindex: i32,
    pub ifname: Option<String>,
    /// True when the device no longer exists (so `ifname` is null).
    pub ifname_gone: bool,
    pub ingress_ifindex: i32,
    pub ingress_ifname: Option<String>,
    /// In a container: the host-side veth of the device (or of the
    /// container's first interface).
    #[serde(default)]
    pub host_ifname: Option<String>,
    /// skb->len where it was freed: with or without link-layer headers
    /// depending on the place, so compare `ip_len` across drops.
    pub len: u32,
    /// The IP packet's length from its own header; null without one.
    #[serde(default)]
    pub ip_len: Option<u32>,
    pub gso_size: u16,
    pub gso_segs: u16,
    pub mtu: u32,
    #[serde(default, deserialize_with = "opt_static_str")]
    pub family: Option<StaticName>,
    pub proto: Option<String>,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// When conntrack translated the connection (NAT): its original tuple,
    /// what the client sent and dialled. Null otherwise.
    #[serde(default)]
    pub orig_src: Option<IpAddr>,
    #[serde(default)]
    pub orig_dst: Option<IpAddr>,
    #[serde(default)]
    pub orig_sport: Option<u16>,
    #[serde(default)]
    pub orig_dport: Option<u16>,
    /// `"original"` or `"reply"`: the direction this packet travels in
    /// that connection; null without NAT.
    #[serde(default, deserialize_with = "opt_static_str")]
    pub nat_dir: Option<StaticName>,
    pub tcp_flags: Option<String>,
    pub mss: Option<u16>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    /// Addresses came from the socket: the packet had no IP header yet.
    pub from_socket: bool,
    pub cpu: u32,
    pub pid: u32,
    pub comm: String,
    /// Latest route lookup for this packet's direction, if traced.
    pub route: Option<RouteRecord>,
    /// Latest route lookup towards the packet's source (reverse path).
    pub reverse_route: Option<RouteRecord>,
    /// The kernel stack where it was dropped, innermost first (`--stack`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<Vec<String>>,
    /// Why this drop is benign container-host noise (hidden unless
    /// `--all`; counted in the summary's `noise_hidden`), else null.
    #[serde(default, deserialize_with = "opt_static_str")]
    pub noise: Option<StaticName>,
    /// An ARP packet's opcode and addresses (only on ARP drops).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arp: Option<Arp>,
}

/// What a dropped ARP packet said.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Arp {
    /// "request", "reply", or the opcode's number.
    pub op: String,
    /// Who sent it (sender protocol address).
    pub sender: Ipv4Addr,
    /// Whom it is about (target protocol address).
    pub target: Ipv4Addr,
}

impl Arp {
    fn of(f: &Flow) -> Option<Arp> {
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
}

/// Benign drops that every Docker host shows, recognised in userspace
/// (the kernel filter knows no containers):
/// - `ipv6_disabled`: `IPV6DISABLED` inside a container's namespace, where
///   Docker turns IPv6 off;
/// - `syn_retransmit`: `NOT_SPECIFIED` in `tcp_v4_rcv`/`tcp_v6_rcv` of a
///   bare SYN, a retransmission that met the pending connection request
///   (the kernel answers it by resending its SYN-ACK). The SYN-ACK's own
///   fate is the drop that matters and stays visible.
pub fn noise_kind(d: &DropRecord) -> Option<&'static str> {
    if d.reason == "IPV6DISABLED" && d.container.is_some() {
        return Some("ipv6_disabled");
    }
    let func = crate::events::reason_inference::function(&d.location);
    // AF_UNIX sockets free their queued messages through kfree_skb too
    // (`SOCKET_CLOSE` at unix_release_sock, dozens per `socat EXEC`):
    // no network packet, no device, no IP family.
    if func.starts_with("unix_") && d.family.is_none() {
        return Some("unix_socket");
    }
    if d.reason == "NOT_SPECIFIED"
        && matches!(func, "tcp_v4_rcv" | "tcp_v6_rcv")
        && d.tcp_flags.as_deref() == Some("S")
    {
        return Some("syn_retransmit");
    }
    None
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Option::<String>::deserialize(d).map(Option::unwrap_or_default)
}

fn empty_as_null<S: serde::Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
    if v.is_empty() {
        s.serialize_none()
    } else {
        s.serialize_str(v)
    }
}

impl DropRecord {
    /// An IPv4 TCP drop with every optional fact absent, for unit tests to
    /// fill in.
    #[cfg(test)]
    pub fn sample(location: &str) -> Self {
        DropRecord {
            kind: "drop",
            ts_ns: 0,
            reason: String::new(),
            reason_source: None,
            reason_code: 0,
            location: location.to_string(),
            netns: 1,
            netns_name: None,
            container: None,
            ifindex: 2,
            ifname: None,
            ifname_gone: false,
            ingress_ifindex: 2,
            ingress_ifname: None,
            host_ifname: None,
            len: 60,
            ip_len: Some(60),
            gso_size: 0,
            gso_segs: 0,
            mtu: 1500,
            family: Some("ipv4"),
            proto: Some("tcp".into()),
            src: Some([172, 17, 5, 5].into()),
            dst: Some([10, 99, 0, 2].into()),
            sport: Some(40000),
            dport: Some(8080),
            orig_src: None,
            orig_dst: None,
            orig_sport: None,
            orig_dport: None,
            nat_dir: None,
            tcp_flags: Some("S".into()),
            mss: Some(1460),
            icmp_type: None,
            icmp_code: None,
            from_socket: false,
            cpu: 0,
            pid: 0,
            comm: String::new(),
            route: None,
            reverse_route: None,
            stack: None,
            noise: None,
            arp: None,
        }
    }

    /// What must fit the egress MTU: the IP packet, or for a GSO packet
    /// one segment. skb->len holds the headers once plus every segment's
    /// payload, so when the segments are full the headers are
    /// len - segs * gso_size; otherwise assume bare TCP headers.
    pub fn wire_size(&self) -> u32 {
        if self.gso_size == 0 {
            return self.len;
        }
        let payload = self.gso_segs as u32 * self.gso_size as u32;
        let hdr = self.len.saturating_sub(payload);
        let hdr = if self.gso_segs > 0 && self.len > payload && hdr <= 120 {
            hdr
        } else if self.family == Some("ipv6") {
            60
        } else {
            40
        };
        self.gso_size as u32 + hdr
    }
}

/// A SYN whose MSS the egress MTU cannot carry, named.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SynRecord {
    #[serde(rename = "type", skip_deserializing, default = "syn_kind")]
    pub kind: &'static str,
    pub ts_ns: u64,
    pub netns: u32,
    pub netns_name: Option<String>,
    #[serde(default)]
    pub container: Option<ContainerRef>,
    pub ifindex: i32,
    pub ifname: Option<String>,
    pub ingress_ifindex: i32,
    pub ingress_ifname: Option<String>,
    #[serde(default)]
    pub host_ifname: Option<String>,
    pub mtu: u32,
    pub mss: u16,
    #[serde(default, deserialize_with = "opt_static_str")]
    pub family: Option<StaticName>,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: String,
}

/// A neighbour entry resolving or failed, named.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NeighRecord {
    #[serde(rename = "type", skip_deserializing, default = "neigh_kind")]
    pub kind: &'static str,
    pub ts_ns: u64,
    pub netns: u32,
    pub netns_name: Option<String>,
    #[serde(default)]
    pub container: Option<ContainerRef>,
    pub ifindex: i32,
    pub ifname: Option<String>,
    #[serde(default)]
    pub host_ifname: Option<String>,
    pub neighbor: Option<IpAddr>,
    /// `INCOMPLETE` or `FAILED`.
    #[serde(deserialize_with = "static_str")]
    pub state: StaticName,
    /// Where traffic from the neighbour entered, as the kernel's own
    /// input-route lookups saw it (in this namespace, and in the one behind
    /// the device's veth peer): what proves a reply asymmetric before the
    /// neighbour fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arrivals: Vec<Arrival>,
}

/// A route lookup for a packet from a neighbour being resolved: it
/// entered `netns` on `iif` and was routed to `ifindex`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Arrival {
    pub netns: u32,
    pub iif: i32,
    pub iifname: Option<String>,
    pub ifindex: i32,
    pub ifname: Option<String>,
    /// The destination the neighbour's packet was routed towards.
    pub dst: IpAddr,
    /// Nanoseconds from the lookup to the neighbour event, never negative
    /// (recordings made before that was so are read clamped).
    #[serde(deserialize_with = "non_negative")]
    pub age_ns: i64,
}

fn non_negative<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    i64::deserialize(d).map(|v| v.max(0))
}

/// A name held as `&'static str`. Fields spell it through this alias
/// because serde's derive borrows every field written `&str` or
/// `Option<&str>` from the input, which a `'static` one cannot be; with
/// the alias they are read owned and interned (`deserialize_with`).
pub type StaticName = &'static str;

/// Reads a name that a live run holds as `&'static str` (record kinds,
/// families, neighbour states) back from a recording: each distinct value
/// is allocated once for the life of the process.
pub fn intern(s: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static NAMES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut g = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    let set = g.get_or_insert_with(HashSet::new);
    if let Some(&n) = set.get(s) {
        return n;
    }
    let n: &'static str = Box::leak(s.to_owned().into_boxed_str());
    set.insert(n);
    n
}

fn static_str<'de, D: Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
    String::deserialize(d).map(|s| intern(&s))
}

// A record's kind is fixed by its type (the `type` field it prints).
fn drop_kind() -> &'static str {
    "drop"
}
fn syn_kind() -> &'static str {
    "syn"
}
fn neigh_kind() -> &'static str {
    "neigh"
}

fn opt_static_str<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'static str>, D::Error> {
    Option::<String>::deserialize(d).map(|o| o.map(|s| intern(&s)))
}

pub fn nud_name(state: u8) -> &'static str {
    match state {
        NUD_INCOMPLETE => "INCOMPLETE",
        NUD_FAILED => "FAILED",
        _ => "OTHER",
    }
}

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
                self.reasons.name(e.reason)
            } else {
                String::new()
            },
            reason_source: kernel_reasons.then_some("kernel"),
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
            family: family_name(f.family),
            proto: has_l3.then(|| proto_name(f.proto)),
            src: flow_src(f),
            dst: flow_dst(f),
            sport: has_ports.then_some(f.sport),
            dport: has_ports.then_some(f.dport),
            orig_src: nat.then(|| addr(o.family, &o.src)).flatten(),
            orig_dst: nat.then(|| addr(o.family, &o.dst)).flatten(),
            orig_sport: nat_ports.then_some(o.sport),
            orig_dport: nat_ports.then_some(o.dport),
            nat_dir: nat.then_some(if o.flags & NAT_REPLY != 0 {
                "reply"
            } else {
                "original"
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
            arp: Arp::of(f),
        };
        // Where a forwarded packet was to leave: what a too-big drop is
        // shown on, and (without kernel reasons) what proves it too big.
        let forwarded = matches!(
            crate::events::reason_inference::function(&rec.location),
            "ip_forward" | "ip6_forward"
        );
        let egress = if rec.reason == "PKT_TOO_BIG" || (!kernel_reasons && forwarded) {
            self.forward_egress(&rec)
        } else {
            None
        };
        if !kernel_reasons {
            let mtu = egress.as_ref().map(|(_, l)| l.mtu);
            if let Some(r) = crate::events::reason_inference::infer(&rec, mtu) {
                rec.reason = r.to_string();
                rec.reason_source = Some("location");
            }
        }
        if let Some((ifindex, link)) = egress {
            Self::too_big_egress(&mut rec, ifindex, &link);
        }
        rec.noise = noise_kind(&rec);
        rec
    }

    /// The device a forwarded packet was routed out of: the joined route
    /// lookup's, else the one the namespace's routing table gives.
    fn forward_egress(&mut self, d: &DropRecord) -> Option<(i32, crate::host::topology::Link)> {
        let ifindex = match &d.route {
            Some(r) if r.err == 0 && r.ifindex > 0 => Some(r.ifindex),
            _ => d.dst.and_then(|dst| {
                self.topology
                    .get(d.netns)
                    .and_then(|t| t.route_to(dst).and_then(|r| r.oif))
            }),
        }?;
        let link = self.topology.link(d.netns, ifindex).ok()?;
        Some((ifindex, link))
    }

    /// A packet too big to forward is shown on the device it did not fit,
    /// arriving from its ingress (`eth0<-eth1`). IPv6 sets skb->dev to the
    /// egress before it drops; IPv4 leaves the ingress there.
    fn too_big_egress(d: &mut DropRecord, egress: i32, link: &crate::host::topology::Link) {
        if d.reason != "PKT_TOO_BIG"
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
            family: family_name(f.family),
            src: flow_src(f),
            dst: flow_dst(f),
            sport: f.sport,
            dport: f.dport,
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
            state: nud_name(e.state),
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
        let Some(topo) = self.topology.get(e.netns) else {
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
            if peer_ns != e.netns {
                spaces.push(peer_ns);
            }
        }
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

fn comm(b: &[u8; 16]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
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
        let a = Arp::of(&f).unwrap();
        assert_eq!(
            (a.op.as_str(), a.sender.to_string(), a.target.to_string()),
            ("request", "10.61.0.1".into(), "10.61.0.7".into())
        );
        f.flags = 0;
        assert_eq!(Arp::of(&f), None);
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

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a POD value as bytes.
        unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
            .to_vec()
    }

    #[test]
    fn decodes_a_drop_round_trip() {
        let mut e = DropEvent {
            kind: KIND_DROP,
            reason: 104,
            len: 60,
            ..Default::default()
        };
        e.flow.family = FAMILY_V4;
        e.flow.src[..4].copy_from_slice(&[172, 17, 5, 5]);
        let got = decode(&bytes_of(&e)).unwrap();
        assert_eq!(got, Event::Drop(e));
        assert_eq!(
            flow_src(&e.flow),
            Some(IpAddr::V4(Ipv4Addr::new(172, 17, 5, 5)))
        );
    }

    #[test]
    fn short_and_unknown_records_are_errors_not_panics() {
        let e = DropEvent {
            kind: KIND_DROP,
            ..Default::default()
        };
        let b = bytes_of(&e);
        assert!(matches!(
            decode(&b[..b.len() - 1]),
            Err(DecodeError::Short { .. })
        ));
        assert_eq!(decode(&[9, 0, 0, 0, 1]), Err(DecodeError::UnknownKind(9)));
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics() {
        // A cheap deterministic fuzz: xorshift bytes of every length, with
        // valid kinds forced in half of them.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for len in 0..600usize {
            let mut buf = vec![0u8; len];
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            if len >= 4 && len % 2 == 0 {
                buf[..4].copy_from_slice(&((len as u32 % 3) + 1).to_ne_bytes());
            }
            let _ = decode(&buf);
        }
    }

    #[test]
    fn unix_socket_frees_are_noise_not_network_drops() {
        let mut d = DropRecord::sample("unix_release_sock+0x1a2");
        d.reason = "SOCKET_CLOSE".into();
        d.family = None;
        d.ifindex = 0;
        assert_eq!(noise_kind(&d), Some("unix_socket"));
        // The same reason on an IP socket is shown.
        let mut tcp = DropRecord::sample("tcp_close+0x2b1");
        tcp.reason = "SOCKET_CLOSE".into();
        assert_eq!(noise_kind(&tcp), None);
    }

    #[test]
    fn docker_noise_is_narrow() {
        let mut d = DropRecord::sample("tcp_v4_rcv+0x99");
        d.reason = "NOT_SPECIFIED".into();
        assert_eq!(noise_kind(&d), Some("syn_retransmit"));
        // A SYN-ACK, a data segment, another reason or function: real.
        for (flags, reason, loc) in [
            ("S.", "NOT_SPECIFIED", "tcp_v4_rcv+0x99"),
            ("P.", "NOT_SPECIFIED", "tcp_v4_rcv+0x99"),
            ("S", "NO_SOCKET", "tcp_v4_rcv+0x99"),
            ("S", "NOT_SPECIFIED", "ip_forward+0x10"),
        ] {
            d.tcp_flags = Some(flags.into());
            d.reason = reason.into();
            d.location = loc.into();
            assert_eq!(noise_kind(&d), None, "{flags} {reason} {loc}");
        }
        let mut v6 = DropRecord::sample("ip6_rcv_core+0x1c");
        v6.reason = "IPV6DISABLED".into();
        assert_eq!(noise_kind(&v6), None, "outside a container it is shown");
        v6.container = Some(crate::host::containers::ContainerRef {
            runtime: "docker".into(),
            name: "web-1".into(),
            ..Default::default()
        });
        assert_eq!(noise_kind(&v6), Some("ipv6_disabled"));
    }

    #[test]
    fn tcp_flags_read_like_tcpdump() {
        assert_eq!(tcp_flags(0x02), "S");
        assert_eq!(tcp_flags(0x12), "S.");
        assert_eq!(tcp_flags(0x18), "P.");
        assert_eq!(tcp_flags(0x04), "R");
        assert_eq!(tcp_flags(0), "none");
    }
}
