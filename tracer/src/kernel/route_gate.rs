//! Route lookups are traced unless the host is busy and nothing happens:
//! the route programs are parked (see `per_packet`) while the host takes in at least
//! [`BUSY_PPS`] packets a second and no event (a drop, a flagged SYN, a
//! failing neighbour) reached userspace for [`QUIET`]. The next event, or
//! the load falling, attaches them again.
//!
//! Why: `fib_table_lookup` fires for every routed packet, and a program
//! call costs its dispatch even when it returns at once (README, "Measuring
//! it", has the figures), paid all day by a busy host where nothing drops.
//! Below [`BUSY_PPS`] that cost is a small fraction of one CPU, and tracing
//! stays on: an idle or lightly loaded host loses nothing.
//!
//! What a parked lookup costs the proof, on a busy host only:
//! - the first drop after a quiet spell is not joined to the kernel's own
//!   lookup (nor to one stored before the spell, which may be stale:
//!   `Probes::forget_routes`). The rules take the route from the
//!   namespace's routing table (`route_to`) instead, which gives the same verdict at the same drop
//!   (`rpfilter_route_conflict` says `reverse_route_from_kernel: false`),
//!   and the retries that follow are traced again;
//! - an asymmetric route is proven from where the peer's packets came in,
//!   which only a traced input lookup shows. The failing neighbour's first
//!   event re-arms tracing, and the proof comes with the peer's next
//!   retransmission (a SYN's, about 1 s later) instead of at once.

use std::time::{Duration, Instant};

use crate::host::softnet;
use crate::kernel::probes::Probes;
use crate::kernel::spells::Spells;
use tracer_abi::names;

/// How long route lookups stay traced after the last event.
pub const QUIET: Duration = Duration::from_secs(5);

/// Packets per second (host-wide, every namespace) from which parking
/// pays: below it, a call per packet costs a negligible share of a CPU.
pub const BUSY_PPS: f64 = 20_000.0;

/// How often the host's packet rate is read.
const SAMPLE: Duration = Duration::from_secs(1);

const ROUTES: [&str; 2] = [names::PROG_FIB4, names::PROG_FIB6];

/// Whether to park: busy, and nothing happened for [`QUIET`].
pub fn should_park(quiet_for: Duration, busy: bool) -> bool {
    busy && quiet_for >= QUIET
}

pub struct RouteGate {
    enabled: bool,
    last_event: Instant,
    rate: softnet::Rate,
    sampled: Instant,
    busy: bool,
    parked: Spells,
}

impl RouteGate {
    pub fn new(probes: &Probes) -> RouteGate {
        let now = Instant::now();
        let mut rate = softnet::Rate::default();
        if let Some(n) = softnet::packets_in() {
            rate.sample(now, n);
        }
        RouteGate {
            enabled: probes.routes_attached,
            last_event: now,
            rate,
            sampled: now,
            busy: false,
            parked: Spells::default(),
        }
    }

    /// Something reached userspace: trace route lookups (again).
    pub fn event(&mut self, probes: &mut Probes) {
        self.last_event = Instant::now();
        self.apply(probes, false);
    }

    /// Called on every tick: reads the load once a second and parks or
    /// attaches the programs.
    pub fn tick(&mut self, probes: &mut Probes) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.sampled) >= SAMPLE {
            self.sampled = now;
            // Unreadable counters or a wrap: keep the last judgement.
            if let Some(r) = softnet::packets_in().and_then(|n| self.rate.sample(now, n)) {
                self.busy = r >= BUSY_PPS;
            }
        }
        let park = should_park(self.last_event.elapsed(), self.busy);
        self.apply(probes, park);
    }

    fn apply(&mut self, probes: &mut Probes, park: bool) {
        if park == self.parked.active() {
            return;
        }
        probes.park(&ROUTES, park);
        if park {
            probes.forget_routes();
            self.parked.begin();
        } else {
            self.parked.end();
        }
    }

    /// Milliseconds the route programs were parked, the current spell
    /// included.
    pub fn parked_ms(&self) -> u64 {
        self.parked.total_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parks_only_a_busy_host_after_a_quiet_spell() {
        assert!(should_park(QUIET, true));
        assert!(!should_park(QUIET - Duration::from_millis(1), true));
        // An idle host keeps tracing whatever the quiet: the lookups
        // before the first drop are what prove the published-port case
        // at once.
        assert!(!should_park(Duration::from_secs(3600), false));
    }
}
