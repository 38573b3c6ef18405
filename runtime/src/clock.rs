//! A node's skewable physical clock: true time + offset + drift.
//!
//! `physical(t) = t + offset + drift_ppm * 1e-6 * (t - epoch)`, where `epoch` is the true
//! time at which the node started. Ground truth is therefore exact in experiments.

/// Injected skew of a node's physical clock.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClockSkew {
    /// Constant offset, in nanoseconds.
    pub offset_ns: f64,
    /// Rate error, in parts per million (positive runs fast).
    pub drift_ppm: f64,
}

impl ClockSkew {
    /// The skewed reading at true time `true_ns`, for a clock started at true time `epoch_ns`.
    pub fn apply(&self, true_ns: i64, epoch_ns: i64) -> i64 {
        let elapsed = (true_ns - epoch_ns) as f64;
        let skew = self.offset_ns + self.drift_ppm * 1e-6 * elapsed;
        true_ns + skew.round() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_and_drift_add_up() {
        let skew = ClockSkew {
            offset_ns: 1_000.0,
            drift_ppm: 500.0,
        };
        // One second after the epoch a +500 ppm clock has gained 500 µs.
        assert_eq!(
            skew.apply(2_000_000_000, 1_000_000_000),
            2_000_000_000 + 1_000 + 500_000
        );
        assert_eq!(ClockSkew::default().apply(42, 0), 42);
    }
}
