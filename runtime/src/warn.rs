//! Rate-limited warnings: every warning a peer can trigger goes through here, so a flood of
//! bad frames costs a line a second, not a line a frame.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::role::MonoTime;

/// Lines per category per window.
const LINES_PER_WINDOW: u32 = 5;
/// The window.
const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Window {
    start: MonoTime,
    lines: u32,
    suppressed: u64,
}

/// Warnings by category, at most [`LINES_PER_WINDOW`] lines a second each; the count of
/// suppressed lines is reported with the next line that goes out.
#[derive(Debug, Default)]
pub struct Warnings {
    by_category: BTreeMap<&'static str, Window>,
}

impl Warnings {
    /// Logs `text` at warn level unless `category` is over its rate at `now`; returns
    /// whether the line went out.
    pub fn warn(&mut self, category: &'static str, now: MonoTime, text: &str) -> bool {
        let window = self.by_category.entry(category).or_insert(Window {
            start: now,
            lines: 0,
            suppressed: 0,
        });
        if now.since(window.start) >= WINDOW {
            window.start = now;
            window.lines = 0;
        }
        if window.lines >= LINES_PER_WINDOW {
            window.suppressed += 1;
            return false;
        }
        window.lines += 1;
        if window.suppressed > 0 {
            log::warn!("{text} ({} similar lines suppressed)", window.suppressed);
            window.suppressed = 0;
        } else {
            log::warn!("{text}");
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_costs_a_few_lines_a_second() {
        let mut warnings = Warnings::default();
        let sent = (0..1000)
            .filter(|i| warnings.warn("flood", MonoTime(i * 1_000_000), "bad frame"))
            .count();
        assert_eq!(sent, 5, "1000 warnings within one second");
        assert!(warnings.warn("other", MonoTime(0), "another category"));
        assert!(warnings.warn("flood", MonoTime(1_000_000_000), "next second"));
    }
}
