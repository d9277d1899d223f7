//! A namespace's TCP accept-queue overflows: `TcpExt: ListenOverflows`
//! and `ListenDrops` from /proc/thread-self/net/netstat, the listeners
//! whose accept queue holds connections (/proc/thread-self/net/tcp and
//! tcp6, where a listener's rx_queue is its accept queue) with the
//! process holding each, and `net.core.somaxconn` (per namespace). The
//! kernel frees the SYNs it turns away from a full queue as consumed, not
//! dropped: these counters are the only trace. Read from a thread inside
//! the namespace, with its topology.

use super::snmp::{hex_addr, owners, snmp_field};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Listeners kept per namespace: the fullest, bounded so a recording's
/// snapshot stays small.
const MAX_LISTENERS: usize = 16;

/// A listening TCP socket with connections waiting to be accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    pub local: IpAddr,
    pub port: u16,
    /// Connections established and not yet accepted.
    pub accept_queue: u64,
    pub inode: u64,
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenCounters {
    /// `TcpExt: ListenOverflows`: a connection found the accept queue full.
    pub overflows: Option<u64>,
    /// `overflows` when tracer first read this namespace (set by the
    /// topology cache): the difference is what overflowed during the run.
    #[serde(default)]
    pub overflows_at_start: Option<u64>,
    /// `TcpExt: ListenDrops`: every connection request a listener lost.
    pub drops: Option<u64>,
    /// net.core.somaxconn of the namespace: the most backlog listen() gets.
    pub somaxconn: Option<u64>,
    /// Listeners with a non-empty accept queue, fullest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Listener>,
}

impl ListenCounters {
    /// Reads the calling thread's namespace; what cannot be read is None.
    /// `TcpExt ListenOverflows` of the namespace the calling thread is in,
    /// and nothing else (see `Topology::listen_moved`).
    pub fn read_overflows_here() -> Option<u64> {
        let netstat = std::fs::read_to_string("/proc/thread-self/net/netstat").ok()?;
        snmp_field(&netstat, "TcpExt", "ListenOverflows")
    }

    pub fn read_here() -> ListenCounters {
        let read = |f: &str| std::fs::read_to_string(format!("/proc/thread-self/net/{f}")).ok();
        let netstat = read("netstat");
        let field = |name| {
            netstat
                .as_deref()
                .and_then(|t| snmp_field(t, "TcpExt", name))
        };
        let overflows = field("ListenOverflows");
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok());
        // Listeners only matter once the namespace has overflowed.
        let listeners = if overflows.unwrap_or(0) > 0 {
            waiting_listeners(&[read("tcp"), read("tcp6")])
        } else {
            Vec::new()
        };
        ListenCounters {
            overflows,
            overflows_at_start: None,
            drops: field("ListenDrops"),
            somaxconn,
            listeners,
        }
    }
}

fn waiting_listeners(texts: &[Option<String>]) -> Vec<Listener> {
    let mut ls: Vec<Listener> = texts
        .iter()
        .flatten()
        .flat_map(|t| t.lines().skip(1).filter_map(parse_listener))
        .filter(|l| l.accept_queue > 0)
        .collect();
    ls.sort_by_key(|l| std::cmp::Reverse(l.accept_queue));
    ls.truncate(MAX_LISTENERS);
    // Only the fullest one's process is looked up: the walk of every
    // process's descriptors is the cost, and the verdict names that one.
    if let Some(l) = ls.first_mut() {
        if let Some((pid, comm)) = owners([l.inode].into()).remove(&l.inode) {
            l.pid = Some(pid);
            l.comm = Some(comm);
        }
    }
    ls
}

/// A /proc/net/tcp line of a socket in state LISTEN (0A).
fn parse_listener(line: &str) -> Option<Listener> {
    let w: Vec<&str> = line.split_whitespace().collect();
    if *w.get(3)? != "0A" {
        return None;
    }
    let (addr, port) = w.get(1)?.split_once(':')?;
    let rx = w.get(4)?.split_once(':')?.1;
    Some(Listener {
        local: hex_addr(addr)?,
        port: u16::from_str_radix(port, 16).ok()?,
        accept_queue: u64::from_str_radix(rx, 16).ok()?,
        inode: w.get(9)?.parse().ok()?,
        pid: None,
        comm: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_listener_and_skips_connections() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            \x20  0: 0204BC0A:1C8F 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 5151 1\n\
            \x20  1: 0204BC0A:1C8F 0104BC0A:9C40 01 00000000:00000000 00:00000000 00000000     0        0 5152 1\n";
        let ls = waiting_listeners(&[Some(text.to_string())]);
        assert_eq!(ls.len(), 1);
        assert_eq!(ls[0].local, "10.188.4.2".parse::<IpAddr>().unwrap());
        assert_eq!(
            (ls[0].port, ls[0].accept_queue, ls[0].inode),
            (7311, 3, 5151)
        );
    }
}
