//! The kernel side, from userspace: load and attach the eBPF object and
//! read what the running kernel says about itself (BTF: drop reasons and
//! struct offsets; kallsyms: function names; its release; the capabilities
//! it grants us).
pub mod btf;
pub mod caps;
pub mod clock;
pub mod per_packet;
pub mod probes;
pub mod route_gate;
pub mod shed;
pub mod spells;
pub mod symbols;
pub mod syn_gate;

/// The running kernel's release (`uname -r`), if /proc says.
pub fn release() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string())
}
