//! `pbkv clock probe | experiment`: ask a time server how far off this clock is, and run
//! skew experiments whose ground truth is known (docs/clocks.md).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use clockd::client::{ClientConfig, ClientStats, Record, TimeClient};
use clockd::estimator::EstimatorConfig;
use clockd::experiment::{
    AsymmetryPoint, Convergence, ErrorStats, Row, SimExperiment, Summary, Targets, run_sim, score,
    sim_network, summarize, sweep_asymmetry,
};
use clockd::server::{ServerConfig, TimeServer};
use proto::{Addr, NodeId};
use runtime::ClockSkew;
use runtime::net::{NetDriver, NetOptions};

use crate::exit;

/// `pbkv clock` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClockCommand {
    /// Poll a time server a few times; report this clock's offset, delay, bound and drift.
    Probe(ProbeArgs),
    /// Run a time server and a skewed client; score the estimates against the truth.
    Experiment(ExperimentArgs),
}

/// The key to prove with: a time server beside other roles answers only clients that prove
/// the client key (or the cluster key).
#[derive(Debug, Clone, Args)]
pub struct KeyFileArgs {
    /// The key to prove with (a client key, or the cluster key), made by `pbkv keygen`.
    #[arg(long, env = "PBKV_KEY_FILE")]
    pub key_file: Option<PathBuf>,
}

/// The skew injected into this process's clock.
#[derive(Debug, Clone, Copy, Args)]
pub struct SkewArgs {
    /// Offset of the client's clock from true time, in milliseconds.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub offset_ms: f64,
    /// Drift of the client's clock, in ppm (positive runs fast).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub drift_ppm: f64,
}

/// `pbkv clock probe` arguments.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The time server, HOST:PORT.
    #[arg(long)]
    pub server: String,
    /// Exchanges to make.
    #[arg(long, default_value_t = 8)]
    pub samples: u64,
    /// Milliseconds between polls.
    #[arg(long, default_value_t = 10)]
    pub interval_ms: u64,
    /// Exchanges per poll, back to back (the later ones run warm).
    #[arg(long, default_value_t = 4)]
    pub burst: u32,
    /// How long to wait for answers, beyond the polling time itself, before giving up:
    /// seconds (`0.5`) or a duration (`500ms`).
    #[arg(
        long,
        default_value_t = 3.0,
        value_parser = crate::cmd::client::parse_seconds,
        value_name = "DURATION"
    )]
    pub timeout: f64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub skew: SkewArgs,
    #[command(flatten)]
    pub key: KeyFileArgs,
}

/// `pbkv clock experiment` arguments.
#[derive(Debug, Args)]
pub struct ExperimentArgs {
    /// Run in the simulator, in virtual time (the default).
    #[arg(long, conflicts_with = "real")]
    pub sim: bool,
    /// Run for real over loopback: a time server and a skewed client in this process.
    #[arg(long)]
    pub real: bool,
    /// With --real: poll this time server instead of starting one.
    #[arg(long, requires = "real")]
    pub server: Option<String>,
    /// Offset of the client's clock, in milliseconds.
    #[arg(long, default_value_t = 5.0, allow_negative_numbers = true)]
    pub offset_ms: f64,
    /// Drift of the client's clock, in ppm (positive runs fast).
    #[arg(long, default_value_t = 100.0, allow_negative_numbers = true)]
    pub drift_ppm: f64,
    /// Samples to collect.
    #[arg(long, default_value_t = 1000)]
    pub samples: u64,
    /// Milliseconds between polls.
    #[arg(long, default_value_t = 20)]
    pub interval_ms: u64,
    /// Exchanges per poll, back to back (the later ones run warm); samples count exchanges.
    #[arg(long, default_value_t = 4)]
    pub burst: u32,
    /// Extra one-way delay on the request path in µs (negative: the reply path).
    /// Simulator only.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub asymmetry_us: i64,
    /// Asymmetries (µs) of the error-against-asymmetry plot, always simulated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "-200,-100,-50,-20,0,20,50,100,200",
        allow_negative_numbers = true
    )]
    pub sweep_us: Vec<i64>,
    /// Simulation seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where the CSV, the plots and the summary go.
    #[arg(long, default_value = "pbkv-clock")]
    pub out: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub key: KeyFileArgs,
}

/// Runs `pbkv clock`; returns the exit code.
pub fn run(command: &ClockCommand) -> i32 {
    // A time server that is its node's only role answers anyone; one beside other roles
    // wants the client key (`--key-file`).
    let key_file = match command {
        ClockCommand::Probe(args) => &args.key.key_file,
        ClockCommand::Experiment(args) => &args.key.key_file,
    };
    let keys = match crate::keys::for_tool(key_file.as_deref()) {
        Ok(keys) => keys,
        Err(why) => return fail(exit::CONFIG, &why),
    };
    match command {
        ClockCommand::Probe(args) => probe(args, keys),
        ClockCommand::Experiment(args) => experiment(args, keys),
    }
}

fn fail(code: i32, why: &str) -> i32 {
    eprintln!("error: {why}");
    code
}

fn parse_server(text: &str) -> Result<Addr, String> {
    text.parse()
        .map_err(|error| format!("--server {text:?}: {error} (expected HOST:PORT)"))
}

fn skew_of(offset_ms: f64, drift_ppm: f64) -> Result<ClockSkew, String> {
    let phi = clockd::estimator::PHI_MAX_PPM_DEFAULT;
    if !offset_ms.is_finite() || offset_ms.abs() > 1e9 {
        return Err(format!("--offset-ms {offset_ms}: out of range"));
    }
    if !drift_ppm.is_finite() || drift_ppm.abs() >= phi {
        return Err(format!(
            "--drift-ppm {drift_ppm}: must be within ±{phi} (the estimator's bounds assume it)"
        ));
    }
    Ok(ClockSkew {
        offset_ns: offset_ms * 1e6,
        drift_ppm,
    })
}

fn burst_check(burst: u32) -> Result<(), String> {
    if (1..=64).contains(&burst) {
        Ok(())
    } else {
        Err(format!("--burst {burst}: must be 1 to 64"))
    }
}

fn interval_of(interval_ms: u64) -> Result<Duration, String> {
    if interval_ms == 0 || interval_ms > 3_600_000 {
        return Err(format!("--interval-ms {interval_ms}: must be 1 to 3600000"));
    }
    Ok(Duration::from_millis(interval_ms))
}

/// What a real client run returned.
struct RealRun {
    records: Vec<Record>,
    stats: ClientStats,
    epoch_ns: i64,
    client: TimeClient,
}

/// Runs a [`TimeClient`] on a real event loop until it has its samples, or until
/// `patience` passes without a new one.
fn run_real_client(
    server: Addr,
    skew: ClockSkew,
    samples: u64,
    (interval, burst): (Duration, u32),
    patience: Duration,
    keys: runtime::Keys,
) -> Result<RealRun, String> {
    let node = NodeId::new(format!("clock-{}", std::process::id())).map_err(|e| e.to_string())?;
    let client = TimeClient::new(ClientConfig {
        server,
        interval,
        burst,
        samples: Some(samples),
        stop_when_done: true,
        estimator: EstimatorConfig::default(),
    });
    let (started_tx, started_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    // The driver is built on the thread that runs it (an event sink need not be Send).
    let worker = std::thread::spawn(move || -> Result<TimeClient, String> {
        let mut options = NetOptions::new(node);
        options.skew = skew;
        options.keys = keys;
        let driver = NetDriver::new(client, options).map_err(|e| format!("event loop: {e}"))?;
        let _ = started_tx.send((driver.physical_epoch_ns(), driver.stop_handle()));
        let result = driver.run().map_err(|e| format!("event loop: {e}"));
        let _ = done_tx.send(());
        result
    });
    let Ok((epoch_ns, stop)) = started_rx.recv() else {
        return Err(match worker.join() {
            Ok(Err(why)) => why,
            _ => "the client's event loop did not start".to_string(),
        });
    };
    // The loop runs until the role stops; it is stopped early when the run stalls.
    let polls = samples.div_ceil(u64::from(burst.max(1)));
    let expected = interval.saturating_mul(u32::try_from(polls).unwrap_or(u32::MAX));
    let deadline = Instant::now() + expected + patience;
    let wait = deadline.saturating_duration_since(Instant::now());
    if done_rx.recv_timeout(wait).is_err() {
        stop.stop();
    }
    let client = worker
        .join()
        .map_err(|_| "the client's event loop panicked".to_string())??;
    Ok(RealRun {
        records: client.records().to_vec(),
        stats: client.stats(),
        epoch_ns,
        client,
    })
}

/// Starts a reference time server on an OS-chosen loopback port, on its own thread.
fn start_server() -> Result<(Addr, runtime::net::StopHandle, std::thread::JoinHandle<()>), String> {
    let node = NodeId::new("gps").map_err(|e| e.to_string())?;
    let (started_tx, started_rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let mut options = NetOptions::new(node);
        options.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        let driver = match NetDriver::new(TimeServer::new(ServerConfig::default()), options) {
            Ok(driver) => driver,
            Err(error) => {
                let _ = started_tx.send(Err(format!("time server: {error}")));
                return;
            }
        };
        let started = driver
            .local_addr()
            .map(|addr| (addr, driver.stop_handle()))
            .ok_or_else(|| "time server: no local address".to_string());
        let _ = started_tx.send(started);
        if let Err(error) = driver.run() {
            log::error!("time server: {error}");
        }
    });
    let (addr, stop) = started_rx
        .recv()
        .map_err(|_| "time server: did not start".to_string())??;
    Ok((Addr(addr), stop, handle))
}

fn probe(args: &ProbeArgs, keys: runtime::Keys) -> i32 {
    let setup = (|| -> Result<_, String> {
        let server = parse_server(&args.server)?;
        let skew = skew_of(args.skew.offset_ms, args.skew.drift_ppm)?;
        let interval = interval_of(args.interval_ms)?;
        if args.samples == 0 || args.samples > 100_000 {
            return Err(format!("--samples {}: must be 1 to 100000", args.samples));
        }
        burst_check(args.burst)?;
        if !(args.timeout.is_finite() && args.timeout > 0.0) {
            return Err(format!("--timeout {}: must be positive", args.timeout));
        }
        Ok((server, skew, interval))
    })();
    let (server, skew, interval) = match setup {
        Ok(setup) => setup,
        Err(why) => return fail(exit::USAGE, &why),
    };
    let patience = Duration::from_secs_f64(args.timeout);
    let run = match run_real_client(
        server,
        skew,
        args.samples,
        (interval, args.burst),
        patience,
        keys,
    ) {
        Ok(run) => run,
        Err(why) => return fail(exit::MISSING, &why),
    };
    if run.records.is_empty() {
        let refused = match run.client.last_error() {
            Some(why) => format!(
                "; {} replies refused, the last for {why}",
                run.stats.invalid
            ),
            None => String::new(),
        };
        return fail(
            exit::MISSING,
            &format!(
                "no answer from the time server at {server} ({} sent, {} lost{refused})",
                run.stats.sent, run.stats.lost
            ),
        );
    }
    let report = probe_report(server, &run);
    if args.json {
        println!("{report}");
    } else {
        print!("{}", probe_text(&report));
    }
    exit::OK
}

fn probe_report(server: Addr, run: &RealRun) -> serde_json::Value {
    let estimator = run.client.estimator();
    let last = run.records.last().map(|record| record.sample);
    let best = estimator.best().copied();
    let estimate = run.records.last().map(|record| record.estimate);
    let drift = estimator.drift();
    let interval = estimator.drift_interval();
    let mut delays: Vec<i64> = run.records.iter().map(|r| r.sample.delay_ns).collect();
    delays.sort_unstable();
    let (_, outliers) = estimator.counts();
    serde_json::json!({
        "server": server.to_string(),
        "samples": run.records.len(),
        "sent": run.stats.sent,
        "lost": run.stats.lost,
        "outliers": outliers,
        "offset_ns": estimate.map(|e| e.offset_ns),
        "bound_ns": estimate.map(|e| e.bound_ns),
        "sample_age_ns": estimate.map(|e| e.age_ns),
        "best_delay_ns": best.map(|s| s.delay_ns),
        "median_delay_ns": delays.get(delays.len() / 2),
        "last_offset_ns": last.map(|s| s.offset_ns),
        "last_bound_ns": last.map(|s| s.bound_ns),
        "last_delay_ns": last.map(|s| s.delay_ns),
        "drift_ppm": drift.map(|d| d.ppm),
        "drift_ci95_ppm": drift.and_then(|d| d.ci95_ppm),
        "drift_interval_ppm": [interval.lo_ppm, interval.hi_ppm],
        "drift_span_ns": drift.map(|d| d.span_ns),
    })
}

/// Nanoseconds as the most readable unit.
fn human_ns(ns: f64) -> String {
    let abs = ns.abs();
    if abs >= 1e9 {
        format!("{:.6} s", ns / 1e9)
    } else if abs >= 1e6 {
        format!("{:.6} ms", ns / 1e6)
    } else if abs >= 1e3 {
        format!("{:.3} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn signed_ns(ns: f64) -> String {
    if ns >= 0.0 {
        format!("+{}", human_ns(ns))
    } else {
        format!("-{}", human_ns(-ns))
    }
}

fn probe_text(report: &serde_json::Value) -> String {
    let f = |key: &str| report[key].as_f64().unwrap_or(f64::NAN);
    let mut text = String::new();
    let offset = f("offset_ns");
    let direction = if offset >= 0.0 { "slow" } else { "fast" };
    let _ = writeln!(
        text,
        "Reference     : {}",
        report["server"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        text,
        "Samples       : {} of {} sent ({} lost, {} polls out as delay outliers)",
        report["samples"], report["sent"], report["lost"], report["outliers"]
    );
    let _ = writeln!(
        text,
        "Offset        : {} ± {} (server − local: this clock is {} {})",
        signed_ns(offset),
        human_ns(f("bound_ns")),
        human_ns(offset.abs()),
        direction
    );
    let _ = writeln!(
        text,
        "Best sample   : delay {}, {} old",
        human_ns(f("best_delay_ns")),
        human_ns(f("sample_age_ns"))
    );
    let _ = writeln!(
        text,
        "Last offset   : {} ± {} (delay {})",
        signed_ns(f("last_offset_ns")),
        human_ns(f("last_bound_ns")),
        human_ns(f("last_delay_ns"))
    );
    let _ = writeln!(text, "Median delay  : {}", human_ns(f("median_delay_ns")));
    match (
        report["drift_ppm"].as_f64(),
        report["drift_ci95_ppm"].as_f64(),
    ) {
        (Some(ppm), ci) => {
            let ci = ci.map_or_else(|| "?".to_string(), |ci| format!("{ci:.3}"));
            let _ = writeln!(
                text,
                "Drift         : {ppm:+.3} ppm ± {ci} ppm (95 %) over {} ({})",
                human_ns(f("drift_span_ns")),
                if ppm >= 0.0 { "fast" } else { "slow" }
            );
        }
        (None, _) => {
            let _ = writeln!(text, "Drift         : not yet known (one sample)");
        }
    }
    text
}

fn experiment(args: &ExperimentArgs, keys: runtime::Keys) -> i32 {
    let setup = (|| -> Result<_, String> {
        let skew = skew_of(args.offset_ms, args.drift_ppm)?;
        let interval = interval_of(args.interval_ms)?;
        if args.samples < 2 || args.samples > 10_000_000 {
            return Err(format!("--samples {}: must be 2 to 10000000", args.samples));
        }
        burst_check(args.burst)?;
        if args.real && args.asymmetry_us != 0 {
            return Err(
                "--asymmetry-us needs the simulator: a loopback path cannot be slowed \
                        by microseconds in one direction only"
                    .into(),
            );
        }
        if args.asymmetry_us.abs() > 1_000_000 || args.sweep_us.iter().any(|a| a.abs() > 1_000_000)
        {
            return Err("asymmetries are limited to ±1 s".into());
        }
        let server = args.server.as_deref().map(parse_server).transpose()?;
        Ok((skew, interval, server))
    })();
    let (skew, interval, server) = match setup {
        Ok(setup) => setup,
        Err(why) => return fail(exit::USAGE, &why),
    };
    let base = SimExperiment {
        skew,
        samples: args.samples,
        interval,
        burst: args.burst,
        asymmetry_ns: args.asymmetry_us * 1000,
        seed: args.seed,
        estimator: EstimatorConfig::default(),
        network: sim_network(),
    };
    let (records, stats, epoch_ns, mode) = if args.real {
        let (server, _server_guard) = match server {
            Some(server) => (server, None),
            None => match start_server() {
                Ok((addr, stop, handle)) => (addr, Some(ServerGuard(Some((stop, handle))))),
                Err(why) => return fail(exit::MISSING, &why),
            },
        };
        eprintln!(
            "polling {server} every {} ms, {} exchanges a poll, for {} samples (about {:.0} s)...",
            args.interval_ms,
            args.burst,
            args.samples,
            interval.as_secs_f64() * args.samples.div_ceil(u64::from(args.burst)) as f64
        );
        let run = match run_real_client(
            server,
            skew,
            args.samples,
            (interval, args.burst),
            Duration::from_secs(5),
            keys,
        ) {
            Ok(run) => run,
            Err(why) => return fail(exit::MISSING, &why),
        };
        let mode = format!("real, loopback, server {server}");
        (run.records, run.stats, run.epoch_ns, mode)
    } else {
        let output = run_sim(&base);
        let mode = format!("simulated, seed {}", args.seed);
        (output.records, output.stats, output.epoch_ns, mode)
    };
    if records.is_empty() {
        return fail(
            exit::MISSING,
            &format!(
                "no samples: the time server did not answer ({} sent, {} lost)",
                stats.sent, stats.lost
            ),
        );
    }
    let targets = Targets::default();
    let rows = score(&records, skew, epoch_ns);
    let summary = summarize(&rows, skew.drift_ppm, targets);
    let sweep_ns: Vec<i64> = args.sweep_us.iter().map(|a| a * 1000).collect();
    let sweep = sweep_asymmetry(
        &SimExperiment {
            samples: args.samples.min(1000),
            ..base.clone()
        },
        &sweep_ns,
    );
    let files = match write_outputs(&args.out, &rows, (&summary, &stats), &sweep, &mode) {
        Ok(files) => files,
        Err(why) => return fail(exit::MISSING, &why),
    };
    let header = format!(
        "clock experiment ({mode}): offset {:+} ms, drift {:+} ppm, {} samples, \
         bursts of {} every {} ms{}",
        args.offset_ms,
        args.drift_ppm,
        args.samples,
        args.burst,
        args.interval_ms,
        if args.asymmetry_us != 0 {
            format!(", asymmetry {:+} µs", args.asymmetry_us)
        } else {
            String::new()
        }
    );
    if args.json {
        println!("{}", summary_json(&summary, &stats, &mode));
    } else {
        print!("{}", summary_text(&header, &summary, &stats, &files));
    }
    if (rows.len() as u64) < args.samples {
        return fail(
            exit::MISSING,
            &format!(
                "the run did not complete: {} of {} samples ({} sent, {} lost)",
                rows.len(),
                args.samples,
                stats.sent,
                stats.lost
            ),
        );
    }
    exit::OK
}

/// Stops the in-process time server when the experiment ends.
struct ServerGuard(Option<(runtime::net::StopHandle, std::thread::JoinHandle<()>)>);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.0.take() {
            stop.stop();
            let _ = handle.join();
        }
    }
}

fn stats_json(stats: &ErrorStats) -> serde_json::Value {
    serde_json::json!({
        "n": stats.n,
        "bias_ns": stats.bias_ns,
        "median_ns": stats.median_ns,
        "sd_ns": stats.sd_ns,
        "rms_ns": stats.rms_ns,
        "p50_abs_ns": stats.p50_abs_ns,
        "p99_abs_ns": stats.p99_abs_ns,
        "max_abs_ns": stats.max_abs_ns,
        "coverage": stats.coverage,
        "p50_bound_ns": stats.p50_bound_ns,
    })
}

fn convergence_json(convergence: Option<Convergence>) -> serde_json::Value {
    convergence.map_or(
        serde_json::Value::Null,
        |c| serde_json::json!({ "polls": c.polls, "seconds": c.seconds }),
    )
}

fn summary_json(summary: &Summary, stats: &ClientStats, mode: &str) -> serde_json::Value {
    serde_json::json!({
        "mode": mode,
        "samples": summary.samples,
        "sent": stats.sent,
        "lost": stats.lost,
        "late": stats.late,
        "bogus": stats.bogus,
        "invalid": stats.invalid,
        "outliers": summary.outliers,
        "delay_ns": {
            "min": summary.delay_ns.0,
            "p50": summary.delay_ns.1,
            "p99": summary.delay_ns.2,
        },
        "raw": stats_json(&summary.raw),
        "estimate": stats_json(&summary.estimate),
        "drift": {
            "true_ppm": summary.true_drift_ppm,
            "ppm": summary.drift_ppm,
            "ci95_ppm": summary.drift_ci95_ppm,
            "error_ppm": summary.drift_error_ppm,
            "truth_in_ci": summary.drift_truth_in_ci,
            "truth_in_hard_interval": summary.drift_truth_in_hard_interval,
            "window_samples": summary.drift_window.0,
            "window_seconds": summary.drift_window.1,
        },
        "converged": {
            "offset": convergence_json(summary.offset_converged),
            "drift": convergence_json(summary.drift_converged),
        },
        "targets": {
            "offset_p99_ns": summary.targets.offset_ns,
            "drift_ppm": summary.targets.drift_ppm,
        },
    })
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn summary_text(header: &str, summary: &Summary, stats: &ClientStats, files: &[PathBuf]) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "{header}");
    let (min, p50, p99) = summary.delay_ns;
    let _ = writeln!(
        text,
        "samples    {} valid of {} sent ({} lost, {} late, {} bogus, {} invalid); \
         {} polls out of the regression as delay outliers",
        summary.samples,
        stats.sent,
        stats.lost,
        stats.late,
        stats.bogus,
        stats.invalid,
        summary.outliers
    );
    let _ = writeln!(
        text,
        "delay      min {}, p50 {}, p99 {}",
        human_ns(min as f64),
        human_ns(p50 as f64),
        human_ns(p99 as f64)
    );
    for (name, stats) in [("raw θ̂", &summary.raw), ("estimate", &summary.estimate)] {
        let _ = writeln!(
            text,
            "{name:<10} bias {} (median {}), RMS {}, p99 |e| {}, max |e| {}; \
             bound coverage {:.2} % (median bound {})",
            signed_ns(stats.bias_ns),
            signed_ns(stats.median_ns),
            human_ns(stats.rms_ns),
            human_ns(stats.p99_abs_ns),
            human_ns(stats.max_abs_ns),
            stats.coverage * 100.0,
            human_ns(stats.p50_bound_ns)
        );
    }
    match (summary.drift_ppm, summary.drift_error_ppm) {
        (Some(ppm), Some(error)) => {
            let ci = summary
                .drift_ci95_ppm
                .map_or_else(|| "?".to_string(), |ci| format!("{ci:.4}"));
            let in_ci = match summary.drift_truth_in_ci {
                Some(true) => "yes",
                Some(false) => "no",
                None => "?",
            };
            let _ = writeln!(
                text,
                "drift      {ppm:+.4} ppm ± {ci} (95 %), truth {:+} ppm, error {error:+.4} ppm, \
                 truth in CI: {in_ci}; {} samples over {:.1} s",
                summary.true_drift_ppm, summary.drift_window.0, summary.drift_window.1
            );
        }
        _ => {
            let _ = writeln!(text, "drift      no estimate");
        }
    }
    let convergence = |c: Option<Convergence>| {
        c.map_or_else(
            || "not by the end".to_string(),
            |c| format!("from poll {} ({:.2} s)", c.polls, c.seconds),
        )
    };
    let _ = writeln!(
        text,
        "converged  |e| ≤ {}: {}; |ρ̂ − ρ| ≤ {} ppm: {}",
        human_ns(summary.targets.offset_ns),
        convergence(summary.offset_converged),
        summary.targets.drift_ppm,
        convergence(summary.drift_converged)
    );
    let drift_ok = summary
        .drift_error_ppm
        .is_some_and(|e| e.abs() <= summary.targets.drift_ppm);
    let _ = writeln!(
        text,
        "targets    p99 |e| ≤ {}: {}; coverage 100 %: {}; drift within {} ppm: {}",
        human_ns(summary.targets.offset_ns),
        verdict(summary.estimate.p99_abs_ns <= summary.targets.offset_ns),
        verdict(summary.raw.coverage == 1.0 && summary.estimate.coverage == 1.0),
        summary.targets.drift_ppm,
        verdict(drift_ok)
    );
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let _ = writeln!(text, "files      {}", names.join(", "));
    text
}

fn write_outputs(
    dir: &Path,
    rows: &[Row],
    (summary, stats): (&Summary, &ClientStats),
    sweep: &[AsymmetryPoint],
    mode: &str,
) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let write = |name: &str, text: String| -> Result<PathBuf, String> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    };
    let mut files = vec![write("samples.csv", samples_csv(rows))?];
    files.push(write(
        "offset.svg",
        crate::clock_plot::offset_svg(rows, mode)?,
    )?);
    files.push(write(
        "drift.svg",
        crate::clock_plot::drift_svg(rows, summary, mode)?,
    )?);
    files.push(write(
        "asymmetry.svg",
        crate::clock_plot::asymmetry_svg(sweep)?,
    )?);
    let json = summary_json(summary, stats, mode);
    files.push(write("summary.json", format!("{json:#}\n"))?);
    Ok(files)
}

/// The columns of samples.csv.
const SAMPLES_HEADER: [&str; 21] = [
    "seq",
    "elapsed_s",
    "t1",
    "t2",
    "t3",
    "t4",
    "theta_ns",
    "delta_ns",
    "bound_ns",
    "verdict",
    "true_theta_ns",
    "raw_err_ns",
    "est_offset_ns",
    "est_bound_ns",
    "est_age_ns",
    "true_theta_now_ns",
    "est_err_ns",
    "drift_ppm",
    "drift_ci95_ppm",
    "drift_lo_ppm",
    "drift_hi_ppm",
];

/// Every sample: the stamps, θ̂, δ, the bound, the truth and the errors.
pub fn samples_csv(rows: &[Row]) -> String {
    let mut writer = csv::Writer::from_writer(Vec::new());
    // Writing into memory cannot fail; a failed record would only shorten the table.
    let _ = writer.write_record(SAMPLES_HEADER);
    let opt = |value: Option<f64>| value.map_or_else(String::new, |v| format!("{v:.6}"));
    let tenth = |value: f64| format!("{value:.1}");
    for row in rows {
        let record = &row.record;
        let sample = &record.sample;
        let stamps = &sample.stamps;
        let verdict = match record.verdict {
            clockd::estimator::Verdict::Kept => "kept",
            clockd::estimator::Verdict::NotBest => "not_best",
            clockd::estimator::Verdict::Outlier => "outlier",
        };
        let _ = writer.write_record([
            sample.seq.to_string(),
            format!("{:.9}", row.elapsed_ns as f64 * 1e-9),
            stamps.t1.to_string(),
            stamps.t2.to_string(),
            stamps.t3.to_string(),
            stamps.t4.to_string(),
            tenth(sample.offset_ns),
            sample.delay_ns.to_string(),
            tenth(sample.bound_ns),
            verdict.to_string(),
            tenth(row.true_offset_ns),
            tenth(row.raw_error_ns),
            tenth(record.estimate.offset_ns),
            tenth(record.estimate.bound_ns),
            record.estimate.age_ns.to_string(),
            tenth(row.true_offset_now_ns),
            tenth(row.error_ns),
            opt(record.drift.map(|d| d.ppm)),
            opt(record.drift.and_then(|d| d.ci95_ppm)),
            format!("{:.6}", record.interval.lo_ppm),
            format!("{:.6}", record.interval.hi_ppm),
        ]);
    }
    let bytes = writer.into_inner().unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}
