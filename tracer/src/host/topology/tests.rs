use super::rtnl::*;
use super::*;
use crate::host::netns;
use crate::host::netns::test_support::*;
use netlink_packet_core::NetlinkMessage;
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::route::RouteMessage;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::fs;
use std::sync::Arc;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn route(dst: &str, len: u8, table: u32, kind: RouteKind, oif: i32, metric: u32) -> Route {
    Route {
        dst: ip(dst),
        prefix_len: len,
        table,
        kind,
        oif: Some(oif),
        gateway: None,
        metric,
        src: None,
    }
}

fn synthetic(routes: Vec<Route>) -> NsTopology {
    NsTopology {
        inode: 1,
        name: None,
        links: Vec::new(),
        routes,
        rules: Vec::new(),
        sysctls: Sysctls::default(),
        qdiscs: Vec::new(),
        udp: Default::default(),
        listen: Default::default(),
        exhaustion: Default::default(),
        read_at: Instant::now(),
        path: std::path::PathBuf::new(),
    }
}

#[test]
fn route_selection_rules() {
    use RouteKind::*;
    let t = synthetic(vec![
        route("0.0.0.0", 0, RT_TABLE_MAIN, Unicast, 1, 0),
        route("10.0.0.0", 8, RT_TABLE_MAIN, Unicast, 2, 100),
        route("10.0.0.0", 8, RT_TABLE_MAIN, Unicast, 3, 10),
        route("10.9.0.0", 16, RT_TABLE_MAIN, Other(RTN_THROW), 0, 0),
        route("10.9.0.0", 16, RT_TABLE_DEFAULT, Unicast, 5, 0),
        route("10.1.1.1", 32, RT_TABLE_LOCAL, Local, 4, 0),
        route("10.1.1.0", 24, 100, Unicast, 6, 0),
        route("2001:db8::", 64, RT_TABLE_MAIN, Unicast, 7, 256),
    ]);
    let oif = |d: &str| t.route_to(ip(d)).and_then(|r| r.oif);
    assert_eq!(
        oif("10.2.3.4"),
        Some(3),
        "lowest metric among equal prefixes"
    );
    assert_eq!(oif("192.0.2.1"), Some(1), "default route");
    assert_eq!(
        t.route_to(ip("10.1.1.1")).unwrap().kind,
        Local,
        "local table first"
    );
    assert_eq!(oif("10.1.1.2"), Some(3), "table 100 is not consulted");
    assert_eq!(
        oif("10.9.1.1"),
        Some(5),
        "throw continues to the next table"
    );
    assert_eq!(oif("2001:db8::5"), Some(7));
    assert_eq!(t.route_to(ip("2001:db9::5")), None, "no v4 route for v6");

    assert_eq!(t.prefix_on(6, ip("10.1.1.9")).unwrap().table, 100);
    assert_eq!(t.prefix_on(4, ip("10.1.1.1")), None, "local table skipped");
    assert_eq!(t.prefix_on(3, ip("10.1.1.9")).unwrap().prefix_len, 8);
    assert_eq!(t.prefix_on(2, ip("11.0.0.1")), None);
}

#[test]
fn rp_filter_is_max_of_all_and_dev() {
    let mut t = synthetic(Vec::new());
    t.sysctls.rp_filter_all = 1;
    t.sysctls.rp_filter.insert("a".into(), 0);
    t.sysctls.rp_filter.insert("b".into(), 2);
    assert_eq!(t.rp_filter("a"), 1);
    assert_eq!(t.rp_filter("b"), 2);
    assert_eq!(t.rp_filter("nope"), 1);
}

#[test]
fn raw_attr_parser_rejects_garbage() {
    assert!(raw::attrs(&[]).is_empty());
    // len 2 < header: stop.
    assert!(raw::attrs(&[2, 0, 1, 0]).is_empty());
    // len beyond buffer: stop.
    assert!(raw::attrs(&[200, 0, 1, 0, 0, 0]).is_empty());
    assert_eq!(raw::link(&[0; 8]), None);
    assert_eq!(raw::route(&[99; 12]), None);
    assert_eq!(raw::addr(&[2, 24, 0, 0]), None);
}

fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(value);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

/// A message whose IFLA_MTU is 2 bytes long: the crate rejects the whole
/// message, the fallback keeps every other field.
#[test]
fn raw_fallback_decodes_what_the_crate_rejects() {
    let mut payload = Vec::new();
    payload.extend_from_slice(&[0, 0]);
    payload.extend_from_slice(&1u16.to_ne_bytes());
    payload.extend_from_slice(&7i32.to_ne_bytes());
    payload.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    payload.extend_from_slice(&0u32.to_ne_bytes());
    payload.extend(nla(3, b"x0\0"));
    payload.extend(nla(4, &[0xdc, 0x05]));
    payload.extend(nla(5, &9u32.to_ne_bytes()));
    payload.extend(nla(37, &3i32.to_ne_bytes()));
    payload.extend(nla(0x8000 | 18, &nla(1, b"veth\0")));
    let mut msg = Vec::new();
    msg.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&16u16.to_ne_bytes()); // RTM_NEWLINK
    msg.extend_from_slice(&[0; 10]);
    msg.extend_from_slice(&payload);
    assert!(NetlinkMessage::<RouteNetlinkMessage>::deserialize(&msg).is_err());
    let l = raw::link(&payload).unwrap();
    assert_eq!(l.ifindex, 7);
    assert_eq!(l.name, "x0");
    assert_eq!(l.kind.as_deref(), Some("veth"));
    assert!(l.up);
    assert_eq!(l.mtu, 0);
    assert_eq!((l.link, l.link_netnsid), (Some(9), Some(3)));
}

/// The raw fallback decoder must agree with netlink-packet-route on
/// everything the kernel actually sends (run on a real namespace).
fn assert_raw_decoder_agrees(ns: &TestNs) {
    let (n_links, n_routes) = netns::run_in(&ns.path(), || {
        let mut nl = Rtnl::open().unwrap();
        let links = nl
            .request(RouteNetlinkMessage::GetLink(LinkMessage::default()), true)
            .unwrap();
        for r in &links {
            let Some(RouteNetlinkMessage::NewLink(m)) = &r.parsed else {
                panic!("crate failed to decode a link");
            };
            assert_eq!(raw::link(&r.payload), Some(link_from_msg(m)));
        }
        let addrs = nl
            .request(
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                true,
            )
            .unwrap();
        for r in &addrs {
            let Some(RouteNetlinkMessage::NewAddress(m)) = &r.parsed else {
                panic!("crate failed to decode an address");
            };
            assert_eq!(raw::addr(&r.payload), addr_from_msg(m));
        }
        let mut n_routes = 0;
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = RouteMessage::default();
            req.header.address_family = fam;
            for r in nl
                .request(RouteNetlinkMessage::GetRoute(req), true)
                .unwrap()
            {
                let Some(RouteNetlinkMessage::NewRoute(m)) = &r.parsed else {
                    panic!("crate failed to decode a route");
                };
                assert_eq!(raw::route(&r.payload), route_from_msg(m));
                n_routes += 1;
            }
        }
        (links.len(), n_routes)
    })
    .unwrap();
    assert!(
        n_links >= 3 && n_routes >= 5,
        "{n_links} links, {n_routes} routes"
    );
}

/// Two namespaces: A has a bridge with a same-netns veth port, and a veth
/// into B.
///
///   A: br0 (10.N.1.1/24) <- vp0 (master br0) <-> vq0
///      va0 (10.N.2.1/24, 2001:db8:N::1/64, rp_filter=1) <-> B: vb0 (mtu 1400)
///   A routes: 10.N.0.0/16 via 10.N.2.2, 10.N.3.0/24 dev br0,
///             blackhole 10.N.5.0/24, 10.N.6.0/24 via 10.N.2.2 table 100
struct Lab {
    a: TestNs,
    b: TestNs,
    n: u8,
}

fn lab(tag: &str) -> Lab {
    let a = TestNs::new(&format!("{tag}a"));
    let b = TestNs::new(&format!("{tag}b"));
    // Vary the subnet per run; harmless either way (private namespaces).
    let n = (std::process::id() % 200) as u8 + 20;
    let lab = Lab { a, b, n };
    let (a, b) = (&lab.a, &lab.b);
    a.ip(&format!(
        "link add va0 type veth peer name vb0 netns {}",
        b.name
    ));
    a.ip("link add vp0 type veth peer name vq0");
    a.ip("link add br0 type bridge");
    a.ip("link set vp0 master br0");
    // A tunnel, so both decoders read an encapsulation.
    a.ip(&format!(
        "link add vx5 type vxlan id 5 local 10.{n}.1.1 remote 10.{n}.1.9 dstport 4790 df set"
    ));
    b.ip("link set vb0 mtu 1400");
    for dev in ["lo", "va0", "vp0", "vq0", "br0"] {
        a.ip(&format!("link set {dev} up"));
    }
    b.ip("link set lo up");
    b.ip("link set vb0 up");
    a.ip(&format!("addr add 10.{n}.1.1/24 dev br0"));
    a.ip(&format!("addr add 10.{n}.2.1/24 dev va0"));
    a.ip(&format!("addr add 2001:db8:{n}::1/64 dev va0 nodad"));
    b.ip(&format!("addr add 10.{n}.2.2/24 dev vb0"));
    a.ip(&format!(
        "route add 10.{n}.0.0/16 via 10.{n}.2.2 dev va0 metric 50"
    ));
    a.ip(&format!("route add 10.{n}.3.0/24 dev br0"));
    a.ip(&format!("route add blackhole 10.{n}.5.0/24"));
    a.ip(&format!(
        "route add 10.{n}.6.0/24 via 10.{n}.2.2 dev va0 table 100"
    ));
    a.ip(&format!("rule add from 10.{n}.1.1 lookup 100 pref 1234"));
    a.ip("rule add fwmark 0x40/0xf0 iif va0 lookup 100 pref 1235");
    a.sysctl("net.ipv4.conf.va0.src_valid_mark=1");
    a.sysctl("net.ipv4.conf.all.rp_filter=0");
    a.sysctl("net.ipv4.conf.va0.rp_filter=1");
    a.sysctl("net.ipv4.conf.br0.rp_filter=0");
    a.sysctl("net.ipv4.conf.all.forwarding=1");
    a.sysctl("net.ipv6.conf.all.forwarding=1");
    b.sysctl("net.ipv4.conf.all.rp_filter=2");
    b.sysctl("net.ipv4.conf.vb0.rp_filter=0");
    b.sysctl("net.ipv4.conf.all.forwarding=0");
    b.sysctl("net.ipv6.conf.all.forwarding=0");
    lab
}

/// `ip rule` as the kernel holds it, and the lookups it steers.
fn check_rules(ta: &NsTopology, tb: &NsTopology, n: u8) {
    let texts: Vec<String> = ta
        .rules
        .iter()
        .filter(|r| !r.ipv6)
        .map(|r| r.text())
        .collect();
    assert_eq!(
        texts,
        [
            "0: from all lookup local".to_string(),
            format!("1234: from 10.{n}.1.1 lookup 100"),
            "1235: from all fwmark 0x40/0xf0 iif va0 lookup 100".to_string(),
            "32766: from all lookup main".to_string(),
            "32767: from all lookup default".to_string(),
        ]
    );
    assert!(ta.rules.iter().any(|r| r.ipv6 && r.table == RT_TABLE_MAIN));
    assert!(ta.src_valid_mark("va0") && !ta.src_valid_mark("br0"));
    assert!(!tb.src_valid_mark("vb0"));
    // From 10.N.1.1 the rule sends 10.N.6.9 to table 100; from
    // elsewhere main's /16 answers.
    let flow = |src: &str| Flow {
        src: Some(ip(src)),
        dst: ip(&format!("10.{n}.6.9")),
        iif: Some("lo"),
        oif: None,
        mark: Some(0),
    };
    let d = ta.decide(&flow(&format!("10.{n}.1.1")), None).unwrap();
    assert_eq!((d.table, d.rule.priority), (100, 1234));
    let d = ta.decide(&flow(&format!("10.{n}.2.1")), None).unwrap();
    assert_eq!((d.table, d.route.unwrap().prefix_len), (RT_TABLE_MAIN, 16));
}

#[test]
fn reads_links_routes_and_sysctls() {
    let lab = lab("rd");
    let (a, b, n) = (&lab.a, &lab.b, lab.n);
    let ta = NsTopology::read(&a.info()).unwrap();
    let tb = NsTopology::read(&b.info()).unwrap();
    assert_eq!(ta.inode, a.inode);
    assert_eq!(ta.name.as_deref(), Some(a.name.as_str()));

    check_links_and_addresses(&lab, &ta, &tb);
    check_routes(&ta, n);
    check_route_to(&ta, n);
    check_prefix_on(&ta, n);
    check_sysctls(&ta, &tb);
    check_rules(&ta, &tb, n);

    // serializable for reports
    let va0 = ta.link_by_name("va0").unwrap();
    let js = serde_json::to_string(va0).unwrap();
    assert!(js.contains("\"kind\":\"veth\""), "{js}");
    let r16 = ta
        .routes
        .iter()
        .find(|r| r.prefix_len == 16 && r.table == RT_TABLE_MAIN)
        .unwrap();
    assert!(serde_json::to_string(r16).unwrap().contains("\"Unicast\""));
    assert!(serde_json::to_string(&ta.sysctls).is_ok());

    let vx5 = ta.link_by_name("vx5").unwrap();
    let t = vx5.tunnel.as_ref().unwrap();
    assert_eq!((t.port, t.df.as_deref()), (4790, Some("set")));
    assert_eq!(t.remote, Some(format!("10.{n}.1.9").parse().unwrap()));
    assert_eq!(t.overhead(false), 50);
    assert_eq!(ta.link_by_name("vp0").unwrap().brport_state, Some(3));
    assert_eq!(ta.link_by_name("br0").unwrap().bridge_stp, Some(0));

    assert_raw_decoder_agrees(a);
}

/// Kind, MTU, state, master, veth peers (across and within a netns)
/// and addresses.
fn check_links_and_addresses(lab: &Lab, ta: &NsTopology, tb: &NsTopology) {
    let (a, b, n) = (&lab.a, &lab.b, lab.n);
    let va0 = ta.link_by_name("va0").unwrap();
    let vb0 = tb.link_by_name("vb0").unwrap();
    let vp0 = ta.link_by_name("vp0").unwrap();
    let vq0 = ta.link_by_name("vq0").unwrap();
    let br0 = ta.link_by_name("br0").unwrap();
    let lo = ta.link_by_name("lo").unwrap();

    assert_eq!(va0.ifindex, a.ifindex("va0"));
    assert_eq!(vb0.ifindex, b.ifindex("vb0"));
    assert_eq!(ta.link(va0.ifindex), Some(va0));

    // kind / mtu / up
    assert_eq!(va0.kind.as_deref(), Some("veth"));
    assert_eq!(br0.kind.as_deref(), Some("bridge"));
    assert_eq!(lo.kind, None);
    assert_eq!(vb0.mtu, 1400);
    assert_eq!(va0.mtu, 1500);
    assert!(va0.up && br0.up && vb0.up);

    // master
    assert_eq!(vp0.master, Some(br0.ifindex));
    assert_eq!(va0.master, None);
    assert!(ta.is_bridge(br0.ifindex));
    assert!(!ta.is_bridge(vp0.ifindex));

    // veth peers across netns
    assert_eq!(va0.link, Some(vb0.ifindex));
    assert!(va0.link_netnsid.is_some());
    assert_eq!(va0.peer_netns, Some(b.inode));
    assert_eq!(vb0.link, Some(va0.ifindex));
    assert!(vb0.link_netnsid.is_some());
    assert_eq!(vb0.peer_netns, Some(a.inode));
    // ... and within one netns
    assert_eq!(vp0.link, Some(vq0.ifindex));
    assert_eq!(vp0.link_netnsid, None);
    assert_eq!(vp0.peer_netns, Some(a.inode));
    assert_eq!(lo.link, None);
    assert_eq!(lo.peer_netns, None);

    // addresses
    let br0_v4: Vec<_> = br0.addrs.iter().filter(|(a, _)| a.is_ipv4()).collect();
    assert_eq!(br0_v4, vec![&(ip(&format!("10.{n}.1.1")), 24)]);
    assert!(br0
        .addrs
        .iter()
        .any(|(a, l)| a.to_string().starts_with("fe80:") && *l == 64));
    assert!(va0.addrs.contains(&(ip(&format!("10.{n}.2.1")), 24)));
    assert!(va0.addrs.contains(&(ip(&format!("2001:db8:{n}::1")), 64)));
    assert!(lo.addrs.contains(&(ip("127.0.0.1"), 8)));
}

/// Every table's routes, with kind, device, gateway, source and metric.
fn check_routes(ta: &NsTopology, n: u8) {
    let va0 = ta.link_by_name("va0").unwrap();
    let br0 = ta.link_by_name("br0").unwrap();
    let find = |dst: &str, len: u8, table: u32| {
        ta.routes
            .iter()
            .find(|r| r.dst == ip(dst) && r.prefix_len == len && r.table == table)
            .unwrap_or_else(|| panic!("no route {dst}/{len} table {table}: {:#?}", ta.routes))
    };
    let r16 = find(&format!("10.{n}.0.0"), 16, RT_TABLE_MAIN);
    assert_eq!(r16.kind, RouteKind::Unicast);
    assert_eq!(r16.oif, Some(va0.ifindex));
    assert_eq!(r16.gateway, Some(ip(&format!("10.{n}.2.2"))));
    assert_eq!(r16.metric, 50);
    let conn = find(&format!("10.{n}.1.0"), 24, RT_TABLE_MAIN);
    assert_eq!(conn.oif, Some(br0.ifindex));
    assert_eq!(conn.gateway, None);
    assert_eq!(conn.src, Some(ip(&format!("10.{n}.1.1"))));
    let local = find(&format!("10.{n}.1.1"), 32, RT_TABLE_LOCAL);
    assert_eq!(local.kind, RouteKind::Local);
    let bcast = find(&format!("10.{n}.1.255"), 32, RT_TABLE_LOCAL);
    assert_eq!(bcast.kind, RouteKind::Broadcast);
    assert_eq!(
        find(&format!("10.{n}.5.0"), 24, RT_TABLE_MAIN).kind,
        RouteKind::Blackhole
    );
    assert_eq!(find(&format!("10.{n}.6.0"), 24, 100).oif, Some(va0.ifindex));
    let v6 = find(&format!("2001:db8:{n}::"), 64, RT_TABLE_MAIN);
    assert_eq!(v6.oif, Some(va0.ifindex));
}

/// Longest prefix, local table first, no default route.
fn check_route_to(ta: &NsTopology, n: u8) {
    let va0 = ta.link_by_name("va0").unwrap();
    let to = |d: &str| ta.route_to(ip(d)).map(|r| (r.dst, r.prefix_len, r.table));
    assert_eq!(
        to(&format!("10.{n}.3.9")),
        Some((ip(&format!("10.{n}.3.0")), 24, 254))
    );
    assert_eq!(
        to(&format!("10.{n}.4.9")),
        Some((ip(&format!("10.{n}.0.0")), 16, 254))
    );
    assert_eq!(
        to(&format!("10.{n}.2.7")),
        Some((ip(&format!("10.{n}.2.0")), 24, 254))
    );
    assert_eq!(
        to(&format!("10.{n}.1.1")),
        Some((ip(&format!("10.{n}.1.1")), 32, 255))
    );
    assert_eq!(
        ta.route_to(ip(&format!("10.{n}.5.1"))).unwrap().kind,
        RouteKind::Blackhole
    );
    assert_eq!(
        to(&format!("10.{n}.6.1")),
        Some((ip(&format!("10.{n}.0.0")), 16, 254))
    );
    assert_eq!(to("192.0.2.1"), None);
    assert_eq!(
        ta.route_to(ip(&format!("2001:db8:{n}::99")))
            .and_then(|r| r.oif),
        Some(va0.ifindex)
    );
}

fn check_prefix_on(ta: &NsTopology, n: u8) {
    let va0 = ta.link_by_name("va0").unwrap();
    let vp0 = ta.link_by_name("vp0").unwrap();
    let br0 = ta.link_by_name("br0").unwrap();
    let p = ta
        .prefix_on(br0.ifindex, ip(&format!("10.{n}.1.77")))
        .unwrap();
    assert_eq!((p.dst, p.prefix_len), (ip(&format!("10.{n}.1.0")), 24));
    assert_eq!(ta.prefix_on(vp0.ifindex, ip(&format!("10.{n}.1.77"))), None);
    assert_eq!(ta.prefix_on(br0.ifindex, ip(&format!("10.{n}.2.77"))), None);
    assert_eq!(ta.prefix_on(va0.ifindex, ip("192.0.2.1")), None);
    // Via va0 the /16 also covers br0's subnet: the most specific on va0.
    let p = ta
        .prefix_on(va0.ifindex, ip(&format!("10.{n}.1.77")))
        .unwrap();
    assert_eq!(p.prefix_len, 16);
    let p = ta
        .prefix_on(va0.ifindex, ip(&format!("10.{n}.9.9")))
        .unwrap();
    assert_eq!(p.prefix_len, 16);
    let p = ta
        .prefix_on(va0.ifindex, ip(&format!("10.{n}.6.9")))
        .unwrap();
    assert_eq!((p.prefix_len, p.table), (24, 100));
}

/// Read inside each netns (the host's values are not these).
fn check_sysctls(ta: &NsTopology, tb: &NsTopology) {
    assert_eq!(ta.sysctls.rp_filter_all, 0);
    assert_eq!(ta.sysctls.rp_filter.get("va0"), Some(&1));
    assert_eq!(ta.rp_filter("va0"), 1);
    assert_eq!(ta.rp_filter("br0"), 0);
    assert!(ta.sysctls.ipv4_forwarding);
    assert!(ta.sysctls.ipv6_forwarding);
    assert_eq!(tb.sysctls.rp_filter_all, 2);
    assert_eq!(tb.sysctls.rp_filter.get("vb0"), Some(&0));
    assert_eq!(tb.rp_filter("vb0"), 2, "max(all=2, vb0=0)");
    assert!(!tb.sysctls.ipv4_forwarding);
    assert!(!tb.sysctls.ipv6_forwarding);
    assert!(!ta.sysctls.rp_filter.contains_key("all"));
    assert!(ta.sysctls.rp_filter.contains_key("default"));
    // Per device, from the link dump's devconf: what conf/<dev> shows.
    assert_eq!(ta.sysctls.ipv4_forwarding_dev.get("va0"), Some(&true));
    assert_eq!(tb.sysctls.ipv4_forwarding_dev.get("vb0"), Some(&false));
    assert!(ta.sysctls.ipv4_forwarding_dev.contains_key("default"));
}

/// Sysctls must be the netns' own even when the host's differ and while
/// another netns is read concurrently.
#[test]
fn sysctls_are_per_netns_not_host() {
    let host = |p: &str| {
        fs::read_to_string(p)
            .unwrap()
            .trim()
            .parse::<u32>()
            .unwrap()
    };
    let host_rp = host("/proc/sys/net/ipv4/conf/all/rp_filter");
    let host_fwd = host("/proc/sys/net/ipv4/conf/all/forwarding");
    let a = TestNs::new("sya");
    let b = TestNs::new("syb");
    let (ra, rb) = ((host_rp + 1) % 3, (host_rp + 2) % 3);
    a.sysctl(&format!("net.ipv4.conf.all.rp_filter={ra}"));
    b.sysctl(&format!("net.ipv4.conf.all.rp_filter={rb}"));
    a.sysctl(&format!(
        "net.ipv4.conf.all.forwarding={}",
        1 - host_fwd.min(1)
    ));
    let (ia, ib) = (a.info(), b.info());
    let ha = std::thread::spawn(move || NsTopology::read(&ia).unwrap());
    let hb = std::thread::spawn(move || NsTopology::read(&ib).unwrap());
    let (ta, tb) = (ha.join().unwrap(), hb.join().unwrap());
    assert_eq!(ta.sysctls.rp_filter_all, ra);
    assert_eq!(tb.sysctls.rp_filter_all, rb);
    assert_eq!(ta.sysctls.ipv4_forwarding, host_fwd == 0);
    let own = crate::host::netns::resolve("/proc/self/ns/net").unwrap();
    let th = NsTopology::read(&own).unwrap();
    assert_eq!(th.sysctls.rp_filter_all, host_rp);
    assert_eq!(host("/proc/sys/net/ipv4/conf/all/rp_filter"), host_rp);
    assert_eq!(host("/proc/sys/net/ipv4/conf/all/forwarding"), host_fwd);
}

#[test]
fn a_ruleset_change_changes_the_topology() {
    // An MSS clamp is a change on the path even though no route, link
    // or sysctl moves: the nftables generation says so.
    let a = TestNs::new("nft");
    let before = NsTopology::read(&a.info()).unwrap();
    let g0 = before.sysctls.nft_genid.expect("nftables generation");
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", &a.name, "iptables", "-t", "mangle", "-A", "FORWARD",
        ])
        .args(["-p", "tcp", "--tcp-flags", "SYN,RST", "SYN", "-j", "TCPMSS"])
        .arg("--clamp-mss-to-pmtu")
        .status()
        .unwrap();
    assert!(out.success());
    let after = NsTopology::read(&a.info()).unwrap();
    assert_ne!(after.sysctls.nft_genid, Some(g0));
    assert!(!after.same_as(&before));
    assert_eq!(parse_genid(&[0u8; 8], 1), None);
}

#[test]
fn cache_ifname_peer_and_gone() {
    let lab = lab("ca");
    let (a, b) = (&lab.a, &lab.b);
    let recheck = Duration::from_millis(100);
    let max_age = Duration::from_millis(800);
    let mut topo = Topology::with_timing(max_age, recheck);

    let t1 = topo.get(a.inode).unwrap();
    let t2 = topo.get(a.inode).unwrap();
    assert!(Arc::ptr_eq(&t1, &t2), "hit must not re-read");
    topo.invalidate(a.inode);
    let t3 = topo.get(a.inode).unwrap();
    assert!(!Arc::ptr_eq(&t1, &t3), "invalidate forces a re-read");

    let va0 = a.ifindex("va0");
    let vb0 = b.ifindex("vb0");
    assert_eq!(topo.ifname(a.inode, va0), IfName::Name("va0".into()));
    assert_eq!(topo.ifname(b.inode, vb0), IfName::Name("vb0".into()));
    assert_eq!(topo.ifname(a.inode, 0), IfName::None);

    let (pns, peer) = topo.veth_peer(a.inode, va0).unwrap();
    assert_eq!(pns, b.inode);
    assert_eq!(peer.name, "vb0");
    assert_eq!(peer.mtu, 1400);
    let (pns, peer) = topo.veth_peer(b.inode, vb0).unwrap();
    assert_eq!((pns, peer.ifindex), (a.inode, va0));
    let (pns, peer) = topo.veth_peer(a.inode, a.ifindex("vp0")).unwrap();
    assert_eq!((pns, peer.name.as_str()), (a.inode, "vq0"));
    assert_eq!(topo.veth_peer(a.inode, a.ifindex("br0")), None);

    // An interface created after the read is found by the miss re-read.
    std::thread::sleep(recheck);
    a.ip("link add nw0 type veth peer name nw1");
    let nw0 = a.ifindex("nw0");
    assert_eq!(topo.ifname(a.inode, nw0), IfName::Name("nw0".into()));

    // Deleting one veth end removes both. Cached names outlive the
    // interface by up to `max_age` (events queued before the deletion
    // still get named), then turn Gone.
    a.ip("link del va0");
    assert_eq!(topo.ifname(a.inode, va0), IfName::Name("va0".into()));
    std::thread::sleep(max_age);
    assert_eq!(topo.ifname(a.inode, va0), IfName::Gone);
    assert_eq!(topo.ifname(b.inode, vb0), IfName::Gone);
    assert_eq!(topo.veth_peer(a.inode, va0), None);

    // A storm on the vanished ifindex does not re-read each time.
    let before = topo.get(b.inode).unwrap();
    for _ in 0..1000 {
        assert_eq!(topo.ifname(b.inode, vb0), IfName::Gone);
    }
    assert!(Arc::ptr_eq(&before, &topo.get(b.inode).unwrap()));

    // Netns deleted: NetnsGone within `recheck`.
    b.delete();
    std::thread::sleep(recheck);
    assert_eq!(topo.ifname(b.inode, vb0), IfName::NetnsGone);
    assert!(topo.get(b.inode).is_none());
    assert_eq!(topo.veth_peer(b.inode, vb0), None);
    // Unknown netns altogether.
    assert_eq!(topo.ifname(u32::MAX, 1), IfName::NetnsGone);
}

#[test]
fn own_netns_reads() {
    let own = crate::host::netns::own_inode().unwrap();
    let mut topo = Topology::new();
    let t = topo.get(own).expect("own netns");
    assert!(t.link_by_name("lo").is_some());
    assert_eq!(topo.ifname(own, 1), IfName::Name("lo".into()));
}

/// An exhaustion verdict's later readings: the counters anew, the links
/// and routes as they were (a whole read of a namespace with thousands of
/// bridge ports is what they spare the event path).
#[test]
fn recount_reads_the_counters_and_nothing_else() {
    let lab = lab("rc");
    let (a, n) = (&lab.a, lab.n);
    a.track_connections();
    let mut topo = Topology::new();
    let first = topo.get(a.inode).unwrap();
    let count = |t: &NsTopology| t.exhaustion.conntrack.count.unwrap_or(0);
    assert_eq!(count(&first), 0);
    a.ip("link add rc9 type veth peer name rc8");
    a.sh(&format!("ping -c1 -W2 10.{n}.2.2 >/dev/null"));

    let later = topo.recount(a.inode).unwrap();
    assert!(count(&later) >= 1, "the counters are read anew");
    assert!(later.link_by_name("rc9").is_none(), "the links are not");
    assert_eq!(later.exhaustion.at_start, first.exhaustion.at_start);
    assert_eq!(later.read_at, first.read_at);
    assert!(
        Arc::ptr_eq(&later, &topo.get(a.inode).unwrap()),
        "and cached"
    );

    // A stale copy is read whole.
    topo.invalidate(a.inode);
    let whole = topo.recount(a.inode).unwrap();
    assert!(whole.link_by_name("rc9").is_some());
}
