//! The link layer both drivers share: a connection's life from connect to hello to break,
//! and the rules that bound what a node queues. The mio driver ([`crate::net`]) and the
//! simulator ([`crate::sim`]) keep their sockets (or simulated links) and call in here for
//! every decision, so the simulator exercises exactly the checks the real node makes:
//!
//! - **the hello exchange**: both ends send a hello first; the first frame from the other
//!   end must be a hello in this node's protocol version ([`LinkEnd::on_first_frame`]);
//!   only then is the connection open and, for this node's own links, reported up;
//! - **reconnect backoff** after a link that never opened ([`Backoffs`]): from `backoff_min`,
//!   doubling to `backoff_max`;
//! - **the connecting-queue bound**, in bytes: a link still connecting (or waiting for the
//!   remote hello) queues at most `connecting_queue_len_max`, then fails
//!   ([`LinkEnd::admits`]);
//! - **the write-buffer bound and the backpressure rule** ([`reads_paused`]): an accepted
//!   connection whose own answers back up past `write_buffer_len_max`, or any request while
//!   one of this node's own links is backed up, waits; replies and acks on this node's own
//!   links are always read, so two full buffers never wait on each other;
//! - **where drops are injected** ([`DropInjector`]): a frame this node sends is discarded
//!   and its connection broken, as a lost segment that is never retransmitted would.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use proto::{Hello, Message};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::node::{PROTOCOL_VERSION, PeerInfo};
use crate::role::{Dest, MonoTime};

/// Limits and policies of a node's links. Defaults are documented in docs/operations.md.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// Bytes a connection may have waiting to be written before backpressure applies.
    pub write_buffer_len_max: usize,
    /// Bytes a link still connecting may queue; past it the link fails.
    pub connecting_queue_len_max: usize,
    /// First reconnect backoff after a link that never opened; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest reconnect backoff.
    pub backoff_max: Duration,
    /// Probability that a frame this node sends is dropped, breaking its connection.
    pub drop_rate: f64,
}

impl Default for LinkOptions {
    fn default() -> LinkOptions {
        LinkOptions {
            write_buffer_len_max: 8 * 1024 * 1024,
            connecting_queue_len_max: 4 * 1024 * 1024,
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(500),
            drop_rate: 0.0,
        }
    }
}

/// Which end of a connection this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A connection this node accepted: requests arrive on it, answers leave.
    Inbound,
    /// This node's own link to a destination: its requests leave, replies arrive.
    Outbound(Dest),
}

/// Where one end of a connection is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Waiting out a reconnect backoff; no socket yet.
    Backoff {
        /// When to connect.
        until: MonoTime,
    },
    /// Connecting.
    Connecting {
        /// When the attempt fails.
        deadline: MonoTime,
    },
    /// Connected; the other end's hello has not arrived.
    AwaitingHello,
    /// The other end's hello arrived and passed the checks.
    Open(PeerInfo),
}

/// Why a connection was refused at its hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The first frame was not a hello.
    NotAHello,
    /// The other end speaks another protocol version.
    Protocol(u16),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotAHello => write!(f, "first frame is not a hello"),
            Refusal::Protocol(version) => write!(
                f,
                "peer speaks protocol {version}, this node {PROTOCOL_VERSION}"
            ),
        }
    }
}

/// One end of a connection, as the link layer sees it.
#[derive(Debug, Clone)]
pub struct LinkEnd {
    /// Which end.
    pub side: Side,
    /// Where it is.
    pub phase: Phase,
}

impl LinkEnd {
    /// An accepted connection, waiting for the dialer's hello.
    pub fn inbound() -> LinkEnd {
        LinkEnd {
            side: Side::Inbound,
            phase: Phase::AwaitingHello,
        }
    }

    /// A new link to `dest`: it connects at once unless a backoff from an earlier failure
    /// is still running.
    pub fn outbound(dest: Dest, backoffs: &Backoffs, now: MonoTime) -> LinkEnd {
        let until = backoffs.next_attempt_at(dest).unwrap_or(now).max(now);
        LinkEnd {
            side: Side::Outbound(dest),
            phase: Phase::Backoff { until },
        }
    }

    /// Whether this node accepted the connection.
    pub fn is_inbound(&self) -> bool {
        self.side == Side::Inbound
    }

    /// The destination of this node's own link.
    pub fn dest(&self) -> Option<Dest> {
        match self.side {
            Side::Outbound(dest) => Some(dest),
            Side::Inbound => None,
        }
    }

    /// The other end, once its hello arrived.
    pub fn peer(&self) -> Option<&PeerInfo> {
        match &self.phase {
            Phase::Open(peer) => Some(peer),
            _ => None,
        }
    }

    /// Whether frames may be written to the socket (the connect finished).
    pub fn is_connected(&self) -> bool {
        matches!(self.phase, Phase::AwaitingHello | Phase::Open(_))
    }

    /// A backoff that ended by `now`: time to connect.
    pub fn backoff_over(&self, now: MonoTime) -> bool {
        matches!(self.phase, Phase::Backoff { until } if until <= now)
    }

    /// A connect attempt that ran out of time by `now`.
    pub fn connect_timed_out(&self, now: MonoTime) -> bool {
        matches!(self.phase, Phase::Connecting { deadline } if deadline <= now)
    }

    /// The deadline this end waits for, if any (a backoff's end, a connect's timeout).
    pub fn deadline(&self) -> Option<MonoTime> {
        match self.phase {
            Phase::Backoff { until } => Some(until),
            Phase::Connecting { deadline } => Some(deadline),
            _ => None,
        }
    }

    /// The connect started; it fails at `deadline`.
    pub fn connecting(&mut self, deadline: MonoTime) {
        self.phase = Phase::Connecting { deadline };
    }

    /// The connect finished: hellos may flow.
    pub fn connected(&mut self) {
        self.phase = Phase::AwaitingHello;
    }

    /// The hello checks, on the first frame from the other end. On success the connection
    /// is open; for this node's own link, the destination that is now up is returned.
    ///
    /// # Errors
    /// The refusal: the caller closes the connection and logs why.
    pub fn on_first_frame(
        &mut self,
        own: &Hello,
        message: Message,
    ) -> Result<Option<Dest>, Refusal> {
        let Message::Hello(hello) = message else {
            return Err(Refusal::NotAHello);
        };
        if hello.protocol != PROTOCOL_VERSION {
            return Err(Refusal::Protocol(hello.protocol));
        }
        if hello.run != own.run {
            log::warn!(
                "peer {} is in run {:?}, not {:?}",
                hello.node,
                hello.run,
                own.run
            );
        }
        self.phase = Phase::Open(PeerInfo::from(&hello));
        Ok(self.dest())
    }

    /// Whether a frame of `frame_len` bytes may be queued on this end, which already holds
    /// `queued_len` bytes: always once open; while connecting or awaiting the hello, only
    /// within `connecting_queue_len_max` (past it the link fails).
    pub fn admits(&self, queued_len: usize, frame_len: usize, options: &LinkOptions) -> bool {
        matches!(self.phase, Phase::Open(_))
            || queued_len.saturating_add(frame_len) <= options.connecting_queue_len_max
    }
}

/// The backpressure rule: whether reading from a connection waits. Replies and acks on this
/// node's own links are always read. An accepted connection waits while its own answers
/// (`own_queued_len`) are past the write bound (its peer is not reading them), and while any
/// of this node's own links is past it (`own_link_backed_up`: new requests would only add
/// forwards that cannot leave).
pub fn reads_paused(
    end: &LinkEnd,
    own_queued_len: usize,
    own_link_backed_up: bool,
    options: &LinkOptions,
) -> bool {
    end.is_inbound() && (own_queued_len > options.write_buffer_len_max || own_link_backed_up)
}

/// Whether a link with `queued_len` bytes waiting is past the write bound.
pub fn backed_up(queued_len: usize, options: &LinkOptions) -> bool {
    queued_len > options.write_buffer_len_max
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    next_attempt_at: MonoTime,
    delay: Duration,
}

/// Reconnect backoff per destination, after links that failed before they opened.
#[derive(Debug, Clone)]
pub struct Backoffs {
    min: Duration,
    max: Duration,
    by_dest: BTreeMap<Dest, Backoff>,
}

impl Backoffs {
    /// Backoffs from `options`.
    pub fn new(options: &LinkOptions) -> Backoffs {
        Backoffs {
            min: options.backoff_min,
            max: options.backoff_max,
            by_dest: BTreeMap::new(),
        }
    }

    /// When the next attempt to `dest` may start, if a backoff runs.
    pub fn next_attempt_at(&self, dest: Dest) -> Option<MonoTime> {
        self.by_dest.get(&dest).map(|b| b.next_attempt_at)
    }

    /// A link to `dest` failed before it opened: the next attempt waits `backoff_min`, or
    /// twice the last wait, up to `backoff_max`.
    pub fn failed(&mut self, dest: Dest, now: MonoTime) {
        let delay = self
            .by_dest
            .get(&dest)
            .map_or(self.min, |b| (b.delay * 2).min(self.max));
        let next_attempt_at = now.plus(delay);
        self.by_dest.insert(
            dest,
            Backoff {
                next_attempt_at,
                delay,
            },
        );
    }

    /// A link to `dest` opened (or its node restarted): no more backoff.
    pub fn clear(&mut self, dest: Dest) {
        self.by_dest.remove(&dest);
    }

    /// Forgets every backoff.
    pub fn clear_all(&mut self) {
        self.by_dest.clear();
    }
}

/// Fault injection: drops frames this node sends, at `drop_rate`.
#[derive(Debug)]
pub struct DropInjector {
    rate: f64,
    rng: StdRng,
}

impl DropInjector {
    /// An injector dropping at `rate`, its choices seeded by `seed`.
    pub fn new(rate: f64, seed: u64) -> DropInjector {
        DropInjector {
            rate,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Changes the drop rate.
    pub fn set_rate(&mut self, rate: f64) {
        self.rate = rate;
    }

    /// Whether to drop the frame about to be sent (the caller then breaks its link).
    pub fn drop_next(&mut self) -> bool {
        self.rate > 0.0 && self.rng.random_bool(self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{Addr, Incarnation, NodeId};

    fn hello(protocol: u16) -> Hello {
        Hello {
            protocol,
            software: "test".into(),
            node: NodeId::new("a").expect("valid"),
            incarnation: Incarnation(1),
            addr: None,
            run: "run".into(),
            logs: false,
        }
    }

    fn dest() -> Dest {
        Dest::from(Addr::v4(127, 0, 0, 1, 7000))
    }

    #[test]
    fn the_first_frame_must_be_a_hello_in_our_protocol() {
        let own = hello(PROTOCOL_VERSION);
        let mut end = LinkEnd::inbound();
        let other = Message::GetViewRequest(proto::viewservice::GetViewRequest {});
        assert_eq!(end.on_first_frame(&own, other), Err(Refusal::NotAHello));
        let old = Message::Hello(hello(PROTOCOL_VERSION + 1));
        let refused = end.on_first_frame(&own, old);
        assert_eq!(refused, Err(Refusal::Protocol(PROTOCOL_VERSION + 1)));
        assert!(end.peer().is_none());
        assert_eq!(
            end.on_first_frame(&own, Message::Hello(own.clone())),
            Ok(None)
        );
        assert_eq!(end.peer().map(|p| p.incarnation), Some(Incarnation(1)));
        let mut link =
            LinkEnd::outbound(dest(), &Backoffs::new(&LinkOptions::default()), MonoTime(0));
        link.connected();
        assert_eq!(
            link.on_first_frame(&own, Message::Hello(own.clone())),
            Ok(Some(dest()))
        );
    }

    #[test]
    fn backoff_doubles_to_its_maximum_and_clears() {
        let options = LinkOptions::default();
        let mut backoffs = Backoffs::new(&options);
        let now = MonoTime(0);
        let mut waits = Vec::new();
        for _ in 0..8 {
            backoffs.failed(dest(), now);
            waits.push(backoffs.next_attempt_at(dest()).map(|at| at.0 / 1_000_000));
        }
        let expected = [10, 20, 40, 80, 160, 320, 500, 500].map(Some);
        assert_eq!(waits, expected);
        let end = LinkEnd::outbound(dest(), &backoffs, now);
        assert_eq!(end.deadline(), Some(MonoTime(500_000_000)));
        backoffs.clear(dest());
        assert_eq!(
            LinkEnd::outbound(dest(), &backoffs, now).deadline(),
            Some(now)
        );
    }

    #[test]
    fn the_connecting_queue_is_bounded_in_bytes() {
        let options = LinkOptions {
            connecting_queue_len_max: 100,
            ..LinkOptions::default()
        };
        let mut end = LinkEnd::outbound(dest(), &Backoffs::new(&options), MonoTime(0));
        assert!(end.admits(60, 40, &options));
        assert!(!end.admits(60, 41, &options));
        end.connected();
        assert!(
            !end.admits(60, 41, &options),
            "awaiting the hello still counts"
        );
        let own = hello(PROTOCOL_VERSION);
        end.on_first_frame(&own, Message::Hello(own.clone()))
            .expect("a hello");
        assert!(
            end.admits(60, 41, &options),
            "open links are bounded by backpressure"
        );
    }

    #[test]
    fn backpressure_never_pauses_this_nodes_own_links() {
        let options = LinkOptions {
            write_buffer_len_max: 100,
            ..LinkOptions::default()
        };
        let inbound = LinkEnd::inbound();
        let outbound = LinkEnd::outbound(dest(), &Backoffs::new(&options), MonoTime(0));
        assert!(!reads_paused(&inbound, 100, false, &options));
        assert!(reads_paused(&inbound, 101, false, &options));
        assert!(reads_paused(&inbound, 0, true, &options));
        assert!(!reads_paused(&outbound, 1_000, true, &options));
    }
}
