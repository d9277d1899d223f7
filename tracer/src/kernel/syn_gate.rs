//! The SYN check runs only where it can find something: while no connected
//! devices on the host mix MTUs (`host::mtu_mix`), its program is parked
//! (see `per_packet`).
//!
//! Why: `net_dev_start_xmit` fires for every transmitted packet, twice for
//! a forwarded one, and a program call costs its dispatch even when it
//! returns at once: a visible share of a small-packet forwarding rate
//! (README, "Measuring it"), paid on hosts where no SYN could ever be
//! flagged. On the overlay host (a 1450 uplink beside a 1500 bridge) the
//! check stays attached.
//!
//! It starts attached, so nothing is missed before the first scan. A
//! thread keeps every namespace's links ([`mtu_mix::Scanner`]): a
//! namespace that appears is read within [`RESCAN`] (the namespace index's
//! events say so), the watched namespaces (`--netns`) every [`RESCAN`],
//! and all are read again at most every [`pause`], sized
//! so that this costs at most a quarter of a percent of a CPU (issue 22:
//! at 1,000 namespaces a full read every 2 s, with a thread each, was most
//! of a core). What this gives up: when a run is already going and a mix
//! appears inside namespaces already read (a device's MTU changes, a
//! device is added), SYNs crossing it before the next full read are not
//! checked; on a small host that is 2 s, at 1,000 namespaces a few
//! minutes.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use crate::host::{mtu_mix, netns};
use crate::kernel::clock::clock_ns;
use crate::kernel::probes::Probes;
use crate::kernel::spells::Spells;
use tracer_abi::names;

/// How often the scanner looks for new namespaces (one non-blocking read
/// of the index's watch when none came or went).
pub const RESCAN: Duration = Duration::from_secs(2);

/// The wait before the next full read: [`RESCAN`], or longer on a host
/// with so many namespaces that a full read costs over 5 ms of CPU, so
/// that reading never takes more than 0.25 % of a CPU.
fn pause(scan: Duration) -> Duration {
    RESCAN.max(scan * 399)
}

/// CPU time this thread has used. The pause is sized by it, not by the
/// wall clock: on a busy host a scan that waits for a CPU takes long on
/// the wall clock while costing little, and sizing by wall time stretched
/// the pause to many seconds exactly when the host was busy, so a mix
/// that appeared went unchecked for that long.
fn thread_cpu() -> Duration {
    let ns = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
    Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
}

pub struct SynGate {
    answers: Option<Receiver<Option<String>>>,
    /// Dropped with the gate: the scanning thread then ends at once.
    _stop: Option<mpsc::Sender<()>>,
    parked: Spells,
}

/// The scanning thread: reads new namespaces when the index moves, all of
/// them every [`pause`]; sends each answer; ends when the gate is gone.
fn scan_loop(tx: &mpsc::Sender<Option<String>>, stop: &Receiver<()>, watched: &[u32]) {
    let mut scanner = mtu_mix::Scanner::default();
    let mut generation = None;
    let mut next_full = Instant::now();
    loop {
        let now_gen = Some(netns::generation());
        let full = Instant::now() >= next_full;
        if full || now_gen != generation || !watched.is_empty() {
            generation = now_gen;
            let t0 = thread_cpu();
            // A namespace that cannot be read might be the one that
            // mixes: keep the check on.
            let answer = match scanner.scan(full, watched) {
                Ok(all) => mtu_mix::find_mix(&all, watched).map(|m| m.to_string()),
                Err(e) => Some(format!("unknown ({e:#})")),
            };
            if full {
                next_full = Instant::now() + pause(thread_cpu().saturating_sub(t0));
            }
            if tx.send(answer).is_err() {
                return;
            }
        }
        // Only a timeout goes on: the gate is gone otherwise.
        if stop.recv_timeout(RESCAN) != Err(RecvTimeoutError::Timeout) {
            return;
        }
    }
}

impl SynGate {
    /// Starts scanning when the SYN check is attached; `watched` are the
    /// namespaces the run is limited to (empty: all).
    pub fn start(probes: &Probes, watched: Vec<u32>) -> SynGate {
        let mut gate = SynGate {
            answers: None,
            _stop: None,
            parked: Spells::default(),
        };
        if !probes.syn_attached {
            return gate;
        }
        let (tx, rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("mtu-scan".into())
            .spawn(move || scan_loop(&tx, &stop_rx, &watched));
        if spawned.is_ok() {
            gate.answers = Some(rx);
            gate._stop = Some(stop_tx);
        }
        gate
    }

    /// Applies the latest answer, if a scan finished since the last tick.
    pub fn tick(&mut self, probes: &mut Probes) {
        let Some(rx) = &self.answers else {
            return;
        };
        let mut latest = None;
        loop {
            match rx.try_recv() {
                Ok(a) => latest = Some(a),
                Err(TryRecvError::Empty) => break,
                // The scanner is gone: leave the check attached for good.
                Err(TryRecvError::Disconnected) => {
                    latest = Some(Some("unknown (the scan stopped)".into()));
                    self.answers = None;
                    break;
                }
            }
        }
        let Some(mix) = latest else {
            return;
        };
        let park = mix.is_none();
        probes.park(&[names::PROG_SYN_XMIT], park);
        if park {
            self.parked.begin();
        } else {
            self.parked.end();
        }
    }

    /// Milliseconds the check was parked, the current period included.
    pub fn parked_ms(&self) -> u64 {
        self.parked.total_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_waiting_costs_no_cpu_time() {
        let t0 = thread_cpu();
        std::thread::sleep(Duration::from_millis(50));
        assert!(thread_cpu().saturating_sub(t0) < Duration::from_millis(20));
        // Work advances it (however long other threads hold the CPU).
        let t1 = thread_cpu();
        let spin = std::time::Instant::now();
        while thread_cpu().saturating_sub(t1) < Duration::from_millis(10) {
            assert!(
                spin.elapsed() < Duration::from_secs(10),
                "the clock never moved"
            );
            std::hint::black_box(0u64);
        }
    }

    #[test]
    fn full_reads_take_at_most_a_quarter_percent_of_a_cpu() {
        assert_eq!(pause(Duration::from_millis(1)), RESCAN);
        // 500 namespaces at 0.2 ms each: every 40 s, not every 2 s.
        assert_eq!(
            pause(Duration::from_millis(100)),
            Duration::from_millis(39900)
        );
    }
}
