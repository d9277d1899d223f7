//! How busy the host's receive path is: packets its CPUs took in, in
//! every namespace, from /proc/net/softnet_stat (per-CPU counters, the
//! same whichever namespace reads them).

use std::time::Instant;

const PATH: &str = "/proc/net/softnet_stat";

/// Packets processed by all CPUs so far; None if the file is unreadable.
pub fn packets_in() -> Option<u64> {
    parse(&std::fs::read_to_string(PATH).ok()?)
}

/// The first column of each CPU's line is its `processed` count, in hex;
/// it is 32 bits wide and wraps.
fn parse(text: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut lines = 0;
    for line in text.lines() {
        let first = line.split_whitespace().next()?;
        total += u64::from_str_radix(first, 16).ok()?;
        lines += 1;
    }
    (lines > 0).then_some(total)
}

/// Packets per second between two readings.
#[derive(Default)]
pub struct Rate {
    last: Option<(Instant, u64)>,
}

impl Rate {
    /// The rate since the previous call, once one was made. The counters
    /// wrap at 32 bits per CPU: a reading below the previous one starts
    /// over and gives no rate.
    pub fn sample(&mut self, now: Instant, total: u64) -> Option<f64> {
        let prev = self.last.replace((now, total));
        let (t0, n0) = prev?;
        let secs = now.duration_since(t0).as_secs_f64();
        (total >= n0 && secs > 0.0).then(|| (total - n0) as f64 / secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sums_the_processed_column_of_every_cpu() {
        let text = "5473f9b5 00000000 000000e6 00000000\n\
                    00000010 00000000 000000f4 00000001\n";
        assert_eq!(parse(text), Some(0x5473f9b5 + 0x10));
        assert_eq!(parse(""), None);
        assert_eq!(parse("zz 0\n"), None);
    }

    #[test]
    fn a_rate_needs_two_readings_and_survives_a_wrap() {
        let mut r = Rate::default();
        let t = Instant::now();
        assert_eq!(r.sample(t, 1000), None);
        assert_eq!(r.sample(t + Duration::from_secs(2), 41_000), Some(20_000.0));
        assert_eq!(r.sample(t + Duration::from_secs(3), 5), None);
        assert_eq!(r.sample(t + Duration::from_secs(4), 105), Some(100.0));
    }

    #[test]
    fn this_host_counts() {
        assert!(packets_in().is_some());
    }
}
