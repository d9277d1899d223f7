//! tracer's kernel side: capture facts cheaply, filter early, explain
//! nothing. Userspace (the `tracer` crate) names, joins and diagnoses.
//!
//! One module per program family:
//! - `drop`: every `skb:kfree_skb`, with its reason; `qdisc` refines a
//!   QDISC_DROP's, `noise` hides benign frees, `aggregate` counts storms in
//!   the kernel and `extra` adds the stack and packet bytes.
//! - `route`: route lookups, kept in the `ROUTES` map and joined to the
//!   drops of the same flow; never sent on their own.
//! - `syn`: SYNs that leave a device with an MSS its MTU cannot carry.
//! - `neigh`: neighbours (ARP/ND) that are resolving or have failed.
//! - `hop`: `tracer trace`, a matching packet's path through the host.
//!
//! Shared by them: `config` (what userspace set before load and the
//! filter), `events` (ring buffer and counters), `scratch` (the drop
//! program's per-CPU memory), `kernel` (reads of kernel structs),
//! `packet` (a `Flow` from an skb) and `words` (struct copies without
//! memset or memmove).
#![no_std]
#![no_main]
// Every `unsafe` block says why it is sound (`// SAFETY:`).
#![warn(clippy::undocumented_unsafe_blocks)]
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "aya-ebpf's map methods take `impl Borrow<K>`: a key passed by value \
              is first copied onto the 512-byte BPF stack, a reference into the \
              scratch map is passed to the helper as it is"
)]

mod aggregate;
mod config;
mod drop;
mod events;
mod extra;
mod hop;
mod kernel;
mod neigh;
mod noise;
mod packet;
mod qdisc;
mod route;
mod scratch;
mod syn;
mod words;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
