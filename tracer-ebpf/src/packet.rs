//! Reads a `Flow` out of a `struct sk_buff`: its IPv4/IPv6 header and the
//! L4 header behind it, or, when the packet was freed before its network
//! header was built, the addresses of its socket.

use crate::kernel::{read, Mem};
use crate::off;
use aya_ebpf::helpers::bpf_probe_read_kernel;
use tracer_abi::*;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// `skb->network_header` when unset (`(typeof(skb->network_header))~0U`).
const HEADER_UNSET: u16 = 0xffff;

/// What the drop and xmit programs need from an skb besides its flow.
pub struct SkbMeta {
    pub dev: *const u8,
    pub sk: *const u8,
    pub head: *const u8,
    pub len: u32,
    pub l3_proto: u16,
}

/// # Safety
///
/// `skb` must be NULL or a `struct sk_buff *` that `M` can read (see `Mem::get`).
#[inline(always)]
pub unsafe fn meta<M: Mem>(skb: *const u8) -> SkbMeta {
    SkbMeta {
        dev: M::get::<*const u8>(skb, off!(skb_dev)).unwrap_or(core::ptr::null()),
        sk: M::get::<*const u8>(skb, off!(skb_sk)).unwrap_or(core::ptr::null()),
        head: M::get::<*const u8>(skb, off!(skb_head)).unwrap_or(core::ptr::null()),
        len: M::get::<u32>(skb, off!(skb_len)).unwrap_or(0),
        l3_proto: u16::from_be(M::get::<u16>(skb, off!(skb_protocol)).unwrap_or(0)),
    }
}

/// Whether a packet being transmitted may be a TCP SYN, decided from the
/// IP header's protocol and the TCP flags byte alone. The SYN check runs
/// for every transmitted packet: UDP, ICMP and pure ACKs stop here
/// instead of paying for a full parse. Headers it cannot place (IPv4
/// options, IPv6 extension headers) answer yes, and the full parse
/// decides. Small reads: the caller's stack is nearly full.
///
/// # Safety
///
/// `skb` must be NULL or a `struct sk_buff *` that `M` can read (see `Mem::get`).
/// The headers are probe-read.
#[inline(always)]
pub unsafe fn maybe_syn<M: Mem>(skb: *const u8) -> bool {
    let head = M::get::<*const u8>(skb, off!(skb_head)).unwrap_or(core::ptr::null());
    let nh = M::get::<u16>(skb, off!(skb_network_header)).unwrap_or(HEADER_UNSET);
    if head.is_null() || nh == HEADER_UNSET {
        return false;
    }
    let l3 = head.wrapping_add(nh as usize);
    let (proto, flags_at) = match u16::from_be(M::get::<u16>(skb, off!(skb_protocol)).unwrap_or(0))
    {
        ETH_P_IP => {
            // The IP header and the TCP flags byte in one read (the
            // flags sit at 33 when the header has no options).
            let Some(h) = read::<[u8; 34]>(l3, 0) else {
                return false;
            };
            if h[0] & 0xf != 5 {
                return h[9] == IPPROTO_TCP;
            }
            return h[9] == IPPROTO_TCP && h[33] & TCP_SYN != 0;
        }
        ETH_P_IPV6 => (read::<u8>(l3, 6).unwrap_or(0), 40 + 13),
        _ => return false,
    };
    match proto {
        IPPROTO_TCP => read::<u8>(l3, flags_at).unwrap_or(0) & TCP_SYN != 0,
        IPPROTO_UDP | IPPROTO_ICMP | IPPROTO_ICMPV6 => false,
        _ => true,
    }
}

/// The SYN bit of the TCP flags byte.
const TCP_SYN: u8 = 0x02;

/// `skb_shinfo(skb)->gso_size` and `gso_segs`.
///
/// # Safety
///
/// `skb` must be NULL or a `struct sk_buff *` that `M` can read (see `Mem::get`).
/// `head` is only probe-read: any value is sound.
#[inline(always)]
pub unsafe fn gso<M: Mem>(skb: *const u8, head: *const u8) -> (u16, u16) {
    // skb->end is an offset from head on 64-bit kernels (sk_buff_data_t).
    let Some(end) = M::get::<u32>(skb, off!(skb_end)) else {
        return (0, 0);
    };
    let shinfo = head.wrapping_add(end as usize);
    (
        read::<u16>(shinfo, off!(shinfo_gso_size)).unwrap_or(0),
        read::<u16>(shinfo, off!(shinfo_gso_segs)).unwrap_or(0),
    )
}

/// Where the options of a TCP SYN are (null and 0 when the packet is
/// not a SYN or has none); `len` is at most 40.
///
/// `parse` does not walk them: a walk is a loop whose every step branches
/// on packet bytes, and inside the drop program, followed by the route
/// joins and the NAT lookup, it multiplied the verifier's work tenfold
/// (570k instructions for `watch` on tp_btf, past the 1M limit for
/// `diagnose` with any change). The drop program copies the bytes into its
/// event and userspace reads the MSS; the SYN check, which must compare
/// the MSS with the MTU in the kernel, calls `parse_with_mss`.
pub struct SynOpts {
    pub at: *const u8,
    pub len: u32,
}

impl SynOpts {
    pub const NONE: SynOpts = SynOpts {
        at: core::ptr::null(),
        len: 0,
    };
}

/// `parse`, then the MSS walk into `flow.mss`: for the programs that
/// need the MSS in the kernel (the SYN check, `trace`'s hops).
///
/// # Safety
///
/// As for `parse`.
#[inline(always)]
pub unsafe fn parse_with_mss<M: Mem>(skb: *const u8, m: &SkbMeta, flow: &mut Flow) -> bool {
    let mut opts = SynOpts::NONE;
    let found = parse::<M>(skb, m, flow, &mut opts);
    flow.mss = syn_mss(&opts);
    found
}

/// Zeroes `flow` word by word (see `Flow`'s alignment).
///
/// # Safety
///
/// None for the caller: the word writes stay inside `*flow`, whose size is
/// a multiple of 8 and whose alignment is 8 (see `Flow`).
#[inline(always)]
pub unsafe fn clear(flow: &mut Flow) {
    let p = flow as *mut Flow as *mut u64;
    for i in 0..core::mem::size_of::<Flow>() / 8 {
        core::ptr::write_volatile(p.add(i), 0);
    }
}

/// Fills `flow` from the packet headers, or from the socket, and `opts`
/// with where a SYN's TCP options are. Returns false if neither gives an
/// address.
///
/// # Safety
///
/// `skb` must be NULL or a `struct sk_buff *` that `M` can read (see `Mem::get`).
/// `m`'s pointers and the headers are only probe-read.
#[inline(always)]
pub unsafe fn parse<M: Mem>(
    skb: *const u8,
    m: &SkbMeta,
    flow: &mut Flow,
    opts: &mut SynOpts,
) -> bool {
    let nh = M::get::<u16>(skb, off!(skb_network_header)).unwrap_or(HEADER_UNSET);
    if !m.head.is_null() && nh != HEADER_UNSET {
        let l3 = m.head.wrapping_add(nh as usize);
        let room = room_from::<M>(skb, m, nh);
        if m.l3_proto == ETH_P_IP {
            return parse_ipv4(l3, room, flow, opts);
        }
        if m.l3_proto == ETH_P_IPV6 {
            return parse_ipv6(l3, room, flow, opts);
        }
        if m.l3_proto == ETH_P_ARP {
            return room >= 28 && parse_arp(l3, flow);
        }
    }
    if m.l3_proto == 0 && !m.sk.is_null() {
        return from_socket(m.sk, flow);
    }
    false
}

/// An Ethernet/IPv4 ARP packet's opcode and addresses (see `FLOW_ARP`),
/// so a dropped ARP says who asked for whom instead of nothing.
///
/// # Safety
///
/// None for the caller: the header is only probe-read (bpf_probe_read_kernel),
/// so any `l3` is sound; a wrong one gives wrong fields, not a fault.
#[inline(always)]
unsafe fn parse_arp(l3: *const u8, flow: &mut Flow) -> bool {
    let Ok(h) = bpf_probe_read_kernel(l3 as *const [u8; 28]) else {
        return false;
    };
    // htype Ethernet, ptype IPv4, 6-byte MACs, 4-byte addresses.
    if h[0..6] != [0, 1, 8, 0, 6, 4] {
        return false;
    }
    flow.flags |= FLOW_ARP;
    flow.proto = h[7];
    flow.src[..4].copy_from_slice(&h[14..18]);
    flow.dst[..4].copy_from_slice(&h[24..28]);
    true
}

/// How many bytes the packet holds from its network header on: skb->len
/// counts from skb->data (linear and paged alike), wherever in the stack
/// the packet was freed. `NO_BOUND` when skb->data cannot be read.
///
/// # Safety
///
/// `skb` must be NULL or a `struct sk_buff *` that `M` can read (see `Mem::get`).
#[inline(always)]
unsafe fn room_from<M: Mem>(skb: *const u8, m: &SkbMeta, nh: u16) -> u32 {
    let Some(data) = M::get::<*const u8>(skb, off!(skb_data)) else {
        return NO_BOUND;
    };
    let data_off = (data as u64).wrapping_sub(m.head as u64);
    if data_off > 0xffff {
        return NO_BOUND;
    }
    let room = m.len as i64 + data_off as i64 - nh as i64;
    if room <= 0 {
        0
    } else {
        room as u32
    }
}

/// No length known to bound the headers by.
const NO_BOUND: u32 = u32::MAX;

/// The smaller of two bounds.
#[inline(always)]
fn min(a: u32, b: u32) -> u32 {
    if a < b {
        a
    } else {
        b
    }
}

/// # Safety
///
/// None for the caller: the headers are only probe-read (bpf_probe_read_kernel),
/// so any `l3` is sound; a wrong one gives wrong fields, not a fault.
#[inline(always)]
unsafe fn parse_ipv4(l3: *const u8, room: u32, flow: &mut Flow, opts: &mut SynOpts) -> bool {
    // One read for the IP header and, when it has no options (nearly
    // always), the first 20 bytes behind it: one helper call per drop
    // instead of two. Bytes past a short packet are still the skb's own
    // buffer (tailroom, then skb_shared_info), so the read cannot fault.
    let Ok(h) = bpf_probe_read_kernel(l3 as *const [u8; 40]) else {
        return false;
    };
    if h[0] >> 4 != 4 {
        return false;
    }
    flow.family = FAMILY_V4;
    flow.ip_len = u16::from_be_bytes([h[2], h[3]]);
    flow.proto = h[9];
    flow.src[..4].copy_from_slice(&h[12..16]);
    flow.dst[..4].copy_from_slice(&h[16..20]);
    let frag_off = (((h[6] & 0x1f) as u16) << 8) | h[7] as u16;
    if frag_off != 0 {
        flow.flags |= FLOW_FRAGMENT;
        return true;
    }
    let ihl = ((h[0] & 0xf) as usize) * 4;
    let l4 = l3.wrapping_add(ihl);
    // What lies behind the IP header, by the header's own length and by
    // the skb's: bytes past either are another packet's (the buffer's
    // tailroom is reused), never this one's ports. BIG TCP leaves
    // tot_len 0 over 64 KiB: then only the skb bounds it.
    let tot = flow.ip_len as u32;
    let by_header = if tot == 0 {
        NO_BOUND
    } else {
        tot.saturating_sub(ihl as u32)
    };
    let avail = min(by_header, room.saturating_sub(ihl as u32));
    if ihl == 20 {
        let mut t = [0u8; 20];
        t.copy_from_slice(&h[20..40]);
        l4_fields(&t, l4, avail, flow, opts);
    } else {
        parse_l4(l4, avail, flow, opts);
    }
    true
}

/// L4 fields from its first 20 bytes, already read; `l4` for what lies
/// further (TCP options). `avail` is how many of those bytes are the
/// packet's: a field past it is not taken, and the flow says so
/// (`FLOW_L4_SHORT`, `FLOW_TCP_SHORT`), as libpcap fails a load past the
/// packet's end.
///
/// # Safety
///
/// None for the caller: `l4` is only stored, never read here.
#[inline(always)]
unsafe fn l4_fields(t: &[u8; 20], l4: *const u8, avail: u32, flow: &mut Flow, opts: &mut SynOpts) {
    match flow.proto {
        IPPROTO_TCP => {
            if avail < 4 {
                flow.flags |= FLOW_L4_SHORT;
                return;
            }
            flow.sport = u16::from_be_bytes([t[0], t[1]]);
            flow.dport = u16::from_be_bytes([t[2], t[3]]);
            if avail < 14 {
                flow.flags |= FLOW_TCP_SHORT;
                return;
            }
            flow.tcp_flags = t[13];
            let doff = ((t[12] >> 4) as u32) * 4;
            // Options only where the packet holds them all.
            if flow.tcp_flags & TCP_SYN != 0 && doff > 20 && doff <= avail {
                opts.at = l4.wrapping_add(20);
                opts.len = doff - 20;
            }
        }
        // SCTP's common header starts with the two ports, as UDP's does.
        IPPROTO_UDP | IPPROTO_SCTP => {
            if avail < 4 {
                flow.flags |= FLOW_L4_SHORT;
                return;
            }
            flow.sport = u16::from_be_bytes([t[0], t[1]]);
            flow.dport = u16::from_be_bytes([t[2], t[3]]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if avail < 2 {
                flow.flags |= FLOW_L4_SHORT;
                return;
            }
            flow.icmp_type = t[0];
            flow.icmp_code = t[1];
        }
        _ => {}
    }
}

/// # Safety
///
/// None for the caller: the headers are only probe-read (bpf_probe_read_kernel),
/// so any `l3` is sound; a wrong one gives wrong fields, not a fault.
#[inline(always)]
unsafe fn parse_ipv6(l3: *const u8, room: u32, flow: &mut Flow, opts: &mut SynOpts) -> bool {
    let Ok(h) = bpf_probe_read_kernel(l3 as *const [u8; 40]) else {
        return false;
    };
    if h[0] >> 4 != 6 {
        return false;
    }
    flow.family = FAMILY_V6;
    let payload = u16::from_be_bytes([h[4], h[5]]) as u32;
    flow.ip_len = u16::from_be_bytes([h[4], h[5]]).saturating_add(40);
    // As for IPv4: the payload length (0 for a jumbogram / BIG TCP) and
    // the skb bound what follows the fixed header.
    let by_header = if payload == 0 { NO_BOUND } else { payload };
    let avail = min(by_header, room.saturating_sub(40));
    flow.src.copy_from_slice(&h[8..24]);
    flow.dst.copy_from_slice(&h[24..40]);
    let mut next = h[6];
    let mut at = l3.wrapping_add(40);
    // How far the walk went past the fixed header. Compared with `avail`
    // once, after the walk: a test per step multiplied the paths the
    // verifier explores through the MSS walk of the hop programs past
    // its 1M-instruction limit.
    let mut walked: u32 = 0;
    // Skip the extension headers that commonly precede L4; give up after a
    // few so the verifier sees a bounded loop.
    for _ in 0..4 {
        match next {
            0 | 43 | 60 => {
                let Ok(e) = bpf_probe_read_kernel(at as *const [u8; 2]) else {
                    return true;
                };
                next = e[0];
                let len = (e[1] as u32 + 1) * 8;
                at = at.wrapping_add(len as usize);
                walked += len;
            }
            44 => {
                let Ok(e) = bpf_probe_read_kernel(at as *const [u8; 4]) else {
                    return true;
                };
                next = e[0];
                let frag_off = (((e[2] as u16) << 8) | e[3] as u16) >> 3;
                if frag_off != 0 {
                    flow.proto = next;
                    flow.flags |= FLOW_FRAGMENT;
                    return true;
                }
                at = at.wrapping_add(8);
                walked += 8;
            }
            _ => break,
        }
    }
    flow.proto = next;
    // Headers that ran past the packet's end were another packet's bytes:
    // no L4 fields then (`l4_fields` with nothing available says so).
    parse_l4(at, avail.saturating_sub(walked), flow, opts);
    true
}

/// # Safety
///
/// None for the caller: the header is only probe-read (bpf_probe_read_kernel),
/// so any `l4` is sound; a wrong one gives wrong fields, not a fault.
#[inline(always)]
unsafe fn parse_l4(l4: *const u8, avail: u32, flow: &mut Flow, opts: &mut SynOpts) {
    // 20 bytes cover every field we take (TCP's fixed header is the
    // longest); past `avail` they are the buffer's, which `l4_fields`
    // leaves alone.
    if let Ok(t) = bpf_probe_read_kernel(l4 as *const [u8; 20]) {
        l4_fields(&t, l4, avail, flow, opts);
    }
}

/// The MSS option of a SYN. Linux puts it first, other stacks may not, so
/// walk the options (at most 40 bytes, bounded loop).
///
/// Each step reads the option's bytes from the kernel at `opts + i`
/// rather than indexing a stack copy: before 5.12 the verifier refuses any
/// variable-offset stack read, and 6.1 loses the `i < 40` bound when LLVM
/// folds it into `i < len`. A pointer sum passed to a helper needs neither.
///
/// # Safety
///
/// None for the caller: the options are only probe-read (bpf_probe_read_kernel),
/// so any `o.at` is sound; a wrong one gives wrong fields, not a fault.
#[inline(always)]
unsafe fn syn_mss(o: &SynOpts) -> u16 {
    let opts = o.at;
    if opts.is_null() {
        return 0;
    }
    let len = if o.len > 40 { 40 } else { o.len as usize };
    let mut i = 0usize;
    for _ in 0..20 {
        if i >= len {
            break;
        }
        // kind, length, and for MSS the two value bytes.
        let Ok(o) = bpf_probe_read_kernel(opts.wrapping_add(i) as *const [u8; 4]) else {
            break;
        };
        match o[0] {
            0 => break,
            1 => i += 1,
            2 => return u16::from_be_bytes([o[2], o[3]]),
            _ => {
                let l = o[1] as usize;
                if l < 2 {
                    break;
                }
                i += l;
            }
        }
    }
    0
}

/// Addresses and ports of the packet's socket: local is the source.
///
/// # Safety
///
/// None for the caller: the socket is only probe-read (bpf_probe_read_kernel),
/// so any `sk` is sound; a wrong one gives wrong fields, not a fault.
#[inline(always)]
unsafe fn from_socket(sk: *const u8, flow: &mut Flow) -> bool {
    let family = read::<u16>(sk, off!(sk_family)).unwrap_or(0);
    if family == AF_INET {
        flow.family = FAMILY_V4;
        if let Some(a) = read::<[u8; 4]>(sk, off!(sk_rcv_saddr)) {
            flow.src[..4].copy_from_slice(&a);
        }
        if let Some(a) = read::<[u8; 4]>(sk, off!(sk_daddr)) {
            flow.dst[..4].copy_from_slice(&a);
        }
    } else if family == AF_INET6 {
        flow.family = FAMILY_V6;
        if let Some(a) = read::<[u8; 16]>(sk, off!(sk_v6_rcv_saddr)) {
            flow.src = a;
        }
        if let Some(a) = read::<[u8; 16]>(sk, off!(sk_v6_daddr)) {
            flow.dst = a;
        }
    } else {
        return false;
    }
    flow.proto = read::<u16>(sk, off!(sk_protocol)).unwrap_or(0) as u8;
    flow.sport = read::<u16>(sk, off!(sk_num)).unwrap_or(0);
    flow.dport = u16::from_be(read::<u16>(sk, off!(sk_dport)).unwrap_or(0));
    flow.flags |= FLOW_FROM_SOCKET;
    true
}

/// `IPS_SRC_NAT | IPS_DST_NAT`.
const IPS_NAT_MASK: u64 = 0x30;
/// ctinfo values from `IP_CT_IS_REPLY` (3) on are reply-direction packets.
const IP_CT_IS_REPLY: u64 = 3;

/// The original-direction tuple of the packet's conntrack entry, when
/// conntrack translated the connection (`skb->_nfct`, low 3 bits are the
/// ctinfo). Not on a hot path: only drops reach it, and every read is a
/// probe read at an offset from BTF.
///
/// # Safety
///
/// None for the caller: `skb->_nfct` and the conntrack entry are only probe-read (bpf_probe_read_kernel),
/// so any `skb` is sound; a wrong one gives wrong fields, not a fault.
#[inline(always)]
pub unsafe fn nat(skb: *const u8, out: &mut NatTuple) {
    *out = NatTuple::default();
    let Some(nfct) = read::<u64>(skb, off!(skb_nfct)) else {
        return;
    };
    let ct = (nfct & !7u64) as *const u8;
    if ct.is_null() {
        return;
    }
    let status = read::<u64>(ct, off!(ct_status)).unwrap_or(0);
    if status & IPS_NAT_MASK == 0 {
        return;
    }
    let t = ct.wrapping_add(off!(ct_tuple) as usize);
    let l3 = read::<u16>(t, off!(tuple_l3num)).unwrap_or(0);
    out.family = match l3 {
        AF_INET => FAMILY_V4,
        AF_INET6 => FAMILY_V6,
        _ => return,
    };
    // Straight into the event: the SYN program has no stack to spare.
    crate::kernel::read_into(t, off!(tuple_src_u3), &mut out.src);
    crate::kernel::read_into(t, off!(tuple_dst_u3), &mut out.dst);
    out.sport = u16::from_be(read::<u16>(t, off!(tuple_src_port)).unwrap_or(0));
    out.dport = u16::from_be(read::<u16>(t, off!(tuple_dst_port)).unwrap_or(0));
    out.proto = read::<u8>(t, off!(tuple_protonum)).unwrap_or(0);
    out.flags = NAT_VALID;
    if nfct & 7 >= IP_CT_IS_REPLY {
        out.flags |= NAT_REPLY;
    }
}
