//! Port numbers and service names, and port tests merged into sets.

use super::quals::op;
use tracer_abi::filter::{FilterOp, OP_PORT, OP_PORTS, PORT_SET};

/// The port ranges of a port op.
/// The port of a service name (or alias) in /etc/services, for any of
/// tcp, udp and sctp, as tcpdump resolves `port http`. None when the name
/// is unknown or the file is missing (a scratch container has none).
pub(super) fn service_port(name: &str) -> Option<u16> {
    let text = std::fs::read_to_string("/etc/services").ok()?;
    services_lookup(&text, name)
}

pub(super) fn services_lookup(text: &str, name: &str) -> Option<u16> {
    text.lines().find_map(|line| {
        let line = line.split('#').next()?;
        let mut words = line.split_whitespace();
        let service = words.next()?;
        let (port, proto) = words.next()?.split_once('/')?;
        let named = service == name || words.any(|alias| alias == name);
        (named && matches!(proto, "tcp" | "udp" | "sctp"))
            .then(|| port.parse().ok())
            .flatten()
    })
}

pub(super) fn port_ranges(o: &FilterOp) -> Option<Vec<u32>> {
    match o.code {
        OP_PORT => Some(vec![o.value as u32 | (o.value2 as u32) << 16]),
        OP_PORTS => Some(
            o.addr
                .iter()
                .chain(o.mask.iter())
                .take(o.value as usize)
                .copied()
                .collect(),
        ),
        _ => None,
    }
}

/// `a or b` as one port-set op, if both test ports in the same direction
/// and their ranges fit in one set.
pub(super) fn merge_ports(a: &FilterOp, b: &FilterOp) -> Option<FilterOp> {
    if a.dir != b.dir {
        return None;
    }
    let mut ranges = port_ranges(a)?;
    ranges.extend(port_ranges(b)?);
    if ranges.len() > PORT_SET {
        return None;
    }
    let mut set = FilterOp {
        dir: a.dir,
        value: ranges.len() as u16,
        ..op(OP_PORTS)
    };
    for (k, r) in ranges.into_iter().enumerate() {
        if k < 4 {
            set.addr[k] = r;
        } else {
            set.mask[k - 4] = r;
        }
    }
    Some(set)
}

pub(super) fn port_leaf(lo: u16, hi: u16) -> FilterOp {
    FilterOp {
        value: lo,
        value2: hi,
        ..op(OP_PORT)
    }
}
