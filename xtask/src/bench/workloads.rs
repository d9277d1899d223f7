//! The workloads, each run under every observer in turn: a pinned flow
//! through the router (datapath), drop storms, tracer's start-up.

use super::lab::{check_interrupted, forward_drops, sleep, udp_noports};
use super::load::{phase_rate, PinnedFlow};
use super::observers::{
    bpftrace_script, kernel_stat, reason_code, summary_u64, BpfStats, Observer, Variant,
};
use anyhow::{bail, Result};
use netlab::{FloodOpts, Netlab};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The bench's settings: the tracer under test, where scripts and the
/// report go, how many rounds.
pub(crate) struct Ctx {
    pub tracer: PathBuf,
    pub out_dir: PathBuf,
    pub quick: bool,
    pub rounds: usize,
    /// Rounds (flows) of each datapath workload, each with every variant
    /// once between baselines.
    pub dp_rounds: usize,
}

impl Ctx {
    /// Starts the observer of `v` (None for the baseline). `scope` are the
    /// tracer's filter flags; `bt_filter` the same as a bpftrace condition.
    fn observe(&self, v: Variant, scope: &[String], bt_filter: &str) -> Result<Option<Observer>> {
        let cmd = match v {
            Variant::Baseline => return Ok(None),
            Variant::Watch => "watch",
            Variant::Diagnose => "diagnose",
            Variant::BtWatch | Variant::BtDiagnose => {
                let diag = v == Variant::BtDiagnose;
                let path = self.out_dir.join(format!(
                    "{}-{}.bt",
                    if diag { "diagnose" } else { "watch" },
                    bt_filter
                        .chars()
                        .filter(|c| c.is_ascii_alphanumeric())
                        .collect::<String>()
                ));
                std::fs::write(&path, bpftrace_script(bt_filter, diag))?;
                return Observer::bpftrace(&path).map(Some);
            }
        };
        let mut args = vec![cmd.to_string()];
        args.extend_from_slice(scope);
        Observer::tracer(&self.tracer, &args, false).map(Some)
    }
}

/// Rotates the variant order each round.
pub(crate) fn order(round: usize) -> Vec<Variant> {
    let mut v = Variant::ALL.to_vec();
    let n = v.len();
    v.rotate_left(round % n);
    v
}

/// A variant phase's rate over the mean of the baseline phases on either
/// side of it: drift within a round cancels, and so does a flow that
/// happened to start slower or faster than the next round's.
pub(crate) fn sandwich_ratios(phases: &[(Variant, f64)]) -> Vec<(Variant, f64)> {
    phases
        .windows(3)
        .filter(|w| w[0].0 == Variant::Baseline && w[2].0 == Variant::Baseline)
        .filter(|w| w[1].0 != Variant::Baseline && w[0].1 + w[2].1 > 0.0)
        .map(|w| (w[1].0, w[1].1 / ((w[0].1 + w[2].1) / 2.0)))
        .collect()
}

#[derive(Default)]
pub(crate) struct DatapathResult {
    /// Phase rates per variant (the baseline's too).
    pub values: BTreeMap<&'static str, Vec<f64>>,
    /// Each variant phase over its neighbouring baselines.
    pub ratios: BTreeMap<&'static str, Vec<f64>>,
    pub cpu: BTreeMap<&'static str, Vec<f64>>,
    pub events: BTreeMap<&'static str, Vec<f64>>,
}

/// The key of `diagnose` measured while it traces route lookups.
pub(crate) const DIAGNOSE_ARMED: &str = "diagnose_armed";

/// When a diagnose phase measures its steady state, after `ready`: the
/// route gate's 5 s of quiet, its 250 ms tick, and a margin.
pub(crate) const QUIET_AFTER_S: f64 = 6.0;

/// Each round is one long flow, pinned (see `cpus`); the observers
/// come and go on it in phases, baseline between every two:
/// `B V1 B V2 B V3 B V4 B`, the variant order rotating between rounds.
/// Why: on this 2-CPU VM a fresh TCP flow between namespaces lands on
/// one CPU or spreads over both at random, and its throughput swings
/// 12-20 Gbit/s from second to second (CV 12 %), so a 3 % cost was lost
/// in noise between separate runs. Pinned, one flow holds within about
/// 2 % of itself. What a variant adds in the kernel runs in the flow's
/// own context on the pinned CPU and shows in full; its userspace runs
/// wherever the scheduler puts it and its CPU time is reported.
pub(crate) fn datapath(ctx: &Ctx, lab: &Netlab, srv_pid: u32, udp: bool) -> Result<DatapathResult> {
    let (settle, measure) = match (ctx.quick, udp) {
        (true, _) => (1.0, 2.0),
        (false, false) => (1.0, 4.0),
        (false, true) => (1.0, 3.0),
    };
    // TCP: both ends on the last CPU. UDP: the client (and forwarding)
    // there, the server on the first: sharing one CPU, the receiver kept
    // up with about 60 % of what was forwarded and dropped the rest at
    // its socket (SOCKET_RCVBUFF, ~50k/s), a drop storm rather than the
    // forwarding test this row is.
    let last = std::thread::available_parallelism()
        .map(|n| n.get() - 1)
        .unwrap_or(0);
    let cpus = if udp { (last, 0) } else { (last, last) };
    let mut r = DatapathResult::default();
    let mut armed = Vec::new();
    for round in 0..ctx.dp_rounds {
        let mut sequence = vec![Variant::Baseline];
        for v in order(round).into_iter().filter(|v| *v != Variant::Baseline) {
            sequence.extend([v, Variant::Baseline]);
        }
        // Generous: bpftrace can take seconds to start. The flow is
        // stopped when the round is over.
        let mut flow = PinnedFlow::start(lab, udp, cpus, 600)?;
        sleep(Duration::from_secs(2))?; // past slow start
        let mut phases = Vec::new();
        for v in sequence {
            check_interrupted()?;
            if !flow.running() {
                bail!("iperf3 ended before the round did");
            }
            // The tracer as a user runs it: every namespace, no filter.
            let mut obs = ctx.observe(v, &[], "1")?;
            let ready = Instant::now();
            // Start-up work that outlives `ready` (tracer's symbol table,
            // bpftrace's) is start-up's figure, not the datapath's.
            sleep(Duration::from_secs_f64(settle))?;
            let mut x = phase_rate(srv_pid, udp, measure)?;
            if v == Variant::Diagnose {
                // That was `diagnose` tracing route lookups, as it does
                // from the start and after any event; with nothing
                // dropping they park (`route_gate::QUIET`, 5 s), and the
                // rest of the phase measures the steady state.
                armed.push((phases.len(), x));
                let quiet = Duration::from_secs_f64(QUIET_AFTER_S);
                sleep(quiet.saturating_sub(ready.elapsed()))?;
                x = phase_rate(srv_pid, udp, measure)?;
            }
            let (cpu_s, ev, parked) = match obs.as_mut() {
                Some(o) => {
                    let e = o.stop(libc::SIGINT)?;
                    let parked = e.out.summary.as_ref().map(|s| {
                        (
                            s["routes_parked_ms"].as_u64().unwrap_or(0),
                            s["syn_check_parked_ms"].as_u64().unwrap_or(0),
                        )
                    });
                    (e.cpu_s, e.out.drops as f64, parked)
                }
                None => (0.0, 0.0, None),
            };
            if v == Variant::Diagnose && parked.is_some_and(|(r, _)| r == 0) {
                eprintln!(
                    "bench: WARNING: diagnose never parked its route lookups (an event, or \
                     under 20k packets/s): its steady-state figure measured them"
                );
            }
            eprintln!(
                "bench: {} round {} {:<18} {:>10.3} {}  (observer cpu {cpu_s:.2} s, {ev} drop events{})",
                if udp { "udp64" } else { "tcp" },
                round + 1,
                v.label(),
                x,
                if udp { "pps" } else { "Gbit/s" },
                match (v, armed.last(), parked) {
                    (Variant::Diagnose, Some((_, a)), Some((r, syn))) => format!(
                        "; {a:.3} while tracing routes; parked: routes {r} ms, SYN check {syn} ms"
                    ),
                    _ => String::new(),
                }
            );
            phases.push((v, x));
            r.values.entry(v.key()).or_default().push(x);
            if v != Variant::Baseline {
                r.cpu.entry(v.key()).or_default().push(cpu_s);
                r.events.entry(v.key()).or_default().push(ev);
            }
        }
        drop(flow);
        for (v, ratio) in sandwich_ratios(&phases) {
            r.ratios.entry(v.key()).or_default().push(ratio);
        }
        // The first half of each diagnose phase, over the same baselines.
        for (i, a) in armed.drain(..) {
            let mut p = phases.clone();
            p[i].1 = a;
            if let Some((_, ratio)) = sandwich_ratios(&p[i - 1..=i + 1]).first() {
                r.ratios.entry(DIAGNOSE_ARMED).or_default().push(*ratio);
            }
            r.values.entry(DIAGNOSE_ARMED).or_default().push(a);
        }
        // The server takes the next client only once this one is gone.
        sleep(Duration::from_millis(500))?;
    }
    Ok(r)
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum StormKind {
    ClosedPort,
    ForwardDrop,
}

impl StormKind {
    pub(crate) fn key(self) -> &'static str {
        match self {
            StormKind::ClosedPort => "closed_port",
            StormKind::ForwardDrop => "forward_drop",
        }
    }
    pub(crate) fn label(self) -> &'static str {
        match self {
            StormKind::ClosedPort => "UDP to closed port",
            StormKind::ForwardDrop => "FORWARD DROP rule",
        }
    }
    /// (sending namespace, dropping namespace, reason).
    pub(crate) fn parts(self) -> (&'static str, &'static str, &'static str) {
        match self {
            StormKind::ClosedPort => ("rtr", "srv", "NO_SOCKET"),
            StormKind::ForwardDrop => ("cli", "rtr", "NETFILTER_DROP"),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub(crate) struct StormRound {
    pub seconds: f64,
    pub sent: u64,
    pub kernel: u64,
    pub delivered: u64,
    /// Drops counted by key in the kernel (the aggregate lines' sum).
    pub aggregated: u64,
    pub lost: u64,
    pub matched: u64,
    pub seen: u64,
    pub cpu_s: f64,
    pub hwm_kb: u64,
    pub rss_kb: Vec<(f64, u64)>,
    pub exit_ok: bool,
    pub summary_present: bool,
    /// Drop-probe runs and the kernel time spent in them (bpf_prog_info,
    /// counted while `BpfStats` is held).
    pub probe_runs: u64,
    pub probe_ns: u64,
}

impl StormRound {
    /// kernel count - (delivered + aggregated + lost): 0 when every drop is
    /// accounted for.
    pub(crate) fn unaccounted(&self) -> i64 {
        self.kernel as i64 - (self.delivered + self.aggregated + self.lost) as i64
    }
}

pub(crate) struct StormSetup<'a> {
    pub lab: &'a Netlab,
    pub from: &'a str,
    pub dst: SocketAddr,
    pub threads: usize,
    pub count: Box<dyn Fn() -> Result<u64> + 'a>,
}

/// One storm under one observer: attach, read the kernel count, flood for
/// `secs`, let the tracer drain, read the count again, stop the observer.
pub(crate) fn storm_round(
    st: &StormSetup,
    obs: Option<Observer>,
    secs: f64,
    bpftrace: bool,
) -> Result<StormRound> {
    let mut obs = obs;
    let k0 = (st.count)()?;
    let cpu0 = obs.as_ref().map(|o| o.cpu_now()).unwrap_or(0.0);
    let t0 = Instant::now();
    let opts = FloodOpts {
        threads: st.threads,
        ..FloodOpts::default()
    };
    let fl = netlab::flood(&st.lab.path(st.from), st.dst, opts)?;
    let mut rss = Vec::new();
    let mut next = 1.0;
    while t0.elapsed().as_secs_f64() < secs {
        sleep(Duration::from_millis(100))?;
        let t = t0.elapsed().as_secs_f64();
        if t >= next {
            if let Some(o) = obs.as_mut() {
                if !o.alive() {
                    bail!("the observer died during the storm");
                }
                rss.push((t, o.rss_kb()));
            }
            next += 1.0;
        }
    }
    let sent = fl.stop();
    let seconds = t0.elapsed().as_secs_f64();
    // Let the observer drain what is queued before counting.
    sleep(Duration::from_millis(1500))?;
    let k1 = (st.count)()?;
    let mut r = StormRound {
        seconds,
        sent,
        kernel: k1 - k0,
        rss_kb: rss,
        ..Default::default()
    };
    if let Some(mut o) = obs.take() {
        r.hwm_kb = o.hwm_kb();
        let e = o.stop(libc::SIGINT)?;
        // CPU from the storm's start to exit (start-up excluded).
        r.cpu_s = e.cpu_s - cpu0;
        r.exit_ok = e.exit_code == Some(0) || (bpftrace && e.signal.is_none());
        if bpftrace {
            r.delivered = e.out.drops;
            r.lost = e.out.bt_lost;
            r.summary_present = true;
        } else {
            r.summary_present = e.out.summary.is_some();
            r.delivered = summary_u64(&e.out.summary, "drops");
            r.aggregated = summary_u64(&e.out.summary, "aggregated");
            r.lost = summary_u64(&e.out.summary, "lost");
            r.matched = kernel_stat(&e.out.summary, "drops_matched");
            r.seen = kernel_stat(&e.out.summary, "drops_seen");
            r.probe_runs = kernel_stat(&e.out.summary, "drop_probe_runs");
            r.probe_ns = kernel_stat(&e.out.summary, "drop_probe_ns");
            if r.delivered != e.out.drops {
                eprintln!(
                    "bench: summary says {} drops, {} drop lines were printed",
                    r.delivered, e.out.drops
                );
            }
        }
        if !r.exit_ok {
            eprintln!(
                "bench: observer exit {:?} signal {:?} after {:?}: {}",
                e.exit_code,
                e.signal,
                e.exit_after,
                e.stderr.trim()
            );
        }
    }
    Ok(r)
}

/// Keys of the statistics-on rounds in a storm's results.
pub(crate) const PROBE_WATCH: &str = "watch-probe-cost";
pub(crate) const PROBE_DIAGNOSE: &str = "diagnose-probe-cost";

pub(crate) fn storm(
    ctx: &Ctx,
    lab: &Netlab,
    kind: StormKind,
) -> Result<BTreeMap<&'static str, Vec<StormRound>>> {
    let (from, at, reason) = kind.parts();
    let code = reason_code(&ctx.tracer, reason)?;
    let inode = lab.inode(at)?;
    let scope = vec![
        "--netns".to_string(),
        lab.name(at),
        "--reason".to_string(),
        reason.to_string(),
    ];
    let bt_filter = format!("$ns == {inode} && args->reason == {code}");
    let setup = StormSetup {
        lab,
        from,
        dst: "10.201.2.1:9".parse().unwrap(),
        threads: 2,
        count: match kind {
            StormKind::ClosedPort => Box::new(|| udp_noports(lab, "srv")),
            StormKind::ForwardDrop => Box::new(|| forward_drops(lab)),
        },
    };
    let secs = if ctx.quick { 3.0 } else { 8.0 };
    let mut res: BTreeMap<&'static str, Vec<StormRound>> = BTreeMap::new();
    // The drop rates are measured with BPF run-time statistics off, as on
    // a user's host: when on, the kernel reads the clock twice around
    // every program run (about 80 ns here, as much as a whole short
    // program), which would charge diagnose's route and xmit programs,
    // run several times per packet, far more than they cost. The kernel
    // time per drop-probe run comes from one more round per tracer, with
    // the statistics on and its drop rate not counted.
    let probe_round = ctx.rounds;
    for round in 0..=probe_round {
        let variants = if round == probe_round {
            vec![Variant::Watch, Variant::Diagnose]
        } else {
            order(round)
        };
        for v in variants {
            check_interrupted()?;
            let _stats = (round == probe_round).then(BpfStats::enable);
            let obs = ctx.observe(v, &scope, &bt_filter)?;
            let r = storm_round(&setup, obs, secs, v.is_bpftrace())?;
            eprintln!(
                "bench: storm {} round {} {:<18} kernel {:>9} ({:>8.0}/s) delivered {:>9} lost {:>9} unaccounted {:>4} cpu {:.2} s",
                kind.key(),
                round + 1,
                v.label(),
                r.kernel,
                r.kernel as f64 / r.seconds,
                r.delivered,
                r.lost,
                if v == Variant::Baseline { 0 } else { r.unaccounted() },
                r.cpu_s
            );
            let key = match (round == probe_round, v) {
                (true, Variant::Watch) => PROBE_WATCH,
                (true, _) => PROBE_DIAGNOSE,
                (false, v) => v.key(),
            };
            res.entry(key).or_default().push(r);
        }
    }
    Ok(res)
}

pub(crate) fn startup(ctx: &Ctx) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut wall = Vec::new();
    let mut reported = Vec::new();
    for i in 0..11 {
        check_interrupted()?;
        let mut o = Observer::tracer(&ctx.tracer, &["watch".to_string()], false)?;
        let ms = o.ready_after.as_secs_f64() * 1000.0;
        let line: Value = serde_json::from_str(&o.ready_line)?;
        // tracer installs its SIGINT handler only after printing `ready`
        // (see the report): a signal sent at once would kill it outright.
        sleep(Duration::from_millis(300))?;
        let e = o.stop(libc::SIGINT)?;
        if e.exit_code != Some(0) {
            bail!("tracer watch exited {:?}: {}", e.exit_code, e.stderr);
        }
        // The first run warms the page cache; it does not count.
        if i > 0 {
            wall.push(ms);
            reported.push(line["startup_ms"].as_f64().unwrap_or(f64::NAN));
        }
    }
    Ok((wall, reported))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn a_variant_is_judged_against_the_baselines_around_it() {
        use Variant::*;
        // The flow drifts from 100 to 120 over the round; each variant
        // costs 2 % of where the flow stood. Against the round's first
        // baseline the last one would look 16 % faster.
        let phases = [
            (Baseline, 100.0),
            (Watch, 102.9),
            (Baseline, 110.0),
            (Diagnose, 112.7),
            (Baseline, 120.0),
        ];
        let r = sandwich_ratios(&phases);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].0, Watch);
        assert!((r[0].1 - 0.98).abs() < 1e-9, "{}", r[0].1);
        assert_eq!(r[1].0, Diagnose);
        assert!((r[1].1 - 0.98).abs() < 1e-9, "{}", r[1].1);
        // A phase without a baseline on both sides is not judged, and a
        // baseline of zero (a dead flow) is not divided by.
        assert!(sandwich_ratios(&[(Baseline, 100.0), (Watch, 90.0)]).is_empty());
        assert!(sandwich_ratios(&[(Baseline, 0.0), (Watch, 9.0), (Baseline, 0.0)]).is_empty());
    }
}
