//! The tracing session every command builds on (`watch`, `diagnose`,
//! `trace`, `agent`, the labs): options -> plan -> attach -> pump ->
//! ordered stop.
//!
//! - `options`: the user's flags checked and turned into the kernel filter
//! - `tracer`: plan and attach: outputs opened, probes loaded, `ready`
//! - `consumer`: what a command plugs in (`Consumer`) and sees (`Session`)
//! - `pump`: ring-buffer records to the consumer, in bounded batches
//! - `run`: the loop until a stop condition, then the ordered stop that
//!   makes the summary add up
mod consumer;
mod options;
mod pump;
mod run;
mod tracer;

pub use consumer::{trim_probe_frames, Consumer, Session};
pub use options::{TraceOptions, DEFAULT_SNAPLEN};
pub use tracer::Tracer;
