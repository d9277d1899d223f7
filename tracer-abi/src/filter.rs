//! The packet filter as the kernel runs it: a short postfix program over
//! a packet's `Flow`. Userspace compiles a tcpdump-like expression into it
//! (`tracer::filter`); the eBPF program and userspace tests both run
//! `eval` below, so what is tested is what the kernel executes.
//!
//! The evaluation stack is a bit stack in one `u64` (bit 0 is the top), so
//! the verifier never sees a variable stack index.

use crate::Flow;

/// Longest filter program. The verifier walks only the ops a filter has
/// (their count and codes sit in frozen .rodata, known to it as
/// constants), so a long array costs nothing to filters that are short.
pub const MAX_OPS: usize = 256;
/// Deepest evaluation stack (two bits per entry in one `u64`): how many
/// operands may wait at once, e.g. 31 nested parentheses.
pub const MAX_DEPTH: u32 = 31;

pub const OP_END: u8 = 0;
pub const OP_AND: u8 = 1;
pub const OP_OR: u8 = 2;
pub const OP_NOT: u8 = 3;
/// Push `flow.family == value`.
pub const OP_FAMILY: u8 = 4;
/// Push `flow.proto == value`.
pub const OP_PROTO: u8 = 5;
/// Push whether the address (selected by `dir`) is in `addr/mask` of `family`.
pub const OP_NET: u8 = 6;
/// Push whether the port (selected by `dir`) is in `value..=value2`.
pub const OP_PORT: u8 = 7;
/// Push whether the port (selected by `dir`) is in one of `value` ranges
/// (at most `PORT_SET`), each packed as `lo | hi << 16` in `addr` then
/// `mask`: a list of ports is one op, not two per port.
pub const OP_PORTS: u8 = 8;
pub const PORT_SET: usize = 8;
/// Push whether `value` is in the packet's header chain (`protochain`),
/// of `family` (0: either).
pub const OP_PROTOCHAIN: u8 = 9;

pub const DIR_ANY: u8 = 0;
pub const DIR_SRC: u8 = 1;
pub const DIR_DST: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterOp {
    pub code: u8,
    pub dir: u8,
    pub family: u8,
    pub _pad: u8,
    pub value: u16,
    pub value2: u16,
    /// Address and mask as native-endian words of the network-order bytes.
    pub addr: [u32; 4],
    pub mask: [u32; 4],
}

impl FilterOp {
    pub const END: FilterOp = FilterOp {
        code: OP_END,
        dir: 0,
        family: 0,
        _pad: 0,
        value: 0,
        value2: 0,
        addr: [0; 4],
        mask: [0; 4],
    };
}

/// Makes a value opaque to the verifier. Each test's result is a known
/// 0 or 1 on each path the verifier walks, and branching on it later marks
/// it precise, so paths never merge: a filter of n tests costs 2^n paths
/// and long filters fail with "program too large". Passed through memory
/// the verifier does not track (a map value), a result is just "some
/// scalar" and the paths merge again at the next op. Userspace needs no
/// such thing: `Plain` returns the value.
pub trait Opaque {
    fn hide(&self, v: u64) -> u64;
}

/// For userspace: values stay as they are.
pub struct Plain;

impl Opaque for Plain {
    #[inline(always)]
    fn hide(&self, v: u64) -> u64 {
        v
    }
}

#[inline(always)]
fn words(b: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

#[inline(always)]
fn in_net(a: &[u32; 4], op: &FilterOp) -> bool {
    (a[0] & op.mask[0]) == op.addr[0]
        && (a[1] & op.mask[1]) == op.addr[1]
        && (a[2] & op.mask[2]) == op.addr[2]
        && (a[3] & op.mask[3]) == op.addr[3]
}

#[inline(always)]
fn pick(dir: u8, s: bool, d: bool) -> bool {
    match dir {
        DIR_SRC => s,
        DIR_DST => d,
        _ => s || d,
    }
}

/// Whether a test's packet is IPv4 or IPv6 of the family `op` asks for
/// (`family` 0: either).
#[inline(always)]
fn family_ok(op: &FilterOp, flow: &Flow) -> bool {
    if op.family == 0 {
        flow.family == crate::FAMILY_V4 || flow.family == crate::FAMILY_V6
    } else {
        flow.family == op.family
    }
}

/// A test's outcome: bit 0 the match, bit 1 "unknown": libpcap's load
/// would run past the packet's end, which ends its whole filter with no
/// match when the answer depends on it. Unknowns combine as in Kleene's
/// logic (`false and unknown` is false, `true or unknown` is true), which
/// is what libpcap's optimizer leaves of such loads when it folds away
/// the tests whose outcome the rest decides (see filter::DIFFERENCES).
const MATCH: u64 = 1;
const ABORT: u64 = 2;

/// tcpdump's `proto N` (and `tcp`, `udp`, `sctp`, `icmp`, `icmp6`): the
/// fixed header's protocol; in IPv6 also the header right behind a
/// fragment header (libpcap's `ip6[6] == 44 and ip6[40] == N`).
#[inline(always)]
fn proto_test(op: &FilterOp, flow: &Flow) -> u64 {
    if !family_ok(op, flow) {
        return 0;
    }
    let n = op.value as u8;
    if flow.nexthdr == n {
        return MATCH;
    }
    if flow.family != crate::FAMILY_V6 || flow.nexthdr != crate::IPPROTO_FRAGMENT {
        return 0;
    }
    if flow.chain & crate::CHAIN_EMPTY != 0 {
        return ABORT;
    }
    if flow.flags & crate::FLOW_EXT_CHAIN == 0 {
        return (flow.proto == n) as u64;
    }
    // Another extension header follows the fragment header; which one
    // the bits do not say (see filter::DIFFERENCES).
    (flow.chain & crate::packet::chain_bit(n, true) != 0) as u64
}

/// tcpdump's `protochain N`: N anywhere in the header chain.
#[inline(always)]
fn chain_test(op: &FilterOp, flow: &Flow) -> u64 {
    if !family_ok(op, flow) {
        return 0;
    }
    let n = op.value as u8;
    let bit = crate::packet::chain_bit(n, flow.family == crate::FAMILY_V6);
    if flow.chain & bit != 0 {
        return MATCH;
    }
    if flow.chain & crate::CHAIN_TRUNC != 0 {
        return ABORT;
    }
    if flow.chain & crate::CHAIN_CAPPED != 0 || bit != 0 {
        return 0;
    }
    (flow.proto == n) as u64
}

/// Ports exist for TCP, UDP and SCTP in the fixed header (tcpdump's
/// `port` reads no further), not in non-first IPv4 fragments.
#[inline(always)]
fn has_ports(flow: &Flow) -> bool {
    (flow.nexthdr == crate::IPPROTO_TCP
        || flow.nexthdr == crate::IPPROTO_UDP
        || flow.nexthdr == crate::IPPROTO_SCTP)
        && (flow.family == crate::FAMILY_V4 || flow.family == crate::FAMILY_V6)
        && flow.flags & crate::FLOW_FRAGMENT == 0
}

/// One port range against the ports, as libpcap's code loads them: the
/// source port first, the destination port only when the answer still
/// depends on it (`src and dst port` is two tests joined by `and`, which
/// runs the second only when the first held). `s`, `d`: each port in the range; `a2`, `a4`: the
/// source, destination port is in the packet. Returns `MATCH`/`ABORT` bits.
#[inline(always)]
fn port_bits(dir: u8, s: u64, d: u64, a2: u64, a4: u64) -> u64 {
    let (val, unknown) = match dir {
        DIR_SRC => (a2 & s, a2 ^ 1),
        DIR_DST => (a4 & d, a4 ^ 1),
        _ => (a2 & (s | (a4 & d)), (a2 ^ 1) | ((s ^ 1) & (a4 ^ 1))),
    };
    (val & (unknown ^ 1)) | (unknown << 1)
}

/// `port`/`portrange` over the op's ranges.
#[inline(always)]
fn ports_test<O: Opaque>(op: &FilterOp, flow: &Flow, o: &O) -> u64 {
    if !has_ports(flow) {
        return 0;
    }
    let short = flow.flags & crate::FLOW_L4_SHORT != 0;
    let half = flow.flags & crate::FLOW_L4_HALF != 0;
    let a2 = (!short || half) as u64;
    let a4 = (!short) as u64;
    let (n, single) = if op.code == OP_PORT {
        (1u16, true)
    } else {
        (op.value, false)
    };
    let mut acc: u64 = 0;
    let mut k = 0;
    while k < PORT_SET {
        if k as u16 >= n {
            break;
        }
        let r = if single {
            op.value as u32 | (op.value2 as u32) << 16
        } else if k < 4 {
            op.addr[k]
        } else {
            op.mask[k - 4]
        };
        // Ports pass through `hide` before each test: a branch on a port
        // narrows what the verifier knows of it (to one value once
        // `port >= 80 && port <= 80` held), and every later test of that
        // narrowed port would split the paths again.
        let (lo, hi) = ((r & 0xffff) as u64, (r >> 16) as u64);
        let (sport, dport) = (o.hide(flow.sport as u64), o.hide(flow.dport as u64));
        let s = (sport >= lo && sport <= hi) as u64;
        let d = (dport >= lo && dport <= hi) as u64;
        // `or` over the ranges: any match decides, else any unknown.
        acc = o.hide(acc | port_bits(op.dir, s, d, a2, a4));
        k += 1;
    }
    if acc & MATCH != 0 {
        MATCH
    } else {
        acc
    }
}

#[inline(always)]
fn test<O: Opaque>(op: &FilterOp, flow: &Flow, src: &[u32; 4], dst: &[u32; 4], o: &O) -> u64 {
    match op.code {
        OP_FAMILY => (flow.family as u16 == op.value) as u64,
        // `family` 0: either family (`proto 1`, `tcp`); else one
        // (`icmp` is `ip proto 1`, `icmp6` is `ip6 proto 58`, as in tcpdump).
        OP_PROTO => proto_test(op, flow),
        OP_PROTOCHAIN => chain_test(op, flow),
        OP_NET => {
            (flow.family == op.family && pick(op.dir, in_net(src, op), in_net(dst, op))) as u64
        }
        OP_PORT | OP_PORTS => ports_test(op, flow, o),
        _ => 0,
    }
}

/// Runs the filter program `ops[..len]` on `flow`. An empty program
/// accepts everything; a malformed one (stack underflow) rejects.
#[inline(always)]
pub fn eval<O: Opaque>(ops: &[FilterOp; MAX_OPS], len: u32, flow: &Flow, o: &O) -> bool {
    if len == 0 {
        return true;
    }
    let src = words(&flow.src);
    let dst = words(&flow.dst);
    // Two bits per entry, as `test` returns them: the result, and whether
    // its subexpression made libpcap load past the packet's end. As in
    // libpcap's code, `a and b` runs b only when a held, `a or b` only
    // when it did not. (One word for both: the eBPF stack has no room
    // for more live values.)
    let mut stack: u64 = 0;
    let mut depth: u32 = 0;
    let mut i = 0;
    while i < MAX_OPS {
        if i as u32 >= len {
            break;
        }
        let op = &ops[i];
        match op.code {
            OP_AND | OP_OR => {
                if depth < 2 {
                    return false;
                }
                let (r, l) = (stack & 3, (stack >> 2) & 3);
                let (ru, lu) = ((r >> 1) & 1, (l >> 1) & 1);
                // Known true, known false, on either side.
                let t = ((l & (lu ^ 1)) | (r & (ru ^ 1))) & 1;
                let f = (((l ^ 1) & (lu ^ 1)) | ((r ^ 1) & (ru ^ 1))) & 1;
                let unknown = lu | ru;
                let v = if op.code == OP_AND {
                    // False decides an `and`; else unknown, else true.
                    if f == 1 {
                        0
                    } else if unknown == 1 {
                        ABORT
                    } else {
                        MATCH
                    }
                } else if t == 1 {
                    MATCH
                } else if unknown == 1 {
                    ABORT
                } else {
                    0
                };
                stack = o.hide(((stack >> 4) << 2) | v);
                depth -= 1;
            }
            OP_NOT => {
                if depth < 1 {
                    return false;
                }
                stack ^= MATCH;
            }
            OP_END => break,
            _ => {
                if depth >= MAX_DEPTH {
                    return false;
                }
                stack = o.hide((stack << 2) | test(op, flow, &src, &dst, o));
                depth += 1;
            }
        }
        i += 1;
    }
    depth == 1 && stack & 3 == MATCH
}
