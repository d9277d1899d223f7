//! tracer: why did the kernel drop my packet?
//!
//! The kernel side (`tracer-ebpf`) captures facts cheaply: every
//! `skb:kfree_skb` with its reason, the route lookups around it, SYNs whose
//! MSS cannot fit. This crate enriches, correlates and explains:
//!
//! - `probes`: load and attach the eBPF object, read its ring buffer and counters
//! - `btf`, `symbols`: names from the running kernel (drop reasons, offsets, kallsyms)
//! - `containers`: which container a netns is (Docker's API, else cgroups)
//! - `netns`, `topology`: namespaces, interfaces, routes and sysctls over netlink
//! - `filter`: the tcpdump-like expression, compiled for the kernel
//! - `event`: decode ring-buffer records and name them
//! - `reason_inference`: drop reasons for kernels that report none (before 5.17)
//! - `aggregate`: storms counted by key in the kernel, reported per interval
//! - `output`: text and JSON
//! - `watch`: the tracing session that every command builds on
//! - `rules`: the rules that turn drops, route lookups and topology into verdicts
//! - `record`: recordings of a diagnosis, for `diagnose --replay`
//! - `diagnose`: runs the rules live or on a recording
//! - `protocols`: names for errno values and ICMP types
//! - `lab`: the incidents rebuilt in throwaway namespaces
//! - `check`: the preflight that says what this kernel offers
//! - `agent`: `tracer agent`, Prometheus metrics and JSON logs for a fleet
//! - `cli`: the command line; `main.rs` is a thin shell around `cli::run`
pub mod agent;
pub mod aggregate;
pub mod btf;
pub mod check;
pub mod cli;
pub mod containers;
pub mod diagnose;
pub mod event;
pub mod filter;
pub mod lab;
pub mod netns;
pub mod output;
pub mod probes;
pub mod protocols;
pub mod reason_inference;
pub mod record;
pub mod rules;
pub mod symbols;
pub mod topology;
pub mod trace;
pub mod watch;
