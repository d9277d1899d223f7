//! Docker's Engine API on its unix socket (`DOCKER_HOST=unix://...`, else
//! /var/run/docker.sock), through `bollard`: every running container's
//! `State.Pid` gives its netns (`/proc/PID/ns/net`), and its name, image,
//! networks and published ports come with it. Docker's event stream
//! (container start/die/destroy/rename, network create/destroy) triggers
//! a fresh inventory; nothing is ever looked up per packet event.
//!
//! Podman's Docker-compatible API is the same protocol, so `podman.rs`
//! follows it with these functions and its own [`Flavor`].

use super::{
    interfaces_of, netns_of_pid, Container, ContainerNet, ContainerRef, DockerNetwork, Feed,
    PublishedPort, View, SOURCE_DOCKER_API,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What tells one Engine-API runtime from another.
#[derive(Clone, Copy)]
pub(super) struct Flavor {
    /// `ContainerRef::runtime`.
    pub runtime: &'static str,
    /// `ContainerRef::source`.
    pub source: &'static str,
    /// Whether the runtime's networks are Docker bridges (`docker0`,
    /// `br-<id>`) that the rules may name in fixes. Podman's are not.
    pub networks: bool,
    /// Event names to refresh on; empty: every container event (podman's
    /// compatible stream names some events its own way).
    pub events: &'static [&'static str],
}

pub(super) const DOCKER: Flavor = Flavor {
    runtime: "docker",
    source: SOURCE_DOCKER_API,
    networks: true,
    events: &[
        "start",
        "die",
        "destroy",
        "rename",
        "create",
        "connect",
        "disconnect",
    ],
};

/// The Docker socket to use: `DOCKER_HOST=unix://PATH`, else the default.
pub fn docker_socket() -> Option<PathBuf> {
    if let Ok(h) = std::env::var("DOCKER_HOST") {
        return h.strip_prefix("unix://").map(PathBuf::from);
    }
    Some(PathBuf::from("/var/run/docker.sock"))
}

/// Follows the Engine API at `sock` until its event stream ends (the daemon
/// stopped) or it does not answer at all.
pub(super) async fn follow(sock: Option<PathBuf>, flavor: Flavor, feed: &Feed<'_>) {
    let d = match sock {
        Some(p) if p.exists() => connect(&p).await,
        _ => None,
    };
    if let Some(d) = d {
        follow_events(&d, flavor, feed).await;
    }
}

pub(super) async fn connect(sock: &Path) -> Option<bollard::Docker> {
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

async fn follow_events(d: &bollard::Docker, flavor: Flavor, feed: &Feed<'_>) {
    use futures_util::StreamExt;
    let mut filters = HashMap::new();
    let types = if flavor.networks {
        vec!["container".to_string(), "network".to_string()]
    } else {
        vec!["container".to_string()]
    };
    filters.insert("type".to_string(), types);
    if !flavor.events.is_empty() {
        filters.insert(
            "event".to_string(),
            flavor.events.iter().map(|s| s.to_string()).collect(),
        );
    }
    // Subscribe first, then take the inventory: nothing falls in between.
    let mut events = d.events(Some(bollard::query_parameters::EventsOptions {
        filters: Some(filters),
        ..Default::default()
    }));
    match inventory(d, flavor).await {
        Some(v) => feed.publish(Some(v)),
        None => return,
    }
    loop {
        match events.next().await {
            Some(Ok(_)) => {
                // Coalesce a burst (compose up) into one inventory.
                tokio::time::sleep(Duration::from_millis(50)).await;
                if let Some(v) = inventory(d, flavor).await {
                    feed.publish(Some(v));
                }
            }
            _ => return,
        }
    }
}

async fn inventory(d: &bollard::Docker, flavor: Flavor) -> Option<View> {
    let list = d.list_containers(None).await.ok()?;
    let networks: Vec<DockerNetwork> = if flavor.networks {
        let nets = d.list_networks(None).await.unwrap_or_default();
        nets.into_iter().map(network_of).collect()
    } else {
        Vec::new()
    };
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
            .filter_map(|i| container_of(i, flavor))
            .collect::<Vec<_>>()
    })
    .await
    .ok()?;
    Some(View {
        containers,
        networks,
    })
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

fn container_of(i: bollard::models::ContainerInspectResponse, flavor: Flavor) -> Option<Container> {
    let pid = i.state.as_ref()?.pid.filter(|p| *p > 0)? as u32;
    let netns = netns_of_pid(pid)?;
    let netns_path = PathBuf::from(format!("/proc/{pid}/ns/net"));
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
            runtime: flavor.runtime.into(),
            id,
            name,
            image,
            pod: labels.get("io.kubernetes.pod.name").cloned(),
            pod_namespace: labels.get("io.kubernetes.pod.namespace").cloned(),
            source: flavor.source.into(),
        },
        pid,
        netns,
        interfaces,
        networks,
        ports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
