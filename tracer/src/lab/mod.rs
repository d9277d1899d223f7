//! `tracer lab`: the incidents, rebuilt in throwaway namespaces and
//! diagnosed live against the real kernel (no simulated events).
pub mod docker;
pub mod faults;
pub mod incident;
pub mod scenarios;
pub mod traffic;

use crate::diagnose::Diagnoser;
use crate::session::{TraceOptions, Tracer};
use crate::sinks::Format;
use anyhow::{anyhow, bail, Result};
use incident::Params;
use netlab::Netlab;
use scenarios::SCENARIOS;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Every lab namespace starts with this (what `tracer lab clean` cleans).
pub const LAB_PREFIX: &str = "trlab-";

/// After the traffic ends, keep tracing this long for late drops (a
/// neighbour that fails, a retransmission).
const GRACE: Duration = Duration::from_millis(1500);
/// A lab never runs longer than this, whatever happens.
const HARD_LIMIT: Duration = Duration::from_secs(30);

pub fn list(format: Format) -> Result<()> {
    let mut out = crate::sinks::Output::stdout(format, 0);
    for s in SCENARIOS {
        if format == Format::Json {
            out.json(&serde_json::json!({
                "type": "lab", "name": s.name, "summary": s.summary, "expect": s.expect,
            }))?;
        } else {
            let expect = if s.expect.is_empty() {
                "control: no fault".to_string()
            } else {
                s.expect.join(", ")
            };
            out.line(&format!("{:<24} {}  [{expect}]", s.name, s.summary))?;
        }
    }
    Ok(())
}

/// `tracer lab clean`: removes what killed lab runs recorded making (see
/// `netlab::markers`), never a namespace by its name alone.
pub fn clean() -> Result<()> {
    let done = netlab::clean(LAB_PREFIX);
    if done.removed.is_empty() {
        eprintln!("tracer: no lab namespaces to remove");
    } else {
        eprintln!("tracer: removed {}", done.removed.join(" "));
    }
    if !done.running.is_empty() {
        eprintln!(
            "tracer: left {}: their lab run is still going",
            done.running.join(" ")
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct LabResult<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    expected: &'a [&'a str],
    verdicts: Vec<&'static str>,
    pass: bool,
    namespaces: Vec<String>,
}

/// Runs lab `name`, or every lab in turn for `all`.
pub fn run(
    name: &str,
    keep: bool,
    format: Format,
    params: Params,
    write: Option<(&Path, crate::sinks::file::Existing)>,
    started: Instant,
) -> Result<()> {
    if name != "all" {
        return run_one(name, keep, format, params, write, started);
    }
    if write.is_some() {
        bail!("-w records one lab: name it instead of `all`");
    }
    let mut failed = Vec::new();
    for sc in SCENARIOS {
        if sc.name.starts_with("docker-") && !docker::available() {
            eprintln!(
                "tracer: skipping lab {}: needs dockerd and busybox-static (Debian's docker.io, busybox-static)",
                sc.name
            );
            continue;
        }
        if format == Format::Text {
            eprintln!(
                "\n==================== lab {} ====================",
                sc.name
            );
        }
        if let Err(e) = run_one(sc.name, keep, format, params.clone(), None, Instant::now()) {
            let msg = format!("{e:#}");
            if msg.starts_with("interrupted") {
                bail!("{msg}");
            }
            eprintln!("tracer: {msg}");
            failed.push(sc.name);
        }
    }
    if !failed.is_empty() {
        bail!(
            "labs that did not prove their incident: {}",
            failed.join(", ")
        );
    }
    Ok(())
}

/// Builds lab `name`, runs its traffic under `diagnose`, prints the
/// verdicts, and tears everything down (also on Ctrl-C or an error).
fn run_one(
    name: &str,
    keep: bool,
    format: Format,
    params: Params,
    write: Option<(&Path, crate::sinks::file::Existing)>,
    started: Instant,
) -> Result<()> {
    let sc = scenarios::find(name).ok_or_else(|| {
        anyhow!("unknown lab '{name}': `tracer lab list` shows the labs (or use `all`)")
    })?;
    crate::kernel::probes::check_privileges()?;
    // Opened before the lab is built: a refused path fails at once.
    let mut record = write
        .map(|(p, existing)| crate::sinks::file::open(p, existing))
        .transpose()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        // Take SIGINT/SIGTERM from the start, so an interrupted build still
        // reaches the teardown below instead of killing the process.
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut lab = Netlab::new(&format!("{LAB_PREFIX}{}-", std::process::id()))?;
        lab.keep = keep;
        let built = (sc.build)(&mut lab, &params)?;
        if let Some(h) = &built.docker_host {
            // Containers are named through this lab's own dockerd.
            std::env::set_var("DOCKER_HOST", h);
        }
        let interrupted = tokio::select! {
            biased;
            _ = int.recv() => true,
            _ = term.recv() => true,
            _ = std::future::ready(()) => false,
        };
        if interrupted {
            bail!("interrupted while building lab {name}");
        }
        if format == Format::Text {
            eprintln!(
                "tracer: lab {name}: {}\ntracer: namespaces {}",
                sc.summary,
                lab.namespaces().join(" ")
            );
        }
        let opts = TraceOptions {
            netns: built.trace.clone(),
            duration: Some(HARD_LIMIT),
            format: Some(format),
            ..Default::default()
        };
        let mut tracer = Tracer::start(&opts, true, started)?;
        let stop = Arc::new(tokio::sync::Notify::new());
        tracer.stop_on(stop.clone());
        run_traffic(built.traffic, stop.clone());
        let mut diag = Diagnoser::new(true);
        if let Some(f) = record.take() {
            diag.record_to(f, &tracer.session)?;
        }
        if !sc.expect.is_empty() {
            diag.stop_when = Some((sc.expect.iter().map(|s| s.to_string()).collect(), stop));
        }
        let summary = tracer.run(&mut diag).await?;
        if summary.interrupted {
            bail!("interrupted: lab {name} stopped before its traffic ended");
        }
        let (kinds, pass) = judge(sc, &diag);
        report(format, sc, &lab, &kinds, pass)?;
        if keep {
            eprintln!(
                "tracer: kept namespaces {} (remove with `tracer lab clean`)",
                lab.namespaces().join(" ")
            );
        }
        drop(built.keep_alive);
        drop(lab);
        if !pass {
            bail!("lab {name}: expected {:?}, proven {:?}", sc.expect, kinds);
        }
        Ok(())
    })
}

/// Runs the lab's traffic on its own thread; `done` is notified a grace
/// period after it ends, for the last drops to arrive.
fn run_traffic(traffic: Box<dyn FnOnce() -> Result<()> + Send>, done: Arc<tokio::sync::Notify>) {
    std::thread::spawn(move || {
        if let Err(e) = traffic() {
            eprintln!("tracer: lab traffic: {e:#}");
        }
        std::thread::sleep(GRACE);
        done.notify_one();
    });
}

/// The kinds concluded, and whether the lab passed: expected kinds must
/// be concluded (proven, or information such as a closed port); a control
/// must prove no fault at all.
fn judge(sc: &scenarios::Scenario, diag: &Diagnoser) -> (Vec<&'static str>, bool) {
    let kinds: Vec<&'static str> = diag
        .verdicts()
        .iter()
        .filter(|v| v.tier.concluded())
        .map(|v| v.kind)
        .collect();
    let faults = diag.verdicts().iter().filter(|v| v.fault).count();
    let pass =
        sc.expect.iter().all(|k| kinds.contains(k)) && (!sc.expect.is_empty() || faults == 0);
    (kinds, pass)
}

/// The lab's result: a JSON line, or a line of text when it passed.
fn report(
    format: Format,
    sc: &scenarios::Scenario,
    lab: &Netlab,
    kinds: &[&'static str],
    pass: bool,
) -> Result<()> {
    let mut out = crate::sinks::Output::stdout(format, 0);
    if format == Format::Json {
        out.json(&LabResult {
            kind: "lab",
            name: sc.name,
            expected: sc.expect,
            verdicts: kinds.to_vec(),
            pass,
            namespaces: lab.namespaces().to_vec(),
        })?;
    } else if pass {
        out.line(&format!(
            "lab {}: {}",
            sc.name,
            if sc.expect.is_empty() {
                "no fault verdict, as expected for this control".to_string()
            } else {
                format!("proven: {}", sc.expect.join(", "))
            }
        ))?;
    }
    Ok(())
}
