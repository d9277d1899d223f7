//! What the bench found, told: three tables on stdout (each figure with
//! its target and PASS/MISS) and the same as `target/bench/report.json`.

use super::lab::sh;
use super::load::stats;
use super::observers::Variant;
use super::workloads::{
    Ctx, DatapathResult, StormKind, StormRound, DIAGNOSE_ARMED, PROBE_DIAGNOSE, PROBE_WATCH,
};
use anyhow::Result;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

/// Everything one run measured.
pub(crate) struct Results {
    pub tcp: DatapathResult,
    pub udp: DatapathResult,
    pub closed: BTreeMap<&'static str, Vec<StormRound>>,
    pub fwd: BTreeMap<&'static str, Vec<StormRound>>,
    /// Spawn to `ready`, and the startup_ms tracer reports, per run.
    pub startup_wall: Vec<f64>,
    pub startup_reported: Vec<f64>,
    /// The long storm under `tracer watch`, and its length.
    pub mem: StormRound,
    pub mem_secs: f64,
}

/// Prints the tables and writes report.json.
pub(crate) fn write(ctx: &Ctx, res: &Results, started: Instant) -> Result<()> {
    let Results {
        tcp,
        udp,
        closed,
        fwd,
        startup_wall: st_wall,
        startup_reported: st_rep,
        mem,
        mem_secs,
    } = res;
    let (quick, mem_secs) = (ctx.quick, *mem_secs);
    let mut t = Table::default();
    let mut targets = Vec::new();
    let mut report = json!({
        "mode": if quick { "quick" } else { "full" },
        "kernel": sh(Command::new("uname").arg("-r")).unwrap_or_default().trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "rounds": ctx.rounds,
        "datapath_rounds": ctx.dp_rounds,
    });
    t.row(&[
        "workload", "variant", "median", "min", "max", "vs base", "target", "result",
    ]);
    for (name, unit, r) in [
        ("TCP throughput", "Gbit/s", &tcp),
        ("UDP 64 B", "pps", &udp),
    ] {
        let mut j = serde_json::Map::new();
        let noise = baseline_noise(&r.values["baseline"]);
        j.insert("baseline_noise".into(), json!(noise));
        // Each variant's row; `diagnose` twice: its steady state (the
        // target) and its first seconds, while it traces route lookups.
        let rows = Variant::ALL.iter().flat_map(|v| {
            let row = (v.key(), v.label(), *v);
            if *v == Variant::Diagnose {
                vec![row, (DIAGNOSE_ARMED, "diagnose, routes on", *v)]
            } else {
                vec![row]
            }
        });
        for (key, label, v) in rows {
            let none = Vec::new();
            let (med, min, max) = stats(r.values.get(key).unwrap_or(&none));
            let (cpu, _, _) = stats(r.cpu.get(key).unwrap_or(&none));
            let (ev, _, _) = stats(r.events.get(key).unwrap_or(&none));
            let ratios = r.ratios.get(key).unwrap_or(&none);
            let ratio = if v == Variant::Baseline {
                1.0
            } else {
                stats(ratios).0
            };
            let loss = 1.0 - ratio;
            let (target, ok) = match (v, key) {
                (_, DIAGNOSE_ARMED) => ("", None),
                (Variant::Watch, _) => ("loss <= 1%", Some(loss <= 0.01)),
                (Variant::Diagnose, _) => ("loss <= 3%", Some(loss <= 0.03)),
                _ => ("", None),
            };
            let fmt = |x: f64| {
                if unit == "pps" {
                    format!("{x:.0}")
                } else {
                    format!("{x:.3}")
                }
            };
            t.row(&[
                &format!("{name} ({unit})"),
                label,
                &fmt(med),
                &fmt(min),
                &fmt(max),
                &if v == Variant::Baseline {
                    format!("noise {:.1}%", noise * 100.0)
                } else {
                    format!("{:+.1}%", (ratio - 1.0) * 100.0)
                },
                target,
                ok.map(pass).unwrap_or(""),
            ]);
            if let Some(ok) = ok {
                targets.push(json!({"name": format!("{name} {key}"), "value": loss, "target": target, "pass": ok}));
            }
            j.insert(
                key.into(),
                json!({"values": r.values.get(key).unwrap_or(&none), "median": med, "min": min, "max": max,
                       "ratios": ratios, "ratio": ratio,
                       "observer_cpu_s_median": cpu, "drop_events_median": ev}),
            );
        }
        report[if unit == "pps" {
            "udp64_pps"
        } else {
            "tcp_gbps"
        }] = Value::Object(j);
    }
    let table1 = t.print();

    let mut t = Table::default();
    t.row(&[
        "drop storm",
        "variant",
        "kernel drops/s",
        "delivered/s",
        "lost",
        "unaccounted",
        "cpu s",
        "cpu/event",
        "peak RSS",
        "targets",
    ]);
    let mut storm_json = serde_json::Map::new();
    let mut cpu_per_event: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    for (kind, res) in [
        (StormKind::ClosedPort, &closed),
        (StormKind::ForwardDrop, &fwd),
    ] {
        let mut j = serde_json::Map::new();
        let base_rate = {
            let r: Vec<f64> = res["baseline"]
                .iter()
                .map(|r| r.kernel as f64 / r.seconds)
                .collect();
            stats(&r).0
        };
        for v in Variant::ALL {
            let rounds = &res[v.key()];
            let rate: Vec<f64> = rounds.iter().map(|r| r.kernel as f64 / r.seconds).collect();
            let dps: Vec<f64> = rounds
                .iter()
                .map(|r| r.delivered as f64 / r.seconds)
                .collect();
            let (rate_m, rate_min, rate_max) = stats(&rate);
            let (dps_m, _, _) = stats(&dps);
            let lost: u64 = rounds.iter().map(|r| r.lost).sum();
            let unacc: Vec<i64> = rounds.iter().map(|r| r.unaccounted()).collect();
            let worst = unacc.iter().map(|u| u.abs()).max().unwrap_or(0);
            let cpu: Vec<f64> = rounds.iter().map(|r| r.cpu_s).collect();
            let (cpu_m, _, _) = stats(&cpu);
            // Per drop handled: printed or counted by key.
            let cpe: Vec<f64> = rounds
                .iter()
                .map(|r| r.cpu_s / ((r.delivered + r.aggregated).max(1)) as f64 * 1e6)
                .collect();
            let (cpe_m, _, _) = stats(&cpe);
            let hwm = rounds.iter().map(|r| r.hwm_kb).max().unwrap_or(0);
            cpu_per_event.insert((kind.key(), v.key()), cpe_m);
            let mut tg = Vec::new();
            if v != Variant::Baseline {
                let ok = unacc.iter().all(|u| *u == 0);
                tg.push(format!("unaccounted=0 {}", pass(ok)));
                targets.push(
                    json!({"name": format!("storm {} {} unaccounted", kind.key(), v.key()),
                    "value": unacc, "target": "0", "pass": ok}),
                );
            }
            // Kernel time per drop-probe run, and the drop rate one CPU of
            // kernel side could sustain at that cost.
            let probe_key = if v == Variant::Watch {
                PROBE_WATCH
            } else {
                PROBE_DIAGNOSE
            };
            let ns_per_run: Vec<f64> = res
                .get(probe_key)
                .into_iter()
                .flatten()
                .filter(|r| r.probe_runs > 0)
                .map(|r| r.probe_ns as f64 / r.probe_runs as f64)
                .collect();
            let (ns_m, _, _) = if ns_per_run.is_empty() {
                (0.0, 0.0, 0.0)
            } else {
                stats(&ns_per_run)
            };
            if v == Variant::Watch || v == Variant::Diagnose {
                let ok = ns_m > 0.0 && ns_m <= 250.0;
                tg.push(format!("probe {ns_m:.0} ns <=250 {}", pass(ok)));
                targets.push(
                    json!({"name": format!("storm {} {} ns per drop-probe run", kind.key(), v.key()),
                    "value": ns_m, "target": "<= 250", "pass": ok}),
                );
                // The host's drop rate with the tracer attached, against
                // the same storm with nothing attached: issue 22 asks for
                // 95 %, with `watch` and `diagnose` alike.
                let want = 0.95;
                let kept = rate_m / base_rate;
                let ok = kept >= want;
                tg.push(format!(
                    "kept {:.0}% >={:.0}% {}",
                    kept * 100.0,
                    want * 100.0,
                    pass(ok)
                ));
                targets.push(
                    json!({"name": format!("storm {} {} drop rate kept", kind.key(), v.key()),
                    "value": kept, "target": format!(">= {want}"), "pass": ok}),
                );
                let ok = lost == 0;
                tg.push(format!("lost=0 {}", pass(ok)));
                targets.push(
                    json!({"name": format!("storm {} {} lost", kind.key(), v.key()),
                    "value": lost, "target": "0", "pass": ok}),
                );
            }
            if v == Variant::Baseline {
                t.row(&[
                    kind.label(),
                    v.label(),
                    &format!("{rate_m:.0} ({rate_min:.0}..{rate_max:.0})"),
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                ]);
            } else {
                t.row(&[
                    kind.label(),
                    v.label(),
                    &format!("{rate_m:.0} ({rate_min:.0}..{rate_max:.0})"),
                    &format!("{dps_m:.0}"),
                    &lost.to_string(),
                    &format!("{worst}"),
                    &format!("{cpu_m:.2}"),
                    &format!("{cpe_m:.2} us"),
                    &format!("{:.1} MB", hwm as f64 / 1024.0),
                    &tg.join(", "),
                ]);
            }
            j.insert(
                v.key().into(),
                json!({
                    "rounds": rounds.iter().map(|r| json!({
                        "seconds": r.seconds, "sent": r.sent, "kernel": r.kernel,
                        "delivered": r.delivered, "aggregated": r.aggregated, "lost": r.lost,
                        "unaccounted": r.unaccounted(),
                        "drops_matched": r.matched, "drops_seen": r.seen,
                        "matched_minus_accounted": r.matched as i64 - (r.delivered + r.aggregated + r.lost) as i64,
                        "cpu_s": r.cpu_s, "vm_hwm_kb": r.hwm_kb, "exit_ok": r.exit_ok,
                        "probe_runs": r.probe_runs, "probe_ns": r.probe_ns,
                    })).collect::<Vec<_>>(),
                    "kernel_rate_median": rate_m, "kernel_rate_min": rate_min, "kernel_rate_max": rate_max,
                    "delivered_rate_median": dps_m, "cpu_us_per_event_median": cpe_m,
                    "probe_ns_per_run_median": ns_m,
                }),
            );
        }
        storm_json.insert(kind.key().into(), Value::Object(j));
    }
    for kind in [StormKind::ClosedPort, StormKind::ForwardDrop] {
        let w = cpu_per_event[&(kind.key(), "watch")];
        let b = cpu_per_event[&(kind.key(), "bpftrace_watch")];
        let ok = w < b / 2.0;
        t.row(&[
            kind.label(),
            "cpu/event watch vs bpftrace",
            &format!("{:.2}x", w / b),
            "",
            "",
            "",
            "",
            "",
            "",
            &format!("< 0.5x {}", pass(ok)),
        ]);
        targets.push(
            json!({"name": format!("storm {} cpu/event watch vs bpftrace", kind.key()),
            "value": w / b, "target": "well below bpftrace (< 0.5x)", "pass": ok}),
        );
    }
    report["storm"] = Value::Object(storm_json);
    let table2 = t.print();

    let mut t = Table::default();
    t.row(&["measure", "median", "min", "max", "target", "result"]);
    let (w, wmin, wmax) = stats(st_wall);
    let (r, rmin, rmax) = stats(st_rep);
    t.row(&[
        "start-up: spawn -> ready line (ms)",
        &format!("{w:.1}"),
        &format!("{wmin:.1}"),
        &format!("{wmax:.1}"),
        "< 150",
        pass(w < 150.0),
    ]);
    t.row(&[
        "start-up: startup_ms it reports",
        &format!("{r:.1}"),
        &format!("{rmin:.1}"),
        &format!("{rmax:.1}"),
        "< 150",
        pass(r < 150.0),
    ]);
    targets
        .push(json!({"name": "startup wall ms", "value": w, "target": "< 150", "pass": w < 150.0}));
    report["startup"] =
        json!({"wall_ms": st_wall, "reported_ms": st_rep, "wall_median": w, "reported_median": r});
    let at10 = mem
        .rss_kb
        .iter()
        .find(|(t, _)| *t >= 10.0)
        .map(|x| x.1)
        .unwrap_or(0);
    let end = mem.rss_kb.last().map(|x| x.1).unwrap_or(0);
    let growth = end as f64 / 1024.0 - at10 as f64 / 1024.0;
    let mb = |kb: u64| format!("{:.1}", kb as f64 / 1024.0);
    t.row(&[
        &format!("memory: peak RSS (VmHWM) in a {mem_secs:.0} s storm (MB)"),
        &mb(mem.hwm_kb),
        "",
        "",
        "< 50",
        pass(mem.hwm_kb < 50 * 1024),
    ]);
    t.row(&[
        "memory: RSS at 10 s / at end (MB)",
        &format!("{} / {}", mb(at10), mb(end)),
        "",
        "",
        "flat (< +2 MB)",
        pass(growth < 2.0),
    ]);
    t.row(&[
        &format!(
            "memory storm: {} drops at {:.0}/s, delivered {} lost {} unaccounted {}",
            mem.kernel,
            mem.kernel as f64 / mem.seconds,
            mem.delivered,
            mem.lost,
            mem.unaccounted()
        ),
        "",
        "",
        "",
        "0",
        pass(mem.unaccounted() == 0),
    ]);
    targets.push(json!({"name": "peak RSS kB", "value": mem.hwm_kb, "target": "< 51200", "pass": mem.hwm_kb < 50 * 1024}));
    targets.push(json!({"name": "RSS growth 10 s -> end MB", "value": growth, "target": "< 2", "pass": growth < 2.0}));
    report["memory"] = json!({
        "seconds": mem_secs, "vm_hwm_kb": mem.hwm_kb, "rss_kb": mem.rss_kb,
        "rss_at_10s_kb": at10, "rss_end_kb": end, "kernel": mem.kernel,
        "delivered": mem.delivered, "lost": mem.lost, "unaccounted": mem.unaccounted(),
    });
    let table3 = t.print();
    report["targets"] = Value::Array(targets);
    report["wall_s"] = json!(started.elapsed().as_secs_f64());
    let text = format!(
        "tracer bench ({}, {} datapath rounds, {} storm rounds, kernel {}, {} CPUs, {:.0} s)\n\n{table1}\n{table2}\n{table3}",
        if quick { "--quick" } else { "full" },
        ctx.dp_rounds,
        ctx.rounds,
        report["kernel"].as_str().unwrap_or("?"),
        report["cpus"],
        started.elapsed().as_secs_f64()
    );
    report["table"] = json!(text);
    println!("{text}");
    let path = ctx.out_dir.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("report: {}", path.display());
    Ok(())
}

#[derive(Default)]
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn row(&mut self, cells: &[&str]) {
        self.rows
            .push(cells.iter().map(|s| s.to_string()).collect());
    }

    fn print(&self) -> String {
        let cols = self.rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut w = vec![0; cols];
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let mut s = String::new();
        for r in &self.rows {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                let pad = w[i] - c.chars().count();
                if i == 0 || i == 1 {
                    line.push_str(c);
                    line.push_str(&" ".repeat(pad));
                } else {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(c);
                }
                line.push_str("  ");
            }
            s.push_str(line.trim_end());
            s.push('\n');
        }
        s
    }
}

pub(crate) fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

/// How far apart two neighbouring baseline phases are, at the median:
/// the noise floor of the datapath rows.
pub(crate) fn baseline_noise(values: &[f64]) -> f64 {
    let d: Vec<f64> = values
        .windows(2)
        .filter(|w| w[0] > 0.0)
        .map(|w| (w[1] / w[0] - 1.0).abs())
        .collect();
    stats(&d).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_noise_is_the_median_step_between_neighbours() {
        // Steps of +2 %, -2 %, +10 %: the median ignores the one outlier.
        let b = [100.0, 102.0, 99.96, 109.956];
        assert!((baseline_noise(&b) - 0.02).abs() < 1e-6);
    }
}
