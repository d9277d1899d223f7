//! `socket_buffer_full`: a socket's receive buffer was full when a
//! datagram arrived for it (`SOCKET_RCVBUFF`: UDP, raw and ICMP sockets).
//! The application reads slower than its traffic arrives, or asks for
//! too small a buffer. Names the socket (protocol, local address and
//! port), the namespace's receive-buffer error counter and the
//! `net.core.rmem_*` limits in force.
//!
//! Tier: proven. The kernel itself says the buffer was full; each such
//! datagram is lost to the application.

use super::ctx::{Ctx, Finding};
use super::fix::{host_port, q, Fix};
use super::key::Key;
use super::{Fact, Rule, Tier};
use crate::events::reason::Reason;
use crate::events::record::Proto;
use serde_json::json;

pub struct SocketBufferFull;

/// What to suggest for net.core.rmem_max when its value is unknown: 8 MiB,
/// a common size for busy UDP receivers.
const RMEM_MAX_FALLBACK: u64 = 8 << 20;

impl Rule for SocketBufferFull {
    fn kinds(&self) -> &'static [&'static str] {
        &["socket_buffer_full"]
    }

    fn on_fact(&mut self, fact: &Fact, cx: &mut Ctx) {
        let Fact::Drop(d) = fact else { return };
        if d.reason != Reason::SOCKET_RCVBUFF {
            return;
        }
        // A datagram socket is found by the packet's destination: that is
        // the socket's local address and port.
        let port = if matches!(d.proto, Some(Proto::Udp)) {
            d.dport.unwrap_or(0)
        } else {
            0
        };
        let key = Key::SocketBufferFull {
            netns: d.netns,
            proto: d.proto,
            dst: d.dst,
            port,
        };
        cx.tally(&key, d.ts_ns);
        if cx.concluded(&key).is_some() {
            return;
        }
        let topo = cx.topo(d.netns);
        let sysctls = topo.as_ref().map(|t| &t.sysctls);
        let rmem_max = sysctls.and_then(|s| s.rmem_max);
        let rmem_default = sysctls.and_then(|s| s.rmem_default);
        // The namespace's counter for this family, as read with its
        // topology: shown only when it already counted errors, since a
        // read that came before these drops would seem to deny them.
        let v6 = d.dst.is_some_and(|a| a.is_ipv6());
        let counter = topo
            .as_ref()
            .and_then(|t| {
                if v6 {
                    t.udp.rcvbuf_errors6
                } else {
                    t.udp.rcvbuf_errors
                }
            })
            .filter(|&n| n > 0 && d.proto == Some(Proto::Udp));
        // The socket as the namespace listed it (only sockets that had
        // dropped, read with the topology), and who holds it.
        let sock = match (d.dst, d.proto) {
            (Some(a), Some(Proto::Udp)) if port > 0 => {
                topo.as_ref().and_then(|t| t.udp.socket(a, port).cloned())
            }
            _ => None,
        };
        let holder = sock.as_ref().and_then(|s| match (&s.comm, s.pid) {
            (Some(c), Some(p)) => Some(format!(" It is held by {c} (pid {p}).")),
            _ => None,
        });
        let proto = d.proto.map(|p| p.to_string());
        let proto_text = proto.as_deref().unwrap_or("a");
        let socket = match (d.dst, port) {
            (Some(a), p) if p > 0 => host_port(a, p),
            (Some(a), _) => a.to_string(),
            (None, _) => "an unknown address".to_string(),
        };
        let summary = format!(
            "The receive buffer of the {proto_text} socket on {socket} is full: the kernel drops what arrives faster than the application reads it ({}).{}",
            d.reason,
            holder.unwrap_or_default()
        );
        let hint = cx.ns_hint(d.netns);
        let ss = match d.proto {
            Some(Proto::Udp) if port > 0 => {
                format!("{hint}ss -uanpm {}", q(&format!("sport = :{port}")))
            }
            Some(Proto::Udp) => format!("{hint}ss -uanpm"),
            _ => format!("{hint}ss -wanpm"),
        };
        // Twice the ceiling in force (or a common size), so SO_RCVBUF has
        // room to grow past what filled up here.
        let target = rmem_max.map_or(RMEM_MAX_FALLBACK, |m| (m * 2).max(RMEM_MAX_FALLBACK));
        let now = |v: Option<u64>| v.map_or(String::new(), |v| format!(" (now {v})"));
        let rmem_max_cmd = format!("sysctl -w net.core.rmem_max={target}");
        let rmem_default_cmd = format!("sysctl -w net.core.rmem_default={}", target / 2);
        // The root cause first: a reader slower than its senders.
        let fix = vec![
            Fix::advice(format!(
                "Have the application drain it faster (more reader threads, recvmmsg, SO_REUSEPORT) or ask for a bigger buffer with setsockopt(SO_RCVBUF); the kernel caps that at net.core.rmem_max{}",
                now(rmem_max)
            )),
            Fix::run(
                format!(
                    "Give SO_RCVBUF room, on the host (net.core.rmem_max is host-wide, read-only inside a namespace): {rmem_max_cmd}"
                ),
                vec![rmem_max_cmd],
            ),
            Fix::run(
                format!(
                    "For applications that set no SO_RCVBUF, raise the default, also host-wide: {rmem_default_cmd}{}",
                    now(rmem_default)
                ),
                vec![rmem_default_cmd],
            ),
            // Looking is not fixing: advice, with no command to apply.
            Fix::advice(format!(
                "See the socket, the process holding it, its queue (Recv-Q) and buffer (skmem rb): {ss}"
            )),
        ];
        let evidence = json!({
            "reason": d.reason,
            "proto": proto,
            "local_addr": d.dst,
            "local_port": (port > 0).then_some(port),
            "src": d.src,
            "sport": d.sport,
            "ifname": d.ifname,
            "len": d.len,
            "kernel_counter": counter.map(|_| if v6 { "Udp6RcvbufErrors" } else { "Udp: RcvbufErrors" }),
            "kernel_counter_value": counter,
            "pid": sock.as_ref().and_then(|s| s.pid),
            "comm": sock.as_ref().and_then(|s| s.comm.clone()),
            "socket_inode": sock.as_ref().map(|s| s.inode),
            "socket_drops": sock.as_ref().map(|s| s.drops),
            "socket_rx_queue": sock.as_ref().map(|s| s.rx_queue),
            "rmem_max": rmem_max,
            "rmem_default": rmem_default,
        });
        cx.conclude(Finding {
            key,
            kind: "socket_buffer_full",
            tier: Tier::Proven,
            netns: d.netns,
            summary,
            evidence,
            fix,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{Fact, Tier};
    use crate::events::record::Proto;

    fn full(ts: u64, dst: &str, port: u16) -> Fact {
        let mut d = drop(Reason::SOCKET_RCVBUFF, ts);
        d.proto = Some(Proto::Udp);
        d.src = Some(ip("10.77.1.9"));
        d.dst = Some(ip(dst));
        d.sport = Some(40000);
        d.dport = Some(port);
        Fact::Drop(d)
    }

    #[test]
    fn a_full_socket_is_proven_once_per_socket() {
        let mut t = topo(NS, Some("rx"), vec![], vec![]);
        t.sysctls.rmem_max = Some(4194304);
        t.sysctls.rmem_default = Some(212992);
        t.udp.rcvbuf_errors = Some(512);
        t.udp.sockets.push(crate::host::snmp::UdpSocket {
            local: ip("0.0.0.0"),
            port: 6111,
            rx_queue: 4608,
            drops: 40,
            inode: 99,
            pid: Some(4321),
            comm: Some("slowrx".into()),
        });
        let mut src = Fake::with(vec![t]);
        let v = run(
            &mut src,
            vec![
                full(1_000, "10.77.2.2", 6111),
                full(2_000, "10.77.2.2", 6111),
                full(3_000, "fd77::2", 6112),
            ],
            0,
        );
        assert_eq!(
            kinds(&v),
            [
                ("socket_buffer_full", Tier::Proven),
                ("socket_buffer_full", Tier::Proven)
            ]
        );
        assert!(
            v[0].summary.contains("udp socket on 10.77.2.2:6111"),
            "{}",
            v[0].summary
        );
        assert!(
            v[0].summary.ends_with("It is held by slowrx (pid 4321)."),
            "{}",
            v[0].summary
        );
        assert_eq!(v[0].evidence["socket_drops"], 40);
        assert!(v[1].summary.contains("[fd77::2]:6112"), "{}", v[1].summary);
        assert!(v[1].evidence["pid"].is_null());
        assert_eq!(v[0].evidence["kernel_counter_value"], 512);
        // Read before any IPv6 error: not shown rather than shown as 0.
        assert!(v[1].evidence["kernel_counter"].is_null());
        assert_eq!(v[0].evidence["rmem_max"], 4194304);
        let fix = v[0].fix.join("\n");
        assert!(
            fix.contains("ip netns exec rx ss -uanpm 'sport = :6111'"),
            "{fix}"
        );
        // Host-wide knobs: never prefixed with the namespace.
        assert!(fix.contains("\nGive SO_RCVBUF room, on the host (net.core.rmem_max is host-wide, read-only inside a namespace): sysctl -w net.core.rmem_max=8388608"), "{fix}");
    }

    #[test]
    fn other_reasons_are_not_a_full_buffer() {
        let mut d = drop(Reason::NO_SOCKET, 1_000);
        d.proto = Some(Proto::Udp);
        assert!(run(&mut Fake::default(), vec![Fact::Drop(d)], 0).is_empty());
    }
}
