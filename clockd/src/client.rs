//! The time client: polls a time server at a fixed interval, one request in flight, and
//! feeds every valid exchange to an [`Estimator`].
//!
//! Stamps: `t1` is written by this node's driver right before the request is written to
//! the socket (so the role learns it from the echo), `t4` is the driver's receive stamp.
//! A reply counts only if its `seq` is the one outstanding and its echoed `t1` lies between
//! the turn that sent the request and `t4` (RFC 5905's "bogus" check, adapted to a stamp
//! the role never saw); a reply that arrives after the next poll was sent is late, and
//! the request it answers is counted as lost.

use std::time::Duration;

use proto::clock::{TimeReply, TimeRequest};
use proto::{Addr, Message};
use runtime::{Ctx, Dest, Link, Origin, Role};

use crate::estimator::{
    Drift, DriftInterval, Estimate, Estimator, EstimatorConfig, Sample, SampleError, Verdict,
};

/// What the client does.
#[derive(Debug, Clone, Copy)]
pub struct ClientConfig {
    /// The time server.
    pub server: Addr,
    /// Time between polls.
    pub interval: Duration,
    /// Exchanges per poll, each sent as soon as the previous one is answered (at least 1).
    /// After a long sleep a host's first send is slow (cold caches; on a virtual machine,
    /// a halted virtual CPU), which only the request path pays: that is asymmetry, and
    /// bias. The later exchanges of a burst run warm, and the minimum-delay filter picks
    /// them (chrony's `burst` serves the same end).
    pub burst: u32,
    /// Stop after this many samples; `None` polls forever.
    pub samples: Option<u64>,
    /// Ask the driver to stop once `samples` are in.
    pub stop_when_done: bool,
    /// The estimator's tuning.
    pub estimator: EstimatorConfig,
}

/// The client's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ClientTimer {
    /// Time to send the next request.
    Poll,
}

/// One valid exchange and what the estimator made of it at that moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record {
    /// The measured sample.
    pub sample: Sample,
    /// The poll it belongs to (a burst's exchanges share one).
    pub poll: u64,
    /// Whether the regression kept it.
    pub verdict: Verdict,
    /// The current estimate right after it, at its `t4`.
    pub estimate: Estimate,
    /// The drift estimate right after it.
    pub drift: Option<Drift>,
    /// The hard drift interval right after it.
    pub interval: DriftInterval,
    /// The server's flags.
    pub server_flags: u32,
}

/// Counters of what went wrong.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Requests sent.
    pub sent: u64,
    /// Requests never answered in time (the link broke, or the next poll came first).
    pub lost: u64,
    /// Replies for a request no longer outstanding.
    pub late: u64,
    /// Replies whose echoed `t1` is impossible.
    pub bogus: u64,
    /// Exchanges whose stamps give no sample ([`SampleError`]).
    pub invalid: u64,
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    seq: u64,
    /// The poll it belongs to.
    poll: u64,
    /// The physical clock of the turn that sent it: the transmit stamp is not earlier.
    sent_ns: i64,
}

/// The time client role.
#[derive(Debug)]
pub struct TimeClient {
    config: ClientConfig,
    estimator: Estimator,
    next_seq: u64,
    outstanding: Option<Outstanding>,
    /// Exchanges of the current burst still to send.
    burst_left: u32,
    /// Polls started.
    polls: u64,
    records: Vec<Record>,
    stats: ClientStats,
    last_error: Option<SampleError>,
}

impl TimeClient {
    /// A client with `config`.
    pub fn new(config: ClientConfig) -> TimeClient {
        TimeClient {
            config,
            estimator: Estimator::new(config.estimator),
            next_seq: 1,
            outstanding: None,
            burst_left: 0,
            polls: 0,
            records: Vec::new(),
            stats: ClientStats::default(),
            last_error: None,
        }
    }

    /// Every valid exchange so far, in order.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The estimator.
    pub fn estimator(&self) -> &Estimator {
        &self.estimator
    }

    /// The counters.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Why the last invalid exchange was refused.
    pub fn last_error(&self) -> Option<SampleError> {
        self.last_error
    }

    /// Whether the configured number of samples is in.
    pub fn done(&self) -> bool {
        self.config
            .samples
            .is_some_and(|samples| self.records.len() as u64 >= samples)
    }

    fn poll(&mut self, ctx: &mut Ctx<ClientTimer>) {
        if self.outstanding.take().is_some() {
            self.stats.lost += 1;
        }
        self.burst_left = self.config.burst.max(1) - 1;
        self.polls += 1;
        self.request(ctx);
        ctx.set_timer(ClientTimer::Poll, self.config.interval);
    }

    fn request(&mut self, ctx: &mut Ctx<ClientTimer>) {
        if self.done() {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let sent_ns = ctx.physical_now_ns();
        // The mio driver overwrites t1 at the write; the simulator sends at the turn's
        // instant, whose clock this is.
        ctx.send(
            Dest::from(self.config.server),
            TimeRequest { seq, t1: sent_ns },
        );
        self.stats.sent += 1;
        self.outstanding = Some(Outstanding {
            seq,
            poll: self.polls,
            sent_ns,
        });
    }

    fn on_reply(&mut self, ctx: &mut Ctx<ClientTimer>, origin: &Origin, reply: TimeReply) {
        let Some(outstanding) = self.outstanding.filter(|o| o.seq == reply.seq) else {
            self.stats.late += 1;
            return;
        };
        let t4 = origin.received_ns;
        if reply.t1 < outstanding.sent_ns || reply.t1 > t4 {
            self.stats.bogus += 1;
            return;
        }
        self.outstanding = None;
        self.sample(ctx, reply, t4, outstanding.poll);
        if self.burst_left > 0 && !self.done() {
            // The next exchange of the burst; its transmit stamp is taken at the socket,
            // after this one's t4, so the two never overlap.
            self.burst_left -= 1;
            self.request(ctx);
        }
    }

    fn sample(&mut self, ctx: &mut Ctx<ClientTimer>, reply: TimeReply, t4: i64, poll: u64) {
        let stamps = crate::estimator::Stamps {
            t1: reply.t1,
            t2: reply.t2,
            t3: reply.t3,
            t4,
        };
        let mut terms = self.config.estimator.terms;
        terms.server_err_ns = reply.err_ns;
        let sample = match Sample::new(reply.seq, stamps, terms) {
            Ok(sample) => sample,
            Err(error) => {
                self.stats.invalid += 1;
                self.last_error = Some(error);
                ctx.event(format!("time sample {} discarded: {error}", reply.seq));
                return;
            }
        };
        let verdict = self.estimator.add_in_poll(sample, poll);
        let Some(estimate) = self.estimator.estimate_at(t4) else {
            return;
        };
        self.records.push(Record {
            sample,
            poll,
            verdict,
            estimate,
            drift: self.estimator.drift(),
            interval: self.estimator.drift_interval(),
            server_flags: reply.flags,
        });
        if self.done() {
            ctx.cancel_timer(ClientTimer::Poll);
            if self.config.stop_when_done {
                ctx.stop();
            }
        }
    }
}

impl Role for TimeClient {
    type Timer = ClientTimer;

    fn on_start(&mut self, ctx: &mut Ctx<ClientTimer>) {
        self.poll(ctx);
    }

    fn on_message(&mut self, ctx: &mut Ctx<ClientTimer>, origin: &Origin, message: Message) {
        match message {
            Message::TimeReply(reply) => self.on_reply(ctx, origin, reply),
            other => log::debug!("time client: ignoring {}", other.message_type()),
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<ClientTimer>, timer: ClientTimer) {
        match timer {
            ClientTimer::Poll => self.poll(ctx),
        }
    }

    fn on_link(&mut self, _ctx: &mut Ctx<ClientTimer>, _to: Dest, link: Link) {
        if link == Link::Down && self.outstanding.take().is_some() {
            self.stats.lost += 1;
        }
    }
}
