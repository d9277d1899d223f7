//! Packets that end before their L4 header: no field of theirs may come
//! from another packet. The kernel reuses packet buffers, so the bytes
//! past a short packet's end are often an earlier packet's ports; the
//! drop, its filter and its JSON must show none (null ports, no `port`
//! match), on all three hooks, for IPv4 and IPv6, as tcpdump does.
//!
//! A raw socket (IP_HDRINCL; Python, from Debian's python3) sends, from
//! one namespace to a closed host in another, a full TCP SYN 80 -> 80
//! and a full UDP 7777 -> 7777 (both dropped: no socket), each followed
//! by a bare IP header claiming that protocol (dropped: too short).

use serde_json::Value;
use tracer_tests::{drops, prefix, start_bin, tracer_release_bin, Netlab, TracerRun, WITH_TRACEFS};

fn watch(hook: &str, netns: &str, expr: Option<&str>) -> TracerRun {
    let wrapper = if hook == "tracepoint" {
        WITH_TRACEFS
    } else {
        &[]
    };
    let mut args = vec!["watch", "--netns", netns, "--hook", hook, "--all"];
    args.extend(expr);
    // The optimized binary: the file starts fifteen tracers one after
    // another, each seconds to start as a debug build.
    start_bin(&tracer_release_bin(), wrapper, &args)
}

const SENDER: &str = r#"
import socket, struct, sys
fam, dst = sys.argv[1], sys.argv[2]
def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
def l4(proto, src, dst, sport, dport):
    if proto == 6:
        h = struct.pack('!HHIIBBHHH', sport, dport, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
    else:
        h = struct.pack('!HHHH', sport, dport, 8, 0)
    if fam == '4':
        pseudo = src + dst + struct.pack('!BBH', 0, proto, len(h))
    else:
        pseudo = src + dst + struct.pack('!IxxxB', len(h), proto)
    c = csum(pseudo + h)
    at = 16 if proto == 6 else 6
    return h[:at] + struct.pack('!H', c) + h[at + 2:]
if fam == '4':
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    src = socket.inet_aton(sys.argv[3]); d = socket.inet_aton(dst)
    def ip(proto, payload):
        # tot_len and the checksum are filled in by the kernel.
        return struct.pack('!BBHHHBBH4s4s', 0x45, 0, 0, 1, 0, 64, proto, 0, src, d) + payload
    send = lambda p: s.sendto(p, (dst, 0))
else:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    src = socket.inet_pton(socket.AF_INET6, sys.argv[3]); d = socket.inet_pton(socket.AF_INET6, dst)
    def ip(proto, payload):
        return struct.pack('!IHBB16s16s', 6 << 28, len(payload), proto, 64, src, d) + payload
    send = lambda p: s.sendto(p, (dst, 0))
for proto, port in ((6, 80), (17, 7777)):
    send(ip(proto, l4(proto, src, d, port, port)))
    send(ip(proto, b''))
"#;

/// a (.1) -- b (.9), IPv4 and IPv6; b has nothing listening.
fn lab(test: &str) -> Netlab {
    let mut lab = Netlab::new(&prefix(test)).unwrap();
    lab.ns("a").unwrap();
    lab.ns("b").unwrap();
    lab.veth("a", "eth0", "b", "eth0").unwrap();
    lab.exec(
        "a",
        "ip addr add 10.77.40.1/24 dev eth0 && ip -6 addr add fd77:40::1/64 dev eth0 nodad",
    )
    .unwrap();
    lab.exec(
        "b",
        "ip addr add 10.77.40.9/24 dev eth0 && ip -6 addr add fd77:40::9/64 dev eth0 nodad",
    )
    .unwrap();
    lab
}

fn send(lab: &Netlab, fam: &str, src: &str, dst: &str) {
    let script = SENDER.replace('\'', r"'\''");
    lab.exec("a", &format!("python3 -c '{script}' {fam} {dst} {src}"))
        .unwrap();
}

/// Drops to `dst` whose IP packet is `ip_len` bytes long.
fn to<'a>(ds: &[&'a Value], dst: &str, ip_len: u64) -> Vec<&'a Value> {
    ds.iter()
        .copied()
        .filter(|d| d["dst"] == dst && d["ip_len"] == ip_len)
        .collect()
}

#[test]
fn short_packets_show_no_stale_ports_on_any_hook() {
    let lab = lab("trunc");
    let b = lab.name("b");
    for hook in ["tp_btf", "raw_tp", "tracepoint"] {
        let all = watch(hook, &b, None);
        let port80 = watch(hook, &b, Some("host 10.77.40.9 and tcp dst port 80"));
        let udp6 = watch(hook, &b, Some("ip6 and udp port 7777"));
        send(&lab, "4", "10.77.40.1", "10.77.40.9");
        send(&lab, "6", "fd77:40::1", "fd77:40::9");
        std::thread::sleep(std::time::Duration::from_millis(500));
        let (all, port80, udp6) = (all.stop(), port80.stop(), udp6.stop());
        let ds = drops(&all);
        let full4 = to(&ds, "10.77.40.9", 40);
        let short4 = to(&ds, "10.77.40.9", 20);
        let short6 = to(&ds, "fd77:40::9", 40);
        assert!(
            !full4.is_empty() && short4.len() == 2 && short6.len() == 2,
            "{hook}: expected the full and the short drops: {ds:#?}"
        );
        assert!(
            full4
                .iter()
                .any(|d| d["dport"] == 80 && d["tcp_flags"] == "S"),
            "{hook}: the full SYN keeps its ports: {full4:#?}"
        );
        for d in short4.iter().chain(&short6) {
            for field in ["sport", "dport", "tcp_flags", "icmp_type"] {
                assert!(
                    d[field].is_null(),
                    "{hook}: a bare IP header shows {field}={}: {d:#}",
                    d[field]
                );
            }
        }
        // The filter: the full SYN matches, its bare twin does not.
        let p = drops(&port80);
        assert!(
            p.iter().any(|d| d["ip_len"] == 40 && d["dport"] == 80),
            "{hook}: 'tcp dst port 80' missed the full SYN: {p:#?}"
        );
        assert!(
            p.iter().all(|d| d["ip_len"] != 20),
            "{hook}: 'tcp dst port 80' matched a packet with no TCP header: {p:#?}"
        );
        let u = drops(&udp6);
        assert!(
            u.iter().any(|d| d["dport"] == 7777 && d["ip_len"] == 48),
            "{hook}: 'ip6 and udp port 7777' missed the full datagram: {u:#?}"
        );
        assert!(
            u.iter().all(|d| d["ip_len"] != 40),
            "{hook}: 'udp port 7777' matched an IPv6 packet with no UDP header: {u:#?}"
        );
    }
}

/// SCTP as tcpdump filters it: `port` covers its ports, `sctp` names it,
/// `tcp port` does not match it. A raw SCTP common header (ports 5005 ->
/// 80) to a host with no SCTP endpoint is dropped there.
#[test]
fn sctp_ports_are_ports() {
    let lab = lab("sctp");
    let b = lab.name("b");
    let port = watch("tp_btf", &b, Some("port 80"));
    let sctp = watch("tp_btf", &b, Some("sctp and dst port 80"));
    let tcp = watch("tp_btf", &b, Some("tcp port 80"));
    let send = "import socket, struct\n\
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)\n\
        for i in range(3): s.sendto(struct.pack('!HHII', 5005, 80, 0, 0), ('10.77.40.9', 0))";
    lab.exec("a", &format!("python3 -c \"{send}\"")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (port, sctp, tcp) = (port.stop(), sctp.stop(), tcp.stop());
    for (name, lines) in [("port 80", &port), ("sctp and dst port 80", &sctp)] {
        let ds = drops(lines);
        assert!(
            ds.iter()
                .any(|d| d["proto"] == "sctp" && d["sport"] == 5005 && d["dport"] == 80),
            "'{name}' missed the SCTP drop: {lines:#?}"
        );
    }
    assert!(
        drops(&tcp).is_empty(),
        "'tcp port 80' matched SCTP: {tcp:#?}"
    );
}
