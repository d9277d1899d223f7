//! UDP floods from inside a lab namespace: sender threads that each
//! `setns` into the namespace (a thread's netns is its own) and push
//! datagrams with `sendmmsg`, as fast as they can or at a set rate.

use anyhow::{bail, Result};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Datagrams handed to the kernel per `sendmmsg`.
const BATCH: usize = 64;

/// How hard a flood blasts.
#[derive(Clone, Copy, Debug)]
pub struct FloodOpts {
    /// Sender threads.
    pub threads: usize,
    /// Payload bytes per datagram.
    pub len: usize,
    /// Datagrams a second per thread; as fast as it can when None.
    pub pps: Option<u64>,
}

impl Default for FloodOpts {
    fn default() -> FloodOpts {
        FloodOpts {
            threads: 2,
            len: 16,
            pps: None,
        }
    }
}

/// Running sender threads; dropping it stops them.
pub struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

/// Starts `opts.threads` senders in the namespace `netns` opens, each
/// sending `opts.len`-byte datagrams to `dst`. Returns once every sender
/// is in place, or the first one's reason for failing.
pub fn flood(netns: &Path, dst: SocketAddr, opts: FloodOpts) -> Result<Flood> {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    let (tx, rx) = mpsc::channel::<Result<(), String>>();
    for _ in 0..opts.threads {
        let (stop, sent, tx) = (stop.clone(), sent.clone(), tx.clone());
        let ns = netns.to_path_buf();
        handles.push(std::thread::spawn(move || {
            let setup = || -> Result<UdpSocket, String> {
                let f = std::fs::File::open(&ns).map_err(|e| format!("{}: {e}", ns.display()))?;
                // SAFETY: the fd is owned by `f`; setns changes only this thread.
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(format!("setns: {}", std::io::Error::last_os_error()));
                }
                let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
                s.connect(dst).map_err(|e| e.to_string())?;
                Ok(s)
            };
            let sock = match setup() {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            send(&sock, opts, &stop, &sent);
        }));
    }
    drop(tx);
    let f = Flood {
        stop,
        sent,
        threads: handles,
    };
    for _ in 0..opts.threads {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("flood sender: {e}"),
            Err(_) => bail!("flood sender did not start"),
        }
    }
    Ok(f)
}

/// One sender's loop, until `stop`.
fn send(sock: &UdpSocket, opts: FloodOpts, stop: &AtomicBool, sent: &AtomicU64) {
    let buf = vec![0x5au8; opts.len];
    let mut iov: Vec<libc::iovec> = (0..BATCH)
        .map(|_| libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: opts.len,
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: mmsghdr is plain old data; all-zero is a valid empty header.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = v as *mut libc::iovec;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let fd = sock.as_raw_fd();
    let t0 = Instant::now();
    let mut mine = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `msgs` points into `iov` and `buf`, which outlive the call.
        let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, 0) };
        // A connected socket reports an ICMP port-unreachable as
        // ECONNREFUSED on the next send: ignore it and go on.
        if n > 0 {
            mine += n as u64;
            sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        if let Some(pps) = opts.pps {
            let due = Duration::from_secs_f64(mine as f64 / pps as f64);
            std::thread::sleep(due.saturating_sub(t0.elapsed()));
        }
    }
}

impl Flood {
    /// Stops the senders; returns how many datagrams the kernel accepted.
    pub fn stop(mut self) -> u64 {
        self.halt();
        self.sent.load(Ordering::Relaxed)
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.halt();
    }
}
