//! The one definition of everything that crosses the kernel/user boundary:
//! the events the eBPF programs write into the ring buffer, the
//! configuration userspace writes into the programs' globals before load,
//! and the in-kernel filter program.
//!
//! Everything here is `#[repr(C)]`, made only of integers and byte arrays,
//! so any bit pattern is a valid value: userspace can decode untrusted bytes
//! with `read_unaligned` and never panic.
#![no_std]

pub mod filter;

/// Event kinds; the first `u32` of every ring-buffer record.
pub const KIND_DROP: u32 = 1;
/// A TCP SYN leaving a device with an MSS that the device's MTU cannot carry.
pub const KIND_SYN: u32 = 2;
/// A neighbour entry (ARP/ND) that is resolving or has failed.
pub const KIND_NEIGH: u32 = 3;

/// `nud_state` values the neighbour probe reports.
pub const NUD_INCOMPLETE: u8 = 0x01;
pub const NUD_FAILED: u8 = 0x20;

pub const FAMILY_NONE: u8 = 0;
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;

/// `Flow::flags`: the addresses came from `skb->sk`, because the packet was
/// freed before its network header was built.
pub const FLOW_FROM_SOCKET: u8 = 1;
/// `Flow::flags`: the packet is a non-first IP fragment, so no L4 header.
pub const FLOW_FRAGMENT: u8 = 2;

/// What a packet carried, as parsed from its headers (or its socket).
/// Addresses are in network byte order; IPv4 uses the first 4 bytes.
/// Ports and MSS are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// MSS option of a TCP SYN, 0 if absent.
    pub mss: u16,
    /// `FAMILY_*`.
    pub family: u8,
    /// IP protocol number (after IPv6 extension headers we understand).
    pub proto: u8,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// `FLOW_*` bits.
    pub flags: u8,
}

/// The latest route lookup the kernel made for one (netns, dst, src), as
/// seen by the `fib:fib_table_lookup` / `fib6:fib6_table_lookup` probes.
/// Drop events carry the lookups that concern their own flow, so userspace
/// can prove where the kernel wanted to send a packet (or its reply).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteHit {
    pub ts_ns: u64,
    /// 0 when no lookup was seen.
    pub valid: u32,
    pub table: u32,
    /// 0 on success, else a negative errno (-ENETUNREACH, -EHOSTUNREACH, -EINVAL...).
    pub err: i32,
    pub iif: i32,
    pub oif: i32,
    /// The nexthop device, 0 if the lookup failed.
    pub dev_ifindex: i32,
    /// MTU of the nexthop device when the lookup ran.
    pub dev_mtu: u32,
    pub netns: u32,
    /// CPU the lookup ran on: a lookup without a netns (failed IPv4) is
    /// joined only to a drop on the same CPU right after it.
    pub cpu: u32,
    /// Ports of the lookup's flow, host order (0 when it had none, as in
    /// rp_filter's reverse-path check).
    pub sport: u16,
    pub dport: u16,
}

/// Key of the route-lookup map: the last lookup per (netns, dst, src).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteKey {
    pub netns: u32,
    pub family: u32,
    pub dst: [u8; 16],
    pub src: [u8; 16],
}

/// `NatTuple::flags`: conntrack translated this connection (SNAT or DNAT).
pub const NAT_VALID: u8 = 1;
/// `NatTuple::flags`: the packet travels in the reply direction.
pub const NAT_REPLY: u8 = 2;

/// The original-direction tuple of the packet's conntrack entry (what the
/// client sent: source and the address and port it dialled), read from
/// `skb->_nfct` when conntrack translated the connection. Addresses in
/// network byte order (IPv4 in the first 4 bytes), ports in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatTuple {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// `NAT_*` bits; 0 when there is no translated conntrack entry.
    pub flags: u8,
    /// `FAMILY_*`.
    pub family: u8,
    pub proto: u8,
    pub _pad: u8,
}

/// One packet the kernel freed as a drop (`skb:kfree_skb`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    /// `KIND_DROP`.
    pub kind: u32,
    pub cpu: u32,
    /// `bpf_ktime_get_ns()`, CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// Kernel text address that freed the packet.
    pub location: u64,
    /// `enum skb_drop_reason` value of the running kernel.
    pub reason: u32,
    /// Inode of the packet's network namespace (its device's, else its socket's).
    pub netns: u32,
    /// `skb->dev->ifindex`, 0 if no device.
    pub ifindex: i32,
    /// `skb->skb_iif`: the device the packet arrived on, 0 if locally generated.
    pub ingress_ifindex: i32,
    pub len: u32,
    pub pid: u32,
    /// `skb->protocol` in host order (ETH_P_*).
    pub l3_proto: u16,
    /// Segment size of a GSO packet, 0 if not GSO.
    pub gso_size: u16,
    pub gso_segs: u16,
    pub _pad: u16,
    /// MTU of `skb->dev`.
    pub dev_mtu: u32,
    pub comm: [u8; 16],
    pub flow: Flow,
    /// Latest lookup towards this packet's destination (from its source):
    /// where the kernel routes this packet.
    pub route_fwd: RouteHit,
    /// Latest lookup towards this packet's source (from its destination):
    /// the reverse path, i.e. rp_filter's check or the reply's route.
    pub route_rev: RouteHit,
    /// The connection's tuple before NAT, when conntrack translated it.
    pub orig: NatTuple,
}

/// A TCP SYN that leaves a device while advertising an MSS larger than the
/// device's MTU can carry (MSS + 40 for IPv4, + 60 for IPv6 > MTU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynEvent {
    /// `KIND_SYN`.
    pub kind: u32,
    pub cpu: u32,
    pub ts_ns: u64,
    pub netns: u32,
    /// The egress device.
    pub ifindex: i32,
    /// Where the SYN entered this netns, 0 if locally generated.
    pub ingress_ifindex: i32,
    pub mtu: u32,
    pub flow: Flow,
    pub _pad: u32,
}

/// A neighbour entry seen resolving (`NUD_INCOMPLETE`) or failing
/// (`NUD_FAILED`), from the `neigh:*` tracepoints.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NeighEvent {
    /// `KIND_NEIGH`.
    pub kind: u32,
    pub cpu: u32,
    pub ts_ns: u64,
    pub netns: u32,
    pub ifindex: i32,
    /// `FAMILY_V4` (ARP) or `FAMILY_V6` (ND).
    pub family: u8,
    /// `nud_state` after the event.
    pub state: u8,
    pub _pad: u16,
    pub addr: [u8; 16],
    pub _pad2: u32,
}

/// Per-CPU counters, indices into the `STATS` map.
pub const STAT_DROPS_SEEN: u32 = 0;
pub const STAT_DROPS_MATCHED: u32 = 1;
/// Events that matched but could not be queued (ring buffer full).
pub const STAT_LOST: u32 = 2;
pub const STAT_ROUTES_SEEN: u32 = 3;
pub const STAT_SYNS_FLAGGED: u32 = 4;
pub const STAT_NEIGH: u32 = 5;
pub const STAT_COUNT: u32 = 6;

/// `REASONS` map values: a reason the user asked to see or to hide.
pub const REASON_INCLUDE: u8 = 1;
pub const REASON_EXCLUDE: u8 = 2;

/// How many namespaces one run can be restricted to.
pub const MAX_NETNS: usize = 8;

/// What the drop program keeps. Written by userspace into the `CONFIG`
/// global before load (it lives in .rodata, so the verifier sees constants
/// and prunes disabled branches).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Only these netns inodes (the first `netns_count`); all when 0.
    pub netns: [u32; MAX_NETNS],
    pub netns_count: u32,
    /// Only packets whose device or ingress device has this ifindex, 0 for all.
    pub ifindex: u32,
    /// 1 when `REASONS` holds an include list: other reasons are skipped.
    pub reason_include: u32,
    /// 1 when `REASONS` may hold excluded reasons.
    pub reason_exclude: u32,
    /// 1 to skip known benign noise (see `NoiseReasons`).
    pub hide_noise: u32,
    pub noise: NoiseReasons,
    /// 1 to join route lookups to drops.
    pub routes: u32,
    /// 1 to flag SYNs whose MSS exceeds the egress MTU.
    pub syn_check: u32,
    /// 1 to report neighbours that resolve or fail.
    pub neigh: u32,
    pub filter_len: u32,
    pub filter: [filter::FilterOp; filter::MAX_OPS],
}

/// Reason codes of the running kernel that the noise rules use; read from
/// BTF at start-up because the enum differs between kernels.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NoiseReasons {
    pub not_specified: u32,
    pub no_socket: u32,
    pub queue_purge: u32,
    pub _pad: u32,
}

impl Config {
    pub const fn new() -> Self {
        Config {
            netns: [0; MAX_NETNS],
            netns_count: 0,
            ifindex: 0,
            reason_include: 0,
            reason_exclude: 0,
            hide_noise: 0,
            noise: NoiseReasons {
                not_specified: u32::MAX,
                no_socket: u32::MAX,
                queue_purge: u32::MAX,
                _pad: 0,
            },
            routes: 0,
            syn_check: 0,
            neigh: 0,
            filter_len: 0,
            filter: [filter::FilterOp::END; filter::MAX_OPS],
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

/// A member offset that this kernel does not have.
pub const NO_OFFSET: u32 = u32::MAX;

/// Byte offsets of the kernel struct members the programs read, resolved
/// from the running kernel's BTF at start-up and written into the `OFFSETS`
/// global. Nothing is compiled in for one kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Offsets {
    pub skb_dev: u32,
    pub skb_sk: u32,
    pub skb_len: u32,
    pub skb_iif: u32,
    pub skb_head: u32,
    pub skb_end: u32,
    pub skb_protocol: u32,
    pub skb_network_header: u32,
    pub shinfo_gso_size: u32,
    pub shinfo_gso_segs: u32,
    pub dev_ifindex: u32,
    pub dev_mtu: u32,
    pub dev_nd_net: u32,
    pub net_inum: u32,
    pub sk_family: u32,
    pub sk_protocol: u32,
    pub sk_daddr: u32,
    pub sk_rcv_saddr: u32,
    pub sk_dport: u32,
    pub sk_num: u32,
    pub sk_v6_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    pub sk_net: u32,
    pub fl4_oif: u32,
    pub fl4_iif: u32,
    pub fl4_saddr: u32,
    pub fl4_daddr: u32,
    /// `flowi4.uli.ports.dport`; sport follows it.
    pub fl4_dport: u32,
    pub fl6_oif: u32,
    pub fl6_iif: u32,
    pub fl6_saddr: u32,
    pub fl6_daddr: u32,
    pub nhc_dev: u32,
    pub f6res_nh: u32,
    pub f6nh_dev: u32,
    pub f6res_type: u32,
    pub f6table_id: u32,
    pub neigh_dev: u32,
    pub neigh_state: u32,
    pub neigh_key: u32,
    pub neigh_tbl: u32,
    pub tbl_family: u32,
    /// Offsets inside the classic `skb:kfree_skb` tracepoint record (from
    /// its tracefs format file), for the fallback program.
    pub tp_skbaddr: u32,
    pub tp_location: u32,
    pub tp_reason: u32,
    /// `sk_buff._nfct` (conntrack pointer | ctinfo in the low 3 bits).
    pub skb_nfct: u32,
    /// `nf_conn.status` (IPS_* bits).
    pub ct_status: u32,
    /// `nf_conn.tuplehash[IP_CT_DIR_ORIGINAL].tuple`.
    pub ct_tuple: u32,
    /// Inside `struct nf_conntrack_tuple`.
    pub tuple_src_u3: u32,
    pub tuple_src_port: u32,
    pub tuple_l3num: u32,
    pub tuple_dst_u3: u32,
    pub tuple_dst_port: u32,
    pub tuple_protonum: u32,
}

impl Offsets {
    pub const fn missing() -> Self {
        Offsets {
            skb_dev: NO_OFFSET,
            skb_sk: NO_OFFSET,
            skb_len: NO_OFFSET,
            skb_iif: NO_OFFSET,
            skb_head: NO_OFFSET,
            skb_end: NO_OFFSET,
            skb_protocol: NO_OFFSET,
            skb_network_header: NO_OFFSET,
            shinfo_gso_size: NO_OFFSET,
            shinfo_gso_segs: NO_OFFSET,
            dev_ifindex: NO_OFFSET,
            dev_mtu: NO_OFFSET,
            dev_nd_net: NO_OFFSET,
            net_inum: NO_OFFSET,
            sk_family: NO_OFFSET,
            sk_protocol: NO_OFFSET,
            sk_daddr: NO_OFFSET,
            sk_rcv_saddr: NO_OFFSET,
            sk_dport: NO_OFFSET,
            sk_num: NO_OFFSET,
            sk_v6_daddr: NO_OFFSET,
            sk_v6_rcv_saddr: NO_OFFSET,
            sk_net: NO_OFFSET,
            fl4_oif: NO_OFFSET,
            fl4_iif: NO_OFFSET,
            fl4_saddr: NO_OFFSET,
            fl4_daddr: NO_OFFSET,
            fl4_dport: NO_OFFSET,
            fl6_oif: NO_OFFSET,
            fl6_iif: NO_OFFSET,
            fl6_saddr: NO_OFFSET,
            fl6_daddr: NO_OFFSET,
            nhc_dev: NO_OFFSET,
            f6res_nh: NO_OFFSET,
            f6nh_dev: NO_OFFSET,
            f6res_type: NO_OFFSET,
            f6table_id: NO_OFFSET,
            neigh_dev: NO_OFFSET,
            neigh_state: NO_OFFSET,
            neigh_key: NO_OFFSET,
            neigh_tbl: NO_OFFSET,
            tbl_family: NO_OFFSET,
            tp_skbaddr: NO_OFFSET,
            tp_location: NO_OFFSET,
            tp_reason: NO_OFFSET,
            skb_nfct: NO_OFFSET,
            ct_status: NO_OFFSET,
            ct_tuple: NO_OFFSET,
            tuple_src_u3: NO_OFFSET,
            tuple_src_port: NO_OFFSET,
            tuple_l3num: NO_OFFSET,
            tuple_dst_u3: NO_OFFSET,
            tuple_dst_port: NO_OFFSET,
            tuple_protonum: NO_OFFSET,
        }
    }
}

impl Default for Offsets {
    fn default() -> Self {
        Self::missing()
    }
}

/// Names of the programs, maps and globals in the object, so the two sides
/// cannot drift apart.
/// Size of the events ring buffer.
pub const RING_BYTES: u32 = 4 * 1024 * 1024;

/// How many drop records the ring holds at least: each carries an 8-byte
/// header and is padded to 8 bytes.
pub const fn ring_drop_capacity() -> u64 {
    let rec = (core::mem::size_of::<DropEvent>() as u64).div_ceil(8) * 8 + 8;
    RING_BYTES as u64 / rec
}

pub mod names {
    pub const PROG_DROP_BTF: &str = "drop_btf";
    pub const PROG_DROP_RAW: &str = "drop_raw";
    pub const PROG_DROP_CLASSIC: &str = "drop_classic";
    /// Before 5.17 `kfree_skb` has no reason argument, and tp_btf/raw_tp
    /// programs may not read past the arguments a tracepoint has.
    pub const PROG_DROP_BTF_NOREASON: &str = "drop_btf_noreason";
    pub const PROG_DROP_RAW_NOREASON: &str = "drop_raw_noreason";
    pub const PROG_FIB4: &str = "route4";
    pub const PROG_FIB6: &str = "route6";
    pub const PROG_SYN_XMIT: &str = "syn_xmit";
    pub const PROG_NEIGH_TIMER: &str = "neigh_timer";
    pub const PROG_NEIGH_SEND: &str = "neigh_send";
    pub const MAP_EVENTS: &str = "EVENTS";
    pub const MAP_STATS: &str = "STATS";
    pub const MAP_REASONS: &str = "REASONS";
    pub const MAP_ROUTES: &str = "ROUTES";
    pub const MAP_ARRIVALS: &str = "ARRIVALS";
    pub const GLOBAL_CONFIG: &str = "CONFIG";
    pub const GLOBAL_OFFSETS: &str = "OFFSETS";
}

// Userspace hands these to aya (globals, map keys and values). They are
// plain old data: integers only, no implicit padding.
#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Offsets {}
    unsafe impl aya::Pod for super::RouteKey {}
    unsafe impl aya::Pod for super::RouteHit {}
}
