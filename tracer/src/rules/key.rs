//! The identity of a cause: one verdict per key, further facts only
//! counted towards it. Typed, so two rules can never build the same key
//! by accident and a key says what it is made of. The lowest layer of the
//! rules: the facts layer keeps keys too (`Observations::arrives_elsewhere`).

use crate::events::record::Proto;
use std::net::IpAddr;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// `rpfilter_route_conflict`: packets entering `ingress` whose way
    /// back leaves by `reverse`.
    RpFilter {
        netns: u32,
        ingress: i32,
        reverse: i32,
    },
    /// `asymmetric_route`: replies lost on `egress` of `netns` while the
    /// peer enters `in_netns` (this one, or the host behind a container)
    /// on `in_if`.
    Asymmetric {
        netns: u32,
        in_netns: u32,
        in_if: i32,
        egress: i32,
    },
    /// `neighbor_unreachable`.
    NeighborUnreachable {
        netns: u32,
        egress: i32,
        peer: IpAddr,
    },
    /// `pmtu_blackhole`: per egress device (0: unknown).
    PmtuBlackhole { netns: u32, egress: i32 },
    /// `mss_exceeds_mtu`: per egress device.
    MssExceedsMtu { netns: u32, egress: i32 },
    /// `l2_mtu_mismatch`.
    L2MtuMismatch { netns: u32, ifindex: i32 },
    /// `netfilter_drop`: what was dropped.
    Netfilter {
        netns: u32,
        proto: Option<Proto>,
        dst: Option<IpAddr>,
        dport: Option<u16>,
    },
    /// `no_route`: nothing to `dst`.
    NoRoute { netns: u32, dst: IpAddr },
    /// `no_route`: no way back to `src` (an rp_filter drop).
    NoRouteBack { netns: u32, src: IpAddr },
    /// `forwarding_disabled`: per IP version.
    ForwardingDisabled { netns: u32, v6: bool },
    /// `misdelivered`.
    Misdelivered { netns: u32, dst: IpAddr },
    /// `port_closed`.
    PortClosed {
        netns: u32,
        proto: Proto,
        dst: IpAddr,
        port: u16,
    },
    /// `socket_buffer_full`: per receiving socket (its local address and
    /// port; 0 for a raw socket).
    SocketBufferFull {
        netns: u32,
        proto: Option<Proto>,
        dst: Option<IpAddr>,
        port: u16,
    },
    /// `martian_source` / `martian_destination`: the impossible address
    /// (`dst` for a destination) arriving on `ifindex`.
    Martian {
        netns: u32,
        ifindex: i32,
        addr: IpAddr,
        dst: bool,
    },
    /// `bridge_port_blocked`: per bridge port.
    BridgePortBlocked { netns: u32, port: i32 },
    /// `tunnel_mtu`: per tunnel device.
    TunnelMtu { netns: u32, tunnel: i32 },
    /// `listen_overflow`: per namespace (the counter is).
    ListenOverflow { netns: u32 },
    /// `fragment_reassembly_timeout`: per (source, destination).
    FragTimeout {
        netns: u32,
        src: IpAddr,
        dst: IpAddr,
    },
    /// `qdisc_drop`: per device.
    Qdisc { netns: u32, ifindex: i32 },
    /// `conntrack_table_full`: per namespace (each has its own table).
    ConntrackTableFull { netns: u32 },
    /// `neighbor_table_full`: per IP version (the tables are host-wide).
    NeighborTableFull { v6: bool },
    /// `cpu_backlog_full`: one for the host (the backlogs are per CPU,
    /// their limit host-wide).
    CpuBacklogFull,
}
