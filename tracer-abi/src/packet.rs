//! Reads a `Flow` out of an IP packet's bytes. The eBPF programs read the
//! bytes with bpf_probe_read_kernel, the oracle tests from a slice; both
//! run this code, so what the tests compare with libpcap is the parse the
//! kernel runs.
//!
//! Bytes past the packet's end are never taken: in the kernel they are
//! the buffer's tailroom, an earlier packet's bytes. Every field is
//! bounded by `avail`, how many bytes the packet holds there.

use crate::*;
use core::mem::MaybeUninit;

/// Where the packet's bytes come from.
pub trait Bytes {
    /// The bytes at `off` from the network header, written into `out`;
    /// None when they cannot be read. Bytes past the packet's end may
    /// hold anything. (An out-parameter, not a returned array: the eBPF
    /// stack has room for one copy of the headers, not two.)
    ///
    /// `out` comes uninitialized, and every implementation writes all of
    /// it: zeroing it first was, on the eBPF target, a call to a
    /// byte-at-a-time memset, about 200 instructions per drop for the
    /// 40-byte header (and as many for the verifier, on every path).
    fn read<'a, const N: usize>(
        &self,
        off: u32,
        out: &'a mut MaybeUninit<[u8; N]>,
    ) -> Option<&'a [u8; N]>;
}

/// No length known to bound the headers by.
pub const NO_BOUND: u32 = u32::MAX;

/// How many extension headers the walk passes before it gives up
/// (`CHAIN_CAPPED`). libpcap has no cap; RFC 8200's recommended order
/// holds at most 6 distinct ones before the transport.
pub const CHAIN_CAP: usize = 4;

/// Where a TCP SYN's options are, from the network header (`len` 0: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OptsAt {
    pub off: u32,
    pub len: u32,
}

/// The SYN bit of the TCP flags byte.
const TCP_SYN: u8 = 0x02;

#[inline(always)]
fn min(a: u32, b: u32) -> u32 {
    if a < b {
        a
    } else {
        b
    }
}

/// The `CHAIN_*` bit of header `h` when the walk passes it (0: the walk
/// stops there). libpcap's protochain passes AH in both families and the
/// IPv6 extension headers in IPv6 only.
#[inline(always)]
pub fn chain_bit(h: u8, v6: bool) -> u8 {
    match h {
        IPPROTO_AH => CHAIN_AH,
        IPPROTO_HOPOPTS if v6 => CHAIN_HOP,
        IPPROTO_DSTOPTS if v6 => CHAIN_DSTOPTS,
        IPPROTO_ROUTING if v6 => CHAIN_ROUTING,
        IPPROTO_FRAGMENT if v6 => CHAIN_FRAGMENT,
        _ => 0,
    }
}

/// Fills `flow` from the IPv4 (`v6` false) or IPv6 header at offset 0;
/// `room` is how many bytes the packet holds from there (`NO_BOUND` if
/// unknown). False if the header is not of that version. One walk and
/// one L4 read for both families: each copy inlined into the eBPF
/// programs costs stack they do not have.
#[inline(always)]
pub fn ip<B: Bytes>(b: &B, room: u32, v6: bool, flow: &mut Flow, opts: &mut OptsAt) -> bool {
    // One read for the IP header and, for IPv4 without options (nearly
    // always), the first 20 bytes behind it: one helper call per drop
    // instead of two.
    let mut buf = MaybeUninit::<[u8; 40]>::uninit();
    let Some(h) = b.read(0, &mut buf) else {
        return false;
    };
    let (start, avail) = if v6 {
        if h[0] >> 4 != 6 {
            return false;
        }
        fixed_v6(h, room, flow)
    } else {
        if h[0] >> 4 != 4 {
            return false;
        }
        let (ihl, avail) = fixed_v4(h, room, flow);
        if ihl == 20 && flow.nexthdr != IPPROTO_AH {
            if flow.flags & FLOW_FRAGMENT == 0 {
                if let Ok(t) = <&[u8; 20]>::try_from(&h[20..40]) {
                    l4_fields(t, ihl, avail, flow, opts);
                }
            }
            return true;
        }
        (ihl, avail)
    };
    if avail == 0 {
        flow.chain |= CHAIN_EMPTY;
    }
    let w = walk(b, start, avail, v6, flow);
    if flow.flags & FLOW_FRAGMENT == 0 && flow.chain & (CHAIN_TRUNC | CHAIN_CAPPED) == 0 {
        let mut t = MaybeUninit::<[u8; 20]>::uninit();
        let off = start.wrapping_add(w);
        if let Some(t) = b.read(off, &mut t) {
            l4_fields(t, off, avail.saturating_sub(w), flow, opts);
        }
    }
    true
}

/// IPv4's fixed header: the flow's addresses and protocol; returns the
/// header's length and how many bytes follow it.
#[inline(always)]
fn fixed_v4(h: &[u8; 40], room: u32, flow: &mut Flow) -> (u32, u32) {
    flow.family = FAMILY_V4;
    flow.ip_len = u16::from_be_bytes([h[2], h[3]]);
    flow.proto = h[9];
    flow.nexthdr = h[9];
    flow.src[..4].copy_from_slice(&h[12..16]);
    flow.dst[..4].copy_from_slice(&h[16..20]);
    let frag_off = (((h[6] & 0x1f) as u16) << 8) | h[7] as u16;
    if frag_off != 0 {
        flow.flags |= FLOW_FRAGMENT;
    }
    let ihl = ((h[0] & 0xf) as u32) * 4;
    // What lies behind the IP header, by the header's own length and by
    // the packet's: bytes past either are not this packet's. BIG TCP
    // leaves tot_len 0 over 64 KiB: then only the packet bounds it.
    let tot = flow.ip_len as u32;
    let by_header = if tot == 0 {
        NO_BOUND
    } else {
        tot.saturating_sub(ihl)
    };
    (ihl, min(by_header, room.saturating_sub(ihl)))
}

/// IPv6's fixed header, as `fixed_v4`.
#[inline(always)]
fn fixed_v6(h: &[u8; 40], room: u32, flow: &mut Flow) -> (u32, u32) {
    flow.family = FAMILY_V6;
    let payload = u16::from_be_bytes([h[4], h[5]]) as u32;
    flow.ip_len = u16::from_be_bytes([h[4], h[5]]).saturating_add(40);
    flow.src.copy_from_slice(&h[8..24]);
    flow.dst.copy_from_slice(&h[24..40]);
    flow.nexthdr = h[6];
    flow.proto = h[6];
    // As for IPv4: the payload length (0 for a jumbogram / BIG TCP) and
    // the packet bound what follows the fixed header.
    let by_header = if payload == 0 { NO_BOUND } else { payload };
    (40, min(by_header, room.saturating_sub(40)))
}

/// Walks the header chain that starts with header `flow.nexthdr` at `start`, as
/// libpcap's protochain does, for at most `CHAIN_CAP` headers: sets
/// `flow.chain`, `flow.proto` to the header it stopped at, and
/// `FLOW_FRAGMENT` for a non-first IPv6 fragment. Returns how many bytes
/// it passed.
#[inline(always)]
fn walk<B: Bytes>(b: &B, start: u32, avail: u32, v6: bool, flow: &mut Flow) -> u32 {
    let mut next = flow.nexthdr;
    let mut walked: u32 = 0;
    let mut i = 0;
    while i < CHAIN_CAP {
        let bit = chain_bit(next, v6);
        if bit == 0 {
            flow.proto = next;
            return walked;
        }
        flow.chain |= bit;
        if i == 1 {
            flow.flags |= FLOW_EXT_CHAIN;
        }
        let left = avail.saturating_sub(walked);
        let mut e = MaybeUninit::<[u8; 4]>::uninit();
        let Some(e) = b.read(start.wrapping_add(walked), &mut e) else {
            flow.chain |= CHAIN_TRUNC;
            flow.proto = next;
            return walked;
        };
        if left < 2 {
            // One byte holds the next header's number (libpcap's `ip6
            // proto` reads it behind a fragment header), not its length.
            flow.chain |= CHAIN_TRUNC;
            flow.proto = if left == 1 { e[0] } else { next };
            return walked;
        }
        if next == IPPROTO_FRAGMENT && left >= 4 && u16::from_be_bytes([e[2], e[3]]) >> 3 != 0 {
            flow.flags |= FLOW_FRAGMENT;
        }
        // libpcap's lengths: AH counts 4-byte words past the first two,
        // the others 8-byte words past the first (a fragment header's
        // second byte is reserved, 0: 8 bytes).
        let len = if next == IPPROTO_AH {
            (e[1] as u32 + 2) * 4
        } else {
            (e[1] as u32 + 1) * 8
        };
        next = e[0];
        walked = walked.wrapping_add(len);
        i += 1;
    }
    if chain_bit(next, v6) != 0 {
        flow.chain |= CHAIN_CAPPED;
    }
    flow.proto = next;
    walked
}

/// L4 fields from its first 20 bytes `t`, read at `off`. `avail` is how
/// many of those bytes are the packet's: a field past it is not taken,
/// and the flow says so (`FLOW_L4_SHORT`, `FLOW_L4_HALF`,
/// `FLOW_TCP_SHORT`), as libpcap fails a load past the packet's end.
#[inline(always)]
pub fn l4_fields(t: &[u8; 20], off: u32, avail: u32, flow: &mut Flow, opts: &mut OptsAt) {
    match flow.proto {
        // SCTP's common header starts with the two ports, as UDP's does.
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            if avail < 4 {
                flow.flags |= FLOW_L4_SHORT;
                if avail >= 2 {
                    flow.flags |= FLOW_L4_HALF;
                    flow.sport = u16::from_be_bytes([t[0], t[1]]);
                }
                return;
            }
            flow.sport = u16::from_be_bytes([t[0], t[1]]);
            flow.dport = u16::from_be_bytes([t[2], t[3]]);
            if flow.proto != IPPROTO_TCP {
                return;
            }
            if avail < 14 {
                flow.flags |= FLOW_TCP_SHORT;
                return;
            }
            flow.tcp_flags = t[13];
            let doff = ((t[12] >> 4) as u32) * 4;
            // Options only where the packet holds them all.
            if flow.tcp_flags & TCP_SYN != 0 && doff > 20 && doff <= avail {
                opts.off = off + 20;
                opts.len = doff - 20;
            }
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

/// A packet in a slice (userspace: tests, pcap files). Bytes past its end
/// read as `junk`, so a parse that took any would show it.
pub struct Slice<'a> {
    pub bytes: &'a [u8],
    pub junk: u8,
}

impl Bytes for Slice<'_> {
    fn read<'a, const N: usize>(
        &self,
        off: u32,
        out: &'a mut MaybeUninit<[u8; N]>,
    ) -> Option<&'a [u8; N]> {
        let off = off as usize;
        let bytes =
            core::array::from_fn(|i| *self.bytes.get(off.wrapping_add(i)).unwrap_or(&self.junk));
        Some(out.write(bytes))
    }
}

/// The flow of an IP packet held in `bytes` (from its network header on),
/// as the kernel parses it.
pub fn flow_of(bytes: &[u8], junk: u8) -> Option<Flow> {
    let b = Slice { bytes, junk };
    let mut flow = Flow::default();
    let mut opts = OptsAt::default();
    let room = bytes.len() as u32;
    let ok = match bytes.first().map(|v| v >> 4) {
        Some(4) => ip(&b, room, false, &mut flow, &mut opts),
        Some(6) => ip(&b, room, true, &mut flow, &mut opts),
        _ => false,
    };
    ok.then_some(flow)
}
