//! Addresses and networks in the form the kernel compares.

use super::quals::{all_digits, op};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use tracer_abi::filter::{FilterOp, OP_NET};
use tracer_abi::{FAMILY_V4, FAMILY_V6};

/// The kernel's view of 16 address bytes: native-endian words of the
/// network-order bytes, so no byte swapping happens on either side.
pub(super) fn words(b: &[u8; 16]) -> [u32; 4] {
    std::array::from_fn(|i| {
        u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
    })
}

pub(super) fn prefix_mask(len: u32) -> [u8; 16] {
    std::array::from_fn(|i| {
        let bits = len.saturating_sub(8 * i as u32).min(8);
        if bits == 0 {
            0
        } else {
            0xffu8 << (8 - bits)
        }
    })
}

/// tcpdump's abbreviated networks: `net 10` is 10.0.0.0/8, `net 10.1` is
/// 10.1.0.0/16. Returns the address and the prefix the octets imply.
pub(super) fn partial_v4(s: &str) -> Option<([u8; 4], u32)> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() > 3 {
        return None;
    }
    let mut b = [0u8; 4];
    for (i, p) in parts.iter().enumerate() {
        if !all_digits(p) || p.len() > 3 {
            return None;
        }
        b[i] = p.parse().ok()?;
    }
    Some((b, 8 * parts.len() as u32))
}

pub(super) fn bad_address(text: &str) -> String {
    if text.contains(':') {
        format!("bad IPv6 address '{text}'")
    } else {
        format!("bad IPv4 address '{text}'")
    }
}

/// An address family and 16 bytes, the form the kernel compares.
#[derive(Clone, Copy)]
pub(super) struct Net {
    pub(super) family: u8,
    pub(super) addr: [u8; 16],
    pub(super) mask: [u8; 16],
}

impl Net {
    pub(super) fn host(ip: IpAddr) -> Net {
        match ip {
            IpAddr::V4(a) => Net::v4(a.octets(), [0xff; 4]),
            IpAddr::V6(a) => Net {
                family: FAMILY_V6,
                addr: a.octets(),
                mask: [0xff; 16],
            },
        }
    }

    pub(super) fn v4(addr: [u8; 4], mask: [u8; 4]) -> Net {
        let mut n = Net {
            family: FAMILY_V4,
            addr: [0; 16],
            mask: [0; 16],
        };
        n.addr[..4].copy_from_slice(&addr);
        n.mask[..4].copy_from_slice(&mask);
        n
    }

    pub(super) fn display_addr(b: &[u8; 16], family: u8) -> String {
        if family == FAMILY_V4 {
            Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()
        } else {
            Ipv6Addr::from(*b).to_string()
        }
    }

    pub(super) fn leaf(&self) -> FilterOp {
        FilterOp {
            family: self.family,
            addr: words(&self.addr),
            mask: words(&self.mask),
            ..op(OP_NET)
        }
    }
}
