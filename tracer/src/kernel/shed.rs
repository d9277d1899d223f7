//! Storm shedding: while the kernel aggregates a drop storm, the programs
//! that run for every packet (route lookups, the SYN check) are shed
//! (detached, see `per_packet`), and they are attached again once the
//! storm has been over for a second (those a gate has parked meanwhile stay
//! parked: `syn_gate`, `route_gate`).
//!
//! Why: a dropped datagram can cost the host half a dozen route lookups
//! (the sender's output route, the receiver's input route, the routes of
//! the ICMP error), and each one calls its program even when the program
//! returns at once. In a storm that is most of what `diagnose` costs the
//! host. The storm's own flows had their lookups stored before the storm
//! (the first drops of a key go out in full, joined to them), and the map
//! keeps them; a drop of another flow during the storm falls back to the
//! routing table in the rules.

use crate::kernel::probes::Probes;
use crate::kernel::spells::Spells;

/// Ticks without any aggregated drop before the programs come back.
const QUIET_TICKS: u32 = 4;

#[derive(Default)]
pub struct StormShed {
    last_aggregated: u64,
    quiet_ticks: u32,
    /// While the per-packet programs are shed.
    shed: Spells,
}

impl StormShed {
    /// Called on every tick (250 ms).
    pub fn tick(&mut self, probes: &mut Probes) {
        let now = probes.aggregated_now();
        let storming = now > self.last_aggregated;
        self.last_aggregated = now;
        if storming {
            self.quiet_ticks = 0;
            if !self.shed.active() && probes.shed(true) {
                self.shed.begin();
            }
        } else {
            self.quiet_ticks += 1;
            if self.quiet_ticks >= QUIET_TICKS {
                self.resume(probes);
            }
        }
    }

    /// Attaches the programs again (the storm ended, or the run did).
    /// A program that fails to attach again is retried on the next tick.
    pub fn resume(&mut self, probes: &mut Probes) {
        if self.shed.active() {
            probes.shed(false);
            if !probes.shedding() {
                self.shed.end();
            }
        }
    }

    /// Milliseconds shed so far, the current spell included.
    pub fn shed_ms(&self) -> u64 {
        self.shed.total_ms()
    }
}
