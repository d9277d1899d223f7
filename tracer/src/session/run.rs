//! Pump -> ordered stop: the loop that serves the ring buffer, the ticks
//! and the stop conditions, and the stop that makes the summary add up.

use super::consumer::{Consumer, Session};
use super::pump::{is_pipe, report_aggregates, Batch, Pump};
use super::tracer::{Signals, Tracer};
use crate::events::aggregate::Aggregator;
use crate::kernel::probes::Probes;
use crate::kernel::route_gate::RouteGate;
use crate::kernel::shed::StormShed;
use crate::kernel::syn_gate::SynGate;
use crate::sinks::Summary;
use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::unix::{AsyncFd, AsyncFdReadyMutGuard};
use tracer_abi::ring_drop_capacity;

/// Ticks (250 ms each) between reads of the storm counts.
const AGG_TICKS: u32 = 4;

type Events = AsyncFd<RingBuf<MapData>>;

/// A run in progress: what the loop and the stop share.
struct Run<'a> {
    probes: Probes,
    session: Session,
    pump: Pump<'a>,
    aggregator: Aggregator,
    shed: StormShed,
    syn_gate: SynGate,
    route_gate: RouteGate,
    ticks: u32,
    /// Lost events counted before --count was reached; the kernel's
    /// count after that is of events nobody asked for.
    lost_at_count: Option<u64>,
    /// The reader closed the pipe: the run ends quietly.
    broken_pipe: bool,
    extra_bytes: u64,
}

/// What the loop does after an event.
enum Next {
    Go,
    /// Let the runtime run: on a current-thread runtime the signal driver
    /// only runs when this task yields.
    Yield,
    Stop,
}

impl Tracer {
    /// Pumps events until a stop condition; returns the final summary.
    ///
    /// Stopping is ordered so the summary adds up exactly: detach (nothing
    /// new arrives), drain what the ring still holds, then read the
    /// kernel's counters. Then `drops + lost + not_shown` equals
    /// `kernel.drops_matched` whatever ended the run.
    pub async fn run(self, consumer: &mut dyn Consumer) -> Result<Summary> {
        let t0 = Instant::now();
        let deadline = self.duration.map(|d| tokio::time::Instant::now() + d);
        let Tracer {
            mut probes,
            session,
            count,
            stop,
            mut signals,
            extra_bytes,
            ..
        } = self;
        // SAFETY: the AsyncFd owns the ring buffer, so its fd stays open
        // for as long as it is registered.
        let mut events = unsafe { AsyncFd::register(probes.take_events()?)? };
        let mut run = Run {
            aggregator: Aggregator::starting(crate::kernel::clock::monotonic_ns()),
            shed: StormShed::default(),
            syn_gate: SynGate::start(&probes, session.netns.clone()),
            route_gate: RouteGate::new(&probes),
            probes,
            session,
            pump: Pump {
                consumer,
                count,
                shown: 0,
                not_shown: 0,
                records: 0,
            },
            ticks: 0,
            lost_at_count: None,
            broken_pipe: false,
            extra_bytes,
        };
        run.serve(&mut events, deadline, stop, &mut signals).await?;
        run.stop(events, t0)
    }
}

impl Run<'_> {
    /// Serves the ring buffer and the ticks until a stop condition.
    async fn serve(
        &mut self,
        events: &mut Events,
        deadline: Option<tokio::time::Instant>,
        stop: Option<Arc<tokio::sync::Notify>>,
        signals: &mut Signals,
    ) -> Result<()> {
        let sleep_until = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep_until);
        let mut ticker = tokio::time::interval(Duration::from_millis(250));
        // A late tick is not made up for with a burst of them: what
        // counts ticks (the gates, the storm counts) would see no time
        // pass between them.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stopped = async move {
            match stop {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stopped);
        loop {
            let next = tokio::select! {
                _ = &mut sleep_until => Next::Stop,
                _ = &mut stopped => Next::Stop,
                _ = signals.term.recv() => self.interrupted(),
                _ = signals.int.recv() => self.interrupted(),
                _ = signals.hup.recv() => self.interrupted(),
                _ = ticker.tick() => self.tick()?,
                guard = events.readable_mut() => self.readable(guard?)?,
            };
            match next {
                Next::Go => {}
                Next::Yield => tokio::task::yield_now().await,
                Next::Stop => return Ok(()),
            }
        }
    }

    fn interrupted(&mut self) -> Next {
        self.session.summary.interrupted = true;
        Next::Stop
    }

    /// Every 250 ms: the topology's clock, the per-packet programs'
    /// keepers, the storm counts (every `AGG_TICKS`), the consumer's tick.
    fn tick(&mut self) -> Result<Next> {
        self.session.namer.topology.set_clock(Instant::now());
        self.session.namer.topology.sweep();
        self.shed.tick(&mut self.probes);
        self.syn_gate.tick(&mut self.probes);
        self.route_gate.tick(&mut self.probes);
        self.probes.heal();
        self.ticks += 1;
        let aggregates = if self.ticks.is_multiple_of(AGG_TICKS) {
            // Live counters for a long run (`tracer agent`).
            self.session.summary.kernel = self.probes.stats();
            self.report_aggregates()
        } else {
            Ok(())
        };
        let r = aggregates
            .and_then(|_| self.pump.consumer.tick(&mut self.session))
            .and_then(|_| self.session.flush());
        match r {
            Ok(()) => Ok(Next::Go),
            Err(e) => self.failed(e),
        }
    }

    /// A bounded batch, then back to select!: under a drop storm the ring
    /// never empties, and signals, --duration and ticks must still be
    /// served.
    fn readable(&mut self, mut guard: AsyncFdReadyMutGuard<'_, RingBuf<MapData>>) -> Result<Next> {
        let rb = guard.get_inner_mut();
        let batch_start = Instant::now();
        self.session.namer.topology.set_clock(batch_start);
        let before = self.pump.records;
        let r = self.pump.batch(rb, &mut self.session, Some(batch_start));
        if self.pump.records != before {
            self.route_gate.event(&mut self.probes);
        }
        // Keep the readiness while records remain: the ring buffer only
        // wakes a reader that has caught up.
        if matches!(r, Ok(Batch::Drained)) {
            guard.clear_ready();
        }
        match r.and_then(|b| self.session.flush().map(|_| b)) {
            Ok(Batch::CountReached) => {
                self.count_reached();
                Ok(Next::Stop)
            }
            Ok(Batch::Drained) => Ok(Next::Go),
            Ok(Batch::More) => Ok(Next::Yield),
            Err(e) => self.failed(e),
        }
    }

    /// The reader took fewer than --count records, so while the ring was
    /// full the count-th drop was in it: every loss came after it, and
    /// nothing the user asked for was lost. A larger count than the ring
    /// holds keeps its real losses.
    fn count_reached(&mut self) {
        let lost = self.probes.stats().lost;
        let fits = self.pump.count.unwrap_or(0) <= ring_drop_capacity(self.extra_bytes);
        self.lost_at_count = Some(if fits { 0 } else { lost });
    }

    /// A write failed: a closed pipe ends the run quietly, anything else
    /// is an error.
    fn failed(&mut self, e: std::io::Error) -> Result<Next> {
        self.broken_pipe = is_pipe(&e);
        if self.broken_pipe {
            Ok(Next::Stop)
        } else {
            Err(e.into())
        }
    }

    fn report_aggregates(&mut self) -> std::io::Result<()> {
        report_aggregates(
            &mut self.aggregator,
            &self.probes,
            &mut self.session,
            &mut *self.pump.consumer,
        )
    }

    /// Detach, then drain: what the ring holds was matched before the
    /// stop and belongs in the output (or, past --count or a closed pipe,
    /// in `not_shown`).
    fn stop(mut self, mut events: Events, t0: Instant) -> Result<Summary> {
        self.session.summary.storm_shed_ms = self.shed.shed_ms();
        self.session.summary.syn_check_parked_ms = self.syn_gate.parked_ms();
        self.session.summary.routes_parked_ms = self.route_gate.parked_ms();
        self.probes.detach();
        self.session.namer.topology.set_clock(Instant::now());
        self.drain(events.get_mut())?;
        self.last_aggregates()?;
        self.totals(t0);
        if !self.broken_pipe {
            self.conclude()?;
        }
        drop(events);
        Ok(self.session.summary)
    }

    /// Every record still in the ring, after the detach.
    fn drain(&mut self, rb: &mut RingBuf<MapData>) -> Result<()> {
        if self.broken_pipe {
            self.pump.count = Some(0);
        }
        loop {
            match self.pump.batch(rb, &mut self.session, None) {
                Ok(Batch::Drained) => return Ok(()),
                Ok(_) => {}
                Err(e) if is_pipe(&e) => {
                    self.broken_pipe = true;
                    self.pump.count = Some(0);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The last interval's storm counts, now final too; past --count they
    /// are drops nobody asked to see.
    fn last_aggregates(&mut self) -> Result<()> {
        if self.pump.count.is_some_and(|c| self.pump.shown >= c) {
            let recs =
                self.aggregator
                    .poll(self.probes.aggregate_counts(), &mut self.session.namer, 0);
            self.pump.not_shown += recs.iter().map(|r| r.count).sum::<u64>();
        } else if !self.broken_pipe {
            if let Err(e) = self.report_aggregates() {
                self.failed(e)?;
            }
        }
        Ok(())
    }

    /// The kernel's final counters, in the summary.
    fn totals(&mut self, t0: Instant) {
        let stats = self.probes.stats();
        let s = &mut self.session.summary;
        s.kernel = stats;
        s.lost = self.lost_at_count.unwrap_or(stats.lost);
        s.not_shown = self.pump.not_shown + (stats.lost - s.lost);
        s.syns_flagged = stats.syns_flagged;
        s.duration_s = t0.elapsed().as_secs_f64();
    }

    /// The consumer's last word, the pcapng file's end and the summary.
    fn conclude(&mut self) -> Result<()> {
        match self.write_end() {
            Ok(()) => Ok(()),
            // The reader went away: a quiet end, as for any filter.
            Err(e) if is_pipe(&e) => Ok(()),
            // A full disk must not pass for success.
            Err(e) => Err(anyhow::anyhow!("cannot write the output: {e}")),
        }
    }

    fn write_end(&mut self) -> std::io::Result<()> {
        self.pump.consumer.finish(&mut self.session)?;
        if let Some(p) = &mut self.session.pcap {
            p.finish()?;
        }
        let summary = self.session.summary.clone();
        self.session.out.summary(&summary)?;
        self.session.out.flush()
    }
}
