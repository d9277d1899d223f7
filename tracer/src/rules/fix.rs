//! Building fix commands: every name a command carries (netns, interface,
//! path) is shell-quoted, since `ip netns add 'q$(id)'` is legal and a fix
//! is meant to be pasted into a root shell. Also the advice more than one
//! rule gives (moving a bridge off a peer's network).

use crate::topology::{prefix_contains, NsTopology, Route};
use std::net::{IpAddr, Ipv4Addr};

/// One shell word: left alone when it is plain, else single-quoted.
pub fn q(word: &str) -> String {
    // The characters Python's shlex.quote also leaves alone: a plain
    // `net.ipv4.conf.eth0.rp_filter=2` stays readable.
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b));
    if plain {
        return word.to_string();
    }
    // Only a NUL cannot be quoted, and no name can hold one.
    shlex::try_quote(word)
        .map(|c| c.into_owned())
        .unwrap_or_else(|_| "''".to_string())
}

/// A `sysctl -w` argument for a per-interface IPv4 knob, quoted. The
/// slash form keeps a dotted interface name (eth0.100) intact.
pub fn conf_arg(ifname: &str, knob: &str, value: u32) -> String {
    if ifname.contains('.') {
        q(&format!("net/ipv4/conf/{ifname}/{knob}={value}"))
    } else {
        q(&format!("net.ipv4.conf.{ifname}.{knob}={value}"))
    }
}

/// `addr:port`, with IPv6 addresses in brackets as in URLs.
pub fn host_port(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V6(a) => format!("[{a}]:{port}"),
        IpAddr::V4(a) => format!("{a}:{port}"),
    }
}

/// `10.0.0.0/8` for a route's prefix.
pub fn net(r: &Route) -> String {
    format!("{}/{}", r.dst, r.prefix_len)
}

/// Header overhead from the IP header to the end of a bare TCP header.
pub fn tcp_overhead(a: Option<IpAddr>) -> u32 {
    match a {
        Some(IpAddr::V6(_)) => 60,
        _ => 40,
    }
}

pub fn iptables_for(family: Option<&str>) -> &'static str {
    if family == Some("ipv6") {
        "ip6tables"
    } else {
        "iptables"
    }
}

/// A private subnet that overlaps nothing routed or addressed in `topo`
/// and not `avoid`: a concrete value for "move the bridge elsewhere".
pub fn free_subnet(topo: &NsTopology, avoid: IpAddr) -> String {
    let candidates = [
        ("192.168.203.0", 24u8),
        ("10.213.0.0", 16),
        ("172.31.240.0", 20),
        ("192.168.250.0", 24),
    ];
    for (a, len) in candidates {
        let base: IpAddr = a.parse().expect("literal");
        let overlaps = |n: IpAddr, l: u8| {
            let m = l.min(len);
            prefix_contains(n, m, base) || prefix_contains(base, m, n)
        };
        let clash = topo
            .routes
            .iter()
            .any(|r| r.dst.is_ipv4() && r.prefix_len > 0 && overlaps(r.dst, r.prefix_len))
            || topo
                .links
                .iter()
                .flat_map(|l| l.addrs.iter())
                .any(|(ad, pl)| ad.is_ipv4() && overlaps(*ad, *pl))
            || prefix_contains(base, len, avoid);
        if !clash {
            return format!("{a}/{len}");
        }
    }
    "192.168.203.0/24".to_string()
}

/// `via GW dev IF` towards `ifindex`'s gateway, or `dev IF` when on-link.
pub fn route_via(topo: &NsTopology, ifindex: i32) -> String {
    let name = topo
        .link(ifindex)
        .map(|l| l.name.clone())
        .unwrap_or_else(|| format!("if{ifindex}"));
    match topo
        .routes
        .iter()
        .find(|r| r.oif == Some(ifindex) && r.gateway.is_some())
        .and_then(|r| r.gateway)
    {
        Some(gw) => format!("via {gw} dev {}", q(&name)),
        None => format!("dev {}", q(&name)),
    }
}

/// What to change when a bridge's subnet covers a peer that lives
/// elsewhere: move the bridge (in the words of whoever manages it), or
/// route the peer back more specifically.
pub fn bridge_fixes(
    topo: &NsTopology,
    bridge: &str,
    prefix: &str,
    peer: IpAddr,
    ns_hint: &str,
    ingress: i32,
) -> Vec<String> {
    let free = free_subnet(topo, peer);
    let gw = free
        .split('/')
        .next()
        .and_then(|a| a.parse::<Ipv4Addr>().ok())
        .map(|a| Ipv4Addr::from(u32::from(a) + 1).to_string())
        .unwrap_or_default();
    let len = free.split('/').nth(1).unwrap_or("24");
    // Name the knob of whoever manages the bridge; the verdict itself never
    // depends on the name, only this advice does.
    let mut fixes = if bridge == "docker0" {
        vec![format!(
            "Move {bridge} ({prefix}) off the peer's network: set \"bip\": \"{gw}/{len}\" (and \"default-address-pools\" for new networks) in /etc/docker/daemon.json, then systemctl restart docker"
        )]
    } else if bridge.starts_with("br-") {
        vec![format!(
            "Move {bridge} ({prefix}) off the peer's network: if it is a docker network, docker network rm <net> && docker network create --subnet {free} <net> (and set \"default-address-pools\" in /etc/docker/daemon.json so new networks avoid it)"
        )]
    } else {
        vec![format!(
            "Move {bridge} ({prefix}) off the peer's network, e.g. to {free}: {ns_hint}ip addr replace {gw}/{len} dev {} (then update whatever manages it: libvirt net-edit, lxc network set, docker \"bip\")",
            q(bridge)
        )]
    };
    fixes.push(format!(
        "Stopgap without moving the bridge: route the peer back the way its packets arrive, more specifically than the bridge: {ns_hint}ip route add {peer}/32 {}",
        route_via(topo, ingress)
    ));
    fixes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_plain_words_and_defuses_the_rest() {
        assert_eq!(q("eth0"), "eth0");
        assert_eq!(q("q$(id)"), "'q$(id)'");
        assert_eq!(
            shlex::split(&format!("ip -n {} link", q("a'b c"))).unwrap()[2],
            "a'b c"
        );
        assert_eq!(
            conf_arg("eth0", "rp_filter", 2),
            "net.ipv4.conf.eth0.rp_filter=2"
        );
        assert_eq!(
            conf_arg("eth0.100", "rp_filter", 2),
            "net/ipv4/conf/eth0.100/rp_filter=2"
        );
    }

    #[test]
    fn ipv6_host_port_has_brackets() {
        assert_eq!(host_port("fd00::1".parse().unwrap(), 443), "[fd00::1]:443");
        assert_eq!(host_port("10.0.0.1".parse().unwrap(), 80), "10.0.0.1:80");
    }
}
