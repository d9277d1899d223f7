//! The cache of namespace topologies that events and rules read, re-read
//! on events and by age, never on the event path.

use super::*;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::host::listen::ListenCounters;
use crate::host::netns;
use crate::host::netns_worker;

/// What an (netns, ifindex) pair is called.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IfName {
    Name(String),
    /// The netns exists but the ifindex is not there (any more).
    Gone,
    NetnsGone,
    /// ifindex 0: no interface.
    None,
}

struct Entry {
    topo: Arc<NsTopology>,
    /// A full read; else only what naming needs ([`NsTopology::read_names`]).
    full: bool,
    /// Of a naming read: the devices' IPv4 settings from its link dump.
    /// With its links, a full read asked for right after starts from
    /// them instead of dumping them again (a neighbour event names a
    /// bridge, then a rule wants all of its namespace: two dumps of 1,000
    /// ports on the event path, issue 22).
    devconf: Option<HashMap<i32, DevConf>>,
    stale: bool,
    /// Last time the netns was confirmed alive.
    checked_at: Instant,
}

/// A cache over all namespaces, used on the event path: cheap hits, reads on
/// miss, re-reads when stale.
///
/// Timing (see [`Topology::with_timing`]): a copy is served until it is
/// `max_age` old or invalidated. Every `recheck` a hit also confirms, with
/// one stat, that the netns still exists, so a deleted netns turns into None
/// within `recheck`. `recheck` also bounds how often one netns is re-read
/// because an event named an ifindex the copy lacks, and how often a failed
/// read is retried, so an event storm costs a few reads per second at most.
/// An interface deleted after a read keeps its cached name until the copy is
/// `name_max_age` old (or invalidated): events queued just before the
/// deletion still get the right name; after that it is [`IfName::Gone`].
/// A namespace made or deleted (the namespace index's events) invalidates
/// every copy, since veths die and appear with them.
pub struct Topology {
    entries: HashMap<u32, Entry>,
    /// Netns whose last read failed, and when: no retry within `recheck`.
    failed: HashMap<u32, Instant>,
    max_age: Duration,
    name_max_age: Duration,
    recheck: Duration,
    last_error: Option<String>,
    /// netns names by inode, so that naming an event costs no syscall.
    names: HashMap<u32, (Option<String>, Instant)>,
    /// (netns, ifindex) not found in a fresh re-read, and when.
    link_misses: HashMap<(u32, i32), Instant>,
    /// A coarse "now" set once per batch of events (`set_clock`): reading
    /// the clock several times per event showed up in storm profiles.
    clock: Option<Instant>,
    /// Each namespace's ListenOverflows at its first read: what overflowed
    /// since is what this run saw.
    listen_base: HashMap<u32, u64>,
    /// Each namespace's exhaustion counters at its first full read: the
    /// "before" of an exhaustion verdict, whichever rule read it since.
    exhaustion_base: HashMap<u32, crate::host::exhaustion::Baseline>,
    /// When each namespace's overflow count was last polled.
    listen_polled: HashMap<u32, Instant>,
    /// The namespace index's generation last seen (see
    /// [`netns::generation`]).
    netns_generation: Option<u64>,
}

/// How often an idle namespace's accept-queue overflow count is polled.
const LISTEN_POLL: Duration = Duration::from_secs(2);

/// How long a netns name is trusted before it is looked up again. Names
/// come and go with events that clear them all (`set_clock`); this bounds
/// only what those cannot see: a process that held an unnamed namespace
/// exiting.
const NAME_TTL: Duration = Duration::from_secs(5);

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

impl Topology {
    pub fn new() -> Self {
        let mut t = Self::with_timing(DEFAULT_MAX_AGE, DEFAULT_RECHECK);
        t.name_max_age = NAME_MAX_AGE;
        t
    }

    /// Copies older than `max_age` are re-read, for naming as for rules.
    pub fn with_timing(max_age: Duration, recheck: Duration) -> Self {
        Topology {
            name_max_age: max_age,
            entries: HashMap::new(),
            failed: HashMap::new(),
            max_age,
            recheck,
            last_error: None,
            names: HashMap::new(),
            link_misses: HashMap::new(),
            clock: None,
            listen_base: HashMap::new(),
            exhaustion_base: HashMap::new(),
            listen_polled: HashMap::new(),
            netns_generation: None,
        }
    }

    /// Cached topology of one netns (read on first use; re-read if older
    /// than `max_age` or when `invalidate` was called). None if the netns is
    /// gone (or could never be read: see [`Topology::last_error`]). When a
    /// re-read fails the previous copy keeps being served.
    pub fn get(&mut self, inode: u32) -> Option<Arc<NsTopology>> {
        self.get_aged(inode, self.max_age, true)
    }

    /// [`Topology::get`] for naming an event: a copy serves until it is
    /// `name_max_age` old (see [`NAME_MAX_AGE`]).
    pub fn cached(&mut self, inode: u32) -> Option<Arc<NsTopology>> {
        self.get_aged(inode, self.name_max_age, true)
    }

    /// What naming needs of a namespace (links, addresses, peers): a copy
    /// made by [`NsTopology::read_names`] serves, so an event never waits
    /// for a namespace's routes, sysctls and queues (issue 22: a neighbour
    /// event on a bridge of 1,000 ports read them all first).
    pub fn names(&mut self, inode: u32) -> Option<Arc<NsTopology>> {
        self.get_aged(inode, self.name_max_age, false)
    }

    /// `full`: routes, sysctls and queues are wanted, not only links.
    fn get_aged(&mut self, inode: u32, max_age: Duration, full: bool) -> Option<Arc<NsTopology>> {
        let now = self.now();
        if let Some(e) = self.entries.get_mut(&inode) {
            let enough = e.full || !full;
            if enough && !e.stale && now.saturating_duration_since(e.topo.read_at) < max_age {
                if now.duration_since(e.checked_at) < self.recheck {
                    return Some(e.topo.clone());
                }
                // Not rate-limited: a false "gone" would drop a good copy,
                // and a true one removes the entry, so this scans once.
                match netns::find_now(inode) {
                    Some(info) if info.path == e.topo.path => {
                        e.checked_at = now;
                        return Some(e.topo.clone());
                    }
                    // The inode now names another namespace: read it anew.
                    Some(_) => {
                        self.entries.remove(&inode);
                        self.names.remove(&inode);
                        return self.load(inode, full);
                    }
                    None => {
                        self.entries.remove(&inode);
                        return None;
                    }
                }
            }
        }
        if let Some(t) = self.failed.get(&inode) {
            if now.duration_since(*t) < self.recheck {
                return self.kept(inode, full);
            }
        }
        self.load(inode, full)
    }

    /// The links of a naming read of `inode` made within `recheck` and
    /// not invalidated since: what a full read may start from.
    fn fresh_names(&mut self, inode: u32, path: &std::path::Path) -> Option<Named> {
        let e = self.entries.get_mut(&inode)?;
        if e.stale || e.topo.path != path || e.topo.read_at.elapsed() >= self.recheck {
            return None;
        }
        Some((e.topo.links.clone(), e.devconf.take()?))
    }

    /// The copy kept of `inode`, if it has what is wanted.
    fn kept(&self, inode: u32, full: bool) -> Option<Arc<NsTopology>> {
        self.entries
            .get(&inode)
            .filter(|e| e.full || !full)
            .map(|e| e.topo.clone())
    }

    /// Reads `inode`: all of it when `full`, else what naming needs (one
    /// targeted look; a drop never waits for routes and sysctls to be
    /// named).
    fn load(&mut self, inode: u32, full: bool) -> Option<Arc<NsTopology>> {
        // A read takes milliseconds: move the coarse clock past it.
        if self.clock.is_some() {
            self.clock = Some(Instant::now());
        }
        let Some(info) = netns::find(inode) else {
            self.entries.remove(&inode);
            self.failed.remove(&inode);
            return None;
        };
        let named = if full {
            self.fresh_names(inode, &info.path)
        } else {
            None
        };
        let mut names = None;
        let read = if full {
            NsTopology::read_with(&info, named)
        } else {
            NsTopology::read_names(&info).map(|(t, devconf)| {
                names = Some(devconf);
                t
            })
        };
        match read {
            Ok(mut t) => {
                if let Some(n) = t.listen.overflows {
                    let base = *self.listen_base.entry(inode).or_insert(n);
                    t.listen.overflows_at_start = Some(base.min(n));
                }
                if full {
                    let now = t.exhaustion.baseline();
                    t.exhaustion.at_start = Some(*self.exhaustion_base.entry(inode).or_insert(now));
                }
                let topo = Arc::new(t);
                self.failed.remove(&inode);
                self.entries.insert(
                    inode,
                    Entry {
                        topo: topo.clone(),
                        full,
                        devconf: names,
                        stale: false,
                        checked_at: Instant::now(),
                    },
                );
                Some(topo)
            }
            Err(e) => {
                self.last_error = Some(format!("{e:#}"));
                // Most failures are the netns dying between find and setns.
                if netns::find_now(inode).is_none() {
                    self.entries.remove(&inode);
                    self.failed.remove(&inode);
                    return None;
                }
                self.failed.insert(inode, Instant::now());
                self.kept(inode, full)
            }
        }
    }

    /// The firewall rules of a namespace, read now (never cached: their
    /// counters are what the caller wants). None if the namespace is gone
    /// or cannot be entered.
    pub fn ruleset(&mut self, inode: u32, read_ns: u64) -> Option<crate::host::firewall::Ruleset> {
        let info = netns::find(inode)?;
        match crate::host::firewall::read(&info, read_ns) {
            Ok(rs) => Some(rs),
            Err(e) => {
                self.last_error = Some(format!("reading the ruleset of {}: {e}", info.label()));
                None
            }
        }
    }

    /// Whether the accept-queue overflow count of `inode` differs from its
    /// cached copy's (then the copy is marked stale, so the next `get`
    /// reads it all and a recording keeps the new count). One file read
    /// on the reader thread: an idle namespace is polled for this without
    /// re-reading its links, routes and sysctls. True when there is no
    /// copy yet (the caller's `get` reads it) or it cannot tell.
    pub fn listen_moved(&mut self, inode: u32) -> bool {
        let Some(cached) = self.entries.get(&inode).map(|e| e.topo.listen.overflows) else {
            return true;
        };
        // At most one poll per LISTEN_POLL: the rules tick four times a
        // second. The real clock: `now` stands still while no event comes.
        let now_t = Instant::now();
        match self.listen_polled.get(&inode) {
            Some(t) if now_t.duration_since(*t) < LISTEN_POLL => return false,
            _ => {
                self.listen_polled.insert(inode, now_t);
            }
        }
        let Some(info) = netns::find(inode) else {
            return true;
        };
        let now = netns_worker::read_in(&info.path, ListenCounters::read_overflows_here)
            .ok()
            .flatten();
        if now.is_some() && now == cached {
            return false;
        }
        self.invalidate(inode);
        true
    }

    /// The full copy of `inode` with its exhaustion counters read anew,
    /// and nothing else: the later readings of an exhaustion verdict
    /// (every 250 ms while its drops last) need only the counters, and
    /// a whole read of a namespace with 3,000 bridge ports took 150 ms
    /// of the event path each time (issue 22). Without a full copy to
    /// start from, or while it is stale, a full read.
    pub fn recount(&mut self, inode: u32) -> Option<Arc<NsTopology>> {
        let kept = self
            .entries
            .get(&inode)
            .filter(|e| e.full && !e.stale)
            .map(|e| e.topo.clone());
        // `get` reads a stale or missing copy whole (and reuses a naming
        // read's links, which invalidating first would throw away).
        let Some(kept) = kept else {
            return self.get(inode);
        };
        // The inode may name another namespace by now (its path reused):
        // its counters must never be laid over this copy.
        let Some(info) = netns::find(inode).filter(|i| i.path == kept.path) else {
            return self.get(inode);
        };
        let counted = netns_worker::read_in(&info.path, move || {
            let actual = netns::thread_inode()?;
            if actual != inode {
                anyhow::bail!("path now opens netns {actual}, not {inode}");
            }
            Ok(Exhaustion::read_here())
        });
        let mut ex = match counted.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(ex) => ex,
            Err(e) => {
                self.last_error = Some(format!("counting in {}: {e:#}", info.label()));
                return self.get(inode);
            }
        };
        ex.add_host_wide();
        ex.at_start = kept.exhaustion.at_start;
        let mut t = (*kept).clone();
        t.exhaustion = ex;
        // `read_at` stays the links' and routes' age: only counters moved.
        let topo = Arc::new(t);
        if let Some(e) = self.entries.get_mut(&inode) {
            e.topo = topo.clone();
        }
        Some(topo)
    }

    /// Forces a re-read on the next `get`.
    pub fn invalidate(&mut self, inode: u32) {
        if let Some(e) = self.entries.get_mut(&inode) {
            e.stale = true;
        }
    }

    /// Drops every cached copy.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.failed.clear();
    }

    /// Why the last failed read failed (for diagnostics).
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// A link by (netns, ifindex), re-reading the netns once (rate-limited by
    /// `recheck`) when the cached copy lacks the ifindex.
    pub fn link(&mut self, inode: u32, ifindex: i32) -> Result<Link, IfName> {
        self.link_aged(inode, ifindex, self.max_age, true)
    }

    /// [`Topology::link`] for naming an event (see [`Topology::cached`]).
    pub fn name_link(&mut self, inode: u32, ifindex: i32) -> Result<Link, IfName> {
        self.link_aged(inode, ifindex, self.name_max_age, false)
    }

    fn link_aged(
        &mut self,
        inode: u32,
        ifindex: i32,
        max_age: Duration,
        full: bool,
    ) -> Result<Link, IfName> {
        if ifindex <= 0 {
            return Err(IfName::None);
        }
        let topo = self
            .get_aged(inode, max_age, full)
            .ok_or(IfName::NetnsGone)?;
        if let Some(l) = topo.link(ifindex) {
            return Ok(l.clone());
        }
        // Re-read once per missing ifindex per `recheck`: an interface created
        // after the copy was read gets its name (even in a burst of new
        // ones), and a storm on a vanished one costs one read per recheck.
        let key = (inode, ifindex);
        if self
            .link_misses
            .get(&key)
            .is_some_and(|t| t.elapsed() < self.recheck)
        {
            return Err(IfName::Gone);
        }
        if self.link_misses.len() > 4096 {
            self.link_misses.clear();
        }
        self.link_misses.insert(key, Instant::now());
        self.invalidate(inode);
        let topo = self
            .get_aged(inode, max_age, full)
            .ok_or(IfName::NetnsGone)?;
        topo.link(ifindex).cloned().ok_or(IfName::Gone)
    }

    /// Name of an ifindex in a netns. If the ifindex is not in the cached
    /// copy, re-read once (rate-limited, so an event storm on a vanished
    /// interface does not re-read thousands of times a second) before giving
    /// up.
    /// Sets the coarse clock the cache uses until the next call.
    /// Also notices namespaces being added or removed (the namespace
    /// index's generation: no syscall beyond a non-blocking read of its
    /// watch) and then forgets every name and negative answer: the kernel
    /// reuses a deleted namespace's inode for the next one, and a cached
    /// "gone" would misname the newcomer.
    pub fn set_clock(&mut self, now: Instant) {
        self.clock = Some(now);
        let generation = Some(netns::generation());
        if generation != self.netns_generation {
            // Not on the first call: nothing is cached before it.
            if self.netns_generation.is_some() {
                self.entries.values_mut().for_each(|e| e.stale = true);
            }
            self.netns_generation = generation;
            self.names.clear();
            self.failed.clear();
            self.link_misses.clear();
        }
    }

    fn now(&self) -> Instant {
        self.clock.unwrap_or_else(Instant::now)
    }

    /// Drops copies not refreshed for a minute (namespaces that died or
    /// went quiet), so pod churn cannot pile up route tables. Cheap enough
    /// to call on every tick.
    pub fn sweep(&mut self) {
        let idle = Duration::from_secs(60);
        self.entries.retain(|_, e| e.topo.read_at.elapsed() < idle);
        self.failed.retain(|_, at| at.elapsed() < idle);
        self.names.retain(|_, (_, at)| at.elapsed() < idle);
        self.link_misses.retain(|_, at| at.elapsed() < idle);
        self.listen_polled.retain(|_, at| at.elapsed() < idle);
    }

    /// The name of a netns in /run/netns, if it has one.
    pub fn netns_name(&mut self, inode: u32) -> Option<String> {
        if inode == 0 {
            return None;
        }
        if let Some((name, at)) = self.names.get(&inode) {
            if self.now().saturating_duration_since(*at) < NAME_TTL {
                return name.clone();
            }
        }
        if self.names.len() > 4096 {
            // Namespace churn: forget everything rather than grow.
            self.names.clear();
        }
        let name = netns::find(inode).and_then(|n| n.name);
        self.names.insert(inode, (name.clone(), Instant::now()));
        name
    }

    pub fn ifname(&mut self, inode: u32, ifindex: i32) -> IfName {
        match self.name_link(inode, ifindex) {
            Ok(l) => IfName::Name(l.name),
            Err(n) => n,
        }
    }

    /// The other end of a veth (or netkit) pair: (its netns inode, its link).
    /// None if `ifindex` is not such a device or the peer cannot be found.
    pub fn veth_peer(&mut self, inode: u32, ifindex: i32) -> Option<(u32, Link)> {
        let l = self.name_link(inode, ifindex).ok()?;
        if !matches!(l.kind.as_deref(), Some("veth") | Some("netkit")) {
            return None;
        }
        let peer_ns = l.peer_netns?;
        let peer = self.name_link(peer_ns, l.link?).ok()?;
        Some((peer_ns, peer))
    }
}
