//! How long the per-packet programs were away, for the summary: a state
//! that begins and ends (shed for a storm, parked by a gate), timed over
//! all its spells.

use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Spells {
    since: Option<Instant>,
    total: Duration,
}

impl Spells {
    /// Whether a spell is going on.
    pub fn active(&self) -> bool {
        self.since.is_some()
    }

    /// A spell begins (no-op if one is going on).
    pub fn begin(&mut self) {
        self.since.get_or_insert_with(Instant::now);
    }

    /// The current spell ends (no-op if none is going on).
    pub fn end(&mut self) {
        if let Some(t) = self.since.take() {
            self.total += t.elapsed();
        }
    }

    /// Milliseconds in all spells, the current one included.
    pub fn total_ms(&self) -> u64 {
        (self.total + self.since.map(|t| t.elapsed()).unwrap_or_default()).as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spells_add_up_and_nest_into_one() {
        let mut s = Spells::default();
        assert!(!s.active());
        s.begin();
        std::thread::sleep(Duration::from_millis(20));
        s.begin(); // still the same spell
        s.end();
        s.end();
        let first = s.total_ms();
        assert!((20..200).contains(&first), "{first}");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(s.total_ms(), first, "nothing counts between spells");
        s.begin();
        std::thread::sleep(Duration::from_millis(20));
        assert!(s.active() && s.total_ms() >= first + 20);
    }
}
