//! tracer: why did the kernel drop my packet?
//!
//! The kernel side (`tracer-ebpf`) captures facts cheaply: every
//! `skb:kfree_skb` with its reason, the route lookups around it, SYNs whose
//! MSS cannot fit. This crate enriches, correlates and explains. The
//! folders follow one drop through the pipeline:
//!
//! - `kernel`: load and attach the probes; BTF (reasons, offsets), kallsyms
//! - `filter`: the tcpdump-like filter compiled for the kernel
//! - `events`: ring-buffer records decoded (`decode`), their JSON schema
//!   (`record`), named (`namer`); reasons inferred before 5.17, storm
//!   aggregates, protocol names
//! - `host`: enrichment: namespaces, interfaces, routes, sysctls, containers
//! - `rules`: one file per verdict kind, fed typed facts by one engine
//! - `sinks`: text, JSON, verdict blocks, pcapng
//!
//! The commands sit on top of them:
//!
//! - `session`: the tracing session that every command builds on
//! - `watch`: prints every drop
//! - `diagnose`: runs the rules live or on a recording (`record`)
//! - `trace`: follows a packet through the host
//! - `agent`: Prometheus metrics and JSON logs for a fleet
//! - `check`: the preflight that says what this kernel offers
//! - `lab`: the incidents rebuilt in throwaway namespaces
//! - `cli`: the command line; `main.rs` is a thin shell around `cli::run`
pub mod agent;
pub mod check;
pub mod cli;
pub mod diagnose;
pub mod events;
pub mod filter;
pub mod host;
pub mod kernel;
pub mod lab;
pub mod record;
pub mod rules;
pub mod session;
pub mod sinks;
pub mod trace;
pub mod version;
pub mod watch;
