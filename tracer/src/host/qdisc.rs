//! Queue disciplines of a namespace (what `tc -s qdisc show` prints): the
//! kind, where it hangs, the limits that decide when it drops, and the
//! kernel's own counters. `qdisc_drop` names the queue that dropped a
//! packet and its limits from this.
//!
//! Messages are decoded with netlink-packet-route. It knows the options of
//! fq_codel only; for the others it hands back `TCA_OPTIONS` as bytes, and
//! the few fields read here come from their UAPI structs and attribute
//! numbers (`linux/pkt_sched.h`), which the kernel keeps stable.

use netlink_packet_route::tc::{
    TcAttribute, TcHandle, TcMessage, TcOption, TcQdiscFqCodelOption, TcStats2,
};
use netlink_packet_utils::nla::{Nla, NlaBuffer, NlasIterator};
use serde::{Deserialize, Serialize};

/// One qdisc. Equality ([`Qdisc::same_config`]) ignores the counters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Qdisc {
    pub ifindex: i32,
    /// `tbf`, `pfifo_fast`, `fq_codel`, `netem`, ...
    pub kind: String,
    /// As tc prints it: `8001:`.
    pub handle: String,
    /// `root`, `ingress`, or the parent class (`1:1`).
    pub parent: String,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub stats: Stats,
}

/// The settings that decide when a qdisc drops; absent when the kind has
/// no such knob or it could not be read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Queue limit in packets (fifo, fq_codel, fq, netem; pfifo_fast's
    /// is the device's txqueuelen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets: Option<u32>,
    /// Queue limit in bytes (tbf, bfifo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Shaped rate, bytes per second (tbf).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_bytes: Option<u64>,
    /// Bucket size in bytes (tbf).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_bytes: Option<u64>,
    /// Per-flow limit in packets (fq).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_packets: Option<u32>,
    /// Memory limit in bytes (fq_codel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u32>,
    /// Random loss it is configured to inflict, percent (netem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_pct: Option<f64>,
    /// Whether it marks ECN-capable packets instead of dropping them
    /// (fq_codel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecn: Option<bool>,
}

/// The kernel's counters when the qdisc was read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub drops: u64,
    pub overlimits: u64,
    /// Packets queued.
    pub qlen: u32,
    /// Bytes queued.
    pub backlog: u32,
}

impl Qdisc {
    /// Same qdisc with the same settings (the counters always move).
    pub fn same_config(&self, o: &Qdisc) -> bool {
        self.ifindex == o.ifindex
            && self.kind == o.kind
            && self.handle == o.handle
            && self.parent == o.parent
            && self.limits == o.limits
    }

    /// Hangs on the egress path (not `ingress`/`clsact`, which hold filters).
    pub fn is_egress(&self) -> bool {
        self.parent != "ingress"
    }

    /// The settings as `tc qdisc show` words: `tbf rate 1Mbit burst 1600b
    /// limit 3000b`.
    pub fn describe(&self) -> String {
        let l = &self.limits;
        let mut s = self.kind.clone();
        if let Some(r) = l.rate_bytes {
            s += &format!(" rate {}", rate(r * 8));
        }
        if let Some(b) = l.burst_bytes {
            s += &format!(" burst {b}b");
        }
        if let Some(b) = l.bytes {
            s += &format!(" limit {b}b");
        }
        if let Some(p) = l.packets {
            s += &format!(" limit {p}p");
        }
        if let Some(p) = l.flow_packets {
            s += &format!(" flow_limit {p}p");
        }
        if let Some(m) = l.memory_bytes {
            s += &format!(" memory_limit {m}b");
        }
        if let Some(p) = l.loss_pct {
            s += &format!(" loss {p}%");
        }
        if l.ecn == Some(true) {
            s += " ecn";
        }
        s
    }
}

/// A rate in bits per second as tc writes it: `1Mbit`, `800Kbit`.
pub fn rate(bits: u64) -> String {
    for (unit, div) in [
        ("Gbit", 1_000_000_000),
        ("Mbit", 1_000_000),
        ("Kbit", 1_000),
    ] {
        if bits >= div {
            let v = format!("{:.3}", bits as f64 / div as f64);
            return format!("{}{unit}", v.trim_end_matches('0').trim_end_matches('.'));
        }
    }
    format!("{bits}bit")
}

/// tc's notation for a handle: hexadecimal, `8001:` or `1:10`.
fn handle(h: TcHandle) -> String {
    if h == TcHandle::ROOT {
        "root".into()
    } else if h == TcHandle::INGRESS {
        "ingress".into()
    } else if h.minor == 0 {
        format!("{:x}:", h.major)
    } else {
        format!("{:x}:{:x}", h.major, h.minor)
    }
}

/// Decodes one RTM_NEWQDISC. `txqlen` gives pfifo_fast's limit, which is
/// the device's queue length.
pub fn from_msg(m: &TcMessage, txqlen: impl Fn(i32) -> Option<u32>) -> Option<Qdisc> {
    let mut q = Qdisc {
        ifindex: m.header.index,
        kind: String::new(),
        handle: handle(m.header.handle),
        parent: handle(m.header.parent),
        limits: Limits::default(),
        stats: Stats::default(),
    };
    let mut options: &[TcOption] = &[];
    for a in &m.attributes {
        match a {
            TcAttribute::Kind(k) => q.kind = k.clone(),
            TcAttribute::Options(o) => options = o,
            // TCA_STATS2's queue block is the current one; TCA_STATS is
            // the old copy of the same counters, used if STATS2 is absent.
            TcAttribute::Stats2(v) => {
                for s in v {
                    if let TcStats2::Queue(s) = s {
                        q.stats = Stats {
                            drops: s.drops.into(),
                            overlimits: s.overlimits.into(),
                            qlen: s.qlen,
                            backlog: s.backlog,
                        };
                    }
                }
            }
            TcAttribute::Stats(s) if q.stats == Stats::default() => {
                q.stats = Stats {
                    drops: s.drops.into(),
                    overlimits: s.overlimits.into(),
                    qlen: s.qlen,
                    backlog: s.backlog,
                }
            }
            _ => {}
        }
    }
    if q.kind.is_empty() {
        return None;
    }
    q.limits = limits(&q.kind, options);
    if q.kind == "pfifo_fast" {
        q.limits.packets = txqlen(q.ifindex);
    }
    Some(q)
}

/// The raw `TCA_OPTIONS` payload, for kinds the crate does not decode.
fn raw_options(options: &[TcOption]) -> Option<Vec<u8>> {
    options.iter().find_map(|o| match o {
        TcOption::Other(n) => {
            let mut v = vec![0u8; n.value_len()];
            n.emit_value(&mut v);
            Some(v)
        }
        _ => None,
    })
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_ne_bytes(s.try_into().unwrap()))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    b.get(off..off + 8)
        .map(|s| u64::from_ne_bytes(s.try_into().unwrap()))
}

/// (type, value) of each attribute nested in `b`.
fn nested(b: &[u8]) -> Vec<(u16, Vec<u8>)> {
    NlasIterator::new(b)
        .filter_map(|n| n.ok())
        .map(|n: NlaBuffer<&[u8]>| (n.kind(), n.value().to_vec()))
        .collect()
}

/// psched ticks are 64 ns (PSCHED_SHIFT 6).
const PSCHED_TICK_NS: u64 = 64;

fn limits(kind: &str, options: &[TcOption]) -> Limits {
    let mut l = Limits::default();
    if kind == "fq_codel" {
        for o in options {
            if let TcOption::FqCodel(o) = o {
                match o {
                    TcQdiscFqCodelOption::Limit(v) => l.packets = Some(*v),
                    TcQdiscFqCodelOption::MemoryLimit(v) => l.memory_bytes = Some(*v),
                    TcQdiscFqCodelOption::Ecn(v) => l.ecn = Some(*v != 0),
                    _ => {}
                }
            }
        }
        return l;
    }
    let Some(raw) = raw_options(options) else {
        return l;
    };
    match kind {
        // struct tc_fifo_qopt { __u32 limit; }, not nested.
        "pfifo" | "pfifo_head_drop" => l.packets = u32_at(&raw, 0),
        "bfifo" => l.bytes = u32_at(&raw, 0).map(u64::from),
        "tbf" => {
            // TCA_TBF_PARMS = 1: struct tc_tbf_qopt { tc_ratespec rate
            // (rate: u32 at 8); tc_ratespec peakrate; u32 limit (24);
            // u32 buffer (28, ticks) ; u32 mtu }. TCA_TBF_RATE64 = 4.
            let attrs = nested(&raw);
            let mut rate = None;
            let mut buffer_ticks = None;
            for (t, v) in &attrs {
                match t {
                    1 => {
                        rate = u32_at(v, 8).map(u64::from);
                        l.bytes = u32_at(v, 24).map(u64::from);
                        buffer_ticks = u32_at(v, 28).map(u64::from);
                    }
                    4 => rate = u64_at(v, 0).or(rate),
                    _ => {}
                }
            }
            l.rate_bytes = rate.filter(|&r| r > 0);
            // The bucket holds what the rate sends in `buffer` time.
            if let (Some(r), Some(t)) = (l.rate_bytes, buffer_ticks) {
                l.burst_bytes =
                    Some((r as u128 * (t * PSCHED_TICK_NS) as u128 / 1_000_000_000) as u64);
            }
        }
        "fq" => {
            // TCA_FQ_PLIMIT = 1, TCA_FQ_FLOW_PLIMIT = 2.
            for (t, v) in nested(&raw) {
                match t {
                    1 => l.packets = u32_at(&v, 0),
                    2 => l.flow_packets = u32_at(&v, 0),
                    _ => {}
                }
            }
        }
        "netem" => {
            // struct tc_netem_qopt { latency; limit; loss; ... }: loss is
            // a probability scaled to u32::MAX.
            l.packets = u32_at(&raw, 4);
            if let Some(loss) = u32_at(&raw, 8).filter(|&v| v > 0) {
                let pct = loss as f64 * 100.0 / u32::MAX as f64;
                l.loss_pct = Some((pct * 100.0).round() / 100.0);
            }
        }
        _ => {}
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_like_tc() {
        assert_eq!(rate(1_000_000), "1Mbit");
        assert_eq!(rate(800_000), "800Kbit");
        assert_eq!(rate(2_500_000_000), "2.5Gbit");
        assert_eq!(rate(999), "999bit");
    }

    /// What the kernel reports for qdiscs set up with tc, decoded. (This
    /// machine's kernel has no netem, fq or fq_codel; their decoding is
    /// only covered by the rules' tests through hand-built values.)
    #[test]
    fn reads_what_tc_set_up() {
        use crate::host::netns::test_support::TestNs;
        use crate::host::topology::NsTopology;
        let ns = TestNs::new("qd");
        ns.ip("link add d0 type veth peer name e0");
        ns.ip("link add d1 type veth peer name e1");
        ns.ip("link add d2 type veth peer name e2");
        ns.ip("link add d3 type veth peer name e3");
        ns.ip("link set d3 txqueuelen 333");
        let tc = |args: &str| {
            let st = std::process::Command::new("ip")
                .args(["netns", "exec", &ns.name, "tc"])
                .args(args.split_whitespace())
                .status()
                .unwrap();
            assert!(st.success(), "tc {args}");
        };
        tc("qdisc add dev d0 root handle 8001: tbf rate 1mbit burst 1600 limit 3000");
        tc("qdisc add dev d1 root handle 1: bfifo limit 5000");
        tc("qdisc add dev d2 root handle 1: htb default 10");
        tc("class add dev d2 parent 1: classid 1:10 htb rate 1mbit");
        tc("qdisc add dev d2 parent 1:10 handle 10: pfifo limit 7");
        tc("qdisc add dev d3 root handle 2: pfifo limit 1234");
        tc("qdisc add dev d3 ingress");
        let t = NsTopology::read(&ns.info()).unwrap();
        let of = |dev: &str| -> Vec<Qdisc> {
            let i = t.link_by_name(dev).unwrap().ifindex;
            t.qdiscs_of(i).cloned().collect()
        };
        let tbf = &of("d0")[0];
        assert_eq!(
            (tbf.kind.as_str(), tbf.handle.as_str(), tbf.parent.as_str()),
            ("tbf", "8001:", "root")
        );
        assert_eq!(tbf.limits.rate_bytes, Some(125_000));
        assert_eq!(tbf.limits.bytes, Some(3000));
        assert_eq!(tbf.limits.burst_bytes, Some(1600));
        assert_eq!(tbf.describe(), "tbf rate 1Mbit burst 1600b limit 3000b");
        let bfifo = &of("d1")[0];
        assert_eq!(bfifo.limits.bytes, Some(5000));
        assert_eq!(bfifo.describe(), "bfifo limit 5000b");
        let d2 = of("d2");
        let leaf = d2.iter().find(|q| q.kind == "pfifo").unwrap();
        assert_eq!(
            (leaf.handle.as_str(), leaf.parent.as_str()),
            ("10:", "1:10")
        );
        assert_eq!(leaf.limits.packets, Some(7));
        let d3 = of("d3");
        assert_eq!(d3.len(), 1, "ingress is not on the egress path: {d3:?}");
        assert_eq!(d3[0].limits.packets, Some(1234));
        assert_eq!(t.link_by_name("d3").unwrap().txqlen, 333);
    }

    /// netem and fq, which this kernel lacks, from their UAPI layouts.
    #[test]
    fn netem_and_fq_options_decode() {
        use netlink_packet_utils::nla::DefaultNla;
        // tc_netem_qopt: latency, limit 1000, loss 10% of u32::MAX, ...
        let mut netem = Vec::new();
        for v in [0u32, 1000, u32::MAX / 10, 0, 0, 0] {
            netem.extend_from_slice(&v.to_ne_bytes());
        }
        let l = limits("netem", &[TcOption::Other(DefaultNla::new(2, netem))]);
        assert_eq!((l.packets, l.loss_pct), (Some(1000), Some(10.0)));
        // TCA_FQ_PLIMIT 10000, TCA_FQ_FLOW_PLIMIT 100, each a 4-byte NLA.
        let mut fq = Vec::new();
        for (t, v) in [(1u16, 10_000u32), (2, 100)] {
            fq.extend_from_slice(&8u16.to_ne_bytes());
            fq.extend_from_slice(&t.to_ne_bytes());
            fq.extend_from_slice(&v.to_ne_bytes());
        }
        let l = limits("fq", &[TcOption::Other(DefaultNla::new(2, fq))]);
        assert_eq!((l.packets, l.flow_packets), (Some(10_000), Some(100)));
    }

    #[test]
    fn handles_read_like_tc() {
        assert_eq!(handle(TcHandle::ROOT), "root");
        assert_eq!(handle(TcHandle::INGRESS), "ingress");
        assert_eq!(
            handle(TcHandle {
                major: 0x8001,
                minor: 0
            }),
            "8001:"
        );
        assert_eq!(
            handle(TcHandle {
                major: 1,
                minor: 0x10
            }),
            "1:10"
        );
    }
}
