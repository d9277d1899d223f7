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
    /// The rules' clock: never back, and never ahead of the facts (see
    /// [`Engine::on_fact`]).
    now_ns: u64,
    /// The live clock last passed in.
    wall_ns: u64,
    /// How far behind the live clock the latest fact's own time was.
    lag_ns: u64,
}

/// A fact later than this is taken for a clock step, not a backlog.
const MAX_LAG_NS: u64 = 60_000_000_000;

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
            wall_ns: 0,
            lag_ns: 0,
        }
    }

    /// Feeds one fact to every rule at time `now_ns` (wall clock; a replay
    /// passes fact time). Returns false for a neighbour event that only
    /// repeats the entry's last state (not worth showing again).
    ///
    /// The rules' windows run on fact time: on a slow host the ring
    /// buffer's backlog can hand in facts seconds after they happened, and
    /// a window measured on the live clock then closes before the facts
    /// that belong in it are read (a 5.10 guest under load judged a
    /// connection's too-big segments "quiet for 2 s", and forgot a black
    /// hole's episode, while its retransmissions were still queued). So
    /// now is the live clock less the latest fact's lateness.
    pub fn on_fact(&mut self, fact: &Fact, now_ns: u64, src: &mut dyn TopologySource) -> bool {
        let ts = fact.ts_ns();
        if ts > 0 {
            let lag = now_ns.saturating_sub(ts);
            self.lag_ns = if lag > MAX_LAG_NS { 0 } else { lag };
        }
        self.advance(now_ns);
        let news = self.obs.observe(fact, self.now_ns);
        let mut cx = Ctx::new(self.clock(), &mut self.obs, &mut self.book, src);
        for r in &mut self.rules {
            r.on_fact(fact, &mut cx);
        }
        news
    }

    /// Between facts the clock runs on, as late as the latest fact was: a
    /// window waiting for quiet closes that much later, never early.
    pub fn tick(&mut self, now_ns: u64, src: &mut dyn TopologySource) {
        self.advance(now_ns);
        self.obs.tick(self.now_ns);
        self.book.prune();
        let mut cx = Ctx::new(self.clock(), &mut self.obs, &mut self.book, src);
        for r in &mut self.rules {
            r.tick(&mut cx);
        }
    }

    pub fn finish(&mut self, now_ns: u64, src: &mut dyn TopologySource) {
        self.advance(now_ns);
        let mut cx = Ctx::new(self.clock(), &mut self.obs, &mut self.book, src);
        for r in &mut self.rules {
            r.finish(&mut cx);
        }
    }

    fn advance(&mut self, now_ns: u64) {
        self.wall_ns = self.wall_ns.max(now_ns);
        self.now_ns = self.now_ns.max(now_ns.saturating_sub(self.lag_ns));
    }

    fn clock(&self) -> (u64, u64) {
        (self.now_ns, self.wall_ns)
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
