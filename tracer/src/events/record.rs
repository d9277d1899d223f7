//! The records as the user sees them: the JSON schema of drops, SYNs and
//! neighbour events (see README), as printed and as read back from a
//! recording.

use super::reason::Reason;
use crate::host::containers::ContainerRef;
use serde::{Deserialize, Deserializer, Serialize};
use std::net::{IpAddr, Ipv4Addr};

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
    #[serde(serialize_with = "empty_as_null", default)]
    pub reason: Reason,
    /// `"kernel"`, or `"location"` when inferred on a kernel without drop
    /// reasons (see reason_inference); null when unknown.
    #[serde(default)]
    pub reason_source: Option<ReasonSource>,
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
    #[serde(default)]
    pub family: Option<Family>,
    pub proto: Option<Proto>,
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
    #[serde(default)]
    pub nat_dir: Option<NatDir>,
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
    #[serde(default)]
    pub noise: Option<Noise>,
    /// An ARP packet's opcode and addresses (only on ARP drops).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arp: Option<Arp>,
    /// A non-first IP fragment: it has no L4 header, so no ports (only
    /// written when true).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fragment: bool,
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

fn empty_as_null<S: serde::Serializer>(v: &Reason, s: S) -> Result<S::Ok, S::Error> {
    if v.is_empty() {
        s.serialize_none()
    } else {
        s.serialize_str(v.as_str())
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
            reason: Reason::NONE,
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
            family: Some(Family::Ipv4),
            proto: Some(Proto::Tcp),
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
            fragment: false,
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
        } else if self.family == Some(Family::Ipv6) {
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
    #[serde(default)]
    pub family: Option<Family>,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub sport: u16,
    pub dport: u16,
    /// When conntrack translated the connection (a SYN leaving a Docker
    /// host after MASQUERADE): its original tuple, which leads back to the
    /// container. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orig_src: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orig_dst: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orig_sport: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orig_dport: Option<u16>,
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
    pub state: NudState,
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

/// An IP version, as records name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// A packet's IP protocol: the ones tracer names, else its number
/// (printed as text, `"47"`, as it always was).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Icmp6,
    Sctp,
    Igmp,
    Other(u8),
}

impl Proto {
    /// The name of a named protocol (None for a bare number).
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::Icmp6 => "icmp6",
            Proto::Sctp => "sctp",
            Proto::Igmp => "igmp",
            Proto::Other(_) => return None,
        })
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Icmp => 1,
            Proto::Icmp6 => 58,
            Proto::Sctp => 132,
            Proto::Igmp => 2,
            Proto::Other(n) => n,
        }
    }

    fn parse(s: &str) -> Option<Proto> {
        Some(match s {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "icmp" => Proto::Icmp,
            "icmp6" => Proto::Icmp6,
            "sctp" => Proto::Sctp,
            "igmp" => Proto::Igmp,
            n => Proto::Other(n.parse().ok()?),
        })
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.name(), self) {
            (Some(n), _) => f.write_str(n),
            (None, Proto::Other(n)) => write!(f, "{n}"),
            (None, _) => unreachable!("only Other has no name"),
        }
    }
}

impl Serialize for Proto {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Proto {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Proto::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown protocol {s:?}")))
    }
}

/// A neighbour entry's state, as `NeighRecord` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum NudState {
    Incomplete,
    Failed,
    Other,
}

impl NudState {
    pub fn as_str(self) -> &'static str {
        match self {
            NudState::Incomplete => "INCOMPLETE",
            NudState::Failed => "FAILED",
            NudState::Other => "OTHER",
        }
    }
}

impl std::fmt::Display for NudState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a drop's reason came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasonSource {
    /// The kernel's own (`enum skb_drop_reason`).
    Kernel,
    /// Inferred from where the packet was freed (see reason_inference).
    Location,
}

/// The direction a NAT'd packet travels in its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NatDir {
    Original,
    Reply,
}

/// Why a drop is benign noise (see `namer::noise_kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Noise {
    Ipv6Disabled,
    UnixSocket,
    SynRetransmit,
}

impl Noise {
    pub fn as_str(self) -> &'static str {
        match self {
            Noise::Ipv6Disabled => "ipv6_disabled",
            Noise::UnixSocket => "unix_socket",
            Noise::SynRetransmit => "syn_retransmit",
        }
    }
}
