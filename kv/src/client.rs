//! The client role: opens a session, caches the view, sends each operation to the primary,
//! and on an error or timeout re-reads the view and retries the same request (same session
//! and sequence number, so the service applies it at most once). It asks the view service
//! nothing while nothing fails.
//!
//! One operation is outstanding at a time; the rest queue. Every operation ends in one
//! [`Outcome`]: done, missing key, refused (over a size limit, or the service is full:
//! `ErrFull`, a definite failure), or unknown (its session expired, so it may or may not
//! have been applied).

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use proto::kv::{
    GetReply, GetRequest, KEY_LEN_MAX, OpenSessionReply, OpenSessionRequest, PutKind, PutReply,
    PutRequest, Status, VALUE_LEN_MAX,
};
use proto::viewservice::{GetViewRequest, View};
use proto::{Addr, Message};
use rand::RngExt;
use runtime::{Ctx, Dest, Link, MonoTime, Origin, Role};

/// An operation a client runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOp {
    /// Read a key.
    Get {
        /// Key.
        key: Bytes,
    },
    /// Write a key.
    Put {
        /// Key.
        key: Bytes,
        /// Value.
        value: Bytes,
    },
    /// PutHash: returns the previous value.
    PutHash {
        /// Key.
        key: Bytes,
        /// Value.
        value: Bytes,
    },
    /// Delete a key: returns `1` if it existed, `0` if not. Applied at most once, as a Put.
    Delete {
        /// Key.
        key: Bytes,
    },
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Get: the value. Put: empty. PutHash: the previous value. Delete: `1` or `0`.
    Done(Bytes),
    /// Get: the key does not exist.
    NoKey,
    /// Refused, not applied (a key or value over its limit, or the service is full).
    Refused(String),
    /// May or may not have been applied (its session expired).
    Unknown(String),
}

/// A finished operation, with its invocation and completion times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    /// The id `submit` returned.
    pub id: u64,
    /// The operation.
    pub op: ClientOp,
    /// How it ended.
    pub outcome: Outcome,
    /// When it was submitted.
    pub invoked_at: MonoTime,
    /// When it ended.
    pub completed_at: MonoTime,
    /// Whether a request for it was ever sent (false: nothing left this client).
    pub sent: bool,
    /// The lane of the client that ran it (its process number in histories).
    pub lane: u64,
}

/// The operation a client is running, not yet finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outstanding<'a> {
    /// The id `submit` returned.
    pub id: u64,
    /// The operation.
    pub op: &'a ClientOp,
    /// When it was submitted.
    pub invoked_at: MonoTime,
    /// Whether a request for it was ever sent (false: nothing left this client yet).
    pub sent: bool,
}

/// How a client runs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The view-service nodes (one, or several in the etcd mode): a view is asked of
    /// every one at once, and the newest of the known epoch is taken.
    pub view_services: Vec<Addr>,
    /// After the first answer to a view request, how long to wait for the others.
    pub view_gather: Duration,
    /// How long to wait for an answer before re-reading the view and retrying.
    pub retry_after: Duration,
    /// Pause before retrying after an error reply or a broken link (the lab's PingInterval).
    pub retry_pause: Duration,
    /// The lane this client's links use (several clients in one node use distinct lanes).
    pub lane: u32,
}

impl ClientConfig {
    /// Defaults for the view service at `view_service`.
    pub fn new(view_service: Addr) -> ClientConfig {
        ClientConfig::with_view_services(vec![view_service])
    }

    /// Defaults for the view-service nodes at `view_services` (an empty list asks none).
    pub fn with_view_services(view_services: Vec<Addr>) -> ClientConfig {
        ClientConfig {
            view_services,
            view_gather: Duration::from_millis(50),
            retry_after: Duration::from_secs(1),
            retry_pause: Duration::from_millis(100),
            lane: 0,
        }
    }
}

/// The client's timers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ClientTimer {
    /// No answer in time, or a pause before retrying, is over.
    Retry,
    /// The wait for the other view-service nodes' answers is over.
    Gather,
}

#[derive(Debug)]
struct Current {
    id: u64,
    op: ClientOp,
    invoked_at: MonoTime,
    /// Sequence number, once the operation has a session (Put/PutHash).
    seq: Option<u64>,
    sent: bool,
}

/// The client role.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    view: Option<View>,
    session: Option<u64>,
    /// The nonce of an OpenSession in progress.
    opening: Option<u64>,
    next_seq: u64,
    next_id: u64,
    queue: VecDeque<(u64, ClientOp, MonoTime)>,
    current: Option<Current>,
    /// The correlation id of the request whose answer is awaited.
    awaiting: Option<u64>,
    /// View requests awaiting an answer: correlation id and view-service node.
    view_asks: Vec<(u64, Addr)>,
    /// The newest view answered so far to the current view requests.
    gathered: Option<View>,
    /// The epoch of the views this client takes (the first view it took sets it).
    epoch: Option<proto::Incarnation>,
    /// Whether the gather timer is armed.
    gather_armed: bool,
    /// When the retry (C1) is due: no answer by then, or the pause before retrying is over.
    retry_due: Option<MonoTime>,
    /// When the driver's `Retry` timer fires, if armed. It may fire before `retry_due`
    /// (then it is armed again for the rest) or when nothing is due (then it does nothing),
    /// so a request answered in time costs no timer operation at all.
    retry_armed: Option<MonoTime>,
    completed: Vec<Completed>,
    view_requests: u64,
}

impl Client {
    /// A client with `config`.
    pub fn new(config: ClientConfig) -> Client {
        Client {
            config,
            view: None,
            session: None,
            opening: None,
            next_seq: 1,
            next_id: 1,
            queue: VecDeque::new(),
            current: None,
            awaiting: None,
            view_asks: Vec::new(),
            gathered: None,
            epoch: None,
            gather_armed: false,
            retry_due: None,
            retry_armed: None,
            completed: Vec::new(),
            view_requests: 0,
        }
    }

    /// Queues `op`; returns its id.
    pub fn submit(&mut self, ctx: &mut Ctx<ClientTimer>, op: ClientOp) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.queue.push_back((id, op, ctx.now()));
        if self.current.is_none() {
            self.next(ctx);
        }
        id
    }

    /// Finished operations, oldest first.
    pub fn completed(&self) -> &[Completed] {
        &self.completed
    }

    /// Takes the finished operations.
    pub fn take_completed(&mut self) -> Vec<Completed> {
        std::mem::take(&mut self.completed)
    }

    /// Drains the finished operations, oldest first, keeping the buffer for the next ones
    /// (a load generator takes them after every call and must not allocate each time).
    pub fn drain_completed(&mut self) -> std::vec::Drain<'_, Completed> {
        self.completed.drain(..)
    }

    /// Operations not finished (outstanding and queued).
    pub fn pending(&self) -> usize {
        self.queue.len() + usize::from(self.current.is_some())
    }

    /// The outstanding operation, if any.
    pub fn outstanding(&self) -> Option<Outstanding<'_>> {
        self.current.as_ref().map(|c| Outstanding {
            id: c.id,
            op: &c.op,
            invoked_at: c.invoked_at,
            sent: c.sent,
        })
    }

    /// The correlation id of the request whose answer this client awaits.
    pub fn awaiting(&self) -> Option<u64> {
        self.awaiting
    }

    /// The view requests awaiting an answer: correlation id and view-service node.
    pub fn awaiting_views(&self) -> &[(u64, Addr)] {
        &self.view_asks
    }

    /// When the retry of the outstanding request is due (C1), if one is.
    pub fn retry_due(&self) -> Option<MonoTime> {
        self.retry_due
    }

    /// GetView requests sent so far (the client asks only when something failed).
    pub fn view_requests(&self) -> u64 {
        self.view_requests
    }

    fn dest(&self, addr: Addr) -> Dest {
        Dest {
            addr,
            lane: self.config.lane,
        }
    }

    fn next(&mut self, ctx: &mut Ctx<ClientTimer>) {
        while self.current.is_none() {
            let Some((id, op, invoked_at)) = self.queue.pop_front() else {
                return;
            };
            if let Some(why) = oversized(&op) {
                self.finish_with(
                    ctx,
                    Current {
                        id,
                        op,
                        invoked_at,
                        seq: None,
                        sent: false,
                    },
                    Outcome::Refused(why),
                );
                continue;
            }
            self.current = Some(Current {
                id,
                op,
                invoked_at,
                seq: None,
                sent: false,
            });
        }
        self.send_current(ctx);
    }

    /// Sends the outstanding operation (or what it needs first: a view, a session).
    fn send_current(&mut self, ctx: &mut Ctx<ClientTimer>) {
        let Some(current) = self.current.as_mut() else {
            return;
        };
        let Some(primary) = self.view.and_then(|view| view.primary) else {
            self.ask_view(ctx);
            return;
        };
        let to = Dest {
            addr: primary.addr,
            lane: self.config.lane,
        };
        let corr = match &current.op {
            ClientOp::Get { key } => ctx.send(to, GetRequest { key: key.clone() }),
            ClientOp::Put { key, .. }
            | ClientOp::PutHash { key, .. }
            | ClientOp::Delete { key } => {
                let Some(session) = self.session else {
                    let nonce = *self
                        .opening
                        .get_or_insert_with(|| ctx.rng().random::<u64>());
                    let corr = ctx.send(to, OpenSessionRequest { nonce });
                    self.awaiting = Some(corr);
                    self.arm_retry(ctx, self.config.retry_after);
                    return;
                };
                let seq = *current.seq.get_or_insert_with(|| {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    seq
                });
                let (kind, value) = match &current.op {
                    ClientOp::PutHash { value, .. } => (PutKind::PutHash, value.clone()),
                    ClientOp::Delete { .. } => (PutKind::Delete, Bytes::new()),
                    ClientOp::Put { value, .. } => (PutKind::Put, value.clone()),
                    // A Get took the arm above; nothing is sent as a Put for it.
                    ClientOp::Get { .. } => return,
                };
                let request = PutRequest {
                    session,
                    seq,
                    kind,
                    key: key.clone(),
                    value,
                };
                ctx.send(to, request)
            }
        };
        current.sent = true;
        self.awaiting = Some(corr);
        self.arm_retry(ctx, self.config.retry_after);
    }

    /// Asks every view-service node at once (C7).
    fn ask_view(&mut self, ctx: &mut Ctx<ClientTimer>) {
        self.view_requests += 1;
        self.awaiting = None;
        self.gathered = None;
        self.view_asks.clear();
        if std::mem::take(&mut self.gather_armed) {
            ctx.cancel_timer(ClientTimer::Gather);
        }
        for index in 0..self.config.view_services.len() {
            let addr = self.config.view_services[index];
            let corr = ctx.send(self.dest(addr), GetViewRequest {});
            self.view_asks.push((corr, addr));
        }
        self.arm_retry(ctx, self.config.retry_after);
    }

    /// One view-service node answered: the newest view of the known epoch is kept; once
    /// every node answered (or the gather time after the first answer passed) it is used.
    fn on_view_answer(&mut self, ctx: &mut Ctx<ClientTimer>, view: View) {
        // The known epoch, or before any, that of the first answer to this request.
        let epoch = self.epoch.or(self.gathered.map(|best| best.service));
        if epoch.is_some_and(|epoch| epoch != view.service) {
            log::debug!("client: ignoring a view of epoch {}", view.service);
        } else if self.gathered.is_none_or(|best| view.viewnum > best.viewnum) {
            self.gathered = Some(view);
        }
        if self.view_asks.is_empty() {
            self.view_asks_done(ctx);
        } else if !self.gather_armed {
            self.gather_armed = true;
            ctx.set_timer(ClientTimer::Gather, self.config.view_gather);
        }
    }

    /// Every asked node answered or is out of reach.
    fn view_asks_done(&mut self, ctx: &mut Ctx<ClientTimer>) {
        self.view_asks.clear();
        if std::mem::take(&mut self.gather_armed) {
            ctx.cancel_timer(ClientTimer::Gather);
        }
        let Some(view) = self.gathered.take() else {
            self.retry_later(ctx);
            return;
        };
        self.epoch = Some(view.service);
        if self
            .view
            .is_none_or(|cached| view.viewnum >= cached.viewnum)
        {
            self.view = Some(view);
        }
        if view.primary.is_none() {
            self.retry_later(ctx);
        } else {
            self.send_current(ctx);
        }
    }

    /// Something failed: forget the cached view, pause, then ask again and retry.
    fn retry_later(&mut self, ctx: &mut Ctx<ClientTimer>) {
        self.view = None;
        self.awaiting = None;
        self.view_asks.clear();
        self.gathered = None;
        self.arm_retry(ctx, self.config.retry_pause);
    }

    fn finish(&mut self, ctx: &mut Ctx<ClientTimer>, outcome: Outcome) {
        let Some(current) = self.current.take() else {
            return;
        };
        self.finish_with(ctx, current, outcome);
        self.awaiting = None;
        self.retry_due = None;
        self.next(ctx);
    }

    /// The retry is due `after` from now, replacing any earlier due time. The driver's
    /// timer is moved only if it would fire later than that.
    fn arm_retry(&mut self, ctx: &mut Ctx<ClientTimer>, after: Duration) {
        let due = ctx.now().plus(after);
        self.retry_due = Some(due);
        if self.retry_armed.is_none_or(|armed| armed > due) {
            ctx.set_timer(ClientTimer::Retry, after);
            self.retry_armed = Some(due);
        }
    }

    /// The driver's `Retry` timer fired: whether the retry is due now. If it is due later,
    /// the timer is armed again for then.
    fn retry_is_due(&mut self, ctx: &mut Ctx<ClientTimer>) -> bool {
        self.retry_armed = None;
        let Some(due) = self.retry_due else {
            return false;
        };
        let now = ctx.now();
        if due > now {
            ctx.set_timer(ClientTimer::Retry, due.since(now));
            self.retry_armed = Some(due);
            return false;
        }
        self.retry_due = None;
        true
    }

    fn finish_with(&mut self, ctx: &mut Ctx<ClientTimer>, current: Current, outcome: Outcome) {
        self.completed.push(Completed {
            id: current.id,
            op: current.op,
            outcome,
            invoked_at: current.invoked_at,
            completed_at: ctx.now(),
            sent: current.sent,
            lane: u64::from(self.config.lane),
        });
    }

    fn on_reply(&mut self, ctx: &mut Ctx<ClientTimer>, message: Message) {
        match message {
            Message::GetViewReply(reply) => self.on_view_answer(ctx, reply.view),
            Message::OpenSessionReply(reply) => self.on_open_session_reply(ctx, reply),
            Message::GetReply(reply) => self.on_get_reply(ctx, reply),
            Message::PutReply(reply) => self.on_put_reply(ctx, reply),
            other => log::debug!("client: ignoring {}", other.message_type()),
        }
    }

    fn on_open_session_reply(&mut self, ctx: &mut Ctx<ClientTimer>, reply: OpenSessionReply) {
        if self.opening != Some(reply.nonce) {
            return;
        }
        match reply.status {
            Status::Ok if reply.session == 0 => {
                // Session ids are indexes, from 1: a malformed reply, refused; the retry
                // timer sends the OpenSession again.
                log::warn!("client: refused an OpenSession reply naming session 0");
            }
            Status::ErrFull => {
                // Sessions are never evicted to make room: the operation fails, definitely.
                self.opening = None;
                let why = "the service holds its maximum number of sessions (ErrFull)";
                self.finish(ctx, Outcome::Refused(why.into()));
            }
            Status::Ok => {
                self.opening = None;
                self.session = Some(reply.session);
                self.next_seq = 1;
                self.send_current(ctx);
            }
            _ => self.retry_later(ctx),
        }
    }

    fn on_get_reply(&mut self, ctx: &mut Ctx<ClientTimer>, reply: GetReply) {
        match reply.status {
            Status::Ok => self.finish(ctx, Outcome::Done(reply.value)),
            Status::ErrNoKey => self.finish(ctx, Outcome::NoKey),
            Status::ErrTooLarge => self.finish(ctx, Outcome::Refused("key too large".into())),
            Status::ErrFull => {
                let why = "the service has used up its index space (ErrFull)";
                self.finish(ctx, Outcome::Refused(why.into()));
            }
            _ => self.retry_later(ctx),
        }
    }

    fn on_put_reply(&mut self, ctx: &mut Ctx<ClientTimer>, reply: PutReply) {
        match reply.status {
            Status::Ok => self.finish(ctx, Outcome::Done(reply.previous)),
            Status::ErrTooLarge => {
                self.finish(ctx, Outcome::Refused("key or value too large".into()))
            }
            Status::ErrFull => {
                // Like Redis's OOM error: nothing was applied, and retrying will not help
                // until something is deleted or overwritten smaller.
                let why = "the store is full: the write would pass state_bytes_max (ErrFull)";
                self.finish(ctx, Outcome::Refused(why.into()));
            }
            Status::ErrSessionExpired | Status::ErrStaleRequest => {
                // The request may have been applied before the session expired: unknown.
                self.session = None;
                self.finish(ctx, Outcome::Unknown(reply.status.name().to_string()));
            }
            _ => self.retry_later(ctx),
        }
    }
}

/// Why `op` exceeds a size limit, if it does.
fn oversized(op: &ClientOp) -> Option<String> {
    let (key, value) = match op {
        ClientOp::Get { key } => (key, None),
        ClientOp::Put { key, value } | ClientOp::PutHash { key, value } => (key, Some(value)),
        ClientOp::Delete { key } => (key, None),
    };
    if key.len() > KEY_LEN_MAX {
        return Some(format!(
            "key of {} bytes exceeds the limit of {KEY_LEN_MAX}",
            key.len()
        ));
    }
    match value {
        Some(value) if value.len() > VALUE_LEN_MAX => Some(format!(
            "value of {} bytes exceeds the limit of {VALUE_LEN_MAX}",
            value.len()
        )),
        _ => None,
    }
}

impl Role for Client {
    type Timer = ClientTimer;

    fn on_start(&mut self, _ctx: &mut Ctx<ClientTimer>) {}

    fn on_message(&mut self, ctx: &mut Ctx<ClientTimer>, origin: &Origin, message: Message) {
        if let Some(at) = self
            .view_asks
            .iter()
            .position(|(corr, _)| *corr == origin.corr)
        {
            self.view_asks.swap_remove(at);
            if let Message::GetViewReply(reply) = message {
                self.on_view_answer(ctx, reply.view);
            }
            return;
        }
        if self.awaiting != Some(origin.corr) {
            return; // An answer to a request this client already gave up on.
        }
        self.on_reply(ctx, message);
    }

    fn on_timer(&mut self, ctx: &mut Ctx<ClientTimer>, timer: ClientTimer) {
        match timer {
            ClientTimer::Retry => {
                if self.retry_is_due(ctx) && self.current.is_some() {
                    self.view = None;
                    self.view_asks.clear();
                    self.send_current(ctx);
                }
            }
            ClientTimer::Gather => {
                self.gather_armed = false;
                if !self.view_asks.is_empty() {
                    self.view_asks_done(ctx);
                }
            }
        }
    }

    fn on_link(&mut self, ctx: &mut Ctx<ClientTimer>, to: Dest, link: Link) {
        if link != Link::Down || to.lane != self.config.lane {
            return;
        }
        let asked = self.view_asks.len();
        self.view_asks.retain(|(_, addr)| *addr != to.addr);
        if self.view_asks.len() != asked {
            // A view-service node that cannot be reached counts as answered with nothing.
            if self.view_asks.is_empty() {
                self.view_asks_done(ctx);
            }
        } else if self.awaiting.is_some() {
            self.retry_later(ctx);
        }
    }

    fn check_invariants(&self) {
        assert!(
            self.current.is_some() || self.queue.is_empty(),
            "queued work with none outstanding"
        );
    }
}
