//! The primary's side: client requests (R8, R10), the forward stream (R6) and the commit
//! point (R7). Everything here runs only while this server may serve as primary of its
//! view, that is while its standing holds a [`Primary`].
//!
//! **Bounds.** What a primary holds for its clients is bounded (docs/operations.md): the
//! unacknowledged log by `unacked_log_bytes_max` (past it new requests are held, in arrival
//! order, until the backup catches up: backpressure, never an error, and never a dropped
//! log entry, which could lose an acknowledged write); the requests and replies it holds by
//! `pending_replies_max` and `pending_reply_bytes_max` (past them a request is dropped
//! unanswered and the client retries it); the state by `state_bytes_max` and
//! `sessions_max` (`ErrFull`).

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use proto::kv::{
    Entry, FORWARD_ENTRIES_MAX, ForwardReply, ForwardRequest, GetReply, GetRequest, INDEX_MAX,
    KEY_LEN_MAX, Op, OpenSessionReply, Outcome, PutKind, PutReply, PutRequest, Status,
    VALUE_LEN_MAX,
};
use proto::viewservice::View;
use proto::{Message, MessageType};
use runtime::{ConnId, Ctx, MonoTime, Origin, ReplyTo};

use super::sessions::SessionCheck;
use super::transfer::Transfer;
use super::{OpKind, Replica, ReplicaConfig, ReplicaTimer, Standing};
use crate::store::State;

/// A reply that waits for its operation's commit.
#[derive(Debug, Clone)]
pub(super) struct Waiting {
    pub(super) to: ReplyTo,
    pub(super) reply: Message,
    /// The operation's kind, for its latency (`None`: OpenSession, or not measured).
    pub(super) kind: Option<OpKind>,
    /// When the primary took the request.
    pub(super) since: MonoTime,
}

/// A client request a primary takes.
#[derive(Debug, Clone)]
pub(super) enum ClientRequest {
    /// OpenSession, with its nonce.
    OpenSession(u64),
    /// A Get.
    Get(GetRequest),
    /// A Put or PutHash.
    Put(PutRequest),
}

impl ClientRequest {
    /// Bytes it holds while it waits.
    fn len(&self) -> usize {
        match self {
            ClientRequest::OpenSession(_) => 32,
            ClientRequest::Get(request) => 16 + request.key.len(),
            ClientRequest::Put(request) => 32 + request.key.len() + request.value.len(),
        }
    }

    /// Its answer saying "not applied, ask again" (`ErrWrongServer`), for stepping down.
    fn wrong_server(&self) -> Message {
        match self {
            ClientRequest::OpenSession(nonce) => OpenSessionReply {
                status: Status::ErrWrongServer,
                nonce: *nonce,
                session: 0,
            }
            .into(),
            ClientRequest::Get(_) => get_reply(Status::ErrWrongServer).into(),
            ClientRequest::Put(_) => put_reply(Status::ErrWrongServer).into(),
        }
    }
}

/// A client request held while the unacknowledged log is full.
#[derive(Debug, Clone)]
pub(super) struct Held {
    origin: Origin,
    request: ClientRequest,
}

/// Bytes a reply holds while it waits.
fn reply_len(reply: &Message) -> usize {
    match reply {
        Message::GetReply(reply) => 16 + reply.value.len(),
        Message::PutReply(reply) => 16 + reply.previous.len(),
        _ => 32,
    }
}

/// What only a serving primary keeps.
#[derive(Debug)]
pub(super) struct Primary {
    /// Entries assigned and not yet acknowledged by the backup, oldest first (the part of
    /// this primary's order the backup may still need).
    pub(super) unacked: VecDeque<Entry>,
    /// Index of `unacked[0]`.
    pub(super) unacked_first: u64,
    /// Whether the view's backup installed this primary's snapshot.
    pub(super) backup_synced: bool,
    /// Highest index the backup acknowledged.
    pub(super) backup_acked: u64,
    /// Highest index sent to the backup.
    pub(super) sent: u64,
    /// The last index of each forward in flight, oldest first.
    pub(super) in_flight: VecDeque<u64>,
    /// Replies waiting for their index to commit, in index order (in arrival order within
    /// an index). Indexes are assigned in order, so a reply almost always goes at the back;
    /// only a retry waiting on its original index goes further in.
    pub(super) waiting: VecDeque<(u64, Waiting)>,
    /// Answers read at their place in the order (Gets, session errors), waiting for the end
    /// of the turn to be given an index to commit.
    pub(super) reads_waiting: Vec<Waiting>,
    /// Whether an index was assigned in this turn.
    pub(super) assigned_in_turn: bool,
    /// The state transfer to the backup, until it is installed.
    pub(super) transfer: Option<Transfer>,
    /// When each session was last used, on this primary's clock.
    pub(super) last_active: BTreeMap<u64, MonoTime>,
    /// Bytes of `unacked` (`Entry::len_hint`).
    unacked_len: usize,
    /// Client requests held while `unacked_len` is past its bound, oldest first.
    held: VecDeque<Held>,
    /// Requests and replies held (waiting, reads waiting, held), and their bytes.
    pending_count: usize,
    pending_len: usize,
    /// Sessions opened on each client connection still open.
    sessions_by_conn: BTreeMap<ConnId, usize>,
}

impl Primary {
    /// A new primary over `state`: every session's idle time starts now.
    pub(super) fn new(state: &State, now: MonoTime) -> Primary {
        Primary {
            unacked: VecDeque::new(),
            unacked_first: state.applied + 1,
            backup_synced: false,
            backup_acked: 0,
            sent: state.applied,
            in_flight: VecDeque::new(),
            waiting: VecDeque::new(),
            reads_waiting: Vec::new(),
            assigned_in_turn: false,
            transfer: None,
            last_active: state
                .sessions
                .keys()
                .map(|session| (*session, now))
                .collect(),
            unacked_len: 0,
            held: VecDeque::new(),
            pending_count: 0,
            pending_len: 0,
            sessions_by_conn: BTreeMap::new(),
        }
    }

    /// Replies waiting, for a commit or for the end of the turn, and requests held.
    pub(super) fn waiting_count(&self) -> usize {
        self.waiting.len() + self.reads_waiting.len() + self.held.len()
    }

    /// Every pending reply, for stepping down: held requests get the answer a reply of
    /// their kind would.
    pub(super) fn into_pending(self) -> impl Iterator<Item = Waiting> {
        let held = self.held.into_iter().map(|held| Waiting {
            to: held.origin.reply_to(),
            reply: held.request.wrong_server(),
            kind: None,
            since: MonoTime(0),
        });
        self.waiting
            .into_iter()
            .map(|(_, waiting)| waiting)
            .chain(self.reads_waiting)
            .chain(held)
    }

    /// Forgets what was sent to the backup: `unacked` now starts after `applied`.
    pub(super) fn clear_unacked(&mut self, applied: u64) {
        self.unacked.clear();
        self.unacked_len = 0;
        self.unacked_first = applied + 1;
        self.sent = applied;
    }

    fn push_unacked(&mut self, entry: Entry) {
        self.unacked_len += entry.len_hint();
        self.unacked.push_back(entry);
    }

    fn pop_unacked(&mut self) {
        if let Some(entry) = self.unacked.pop_front() {
            self.unacked_len -= entry.len_hint();
            self.unacked_first += 1;
        }
    }

    /// Whether one more request or reply of `len` bytes fits the pending bounds.
    fn room_for(&self, len: usize, config: &ReplicaConfig) -> bool {
        self.pending_count < config.pending_replies_max
            && self.pending_len + len <= config.pending_reply_bytes_max
    }

    fn count_in(&mut self, len: usize) {
        self.pending_count += 1;
        self.pending_len += len;
    }

    fn count_out(&mut self, len: usize) {
        self.pending_count -= 1;
        self.pending_len -= len;
    }

    fn push_waiting(&mut self, index: u64, waiting: Waiting) {
        self.count_in(reply_len(&waiting.reply));
        if self.waiting.back().is_none_or(|(last, _)| *last <= index) {
            self.waiting.push_back((index, waiting));
        } else {
            let at = self.waiting.partition_point(|(other, _)| *other <= index);
            self.waiting.insert(at, (index, waiting));
        }
    }

    /// The oldest reply waiting on an index up to `index`, taken out.
    fn pop_waiting_through(&mut self, index: u64) -> Option<Waiting> {
        if self.waiting.front().is_none_or(|(other, _)| *other > index) {
            return None;
        }
        let (_, waiting) = self.waiting.pop_front()?;
        self.count_out(reply_len(&waiting.reply));
        Some(waiting)
    }

    fn push_read(&mut self, waiting: Waiting) {
        self.count_in(reply_len(&waiting.reply));
        self.reads_waiting.push(waiting);
    }

    fn take_reads(&mut self) -> Vec<Waiting> {
        let reads = std::mem::take(&mut self.reads_waiting);
        for waiting in &reads {
            self.count_out(reply_len(&waiting.reply));
        }
        reads
    }

    fn push_held(&mut self, held: Held) {
        self.count_in(held.request.len());
        self.held.push_back(held);
    }

    fn pop_held(&mut self) -> Option<Held> {
        let held = self.held.pop_front()?;
        self.count_out(held.request.len());
        Some(held)
    }

    pub(super) fn check(&self, state: &State, config: &ReplicaConfig) {
        assert!(self.backup_acked <= state.applied, "acked past applied");
        assert!(
            self.in_flight.len() <= config.forward_in_flight_max,
            "{} forwards in flight",
            self.in_flight.len()
        );
        let unacked_last = self.unacked_first + self.unacked.len() as u64;
        assert_eq!(
            unacked_last,
            state.applied + 1,
            "unacknowledged entries do not end at applied"
        );
        assert!(
            self.sent <= state.applied,
            "sent {} past applied",
            self.sent
        );
        assert!(
            self.unacked_first <= self.sent + 1,
            "unacknowledged entries start after the first unsent one"
        );
        assert!(
            self.pending_count <= config.pending_replies_max,
            "{} requests and replies pending",
            self.pending_count
        );
        assert_eq!(self.pending_count, self.waiting_count(), "pending count");
        let unacked_len: usize = self.unacked.iter().map(Entry::len_hint).sum();
        debug_assert_eq!(self.unacked_len, unacked_len, "unacknowledged bytes");
        assert!(
            self.waiting
                .iter()
                .zip(self.waiting.iter().skip(1))
                .all(|((a, _), (b, _))| a <= b),
            "waiting replies out of index order"
        );
        let pending_len: usize = (self.waiting.iter().map(|(_, waiting)| waiting))
            .chain(&self.reads_waiting)
            .map(|waiting| reply_len(&waiting.reply))
            .chain(self.held.iter().map(|held| held.request.len()))
            .sum();
        debug_assert_eq!(self.pending_len, pending_len, "pending bytes");
    }
}

fn put_reply(status: Status) -> PutReply {
    PutReply {
        status,
        previous: Bytes::new(),
    }
}

fn get_reply(status: Status) -> GetReply {
    GetReply {
        status,
        value: Bytes::new(),
    }
}

impl Replica {
    fn primary_mut(&mut self) -> Option<&mut Primary> {
        match &mut self.standing {
            Standing::Primary(primary) => Some(primary.as_mut()),
            _ => None,
        }
    }

    fn primary_ref(&self) -> Option<&Primary> {
        match &self.standing {
            Standing::Primary(primary) => Some(primary.as_ref()),
            _ => None,
        }
    }

    /// Serving as primary of a new view: start a transfer to its backup, or commit all.
    pub(super) fn begin_view_as_primary(&mut self, ctx: &mut Ctx<ReplicaTimer>) {
        let applied = self.state.applied;
        let has_backup = self.view.backup.is_some();
        let Some(primary) = self.primary_mut() else {
            return;
        };
        primary.in_flight.clear();
        primary.backup_synced = false;
        primary.backup_acked = 0;
        primary.clear_unacked(applied);
        primary.transfer = None;
        if has_backup {
            self.start_transfer(ctx);
        } else {
            // R7: with no backup, everything assigned commits at once (including operations
            // inherited from the previous primary).
            self.commit(ctx, applied);
        }
    }

    /// A client request. While the unacknowledged log is past `unacked_log_bytes_max` (or
    /// requests are already held) it is held, in arrival order, until the backup catches
    /// up: backpressure, so the log never grows without bound and no entry of it is ever
    /// dropped. A request that finds no room is dropped unanswered (the client retries).
    pub(super) fn on_client_request(
        &mut self,
        ctx: &mut Ctx<ReplicaTimer>,
        origin: &Origin,
        request: ClientRequest,
    ) {
        let log_max = self.config.unacked_log_bytes_max;
        let hold = self
            .primary_ref()
            .map(|primary| primary.unacked_len >= log_max || !primary.held.is_empty());
        match hold {
            Some(true) => {
                let room = self
                    .primary_ref()
                    .is_some_and(|primary| primary.room_for(request.len(), &self.config));
                if !room {
                    self.shed(origin);
                    return;
                }
                self.stats.requests_held += 1;
                if let Some(primary) = self.primary_mut() {
                    let origin = origin.clone();
                    primary.push_held(Held { origin, request });
                }
            }
            Some(false) | None => self.serve(ctx, origin, request),
        }
    }

    fn serve(&mut self, ctx: &mut Ctx<ReplicaTimer>, origin: &Origin, request: ClientRequest) {
        match request {
            ClientRequest::OpenSession(nonce) => self.on_open_session(ctx, origin, nonce),
            ClientRequest::Get(request) => self.on_get(ctx, origin, request),
            ClientRequest::Put(request) => self.on_put(ctx, origin, request),
        }
    }

    /// Held requests are taken, oldest first, while the log is within its bound.
    fn release_held(&mut self, ctx: &mut Ctx<ReplicaTimer>) {
        let log_max = self.config.unacked_log_bytes_max;
        loop {
            let Some(primary) = self.primary_mut() else {
                return;
            };
            if primary.unacked_len >= log_max {
                return;
            }
            let Some(held) = primary.pop_held() else {
                return;
            };
            self.serve(ctx, &held.origin, held.request);
        }
    }

    /// Whether a reply of `len` bytes fits the pending bounds.
    fn room_for(&self, len: usize) -> bool {
        self.primary_ref()
            .is_some_and(|primary| primary.room_for(len, &self.config))
    }

    /// Drops a request that found no room: unanswered, so its client retries it later.
    fn shed(&mut self, origin: &Origin) {
        self.stats.requests_shed += 1;
        log::debug!(
            "replica: no room for a request from {} (pending bounds)",
            origin.node
        );
    }

    /// A connection closed: its sessions no longer count against its cap.
    pub(super) fn on_client_closed(&mut self, conn: ConnId) {
        if let Some(primary) = self.primary_mut() {
            primary.sessions_by_conn.remove(&conn);
        }
    }

    pub(super) fn on_open_session(
        &mut self,
        ctx: &mut Ctx<ReplicaTimer>,
        origin: &Origin,
        nonce: u64,
    ) {
        if !self.serving() {
            let reply = OpenSessionReply {
                status: Status::ErrWrongServer,
                nonce,
                session: 0,
            };
            ctx.reply(origin, reply);
            return;
        }
        if !self.room_for(32) {
            self.shed(origin);
            return;
        }
        let entry = Entry {
            session: 0,
            seq: 0,
            op: Op::OpenSession { nonce },
        };
        let conn_sessions = self
            .primary_ref()
            .and_then(|primary| primary.sessions_by_conn.get(&origin.conn).copied())
            .unwrap_or(0);
        let full = conn_sessions >= self.config.sessions_per_connection_max
            || !self.state.admits(&entry, self.config.state_limits());
        if full {
            // Never evict: that would let one client expire everyone's sessions. The answer
            // is read from the state, so it waits for a commit like R10's errors.
            self.stats.full += 1;
            let reply = OpenSessionReply {
                status: Status::ErrFull,
                nonce,
                session: 0,
            };
            self.answer_after_turn(ctx, origin, reply.into(), None);
            return;
        }
        // R10: OpenSession is an operation like any other; the session id is its index.
        let index = self.assign(entry);
        if let Some(primary) = self.primary_mut() {
            primary.last_active.insert(index, ctx.now());
            *primary.sessions_by_conn.entry(origin.conn).or_default() += 1;
        }
        let reply = OpenSessionReply {
            status: Status::Ok,
            nonce,
            session: index,
        };
        self.wait_for(ctx, index, origin.reply_to(), reply.into(), None);
    }

    pub(super) fn on_get(
        &mut self,
        ctx: &mut Ctx<ReplicaTimer>,
        origin: &Origin,
        request: GetRequest,
    ) {
        let status = if !self.serving() {
            Some(Status::ErrWrongServer)
        } else if request.key.len() > KEY_LEN_MAX {
            Some(Status::ErrTooLarge)
        } else if self.state.applied >= INDEX_MAX {
            // No index is left for the sync point this Get would wait on.
            Some(Status::ErrFull)
        } else {
            None
        };
        if let Some(status) = status {
            self.stats.ops.count(OpKind::Get, status);
            ctx.reply(origin, get_reply(status));
            return;
        }
        // R8: read at its place in the order; answered once a later index commits.
        let reply = match self.state.get(&request.key) {
            Some(value) => GetReply {
                status: Status::Ok,
                value: value.to_bytes(),
            },
            None => get_reply(Status::ErrNoKey),
        };
        // Counted before it is kept: a reply can hold a 1 MiB value.
        if !self.room_for(16 + reply.value.len()) {
            self.shed(origin);
            return;
        }
        self.stats.ops.count(OpKind::Get, reply.status);
        self.answer_after_turn(ctx, origin, reply.into(), Some(OpKind::Get));
    }

    /// Queues an answer read from the state as of now, to be sent once an index assigned
    /// after it commits (R8; R10 for session errors).
    fn answer_after_turn(
        &mut self,
        ctx: &Ctx<ReplicaTimer>,
        origin: &Origin,
        reply: Message,
        kind: Option<OpKind>,
    ) {
        if let Some(primary) = self.primary_mut() {
            primary.push_read(Waiting {
                to: origin.reply_to(),
                reply,
                kind,
                since: ctx.now(),
            });
        }
    }

    pub(super) fn on_put(
        &mut self,
        ctx: &mut Ctx<ReplicaTimer>,
        origin: &Origin,
        request: PutRequest,
    ) {
        let kind = OpKind::of(request.kind);
        if !self.serving() {
            self.stats.ops.count(kind, Status::ErrWrongServer);
            ctx.reply(origin, put_reply(Status::ErrWrongServer));
            return;
        }
        if request.key.len() > KEY_LEN_MAX || request.value.len() > VALUE_LEN_MAX {
            self.stats.ops.count(kind, Status::ErrTooLarge);
            ctx.reply(origin, put_reply(Status::ErrTooLarge));
            return;
        }
        let (check, kept) = self.check_session(&request);
        // The largest reply this request can have: PutHash's previous value, or a retry's
        // kept reply. Counted before anything is assigned. Only PutHash replies with what
        // is stored (a Delete with one byte): a Put's key is not searched for here.
        let stored = match request.kind {
            PutKind::PutHash => self.state.get(&request.key).map_or(0, |v| v.len()),
            PutKind::Put | PutKind::Delete => 1,
        };
        if !self.room_for(16 + stored.max(kept)) {
            self.shed(origin);
            return;
        }
        if !matches!(check, SessionCheck::Unknown) {
            self.touch_session(ctx, request.session);
        }
        match check {
            // R10: session errors are answers read from everything assigned so far (an
            // uncommitted expiry included), so they wait for a commit like a Get's.
            SessionCheck::Unknown => {
                self.stats.ops.count(kind, Status::ErrSessionExpired);
                let reply = put_reply(Status::ErrSessionExpired).into();
                self.answer_after_turn(ctx, origin, reply, Some(kind));
            }
            SessionCheck::Stale => {
                self.stats.ops.count(kind, Status::ErrStaleRequest);
                let reply = put_reply(Status::ErrStaleRequest).into();
                self.answer_after_turn(ctx, origin, reply, Some(kind));
            }
            SessionCheck::Retry { index, reply } => {
                // A retry of the last request: the original reply, once that request
                // committed.
                self.stats.dedup_hits += 1;
                self.stats.ops.count(kind, Status::Ok);
                let reply = PutReply {
                    status: Status::Ok,
                    previous: reply,
                };
                self.wait_for(ctx, index, origin.reply_to(), reply.into(), Some(kind));
            }
            SessionCheck::Fresh => self.apply_put(ctx, origin, request),
        }
    }

    fn apply_put(&mut self, ctx: &mut Ctx<ReplicaTimer>, origin: &Origin, request: PutRequest) {
        let PutRequest {
            session,
            seq,
            kind,
            key,
            value,
        } = request;
        let counted = OpKind::of(kind);
        let op = match kind {
            PutKind::Put => Op::Put { key, value },
            PutKind::PutHash => Op::PutHash { key, value },
            PutKind::Delete => Op::Delete { key },
        };
        let kind = counted;
        let entry = Entry { session, seq, op };
        if !self.state.admits(&entry, self.config.state_limits()) {
            // The state bound, decided here and applied by the backup the same way (it holds
            // the same state at this index). Read from the state: waits for a commit.
            self.stats.full += 1;
            self.stats.ops.count(kind, Status::ErrFull);
            let reply = put_reply(Status::ErrFull).into();
            self.answer_after_turn(ctx, origin, reply, Some(kind));
            return;
        }
        self.stats.ops.count(kind, Status::Ok);
        // The reply is what the session's record now keeps: the one `apply` returned.
        let (index, previous) = self.assign_with_reply(entry);
        let reply = PutReply {
            status: Status::Ok,
            previous,
        };
        self.wait_for(ctx, index, origin.reply_to(), reply.into(), Some(kind));
    }

    /// R6: gives `entry` the next index, applies it, and queues it for the backup.
    pub(super) fn assign(&mut self, entry: Entry) -> u64 {
        self.assign_with_reply(entry).0
    }

    /// [`Replica::assign`], also returning the operation's reply.
    pub(super) fn assign_with_reply(&mut self, entry: Entry) -> (u64, Bytes) {
        let Standing::Primary(primary) = &mut self.standing else {
            panic!("only a serving primary assigns indexes");
        };
        let reply = self.state.apply(&entry);
        if self.view.backup.is_some() {
            primary.push_unacked(entry);
        } else {
            // No backup: nothing to forward, and the entry commits at turn end.
            primary.clear_unacked(self.state.applied);
        }
        primary.assigned_in_turn = true;
        (self.state.applied, reply)
    }

    fn wait_for(
        &mut self,
        ctx: &mut Ctx<ReplicaTimer>,
        index: u64,
        to: ReplyTo,
        reply: Message,
        kind: Option<OpKind>,
    ) {
        let since = ctx.now();
        let waiting = Waiting {
            to,
            reply,
            kind,
            since,
        };
        self.answer_once_committed(ctx, index, waiting);
    }

    /// Answers `waiting` now if `index` is committed, else keeps it until it is.
    fn answer_once_committed(&mut self, ctx: &mut Ctx<ReplicaTimer>, index: u64, waiting: Waiting) {
        if index <= self.committed {
            self.answer(ctx, waiting);
        } else if let Some(primary) = self.primary_mut() {
            primary.push_waiting(index, waiting);
        }
    }

    /// Sends a reply whose operation committed, and records its latency.
    fn answer(&mut self, ctx: &mut Ctx<ReplicaTimer>, waiting: Waiting) {
        self.stats.replies += 1;
        if let Some(kind) = waiting.kind {
            let elapsed = ctx.now().0.saturating_sub(waiting.since.0);
            self.meters.latency[kind as usize].record(elapsed);
        }
        ctx.reply(waiting.to, waiting.reply);
    }

    /// R7: the commit point reached for every index up to `index`: answer who waited.
    pub(super) fn commit(&mut self, ctx: &mut Ctx<ReplicaTimer>, index: u64) {
        let index = index.min(self.state.applied);
        if index <= self.committed {
            return;
        }
        self.committed = index;
        while let Standing::Primary(primary) = &mut self.standing {
            let Some(pending) = primary.pop_waiting_through(index) else {
                return;
            };
            self.answer(ctx, pending);
        }
    }

    fn send_forwards(&mut self, ctx: &mut Ctx<ReplicaTimer>) {
        let Some(dest) = self.backup_dest() else {
            return;
        };
        let (view, applied) = (self.view, self.state.applied);
        let (in_flight_max, batch_len_max) = (
            self.config.forward_in_flight_max,
            self.config.forward_batch_len_max,
        );
        // Destructured, not `primary_mut`: the batch sizes go to `self.meters` meanwhile.
        let Standing::Primary(primary) = &mut self.standing else {
            return;
        };
        while primary.sent < applied && primary.in_flight.len() < in_flight_max {
            let first_index = primary.sent + 1;
            let skip = usize::try_from(first_index - primary.unacked_first)
                .expect("unacknowledged entries fit in memory");
            let mut entries = Vec::new();
            let mut len = 0;
            for entry in primary.unacked.iter().skip(skip) {
                let full = len + entry.len_hint() > batch_len_max;
                // Never more entries than a backup takes in one forward.
                if !entries.is_empty() && (full || entries.len() >= FORWARD_ENTRIES_MAX) {
                    break;
                }
                len += entry.len_hint();
                entries.push(entry.clone());
            }
            assert!(!entries.is_empty(), "sent < applied implies unsent entries");
            primary.sent += entries.len() as u64;
            primary.in_flight.push_back(primary.sent);
            self.meters.forward_batches.record(entries.len() as u64);
            let forward = ForwardRequest {
                view,
                first_index,
                entries,
            };
            ctx.send(dest, forward);
        }
    }

    /// A forward's ack (R6). Refused unless it names the incarnation its link carries
    /// (`validate_backup_reply`) and, if it counts, acknowledges no index past the last one
    /// assigned: an ack of what was never sent would commit what the backup does not have.
    pub(super) fn on_forward_reply(
        &mut self,
        ctx: &mut Ctx<ReplicaTimer>,
        origin: &Origin,
        reply: ForwardReply,
    ) {
        let what = MessageType::ForwardReply;
        let checked =
            self.validate_backup_reply(origin, &reply.view, reply.incarnation, reply.applied);
        if let Err(why) = checked {
            self.refuse(ctx.now(), origin, what, &why);
            return;
        }
        let acked = self.ack_from_backup(ctx, origin, reply.view, reply.outcome);
        if !acked || !self.backup_synced() {
            return;
        }
        if reply.applied > self.state.applied {
            let why = format!(
                "acknowledges index {} past the last assigned, {}",
                reply.applied, self.state.applied
            );
            self.refuse(ctx.now(), origin, what, &why);
            return;
        }
        self.acknowledged(ctx, reply.applied);
    }

    /// What every backup reply shares (R4, R6): a newer carried view is adopted (a receiver
    /// with a newer view rejected us, or acked in it); a rejection does nothing else; an ack
    /// counts only from the current view's backup, at its address and as the incarnation
    /// the view names, while serving.
    pub(super) fn ack_from_backup(
        &mut self,
        ctx: &mut Ctx<ReplicaTimer>,
        origin: &Origin,
        view: View,
        outcome: Outcome,
    ) -> bool {
        if view.viewnum > self.view.viewnum {
            self.adopt(ctx, view, true);
            return false;
        }
        let from_backup = self.view.backup.is_some_and(|backup| {
            origin.addr == Some(backup.addr) && origin.incarnation == backup.incarnation
        });
        outcome == Outcome::Acked && self.serving() && view == self.view && from_backup
    }

    /// The synced backup applied everything up to `applied`.
    pub(super) fn acknowledged(&mut self, ctx: &mut Ctx<ReplicaTimer>, applied: u64) {
        let applied = applied.min(self.state.applied);
        let Some(primary) = self.primary_mut() else {
            return;
        };
        primary.backup_acked = primary.backup_acked.max(applied);
        let acked = primary.backup_acked;
        // An ack on a new connection may cover more than a break made us plan to resend.
        primary.sent = primary.sent.max(acked);
        while primary.in_flight.front().is_some_and(|last| *last <= acked) {
            primary.in_flight.pop_front();
        }
        while primary.unacked_first <= acked && !primary.unacked.is_empty() {
            primary.pop_unacked();
        }
        self.commit(ctx, acked);
    }

    /// R6, R12: the link to the backup broke and what was in flight is lost: on the next
    /// connection, resend from the first unacknowledged index; a transfer starts over.
    pub(super) fn on_backup_link_down(&mut self, ctx: &mut Ctx<ReplicaTimer>) {
        let Some(primary) = self.primary_mut() else {
            return;
        };
        primary.in_flight.clear();
        primary.sent = primary.backup_acked.max(primary.unacked_first - 1);
        if !primary.backup_synced {
            self.stats.transfers_restarted += 1;
            self.start_transfer(ctx);
        }
    }

    /// The batching point: held requests are taken while the log has room; Gets and
    /// session errors of the turn get an index to wait on (a no-op if nothing else was
    /// assigned: R8), then one round of forwards or chunks.
    pub(super) fn end_turn_as_primary(&mut self, ctx: &mut Ctx<ReplicaTimer>) {
        self.release_held(ctx);
        let Some(primary) = self.primary_mut() else {
            return;
        };
        let reads = primary.take_reads();
        let assigned_in_turn = std::mem::replace(&mut primary.assigned_in_turn, false);
        let synced = primary.backup_synced;
        if !reads.is_empty() {
            if !assigned_in_turn {
                // A sync point: a no-op with its own new index, never a re-ack.
                self.assign(Entry {
                    session: 0,
                    seq: 0,
                    op: Op::Noop,
                });
            }
            let index = self.state.applied;
            for pending in reads {
                self.answer_once_committed(ctx, index, pending);
            }
        }
        if let Some(primary) = self.primary_mut() {
            primary.assigned_in_turn = false;
        }
        if self.view.backup.is_none() {
            self.commit(ctx, self.state.applied);
        } else if synced {
            self.send_forwards(ctx);
        } else {
            self.send_transfer_chunks(ctx);
        }
    }
}
