//! The open loop's schedule: operation `k` (0, 1, 2, …) is due at `start + k / rate`,
//! whatever the service does.
//!
//! A closed loop starts an operation only when a session finished its last one, so a stall
//! of the service also stalls the load, and the operations that would have been sent during
//! the stall are never measured (coordinated omission). On a schedule, an operation that is
//! due while every session is busy waits for the first free one, and its latency counts from
//! the time it was due, not from the time it was sent: the wait is part of what a user of a
//! service at that rate would see. This is wrk2's correction.

use runtime::MonoTime;

const NANOS_PER_SECOND: f64 = 1e9;

/// A fixed-rate schedule of operation start times.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    start: MonoTime,
    rate: f64,
    next_index: u64,
}

impl Schedule {
    /// `rate` operations per second from `start`; `rate` is finite and positive.
    pub(crate) fn new(start: MonoTime, rate: f64) -> Schedule {
        assert!(
            rate.is_finite() && rate > 0.0,
            "rate {rate} validated by the caller"
        );
        Schedule {
            start,
            rate,
            next_index: 0,
        }
    }

    /// When operation `index` is due.
    fn due_at(&self, index: u64) -> MonoTime {
        // f64 keeps nanosecond precision for any run shorter than about 100 days; the cast
        // saturates rather than wraps.
        let offset_ns = (index as f64 * NANOS_PER_SECOND / self.rate).round() as u64;
        MonoTime(self.start.0.saturating_add(offset_ns))
    }

    /// When the next operation not yet taken is due.
    pub(crate) fn next_due(&self) -> MonoTime {
        self.due_at(self.next_index)
    }

    /// Takes the next operation if it is due by `now`; returns when it was due.
    pub(crate) fn take_due(&mut self, now: MonoTime) -> Option<MonoTime> {
        let at = self.next_due();
        if at > now {
            return None;
        }
        self.next_index += 1;
        Some(at)
    }

    /// Operations due by `now`, taken or not.
    pub(crate) fn due_count(&self, now: MonoTime) -> u64 {
        if now < self.start {
            return 0;
        }
        let elapsed_ns = now.0 - self.start.0;
        let mut count = (elapsed_ns as f64 * self.rate / NANOS_PER_SECOND) as u64 + 1;
        // Rounding in `due_at` may put the boundary a nanosecond either way: agree with it.
        while count > 0 && self.due_at(count - 1) > now {
            count -= 1;
        }
        while self.due_at(count) <= now {
            count += 1;
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Goal: operations come due on the fixed grid, not when the caller asks; a late caller
    /// gets each due operation with its own due time (the time latency counts from).
    #[test]
    fn late_callers_get_each_operation_with_its_due_time() {
        let mut schedule = Schedule::new(MonoTime(10 * MS), 1000.0);
        assert_eq!(schedule.take_due(MonoTime(9 * MS)), None);
        assert_eq!(
            schedule.take_due(MonoTime(10 * MS)),
            Some(MonoTime(10 * MS))
        );
        assert_eq!(schedule.take_due(MonoTime(10 * MS)), None);
        assert_eq!(schedule.next_due(), MonoTime(11 * MS));
        // 3.5 ms late: three operations are due, each with its own time.
        let now = MonoTime(13 * MS + MS / 2);
        let taken: Vec<_> = std::iter::from_fn(|| schedule.take_due(now)).collect();
        assert_eq!(
            taken,
            vec![MonoTime(11 * MS), MonoTime(12 * MS), MonoTime(13 * MS)]
        );
        assert_eq!(schedule.due_count(now), 4);
    }

    /// Goal: fractional rates and intervals that are not whole nanoseconds stay on the grid.
    #[test]
    fn due_counts_agree_with_due_times() {
        let schedule = Schedule::new(MonoTime(0), 3.0);
        assert_eq!(schedule.due_count(MonoTime(0)), 1);
        assert_eq!(schedule.due_count(MonoTime(333_333_332)), 1);
        assert_eq!(schedule.due_count(MonoTime(333_333_333)), 2);
        assert_eq!(schedule.due_count(MonoTime(1_000_000_000)), 4);
        let slow = Schedule::new(MonoTime(5), 0.5);
        assert_eq!(slow.due_count(MonoTime(4)), 0);
        assert_eq!(slow.due_count(MonoTime(2_000_000_004)), 1);
        assert_eq!(slow.due_count(MonoTime(2_000_000_005)), 2);
    }
}
