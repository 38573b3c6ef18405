//! The longest loop turn of the last one to two seconds, for `pbkv info`: unlike the
//! longest since start, it shows a stall now, not one during a load hours ago.

use std::time::Duration;

use crate::role::MonoTime;

const SECOND_NS: u64 = 1_000_000_000;

/// The longest turn of the current whole second of monotonic time and of the one before.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct RecentLongest {
    second: u64,
    this: Duration,
    previous: Duration,
}

impl RecentLongest {
    /// Records a turn of `len` that began at `at` (monotonic time only moves forward).
    pub(super) fn record(&mut self, at: MonoTime, len: Duration) {
        let second = at.0 / SECOND_NS;
        if second != self.second {
            self.previous = if second == self.second.saturating_add(1) {
                self.this
            } else {
                Duration::ZERO
            };
            self.this = Duration::ZERO;
            self.second = second;
        }
        self.this = self.this.max(len);
    }

    /// The longest turn recorded in the second of `now` and the one before.
    pub(super) fn longest(&self, now: MonoTime) -> Duration {
        let second = now.0 / SECOND_NS;
        if second == self.second {
            self.this.max(self.previous)
        } else if second == self.second.saturating_add(1) {
            self.this
        } else {
            Duration::ZERO
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> MonoTime {
        MonoTime(ms * 1_000_000)
    }

    #[test]
    fn a_long_turn_is_shown_for_one_to_two_seconds_then_forgotten() {
        let mut recent = RecentLongest::default();
        recent.record(at(1_200), Duration::from_millis(12));
        recent.record(at(1_300), Duration::from_millis(3));
        assert_eq!(recent.longest(at(1_300)), Duration::from_millis(12));
        recent.record(at(2_100), Duration::from_millis(2));
        assert_eq!(recent.longest(at(2_900)), Duration::from_millis(12));
        recent.record(at(3_000), Duration::from_millis(1));
        assert_eq!(recent.longest(at(3_000)), Duration::from_millis(2));
        // An idle spell: nothing recorded for seconds.
        assert_eq!(recent.longest(at(4_500)), Duration::from_millis(1));
        assert_eq!(recent.longest(at(5_000)), Duration::ZERO);
        recent.record(at(7_000), Duration::from_millis(4));
        assert_eq!(recent.longest(at(7_500)), Duration::from_millis(4));
    }
}
