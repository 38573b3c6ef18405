//! `pbkv bench`: load from many clients driven by one event loop thread, so the load
//! generator is not the bottleneck. Reports throughput and latency percentiles (HDR
//! histogram), optionally as JSON, and optionally writes a Jepsen-style operation history.

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use kv::client::{Client, ClientConfig, ClientOp, ClientTimer, Completed, Outcome};
use proto::{Addr, Message, NodeId};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use runtime::net::{NetDriver, NetOptions};
use runtime::{ConnId, Ctx, Dest, Link, MonoTime, Origin, Role};

use crate::cmd::client::ClientArgs;
use crate::exit;

/// `pbkv bench` arguments.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Concurrent clients (each its own session and connection).
    #[arg(long, default_value_t = 50)]
    pub clients: u32,
    /// Stop after this many operations in all.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Stop after this many seconds (default 10 unless --requests is given).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Keyspace size.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 16)]
    pub value_size: usize,
    /// Operation mix in percent, e.g. `get=50,put=50`; omitted kinds are 0.
    #[arg(long, default_value = "get=50,put=50")]
    pub mix: String,
    /// Seed for keys and operation choice (never for session nonces).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    pub json: bool,
    /// Write keys 0, 1, 2, … in order instead of at random (loading a dataset).
    #[arg(long)]
    pub fill: bool,
    /// Write a Jepsen-style operation history (JSON lines) to this file.
    #[arg(long)]
    pub history: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy)]
struct Mix {
    get: u32,
    put: u32,
}

fn parse_mix(text: &str) -> Result<Mix, String> {
    let (mut get, mut put, mut puthash) = (0u32, 0u32, 0u32);
    for part in text.split(',').filter(|part| !part.is_empty()) {
        let (name, value) = part
            .split_once('=')
            .ok_or(format!("--mix: {part:?} is not KIND=PERCENT"))?;
        let value: u32 = value
            .parse()
            .map_err(|_| format!("--mix: {value:?} is not a number"))?;
        match name {
            "get" => get = value,
            "put" => put = value,
            "puthash" => puthash = value,
            other => return Err(format!("--mix: unknown kind {other:?} (get, put, puthash)")),
        }
    }
    if get + put + puthash != 100 {
        return Err(format!(
            "--mix: percentages add up to {}, not 100",
            get + put + puthash
        ));
    }
    Ok(Mix { get, put })
}

struct BenchHost {
    clients: Vec<Client>,
    rng: StdRng,
    mix: Mix,
    keys: u64,
    value: Bytes,
    next_unique: u64,
    issued: u64,
    requests: Option<u64>,
    deadline: Option<MonoTime>,
    started: Option<MonoTime>,
    done: Vec<Completed>,
    stopping: bool,
    fill: bool,
    progress: indicatif::ProgressBar,
    completed_count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum BenchTimer {
    Client(u32, ClientTimer),
    Deadline,
}

impl BenchHost {
    fn next_op(&mut self) -> ClientOp {
        let key_index = if self.fill {
            self.issued % self.keys
        } else {
            self.rng.random_range(0..self.keys)
        };
        let key = Bytes::from(format!("key:{key_index}"));
        let roll = self.rng.random_range(0..100);
        let mut value = self.value.to_vec();
        // Every written value is unique (a counter in its last bytes).
        self.next_unique += 1;
        let tag = self.next_unique.to_string();
        let at = value.len().saturating_sub(tag.len());
        value.truncate(at);
        value.extend_from_slice(tag.as_bytes());
        let value = Bytes::from(value);
        if roll < self.mix.get {
            ClientOp::Get { key }
        } else if roll < self.mix.get + self.mix.put {
            ClientOp::Put { key, value }
        } else {
            ClientOp::PutHash { key, value }
        }
    }

    fn feed(&mut self, ctx: &mut Ctx<BenchTimer>) {
        for index in 0..self.clients.len() {
            if self.stopping || self.requests.is_some_and(|max| self.issued >= max) {
                break;
            }
            if self.clients[index].pending() == 0 {
                let op = self.next_op();
                self.issued += 1;
                let lane = index as u32;
                let client = &mut self.clients[index];
                ctx.nested(
                    move |timer| BenchTimer::Client(lane, timer),
                    |inner| client.submit(inner, op),
                );
            }
        }
        for client in &mut self.clients {
            let finished = client.take_completed();
            self.completed_count += finished.len() as u64;
            self.done.extend(finished);
        }
        if self.requests.is_some() {
            self.progress.set_position(self.completed_count);
        } else if let (Some(started), Some(deadline)) = (self.started, self.deadline) {
            let total = deadline.since(started).as_millis().max(1) as u64;
            self.progress.set_length(total);
            self.progress
                .set_position(ctx.now().since(started).as_millis() as u64);
        }
        let all_done = self.requests.is_some_and(|max| self.issued >= max)
            && self.clients.iter().all(|client| client.pending() == 0);
        if all_done {
            ctx.stop();
        }
    }
}

impl Role for BenchHost {
    type Timer = BenchTimer;

    fn on_start(&mut self, ctx: &mut Ctx<BenchTimer>) {
        self.started = Some(ctx.now());
        if let Some(deadline) = self.deadline {
            ctx.set_timer(BenchTimer::Deadline, deadline.since(MonoTime(0)));
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<BenchTimer>, origin: &Origin, message: Message) {
        // Correlation ids are unique in this process: the client awaiting this one takes it.
        let owner = self
            .clients
            .iter()
            .position(|client| client.awaiting() == Some(origin.corr));
        if let Some(index) = owner {
            let lane = index as u32;
            let client = &mut self.clients[index];
            ctx.nested(
                move |timer| BenchTimer::Client(lane, timer),
                |inner| client.on_message(inner, origin, message),
            );
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<BenchTimer>, timer: BenchTimer) {
        match timer {
            BenchTimer::Client(lane, timer) => {
                if let Some(client) = self.clients.get_mut(lane as usize) {
                    ctx.nested(
                        move |t| BenchTimer::Client(lane, t),
                        |inner| client.on_timer(inner, timer),
                    );
                }
            }
            BenchTimer::Deadline => {
                self.stopping = true;
                ctx.stop();
            }
        }
    }

    fn on_link(&mut self, ctx: &mut Ctx<BenchTimer>, to: Dest, link: Link) {
        if let Some(client) = self.clients.get_mut(to.lane as usize) {
            let lane = to.lane;
            ctx.nested(
                move |t| BenchTimer::Client(lane, t),
                |inner| client.on_link(inner, to, link),
            );
        }
    }

    fn on_closed(&mut self, _ctx: &mut Ctx<BenchTimer>, _conn: ConnId) {}

    fn on_turn_end(&mut self, ctx: &mut Ctx<BenchTimer>) {
        self.feed(ctx);
    }
}

struct Report {
    ops: u64,
    errors: u64,
    unknown: u64,
    pending: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

/// Runs `pbkv bench`; returns the exit code.
pub fn run(client_args: &ClientArgs, args: &BenchArgs) -> i32 {
    match run_bench(client_args, args) {
        Ok(report) => {
            print_report(args, &report);
            exit::OK
        }
        Err(why) => {
            eprintln!("error: {why}");
            exit::USAGE
        }
    }
}

fn run_bench(client_args: &ClientArgs, args: &BenchArgs) -> Result<Report, String> {
    let view_service: Addr = client_args
        .view_service
        .parse()
        .map_err(|e| format!("--vs {:?}: {e}", client_args.view_service))?;
    let mix = parse_mix(&args.mix)?;
    if args.clients == 0 || args.keys == 0 {
        return Err("--clients and --keys must be at least 1".into());
    }
    let duration = match (args.duration, args.requests) {
        (Some(seconds), _) if !(seconds.is_finite() && seconds > 0.0) => {
            return Err(format!("--duration {seconds}: must be a positive number"));
        }
        (Some(seconds), _) => Some(Duration::from_secs_f64(seconds)),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let clients = (0..args.clients)
        .map(|lane| {
            let mut config = ClientConfig::new(view_service);
            config.lane = lane;
            Client::new(config)
        })
        .collect();
    let host = BenchHost {
        clients,
        rng: StdRng::seed_from_u64(args.seed),
        mix,
        keys: args.keys,
        value: Bytes::from(vec![b'v'; args.value_size.max(1)]),
        next_unique: 0,
        issued: 0,
        requests: args.requests,
        deadline: duration.map(|d| MonoTime(0).plus(d)),
        started: None,
        done: Vec::new(),
        stopping: false,
        fill: args.fill,
        progress: progress_bar(args.requests),
        completed_count: 0,
    };
    let node = NodeId::new(format!("bench-{}", std::process::id())).map_err(|e| e.to_string())?;
    let driver =
        NetDriver::new(host, NetOptions::new(node)).map_err(|e| format!("event loop: {e}"))?;
    // CLOCK_MONOTONIC at the driver's monotonic time 0, for system-wide history timestamps.
    let clock_now = monotonic_ns();
    let epoch_ns = clock_now.saturating_sub(driver.epoch().elapsed().as_nanos() as u64);
    let start = Instant::now();
    let mut host = driver.run().map_err(|e| format!("event loop: {e}"))?;
    let elapsed = start.elapsed();
    host.progress.finish_and_clear();
    for client in &mut host.clients {
        host.done.extend(client.take_completed());
    }
    let pending = host
        .clients
        .iter()
        .map(|client| client.pending() as u64)
        .sum();
    if let Some(path) = &args.history {
        write_history(path, &host, epoch_ns)?;
    }
    let mut latency_us = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let (mut ops, mut errors, mut unknown) = (0, 0, 0);
    for done in &host.done {
        match done.outcome {
            Outcome::Done(_) | Outcome::NoKey => {
                ops += 1;
                let micros = done.completed_at.since(done.invoked_at).as_micros();
                latency_us.saturating_record(u64::try_from(micros).unwrap_or(u64::MAX).max(1));
            }
            Outcome::Refused(_) => errors += 1,
            Outcome::Unknown(_) => unknown += 1,
        }
    }
    Ok(Report {
        ops,
        errors,
        unknown,
        pending,
        elapsed,
        latency_us,
    })
}

fn print_report(args: &BenchArgs, report: &Report) {
    let seconds = report.elapsed.as_secs_f64().max(1e-9);
    let rate = report.ops as f64 / seconds;
    let h = &report.latency_us;
    if args.json {
        let json = serde_json::json!({
            "ops": report.ops,
            "ops_per_sec": rate,
            "seconds": seconds,
            "clients": args.clients,
            "value_size": args.value_size,
            "mix": args.mix,
            "p50_us": h.value_at_quantile(0.50),
            "p95_us": h.value_at_quantile(0.95),
            "p99_us": h.value_at_quantile(0.99),
            "p999_us": h.value_at_quantile(0.999),
            "max_us": h.max(),
            "errors": report.errors,
            "unknown": report.unknown,
            "pending_at_stop": report.pending,
        });
        println!("{json}");
        return;
    }
    let mut out = std::io::stdout().lock();
    let ms = |us: u64| us as f64 / 1000.0;
    let lines = [
        format!("====== {} ======", args.mix),
        format!(
            "  {} requests completed in {seconds:.2} seconds",
            report.ops
        ),
        format!("  {} parallel clients", args.clients),
        format!("  {} bytes payload", args.value_size),
        format!("  keyspace {}", args.keys),
        String::new(),
        "Summary:".to_string(),
        format!("  throughput summary: {rate:.2} requests per second"),
        "  latency summary (msec):".to_string(),
        "        p50       p95       p99     p99.9       max".to_string(),
        format!(
            "  {:9.3} {:9.3} {:9.3} {:9.3} {:9.3}",
            ms(h.value_at_quantile(0.50)),
            ms(h.value_at_quantile(0.95)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max())
        ),
        format!(
            "  errors {}  unknown {}  pending at stop {}",
            report.errors, report.unknown, report.pending
        ),
    ];
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
}

fn progress_bar(requests: Option<u64>) -> indicatif::ProgressBar {
    // Drawn on a terminal only: indicatif hides itself when stderr is not one.
    let bar = indicatif::ProgressBar::new(requests.unwrap_or(1));
    let style = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// CLOCK_MONOTONIC in nanoseconds: system-wide, so histories of several bench processes on
/// one host can be merged.
fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

fn text(bytes: &Bytes) -> serde_json::Value {
    serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned())
}

/// One JSON line per event, Jepsen style: an `invoke`, then `ok`, `fail` or `info`.
fn write_history(path: &std::path::Path, host: &BenchHost, epoch_ns: u64) -> Result<(), String> {
    let mut events: Vec<(u64, serde_json::Value)> = Vec::new();
    let describe = |op: &ClientOp| match op {
        ClientOp::Get { key } => ("get", text(key), serde_json::Value::Null),
        ClientOp::Put { key, value } => ("put", text(key), text(value)),
        ClientOp::PutHash { key, value } => ("puthash", text(key), text(value)),
    };
    let mut record =
        |process: u64, kind: &str, op: &ClientOp, out: serde_json::Value, at: MonoTime| {
            let (f, key, value) = describe(op);
            let time_ns = epoch_ns + at.0;
            let line = serde_json::json!({
                "process": process, "type": kind, "f": f, "key": key, "value": value,
                "out": out, "time_ns": time_ns,
            });
            events.push((time_ns, line));
        };
    for done in &host.done {
        let process = done.lane;
        record(
            process,
            "invoke",
            &done.op,
            serde_json::Value::Null,
            done.invoked_at,
        );
        let (kind, out) = match &done.outcome {
            Outcome::Done(_) if matches!(done.op, ClientOp::Put { .. }) => {
                ("ok", serde_json::Value::Null)
            }
            Outcome::Done(value) => ("ok", text(value)),
            Outcome::NoKey => ("ok", serde_json::Value::Null),
            Outcome::Refused(_) => ("fail", serde_json::Value::Null),
            Outcome::Unknown(_) => ("info", serde_json::Value::Null),
        };
        record(process, kind, &done.op, out, done.completed_at);
    }
    for (lane, client) in host.clients.iter().enumerate() {
        if let Some((_, op, invoked_at, _)) = client.outstanding() {
            record(
                lane as u64,
                "invoke",
                op,
                serde_json::Value::Null,
                invoked_at,
            );
            record(lane as u64, "info", op, serde_json::Value::Null, invoked_at);
        }
    }
    events.sort_by_key(|(time, _)| *time);
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for (_, line) in events {
        writeln!(out, "{line}").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    out.flush().map_err(|e| format!("{}: {e}", path.display()))
}
