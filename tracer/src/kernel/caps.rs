//! The capabilities tracer needs from the kernel, and the ones this
//! process holds (`CapEff` in /proc/self/status). `check`, `agent` and the
//! probe loader each say in their own words what a missing one costs;
//! which bit is which, and what loading takes, is said once here.

/// A capability by its bit number (linux/capability.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    pub bit: u32,
    pub name: &'static str,
}

pub const NET_ADMIN: Cap = Cap {
    bit: 12,
    name: "CAP_NET_ADMIN",
};
pub const SYS_ADMIN: Cap = Cap {
    bit: 21,
    name: "CAP_SYS_ADMIN",
};
pub const PERFMON: Cap = Cap {
    bit: 38,
    name: "CAP_PERFMON",
};
pub const BPF: Cap = Cap {
    bit: 39,
    name: "CAP_BPF",
};

/// A set of capabilities, as the kernel's bit mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    /// This process's effective set; empty if /proc cannot say.
    pub fn effective() -> CapSet {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        CapSet::from_status(&status)
    }

    /// The `CapEff:` line of a /proc/PID/status text (hex).
    pub fn from_status(status: &str) -> CapSet {
        CapSet(
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or(0),
        )
    }

    pub fn has(self, cap: Cap) -> bool {
        self.0 & (1u64 << cap.bit) != 0
    }

    /// Whether tracing programs may be loaded and attached: CAP_SYS_ADMIN,
    /// or CAP_BPF with CAP_PERFMON (split out of it in 5.8).
    pub fn can_load(self) -> bool {
        self.has(SYS_ADMIN) || (self.has(BPF) && self.has(PERFMON))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_is_read_from_status() {
        let s = CapSet::from_status("Name:\tx\nCapInh:\t0\nCapEff:\t000000c000000000\n");
        assert!(s.has(BPF) && s.has(PERFMON) && !s.has(SYS_ADMIN));
        assert!(s.can_load());
        assert!(!CapSet::from_status("CapEff:\t0000008000000000").can_load());
        assert_eq!(CapSet::from_status("no such line"), CapSet(0));
    }
}
