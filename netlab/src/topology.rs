//! The two topologies the labs, tests and bench share: a routed path
//! (client -- router -- server) and, on top of it, the bridge-subnet
//! conflict that reverse-path filtering trips over.

use crate::Netlab;
use anyhow::Result;
use std::net::Ipv4Addr;

/// client (eth0) -- (eth0) router (eth1) -- (`server_if`) server, each
/// link a /24; the client and the server route everything through the
/// router. Namespaces are created in that order, and so are the veth
/// pairs (so interface indexes are the same from run to run).
#[derive(Clone, Copy, Debug)]
pub struct Routed<'a> {
    pub client: &'a str,
    pub router: &'a str,
    pub server: &'a str,
    /// The server's interface towards the router.
    pub server_if: &'a str,
    pub client_addr: Ipv4Addr,
    /// The router on the client's link: the client's gateway.
    pub router_client_addr: Ipv4Addr,
    /// The router on the server's link: the server's gateway.
    pub router_server_addr: Ipv4Addr,
    pub server_addr: Ipv4Addr,
    /// The router's `net.ipv4.ip_forward`.
    pub forwarding: bool,
}

impl Routed<'_> {
    /// Namespaces, links, addresses and routes, in `lab`.
    pub fn build(&self, lab: &mut Netlab) -> Result<()> {
        for n in [self.client, self.router, self.server] {
            lab.ns(n)?;
        }
        lab.veth(self.client, "eth0", self.router, "eth0")?;
        lab.veth(self.router, "eth1", self.server, self.server_if)?;
        lab.exec(
            self.client,
            &format!(
                "ip addr add {}/24 dev eth0 && ip route add default via {}",
                self.client_addr, self.router_client_addr
            ),
        )?;
        lab.exec(
            self.router,
            &format!(
                "ip addr add {}/24 dev eth0 && ip addr add {}/24 dev eth1 && \
                 sysctl -qw net.ipv4.ip_forward={}",
                self.router_client_addr,
                self.router_server_addr,
                u8::from(self.forwarding)
            ),
        )?;
        lab.exec(
            self.server,
            &format!(
                "ip addr add {}/24 dev {} && ip route add default via {}",
                self.server_addr, self.server_if, self.router_server_addr
            ),
        )?;
        Ok(())
    }
}

/// A routed path whose server is a container host: a bridge with one
/// container behind it, whose subnet covers the source the client sends
/// from. The host has no route for the client's network, so its connected
/// bridge route answers the reverse-path lookup for the client's packets:
/// with strict rp_filter every one is dropped on the host's uplink; with
/// loose rp_filter the host's answers go into the bridge.
#[derive(Clone, Copy, Debug)]
pub struct BridgeConflict<'a> {
    /// client -- router -- host; its `server` is the host, `server_if`
    /// the host's uplink.
    pub path: Routed<'a>,
    pub container: &'a str,
    pub bridge: &'a str,
    /// The host's address on the bridge and the bridge subnet's prefix.
    pub bridge_addr: Ipv4Addr,
    pub bridge_len: u8,
    /// The host's end of the container's veth pair.
    pub port: &'a str,
    pub container_addr: Ipv4Addr,
    /// The container routes everything into the bridge, as Docker's do.
    pub container_default_route: bool,
    /// When the client's own address is not in the bridge subnet: an
    /// address on the client's loopback that is, which it sends from
    /// (and the router routes back to it).
    pub client_source: Option<Ipv4Addr>,
    /// `net.ipv4.conf.{all,<uplink>}.rp_filter` on the host.
    pub rp_filter: u8,
    /// The host forwards (`ip_forward=1`), as a Docker host always does;
    /// else its ip_forward stays as the new namespace got it.
    pub host_forwarding: bool,
}

impl BridgeConflict<'_> {
    pub fn build(&self, lab: &mut Netlab) -> Result<()> {
        let p = &self.path;
        self.path.build(lab)?;
        lab.ns(self.container)?;
        lab.veth(self.container, "eth0", p.server, self.port)?;
        if let Some(src) = self.client_source {
            lab.exec(
                p.client,
                &format!(
                    "ip addr add {src}/32 dev lo && \
                     ip route replace default via {} src {src}",
                    p.router_client_addr
                ),
            )?;
            lab.exec(
                p.router,
                &format!("ip route add {src}/32 via {}", p.client_addr),
            )?;
        }
        // The effective rp_filter is max(all, uplink), so both are set. The
        // slash form of the sysctl key keeps a dotted interface name intact.
        let (bridge, port, uplink, rp) = (self.bridge, self.port, p.server_if, self.rp_filter);
        let forward = if self.host_forwarding {
            "net.ipv4.ip_forward=1 "
        } else {
            ""
        };
        lab.exec(
            p.server,
            &format!(
                "ip link add {bridge} type bridge && ip link set {port} master {bridge} && \
                 ip link set {bridge} up && ip addr add {}/{} dev {bridge} && \
                 sysctl -qw {forward}net.ipv4.conf.all.rp_filter={rp} \
                 net/ipv4/conf/{uplink}/rp_filter={rp}",
                self.bridge_addr, self.bridge_len
            ),
        )?;
        let route = if self.container_default_route {
            format!(" && ip route add default via {}", self.bridge_addr)
        } else {
            String::new()
        };
        lab.exec(
            self.container,
            &format!(
                "ip addr add {}/{} dev eth0{route}",
                self.container_addr, self.bridge_len
            ),
        )?;
        Ok(())
    }
}
