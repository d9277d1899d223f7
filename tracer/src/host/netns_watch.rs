//! Named namespaces learned from their creation and removal (inotify on the
//! directories their bind mounts live in), so that nothing rescans
//! `/run/netns` or `/proc` on a timer (issue 22: at 1,000 namespaces the
//! rescans took a whole CPU).
//!
//! `ip netns add` creates the file, then bind-mounts the namespace on it; a
//! mount makes no inotify event, so a created name may not open a namespace
//! yet when its event is read. The index keeps such names pending and
//! looks at them again (see `netns::NetnsCache`).

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};

/// Where runtimes bind-mount namespaces: `ip netns` and CNI plugins (which
/// Kubernetes' runtimes use), then Docker.
pub const WATCHED: &[&str] = &["/run/netns", "/run/docker/netns"];

/// What a drained watch says.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Added(PathBuf),
    Removed(PathBuf),
    /// Events were lost (queue overflow) or a watched directory came or
    /// went: only a full scan knows the truth.
    Rescan,
}

/// An inotify watch over [`WATCHED`] (and over `/run` for those that do
/// not exist yet).
pub struct RunDirs {
    fd: OwnedFd,
    /// watch descriptor -> directory.
    dirs: HashMap<i32, PathBuf>,
    /// Watched directories that do not exist yet.
    missing: Vec<PathBuf>,
}

const DIR_EVENTS: WatchFlags = WatchFlags::CREATE
    .union(WatchFlags::DELETE)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::DELETE_SELF)
    .union(WatchFlags::MOVE_SELF);

impl RunDirs {
    /// Watches what exists of [`WATCHED`]; None when inotify is not
    /// available (the caller then has no events and must scan).
    pub fn open() -> Option<RunDirs> {
        let fd = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC).ok()?;
        let mut w = RunDirs {
            fd,
            dirs: HashMap::new(),
            missing: Vec::new(),
        };
        for d in WATCHED {
            w.watch(Path::new(d));
        }
        Some(w)
    }

    fn watch(&mut self, dir: &Path) {
        match inotify::add_watch(&self.fd, dir, DIR_EVENTS | WatchFlags::ONLYDIR) {
            Ok(wd) => {
                self.dirs.insert(wd, dir.to_path_buf());
                self.missing.retain(|m| m != dir);
            }
            Err(_) => {
                if !self.missing.iter().any(|m| m == dir) {
                    self.missing.push(dir.to_path_buf());
                }
                // The parent tells when it appears (`ip netns add` makes
                // /run/netns on first use).
                if let Some(parent) = dir.parent() {
                    if let Ok(wd) = inotify::add_watch(&self.fd, parent, WatchFlags::CREATE) {
                        self.dirs.insert(wd, parent.to_path_buf());
                    }
                }
            }
        }
    }

    /// Every change since the last call; never blocks (one `read` that
    /// fails with EAGAIN when nothing happened).
    pub fn drain(&mut self) -> Vec<Change> {
        let mut out = Vec::new();
        let mut appeared = Vec::new();
        let mut buf = [MaybeUninit::uninit(); 4096];
        let mut r = inotify::Reader::new(&self.fd, &mut buf);
        while let Ok(ev) = r.next() {
            let flags = ev.events();
            if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                out.push(Change::Rescan);
                continue;
            }
            let Some(dir) = self.dirs.get(&ev.wd()) else {
                continue;
            };
            if flags.intersects(ReadFlags::DELETE_SELF | ReadFlags::MOVE_SELF) {
                appeared.push(dir.clone());
                out.push(Change::Rescan);
                continue;
            }
            let Some(name) = ev.file_name().and_then(|n| n.to_str().ok()) else {
                continue;
            };
            let path = dir.join(name);
            if self.missing.contains(&path) {
                appeared.push(path);
                out.push(Change::Rescan);
            } else if !WATCHED.iter().any(|w| Path::new(w) == dir) {
                // A parent watched for a missing directory: anything else
                // created there is none of ours.
            } else if flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
                out.push(Change::Added(path));
            } else if flags.intersects(ReadFlags::DELETE | ReadFlags::MOVED_FROM) {
                out.push(Change::Removed(path));
            }
        }
        for d in appeared {
            self.watch(&d);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::netns::test_support::TestNs;

    #[test]
    fn a_named_namespace_is_seen_coming_and_going() {
        // /run/netns must exist for the watch to see names in it.
        let first = TestNs::new("watch0");
        let mut w = RunDirs::open().expect("inotify");
        w.drain();
        let ns = TestNs::new("watch");
        let got = w.drain();
        assert!(got.contains(&Change::Added(ns.path())), "{got:?}");
        ns.delete();
        let got = w.drain();
        assert!(got.contains(&Change::Removed(ns.path())), "{got:?}");
        drop(first);
    }
}
