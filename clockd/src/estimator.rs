//! Offset, delay, error bound and drift from four-timestamp exchanges: pure arithmetic.
//!
//! Conventions (docs/clocks.md, research notes A1 and A7):
//!
//! - **offset** θ = server − client: what to add to the local clock. From one exchange,
//!   θ̂ = ((T2 − T1) + (T3 − T4)) / 2 and the round-trip delay δ = (T4 − T1) − (T3 − T2).
//!   With one-way delays d₁, d₂ ≥ 0 the error is (d₁ − d₂)/2, so |θ̂ − θ| ≤ δ/2; when the
//!   server stamps once (T2 = T3) this is Cristian's RTT/2.
//! - **drift** ρ > 0 means the local clock runs fast: local(t) = t + off₀ + ρ(t − t₀), so the
//!   true offset falls at rate ρ per second of **reference** time. The regression is of θ̂
//!   against the reference time s = (T2 + T3)/2 and ρ̂ = −slope. (Against local time the
//!   slope is −ρ/(1 + ρ); reading it as −ρ would be off by ρ², 0.25 ppm at 500 ppm.)
//!
//! The pipeline: each exchange gives a [`Sample`]; [`Estimator::add`] rejects samples whose
//! delay is an outlier from the regression window, keeps the last [`EstimatorConfig::filter_len`]
//! samples for the minimum-delay filter (RFC 5905 §10), and regresses the kept window for
//! the drift with its 95 % confidence interval. [`Estimator::estimate_at`] gives the current
//! offset: the minimum-delay sample, carried forward by the drift estimate to "now", with a
//! bound that grows with its age by the drift's hard (not statistical) uncertainty.

use std::collections::VecDeque;

/// The four timestamps of one exchange, in nanoseconds: T1 and T4 on the client's clock,
/// T2 and T3 on the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamps {
    /// Client transmit.
    pub t1: i64,
    /// Server receive.
    pub t2: i64,
    /// Server transmit.
    pub t3: i64,
    /// Client receive.
    pub t4: i64,
}

impl Stamps {
    /// θ̂ = ((T2 − T1) + (T3 − T4)) / 2, server minus client, in nanoseconds. First-order
    /// differences in 128-bit integers, then the halving in floating point (RFC 5905 §8).
    pub fn offset_ns(&self) -> f64 {
        let sum = (i128::from(self.t2) - i128::from(self.t1))
            + (i128::from(self.t3) - i128::from(self.t4));
        sum as f64 / 2.0
    }

    /// δ = (T4 − T1) − (T3 − T2): the time on the wire, the server's hold time removed.
    pub fn delay_ns(&self) -> i128 {
        (i128::from(self.t4) - i128::from(self.t1)) - (i128::from(self.t3) - i128::from(self.t2))
    }
}

/// Why an exchange gives no sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleError {
    /// δ < 0: impossible for stamps taken in the safe directions (a clock stepped, or a
    /// bogus reply). The sample is discarded.
    NegativeDelay(i128),
    /// T3 < T2: the server claims to have answered before it was asked.
    NegativeHold(i128),
    /// T4 < T1 or a difference beyond ±2⁶² ns: not a plausible exchange.
    Implausible,
}

impl std::fmt::Display for SampleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SampleError::NegativeDelay(ns) => write!(f, "negative round-trip delay ({ns} ns)"),
            SampleError::NegativeHold(ns) => write!(f, "server transmit before receive ({ns} ns)"),
            SampleError::Implausible => f.write_str("implausible timestamps"),
        }
    }
}

impl std::error::Error for SampleError {}

/// One exchange, measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The request's sequence number.
    pub seq: u64,
    /// The four timestamps.
    pub stamps: Stamps,
    /// θ̂, server minus client, in nanoseconds.
    pub offset_ns: f64,
    /// δ, in nanoseconds.
    pub delay_ns: i64,
    /// The hard error bound of `offset_ns`: δ/2 plus the server's own error, both clocks'
    /// read precision, and the most the offset can move during the exchange.
    pub bound_ns: f64,
    /// Midpoint (T1 + T4)/2 on the local clock.
    pub local_ns: i64,
    /// Midpoint (T2 + T3)/2 on the server's (reference) clock.
    pub reference_ns: i64,
}

/// What the bound of one sample adds to δ/2.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoundTerms {
    /// The server's own error bound against the reference (0 for the reference).
    pub server_err_ns: u32,
    /// Read precision of the server's clock plus the client's.
    pub precision_ns: u32,
    /// The largest drift assumed possible before the data bound it, in ppm: the offset
    /// can move by this much per unit of the exchange's duration.
    pub phi_max_ppm: f64,
}

impl Default for BoundTerms {
    fn default() -> BoundTerms {
        BoundTerms {
            server_err_ns: 0,
            precision_ns: 2,
            phi_max_ppm: PHI_MAX_PPM_DEFAULT,
        }
    }
}

/// Default assumed maximum drift: a clock off by more than 0.1 % is broken, not skewed.
pub const PHI_MAX_PPM_DEFAULT: f64 = 1000.0;

impl Sample {
    /// Measures one exchange.
    ///
    /// # Errors
    /// [`SampleError`] when the stamps cannot come from a real exchange.
    pub fn new(seq: u64, stamps: Stamps, terms: BoundTerms) -> Result<Sample, SampleError> {
        const LIMIT: i128 = 1 << 62;
        let hold = i128::from(stamps.t3) - i128::from(stamps.t2);
        let round_trip = i128::from(stamps.t4) - i128::from(stamps.t1);
        let offset_sum = i128::from(stamps.t2) - i128::from(stamps.t1);
        if !(0..=LIMIT).contains(&round_trip) || hold > LIMIT || offset_sum.abs() > LIMIT {
            return Err(SampleError::Implausible);
        }
        if hold < 0 {
            return Err(SampleError::NegativeHold(hold));
        }
        let delay = stamps.delay_ns();
        if delay < 0 {
            return Err(SampleError::NegativeDelay(delay));
        }
        let delay_ns = i64::try_from(delay).map_err(|_| SampleError::Implausible)?;
        let offset_ns = stamps.offset_ns();
        let bound_ns = delay_ns as f64 / 2.0
            + f64::from(terms.server_err_ns)
            + f64::from(terms.precision_ns)
            + terms.phi_max_ppm * 1e-6 * round_trip as f64
            + rounding_ns(offset_ns);
        Ok(Sample {
            seq,
            stamps,
            offset_ns,
            delay_ns,
            bound_ns,
            local_ns: midpoint(stamps.t1, stamps.t4),
            reference_ns: midpoint(stamps.t2, stamps.t3),
        })
    }
}

fn midpoint(a: i64, b: i64) -> i64 {
    ((i128::from(a) + i128::from(b)) / 2) as i64
}

/// What float rounding can add to an offset of `offset_ns`: nothing below 2⁵² ns (52 days),
/// where a float holds every half nanosecond; past it, up to |θ| × 2⁻⁵³ (counted twice).
fn rounding_ns(offset_ns: f64) -> f64 {
    if offset_ns.abs() < (1u64 << 52) as f64 {
        0.0
    } else {
        offset_ns.abs() * f64::EPSILON
    }
}

/// `later − earlier` in nanoseconds, without overflow however far apart they are.
pub fn ns_between(later: i64, earlier: i64) -> f64 {
    (i128::from(later) - i128::from(earlier)) as f64
}

fn saturating_ns(ns: i128) -> i64 {
    i64::try_from(ns).unwrap_or(if ns < 0 { i64::MIN } else { i64::MAX })
}

/// Tuning of the estimator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EstimatorConfig {
    /// Samples the minimum-delay filter chooses from (RFC 5905: 8).
    pub filter_len: usize,
    /// Largest regression window, in polls (chrony: 64 samples).
    pub window_len: usize,
    /// Outlier rule: a sample whose delay exceeds the window's median delay by more than
    /// this many robust standard deviations (1.4826 × MAD) stays out of the regression.
    pub outlier_sigmas: f64,
    /// Floor of that margin, in nanoseconds, so a very steady path rejects nothing useful.
    pub outlier_floor_ns: f64,
    /// What each sample's bound adds to δ/2.
    pub terms: BoundTerms,
}

impl Default for EstimatorConfig {
    fn default() -> EstimatorConfig {
        EstimatorConfig {
            filter_len: 8,
            window_len: 64,
            outlier_sigmas: 5.0,
            outlier_floor_ns: 2_000.0,
            terms: BoundTerms::default(),
        }
    }
}

/// A drift estimate from the regression window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drift {
    /// ρ̂ in ppm: positive means the local clock runs fast.
    pub ppm: f64,
    /// Half-width of the 95 % confidence interval of `ppm` (Student's t, n − 2 degrees of
    /// freedom); `None` below 3 samples.
    pub ci95_ppm: Option<f64>,
    /// Samples in the regression.
    pub n: usize,
    /// Reference time the window spans, in nanoseconds.
    pub span_ns: i64,
    /// The regression line's offset at the newest sample's reference time, in nanoseconds.
    pub offset_ns: f64,
    /// Residual standard deviation, in nanoseconds (0 below 3 samples).
    pub residual_sd_ns: f64,
}

/// The hard interval the drift must lie in, given every kept sample's bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftInterval {
    /// Lower end, in ppm.
    pub lo_ppm: f64,
    /// Upper end, in ppm.
    pub hi_ppm: f64,
}

/// The current offset estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Estimated offset (server − client) at the local time asked for, in nanoseconds.
    pub offset_ns: f64,
    /// Hard error bound of `offset_ns`.
    pub bound_ns: f64,
    /// The sample it comes from.
    pub seq: u64,
    /// That sample's delay.
    pub delay_ns: i64,
    /// How old that sample is, in local nanoseconds (negative for a time before it).
    pub age_ns: i64,
}

/// What [`Estimator::add`] did with a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Used by the filter and the regression.
    Kept,
    /// Another exchange of the same poll had a lower delay and stands for the poll in the
    /// regression; the filter may still choose this one.
    NotBest,
    /// Its delay is an outlier: the filter may still choose it (it picks the lowest delay
    /// anyway), the regression does not use it.
    Outlier,
}

/// The running estimator: filter, outlier rule, regression window.
#[derive(Debug, Clone)]
pub struct Estimator {
    config: EstimatorConfig,
    /// The last `filter_len` samples, oldest first.
    recent: VecDeque<Sample>,
    /// The regression's points, one per poll (its lowest-delay exchange), the last
    /// `window_len` of them, oldest first, outliers included: the outlier rule is applied
    /// afresh to the whole window whenever it changes, so a slow sample that came before
    /// there was a history to judge it by is still left out.
    window: VecDeque<(u64, Sample)>,
    /// Polls whose point was a delay outlier when it was set.
    outliers: u64,
    /// Whether the newest poll's point is counted in `outliers`.
    newest_is_outlier: bool,
    samples: u64,
    drift: Option<Drift>,
    interval: DriftInterval,
}

impl Estimator {
    /// An empty estimator.
    ///
    /// # Panics
    /// If a window or filter length is zero (a configuration bug).
    pub fn new(config: EstimatorConfig) -> Estimator {
        assert!(
            config.filter_len > 0 && config.window_len > 0,
            "empty window"
        );
        Estimator {
            config,
            recent: VecDeque::with_capacity(config.filter_len),
            window: VecDeque::with_capacity(config.window_len),
            outliers: 0,
            newest_is_outlier: false,
            samples: 0,
            drift: None,
            interval: prior(config.terms.phi_max_ppm),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EstimatorConfig {
        &self.config
    }

    /// Adds a sample that is a poll of its own (samples must come in exchange order).
    pub fn add(&mut self, sample: Sample) -> Verdict {
        self.add_in_poll(sample, sample.seq)
    }

    /// Adds a sample of poll `poll`: the exchanges of one poll (a burst) share one point
    /// of the regression, the lowest-delay one, so the window spans `window_len` polls
    /// however many exchanges each makes. Samples must come in exchange order.
    pub fn add_in_poll(&mut self, sample: Sample, poll: u64) -> Verdict {
        self.samples += 1;
        push_bounded(&mut self.recent, sample, self.config.filter_len);
        let mut verdict = Verdict::Kept;
        match self.window.back_mut() {
            Some((last, point)) if *last == poll => {
                if sample.delay_ns < point.delay_ns {
                    *point = sample;
                    // The poll is judged again by its new point.
                    if std::mem::take(&mut self.newest_is_outlier) {
                        self.outliers -= 1;
                    }
                } else {
                    verdict = Verdict::NotBest;
                }
            }
            _ => {
                push_bounded(&mut self.window, (poll, sample), self.config.window_len);
                self.newest_is_outlier = false;
            }
        }
        let limit = self.delay_limit_ns();
        let kept: VecDeque<Sample> = self
            .window
            .iter()
            .map(|(_, point)| *point)
            .filter(|point| point.delay_ns as f64 <= limit)
            .collect();
        self.drift = regress(&kept);
        self.interval = hard_interval(&kept, self.config.terms.phi_max_ppm);
        if verdict == Verdict::Kept && sample.delay_ns as f64 > limit {
            self.outliers += 1;
            self.newest_is_outlier = true;
            verdict = Verdict::Outlier;
        }
        verdict
    }

    /// The outlier rule's threshold over the current window: the median delay plus
    /// `outlier_sigmas` robust standard deviations (at least `outlier_floor_ns`). Below
    /// three samples there is no median to trust, and nothing is an outlier.
    fn delay_limit_ns(&self) -> f64 {
        if self.window.len() < 3 {
            return f64::INFINITY;
        }
        let mut delays: Vec<i64> = self.window.iter().map(|(_, s)| s.delay_ns).collect();
        let median = median_of(&mut delays);
        let mut deviations: Vec<i64> = delays.iter().map(|d| (d - median).abs()).collect();
        let mad = median_of(&mut deviations) as f64;
        let margin = (self.config.outlier_sigmas * 1.4826 * mad).max(self.config.outlier_floor_ns);
        median as f64 + margin
    }

    /// Samples added, and how many polls' points were delay outliers when they were set
    /// (a burst's slow first exchange that a later one replaced does not count).
    pub fn counts(&self) -> (u64, u64) {
        (self.samples, self.outliers)
    }

    /// The minimum-delay sample of the last `filter_len` (the newest among equals).
    pub fn best(&self) -> Option<&Sample> {
        self.recent
            .iter()
            .rev()
            .min_by_key(|sample| sample.delay_ns)
    }

    /// The drift estimate, once the window holds two samples at different times.
    pub fn drift(&self) -> Option<Drift> {
        self.drift
    }

    /// The interval the drift certainly lies in, if every kept sample's bound holds. An
    /// empty interval (lo > hi) means some bound did not hold: a bug, or a clock stepped.
    pub fn drift_interval(&self) -> DriftInterval {
        self.interval
    }

    /// The drift used to carry offsets forward: the regression's, held inside the hard
    /// interval (inside ±φ_max if that is empty); 0 before there is one.
    fn drift_for_correction_ppm(&self) -> f64 {
        let ppm = self.drift.map_or(0.0, |drift| drift.ppm);
        let (lo, hi) = self.usable_interval();
        if ppm.is_nan() { 0.0 } else { ppm.clamp(lo, hi) }
    }

    /// The hard interval, or ±φ_max when it is empty (some bound did not hold).
    fn usable_interval(&self) -> (f64, f64) {
        let DriftInterval { lo_ppm, hi_ppm } = self.interval;
        if lo_ppm <= hi_ppm {
            (lo_ppm, hi_ppm)
        } else {
            let phi = self.config.terms.phi_max_ppm;
            (-phi, phi)
        }
    }

    /// The current offset estimate at local time `local_now_ns`: the minimum-delay sample
    /// corrected for its age by the drift estimate, with its bound grown by the most the
    /// drift can be wrong (the hard interval, not the confidence interval) over that age.
    /// A time before the sample works too (the age is then negative).
    pub fn estimate_at(&self, local_now_ns: i64) -> Option<Estimate> {
        let best = self.best()?;
        let age = ns_between(local_now_ns, best.local_ns);
        let age_ns = saturating_ns(i128::from(local_now_ns) - i128::from(best.local_ns));
        // Over a local interval Δl a clock of drift ρ sees Δt = Δl/(1 + ρ) of reference
        // time, so the offset moves by −ρΔl/(1 + ρ).
        let per_local = |ppm: f64| {
            let rho = ppm * 1e-6;
            rho / (1.0 + rho)
        };
        let rho_hat = self.drift_for_correction_ppm();
        let (lo, hi) = self.usable_interval();
        let slack = (per_local(hi) - per_local(rho_hat))
            .abs()
            .max((per_local(rho_hat) - per_local(lo)).abs());
        let offset_ns = best.offset_ns - per_local(rho_hat) * age;
        Some(Estimate {
            offset_ns,
            bound_ns: best.bound_ns + slack * age.abs() + rounding_ns(offset_ns),
            seq: best.seq,
            delay_ns: best.delay_ns,
            age_ns,
        })
    }
}

fn prior(phi_max_ppm: f64) -> DriftInterval {
    DriftInterval {
        lo_ppm: -phi_max_ppm,
        hi_ppm: phi_max_ppm,
    }
}

fn push_bounded<T>(queue: &mut VecDeque<T>, item: T, len_max: usize) {
    if queue.len() == len_max {
        queue.pop_front();
    }
    queue.push_back(item);
}

fn median_of(values: &mut [i64]) -> i64 {
    values.sort_unstable();
    values[values.len() / 2]
}

/// Ordinary least squares of offset against reference time over `window`.
fn regress(window: &VecDeque<Sample>) -> Option<Drift> {
    let newest = window.back()?;
    let n = window.len();
    // x in seconds relative to the newest sample keeps the sums well conditioned.
    let points: Vec<(f64, f64)> = window
        .iter()
        .map(|s| {
            (
                ns_between(s.reference_ns, newest.reference_ns) * 1e-9,
                s.offset_ns,
            )
        })
        .collect();
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n as f64;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n as f64;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if n < 2 || sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let slope = sxy / sxx; // ns of offset per second of reference time
    let intercept = mean_y - slope * mean_x; // at x = 0, the newest sample
    let (ci95_ppm, residual_sd_ns) = if n >= 3 {
        let ssr: f64 = points
            .iter()
            .map(|p| (p.1 - (intercept + slope * p.0)).powi(2))
            .sum();
        let sd = (ssr / (n - 2) as f64).sqrt();
        let slope_se = sd / sxx.sqrt();
        (Some(student_t_975(n - 2) * slope_se * 1e-3), sd)
    } else {
        (None, 0.0)
    };
    let oldest = window.front()?;
    Some(Drift {
        // slope is ns per s = 1e-9 per 1e-6 ppm: −slope × 1e-3 ppm.
        ppm: -slope * 1e-3,
        ci95_ppm,
        n,
        span_ns: saturating_ns(i128::from(newest.reference_ns) - i128::from(oldest.reference_ns)),
        offset_ns: intercept,
        residual_sd_ns,
    })
}

/// The drift interval every pair of kept samples allows, intersected with ±`phi_max_ppm`:
/// θ(sⱼ) − θ(sᵢ) = −ρ(sⱼ − sᵢ) with each θ within its sample's bound.
fn hard_interval(window: &VecDeque<Sample>, phi_max_ppm: f64) -> DriftInterval {
    let mut interval = prior(phi_max_ppm);
    for (i, a) in window.iter().enumerate() {
        for b in window.iter().skip(i + 1) {
            let span = ns_between(b.reference_ns, a.reference_ns);
            if span <= 0.0 {
                continue;
            }
            let change = b.offset_ns - a.offset_ns;
            let slack = a.bound_ns + b.bound_ns;
            // ρ = −change/span, with change uncertain by ±slack; ppm = ×1e6. The ends are
            // widened by a few units of float rounding so that rounding never excludes
            // the truth.
            let lo = -(change + slack) / span * 1e6;
            let hi = -(change - slack) / span * 1e6;
            let fuzz = 8.0 * f64::EPSILON * (lo.abs().max(hi.abs()) + 1.0);
            interval.lo_ppm = interval.lo_ppm.max(lo - fuzz);
            interval.hi_ppm = interval.hi_ppm.min(hi + fuzz);
        }
    }
    interval
}

/// The 97.5 % quantile of Student's t with `df` degrees of freedom (two-sided 95 %), from
/// statrs's inverse CDF, rounded to three decimals: the precision of the published tables
/// (12.706 for one degree of freedom, 2.042 for thirty) that the research notes quote, so a
/// report reads the same numbers a reader finds there.
pub fn student_t_975(df: usize) -> f64 {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    if df == 0 {
        return f64::INFINITY;
    }
    match StudentsT::new(0.0, 1.0, df as f64) {
        Ok(t) => (t.inverse_cdf(0.975) * 1000.0).round() / 1000.0,
        // Only a non-positive or NaN df is refused, and df is at least 1 here.
        Err(_) => f64::INFINITY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamps(t1: i64, t2: i64, t3: i64, t4: i64) -> Stamps {
        Stamps { t1, t2, t3, t4 }
    }

    fn exact_terms() -> BoundTerms {
        BoundTerms {
            server_err_ns: 0,
            precision_ns: 0,
            phi_max_ppm: 0.0,
        }
    }

    /// Goal: the research notes' A8 vectors, exactly.
    #[test]
    fn a8_vectors() {
        // Case 1: θ̂ = 400, δ = 200, bound 100.
        let one = Sample::new(1, stamps(1000, 1500, 1600, 1300), exact_terms()).expect("ok");
        assert_eq!(one.offset_ns, 400.0);
        assert_eq!(one.delay_ns, 200);
        assert_eq!(one.bound_ns, 100.0);
        // Case 2: true θ = 400 with d₁ = 150, d₂ = 50: θ̂ = 450, error +50 = a/2 ≤ δ/2.
        let two = Sample::new(2, stamps(1000, 1550, 1650, 1300), exact_terms()).expect("ok");
        assert_eq!(two.offset_ns, 450.0);
        assert_eq!(two.delay_ns, 200);
        let error = two.offset_ns - 400.0;
        assert_eq!(error, (150.0 - 50.0) / 2.0);
        assert!(error.abs() <= two.bound_ns);
        // All the delay on one side: the bound is met with equality.
        let edge = Sample::new(3, stamps(1000, 1600, 1600, 1200), exact_terms()).expect("ok");
        assert_eq!(edge.offset_ns - 400.0, edge.bound_ns);
    }

    /// Goal: Cristian's algorithm is the T2 = T3 case: θ̂ = T + RTT/2 − T4, bound RTT/2.
    #[test]
    fn cristian_is_the_single_stamp_case() {
        let t = 5_000;
        let sample = Sample::new(1, stamps(1000, t, t, 1300), exact_terms()).expect("ok");
        assert_eq!(sample.offset_ns, t as f64 + 300.0 / 2.0 - 1300.0);
        assert_eq!(sample.bound_ns, 150.0);
    }

    /// Goal: impossible stamps are refused, each with its reason.
    #[test]
    fn bad_stamps_are_refused() {
        assert_eq!(
            Sample::new(1, stamps(1000, 1500, 1700, 1100), exact_terms()),
            Err(SampleError::NegativeDelay(-100))
        );
        assert_eq!(
            Sample::new(1, stamps(1000, 1500, 1400, 1300), exact_terms()),
            Err(SampleError::NegativeHold(-100))
        );
        assert_eq!(
            Sample::new(1, stamps(1000, 1500, 1600, 900), exact_terms()),
            Err(SampleError::Implausible)
        );
        assert_eq!(
            Sample::new(1, stamps(i64::MIN, i64::MAX, i64::MAX, 0), exact_terms()),
            Err(SampleError::Implausible)
        );
    }

    /// Goal: the bound's extra terms add as documented.
    #[test]
    fn bound_terms_add_up() {
        let terms = BoundTerms {
            server_err_ns: 7,
            precision_ns: 3,
            phi_max_ppm: 1000.0,
        };
        let sample = Sample::new(1, stamps(0, 1_000_000, 1_000_000, 100_000), terms).expect("ok");
        // δ/2 = 50 000; 1000 ppm of a 100 µs exchange = 100 ns.
        assert_eq!(sample.bound_ns, 50_000.0 + 7.0 + 3.0 + 100.0);
    }

    /// A client clock `local(t) = t + off + ρ(t − t0)` polling an exact server, with
    /// one-way delays from `delays`.
    fn exchange(
        seq: u64,
        t: i64,
        off: f64,
        ppm: f64,
        delays: (i64, i64, i64),
        terms: BoundTerms,
    ) -> (Sample, f64) {
        exchange_at(seq, t, (off, ppm), delays, terms)
    }

    fn exchange_at(
        seq: u64,
        t: i64,
        (off, ppm): (f64, f64),
        (d1, hold, d2): (i64, i64, i64),
        terms: BoundTerms,
    ) -> (Sample, f64) {
        let local = |true_ns: i64| true_ns + (off + ppm * 1e-6 * true_ns as f64).round() as i64;
        let t1 = local(t);
        let t2 = t + d1;
        let t3 = t2 + hold;
        let t4 = local(t3 + d2);
        let sample = Sample::new(seq, stamps(t1, t2, t3, t4), terms).expect("valid");
        // The true offset at the reference midpoint.
        let mid = (t2 + t3) / 2;
        (sample, (mid - local(mid)) as f64)
    }

    /// Goal: the drift sign convention (positive = local clock fast, ρ̂ = −slope against
    /// reference time) and its accuracy at ±500 ppm, where regressing against local time
    /// would be 0.25 ppm off.
    #[test]
    fn drift_sign_convention_at_500_ppm() {
        for ppm in [500.0, -500.0, 100.0, -100.0, 0.0] {
            let mut estimator = Estimator::new(EstimatorConfig::default());
            for k in 0..60 {
                let t = k * 1_000_000_000;
                let (sample, _) = exchange(k as u64, t, 3e6, ppm, (20_000, 5_000, 20_000), {
                    BoundTerms::default()
                });
                assert_eq!(estimator.add(sample), Verdict::Kept);
            }
            let drift = estimator.drift().expect("a drift");
            assert!(
                (drift.ppm - ppm).abs() < 0.001,
                "ppm {ppm}: estimated {}",
                drift.ppm
            );
            let interval = estimator.drift_interval();
            assert!(interval.lo_ppm <= ppm && ppm <= interval.hi_ppm);
            // The naive local-time regression reading would be off by about ρ².
            let naive = {
                let points: Vec<(f64, f64)> = estimator
                    .window
                    .iter()
                    .map(|(_, s)| (s.local_ns as f64 * 1e-9, s.offset_ns))
                    .collect();
                let n = points.len() as f64;
                let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
                let my = points.iter().map(|p| p.1).sum::<f64>() / n;
                let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
                let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
                -(sxy / sxx) * 1e-3
            };
            let rho = ppm * 1e-6;
            assert!((naive - ppm).abs() > 0.9 * rho * rho * 1e6 - 1e-3);
        }
    }

    /// Goal: the confidence interval has the textbook width for uniform polling,
    /// SE = σ√12 / (Δ√(n(n² − 1))), and holds the truth.
    #[test]
    fn confidence_interval_has_the_expected_width() {
        let mut estimator = Estimator::new(EstimatorConfig::default());
        let ppm = 100.0;
        // Alternating ±2 µs asymmetry: σ ≈ 2 µs of offset noise... (d1 − d2)/2 = ±2000.
        for k in 0..60i64 {
            let t = k * 1_000_000_000;
            let delays = if k % 2 == 0 {
                (24_000, 0, 20_000)
            } else {
                (20_000, 0, 24_000)
            };
            let (sample, _) = exchange(k as u64, t, 0.0, ppm, delays, BoundTerms::default());
            estimator.add(sample);
        }
        let drift = estimator.drift().expect("a drift");
        let ci = drift.ci95_ppm.expect("a CI");
        let n = 60.0f64;
        let expected_se_ppm = 2_000.0 * 12f64.sqrt() / (1e9 * (n * (n * n - 1.0)).sqrt()) * 1e6;
        let ratio = ci / (student_t_975(58) * expected_se_ppm);
        assert!((0.9..1.1).contains(&ratio), "ci {ci} ratio {ratio}");
        assert!((drift.ppm - ppm).abs() <= ci, "{drift:?}");
    }

    /// Goal: the minimum-delay filter picks the lowest delay of the last 8, and a delay
    /// outlier stays out of the regression.
    #[test]
    fn filter_and_outlier_rule() {
        let mut estimator = Estimator::new(EstimatorConfig::default());
        let terms = BoundTerms::default();
        let mut verdicts = Vec::new();
        for k in 0..20i64 {
            let t = k * 20_000_000;
            let d = if k == 12 {
                3_000_000
            } else {
                20_000 + (k % 5) * 1_000
            };
            let (sample, _) = exchange(k as u64, t, 0.0, 0.0, (d, 1_000, d), terms);
            verdicts.push(estimator.add(sample));
        }
        assert_eq!(verdicts[12], Verdict::Outlier);
        assert_eq!(estimator.counts(), (20, 1));
        // Last 8 are k = 12..20; delays (2 × (20 000 + (k % 5) × 1000)): k = 15 is lowest.
        assert_eq!(estimator.best().expect("some").seq, 15);
        // The window holds all 20; the regression leaves the outlier out.
        assert_eq!(estimator.window.len(), 20);
        assert_eq!(estimator.drift().expect("a drift").n, 19);
    }

    /// Goal: a burst's exchanges share one regression point, its lowest-delay one, so
    /// the window spans polls, not exchanges.
    #[test]
    fn a_burst_is_one_point_of_the_regression() {
        let mut estimator = Estimator::new(EstimatorConfig::default());
        let terms = BoundTerms::default();
        let mut verdicts = Vec::new();
        for poll in 0..100i64 {
            for exchange in 0..4i64 {
                let t = poll * 1_000_000_000 + exchange * 100_000;
                // The first exchange of every burst is the slow, cold one.
                let d = if exchange == 0 {
                    30_000
                } else {
                    2_000 + exchange * 100
                };
                let seq = (poll * 4 + exchange) as u64;
                let (sample, _) = exchange_at(seq, t, (0.0, 50.0), (d, 5_000, 2_000), terms);
                verdicts.push(estimator.add_in_poll(sample, poll as u64));
            }
        }
        let drift = estimator.drift().expect("a drift");
        assert_eq!(drift.n, 64);
        assert!(drift.span_ns >= 63_000_000_000, "{drift:?}");
        assert!(
            estimator
                .window
                .iter()
                .all(|(_, s)| s.delay_ns == 2_000 + 100 + 2_000)
        );
        // Exchange 0 leads its poll until exchange 1 beats it; 2 and 3 are not better.
        assert_eq!(
            &verdicts[4..8],
            &[
                Verdict::Kept,
                Verdict::Kept,
                Verdict::NotBest,
                Verdict::NotBest
            ]
        );
        assert!((drift.ppm - 50.0).abs() < 0.01, "{drift:?}");
        // The slow first exchanges were outliers when they arrived, but each was replaced
        // by a faster one of its burst: no poll is out of the regression.
        assert!(verdicts.contains(&Verdict::Outlier));
        assert_eq!(estimator.counts(), (400, 0));
    }

    /// Goal: the current estimate carries the best sample forward by the drift, and its
    /// bound covers the truth at every step, also before the drift is known.
    #[test]
    fn estimate_covers_the_truth_while_drift_is_learned() {
        let ppm = -500.0;
        let off = -2.5e6;
        let mut estimator = Estimator::new(EstimatorConfig::default());
        let local = |true_ns: i64| true_ns + (off + ppm * 1e-6 * true_ns as f64).round() as i64;
        for k in 0..200i64 {
            let t = k * 20_000_000;
            // Delays vary, with a one-sided 8 µs excursion every 7th exchange.
            let d1 = 15_000 + (k * 7919 % 10) * 500 + if k % 7 == 0 { 8_000 } else { 0 };
            let d2 = 15_000 + (k * 104_729 % 10) * 500;
            let (sample, _) = exchange(k as u64, t, off, ppm, (d1, 2_000, d2), {
                BoundTerms::default()
            });
            estimator.add(sample);
            let now_true = t + d1 + 2_000 + d2;
            let now_local = local(now_true);
            let estimate = estimator.estimate_at(now_local).expect("an estimate");
            let truth = (now_true - now_local) as f64;
            let error = estimate.offset_ns - truth;
            assert!(
                error.abs() <= estimate.bound_ns,
                "k {k}: error {error} bound {}",
                estimate.bound_ns
            );
        }
        let interval = estimator.drift_interval();
        assert!(
            interval.lo_ppm <= ppm && ppm <= interval.hi_ppm,
            "{interval:?}"
        );
        // 64 samples over 1.28 s with bounds near 15 µs: about ±2 × 15 µs / 1.28 s.
        assert!(interval.hi_ppm - interval.lo_ppm < 60.0, "{interval:?}");
    }

    const EPOCH: i64 = 1_767_225_600_000_000_000;

    /// Goal (review): samples whose reference times are 2⁶³ ns apart neither overflow nor
    /// panic; the hostile pair simply bounds nothing sensible.
    #[test]
    fn far_apart_samples_do_not_overflow() {
        let lim = 1i64 << 62;
        let terms = BoundTerms::default();
        let a = Sample::new(
            1,
            stamps(EPOCH, EPOCH - lim, EPOCH - lim, EPOCH + 20_000),
            terms,
        )
        .expect("valid on its own");
        let t1 = EPOCH + 1_000_000_000;
        let b = Sample::new(2, stamps(t1, t1 + lim, t1 + lim, t1 + 20_000), terms)
            .expect("valid on its own");
        let mut estimator = Estimator::new(EstimatorConfig::default());
        estimator.add(a);
        estimator.add(b);
        let estimate = estimator.estimate_at(t1 + 20_000).expect("an estimate");
        assert!(estimate.offset_ns.is_finite() && estimate.bound_ns.is_finite());
    }

    /// Goal (review): an offset of decades (a clock reset to 1970), where a float cannot
    /// hold every nanosecond, is still covered by the bound, and the hard interval still
    /// holds the true drift (0).
    #[test]
    fn huge_offsets_stay_covered() {
        let terms = BoundTerms::default();
        for k in 0..2000i64 {
            let theta = EPOCH - 86_400_000_000_000 + k * 37;
            let mut estimator = Estimator::new(EstimatorConfig::default());
            for (poll, (d1, d2)) in [(1000, 0), (0, 1000)].into_iter().enumerate() {
                let s0 = EPOCH + 5_000_000 + poll as i64 * 1_000_000_000;
                let (t1, t2) = (s0 - theta, s0 + d1);
                let t4 = t2 + d2 - theta;
                let sample = Sample::new(poll as u64, stamps(t1, t2, t2, t4), terms).expect("ok");
                let error = ns_between(sample.offset_ns as i64, theta);
                assert!(
                    error.abs() <= sample.bound_ns,
                    "k {k}: {error} > {}",
                    sample.bound_ns
                );
                estimator.add(sample);
                let estimate = estimator.estimate_at(t4).expect("an estimate");
                let error = (i128::from(estimate.offset_ns as i64) - i128::from(theta)) as f64;
                assert!(error.abs() <= estimate.bound_ns, "k {k}: {error}");
            }
            let interval = estimator.drift_interval();
            assert!(
                interval.lo_ppm <= 0.0 && 0.0 <= interval.hi_ppm,
                "k {k}: {interval:?}"
            );
        }
    }

    /// Goal (review): a reply claiming an impossible drift (a million ppm) cannot drive
    /// the estimate to infinity or NaN: the correction stays within ±φ_max.
    #[test]
    fn an_absurd_drift_is_clamped() {
        let terms = BoundTerms::default();
        let mut estimator = Estimator::new(EstimatorConfig::default());
        estimator.add(Sample::new(1, stamps(EPOCH, EPOCH, EPOCH, EPOCH), terms).expect("ok"));
        let later = EPOCH + 1_000_000_000;
        estimator.add(Sample::new(2, stamps(EPOCH, later, later, EPOCH), terms).expect("ok"));
        for now in [EPOCH, EPOCH + 1000, EPOCH + 1_000_000_000] {
            let estimate = estimator.estimate_at(now).expect("an estimate");
            assert!(estimate.offset_ns.is_finite(), "{estimate:?}");
            assert!(estimate.bound_ns.is_finite(), "{estimate:?}");
        }
    }

    /// Goal (review): an estimate for a time before its sample is carried backwards by
    /// the drift, and its bound still covers the truth.
    #[test]
    fn an_estimate_before_its_sample_is_covered() {
        let ppm = 500.0;
        let local = |true_ns: i64| true_ns + (ppm * 1e-6 * true_ns as f64).round() as i64;
        let mut estimator = Estimator::new(EstimatorConfig::default());
        for k in 0..10i64 {
            let t = k * 1_000_000_000;
            let (sample, _) = exchange(k as u64, t, 0.0, ppm, (10_000, 0, 10_000), {
                BoundTerms::default()
            });
            estimator.add(sample);
        }
        let best = *estimator.best().expect("a sample");
        let now_local = best.local_ns - 1_000_000_000;
        let estimate = estimator.estimate_at(now_local).expect("an estimate");
        // The truth at that local reading: invert local() by search (it is monotonic).
        let (mut lo, mut hi) = (-10_000_000_000i64, 20_000_000_000i64);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if local(mid) <= now_local {
                lo = mid
            } else {
                hi = mid
            }
        }
        let truth = (lo - now_local) as f64;
        let error = estimate.offset_ns - truth;
        assert!(estimate.age_ns < 0);
        assert!(
            error.abs() <= estimate.bound_ns,
            "error {error}, {estimate:?}"
        );
    }

    /// Goal: the t quantiles match known values on both sides of the table's end.
    #[test]
    fn student_t_quantiles() {
        assert_eq!(student_t_975(1), 12.706);
        assert_eq!(student_t_975(30), 2.042);
        assert!((student_t_975(40) - 2.021).abs() < 1e-3);
        assert!((student_t_975(62) - 1.999).abs() < 1e-3);
        assert!((student_t_975(1000) - 1.962).abs() < 1e-3);
    }
}
