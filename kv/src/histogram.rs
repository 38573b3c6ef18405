//! Fixed-bucket histograms for the metrics endpoint and `pbkv info`: a count per bucket, a
//! sum and a total, so recording costs a short scan and never allocates, and a snapshot is
//! a copy.

/// Bucket upper bounds (inclusive) of a latency histogram, in nanoseconds: 50 µs to 5 s.
pub const LATENCY_BOUNDS_NS: [u64; 16] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
];

/// Bucket upper bounds (inclusive) of a forward's entry count: powers of two to 32768.
pub const BATCH_BOUNDS: [u64; 16] = [
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16_384, 32_768,
];

/// A histogram over 16 fixed bounds and an overflow bucket (`+Inf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Histogram {
    bounds: &'static [u64; 16],
    /// Observations per bucket, not cumulative; the last is the overflow.
    counts: [u64; 17],
    sum: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub const fn new(bounds: &'static [u64; 16]) -> Histogram {
        Histogram {
            bounds,
            counts: [0; 17],
            sum: 0,
        }
    }

    /// An empty latency histogram ([`LATENCY_BOUNDS_NS`]), recorded in nanoseconds.
    pub const fn latency() -> Histogram {
        Histogram::new(&LATENCY_BOUNDS_NS)
    }

    /// An empty batch-size histogram ([`BATCH_BOUNDS`]).
    pub const fn batch() -> Histogram {
        Histogram::new(&BATCH_BOUNDS)
    }

    /// Records one observation.
    pub fn record(&mut self, value: u64) {
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket] += 1;
        self.sum = self.sum.saturating_add(value);
    }

    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The sum of all observations (saturating).
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// `(upper bound, observations at or below it)` for each bound, cumulative as
    /// Prometheus reports them; the `+Inf` bucket is [`Histogram::count`].
    pub fn cumulative(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.bounds
            .iter()
            .zip(self.counts.iter())
            .scan(0, |below, (bound, count)| {
                *below += count;
                Some((*bound, *below))
            })
    }

    /// `(upper bound, observations in that bucket)` per bucket, not cumulative, ending with
    /// the overflow bucket (bound `None`, `+Inf`).
    pub fn buckets(&self) -> impl Iterator<Item = (Option<u64>, u64)> + '_ {
        let bounds = self.bounds.iter().map(|bound| Some(*bound));
        bounds
            .chain(std::iter::once(None))
            .zip(self.counts.iter().copied())
    }

    /// The smallest bound at or below which at least `quantile` (0 to 1) of the
    /// observations lie: an upper estimate, as precise as the buckets. `None` when empty
    /// or when the quantile falls in the overflow bucket.
    pub fn quantile_bound(&self, quantile: f64) -> Option<u64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        // The rank of the quantile, at least 1: ceil(q × count).
        let rank = ((quantile.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        self.cumulative()
            .find(|(_, below)| *below >= rank)
            .map(|(bound, _)| bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: values land in the first bucket whose bound is at or above them, cumulative
    /// counts add up, the overflow is counted, and quantiles are the buckets' bounds.
    #[test]
    fn buckets_count_and_bound_quantiles() {
        let mut h = Histogram::batch();
        for value in [1, 2, 3, 3, 100, 40_000] {
            h.record(value);
        }
        assert_eq!(h.count(), 6);
        assert_eq!(h.sum(), 40_109);
        let cumulative: Vec<(u64, u64)> = h.cumulative().collect();
        assert_eq!(cumulative[0], (1, 1));
        assert_eq!(cumulative[1], (2, 2));
        assert_eq!(cumulative[2], (4, 4));
        assert_eq!(cumulative[7], (128, 5));
        assert_eq!(cumulative[15], (32_768, 5));
        assert_eq!(h.quantile_bound(0.5), Some(4));
        assert_eq!(h.quantile_bound(0.8), Some(128));
        assert_eq!(
            h.quantile_bound(1.0),
            None,
            "the largest is in the overflow"
        );
        assert_eq!(Histogram::latency().quantile_bound(0.5), None);
        let buckets: Vec<(Option<u64>, u64)> = h.buckets().collect();
        assert_eq!(buckets.len(), 17);
        assert_eq!(buckets[2], (Some(4), 2));
        assert_eq!(buckets[16], (None, 1));
    }
}
