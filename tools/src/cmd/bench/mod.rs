//! `pbkv bench`: load from many client sessions driven by one event-loop thread, so the load
//! generator is not the bottleneck. Reports throughput and latency percentiles per operation
//! kind (HDR histograms that never clamp silently) as text, JSON or CSV, and optionally
//! writes a Jepsen-style operation history.
//!
//! # Sessions, connections and pipelining
//!
//! Protocol rule C2 allows one outstanding request per session, and the service answers
//! each request on its connection by correlation id, so a connection may carry several
//! outstanding requests as long as they belong to different sessions. `--clients C` opens C
//! connections (lanes); `--pipeline N` puts N sessions on each, so N requests are in flight
//! per connection and C × N in all. A Get needs no session but is issued by a session all
//! the same, which keeps one in-flight count per session for every kind.
//!
//! # Closed and open loop
//!
//! Without `--rate`, each session starts its next operation as soon as its last one ended
//! (closed loop). With `--rate R`, operations come due on a fixed schedule of R per second
//! in all ([`schedule`]); a due operation takes the first free session, and its latency
//! counts from when it was due (coordinated omission corrected as in wrk2).
//!
//! # Cost per operation
//!
//! Keys and values are carved out of shared chunks ([`workload::Arena`]), finished
//! operations are drained without reallocating, replies find their session through a map
//! from correlation id, and idle sessions wait on a free list: no scan over all sessions
//! and no allocation of the bench's own per operation. Latencies go into the histograms at
//! once; operations are kept only with `--history`, and then in a compact form.
//!
//! # Layout
//!
//! - [`workload`]: the mix, keys and unique values.
//! - [`schedule`]: the open loop's start times.
//! - [`stats`]: latency histograms.
//! - [`report`]: text, JSON and CSV output.
//! - [`history`]: the `--history` file.
//! - [`redis`] and [`resp`]: the same load against Redis (`--redis`), for comparison.

mod history;
mod redis;
mod report;
mod resp;
mod schedule;
mod stats;
mod workload;

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use clap::Args;
use kv::client::{Client, ClientConfig, ClientTimer, Completed, Outcome};
use proto::kv::VALUE_LEN_MAX;
use proto::{Addr, Message, NodeId};
use runtime::net::{NetDriver, NetOptions};
use runtime::{ConnId, Ctx, Dest, Link, MonoTime, Origin, Role};

use crate::cmd::client::ClientArgs;
use crate::exit;
use history::History;
use report::{Report, Setup, Target};
use schedule::Schedule;
use stats::Latency;
use workload::{Mix, OpKind, Workload, WorkloadOptions};

/// Most sessions on one connection.
const PIPELINE_MAX: u32 = 1024;
/// Most sessions in all (connections × pipeline).
const SESSIONS_MAX: u64 = 65_536;
/// How often the live line on a terminal is redrawn.
const LIVE_INTERVAL: Duration = Duration::from_millis(250);

/// `pbkv bench` arguments.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Connections to the service (each its own TCP connection; see --pipeline).
    #[arg(long, default_value_t = 50)]
    pub clients: u32,
    /// Requests in flight on each connection: this many sessions share it (rule C2 allows
    /// one outstanding request per session).
    #[arg(long, default_value_t = 1)]
    pub pipeline: u32,
    /// Open loop: start operations on a fixed schedule of this many per second in all, and
    /// measure each from when it was due. Default: closed loop.
    #[arg(long, value_name = "OPS")]
    pub rate: Option<f64>,
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
    /// Operation mix in percent of get, put, puthash and del, e.g. `get=50,put=40,del=10`;
    /// omitted kinds are 0.
    #[arg(long, default_value = "get=50,put=50")]
    pub mix: String,
    /// Seed for keys and operation choice (never for session nonces).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object instead of the report.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV (a header, then one row per operation kind and `all`) instead.
    #[arg(long)]
    pub csv: bool,
    /// Write keys 0, 1, 2, … in order instead of at random (loading a dataset).
    #[arg(long)]
    pub fill: bool,
    /// Write a Jepsen-style operation history (JSON lines) to this file.
    #[arg(long)]
    pub history: Option<std::path::PathBuf>,
    /// Drive the Redis server at HOST:PORT instead of pbkv, with the same event loop,
    /// connections, pipelining, keys and values: get is GET, put is SET, del is DEL
    /// (puthash and --history are refused). --vs and --key-file are not used.
    #[arg(long, value_name = "HOST:PORT")]
    pub redis: Option<String>,
    /// With --redis: follow every SET with `WAIT N 0` on its connection (N replicas must
    /// acknowledge it; latency counts to WAIT's reply, and a reply below N is an error).
    #[arg(long, value_name = "N", requires = "redis",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub redis_wait: Option<u32>,
}

/// One client session of the bench.
struct Session {
    client: Client,
    /// The correlation id this session is registered under in `BenchHost::owners`.
    awaiting: Option<u64>,
    /// The view requests it is registered under too (one per view-service node).
    view_asks: Vec<u64>,
    /// When its current operation was due (open loop) or started (closed loop).
    intended_at: MonoTime,
    busy: bool,
}

/// What the run counted, apart from latencies.
#[derive(Debug, Default)]
struct Counts {
    /// Operations finished in any way.
    completions: u64,
    ops: u64,
    errors: u64,
    unknown: u64,
    /// Finished operations for which a request was sent.
    sent: u64,
    first_refusal: Option<String>,
}

/// The live line on a terminal: progress and operations per second.
struct Live {
    bar: indicatif::ProgressBar,
    last_at: MonoTime,
    last_ops: u64,
}

struct BenchHost {
    sessions: Vec<Session>,
    pipeline: u32,
    /// Correlation id awaited → session index.
    owners: HashMap<u64, u32, foldhash::fast::RandomState>,
    /// Sessions with nothing outstanding.
    idle: Vec<u32>,
    workload: Workload,
    schedule: Option<Schedule>,
    /// Where the schedule's wake-up timer is set.
    schedule_timer_at: Option<MonoTime>,
    rate: Option<f64>,
    issued: u64,
    requests: Option<u64>,
    duration: Option<Duration>,
    answer_timeout: Duration,
    started_at: MonoTime,
    stopped_at: Option<MonoTime>,
    stopping: bool,
    /// Stopped because nothing finished within the answer timeout.
    gave_up: bool,
    pending_at_stop: u64,
    not_started_at_stop: u64,
    latency: [Latency; 4],
    schedule_lag: Option<Latency>,
    counts: Counts,
    history: Option<History>,
    live: Option<Live>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum BenchTimer {
    /// A session's timer, by session index.
    Client(u32, ClientTimer),
    /// `--duration` is over.
    Deadline,
    /// The next operation of the open loop is due.
    Schedule,
    /// `--timeout` after the start: stop if nothing finished.
    AnswerTimeout,
}

impl BenchHost {
    fn limit_reached(&self) -> bool {
        self.requests.is_some_and(|max| self.issued >= max)
    }

    /// Runs `call` on session `index`'s client, then books what it did.
    fn call_session(
        &mut self,
        ctx: &mut Ctx<BenchTimer>,
        index: u32,
        call: impl FnOnce(&mut Client, &mut Ctx<ClientTimer>),
    ) {
        let Some(session) = self.sessions.get_mut(index as usize) else {
            return;
        };
        let client = &mut session.client;
        ctx.nested(
            move |timer| BenchTimer::Client(index, timer),
            |inner| call(client, inner),
        );
        self.after_call(index);
    }

    /// Re-registers the session's awaited correlation id, books its finished operations,
    /// and frees it if it has nothing outstanding.
    fn after_call(&mut self, index: u32) {
        let BenchHost {
            sessions,
            owners,
            idle,
            latency,
            counts,
            history,
            stopping,
            ..
        } = self;
        let Some(session) = sessions.get_mut(index as usize) else {
            return;
        };
        let awaiting = session.client.awaiting();
        if awaiting != session.awaiting {
            if let Some(old) = session.awaiting {
                owners.remove(&old);
            }
            if let Some(new) = awaiting {
                owners.insert(new, index);
            }
            session.awaiting = awaiting;
        }
        let asks = session.client.awaiting_views();
        if !asks
            .iter()
            .map(|(corr, _)| *corr)
            .eq(session.view_asks.iter().copied())
        {
            for old in session.view_asks.drain(..) {
                owners.remove(&old);
            }
            for (corr, _) in asks {
                owners.insert(*corr, index);
                session.view_asks.push(*corr);
            }
        }
        for done in session.client.drain_completed() {
            if let Some(history) = history.as_mut() {
                history.record_completed(index, &done);
            }
            // The report covers the run up to the stop; later ends go to the history only.
            if !*stopping {
                book(latency, counts, &done, session.intended_at);
            }
        }
        if session.busy && session.client.pending() == 0 {
            session.busy = false;
            idle.push(index);
        }
    }

    /// Starts the next operation on idle session `index`, due at `intended_at`.
    fn issue(&mut self, ctx: &mut Ctx<BenchTimer>, index: u32, intended_at: MonoTime) {
        let op = self.workload.next_op();
        self.issued += 1;
        if let Some(lag) = self.schedule_lag.as_mut() {
            lag.record(ctx.now().since(intended_at));
        }
        if let Some(session) = self.sessions.get_mut(index as usize) {
            session.intended_at = intended_at;
            session.busy = true;
        }
        self.call_session(ctx, index, |client, inner| {
            client.submit(inner, op);
        });
    }

    /// Starts what may start now: every idle session (closed loop), or every due operation
    /// that finds an idle session (open loop).
    fn feed(&mut self, ctx: &mut Ctx<BenchTimer>) {
        if self.stopping {
            return;
        }
        let now = ctx.now();
        if self.schedule.is_none() {
            // Only the sessions idle now: one refused at once must wait for the next turn.
            for _ in 0..self.idle.len() {
                if self.limit_reached() {
                    break;
                }
                let Some(index) = self.idle.pop() else { break };
                self.issue(ctx, index, now);
            }
        } else {
            while !self.limit_reached() && !self.idle.is_empty() {
                let Some(due) = self.schedule.as_mut().and_then(|s| s.take_due(now)) else {
                    break;
                };
                let Some(index) = self.idle.pop() else { break };
                self.issue(ctx, index, due);
            }
            self.arm_schedule_timer(ctx);
        }
        self.update_live(now);
        if self.limit_reached() && self.idle.len() == self.sessions.len() {
            self.stop(ctx);
        }
    }

    /// Wakes the loop when the next operation comes due, unless one is due already (a
    /// session's end will start it) or the schedule is done.
    fn arm_schedule_timer(&mut self, ctx: &mut Ctx<BenchTimer>) {
        let Some(next) = self.schedule.as_ref().map(Schedule::next_due) else {
            return;
        };
        let now = ctx.now();
        if self.limit_reached() || next <= now || self.schedule_timer_at == Some(next) {
            return;
        }
        ctx.set_timer(BenchTimer::Schedule, next.since(now));
        self.schedule_timer_at = Some(next);
    }

    fn update_live(&mut self, now: MonoTime) {
        if let Some(live) = self.live.as_mut() {
            live.update(now, self.counts.ops, self.started_at, self.requests);
        }
    }

    fn stop(&mut self, ctx: &mut Ctx<BenchTimer>) {
        if self.stopping {
            return;
        }
        let now = ctx.now();
        self.stopping = true;
        self.stopped_at = Some(now);
        self.pending_at_stop = (self.sessions.len() - self.idle.len()) as u64;
        if let Some(schedule) = &self.schedule {
            let due = schedule
                .due_count(now)
                .min(self.requests.unwrap_or(u64::MAX));
            self.not_started_at_stop = due.saturating_sub(self.issued);
        }
        ctx.stop();
    }
}

/// Books one finished operation into the latencies and counts.
fn book(latency: &mut [Latency; 4], counts: &mut Counts, done: &Completed, since: MonoTime) {
    counts.completions += 1;
    counts.sent += u64::from(done.sent);
    match &done.outcome {
        Outcome::Done(_) | Outcome::NoKey => {
            counts.ops += 1;
            let kind = OpKind::of(&done.op);
            latency[kind.index()].record(done.completed_at.since(since));
        }
        Outcome::Refused(why) => {
            counts.errors += 1;
            counts.first_refusal.get_or_insert_with(|| why.clone());
        }
        Outcome::Unknown(_) => counts.unknown += 1,
    }
}

impl Role for BenchHost {
    type Timer = BenchTimer;

    fn on_start(&mut self, ctx: &mut Ctx<BenchTimer>) {
        let now = ctx.now();
        self.started_at = now;
        if let Some(live) = self.live.as_mut() {
            live.last_at = now;
        }
        if let Some(rate) = self.rate {
            self.schedule = Some(Schedule::new(now, rate));
        }
        if let Some(duration) = self.duration {
            ctx.set_timer(BenchTimer::Deadline, duration);
        }
        ctx.set_timer(BenchTimer::AnswerTimeout, self.answer_timeout);
        self.feed(ctx);
    }

    fn on_message(&mut self, ctx: &mut Ctx<BenchTimer>, origin: &Origin, message: Message) {
        // Correlation ids are unique in this process: the session awaiting this one takes
        // it; an answer nobody awaits any more (given up on, retried) is dropped.
        if let Some(index) = self.owners.get(&origin.corr).copied() {
            self.call_session(ctx, index, |client, inner| {
                client.on_message(inner, origin, message);
            });
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<BenchTimer>, timer: BenchTimer) {
        match timer {
            BenchTimer::Client(index, timer) => {
                self.call_session(ctx, index, |client, inner| client.on_timer(inner, timer));
            }
            BenchTimer::Deadline => self.stop(ctx),
            BenchTimer::Schedule => self.schedule_timer_at = None,
            BenchTimer::AnswerTimeout => {
                if self.counts.completions == 0 {
                    self.gave_up = true;
                    self.stop(ctx);
                }
            }
        }
    }

    fn on_link(&mut self, ctx: &mut Ctx<BenchTimer>, to: Dest, link: Link) {
        // Every session of the lane shares the link, so every one of them hears of it.
        let first = u64::from(to.lane) * u64::from(self.pipeline);
        let end = (first + u64::from(self.pipeline)).min(self.sessions.len() as u64);
        for index in first..end {
            let index = u32::try_from(index).expect("sessions are at most SESSIONS_MAX");
            self.call_session(ctx, index, |client, inner| client.on_link(inner, to, link));
        }
    }

    fn on_closed(&mut self, _ctx: &mut Ctx<BenchTimer>, _conn: ConnId) {}

    fn on_turn_end(&mut self, ctx: &mut Ctx<BenchTimer>) {
        self.feed(ctx);
    }
}

/// Validated arguments.
struct Plan {
    /// The view service (pbkv), or nothing (Redis).
    view_services: Vec<Addr>,
    /// `--redis`: the server to drive instead of pbkv.
    redis: Option<redis::RedisPlan>,
    mix: Mix,
    duration: Option<Duration>,
    answer_timeout: Duration,
}

fn plan(client_args: &ClientArgs, args: &BenchArgs) -> Result<Plan, String> {
    let mix = Mix::parse(&args.mix)?;
    let (view_services, redis) = match &args.redis {
        Some(server) => (Vec::new(), Some(redis::plan(server, args, &mix)?)),
        None => (client_args.view_services()?, None),
    };
    if args.clients == 0 || args.keys == 0 || args.requests == Some(0) {
        return Err("--clients, --keys and --requests must be at least 1".into());
    }
    if !(1..=PIPELINE_MAX).contains(&args.pipeline) {
        return Err(format!("--pipeline must be 1 to {PIPELINE_MAX}"));
    }
    let sessions = u64::from(args.clients) * u64::from(args.pipeline);
    if sessions > SESSIONS_MAX {
        return Err(format!(
            "--clients × --pipeline is {sessions}, over the limit of {SESSIONS_MAX} sessions"
        ));
    }
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(format!("--rate {rate}: must be a positive number"));
    }
    if args.value_size > VALUE_LEN_MAX {
        return Err(format!(
            "--value-size {}: over the service's limit of {VALUE_LEN_MAX} bytes",
            args.value_size
        ));
    }
    if args.history.is_some() {
        history::validate(&mix, args.value_size)?;
    }
    let timeout = client_args.timeout;
    if !(timeout.is_finite() && timeout > 0.0) {
        return Err(format!(
            "--timeout {timeout}: must be a positive number of seconds"
        ));
    }
    let duration = match (args.duration, args.requests) {
        (Some(seconds), _) if !(seconds.is_finite() && seconds > 0.0) => {
            return Err(format!("--duration {seconds}: must be a positive number"));
        }
        (Some(seconds), _) => Some(Duration::from_secs_f64(seconds)),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    Ok(Plan {
        view_services,
        redis,
        mix,
        duration,
        answer_timeout: Duration::from_secs_f64(timeout),
    })
}

fn host(args: &BenchArgs, plan: &Plan) -> BenchHost {
    let session_count = args.clients * args.pipeline;
    let sessions = (0..session_count)
        .map(|index| {
            let mut config = ClientConfig::with_view_services(plan.view_services.clone());
            config.lane = index / args.pipeline;
            Session {
                client: Client::new(config),
                awaiting: None,
                view_asks: Vec::new(),
                intended_at: MonoTime(0),
                busy: false,
            }
        })
        .collect();
    let workload = Workload::new(WorkloadOptions {
        seed: args.seed,
        mix: plan.mix,
        key_count: args.keys,
        value_size: args.value_size,
        fill: args.fill,
    });
    BenchHost {
        sessions,
        pipeline: args.pipeline,
        owners: HashMap::with_capacity_and_hasher(
            session_count as usize * 2,
            foldhash::fast::RandomState::default(),
        ),
        // Popped from the end: session 0 starts first.
        idle: (0..session_count).rev().collect(),
        workload,
        schedule: None,
        schedule_timer_at: None,
        rate: args.rate,
        issued: 0,
        requests: args.requests,
        duration: plan.duration,
        answer_timeout: plan.answer_timeout,
        started_at: MonoTime(0),
        stopped_at: None,
        stopping: false,
        gave_up: false,
        pending_at_stop: 0,
        not_started_at_stop: 0,
        latency: [
            Latency::new(),
            Latency::new(),
            Latency::new(),
            Latency::new(),
        ],
        schedule_lag: args.rate.map(|_| Latency::new()),
        counts: Counts::default(),
        history: args.history.as_ref().map(|_| History::new()),
        live: std::io::stderr()
            .is_terminal()
            .then(|| live_line(args.requests, plan.duration)),
    }
}

/// How a run ended, for the exit code.
struct Ran {
    report: Report,
    counts: Counts,
    /// Operations outstanding at the end for which a request was sent.
    sent_outstanding: u64,
    gave_up: bool,
}

/// Runs `pbkv bench`; returns the exit code.
pub fn run(client_args: &ClientArgs, args: &BenchArgs) -> i32 {
    let plan = match plan(client_args, args) {
        Ok(plan) => plan,
        Err(why) => {
            eprintln!("error: {why}");
            return exit::USAGE;
        }
    };
    if let Some(redis) = &plan.redis {
        let ran = redis::run(args, &plan, redis);
        if let Err(why) = print_report(args, &ran.report) {
            eprintln!("error: {why}");
            return exit::MISSING;
        }
        return redis::exit_code(redis, &ran);
    }
    let keys = match client_args.keys() {
        Ok(keys) => keys,
        Err(why) => {
            eprintln!("error: {why}");
            return exit::CONFIG;
        }
    };
    let ran = match run_bench(args, &plan, keys) {
        Ok(ran) => ran,
        Err(why) => {
            eprintln!("error: {why}");
            return exit::MISSING;
        }
    };
    if let Err(why) = print_report(args, &ran.report) {
        eprintln!("error: {why}");
        return exit::MISSING;
    }
    nothing_completed(client_args, &ran)
}

/// The exit code: 0 once anything completed; otherwise why nothing did.
fn nothing_completed(client_args: &ClientArgs, ran: &Ran) -> i32 {
    let view_service = &client_args.view_service;
    let counts = &ran.counts;
    if counts.ops > 0 {
        return exit::OK;
    }
    let seconds = ran.report.seconds;
    let within = if ran.gave_up {
        format!("within --timeout ({seconds:.1} s)")
    } else {
        format!("in {seconds:.1} s")
    };
    if let Some(why) = &counts.first_refusal {
        eprintln!("error: no operation completed {within}: every one was refused ({why})");
        return exit::REFUSED;
    }
    let sent = counts.sent + ran.sent_outstanding;
    if sent > 0 || counts.unknown > 0 {
        eprintln!(
            "error: no operation completed {within}: {sent} requests were sent to a primary \
             and none was answered (outcomes unknown)"
        );
        return exit::UNKNOWN;
    }
    eprintln!(
        "error: no operation completed {within} and nothing was sent: no primary could be \
         reached through the view service at {view_service}{}",
        client_args.unreachable_hint()
    );
    exit::UNAVAILABLE
}

fn run_bench(args: &BenchArgs, plan: &Plan, keys: runtime::Keys) -> Result<Ran, String> {
    let node = NodeId::new(format!("bench-{}", std::process::id())).map_err(|e| e.to_string())?;
    let mut options = NetOptions::new(node);
    options.keys = keys;
    let driver =
        NetDriver::new(host(args, plan), options).map_err(|e| format!("event loop: {e}"))?;
    // CLOCK_MONOTONIC at the driver's monotonic time 0, for system-wide history timestamps.
    let clock_now = monotonic_ns();
    let epoch_ns = clock_now.saturating_sub(driver.epoch().elapsed().as_nanos() as u64);
    let start = Instant::now();
    let mut host = driver.run().map_err(|e| format!("event loop: {e}"))?;
    if let Some(live) = &host.live {
        live.bar.finish_and_clear();
    }
    let seconds = match host.stopped_at {
        Some(stopped_at) => stopped_at.since(host.started_at).as_secs_f64(),
        None => start.elapsed().as_secs_f64(),
    };
    let mut sent_outstanding = 0;
    for (index, session) in host.sessions.iter().enumerate() {
        if let Some(outstanding) = session.client.outstanding() {
            sent_outstanding += u64::from(outstanding.sent);
            if let Some(history) = host.history.as_mut() {
                let process = u32::try_from(index).expect("sessions are at most SESSIONS_MAX");
                history.record_outstanding(process, outstanding.op, outstanding.invoked_at);
            }
        }
    }
    if let (Some(path), Some(history)) = (&args.history, &host.history) {
        history.write(path, epoch_ns)?;
    }
    let kinds = plan
        .mix
        .kinds()
        .map(|kind| (kind.name(), host.latency[kind.index()].clone()))
        .collect();
    let report = Report {
        setup: setup(args, Target::Pbkv),
        requested_rate: args.rate,
        seconds,
        ops: host.counts.ops,
        errors: host.counts.errors,
        unknown: host.counts.unknown,
        pending_at_stop: host.pending_at_stop,
        not_started_at_stop: host.not_started_at_stop,
        kinds,
        schedule_lag: host.schedule_lag.take(),
    };
    Ok(Ran {
        report,
        counts: std::mem::take(&mut host.counts),
        sent_outstanding,
        gave_up: host.gave_up,
    })
}

/// The run's setup as the report shows it.
fn setup(args: &BenchArgs, target: Target) -> Setup {
    Setup {
        target,
        connections: args.clients,
        pipeline: args.pipeline,
        value_size: args.value_size,
        keys: args.keys,
        mix: args.mix.clone(),
    }
}

fn print_report(args: &BenchArgs, report: &Report) -> Result<(), String> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let fail = |e: std::io::Error| format!("stdout: {e}");
    if args.json {
        writeln!(out, "{}", report::json(report)).map_err(fail)
    } else if args.csv {
        report::csv(report, out)
    } else {
        for line in report::text(report) {
            writeln!(out, "{line}").map_err(fail)?;
        }
        Ok(())
    }
}

impl Live {
    /// Redraws the line if it is due: `ops` completed so far, of `requests` if given, in a
    /// run started at `started_at`.
    fn update(&mut self, now: MonoTime, ops: u64, started_at: MonoTime, requests: Option<u64>) {
        let interval = now.since(self.last_at);
        if interval < LIVE_INTERVAL {
            return;
        }
        let rate = ops.saturating_sub(self.last_ops) as f64 / interval.as_secs_f64();
        self.last_at = now;
        self.last_ops = ops;
        if requests.is_some() {
            self.bar.set_position(ops);
        } else {
            self.bar
                .set_position(now.since(started_at).as_millis() as u64);
        }
        self.bar.set_message(format!("{rate:.0} ops/s"));
    }
}

fn live_line(requests: Option<u64>, duration: Option<Duration>) -> Live {
    // With --requests the bar counts operations; otherwise milliseconds of the duration.
    let length = requests.unwrap_or_else(|| duration.map_or(1, |d| d.as_millis() as u64));
    let bar = indicatif::ProgressBar::new(length);
    let style = indicatif::ProgressStyle::with_template("{bar:40} {elapsed} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    Live {
        bar,
        last_at: MonoTime(0),
        last_ops: 0,
    }
}

/// CLOCK_MONOTONIC in nanoseconds: system-wide, so histories of several bench processes on
/// one host can be merged.
fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}
