//! Building fix commands: every name a command carries (netns, interface,
//! path) is shell-quoted, since `ip netns add 'q$(id)'` is legal and a fix
//! is meant to be pasted into a root shell. Also the advice more than one
//! rule gives (moving a bridge off a peer's network).

use crate::events::record::Family;
use crate::host::containers::DockerNetwork;
use crate::host::route::{prefix_contains, Route};
use crate::host::topology::NsTopology;
use std::net::{IpAddr, Ipv4Addr};

/// One fix, built once: the line the user reads and the shell commands
/// that apply it (`fix_commands` in JSON), so a script or a test can run
/// exactly what the text shows without parsing prose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fix {
    pub text: String,
    /// Empty where the fix is advice only (edit daemon.json, start a
    /// service, pick a gateway): nothing could be pasted as it stands.
    pub commands: Vec<String>,
}

impl Fix {
    /// Advice that no command applies as it stands.
    pub fn advice(text: impl Into<String>) -> Fix {
        Fix {
            text: text.into(),
            commands: Vec::new(),
        }
    }

    /// A fix applied by `commands`; `text` shows them (built from the
    /// same strings by the caller).
    pub fn run(text: impl Into<String>, commands: Vec<String>) -> Fix {
        Fix {
            text: text.into(),
            commands,
        }
    }
}

/// One shell word: left alone when it is plain, else single-quoted; a word
/// with control characters (an interface named `e\x1b]0;x\x07`) is written
/// in bash's `$'...'` form with `\xHH` escapes, so the command holds no raw
/// control byte: printed, it leaves the terminal alone, and pasted into
/// bash (or zsh, ksh) it still names the device.
pub fn q(word: &str) -> String {
    if word.chars().any(char::is_control) {
        return ansi_c(word);
    }
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

/// `$'...'`: quote and backslash escaped, every byte of a control
/// character (C1 ones are two in UTF-8) as `\xHH`.
fn ansi_c(word: &str) -> String {
    let mut out = String::from("$'");
    let mut buf = [0u8; 4];
    for c in word.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
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

/// The host route of one address: `/32`, or `/128` for IPv6 (a `/32`
/// there would install a whole /32 prefix).
pub fn host_route(a: IpAddr) -> String {
    format!("{a}/{}", if a.is_ipv6() { 128 } else { 32 })
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

pub fn iptables_for(family: Option<Family>) -> &'static str {
    if family == Some(Family::Ipv6) {
        "ip6tables"
    } else {
        "iptables"
    }
}

/// Private subnets that overlap nothing routed or addressed in `topo`,
/// nor any address in `avoid` (the peer): concrete values for "move the
/// bridge elsewhere", checked against this namespace.
pub fn free_subnets(topo: &NsTopology, avoid: &[IpAddr], n: usize) -> Vec<String> {
    let candidates = [
        ("192.168.203.0", 24u8),
        ("10.213.0.0", 16),
        ("172.31.240.0", 20),
        ("192.168.250.0", 24),
        ("10.214.0.0", 16),
        ("10.215.0.0", 16),
        ("192.168.251.0", 24),
    ];
    let mut out = Vec::new();
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
            || avoid.iter().any(|x| prefix_contains(base, len, *x));
        if !clash {
            out.push(format!("{a}/{len}"));
            if out.len() == n {
                break;
            }
        }
    }
    if out.is_empty() {
        out.push("192.168.203.0/24".to_string());
    }
    out
}

/// The first of [`free_subnets`].
pub fn free_subnet(topo: &NsTopology, avoid: IpAddr) -> String {
    free_subnets(topo, &[avoid], 1).remove(0)
}

/// The first host address of `a.b.c.d/len` and the length.
fn gateway_of(subnet: &str) -> (String, String) {
    let gw = subnet
        .split('/')
        .next()
        .and_then(|a| a.parse::<Ipv4Addr>().ok())
        .map(|a| Ipv4Addr::from(u32::from(a) + 1).to_string())
        .unwrap_or_default();
    let len = subnet.split('/').nth(1).unwrap_or("24").to_string();
    (gw, len)
}

/// Who manages a bridge, as far as advice goes.
#[derive(Clone, Copy, Debug)]
pub enum BridgeOwner<'a> {
    /// Docker runs here; the network, when its API named it.
    Docker(Option<&'a DockerNetwork>),
    Other,
}

/// Moving a Docker network off a peer's network, in Docker's words and
/// with subnets checked free in `topo` (dockerd's namespace) and of the
/// peer.
pub fn docker_move(
    topo: &NsTopology,
    bridge: &str,
    prefix: &str,
    peer: IpAddr,
    net: Option<&DockerNetwork>,
) -> String {
    let free = free_subnets(topo, &[peer], 2);
    let (gw, len) = gateway_of(&free[0]);
    let pool = free.get(1).cloned().unwrap_or_else(|| free[0].clone());
    let name = net.map(|n| n.name.clone()).unwrap_or_else(|| {
        if bridge == "docker0" {
            "bridge".into()
        } else {
            String::new()
        }
    });
    if name == "bridge" || bridge == "docker0" {
        format!(
            "Move Docker's default network bridge ({bridge}, {prefix}) off {peer}'s network: in /etc/docker/daemon.json set \"bip\": \"{gw}/{len}\" and \"default-address-pools\": [{{\"base\": \"{pool}\", \"size\": 24}}], then restart dockerd (systemctl restart docker) and the containers on it"
        )
    } else if !name.is_empty() {
        let n = q(&name);
        format!(
            "Move Docker network {name} ({bridge}, {prefix}) off {peer}'s network: stop its containers, then docker network rm {n} && docker network create --subnet {} {n}, and start them again; set \"default-address-pools\": [{{\"base\": \"{pool}\", \"size\": 24}}] in /etc/docker/daemon.json so new networks avoid it too",
            free[0]
        )
    } else {
        format!(
            "Move {bridge} ({prefix}) off {peer}'s network: if it is a Docker network (docker network ls; its bridge is br-<id>), recreate it with docker network create --subnet {} NAME, and set \"default-address-pools\": [{{\"base\": \"{pool}\", \"size\": 24}}] in /etc/docker/daemon.json so new networks avoid it",
            free[0]
        )
    }
}

/// `via GW dev IF` towards `ifindex`'s gateway for `toward`'s family, or
/// `dev IF` when it has none (on-link). The family matters: a dual-stack
/// link has an IPv4 and an IPv6 gateway, and `ip -6 route add ... via`
/// an IPv4 address is refused.
pub fn route_via(topo: &NsTopology, ifindex: i32, toward: IpAddr) -> String {
    let name = topo
        .link(ifindex)
        .map(|l| l.name.clone())
        .unwrap_or_else(|| format!("if{ifindex}"));
    match topo
        .routes
        .iter()
        .filter(|r| r.oif == Some(ifindex))
        // The gateway's family is what `ip route add PEER via GW` needs.
        .find_map(|r| r.gateway.filter(|g| g.is_ipv4() == toward.is_ipv4()))
    {
        Some(gw) => format!("via {gw} dev {}", q(&name)),
        None => format!("dev {}", q(&name)),
    }
}

/// What to change when a bridge's subnet covers a peer that lives
/// elsewhere: move the bridge (in the words of whoever manages it), or,
/// for the host's own services only, route the peer back more
/// specifically. `container` names the container whose flow it is: no
/// host route can help it, since it resolves the peer itself.
#[allow(clippy::too_many_arguments)]
pub fn bridge_fixes(
    topo: &NsTopology,
    bridge: &str,
    prefix: &str,
    peer: IpAddr,
    ns_hint: &str,
    ingress: i32,
    owner: BridgeOwner,
    container: Option<&str>,
) -> Vec<Fix> {
    let free = free_subnet(topo, peer);
    let (gw, len) = gateway_of(&free);
    // Name the knob of whoever manages the bridge; the verdict itself never
    // depends on the name, only this advice does.
    let mut fixes = match owner {
        BridgeOwner::Docker(net) => vec![Fix::advice(docker_move(topo, bridge, prefix, peer, net))],
        // Advice only: `addr replace` adds the new address beside the old
        // one, and whatever manages the bridge must change too.
        BridgeOwner::Other => vec![Fix::advice(format!(
            "Move {bridge} ({prefix}) off the peer's network, e.g. to {free}: {ns_hint}ip addr replace {gw}/{len} dev {} (then update whatever manages it: libvirt net-edit, lxc network set, docker \"bip\")",
            q(bridge)
        ))],
    };
    match container {
        Some(c) => fixes.push(Fix::advice(format!(
            "No host route helps here: container {c} has {prefix} on-link and resolves {peer} itself, so its replies stay in {bridge} whatever the host's routes say"
        ))),
        None => {
            let cmd = format!(
                "{ns_hint}ip route add {} {}",
                host_route(peer),
                route_via(topo, ingress, peer)
            );
            fixes.push(Fix::run(
                format!("Stopgap for the host's own services only: route the peer back the way its packets arrive, more specifically than the bridge: {cmd}"),
                vec![cmd],
            ))
        }
    }
    fixes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_plain_words_and_defuses_the_rest() {
        assert_eq!(q("eth0"), "eth0");
        assert_eq!(q("q$(id)"), "'q$(id)'");
        assert_eq!(q("e\x1b]0;x\x07'\\"), "$'e\\x1b]0;x\\x07\\'\\\\'");
        assert_eq!(q("c1\u{9b}"), "$'c1\\xc2\\x9b'");
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

    #[test]
    fn route_via_takes_the_gateway_of_the_peers_family() {
        use crate::rules::testkit::{ip, link, route, topo};
        let t = topo(
            1,
            None,
            vec![link(2, "up1", None, 1500)],
            vec![
                route("0.0.0.0", 0, 2, Some("10.66.0.1")),
                route("::", 0, 2, Some("fd66::1")),
            ],
        );
        assert_eq!(route_via(&t, 2, ip("fd61:3::7")), "via fd66::1 dev up1");
        assert_eq!(route_via(&t, 2, ip("10.61.3.7")), "via 10.66.0.1 dev up1");
        // No gateway of the family on that link: on-link.
        let v4only = topo(
            1,
            None,
            vec![link(2, "up1", None, 1500)],
            vec![route("0.0.0.0", 0, 2, Some("10.66.0.1"))],
        );
        assert_eq!(route_via(&v4only, 2, ip("fd61:3::7")), "dev up1");
    }
}
