//! What watches the lab: `tracer watch`/`diagnose` or bpftrace running an
//! equivalent script, each a child whose output is drained and counted,
//! and what the kernel and /proc tell of it (CPU, RSS, BPF run time).

use super::lab::{check_interrupted, sh};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Variant {
    Baseline,
    Watch,
    Diagnose,
    BtWatch,
    BtDiagnose,
}

impl Variant {
    pub(crate) const ALL: [Variant; 5] = [
        Variant::Baseline,
        Variant::Watch,
        Variant::Diagnose,
        Variant::BtWatch,
        Variant::BtDiagnose,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline",
            Variant::Watch => "tracer watch",
            Variant::Diagnose => "tracer diagnose",
            Variant::BtWatch => "bpftrace (watch)",
            Variant::BtDiagnose => "bpftrace (diag)",
        }
    }

    pub(crate) fn key(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline",
            Variant::Watch => "watch",
            Variant::Diagnose => "diagnose",
            Variant::BtWatch => "bpftrace_watch",
            Variant::BtDiagnose => "bpftrace_diagnose",
        }
    }

    pub(crate) fn is_bpftrace(self) -> bool {
        matches!(self, Variant::BtWatch | Variant::BtDiagnose)
    }
}

/// What an observer printed, counted without parsing every line.
#[derive(Default, Debug)]
pub(crate) struct OutStats {
    pub lines: u64,
    /// tracer: `{"type":"drop"` lines; bpftrace: event lines.
    pub drops: u64,
    /// bpftrace: the sum of its "Lost N events" lines.
    pub bt_lost: u64,
    pub summary: Option<Value>,
    /// Every line, when asked for (the churn soak inspects them).
    pub kept: Vec<String>,
    /// The last few lines that were neither drops nor the summary.
    pub other: Vec<String>,
}

pub(crate) fn read_lines(
    mut r: impl Read,
    keep: bool,
    ready: mpsc::Sender<String>,
    bpftrace: bool,
) -> OutStats {
    let mut st = OutStats::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut pending: Vec<u8> = Vec::new();
    let mut ready = Some(ready);
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(off) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + off];
            start += off + 1;
            st.lines += 1;
            if keep {
                st.kept.push(String::from_utf8_lossy(line).into_owned());
            }
            if bpftrace {
                if line == b"READY" {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(String::new());
                    }
                } else if let Some(rest) = line.strip_prefix(b"Lost ") {
                    let s = String::from_utf8_lossy(rest);
                    st.bt_lost += s
                        .split_whitespace()
                        .next()
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                } else if line.starts_with(b"D ") {
                    st.drops += 1;
                } else if !line.is_empty() && st.other.len() < 20 {
                    st.other.push(String::from_utf8_lossy(line).into_owned());
                }
            } else if line.starts_with(b"{\"type\":\"drop\"") {
                st.drops += 1;
            } else if line.starts_with(b"{\"type\":\"ready\"") {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(String::from_utf8_lossy(line).into_owned());
                }
            } else if line.starts_with(b"{\"type\":\"summary\"") {
                st.summary = serde_json::from_slice(line).ok();
            } else if st.other.len() < 20 {
                st.other.push(String::from_utf8_lossy(line).into_owned());
            }
        }
        pending.drain(..start);
    }
    st
}

/// A running tracer or bpftrace whose stdout is drained and counted.
pub(crate) struct Observer {
    child: Option<Child>,
    pub pid: i32,
    reader: Option<JoinHandle<OutStats>>,
    stderr: Arc<Mutex<String>>,
    /// The ready line (tracer) once attached.
    pub ready_line: String,
    /// Spawn to ready.
    pub ready_after: Duration,
}

/// How an observer ended.
#[derive(Debug)]
pub(crate) struct Ended {
    pub out: OutStats,
    pub cpu_s: f64,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// From the signal to the process being reaped.
    pub exit_after: Duration,
    pub stderr: String,
}

impl Observer {
    /// `tracer ARGS -o json`, waiting for its ready line.
    pub(crate) fn tracer(bin: &Path, args: &[String], keep: bool) -> Result<Observer> {
        let mut cmd = Command::new(bin);
        cmd.args(args).args(["-o", "json"]);
        Self::spawn(cmd, keep, false)
    }

    /// bpftrace running `script`, with tracefs mounted in a private mount
    /// namespace (this host does not mount it, and we leave it so).
    pub(crate) fn bpftrace(script: &Path) -> Result<Observer> {
        let mut cmd = Command::new("unshare");
        cmd.args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null; exec bpftrace \"$0\"",
        ])
        .arg(script);
        Self::spawn(cmd, false, true)
    }

    fn spawn(mut cmd: Command, keep: bool, bpftrace: bool) -> Result<Observer> {
        let t0 = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
        let pid = child.id() as i32;
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || read_lines(stdout, keep, tx, bpftrace));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let s2 = stderr.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n) = err.read(&mut b) {
                if n == 0 {
                    break;
                }
                let mut s = s2.lock().unwrap();
                if s.len() < 64 * 1024 {
                    s.push_str(&String::from_utf8_lossy(&b[..n]));
                }
            }
        });
        let mut obs = Observer {
            child: Some(child),
            pid,
            reader: Some(reader),
            stderr,
            ready_line: String::new(),
            ready_after: Duration::ZERO,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            check_interrupted()?;
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    obs.ready_after = t0.elapsed();
                    obs.ready_line = line;
                    break;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let e = obs.stop(libc::SIGKILL)?;
                    bail!(
                        "{:?} exited before it was ready: {}",
                        cmd.get_program(),
                        e.stderr.trim()
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() > deadline => {
                    let e = obs.stop(libc::SIGKILL)?;
                    bail!("{:?} never became ready: {}", cmd.get_program(), e.stderr);
                }
                Err(_) => {}
            }
        }
        Ok(obs)
    }

    pub(crate) fn cpu_now(&self) -> f64 {
        cpu_seconds(self.pid).unwrap_or(0.0)
    }

    pub(crate) fn rss_kb(&self) -> u64 {
        status_kb(self.pid, "VmRSS").unwrap_or(0)
    }

    pub(crate) fn hwm_kb(&self) -> u64 {
        status_kb(self.pid, "VmHWM").unwrap_or(0)
    }

    /// True while the process has not exited.
    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Sends `sig`, reaps the process (SIGKILL after 15 s), collects what it
    /// printed and the CPU it used over its whole life (wait4's rusage).
    pub(crate) fn stop(&mut self, sig: i32) -> Result<Ended> {
        let child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("already stopped"))?;
        let t0 = Instant::now();
        unsafe { libc::kill(self.pid, sig) };
        let mut status = 0;
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let mut killed = false;
        loop {
            let r = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut ru) };
            if r == self.pid {
                break;
            }
            if r < 0 {
                bail!("wait4: {}", std::io::Error::last_os_error());
            }
            if !killed && t0.elapsed() > Duration::from_secs(15) {
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
                killed = true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let exit_after = t0.elapsed();
        // Reaped by hand: keep std from ever signalling a reused pid.
        std::mem::forget(child);
        let out = self
            .reader
            .take()
            .map(|r| r.join().unwrap_or_default())
            .unwrap_or_default();
        std::thread::sleep(Duration::from_millis(20));
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Ok(Ended {
            out,
            cpu_s: tv(ru.ru_utime) + tv(ru.ru_stime),
            exit_code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
            signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
            exit_after,
            stderr: self.stderr.lock().unwrap().clone(),
        })
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop(libc::SIGKILL);
        }
    }
}

/// `summary.kernel.<field>` as a number.
pub(crate) fn kernel_stat(summary: &Option<Value>, field: &str) -> u64 {
    summary
        .as_ref()
        .and_then(|s| s["kernel"][field].as_u64())
        .unwrap_or(0)
}

pub(crate) fn summary_u64(summary: &Option<Value>, field: &str) -> u64 {
    summary
        .as_ref()
        .and_then(|s| s[field].as_u64())
        .unwrap_or(0)
}

/// This kernel's drop reason codes, from `tracer reasons`.
pub(crate) fn reason_code(tracer: &Path, name: &str) -> Result<u32> {
    let out = sh(Command::new(tracer).args(["reasons", "-o", "json"]))?;
    for l in out.lines() {
        let v: Value = serde_json::from_str(l)?;
        if v["name"] == name {
            return Ok(v["code"].as_u64().unwrap_or(0) as u32);
        }
    }
    bail!("this kernel has no drop reason {name}")
}

/// The bpftrace equivalent of `watch` (and with `diag`, of `diagnose`):
/// the same tracepoints, the same fields per drop. `filter` is a bpftrace
/// condition on `$ns` (netns inode) and `args->reason`.
pub(crate) fn bpftrace_script(filter: &str, diag: bool) -> String {
    let mut s = String::from("BEGIN { printf(\"READY\\n\"); }\n");
    s.push_str(&format!(
        r#"tracepoint:skb:kfree_skb
{{
  $skb = (struct sk_buff *)args->skbaddr;
  $dev = $skb->dev;
  $ns = $dev->nd_net.net->ns.inum;
  if ({filter}) {{
    $ip = (struct iphdr *)($skb->head + $skb->network_header);
    $th = (struct udphdr *)($skb->head + $skb->transport_header);
"#
    ));
    if diag {
        s.push_str(
            r#"    $k1 = bswap($ip->daddr);
    $k2 = bswap($ip->saddr);
    printf("D %llu %u %u %s %d %s %u %d %s %d %u %u %u %s %s %u %u fwd %u %d %d rev %u %d %d\n", nsecs, cpu, pid, comm, args->reason, ksym(args->location), $ns, $dev->ifindex, $dev->name, $skb->skb_iif, $skb->len, $dev->mtu, $ip->protocol, ntop($ip->saddr), ntop($ip->daddr), bswap($th->source), bswap($th->dest), @rt_tb[$k1, $k2], @rt_err[$k1, $k2], @rt_oif[$k1, $k2], @rt_tb[$k2, $k1], @rt_err[$k2, $k1], @rt_oif[$k2, $k1]);
  }
}
tracepoint:fib:fib_table_lookup
{
  $d = (args->dst[0] << 24) | (args->dst[1] << 16) | (args->dst[2] << 8) | args->dst[3];
  $s = (args->src[0] << 24) | (args->src[1] << 16) | (args->src[2] << 8) | args->src[3];
  @rt_tb[$d, $s] = args->tb_id;
  @rt_err[$d, $s] = args->err;
  @rt_oif[$d, $s] = args->oif;
}
tracepoint:fib6:fib6_table_lookup
{
  @rt6[args->tb_id, args->err] = nsecs;
}
tracepoint:net:net_dev_start_xmit
/args->len <= 160/
{
  $skb = (struct sk_buff *)args->skbaddr;
  $ip = (struct iphdr *)($skb->head + $skb->network_header);
  if ($ip->protocol == 6) {
    $th = $skb->head + $skb->transport_header;
    if ((*(uint8 *)($th + 13) & 2) && *(uint8 *)($th + 20) == 2) {
      $mss = (*(uint8 *)($th + 22) << 8) | *(uint8 *)($th + 23);
      $dev = $skb->dev;
      if ($mss + 40 > $dev->mtu) {
        printf("SYN %u %u %s %s %u\n", $dev->nd_net.net->ns.inum, $dev->ifindex, ntop($ip->saddr), ntop($ip->daddr), $mss);
      }
    }
  }
}
END { clear(@rt_tb); clear(@rt_err); clear(@rt_oif); clear(@rt6); }
"#,
        );
    } else {
        s.push_str(
            r#"    printf("D %llu %u %u %s %d %s %u %d %s %d %u %u %u %s %s %u %u\n", nsecs, cpu, pid, comm, args->reason, ksym(args->location), $ns, $dev->ifindex, $dev->name, $skb->skb_iif, $skb->len, $dev->mtu, $ip->protocol, ntop($ip->saddr), ntop($ip->daddr), bswap($th->source), bswap($th->dest));
  }
}
"#,
        );
    }
    s
}

pub(crate) fn clk_tck() -> f64 {
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// utime + stime of a running process, in seconds.
pub(crate) fn cpu_seconds(pid: i32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" that ends comm: state is field 3, utime 14, stime 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / clk_tck())
}

/// A `/proc/<pid>/status` field in kB (VmRSS, VmHWM).
pub(crate) fn status_kb(pid: i32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// BPF run-time statistics (`bpf_prog_info.run_time_ns/run_cnt`) while
/// this is alive. BPF_ENABLE_STATS hands out an fd and counts while any
/// such fd is open; closing it restores the previous state, so nothing on
/// the host stays changed (this is what `bpftool prog profile` relies on).
pub(crate) struct BpfStats(#[allow(dead_code)] Option<std::os::fd::OwnedFd>);

impl BpfStats {
    pub(crate) fn enable() -> BpfStats {
        use std::os::fd::FromRawFd;
        const BPF_ENABLE_STATS: libc::c_long = 32;
        // union bpf_attr { struct { __u32 type; } enable_stats; }, type 0
        // is BPF_STATS_RUN_TIME.
        let mut attr = [0u32; 4];
        attr[0] = 0;
        // SAFETY: attr is a zeroed bpf_attr prefix of the size we pass.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if fd < 0 {
            eprintln!("bench: BPF run-time stats unavailable; probe cost not measured");
            return BpfStats(None);
        }
        // SAFETY: the kernel just gave us this fd and nothing else owns it.
        BpfStats(Some(unsafe {
            std::os::fd::OwnedFd::from_raw_fd(fd as i32)
        }))
    }
}
