//! Who is who on this host: network namespaces, their interfaces, routes
//! and sysctls (over netlink), and the containers behind them.
pub mod containers;
pub mod netns;
pub mod topology;
