//! Names for numbers the kernel reports: route-lookup errors and ICMP
//! types, so that output says `ENETUNREACH` and `frag needed`, not -11
//! and 3/4; and the MSS among the TCP option bytes of a dropped SYN.

use super::record::Proto;
use etherparse::{TcpOptionElement, TcpOptionsIterator};

/// The MSS option of a SYN, from its option bytes as the kernel copied
/// them (the drop probe does not walk options; see the eBPF `SynOpts`).
/// Options after a malformed one are not trusted.
pub fn tcp_mss(opts: &[u8]) -> Option<u16> {
    TcpOptionsIterator::from_slice(opts)
        .map_while(Result::ok)
        .find_map(|o| match o {
            TcpOptionElement::MaximumSegmentSize(m) => Some(m),
            _ => None,
        })
}

/// The errno a route lookup failed with, by name. `err` is as traced
/// (negative).
pub fn errno_name(err: i32) -> String {
    match -err {
        // fib_table_lookup reports -EAGAIN when a table has no matching
        // route; the kernel then fails the lookup with -ENETUNREACH, which
        // is what the sender sees.
        11 | 101 => "ENETUNREACH".into(),
        // `unreachable` routes.
        113 => "EHOSTUNREACH".into(),
        // `blackhole` routes, and the rp_filter check's own failure.
        22 => "EINVAL".into(),
        // `prohibit` routes.
        13 => "EACCES".into(),
        1 => "EPERM".into(),
        19 => "ENODEV".into(),
        12 => "ENOMEM".into(),
        n => format!("errno {n}"),
    }
}

/// The errno the sender of a packet sees for a failed route lookup
/// (negative, as traced). fib_table_lookup's own -EAGAIN only means "not
/// in this table"; the lookup as a whole fails with -ENETUNREACH, so
/// evidence that names ENETUNREACH carries its number (-101), not -11.
pub fn sender_errno(err: i32) -> i32 {
    if err == -11 {
        -101
    } else {
        err
    }
}

/// The name of an ICMP or ICMPv6 type and code.
pub fn icmp_name(proto: Proto, icmp_type: u8, code: u8) -> Option<&'static str> {
    Some(match (proto, icmp_type, code) {
        (Proto::Icmp, 0, _) => "echo reply",
        (Proto::Icmp, 3, 0) => "net unreachable",
        (Proto::Icmp, 3, 1) => "host unreachable",
        (Proto::Icmp, 3, 2) => "protocol unreachable",
        (Proto::Icmp, 3, 3) => "port unreachable",
        (Proto::Icmp, 3, 4) => "frag needed",
        (Proto::Icmp, 3, 13) => "admin prohibited",
        (Proto::Icmp, 3, _) => "unreachable",
        (Proto::Icmp, 5, _) => "redirect",
        (Proto::Icmp, 8, _) => "echo request",
        (Proto::Icmp, 11, _) => "time exceeded",
        (Proto::Icmp, 12, _) => "parameter problem",
        (Proto::Icmp6, 1, 4) => "port unreachable",
        (Proto::Icmp6, 1, _) => "unreachable",
        (Proto::Icmp6, 2, _) => "packet too big",
        (Proto::Icmp6, 3, _) => "time exceeded",
        (Proto::Icmp6, 4, _) => "parameter problem",
        (Proto::Icmp6, 128, _) => "echo request",
        (Proto::Icmp6, 129, _) => "echo reply",
        (Proto::Icmp6, 133, _) => "router solicitation",
        (Proto::Icmp6, 134, _) => "router advertisement",
        (Proto::Icmp6, 135, _) => "neighbor solicitation",
        (Proto::Icmp6, 136, _) => "neighbor advertisement",
        (Proto::Icmp6, 143, _) => "mld report",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mss_is_found_wherever_it_sits() {
        // Linux: mss, sackOK, TS, nop, wscale.
        let linux = [
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 1, 2, 3, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        assert_eq!(tcp_mss(&linux), Some(1460));
        // After NOPs and a window scale, as some stacks send it.
        assert_eq!(tcp_mss(&[1, 1, 3, 3, 7, 2, 4, 0x23, 0x28]), Some(9000));
        // No MSS, end of options, then bytes that are not options.
        assert_eq!(tcp_mss(&[1, 1, 4, 2, 0, 2, 4, 1, 1]), None);
        // A malformed option stops the walk: nothing after it is trusted.
        assert_eq!(tcp_mss(&[3, 0, 2, 4, 5, 0xb4]), None);
        assert_eq!(tcp_mss(&[]), None);
    }

    #[test]
    fn names() {
        assert_eq!(errno_name(-11), "ENETUNREACH");
        assert_eq!(errno_name(-113), "EHOSTUNREACH");
        assert_eq!(errno_name(-999), "errno 999");
        assert_eq!(icmp_name(Proto::Icmp, 8, 0), Some("echo request"));
        assert_eq!(icmp_name(Proto::Icmp, 3, 4), Some("frag needed"));
        assert_eq!(icmp_name(Proto::Icmp6, 2, 0), Some("packet too big"));
        assert_eq!(icmp_name(Proto::Icmp, 42, 0), None);
    }
}
