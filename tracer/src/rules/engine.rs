//! The dispatcher above the rules: has the facts layer take in every
//! fact (and tick) first, then feeds it to every rule, and collects the
//! verdicts. The same
//! engine runs on a live session and on a recording; only the topology
//! source and the clock differ.

use super::ctx::{Book, Ctx, TopologySource};
use super::facts::Observations;
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
        let news = self.obs.observe(fact, self.now_ns);
        let mut cx = Ctx::new(self.now_ns, &mut self.obs, &mut self.book, src);
        for r in &mut self.rules {
            r.on_fact(fact, &mut cx);
        }
        news
    }

    pub fn tick(&mut self, now_ns: u64, src: &mut dyn TopologySource) {
        self.now_ns = self.now_ns.max(now_ns);
        self.obs.tick(self.now_ns);
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
}
