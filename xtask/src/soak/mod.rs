//! `cargo xtask soak [--quick]`: the long reliability checks of the tracer
//! (release build), in throwaway namespaces `trsoak-<pid>-*` and
//! `trchurn-<pid>-*`, deleted on exit, on error and on Ctrl-C.
//!
//! 1. Storm (60 s; 15 s with --quick): `tracer watch --netns srv --reason
//!    NO_SOCKET -o json` while sender threads blast UDP at a closed port.
//!    It must not crash, its RSS must stay flat (sampled every second),
//!    and delivered + aggregated + lost must equal the server's `Udp: NoPorts`.
//! 2. Churn: 50 namespaces (10 with --quick), each joined to a hub by 4
//!    veth pairs (200 pairs), created, made to drop (UDP to closed ports
//!    both ways) and deleted, with only a few alive at a time, under
//!    `tracer watch -o json` (all namespaces). Every fifth namespace is
//!    deleted while the tracer is stopped (SIGSTOP), so its events are
//!    named after their namespace and interfaces are gone: they must say
//!    so (`netns_name` null, `ifname` null with `ifname_gone` true). Names
//!    that are given must be right. No crash, bounded RSS.
//!
//! Takes about 2 minutes (about 40 s with --quick). `--agent` runs the
//! agent soak instead (see agent.rs).

use crate::bench::lab::{
    catch_signals, check_interrupted, new_lab, routed_lab, sleep, udp_noports,
};
use crate::bench::observers::Observer;
use crate::bench::workloads::{storm_round, StormSetup};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod agent;

const USAGE: &str = "usage: cargo xtask soak [--quick] | cargo xtask soak --agent [--minutes N]";

pub fn run(root: &Path, args: &[&str]) -> Result<()> {
    catch_signals();
    let tracer = root.join("target/release/tracer");
    if args.first() == Some(&"--agent") {
        let minutes = match &args[1..] {
            [] => 10.0,
            ["--minutes", n] => n.parse::<f64>().ok().filter(|m| *m >= 1.5).ok_or_else(|| {
                anyhow!("soak: --minutes takes a number of at least 1.5 ({USAGE})")
            })?,
            _ => bail!("soak: unknown arguments {:?} ({USAGE})", &args[1..]),
        };
        if !agent::run(&tracer, minutes)? {
            bail!("agent soak failed");
        }
        return Ok(());
    }
    let quick = args.contains(&"--quick");
    if let Some(bad) = args.iter().find(|a| **a != "--quick") {
        bail!("soak: unknown argument {bad} ({USAGE})");
    }
    let t0 = Instant::now();
    let storm_ok = storm(&tracer, if quick { 15.0 } else { 60.0 })?;
    let churn_ok = churn(&tracer, if quick { 10 } else { 50 })?;
    println!(
        "soak: storm {}, churn {} ({:.0} s)",
        verdict(storm_ok),
        verdict(churn_ok),
        t0.elapsed().as_secs_f64()
    );
    if !(storm_ok && churn_ok) {
        bail!("soak failed");
    }
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

fn storm(tracer: &Path, secs: f64) -> Result<bool> {
    let lab = routed_lab("trsoak")?;
    let args: Vec<String> = [
        "watch",
        "--netns",
        &lab.name("srv"),
        "--reason",
        "NO_SOCKET",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let setup = StormSetup {
        lab: &lab,
        from: "rtr",
        dst: "10.201.2.1:9".parse().unwrap(),
        threads: 2,
        count: Box::new(|| udp_noports(&lab, "srv")),
    };
    let obs = Observer::tracer(tracer, &args, false)?;
    let r = storm_round(&setup, Some(obs), secs, false)?;
    println!(
        "soak storm: {secs:.0} s, {} drops ({:.0}/s), delivered {} + aggregated {} + lost {} = {} (unaccounted {}), drops_matched {}",
        r.kernel,
        r.kernel as f64 / r.seconds,
        r.delivered,
        r.aggregated,
        r.lost,
        r.delivered + r.aggregated + r.lost,
        r.unaccounted(),
        r.matched
    );
    let samples: Vec<String> = r
        .rss_kb
        .iter()
        .filter(|(t, _)| (t.round() as u64).is_multiple_of(5))
        .map(|(t, kb)| format!("{t:.0}s:{:.1}", *kb as f64 / 1024.0))
        .collect();
    println!("soak storm: RSS MB {}", samples.join(" "));
    let at10 = r
        .rss_kb
        .iter()
        .find(|(t, _)| *t >= 10.0)
        .or(r.rss_kb.first())
        .map(|x| x.1)
        .unwrap_or(0);
    let end = r.rss_kb.last().map(|x| x.1).unwrap_or(0);
    let growth_mb = (end as f64 - at10 as f64) / 1024.0;
    let checks = [
        ("exit 0 with a summary", r.exit_ok && r.summary_present),
        (
            "delivered + aggregated + lost == kernel count",
            r.unaccounted() == 0,
        ),
        ("peak RSS < 50 MB", r.hwm_kb < 50 * 1024),
        ("RSS flat (10 s -> end < +2 MB)", growth_mb < 2.0),
    ];
    println!(
        "soak storm: VmHWM {:.1} MB, RSS 10 s {:.1} MB -> end {:.1} MB",
        r.hwm_kb as f64 / 1024.0,
        at10 as f64 / 1024.0,
        end as f64 / 1024.0
    );
    let mut ok = true;
    for (what, pass) in checks {
        println!("soak storm: {what}: {}", verdict(pass));
        ok &= pass;
    }
    Ok(ok)
}

/// Sends `per` datagrams to each of `targets` from inside netns `ns`.
fn send_from(ns: PathBuf, targets: Vec<SocketAddr>, per: usize) -> Result<()> {
    std::thread::spawn(move || -> Result<()> {
        let f = std::fs::File::open(&ns).with_context(|| format!("{}", ns.display()))?;
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        let s = UdpSocket::bind("0.0.0.0:0")?;
        for t in &targets {
            for _ in 0..per {
                // The first datagram may wait for ARP; errors do not matter.
                let _ = s.send_to(b"churn", t);
            }
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow!("sender thread panicked"))?
}

struct NsInfo {
    name: String,
    /// Deleted while the tracer was stopped: its events must say "gone".
    stopped: bool,
}

/// The name of churn namespace `c{i}`.
fn lab_name_of(inodes: &BTreeMap<u64, Vec<NsInfo>>, i: usize) -> String {
    let suffix = format!("-c{i}");
    inodes
        .values()
        .flatten()
        .find(|o| o.name.ends_with(&suffix))
        .map(|o| o.name.clone())
        .unwrap_or_default()
}

fn churn(tracer: &Path, count: usize) -> Result<bool> {
    const PAIRS: usize = 4;
    const WINDOW: usize = 3;
    const PER: usize = 5;
    let mut lab = new_lab("trchurn")?;
    lab.ns("hub")?;
    let hub_name = lab.name("hub");
    let mut obs = Observer::tracer(tracer, &["watch".to_string()], true)?;
    let t0 = Instant::now();
    let mut rss: Vec<(f64, u64)> = Vec::new();
    // inode -> every namespace that had it (inodes are reused).
    let mut inodes: BTreeMap<u64, Vec<NsInfo>> = BTreeMap::new();
    let mut alive: Vec<usize> = Vec::new();
    let mut created_pairs = 0;
    let mut stopped_set = BTreeSet::new();
    let sh_c = |i: usize| format!("c{i}");
    for i in 0..count {
        check_interrupted()?;
        let short = sh_c(i);
        let stopped = i % 5 == 4;
        lab.ns(&short)?;
        let mut cmds_c = String::from("true");
        let mut cmds_h = String::from("true");
        let mut to_c = Vec::new();
        let mut to_h = Vec::new();
        for j in 0..PAIRS {
            lab.veth("hub", &format!("h{i}v{j}"), &short, &format!("v{j}"))?;
            created_pairs += 1;
            let net = format!("10.{}.{}", 210 + j, i);
            cmds_h.push_str(&format!(" && ip addr add {net}.1/30 dev h{i}v{j}"));
            cmds_c.push_str(&format!(" && ip addr add {net}.2/30 dev v{j}"));
            to_c.push(format!("{net}.2:9").parse::<SocketAddr>()?);
            to_h.push(format!("{net}.1:9").parse::<SocketAddr>()?);
        }
        lab.exec("hub", &cmds_h)?;
        lab.exec(&short, &cmds_c)?;
        inodes
            .entry(u64::from(lab.inode(&short)?))
            .or_default()
            .push(NsInfo {
                name: lab.name(&short),
                stopped,
            });
        if stopped {
            // Freeze the tracer, drop packets on this namespace, delete it,
            // then let the tracer read those events.
            unsafe { libc::kill(obs.pid, libc::SIGSTOP) };
            send_from(lab.path("hub"), to_c.clone(), PER)?;
            send_from(lab.path(&short), to_h.clone(), PER)?;
            sleep(Duration::from_millis(100))?;
            lab.remove(&short);
            // The kernel tears a namespace down asynchronously: wait until
            // the hub's ends of its pairs are gone too.
            let deadline = Instant::now() + Duration::from_secs(10);
            while lab
                .exec("hub", &format!("ip link show h{i}v0 >/dev/null 2>&1"))
                .is_ok()
                && Instant::now() < deadline
            {
                sleep(Duration::from_millis(20))?;
            }
            stopped_set.insert(i);
            unsafe { libc::kill(obs.pid, libc::SIGCONT) };
        } else {
            send_from(lab.path("hub"), to_c, PER)?;
            send_from(lab.path(&short), to_h, PER)?;
            alive.push(i);
            if alive.len() > WINDOW {
                let old = alive.remove(0);
                lab.remove(&sh_c(old));
            }
        }
        if !obs.alive() {
            bail!("tracer died during the churn");
        }
        rss.push((t0.elapsed().as_secs_f64(), obs.rss_kb()));
    }
    for i in alive.drain(..) {
        lab.remove(&sh_c(i));
    }
    sleep(Duration::from_secs(2))?;
    let hwm = obs.hwm_kb();
    rss.push((t0.elapsed().as_secs_f64(), obs.rss_kb()));
    let e = obs.stop(libc::SIGINT)?;
    drop(lab);

    // The raw events and the namespaces, for a look afterwards.
    let dump = tracer
        .parent()
        .and_then(|p| p.parent())
        .map(|t| t.join("soak"))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    std::fs::create_dir_all(&dump)?;
    std::fs::write(dump.join("churn-events.jsonl"), e.out.kept.join("\n"))?;
    let ns_list: Vec<String> = inodes
        .iter()
        .flat_map(|(ino, v)| {
            v.iter()
                .map(move |o| format!("{ino} {} stopped={}", o.name, o.stopped))
        })
        .collect();
    std::fs::write(dump.join("churn-namespaces.txt"), ns_list.join("\n"))?;

    // --------------------------------------------------------- analysis
    // Each churn datagram names its namespace and pair in its address:
    // 10.(210+j).i.2 is v{j} in c{i}, 10.(210+j).i.1 is h{i}v{j} in the hub.
    let mut events = 0u64;
    let mut in_churn = 0u64;
    let mut in_hub = 0u64;
    let mut ns_gone = 0u64;
    let mut if_gone = 0u64;
    let mut stopped_events = 0u64;
    let mut stopped_not_gone = Vec::new();
    let mut false_gone: Vec<String> = Vec::new();
    let mut wrong = Vec::new();
    for l in &e.out.kept {
        let Ok(v) = serde_json::from_str::<Value>(l) else {
            wrong.push(format!("not JSON: {l}"));
            continue;
        };
        if v["type"] != "drop" {
            continue;
        }
        events += 1;
        let Some(dst) = v["dst"].as_str() else {
            continue;
        };
        let o: Vec<u32> = dst.split('.').filter_map(|x| x.parse().ok()).collect();
        if o.len() != 4 || o[0] != 10 || !(210..210 + PAIRS as u32).contains(&o[1]) {
            continue;
        }
        let (j, i, host) = (o[1] - 210, o[2] as usize, o[3]);
        if i >= count || !(host == 1 || host == 2) {
            continue;
        }
        let (want_ns, want_if) = if host == 2 {
            in_churn += 1;
            (lab_name_of(&inodes, i), format!("v{j}"))
        } else {
            in_hub += 1;
            (hub_name.clone(), format!("h{i}v{j}"))
        };
        let name = v["netns_name"].as_str();
        let ifname = v["ifname"].as_str();
        let gone_flag = v["ifname_gone"].as_bool().unwrap_or(false);
        if name.is_none() {
            ns_gone += 1;
        }
        if ifname.is_none() {
            if_gone += 1;
        }
        if gone_flag && ifname.is_some() {
            wrong.push(format!("ifname_gone with a name: {l}"));
        }
        if stopped_set.contains(&i) {
            // Read after its pair (and, for c{i}, its netns) was deleted.
            stopped_events += 1;
            let ns_named = host == 2 && name.is_some();
            if ns_named || ifname.is_some() || !gone_flag {
                stopped_not_gone.push(l.clone());
            }
            if let Some(n) = name {
                if host == 1 && n != want_ns {
                    wrong.push(format!("expected netns {want_ns}: {l}"));
                }
            }
        } else {
            // Alive when read: every name must be there, and right.
            if name.is_none() || ifname.is_none() {
                false_gone.push(l.clone());
            }
            if name.is_some_and(|n| n != want_ns) || ifname.is_some_and(|n| n != want_if) {
                wrong.push(format!("expected {want_ns}/{want_if}: {l}"));
            }
        }
    }
    let max_rss = rss.iter().map(|x| x.1).max().unwrap_or(0);
    println!(
        "soak churn: {count} namespaces and {created_pairs} veth pairs created and deleted in {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    println!(
        "soak churn: {events} drop events; churn datagrams dropped: {in_churn} in churned namespaces, {in_hub} in the hub; {ns_gone} with netns_name null, {if_gone} with ifname null"
    );
    println!(
        "soak churn: {stopped_events} events of namespaces deleted while the tracer was stopped, {} of them still named",
        stopped_not_gone.len()
    );
    println!(
        "soak churn: RSS max {:.1} MB, VmHWM {:.1} MB, first {:.1} MB, last {:.1} MB; summary drops {}, lost {}",
        max_rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        rss.first().map(|x| x.1).unwrap_or(0) as f64 / 1024.0,
        rss.last().map(|x| x.1).unwrap_or(0) as f64 / 1024.0,
        e.out
            .summary
            .as_ref()
            .and_then(|s| s["drops"].as_u64())
            .unwrap_or(0),
        e.out
            .summary
            .as_ref()
            .and_then(|s| s["lost"].as_u64())
            .unwrap_or(0),
    );
    println!(
        "soak churn: {} events of live namespaces named as gone (netns_name or ifname null)",
        false_gone.len()
    );
    for w in false_gone.iter().take(3) {
        println!("soak churn: FALSE GONE {w}");
    }
    for w in wrong.iter().take(5) {
        println!("soak churn: WRONG NAME {w}");
    }
    for w in stopped_not_gone.iter().take(5) {
        println!("soak churn: NOT NAMED GONE {w}");
    }
    let checks = [
        (
            "tracer exit 0 with a summary",
            e.exit_code == Some(0) && e.out.summary.is_some(),
        ),
        ("drops seen in churned namespaces", in_churn > 0),
        ("no wrong names", wrong.is_empty()),
        ("live namespaces never named as gone", false_gone.is_empty()),
        (
            "events of deleted namespaces named as gone",
            stopped_events > 0 && stopped_not_gone.is_empty(),
        ),
        ("RSS bounded (< 50 MB)", hwm < 50 * 1024),
    ];
    let mut ok = true;
    for (what, pass) in checks {
        println!("soak churn: {what}: {}", verdict(pass));
        ok &= pass;
    }
    if e.exit_code != Some(0) {
        println!("soak churn: tracer stderr: {}", e.stderr.trim());
    }
    Ok(ok)
}
