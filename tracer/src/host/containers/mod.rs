//! Which container a network namespace belongs to, so that drops, SYNs,
//! neighbour events and verdicts name it (`web-1`, not `4026532325`).
//!
//! Sources, one file each, best first (a namespace one of them names is
//! not named again by a later one):
//! - [`docker`]: Docker's Engine API on its socket.
//! - [`podman`]: podman's service, through its Docker-compatible API.
//! - [`containerd`]: containerd's gRPC API, in every containerd namespace
//!   (`k8s.io` for Kubernetes): the pod's name and namespace come from the
//!   labels kubelet puts on each container.
//! - [`cgroup`]: only when none of the APIs answers, the cgroup path of
//!   each process gives the runtime and the id; the name is the short id.
//!
//! Each API source refreshes from its runtime's event stream; nothing is
//! ever looked up per packet event. `ContainerRef::source` says which
//! source named a container. With no runtime at all the registry stays
//! empty and nothing changes.
//!
//! The sources run on one thread with its own runtime; each change
//! publishes a new [`Registry`] snapshot behind an `RwLock`; readers take
//! an `Arc`.

mod cgroup;
mod containerd;
mod docker;
mod podman;

pub use cgroup::runtime_of_cgroup;
pub use docker::docker_socket;

use crate::host::netns::NetnsInfo;
use crate::host::topology::NsTopology;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
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
    /// Who named it: `docker_api`, `podman_api`, `containerd_api` (the
    /// runtime's own inventory) or `cgroup` (only the cgroup path: the
    /// runtime and id are the kernel's, the name is the short id). Empty in
    /// recordings made before this field.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
}

/// `ContainerRef::source` of a container the Docker Engine API listed.
pub const SOURCE_DOCKER_API: &str = "docker_api";
/// `ContainerRef::source` of a container podman's service listed.
pub const SOURCE_PODMAN_API: &str = "podman_api";
/// `ContainerRef::source` of a container containerd's API listed.
pub const SOURCE_CONTAINERD_API: &str = "containerd_api";
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
    /// Docker's API answered.
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

/// What one source last saw.
#[derive(Clone, Debug, Default)]
struct View {
    containers: Vec<Container>,
    networks: Vec<DockerNetwork>,
}

/// The sources, in the order they win a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Docker = 0,
    Podman = 1,
    Containerd = 2,
    Cgroup = 3,
}

const APIS: [Source; 3] = [Source::Docker, Source::Podman, Source::Containerd];

/// Each source's last view; every change publishes their union.
struct Merger {
    shared: Containers,
    views: std::sync::Mutex<[Option<View>; 4]>,
    /// How many API sources have made their first attempt (answered or
    /// not): the cgroup fallback waits for all of them, and so does
    /// [`Starting::ready`].
    tried: tokio::sync::watch::Sender<[bool; 3]>,
}

impl Merger {
    fn set(&self, src: Source, view: Option<View>) {
        let views = {
            let mut g = self.views.lock().unwrap_or_else(|e| e.into_inner());
            // An absent runtime is told every few seconds: nothing changed.
            if view.is_none() && g[src as usize].is_none() {
                return;
            }
            g[src as usize] = view;
            g.clone()
        };
        self.shared.publish(merge(&views));
    }

    fn api_up(&self) -> bool {
        let g = self.views.lock().unwrap_or_else(|e| e.into_inner());
        APIS.iter().any(|s| g[*s as usize].is_some())
    }

    fn tried(&self, src: Source) {
        if let Some(i) = APIS.iter().position(|s| *s == src) {
            self.tried
                .send_if_modified(|t| !std::mem::replace(&mut t[i], true));
        }
    }
}

/// The union of the views: a namespace belongs to the first source that
/// names it (Docker's own containers also show in containerd's `moby`
/// namespace; Docker's view has their names).
fn merge(views: &[Option<View>; 4]) -> Registry {
    let mut containers = Vec::new();
    let mut networks = Vec::new();
    let mut claimed = std::collections::HashSet::new();
    for v in views.iter().flatten() {
        let mine: std::collections::HashSet<u32> = v
            .containers
            .iter()
            .map(|c| c.netns)
            .filter(|n| !claimed.contains(n))
            .collect();
        containers.extend(
            v.containers
                .iter()
                .filter(|c| mine.contains(&c.netns))
                .cloned(),
        );
        networks.extend(v.networks.iter().cloned());
        claimed.extend(mine);
    }
    Registry::new(
        containers,
        networks,
        views[Source::Docker as usize].is_some(),
    )
}

/// What a source publishes through.
struct Feed<'a> {
    m: &'a Merger,
    src: Source,
}

impl Feed<'_> {
    /// A new view (`None`: the runtime went away); the first call also
    /// counts as the source's first attempt.
    fn publish(&self, view: Option<View>) {
        self.m.set(self.src, view);
        self.m.tried(self.src);
    }
}

fn watch_thread(shared: Containers, ready: std::sync::mpsc::Sender<()>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        // Its blocking threads (the cgroup inventory) are named like it.
        .thread_name("containers")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => {
            let _ = ready.send(());
            return;
        }
    };
    let (tried, _) = tokio::sync::watch::channel([false; 3]);
    let m = Merger {
        shared,
        views: Default::default(),
        tried,
    };
    let m = &m;
    rt.block_on(async move {
        tokio::join!(
            api_loop(m, Source::Docker),
            api_loop(m, Source::Podman),
            api_loop(m, Source::Containerd),
            cgroup_loop(m, ready),
        );
    });
}

/// Follows one runtime's API for as long as it answers, then looks again
/// now and then (a runtime started after us is found within seconds).
async fn api_loop(m: &Merger, src: Source) {
    let feed = Feed { m, src };
    loop {
        match src {
            Source::Docker => docker::follow(docker_socket(), docker::DOCKER, &feed).await,
            Source::Podman => podman::follow(&feed).await,
            Source::Containerd => containerd::follow(&feed).await,
            Source::Cgroup => return,
        }
        feed.publish(None);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// The cgroup view, only while no API answers. It has no event stream of
/// its own: it is taken again when a namespace is named or unnamed (the
/// namespace index's events: Docker, CNI and podman bind-mount theirs), and
/// at least every [`CGROUP_BACKSTOP`], never as a `/proc` walk every few
/// seconds (issue 22).
async fn cgroup_loop(m: &Merger, ready: std::sync::mpsc::Sender<()>) {
    let mut tried = m.tried.subscribe();
    let _ = tried.wait_for(|t| t.iter().all(|b| *b)).await;
    let mut ready = Some(ready);
    let mut seen: Option<(u64, std::time::Instant)> = None;
    loop {
        // One non-blocking read of the index's watch.
        let generation = crate::host::netns::generation();
        let due = seen.is_none_or(|(g, at)| g != generation || at.elapsed() >= CGROUP_BACKSTOP);
        if m.api_up() {
            m.set(Source::Cgroup, None);
        } else if due {
            seen = Some((generation, std::time::Instant::now()));
            // Namespaces are entered with setns: off the async runtime.
            let v = tokio::task::spawn_blocking(cgroup::inventory)
                .await
                .unwrap_or_default();
            m.set(Source::Cgroup, Some(v));
        }
        if let Some(r) = ready.take() {
            let _ = r.send(());
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// The longest the cgroup view goes untaken while no API answers.
const CGROUP_BACKSTOP: Duration = Duration::from_secs(60);

/// The netns inode of process `pid`.
fn netns_of_pid(pid: u32) -> Option<u32> {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .ok()
        .and_then(|t| parse_ns_link(&t.to_string_lossy()))
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
    interfaces_with(netns, path, &mut HashMap::new())
}

/// Host namespaces already read in one inventory, by inode: the host side
/// of a thousand containers is often one namespace, read once, not once per
/// container (issue 22).
type Peers = HashMap<u32, Option<NsTopology>>;

/// [`interfaces_of`], sharing the host namespaces read in `peers`.
fn interfaces_with(netns: u32, path: &Path, peers: &mut Peers) -> Vec<ContainerIf> {
    let info = NetnsInfo {
        inode: netns,
        name: None,
        path: path.to_path_buf(),
    };
    let Ok(topo) = NsTopology::read(&info) else {
        return Vec::new();
    };
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

#[cfg(test)]
mod tests {
    use super::*;

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

    fn named(name: &str, runtime: &str, netns: u32) -> Container {
        Container {
            r: ContainerRef {
                runtime: runtime.into(),
                name: name.into(),
                ..Default::default()
            },
            netns,
            ..Default::default()
        }
    }

    #[test]
    fn the_first_source_to_name_a_netns_keeps_it() {
        let view = |cs: Vec<Container>| {
            Some(View {
                containers: cs,
                networks: Vec::new(),
            })
        };
        let views = [
            view(vec![named("web-1", "docker", 7)]),
            None,
            // Docker's container again (containerd's `moby` namespace), and
            // a pod's two containers sharing one netns.
            view(vec![
                named("f00d", "docker", 7),
                named("nginx", "containerd", 8),
                named("sidecar", "containerd", 8),
            ]),
            view(vec![named("abcdef", "containerd", 9)]),
        ];
        let r = merge(&views);
        assert_eq!(r.by_netns(7).unwrap().r.name, "web-1");
        assert_eq!(r.by_netns(8).unwrap().r.name, "nginx");
        assert_eq!(r.by_netns(9).unwrap().r.name, "abcdef");
        assert_eq!(r.containers.len(), 4);
        assert!(r.docker);
    }
}
