//! Who is who on this host: network namespaces, their interfaces, routes
//! sysctls and queue disciplines (over netlink), firewall rulesets, the containers behind
//! them (and the processes in /proc behind those), whether connected
//! devices mix MTUs, and how busy the host is.
pub mod containers;
pub mod exhaustion;
pub mod firewall;
pub mod listen;
pub mod mtu_mix;
pub mod netns;
pub mod netns_watch;
pub mod netns_worker;
pub mod policy;
pub mod proc;
pub mod qdisc;
pub mod route;
pub mod snmp;
pub mod softnet;
pub mod topology;
