//! podman's service (`podman system service`) on its socket: rootful at
//! /run/podman/podman.sock, else `CONTAINER_HOST=unix://PATH` (podman's own
//! variable for a remote service). Its Docker-compatible API is followed
//! like Docker's (see `docker.rs`): the inventory on start, a fresh one on
//! each container event.

use super::docker::{self, Flavor};
use super::{Feed, SOURCE_PODMAN_API};
use std::path::PathBuf;

const PODMAN: Flavor = Flavor {
    runtime: "podman",
    source: SOURCE_PODMAN_API,
    // Podman's networks are not Docker bridges: no `docker network`
    // fixes name them.
    networks: false,
    events: &[],
};

/// The podman socket to use.
pub fn podman_socket() -> Option<PathBuf> {
    if let Ok(h) = std::env::var("CONTAINER_HOST") {
        return h.strip_prefix("unix://").map(PathBuf::from);
    }
    Some(PathBuf::from("/run/podman/podman.sock"))
}

pub(super) async fn follow(feed: &Feed<'_>) {
    docker::follow(podman_socket(), PODMAN, feed).await
}
