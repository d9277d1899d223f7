//! Naming, finding and entering network namespaces.
//!
//! Kernel drop events identify a network namespace only by the inode number of
//! its nsfs file. To read anything about that namespace userspace needs a path
//! that opens it: a bind mount (`ip netns add` puts them in `/run/netns`) or a
//! process that lives in it (`/proc/PID/ns/net`).
//!
//! Caching: [`find`] is backed by a process-wide [`NetnsCache`], an index
//! driven by events: one full scan on first use, then names learned from
//! inotify on the runtimes' netns directories ([`crate::host::netns_watch`]); `/proc` is
//! read only to place an inode seen for the first time. A hit costs one
//! `stat` (to make sure the cached path still opens the same namespace:
//! pids get reused and bind mounts get removed). Callers that want their
//! own timing (or no lock) can own a [`NetnsCache`].
//!
//! Caveat: nsfs inode numbers are recycled once a namespace is freed, so an
//! inode names "the namespace that has this inode now", which for an event
//! about a namespace that died is possibly a different one.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::host::netns_watch::{self, Change, RunDirs};
use crate::host::proc;
use anyhow::anyhow;

/// Where `ip netns` bind-mounts named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Minimum time between two lookups of one unknown inode.
pub const RESCAN_INTERVAL: Duration = Duration::from_millis(500);

/// `_IO(0xb7, 0x3)` from linux/nsfs.h; not exported by the libc crate.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NetnsInfo {
    pub inode: u32,
    /// Name under /run/netns, if the namespace has one.
    pub name: Option<String>,
    /// A path that opens the namespace. `/proc/PID/ns/net` paths stop working
    /// when that process exits even if the namespace lives on.
    pub path: PathBuf,
}

impl NetnsInfo {
    /// Human label: the /run/netns name, else `net:[INODE]` like `readlink`.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => format!("net:[{}]", self.inode),
        }
    }
}

/// Inode of the tracer's own netns (/proc/self/ns/net).
///
/// This is the netns of the thread-group leader, so inside [`run_in`] it still
/// answers the tracer's netns; use [`thread_inode`] for the calling thread's.
pub fn own_inode() -> io::Result<u32> {
    inode_of(Path::new("/proc/self/ns/net"))
}

/// Inode of the netns the calling thread is in (differs from [`own_inode`]
/// inside [`run_in`]).
pub fn thread_inode() -> io::Result<u32> {
    inode_of(Path::new("/proc/thread-self/ns/net"))
}

fn inode_of(path: &Path) -> io::Result<u32> {
    ino_u32(fs::metadata(path)?.ino())
}

fn ino_u32(ino: u64) -> io::Result<u32> {
    u32::try_from(ino)
        .map_err(|_| io::Error::other(format!("nsfs inode {ino} does not fit in u32")))
}

/// Device number of the nsfs superblock. Every namespace file (bind mount or
/// /proc link target) lives on it, which tells a mounted /run/netns entry from
/// a stale plain file left behind by a crashed `ip netns add`.
fn nsfs_dev() -> Option<u64> {
    static DEV: OnceLock<Option<u64>> = OnceLock::new();
    *DEV.get_or_init(|| fs::metadata("/proc/self/ns/net").ok().map(|m| m.dev()))
}

/// Checks that `file` is a network namespace and returns its inode.
fn net_ns_inode(file: &File) -> io::Result<u32> {
    // SAFETY: the fd is owned by `file` and valid for the duration of the call;
    // NS_GET_NSTYPE takes no argument.
    let ty = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if ty < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENOTTY) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a namespace file",
            ));
        }
        return Err(err);
    }
    if ty != libc::CLONE_NEWNET {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a namespace, but not a network namespace",
        ));
    }
    ino_u32(file.metadata()?.ino())
}

/// Parses the target of a /proc/PID/ns/net link: `net:[4026531840]`.
fn parse_ns_link(target: &str) -> Option<u32> {
    target
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Does `path` still open the namespace with this inode? One stat, no open.
fn still_is(path: &Path, inode: u32) -> bool {
    match fs::metadata(path) {
        Ok(md) => Some(md.dev()) == nsfs_dev() && md.ino() == u64::from(inode),
        Err(_) => false,
    }
}

/// What the user typed for --netns: a name in /run/netns, a path
/// (/proc/123/ns/net, /run/netns/x), or an inode number. Errors are one line.
pub fn resolve(arg: &str) -> anyhow::Result<NetnsInfo> {
    let unknown = || {
        anyhow!(
            "unknown netns '{arg}': no {NETNS_RUN_DIR}/{arg}, not a path, not an inode of a live netns"
        )
    };
    if arg.is_empty() {
        return Err(unknown());
    }
    if arg.contains('/') {
        let path = Path::new(arg);
        let file = File::open(path).map_err(|e| anyhow!("netns path '{arg}': {e}"))?;
        let inode = net_ns_inode(&file).map_err(|e| anyhow!("netns path '{arg}': {e}"))?;
        let name = name_in_run_dir(path)
            .or_else(|| with_global(|c| c.find_now(inode)).and_then(|i| i.name));
        return Ok(NetnsInfo {
            inode,
            name,
            path: path.to_path_buf(),
        });
    }
    let named = Path::new(NETNS_RUN_DIR).join(arg);
    if arg != "." && arg != ".." {
        if let Ok(file) = File::open(&named) {
            return match net_ns_inode(&file) {
                Ok(inode) => Ok(NetnsInfo {
                    inode,
                    name: Some(arg.to_string()),
                    path: named,
                }),
                Err(e) => Err(anyhow!(
                    "netns '{arg}': {} exists but is not a mounted network namespace ({e})",
                    named.display()
                )),
            };
        }
    }
    if let Ok(inode) = arg.parse::<u32>() {
        // User input is rare: scan now rather than honour the miss rate limit.
        if let Some(info) = with_global(|c| c.find_now(inode)) {
            return Ok(info);
        }
    }
    Err(unknown())
}

fn name_in_run_dir(path: &Path) -> Option<String> {
    if path.parent()? != Path::new(NETNS_RUN_DIR) {
        return None;
    }
    Some(path.file_name()?.to_str()?.to_string())
}

/// A live netns by inode, from the process-wide index (see
/// [`NetnsCache`]): no syscall beyond one `stat` on a hit; an inode seen for
/// the first time is looked for once in the nsfs mounts and /proc. None if
/// gone.
pub fn find(inode: u32) -> Option<NetnsInfo> {
    with_global(|c| c.find(inode))
}

/// Like [`find`], without the per-inode limit on lookups of unknown
/// inodes.
pub fn find_now(inode: u32) -> Option<NetnsInfo> {
    with_global(|c| c.find_now(inode))
}

/// Every network namespace the index knows, one entry per inode, sorted by
/// inode: those found at start, those named since (/run/netns, Docker's),
/// and those an event named. A namespace only a process holds, made after
/// the start and never seen in an event, is not in it.
pub fn list() -> Vec<NetnsInfo> {
    with_global(|c| c.list())
}

/// A fresh scan of every place a namespace can be opened from (threads
/// excluded): for the user's own question (`--netns` errors), never on a
/// timer.
pub fn list_fresh() -> Vec<NetnsInfo> {
    let mut v: Vec<NetnsInfo> = scan().into_values().collect();
    v.sort_by_key(|i| i.inode);
    v
}

/// Forget every "not found" answer of the shared cache: namespaces were
/// added or removed, and a deleted namespace's inode may now name a new one.
pub fn forget_misses() {
    with_global(|c| c.forget_misses());
}

/// A number that changes whenever a namespace is named or unnamed (added
/// or removed): cached answers about namespaces may be stale when it
/// moves. Costs one non-blocking `read` of the watch.
pub fn generation() -> u64 {
    with_global(|c| {
        c.sync();
        c.generation
    })
}

fn with_global<R>(f: impl FnOnce(&mut NetnsCache) -> R) -> R {
    static GLOBAL: Mutex<Option<NetnsCache>> = Mutex::new(None);
    // A panic while holding the lock leaves at worst a stale map, which the
    // per-hit verification copes with.
    let mut guard = GLOBAL.lock().unwrap_or_else(PoisonError::into_inner);
    f(guard.get_or_insert_with(NetnsCache::new))
}

/// inode -> path index, driven by events (issue 22): one full scan on first
/// use, then names learned from inotify on the runtimes' netns directories
/// ([`netns_watch`]); an inode nothing explains is looked for once in the
/// nsfs mounts and /proc (at most once per `min_rescan` per inode). Hits
/// are verified with one `stat`: pids get reused and bind mounts removed.
pub struct NetnsCache {
    known: HashMap<u32, NetnsInfo>,
    /// The full scan has run and the watch is open.
    seeded: bool,
    watch: Option<RunDirs>,
    /// Names created but not yet opening a namespace (`ip netns add`
    /// mounts after it creates), and since when.
    pending: HashMap<PathBuf, Instant>,
    /// Bumped by every name added or removed.
    generation: u64,
    last_scan: Option<Instant>,
    min_rescan: Duration,
    /// Inodes looked for and not found, and when: misses are rate-limited
    /// per inode, so one unknown netns cannot hide a newly created one.
    misses: HashMap<u32, Instant>,
}

impl Default for NetnsCache {
    fn default() -> Self {
        Self::new()
    }
}

/// How long a created name may take to open a namespace before it is
/// given up (a stale file left by a crashed `ip netns add`).
const PENDING_FOR: Duration = Duration::from_secs(10);

impl NetnsCache {
    pub fn new() -> Self {
        Self::with_min_rescan(RESCAN_INTERVAL)
    }

    /// `min_rescan`: minimum time between two lookups of one unknown inode.
    pub fn with_min_rescan(min_rescan: Duration) -> Self {
        NetnsCache {
            known: HashMap::new(),
            seeded: false,
            watch: None,
            pending: HashMap::new(),
            generation: 0,
            last_scan: None,
            min_rescan,
            misses: HashMap::new(),
        }
    }

    /// Cached lookup; an unknown inode is looked for unless it was looked
    /// for too recently.
    pub fn find(&mut self, inode: u32) -> Option<NetnsInfo> {
        self.sync();
        if let Some(hit) = self.verified_hit(inode) {
            return Some(hit);
        }
        if self
            .misses
            .get(&inode)
            .is_some_and(|t| t.elapsed() < self.min_rescan)
        {
            return None;
        }
        if self.misses.len() > 4096 {
            self.misses.clear();
        }
        let found = self.lookup(inode);
        if found.is_none() {
            self.misses.insert(inode, Instant::now());
        } else {
            self.misses.remove(&inode);
        }
        found
    }

    /// Drops the per-inode miss memory, so the next lookups look again.
    pub fn forget_misses(&mut self) {
        self.misses.clear();
    }

    /// Like [`NetnsCache::find`] but looks on a miss regardless of the
    /// rate limit.
    pub fn find_now(&mut self, inode: u32) -> Option<NetnsInfo> {
        self.sync();
        if let Some(hit) = self.verified_hit(inode) {
            return Some(hit);
        }
        self.lookup(inode)
    }

    /// Every known namespace, sorted by inode (see [`list`]).
    pub fn list(&mut self) -> Vec<NetnsInfo> {
        self.sync();
        let mut v: Vec<NetnsInfo> = self.known.values().cloned().collect();
        v.sort_by_key(|i| i.inode);
        v
    }

    /// Replace the index with a fresh full scan.
    pub fn rescan(&mut self) {
        let mut fresh = scan();
        // Entries found by the (costly, on-demand) thread walk are not in a
        // plain scan; keep those that still open the same netns.
        for (inode, info) in self.known.drain() {
            if !fresh.contains_key(&inode) && still_is(&info.path, inode) {
                fresh.insert(inode, info);
            }
        }
        self.known = fresh;
        self.last_scan = Some(Instant::now());
        self.generation += 1;
    }

    /// Applies what the watch saw since the last call: the first call
    /// opens the watch and scans once.
    fn sync(&mut self) {
        if !self.seeded {
            // Watch first, so nothing made during the scan is missed.
            self.watch = RunDirs::open();
            self.rescan();
            self.seeded = true;
        }
        let changes = match &mut self.watch {
            Some(w) => w.drain(),
            // No inotify: nothing tells of new names; lookups still
            // find every inode an event names.
            None => Vec::new(),
        };
        let mut moved = !changes.is_empty();
        for c in changes {
            match c {
                Change::Added(p) => {
                    self.pending.insert(p, Instant::now());
                }
                Change::Removed(p) => {
                    self.pending.remove(&p);
                    self.known.retain(|_, i| i.path != p);
                }
                Change::Rescan => self.seeded = false,
            }
        }
        if !self.seeded {
            return self.sync();
        }
        moved |= self.settle_pending();
        if moved {
            self.generation += 1;
            self.misses.clear();
        }
    }

    /// Names that now open a namespace join the index (a name beats an
    /// anonymous path); returns whether any did.
    fn settle_pending(&mut self) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        let mut any = false;
        let nsfs = nsfs_dev();
        let pending = std::mem::take(&mut self.pending);
        for (path, since) in pending {
            let md = fs::metadata(&path);
            let Ok(md) = md else { continue };
            if nsfs.is_none() || Some(md.dev()) != nsfs {
                if since.elapsed() < PENDING_FOR {
                    self.pending.insert(path, since);
                }
                continue;
            }
            let Ok(inode) = ino_u32(md.ino()) else {
                continue;
            };
            let name = name_in_run_dir(&path);
            let better = self
                .known
                .get(&inode)
                .is_none_or(|k| k.name.is_none() || (name.is_some() && k.path > path));
            if better {
                self.known.insert(inode, NetnsInfo { inode, name, path });
            }
            any = true;
        }
        any
    }

    /// One targeted look for an inode the index lacks: the nsfs mounts,
    /// then each process, then each thread; stops at the first match.
    fn lookup(&mut self, inode: u32) -> Option<NetnsInfo> {
        self.last_scan = Some(Instant::now());
        let found = fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|mi| {
                nsfs_mounts(&mi)
                    .into_iter()
                    .find(|(i, _)| *i == inode)
                    .map(|(_, path)| NetnsInfo {
                        inode,
                        name: name_in_run_dir(&path),
                        path,
                    })
            })
            .or_else(|| scan_pids_for(inode))
            .or_else(|| scan_tasks_for(inode))?;
        self.known.insert(inode, found.clone());
        Some(found)
    }

    fn verified_hit(&mut self, inode: u32) -> Option<NetnsInfo> {
        let info = self.known.get(&inode)?;
        // A name in a watched directory is removed by its event (`sync`
        // ran first): no stat needed. Any other path may stop opening it.
        let watched = self.watch.is_some()
            && info
                .path
                .parent()
                .is_some_and(|d| netns_watch::WATCHED.iter().any(|w| Path::new(w) == d));
        if watched || still_is(&info.path, inode) {
            return Some(info.clone());
        }
        self.known.remove(&inode);
        None
    }
}

/// One pass over every place a netns can be opened from, cheapest and
/// best-named first: /run/netns names win over anonymous paths.
fn scan() -> HashMap<u32, NetnsInfo> {
    let mut out: HashMap<u32, NetnsInfo> = HashMap::new();
    let nsfs = nsfs_dev();

    if let Ok(rd) = fs::read_dir(NETNS_RUN_DIR) {
        let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        // Several names for one netns: pick deterministically.
        entries.sort();
        for path in entries {
            let Ok(md) = fs::metadata(&path) else {
                continue;
            };
            if nsfs.is_none() || Some(md.dev()) != nsfs {
                continue;
            }
            let (Ok(inode), Some(name)) = (ino_u32(md.ino()), name_in_run_dir(&path)) else {
                continue;
            };
            out.entry(inode).or_insert(NetnsInfo {
                inode,
                name: Some(name),
                path,
            });
        }
    }

    // Bind mounts outside /run/netns (e.g. /run/docker/netns/*) keep
    // namespaces alive with no process in them.
    if let Ok(mi) = fs::read_to_string("/proc/self/mountinfo") {
        for (inode, path) in nsfs_mounts(&mi) {
            out.entry(inode).or_insert(NetnsInfo {
                inode,
                name: name_in_run_dir(&path),
                path,
            });
        }
    }

    for pid in proc::pids() {
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let Some(inode) = read_ns_link(&path) else {
            continue;
        };
        out.entry(inode).or_insert(NetnsInfo {
            inode,
            name: None,
            path,
        });
    }
    out
}

fn scan_pids_for(inode: u32) -> Option<NetnsInfo> {
    proc::pids().into_iter().find_map(|pid| {
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        (read_ns_link(&path) == Some(inode)).then_some(NetnsInfo {
            inode,
            name: None,
            path,
        })
    })
}

fn scan_tasks_for(inode: u32) -> Option<NetnsInfo> {
    for pid in proc::pids() {
        for tid in proc::tids(pid) {
            let path = PathBuf::from(format!("/proc/{pid}/task/{tid}/ns/net"));
            if read_ns_link(&path) == Some(inode) {
                return Some(NetnsInfo {
                    inode,
                    name: None,
                    path,
                });
            }
        }
    }
    None
}

fn read_ns_link(path: &Path) -> Option<u32> {
    parse_ns_link(fs::read_link(path).ok()?.to_str()?)
}

/// nsfs mounts of network namespaces from a mountinfo text.
fn nsfs_mounts(mountinfo: &str) -> Vec<(u32, PathBuf)> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        if post.split(' ').next() != Some("nsfs") {
            continue;
        }
        let fields: Vec<&str> = pre.split(' ').collect();
        let (Some(root), Some(mnt)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        if let Some(inode) = parse_ns_link(root) {
            out.push((inode, PathBuf::from(unescape_mountinfo(mnt))));
        }
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs `f` on a fresh thread that has joined the netns at `path` (setns
/// CLONE_NEWNET) and returns its result.
///
/// Why a throwaway thread: setns changes only the calling thread, and a thread
/// that never returns to its original netns cannot leak the wrong netns into
/// later work. Inside `f`, sockets are created in the target netns (and keep
/// it after the thread exits), and /proc/sys/net shows the target's sysctls
/// because sysctl files are resolved against the reading thread's netns.
/// /proc/net and /proc/self/* still follow the thread-group leader; use
/// /proc/thread-self/net there. A panic in `f` becomes an error.
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    // Open in the caller so a bad path fails before a thread exists.
    let file = File::open(path)?;
    let handle = std::thread::Builder::new()
        .name("netns-run-in".into())
        .spawn(move || -> io::Result<T> {
            // SAFETY: the fd is owned by `file`, which outlives the call.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            drop(file);
            Ok(f())
        })?;
    match handle.join() {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".to_string());
            Err(io::Error::other(format!(
                "closure panicked in netns {}: {msg}",
                path.display()
            )))
        }
    }
}

/// Namespace fixtures for tests in this crate (needs root and `ip`).
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use std::process::Command;

    pub(crate) const PREFIX: &str = "trtopo-";

    pub(crate) fn run(cmd: &str, args: &[&str]) -> String {
        let out = Command::new(cmd)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("spawn {cmd}: {e}"));
        assert!(
            out.status.success(),
            "{cmd} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Deletes namespaces with our prefix whose creating test process died
    /// without running Drop (SIGKILL, abort); never touches live runs.
    fn sweep_stale() {
        let Ok(rd) = fs::read_dir(NETNS_RUN_DIR) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(PREFIX) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    }

    /// A netns named `trtopo-PID-TAG`, deleted on drop (also when a test
    /// panics, since Drop runs during unwinding).
    pub(crate) struct TestNs {
        pub name: String,
        pub inode: u32,
    }

    impl TestNs {
        pub fn new(tag: &str) -> TestNs {
            sweep_stale();
            let mut ns = TestNs {
                name: format!("{PREFIX}{}-{tag}", std::process::id()),
                inode: 0,
            };
            run("ip", &["netns", "add", &ns.name]);
            ns.inode = inode_of(&ns.path()).expect("inode of new netns");
            ns
        }

        pub fn path(&self) -> PathBuf {
            Path::new(NETNS_RUN_DIR).join(&self.name)
        }

        pub fn info(&self) -> NetnsInfo {
            NetnsInfo {
                inode: self.inode,
                name: Some(self.name.clone()),
                path: self.path(),
            }
        }

        /// `ip -n NAME <args>` (args split on whitespace).
        pub fn ip(&self, args: &str) -> String {
            let mut v = vec!["-n", self.name.as_str()];
            v.extend(args.split_whitespace());
            run("ip", &v)
        }

        pub fn sysctl(&self, kv: &str) {
            run("ip", &["netns", "exec", &self.name, "sysctl", "-qw", kv]);
        }

        pub fn ifindex(&self, ifname: &str) -> i32 {
            let out = run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.name,
                    "cat",
                    &format!("/sys/class/net/{ifname}/ifindex"),
                ],
            );
            out.trim().parse().expect("ifindex")
        }

        /// `sh -c cmd` inside the namespace, which must succeed.
        pub fn sh(&self, cmd: &str) {
            run("ip", &["netns", "exec", &self.name, "sh", "-c", cmd]);
        }

        /// Conntrack on in the namespace (an nftables rule that matches on
        /// it): its entry count is a per-namespace counter to move.
        pub fn track_connections(&self) {
            self.sh("ip link set lo up && nft add table ip tracked && \
                 nft 'add chain ip tracked out { type filter hook output priority 0; }' && \
                 nft add rule ip tracked out ct state new accept");
        }

        /// Deletes now (Drop then finds nothing left to delete).
        pub fn delete(&self) {
            run("ip", &["netns", "del", &self.name]);
        }
    }

    impl Drop for TestNs {
        fn drop(&mut self) {
            if Path::new(NETNS_RUN_DIR).join(&self.name).exists() {
                let _ = Command::new("ip")
                    .args(["netns", "del", &self.name])
                    .status();
            }
        }
    }

    /// A child process we started; killed by its own pid on drop.
    pub(crate) struct ChildGuard(pub std::process::Child);

    impl Drop for ChildGuard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::process::{Command, Stdio};

    fn read_trim(path: &str) -> String {
        fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .to_string()
    }

    #[test]
    fn parsers() {
        assert_eq!(parse_ns_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link("mnt:[4026531840]"), None);
        assert_eq!(parse_ns_link("net:[x]"), None);
        assert_eq!(unescape_mountinfo(r"/run/a\040b\134c"), r"/run/a b\c");
        assert_eq!(unescape_mountinfo(r"/x\04"), r"/x\04");
        let mi = "43 42 0:4 net:[4026532177] /run/netns/x rw shared:2 - nsfs nsfs rw\n\
                  44 42 0:4 mnt:[4026532178] /run/m rw - nsfs nsfs rw\n\
                  45 42 0:4 / /proc rw - proc proc rw\n";
        assert_eq!(
            nsfs_mounts(mi),
            vec![(4026532177, PathBuf::from("/run/netns/x"))]
        );
    }

    #[test]
    fn own_inode_matches_proc() {
        let link = fs::read_link("/proc/self/ns/net").unwrap();
        let expect = parse_ns_link(link.to_str().unwrap()).unwrap();
        assert_eq!(own_inode().unwrap(), expect);
        assert_eq!(thread_inode().unwrap(), expect);
    }

    #[test]
    fn resolve_by_name_path_and_inode() {
        let ns = TestNs::new("res");
        let by_name = resolve(&ns.name).unwrap();
        assert_eq!(by_name, ns.info());

        let p = ns.path();
        let by_path = resolve(p.to_str().unwrap()).unwrap();
        assert_eq!(by_path, ns.info());

        let by_inode = resolve(&ns.inode.to_string()).unwrap();
        assert_eq!(by_inode.inode, ns.inode);
        assert_eq!(by_inode.name.as_deref(), Some(ns.name.as_str()));
        assert!(still_is(&by_inode.path, ns.inode));

        let own = own_inode().unwrap();
        let by_proc = resolve("/proc/self/ns/net").unwrap();
        assert_eq!(by_proc.inode, own);
        assert_eq!(by_proc.path, PathBuf::from("/proc/self/ns/net"));
        let own_by_inode = resolve(&own.to_string()).unwrap();
        assert_eq!(own_by_inode.inode, own);
        assert!(still_is(&own_by_inode.path, own));
    }

    #[test]
    fn resolve_errors() {
        let bogus = format!("{PREFIX}{}-nope", std::process::id());
        let e = resolve(&bogus).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("unknown netns '{bogus}': no /run/netns/{bogus}, not a path, not an inode of a live netns")
        );
        assert!(!e.contains('\n'));

        let e = resolve("4294967295").unwrap_err().to_string();
        assert!(e.starts_with("unknown netns '4294967295'"), "{e}");

        let e = resolve("").unwrap_err().to_string();
        assert!(e.starts_with("unknown netns ''"), "{e}");

        let e = resolve("/proc/self/ns/mnt").unwrap_err().to_string();
        assert!(e.contains("not a network namespace"), "{e}");
        let e = resolve("/etc/hostname").unwrap_err().to_string();
        assert!(e.contains("not a namespace file"), "{e}");
        let e = resolve("/nonexistent/trtopo").unwrap_err().to_string();
        assert!(e.starts_with("netns path '/nonexistent/trtopo'"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn find_named_then_deleted() {
        let ns = TestNs::new("find");
        let mut cache = NetnsCache::new();
        let got = cache.find(ns.inode).expect("live netns");
        assert_eq!(got, ns.info());
        let got = find(ns.inode).expect("live netns (global)");
        assert_eq!(got.name.as_deref(), Some(ns.name.as_str()));
        assert!(list().iter().any(|i| i.inode == ns.inode));

        ns.delete();
        // The hit is re-verified, so no rescan delay applies to deletion.
        assert_eq!(cache.find(ns.inode), None);
        assert_eq!(find(ns.inode), None);
        assert_eq!(NetnsCache::new().find(ns.inode), None);
        assert!(!list().iter().any(|i| i.inode == ns.inode));
    }

    #[test]
    fn find_unnamed_netns_held_by_a_process() {
        let ns = TestNs::new("proc");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "sleep", "60"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = ChildGuard(child);
        let pid = child.0.id();
        // Wait until the child has entered the netns (exec'd into sleep).
        let want = format!("net:[{}]", ns.inode);
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::read_link(format!("/proc/{pid}/ns/net"))
            .map(|l| l.to_string_lossy() != want)
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "child never entered netns");
            std::thread::sleep(Duration::from_millis(10));
        }
        ns.delete();

        let mut cache = NetnsCache::with_min_rescan(Duration::ZERO);
        let got = cache.find(ns.inode).expect("netns kept alive by child");
        assert_eq!(got.name, None);
        assert!(got.path.starts_with("/proc/"), "{got:?}");
        assert!(still_is(&got.path, ns.inode));
        assert_eq!(resolve(&ns.inode.to_string()).unwrap().inode, ns.inode);

        child.0.kill().unwrap();
        child.0.wait().unwrap();
        assert_eq!(cache.find(ns.inode), None);
    }

    #[test]
    fn miss_rescans_are_rate_limited_per_inode() {
        let mut cache = NetnsCache::with_min_rescan(Duration::from_secs(3600));
        assert_eq!(cache.find(1), None); // first miss scans
        let scanned = cache.last_scan;
        assert!(scanned.is_some());
        // The same unknown inode again within the interval: no scan.
        assert_eq!(cache.find(1), None);
        assert_eq!(cache.last_scan, scanned);
        // A namespace created meanwhile is still found at once: one unknown
        // inode must not hide another (namespace churn). Its name arrived
        // as an event: found without looking in /proc (issue 22).
        let ns = TestNs::new("rate");
        assert!(cache.find(ns.inode).is_some());
        assert_eq!(cache.last_scan, scanned, "named by the watch, not a scan");
        // Its removal is an event too: gone at once.
        ns.delete();
        assert_eq!(cache.find(ns.inode), None);
        assert!(!cache.list().iter().any(|i| i.inode == ns.inode));
    }

    /// The point of run_in: /proc/sys/net and new sockets belong to the
    /// joined netns, not to the tracer's.
    #[test]
    fn run_in_sees_target_sysctls_and_creates_sockets_there() {
        let ns = TestNs::new("runin");
        let host_rp = read_trim("/proc/sys/net/ipv4/conf/all/rp_filter");
        let host_fwd = read_trim("/proc/sys/net/ipv4/ip_forward");
        let host_rp_n: u32 = host_rp.parse().unwrap();
        let ns_rp = (host_rp_n + 1) % 3;
        let ns_fwd = if host_fwd == "1" { 0 } else { 1 };
        ns.sysctl(&format!("net.ipv4.conf.all.rp_filter={ns_rp}"));
        ns.sysctl(&format!("net.ipv4.ip_forward={ns_fwd}"));

        let (rp, fwd, tinode, pinode, sock) = run_in(&ns.path(), || {
            // SAFETY: plain socket(2); ownership moves into OwnedFd at once.
            let fd =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            assert!(fd >= 0);
            (
                read_trim("/proc/sys/net/ipv4/conf/all/rp_filter"),
                read_trim("/proc/sys/net/ipv4/ip_forward"),
                thread_inode().unwrap(),
                own_inode().unwrap(),
                // SAFETY: fd is a fresh, valid descriptor we own.
                unsafe { OwnedFd::from_raw_fd(fd) },
            )
        })
        .unwrap();
        assert_eq!(rp, ns_rp.to_string());
        assert_eq!(fwd, ns_fwd.to_string());
        assert_eq!(tinode, ns.inode);
        assert_eq!(
            pinode,
            own_inode().unwrap(),
            "/proc/self follows the leader"
        );

        // Host values untouched and still read as the host's from this thread.
        assert_eq!(read_trim("/proc/sys/net/ipv4/conf/all/rp_filter"), host_rp);
        assert_eq!(read_trim("/proc/sys/net/ipv4/ip_forward"), host_fwd);

        // SIOCGSKNS: the socket's netns, after its creating thread is gone.
        // SAFETY: ioctl on a valid socket fd; returns a new fd or -1.
        let nsfd = unsafe { libc::ioctl(sock.as_raw_fd(), 0x894C as _) };
        assert!(nsfd >= 0, "SIOCGSKNS: {}", io::Error::last_os_error());
        // SAFETY: nsfd is a fresh descriptor we own.
        let nsfile = unsafe { File::from_raw_fd(nsfd) };
        assert_eq!(net_ns_inode(&nsfile).unwrap(), ns.inode);
    }

    #[test]
    fn run_in_errors() {
        assert!(run_in(Path::new("/nonexistent/trtopo"), || 1).is_err());
        let e = run_in(Path::new("/etc/hostname"), || 1).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        let e = run_in(Path::new("/proc/self/ns/net"), || -> u32 { panic!("boom") }).unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
        assert_eq!(run_in(Path::new("/proc/self/ns/net"), || 7).unwrap(), 7);
    }
}
