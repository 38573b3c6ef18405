//! The time server: the reference clock (the "GPS"). It answers every [`TimeRequest`] with
//! the request's `t1` echoed, `t2` = the driver's receive stamp, and `t3` written by the
//! driver right before the reply goes to the socket.

use proto::Message;
use proto::clock::{TIME_FLAG_UNSYNCHRONIZED, TimeReply, TimeRequest};
use runtime::{Ctx, Origin, Role};

/// How the server describes its own clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerConfig {
    /// Its own error bound against the reference, in nanoseconds (0: it is the reference).
    pub err_ns: u32,
    /// Whether to flag its clock as unsynchronized.
    pub unsynchronized: bool,
}

/// The time server role. It has no timers and no state beyond a counter.
#[derive(Debug, Default)]
pub struct TimeServer {
    config: ServerConfig,
    answered: u64,
}

impl TimeServer {
    /// A server with `config`.
    pub fn new(config: ServerConfig) -> TimeServer {
        TimeServer {
            config,
            answered: 0,
        }
    }

    /// Requests answered since start.
    pub fn answered(&self) -> u64 {
        self.answered
    }

    /// Answers `request`, which arrived as `origin` says (its receive stamp is `t2`).
    pub fn answer<T>(&mut self, ctx: &mut Ctx<T>, origin: &Origin, request: TimeRequest) {
        self.answered += 1;
        let flags = if self.config.unsynchronized {
            TIME_FLAG_UNSYNCHRONIZED
        } else {
            0
        };
        let reply = TimeReply {
            seq: request.seq,
            t1: request.t1,
            t2: origin.received_ns,
            // The mio driver overwrites this at the write; the simulator sends at the turn's
            // instant, whose clock is exact (and never before the receive stamp).
            t3: ctx.physical_now_ns().max(origin.received_ns),
            err_ns: self.config.err_ns,
            flags,
        };
        ctx.reply(origin, reply);
    }
}

impl Role for TimeServer {
    type Timer = ();

    fn on_start(&mut self, _ctx: &mut Ctx<()>) {}

    fn on_message(&mut self, ctx: &mut Ctx<()>, origin: &Origin, message: Message) {
        match message {
            Message::TimeRequest(request) => self.answer(ctx, origin, request),
            other => log::debug!("time server: ignoring {}", other.message_type()),
        }
    }

    fn on_timer(&mut self, _ctx: &mut Ctx<()>, _timer: ()) {}
}
