//! Timers keyed by value: setting one replaces it, a cancelled one never fires, and due
//! timers fire in (deadline, timer) order.

use std::collections::{BTreeMap, BTreeSet};

use crate::role::MonoTime;

/// The armed timers of one role.
#[derive(Debug)]
pub struct TimerTable<T: Ord + Clone> {
    by_timer: BTreeMap<T, MonoTime>,
    by_deadline: BTreeSet<(MonoTime, T)>,
}

impl<T: Ord + Clone> Default for TimerTable<T> {
    fn default() -> TimerTable<T> {
        TimerTable {
            by_timer: BTreeMap::new(),
            by_deadline: BTreeSet::new(),
        }
    }
}

impl<T: Ord + Clone> TimerTable<T> {
    /// Arms `timer` at `at`, replacing any earlier setting.
    pub fn set(&mut self, timer: T, at: MonoTime) {
        if let Some(old) = self.by_timer.insert(timer.clone(), at) {
            self.by_deadline.remove(&(old, timer.clone()));
        }
        self.by_deadline.insert((at, timer));
    }

    /// Disarms `timer` if armed.
    pub fn cancel(&mut self, timer: &T) {
        if let Some(old) = self.by_timer.remove(timer) {
            self.by_deadline.remove(&(old, timer.clone()));
        }
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<MonoTime> {
        self.by_deadline.first().map(|(at, _)| *at)
    }

    /// Every timer due at `now`, in (deadline, timer) order, left armed. The caller fires
    /// each through [`TimerTable::remove_if_armed_at`], so that a due timer cancelled or
    /// re-armed by an earlier handler of the same turn does not fire.
    pub fn due(&self, now: MonoTime) -> Vec<(MonoTime, T)> {
        self.by_deadline
            .iter()
            .take_while(|(at, _)| *at <= now)
            .cloned()
            .collect()
    }

    /// Disarms `timer` if it is armed at exactly `at`; returns whether it was.
    pub fn remove_if_armed_at(&mut self, timer: &T, at: MonoTime) -> bool {
        if self.by_timer.get(timer) != Some(&at) {
            return false;
        }
        self.cancel(timer);
        true
    }

    /// Number of armed timers.
    pub fn len(&self) -> usize {
        self.by_timer.len()
    }

    /// Whether no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.by_timer.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_replaces_and_cancel_prevents_firing() {
        let mut timers = TimerTable::default();
        timers.set("a", MonoTime(10));
        timers.set("b", MonoTime(5));
        timers.set("a", MonoTime(3));
        timers.set("c", MonoTime(4));
        timers.cancel(&"c");
        assert_eq!(timers.next_deadline(), Some(MonoTime(3)));
        let due = timers.due(MonoTime(5));
        assert_eq!(due, vec![(MonoTime(3), "a"), (MonoTime(5), "b")]);
        // An earlier handler re-arms "b": the stale due entry must not fire.
        timers.set("b", MonoTime(9));
        assert!(timers.remove_if_armed_at(&"a", MonoTime(3)));
        assert!(!timers.remove_if_armed_at(&"b", MonoTime(5)));
        assert_eq!(timers.len(), 1);
    }

    #[test]
    fn equal_deadlines_fire_in_timer_order() {
        let mut timers = TimerTable::default();
        timers.set(2, MonoTime(7));
        timers.set(1, MonoTime(7));
        assert_eq!(
            timers.due(MonoTime(7)),
            vec![(MonoTime(7), 1), (MonoTime(7), 2)]
        );
    }
}
