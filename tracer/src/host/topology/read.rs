//! Reading one namespace, from a thread inside it: links, addresses,
//! routes, rules, qdiscs and sysctls, and the namespaces its links lead to.

use super::*;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{bail, Context};
use netlink_packet_core::NLM_F_REQUEST;
use netlink_packet_route::AddressFamily;
use netlink_sys::{Socket, SocketAddr};

use crate::host::exhaustion::Exhaustion;
use crate::host::listen::ListenCounters;
use crate::host::netns::{self, NetnsInfo};
use crate::host::policy::FibRule;
use crate::host::qdisc::Qdisc;
use crate::host::route::Route;
use crate::host::snmp::UdpCounters;

pub(super) fn links_here(inode: u32) -> anyhow::Result<Vec<Link>> {
    let actual = netns::thread_inode().context("netns of reader thread")?;
    if actual != inode {
        bail!("path now opens netns {actual}, not {inode}");
    }
    dump_links(&mut Rtnl::open().context("rtnetlink socket")?)
}

/// Runs on the thread inside the netns.
pub(super) type Read = (
    Vec<Link>,
    Vec<Route>,
    Vec<FibRule>,
    Sysctls,
    Vec<Qdisc>,
    UdpCounters,
    ListenCounters,
    Exhaustion,
);

/// The links of a namespace as naming read them (addresses and peers
/// joined), with each device's IPv4 settings from the same dump.
pub(super) type Named = (Vec<Link>, HashMap<i32, DevConf>);

/// `named`: links read for naming a moment ago, used instead of dumping
/// them again (see `Topology::load`).
pub(super) fn read_here(expected: u32, named: Option<Named>) -> anyhow::Result<Read> {
    // The path may have been recycled (pid reuse) between lookup and setns.
    let actual = netns::thread_inode().context("netns of reader thread")?;
    if actual != expected {
        bail!("path now opens netns {actual}, not {expected}");
    }
    let mut nl = Rtnl::open().context("rtnetlink socket")?;
    let (mut links, devconf, addrs) = match named {
        Some((links, devconf)) => (links, devconf, None),
        None => {
            let (links, devconf) = dump_links_conf(&mut nl).context("dumping links")?;
            let addrs = dump_addrs(&mut nl).context("dumping addresses")?;
            (links, devconf, Some(addrs))
        }
    };
    let mut routes = dump_routes(&mut nl, AddressFamily::Inet).context("dumping IPv4 routes")?;
    match dump_routes(&mut nl, AddressFamily::Inet6) {
        Ok(r) => routes.extend(r),
        // IPv6 disabled (ipv6.disable=1): no v6 routes is the truth then.
        Err(_) if !Path::new("/proc/sys/net/ipv6").exists() => {}
        Err(e) => return Err(e.context("dumping IPv6 routes")),
    }
    let mut rules = dump_rules(&mut nl, AddressFamily::Inet).context("dumping IPv4 rules")?;
    // No IPv6 rules where IPv6 is off: the IPv4 ones still stand.
    rules.extend(dump_rules(&mut nl, AddressFamily::Inet6).unwrap_or_default());
    let sysctls = read_sysctls(&links, &devconf).context("reading sysctls")?;
    let txqlen: HashMap<i32, u32> = links.iter().map(|l| (l.ifindex, l.txqlen)).collect();
    // Queue disciplines only name a queue that drops; without them the
    // rest of the topology still stands.
    let qdiscs = dump_qdiscs(&mut nl, &txqlen).unwrap_or_default();
    if let Some(addrs) = addrs {
        join_links(&mut nl, &mut links, addrs, expected);
    }
    Ok((
        links,
        routes,
        rules,
        sysctls,
        qdiscs,
        UdpCounters::read_here(),
        ListenCounters::read_here(),
        Exhaustion::read_here(),
    ))
}

/// Links with their addresses and the namespaces of their peers, sorted
/// by ifindex.
pub(super) fn join_links(
    nl: &mut Rtnl,
    links: &mut [Link],
    addrs: Vec<(i32, IpAddr, u8)>,
    expected: u32,
) {
    let by_index: HashMap<i32, usize> = links
        .iter()
        .enumerate()
        .map(|(i, l)| (l.ifindex, i))
        .collect();
    for (ifindex, addr, len) in addrs {
        if let Some(&i) = by_index.get(&ifindex) {
            links[i].addrs.push((addr, len));
        }
    }

    let wanted: HashSet<i32> = links.iter().filter_map(|l| l.link_netnsid).collect();
    let nsids = resolve_nsids(nl, &wanted, expected);
    for l in links.iter_mut() {
        l.peer_netns = match l.link_netnsid {
            Some(id) => nsids.get(&id).copied(),
            None if l.link.is_some() => Some(expected),
            None => None,
        };
    }
    links.sort_by_key(|l| l.ifindex);
}

/// What naming needs of the namespace the thread is in: its links, their
/// addresses and peers (and the devices' IPv4 settings, which come in
/// the same dump); no routes, sysctls or queues.
pub(super) fn names_here(expected: u32) -> anyhow::Result<Named> {
    let actual = netns::thread_inode().context("netns of reader thread")?;
    if actual != expected {
        bail!("path now opens netns {actual}, not {expected}");
    }
    let mut nl = Rtnl::open().context("rtnetlink socket")?;
    let (mut links, devconf) = dump_links_conf(&mut nl).context("dumping links")?;
    let addrs = dump_addrs(&mut nl).context("dumping addresses")?;
    join_links(&mut nl, &mut links, addrs, expected);
    Ok((links, devconf))
}

/// Maps nsids (as seen from the current netns) to netns inodes.
///
/// The kernel only reports nsids, which are per-netns numbers. The reverse
/// mapping is to ask, for each live netns, "what nsid does it have here?":
/// RTM_GETNSID with NETNSA_FD. That query does not allocate ids (unlike
/// dumping a link does), so it changes nothing on the machine.
///
/// Asking every namespace made each read cost O(namespaces) (issue 22: a
/// bridge's namespace and each of its 1,000 peers), so the likely answers
/// are asked first (see [`NsidMemo`]) and the walk stops once all are found.
pub(super) fn resolve_nsids(nl: &mut Rtnl, wanted: &HashSet<i32>, own: u32) -> HashMap<i32, u32> {
    if wanted.is_empty() {
        return HashMap::new();
    }
    let all = netns::list();
    let by_inode: HashMap<u32, &NetnsInfo> = all.iter().map(|c| (c.inode, c)).collect();
    let mut out = NsidAnswers::known(own, wanted, &by_inode);
    if out.len() == wanted.len() {
        return out;
    }
    let first = NsidMemo::likely(own);
    let firsts: HashSet<u32> = first.iter().copied().collect();
    let answered: HashSet<u32> = out.values().copied().collect();
    let ordered = first
        .iter()
        .filter_map(|i| by_inode.get(i).copied())
        .chain(all.iter().filter(|c| !firsts.contains(&c.inode)));
    for cand in ordered {
        if cand.inode == own || answered.contains(&cand.inode) {
            continue;
        }
        let Ok(file) = File::open(&cand.path) else {
            continue;
        };
        // Trust the fd, not the listing: the path may have changed meaning.
        let Ok(inode) = file.metadata().map(|m| m.ino()) else {
            continue;
        };
        let Ok(inode) = u32::try_from(inode) else {
            continue;
        };
        if let Ok(Some(id)) = nl.nsid_of_fd(file.as_raw_fd()) {
            if wanted.contains(&id) {
                out.insert(id, inode);
                if out.len() == wanted.len() {
                    break;
                }
            }
        }
    }
    NsidMemo::note(own, out.values().copied());
    NsidAnswers::note(own, &out, &by_inode);
    out
}

/// Resolves, from a thread inside namespace `own`, the peers of its links
/// into other namespaces, so that a later read finds them answered (see
/// [`NsidAnswers`]): the MTU scan calls it for namespaces with many such
/// links (a bridge's), off the event path.
pub fn warm_peers_here(own: u32, links: &[Link]) {
    let wanted: HashSet<i32> = links.iter().filter_map(|l| l.link_netnsid).collect();
    if let Ok(mut nl) = Rtnl::open() {
        resolve_nsids(&mut nl, &wanted, own);
    }
}

/// nsid answers of the kernel, trusted while the namespace answered still
/// opens from the same path in the index: an nsid is only freed when the
/// namespace it names dies, and a death is an index event (runtimes
/// bind-mount their namespaces where the index watches; a `/proc/PID`
/// path goes with its process). A bridge's namespace with 1,000 ports
/// otherwise costs 1,000 opens and queries per read (issue 22). Inode and
/// path both recycled between two reads is what this cannot tell.
pub(super) struct NsidAnswers;

/// (namespace asked in, nsid) -> (inode, path it opened from).
pub(super) type Answers = HashMap<(u32, i32), (u32, std::path::PathBuf)>;

pub(super) static NSID_ANSWERS: std::sync::Mutex<Option<Answers>> = std::sync::Mutex::new(None);

impl NsidAnswers {
    fn known(
        own: u32,
        wanted: &HashSet<i32>,
        live: &HashMap<u32, &NetnsInfo>,
    ) -> HashMap<i32, u32> {
        let g = NSID_ANSWERS.lock().unwrap_or_else(|e| e.into_inner());
        let Some(m) = g.as_ref() else {
            return HashMap::new();
        };
        wanted
            .iter()
            .filter_map(|id| {
                let (inode, path) = m.get(&(own, *id))?;
                (live.get(inode)?.path == *path).then_some((*id, *inode))
            })
            .collect()
    }

    fn note(own: u32, found: &HashMap<i32, u32>, live: &HashMap<u32, &NetnsInfo>) {
        let mut g = NSID_ANSWERS.lock().unwrap_or_else(|e| e.into_inner());
        let m = g.get_or_insert_with(HashMap::new);
        if m.len() > 262_144 {
            // Churn: the answers of the dead are never asked again.
            m.retain(|_, (inode, path)| live.get(inode).is_some_and(|n| n.path == *path));
        }
        for (id, inode) in found {
            if let Some(n) = live.get(inode) {
                m.insert((own, *id), (*inode, n.path.clone()));
            }
        }
    }
}

/// Which namespaces a namespace's links led to, and back: a veth's two
/// ends each name the other's namespace, so once one side is resolved the
/// other side's answer is known to be likely. Answers are always asked
/// again of the kernel (nsids are reused); only the order comes from here.
pub(super) struct NsidMemo;

pub(super) static NSID_MEMO: std::sync::Mutex<Option<HashMap<u32, Vec<u32>>>> =
    std::sync::Mutex::new(None);

impl NsidMemo {
    fn likely(own: u32) -> Vec<u32> {
        let g = NSID_MEMO.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref()
            .and_then(|m| m.get(&own).cloned())
            .unwrap_or_default()
    }

    fn note(own: u32, peers: impl Iterator<Item = u32>) {
        let mut g = NSID_MEMO.lock().unwrap_or_else(|e| e.into_inner());
        let m = g.get_or_insert_with(HashMap::new);
        if m.len() > 65_536 {
            m.clear();
        }
        for p in peers {
            for (a, b) in [(own, p), (p, own)] {
                let v = m.entry(a).or_default();
                if !v.contains(&b) {
                    v.push(b);
                }
            }
        }
    }
}

/// A sysctl that may be absent or unreadable: None then.
pub(super) fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub(super) fn read_u32(path: &Path) -> io::Result<u32> {
    let s = fs::read_to_string(path)?;
    s.trim().parse().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

/// Must run on the thread inside the netns: /proc/sys/net resolves against
/// the reading thread's netns. The per-device values come from the link
/// dump (`devconf`: the same array `conf/<dev>/*` shows), not from three
/// files per device: a bridge's namespace with 1,000 ports was 3,000 file
/// reads on the event path (issue 22). `all` and `default` are files.
pub(super) fn read_sysctls(
    links: &[Link],
    devconf: &HashMap<i32, DevConf>,
) -> anyhow::Result<Sysctls> {
    let conf = Path::new("/proc/sys/net/ipv4/conf");
    let all = conf.join("all");
    let rp_filter_all =
        read_u32(&all.join("rp_filter")).with_context(|| format!("{}/rp_filter", all.display()))?;
    let mut rp_filter = HashMap::new();
    let mut ipv4_forwarding_dev = HashMap::new();
    let mut src_valid_mark = HashMap::new();
    // Only where it is on: the map stays empty on most hosts.
    if read_u32(&all.join("src_valid_mark")).is_ok_and(|v| v != 0) {
        src_valid_mark.insert("all".to_string(), true);
    }
    let default = conf.join("default");
    let default_conf = DevConf {
        forwarding: read_u32(&default.join("forwarding")).unwrap_or(0),
        rp_filter: read_u32(&default.join("rp_filter")).unwrap_or(0),
        src_valid_mark: read_u32(&default.join("src_valid_mark")).unwrap_or(0),
    };
    let named = links
        .iter()
        .filter_map(|l| Some((l.name.clone(), *devconf.get(&l.ifindex)?)));
    for (name, c) in std::iter::once(("default".to_string(), default_conf)).chain(named) {
        if c.src_valid_mark != 0 {
            src_valid_mark.insert(name.clone(), true);
        }
        ipv4_forwarding_dev.insert(name.clone(), c.forwarding != 0);
        rp_filter.insert(name, c.rp_filter);
    }
    let ipv4_forwarding = read_u32(&all.join("forwarding"))
        .with_context(|| format!("{}/forwarding", all.display()))?
        != 0;
    let ipv6_forwarding = read_u32(Path::new("/proc/sys/net/ipv6/conf/all/forwarding"))
        .map(|v| v != 0)
        .unwrap_or(false);
    Ok(Sysctls {
        rp_filter_all,
        rp_filter,
        src_valid_mark,
        ipv4_forwarding,
        ipv4_forwarding_dev,
        ipv6_forwarding,
        nft_genid: nft_genid(),
        rmem_max: read_u64(Path::new("/proc/sys/net/core/rmem_max")),
        rmem_default: read_u64(Path::new("/proc/sys/net/core/rmem_default")),
    })
}

/// The nftables generation id of the calling thread's netns, over
/// NETLINK_NETFILTER (`NFT_MSG_GETGEN`); None if nftables is absent.
pub(super) fn nft_genid() -> Option<u32> {
    const NETLINK_NETFILTER: isize = 12;
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NFT_MSG_GETGEN: u16 = 16;
    const NFTA_GEN_ID: u16 = 1;
    let mut sock = Socket::new(NETLINK_NETFILTER).ok()?;
    sock.bind_auto().ok()?;
    sock.connect(&SocketAddr::new(0, 0)).ok()?;
    sock.set_non_blocking(false).ok()?;
    // nlmsghdr (16) + nfgenmsg (4): family AF_UNSPEC, version 0, res_id 0.
    let mut req = Vec::with_capacity(20);
    req.extend_from_slice(&20u32.to_ne_bytes());
    req.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN).to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[0, 0, 0, 0]);
    sock.send(&req, 0).ok()?;
    // Never wait for an answer that does not come.
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: setsockopt on our own socket with a timeval we own.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    let mut buf = vec![0u8; 4096];
    let n = sock.recv(&mut &mut buf[..], 0).ok()?;
    parse_genid(&buf[..n], NFTA_GEN_ID)
}

/// NFTA_GEN_ID (big endian) from an NFT_MSG_NEWGEN reply.
pub(super) fn parse_genid(msg: &[u8], attr: u16) -> Option<u32> {
    if msg.len() < 20 {
        return None;
    }
    let len = u32::from_ne_bytes(msg[0..4].try_into().ok()?) as usize;
    let ty = u16::from_ne_bytes(msg[4..6].try_into().ok()?);
    // NLMSG_ERROR (2): nftables not available.
    if ty == 2 || len > msg.len() {
        return None;
    }
    let mut at = 20;
    while at + 4 <= len {
        let alen = u16::from_ne_bytes(msg[at..at + 2].try_into().ok()?) as usize;
        let aty = u16::from_ne_bytes(msg[at + 2..at + 4].try_into().ok()?) & 0x3fff;
        if alen < 4 || at + alen > len {
            return None;
        }
        if aty == attr && alen >= 8 {
            return Some(u32::from_be_bytes(msg[at + 4..at + 8].try_into().ok()?));
        }
        at += (alen + 3) & !3;
    }
    None
}

// ---------------------------------------------------------------------------
// rtnetlink plumbing
