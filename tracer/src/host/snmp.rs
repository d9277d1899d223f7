//! The UDP receive-buffer error counters of a namespace, from
//! /proc/thread-self/net/snmp and snmp6: what the kernel counts each time
//! a datagram finds its socket's receive buffer full. Read from a thread
//! inside the namespace; `/proc/net` would follow the process's main
//! thread into its own namespace instead.

use serde::{Deserialize, Serialize};

/// Receive-buffer errors counted in one namespace when it was read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpCounters {
    /// `Udp: RcvbufErrors` (IPv4).
    pub rcvbuf_errors: Option<u64>,
    /// `Udp6RcvbufErrors` (IPv6; None when IPv6 is disabled).
    pub rcvbuf_errors6: Option<u64>,
}

impl UdpCounters {
    /// Reads the calling thread's namespace; a counter that cannot be
    /// read is None rather than an error, since no rule needs it to stand.
    pub fn read_here() -> UdpCounters {
        let read = |f: &str| std::fs::read_to_string(format!("/proc/thread-self/net/{f}")).ok();
        UdpCounters {
            rcvbuf_errors: read("snmp").and_then(|t| snmp_field(&t, "Udp", "RcvbufErrors")),
            rcvbuf_errors6: read("snmp6").and_then(|t| snmp6_field(&t, "Udp6RcvbufErrors")),
        }
    }
}

/// /proc/net/snmp gives each protocol two lines: `Udp: Name Name ...`
/// then `Udp: value value ...`.
fn snmp_field(text: &str, proto: &str, name: &str) -> Option<u64> {
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
    fn reads_this_namespace() {
        // Every Linux with UDP has the IPv4 counter.
        assert!(UdpCounters::read_here().rcvbuf_errors.is_some());
    }
}
