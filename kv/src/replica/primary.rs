//! The primary's side: client requests (R8, R10), the forward stream (R6) and the commit
//! point (R7). Everything here runs only while this server may serve as primary of its
//! view, that is while its standing holds a [`Primary`].

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use proto::kv::{
    Entry, ForwardReply, ForwardRequest, GetReply, GetRequest, KEY_LEN_MAX, Op, OpenSessionReply,
    Outcome, PutReply, PutRequest, Status, VALUE_LEN_MAX,
};
use proto::viewservice::View;
use proto::{Incarnation, Message};
use runtime::{Ctx, MonoTime, Origin, ReplyTo};

use super::sessions::SessionCheck;
use super::transfer::Transfer;
use super::{Replica, ReplicaConfig, ReplicaTimer, Standing};
use crate::store::State;

/// A reply that waits for its operation's commit.
#[derive(Debug, Clone)]
pub(super) struct Waiting {
    pub(super) to: ReplyTo,
    pub(super) reply: Message,
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
    /// Replies waiting for their index to commit.
    pub(super) waiting: BTreeMap<u64, Vec<Waiting>>,
    /// Answers read at their place in the order (Gets, session errors), waiting for the end
    /// of the turn to be given an index to commit.
    pub(super) reads_waiting: Vec<Waiting>,
    /// Whether an index was assigned in this turn.
    pub(super) assigned_in_turn: bool,
    /// The state transfer to the backup, until it is installed.
    pub(super) transfer: Option<Transfer>,
    /// When each session was last used, on this primary's clock.
    pub(super) last_active: BTreeMap<u64, MonoTime>,
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
            waiting: BTreeMap::new(),
            reads_waiting: Vec::new(),
            assigned_in_turn: false,
            transfer: None,
            last_active: state
                .sessions
                .keys()
                .map(|session| (*session, now))
                .collect(),
        }
    }

    /// Replies waiting, for a commit or for the end of the turn.
    pub(super) fn waiting_count(&self) -> usize {
        self.waiting.values().map(Vec::len).sum::<usize>() + self.reads_waiting.len()
    }

    /// Every pending reply, for stepping down.
    pub(super) fn into_pending(self) -> impl Iterator<Item = Waiting> {
        self.waiting
            .into_values()
            .flatten()
            .chain(self.reads_waiting)
    }

    /// Forgets what was sent to the backup: `unacked` now starts after `applied`.
    fn clear_unacked(&mut self, applied: u64) {
        self.unacked.clear();
        self.unacked_first = applied + 1;
        self.sent = applied;
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
        // R10: OpenSession is an operation like any other; the session id is its index.
        let index = self.assign(Entry {
            session: 0,
            seq: 0,
            op: Op::OpenSession { nonce },
        });
        if let Some(primary) = self.primary_mut() {
            primary.last_active.insert(index, ctx.now());
        }
        let reply = OpenSessionReply {
            status: Status::Ok,
            nonce,
            session: index,
        };
        self.wait_for(ctx, index, origin.reply_to(), reply.into());
    }

    pub(super) fn on_get(
        &mut self,
        ctx: &mut Ctx<ReplicaTimer>,
        origin: &Origin,
        request: GetRequest,
    ) {
        if !self.serving() {
            ctx.reply(origin, get_reply(Status::ErrWrongServer));
            return;
        }
        if request.key.len() > KEY_LEN_MAX {
            ctx.reply(origin, get_reply(Status::ErrTooLarge));
            return;
        }
        // R8: read at its place in the order; answered once a later index commits.
        let reply = match self.state.store.get(&request.key) {
            Some(value) => GetReply {
                status: Status::Ok,
                value: value.clone(),
            },
            None => get_reply(Status::ErrNoKey),
        };
        self.answer_after_turn(origin, reply.into());
    }

    /// Queues an answer read from the state as of now, to be sent once an index assigned
    /// after it commits (R8; R10 for session errors).
    fn answer_after_turn(&mut self, origin: &Origin, reply: Message) {
        if let Some(primary) = self.primary_mut() {
            primary.reads_waiting.push(Waiting {
                to: origin.reply_to(),
                reply,
            });
        }
    }

    pub(super) fn on_put(
        &mut self,
        ctx: &mut Ctx<ReplicaTimer>,
        origin: &Origin,
        request: PutRequest,
    ) {
        if !self.serving() {
            ctx.reply(origin, put_reply(Status::ErrWrongServer));
            return;
        }
        if request.key.len() > KEY_LEN_MAX || request.value.len() > VALUE_LEN_MAX {
            ctx.reply(origin, put_reply(Status::ErrTooLarge));
            return;
        }
        match self.check_session(ctx, &request) {
            // R10: session errors are answers read from everything assigned so far (an
            // uncommitted expiry included), so they wait for a commit like a Get's.
            SessionCheck::Unknown => {
                self.answer_after_turn(origin, put_reply(Status::ErrSessionExpired).into());
            }
            SessionCheck::Stale => {
                self.answer_after_turn(origin, put_reply(Status::ErrStaleRequest).into());
            }
            SessionCheck::Retry { index, reply } => {
                // A retry of the last request: the original reply, once that request
                // committed.
                self.stats.dedup_hits += 1;
                let reply = PutReply {
                    status: Status::Ok,
                    previous: reply,
                };
                self.wait_for(ctx, index, origin.reply_to(), reply.into());
            }
            SessionCheck::Fresh => self.apply_put(ctx, origin, request),
        }
    }

    fn apply_put(&mut self, ctx: &mut Ctx<ReplicaTimer>, origin: &Origin, request: PutRequest) {
        let PutRequest {
            session,
            seq,
            hash,
            key,
            value,
        } = request;
        let op = if hash {
            Op::PutHash { key, value }
        } else {
            Op::Put { key, value }
        };
        let index = self.assign(Entry { session, seq, op });
        let previous = self.state.sessions.get(&session).map(|r| r.reply.clone());
        let reply = PutReply {
            status: Status::Ok,
            previous: previous.unwrap_or_default(),
        };
        self.wait_for(ctx, index, origin.reply_to(), reply.into());
    }

    /// R6: gives `entry` the next index, applies it, and queues it for the backup.
    pub(super) fn assign(&mut self, entry: Entry) -> u64 {
        let Standing::Primary(primary) = &mut self.standing else {
            panic!("only a serving primary assigns indexes");
        };
        self.state.apply(&entry);
        if self.view.backup.is_some() {
            primary.unacked.push_back(entry);
        } else {
            // No backup: nothing to forward, and the entry commits at turn end.
            primary.clear_unacked(self.state.applied);
        }
        primary.assigned_in_turn = true;
        self.state.applied
    }

    fn wait_for(&mut self, ctx: &mut Ctx<ReplicaTimer>, index: u64, to: ReplyTo, reply: Message) {
        if index <= self.committed {
            self.stats.replies += 1;
            ctx.reply(to, reply);
        } else if let Some(primary) = self.primary_mut() {
            primary
                .waiting
                .entry(index)
                .or_default()
                .push(Waiting { to, reply });
        }
    }

    /// R7: the commit point reached for every index up to `index`: answer who waited.
    pub(super) fn commit(&mut self, ctx: &mut Ctx<ReplicaTimer>, index: u64) {
        let index = index.min(self.state.applied);
        if index <= self.committed {
            return;
        }
        self.committed = index;
        let Standing::Primary(primary) = &mut self.standing else {
            return;
        };
        let later = primary.waiting.split_off(&(index + 1));
        for pending in std::mem::replace(&mut primary.waiting, later)
            .into_values()
            .flatten()
        {
            self.stats.replies += 1;
            ctx.reply(pending.to, pending.reply);
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
        let Some(primary) = self.primary_mut() else {
            return;
        };
        while primary.sent < applied && primary.in_flight.len() < in_flight_max {
            let first_index = primary.sent + 1;
            let skip = usize::try_from(first_index - primary.unacked_first)
                .expect("unacknowledged entries fit in memory");
            let mut entries = Vec::new();
            let mut len = 0;
            for entry in primary.unacked.iter().skip(skip) {
                if !entries.is_empty() && len + entry.len_hint() > batch_len_max {
                    break;
                }
                len += entry.len_hint();
                entries.push(entry.clone());
            }
            assert!(!entries.is_empty(), "sent < applied implies unsent entries");
            primary.sent += entries.len() as u64;
            primary.in_flight.push_back(primary.sent);
            let forward = ForwardRequest {
                view,
                first_index,
                entries,
            };
            ctx.send(dest, forward);
        }
    }

    pub(super) fn on_forward_reply(&mut self, ctx: &mut Ctx<ReplicaTimer>, reply: ForwardReply) {
        let acked = self.ack_from_backup(ctx, reply.view, reply.incarnation, reply.outcome);
        if acked && self.backup_synced() {
            self.acknowledged(ctx, reply.applied);
        }
    }

    /// What every backup reply shares (R4, R6): a newer carried view is adopted (a receiver
    /// with a newer view rejected us, or acked in it); a rejection does nothing else; an ack
    /// counts only from the current view's backup, as the incarnation it names, while
    /// serving.
    pub(super) fn ack_from_backup(
        &mut self,
        ctx: &mut Ctx<ReplicaTimer>,
        view: View,
        incarnation: Incarnation,
        outcome: Outcome,
    ) -> bool {
        if view.viewnum > self.view.viewnum {
            self.adopt(ctx, view, true);
            return false;
        }
        let from_backup = self
            .view
            .backup
            .is_some_and(|b| b.incarnation == incarnation);
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
            primary.unacked.pop_front();
            primary.unacked_first += 1;
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

    /// The batching point: Gets and session errors of the turn get an index to wait on (a
    /// no-op if nothing else was assigned: R8), then one round of forwards or chunks.
    pub(super) fn end_turn_as_primary(&mut self, ctx: &mut Ctx<ReplicaTimer>) {
        let Some(primary) = self.primary_mut() else {
            return;
        };
        let reads = std::mem::take(&mut primary.reads_waiting);
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
                self.wait_for(ctx, index, pending.to, pending.reply);
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
