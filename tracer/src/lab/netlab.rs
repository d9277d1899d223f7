//! Throwaway network namespaces joined by veth pairs, for the labs and the
//! integration tests. Everything is created inside namespaces whose names
//! start with a prefix this process owns; interfaces are created directly
//! in their namespace, so nothing ever appears in the host's. Dropping a
//! `Netlab` deletes its namespaces, which also deletes their interfaces.
//!
//! Each namespace is recorded before it is made, in a marker file
//! `MARKERS/<name>` (`pid=<creator> inode=<netns inode>`; the inode once
//! it exists). Cleaning (`tracer lab clean`, a new lab's leftovers) only
//! ever removes a namespace with a marker, whose creator is no longer
//! running and whose inode is still the recorded one: a name that merely
//! matches the prefix, someone else's `trlab-*` namespace, or a namespace
//! re-created under the same name is never touched, nor the processes in it.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// Every lab namespace starts with this (what `tracer lab clean` cleans).
pub const LAB_PREFIX: &str = "trlab-";

/// Where the namespaces made here are recorded (root's, 0700).
pub const MARKERS: &str = "/run/tracer-lab";

pub struct Netlab {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    /// Leave the namespaces in place on drop (`lab run --keep`).
    pub keep: bool,
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

/// What a marker says: who made the namespace, and its inode once made.
#[derive(Debug, PartialEq, Eq)]
pub struct Marker {
    pub pid: u32,
    pub inode: Option<u64>,
}

impl Marker {
    pub fn parse(s: &str) -> Option<Marker> {
        let mut pid = None;
        let mut inode = None;
        for w in s.split_whitespace() {
            if let Some(v) = w.strip_prefix("pid=") {
                pid = v.parse().ok();
            } else if let Some(v) = w.strip_prefix("inode=") {
                inode = v.parse().ok();
            }
        }
        Some(Marker { pid: pid?, inode })
    }

    fn text(&self) -> String {
        match self.inode {
            Some(i) => format!("pid={} inode={i}\n", self.pid),
            None => format!("pid={}\n", self.pid),
        }
    }
}

fn marker_dir() -> Result<std::path::PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir = std::path::PathBuf::from(MARKERS);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => bail!("cannot create {MARKERS}: {e}"),
    }
    // Markers decide what gets deleted: only a real directory of ours.
    let m = std::fs::symlink_metadata(&dir)?;
    // SAFETY: geteuid cannot fail.
    if !m.is_dir() || m.uid() != unsafe { libc::geteuid() } {
        bail!("{MARKERS} is not a directory of this user: refusing to use it");
    }
    Ok(dir)
}

fn write_marker(name: &str, m: &Marker) -> Result<()> {
    let p = marker_dir()?.join(name);
    std::fs::write(&p, m.text()).with_context(|| format!("cannot write {}", p.display()))
}

fn netns_inode(name: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/run/netns/{name}"))
        .ok()
        .map(|m| m.ino())
}

/// Deletes namespace `name` and the processes in it, then its marker.
fn remove(name: &str) {
    // Processes still inside keep a netns alive; kill them first.
    let _ = Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .map(|o| {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        });
    let _ = Command::new("ip").args(["netns", "del", name]).status();
    let _ = std::fs::remove_file(std::path::Path::new(MARKERS).join(name));
}

/// What `clean` did: the namespaces removed, and those it left to a
/// creator still running.
#[derive(Debug, Default)]
pub struct Cleaned {
    pub removed: Vec<String>,
    pub running: Vec<String>,
}

/// Removes the namespaces whose names start with `prefix` that a lab here
/// recorded making (see the module's doc); markers of namespaces already
/// gone, or re-created by someone else, are dropped.
pub fn clean(prefix: &str) -> Cleaned {
    let mut done = Cleaned::default();
    let Ok(rd) = std::fs::read_dir(MARKERS) else {
        return done;
    };
    for name in rd
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
    {
        let path = std::path::Path::new(MARKERS).join(&name);
        let Some(m) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| Marker::parse(&s))
        else {
            continue;
        };
        if m.pid != std::process::id() && Path::new(&format!("/proc/{}", m.pid)).exists() {
            done.running.push(name);
            continue;
        }
        match (netns_inode(&name), m.inode) {
            (Some(now), Some(made)) if now != made => {
                let _ = std::fs::remove_file(&path);
            }
            (Some(_), _) => {
                remove(&name);
                done.removed.push(name);
            }
            (None, _) => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    done
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
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn name(&self, short: &str) -> String {
        format!("{}{}", self.prefix, short)
    }

    /// Creates namespace `<prefix><short>` with loopback up, recorded
    /// first (a kill between the two leaves a marker, not a stray).
    pub fn ns(&mut self, short: &str) -> Result<String> {
        let name = self.name(short);
        let mut marker = Marker {
            pid: std::process::id(),
            inode: None,
        };
        write_marker(&name, &marker)?;
        run(Command::new("ip").args(["netns", "add", &name]))?;
        self.namespaces.push(name.clone());
        marker.inode = netns_inode(&name);
        write_marker(&name, &marker)?;
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

    /// Starts a background command in a namespace; killed when the lab drops.
    pub fn spawn(&mut self, short: &str, cmd: &str) -> Result<()> {
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
        self.children.push(child);
        Ok(())
    }

    /// The inode of a lab namespace (what drop events carry).
    pub fn inode(&self, short: &str) -> Result<u32> {
        use std::os::unix::fs::MetadataExt;
        let p = format!("/run/netns/{}", self.name(short));
        Ok(std::fs::metadata(&p)
            .with_context(|| format!("no netns {p}"))?
            .ino() as u32)
    }

    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
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
                remove(&n);
            }
        }
    }
}

impl Drop for Netlab {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_read_back() {
        let m = Marker {
            pid: 42,
            inode: Some(4026532284),
        };
        assert_eq!(Marker::parse(&m.text()), Some(m));
        let early = Marker::parse("pid=7\n").unwrap();
        assert_eq!(early.inode, None);
        assert_eq!(Marker::parse("inode=3"), None);
        assert_eq!(Marker::parse("garbage"), None);
    }
}
