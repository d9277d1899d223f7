//! Pump: ring-buffer records handed to the consumer in bounded batches,
//! counted against --count, and the storm counts read by key.

use super::consumer::{Consumer, Session};
use crate::events::aggregate::Aggregator;
use crate::events::decode::{decode, decode_extra, kind_of, Event};
use crate::kernel::probes::Probes;
use std::time::{Duration, Instant};
use tracer_abi::{KIND_DROP_EXTRA, KIND_HOP};

/// Records handled per wake-up before the loop looks at signals again,
/// and the time a batch may take at most.
const BATCH: usize = 4096;
const BATCH_TIME: Duration = Duration::from_millis(20);

/// Prints (and counts) what the kernel counted by key since the last call.
pub(super) fn report_aggregates(
    aggregator: &mut Aggregator,
    probes: &Probes,
    session: &mut Session,
    consumer: &mut dyn Consumer,
) -> std::io::Result<()> {
    let recs = aggregator.poll(
        probes.aggregate_counts(),
        &mut session.namer,
        crate::kernel::clock::monotonic_ns(),
    );
    for r in &recs {
        session.summary.count_aggregate(r);
    }
    if let Some(p) = &mut session.pcap {
        let out = &session.out;
        p.aggregates(&recs, |r| out.netns_label(r.netns, &r.netns_name));
    }
    consumer.aggregates(&recs, session)
}

/// How a batch of ring-buffer records ended.
pub(super) enum Batch {
    /// The ring is empty.
    Drained,
    /// Time or size was up; more records wait.
    More,
    /// --count drops were shown.
    CountReached,
}

/// Hands ring-buffer records to the consumer and counts what it shows.
pub(super) struct Pump<'a> {
    pub consumer: &'a mut dyn Consumer,
    pub count: Option<u64>,
    pub shown: u64,
    /// Drops matched in the kernel but not shown: past --count, or after
    /// the reader closed the pipe.
    pub not_shown: u64,
    /// Records read from the ring, of every kind.
    pub records: u64,
}

impl Pump<'_> {
    /// Up to BATCH records, or BATCH_TIME when `started` is given.
    pub fn batch(
        &mut self,
        rb: &mut aya::maps::RingBuf<aya::maps::MapData>,
        session: &mut Session,
        started: Option<Instant>,
    ) -> std::io::Result<Batch> {
        for i in 0..BATCH {
            if i % 256 == 255 && started.is_some_and(|t| t.elapsed() > BATCH_TIME) {
                return Ok(Batch::More);
            }
            let Some(item) = rb.next() else {
                return Ok(Batch::Drained);
            };
            self.records += 1;
            if kind_of(&item) == KIND_HOP {
                let done = self.count.is_some_and(|c| self.shown >= c);
                let r = match crate::events::decode::decode_hop(&item) {
                    Ok(h) if !done => self.consumer.hop(&h, session),
                    Ok(_) => Ok(()),
                    Err(_) => {
                        session.summary.undecodable += 1;
                        Ok(())
                    }
                };
                drop(item);
                r?;
                continue;
            }
            if kind_of(&item) == KIND_DROP_EXTRA {
                // Kept for the drop event that follows it on its CPU.
                match decode_extra(&item) {
                    Ok(x) => {
                        session.extras.insert(x.hdr.cpu, x);
                    }
                    Err(_) => session.summary.undecodable += 1,
                }
                continue;
            }
            let done = self.count.is_some_and(|c| self.shown >= c);
            let r = match decode(&item) {
                Ok(Event::Drop(_)) if done => {
                    self.not_shown += 1;
                    Ok(())
                }
                Ok(_) if done => Ok(()),
                Ok(Event::Drop(d)) => self.consumer.drop(&d, session).map(|counted| {
                    if counted {
                        self.shown += 1;
                    } else {
                        // Hidden by the consumer, still accounted for.
                        self.not_shown += 1;
                    }
                }),
                Ok(Event::Syn(s)) => self.consumer.syn(&s, session),
                Ok(Event::Neigh(n)) => self.consumer.neigh(&n, session),
                Err(_) => {
                    session.summary.undecodable += 1;
                    Ok(())
                }
            };
            drop(item);
            r?;
            if !done && self.count.is_some_and(|c| self.shown >= c) {
                return Ok(Batch::CountReached);
            }
        }
        Ok(Batch::More)
    }
}

pub(super) fn is_pipe(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}
