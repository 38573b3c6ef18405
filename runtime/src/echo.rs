//! A demonstration role: answers every [`EchoRequest`], and optionally plays ping-pong with
//! a peer for a number of rounds, `window` requests in flight, then stops. It proves the
//! runtime end to end (two real processes whose merged logs satisfy the Lamport rules) and
//! drives the round-trip benchmarks.

use std::time::Duration;

use bytes::Bytes;
use proto::echo::{EchoReply, EchoRequest};
use proto::{Addr, Message};

use crate::role::{Ctx, Dest, Link, MonoTime, Origin, Role};

/// How long the pinger waits for a reply before it resends the outstanding rounds.
pub const ECHO_RETRY_AFTER: Duration = Duration::from_millis(200);

/// What the echo role does.
#[derive(Debug, Clone)]
pub struct EchoConfig {
    /// The peer to ping; `None` only answers.
    pub peer: Option<Addr>,
    /// Rounds to complete before stopping (ignored without a peer).
    pub rounds: u64,
    /// Requests in flight at once.
    pub window: u64,
    /// Payload bytes per request.
    pub payload_len: usize,
    /// Stop when the rounds are done.
    pub stop_when_done: bool,
}

/// The echo role's timers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum EchoTimer {
    /// Resend whatever is outstanding.
    Retry,
}

/// The echo role.
#[derive(Debug)]
pub struct EchoRole {
    config: EchoConfig,
    payload: Bytes,
    /// Next round number to send.
    next_round: u64,
    /// Rounds answered.
    completed: u64,
    /// Rounds sent and not yet answered, oldest first.
    outstanding: std::collections::BTreeSet<u64>,
    started_at: Option<MonoTime>,
    finished_at: Option<MonoTime>,
    /// Requests answered (as the echoing side).
    answered: u64,
}

impl EchoRole {
    /// A role with `config`.
    pub fn new(config: EchoConfig) -> EchoRole {
        let payload = Bytes::from(vec![b'x'; config.payload_len]);
        EchoRole {
            config,
            payload,
            next_round: 1,
            completed: 0,
            outstanding: std::collections::BTreeSet::new(),
            started_at: None,
            finished_at: None,
            answered: 0,
        }
    }

    /// A role that only answers.
    pub fn responder() -> EchoRole {
        EchoRole::new(EchoConfig {
            peer: None,
            rounds: 0,
            window: 1,
            payload_len: 0,
            stop_when_done: false,
        })
    }

    /// Rounds completed so far.
    pub fn completed(&self) -> u64 {
        self.completed
    }

    /// Requests this node answered.
    pub fn answered(&self) -> u64 {
        self.answered
    }

    /// Time from the first send to the last reply, once done.
    pub fn elapsed(&self) -> Option<Duration> {
        Some(self.finished_at?.since(self.started_at?))
    }

    fn done(&self) -> bool {
        self.completed >= self.config.rounds
    }

    fn fill_window(&mut self, ctx: &mut Ctx<EchoTimer>, peer: Addr) {
        while (self.outstanding.len() as u64) < self.config.window
            && self.next_round <= self.config.rounds
        {
            let round = self.next_round;
            self.next_round += 1;
            self.outstanding.insert(round);
            self.send_request(ctx, peer, round);
        }
    }

    fn send_request(&self, ctx: &mut Ctx<EchoTimer>, peer: Addr, round: u64) {
        ctx.send(
            peer,
            EchoRequest {
                round,
                payload: self.payload.clone(),
            },
        );
    }

    fn on_echo_reply(&mut self, ctx: &mut Ctx<EchoTimer>, reply: EchoReply) {
        let Some(peer) = self.config.peer else { return };
        if !self.outstanding.remove(&reply.round) {
            return; // A duplicate answer to a resent round.
        }
        self.completed += 1;
        if self.done() {
            self.finished_at = Some(ctx.now());
            ctx.cancel_timer(EchoTimer::Retry);
            ctx.event(format!("done: {} rounds", self.completed));
            if self.config.stop_when_done {
                ctx.stop();
            }
            return;
        }
        self.fill_window(ctx, peer);
        ctx.set_timer(EchoTimer::Retry, ECHO_RETRY_AFTER);
    }
}

impl Role for EchoRole {
    type Timer = EchoTimer;

    fn on_start(&mut self, ctx: &mut Ctx<EchoTimer>) {
        let Some(peer) = self.config.peer else { return };
        if self.done() {
            return;
        }
        self.started_at = Some(ctx.now());
        self.fill_window(ctx, peer);
        ctx.set_timer(EchoTimer::Retry, ECHO_RETRY_AFTER);
    }

    fn on_message(&mut self, ctx: &mut Ctx<EchoTimer>, origin: &Origin, message: Message) {
        match message {
            Message::EchoRequest(request) => {
                self.answered += 1;
                ctx.reply(
                    origin,
                    EchoReply {
                        round: request.round,
                        payload: request.payload,
                    },
                );
            }
            Message::EchoReply(reply) => self.on_echo_reply(ctx, reply),
            other => log::debug!("echo: ignoring {}", other.message_type()),
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<EchoTimer>, timer: EchoTimer) {
        match timer {
            EchoTimer::Retry => {
                let Some(peer) = self.config.peer else { return };
                for round in self.outstanding.clone() {
                    self.send_request(ctx, peer, round);
                }
                ctx.set_timer(EchoTimer::Retry, ECHO_RETRY_AFTER);
            }
        }
    }

    fn on_link(&mut self, ctx: &mut Ctx<EchoTimer>, _to: Dest, link: Link) {
        if link == Link::Down && !self.done() {
            // What was in flight is lost; resend soon (the driver reconnects with backoff).
            ctx.set_timer(EchoTimer::Retry, Duration::from_millis(20));
        }
    }

    fn check_invariants(&self) {
        // Every round sent is either answered or outstanding.
        assert_eq!(
            self.completed + self.outstanding.len() as u64,
            self.next_round - 1,
            "rounds sent, answered and outstanding disagree"
        );
        assert!(
            (self.outstanding.len() as u64) <= self.config.window,
            "outstanding {} over window {}",
            self.outstanding.len(),
            self.config.window
        );
    }
}
