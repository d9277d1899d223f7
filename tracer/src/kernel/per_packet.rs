//! The programs that run for every packet rather than for every drop (the
//! route lookups, the SYN check), and why each one is detached when it is.
//! A program call costs its dispatch even when it returns at once, so they
//! are detached whenever they cannot help, for one of two reasons:
//!
//! - **shed** while the kernel aggregates a drop storm (`shed`);
//! - **parked** while they can find nothing (`syn_gate`, `route_gate`).
//!
//! A program is attached again once no reason is left; the end of a storm
//! does not attach a parked program.

use aya::programs::tp_btf::BtfTracePointLinkId;
use aya::programs::BtfTracePoint;
use aya::Ebpf;

/// Why a per-packet program is detached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Shed: the kernel is aggregating a drop storm.
    Storm,
    /// Parked: it can find nothing now.
    NothingToFind,
}

struct Program {
    name: &'static str,
    /// The link while attached.
    link: Option<BtfTracePointLinkId>,
    /// Why it is detached (empty: it should be attached).
    why: Vec<Why>,
}

impl Program {
    fn has(&self, why: Why) -> bool {
        self.why.contains(&why)
    }

    fn set(&mut self, why: Why, on: bool) {
        self.why.retain(|w| *w != why);
        if on {
            self.why.push(why);
        }
    }

    /// Attaches or detaches the program to match `want`.
    fn sync(&mut self, ebpf: Option<&mut Ebpf>, want: bool) {
        let Some(p) = ebpf
            .and_then(|e| e.program_mut(self.name))
            .and_then(|p| <&mut BtfTracePoint>::try_from(p).ok())
        else {
            return;
        };
        if !want {
            if let Some(id) = self.link.take() {
                let _ = p.detach(id);
            }
        } else if self.link.is_none() {
            self.link = p.attach().ok();
        }
    }
}

/// The per-packet programs that attached at load.
#[derive(Default)]
pub struct PerPacket {
    progs: Vec<Program>,
}

impl PerPacket {
    /// A program attached at load, through `link`.
    pub fn attached(&mut self, name: &'static str, link: BtfTracePointLinkId) {
        self.progs.push(Program {
            name,
            link: Some(link),
            why: Vec::new(),
        });
    }

    /// Whether some program is shed for a storm.
    pub fn shedding(&self) -> bool {
        self.progs.iter().any(|p| p.has(Why::Storm))
    }

    /// Sheds every program for a storm (`on`), or attaches again those
    /// not parked. Returns whether anything changed.
    pub fn shed(&mut self, mut ebpf: Option<&mut Ebpf>, on: bool) -> bool {
        if on == self.shedding() || self.progs.is_empty() || ebpf.is_none() {
            return false;
        }
        for p in &mut self.progs {
            let want = !on && !p.has(Why::NothingToFind);
            p.sync(ebpf.as_deref_mut(), want);
            // A program that would not attach again stays shed, so the
            // next call retries instead of losing it for good.
            p.set(Why::Storm, on || (want && p.link.is_none()));
        }
        true
    }

    /// Parks the named programs, or lets them go, as a gate decides.
    /// Idempotent; while a storm is shed, the storm's end attaches what is
    /// wanted then.
    pub fn park(&mut self, mut ebpf: Option<&mut Ebpf>, names: &[&'static str], park: bool) {
        let shedding = self.shedding();
        for name in names {
            let Some(p) = self.progs.iter_mut().find(|p| p.name == *name) else {
                continue;
            };
            p.set(Why::NothingToFind, park);
            if !shedding {
                p.sync(ebpf.as_deref_mut(), !park);
            }
        }
    }

    /// Attaches again what has no reason to be detached and is not (an
    /// attach that failed when a storm ended or a gate let go).
    pub fn heal(&mut self, mut ebpf: Option<&mut Ebpf>) {
        if self.shedding() {
            return;
        }
        for p in &mut self.progs {
            if p.link.is_none() && p.why.is_empty() {
                p.sync(ebpf.as_deref_mut(), true);
            }
        }
    }
}
