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
/// Push whether the port (selected by `dir`) is in one of the `value2`
/// ranges from index `value` of `Program::ports`: a list of ports or
/// ranges, however long, is one op, found by a binary search whose cost
/// the verifier sees grow with the list's logarithm only.
pub const OP_PORTSET: u8 = 8;
/// Push whether `value` is in the packet's header chain (`protochain`),
/// of `family` (0: either).
pub const OP_PROTOCHAIN: u8 = 9;
/// Push whether the address (selected by `dir`) is of `family` and in one
/// of the `value2` networks from index `value` of `Program::nets`: a list
/// of hosts or networks as one op, like `OP_PORTSET`.
pub const OP_NETSET: u8 = 10;

/// Room for the ranges of all `OP_PORTSET` ops of a program.
pub const MAX_PORT_RANGES: usize = 1024;
/// Room for the networks of all `OP_NETSET` ops of a program.
pub const MAX_NETS: usize = 256;
/// Halvings of a binary search over a set as long as the longest room
/// (1024 = 2^10, and one to spare).
const SEARCH_STEPS: u32 = 11;

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

/// One network of an `OP_NETSET`: its first and last address as
/// big-endian numbers (high word, low word), the order in which a prefix is
/// one contiguous range. A set's networks are sorted and disjoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetRange {
    pub first: [u64; 2],
    pub last: [u64; 2],
}

impl NetRange {
    pub const EMPTY: NetRange = NetRange {
        first: [0; 2],
        last: [0; 2],
    };
}

/// A compiled filter as the kernel takes it: `ops[..len]`, and the sets
/// its `OP_PORTSET` / `OP_NETSET` ops search.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Program {
    pub len: u32,
    pub _pad: u32,
    pub ops: [FilterOp; MAX_OPS],
    /// Port ranges, each `lo | hi << 16`; a set's are sorted and disjoint.
    pub ports: [u32; MAX_PORT_RANGES],
    pub nets: [NetRange; MAX_NETS],
}

impl Program {
    pub const EMPTY: Program = Program {
        len: 0,
        _pad: 0,
        ops: [FilterOp::END; MAX_OPS],
        ports: [0; MAX_PORT_RANGES],
        nets: [NetRange::EMPTY; MAX_NETS],
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

/// The last of the `n` sorted entries from `start` whose first value is
/// at most the key (`at_most(i)`), or `start` when none is: the one entry
/// that can hold the key. The halvings are as many as `n` needs (a
/// constant the verifier reads from the frozen program), and each result
/// passes through `hide`, so the verifier walks one path per halving.
#[inline(always)]
fn search<O: Opaque>(start: u16, n: u16, o: &O, at_most: impl Fn(usize) -> bool) -> usize {
    let mut base = start as u64;
    let mut n = n as u64;
    let mut k = 0;
    while k < SEARCH_STEPS {
        if n <= 1 {
            break;
        }
        let half = n / 2;
        if at_most((base + half) as usize) {
            base += half;
        }
        base = o.hide(base);
        n -= half;
        k += 1;
    }
    base as usize
}

/// Whether `port` is in the op's port set. The port passes through `hide`
/// before each comparison, as in `ports_test`.
#[inline(always)]
fn in_port_set<O: Opaque>(p: &Program, op: &FilterOp, port: u16, o: &O) -> u64 {
    let m = MAX_PORT_RANGES - 1;
    let i = search(op.value, op.value2, o, |i| {
        (p.ports[i & m] & 0xffff) as u64 <= o.hide(port as u64)
    });
    let r = p.ports[i & m];
    let x = o.hide(port as u64);
    (x >= (r & 0xffff) as u64 && x <= (r >> 16) as u64) as u64
}

/// `a <= b` for addresses as (high, low) words; `b` passes through `hide`.
#[inline(always)]
fn addr_le<O: Opaque>(a: [u64; 2], b: [u64; 2], o: &O) -> bool {
    let (h, l) = (o.hide(b[0]), o.hide(b[1]));
    a[0] < h || (a[0] == h && a[1] <= l)
}

/// Whether the address `a` (big-endian words) is in the op's network set.
#[inline(always)]
fn in_net_set<O: Opaque>(p: &Program, op: &FilterOp, a: [u64; 2], o: &O) -> u64 {
    let m = MAX_NETS - 1;
    let i = search(op.value, op.value2, o, |i| {
        addr_le(p.nets[i & m].first, a, o)
    });
    let n = &p.nets[i & m];
    let (h, l) = (o.hide(a[0]), o.hide(a[1]));
    let after_last = h > n.last[0] || (h == n.last[0] && l > n.last[1]);
    (addr_le(n.first, a, o) && !after_last) as u64
}

/// An address as big-endian (high, low) words.
#[inline(always)]
fn be_words(b: &[u8; 16]) -> [u64; 2] {
    [
        u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
    ]
}

/// The port fields' availability, as `port_bits` takes it, or None when
/// the packet has no ports at all.
#[inline(always)]
fn port_avail(flow: &Flow) -> Option<(u64, u64)> {
    if !has_ports(flow) {
        return None;
    }
    let short = flow.flags & crate::FLOW_L4_SHORT != 0;
    let half = flow.flags & crate::FLOW_L4_HALF != 0;
    Some(((!short || half) as u64, (!short) as u64))
}

/// `port`/`portrange`: one range, `value..=value2`. Ports pass through
/// `hide` before each test: a branch on a port narrows what the verifier
/// knows of it (to one value once `port >= 80 && port <= 80` held), and
/// every later test of that narrowed port would split the paths again.
#[inline(always)]
fn ports_test<O: Opaque>(op: &FilterOp, flow: &Flow, o: &O) -> u64 {
    let Some((a2, a4)) = port_avail(flow) else {
        return 0;
    };
    let (lo, hi) = (op.value as u64, op.value2 as u64);
    let (sport, dport) = (o.hide(flow.sport as u64), o.hide(flow.dport as u64));
    let s = (sport >= lo && sport <= hi) as u64;
    let d = (dport >= lo && dport <= hi) as u64;
    port_bits(op.dir, s, d, a2, a4)
}

/// A list of ports: one port in the set is one range of it in `or`, and
/// the `or` of port tests is their `port_bits` over the `or` of their
/// matches (the availability bits are the same for every range).
#[inline(always)]
fn port_set_test<O: Opaque>(p: &Program, op: &FilterOp, flow: &Flow, o: &O) -> u64 {
    let Some((a2, a4)) = port_avail(flow) else {
        return 0;
    };
    let s = if op.dir == DIR_DST {
        0
    } else {
        o.hide(in_port_set(p, op, flow.sport, o))
    };
    let d = if op.dir == DIR_SRC {
        0
    } else {
        o.hide(in_port_set(p, op, flow.dport, o))
    };
    port_bits(op.dir, s, d, a2, a4)
}

#[inline(always)]
fn net_set_test<O: Opaque>(p: &Program, op: &FilterOp, flow: &Flow, o: &O) -> u64 {
    if flow.family != op.family {
        return 0;
    }
    let s = if op.dir == DIR_DST {
        0
    } else {
        o.hide(in_net_set(p, op, be_words(&flow.src), o))
    };
    let d = if op.dir == DIR_SRC {
        0
    } else {
        o.hide(in_net_set(p, op, be_words(&flow.dst), o))
    };
    pick(op.dir, s != 0, d != 0) as u64
}

#[inline(always)]
fn test<O: Opaque>(
    p: &Program,
    op: &FilterOp,
    flow: &Flow,
    src: &[u32; 4],
    dst: &[u32; 4],
    o: &O,
) -> u64 {
    match op.code {
        OP_FAMILY => (flow.family as u16 == op.value) as u64,
        // `family` 0: either family (`proto 1`, `tcp`); else one
        // (`icmp` is `ip proto 1`, `icmp6` is `ip6 proto 58`, as in tcpdump).
        OP_PROTO => proto_test(op, flow),
        OP_PROTOCHAIN => chain_test(op, flow),
        OP_NET => {
            (flow.family == op.family && pick(op.dir, in_net(src, op), in_net(dst, op))) as u64
        }
        OP_PORT => ports_test(op, flow, o),
        OP_PORTSET => port_set_test(p, op, flow, o),
        OP_NETSET => net_set_test(p, op, flow, o),
        _ => 0,
    }
}

/// Runs the filter program `p` on `flow`. An empty program accepts
/// everything; a malformed one (stack underflow) rejects.
#[inline(always)]
pub fn eval<O: Opaque>(p: &Program, flow: &Flow, o: &O) -> bool {
    let (ops, len) = (&p.ops, p.len);
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
                stack = o.hide((stack << 2) | test(p, op, flow, &src, &dst, o));
                depth += 1;
            }
        }
        i += 1;
    }
    depth == 1 && stack & 3 == MATCH
}
