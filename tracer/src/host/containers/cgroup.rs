//! The fallback when no runtime's API answers: the cgroup of each process
//! (`/proc/PID/cgroup`) names the runtime and the container id for Docker,
//! containerd, CRI-O, podman and Kubernetes pods, and the container's name
//! is its short id. A name is never taken from the process itself (its
//! `HOSTNAME=`, its command): any process can set those to anything,
//! newlines included, and claim to be any pod.

use super::{interfaces_with, netns_of_pid, Container, ContainerRef, View, SOURCE_CGROUP};
use std::collections::HashMap;
use std::path::PathBuf;

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
pub(super) fn inventory() -> View {
    let own = crate::host::netns::own_inode().unwrap_or(0);
    let mut by_ns: HashMap<u32, Container> = HashMap::new();
    let mut peers = HashMap::new();
    for pid in crate::host::proc::pids() {
        let Some(netns) = netns_of_pid(pid) else {
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
                interfaces: interfaces_with(netns, &path, &mut peers),
                networks: Vec::new(),
                ports: Vec::new(),
            },
        );
    }
    let mut v: Vec<Container> = by_ns.into_values().collect();
    v.sort_by_key(|c| c.netns);
    View {
        containers: v,
        networks: Vec::new(),
    }
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
}
