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

    /// The true offset (true time minus this clock) when this clock reads `local_ns`: the
    /// ground truth a time client estimates. With ρ = drift, u = local − epoch:
    /// local = t + offset + ρ(t − epoch) gives t − local = −(offset + ρu)/(1 + ρ).
    /// Exact to the nanosecond `apply` rounds to.
    pub fn true_offset_ns(&self, local_ns: i64, epoch_ns: i64) -> f64 {
        let rho = self.drift_ppm * 1e-6;
        let since_epoch = (local_ns - epoch_ns) as f64;
        -(self.offset_ns + rho * since_epoch) / (1.0 + rho)
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

    /// Goal: `true_offset_ns` inverts `apply` to within its rounding, at large offsets
    /// and drifts of both signs.
    #[test]
    fn true_offset_inverts_apply() {
        let epoch = 1_767_225_600_000_000_000;
        for (offset_ns, drift_ppm) in [(0.0, 0.0), (-2.5e9, 500.0), (7e6, -500.0), (1.0, 100.0)] {
            let skew = ClockSkew {
                offset_ns,
                drift_ppm,
            };
            for elapsed in [0, 1_000, 3_600_000_000_000i64] {
                let truth = epoch + elapsed;
                let local = skew.apply(truth, epoch);
                let error = skew.true_offset_ns(local, epoch) - (truth - local) as f64;
                assert!(error.abs() <= 1.0, "{skew:?} at {elapsed}: {error}");
            }
        }
    }
}
