//! Small labs, one per everyday cause of a drop: a closed port, a
//! firewall rule, a missing route, forwarding switched off, a next hop
//! that never answers ARP, a full queue. Each is two or three namespaces
//! and a few UDP datagrams; they give every verdict kind a real run (and
//! a recording for the rules' replay tests).
//!
//! Addresses: 10.66.1.0/24 between `a` and its peer, 10.66.2.0/24 behind
//! the router; nothing here depends on the incident parameters.

use super::incident::{Built, Params};
use super::traffic::in_netns;
use anyhow::{bail, Context, Result};
use netlab::{Netlab, Routed};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

const A: Ipv4Addr = Ipv4Addr::new(10, 66, 1, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 66, 1, 2);
const FAR: Ipv4Addr = Ipv4Addr::new(10, 66, 2, 2);
const PORT: u16 = 5001;

fn v4_only(p: &Params, lab: &str) -> Result<()> {
    if p.ipv6 {
        bail!("{lab} has no IPv6 variant");
    }
    Ok(())
}

/// `a` and `b` joined by a veth pair (eth0 on both), 10.66.1.0/24.
fn pair(lab: &mut Netlab, b: &str) -> Result<()> {
    lab.ns("a")?;
    lab.ns(b)?;
    lab.veth("a", "eth0", b, "eth0")?;
    lab.exec("a", &format!("ip addr add {A}/24 dev eth0"))?;
    lab.exec(b, &format!("ip addr add {PEER}/24 dev eth0"))?;
    Ok(())
}

/// `a` -- `r` -- `b`, `a` routing everything through `r`.
fn routed(lab: &mut Netlab, forwarding: bool) -> Result<()> {
    Routed {
        client: "a",
        router: "r",
        server: "b",
        server_if: "eth0",
        client_addr: A,
        router_client_addr: PEER,
        router_server_addr: Ipv4Addr::new(10, 66, 2, 1),
        server_addr: FAR,
        forwarding,
    }
    .build(lab)
}

/// Sends `count` UDP datagrams of `len` bytes from namespace `ns` to
/// `target`, `gap` apart. Send errors are ignored: losing them is the point.
fn udp_burst(
    ns: PathBuf,
    target: SocketAddr,
    len: usize,
    count: usize,
    gap: Duration,
) -> Box<dyn FnOnce() -> Result<()> + Send> {
    Box::new(move || {
        in_netns(&ns, move || -> io::Result<()> {
            let tx = UdpSocket::bind("0.0.0.0:0")?;
            let payload = vec![b'x'; len];
            for _ in 0..count {
                let _ = tx.send_to(&payload, target);
                if !gap.is_zero() {
                    std::thread::sleep(gap);
                }
            }
            Ok(())
        })?
        .context("cannot send UDP in the lab")
    })
}

fn built(lab: &Netlab, trace: &[&str], traffic: Box<dyn FnOnce() -> Result<()> + Send>) -> Built {
    Built {
        trace: trace.iter().map(|s| lab.name(s)).collect(),
        host: lab.name("a"),
        traffic,
        received: None,
        keep_alive: None,
        docker_host: None,
    }
}

/// UDP to a port nothing listens on: `NO_SOCKET`, answered with ICMP.
pub fn port_closed(lab: &mut Netlab, p: &Params) -> Result<Built> {
    v4_only(p, "port-closed")?;
    pair(lab, "b")?;
    let target = SocketAddr::new(PEER.into(), PORT);
    let traffic = udp_burst(lab.path("a"), target, 64, 3, Duration::from_millis(100));
    Ok(built(lab, &["a", "b"], traffic))
}

/// An iptables rule in `b` drops UDP to its port: `NETFILTER_DROP`.
pub fn firewall_drop(lab: &mut Netlab, p: &Params) -> Result<Built> {
    v4_only(p, "firewall-drop")?;
    pair(lab, "b")?;
    lab.exec(
        "b",
        &format!("iptables -A INPUT -p udp --dport {PORT} -j DROP"),
    )?;
    let target = SocketAddr::new(PEER.into(), PORT);
    let traffic = udp_burst(lab.path("a"), target, 64, 3, Duration::from_millis(100));
    Ok(built(lab, &["a", "b"], traffic))
}

/// The router has no route to 10.66.9.0/24: `IP_INNOROUTES`.
pub fn no_route(lab: &mut Netlab, p: &Params) -> Result<Built> {
    v4_only(p, "no-route")?;
    routed(lab, true)?;
    let target = SocketAddr::new(Ipv4Addr::new(10, 66, 9, 1).into(), PORT);
    let traffic = udp_burst(lab.path("a"), target, 64, 3, Duration::from_millis(100));
    Ok(built(lab, &["a", "r"], traffic))
}

/// The router has forwarding off: `IP_INADDRERRORS`, silently.
pub fn forwarding_off(lab: &mut Netlab, p: &Params) -> Result<Built> {
    v4_only(p, "forwarding-off")?;
    routed(lab, false)?;
    let target = SocketAddr::new(FAR.into(), PORT);
    let traffic = udp_burst(lab.path("a"), target, 64, 3, Duration::from_millis(100));
    Ok(built(lab, &["a", "r", "b"], traffic))
}

/// `a` routes 10.66.8.0/24 through 10.66.1.9, which is on the link but
/// does not exist: ARP fails, the queued packets die as `NEIGH_FAILED`.
/// ARP gives up after one probe of 200 ms here (three of a second by
/// default), so the lab stays short.
pub fn neighbor_down(lab: &mut Netlab, p: &Params) -> Result<Built> {
    v4_only(p, "neighbor-down")?;
    pair(lab, "b")?;
    lab.exec(
        "a",
        "ip route add 10.66.8.0/24 via 10.66.1.9 dev eth0 && \
         sysctl -qw net.ipv4.neigh.eth0.mcast_solicit=1 net.ipv4.neigh.eth0.ucast_solicit=0 \
         net.ipv4.neigh.eth0.app_solicit=0 net.ipv4.neigh.eth0.retrans_time_ms=200",
    )?;
    let target = SocketAddr::new(Ipv4Addr::new(10, 66, 8, 1).into(), PORT);
    let traffic = udp_burst(lab.path("a"), target, 64, 3, Duration::from_millis(300));
    Ok(built(lab, &["a", "b"], traffic))
}

/// A token bucket of 1 Mbit/s with 3000 bytes of queue on `a`'s eth0
/// and a sender that offers far more: the queue overflows.
pub fn qdisc_full(lab: &mut Netlab, p: &Params) -> Result<Built> {
    v4_only(p, "qdisc-full")?;
    pair(lab, "b")?;
    lab.exec(
        "a",
        "tc qdisc add dev eth0 root handle 8001: tbf rate 1mbit burst 1600 limit 3000",
    )?;
    // A receiver, so that what passes the queue is not a NO_SOCKET drop.
    let target = SocketAddr::new(PEER.into(), PORT);
    let rx = in_netns(&lab.path("b"), move || UdpSocket::bind(target))?
        .with_context(|| format!("cannot bind UDP {target} in the lab"))?;
    let send = udp_burst(lab.path("a"), target, 1000, 40, Duration::ZERO);
    let traffic = Box::new(move || -> Result<()> {
        let _rx = rx;
        send()?;
        // Let the bucket drain what it queued.
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    });
    Ok(built(lab, &["a", "b"], traffic))
}
