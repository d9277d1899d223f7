//! The UDP receive-buffer error counters of a namespace, from
//! /proc/thread-self/net/snmp and snmp6: what the kernel counts each time
//! a datagram finds its socket's receive buffer full; and the UDP sockets
//! that dropped (/proc/thread-self/net/udp and udp6), with the process
//! holding each. Read from a thread inside the namespace; `/proc/net`
//! would follow the process's main thread into its own namespace instead.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Sockets kept per namespace: enough to name the ones that drop on a
/// busy host, bounded so a recording's snapshot stays small.
const MAX_SOCKETS: usize = 64;

/// A UDP socket of the namespace whose drop counter is not zero.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpSocket {
    pub local: IpAddr,
    pub port: u16,
    /// Bytes waiting to be read.
    pub rx_queue: u64,
    /// The socket's own drop counter (sk_drops).
    pub drops: u64,
    pub inode: u64,
    /// A process holding it, if one was found.
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

/// Receive-buffer errors counted in one namespace when it was read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpCounters {
    /// `Udp: RcvbufErrors` (IPv4).
    pub rcvbuf_errors: Option<u64>,
    /// `Udp6RcvbufErrors` (IPv6; None when IPv6 is disabled).
    pub rcvbuf_errors6: Option<u64>,
    /// The sockets that dropped, most drops first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sockets: Vec<UdpSocket>,
}

impl UdpCounters {
    /// Reads the calling thread's namespace; a counter that cannot be
    /// read is None rather than an error, since no rule needs it to stand.
    pub fn read_here() -> UdpCounters {
        let read = |f: &str| std::fs::read_to_string(format!("/proc/thread-self/net/{f}")).ok();
        UdpCounters {
            rcvbuf_errors: read("snmp").and_then(|t| snmp_field(&t, "Udp", "RcvbufErrors")),
            rcvbuf_errors6: read("snmp6").and_then(|t| snmp6_field(&t, "Udp6RcvbufErrors")),
            sockets: dropping_sockets(&[read("udp"), read("udp6")]),
        }
    }

    /// The socket bound to `addr:port`, or to the wildcard address of its
    /// family on that port.
    pub fn socket(&self, addr: IpAddr, port: u16) -> Option<&UdpSocket> {
        let any = match addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let on = |a: IpAddr| self.sockets.iter().find(|s| s.port == port && s.local == a);
        on(addr).or_else(|| on(any))
    }
}

/// The sockets of /proc/net/udp and udp6 texts with drops, and who holds
/// them (a scan of /proc/*/fd, only when some socket dropped).
fn dropping_sockets(texts: &[Option<String>]) -> Vec<UdpSocket> {
    let mut socks: Vec<UdpSocket> = texts
        .iter()
        .flatten()
        .flat_map(|t| t.lines().skip(1).filter_map(parse_udp_line))
        .filter(|s| s.drops > 0)
        .collect();
    socks.sort_by_key(|s| std::cmp::Reverse(s.drops));
    socks.truncate(MAX_SOCKETS);
    if !socks.is_empty() {
        let owners = owners(socks.iter().map(|s| s.inode).collect());
        for s in &mut socks {
            if let Some((pid, comm)) = owners.get(&s.inode) {
                s.pid = Some(*pid);
                s.comm = Some(comm.clone());
            }
        }
    }
    socks
}

/// One line of /proc/net/udp{,6}: `sl local rem st tx:rx tr:when retrnsmt
/// uid timeout inode ref pointer drops`.
fn parse_udp_line(line: &str) -> Option<UdpSocket> {
    let w: Vec<&str> = line.split_whitespace().collect();
    let (addr, port) = w.get(1)?.split_once(':')?;
    let rx = w.get(4)?.split_once(':')?.1;
    Some(UdpSocket {
        local: hex_addr(addr)?,
        port: u16::from_str_radix(port, 16).ok()?,
        rx_queue: u64::from_str_radix(rx, 16).ok()?,
        drops: w.get(12)?.parse().ok()?,
        inode: w.get(9)?.parse().ok()?,
        pid: None,
        comm: None,
    })
}

/// The kernel prints an address as 32-bit words in host byte order.
pub(super) fn hex_addr(h: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(h.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    match h.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// inode -> (pid, comm) for the wanted socket inodes, from /proc/*/fd.
pub(super) fn owners(mut wanted: std::collections::HashSet<u64>) -> HashMap<u64, (u32, String)> {
    let mut found = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // Processes come and go mid-scan: an unreadable one is skipped.
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let inode = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok());
            if let Some(i) = inode.filter(|i| wanted.remove(i)) {
                let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                found.insert(i, (pid, comm.trim().to_string()));
            }
        }
        if wanted.is_empty() {
            break;
        }
    }
    found
}

/// /proc/net/snmp gives each protocol two lines: `Udp: Name Name ...`
/// then `Udp: value value ...`.
pub(super) fn snmp_field(text: &str, proto: &str, name: &str) -> Option<u64> {
    let tag = format!("{proto}:");
    let mut lines = text
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(&tag));
    let names = lines.next()?;
    let values = lines.next()?;
    let at = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// /proc/net/snmp6 has one `Name value` pair per line.
fn snmp6_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some(name)).then(|| w.next()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_rcvbuf_columns() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 10 2 7 4 7 0\n\
                    UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    UdpLite: 0 0 0 0 99 0\n";
        assert_eq!(snmp_field(snmp, "Udp", "RcvbufErrors"), Some(7));
        assert_eq!(snmp_field(snmp, "Udp", "Nope"), None);
        let snmp6 = "Udp6InErrors                    	5\nUdp6RcvbufErrors                	3\n";
        assert_eq!(snmp6_field(snmp6, "Udp6RcvbufErrors"), Some(3));
        assert_eq!(snmp6_field(snmp6, "Udp6RcvbufErrorsX"), None);
    }

    #[test]
    fn reads_udp_sockets() {
        let v4 = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
             \x20 12: {}:18F5 00000000:0000 07 00000000:00000A00 00:00000000 00000000     0        0 4242 2 0000000000000000 17\n",
            hex(&[10, 61, 37, 2])
        );
        let s = parse_udp_line(v4.lines().nth(1).unwrap()).unwrap();
        assert_eq!(s.local, "10.61.37.2".parse::<IpAddr>().unwrap());
        assert_eq!(
            (s.port, s.rx_queue, s.drops, s.inode),
            (6389, 2560, 17, 4242)
        );
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&[0xfd, 0x61, 0, 0x37]);
        b[15] = 2;
        let a: String = b.chunks(4).map(hex).collect();
        assert_eq!(hex_addr(&a), Some("fd61:37::2".parse().unwrap()));
        let c = UdpCounters {
            sockets: vec![UdpSocket {
                local: "0.0.0.0".parse().unwrap(),
                ..s
            }],
            ..Default::default()
        };
        assert_eq!(
            c.socket("10.61.37.2".parse().unwrap(), 6389).unwrap().inode,
            4242
        );
        assert!(c.socket("fd61:37::2".parse().unwrap(), 6389).is_none());
    }

    /// A word as the kernel prints it: the bytes in memory order, read as
    /// a host-order u32.
    fn hex(bytes: &[u8]) -> String {
        format!("{:08X}", u32::from_ne_bytes(bytes.try_into().unwrap()))
    }

    #[test]
    fn reads_this_namespace() {
        // Every Linux with UDP has the IPv4 counter.
        assert!(UdpCounters::read_here().rcvbuf_errors.is_some());
    }
}
