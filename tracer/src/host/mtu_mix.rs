//! Whether connected devices on this host mix MTUs: the only place the
//! kernel's SYN check (`syn_xmit`) can find anything.
//!
//! The check flags a SYN whose MSS the device it leaves by cannot carry. A
//! SYN's MSS is sized for the device its sender used, so where every set of
//! connected devices shares one MTU no SYN of this host can be flagged,
//! and the check is pure cost: a program call for every transmitted packet
//! (two per forwarded one). `kernel::syn_gate` parks it while this module
//! answers "no mix".
//!
//! Connected means: devices of one namespace (the kernel routes or bridges
//! between them), and namespaces joined by a link that crosses them (a veth
//! pair, or a macvlan/ipvlan/vlan whose lower device lives elsewhere).
//! Loopback and devices that are down transmit nothing to others and don't
//! count.

use std::collections::HashMap;

use crate::host::netns;
use crate::host::netns_worker::Visitor;
use crate::host::topology::{Link, NsTopology};
use anyhow::Context;
use tracer_abi::LOOPBACK_IFINDEX;

/// The links of one namespace.
#[derive(Clone, Debug)]
pub struct NsLinks {
    pub inode: u32,
    pub label: String,
    pub links: Vec<Link>,
}

/// Why the check stays on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mix {
    /// Two connected devices with different MTUs.
    Devices {
        a: String,
        a_mtu: u32,
        b: String,
        b_mtu: u32,
    },
    /// The scan cannot tell: a device's other end, or a watched namespace,
    /// is in a namespace it could not see.
    Unknown(String),
}

impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mix::Devices { a, a_mtu, b, b_mtu } => {
                write!(f, "{a} (MTU {a_mtu}) and {b} (MTU {b_mtu})")
            }
            Mix::Unknown(why) => write!(f, "unknown: {why}"),
        }
    }
}

/// Reads the links of every namespace. A namespace that goes away during
/// the scan is left out; one that stays and cannot be read is an error,
/// and the caller must then assume a mix.
pub fn scan() -> anyhow::Result<Vec<NsLinks>> {
    Scanner::default().scan(true, &[])
}

/// The links of every namespace, kept between scans (issue 22): a scan
/// reads the namespaces it has not seen and drops those gone, and only a
/// full scan reads them all again. Reads run on the calling thread, which
/// visits each namespace and comes back (no thread per namespace), so the
/// caller's CPU clock counts them.
#[derive(Default)]
pub struct Scanner {
    visitor: Option<Visitor>,
    /// inode -> (the path it was read from, its links).
    seen: HashMap<u32, (std::path::PathBuf, NsLinks)>,
}

impl Scanner {
    /// Every namespace the index knows (see [`netns::list`]), read anew
    /// when `full`, else only those not read before and those of `fresh`
    /// (the watched namespaces: few, and where a mix matters).
    pub fn scan(&mut self, full: bool, fresh: &[u32]) -> anyhow::Result<Vec<NsLinks>> {
        let list = netns::list();
        let live: HashMap<u32, &netns::NetnsInfo> = list.iter().map(|n| (n.inode, n)).collect();
        self.seen
            .retain(|inode, (path, _)| live.get(inode).is_some_and(|n| n.path == *path));
        if self.visitor.is_none() {
            self.visitor = Some(Visitor::here()?);
        }
        for ns in &list {
            if !full && !fresh.contains(&ns.inode) && self.seen.contains_key(&ns.inode) {
                continue;
            }
            let first = !self.seen.contains_key(&ns.inode);
            match self.read(ns) {
                Ok(links) => {
                    if first {
                        self.warm_peers(ns, &links);
                    }
                    let l = NsLinks {
                        inode: ns.inode,
                        label: ns.label(),
                        links,
                    };
                    self.seen.insert(ns.inode, (ns.path.clone(), l));
                }
                Err(_) if !still_there(ns) => {
                    self.seen.remove(&ns.inode);
                }
                Err(e) => return Err(e),
            }
        }
        let mut out: Vec<NsLinks> = self.seen.values().map(|(_, l)| l.clone()).collect();
        out.sort_by_key(|l| l.inode);
        Ok(out)
    }

    /// A namespace with many links into others (a bridge's): their peers
    /// are resolved now, on this thread, so that naming and rules never
    /// wait for one query per port (see `topology::warm_peers_here`). A
    /// namespace with a few is resolved when asked: cheap then, and a
    /// container's peer is found first from the bridge's answers.
    fn warm_peers(&mut self, ns: &netns::NetnsInfo, links: &[Link]) {
        const MANY: usize = 16;
        if links.iter().filter(|l| l.link_netnsid.is_some()).count() < MANY {
            return;
        }
        let Some(v) = self.visitor.as_mut().filter(|v| !v.poisoned()) else {
            return;
        };
        let (inode, links) = (ns.inode, links.to_vec());
        let _ = v.visit_inode(&ns.path, inode, move || {
            crate::host::topology::warm_peers_here(inode, &links)
        });
    }

    fn read(&mut self, ns: &netns::NetnsInfo) -> anyhow::Result<Vec<Link>> {
        let v = self.visitor.as_mut().context("no visitor")?;
        if v.poisoned() {
            // This thread could not come home: never read from it again.
            anyhow::bail!("the scanning thread is stuck in another namespace");
        }
        let inode = ns.inode;
        v.visit_inode(&ns.path, inode, NsTopology::links_of_this_netns)
            .with_context(|| format!("cannot enter netns {}", ns.path.display()))?
            .with_context(|| format!("reading links of netns {}", ns.label()))
    }
}

/// Whether the path still opens the same namespace.
fn still_there(ns: &netns::NetnsInfo) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(&ns.path).is_ok_and(|m| m.ino() == u64::from(ns.inode))
}

/// The first pair of connected devices (up, loopback aside) whose MTUs
/// differ, among the sets that reach a namespace of `watched` (all when it
/// is empty), or why the scan cannot tell; None when there is none.
pub fn find_mix(all: &[NsLinks], watched: &[u32]) -> Option<Mix> {
    let mut sets = Sets::new(all.len());
    let mut unseen = Vec::new();
    // ifindex -> (namespace, link) of every device, to find the other end
    // of a link that crosses namespaces. Ifindexes repeat between
    // namespaces, so a link may match devices in several: joining them
    // all can only keep the check on, never turn it off wrongly.
    let mut by_ifindex: HashMap<i32, Vec<(usize, &Link)>> = HashMap::new();
    for (n, ns) in all.iter().enumerate() {
        for l in &ns.links {
            by_ifindex.entry(l.ifindex).or_default().push((n, l));
        }
    }
    for (n, ns) in all.iter().enumerate() {
        for l in &ns.links {
            let (Some(peer), Some(_)) = (l.link, l.link_netnsid) else {
                continue;
            };
            let others: Vec<(usize, &Link)> = by_ifindex
                .get(&peer)
                .map(|c| c.iter().filter(|(m, _)| *m != n).copied().collect())
                .unwrap_or_default();
            if others.is_empty() && counts(l) {
                unseen.push((
                    n,
                    format!(
                        "the other end of {} in {} is in a namespace the scan cannot see",
                        l.name, ns.label
                    ),
                ));
            }
            // A veth's peer points back at it, which singles it out among
            // the devices that share its ifindex. A lower device (of a
            // macvlan, ipvlan, vlan) doesn't: join them all.
            let mutual: Vec<usize> = others
                .iter()
                .filter(|(_, o)| o.link == Some(l.ifindex) && o.link_netnsid.is_some())
                .map(|(m, _)| *m)
                .collect();
            if l.kind.as_deref() == Some("veth") && !mutual.is_empty() {
                mutual.into_iter().for_each(|m| sets.join(n, m));
            } else {
                others.iter().for_each(|(m, _)| sets.join(n, *m));
            }
        }
    }
    if let Some(w) = watched
        .iter()
        .find(|w| !all.iter().any(|ns| ns.inode == **w))
    {
        return Some(Mix::Unknown(format!("watched netns {w} was not scanned")));
    }
    // A device whose other end is out of sight matters where its own set
    // reaches a watched namespace (what it connects to would join it).
    let reaches = |sets: &mut Sets, root: usize| {
        watched.is_empty()
            || all
                .iter()
                .enumerate()
                .any(|(m, o)| watched.contains(&o.inode) && sets.root(m) == root)
    };
    for (n, why) in unseen {
        let root = sets.root(n);
        if reaches(&mut sets, root) {
            return Some(Mix::Unknown(why));
        }
    }
    // The first device of each set, then the first that differs from it.
    let mut first: HashMap<usize, (String, u32)> = HashMap::new();
    for (n, ns) in all.iter().enumerate() {
        let root = sets.root(n);
        for l in ns.links.iter().filter(|l| counts(l)) {
            let name = format!("{} in {}", l.name, ns.label);
            match first.get(&root) {
                None => {
                    first.insert(root, (name, l.mtu));
                }
                Some((a, a_mtu)) if *a_mtu != l.mtu => {
                    if reaches(&mut sets, root) {
                        return Some(Mix::Devices {
                            a: a.clone(),
                            a_mtu: *a_mtu,
                            b: name,
                            b_mtu: l.mtu,
                        });
                    }
                }
                Some(_) => {}
            }
        }
    }
    None
}

/// Whether a device can carry a SYN to another device.
fn counts(l: &Link) -> bool {
    l.up && l.ifindex != LOOPBACK_IFINDEX && l.mtu != 0
}

/// Union-find over namespace indexes.
struct Sets(Vec<usize>);

impl Sets {
    fn new(n: usize) -> Self {
        Sets((0..n).collect())
    }

    fn root(&mut self, mut i: usize) -> usize {
        while self.0[i] != i {
            self.0[i] = self.0[self.0[i]];
            i = self.0[i];
        }
        i
    }

    fn join(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.root(a), self.root(b));
        self.0[ra] = rb;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device; with a peer, a veth whose other end is elsewhere.
    fn link(ifindex: i32, name: &str, mtu: u32, peer: Option<i32>) -> Link {
        Link {
            ifindex,
            name: name.into(),
            kind: peer.map(|_| "veth".to_string()),
            mtu,
            up: true,
            link: peer,
            link_netnsid: peer.map(|_| 0),
            ..Link::default()
        }
    }

    fn mtus(m: Option<Mix>) -> (u32, u32) {
        match m {
            Some(Mix::Devices { a_mtu, b_mtu, .. }) => (a_mtu, b_mtu),
            other => panic!("expected two devices, got {other:?}"),
        }
    }

    fn ns(inode: u32, links: Vec<Link>) -> NsLinks {
        let mut all = vec![link(1, "lo", 65536, None)];
        all.extend(links);
        NsLinks {
            inode,
            label: format!("ns{inode}"),
            links: all,
        }
    }

    #[test]
    fn uniform_namespaces_do_not_mix_even_when_the_host_does() {
        // This VM: eth0 1400 alone in the root; a lab of 1500 veths apart.
        let host = [
            ns(10, vec![link(2, "eth0", 1400, None)]),
            ns(20, vec![link(2, "eth0", 1500, Some(2))]),
            ns(
                21,
                vec![
                    link(2, "eth0", 1500, Some(2)),
                    link(3, "eth1", 1500, Some(2)),
                ],
            ),
            ns(22, vec![link(2, "eth0", 1500, Some(3))]),
        ];
        assert_eq!(find_mix(&host, &[]), None);
    }

    #[test]
    fn the_overlay_host_mixes_in_its_root_namespace() {
        let host = [
            ns(
                10,
                vec![
                    link(2, "eth0", 1450, None),
                    link(3, "docker0", 1500, None),
                    link(7, "veth1a", 1500, Some(2)),
                ],
            ),
            ns(30, vec![link(2, "eth0", 1500, Some(7))]),
        ];
        let m = find_mix(&host, &[]);
        assert!(
            m.as_ref().unwrap().to_string().contains("docker0 in ns10"),
            "{m:?}"
        );
        assert_eq!(mtus(m), (1450, 1500));
        // Watching only the container still reaches the root through its veth.
        assert!(find_mix(&host, &[30]).is_some());
    }

    #[test]
    fn a_veth_pair_with_two_mtus_mixes_across_namespaces() {
        let host = [
            ns(20, vec![link(2, "eth0", 1500, Some(5))]),
            ns(21, vec![link(5, "eth0", 1400, Some(2))]),
            ns(22, vec![link(2, "eth0", 9000, None)]),
        ];
        assert_eq!(mtus(find_mix(&host, &[])), (1500, 1400));
        // Only the pair's ends are joined: not an unrelated namespace
        // whose device happens to have ifindex 2.
        assert_eq!(find_mix(&host, &[22]), None);
    }

    #[test]
    fn down_devices_and_loopback_do_not_count() {
        let mut ifb = link(3, "ifb0", 1500, None);
        ifb.up = false;
        let host = [ns(10, vec![link(2, "eth0", 1400, None), ifb])];
        assert_eq!(find_mix(&host, &[]), None);
    }

    fn macvlan(ifindex: i32, name: &str, mtu: u32, lower: i32) -> Link {
        Link {
            kind: Some("macvlan".into()),
            ..link(ifindex, name, mtu, Some(lower))
        }
    }

    #[test]
    fn a_lower_device_elsewhere_joins_its_namespace() {
        // A macvlan in a container over the host's 9000 MTU NIC.
        let host = [
            ns(10, vec![link(4, "ens5", 9000, None)]),
            ns(30, vec![macvlan(2, "mv0", 1500, 4)]),
        ];
        assert_eq!(mtus(find_mix(&host, &[30])), (9000, 1500));
        // Elsewhere, a veth at ifindex 4 whose peer has ifindex 2 looks
        // like it points back at the macvlan: the real lower device must
        // still be joined.
        let host = [
            ns(10, vec![link(4, "ens5", 9000, None)]),
            ns(20, vec![link(4, "veth4", 1500, Some(2))]),
            ns(30, vec![macvlan(2, "mv0", 1500, 4)]),
        ];
        assert!(find_mix(&host, &[30]).is_some());
    }

    #[test]
    fn what_the_scan_cannot_see_keeps_the_check_on() {
        // The veth's other end is in a namespace no process or mount holds
        // where the scan looks.
        let host = [
            ns(10, vec![link(7, "veth7", 1500, Some(9))]),
            ns(20, vec![link(2, "eth0", 1500, None)]),
        ];
        assert!(matches!(find_mix(&host, &[]), Some(Mix::Unknown(_))));
        // Only where it could reach what is watched.
        assert_eq!(find_mix(&host, &[20]), None);
        let host = [ns(10, vec![link(2, "eth0", 1500, None)])];
        assert!(matches!(find_mix(&host, &[99]), Some(Mix::Unknown(_))));
    }

    #[test]
    fn this_host_scans() {
        let all = scan().expect("every namespace readable as root");
        let own = netns::own_inode().unwrap();
        assert!(all.iter().any(|n| n.inode == own && !n.links.is_empty()));
    }
}
