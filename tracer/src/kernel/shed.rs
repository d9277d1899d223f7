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
use std::time::{Duration, Instant};

/// How long without any aggregated drop before the programs come back.
/// Measured in time, not ticks: on a loaded host late ticks come in a
/// burst, and four of them back to back once ended a storm's shed after
/// 23 ms while the storm went on.
const QUIET: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct StormShed {
    last_aggregated: u64,
    /// When the aggregated count last grew.
    last_storm: Option<Instant>,
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
            self.last_storm = Some(Instant::now());
            if !self.shed.active() && probes.shed(true) {
                self.shed.begin();
            }
        } else if self.last_storm.is_none_or(|t| t.elapsed() >= QUIET) {
            self.resume(probes);
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
