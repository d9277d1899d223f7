//! `cargo xtask bench [--quick]`: what tracing costs, measured side by side
//! against a baseline (nothing attached), `tracer watch`, `tracer diagnose`
//! and bpftrace running equivalent scripts.
//!
//! Everything runs in throwaway namespaces named `trbench-<pid>-*`
//! (client -- router -- server, joined by veth pairs; see `lab`), which
//! are deleted on exit, on error and on Ctrl-C. Nothing outside them is touched:
//! bpftrace gets tracefs in a private mount namespace (`unshare -m`).
//!
//! Workloads:
//! 1. datapath: iperf3 TCP client -> router (forwarding) -> server, then
//!    64-byte UDP (`-u -l 64 -b 0`), the server's received Gbit/s or
//!    packets/s. Each round is one long flow pinned to fixed CPUs, and the
//!    observers take turns on it with a baseline phase between every two
//!    (`B V1 B V2 B V3 B V4 B`, the order rotating between rounds). A
//!    variant's "vs base" is the median over rounds of its phase rate over
//!    the mean of the two baselines around it (`sandwich_ratios`); the
//!    baseline row shows the median step between neighbouring baselines,
//!    the noise floor of the rows. See `datapath` for why. A `diagnose`
//!    phase is measured twice: 1 s after `ready`, while it traces route
//!    lookups (row "diagnose, routes on"), then 6 s after, once they have
//!    parked for want of any event: the steady state the target is for;
//! 2. drop storms: UDP to a closed port (router -> server, counted by the
//!    server's `Udp: NoPorts`) and a FORWARD DROP rule on the router
//!    (counted by the rule's packet counter), driven by sender threads
//!    that `setns` into the sending namespace and `sendmmsg` 16-byte
//!    datagrams. Each round runs every variant in turn, the order
//!    rotating. Tracer's delivered + aggregated + lost must equal the
//!    kernel's count, with nothing lost (storms are aggregated). Drop
//!    rates are measured with BPF run-time statistics off; one more round
//!    per tracer, with them on, gives the kernel time per drop-probe run;
//! 3. start-up: spawn to the `ready` line, 10 runs;
//! 4. memory: RSS during a long storm (60 s; 15 s with --quick).
//!
//! Output: a table with each figure's target and PASS/MISS, and
//! `target/bench/report.json`.
//!
//! Duration on a 2-core VM: the default run takes about 16 minutes
//! (5 datapath rounds of about 60 s each for TCP and UDP, 3 rounds x 2
//! x 8 s storms, plus a 60 s memory storm); `--quick` about 6 minutes (3
//! datapath rounds of shorter phases and 2 storm rounds, 3 s each).
//!
//! `--scale` is another mode: `tracer watch`, `diagnose` and `agent` with
//! 100, 1,000 and 3,000 namespaces (see `scale`).
//!
//! Files: `lab` (namespaces, counters, Ctrl-C), `load` (the pinned flow
//! and rate sampling), `observers` (tracer, bpftrace), `workloads` (what
//! runs under each observer), `report` (the tables and report.json).

pub(crate) mod churn;
pub(crate) mod lab;
pub(crate) mod load;
pub(crate) mod observers;
pub(crate) mod report;
pub(crate) mod scale;
pub(crate) mod workloads;

use anyhow::{bail, Result};
use lab::{catch_signals, routed_lab, sleep, udp_noports};
use observers::Observer;
use report::Results;
use std::path::Path;
use std::time::{Duration, Instant};
use workloads::{datapath, startup, storm, storm_round, Ctx, StormKind, StormSetup};

const USAGE: &str = "usage: cargo xtask bench [--quick]  (--quick: about 6 minutes instead of 16)\n       cargo xtask bench --scale [--sizes 100,1000,3000] [--idle SECONDS] [--churn SECONDS] [--churn-rate N] [--tracer PATH]  (a dense node: see bench/scale.rs)";

pub fn run(root: &Path, args: &[&str]) -> Result<()> {
    if args.contains(&"--scale") {
        return scale::run(root, args);
    }
    if args.iter().any(|a| *a == "--help" || *a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    let quick = args.contains(&"--quick");
    if let Some(bad) = args.iter().find(|a| **a != "--quick") {
        bail!("bench: unknown argument {bad} ({USAGE})");
    }
    catch_signals();
    let ctx = Ctx {
        tracer: root.join("target/release/tracer"),
        out_dir: root.join("target/bench"),
        quick,
        rounds: if quick { 2 } else { 3 },
        dp_rounds: if quick { 3 } else { 5 },
    };
    std::fs::create_dir_all(&ctx.out_dir)?;
    let started = Instant::now();
    let mut lab = routed_lab("trbench")?;
    let srv_pid = lab.spawn("srv", "iperf3 -s")?;
    sleep(Duration::from_millis(500))?;

    let tcp = datapath(&ctx, &lab, srv_pid, false)?;
    let udp = datapath(&ctx, &lab, srv_pid, true)?;
    let closed = storm(&ctx, &lab, StormKind::ClosedPort)?;
    let fwd = storm(&ctx, &lab, StormKind::ForwardDrop)?;
    let (st_wall, st_rep) = startup(&ctx)?;

    // Memory: one long storm under `tracer watch`.
    let mem_secs = if quick { 15.0 } else { 60.0 };
    let mem = {
        let scope = vec![
            "watch".to_string(),
            "--netns".to_string(),
            lab.name("srv"),
            "--reason".to_string(),
            "NO_SOCKET".to_string(),
        ];
        let setup = StormSetup {
            lab: &lab,
            from: "rtr",
            dst: "10.201.2.1:9".parse().unwrap(),
            threads: 2,
            count: Box::new(|| udp_noports(&lab, "srv")),
        };
        let obs = Observer::tracer(&ctx.tracer, &scope, false)?;
        storm_round(&setup, Some(obs), mem_secs, false)?
    };
    drop(lab);
    report::write(
        &ctx,
        &Results {
            tcp,
            udp,
            closed,
            fwd,
            startup_wall: st_wall,
            startup_reported: st_rep,
            mem,
            mem_secs,
        },
        started,
    )
}
