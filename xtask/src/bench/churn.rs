//! The churn phase of `cargo xtask bench --scale` (issue 22): while
//! `tracer diagnose` runs on the dense node, `rate` namespaces are made
//! and the previous second's `rate` deleted, every second for `secs`
//! seconds. In every tenth new namespace, while it lives, one UDP datagram
//! to a closed port of its loopback drops; each such drop must come out
//! named with that namespace. Targets: no crash, every drop named, open
//! fds and threads back where they were once the churn stops.

use super::lab::{batch, check_interrupted, in_netns, sleep, Reaper};
use super::observers::status_kb;
use anyhow::{Context, Result};
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One drop made every this many new namespaces.
const DROP_EVERY: usize = 10;

/// What the churn phase measured.
pub(crate) struct Churn {
    pub made: usize,
    pub drops: usize,
    pub named: usize,
    pub fds: (usize, usize),
    pub threads: (u64, u64),
    pub alive: bool,
}

impl Churn {
    pub(crate) fn text(&self) -> String {
        format!(
            "churn: {} namespaces made and deleted, drops named {}/{}, fds {} -> {}, threads {} -> {}, {}",
            self.made,
            self.named,
            self.drops,
            self.fds.0,
            self.fds.1,
            self.threads.0,
            self.threads.1,
            if self.alive { "alive" } else { "CRASHED" }
        )
    }

    /// (target, passed) lines for the report.
    pub(crate) fn checks(&self) -> Vec<(String, bool)> {
        vec![
            ("no crash".into(), self.alive),
            (
                "every drop in a live namespace named".into(),
                self.drops > 0 && self.named == self.drops,
            ),
            ("no fd leak".into(), self.fds.1 <= self.fds.0),
            ("no thread leak".into(), self.threads.1 <= self.threads.0),
        ]
    }
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Loopback up from a thread inside the namespace (no `ip` process per
/// namespace: 200 a second would be the bench's own load).
fn lo_up() -> Result<()> {
    // SAFETY: a plain socket; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    anyhow::ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: ifreq is plain data; the name fits with its NUL.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS on our socket with our ifreq.
    let ok = unsafe {
        libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) == 0 && {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) == 0
        }
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    anyhow::ensure!(ok, "lo up: {err}");
    Ok(())
}

/// Runs the churn against a fresh `tracer diagnose`; its namespaces are
/// deleted however it ends.
pub(crate) fn run(tracer: &Path, prefix: &str, rate: usize, secs: u64) -> Result<Churn> {
    let r = churn(tracer, prefix, rate, secs);
    let left: String = std::fs::read_dir(netlab::NETNS_RUN_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{prefix}c")))
        .map(|n| format!("netns del {n}\n"))
        .collect();
    if !left.is_empty() {
        let _ = batch(None, &left);
    }
    r
}

fn churn(tracer: &Path, prefix: &str, rate: usize, secs: u64) -> Result<Churn> {
    let mut child = Command::new(tracer)
        .args(["diagnose", "-o", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", tracer.display()))?;
    let guard = Reaper(&mut child);
    let pid = guard.0.id() as i32;
    // (netns name, port) of every drop line naming a churned namespace.
    let seen: Arc<Mutex<HashSet<(String, u16)>>> = Arc::default();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let stdout = guard.0.stdout.take().context("stdout")?;
    let lines_seen = seen.clone();
    let mark = format!("\"netns_name\":\"{prefix}c");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("{\"type\":\"ready\"") {
                let _ = ready_tx.send(());
            } else if line.starts_with("{\"type\":\"drop\"") && line.contains(&mark) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let name = v["netns_name"].as_str().unwrap_or_default().to_string();
                let port = v["dport"].as_u64().unwrap_or(0) as u16;
                lines_seen.lock().unwrap().insert((name, port));
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(60))
        .context("tracer never printed its ready line")?;
    sleep(Duration::from_secs(3))?;
    let (fd0, th0) = (fd_count(pid), status_kb(pid, "Threads").unwrap_or(0));
    let mut expected = Vec::new();
    let mut live: Vec<String> = Vec::new();
    let mut made = 0;
    for sec in 0..secs {
        check_interrupted()?;
        let tick = Instant::now();
        let fresh: Vec<String> = (0..rate)
            .map(|i| format!("{prefix}c{}", sec as usize * rate + i))
            .collect();
        let mut cmds: String = live.iter().map(|n| format!("netns del {n}\n")).collect();
        cmds.extend(fresh.iter().map(|n| format!("netns add {n}\n")));
        batch(None, &cmds)?;
        made += fresh.len();
        for (i, name) in fresh.iter().enumerate().step_by(DROP_EVERY) {
            let port = 10_000 + (expected.len() % 50_000) as u16;
            in_netns(&netlab::netns_path(name), || {
                lo_up()?;
                let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
                s.send_to(b"x", ("127.0.0.1", port))?;
                Ok(())
            })
            .with_context(|| format!("drop in {name} ({i})"))?;
            expected.push((name.clone(), port));
        }
        live = fresh;
        sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()))?;
    }
    // The last second's namespaces live on: their drops may be named late.
    sleep(Duration::from_secs(3))?;
    let del: String = live.iter().map(|n| format!("netns del {n}\n")).collect();
    batch(None, &del)?;
    sleep(Duration::from_secs(5))?;
    let alive = matches!(guard.0.try_wait(), Ok(None));
    let (fd1, th1) = (fd_count(pid), status_kb(pid, "Threads").unwrap_or(0));
    drop(guard);
    let seen = seen.lock().unwrap();
    let named = expected.iter().filter(|e| seen.contains(*e)).count();
    Ok(Churn {
        made,
        drops: expected.len(),
        named,
        fds: (fd0, fd1),
        threads: (th0, th1),
        alive,
    })
}
