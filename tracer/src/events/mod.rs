//! What comes out of the ring buffer, made readable, in layers: records
//! decoded ([`decode`]), the JSON schema they become ([`record`]), and
//! the enrichment that names them ([`namer`], calling host/ and kernel/);
//! with reasons inferred on kernels without them, storm counts, and
//! protocol names. The packet filter is compiled in `crate::filter`.
pub mod aggregate;
pub mod decode;
pub mod namer;
pub mod protocols;
pub mod reason;
pub mod reason_inference;
pub mod record;
