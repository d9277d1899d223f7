//! Who is who on this host: network namespaces, their interfaces, routes
//! sysctls and queue disciplines (over netlink), and the containers
//! behind them.
pub mod containers;
pub mod netns;
pub mod qdisc;
pub mod topology;
