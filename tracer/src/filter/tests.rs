//! The compiler against tcpdump's meaning of each form, and its errors.

use super::ports::services_lookup;
use super::quals::op;
use super::*;
use std::net::IpAddr;
use tracer_abi::filter::{
    FilterOp, DIR_ANY, DIR_DST, DIR_SRC, MAX_NETS, MAX_OPS, MAX_PORT_RANGES, OP_AND, OP_FAMILY,
    OP_NET, OP_NETSET, OP_NOT, OP_OR, OP_PORT, OP_PORTSET, OP_PROTO,
};
use tracer_abi::{
    Flow, FAMILY_V4, FAMILY_V6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP,
    IPPROTO_UDP,
};

use tracer_abi::FLOW_FRAGMENT;

fn ip(s: &str) -> (u8, [u8; 16]) {
    let mut b = [0u8; 16];
    match s.parse::<IpAddr>().unwrap() {
        IpAddr::V4(a) => {
            b[..4].copy_from_slice(&a.octets());
            (FAMILY_V4, b)
        }
        IpAddr::V6(a) => (FAMILY_V6, a.octets()),
    }
}

/// A flow from `src:sport` to `dst:dport`; the family comes from the addresses.
fn flow(proto: u8, src: &str, sport: u16, dst: &str, dport: u16) -> Flow {
    let (family, src) = ip(src);
    let (family2, dst) = ip(dst);
    assert_eq!(family, family2);
    Flow {
        family,
        proto,
        nexthdr: proto,
        src,
        dst,
        sport,
        dport,
        ..Flow::default()
    }
}

fn tcp4(src: &str, sport: u16, dst: &str, dport: u16) -> Flow {
    flow(IPPROTO_TCP, src, sport, dst, dport)
}

fn udp4(src: &str, sport: u16, dst: &str, dport: u16) -> Flow {
    flow(IPPROTO_UDP, src, sport, dst, dport)
}

/// Checks what eval's stack checks: every program compile produces is
/// well formed postfix leaving exactly one value.
fn well_formed(ops: &[FilterOp]) -> bool {
    let mut depth = 0i32;
    for o in ops {
        match o.code {
            OP_AND | OP_OR => {
                if depth < 2 {
                    return false;
                }
                depth -= 1;
            }
            OP_NOT => {
                if depth < 1 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    depth == 1
}

fn ok(expr: &str) -> Filter {
    let f = compile(expr).unwrap_or_else(|e| panic!("{expr:?}: {e}"));
    assert!(
        f.ops.is_empty() || well_formed(&f.ops),
        "{expr:?} compiled to {:?}",
        f.ops
    );
    f
}

fn m(expr: &str, f: &Flow) -> bool {
    ok(expr).matches(f)
}

fn err(expr: &str) -> (usize, String) {
    match compile(expr) {
        Ok(f) => panic!("{expr:?} compiled to {:?}", f.ops),
        Err(e) => (e.column, e.message),
    }
}

fn codes(expr: &str) -> Vec<u8> {
    ok(expr).ops.iter().map(|o| o.code).collect()
}

/// Two expressions compile to the same program.
fn same(a: &str, b: &str) {
    let (a_, b_) = (ok(a), ok(b));
    assert_eq!(
        (a_.ops, a_.ports, a_.nets),
        (b_.ops, b_.ports, b_.nets),
        "{a:?} vs {b:?}"
    );
}

// ------------------------------------------------ empty and API

#[test]
fn empty_matches_everything() {
    for e in ["", "   ", "\t \n"] {
        let f = ok(e);
        assert!(f.is_empty());
        assert_eq!(f.text, "");
        let p = f.to_kernel();
        assert_eq!(p.len, 0);
        assert!(p.ops.iter().all(|o| *o == FilterOp::END));
        assert!(f.matches(&tcp4("1.2.3.4", 1, "5.6.7.8", 2)));
        assert!(f.matches(&Flow::default()));
    }
}

#[test]
fn text_is_trimmed_expression() {
    let f = ok("  tcp and port 80 ");
    assert_eq!(f.text, "tcp and port 80");
    assert!(!f.is_empty());
}

#[test]
fn to_kernel_pads_with_end() {
    let f = ok("tcp and port 80");
    let p = f.to_kernel();
    assert_eq!(p.len, 3);
    assert_eq!(&p.ops[..3], &f.ops[..]);
    assert!(p.ops[3..].iter().all(|o| *o == FilterOp::END));
}

#[test]
fn matches_is_kernel_eval() {
    let f = ok("tcp port 80 or udp port 53");
    let p = f.to_kernel();
    for fl in [
        tcp4("1.1.1.1", 80, "2.2.2.2", 1),
        udp4("1.1.1.1", 1, "2.2.2.2", 53),
        udp4("1.1.1.1", 1, "2.2.2.2", 80),
    ] {
        assert_eq!(
            f.matches(&fl),
            tracer_abi::filter::eval(&p, &fl, &tracer_abi::filter::Plain),
            "{fl:?}"
        );
    }
    assert!(f.matches(&udp4("1.1.1.1", 1, "2.2.2.2", 53)));
    assert!(!f.matches(&udp4("1.1.1.1", 1, "2.2.2.2", 80)));
}

#[test]
#[should_panic(expected = "at most 256")]
fn to_kernel_refuses_overlong_hand_made_filter() {
    let f = Filter {
        ops: vec![op(OP_PROTO); MAX_OPS + 1],
        ..Filter::default()
    };
    f.to_kernel();
}

#[test]
fn error_display_is_one_line() {
    let e = compile("udp port no-such-svc").unwrap_err();
    assert_eq!(
        e.to_string(),
        "bad filter at column 10: expected a port number after 'port', found 'no-such-svc'"
    );
    let boxed: Box<dyn std::error::Error> = Box::new(e);
    assert!(!boxed.to_string().contains('\n'));
}

// ------------------------------------------------ encoding

#[test]
fn host_v4_encoding() {
    let f = ok("host 10.1.2.3");
    assert_eq!(f.ops.len(), 1);
    let o = f.ops[0];
    assert_eq!(o.code, OP_NET);
    assert_eq!(o.family, FAMILY_V4);
    assert_eq!(o.dir, DIR_ANY);
    assert_eq!(o.addr, [u32::from_ne_bytes([10, 1, 2, 3]), 0, 0, 0]);
    assert_eq!(o.mask, [u32::MAX, 0, 0, 0]);
}

#[test]
fn net_v4_encoding_is_masked_network_order() {
    let o = ok("net 192.168.0.0/20").ops[0];
    assert_eq!(o.addr, [u32::from_ne_bytes([192, 168, 0, 0]), 0, 0, 0]);
    assert_eq!(o.mask, [u32::from_ne_bytes([255, 255, 0xf0, 0]), 0, 0, 0]);
}

#[test]
fn net_v6_encoding() {
    let o = ok("net 2001:db8:ab00::/40").ops[0];
    assert_eq!(o.family, FAMILY_V6);
    assert_eq!(
        o.addr,
        [
            u32::from_ne_bytes([0x20, 0x01, 0x0d, 0xb8]),
            u32::from_ne_bytes([0xab, 0, 0, 0]),
            0,
            0
        ]
    );
    assert_eq!(
        o.mask,
        [u32::MAX, u32::from_ne_bytes([0xff, 0, 0, 0]), 0, 0]
    );
    let h = ok("host fe80::1").ops[0];
    assert_eq!(h.mask, [u32::MAX; 4]);
    assert_eq!(h.addr[3], u32::from_ne_bytes([0, 0, 0, 1]));
}

#[test]
fn port_proto_family_encoding() {
    let p = ok("dst port 443").ops[0];
    assert_eq!(
        (p.code, p.dir, p.value, p.value2),
        (OP_PORT, DIR_DST, 443, 443)
    );
    let r = ok("src portrange 1000-2000").ops[0];
    assert_eq!(
        (r.code, r.dir, r.value, r.value2),
        (OP_PORT, DIR_SRC, 1000, 2000)
    );
    let t = ok("proto 47").ops[0];
    assert_eq!((t.code, t.value), (OP_PROTO, 47));
    let f = ok("ip6").ops[0];
    assert_eq!((f.code, f.value), (OP_FAMILY, 6));
    let f = ok("ip").ops[0];
    assert_eq!((f.code, f.value), (OP_FAMILY, 4));
    for (w, n) in [("tcp", 6), ("udp", 17), ("icmp", 1), ("icmp6", 58)] {
        let o = ok(w).ops[0];
        assert_eq!((o.code, o.value), (OP_PROTO, n), "{w}");
    }
}

#[test]
fn src_and_dst_emits_two_tests_and_and() {
    let f = ok("src and dst host 10.0.0.1");
    assert_eq!(codes("src and dst host 10.0.0.1"), [OP_NET, OP_NET, OP_AND]);
    assert_eq!(f.ops[0].dir, DIR_SRC);
    assert_eq!(f.ops[1].dir, DIR_DST);
    let p = ok("dst and src port 53");
    assert_eq!(
        p.ops.iter().map(|o| (o.code, o.dir)).collect::<Vec<_>>(),
        [(OP_PORT, DIR_SRC), (OP_PORT, DIR_DST), (OP_AND, 0)]
    );
}

#[test]
fn postfix_order() {
    assert_eq!(codes("tcp or udp"), [OP_PROTO, OP_PROTO, OP_OR]);
    assert_eq!(codes("not tcp"), [OP_PROTO, OP_NOT]);
    // Left to right, as libpcap: (tcp or udp) and port 53.
    assert_eq!(
        codes("tcp or udp and port 53"),
        [OP_PROTO, OP_PROTO, OP_OR, OP_PORT, OP_AND]
    );
}

// ------------------------------------------------ primitives

#[test]
fn host_either_direction() {
    let f = ok("host 10.0.0.1");
    assert!(f.matches(&tcp4("10.0.0.1", 1, "10.0.0.2", 2)));
    assert!(f.matches(&tcp4("10.0.0.2", 1, "10.0.0.1", 2)));
    assert!(!f.matches(&tcp4("10.0.0.2", 1, "10.0.0.3", 2)));
}

#[test]
fn host_v4_does_not_match_v6_flow() {
    // An IPv6 flow whose first four bytes spell 10.0.0.1.
    let fl = flow(IPPROTO_TCP, "a00:1::", 1, "::2", 2);
    assert_eq!(&fl.src[..4], &[10, 0, 0, 1]);
    assert!(!m("host 10.0.0.1", &fl));
}

#[test]
fn directions() {
    let fl = tcp4("10.0.0.1", 1000, "10.0.0.2", 80);
    assert!(m("src host 10.0.0.1", &fl));
    assert!(!m("src host 10.0.0.2", &fl));
    assert!(m("dst host 10.0.0.2", &fl));
    assert!(!m("dst host 10.0.0.1", &fl));
    assert!(m("src or dst host 10.0.0.2", &fl));
    assert!(m("dst or src host 10.0.0.1", &fl));
    assert!(!m("src and dst host 10.0.0.1", &fl));
    let loop_ = tcp4("10.0.0.1", 1, "10.0.0.1", 2);
    assert!(m("src and dst host 10.0.0.1", &loop_));
    assert!(m("dst and src host 10.0.0.1", &loop_));
    same("src or dst host 10.0.0.1", "host 10.0.0.1");
    same("dst or src port 5", "port 5");
}

#[test]
fn direction_shorthand_without_host() {
    let fl = tcp4("10.0.0.1", 1000, "192.168.1.7", 80);
    same("src 10.0.0.1", "src host 10.0.0.1");
    same("dst 192.168.0.0/16", "dst net 192.168.0.0/16");
    same("src or dst 10.0.0.1", "host 10.0.0.1");
    same("src and dst fe80::1", "src and dst host fe80::1");
    assert!(m("src 10.0.0.1", &fl));
    assert!(!m("dst 10.0.0.1", &fl));
    assert!(m("dst 192.168.0.0/16", &fl));
    assert!(m("src 10.0.0.1 and dst 192.168.1.7", &fl));
    assert!(m("src 10.0.0.9 or dst 192.168.1.7", &fl));
    assert!(!m("src 10.0.0.9 or dst 192.168.1.8", &fl));
}

#[test]
fn net_v4() {
    let fl = tcp4("10.1.2.3", 1, "172.16.5.4", 2);
    assert!(m("net 10.0.0.0/8", &fl));
    assert!(m("net 172.16.0.0/12", &fl));
    assert!(!m("net 172.32.0.0/12", &fl));
    assert!(m("src net 10.1.0.0/16", &fl));
    assert!(!m("dst net 10.1.0.0/16", &fl));
    assert!(m("net 0.0.0.0/0", &fl));
    assert!(!m("net 0.0.0.0/0", &flow(IPPROTO_TCP, "::1", 1, "::2", 2)));
}

#[test]
fn net_without_length_is_a_host() {
    same("net 10.0.0.1", "host 10.0.0.1");
    same("net 10.0.0.1/32", "host 10.0.0.1");
    same("net 2001:db8::1", "host 2001:db8::1");
    assert!(!m("net 10.0.0.1", &tcp4("10.0.0.2", 1, "10.0.0.3", 2)));
}

#[test]
fn net_abbreviated_octets() {
    same("net 10", "net 10.0.0.0/8");
    same("net 10.1", "net 10.1.0.0/16");
    same("net 192.168.1", "net 192.168.1.0/24");
    same("net 10/8", "net 10.0.0.0/8");
    same("net 10.1/24", "net 10.1.0.0/24");
    assert!(m("net 192.168.1", &tcp4("192.168.1.9", 1, "1.1.1.1", 2)));
}

#[test]
fn net_mask() {
    same("net 10.0.0.0 mask 255.0.0.0", "net 10.0.0.0/8");
    same("NET 172.16.0.0 MASK 255.240.0.0", "net 172.16.0.0/12");
    // Non-contiguous masks work too: the kernel just ANDs.
    let f = ok("net 10.0.0.1 mask 255.0.0.255");
    assert!(f.matches(&tcp4("10.9.9.1", 1, "1.1.1.1", 2)));
    assert!(!f.matches(&tcp4("10.9.9.2", 1, "1.1.1.1", 2)));
}

#[test]
fn ipv6_host_and_net() {
    let fl = flow(IPPROTO_UDP, "2001:db8::5", 53, "fe80::1", 5353);
    assert!(m("host fe80::1", &fl));
    assert!(m("dst host fe80::1", &fl));
    assert!(!m("src host fe80::1", &fl));
    assert!(m("net 2001:db8::/32", &fl));
    assert!(m("src net 2001:db8::/32", &fl));
    assert!(!m("net 2001:db9::/32", &fl));
    assert!(m("net fe80::/10", &fl));
    assert!(m("HOST FE80::1", &fl));
    assert!(!m("host fe80::2", &fl));
    // An IPv6 filter never matches an IPv4 flow.
    assert!(!m("net ::/0", &tcp4("1.1.1.1", 1, "2.2.2.2", 2)));
    assert!(m("net ::/0", &fl));
}

#[test]
fn ports() {
    let fl = tcp4("1.1.1.1", 40000, "2.2.2.2", 443);
    assert!(m("port 443", &fl));
    assert!(m("port 40000", &fl));
    assert!(!m("port 80", &fl));
    assert!(m("dst port 443", &fl));
    assert!(!m("src port 443", &fl));
    assert!(m("src port 40000", &fl));
    assert!(!m("src and dst port 443", &fl));
    assert!(m(
        "src and dst port 443",
        &tcp4("1.1.1.1", 443, "2.2.2.2", 443)
    ));
    assert!(m("port 0", &tcp4("1.1.1.1", 0, "2.2.2.2", 1)));
    assert!(m("port 65535", &udp4("1.1.1.1", 65535, "2.2.2.2", 1)));
}

#[test]
fn ports_need_tcp_or_udp() {
    let icmp = flow(IPPROTO_ICMP, "1.1.1.1", 443, "2.2.2.2", 443);
    assert!(!m("port 443", &icmp));
    assert!(m("not port 443", &icmp));
}

#[test]
fn portranges() {
    let f = ok("portrange 1000-2000");
    assert!(f.matches(&tcp4("1.1.1.1", 1000, "2.2.2.2", 1)));
    assert!(f.matches(&tcp4("1.1.1.1", 1, "2.2.2.2", 2000)));
    assert!(!f.matches(&tcp4("1.1.1.1", 999, "2.2.2.2", 2001)));
    assert!(m(
        "dst portrange 1-1023",
        &udp4("1.1.1.1", 5000, "2.2.2.2", 53)
    ));
    assert!(!m(
        "src portrange 1-1023",
        &udp4("1.1.1.1", 5000, "2.2.2.2", 53)
    ));
    same("portrange 53-53", "port 53");
}

#[test]
fn protocols() {
    let t = tcp4("1.1.1.1", 1, "2.2.2.2", 2);
    let u = udp4("1.1.1.1", 1, "2.2.2.2", 2);
    let i = flow(IPPROTO_ICMP, "1.1.1.1", 0, "2.2.2.2", 0);
    let i6 = flow(IPPROTO_ICMPV6, "::1", 0, "::2", 0);
    assert!(m("tcp", &t) && !m("tcp", &u));
    assert!(m("udp", &u) && !m("udp", &t));
    assert!(m("icmp", &i) && !m("icmp", &i6));
    assert!(m("icmp6", &i6) && !m("icmp6", &i));
    assert!(m("ip", &t) && !m("ip", &i6));
    assert!(m("ip6", &i6) && !m("ip6", &t));
}

#[test]
fn proto_primitive() {
    same("proto 6", "tcp");
    same("proto tcp", "tcp");
    same("proto \\udp", "udp");
    // `proto N` is either family; `icmp`/`icmp6` each their own.
    same("proto ICMPv6", "proto 58");
    let v4 = flow(IPPROTO_ICMP, "1.1.1.1", 0, "2.2.2.2", 0);
    let v6 = flow(IPPROTO_ICMP, "fd00::1", 0, "fd00::2", 0);
    assert!(m("proto icmp", &v4) && m("proto icmp", &v6));
    assert!(m("icmp", &v4) && !m("icmp", &v6));
    assert!(m("proto 47", &flow(47, "1.1.1.1", 0, "2.2.2.2", 0)));
    assert!(!m("proto 47", &flow(50, "1.1.1.1", 0, "2.2.2.2", 0)));
}

#[test]
fn ip_proto_means_that_family_too() {
    assert_eq!(codes("ip proto 17"), [OP_FAMILY, OP_PROTO, OP_AND]);
    let u4 = udp4("1.1.1.1", 1, "2.2.2.2", 2);
    let u6 = flow(IPPROTO_UDP, "::1", 1, "::2", 2);
    assert!(m("ip proto 17", &u4));
    assert!(!m("ip proto 17", &u6));
    assert!(m("ip6 proto udp", &u6));
    assert!(!m("ip6 proto udp", &u4));
}

// ------------------------------------------------ implicit protocol-and

#[test]
fn protocol_before_primitive_is_and() {
    same("tcp port 443", "tcp and port 443");
    same("udp dst port 53", "udp and dst port 53");
    same("tcp src portrange 1-1023", "tcp and src portrange 1-1023");
    same("udp host 10.0.0.1", "udp and host 10.0.0.1");
    same("ip6 port 53", "ip6 and port 53");
    let f = ok("tcp port 443");
    assert!(f.matches(&tcp4("1.1.1.1", 1, "2.2.2.2", 443)));
    assert!(!f.matches(&udp4("1.1.1.1", 1, "2.2.2.2", 443)));
    assert!(m("udp dst port 53", &udp4("1.1.1.1", 1, "2.2.2.2", 53)));
    assert!(!m("udp dst port 53", &udp4("1.1.1.1", 53, "2.2.2.2", 1)));
}

#[test]
fn implicit_and_binds_tighter_than_not() {
    // `not tcp port 80` negates the whole primitive, as in tcpdump.
    same("not tcp port 80", "not (tcp and port 80)");
    assert!(m("not tcp port 80", &udp4("1.1.1.1", 1, "2.2.2.2", 80)));
}

#[test]
fn family_qualifier_on_address_is_free() {
    same("ip host 10.0.0.1", "host 10.0.0.1");
    same("ip6 net 2001:db8::/32", "net 2001:db8::/32");
    same("ip src 10.0.0.1", "src host 10.0.0.1");
}

// ------------------------------------------------ operators

#[test]
fn and_or_not_symbols() {
    same("tcp && port 80", "tcp and port 80");
    same("tcp || udp", "tcp or udp");
    same("!tcp", "not tcp");
    same("! ( tcp||udp )", "not (tcp or udp)");
    same("tcp&&port 80", "tcp and port 80");
}

#[test]
fn not_inverts() {
    let t = tcp4("1.1.1.1", 1, "2.2.2.2", 2);
    assert!(!m("not tcp", &t));
    assert!(m("not udp", &t));
    assert!(m("not not tcp", &t));
    assert!(!m("not not not tcp", &t));
}

#[test]
fn double_not_cancels() {
    assert_eq!(codes("not not tcp"), [OP_PROTO]);
    assert_eq!(codes("! ! ! tcp"), [OP_PROTO, OP_NOT]);
    // Only a NOT that ends the operand cancels: here it is inside.
    assert_eq!(
        codes("not (not tcp and udp)"),
        [OP_PROTO, OP_NOT, OP_PROTO, OP_AND, OP_NOT]
    );
}

#[test]
fn and_and_or_have_equal_precedence_like_tcpdump() {
    // libpcap: (tcp or udp) and port 53
    same("tcp or udp and port 53", "(tcp or udp) and port 53");
    assert!(!m(
        "tcp or udp and port 53",
        &tcp4("1.1.1.1", 1, "2.2.2.2", 80)
    ));
    assert!(m(
        "tcp or udp and port 53",
        &udp4("1.1.1.1", 1, "2.2.2.2", 53)
    ));
    // (port 53 and udp) or tcp
    assert!(m(
        "port 53 and udp or tcp",
        &tcp4("1.1.1.1", 1, "2.2.2.2", 80)
    ));
}

#[test]
fn not_binds_tighter_than_and() {
    same("not tcp and port 80", "(not tcp) and port 80");
    assert!(m("not tcp and port 80", &udp4("1.1.1.1", 1, "2.2.2.2", 80)));
    assert!(!m(
        "not tcp and port 80",
        &udp4("1.1.1.1", 1, "2.2.2.2", 81)
    ));
    assert!(!m("not tcp or udp", &tcp4("1.1.1.1", 1, "2.2.2.2", 80)));
}

#[test]
fn left_associative() {
    assert_eq!(codes("tcp or udp or icmp"), [5, 5, OP_OR, 5, OP_OR]);
    assert_eq!(
        codes("tcp and port 1 and port 2"),
        [5, 7, OP_AND, 7, OP_AND]
    );
}

#[test]
fn parentheses_override_precedence() {
    let t80 = tcp4("1.1.1.1", 1, "2.2.2.2", 80);
    // Without parentheses it is (tcp or udp) and port 53: false here.
    assert!(!m("tcp or udp and port 53", &t80));
    assert!(m("tcp or (udp and port 53)", &t80));
    assert!(m("(tcp or udp) and (port 53 or port 80)", &t80));
    assert!(m("((((tcp))))", &t80));
    assert!(!m("not (tcp or udp)", &t80));
}

// ------------------------------------------------ value lists

#[test]
fn host_list() {
    same(
        "host 10.0.0.1 or 10.0.0.2",
        "host 10.0.0.1 or host 10.0.0.2",
    );
    let f = ok("host 10.0.0.1 or 10.0.0.2 or 10.0.0.3");
    assert!(f.matches(&tcp4("10.0.0.3", 1, "9.9.9.9", 2)));
    assert!(!f.matches(&tcp4("10.0.0.4", 1, "9.9.9.9", 2)));
}

#[test]
fn port_list() {
    same("port 80 or 443", "port 80 or port 443");
    same("dst port 80 or 443", "dst port 80 or dst port 443");
    same(
        "portrange 1-10 or 20-30",
        "portrange 1-10 or portrange 20-30",
    );
    assert!(m("port 80 or 443", &tcp4("1.1.1.1", 1, "2.2.2.2", 443)));
    assert!(!m(
        "src port 80 or 443",
        &tcp4("1.1.1.1", 1, "2.2.2.2", 443)
    ));
}

#[test]
fn list_reuses_protocol_too() {
    // As in tcpdump: the protocol is one of the qualifiers.
    same("tcp port 80 or 443", "tcp port 80 or tcp port 443");
    assert!(!m(
        "tcp port 80 or 443",
        &udp4("1.1.1.1", 1, "2.2.2.2", 443)
    ));
    assert!(m("tcp port 80 or 443", &tcp4("1.1.1.1", 1, "2.2.2.2", 443)));
}

#[test]
fn list_reuses_direction_and_kind() {
    same(
        "src host 10.0.0.1 or 10.0.0.2",
        "src host 10.0.0.1 or src host 10.0.0.2",
    );
    same(
        "src 10.0.0.1 or 10.0.0.0/8",
        "src host 10.0.0.1 or src net 10.0.0.0/8",
    );
    same(
        "net 10.0.0.0/8 or 192.168.0.0/16",
        "net 10.0.0.0/8 or net 192.168.0.0/16",
    );
    same(
        "src and dst host 10.0.0.1 or 10.0.0.2",
        "src and dst host 10.0.0.1 or src and dst host 10.0.0.2",
    );
    same("proto 6 or 17", "tcp or udp");
    same("proto 6 or \\udp", "tcp or udp");
    same("ip proto 6 or 17", "ip proto 6 or ip proto 17");
    same("host fe80::1 or ::1", "host fe80::1 or host ::1");
}

#[test]
fn list_with_and_not_and_parens() {
    same(
        "host 10.0.0.1 and not 10.0.0.2",
        "host 10.0.0.1 and not host 10.0.0.2",
    );
    same(
        "host 10.0.0.1 or (10.0.0.2 or 10.0.0.3)",
        "host 10.0.0.1 or (host 10.0.0.2 or host 10.0.0.3)",
    );
    same("port 1 and 2", "port 1 and port 2");
    // The most recent primitive wins.
    same(
        "host 10.0.0.1 and port 80 or 443",
        "host 10.0.0.1 and port 80 or port 443",
    );
}

// ------------------------------------------------ case and spacing

#[test]
fn keywords_case_insensitive() {
    same(
        "TCP PORT 80 AND HOST 10.0.0.1",
        "tcp port 80 and host 10.0.0.1",
    );
    same("Src Or Dst Host 10.0.0.1", "host 10.0.0.1");
    same("NOT Udp OR Ip6", "not udp or ip6");
    same("PortRange 1-2", "portrange 1-2");
    same("IP PROTO \\TCP", "ip proto 6");
}

#[test]
fn spacing_is_free() {
    same("(tcp)and(port 80)", "tcp and port 80");
    same("  tcp\tand\nport 80  ", "tcp and port 80");
}

// ------------------------------------------------ length limit

#[test]
fn too_long() {
    // Hosts of alternating directions do not fold: 129 of them are 257 ops.
    let list: Vec<String> = (1..=129)
        .map(|i| {
            let dir = if i % 2 == 0 { "src" } else { "dst" };
            format!("{dir} host 10.0.{}.{}", i / 200, i % 200)
        })
        .collect();
    let expr = list.join(" or ");
    assert_eq!(
        err(&expr),
        (
            1,
            "filter too long: 257 operations, the kernel takes at most 256; \
             a portrange A-B or a net A/N can replace a list"
                .into()
        )
    );
    // 128 hosts and a not: exactly 256 fits.
    let fits = format!("not ({})", list[..128].join(" or "));
    let f = ok(&fits);
    assert_eq!(f.ops.len(), MAX_OPS);
}

#[test]
fn port_lists_become_port_sets() {
    let list: Vec<String> = (1..=17).map(|p| (p * 10).to_string()).collect();
    let f = ok(&format!("host 10.1.2.3 and (port {})", list.join(" or ")));
    // host, one set of 17 ports, AND.
    assert_eq!(codes(&f.text), [OP_NET, OP_PORTSET, OP_AND], "{:?}", f.ops);
    assert_eq!(f.ports.len(), 17);
    for p in 1..=17u16 {
        assert!(f.matches(&tcp4("10.1.2.3", 5000, "2.2.2.2", p * 10)), "{p}");
        assert!(f.matches(&udp4("2.2.2.2", p * 10, "10.1.2.3", 5000)), "{p}");
        assert!(!f.matches(&tcp4("10.1.2.3", 5000, "2.2.2.2", p * 10 + 1)));
        assert!(!f.matches(&tcp4("10.1.2.3", 5000, "2.2.2.2", p * 10 - 1)));
    }
    assert!(!f.matches(&tcp4("10.1.2.4", 5000, "2.2.2.2", 10)));
    // Directions do not mix; ranges merge with single ports.
    let f = ok("src port 1 or dst port 2");
    assert_eq!(f.ops.len(), 3);
    let f = ok("port 1 or portrange 100-200 or port 7");
    assert_eq!(f.ops.len(), 1);
    assert!(f.matches(&tcp4("1.1.1.1", 150, "2.2.2.2", 9)));
    assert!(f.matches(&tcp4("1.1.1.1", 9, "2.2.2.2", 7)));
    assert!(!f.matches(&tcp4("1.1.1.1", 9, "2.2.2.2", 201)));
    // `and` binds as before: (port 1 or port 2) and tcp.
    let f = ok("port 1 or 2 and tcp");
    assert!(!f.matches(&udp4("1.1.1.1", 9, "2.2.2.2", 1)));
    assert!(f.matches(&tcp4("1.1.1.1", 9, "2.2.2.2", 2)));
}

/// A list of any length is one op; its ranges are sorted and joined
/// where they touch, and the kernel's room for them is checked.
#[test]
fn long_lists_are_one_set_op() {
    let list: Vec<String> = (0..1000).map(|i| (7000 + 3 * i).to_string()).collect();
    let f = ok(&format!("port {}", list.join(" or ")));
    assert_eq!(f.ops.len(), 1);
    assert_eq!(f.ops[0].value2, 1000);
    for i in [0u16, 1, 500, 998, 999] {
        let p = 7000 + 3 * i;
        assert!(f.matches(&udp4("1.1.1.1", 1, "2.2.2.2", p)), "{p}");
        assert!(!f.matches(&udp4("1.1.1.1", 1, "2.2.2.2", p + 1)), "{p}");
    }
    assert!(!f.matches(&udp4("1.1.1.1", 1, "2.2.2.2", 6999)));
    // Neighbours and overlaps join: 3 ranges, not 6.
    let f = ok("port 5 or 3 or 4 or portrange 10-20 or 15 or portrange 21-22 or 100");
    assert_eq!(f.ports, [3 | 5 << 16, 10 | 22 << 16, 100 | 100 << 16]);
    let many: Vec<String> = (0..=MAX_PORT_RANGES).map(|i| (2 * i).to_string()).collect();
    assert_eq!(
        err(&format!("port {}", many.join(" or "))),
        (
            1,
            "filter lists too many ports: 1025 separate ranges, the kernel takes at most 1024; \
             a portrange A-B can replace a list"
                .into()
        )
    );
    let hosts: Vec<String> = (0..=MAX_NETS)
        .map(|i| format!("10.9.{}.{}", i / 100, i % 100 * 2))
        .collect();
    assert_eq!(
        err(&format!("host {}", hosts.join(" or "))).1,
        "filter lists too many addresses: 257 separate networks, the kernel takes at most \
         256; a net A/N can replace a list"
    );
}

#[test]
fn host_and_net_lists_become_sets() {
    let hosts: Vec<String> = (0..200)
        .map(|i| format!("10.7.{}.{}", i / 100, i % 100 * 2))
        .collect();
    let f = ok(&format!(
        "src host {} or dst net 192.168.0.0/16",
        hosts.join(" or ")
    ));
    assert_eq!(codes(&f.text), [OP_NETSET, OP_NET, OP_OR]);
    for i in [0, 1, 99, 100, 199] {
        let h = format!("10.7.{}.{}", i / 100, i % 100 * 2);
        assert!(f.matches(&tcp4(&h, 1, "2.2.2.2", 2)), "{h}");
        assert!(!f.matches(&tcp4("2.2.2.2", 1, &h, 2)), "{h}");
        let next = format!("10.7.{}.{}", i / 100, i % 100 * 2 + 1);
        assert!(!f.matches(&tcp4(&next, 1, "2.2.2.2", 2)), "{next}");
    }
    assert!(f.matches(&tcp4("2.2.2.2", 1, "192.168.9.9", 2)));
    // Networks and hosts of one family, nested or not; IPv6 apart.
    let f = ok("net 10.0.0.0/8 or host 10.1.2.3 or net 172.16.0.0/12 or host 1.2.3.4");
    assert_eq!(codes(&f.text), [OP_NETSET]);
    assert_eq!(f.nets.len(), 3);
    for (a, want) in [
        ("10.200.1.1", true),
        ("11.0.0.0", false),
        ("172.31.255.255", true),
        ("172.32.0.0", false),
        ("1.2.3.4", true),
        ("1.2.3.5", false),
        ("9.255.255.255", false),
    ] {
        assert_eq!(f.matches(&udp4("5.5.5.5", 1, a, 2)), want, "{a}");
    }
    let f = ok("host 2001:db8::1 or net 2001:db8:1::/48 or host ::1");
    assert_eq!(codes(&f.text), [OP_NETSET]);
    for (a, want) in [
        ("2001:db8::1", true),
        ("2001:db8::2", false),
        ("2001:db8:1:ffff::9", true),
        ("2001:db8:2::", false),
        ("::1", true),
        ("::", false),
    ] {
        let fl = flow(IPPROTO_UDP, "2001:db8:9::9", 1, a, 2);
        assert_eq!(f.matches(&fl), want, "{a}");
        assert!(!f.matches(&tcp4("10.0.0.1", 1, "10.0.0.2", 2)));
    }
    // Families do not mix, nor do masks with holes.
    assert_eq!(codes("host 10.0.0.1 or host ::1"), [OP_NET, OP_NET, OP_OR]);
    assert_eq!(
        codes("net 10.0.0.0 mask 255.0.255.0 or host 10.0.0.1"),
        [OP_NET, OP_NET, OP_OR]
    );
}

/// `tcp port 80 or 443` is `tcp port 80 or tcp port 443`: the shared
/// protocol test is kept once, before one set.
#[test]
fn shared_tests_factor_out_of_lists() {
    let list: Vec<String> = (0..300).map(|i| (1000 + 7 * i).to_string()).collect();
    let f = ok(&format!("tcp port {}", list.join(" or ")));
    assert_eq!(codes(&f.text), [OP_PROTO, OP_PORTSET, OP_AND]);
    assert!(f.matches(&tcp4("1.1.1.1", 9, "2.2.2.2", 1007)));
    assert!(!f.matches(&udp4("1.1.1.1", 9, "2.2.2.2", 1007)));
    assert!(!f.matches(&tcp4("1.1.1.1", 9, "2.2.2.2", 1008)));
    let f = ok("host 10.0.0.1 and port 1 or host 10.0.0.1 and port 2");
    // `and`, `or` left to right: ((h and p1) or h) and p2; nothing shared.
    assert_eq!(f.ops.len(), 7);
    let f = ok("(host 10.0.0.1 and port 1) or (host 10.0.0.1 and port 2)");
    assert_eq!(codes(&f.text), [OP_NET, OP_PORTSET, OP_AND]);
}

/// A folded list matches exactly what the same tests unfolded match,
/// unknowns included: `p and p and p` is `p`, and keeps the compiler from
/// folding.
#[test]
fn folded_lists_match_as_unfolded() {
    use tracer_abi::{FLOW_L4_HALF, FLOW_L4_SHORT};
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for _ in 0..300 {
        let dir = ["", "src ", "dst "][next(3) as usize];
        let terms: Vec<String> = (0..1 + next(12))
            .map(|_| {
                let (a, b) = (next(40) as u16, next(40) as u16);
                if next(3) == 0 {
                    format!("{dir}portrange {a}-{b}")
                } else {
                    format!("{dir}port {a}")
                }
            })
            .collect();
        let folded = ok(&terms.join(" or "));
        let plain: Vec<String> = terms
            .iter()
            .map(|t| format!("({t} and {t} and {t})"))
            .collect();
        let plain = ok(&plain.join(" or "));
        assert!(!plain.ops.iter().any(|o| o.code == OP_PORTSET));
        for _ in 0..40 {
            let mut fl = tcp4("1.1.1.1", next(42) as u16, "2.2.2.2", next(42) as u16);
            fl.flags |= [0, FLOW_L4_SHORT, FLOW_L4_SHORT | FLOW_L4_HALF][next(3) as usize];
            assert_eq!(folded.matches(&fl), plain.matches(&fl), "{terms:?} {fl:?}");
        }
    }
}

// ------------------------------------------------ errors

fn check(expr: &str, column: usize, message: &str) {
    assert_eq!(err(expr), (column, message.to_string()), "{expr:?}");
}

#[test]
fn error_unknown_words() {
    check("foo", 1, "unknown word 'foo'");
    check("tcp and fooo", 9, "unknown word 'fooo'");
    check(
        "arp",
        1,
        "tcpdump's 'arp' is not supported here; use host, net, port, portrange, \
         proto, protochain, tcp, udp, sctp, icmp, icmp6, ip or ip6",
    );
    check(
        "tcp and VLAN",
        9,
        "tcpdump's 'VLAN' is not supported here; use host, net, port, portrange, \
         proto, protochain, tcp, udp, sctp, icmp, icmp6, ip or ip6",
    );
    check(
        "mask 255.0.0.0",
        1,
        "'mask' must follow a network, as in 'net 10.0.0.0 mask 255.0.0.0'",
    );
}

#[test]
fn error_missing_operand() {
    check("host", 5, "expected an address after 'host'");
    check("tcp and host", 13, "expected an address after 'host'");
    check(
        "host and tcp",
        6,
        "expected an address after 'host', found 'and'",
    );
    check(
        "host tcp",
        6,
        "expected an address after 'host', found 'tcp'",
    );
    check(
        "host foo",
        6,
        "expected an address after 'host', found 'foo'",
    );
    check("net", 4, "expected a network after 'net'");
    check("port", 5, "expected a port number after 'port'");
    check(
        "port )",
        6,
        "expected a port number after 'port', found ')'",
    );
    check(
        "portrange",
        10,
        "expected a port range like 1000-2000 after 'portrange'",
    );
    check(
        "proto",
        6,
        "expected a protocol number or name (tcp, udp, sctp, icmp, icmp6) after 'proto'",
    );
    check(
        "src",
        4,
        "expected 'host', 'net', 'port', 'portrange' or an address after 'src'",
    );
    check(
        "src or dst",
        11,
        "expected 'host', 'net', 'port', 'portrange' or an address after 'dst'",
    );
    check(
        "tcp src",
        8,
        "expected 'host', 'net', 'port', 'portrange' or an address after 'src'",
    );
    check(
        "src or tcp",
        5,
        "expected 'host', 'net', 'port', 'portrange' or an address after 'src', found 'or'",
    );
}

#[test]
fn error_bad_port() {
    check(
        "port no-such-svc",
        6,
        "expected a port number after 'port', found 'no-such-svc'",
    );
    check("port 0x10000", 6, "port 0x10000 is out of range (0-65535)");
    check("port 65536", 6, "port 65536 is out of range (0-65535)");
    check(
        "port 99999999999999999999",
        6,
        "port 99999999999999999999 is out of range (0-65535)",
    );
    check(
        "port 80 or 70000",
        12,
        "port 70000 is out of range (0-65535)",
    );
    check(
        "port 80-90",
        6,
        "expected a port number after 'port', found '80-90' \
         (for a range write 'portrange 80-90')",
    );
    check(
        "port +80",
        6,
        "expected a port number after 'port', found '+80'",
    );
    check(
        "port -1",
        6,
        "expected a port number after 'port', found '-1'",
    );
}

#[test]
fn error_bad_portrange() {
    check(
        "portrange 1-70000",
        13,
        "port 70000 is out of range (0-65535)",
    );
    check(
        "portrange 70000-70001",
        11,
        "port 70000 is out of range (0-65535)",
    );
    check(
        "portrange 1-",
        11,
        "expected a port range like 1000-2000 after 'portrange', found '1-'",
    );
    check(
        "portrange a-b",
        11,
        "expected a port range like 1000-2000 after 'portrange', found 'a-b'",
    );
}

#[test]
fn error_bad_address() {
    check("host 10.0.0.256", 6, "bad IPv4 address '10.0.0.256'");
    check("host 10.0.0", 6, "bad IPv4 address '10.0.0'");
    check("host fe80::g", 6, "bad IPv6 address 'fe80::g'");
    check(
        "host 1:2:3:4:5:6:7:8:9",
        6,
        "bad IPv6 address '1:2:3:4:5:6:7:8:9'",
    );
    check("net 10.0.0.300/8", 5, "bad IPv4 address '10.0.0.300'");
    check("net 2001:db8:::/32", 5, "bad IPv6 address '2001:db8:::'");
    check("src 10.0.0.256", 5, "bad IPv4 address '10.0.0.256'");
    check(
        "src 80",
        5,
        "expected an address after 'src', found '80' (for a port write 'port 80')",
    );
    check(
        "host 10.0.0.1 or 10.0.0.999",
        18,
        "bad IPv4 address '10.0.0.999'",
    );
    check(
        "host 10.0.0.0/8",
        6,
        "'host' takes a single address; for a network write 'net 10.0.0.0/8'",
    );
    check("net foo", 5, "expected a network after 'net', found 'foo'");
}

#[test]
fn error_bad_prefix() {
    check(
        "net 10.0.0.0/33",
        14,
        "bad prefix length '33': IPv4 takes 0-32",
    );
    check(
        "net 2001:db8::/129",
        16,
        "bad prefix length '129': IPv6 takes 0-128",
    );
    check("net 10.0.0.0/", 14, "bad prefix length '': IPv4 takes 0-32");
    check(
        "net 10.0.0.0/x",
        14,
        "bad prefix length 'x': IPv4 takes 0-32",
    );
    check(
        "net 10.0.0.0/+8",
        14,
        "bad prefix length '+8': IPv4 takes 0-32",
    );
}

#[test]
fn error_non_network_bits() {
    check(
        "net 10.0.0.1/8",
        5,
        "non-network bits set in '10.0.0.1/8'; the network is 10.0.0.0/8",
    );
    check(
        "net 2001:db8::1/32",
        5,
        "non-network bits set in '2001:db8::1/32'; the network is 2001:db8::/32",
    );
    check(
        "net 10.0.0.1 mask 255.0.0.0",
        5,
        "non-network bits set in '10.0.0.1'; the network is 10.0.0.0 mask 255.0.0.0",
    );
    check(
        "net 10.1/8",
        5,
        "non-network bits set in '10.1/8'; the network is 10.0.0.0/8",
    );
}

#[test]
fn error_bad_mask() {
    check(
        "net 10.0.0.0 mask",
        18,
        "expected a netmask like 255.255.0.0 after 'mask'",
    );
    check(
        "net 10.0.0.0 mask 255.0.0",
        19,
        "expected a netmask like 255.255.0.0 after 'mask', found '255.0.0'",
    );
    check(
        "net fe80:: mask ffff::",
        12,
        "'mask' only works with IPv4; write the IPv6 network as ADDR/LEN",
    );
}

#[test]
fn error_bad_proto() {
    check(
        "proto 256",
        7,
        "protocol number 256 is out of range (0-255)",
    );
    check(
        "proto gre",
        7,
        "expected a protocol number or name (tcp, udp, sctp, icmp, icmp6) after 'proto', found 'gre'",
    );
    check("src proto 6", 1, "'proto' takes no direction");
    check(
        "tcp proto 6",
        1,
        "'proto' can only follow 'ip' or 'ip6', not 'tcp'",
    );
}

#[test]
fn error_contradictory_qualifiers() {
    check(
        "icmp port 80",
        6,
        "'port' only applies to tcp, udp and sctp, not 'icmp'",
    );
    check(
        "icmp6 dst portrange 1-2",
        11,
        "'portrange' only applies to tcp, udp and sctp, not 'icmp6'",
    );
    check(
        "ip host fe80::1",
        9,
        "'fe80::1' is IPv6, but 'ip' asks for IPv4; use 'ip6'",
    );
    check(
        "ip6 net 10.0.0.0/8",
        9,
        "'10.0.0.0/8' is IPv4, but 'ip6' asks for IPv6; use 'ip'",
    );
}

#[test]
fn error_bare_value_without_qualifier() {
    check(
        "10.0.0.1",
        1,
        "'10.0.0.1' needs a qualifier, as in 'host 10.0.0.1'",
    );
    check("tcp and 80", 9, "'80' needs a qualifier, as in 'port 80'");
    check(
        "fe80::1",
        1,
        "'fe80::1' needs a qualifier, as in 'host fe80::1'",
    );
    check(
        "10.0.0.0/8",
        1,
        "'10.0.0.0/8' needs a qualifier, as in 'net 10.0.0.0/8'",
    );
    check("1-2", 1, "'1-2' needs a qualifier, as in 'portrange 1-2'");
    check("\\udp", 1, "'\\udp' needs a qualifier, as in 'proto \\udp'");
    // A lone protocol ends the list: nothing to repeat.
    check(
        "port 80 or tcp or 443",
        19,
        "'443' needs a qualifier, as in 'port 443'",
    );
}

#[test]
fn error_parentheses() {
    check("(tcp", 5, "unclosed '(' opened at column 1");
    check(
        "tcp and (udp or (icmp)",
        23,
        "unclosed '(' opened at column 9",
    );
    check("tcp)", 4, "unexpected ')'");
    check(")", 1, "unexpected ')'");
    check("(tcp))", 6, "unexpected ')'");
    check("tcp and ()", 9, "empty parentheses");
    check("( )", 1, "empty parentheses");
    check("(tcp udp)", 6, "expected 'and', 'or' or ')' before 'udp'");
    check("(", 2, "expected an expression after '('");
}

#[test]
fn error_dangling_operators() {
    check("tcp and", 8, "expected an expression after 'and'");
    check("tcp or", 7, "expected an expression after 'or'");
    check("tcp &&", 7, "expected an expression after '&&'");
    check("not", 4, "expected an expression after 'not'");
    check("tcp and not", 12, "expected an expression after 'not'");
    check(
        "tcp and or udp",
        9,
        "expected an expression after 'and', found 'or'",
    );
    check("and tcp", 1, "expected an expression, found 'and'");
    check(
        "(tcp or )",
        9,
        "expected an expression after 'or', found ')'",
    );
    check("tcp & udp", 5, "unexpected '&'; write '&&' or 'and'");
    check("tcp | udp", 5, "unexpected '|'; write '||' or 'or'");
}

#[test]
fn error_trailing_garbage() {
    check("tcp udp", 5, "expected 'and' or 'or' before 'udp'");
    check(
        "host 10.0.0.1 10.0.0.2",
        15,
        "expected 'and' or 'or' before '10.0.0.2'",
    );
    check("tcp 80", 5, "expected 'and' or 'or' before '80'");
    check("port 80 (tcp)", 9, "expected 'and' or 'or' before '('");
}

#[test]
fn error_columns_count_characters_not_bytes() {
    // 'é' is two bytes but one column.
    check("tcp and é", 9, "unknown word 'é'");
    check("  foo", 3, "unknown word 'foo'");
}

// ------------------------------------------------ robustness

#[test]
fn never_panics_and_always_well_formed() {
    // Every sequence of up to three tokens from a mixed vocabulary either
    // fails with an in-range column or compiles to a valid program.
    let vocab = [
        "tcp",
        "udp",
        "ip6",
        "host",
        "net",
        "port",
        "portrange",
        "proto",
        "src",
        "dst",
        "and",
        "or",
        "not",
        "!",
        "(",
        ")",
        "10.0.0.1",
        "10.0.0.0/8",
        "fe80::1",
        "80",
        "1-2",
        "mask",
        "255.0.0.0",
        "&&",
        "foo",
    ];
    let n = vocab.len();
    for i in 0..n * n * n {
        let expr = [vocab[i % n], vocab[i / n % n], vocab[i / n / n]].join(" ");
        match compile(&expr) {
            Ok(f) => assert!(well_formed(&f.ops), "{expr:?}"),
            Err(e) => assert!(
                e.column >= 1 && e.column <= expr.chars().count() + 1,
                "{expr:?}: {e}"
            ),
        }
    }
}

#[test]
fn port_on_fragment_flow() {
    // A non-first fragment has no ports: no port test matches it, not
    // even `port 0` (as in tcpdump).
    let mut frag = tcp4("1.1.1.1", 0, "2.2.2.2", 0);
    frag.flags = FLOW_FRAGMENT;
    assert!(!m("port 80", &frag));
    assert!(!m("port 0", &frag));
    assert!(m("not port 80", &frag));
}

/// tcpdump's meanings (checked against libpcap 1.10 by hand): named
/// and hex ports, `portrange` in either order or as one port, `sctp`
/// and `port` covering SCTP, `icmp`/`icmp6` each in its own family.
#[test]
fn tcpdump_port_forms_and_protocol_families() {
    same("portrange 81-79", "portrange 79-81");
    same("portrange 80", "port 80");
    same("port 0x50", "port 80");
    same("portrange 0x50-0x51", "portrange 80-81");
    let sctp = flow(IPPROTO_SCTP, "10.0.0.1", 5000, "10.0.0.2", 80);
    assert!(m("port 80", &sctp));
    assert!(m("sctp port 80", &sctp));
    assert!(m("sctp and dst port 80", &sctp));
    assert!(!m("tcp port 80", &sctp));
    assert!(m("proto 132", &sctp) && m("proto sctp", &sctp));
    // ICMP's number in the other family is not ICMP.
    let v6_proto1 = flow(IPPROTO_ICMP, "fd00::1", 0, "fd00::2", 0);
    assert!(!m("icmp", &v6_proto1));
    assert!(m("proto 1", &v6_proto1), "proto N is either family");
    let v4_proto58 = flow(IPPROTO_ICMPV6, "10.0.0.1", 0, "10.0.0.2", 0);
    assert!(!m("icmp6", &v4_proto58));
    assert!(m("icmp", &flow(IPPROTO_ICMP, "10.0.0.1", 0, "10.0.0.2", 0)));
}

#[test]
fn service_names_come_from_an_etc_services_text() {
    let text = "# comment\nhttp\t\t80/tcp\t\twww # WorldWideWeb\n\
                domain\t\t53/tcp\ndomain\t\t53/udp\nntp\t\t123/udp\nfoo\t\t9/ddp\n";
    let port = |n: &str| services_lookup(text, n).map(|s| (s.port, s.only));
    assert_eq!(port("http"), Some((80, Some(IPPROTO_TCP))));
    assert_eq!(port("www"), Some((80, Some(IPPROTO_TCP))));
    assert_eq!(
        port("domain"),
        Some((53, None)),
        "tcp and udp: any protocol"
    );
    assert_eq!(port("ntp"), Some((123, Some(IPPROTO_UDP))));
    assert_eq!(port("foo"), None, "not tcp or udp");
    assert_eq!(
        services_lookup(text, "WorldWideWeb"),
        None,
        "comments are not aliases"
    );
}

// ------------------------------------------------ tcpdump's header rules,
// on bytes through the kernel's own parse (`tracer_abi::packet`)

/// IPv6 from fd00::1 to fd00::2 with `chain` (extension headers, already
/// built) in front of a TCP header 80 -> 80.
fn v6_packet(first: u8, chain: &[u8]) -> Flow {
    let mut p = vec![0x60, 0, 0, 0, 0, 0, first, 64];
    p.extend("fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    p.extend("fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
    p.extend(chain);
    p.extend([
        0, 80, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    let len = (p.len() - 40) as u16;
    p[4..6].copy_from_slice(&len.to_be_bytes());
    tracer_abi::packet::flow_of(&p, 0x50).expect("IPv6")
}

#[test]
fn a_hop_by_hop_header_hides_the_transport_as_in_tcpdump() {
    // Hop-by-hop (next: TCP), 8 bytes of PadN.
    let f = v6_packet(0, &[6, 0, 1, 4, 0, 0, 0, 0]);
    assert_eq!(f.proto, IPPROTO_TCP, "text and JSON still show TCP");
    assert!(!m("tcp", &f) && !m("ip6 and tcp", &f) && !m("tcp port 80", &f));
    assert!(
        !m("port 80", &f),
        "tcpdump's port reads the fixed header only"
    );
    assert!(m("proto 0", &f) && m("ip6 proto 0", &f));
    assert!(m("ip6 protochain 6", &f) && m("protochain 0", &f));
    assert!(!m("ip protochain 6", &f) && !m("ip6 protochain 17", &f));
    // No extension header: all of them hold.
    let plain = v6_packet(6, &[]);
    assert!(m("tcp port 80", &plain) && m("ip6 protochain 6", &plain));
}

#[test]
fn behind_a_fragment_header_proto_matches_and_port_does_not() {
    // First fragment (offset 0, more fragments) of TCP 80.
    let f = v6_packet(44, &[6, 0, 0, 1, 0, 0, 0, 7]);
    assert!(
        m("tcp", &f) && m("proto 6", &f),
        "libpcap reads ip6[40] too"
    );
    assert!(!m("port 80", &f), "but not the ports behind it");
    assert!(m("ip6 protochain 44", &f) && m("ip6 protochain 6", &f));
}

#[test]
fn protochain_is_capped_at_chain_cap_extension_headers() {
    let cap = tracer_abi::packet::CHAIN_CAP;
    // CHAIN_CAP + 1 destination-options headers, the last naming TCP.
    let mut chain = Vec::new();
    for k in 0..=cap {
        chain.extend([if k == cap { 6 } else { 60 }, 0, 1, 4, 0, 0, 0, 0]);
    }
    let f = v6_packet(60, &chain);
    assert!(m("ip6 protochain 60", &f));
    assert!(!m("ip6 protochain 6", &f), "TCP is past the cap");
    let f = v6_packet(60, &chain[8..]);
    assert!(m("ip6 protochain 6", &f), "CHAIN_CAP headers are within it");
}

#[test]
fn a_cut_header_is_unknown_not_false() {
    // TCP whose header ends after 3 bytes: the source port only.
    let mut p = vec![
        0x45, 0, 0, 23, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    p.extend([0, 80, 0]);
    let f = tracer_abi::packet::flow_of(&p, 0x50).unwrap();
    assert!(m("src port 80", &f), "the source port is there");
    assert!(
        !m("dst port 80", &f) && !m("not dst port 80", &f),
        "the other is unknown"
    );
    assert!(m("tcp or dst port 80", &f) && !m("udp and dst port 80", &f));
    assert!(m("port 80", &f), "the source port decides it");
}

#[test]
fn named_ports_keep_their_protocols_as_in_libpcap() {
    if super::ports::service_port("http").is_none() {
        return; // no /etc/services here
    }
    let sctp80 = flow(IPPROTO_SCTP, "10.0.0.1", 1, "10.0.0.2", 80);
    assert!(m("port 80", &sctp80) && !m("port http", &sctp80));
    assert!(m("port http", &tcp4("10.0.0.1", 1, "10.0.0.2", 80)));
    assert_eq!(err("udp port http").1, "port 'http' is tcp, not udp");
}
