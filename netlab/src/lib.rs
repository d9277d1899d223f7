//! Throwaway network namespaces joined by veth pairs, for `tracer lab`,
//! the integration tests and `cargo xtask bench`. Everything is created
//! inside namespaces whose names start with a prefix the caller owns;
//! interfaces are created directly in their namespace, so nothing ever
//! appears in the host's. Dropping a `Netlab` deletes its namespaces, which
//! also deletes their interfaces. What a lab makes is recorded first (see
//! [`markers`]), so a killed run's leftovers can be cleaned safely.
//!
//! This is the bottom layer of the labs: it runs `ip`, `sh` and `sysctl`
//! (and scrapes a local HTTP endpoint) and knows nothing of the tracer.

mod flood;
pub mod markers;
pub mod runtimes;
mod scrape;
mod topology;

pub use flood::{flood, Flood, FloodOpts};
pub use markers::{clean, Cleaned, MARKERS};
pub use scrape::{free_port, http_get};
pub use topology::{BridgeConflict, Routed};

use anyhow::{bail, Context, Result};
use markers::Marker;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// Where `ip netns` bind-mounts named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// The path that opens namespace `name` (a full name, prefix included).
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Runs `f` on a new thread that joined namespace `name` (a full name):
/// a thread's network namespace is its own, so sockets made there live in
/// that namespace while the process stays where it is. Panics (in the
/// thread, surfacing at `join`) if the namespace cannot be joined.
pub fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    use std::os::fd::AsRawFd;
    let path = netns_path(name);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // SAFETY: the fd is owned by `file`; setns changes only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        f()
    })
}

pub struct Netlab {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    /// Leave the namespaces in place on drop (`lab run --keep`).
    pub keep: bool,
    /// IPv6 in new namespaces. Off, no router solicitation, MLD or DAD
    /// traffic ever muddies a count (the bench's).
    pub ipv6: bool,
}

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

impl Netlab {
    /// A lab whose namespaces are named `<prefix><name>`. Leftovers with
    /// the same prefix (from a killed run) are removed first.
    pub fn new(prefix: &str) -> Result<Netlab> {
        clean(prefix);
        Ok(Netlab {
            prefix: prefix.to_string(),
            namespaces: Vec::new(),
            children: Vec::new(),
            keep: false,
            ipv6: true,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn name(&self, short: &str) -> String {
        format!("{}{}", self.prefix, short)
    }

    /// The path that opens namespace `<prefix><short>` (for `setns`).
    pub fn path(&self, short: &str) -> PathBuf {
        netns_path(&self.name(short))
    }

    /// Creates namespace `<prefix><short>` with loopback up, recorded
    /// first (a kill between the two leaves a marker, not a stray).
    pub fn ns(&mut self, short: &str) -> Result<String> {
        let name = self.name(short);
        let mut marker = Marker {
            pid: std::process::id(),
            inode: None,
        };
        markers::write(&name, &marker)?;
        run(Command::new("ip").args(["netns", "add", &name]))?;
        self.namespaces.push(name.clone());
        marker.inode = markers::netns_inode(&name);
        markers::write(&name, &marker)?;
        if !self.ipv6 {
            self.exec(
                short,
                "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1",
            )?;
        }
        self.exec(short, "ip link set lo up")?;
        Ok(name)
    }

    /// A veth pair: `a_if` in namespace `a`, `b_if` in namespace `b`, both up.
    pub fn veth(&self, a: &str, a_if: &str, b: &str, b_if: &str) -> Result<()> {
        let (na, nb) = (self.name(a), self.name(b));
        // `ip -n A link add` creates the pair inside A; the peer goes
        // straight to B. Nothing is ever created in the host netns.
        run(Command::new("ip").args([
            "-n", &na, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &nb,
        ]))?;
        // Arguments, not a shell line: tests name interfaces with quotes
        // and control characters.
        run(Command::new("ip").args(["-n", &na, "link", "set", "dev", a_if, "up"]))?;
        run(Command::new("ip").args(["-n", &nb, "link", "set", "dev", b_if, "up"]))?;
        Ok(())
    }

    /// Runs a shell command inside namespace `<prefix><short>`.
    pub fn exec(&self, short: &str, cmd: &str) -> Result<String> {
        let out =
            run(Command::new("ip").args(["netns", "exec", &self.name(short), "sh", "-c", cmd]))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Like `exec`, but a failure is returned as the command's status.
    pub fn try_exec(&self, short: &str, cmd: &str) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name(short), "sh", "-c", cmd])
            .stdin(Stdio::null())
            .output()
            .context("cannot run ip netns exec")
    }

    /// Starts a background command in a namespace; killed when the lab
    /// drops. Returns its pid, the command's own (`ip netns exec` and the
    /// shell both exec it).
    pub fn spawn(&mut self, short: &str, cmd: &str) -> Result<u32> {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name(short),
                "sh",
                "-c",
                &format!("exec {cmd}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start a lab process")?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// The inode of a lab namespace (what drop events carry).
    pub fn inode(&self, short: &str) -> Result<u32> {
        use std::os::unix::fs::MetadataExt;
        let p = self.path(short);
        Ok(std::fs::metadata(&p)
            .with_context(|| format!("no netns {}", p.display()))?
            .ino() as u32)
    }

    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Deletes namespace `<prefix><short>` now, with the processes in it.
    pub fn remove(&mut self, short: &str) {
        let name = self.name(short);
        markers::remove(&name);
        self.namespaces.retain(|n| *n != name);
    }

    /// Stops background processes and deletes every namespace now.
    pub fn teardown(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
        if !self.keep {
            for n in self.namespaces.drain(..) {
                markers::remove(&n);
            }
        }
    }
}

impl Drop for Netlab {
    fn drop(&mut self) {
        self.teardown();
    }
}
