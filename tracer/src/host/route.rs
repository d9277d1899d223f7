//! A route as the kernel's FIB holds it, with the table numbers and the
//! prefix test that the topology, policy routing and the rules share. Its
//! own module so that policy routing (which reads routes) and the
//! topology (which holds them and asks policy which table answers) do not
//! import each other.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

pub const RT_TABLE_DEFAULT: u32 = 253;
pub const RT_TABLE_MAIN: u32 = 254;
pub const RT_TABLE_LOCAL: u32 = 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteKind {
    Unicast,
    Local,
    Broadcast,
    Blackhole,
    Unreachable,
    Prohibit,
    /// Raw RTN_* value (e.g. 5 multicast, 9 throw).
    Other(u8),
}

pub const RTN_THROW: u8 = 9;

impl From<u8> for RouteKind {
    fn from(v: u8) -> Self {
        match v {
            1 => RouteKind::Unicast,
            2 => RouteKind::Local,
            3 => RouteKind::Broadcast,
            6 => RouteKind::Blackhole,
            7 => RouteKind::Unreachable,
            8 => RouteKind::Prohibit,
            n => RouteKind::Other(n),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpAddr,
    pub prefix_len: u8,
    pub table: u32,
    pub kind: RouteKind,
    /// For multipath routes, the first nexthop's.
    pub oif: Option<i32>,
    /// For multipath routes, the first nexthop's.
    pub gateway: Option<IpAddr>,
    pub metric: u32,
    /// Preferred source (RTA_PREFSRC).
    pub src: Option<IpAddr>,
}

impl Route {
    pub fn contains(&self, addr: IpAddr) -> bool {
        prefix_contains(self.dst, self.prefix_len, addr)
    }
}

/// Is `addr` inside `net/len`? Different families never match.
pub fn prefix_contains(net: IpAddr, len: u8, addr: IpAddr) -> bool {
    match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            if len > 32 {
                return false;
            }
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            if len > 128 {
                return false;
            }
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn prefix_math() {
        assert!(prefix_contains(ip("10.1.2.0"), 24, ip("10.1.2.255")));
        assert!(!prefix_contains(ip("10.1.2.0"), 24, ip("10.1.3.0")));
        assert!(prefix_contains(ip("0.0.0.0"), 0, ip("192.0.2.1")));
        assert!(prefix_contains(ip("10.1.2.3"), 32, ip("10.1.2.3")));
        assert!(!prefix_contains(ip("10.1.2.3"), 33, ip("10.1.2.3")));
        assert!(prefix_contains(
            ip("2001:db8::"),
            32,
            ip("2001:db8:ffff::1")
        ));
        assert!(prefix_contains(ip("::"), 0, ip("2001:db8::1")));
        assert!(!prefix_contains(ip("::"), 0, ip("10.0.0.1")));
        assert!(!prefix_contains(ip("0.0.0.0"), 0, ip("::1")));
    }
}
