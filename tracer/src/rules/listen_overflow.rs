//! `listen_overflow`: connections turned away because a listener's accept
//! queue was full. The kernel frees those SYNs (and final ACKs) as
//! consumed, not dropped, so no drop shows it: the proof is the
//! namespace's `TcpExt: ListenOverflows` rising while tracer watches,
//! read with the topology of every watched namespace each tick. The
//! listener named is the fullest one the namespace lists (its accept
//! queue, a full one holding backlog + 1), with its process.
//!
//! Tier: proven. The counter counts nothing else.

use super::ctx::{Ctx, Finding};
use super::fix::{host_port, q, Fix};
use super::key::Key;
use super::{Rule, Tier};
use serde_json::json;

pub struct ListenOverflow;

impl Rule for ListenOverflow {
    fn kinds(&self) -> &'static [&'static str] {
        &["listen_overflow"]
    }

    fn on_fact(&mut self, _fact: &super::Fact, _cx: &mut Ctx) {}

    fn tick(&mut self, cx: &mut Ctx) {
        for ns in cx.watched() {
            check(ns, cx);
        }
    }

    fn finish(&mut self, cx: &mut Ctx) {
        self.tick(cx);
    }
}

fn check(netns: u32, cx: &mut Ctx) {
    let key = Key::ListenOverflow { netns };
    if cx.concluded(&key).is_some() {
        return;
    }
    if !cx.listen_moved(netns) {
        return;
    }
    let Some(topo) = cx.topo(netns) else { return };
    let c = &topo.listen;
    let (Some(now), Some(base)) = (c.overflows, c.overflows_at_start) else {
        return;
    };
    if now <= base {
        return;
    }
    let lost = now - base;
    cx.tally(&key, cx.now_ns);
    let l = c.listeners.first();
    let who = l.map_or("a listener".to_string(), |l| {
        format!("the listener on {}", host_port(l.local, l.port))
    });
    let holder = l
        .and_then(|l| {
            Some(format!(
                " It is held by {} (pid {}).",
                l.comm.as_ref()?,
                l.pid?
            ))
        })
        .unwrap_or_default();
    // A full queue holds backlog + 1: the backlog in force.
    let backlog = l.map(|l| l.accept_queue.saturating_sub(1));
    let somaxconn = c.somaxconn;
    let capped = matches!((backlog, somaxconn), (Some(b), Some(m)) if b >= m);
    let queue = l.map_or(String::new(), |l| {
        format!(" ({} connections waiting to be accepted)", l.accept_queue)
    });
    let summary = format!(
        "The accept queue of {who} is full{queue}: the kernel turned away {lost} connection attempts while tracer watched (TcpExt ListenOverflows), freeing them without a drop. The application accepts slower than clients connect, or listens with too small a backlog.{holder}"
    );
    // Room for what was lost on top of what waits, at least 4096.
    let want = (backlog.unwrap_or(0) + lost).next_power_of_two().max(4096);
    let hint = cx.ns_hint(netns);
    let sysctl = format!("{hint}sysctl -w net.core.somaxconn={want}");
    let ss = match l {
        Some(l) => format!("{hint}ss -ltnp {}", q(&format!("sport = :{}", l.port))),
        None => format!("{hint}ss -ltnp"),
    };
    let mut fix = Vec::new();
    let raise = Fix::run(
        format!(
            "listen() is capped at net.core.somaxconn{} (per namespace): raise it, then restart the listener so it asks again: {sysctl}",
            somaxconn.map_or(String::new(), |m| format!(" (now {m})"))
        ),
        vec![sysctl],
    );
    let app = Fix::advice(format!(
        "Have the application accept faster (more workers) or call listen() with a larger backlog (such as {want}); the backlog in force is {}",
        backlog.map_or("unknown".to_string(), |b| b.to_string())
    ));
    // The limit that binds comes first.
    if capped {
        fix.extend([raise, app]);
    } else {
        fix.extend([app, raise]);
    }
    fix.push(Fix::advice(format!(
        "See the listener, its queue (Recv-Q) and backlog (Send-Q): {ss}"
    )));
    let evidence = json!({
        "counter": "TcpExt: ListenOverflows",
        "overflows": lost,
        "listen_overflows": now,
        "listen_drops": c.drops,
        "local_addr": l.map(|l| l.local),
        "local_port": l.map(|l| l.port),
        "accept_queue": l.map(|l| l.accept_queue),
        "backlog": backlog,
        "somaxconn": somaxconn,
        "pid": l.and_then(|l| l.pid),
        "comm": l.and_then(|l| l.comm.clone()),
        "socket_inode": l.map(|l| l.inode),
    });
    cx.conclude(Finding {
        key,
        kind: "listen_overflow",
        tier: Tier::Proven,
        netns,
        summary,
        evidence,
        fix,
    });
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::Tier;
    use crate::host::listen::{ListenCounters, Listener};

    fn ns(overflows: u64, at_start: u64, backlog: u64, somaxconn: u64) -> Fake {
        let mut t = topo(OWN, None, vec![], vec![]);
        t.listen = ListenCounters {
            overflows: Some(overflows),
            overflows_at_start: Some(at_start),
            drops: Some(overflows),
            somaxconn: Some(somaxconn),
            listeners: vec![Listener {
                local: ip("10.9.4.4"),
                port: 9931,
                accept_queue: backlog + 1,
                inode: 77,
                pid: Some(4242),
                comm: Some("slowd".into()),
            }],
        };
        Fake::with(vec![t])
    }

    #[test]
    fn a_rise_while_watching_is_proven_with_no_drop() {
        let v = run(&mut ns(40, 10, 128, 4096), vec![], 0);
        assert_eq!(kinds(&v), [("listen_overflow", Tier::Proven)]);
        let e = &v[0].evidence;
        assert_eq!(
            (e["overflows"].as_u64(), e["backlog"].as_u64()),
            (Some(30), Some(128))
        );
        assert_eq!(e["comm"], "slowd");
        // The application's backlog binds, not somaxconn: advice first.
        assert!(v[0].fix_commands[0].is_empty());
        assert_eq!(v[0].fix_commands[1], ["sysctl -w net.core.somaxconn=4096"]);
    }

    #[test]
    fn somaxconn_first_where_it_caps_the_backlog() {
        let v = run(&mut ns(40, 10, 64, 64), vec![], 0);
        assert_eq!(v[0].fix_commands[0], ["sysctl -w net.core.somaxconn=4096"]);
    }

    /// Overflows counted before tracer looked are not this run's.
    #[test]
    fn an_old_count_is_silent() {
        assert!(run(&mut ns(40, 40, 64, 64), vec![], 0).is_empty());
    }
}
