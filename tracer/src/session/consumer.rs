//! What a consumer of the session gets: every record, through the
//! `Consumer` trait, with the `Session` (names, output, summary) at hand.

use crate::events::aggregate::AggregateRecord;
use crate::events::decode::Extra;
use crate::events::namer::Namer;
use crate::events::record::DropRecord;
use crate::filter;
use crate::sinks::pcapng::PcapSink;
use crate::sinks::{Output, Summary};
use std::collections::HashMap;
use tracer_abi::{DropEvent, HopEvent, NeighEvent, SynEvent};

/// The stack from the tracepoint's caller on: the frames of our own
/// program and of the tracepoint machinery above it say nothing.
pub fn trim_probe_frames(frames: Vec<String>) -> Vec<String> {
    let probe = |f: &String| {
        f.starts_with("bpf_prog_")
            || f.starts_with("bpf_trace_run")
            || f.starts_with("__bpf_trace_")
            || f.starts_with("perf_trace_")
            || f.starts_with("trace_event_raw_event_")
            || f.starts_with("__traceiter_")
    };
    match frames.iter().rposition(probe) {
        Some(i) => frames[i + 1..].to_vec(),
        None => frames,
    }
}

/// Receives every event of a session.
pub trait Consumer {
    /// Return false to stop counting this drop towards --count.
    fn drop(&mut self, raw: &DropEvent, s: &mut Session) -> std::io::Result<bool>;
    fn syn(&mut self, _raw: &SynEvent, _s: &mut Session) -> std::io::Result<()> {
        Ok(())
    }
    fn neigh(&mut self, _raw: &NeighEvent, _s: &mut Session) -> std::io::Result<()> {
        Ok(())
    }
    /// A followed packet passed a tracepoint (`tracer trace`).
    fn hop(&mut self, _raw: &HopEvent, _s: &mut Session) -> std::io::Result<()> {
        Ok(())
    }
    /// Called about every 250 ms, for conclusions that need time to pass.
    fn tick(&mut self, _s: &mut Session) -> std::io::Result<()> {
        Ok(())
    }
    /// What the kernel counted by key in a storm since the last call
    /// (about once a second); by default printed.
    fn aggregates(&mut self, recs: &[AggregateRecord], s: &mut Session) -> std::io::Result<()> {
        s.out.aggregates(recs)
    }
    /// Called once before the summary.
    fn finish(&mut self, _s: &mut Session) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a consumer can use: the names and the output.
pub struct Session {
    pub namer: Namer,
    pub out: Output,
    pub summary: Summary,
    /// The namespaces the user restricted tracing to; empty for all.
    pub netns: Vec<u32>,
    pub own_netns: u32,
    pub filter: filter::Filter,
    /// `--all`: also show benign noise (see `event::noise_kind`).
    pub show_noise: bool,
    /// The pcapng file of `-w`.
    pub pcap: Option<PcapSink>,
    /// Name each drop's kernel stack (`--stack`).
    pub stack: bool,
    /// The latest `DropExtra` per CPU, waiting for its drop event.
    pub(super) extras: HashMap<u32, Extra>,
}

/// An extra older than this is not the one of the drop that follows it
/// (its own drop event was lost). Taking a stack can take a while.
const EXTRA_PAIR_NS: u64 = 100_000_000;

impl Session {
    pub fn new(namer: Namer, out: Output, own_netns: u32, filter: filter::Filter) -> Self {
        Session {
            namer,
            out,
            summary: Summary::new(),
            netns: Vec::new(),
            own_netns,
            filter,
            show_noise: false,
            pcap: None,
            stack: false,
            extras: HashMap::new(),
        }
    }

    /// The stack and bytes the kernel sent just before this drop.
    pub fn take_extra(&mut self, raw: &DropEvent) -> Option<Extra> {
        let x = self.extras.remove(&raw.cpu)?;
        (x.hdr.ts_ns <= raw.ts_ns && raw.ts_ns - x.hdr.ts_ns < EXTRA_PAIR_NS).then_some(x)
    }

    /// A drop named, with its stack when asked for, and its extra.
    pub fn name_drop(&mut self, raw: &DropEvent) -> (DropRecord, Option<Extra>) {
        let mut rec = self.namer.drop_record(raw);
        let extra = self.take_extra(raw);
        if self.stack {
            let frames: Vec<String> = extra
                .iter()
                .flat_map(|x| x.stack())
                .map(|a| self.namer.symbolize(a))
                .collect();
            rec.stack = Some(trim_probe_frames(frames));
        }
        (rec, extra)
    }

    /// Writes the drop to the pcapng file, if there is one.
    pub fn capture(
        &mut self,
        rec: &DropRecord,
        extra: Option<&Extra>,
        verdicts: &[String],
    ) -> std::io::Result<()> {
        if self.pcap.is_none() {
            return Ok(());
        }
        let label = self.out.netns_label(rec.netns, &rec.netns_name);
        match &mut self.pcap {
            Some(p) => p.packet(rec, extra, &label, verdicts),
            None => Ok(()),
        }
    }

    /// An interface's name, if it (and its netns) still exist.
    pub fn namer_ifname(&mut self, netns: u32, ifindex: i32) -> Option<String> {
        if netns == 0 || ifindex == 0 {
            return None;
        }
        match self.namer.topology.ifname(netns, ifindex) {
            crate::host::topology::IfName::Name(n) => Some(n),
            _ => None,
        }
    }

    /// Flushes the output and the pcapng file.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        if let Some(p) = &mut self.pcap {
            p.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_start_at_the_tracepoint_caller() {
        let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            trim_probe_frames(f(&[
                "bpf_prog_37ba_drop_btf+0x19aa",
                "bpf_trace_run4+0x10d",
                "sk_skb_reason_drop+0x90",
                "ip_rcv_finish_core+0x25b",
            ])),
            f(&["sk_skb_reason_drop+0x90", "ip_rcv_finish_core+0x25b"])
        );
        assert_eq!(trim_probe_frames(f(&["a+0x1"])), f(&["a+0x1"]));
    }
}
