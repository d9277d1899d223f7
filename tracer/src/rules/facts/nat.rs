//! How a verdict names the container whose connections it is about when
//! conntrack translated them (`Ctx::nat_container` finds it): the words of
//! the summary, the pre-NAT tuple for the evidence, and the container's
//! networks for Docker advice.

use super::FlowKey;
use crate::host::containers::Container;
use serde_json::{json, Value};
use std::net::SocketAddr;

/// "container web's connections to 10.196.0.2:8080" (the address and port
/// it dialled, before any NAT).
pub fn connections(c: &Container, orig: FlowKey) -> String {
    format!(
        "container {}'s connections to {}",
        c.r.name,
        SocketAddr::new(orig.1, orig.3)
    )
}

/// The connection's tuple before NAT, for a verdict's evidence.
pub fn pre_nat(orig: FlowKey) -> Value {
    json!({
        "src": orig.0,
        "dst": orig.1,
        "sport": orig.2,
        "dport": orig.3,
    })
}

/// " (container web is on Docker network bridge)", for advice that acts
/// on a network; empty when the inventory names none.
pub fn on_networks(c: &Container) -> String {
    let names: Vec<&str> = c.networks.iter().map(|n| n.name.as_str()).collect();
    if names.is_empty() {
        return String::new();
    }
    format!(
        " (container {} is on Docker network {})",
        c.r.name,
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::containers::{ContainerNet, ContainerRef};

    #[test]
    fn names_the_container_and_what_it_dialled() {
        let c = Container {
            r: ContainerRef {
                name: "api-3".into(),
                ..Default::default()
            },
            networks: vec![ContainerNet {
                name: "backend".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let orig = (
            "172.21.0.4".parse().unwrap(),
            "fd00:7::2".parse().unwrap(),
            41000,
            8443,
        );
        assert_eq!(
            connections(&c, orig),
            "container api-3's connections to [fd00:7::2]:8443"
        );
        assert_eq!(pre_nat(orig)["src"], "172.21.0.4");
        assert_eq!(
            on_networks(&c),
            " (container api-3 is on Docker network backend)"
        );
    }
}
