//! Too-big drops and the PMTU black holes they prove: `pmtu_blackhole`
//! concludes them, `mss_exceeds_mtu` asks whether its connections died.

use crate::events::record::DropRecord;
use crate::events::record::Proto;
use std::collections::HashMap;
use std::net::IpAddr;

/// Too-big drops further apart than this belong to separate episodes.
const TOO_BIG_EPISODE_NS: u64 = 5_000_000_000;

/// A flow that hit PKT_TOO_BIG somewhere traced.
#[derive(Clone, Debug)]
pub struct TooBigFlow {
    pub first_ts: u64,
    pub last_ts: u64,
    pub count: u64,
    /// Its big packets are proven to die (a black hole).
    pub blackhole: bool,
}

/// A flow seen with PKT_TOO_BIG in one netns, waiting for proof that PMTU
/// discovery fails.
#[derive(Clone)]
pub struct Episode {
    pub first_ts: u64,
    pub last_ts: u64,
    pub count: u64,
    pub rec: DropRecord,
}

/// Where an ICMP "fragmentation needed" / "packet too big" was dropped.
#[derive(Clone, Debug)]
pub struct IcmpDropSite {
    pub ts: u64,
    pub netns: u32,
    pub ifname: Option<String>,
    pub location: String,
    /// The ICMP's source (who said "too big") and destination (the
    /// sender it was meant to shrink).
    pub src: Option<IpAddr>,
    pub dst: IpAddr,
}

impl IcmpDropSite {
    pub fn of(d: &DropRecord) -> Option<IcmpDropSite> {
        Some(IcmpDropSite {
            ts: d.ts_ns,
            netns: d.netns,
            ifname: d.ifname.clone(),
            location: d.location.clone(),
            src: d.src,
            dst: d.dst?,
        })
    }
}

/// An episode proven a black hole.
#[derive(Clone)]
pub struct Proven {
    pub episode: Episode,
    /// Proven by the ICMP that should shrink the sender being dropped
    /// (else by the sender persisting).
    pub icmp_blocked: bool,
    /// Where that ICMP was dropped, when not in the too-big drop's own
    /// namespace (the sender's INPUT, another router).
    pub icmp_site: Option<IcmpDropSite>,
}

/// A flow in one netns: (netns, src, dst, sport, dport).
type EpisodeKey = (
    u32,
    Option<IpAddr>,
    Option<IpAddr>,
    Option<u16>,
    Option<u16>,
);

#[derive(Default)]
pub struct Episodes {
    open: HashMap<EpisodeKey, Episode>,
    /// Proven by the latest fact or tick (cleared before each).
    pub proven: Vec<Proven>,
}

impl Episodes {
    pub fn record(&mut self, d: &DropRecord) {
        let key = (d.netns, d.src, d.dst, d.sport, d.dport);
        let e = self.open.entry(key).or_insert(Episode {
            first_ts: d.ts_ns,
            last_ts: d.ts_ns,
            count: 0,
            rec: d.clone(),
        });
        // A burst long ago (a PMTU cache that expired) is a new episode.
        if d.ts_ns.saturating_sub(e.last_ts) > TOO_BIG_EPISODE_NS {
            e.first_ts = d.ts_ns;
            e.count = 0;
        }
        // Records from different CPUs arrive slightly out of order.
        e.first_ts = e.first_ts.min(d.ts_ns);
        e.last_ts = e.last_ts.max(d.ts_ns);
        e.count += 1;
    }

    /// Moves the episodes proven by now into `proven`.
    pub fn check(
        &mut self,
        now: u64,
        icmp_ptb_dropped: &HashMap<(u32, IpAddr), u64>,
        elsewhere: &HashMap<IpAddr, IcmpDropSite>,
    ) {
        // Forget flows that went quiet.
        self.open
            .retain(|_, t| now.saturating_sub(t.last_ts) < 2 * TOO_BIG_EPISODE_NS);
        let mut proven = Vec::new();
        for (k, t) in &self.open {
            let Some(src) = t.rec.src else { continue };
            let near = |ts: u64| ts.abs_diff(t.last_ts) < 2_000_000_000;
            let here = icmp_ptb_dropped
                .get(&(t.rec.netns, src))
                .is_some_and(|ts| near(*ts));
            // The ICMP to this sender dropped in another traced namespace
            // (the sender's own INPUT, a router on the way back).
            let site = elsewhere
                .get(&src)
                .filter(|s| s.netns != t.rec.netns && near(s.ts))
                .cloned();
            let blocked = here || site.is_some();
            // Only TCP retransmits the same too-big segment; UDP senders
            // probing the path MTU (QUIC, tracepath) do this on purpose.
            let persists = t.rec.proto == Some(Proto::Tcp)
                && t.count >= 3
                && t.last_ts.saturating_sub(t.first_ts) >= 1_000_000_000;
            if blocked || persists {
                proven.push((*k, blocked, site.filter(|_| !here)));
            }
        }
        for (k, icmp_blocked, icmp_site) in proven {
            if let Some(episode) = self.open.remove(&k) {
                self.proven.push(Proven {
                    episode,
                    icmp_blocked,
                    icmp_site,
                });
            }
        }
    }
}

/// An ICMP "fragmentation needed" or ICMPv6 "packet too big".
pub fn is_ptb_icmp(d: &DropRecord) -> bool {
    matches!(
        (d.proto, d.icmp_type, d.icmp_code),
        (Some(Proto::Icmp), Some(3), Some(4)) | (Some(Proto::Icmp6), Some(2), _)
    )
}
