//! `qdisc_drop`: a queue discipline on the device the packet was leaving
//! by dropped it (`QDISC_DROP` and the finer reasons of newer kernels).
//! Names the qdisc, on which device, and the limit it hit.
//!
//! Tiers: a full queue (tail drop, shaper backlog, per-flow limit) or a
//! netem configured to lose packets proves that packets die there; an
//! AQM drop (`QDISC_CONGESTED`: codel, fq_codel, pie) is the queue
//! telling TCP to slow down, working as designed: information.

use super::ctx::{Ctx, Finding};
use super::fix::{q, Fix};
use super::key::Key;
use super::{Fact, Rule, Tier};
use crate::events::reason::Reason;
use crate::events::record::DropRecord;
use crate::events::record::Proto;
use crate::host::qdisc::{rate, Qdisc};
use serde_json::json;

pub struct QdiscDrop;

/// The active queue managers, whose QDISC_CONGESTED drops are their way
/// of telling senders to slow down.
const AQM: &[&str] = &[
    "codel", "fq_codel", "pie", "fq_pie", "red", "choke", "sfb", "cake",
];

/// Every drop reason a qdisc gives, and the qdisc kinds that give it
/// (empty: any). Up to 6.18 they are `enum skb_drop_reason` members;
/// kernels after 6.18 keep only QDISC_DROP there and move the finer ones
/// into `enum qdisc_drop_reason`, named by the kernel's BTF as
/// QDISC_DROP_* (btf.rs): both generations are listed.
const REASONS: &[(Reason, &[&str])] = &[
    (Reason::QDISC_DROP, &[]),
    (Reason::QDISC_OVERLIMIT, &[]),
    (Reason::QDISC_CONGESTED, AQM),
    (Reason::CAKE_FLOOD, &["cake"]),
    (Reason::FQ_BAND_LIMIT, &["fq"]),
    (Reason::FQ_HORIZON_LIMIT, &["fq"]),
    (Reason::FQ_FLOW_LIMIT, &["fq"]),
    // enum qdisc_drop_reason, as 7.2 has it.
    (Reason::QDISC_DROP_GENERIC, &[]),
    (Reason::QDISC_DROP_OVERLIMIT, &[]),
    (Reason::QDISC_DROP_CONGESTED, AQM),
    (
        Reason::QDISC_DROP_MAXFLOWS,
        &["fq_codel", "fq_pie", "sfq", "hhf"],
    ),
    (Reason::QDISC_DROP_FLOOD_PROTECTION, &["cake"]),
    (Reason::QDISC_DROP_BAND_LIMIT, &["fq"]),
    (Reason::QDISC_DROP_HORIZON_LIMIT, &["fq"]),
    (Reason::QDISC_DROP_FLOW_LIMIT, &["fq"]),
    (Reason::QDISC_DROP_L4S_STEP_NON_ECN, &["dualpi2"]),
];

/// Whether the reason is an AQM's congestion signal, in either naming.
fn is_aqm(reason: &Reason) -> bool {
    [Reason::QDISC_CONGESTED, Reason::QDISC_DROP_CONGESTED].contains(reason)
}

/// The qdisc that most likely dropped: one of the kinds the reason
/// belongs to, else the one whose drop counter is highest, else a netem
/// set to lose packets, else the root.
fn culprit<'a>(qdiscs: &[&'a Qdisc], kinds: &[&str]) -> Option<&'a Qdisc> {
    let of_kind: Vec<&Qdisc> = qdiscs
        .iter()
        .copied()
        .filter(|q| kinds.is_empty() || kinds.contains(&q.kind.as_str()))
        .collect();
    let pool = if of_kind.is_empty() { qdiscs } else { &of_kind };
    pool.iter()
        .copied()
        .filter(|q| q.stats.drops > 0)
        .max_by_key(|q| q.stats.drops)
        .or_else(|| pool.iter().copied().find(|q| q.limits.loss_pct.is_some()))
        .or_else(|| pool.iter().copied().find(|q| q.parent == "root"))
        .or_else(|| pool.first().copied())
}

impl Rule for QdiscDrop {
    fn kinds(&self) -> &'static [&'static str] {
        &["qdisc_drop"]
    }

    fn on_fact(&mut self, fact: &Fact, cx: &mut Ctx) {
        let Fact::Drop(d) = fact else { return };
        let Some(&(_, kinds)) = REASONS.iter().find(|(r, _)| *r == d.reason) else {
            return;
        };
        if d.ifindex <= 0 {
            return;
        }
        let key = Key::Qdisc {
            netns: d.netns,
            ifindex: d.ifindex,
        };
        cx.tally(&key, d.ts_ns);
        if cx.concluded(&key).is_some() {
            return;
        }
        let mut topo = cx.topo(d.netns);
        // No queue known on the device: the copy may predate it or its
        // qdisc (a bridge made and brought up a moment ago, whose
        // noqueue frees the reports of its bring-up). Read it once more
        // before concluding anything from what is missing.
        if topo
            .as_ref()
            .is_none_or(|t| t.qdiscs_of(d.ifindex).next().is_none())
        {
            topo = cx.reread(d.netns);
        }
        let ifname = d
            .ifname
            .clone()
            .or_else(|| {
                topo.as_ref()
                    .and_then(|t| t.link(d.ifindex))
                    .map(|l| l.name.clone())
            })
            .unwrap_or_else(|| format!("if{}", d.ifindex));
        let all: Vec<Qdisc> = topo
            .as_ref()
            .map(|t| t.qdiscs_of(d.ifindex).cloned().collect())
            .unwrap_or_default();
        let refs: Vec<&Qdisc> = all.iter().collect();
        let qd = culprit(&refs, kinds).cloned();
        if qd.as_ref().is_some_and(|q| q.kind == "noqueue") {
            // No queue to fill: the kernel frees a packet sent to a
            // queueless device (a bridge, a veth) that is not up yet, as
            // IGMP and MLD reports are while a link comes up.
            return;
        }
        let aqm = is_aqm(&d.reason);
        let netem_loss = qd
            .as_ref()
            .filter(|q| q.kind == "netem")
            .and_then(|q| q.limits.loss_pct);
        let hint = cx.ns_hint(d.netns);
        let (summary, fix) = explain(qd.as_ref(), netem_loss, aqm, &ifname, &hint, d);
        let evidence = json!({
            "ifname": ifname,
            "reason": d.reason,
            "qdisc": qd.as_ref().map(|q| json!({
                "kind": q.kind, "handle": q.handle, "parent": q.parent,
                "settings": q.describe(), "limits": q.limits,
                "kernel_drops": q.stats.drops, "overlimits": q.stats.overlimits,
                "backlog_bytes": q.stats.backlog, "qlen": q.stats.qlen,
            })),
            "qdiscs_on_device": all.iter().map(|q| format!("{} {} {}", q.handle, q.parent, q.describe())).collect::<Vec<_>>(),
            "flow": flow_text(d),
        });
        cx.conclude(Finding {
            key,
            kind: "qdisc_drop",
            tier: if aqm && netem_loss.is_none() {
                Tier::Info
            } else {
                Tier::Proven
            },
            netns: d.netns,
            summary,
            evidence,
            fix,
        });
    }
}

/// `root`, or `parent 1:1` for a child qdisc, as tc takes it.
fn placement(qd: &Qdisc) -> String {
    if qd.parent == "root" {
        "root".into()
    } else {
        format!("parent {}", qd.parent)
    }
}

fn shaper_note(qd: &Qdisc) -> String {
    match qd.limits.rate_bytes {
        Some(r) => format!(" Senders offer more than its rate of {}.", rate(r * 8)),
        None => String::new(),
    }
}

/// The command that gives the queue four times its room, when the kind
/// has a limit tc can change in place.
fn raise(qd: &Qdisc, hint: &str, dev: &str, d: &DropRecord) -> Option<Fix> {
    let l = &qd.limits;
    let at = format!("{} handle {}", placement(qd), qd.handle);
    let cmd = match qd.kind.as_str() {
        "tbf" => {
            let (r, b, lim) = (l.rate_bytes?, l.burst_bytes?, l.bytes?);
            format!(
                "{hint}tc qdisc change dev {dev} {at} tbf rate {} burst {b} limit {}",
                rate(r * 8),
                lim * 4
            )
        }
        "pfifo" | "pfifo_head_drop" | "fq_codel" | "fq" => {
            format!(
                "{hint}tc qdisc change dev {dev} {at} {} limit {}",
                qd.kind,
                l.packets? * 4
            )
        }
        "bfifo" => format!(
            "{hint}tc qdisc change dev {dev} {at} bfifo limit {}",
            l.bytes? * 4
        ),
        "pfifo_fast" => format!("{hint}ip link set dev {dev} txqueuelen {}", l.packets? * 4),
        _ => return None,
    };
    let udp = d.proto == Some(Proto::Udp);
    Some(Fix::run(
        format!(
            "If the limit is too tight for bursts, give the queue more room: {cmd}{}",
            if udp {
                " (a UDP sender faster than the link still loses: pace it)"
            } else {
                ""
            }
        ),
        vec![cmd],
    ))
}

fn flow_text(d: &DropRecord) -> Option<String> {
    let (p, s, t) = (d.proto?, d.src?, d.dst?);
    Some(match (d.sport, d.dport) {
        (Some(a), Some(b)) => format!(
            "{p} {} > {}",
            super::fix::host_port(s, a),
            super::fix::host_port(t, b)
        ),
        _ => format!("{p} {s} > {t}"),
    })
}

/// What the queue is doing, and the fixes: the remedy first.
fn explain(
    qd: Option<&Qdisc>,
    netem_loss: Option<f64>,
    aqm: bool,
    ifname: &str,
    hint: &str,
    d: &DropRecord,
) -> (String, Vec<Fix>) {
    let dev = q(ifname);
    // Looking is not fixing: a show command is advice, with no command
    // to apply.
    let show = Fix::advice(format!(
        "Watch its drop counter grow: {hint}tc -s qdisc show dev {dev}"
    ));
    match (qd, netem_loss) {
        (Some(qd), Some(loss)) => (
            format!(
                "netem on {ifname} is configured to lose {loss}% of packets at random ({}): it drops them on purpose.",
                qd.describe()
            ),
            {
                let cmd = format!("{hint}tc qdisc del dev {dev} {}", placement(qd));
                vec![
                    Fix::run(
                        format!("If the emulation is left over from a test, remove it: {cmd}"),
                        vec![cmd],
                    ),
                    show,
                ]
            },
        ),
        (Some(qd), None) if aqm => (
            format!(
                "{} on {ifname} drops packets to signal congestion ({}): senders slow down; the queue works as designed.",
                qd.kind,
                qd.describe()
            ),
            vec![
                // Advice: the senders are elsewhere.
                Fix::advice("To have it mark instead of drop, enable ECN on the TCP senders: sysctl -w net.ipv4.tcp_ecn=1"),
                show,
            ],
        ),
        (Some(qd), None) => (
            format!(
                "The {} queue on {ifname} is full ({}): it drops what arrives faster than it lets through.{}",
                qd.kind,
                qd.describe(),
                shaper_note(qd)
            ),
            // The remedy first, when tc can change the limit in place.
            {
                let mut f: Vec<Fix> = raise(qd, hint, &dev, d).into_iter().collect();
                f.push(show);
                f
            },
        ),
        (None, _) => (
            format!(
                "A queue discipline on {ifname} drops packets ({}); its settings could not be read.",
                d.reason
            ),
            vec![Fix::advice(format!(
                "See which queue and its limits: {hint}tc -s qdisc show dev {dev}"
            ))],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{Fact, Tier};
    use crate::events::record::Proto;
    use crate::host::qdisc::{Limits, Qdisc, Stats};

    fn qdisc(kind: &str, parent: &str, limits: Limits, drops: u64) -> Qdisc {
        Qdisc {
            ifindex: 2,
            kind: kind.into(),
            handle: "8001:".into(),
            parent: parent.into(),
            limits,
            stats: Stats {
                drops,
                ..Default::default()
            },
        }
    }

    fn host(qdiscs: Vec<Qdisc>) -> Fake {
        let mut t = topo(
            NS,
            Some("r'x"),
            vec![link(2, "eth$(id)", Some("veth"), 1500)],
            vec![],
        );
        t.qdiscs = qdiscs;
        Fake::with(vec![t])
    }

    fn drops(reason: Reason, n: u64) -> Vec<Fact> {
        (0..n)
            .map(|i| {
                let mut d = drop(reason.clone(), 1_000 + i * 1_000_000);
                d.ifindex = 2;
                d.ifname = Some("eth$(id)".into());
                d.proto = Some(Proto::Udp);
                Fact::Drop(d)
            })
            .collect()
    }

    #[test]
    fn a_full_shaper_is_named_with_its_limits() {
        let tbf = qdisc(
            "tbf",
            "root",
            Limits {
                bytes: Some(3000),
                rate_bytes: Some(125_000),
                burst_bytes: Some(1600),
                ..Default::default()
            },
            764,
        );
        let v = run(&mut host(vec![tbf]), drops(Reason::QDISC_DROP, 5), 0);
        assert_eq!(kinds(&v), [("qdisc_drop", Tier::Proven)]);
        assert_eq!(v[0].drops, 5);
        let s = &v[0].summary;
        assert!(s.contains("tbf") && s.contains("eth$(id)"), "{s}");
        assert!(s.contains("rate 1Mbit burst 1600b limit 3000b"), "{s}");
        assert_eq!(v[0].evidence["qdisc"]["kernel_drops"], 764);
        // Every name is quoted in what a user pastes.
        let fixes = v[0].fix.join("\n");
        assert!(
            fixes.contains("ip netns exec \"r'x\" tc -s qdisc show dev 'eth$(id)'"),
            "{fixes}"
        );
        assert!(
            fixes.contains("tc qdisc change dev 'eth$(id)' root handle 8001: tbf rate 1Mbit burst 1600 limit 12000"),
            "{fixes}"
        );
    }

    #[test]
    fn a_queueless_device_coming_up_is_no_full_queue() {
        // A bridge's report sent before it is up: freed as QDISC_DROP.
        let noqueue = qdisc("noqueue", "root", Limits::default(), 0);
        let v = run(&mut host(vec![noqueue]), drops(Reason::QDISC_DROP, 2), 0);
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn the_child_that_counts_the_drops_is_the_culprit() {
        let root = qdisc("htb", "root", Limits::default(), 0);
        let mut leaf = qdisc(
            "pfifo",
            "1:10",
            Limits {
                packets: Some(10),
                ..Default::default()
            },
            42,
        );
        leaf.handle = "10:".into();
        let v = run(&mut host(vec![root, leaf]), drops(Reason::QDISC_DROP, 1), 0);
        assert_eq!(v[0].evidence["qdisc"]["kind"], "pfifo");
        assert!(v[0]
            .fix
            .iter()
            .any(|f| f.contains("parent 1:10 handle 10: pfifo limit 40")));
    }

    #[test]
    fn netem_loss_is_named_as_configured_loss() {
        let netem = qdisc(
            "netem",
            "root",
            Limits {
                packets: Some(1000),
                loss_pct: Some(10.0),
                ..Default::default()
            },
            0,
        );
        let v = run(&mut host(vec![netem]), drops(Reason::QDISC_DROP, 3), 0);
        assert_eq!(kinds(&v), [("qdisc_drop", Tier::Proven)]);
        assert!(
            v[0].summary.contains("lose 10% of packets"),
            "{}",
            v[0].summary
        );
        assert!(v[0].fix[0].contains("tc qdisc del dev 'eth$(id)' root"));
    }

    #[test]
    fn aqm_drops_are_information() {
        let fq_codel = qdisc(
            "fq_codel",
            "root",
            Limits {
                packets: Some(10240),
                ecn: Some(false),
                ..Default::default()
            },
            3,
        );
        let v = run(
            &mut host(vec![fq_codel]),
            drops(Reason::QDISC_CONGESTED, 3),
            0,
        );
        assert_eq!(kinds(&v), [("qdisc_drop", Tier::Info)]);
        assert!(!v[0].fault);
        assert!(v[0].summary.contains("signal congestion"));
    }

    #[test]
    fn qdisc_reasons_of_kernels_after_6_18_are_queue_drops() {
        // 7.2 names them from enum qdisc_drop_reason: the same verdicts as
        // the skb_drop_reason names of 6.18 and before.
        let fq_codel = || {
            qdisc(
                "fq_codel",
                "root",
                Limits {
                    packets: Some(10240),
                    ..Default::default()
                },
                3,
            )
        };
        let v = run(
            &mut host(vec![fq_codel()]),
            drops(Reason::QDISC_DROP_CONGESTED, 3),
            0,
        );
        assert_eq!(kinds(&v), [("qdisc_drop", Tier::Info)]);
        assert!(v[0].summary.contains("signal congestion"));
        for reason in [Reason::QDISC_DROP_OVERLIMIT, Reason::QDISC_DROP_GENERIC] {
            let v = run(&mut host(vec![fq_codel()]), drops(reason.clone(), 2), 0);
            assert_eq!(kinds(&v), [("qdisc_drop", Tier::Proven)], "{reason}");
            assert_eq!(v[0].evidence["reason"], reason.as_str());
        }
        // An fq's flow limit points at the fq, not at the root htb.
        let mut fq = qdisc("fq", "1:10", Limits::default(), 0);
        fq.handle = "10:".into();
        let htb = qdisc("htb", "root", Limits::default(), 0);
        let v = run(
            &mut host(vec![htb, fq]),
            drops(Reason::QDISC_DROP_FLOW_LIMIT, 1),
            0,
        );
        assert_eq!(v[0].evidence["qdisc"]["kind"], "fq");
    }

    #[test]
    fn unknown_settings_still_name_the_device() {
        let v = run(&mut Fake::default(), drops(Reason::QDISC_OVERLIMIT, 2), 0);
        assert_eq!(kinds(&v), [("qdisc_drop", Tier::Proven)]);
        assert!(v[0].summary.contains("eth$(id)"));
        assert!(v[0].fix[0].contains("tc -s qdisc show dev 'eth$(id)'"));
    }

    #[test]
    fn other_reasons_are_not_queue_drops() {
        let v = run(&mut host(vec![]), drops(Reason::NOT_SPECIFIED, 2), 0);
        assert!(v.is_empty());
    }
}
