//! The load the bench puts on the lab, and the rates it reads back: one
//! pinned iperf3 flow (the datapath rows) and the server's receive
//! counters, sampled. The storms' UDP floods are netlab's.

use super::lab::sleep;
use anyhow::{bail, Context, Result};
use netlab::Netlab;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The median, min and max of `v` (NaN for none).
pub(crate) fn stats(v: &[f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    (med, s[0], s[n - 1])
}

/// Received bytes and packets of `dev` in the netns of process `pid`.
pub(crate) fn netdev_rx(pid: u32, dev: &str) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev"))
        .with_context(|| format!("reading /proc/{pid}/net/dev"))?;
    for line in text.lines() {
        if let Some((name, rest)) = line.split_once(':') {
            if name.trim() == dev {
                let f: Vec<u64> = rest
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                if f.len() >= 2 {
                    return Ok((f[0], f[1]));
                }
            }
        }
    }
    bail!("no {dev} in /proc/{pid}/net/dev")
}

/// One pinned flow, running in the background until dropped.
pub(crate) struct PinnedFlow {
    child: Child,
}

impl PinnedFlow {
    /// iperf3 from the client to the server for up to `secs`, the client
    /// pinned to `cpus.0` (and so the softirqs that forward its packets:
    /// a veth delivers on the sending CPU) and the server to `cpus.1`.
    pub(crate) fn start(
        lab: &Netlab,
        udp: bool,
        cpus: (usize, usize),
        secs: u64,
    ) -> Result<PinnedFlow> {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &lab.name("cli"),
            "iperf3",
            "-c",
            "10.201.2.1",
        ])
        .args(["-A", &format!("{},{}", cpus.0, cpus.1)])
        .args(["-t", &secs.to_string()]);
        if udp {
            // A 2 MB socket buffer (iperf3 passes -w to the server): with
            // the default one the receiver drops bursts at its socket, a
            // few thousand a second, `diagnose` sees a drop storm and sheds
            // its per-packet programs, and the row would not measure them.
            cmd.args(["-u", "-l", "64", "-b", "0", "-w", "2M"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start iperf3")?;
        Ok(PinnedFlow { child })
    }

    pub(crate) fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for PinnedFlow {
    fn drop(&mut self) {
        // SIGINT: the client tells the server the test is over, so the
        // server is free for the next round at once.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let t0 = Instant::now();
        while self.running() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The rate of one phase: the median of half-second samples of the
/// server's received Gbit/s (TCP) or packets/s (UDP). A median, because
/// a housekeeping task landing on the pinned CPU takes a single sample
/// down by 10-20 % and would otherwise weigh on the whole phase.
pub(crate) fn phase_rate(srv_pid: u32, udp: bool, secs: f64) -> Result<f64> {
    let mut samples = Vec::new();
    let mut last = (netdev_rx(srv_pid, "eth0")?, Instant::now());
    for _ in 0..((secs / 0.5).round() as usize).max(1) {
        sleep(Duration::from_millis(500))?;
        let now = (netdev_rx(srv_pid, "eth0")?, Instant::now());
        let dt = now.1.duration_since(last.1).as_secs_f64();
        samples.push(if udp {
            now.0 .1.saturating_sub(last.0 .1) as f64 / dt
        } else {
            now.0 .0.saturating_sub(last.0 .0) as f64 * 8.0 / 1e9 / dt
        });
        last = now;
    }
    Ok(stats(&samples).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_lines_parse_by_name() {
        let pid = std::process::id();
        let (bytes, packets) = netdev_rx(pid, "lo").unwrap();
        assert!(bytes >= packets);
        assert!(netdev_rx(pid, "no-such-dev0").is_err());
    }
}
