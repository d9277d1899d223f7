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
pub mod packet;

/// Loopback's ifindex in every network namespace (it registers first).
/// Both sides leave it out of MTU comparisons: its 64k MTU would make
/// every other device look small.
pub const LOOPBACK_IFINDEX: i32 = 1;

/// Event kinds; the first `u32` of every ring-buffer record.
pub const KIND_DROP: u32 = 1;
/// A TCP SYN leaving a device with an MSS that the device's MTU cannot carry.
pub const KIND_SYN: u32 = 2;
/// A neighbour entry (ARP/ND) that is resolving or has failed.
pub const KIND_NEIGH: u32 = 3;
/// What a drop carries beyond `DropEvent` when asked for (`Config::extra`):
/// its kernel stack and its bytes. Sent by the same program run on the
/// same CPU right before the `DropEvent` it belongs to (see `DropExtra`).
pub const KIND_DROP_EXTRA: u32 = 4;
/// One place a followed packet passed (`tracer trace`).
pub const KIND_HOP: u32 = 5;

/// `HopEvent::event`.
pub const HOP_RECEIVE: u32 = 1;
pub const HOP_QUEUE: u32 = 2;
pub const HOP_XMIT: u32 = 3;
pub const HOP_CONSUME: u32 = 4;

/// A followed packet seen at a tracepoint: `net:netif_receive_skb`,
/// `net:net_dev_queue`, `net:net_dev_xmit` or `skb:consume_skb`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HopEvent {
    /// `KIND_HOP`.
    pub kind: u32,
    /// `HOP_*`.
    pub event: u32,
    pub ts_ns: u64,
    /// The `struct sk_buff` address now.
    pub skb: u64,
    /// The packet's identity: set when it was first seen matching.
    pub id: u64,
    pub netns: u32,
    pub ifindex: i32,
    pub len: u32,
    pub cpu: u32,
    pub flow: Flow,
}

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
pub const IPPROTO_SCTP: u8 = 132;
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_DSTOPTS: u8 = 60;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;

/// `Flow::flags`: the addresses came from `skb->sk`, because the packet was
/// freed before its network header was built.
pub const FLOW_FROM_SOCKET: u8 = 1;
/// `Flow::flags`: the packet is a non-first IP fragment, so no L4 header.
pub const FLOW_FRAGMENT: u8 = 2;
/// `Flow::flags`: the packet ends before its L4 header's ports (ICMP: type
/// and code), so it has none; the bytes there belong to an earlier packet.
pub const FLOW_L4_SHORT: u8 = 4;
/// `Flow::flags`: a TCP header cut before its flags byte: ports, no flags.
pub const FLOW_TCP_SHORT: u8 = 8;
/// `Flow::flags`: an Ethernet/IPv4 ARP packet. `family` stays
/// `FAMILY_NONE` (no route lookup, no IP filter matches it); `src` and
/// `dst` hold the sender and target IPv4 addresses, `proto` the opcode
/// (1 request, 2 reply).
pub const FLOW_ARP: u8 = 16;
/// `Flow::flags`, with `FLOW_L4_SHORT`: the packet ends after the source
/// port (2 or 3 bytes of a TCP, UDP or SCTP header), which `sport` holds;
/// libpcap's `src port` can still read it.
pub const FLOW_L4_HALF: u8 = 32;
/// `Flow::flags`: the header behind the first extension header is an
/// extension header too (so `proto` is not the header behind an IPv6
/// fragment header: libpcap's `ip6[40]`).
pub const FLOW_EXT_CHAIN: u8 = 64;

/// `Flow::chain`: the header chain as libpcap's `protochain` walks it
/// (`packet::walk`): which extension headers it passed, and why it stopped
/// early. IPv6 walks hop-by-hop, destination options, routing, fragment
/// and AH headers; IPv4 walks AH only.
pub const CHAIN_HOP: u8 = 1;
pub const CHAIN_DSTOPTS: u8 = 2;
pub const CHAIN_ROUTING: u8 = 4;
pub const CHAIN_FRAGMENT: u8 = 8;
pub const CHAIN_AH: u8 = 16;
/// The extension-header bits.
pub const CHAIN_EXT: u8 = 31;
/// An extension header ran past the packet's end (libpcap's load fails:
/// the whole filter rejects the packet).
pub const CHAIN_TRUNC: u8 = 32;
/// More than `packet::CHAIN_CAP` extension headers: the walk stopped with
/// one still ahead, so the final protocol is unknown.
pub const CHAIN_CAPPED: u8 = 64;
/// Not one byte follows the IP header.
pub const CHAIN_EMPTY: u8 = 128;

/// What a packet carried, as parsed from its headers (or its socket).
/// Addresses are in network byte order; IPv4 uses the first 4 bytes.
/// Ports and MSS are in host byte order.
///
/// 8-aligned, a whole number of words: the drop probe clears one per
/// drop with six 8-byte stores (`*flow = Flow::default()` compiled to
/// 2-byte stores and cost a storm drop 35 ns).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// MSS option of a TCP SYN, 0 if absent. Filled in the kernel by the
    /// SYN check and `trace` only: drop events carry the option bytes
    /// instead (`DropEvent::tcp_opts`).
    pub mss: u16,
    /// `FAMILY_*`.
    pub family: u8,
    /// IP protocol number after the extension headers (`Flow::chain`):
    /// the transport, what text and JSON show.
    pub proto: u8,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// `FLOW_*` bits.
    pub flags: u8,
    /// The IP packet's length from its header (IPv6: payload + 40), 0 when
    /// it came from a socket. Unlike skb->len it does not depend on where
    /// in the stack the packet was freed.
    pub ip_len: u16,
    /// The protocol in the fixed IP header (IPv6: its next header), what
    /// tcpdump's `tcp`, `proto N` and `port` look at.
    pub nexthdr: u8,
    /// `CHAIN_*` bits.
    pub chain: u8,
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
    /// How many bytes of `tcp_opts` are the options of a TCP SYN (0 if
    /// the packet is not a SYN or has none).
    pub tcp_opts_len: u8,
    pub _pad: u8,
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
    /// A SYN's TCP options as they were on the wire; userspace reads the
    /// MSS from them (`Flow::mss` is 0 in drop events).
    pub tcp_opts: TcpOpts,
}

/// The most TCP option bytes a header can carry (data offset 15 words).
pub const TCP_OPTS_MAX: usize = 40;

/// Raw TCP option bytes (a newtype: std derives `Default` only for
/// arrays of up to 32).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpOpts(pub [u8; TCP_OPTS_MAX]);

impl Default for TcpOpts {
    fn default() -> Self {
        TcpOpts([0; TCP_OPTS_MAX])
    }
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
    /// The connection's tuple before NAT, when conntrack translated it: a
    /// SYN leaving a Docker host is seen after MASQUERADE, and only this
    /// leads back to the container that sent it.
    pub orig: NatTuple,
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
/// Matched drops not counted by key (those are `STAT_AGGREGATED`): matched
/// in all is the sum of the two.
pub const STAT_DROPS_MATCHED: u32 = 1;
/// Events that matched but could not be queued (ring buffer full).
pub const STAT_LOST: u32 = 2;
pub const STAT_ROUTES_SEEN: u32 = 3;
pub const STAT_SYNS_FLAGGED: u32 = 4;
pub const STAT_NEIGH: u32 = 5;
/// Drops counted in `AGG` instead of sent as events (a storm).
pub const STAT_AGGREGATED: u32 = 6;
pub const STAT_COUNT: u32 = 7;

/// `REASONS` map values: a reason the user asked to see or to hide.
pub const REASON_INCLUDE: u8 = 1;
pub const REASON_EXCLUDE: u8 = 2;
/// `REASONS` is an array indexed by reason: the verifier inlines an array
/// lookup (a bounds check and an add) where a hash lookup is a helper
/// call that hashes the key, about 30 ns per drop. `enum skb_drop_reason`
/// stays far below this (about 120 values in 6.18); only the subsystem
/// reasons (mac80211, openvswitch) use the high 16 bits, and they are not
/// names `--reason` takes.
pub const REASON_SLOTS: u32 = 1024;

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
    /// 1 to count drops by key in `AGG` once a CPU sends more than
    /// `agg_burst` events in `AGG_WINDOW_NS`; 0 sends every event.
    pub aggregate: u32,
    /// Events per key per CPU per `AGG_EPOCH_SHIFT` interval that are still
    /// sent in full while aggregating.
    pub agg_per_key: u32,
    pub agg_burst: u32,
    pub _pad: u32,
    pub filter: filter::Program,
    /// `EXTRA_*` bits: send a `DropExtra` before each drop event. 0 costs
    /// nothing (the branch is pruned at load).
    pub extra: u32,
    /// Packet bytes to copy with `EXTRA_PACKET`, at most `MAX_SNAPLEN`.
    pub snaplen: u32,
    /// 1 to follow matching packets through the host (`tracer trace`).
    pub trace: u32,
    /// This kernel's FRAG_REASM_TIMEOUT code (`u32::MAX` when unknown): the
    /// fragments it frees after the queue's head carry no usable device.
    pub frag_reason: u32,
    /// This kernel's QDISC_DROP code where `qdisc:qdisc_drop` exists
    /// (kernels after 6.18), else 0. Those kernels free a qdisc's drops
    /// with QDISC_DROP and give the finer reason (`enum
    /// qdisc_drop_reason`) only to `qdisc:qdisc_drop`, fired on the same
    /// CPU just before the free: the drop program reports that reason
    /// instead (`PROG_QDISC_REASON` keeps it).
    pub qdisc_drop: u32,
}

/// `Config::extra`: copy the packet's bytes (for pcapng).
pub const EXTRA_PACKET: u32 = 1;
/// `Config::extra`: take the kernel stack of the drop.
pub const EXTRA_STACK: u32 = 2;
/// `Config::extra`: only the skb address (`tracer trace` joins drops to hops).
pub const EXTRA_SKB: u32 = 4;
/// Frames of kernel stack a `DropExtra` holds.
pub const MAX_STACK_DEPTH: usize = 48;
/// The most packet bytes a `DropExtra` carries.
pub const MAX_SNAPLEN: u32 = 4096;
/// Mask that bounds the copy length for the verifier; the scratch buffer
/// behind a `DropExtra` is `SNAP_MASK + 1` bytes.
pub const SNAP_MASK: u32 = 0x1fff;
/// `DropExtra::link`: what the bytes start with.
pub const LINK_NONE: u32 = 0;
/// An Ethernet header (the skb's MAC header, 14 bytes before its IP header).
pub const LINK_ETHERNET: u32 = 1;
/// The IP header (no MAC header was set, or it was not Ethernet).
pub const LINK_RAW_IP: u32 = 101;

/// A drop's stack and bytes, sent right before its `DropEvent` by the same
/// program run (same CPU; the kernel does not nest one program on a CPU).
/// Followed in the record by `cap_len` packet bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropExtra {
    /// `KIND_DROP_EXTRA`.
    pub kind: u32,
    pub cpu: u32,
    /// `bpf_ktime_get_ns()` when taken (just before the drop event's).
    pub ts_ns: u64,
    /// The `struct sk_buff` address: one packet's identity while it lives.
    pub skb: u64,
    /// Bytes of `stack` filled (8 per frame), 0 when not taken.
    pub stack_bytes: u32,
    /// Packet bytes that follow this header.
    pub cap_len: u32,
    /// The packet's length from where the bytes start (MAC or IP header).
    pub orig_len: u32,
    /// `LINK_*`.
    pub link: u32,
    /// Kernel return addresses, innermost first.
    pub stack: [u64; MAX_STACK_DEPTH],
}

impl Default for DropExtra {
    fn default() -> Self {
        DropExtra {
            kind: KIND_DROP_EXTRA,
            cpu: 0,
            ts_ns: 0,
            skb: 0,
            stack_bytes: 0,
            cap_len: 0,
            orig_len: 0,
            link: LINK_NONE,
            stack: [0; MAX_STACK_DEPTH],
        }
    }
}

/// The window in which a CPU's event rate is measured for aggregation.
pub const AGG_WINDOW_NS: u64 = 100_000_000;
/// Once on, aggregation stays on this long after the last burst.
pub const AGG_HOLD_NS: u64 = 2_000_000_000;
/// Per-key sampling intervals are ktime >> this (about 1.07 s).
pub const AGG_EPOCH_SHIFT: u32 = 30;
/// Distinct keys the kernel counts; past that, drops go out as events.
pub const AGG_KEYS: u32 = 8192;

/// What drops are counted by while a storm is aggregated: where, why and
/// which flow, without ports (a port scan is one key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AggKey {
    pub location: u64,
    pub reason: u32,
    pub netns: u32,
    pub ifindex: i32,
    pub ingress_ifindex: i32,
    pub family: u8,
    pub proto: u8,
    pub _pad: [u8; 6],
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// Per-CPU slots that count the busiest keys without a hash-map update:
/// a slot is claimed by the first key whose hash lands on it and keeps it
/// for the session; other keys landing there use the `AGG` map.
pub const AGG_SLOTS: u32 = 256;

/// One slot of `AGG_SLOTS`: its key and that key's counts on this CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AggSlot {
    pub key: AggKey,
    pub val: AggVal,
    /// 1 once a key owns the slot.
    pub used: u32,
    pub _pad: u32,
}

impl AggKey {
    /// The slot of `AGG_SLOTS` this key tries first: a multiplicative hash
    /// of its eight words, far cheaper than the map's.
    #[inline(always)]
    pub fn slot(&self) -> u32 {
        let w = self.words();
        let mut h: u64 = 0;
        let mut i = 0;
        while i < 8 {
            h = (h ^ w[i]).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            i += 1;
        }
        (h >> 56) as u32 & (AGG_SLOTS - 1)
    }

    /// The key as eight words (it is 64 bytes of plain integers).
    #[inline(always)]
    pub fn words(&self) -> &[u64; 8] {
        // SAFETY: AggKey is repr(C), 64 bytes, 8-aligned (its first field
        // is a u64), with explicit padding: every byte is initialised.
        unsafe { &*(self as *const AggKey as *const [u64; 8]) }
    }

    #[inline(always)]
    pub fn same(&self, other: &AggKey) -> bool {
        let (a, b) = (self.words(), other.words());
        (a[0] ^ b[0])
            | (a[1] ^ b[1])
            | (a[2] ^ b[2])
            | (a[3] ^ b[3])
            | (a[4] ^ b[4])
            | (a[5] ^ b[5])
            | (a[6] ^ b[6])
            | (a[7] ^ b[7])
            == 0
    }
}

const _: () = assert!(core::mem::size_of::<AggKey>() == 64);
const _: () = assert!(core::mem::size_of::<Flow>() == 48);

/// Per CPU: how many drops of a key were counted instead of sent, and how
/// many were sent in the current interval.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AggVal {
    pub suppressed: u64,
    pub epoch: u32,
    pub sent: u32,
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
            aggregate: 0,
            agg_per_key: 0,
            agg_burst: 0,
            _pad: 0,
            filter: filter::Program::EMPTY,
            extra: 0,
            snaplen: 0,
            trace: 0,
            frag_reason: u32::MAX,
            qdisc_drop: 0,
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
    /// For packet capture (`EXTRA_PACKET`); optional.
    pub skb_mac_header: u32,
    pub skb_tail: u32,
    pub skb_data: u32,
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
            skb_mac_header: NO_OFFSET,
            skb_tail: NO_OFFSET,
            skb_data: NO_OFFSET,
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
///
/// `extra_bytes` is the size of the `DropExtra` record (with its packet
/// bytes) sent before each drop when capturing, else 0.
pub const fn ring_drop_capacity(extra_bytes: u64) -> u64 {
    let rec = (core::mem::size_of::<DropEvent>() as u64).div_ceil(8) * 8 + 8;
    let extra = if extra_bytes == 0 {
        0
    } else {
        extra_bytes.div_ceil(8) * 8 + 8
    };
    RING_BYTES as u64 / (rec + extra)
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
    pub const PROG_QDISC_REASON: &str = "qdisc_reason";
    pub const PROG_HOP_RECEIVE: &str = "hop_receive";
    pub const PROG_HOP_QUEUE: &str = "hop_queue";
    pub const PROG_HOP_XMIT: &str = "hop_xmit";
    pub const PROG_HOP_CONSUME: &str = "hop_consume";
    pub const MAP_EVENTS: &str = "EVENTS";
    pub const MAP_STATS: &str = "STATS";
    pub const MAP_REASONS: &str = "REASONS";
    pub const MAP_ROUTES: &str = "ROUTES";
    pub const MAP_AGG: &str = "AGG";
    pub const MAP_AGG_SLOTS: &str = "AGGSLOTS";
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
    unsafe impl aya::Pod for super::AggKey {}
    unsafe impl aya::Pod for super::AggVal {}
    unsafe impl aya::Pod for super::AggSlot {}
}
