//! What every lab scenario takes and gives: the operator's machine as
//! [`Params`], and a [`Built`] lab ready for its traffic.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// What the operator's machine looks like; the defaults are Docker's.
#[derive(Clone, Debug)]
pub struct Params {
    /// The bridge the container hangs off (`docker0`).
    pub bridge: String,
    /// The host's address on the bridge, with the bridge subnet's prefix.
    pub bridge_cidr: String,
    /// The container's address, inside the bridge subnet.
    pub container_addr: String,
    /// The customer client in the bridge-subnet labs; it must fall inside
    /// the bridge subnet, since that overlap is the incident.
    pub client_addr: String,
    /// The host's uplink interface name.
    pub uplink: String,
    /// The uplink's MTU in the overlay labs.
    pub uplink_mtu: u32,
    /// MTU of the bridge, the veth and the container in the overlay labs.
    pub inner_mtu: u32,
    /// Overlay labs only: run them over IPv6 alone. `bridge_cidr` and
    /// `container_addr` must then be IPv6. The other labs refuse it
    /// (rp_filter is IPv4-only; the veth lab has fixed IPv4 addresses).
    pub ipv6: bool,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            bridge: "docker0".into(),
            bridge_cidr: "172.17.0.1/16".into(),
            container_addr: "172.17.0.2".into(),
            client_addr: "172.17.5.5".into(),
            uplink: "eth0".into(),
            uplink_mtu: 1450,
            inner_mtu: 1500,
            ipv6: false,
        }
    }
}

impl Params {
    /// The defaults with an IPv6 bridge subnet, for the IPv6 variants.
    pub fn ipv6() -> Params {
        Params {
            bridge_cidr: "fd00:17::1/64".into(),
            container_addr: "fd00:17::2".into(),
            ipv6: true,
            ..Params::default()
        }
    }
}

/// A built lab, ready for its traffic.
pub struct Built {
    /// Names of the namespaces the diagnosis should trace (all lab namespaces that matter).
    pub trace: Vec<String>,
    /// The namespace that plays "the host" (the Docker host where the operator runs tracer).
    pub host: String,
    /// Generates the failing traffic; blocks for a bounded time (at most ~8 s), then returns.
    /// Errors only for setup failures, never because the traffic failed (failing is the point).
    pub traffic: Box<dyn FnOnce() -> anyhow::Result<()> + Send>,
    /// Payload bytes the victim application received, updated while the
    /// traffic runs: the container's download in the overlay labs, the
    /// UDP receiver in `veth-mtu-mismatch`. `None` in the bridge-subnet
    /// labs, where no connection is ever established.
    pub received: Option<Arc<AtomicU64>>,
    /// What must live as long as the lab runs (the Docker labs' dockerd).
    pub keep_alive: Option<Box<dyn std::any::Any + Send>>,
    /// The Docker API the diagnosis should name containers through.
    pub docker_host: Option<String>,
}
