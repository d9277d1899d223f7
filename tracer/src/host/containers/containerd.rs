//! containerd's gRPC API on its socket (`CONTAINERD_ADDRESS`, the variable
//! `ctr` reads, else /run/containerd/containerd.sock), through
//! `containerd-client`. Every containerd namespace is listed (`k8s.io` holds
//! Kubernetes' containers, `default` those of `ctr`): each running task's
//! pid gives the netns, and the container's labels give the names kubelet
//! put there (`io.kubernetes.pod.name`, `io.kubernetes.pod.namespace`,
//! `io.kubernetes.container.name`). Task start, exit and delete events on
//! the event stream trigger a fresh inventory.

use super::{
    interfaces_of, netns_of_pid, Container, ContainerRef, Feed, View, SOURCE_CONTAINERD_API,
};
use containerd_client::services::v1::{
    containers_client::ContainersClient, events_client::EventsClient,
    namespaces_client::NamespacesClient, tasks_client::TasksClient, ListContainersRequest,
    ListNamespacesRequest, ListTasksRequest, SubscribeRequest,
};
use containerd_client::tonic::{transport::Channel, Request};
use containerd_client::types::v1::Status;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// `sandbox` on a pod's pause container (CRI plugin), `container` else.
const CRI_KIND: &str = "io.cri-containerd.kind";

/// The containerd socket to use.
pub fn containerd_socket() -> PathBuf {
    std::env::var_os("CONTAINERD_ADDRESS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/containerd/containerd.sock"))
}

/// A request scoped to containerd namespace `ns`.
fn in_ns<T>(msg: T, ns: &str) -> Option<Request<T>> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("containerd-namespace", ns.parse().ok()?);
    Some(req)
}

/// Follows containerd until its event stream ends or it does not answer.
pub(super) async fn follow(feed: &Feed<'_>) {
    let sock = containerd_socket();
    if !sock.exists() {
        return;
    }
    let Ok(Ok(ch)) =
        tokio::time::timeout(Duration::from_secs(3), containerd_client::connect(&sock)).await
    else {
        return;
    };
    // Subscribe first, then take the inventory: nothing falls in between.
    // containerd answers a subscription only with its first event, so the
    // call is left pending while the inventory is taken.
    let mut client = EventsClient::new(ch.clone());
    let mut subscribe = std::pin::pin!(client.subscribe(SubscribeRequest::default()));
    let mut early = None;
    tokio::select! {
        r = &mut subscribe => early = Some(r),
        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
    }
    match inventory(&ch).await {
        Some(v) => feed.publish(Some(v)),
        None => return,
    }
    let subscribed = match early {
        Some(r) => r,
        None => subscribe.await,
    };
    let Ok(mut events) = subscribed.map(|s| s.into_inner()) else {
        return;
    };
    loop {
        match events.message().await {
            Ok(Some(e)) => {
                if !refreshes(&e.topic) {
                    continue;
                }
                // Coalesce a burst (a pod's containers) into one inventory.
                tokio::time::sleep(Duration::from_millis(50)).await;
                if let Some(v) = inventory(&ch).await {
                    feed.publish(Some(v));
                }
            }
            _ => return,
        }
    }
}

/// Whether an event's topic can change which process holds which netns,
/// or a container's labels.
fn refreshes(topic: &str) -> bool {
    matches!(
        topic,
        "/tasks/start" | "/tasks/exit" | "/tasks/delete" | "/containers/update"
    )
}

/// What containerd says about one running container.
struct Listed {
    /// The containerd namespace.
    ns: String,
    id: String,
    pid: u32,
    image: String,
    labels: HashMap<String, String>,
}

async fn inventory(ch: &Channel) -> Option<View> {
    let namespaces = NamespacesClient::new(ch.clone())
        .list(ListNamespacesRequest::default())
        .await
        .ok()?
        .into_inner()
        .namespaces;
    let mut listed = Vec::new();
    for ns in namespaces {
        let Some(req) = in_ns(ListTasksRequest::default(), &ns.name) else {
            continue;
        };
        let Ok(tasks) = TasksClient::new(ch.clone()).list(req).await else {
            continue;
        };
        let running: HashMap<String, u32> = tasks
            .into_inner()
            .tasks
            .into_iter()
            .filter(|t| t.pid > 0 && t.status == Status::Running as i32)
            .map(|t| (t.id, t.pid))
            .collect();
        if running.is_empty() {
            continue;
        }
        let Some(req) = in_ns(ListContainersRequest::default(), &ns.name) else {
            continue;
        };
        let Ok(cs) = ContainersClient::new(ch.clone()).list(req).await else {
            continue;
        };
        for c in cs.into_inner().containers {
            // A task's id is its container's.
            if let Some(pid) = running.get(&c.id) {
                listed.push(Listed {
                    ns: ns.name.clone(),
                    id: c.id,
                    pid: *pid,
                    image: c.image,
                    labels: c.labels,
                });
            }
        }
    }
    // Namespaces are entered with setns: off the async runtime.
    let mut containers = tokio::task::spawn_blocking(move || {
        listed
            .into_iter()
            .filter_map(container_of)
            .collect::<Vec<_>>()
    })
    .await
    .ok()?;
    // A pod's containers share its sandbox's netns: the first one listed
    // names it, so its application containers go before the pause one.
    containers.sort_by_key(|(sandbox, c)| (c.netns, *sandbox, c.r.id.clone()));
    Some(View {
        containers: containers.into_iter().map(|(_, c)| c).collect(),
        networks: Vec::new(),
    })
}

/// The container, and whether it is a pod's sandbox (pause) container.
fn container_of(l: Listed) -> Option<(bool, Container)> {
    let netns = netns_of_pid(l.pid)?;
    let path = PathBuf::from(format!("/proc/{}/ns/net", l.pid));
    let (sandbox, r) = reference(&l.ns, l.id, l.image, &l.labels);
    Some((
        sandbox,
        Container {
            r,
            pid: l.pid,
            netns,
            interfaces: interfaces_of(netns, &path),
            networks: Vec::new(),
            ports: Vec::new(),
        },
    ))
}

/// Names from the labels: kubelet's container name, else (a pod's sandbox)
/// the pod's name, else (`ctr run`, nerdctl) the container id, which there
/// is the name its user gave.
fn reference(
    ns: &str,
    id: String,
    image: String,
    labels: &HashMap<String, String>,
) -> (bool, ContainerRef) {
    let sandbox = labels.get(CRI_KIND).map(String::as_str) == Some("sandbox");
    let pod = labels.get(POD_NAME).cloned();
    let name = labels
        .get(CONTAINER_NAME)
        .cloned()
        .or_else(|| pod.clone().filter(|_| sandbox))
        .unwrap_or_else(|| id.clone());
    (
        sandbox,
        ContainerRef {
            // dockerd keeps its containers in containerd's `moby`
            // namespace: when Docker's own API is not reachable they are
            // still Docker's (named by id).
            runtime: if ns == "moby" { "docker" } else { "containerd" }.into(),
            id,
            name,
            image: Some(image).filter(|i| !i.is_empty()),
            pod,
            pod_namespace: labels.get(POD_NAMESPACE).cloned(),
            source: SOURCE_CONTAINERD_API.into(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_labels_name_pod_and_container() {
        let labels: HashMap<String, String> = [
            (POD_NAME, "web-0"),
            (POD_NAMESPACE, "shop"),
            (CONTAINER_NAME, "nginx"),
            (CRI_KIND, "container"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (sandbox, r) = reference("k8s.io", "abc".into(), "nginx:1".into(), &labels);
        assert!(!sandbox);
        assert_eq!(r.name, "nginx");
        assert_eq!(r.pod.as_deref(), Some("web-0"));
        assert_eq!(r.pod_namespace.as_deref(), Some("shop"));
        assert_eq!(r.image.as_deref(), Some("nginx:1"));
        assert_eq!(r.source, SOURCE_CONTAINERD_API);

        let mut pause = labels.clone();
        pause.remove(CONTAINER_NAME);
        pause.insert(CRI_KIND.into(), "sandbox".into());
        let (sandbox, r) = reference("k8s.io", "def".into(), String::new(), &pause);
        assert!(sandbox);
        assert_eq!(r.name, "web-0");
        assert_eq!(r.image, None);

        assert_eq!(r.runtime, "containerd");
        let (_, r) = reference("default", "web-1".into(), "busybox".into(), &HashMap::new());
        assert_eq!((r.name.as_str(), r.pod.as_deref()), ("web-1", None));
        let (_, r) = reference("moby", "f00d".into(), String::new(), &HashMap::new());
        assert_eq!(r.runtime, "docker");
        assert!(refreshes("/tasks/exit") && !refreshes("/images/create"));
    }
}
