//! Port numbers and service names.

use super::quals::op;
use tracer_abi::filter::{FilterOp, OP_PORT};
use tracer_abi::{IPPROTO_TCP, IPPROTO_UDP};

/// A service name's port, as libpcap resolves it (`pcap_nametoport`): the
/// tcp entry's, else the udp entry's; `only` names the one protocol the
/// port is for when the name has one entry, or two entries with other
/// ports (`port http` is `tcp port 80`, since /etc/services lists
/// http/tcp only), and is None when both list that port (`port domain`:
/// tcp, udp and sctp alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Service {
    pub(super) port: u16,
    pub(super) only: Option<u8>,
}

/// A service name (or alias) in /etc/services. None when the name is
/// unknown or the file is missing (a scratch container has none).
pub(super) fn service_port(name: &str) -> Option<Service> {
    let text = std::fs::read_to_string("/etc/services").ok()?;
    services_lookup(&text, name)
}

pub(super) fn services_lookup(text: &str, name: &str) -> Option<Service> {
    let find = |want: &str| -> Option<u16> {
        text.lines().find_map(|line| {
            let line = line.split('#').next()?;
            let mut words = line.split_whitespace();
            let service = words.next()?;
            let (port, proto) = words.next()?.split_once('/')?;
            let named = service == name || words.any(|alias| alias == name);
            (named && proto == want)
                .then(|| port.parse().ok())
                .flatten()
        })
    };
    match (find("tcp"), find("udp")) {
        (Some(t), Some(u)) if t == u => Some(Service {
            port: t,
            only: None,
        }),
        (Some(t), _) => Some(Service {
            port: t,
            only: Some(IPPROTO_TCP),
        }),
        (None, Some(u)) => Some(Service {
            port: u,
            only: Some(IPPROTO_UDP),
        }),
        (None, None) => None,
    }
}

pub(super) fn port_leaf(lo: u16, hi: u16) -> FilterOp {
    FilterOp {
        value: lo,
        value2: hi,
        ..op(OP_PORT)
    }
}
