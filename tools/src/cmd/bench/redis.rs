//! `pbkv bench --redis HOST:PORT`: the same load against Redis, for comparison.
//!
//! The pbkv path runs the bench as a role under the runtime's event loop, which speaks only
//! pbkv's framed protocol. This is its twin for Redis: one thread, one mio poll, `--clients`
//! connections, each with up to `--pipeline` commands in flight (RESP, [`super::resp`]), the
//! same [`Workload`], closed or open loop ([`Schedule`]), histograms ([`Latency`]) and
//! report. get is `GET`, put is `SET` (with `--redis-wait N`: `SET`, then `WAIT N 0` on the
//! same connection, the latency counting to WAIT's reply), del is `DEL`.
//!
//! Replies come in order on a connection, so each one belongs to the oldest command in
//! flight there. Every reply is checked against the command it answers; anything else is a
//! protocol error that ends the run with a clear message and a non-zero exit, as does an
//! error reply (`-ERR …`) or a connection Redis closes. A `WAIT` reply below N counts as
//! a refused operation (the write was not acknowledged by N replicas) and the run goes on.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use kv::client::ClientOp;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use proto::kv::VALUE_LEN_MAX;
use runtime::MonoTime;

use super::report::{Report, Target};
use super::resp::{self, Reply};
use super::schedule::Schedule;
use super::stats::Latency;
use super::workload::{Mix, OpKind, Workload, WorkloadOptions};
use super::{BenchArgs, Counts, Live, Plan, live_line, setup};
use crate::exit;

/// Longest bulk string a reply may carry: a GET of a value pbkv could hold. A longer one
/// (written by another client) ends the run rather than growing the buffer without bound.
const BULK_MAX: usize = VALUE_LEN_MAX;
/// Most bytes a connection's read buffer holds: one reply at the limits, and some.
const INPUT_MAX: usize = BULK_MAX + resp::LINE_LEN_MAX + 64;
/// A read buffer's first size.
const INPUT_INITIAL: usize = 16 * 1024;

/// `--redis`, validated.
#[derive(Debug, Clone)]
pub(super) struct RedisPlan {
    /// As given, for messages.
    server: String,
    addr: SocketAddr,
    wait: Option<u32>,
}

impl RedisPlan {
    /// The server as given, and its address if that differs.
    fn shown(&self) -> String {
        let addr = self.addr.to_string();
        if addr == self.server {
            addr
        } else {
            format!("{} ({addr})", self.server)
        }
    }
}

/// Checks what the Redis path cannot do and resolves the server's address.
pub(super) fn plan(server: &str, args: &BenchArgs, mix: &Mix) -> Result<RedisPlan, String> {
    if mix.has(OpKind::PutHash) {
        return Err("--redis: Redis has no PutHash; leave puthash out of --mix".into());
    }
    if args.history.is_some() {
        return Err(
            "--redis: --history is for pbkv only (a Redis history has no session numbers \
             to check it by)"
                .into(),
        );
    }
    let addr = server
        .to_socket_addrs()
        .map_err(|e| format!("--redis {server:?}: not HOST:PORT ({e})"))?
        .next()
        .ok_or_else(|| format!("--redis {server:?}: resolves to no address"))?;
    Ok(RedisPlan {
        server: server.to_string(),
        addr,
        wait: args.redis_wait,
    })
}

/// Why a run ended early, and its exit code.
#[derive(Debug)]
pub(super) struct Failure {
    code: i32,
    message: String,
}

/// What a run measured and how it ended.
pub(super) struct RedisRan {
    pub(super) report: Report,
    counts: Counts,
    gave_up: bool,
    failure: Option<Failure>,
}

/// One command in flight.
#[derive(Debug)]
struct InFlight {
    kind: OpKind,
    /// When it was due (open loop) or issued (closed loop): its latency counts from here.
    intended_at: MonoTime,
    /// With `--redis-wait`: the SET is answered, the WAIT is not yet.
    set_answered: bool,
}

/// One connection to Redis.
struct Conn {
    stream: TcpStream,
    /// Commands encoded and not yet written, from `out_at` on.
    out: Vec<u8>,
    out_at: usize,
    /// A write would block: wait for the socket to be writable.
    write_blocked: bool,
    /// Bytes read and not yet parsed: `input[in_start..in_end]`.
    input: Vec<u8>,
    in_start: usize,
    in_end: usize,
    in_flight: VecDeque<InFlight>,
}

/// The finished operations' books.
struct Books {
    latency: [Latency; 4],
    counts: Counts,
    wait: Option<u32>,
}

impl InFlight {
    /// The command whose reply is awaited, for messages.
    fn command(&self, wait: Option<u32>) -> String {
        match (self.kind, wait) {
            (OpKind::Get, _) => "GET".to_string(),
            (OpKind::Delete, _) => "DEL".to_string(),
            (_, Some(n)) if self.set_answered => format!("WAIT {n} 0"),
            _ => "SET".to_string(),
        }
    }
}

impl Books {
    /// Empty books; `wait` is `--redis-wait`.
    fn new(wait: Option<u32>) -> Books {
        Books {
            latency: std::array::from_fn(|_| Latency::new()),
            counts: Counts::default(),
            wait,
        }
    }

    /// Books the reply to `op`; `Ok(true)` once the operation is over.
    fn answer(
        &mut self,
        op: &mut InFlight,
        reply: Reply<'_>,
        now: MonoTime,
    ) -> Result<bool, Failure> {
        let command = op.command(self.wait);
        if let Reply::Error(text) = reply {
            self.counts.completions += 1;
            self.counts.sent += 1;
            self.counts.errors += 1;
            let why = format!("Redis refused {command}: {}", resp::printable(text));
            self.counts.first_refusal.get_or_insert_with(|| why.clone());
            return Err(Failure {
                code: exit::REFUSED,
                message: why,
            });
        }
        let acknowledged = match (op.kind, reply, self.wait) {
            (OpKind::Get, Reply::Bulk(_), _) | (OpKind::Delete, Reply::Integer(0 | 1), _) => true,
            (OpKind::Put, Reply::Simple(b"OK"), None) => true,
            (OpKind::Put, Reply::Simple(b"OK"), Some(_)) if !op.set_answered => {
                op.set_answered = true;
                return Ok(false);
            }
            (OpKind::Put, Reply::Integer(replicas), Some(n)) if op.set_answered => {
                replicas >= i64::from(n)
            }
            _ => {
                return Err(Failure {
                    code: exit::MISSING,
                    message: format!(
                        "protocol error: Redis answered {command} with {}",
                        reply.describe()
                    ),
                });
            }
        };
        self.counts.completions += 1;
        self.counts.sent += 1;
        if acknowledged {
            self.counts.ops += 1;
            self.latency[op.kind.index()].record(now.since(op.intended_at));
        } else {
            self.counts.errors += 1;
            let n = self.wait.unwrap_or(0);
            self.counts.first_refusal.get_or_insert_with(|| {
                format!("WAIT {n} 0 answered that fewer than {n} replicas acknowledged the SET")
            });
        }
        Ok(true)
    }
}

impl Conn {
    /// Writes what is buffered until done or the socket would block.
    fn flush(&mut self) -> std::io::Result<()> {
        while self.out_at < self.out.len() {
            match self.stream.write(&self.out[self.out_at..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(written) => self.out_at += written,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.write_blocked = true;
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.out_at = 0;
        self.write_blocked = false;
        Ok(())
    }

    /// Reads until the socket would block, or until a read that did not fill the buffer,
    /// booking every complete reply; returns how many operations ended. A short read took
    /// all the socket held, and epoll (edge-triggered) reports later bytes as a new event,
    /// so the read that would only say `WouldBlock` is skipped, as pbkv's own event loop
    /// does: both targets cost the bench one read per reply. `to_the_end`: the event also
    /// reported the peer's close or an error, which no later event repeats.
    fn read(&mut self, books: &mut Books, now: MonoTime, to_the_end: bool) -> Result<u32, Failure> {
        let mut ended = 0;
        loop {
            if self.in_end == self.input.len() {
                if self.in_start > 0 {
                    self.input.copy_within(self.in_start..self.in_end, 0);
                    self.in_end -= self.in_start;
                    self.in_start = 0;
                } else if self.input.len() < INPUT_MAX {
                    let grown = (self.input.len() * 2).clamp(INPUT_INITIAL, INPUT_MAX);
                    self.input.resize(grown, 0);
                } else {
                    return Err(self.lost(format!(
                        "protocol error: a reply longer than {INPUT_MAX} bytes"
                    )));
                }
            }
            match self.stream.read(&mut self.input[self.in_end..]) {
                Ok(0) => {
                    let what = if self.in_end > self.in_start {
                        "closed the connection in the middle of a reply"
                    } else {
                        "closed the connection"
                    };
                    return Err(self.lost(format!("Redis {what}")));
                }
                Ok(read) => {
                    let drained = self.in_end + read < self.input.len();
                    self.in_end += read;
                    ended += self.parse(books, now)?;
                    if drained && !to_the_end {
                        return Ok(ended);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(ended),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.lost(format!("reading from Redis: {e}"))),
            }
        }
    }

    /// Books every complete reply in the buffer; returns how many operations ended.
    fn parse(&mut self, books: &mut Books, now: MonoTime) -> Result<u32, Failure> {
        let mut ended = 0;
        loop {
            let parsed = resp::parse(&self.input[self.in_start..self.in_end], BULK_MAX);
            let (reply, used) = match parsed {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break,
                Err(why) => {
                    let answering = self.in_flight.front().map_or(String::new(), |op| {
                        format!(" in answer to {}", op.command(books.wait))
                    });
                    return Err(Failure {
                        code: exit::MISSING,
                        message: format!("protocol error: Redis sent {why}{answering}"),
                    });
                }
            };
            let Some(op) = self.in_flight.front_mut() else {
                return Err(Failure {
                    code: exit::MISSING,
                    message: format!(
                        "protocol error: Redis sent {} with no command in flight",
                        reply.describe()
                    ),
                });
            };
            let over = books.answer(op, reply, now)?;
            self.in_start += used;
            if over {
                self.in_flight.pop_front();
                ended += 1;
            }
        }
        if self.in_start == self.in_end {
            self.in_start = 0;
            self.in_end = 0;
        }
        Ok(ended)
    }

    /// The connection is gone: the outcome of what was in flight on it is unknown.
    fn lost(&self, why: String) -> Failure {
        let outstanding = self.in_flight.len();
        if outstanding == 0 {
            return Failure {
                code: exit::MISSING,
                message: why,
            };
        }
        Failure {
            code: exit::UNKNOWN,
            message: format!("{why}; {outstanding} operations on it have unknown outcomes"),
        }
    }
}

/// The bench's state while it runs.
struct Bench<'a> {
    plan: &'a RedisPlan,
    conns: Vec<Conn>,
    /// One entry per free place in a connection's pipeline: the connection's index.
    idle: Vec<usize>,
    slots: usize,
    /// Connections with commands to write.
    dirty: Vec<usize>,
    workload: Workload,
    wait_arg: String,
    schedule: Option<Schedule>,
    issued: u64,
    requests: Option<u64>,
    books: Books,
    schedule_lag: Option<Latency>,
    live: Option<Live>,
    epoch: Instant,
    started_at: MonoTime,
}

impl Bench<'_> {
    fn now(&self) -> MonoTime {
        MonoTime(u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn limit_reached(&self) -> bool {
        self.requests.is_some_and(|max| self.issued >= max)
    }

    fn in_flight(&self) -> u64 {
        (self.slots - self.idle.len()) as u64
    }

    /// Starts the next operation on connection `index`, due at `intended_at`.
    fn issue(&mut self, index: usize, intended_at: MonoTime, now: MonoTime) {
        let op = self.workload.next_op();
        self.issued += 1;
        if let Some(lag) = self.schedule_lag.as_mut() {
            lag.record(now.since(intended_at));
        }
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        if conn.out.is_empty() {
            self.dirty.push(index);
        }
        let kind = OpKind::of(&op);
        match &op {
            ClientOp::Get { key } => resp::encode(&mut conn.out, &[b"GET", key]),
            ClientOp::Delete { key } => resp::encode(&mut conn.out, &[b"DEL", key]),
            ClientOp::Put { key, value } | ClientOp::PutHash { key, value } => {
                // PutHash is refused by `plan`; the workload never makes one here.
                resp::encode(&mut conn.out, &[b"SET", key, value]);
                if self.plan.wait.is_some() {
                    resp::encode(&mut conn.out, &[b"WAIT", self.wait_arg.as_bytes(), b"0"]);
                }
            }
        }
        conn.in_flight.push_back(InFlight {
            kind,
            intended_at,
            set_answered: false,
        });
    }

    /// Starts what may start now, as the pbkv path does: a command in every free place
    /// (closed loop), or every due operation that finds one (open loop).
    fn feed(&mut self, now: MonoTime) {
        if self.schedule.is_none() {
            for _ in 0..self.idle.len() {
                if self.limit_reached() {
                    break;
                }
                let Some(index) = self.idle.pop() else { break };
                self.issue(index, now, now);
            }
        } else {
            while !self.limit_reached() && !self.idle.is_empty() {
                let Some(due) = self.schedule.as_mut().and_then(|s| s.take_due(now)) else {
                    break;
                };
                let Some(index) = self.idle.pop() else { break };
                self.issue(index, due, now);
            }
        }
        if let Some(live) = self.live.as_mut() {
            live.update(now, self.books.counts.ops, self.started_at, self.requests);
        }
    }

    fn flush(&mut self) -> Result<(), Failure> {
        for index in self.dirty.drain(..) {
            let Some(conn) = self.conns.get_mut(index) else {
                continue;
            };
            if !conn.write_blocked {
                conn.flush()
                    .map_err(|e| conn.lost(format!("writing to Redis: {e}")))?;
            }
        }
        Ok(())
    }
}

/// How long to sleep: until the deadline, the answer timeout while nothing completed, or
/// the open loop's next due operation while a place is free for it.
fn poll_timeout(
    bench: &Bench<'_>,
    deadlines: &[Option<MonoTime>],
    now: MonoTime,
) -> Option<Duration> {
    let next_due = bench
        .schedule
        .as_ref()
        .filter(|_| !bench.limit_reached() && !bench.idle.is_empty())
        .map(Schedule::next_due);
    deadlines
        .iter()
        .copied()
        .chain([next_due])
        .flatten()
        .min()
        .map(|at| at.since(now))
}

/// Opens the connections, blocking for each up to `timeout`.
fn connect(plan: &RedisPlan, count: u32, timeout: Duration) -> Result<Vec<TcpStream>, Failure> {
    (0..count)
        .map(|_| {
            let stream = std::net::TcpStream::connect_timeout(&plan.addr, timeout)
                .and_then(|stream| {
                    stream.set_nodelay(true)?;
                    stream.set_nonblocking(true)?;
                    Ok(stream)
                })
                .map_err(|e| Failure {
                    code: exit::UNAVAILABLE,
                    message: format!(
                        "no operation completed and nothing was sent: Redis at {} could not \
                         be reached: {e}",
                        plan.shown()
                    ),
                })?;
            Ok(TcpStream::from_std(stream))
        })
        .collect()
}

/// Runs the bench against Redis.
pub(super) fn run(args: &BenchArgs, plan: &Plan, redis: &RedisPlan) -> RedisRan {
    let epoch = Instant::now();
    let mut bench = Bench {
        plan: redis,
        conns: Vec::new(),
        idle: Vec::new(),
        slots: 0,
        dirty: Vec::new(),
        workload: Workload::new(WorkloadOptions {
            seed: args.seed,
            mix: plan.mix,
            key_count: args.keys,
            value_size: args.value_size,
            fill: args.fill,
        }),
        wait_arg: redis.wait.unwrap_or(0).to_string(),
        schedule: None,
        issued: 0,
        requests: args.requests,
        books: Books::new(redis.wait),
        schedule_lag: args.rate.map(|_| Latency::new()),
        live: None,
        epoch,
        started_at: MonoTime(0),
    };
    let mut pending_at_stop = 0;
    let mut not_started_at_stop = 0;
    let mut gave_up = false;
    let mut seconds = 0.0;
    let failure = match connect(redis, args.clients, plan.answer_timeout) {
        Err(failure) => Some(failure),
        Ok(streams) => {
            let ended = drive(&mut bench, streams, args, plan, &mut gave_up);
            let stopped_at = bench.now();
            seconds = stopped_at.since(bench.started_at).as_secs_f64();
            pending_at_stop = bench.in_flight();
            if let Some(schedule) = &bench.schedule {
                let due = schedule
                    .due_count(stopped_at)
                    .min(args.requests.unwrap_or(u64::MAX));
                not_started_at_stop = due.saturating_sub(bench.issued);
            }
            ended.err()
        }
    };
    if let Some(live) = &bench.live {
        live.bar.finish_and_clear();
    }
    let kinds = plan
        .mix
        .kinds()
        .map(|kind| (kind.name(), bench.books.latency[kind.index()].clone()))
        .collect();
    let counts = std::mem::take(&mut bench.books.counts);
    let report = Report {
        setup: setup(args, Target::Redis { wait: redis.wait }),
        requested_rate: args.rate,
        seconds,
        ops: counts.ops,
        errors: counts.errors,
        unknown: counts.unknown,
        pending_at_stop,
        not_started_at_stop,
        kinds,
        schedule_lag: bench.schedule_lag.take(),
    };
    RedisRan {
        report,
        counts,
        gave_up,
        failure,
    }
}

/// The event loop: runs until the deadline, the request count, the answer timeout with
/// nothing completed, or a failure.
fn drive(
    bench: &mut Bench<'_>,
    streams: Vec<TcpStream>,
    args: &BenchArgs,
    plan: &Plan,
    gave_up: &mut bool,
) -> Result<(), Failure> {
    let event_loop = |e: std::io::Error| Failure {
        code: exit::MISSING,
        message: format!("event loop: {e}"),
    };
    let mut poll = Poll::new().map_err(event_loop)?;
    for (index, mut stream) in streams.into_iter().enumerate() {
        poll.registry()
            .register(
                &mut stream,
                Token(index),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(event_loop)?;
        bench.conns.push(Conn {
            stream,
            out: Vec::new(),
            out_at: 0,
            write_blocked: false,
            input: Vec::new(),
            in_start: 0,
            in_end: 0,
            in_flight: VecDeque::new(),
        });
        // Popped from the end: connection 0 starts first.
        for _ in 0..args.pipeline {
            bench.idle.push(index);
        }
    }
    bench.idle.reverse();
    bench.slots = bench.idle.len();
    let started_at = bench.now();
    bench.started_at = started_at;
    bench.schedule = args.rate.map(|rate| Schedule::new(started_at, rate));
    bench.live = std::io::IsTerminal::is_terminal(&std::io::stderr())
        .then(|| live_line(args.requests, plan.duration));
    if let Some(live) = bench.live.as_mut() {
        live.last_at = started_at;
    }
    let deadline = plan.duration.map(|d| started_at.plus(d));
    let answer_deadline = started_at.plus(plan.answer_timeout);
    let mut events = Events::with_capacity(1024);
    loop {
        let now = bench.now();
        if deadline.is_some_and(|at| now >= at) {
            return Ok(());
        }
        if bench.books.counts.completions == 0 && now >= answer_deadline {
            *gave_up = true;
            return Ok(());
        }
        bench.feed(now);
        bench.flush()?;
        if bench.limit_reached() && bench.in_flight() == 0 {
            return Ok(());
        }
        let answer = (bench.books.counts.completions == 0).then_some(answer_deadline);
        let timeout = poll_timeout(bench, &[deadline, answer], now);
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(event_loop(e)),
        }
        let now = bench.now();
        for event in &events {
            let index = event.token().0;
            let Bench {
                conns, books, idle, ..
            } = &mut *bench;
            let Some(conn) = conns.get_mut(index) else {
                continue;
            };
            if event.is_writable() && conn.write_blocked {
                conn.write_blocked = false;
                conn.flush()
                    .map_err(|e| conn.lost(format!("writing to Redis: {e}")))?;
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                let to_the_end = event.is_read_closed() || event.is_error();
                let ended = conn.read(books, now, to_the_end)?;
                for _ in 0..ended {
                    idle.push(index);
                }
            }
        }
    }
}

/// The exit code: a failure's; otherwise 0 once anything completed, or why nothing did,
/// with the pbkv path's codes.
pub(super) fn exit_code(redis: &RedisPlan, ran: &RedisRan) -> i32 {
    if let Some(failure) = &ran.failure {
        eprintln!("error: {}", failure.message);
        return failure.code;
    }
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
    let hint = match redis.wait {
        Some(n) => format!(" (WAIT {n} 0 waits until {n} replicas acknowledge: has it {n}?)"),
        None => String::new(),
    };
    eprintln!(
        "error: no operation completed {within}: commands were sent to Redis at {} and none \
         was answered (outcomes unknown){hint}",
        redis.shown()
    );
    exit::UNKNOWN
}

#[cfg(test)]
mod tests {
    use super::*;

    fn books(wait: Option<u32>) -> Books {
        Books::new(wait)
    }

    fn op(kind: OpKind) -> InFlight {
        InFlight {
            kind,
            intended_at: MonoTime(0),
            set_answered: false,
        }
    }

    const AT: MonoTime = MonoTime(2_000_000);

    /// Goal: each command takes only its own replies: GET a bulk string (null included),
    /// DEL 0 or 1, SET +OK; anything else is a protocol error (exit 1) and an error reply a
    /// refusal (exit 65), neither of them booked as a completed operation.
    #[test]
    fn replies_must_fit_their_command() {
        let mut plain = books(None);
        assert_eq!(
            plain
                .answer(&mut op(OpKind::Get), Reply::Bulk(None), AT)
                .ok(),
            Some(true)
        );
        let value = Reply::Bulk(Some(b"v"));
        assert_eq!(
            plain.answer(&mut op(OpKind::Get), value, AT).ok(),
            Some(true)
        );
        let deleted = Reply::Integer(1);
        assert_eq!(
            plain.answer(&mut op(OpKind::Delete), deleted, AT).ok(),
            Some(true)
        );
        let ok = Reply::Simple(b"OK");
        assert_eq!(plain.answer(&mut op(OpKind::Put), ok, AT).ok(), Some(true));
        assert_eq!(plain.counts.ops, 4);
        assert_eq!(plain.latency[OpKind::Get.index()].count(), 2);
        let wrong = [
            (OpKind::Get, Reply::Simple(b"OK")),
            (OpKind::Get, Reply::Integer(1)),
            (OpKind::Delete, Reply::Integer(2)),
            (OpKind::Delete, Reply::Bulk(None)),
            (OpKind::Put, Reply::Simple(b"QUEUED")),
            (OpKind::Put, Reply::Integer(1)),
        ];
        for (kind, reply) in wrong {
            let failure = plain
                .answer(&mut op(kind), reply, AT)
                .expect_err("protocol error");
            assert_eq!(failure.code, exit::MISSING, "{failure:?}");
            assert!(failure.message.contains("protocol error"), "{failure:?}");
        }
        let refused = plain
            .answer(&mut op(OpKind::Put), Reply::Error(b"READONLY no"), AT)
            .expect_err("refused");
        assert_eq!(refused.code, exit::REFUSED);
        assert_eq!(refused.message, "Redis refused SET: READONLY no");
        assert_eq!((plain.counts.ops, plain.counts.errors), (4, 1));
    }

    /// Goal: with --redis-wait, a put is over at WAIT's reply, its latency counted from the
    /// SET; a WAIT reply below N is a refused operation (booked, the run goes on).
    #[test]
    fn set_then_wait() {
        let mut waiting = books(Some(2));
        let mut put = op(OpKind::Put);
        assert_eq!(
            waiting.answer(&mut put, Reply::Simple(b"OK"), AT).ok(),
            Some(false)
        );
        assert_eq!(waiting.counts.completions, 0);
        let again = waiting.answer(&mut put, Reply::Simple(b"OK"), AT);
        assert!(
            again
                .expect_err("a second +OK")
                .message
                .contains("WAIT 2 0")
        );
        assert_eq!(
            waiting.answer(&mut put, Reply::Integer(2), AT).ok(),
            Some(true)
        );
        let put_latency = waiting.latency[OpKind::Put.index()]
            .summary()
            .expect("booked");
        assert_eq!(put_latency.max_us, 2_000);
        let mut short = op(OpKind::Put);
        assert_eq!(
            waiting.answer(&mut short, Reply::Simple(b"OK"), AT).ok(),
            Some(false)
        );
        assert_eq!(
            waiting.answer(&mut short, Reply::Integer(1), AT).ok(),
            Some(true)
        );
        assert_eq!((waiting.counts.ops, waiting.counts.errors), (1, 1));
        let why = waiting.counts.first_refusal.as_deref().expect("refusal");
        assert!(why.contains("fewer than 2 replicas"), "{why}");
        let mut unanswered = op(OpKind::Put);
        let early = waiting.answer(&mut unanswered, Reply::Integer(2), AT);
        assert_eq!(
            early.expect_err("WAIT's reply before SET's").code,
            exit::MISSING
        );
    }
}
