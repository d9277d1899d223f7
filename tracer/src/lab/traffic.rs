//! The labs' traffic, made in-process with std sockets created inside the
//! lab namespaces ([`netns::run_in`]), so a lab needs nothing beyond `ip`,
//! `sysctl` and `iptables`, and every socket it opens lives in a lab
//! namespace, never in the host's.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use netlab::Netlab;

use crate::host::netns;

/// How often helper threads look at their stop flag.
pub const POLL: Duration = Duration::from_millis(50);

/// [`netns::run_in`] with its error in anyhow's terms.
pub fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    netns::run_in(path, f).with_context(|| format!("cannot enter netns {}", path.display()))
}

/// A listener created in the lab namespace now, so it is ready before
/// any traffic (and before tracing starts).
pub fn listen_in(lab: &Netlab, short: &str, addr: SocketAddr) -> Result<TcpListener> {
    let listener = in_netns(&lab.path(short), move || TcpListener::bind(addr))?
        .with_context(|| format!("cannot listen on {addr} in the lab"))?;
    // Non-blocking, so the accept loop can notice that the traffic is over.
    listener
        .set_nonblocking(true)
        .context("cannot make the lab's listener non-blocking")?;
    Ok(listener)
}

/// A thread that lives only as long as the traffic: dropping the guard
/// stops and joins it, also when the traffic returns early with an error.
pub struct Helper {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Helper {
    pub fn spawn(name: &str, f: impl FnOnce(&AtomicBool) + Send + 'static) -> Result<Helper> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || f(&flag))
            .context("cannot start a lab thread")?;
        Ok(Helper {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

pub fn accept_loop(listener: &TcpListener, stop: &AtomicBool, mut serve: impl FnMut(TcpStream)) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((conn, _)) => {
                // Linux does not pass O_NONBLOCK on through accept, but
                // the server relies on blocking writes with a timeout.
                if conn.set_nonblocking(false).is_ok() {
                    serve(conn);
                }
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Keeps connecting until `window` is spent. In the labs the first
/// attempt hangs in SYN retransmissions for the whole window; if one
/// succeeds (a lab that is not broken) the client simply tries again.
pub fn connect_for(target: SocketAddr, window: Duration) {
    let end = Instant::now() + window;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(100) {
            return;
        }
        let _ = TcpStream::connect_timeout(&target, left);
        std::thread::sleep(Duration::from_millis(200).min(left));
    }
}

/// Reads one response until EOF or until `window` (counted from the
/// connect) is spent, adding the bytes to `received` as they arrive.
pub fn fetch(target: SocketAddr, window: Duration, received: &AtomicU64) {
    let end = Instant::now() + window;
    let Ok(mut conn) = TcpStream::connect_timeout(&target, window) else {
        return;
    };
    let mut buf = [0u8; 16384];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() || conn.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                received.fetch_add(n as u64, Ordering::SeqCst);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
