//! What comes out of the ring buffer, made readable: records decoded and
//! named, the packet filter compiled for the kernel, reasons inferred on
//! kernels without them, storm counts, and protocol names.
pub mod aggregate;
pub mod event;
pub mod filter;
pub mod protocols;
pub mod reason_inference;
