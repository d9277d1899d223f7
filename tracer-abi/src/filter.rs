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

/// Ports exist for TCP, UDP and SCTP (tcpdump's `port`), not in non-first
/// fragments, and not in a packet that ends before them (tcpdump's load
/// past the end fails the match).
#[inline(always)]
fn has_ports(flow: &Flow) -> bool {
    (flow.proto == crate::IPPROTO_TCP
        || flow.proto == crate::IPPROTO_UDP
        || flow.proto == crate::IPPROTO_SCTP)
        && flow.flags & (crate::FLOW_FRAGMENT | crate::FLOW_L4_SHORT) == 0
}

#[inline(always)]
fn test<O: Opaque>(op: &FilterOp, flow: &Flow, src: &[u32; 4], dst: &[u32; 4], o: &O) -> bool {
    match op.code {
        OP_FAMILY => flow.family as u16 == op.value,
        // `family` 0: either family (`proto 1`, `tcp`); else one
        // (`icmp` is `ip proto 1`, `icmp6` is `ip6 proto 58`, as in tcpdump).
        OP_PROTO => flow.proto as u16 == op.value && (op.family == 0 || flow.family == op.family),
        OP_NET => flow.family == op.family && pick(op.dir, in_net(src, op), in_net(dst, op)),
        OP_PORT => {
            // Ports pass through `hide` before each test as well: a branch
            // on a port narrows what the verifier knows of it (to one value
            // once `port >= 80 && port <= 80` held), and every later test
            // of that narrowed port would split the paths again.
            let (sport, dport) = (o.hide(flow.sport as u64), o.hide(flow.dport as u64));
            let (lo, hi) = (op.value as u64, op.value2 as u64);
            let s = sport >= lo && sport <= hi;
            let d = dport >= lo && dport <= hi;
            has_ports(flow) && pick(op.dir, s, d)
        }
        OP_PORTS => {
            // Two bits (source, destination), kept opaque between ranges.
            let mut sd: u64 = 0;
            let mut k = 0;
            while k < PORT_SET {
                if k as u16 >= op.value {
                    break;
                }
                let r = if k < 4 { op.addr[k] } else { op.mask[k - 4] };
                let (lo, hi) = ((r & 0xffff) as u64, (r >> 16) as u64);
                let (sport, dport) = (o.hide(flow.sport as u64), o.hide(flow.dport as u64));
                let s = (sport >= lo && sport <= hi) as u64;
                let d = (dport >= lo && dport <= hi) as u64;
                sd = o.hide(sd | s | (d << 1));
                k += 1;
            }
            has_ports(flow) && pick(op.dir, sd & 1 != 0, sd & 2 != 0)
        }
        _ => false,
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
                let a = stack & 1;
                let b = (stack >> 1) & 1;
                let r = if op.code == OP_AND { a & b } else { a | b };
                stack = ((stack >> 2) << 1) | r;
                depth -= 1;
            }
            OP_NOT => {
                if depth < 1 {
                    return false;
                }
                stack ^= 1;
            }
            OP_END => break,
            _ => {
                if depth >= 63 {
                    return false;
                }
                stack = o.hide((stack << 1) | test(op, flow, &src, &dst, o) as u64);
                depth += 1;
            }
        }
        i += 1;
    }
    depth == 1 && stack & 1 == 1
}
