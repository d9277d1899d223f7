//! Reads a `Flow` out of a `struct sk_buff`: its IPv4/IPv6 header and the
//! L4 header behind it, or, when the packet was freed before its network
//! header was built, the addresses of its socket.

use crate::kernel::{read, Mem};
use crate::off;
use aya_ebpf::helpers::{bpf_probe_read_kernel, generated};
use core::mem::MaybeUninit;
use tracer_abi::packet;
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
        if m.l3_proto == ETH_P_IP || m.l3_proto == ETH_P_IPV6 {
            return parse_ip(l3, room, m.l3_proto == ETH_P_IPV6, flow, opts);
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
const NO_BOUND: u32 = packet::NO_BOUND;

/// A packet's bytes from its network header on, probe-read.
struct Headers(*const u8);

impl packet::Bytes for Headers {
    #[inline(always)]
    fn read<'a, const N: usize>(
        &self,
        off: u32,
        out: &'a mut MaybeUninit<[u8; N]>,
    ) -> Option<&'a [u8; N]> {
        // SAFETY: bpf_probe_read_kernel takes any address and writes all
        // N bytes of `out`: the packet's, or zeros when it fails. Bytes
        // past a short packet are still the skb's own buffer (tailroom,
        // then skb_shared_info), which the parse leaves alone.
        unsafe {
            let r = generated::bpf_probe_read_kernel(
                out.as_mut_ptr().cast(),
                N as u32,
                self.0.wrapping_add(off as usize).cast(),
            );
            let out = out.assume_init_ref();
            (r == 0).then_some(out)
        }
    }
}

/// The shared parse (`tracer_abi::packet`) of the header at `l3`, with
/// the SYN options as a pointer.
///
/// # Safety
///
/// None for the caller: the headers are only probe-read, so any `l3` is
/// sound; a wrong one gives wrong fields, not a fault.
#[inline(always)]
unsafe fn parse_ip(
    l3: *const u8,
    room: u32,
    v6: bool,
    flow: &mut Flow,
    opts: &mut SynOpts,
) -> bool {
    let mut at = packet::OptsAt::default();
    let h = Headers(l3);
    let found = packet::ip(&h, room, v6, flow, &mut at);
    if at.len != 0 {
        opts.at = l3.wrapping_add(at.off as usize);
        opts.len = at.len;
    }
    found
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
    flow.nexthdr = flow.proto;
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
    crate::words::zero(out);
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
