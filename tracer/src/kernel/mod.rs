//! The kernel side, from userspace: load and attach the eBPF object and
//! read what the running kernel says about itself (BTF: drop reasons and
//! struct offsets; kallsyms: function names).
pub mod btf;
pub mod clock;
pub mod per_packet;
pub mod probes;
pub mod route_gate;
pub mod shed;
pub mod spells;
pub mod symbols;
pub mod syn_gate;
