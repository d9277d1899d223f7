//! Lists of ports and of networks folded into one set op each
//! (`OP_PORTSET`, `OP_NETSET`): the kernel searches a sorted set instead of
//! testing each value, so a 200-port filter verifies about as fast as a
//! one-port filter (issue 25: a 200-port list took the 5.10 and 6.1
//! verifiers under emulation past two minutes).
//!
//! `a or b` of two tests of the same field and direction is one set test,
//! and `(p and a) or (p and b)` is `p and (a or b)`: the filter's logic,
//! libpcap's with its "unknown" for loads past the packet's end, is
//! Kleene's, where `or` is associative and commutative and `and`
//! distributes over it, so the folded program matches what the unfolded
//! one did.

use super::error;
use super::quals::op;
use super::FilterError;
use std::ops::Range;
use tracer_abi::filter::{
    FilterOp, NetRange, MAX_NETS, MAX_PORT_RANGES, OP_AND, OP_NET, OP_NETSET, OP_PORT, OP_PORTSET,
};

/// What a set op holds while the filter is parsed; `layout` turns each
/// into sorted, disjoint ranges in the kernel's arrays.
#[derive(Clone, Debug)]
pub(super) enum Members {
    Ports(Vec<(u16, u16)>),
    /// First and last address, as big-endian numbers.
    Nets(Vec<(u128, u128)>),
}

/// A network's first and last address, if its mask is a prefix (a
/// `mask` with holes, as in `net 10.0.0.0 mask 255.0.255.0`, is no range).
fn net_range(o: &FilterOp) -> Option<(u128, u128)> {
    let be = |w: &[u32; 4]| {
        w.iter()
            .fold(0u128, |acc, x| acc << 32 | u32::from_be(*x) as u128)
    };
    let (addr, mask) = (be(&o.addr), be(&o.mask));
    if mask.leading_ones() + mask.trailing_zeros() != 128 {
        return None;
    }
    Some((addr & mask, addr | !mask))
}

fn members(o: &FilterOp, sets: &[Members]) -> Option<Members> {
    match o.code {
        OP_PORT => Some(Members::Ports(vec![(o.value, o.value2)])),
        OP_NET => net_range(o).map(|r| Members::Nets(vec![r])),
        OP_PORTSET | OP_NETSET => sets.get(o.value as usize).cloned(),
        _ => None,
    }
}

/// `a or b` as one set op, if both test the same field in the same
/// direction (and family, for addresses). A set op's members stay in
/// `sets` at its `value` until `layout`.
pub(super) fn merge(a: &FilterOp, b: &FilterOp, sets: &mut Vec<Members>) -> Option<FilterOp> {
    if a.dir != b.dir || a.family != b.family {
        return None;
    }
    let merged = match (members(a, sets)?, members(b, sets)?) {
        (Members::Ports(mut x), Members::Ports(y)) => {
            x.extend(y);
            Members::Ports(x)
        }
        (Members::Nets(mut x), Members::Nets(y)) => {
            x.extend(y);
            Members::Nets(x)
        }
        _ => return None,
    };
    let code = match merged {
        Members::Ports(_) => OP_PORTSET,
        Members::Nets(_) => OP_NETSET,
    };
    let index = if matches!(a.code, OP_PORTSET | OP_NETSET) {
        sets[a.value as usize] = merged;
        a.value
    } else {
        // A set's index must fit `value`; a filter with that many lists
        // is refused for its length anyway.
        let index = u16::try_from(sets.len()).ok()?;
        sets.push(merged);
        index
    };
    Some(FilterOp {
        code,
        dir: a.dir,
        family: a.family,
        value: index,
        ..op(code)
    })
}

/// Folds the right side of an `or`, `ops[rhs..]`, into its left side
/// `ops[left]`, when both are one test of a field (`a or b`) or the same
/// test `and` one (`p and a or p and b`). Returns whether it did; the
/// right side is then gone.
pub(super) fn fold_or(
    ops: &mut Vec<FilterOp>,
    left: Range<usize>,
    rhs: usize,
    sets: &mut Vec<Members>,
) -> bool {
    let (l, r) = (&ops[left.clone()], &ops[rhs..]);
    // A group of one op is a test; of three ending in AND, `x and y` of
    // two tests.
    let (a, b) = match (l.len(), r.len()) {
        (1, 1) => (left.start, rhs),
        (3, 3) if l[0] == r[0] && l[2].code == OP_AND && r[2].code == OP_AND => {
            (left.start + 1, rhs + 1)
        }
        _ => return false,
    };
    let Some(set) = merge(&ops[a], &ops[b], sets) else {
        return false;
    };
    ops[a] = set;
    ops.truncate(rhs);
    true
}

/// Gives each set op its place in the kernel's arrays (`value`: first
/// index, `value2`: count), members sorted and merged where they touch.
pub(super) fn layout(
    ops: &mut [FilterOp],
    sets: &[Members],
) -> Result<(Vec<u32>, Vec<NetRange>), FilterError> {
    let (mut ports, mut nets) = (Vec::new(), Vec::new());
    for o in ops.iter_mut() {
        let start = match (o.code, sets.get(o.value as usize)) {
            (OP_PORTSET, Some(Members::Ports(m))) => {
                let start = ports.len();
                ports.extend(
                    disjoint(m.iter().map(|&(a, b)| (a as u128, b as u128)))
                        .map(|(a, b)| a as u32 | (b as u32) << 16),
                );
                (start, ports.len())
            }
            (OP_NETSET, Some(Members::Nets(m))) => {
                let start = nets.len();
                nets.extend(disjoint(m.iter().copied()).map(|(a, b)| NetRange {
                    first: [(a >> 64) as u64, a as u64],
                    last: [(b >> 64) as u64, b as u64],
                }));
                (start, nets.len())
            }
            _ => continue,
        };
        o.value = start.0 as u16;
        o.value2 = (start.1 - start.0) as u16;
    }
    if ports.len() > MAX_PORT_RANGES {
        return Err(error(
            1,
            format!(
                "filter lists too many ports: {} separate ranges, the kernel takes at most \
                 {MAX_PORT_RANGES}; a portrange A-B can replace a list",
                ports.len()
            ),
        ));
    }
    if nets.len() > MAX_NETS {
        return Err(error(
            1,
            format!(
                "filter lists too many addresses: {} separate networks, the kernel takes at \
                 most {MAX_NETS}; a net A/N can replace a list",
                nets.len()
            ),
        ));
    }
    Ok((ports, nets))
}

/// Inclusive ranges sorted, with overlapping and adjacent ones joined.
fn disjoint(m: impl Iterator<Item = (u128, u128)>) -> impl Iterator<Item = (u128, u128)> {
    let mut v: Vec<(u128, u128)> = m.collect();
    v.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out.into_iter()
}
