//! `tracer trace EXPR`: follow the packets that match through the host,
//! on tracepoints only (no kprobes, no fentry). The kernel marks a
//! packet's `struct sk_buff` address the first time it is seen matching
//! (`net:netif_receive_skb` or `net:net_dev_queue`), and reports every
//! later `net:netif_receive_skb`, `net:net_dev_queue`, `net:net_dev_xmit`
//! and `skb:consume_skb` of that address as a hop with the same id; a drop
//! (`skb:kfree_skb`) of it ends the trail.
//!
//! Where the trail breaks: a packet keeps its `sk_buff` across veth
//! crossings, bridges, forwarding and NAT, so those hops stay in one trail.
//! A clone or copy is a new `sk_buff`: TCP transmits a clone of each
//! segment (each retransmission is a new trail, first seen when it is
//! queued to a device), and packets copied by a bridge flood, multicast,
//! or `skb_copy` (some tunnels, `nf_queue`) start trails of their own when
//! they match. A packet received by a NIC whose driver builds a new skb
//! per fragment list (GRO) is followed from its merged skb.

use crate::events::decode::{family_of, flow_dst, flow_src, proto_of, tcp_flags};
use crate::events::record::DropRecord;
use crate::events::record::{Family, Proto};
use crate::session::{Consumer, Session};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use tracer_abi::{
    DropEvent, HopEvent, FLOW_FRAGMENT, FLOW_L4_SHORT, FLOW_TCP_SHORT, HOP_CONSUME, HOP_QUEUE,
    HOP_RECEIVE, HOP_XMIT, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP,
};

pub fn hop_name(event: u32) -> &'static str {
    match event {
        HOP_RECEIVE => "receive",
        HOP_QUEUE => "queue",
        HOP_XMIT => "xmit",
        HOP_CONSUME => "consume",
        _ => "?",
    }
}

/// One hop as printed (`-o json`).
#[derive(Clone, Debug, Serialize)]
pub struct HopRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub skb_id: u64,
    pub event: &'static str,
    pub ts_ns: u64,
    pub netns: u32,
    pub netns_name: Option<String>,
    pub ifindex: i32,
    pub ifname: Option<String>,
    pub len: u32,
    pub family: Option<Family>,
    pub proto: Option<Proto>,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub tcp_flags: Option<String>,
    pub cpu: u32,
}

#[derive(Serialize)]
struct TracedDrop<'a> {
    #[serde(flatten)]
    rec: &'a DropRecord,
    /// The trail this drop ends; null when the packet was not followed.
    skb_id: Option<u64>,
}

/// The consumer of `tracer trace`.
#[derive(Default)]
pub struct Tracker {
    /// skb address to trail id, while the packet lives.
    live: HashMap<u64, u64>,
    /// Text: each trail's lines until it ends.
    trails: BTreeMap<u64, Vec<String>>,
}

impl Tracker {
    fn text_line(
        s: &Session,
        netns: u32,
        name: &Option<String>,
        ifname: &str,
        what: &str,
        ts: u64,
    ) -> String {
        let ns = s.out.netns_label(netns, name);
        format!(
            "  {}  {:<28} {what}",
            crate::sinks::clock_text(ts),
            format!("{ns}/{ifname}")
        )
    }

    fn end_trail(&mut self, id: u64, s: &mut Session) -> std::io::Result<()> {
        if let Some(lines) = self.trails.remove(&id) {
            for l in lines {
                s.out.line(&l)?;
            }
        }
        Ok(())
    }
}

impl Consumer for Tracker {
    fn hop(&mut self, raw: &HopEvent, s: &mut Session) -> std::io::Result<()> {
        let f = &raw.flow;
        let has_l3 = family_of(f.family).is_some();
        // As for drops: no ports in a non-first fragment or past the
        // packet's end.
        let ports = has_l3
            && (f.proto == IPPROTO_TCP || f.proto == IPPROTO_UDP || f.proto == IPPROTO_SCTP)
            && f.flags & (FLOW_FRAGMENT | FLOW_L4_SHORT) == 0;
        let ifname = s.namer_ifname(raw.netns, raw.ifindex);
        let rec = HopRecord {
            kind: "hop",
            skb_id: raw.id,
            event: hop_name(raw.event),
            ts_ns: s.namer.wall_ns(raw.ts_ns),
            netns: raw.netns,
            netns_name: s.namer.topology.netns_name(raw.netns),
            ifindex: raw.ifindex,
            ifname,
            len: raw.len,
            family: family_of(f.family),
            proto: has_l3.then(|| proto_of(f.proto)),
            src: flow_src(f),
            dst: flow_dst(f),
            sport: ports.then_some(f.sport),
            dport: ports.then_some(f.dport),
            tcp_flags: (ports && f.proto == IPPROTO_TCP && f.flags & FLOW_TCP_SHORT == 0)
                .then(|| tcp_flags(f.tcp_flags)),
            cpu: raw.cpu,
        };
        if raw.event == HOP_CONSUME {
            self.live.remove(&raw.skb);
        } else {
            self.live.insert(raw.skb, raw.id);
        }
        if s.out.format == crate::sinks::Format::Json {
            return s.out.json(&rec);
        }
        let dev = rec.ifname.clone().unwrap_or_else(|| match raw.ifindex {
            0 => "-".to_string(),
            i => format!("if{i}"),
        });
        let trail = self.trails.entry(raw.id).or_insert_with(|| {
            let flow = match (rec.sport, rec.dport) {
                (Some(sp), Some(dp)) => format!(
                    "{} {}:{sp} > {}:{dp}",
                    rec.proto
                        .map(|p| p.to_string().to_uppercase())
                        .unwrap_or_default(),
                    rec.src.map(|a| a.to_string()).unwrap_or_default(),
                    rec.dst.map(|a| a.to_string()).unwrap_or_default()
                ),
                _ => format!(
                    "{} {} > {}",
                    rec.proto
                        .map(|p| p.to_string().to_uppercase())
                        .unwrap_or_default(),
                    rec.src.map(|a| a.to_string()).unwrap_or_default(),
                    rec.dst.map(|a| a.to_string()).unwrap_or_default()
                ),
            };
            let flags = rec
                .tcp_flags
                .as_ref()
                .map(|f| format!(" [{f}]"))
                .unwrap_or_default();
            vec![format!("packet {:#x}: {flow}{flags}", raw.id)]
        });
        let line = Self::text_line(
            s,
            raw.netns,
            &rec.netns_name,
            &dev,
            &format!("{} len {}", rec.event, rec.len),
            rec.ts_ns,
        );
        trail.push(line);
        if raw.event == HOP_CONSUME {
            self.end_trail(raw.id, s)?;
        }
        Ok(())
    }

    fn drop(&mut self, raw: &DropEvent, s: &mut Session) -> std::io::Result<bool> {
        let (rec, extra) = s.name_drop(raw);
        s.summary.count(&rec);
        let id = extra.as_ref().and_then(|x| self.live.remove(&x.hdr.skb));
        s.capture(&rec, extra.as_ref(), &[])?;
        if s.out.format == crate::sinks::Format::Json {
            s.out.json(&TracedDrop {
                rec: &rec,
                skb_id: id,
            })?;
            return Ok(true);
        }
        match id.filter(|i| self.trails.contains_key(i)) {
            Some(id) => {
                let what = format!(
                    "DROP {} at {}",
                    crate::sinks::reason_label(&rec),
                    rec.location
                );
                let dev = crate::sinks::dev_label(&rec);
                let line = Self::text_line(s, rec.netns, &rec.netns_name, &dev, &what, rec.ts_ns);
                if let Some(t) = self.trails.get_mut(&id) {
                    t.push(line);
                }
                self.end_trail(id, s)?;
            }
            None => s.out.drop(&rec)?,
        }
        Ok(true)
    }

    fn finish(&mut self, s: &mut Session) -> std::io::Result<()> {
        // Trails still open when the run ended (the packet left the host,
        // or is still queued).
        let ids: Vec<u64> = self.trails.keys().copied().collect();
        for id in ids {
            if let Some(t) = self.trails.get_mut(&id) {
                t.push("  (trail open: still alive or left the host)".to_string());
            }
            self.end_trail(id, s)?;
        }
        Ok(())
    }
}
