//! The record of what a lab made: each namespace is written down before it
//! is made, in a marker file `MARKERS/<name>` (`pid=<creator> inode=<netns
//! inode>`; the inode once it exists). Cleaning (`tracer lab clean`, a new
//! lab's leftovers) only ever removes a namespace with a marker, whose
//! creator is no longer running and whose inode is still the recorded one:
//! a name that merely matches the prefix, someone else's namespace, or a
//! namespace re-created under the same name is never touched, nor the
//! processes in it.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the namespaces made here are recorded (root's, 0700).
pub const MARKERS: &str = "/run/tracer-lab";

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

fn marker_dir() -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir = PathBuf::from(MARKERS);
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

pub(crate) fn write(name: &str, m: &Marker) -> Result<()> {
    let p = marker_dir()?.join(name);
    std::fs::write(&p, m.text()).with_context(|| format!("cannot write {}", p.display()))
}

pub(crate) fn netns_inode(name: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(crate::netns_path(name))
        .ok()
        .map(|m| m.ino())
}

/// Deletes namespace `name` and the processes in it, then its marker.
pub(crate) fn remove(name: &str) {
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
    let _ = std::fs::remove_file(Path::new(MARKERS).join(name));
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
        let path = Path::new(MARKERS).join(&name);
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
