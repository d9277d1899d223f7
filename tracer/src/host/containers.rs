//! Which container a network namespace belongs to, so that drops, SYNs,
//! neighbour events and verdicts name it (`web-1`, not `4026532325`).
//!
//! Sources, best first:
//! - Docker's Engine API on its unix socket (`DOCKER_HOST=unix://...`, else
//!   /var/run/docker.sock), through `bollard`: every running container's
//!   `State.Pid` gives its netns (`/proc/PID/ns/net`), and its name, image,
//!   networks and published ports come with it. Docker's event stream
//!   (container start/die/destroy/rename, network create/destroy) triggers
//!   a fresh inventory; nothing is ever looked up per packet event.
//! - Without a Docker API, the cgroup of each process (`/proc/PID/cgroup`)
//!   names the runtime and the container id for containerd, CRI-O, podman
//!   and Kubernetes pods, and the container's name is its short id. A
//!   name is never taken from the process itself (its `HOSTNAME=`, its
//!   command): any process can set those to anything, newlines included,
//!   and claim to be any pod. `source` says which of the two named it.
//! - With no runtime at all the registry stays empty and nothing changes.
//!
//! The inventory runs on its own thread with its own runtime and publishes
//! a new [`Registry`] snapshot behind an `RwLock`; readers take an `Arc`.

use crate::host::netns::NetnsInfo;
use crate::host::topology::NsTopology;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// What a record says about the container its namespace belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRef {
    /// `docker`, `containerd`, `cri-o`, `podman`, `kubernetes`.
    pub runtime: String,
    pub id: String,
    /// The container's name (`web-1`), or for a cgroup-only find its short id.
    pub name: String,
    pub image: Option<String>,
    /// Kubernetes pod name and namespace, when it belongs to a pod.
    pub pod: Option<String>,
    pub pod_namespace: Option<String>,
    /// Who named it: `docker_api` (the runtime's own inventory) or `cgroup`
    /// (only the cgroup path: the runtime and id are the kernel's, the name
    /// is the short id). Empty in recordings made before this field.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
}

/// `ContainerRef::source` of a container the Docker Engine API listed.
pub const SOURCE_DOCKER_API: &str = "docker_api";
/// `ContainerRef::source` of a container known only by its cgroup path.
pub const SOURCE_CGROUP: &str = "cgroup";

/// One interface of a container and the host side of its veth pair.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerIf {
    pub ifindex: i32,
    pub ifname: String,
    pub host_netns: u32,
    pub host_ifindex: i32,
    pub host_ifname: Option<String>,
    /// The bridge the host side is a port of.
    pub host_bridge: Option<String>,
}

/// A network the container is attached to, as Docker sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerNet {
    pub name: String,
    pub id: String,
    pub address: Option<String>,
    pub prefix_len: Option<u8>,
    pub gateway: Option<String>,
}

/// `-p HOST_IP:HOST_PORT:CONTAINER_PORT/PROTO`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: String,
}

/// Everything known about one running container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    #[serde(flatten)]
    pub r: ContainerRef,
    pub pid: u32,
    pub netns: u32,
    #[serde(default)]
    pub interfaces: Vec<ContainerIf>,
    #[serde(default)]
    pub networks: Vec<ContainerNet>,
    #[serde(default)]
    pub ports: Vec<PublishedPort>,
}

impl Container {
    /// The host-side veth of the container's interface `ifindex` (or of its
    /// first interface when `ifindex` is not one of them).
    pub fn host_ifname(&self, ifindex: i32) -> Option<String> {
        self.interfaces
            .iter()
            .find(|i| i.ifindex == ifindex)
            .or_else(|| self.interfaces.first())
            .and_then(|i| i.host_ifname.clone())
    }

    pub fn interface(&self, ifindex: i32) -> Option<&ContainerIf> {
        self.interfaces.iter().find(|i| i.ifindex == ifindex)
    }

    /// `0.0.0.0:8080->8080/tcp, ...` for summaries.
    pub fn ports_text(&self) -> String {
        let mut v: Vec<String> = self
            .ports
            .iter()
            .map(|p| {
                format!(
                    "{}:{}->{}/{}",
                    if p.host_ip.is_empty() {
                        "0.0.0.0"
                    } else {
                        &p.host_ip
                    },
                    p.host_port,
                    p.container_port,
                    p.proto
                )
            })
            .collect();
        v.sort();
        v.dedup();
        v.join(", ")
    }
}

/// A Docker network and the bridge device that carries it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerNetwork {
    pub name: String,
    pub id: String,
    pub driver: String,
    /// `docker0` for the default `bridge` network, `br-<12 hex>` for a
    /// user-defined one (unless `com.docker.network.bridge.name` says).
    pub bridge: Option<String>,
    pub subnets: Vec<String>,
}

/// One consistent view of the containers and networks of the host.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    pub containers: Vec<Arc<Container>>,
    pub networks: Vec<DockerNetwork>,
    by_netns: HashMap<u32, Arc<Container>>,
    /// (host netns, host ifindex) -> the container behind that veth.
    by_host_if: HashMap<(u32, i32), Arc<Container>>,
    /// Docker's API answered (else the cgroup view filled it, if anything).
    pub docker: bool,
}

impl Registry {
    pub fn new(containers: Vec<Container>, networks: Vec<DockerNetwork>, docker: bool) -> Self {
        let containers: Vec<Arc<Container>> = containers.into_iter().map(Arc::new).collect();
        let mut by_netns = HashMap::new();
        let mut by_host_if = HashMap::new();
        for c in &containers {
            if c.netns != 0 {
                by_netns.entry(c.netns).or_insert_with(|| c.clone());
            }
            for i in &c.interfaces {
                by_host_if.insert((i.host_netns, i.host_ifindex), c.clone());
            }
        }
        Registry {
            containers,
            networks,
            by_netns,
            by_host_if,
            docker,
        }
    }

    pub fn by_netns(&self, netns: u32) -> Option<&Arc<Container>> {
        self.by_netns.get(&netns)
    }

    pub fn by_host_if(&self, netns: u32, ifindex: i32) -> Option<&Arc<Container>> {
        self.by_host_if.get(&(netns, ifindex))
    }

    /// The container with `addr` on one of its networks.
    pub fn by_addr(&self, addr: std::net::IpAddr) -> Option<&Arc<Container>> {
        let a = addr.to_string();
        self.containers
            .iter()
            .find(|c| c.networks.iter().any(|n| n.address.as_deref() == Some(&a)))
    }

    pub fn network_by_bridge(&self, bridge: &str) -> Option<&DockerNetwork> {
        self.networks
            .iter()
            .find(|n| n.bridge.as_deref() == Some(bridge))
    }

    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.networks.is_empty()
    }
}

/// The shared, refreshed registry. Cloning shares it.
#[derive(Clone, Default)]
pub struct Containers {
    inner: Arc<RwLock<Arc<Registry>>>,
}

impl Containers {
    /// An empty registry that nothing refreshes (tests, replays).
    pub fn empty() -> Self {
        Containers::default()
    }

    pub fn with(reg: Registry) -> Self {
        Containers {
            inner: Arc::new(RwLock::new(Arc::new(reg))),
        }
    }

    pub fn snapshot(&self) -> Arc<Registry> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn publish(&self, reg: Registry) {
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(reg);
    }

    /// Starts the inventory thread; [`Starting::ready`] waits for the
    /// first inventory, so the first events are already named. Never
    /// fails: with no runtime the registry stays empty.
    pub fn start() -> Starting {
        let c = Containers::default();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let shared = c.clone();
        let spawned = std::thread::Builder::new()
            .name("containers".into())
            .spawn(move || watch_thread(shared, tx));
        Starting {
            c,
            rx: spawned.ok().map(|_| rx),
        }
    }
}

/// An inventory under way (see [`Containers::start`]).
pub struct Starting {
    c: Containers,
    rx: Option<std::sync::mpsc::Receiver<()>>,
}

impl Starting {
    /// Waits at most `wait` for the first inventory.
    pub fn ready(self, wait: Duration) -> Containers {
        if let Some(rx) = self.rx {
            let _ = rx.recv_timeout(wait);
        }
        self.c
    }
}

/// The Docker socket to use: `DOCKER_HOST=unix://PATH`, else the default.
pub fn docker_socket() -> Option<PathBuf> {
    if let Ok(h) = std::env::var("DOCKER_HOST") {
        return h.strip_prefix("unix://").map(PathBuf::from);
    }
    Some(PathBuf::from("/var/run/docker.sock"))
}

fn watch_thread(shared: Containers, ready: std::sync::mpsc::Sender<()>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => {
            let _ = ready.send(());
            return;
        }
    };
    rt.block_on(async move {
        let mut ready = Some(ready);
        loop {
            let docker = match docker_socket() {
                Some(p) if p.exists() => connect(&p).await,
                _ => None,
            };
            match docker {
                Some(d) => {
                    // Returns when the event stream ends (dockerd stopped).
                    follow_docker(&d, &shared, &mut ready).await;
                }
                None => {
                    let reg = cgroup_inventory();
                    shared.publish(reg);
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
            }
            // No event stream to wait on: look again now and then.
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
}

async fn connect(sock: &Path) -> Option<bollard::Docker> {
    let d = bollard::Docker::connect_with_unix(
        &sock.to_string_lossy(),
        10,
        bollard::API_DEFAULT_VERSION,
    )
    .ok()?;
    // An older daemon (Debian's 20.10 speaks API 1.41) refuses newer paths.
    tokio::time::timeout(Duration::from_secs(3), d.negotiate_version())
        .await
        .ok()?
        .ok()
}

async fn follow_docker(
    d: &bollard::Docker,
    shared: &Containers,
    ready: &mut Option<std::sync::mpsc::Sender<()>>,
) {
    use futures_util::StreamExt;
    let mut filters = HashMap::new();
    filters.insert(
        "type".to_string(),
        vec!["container".to_string(), "network".to_string()],
    );
    filters.insert(
        "event".to_string(),
        [
            "start",
            "die",
            "destroy",
            "rename",
            "create",
            "connect",
            "disconnect",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    );
    // Subscribe first, then take the inventory: nothing falls in between.
    let mut events = d.events(Some(bollard::query_parameters::EventsOptions {
        filters: Some(filters),
        ..Default::default()
    }));
    match docker_inventory(d).await {
        Some(reg) => shared.publish(reg),
        None => return,
    }
    if let Some(r) = ready.take() {
        let _ = r.send(());
    }
    loop {
        match events.next().await {
            Some(Ok(_)) => {
                // Coalesce a burst (compose up) into one inventory.
                tokio::time::sleep(Duration::from_millis(50)).await;
                if let Some(reg) = docker_inventory(d).await {
                    shared.publish(reg);
                }
            }
            _ => return,
        }
    }
}

async fn docker_inventory(d: &bollard::Docker) -> Option<Registry> {
    let list = d.list_containers(None).await.ok()?;
    let nets = d.list_networks(None).await.unwrap_or_default();
    let networks: Vec<DockerNetwork> = nets.into_iter().map(network_of).collect();
    let mut inspected = Vec::new();
    for s in list {
        let Some(id) = s.id else { continue };
        if let Ok(i) = d.inspect_container(&id, None).await {
            inspected.push(i);
        }
    }
    // Namespaces are entered with setns: off the async runtime.
    let containers = tokio::task::spawn_blocking(move || {
        inspected
            .into_iter()
            .filter_map(container_of)
            .collect::<Vec<_>>()
    })
    .await
    .ok()?;
    Some(Registry::new(containers, networks, true))
}

fn network_of(n: bollard::models::Network) -> DockerNetwork {
    let id = n.id.unwrap_or_default();
    let driver = n.driver.unwrap_or_default();
    let name = n.name.unwrap_or_default();
    let opt_bridge = n
        .options
        .as_ref()
        .and_then(|o| o.get("com.docker.network.bridge.name"))
        .cloned();
    let bridge = if driver == "bridge" {
        opt_bridge.or_else(|| Some(format!("br-{}", id.get(..12).unwrap_or(&id))))
    } else {
        opt_bridge
    };
    let subnets = n
        .ipam
        .and_then(|i| i.config)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.subnet)
        .collect();
    DockerNetwork {
        name,
        id,
        driver,
        bridge,
        subnets,
    }
}

fn container_of(i: bollard::models::ContainerInspectResponse) -> Option<Container> {
    let pid = i.state.as_ref()?.pid.filter(|p| *p > 0)? as u32;
    let netns_path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let netns = std::fs::read_link(&netns_path)
        .ok()
        .and_then(|t| parse_ns_link(&t.to_string_lossy()))?;
    let id = i.id.unwrap_or_default();
    let name = i
        .name
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string();
    let labels = i
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    let image = i.config.as_ref().and_then(|c| c.image.clone());
    let mut networks = Vec::new();
    let mut ports = Vec::new();
    if let Some(ns) = &i.network_settings {
        for (nname, ep) in ns.networks.clone().unwrap_or_default() {
            networks.push(ContainerNet {
                name: nname,
                id: ep.network_id.unwrap_or_default(),
                address: ep.ip_address.filter(|a| !a.is_empty()),
                prefix_len: ep.ip_prefix_len.and_then(|l| u8::try_from(l).ok()),
                gateway: ep.gateway.filter(|g| !g.is_empty()),
            });
        }
        networks.sort_by(|a, b| a.name.cmp(&b.name));
        for (key, binds) in ns.ports.clone().unwrap_or_default() {
            let (port, proto) = key.split_once('/').unwrap_or((&key, "tcp"));
            let Ok(container_port) = port.parse::<u16>() else {
                continue;
            };
            for b in binds.unwrap_or_default() {
                let Some(host_port) = b.host_port.and_then(|p| p.parse::<u16>().ok()) else {
                    continue;
                };
                ports.push(PublishedPort {
                    host_ip: b.host_ip.unwrap_or_default(),
                    host_port,
                    container_port,
                    proto: proto.to_string(),
                });
            }
        }
        ports.sort_by(|a, b| {
            (a.host_port, &a.host_ip, &a.proto).cmp(&(b.host_port, &b.host_ip, &b.proto))
        });
    }
    let interfaces = interfaces_of(netns, &netns_path);
    Some(Container {
        r: ContainerRef {
            runtime: "docker".into(),
            id,
            name,
            image,
            pod: labels.get("io.kubernetes.pod.name").cloned(),
            pod_namespace: labels.get("io.kubernetes.pod.namespace").cloned(),
            source: SOURCE_DOCKER_API.into(),
        },
        pid,
        netns,
        interfaces,
        networks,
        ports,
    })
}

fn parse_ns_link(target: &str) -> Option<u32> {
    target
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The container's veth interfaces and their host-side peers (found through
/// the peer ifindex and link netns, read over netlink in each namespace).
fn interfaces_of(netns: u32, path: &Path) -> Vec<ContainerIf> {
    let info = NetnsInfo {
        inode: netns,
        name: None,
        path: path.to_path_buf(),
    };
    let Ok(topo) = NsTopology::read(&info) else {
        return Vec::new();
    };
    let mut peers: HashMap<u32, Option<NsTopology>> = HashMap::new();
    let mut out = Vec::new();
    for l in &topo.links {
        if l.kind.as_deref() != Some("veth") {
            continue;
        }
        let (Some(peer_if), Some(peer_ns)) = (l.link, l.peer_netns) else {
            continue;
        };
        if peer_ns == netns {
            continue;
        }
        let host = peers.entry(peer_ns).or_insert_with(|| {
            crate::host::netns::find(peer_ns).and_then(|i| NsTopology::read(&i).ok())
        });
        let host_link = host.as_ref().and_then(|t| t.link(peer_if));
        let host_bridge = host_link
            .and_then(|hl| hl.master)
            .and_then(|m| host.as_ref().and_then(|t| t.link(m)))
            .map(|b| b.name.clone());
        out.push(ContainerIf {
            ifindex: l.ifindex,
            ifname: l.name.clone(),
            host_netns: peer_ns,
            host_ifindex: peer_if,
            host_ifname: host_link.map(|h| h.name.clone()),
            host_bridge,
        });
    }
    out
}

/// What a cgroup path says: (runtime, container id).
pub fn runtime_of_cgroup(cgroup: &str) -> Option<(&'static str, String)> {
    let is_id = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    for part in cgroup.split('/').rev() {
        let p = part.trim_end_matches(".scope");
        let found = [
            ("docker-", "docker"),
            ("cri-containerd-", "containerd"),
            ("crio-", "cri-o"),
            ("libpod-", "podman"),
        ]
        .iter()
        .find_map(|(pre, rt)| {
            p.strip_prefix(pre)
                .filter(|id| is_id(id))
                .map(|id| (*rt, id))
        });
        if let Some((rt, id)) = found {
            return Some((rt, id.to_string()));
        }
        // cgroupfs layouts: /docker/<id>, /kubepods/.../<id>
        if is_id(p) {
            let rt = if cgroup.contains("kubepods") {
                "kubernetes"
            } else if cgroup.contains("/docker/") {
                "docker"
            } else {
                "containerd"
            };
            return Some((rt, p.to_string()));
        }
    }
    None
}

/// Containers as the cgroup view shows them: one per netns other than
/// ours whose first process sits in a container's cgroup.
fn cgroup_inventory() -> Registry {
    let own = crate::host::netns::own_inode().unwrap_or(0);
    let mut by_ns: HashMap<u32, Container> = HashMap::new();
    for pid in crate::host::proc::pids() {
        let Some(netns) = std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .ok()
            .and_then(|t| parse_ns_link(&t.to_string_lossy()))
        else {
            continue;
        };
        if netns == own || by_ns.contains_key(&netns) {
            continue;
        }
        let Ok(cg) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue;
        };
        let Some((runtime, id)) = cg.lines().find_map(|l| {
            let path = l.splitn(3, ':').nth(2)?;
            runtime_of_cgroup(path)
        }) else {
            continue;
        };
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        by_ns.insert(
            netns,
            Container {
                r: ContainerRef {
                    runtime: runtime.to_string(),
                    name: id[..12].to_string(),
                    id,
                    image: None,
                    // The pod's name is not in the cgroup path (its UID
                    // is), and the process's own word is not evidence.
                    pod: None,
                    pod_namespace: None,
                    source: SOURCE_CGROUP.into(),
                },
                pid,
                netns,
                interfaces: interfaces_of(netns, &path),
                networks: Vec::new(),
                ports: Vec::new(),
            },
        );
    }
    let mut v: Vec<Container> = by_ns.into_values().collect();
    v.sort_by_key(|c| c.netns);
    Registry::new(v, Vec::new(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_name_runtime_and_id() {
        let id = "f3f911fdbc2f".repeat(5) + "abcd";
        assert_eq!(id.len(), 64);
        assert_eq!(
            runtime_of_cgroup(&format!("/system.slice/docker-{id}.scope")),
            Some(("docker", id.clone()))
        );
        assert_eq!(
            runtime_of_cgroup(&format!("/docker/{id}")),
            Some(("docker", id.clone()))
        );
        assert_eq!(
            runtime_of_cgroup(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-{id}.scope"
            )),
            Some(("containerd", id.clone()))
        );
        assert_eq!(
            runtime_of_cgroup(&format!("/kubepods/besteffort/pod1234/{id}")),
            Some(("kubernetes", id.clone()))
        );
        assert_eq!(
            runtime_of_cgroup(&format!("/machine.slice/libpod-{id}.scope")),
            Some(("podman", id.clone()))
        );
        assert_eq!(runtime_of_cgroup("/user.slice/session-1.scope"), None);
        assert_eq!(runtime_of_cgroup("/"), None);
    }

    #[test]
    fn registry_indexes_netns_and_host_veths() {
        let c = Container {
            r: ContainerRef {
                runtime: "docker".into(),
                id: "abc".into(),
                name: "web-1".into(),
                ..Default::default()
            },
            pid: 42,
            netns: 7,
            interfaces: vec![ContainerIf {
                ifindex: 2,
                ifname: "eth0".into(),
                host_netns: 1,
                host_ifindex: 9,
                host_ifname: Some("veth1234".into()),
                host_bridge: Some("docker0".into()),
            }],
            ports: vec![PublishedPort {
                host_ip: "0.0.0.0".into(),
                host_port: 8080,
                container_port: 80,
                proto: "tcp".into(),
            }],
            ..Default::default()
        };
        let r = Registry::new(vec![c], vec![], true);
        assert_eq!(r.by_netns(7).unwrap().r.name, "web-1");
        assert_eq!(r.by_host_if(1, 9).unwrap().r.name, "web-1");
        assert!(r.by_netns(8).is_none());
        let c = r.by_netns(7).unwrap();
        assert_eq!(c.host_ifname(2).as_deref(), Some("veth1234"));
        assert_eq!(c.ports_text(), "0.0.0.0:8080->80/tcp");
    }

    #[test]
    fn docker_network_bridge_names() {
        let n = network_of(bollard::models::Network {
            name: Some("appnet".into()),
            id: Some("0123456789abcdef0123".into()),
            driver: Some("bridge".into()),
            ..Default::default()
        });
        assert_eq!(n.bridge.as_deref(), Some("br-0123456789ab"));
        let mut opts = HashMap::new();
        opts.insert(
            "com.docker.network.bridge.name".to_string(),
            "docker0".to_string(),
        );
        let n = network_of(bollard::models::Network {
            name: Some("bridge".into()),
            id: Some("ffff".into()),
            driver: Some("bridge".into()),
            options: Some(opts),
            ..Default::default()
        });
        assert_eq!(n.bridge.as_deref(), Some("docker0"));
    }
}
