//! The dispatcher above the rules: keeps the observations rules share,
//! feeds every fact to every rule, and collects the verdicts. The same
//! engine runs on a live session and on a recording; only the topology
//! source and the clock differ.

use super::ctx::{is_ptb_icmp, Book, Ctx, Observations, TooBigFlow, TopologySource};
use super::{Fact, Rule, Verdict};

pub struct Engine {
    rules: Vec<Box<dyn Rule>>,
    obs: Observations,
    book: Book,
    now_ns: u64,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    /// An engine with every rule.
    pub fn new() -> Self {
        Self::with_rules(super::all())
    }

    pub fn with_rules(rules: Vec<Box<dyn Rule>>) -> Self {
        Engine {
            rules,
            obs: Observations::default(),
            book: Book::default(),
            now_ns: 0,
        }
    }

    /// Feeds one fact to every rule at time `now_ns` (wall clock; a replay
    /// passes fact time). Returns false for a neighbour event that only
    /// repeats the entry's last state (not worth showing again).
    pub fn on_fact(&mut self, fact: &Fact, now_ns: u64, src: &mut dyn TopologySource) -> bool {
        self.now_ns = self.now_ns.max(now_ns);
        let news = self.observe(fact);
        let mut cx = Ctx::new(self.now_ns, &mut self.obs, &mut self.book, src);
        for r in &mut self.rules {
            r.on_fact(fact, &mut cx);
        }
        news
    }

    pub fn tick(&mut self, now_ns: u64, src: &mut dyn TopologySource) {
        self.now_ns = self.now_ns.max(now_ns);
        self.obs.prune(self.now_ns);
        self.book.prune();
        let mut cx = Ctx::new(self.now_ns, &mut self.obs, &mut self.book, src);
        for r in &mut self.rules {
            r.tick(&mut cx);
        }
    }

    pub fn finish(&mut self, now_ns: u64, src: &mut dyn TopologySource) {
        self.now_ns = self.now_ns.max(now_ns);
        let mut cx = Ctx::new(self.now_ns, &mut self.obs, &mut self.book, src);
        for r in &mut self.rules {
            r.finish(&mut cx);
        }
    }

    /// Verdicts concluded (or upgraded to a surer tier) since the last call.
    pub fn take_new(&mut self) -> Vec<Verdict> {
        self.book.take_new()
    }

    /// Every verdict, in the order first concluded, at its latest tier.
    pub fn verdicts(&self) -> &[Verdict] {
        &self.book.verdicts
    }

    /// Verdicts not printed because their kind was shown too often.
    pub fn suppressed(&self) -> u64 {
        self.book.suppressed
    }

    /// Forgets causes last seen before `before_ns` (see [`Book::expire`]).
    pub fn expire(&mut self, before_ns: u64) -> usize {
        self.book.expire(before_ns)
    }

    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    fn observe(&mut self, fact: &Fact) -> bool {
        match fact {
            Fact::Drop(d) => {
                if let (Some(a), Some(b), Some(sp), Some(dp)) = (d.src, d.dst, d.sport, d.dport) {
                    self.obs.saw_flow((a, b, sp, dp), d.ts_ns);
                }
                // Where each peer's traffic enters, for asymmetry proofs.
                if let (Some(src), true) = (d.src, d.ingress_ifindex > 1) {
                    self.obs
                        .ingress_of_peer
                        .insert((d.netns, src), d.ingress_ifindex);
                }
                if is_ptb_icmp(d) {
                    if let Some(dst) = d.dst {
                        self.obs.icmp_ptb_dropped.insert((d.netns, dst), d.ts_ns);
                    }
                }
                if d.reason == "PKT_TOO_BIG" {
                    if let (Some(a), Some(b), Some(sp), Some(dp)) = (d.src, d.dst, d.sport, d.dport)
                    {
                        let f =
                            self.obs
                                .too_big_flows
                                .entry((a, b, sp, dp))
                                .or_insert(TooBigFlow {
                                    first_ts: d.ts_ns,
                                    last_ts: d.ts_ns,
                                    count: 0,
                                    blackhole: false,
                                });
                        f.first_ts = f.first_ts.min(d.ts_ns);
                        f.last_ts = f.last_ts.max(d.ts_ns);
                        f.count += 1;
                    }
                }
                true
            }
            Fact::Neigh(n) => {
                let Some(a) = n.neighbor else { return false };
                let v = self.obs.neigh.entry((n.netns, n.ifindex, a)).or_default();
                // Keep transitions, not every retry of the same state, and
                // only the recent ones.
                if v.last() == Some(&n.state) {
                    return false;
                }
                if v.len() >= 8 {
                    v.remove(0);
                }
                v.push(n.state);
                true
            }
            Fact::Syn(s) => {
                if let (Some(a), Some(b)) = (s.src, s.dst) {
                    self.obs.saw_flow((a, b, s.sport, s.dport), s.ts_ns);
                }
                true
            }
        }
    }
}
