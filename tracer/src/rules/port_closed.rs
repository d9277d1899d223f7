//! `port_closed`: `NO_SOCKET` for a UDP datagram or a TCP SYN. Nothing
//! listens: the peer is refused (RST, ICMP port unreachable), not lost,
//! so this is information, never a fault.

use super::ctx::{Ctx, Finding};
use super::fix::{host_port, Fix};
use super::key::Key;
use super::{Fact, Rule, Tier};
use crate::events::reason::Reason;
use crate::events::record::Proto;
use serde_json::json;

pub struct PortClosed;

impl Rule for PortClosed {
    fn kinds(&self) -> &'static [&'static str] {
        &["port_closed"]
    }

    fn on_fact(&mut self, fact: &Fact, cx: &mut Ctx) {
        let Fact::Drop(d) = fact else { return };
        if d.reason != Reason::NO_SOCKET {
            return;
        }
        let (Some(proto), Some(dst), Some(port)) = (&d.proto, d.dst, d.dport) else {
            return;
        };
        // A TCP connection attempt is a SYN; late segments of a closed
        // connection also hit NO_SOCKET and mean nothing.
        if !(*proto == Proto::Udp || (*proto == Proto::Tcp && d.tcp_flags.as_deref() == Some("S")))
        {
            return;
        }
        let key = Key::PortClosed {
            netns: d.netns,
            proto: *proto,
            dst,
            port,
        };
        cx.tally(&key, d.ts_ns);
        let at = host_port(dst, port);
        let summary = format!(
            "Nothing listens on {proto} {at}: the peer is refused ({}), not lost.",
            if *proto == Proto::Tcp {
                "RST"
            } else {
                "ICMP port unreachable"
            }
        );
        // Starting the service is the user's: advice only.
        let fix = vec![Fix::advice(format!(
            "Start the service on {at}, or point the client at the right port; {}ss -lnp shows what listens",
            cx.ns_hint(d.netns)
        ))];
        let evidence = json!({"proto": proto, "dst": dst, "dport": port, "src": d.src});
        cx.conclude(Finding {
            key,
            kind: "port_closed",
            tier: Tier::Info,
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
    use crate::events::record::Family;
    use crate::events::record::Proto;

    #[test]
    fn a_closed_port_is_information_not_a_fault() {
        let mut d = drop(Reason::NO_SOCKET, 1_000);
        d.proto = Some(Proto::Udp);
        d.family = Some(Family::Ipv6);
        d.dst = Some(ip("fd00::1"));
        d.dport = Some(53);
        let mut late = tcp(drop(Reason::NO_SOCKET, 2_000), "10.0.0.1", 1, "10.0.0.2", 2);
        late.tcp_flags = Some("F.".into());
        let v = run(
            &mut Fake::default(),
            vec![Fact::Drop(d), Fact::Drop(late)],
            0,
        );
        assert_eq!(kinds(&v), [("port_closed", Tier::Info)]);
        assert!(!v[0].fault);
        assert!(
            v[0].summary.contains("udp [fd00::1]:53"),
            "{}",
            v[0].summary
        );
    }
}
