//! The bench's namespaces and their lifetime: client -- router -- server
//! built with netlab, the kernel counters the storms are checked against,
//! and Ctrl-C turned into an error so that every Drop guard (the labs'
//! namespaces, the observers) runs.

use anyhow::{anyhow, bail, Context, Result};
use netlab::{Netlab, Routed};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns Ctrl-C / SIGTERM into an error at the next check, so the Drop
/// guards delete the namespaces instead of the process dying with them.
pub(crate) fn catch_signals() {
    let h = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    unsafe {
        libc::signal(libc::SIGINT, h);
        libc::signal(libc::SIGTERM, h);
    }
}

pub(crate) fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps, but returns an error as soon as Ctrl-C arrives.
pub(crate) fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

pub(crate) fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A lab of namespaces `<tag>-<pid>-<short>`, IPv6 off in each (no stray
/// MLD/ND traffic muddying the counts). Leftovers of earlier runs of this
/// harness whose process is gone are removed first.
pub(crate) fn new_lab(tag: &str) -> Result<Netlab> {
    netlab::clean(&format!("{tag}-"));
    let mut lab = Netlab::new(&format!("{tag}-{}-", std::process::id()))?;
    lab.ipv6 = false;
    Ok(lab)
}

/// client (10.201.1.1) -- router (10.201.1.254 | 10.201.2.254) -- server
/// (10.201.2.1). The router forwards, and drops forwarded UDP to port 9
/// (the FORWARD DROP storm); nothing listens on the server's port 9 (the
/// closed-port storm); the server runs `iperf3 -s`.
pub(crate) fn routed_lab(tag: &str) -> Result<Netlab> {
    let mut lab = new_lab(tag)?;
    Routed {
        client: "cli",
        router: "rtr",
        server: "srv",
        server_if: "eth0",
        client_addr: Ipv4Addr::new(10, 201, 1, 1),
        router_client_addr: Ipv4Addr::new(10, 201, 1, 254),
        router_server_addr: Ipv4Addr::new(10, 201, 2, 254),
        server_addr: Ipv4Addr::new(10, 201, 2, 1),
        forwarding: true,
    }
    .build(&mut lab)?;
    lab.exec("rtr", "iptables -A FORWARD -p udp --dport 9 -j DROP")?;
    lab.exec("cli", "ping -c1 -W2 10.201.2.1 >/dev/null")
        .context("the bench lab does not forward")?;
    Ok(lab)
}

/// The server's `Udp: NoPorts` (+ `Udp6: NoPorts`): datagrams to a closed port.
pub(crate) fn udp_noports(lab: &Netlab, short: &str) -> Result<u64> {
    let snmp = lab.exec(short, "cat /proc/net/snmp; cat /proc/net/snmp6")?;
    let mut total = 0;
    let lines: Vec<&str> = snmp.lines().collect();
    for w in lines.windows(2) {
        if w[0].starts_with("Udp: ") && w[1].starts_with("Udp: ") {
            let i = w[0]
                .split_whitespace()
                .position(|f| f == "NoPorts")
                .ok_or_else(|| anyhow!("no Udp NoPorts"))?;
            total += w[1]
                .split_whitespace()
                .nth(i)
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| anyhow!("bad Udp NoPorts"))?;
        }
    }
    for l in &lines {
        if let Some(v) = l.strip_prefix("Udp6NoPorts") {
            total += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    Ok(total)
}

/// Packets the router's `FORWARD -p udp --dport 9 -j DROP` rule dropped.
pub(crate) fn forward_drops(lab: &Netlab) -> Result<u64> {
    let out = lab.exec("rtr", "iptables -nvxL FORWARD")?;
    out.lines()
        .find(|l| l.contains("DROP") && l.contains("dpt:9"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no FORWARD DROP counter in {out:?}"))
}

/// `ip [-n NS] -batch -` with `cmds` on stdin.
pub(crate) fn batch(ns: Option<&str>, cmds: &str) -> Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run ip")?;
    child
        .stdin
        .take()
        .context("ip stdin")?
        .write_all(cmds.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip -batch failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `f` on a thread inside the namespace at `path`.
pub(crate) fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!(
                    "setns {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| bail!("thread in {} panicked", path.display()))
    })
}

/// SIGINT, then reaped (SIGKILL after 10 s): the tracer detaches itself.
pub(crate) struct Reaper<'a>(pub(crate) &'a mut Child);

impl Drop for Reaper<'_> {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
