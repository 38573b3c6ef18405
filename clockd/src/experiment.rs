//! Skew experiments: score a client's records against the injected truth, and run the
//! whole experiment in the simulator.
//!
//! The truth is exact because the skew is injected: a client whose clock reads
//! `local = t + offset + ρ(t − epoch)` has true offset `−(offset + ρ(local − epoch))/(1 + ρ)`
//! when it reads `local` ([`ClockSkew::true_offset_ns`]). Each record is scored twice:
//!
//! - the **raw** sample θ̂ against the truth at the exchange's local midpoint, with δ/2 as
//!   its bound;
//! - the **current estimate** (the minimum-delay sample of the last 8, carried to the
//!   reply's arrival by the drift estimate) against the truth at that arrival, with the
//!   bound that grows with the sample's age.
//!
//! Coverage (the share of errors within their bound) must be 100 %: less is a bug.

use std::time::Duration;

use proto::Addr;
use runtime::sim::{NodeSpec, Sim, SimConfig};
use runtime::{ClockSkew, Ctx, Dest, Link, Origin, Role};

use crate::client::{ClientConfig, ClientStats, ClientTimer, Record, TimeClient};
use crate::estimator::{EstimatorConfig, Verdict};
use crate::server::{ServerConfig, TimeServer};

/// Targets a run is judged against (reported, not enforced).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Targets {
    /// Offset error of the current estimate, in nanoseconds.
    pub offset_ns: f64,
    /// Drift error, in ppm.
    pub drift_ppm: f64,
}

impl Default for Targets {
    fn default() -> Targets {
        Targets {
            offset_ns: 5_000.0,
            drift_ppm: 0.1,
        }
    }
}

/// One record, scored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    /// The record.
    pub record: Record,
    /// Reference time since the first sample, in nanoseconds.
    pub elapsed_ns: i64,
    /// True offset at the sample's local midpoint.
    pub true_offset_ns: f64,
    /// θ̂ minus that truth.
    pub raw_error_ns: f64,
    /// True offset when the reply arrived (`t4`).
    pub true_offset_now_ns: f64,
    /// The current estimate minus that truth.
    pub error_ns: f64,
    /// The drift estimate minus the injected drift.
    pub drift_error_ppm: Option<f64>,
}

/// Distribution of errors.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ErrorStats {
    /// Values.
    pub n: usize,
    /// Mean (signed): the bias.
    pub bias_ns: f64,
    /// Median (signed): the bias, robust to the rare slow exchange.
    pub median_ns: f64,
    /// Standard deviation.
    pub sd_ns: f64,
    /// Root mean square.
    pub rms_ns: f64,
    /// Median of |error|.
    pub p50_abs_ns: f64,
    /// 99th percentile of |error|.
    pub p99_abs_ns: f64,
    /// Largest |error|.
    pub max_abs_ns: f64,
    /// Share of errors within their bound.
    pub coverage: f64,
    /// Median bound: how tight the bound is next to `p50_abs_ns`.
    pub p50_bound_ns: f64,
}

impl ErrorStats {
    /// Statistics of `(error, bound)` pairs.
    pub fn of(pairs: &[(f64, f64)]) -> ErrorStats {
        let n = pairs.len();
        if n == 0 {
            return ErrorStats::default();
        }
        let count = n as f64;
        let bias = pairs.iter().map(|p| p.0).sum::<f64>() / count;
        let variance = pairs.iter().map(|p| (p.0 - bias).powi(2)).sum::<f64>() / count;
        let rms = (pairs.iter().map(|p| p.0 * p.0).sum::<f64>() / count).sqrt();
        let mut signed: Vec<f64> = pairs.iter().map(|p| p.0).collect();
        signed.sort_by(f64::total_cmp);
        let mut abs: Vec<f64> = pairs.iter().map(|p| p.0.abs()).collect();
        abs.sort_by(f64::total_cmp);
        let mut bounds: Vec<f64> = pairs.iter().map(|p| p.1).collect();
        bounds.sort_by(f64::total_cmp);
        let covered = pairs.iter().filter(|p| p.0.abs() <= p.1).count();
        ErrorStats {
            n,
            bias_ns: bias,
            median_ns: percentile(&signed, 0.50),
            sd_ns: variance.sqrt(),
            rms_ns: rms,
            p50_abs_ns: percentile(&abs, 0.50),
            p99_abs_ns: percentile(&abs, 0.99),
            max_abs_ns: abs[n - 1],
            coverage: covered as f64 / count,
            p50_bound_ns: percentile(&bounds, 0.50),
        }
    }
}

/// The nearest-rank percentile of sorted `values` (`q` in 0..=1).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// When an error series entered its target and stayed there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Convergence {
    /// Samples until then (1 = from the first sample on).
    pub polls: usize,
    /// Reference time since the first sample, in seconds.
    pub seconds: f64,
}

/// A scored run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Valid samples.
    pub samples: usize,
    /// Polls the regression left out as delay outliers.
    pub outliers: usize,
    /// Delay min, median, 99th percentile, in nanoseconds.
    pub delay_ns: (i64, i64, i64),
    /// Raw samples against the truth at their midpoints.
    pub raw: ErrorStats,
    /// The current estimate against the truth at each arrival.
    pub estimate: ErrorStats,
    /// The final drift estimate, ppm.
    pub drift_ppm: Option<f64>,
    /// Its 95 % half-width.
    pub drift_ci95_ppm: Option<f64>,
    /// Final drift estimate minus the injected drift.
    pub drift_error_ppm: Option<f64>,
    /// Whether the truth lies in the 95 % interval.
    pub drift_truth_in_ci: Option<bool>,
    /// Whether the truth lies in the hard interval.
    pub drift_truth_in_hard_interval: bool,
    /// Samples and reference span of the final regression.
    pub drift_window: (usize, f64),
    /// When the estimate's error entered `targets.offset_ns` for good.
    pub offset_converged: Option<Convergence>,
    /// When the drift error entered `targets.drift_ppm` for good.
    pub drift_converged: Option<Convergence>,
    /// The targets used.
    pub targets: Targets,
    /// The injected drift.
    pub true_drift_ppm: f64,
}

/// Scores `records` of a client whose clock had `skew` from `epoch_ns`.
pub fn score(records: &[Record], skew: ClockSkew, epoch_ns: i64) -> Vec<Row> {
    let Some(first) = records.first() else {
        return Vec::new();
    };
    let start = first.sample.reference_ns;
    records
        .iter()
        .map(|record| {
            let sample = &record.sample;
            let true_offset_ns = skew.true_offset_ns(sample.local_ns, epoch_ns);
            let true_offset_now_ns = skew.true_offset_ns(sample.stamps.t4, epoch_ns);
            Row {
                record: *record,
                elapsed_ns: crate::estimator::ns_between(sample.reference_ns, start) as i64,
                true_offset_ns,
                raw_error_ns: sample.offset_ns - true_offset_ns,
                true_offset_now_ns,
                error_ns: record.estimate.offset_ns - true_offset_now_ns,
                drift_error_ppm: record.drift.map(|drift| drift.ppm - skew.drift_ppm),
            }
        })
        .collect()
}

/// Summarizes scored rows.
pub fn summarize(rows: &[Row], true_drift_ppm: f64, targets: Targets) -> Summary {
    let raw: Vec<(f64, f64)> = rows
        .iter()
        .map(|row| (row.raw_error_ns, row.record.sample.bound_ns))
        .collect();
    let estimate: Vec<(f64, f64)> = rows
        .iter()
        .map(|row| (row.error_ns, row.record.estimate.bound_ns))
        .collect();
    let mut delays: Vec<i64> = rows.iter().map(|row| row.record.sample.delay_ns).collect();
    delays.sort_unstable();
    let delay_at = |q: f64| -> i64 {
        if delays.is_empty() {
            return 0;
        }
        let rank = (q * delays.len() as f64).ceil() as usize;
        delays[rank.clamp(1, delays.len()) - 1]
    };
    let last = rows.last();
    let drift = last.and_then(|row| row.record.drift);
    let drift_error_ppm = drift.map(|drift| drift.ppm - true_drift_ppm);
    let drift_truth_in_ci = drift.and_then(|drift| {
        let ci = drift.ci95_ppm?;
        Some((drift.ppm - true_drift_ppm).abs() <= ci)
    });
    let drift_truth_in_hard_interval = last.is_some_and(|row| {
        let interval = row.record.interval;
        interval.lo_ppm <= true_drift_ppm && true_drift_ppm <= interval.hi_ppm
    });
    Summary {
        samples: rows.len(),
        outliers: outlier_polls(rows),
        delay_ns: (delay_at(0.0), delay_at(0.5), delay_at(0.99)),
        raw: ErrorStats::of(&raw),
        estimate: ErrorStats::of(&estimate),
        drift_ppm: drift.map(|drift| drift.ppm),
        drift_ci95_ppm: drift.and_then(|drift| drift.ci95_ppm),
        drift_error_ppm,
        drift_truth_in_ci,
        drift_truth_in_hard_interval,
        drift_window: drift.map_or((0, 0.0), |drift| (drift.n, drift.span_ns as f64 * 1e-9)),
        offset_converged: converged(rows, |row| Some(row.error_ns.abs() <= targets.offset_ns)),
        drift_converged: converged(rows, |row| {
            row.drift_error_ppm
                .map(|error| error.abs() <= targets.drift_ppm)
        }),
        targets,
        true_drift_ppm,
    }
}

/// Polls whose regression point ended up a delay outlier: the last verdict of each poll
/// other than "not best" (a later, faster exchange of a burst replaces a slow first one).
fn outlier_polls(rows: &[Row]) -> usize {
    let mut count = 0;
    let mut current: Option<(u64, bool)> = None;
    for row in rows {
        let verdict = row.record.verdict;
        if verdict == Verdict::NotBest {
            continue;
        }
        let outlier = verdict == Verdict::Outlier;
        match current {
            Some((poll, _)) if poll == row.record.poll => current = Some((poll, outlier)),
            _ => {
                count += usize::from(current.is_some_and(|(_, was)| was));
                current = Some((row.record.poll, outlier));
            }
        }
    }
    count + usize::from(current.is_some_and(|(_, was)| was))
}

/// The first row from which `within` holds for every row to the end.
fn converged(rows: &[Row], within: impl Fn(&Row) -> Option<bool>) -> Option<Convergence> {
    if rows.is_empty() {
        return None;
    }
    let last_miss = rows.iter().rposition(|row| within(row) != Some(true));
    let index = match last_miss {
        None => 0,
        Some(miss) if miss + 1 < rows.len() => miss + 1,
        Some(_) => return None,
    };
    let row = &rows[index];
    Some(Convergence {
        polls: index + 1,
        seconds: row.elapsed_ns as f64 * 1e-9,
    })
}

/// Network of the simulated experiments, loopback-like: one-way latencies uniform in
/// 8–16 µs, up to 4 µs more before a node's turn picks a frame up, and 2 % of frames 1 ms
/// late (the scheduler hiccups the outlier rule is for). Each direction draws its own
/// latency, so a sample's error (d₁ − d₂)/2 spreads over about ±6 µs.
pub fn sim_network() -> SimConfig {
    SimConfig {
        latency_min: Duration::from_micros(8),
        latency_max: Duration::from_micros(16),
        latency_tail_rate: 0.02,
        latency_tail: Duration::from_millis(1),
        turn_latency_max: Duration::from_micros(4),
        run: "clock".to_string(),
        ..SimConfig::default()
    }
}

/// A simulated experiment.
#[derive(Debug, Clone)]
pub struct SimExperiment {
    /// The client's injected skew.
    pub skew: ClockSkew,
    /// Samples to collect.
    pub samples: u64,
    /// Poll interval.
    pub interval: Duration,
    /// Exchanges per poll.
    pub burst: u32,
    /// Extra one-way latency on the request path (negative: on the reply path).
    pub asymmetry_ns: i64,
    /// The simulation seed.
    pub seed: u64,
    /// The estimator's tuning.
    pub estimator: EstimatorConfig,
    /// The simulated network ([`sim_network`] by default).
    pub network: SimConfig,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// The client's records.
    pub records: Vec<Record>,
    /// The client's counters.
    pub stats: ClientStats,
    /// The true time the client's clock skew counts from.
    pub epoch_ns: i64,
}

/// The two roles of an experiment, as one role type for the simulator.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum ClockRole {
    /// The reference.
    Server(TimeServer),
    /// The skewed client.
    Client(TimeClient),
}

impl Role for ClockRole {
    type Timer = ClientTimer;

    fn on_start(&mut self, ctx: &mut Ctx<ClientTimer>) {
        if let ClockRole::Client(client) = self {
            client.on_start(ctx);
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<ClientTimer>, origin: &Origin, message: proto::Message) {
        match self {
            ClockRole::Server(server) => {
                if let proto::Message::TimeRequest(request) = message {
                    server.answer(ctx, origin, request);
                }
            }
            ClockRole::Client(client) => client.on_message(ctx, origin, message),
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<ClientTimer>, timer: ClientTimer) {
        if let ClockRole::Client(client) = self {
            client.on_timer(ctx, timer);
        }
    }

    fn on_link(&mut self, ctx: &mut Ctx<ClientTimer>, to: Dest, link: Link) {
        if let ClockRole::Client(client) = self {
            client.on_link(ctx, to, link);
        }
    }
}

/// The simulated server's address.
pub const SIM_SERVER_ADDR: Addr = Addr(std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(10, 0, 0, 1),
    123,
)));

/// Runs `experiment` in the simulator (virtual time: a minute of polling takes
/// milliseconds). Returns what the client recorded.
pub fn run_sim(experiment: &SimExperiment) -> RunOutput {
    let mut sim: Sim<ClockRole> = Sim::new(experiment.seed, experiment.network.clone());
    let server = sim.add_node(
        NodeSpec::server("gps", SIM_SERVER_ADDR),
        ClockRole::Server(TimeServer::new(ServerConfig::default())),
    );
    let mut spec = NodeSpec::client("c1");
    spec.skew = experiment.skew;
    let client = sim.add_node(
        spec,
        ClockRole::Client(TimeClient::new(ClientConfig {
            server: SIM_SERVER_ADDR,
            interval: experiment.interval,
            burst: experiment.burst,
            samples: Some(experiment.samples),
            stop_when_done: false,
            estimator: experiment.estimator,
        })),
    );
    let extra = Duration::from_nanos(experiment.asymmetry_ns.unsigned_abs());
    if experiment.asymmetry_ns >= 0 {
        sim.set_extra_latency(client, server, extra);
    } else {
        sim.set_extra_latency(server, client, extra);
    }
    let limit = experiment.interval * u32::try_from(experiment.samples * 2).unwrap_or(u32::MAX)
        + Duration::from_secs(10);
    sim.run_until_true(limit, |sim| match sim.role(client) {
        Some(ClockRole::Client(client)) => client.done(),
        _ => true,
    });
    let epoch_ns = sim.physical_epoch_ns(client);
    match sim.role(client) {
        Some(ClockRole::Client(role)) => RunOutput {
            records: role.records().to_vec(),
            stats: role.stats(),
            epoch_ns,
        },
        _ => RunOutput {
            records: Vec::new(),
            stats: ClientStats::default(),
            epoch_ns,
        },
    }
}

/// One point of an asymmetry sweep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AsymmetryPoint {
    /// Extra one-way latency on the request path, ns (negative: the reply path).
    pub asymmetry_ns: i64,
    /// Raw samples' errors.
    pub raw: ErrorStats,
    /// The current estimate's errors.
    pub estimate: ErrorStats,
}

/// Runs `base` once per asymmetry in `asymmetries_ns` (the simulator only: a loopback
/// path cannot be slowed by microseconds one way).
pub fn sweep_asymmetry(base: &SimExperiment, asymmetries_ns: &[i64]) -> Vec<AsymmetryPoint> {
    asymmetries_ns
        .iter()
        .map(|&asymmetry_ns| {
            let experiment = SimExperiment {
                asymmetry_ns,
                ..base.clone()
            };
            let output = run_sim(&experiment);
            let rows = score(&output.records, experiment.skew, output.epoch_ns);
            let summary = summarize(&rows, experiment.skew.drift_ppm, Targets::default());
            AsymmetryPoint {
                asymmetry_ns,
                raw: summary.raw,
                estimate: summary.estimate,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: an empty run summarizes to nothing rather than failing.
    #[test]
    fn an_empty_run_has_an_empty_summary() {
        let summary = summarize(&[], 0.0, Targets::default());
        assert_eq!(summary.samples, 0);
        assert_eq!(summary.offset_converged, None);
        assert_eq!(summary.drift_ppm, None);
        assert!(score(&[], ClockSkew::default(), 0).is_empty());
    }
}
