//! The replica role: primary or backup of the view it adopted (DESIGN.md §6).
//!
//! Rules, each cited where it is implemented:
//! - **may serve**: a server serves as primary of view N only if N = 1 names it, or it was
//!   allowed to serve as primary of N−1, or it was N−1's backup with `synced_view = N−1`;
//!   otherwise it never serves clients nor sends a state transfer;
//! - **views travel with messages**: forwards, transfer chunks, acks and rejections carry the
//!   sender's view; an older receiver adopts it, a newer one rejects and names its own;
//! - **the forward stream**: operations get consecutive indexes (continuing across views);
//!   the backup applies only the next index, re-acks duplicates, ignores gaps; acks are
//!   cumulative and checked against the view and the backup's incarnation;
//! - **commit point**: an index commits when the view's synced backup acknowledged it, or at
//!   once without a backup; a client is answered only after its operation committed;
//! - **linearizable Gets**: read at their place in the order, answered once an index assigned
//!   after them committed (a no-op entry when nothing else was assigned in the turn);
//! - **sessions**: at most once per (session, seq), the reply kept and replicated;
//! - **state transfer**: a frozen snapshot in bounded chunks, installed only when complete.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::time::Duration;

use bytes::Bytes;
use imbl::OrdMap;
use proto::kv::{
    Entry, ForwardReply, ForwardRequest, GetReply, GetRequest, InfoReply, KEY_LEN_MAX, Op,
    OpenSessionReply, OpenSessionRequest, Outcome, PutReply, PutRequest, SessionRecord, Status,
    TransferReply, TransferRequest, VALUE_LEN_MAX,
};
use proto::viewservice::{Member, PingRequest, View};
use proto::{Addr, Incarnation, Message};
use rand::RngExt;
use runtime::{Ctx, Dest, Link, MonoTime, Origin, ReplyTo, Role};

use crate::store::State;
use crate::viewservice::ViewTiming;

/// How a replica runs.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This server's address (its identity in views).
    pub me: Addr,
    /// The view service's address.
    pub view_service: Addr,
    /// Ping interval (and dead-ping count, for reference).
    pub timing: ViewTiming,
    /// Forwards in flight to the backup at once.
    pub forward_in_flight_max: usize,
    /// Bytes of entries in one forward.
    pub forward_batch_len_max: usize,
    /// Bytes of items in one transfer chunk.
    pub transfer_chunk_len_max: usize,
    /// Session records in one transfer chunk.
    pub transfer_chunk_sessions_max: usize,
    /// Transfer chunks produced per loop turn.
    pub transfer_chunks_per_turn: usize,
    /// Transfer chunks sent and not yet acknowledged.
    pub transfer_window: u32,
    /// Sessions idle longer than this expire.
    pub session_idle_max: Duration,
}

impl ReplicaConfig {
    /// Defaults for a server at `me` using the view service at `view_service`.
    pub fn new(me: Addr, view_service: Addr) -> ReplicaConfig {
        ReplicaConfig {
            me,
            view_service,
            timing: ViewTiming::default(),
            forward_in_flight_max: 8,
            forward_batch_len_max: 1024 * 1024,
            transfer_chunk_len_max: 256 * 1024,
            transfer_chunk_sessions_max: 4096,
            transfer_chunks_per_turn: 4,
            transfer_window: 8,
            session_idle_max: Duration::from_secs(600),
        }
    }
}

/// The replica's timers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReplicaTimer {
    /// Ping the view service.
    Ping,
    /// Look for idle sessions.
    ExpireSessions,
}

/// Counts of rare events, so that a simulation sweep can fail if one never happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Promotions of a synced backup to primary.
    pub promotions: u64,
    /// State transfers installed by this server as backup.
    pub transfers_installed: u64,
    /// State transfers started over after a break (as primary).
    pub transfers_restarted: u64,
    /// Retries answered from the session table (or waiting on the original commit).
    pub dedup_hits: u64,
    /// Forwards or chunks this server rejected as stale.
    pub forwards_rejected: u64,
    /// Views adopted from a peer's message rather than the view service.
    pub views_from_peers: u64,
    /// Sessions expired by this server as primary.
    pub sessions_expired: u64,
    /// Views in which this server was named primary but could not serve.
    pub promotions_refused: u64,
    /// Client requests answered (after commit) as primary.
    pub replies: u64,
}

/// A reply that waits for its operation's commit.
#[derive(Debug, Clone)]
struct Waiting {
    to: ReplyTo,
    reply: Message,
}

/// A state transfer in progress, as primary.
#[derive(Debug)]
struct Transfer {
    id: u64,
    snapshot: State,
    /// Last key sent; `None` before the first.
    key_cursor: Option<Bytes>,
    items_done: bool,
    session_cursor: Option<u64>,
    next_chunk: u32,
    chunks_acked: u32,
    last_sent: bool,
}

/// A state transfer being received, as backup.
#[derive(Debug)]
struct Receiving {
    id: u64,
    next_chunk: u32,
    snapshot_index: u64,
    store: OrdMap<Bytes, Bytes>,
    sessions: OrdMap<u64, SessionRecord>,
}

/// The replica role.
#[derive(Debug)]
pub struct Replica {
    config: ReplicaConfig,
    me: Member,
    state: State,
    view: View,
    /// The view service incarnation of the first view seen.
    service: Option<Incarnation>,
    /// Why this server refuses to serve at all, if it does.
    refused: Option<String>,
    /// May serve as primary of `view`.
    serving: bool,
    /// The view in which this server, as backup, completed a transfer (0 = none).
    synced_view: u64,
    /// Highest index known committed.
    committed: u64,
    // Primary side.
    log: VecDeque<Entry>,
    /// Index of `log[0]`.
    log_first: u64,
    backup_synced: bool,
    backup_acked: u64,
    sent: u64,
    in_flight: VecDeque<u64>,
    waiting: BTreeMap<u64, Vec<Waiting>>,
    /// Answers read at their place in the order (Gets, session errors), waiting for the
    /// end of the turn to be given an index to commit.
    gets_waiting: Vec<Waiting>,
    assigned_in_turn: bool,
    transfer: Option<Transfer>,
    last_active: BTreeMap<u64, MonoTime>,
    // Backup side.
    receiving: Option<Receiving>,
    stats: ReplicaStats,
}

impl Replica {
    /// A replica with `config`; it learns its incarnation at start.
    pub fn new(config: ReplicaConfig) -> Replica {
        let me = Member {
            addr: config.me,
            incarnation: Incarnation(0),
        };
        Replica {
            config,
            me,
            state: State::default(),
            view: View::initial(Incarnation(0)),
            service: None,
            refused: None,
            serving: false,
            synced_view: 0,
            committed: 0,
            log: VecDeque::new(),
            log_first: 1,
            backup_synced: false,
            backup_acked: 0,
            sent: 0,
            in_flight: VecDeque::new(),
            waiting: BTreeMap::new(),
            gets_waiting: Vec::new(),
            assigned_in_turn: false,
            transfer: None,
            last_active: BTreeMap::new(),
            receiving: None,
            stats: ReplicaStats::default(),
        }
    }

    /// The adopted view.
    pub fn view(&self) -> View {
        self.view
    }

    /// Whether this server may serve as primary of its view.
    pub fn serving(&self) -> bool {
        self.serving
    }

    /// The view in which this server completed a transfer as backup (0 = none).
    pub fn synced_view(&self) -> u64 {
        self.synced_view
    }

    /// As primary: whether the view's backup installed this primary's snapshot.
    pub fn backup_synced(&self) -> bool {
        self.backup_synced
    }

    /// The replicated state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Highest index known committed.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Rare-event counters.
    pub fn stats(&self) -> ReplicaStats {
        self.stats
    }

    /// This server as views name it.
    pub fn member(&self) -> Member {
        self.me
    }

    /// Why this server refuses to serve, if it does.
    pub fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    /// State for `pbkv info`, as JSON.
    pub fn info(&self) -> serde_json::Value {
        let transfer = self.transfer.as_ref().map(|t| {
            serde_json::json!({
                "id": t.id,
                "snapshot_index": t.snapshot.applied,
                "chunks_sent": t.next_chunk,
                "chunks_acked": t.chunks_acked,
                "keys": t.snapshot.store.len(),
            })
        });
        serde_json::json!({
            "role": "replica",
            "addr": self.me.addr.to_string(),
            "incarnation": self.me.incarnation.to_string(),
            "view": crate::view_json(&self.view),
            "may_serve": self.serving,
            "synced_view": self.synced_view,
            "refused": self.refused,
            "applied": self.state.applied,
            "committed": self.committed,
            "forwards_in_flight": self.in_flight.len(),
            "backup_synced": self.backup_synced,
            "keys": self.state.store.len(),
            "sessions": self.state.sessions.len(),
            "waiting_replies": self.waiting.values().map(Vec::len).sum::<usize>(),
            "transfer": transfer,
            "stats": {
                "promotions": self.stats.promotions,
                "transfers_installed": self.stats.transfers_installed,
                "transfers_restarted": self.stats.transfers_restarted,
                "dedup_hits": self.stats.dedup_hits,
                "forwards_rejected": self.stats.forwards_rejected,
                "views_from_peers": self.stats.views_from_peers,
                "sessions_expired": self.stats.sessions_expired,
                "promotions_refused": self.stats.promotions_refused,
            },
        })
    }

    fn backup_dest(&self) -> Option<Dest> {
        self.view.backup.map(|backup| Dest::from(backup.addr))
    }

    fn send_ping(&self, ctx: &mut Ctx<ReplicaTimer>) {
        let ping = PingRequest {
            server: self.me.addr,
            incarnation: self.me.incarnation,
            viewnum: self.view.viewnum,
        };
        ctx.send(self.config.view_service, ping);
    }

    // ----- Views -----

    /// Adopts `view` if it is newer; `from_peer` counts views learnt from a peer's message.
    fn adopt(&mut self, ctx: &mut Ctx<ReplicaTimer>, view: View, from_peer: bool) {
        match self.service {
            None => self.service = Some(view.service),
            Some(service) if service != view.service => {
                self.refuse_service(ctx, service, view.service);
                return;
            }
            Some(_) => {}
        }
        if self.refused.is_some() || view.viewnum <= self.view.viewnum {
            return;
        }
        if from_peer {
            self.stats.views_from_peers += 1;
        }
        let previous = self.view;
        // The may-serve rule (DESIGN.md §6): first view naming us, or continuity from N−1
        // as serving primary, or as N−1's synced backup.
        let named = view.is_primary(self.me);
        let continues = view.viewnum == previous.viewnum + 1
            && (self.serving
                || (previous.is_backup(self.me) && self.synced_view == previous.viewnum));
        let may_serve = named && (view.viewnum == 1 || continues);
        let promoted = may_serve && !self.serving;
        self.view = view;
        // Adopting any other view clears `synced_view`.
        self.synced_view = 0;
        self.receiving = None;
        ctx.event(format!("adopt view {}", crate::view_text(&view)));
        if named && !may_serve {
            self.stats.promotions_refused += 1;
            ctx.event("named primary but may not serve: not synced in the previous view");
        }
        self.serving = may_serve;
        if !may_serve {
            self.step_down(ctx);
            return;
        }
        if promoted && view.viewnum > 1 {
            self.stats.promotions += 1;
            // Idle time restarts at promotion, on this server's own clock.
            let now = ctx.now();
            self.last_active = self
                .state
                .sessions
                .keys()
                .map(|session| (*session, now))
                .collect();
        }
        self.begin_view_as_primary(ctx);
    }

    fn refuse_service(&mut self, ctx: &mut Ctx<ReplicaTimer>, was: Incarnation, now: Incarnation) {
        if self.refused.is_some() {
            return;
        }
        let why = format!(
            "the view service restarted (incarnation {now}, was {was}): it keeps no state, so \
             its views could name an empty server; restart the cluster"
        );
        log::error!("{why}");
        ctx.event(why.clone());
        self.refused = Some(why);
        self.serving = false;
        self.step_down(ctx);
    }

    /// No longer allowed to serve: answer every pending client request with ErrWrongServer
    /// and forget it; stop forwarding and transferring.
    fn step_down(&mut self, ctx: &mut Ctx<ReplicaTimer>) {
        let waiting = std::mem::take(&mut self.waiting);
        let gets = std::mem::take(&mut self.gets_waiting);
        for pending in waiting.into_values().flatten().chain(gets) {
            ctx.reply(pending.to, wrong_server(&pending.reply));
        }
        self.transfer = None;
        self.log.clear();
        self.log_first = self.state.applied + 1;
        self.in_flight.clear();
        self.backup_synced = false;
        self.last_active.clear();
    }

    /// Serving as primary of a new view: start a transfer to its backup, or commit all.
    fn begin_view_as_primary(&mut self, ctx: &mut Ctx<ReplicaTimer>) {
        self.in_flight.clear();
        self.backup_synced = false;
        self.backup_acked = 0;
        self.sent = self.state.applied;
        if self.view.backup.is_none() {
            // Commit point: with no backup, everything assigned commits at once (including
            // operations inherited from the previous primary).
            self.log.clear();
            self.log_first = self.state.applied + 1;
            self.commit(ctx, self.state.applied);
            self.transfer = None;
        } else {
            self.start_transfer(ctx);
        }
    }

    fn start_transfer(&mut self, ctx: &mut Ctx<ReplicaTimer>) {
        let id = ctx.rng().random::<u64>();
        // The snapshot covers every index assigned so far; cloning is O(1).
        self.transfer = Some(Transfer {
            id,
            snapshot: self.state.clone(),
            key_cursor: None,
            items_done: false,
            session_cursor: None,
            next_chunk: 0,
            chunks_acked: 0,
            last_sent: false,
        });
        // Entries after the snapshot are forwarded once it is installed.
        self.log.clear();
        self.log_first = self.state.applied + 1;
        self.sent = self.state.applied;
    }

    // ----- Client requests (primary) -----

    fn on_open_session(&mut self, ctx: &mut Ctx<ReplicaTimer>, origin: &Origin, nonce: u64) {
        if !self.serving {
            let reply = OpenSessionReply {
                status: Status::ErrWrongServer,
                nonce,
                session: 0,
            };
            ctx.reply(origin, reply);
            return;
        }
        let index = self.assign(Entry {
            session: 0,
            seq: 0,
            op: Op::OpenSession { nonce },
        });
        self.last_active.insert(index, ctx.now());
        let reply = OpenSessionReply {
            status: Status::Ok,
            nonce,
            session: index,
        };
        self.wait_for(
            ctx,
            index,
            Waiting {
                to: origin.reply_to(),
                reply: reply.into(),
            },
        );
    }

    fn on_get(&mut self, ctx: &mut Ctx<ReplicaTimer>, origin: &Origin, request: GetRequest) {
        if !self.serving {
            ctx.reply(
                origin,
                GetReply {
                    status: Status::ErrWrongServer,
                    value: Bytes::new(),
                },
            );
            return;
        }
        if request.key.len() > KEY_LEN_MAX {
            ctx.reply(
                origin,
                GetReply {
                    status: Status::ErrTooLarge,
                    value: Bytes::new(),
                },
            );
            return;
        }
        // Read at its place in the order; answered once a later index commits.
        let reply = match self.state.store.get(&request.key) {
            Some(value) => GetReply {
                status: Status::Ok,
                value: value.clone(),
            },
            None => GetReply {
                status: Status::ErrNoKey,
                value: Bytes::new(),
            },
        };
        self.gets_waiting.push(Waiting {
            to: origin.reply_to(),
            reply: reply.into(),
        });
    }

    fn on_put(&mut self, ctx: &mut Ctx<ReplicaTimer>, origin: &Origin, request: PutRequest) {
        let answer = |status| PutReply {
            status,
            previous: Bytes::new(),
        };
        if !self.serving {
            ctx.reply(origin, answer(Status::ErrWrongServer));
            return;
        }
        if request.key.len() > KEY_LEN_MAX || request.value.len() > VALUE_LEN_MAX {
            ctx.reply(origin, answer(Status::ErrTooLarge));
            return;
        }
        // Session errors are answers too: they are sent only once the state they were read
        // from (everything assigned so far, an uncommitted expiry included) has committed,
        // like a Get's. Never applied either way.
        let Some(record) = self.state.sessions.get(&request.session).cloned() else {
            let reply = answer(Status::ErrSessionExpired).into();
            self.gets_waiting.push(Waiting {
                to: origin.reply_to(),
                reply,
            });
            return;
        };
        self.last_active.insert(request.session, ctx.now());
        if request.seq < record.last_seq {
            let reply = answer(Status::ErrStaleRequest).into();
            self.gets_waiting.push(Waiting {
                to: origin.reply_to(),
                reply,
            });
            return;
        }
        if request.seq == record.last_seq {
            // A retry of the last request: the original reply, once that request committed.
            self.stats.dedup_hits += 1;
            let reply = PutReply {
                status: Status::Ok,
                previous: record.reply,
            };
            self.wait_for(
                ctx,
                record.index,
                Waiting {
                    to: origin.reply_to(),
                    reply: reply.into(),
                },
            );
            return;
        }
        let op = if request.hash {
            Op::PutHash {
                key: request.key,
                value: request.value,
            }
        } else {
            Op::Put {
                key: request.key,
                value: request.value,
            }
        };
        let entry = Entry {
            session: request.session,
            seq: request.seq,
            op,
        };
        let index = self.assign(entry);
        let previous = self
            .state
            .sessions
            .get(&request.session)
            .map(|r| r.reply.clone());
        let reply = PutReply {
            status: Status::Ok,
            previous: previous.unwrap_or_default(),
        };
        self.wait_for(
            ctx,
            index,
            Waiting {
                to: origin.reply_to(),
                reply: reply.into(),
            },
        );
    }

    /// Gives `entry` the next index, applies it, and queues it for the backup.
    fn assign(&mut self, entry: Entry) -> u64 {
        assert!(self.serving, "only a serving primary assigns indexes");
        self.state.apply(&entry);
        if self.view.backup.is_some() {
            self.log.push_back(entry);
        } else {
            // No backup: nothing to forward, and the entry commits at turn end.
            self.log_first = self.state.applied + 1;
            self.sent = self.state.applied;
        }
        self.assigned_in_turn = true;
        self.state.applied
    }

    fn wait_for(&mut self, ctx: &mut Ctx<ReplicaTimer>, index: u64, waiting: Waiting) {
        if index <= self.committed {
            self.stats.replies += 1;
            ctx.reply(waiting.to, waiting.reply);
        } else {
            self.waiting.entry(index).or_default().push(waiting);
        }
    }

    /// Commit point reached for every index up to `index`: answer who waited.
    fn commit(&mut self, ctx: &mut Ctx<ReplicaTimer>, index: u64) {
        let index = index.min(self.state.applied);
        if index <= self.committed {
            return;
        }
        self.committed = index;
        let later = self.waiting.split_off(&(index + 1));
        for pending in std::mem::replace(&mut self.waiting, later)
            .into_values()
            .flatten()
        {
            self.stats.replies += 1;
            ctx.reply(pending.to, pending.reply);
        }
    }

    // ----- The forward stream (primary) -----

    fn send_forwards(&mut self, ctx: &mut Ctx<ReplicaTimer>) {
        let Some(dest) = self.backup_dest() else {
            return;
        };
        while self.sent < self.state.applied
            && self.in_flight.len() < self.config.forward_in_flight_max
        {
            let first_index = self.sent + 1;
            let skip = usize::try_from(first_index - self.log_first).expect("log fits in memory");
            let mut entries = Vec::new();
            let mut len = 0;
            for entry in self.log.iter().skip(skip) {
                if !entries.is_empty() && len + entry.len_hint() > self.config.forward_batch_len_max
                {
                    break;
                }
                len += entry.len_hint();
                entries.push(entry.clone());
            }
            assert!(!entries.is_empty(), "sent < applied implies unsent entries");
            self.sent += entries.len() as u64;
            self.in_flight.push_back(self.sent);
            ctx.send(
                dest,
                ForwardRequest {
                    view: self.view,
                    first_index,
                    entries,
                },
            );
        }
    }

    fn on_forward_reply(&mut self, ctx: &mut Ctx<ReplicaTimer>, reply: ForwardReply) {
        let acked = self.ack_from_backup(ctx, reply.view, reply.incarnation, reply.outcome);
        if acked && self.backup_synced {
            self.acknowledged(ctx, reply.applied);
        }
    }

    /// What every backup reply shares: a newer carried view is adopted (a receiver with a
    /// newer view rejected us, or acked in it); a rejection does nothing else; an ack counts
    /// only from the current view's backup, as the incarnation it names, while serving.
    fn ack_from_backup(
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
        outcome == Outcome::Acked && self.serving && view == self.view && from_backup
    }

    /// The synced backup applied everything up to `applied`.
    fn acknowledged(&mut self, ctx: &mut Ctx<ReplicaTimer>, applied: u64) {
        let applied = applied.min(self.state.applied);
        if applied > self.backup_acked {
            self.backup_acked = applied;
        }
        // An ack on a new connection may cover more than a break made us plan to resend.
        self.sent = self.sent.max(self.backup_acked);
        while self
            .in_flight
            .front()
            .is_some_and(|last| *last <= self.backup_acked)
        {
            self.in_flight.pop_front();
        }
        while self.log_first <= self.backup_acked && !self.log.is_empty() {
            self.log.pop_front();
            self.log_first += 1;
        }
        self.commit(ctx, self.backup_acked);
    }

    // ----- State transfer (primary) -----

    fn send_transfer_chunks(&mut self, ctx: &mut Ctx<ReplicaTimer>) {
        let Some(dest) = self.backup_dest() else {
            return;
        };
        let view = self.view;
        let chunk_len_max = self.config.transfer_chunk_len_max;
        let sessions_max = self.config.transfer_chunk_sessions_max;
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        for _ in 0..self.config.transfer_chunks_per_turn {
            if transfer.last_sent
                || transfer.next_chunk - transfer.chunks_acked >= self.config.transfer_window
            {
                return;
            }
            let request = next_chunk(transfer, view, chunk_len_max, sessions_max);
            ctx.send(dest, request);
        }
    }

    fn on_transfer_reply(&mut self, ctx: &mut Ctx<ReplicaTimer>, reply: TransferReply) {
        if !self.ack_from_backup(ctx, reply.view, reply.incarnation, reply.outcome) {
            return;
        }
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        if reply.transfer_id != transfer.id {
            return; // An ack of an older transfer: ignored.
        }
        transfer.chunks_acked = transfer.chunks_acked.max(reply.chunk + 1);
        if reply.installed {
            let snapshot_index = transfer.snapshot.applied;
            self.transfer = None;
            self.backup_synced = true;
            self.sent = snapshot_index;
            ctx.event(format!("backup synced at index {snapshot_index}"));
            // Commit point: the new backup's ack of its snapshot commits what waited.
            self.acknowledged(ctx, snapshot_index);
        }
    }

    // ----- Backup side -----

    /// Whether a forward or chunk stamped `view` from `origin` may be taken; answers the
    /// sender with a rejection otherwise. Adopts a newer carried view first.
    fn accept_from_primary(
        &mut self,
        ctx: &mut Ctx<ReplicaTimer>,
        origin: &Origin,
        view: View,
    ) -> bool {
        if view.viewnum > self.view.viewnum {
            self.adopt(ctx, view, true);
        }
        let primary = self.view.primary;
        let from_primary = primary
            .is_some_and(|p| origin.addr == Some(p.addr) && origin.incarnation == p.incarnation);
        // Accepted only from the primary of the current view, as the incarnation it names,
        // by the backup of that view.
        view == self.view && self.view.is_backup(self.me) && from_primary && self.refused.is_none()
    }

    fn reject(
        &mut self,
        ctx: &mut Ctx<ReplicaTimer>,
        origin: &Origin,
        transfer: Option<(u64, u32)>,
    ) {
        self.stats.forwards_rejected += 1;
        let (view, incarnation, applied) = (self.view, self.me.incarnation, self.state.applied);
        match transfer {
            None => {
                let reply = ForwardReply {
                    view,
                    incarnation,
                    outcome: Outcome::Rejected,
                    applied,
                };
                ctx.reply(origin, reply);
            }
            Some((transfer_id, chunk)) => {
                let reply = TransferReply {
                    view,
                    incarnation,
                    transfer_id,
                    chunk,
                    outcome: Outcome::Rejected,
                    installed: false,
                    applied,
                };
                ctx.reply(origin, reply);
            }
        }
    }

    fn on_forward(
        &mut self,
        ctx: &mut Ctx<ReplicaTimer>,
        origin: &Origin,
        request: ForwardRequest,
    ) {
        if !self.accept_from_primary(ctx, origin, request.view)
            || self.synced_view != self.view.viewnum
        {
            self.reject(ctx, origin, None);
            return;
        }
        for (offset, entry) in request.entries.iter().enumerate() {
            let index = request.first_index + offset as u64;
            if index <= self.state.applied {
                continue; // Already applied: re-acked below.
            }
            if index != self.state.applied + 1 {
                break; // A gap: apply nothing past it; the ack tells the primary where we are.
            }
            self.state.apply(entry);
        }
        let reply = ForwardReply {
            view: self.view,
            incarnation: self.me.incarnation,
            outcome: Outcome::Acked,
            applied: self.state.applied,
        };
        ctx.reply(origin, reply);
    }

    fn on_transfer(
        &mut self,
        ctx: &mut Ctx<ReplicaTimer>,
        origin: &Origin,
        request: TransferRequest,
    ) {
        if !self.accept_from_primary(ctx, origin, request.view) {
            self.reject(ctx, origin, Some((request.transfer_id, request.chunk)));
            return;
        }
        if request.chunk == 0 {
            self.receiving = Some(Receiving {
                id: request.transfer_id,
                next_chunk: 0,
                snapshot_index: request.snapshot_index,
                store: OrdMap::new(),
                sessions: OrdMap::new(),
            });
        }
        let Some(receiving) = self.receiving.as_mut() else {
            return;
        };
        if receiving.id != request.transfer_id || receiving.next_chunk != request.chunk {
            return; // Part of another (older) transfer: never finished here.
        }
        receiving.next_chunk += 1;
        for (key, value) in request.items {
            receiving.store.insert(key, value);
        }
        for record in request.sessions {
            receiving.sessions.insert(record.session, record);
        }
        let mut installed = false;
        if request.last {
            // Installed whole, never in part.
            let done = self.receiving.take().expect("checked above");
            self.state = State {
                store: done.store,
                sessions: done.sessions,
                applied: done.snapshot_index,
            };
            self.synced_view = self.view.viewnum;
            self.stats.transfers_installed += 1;
            installed = true;
            ctx.event(format!(
                "installed snapshot at index {}",
                done.snapshot_index
            ));
        }
        let reply = TransferReply {
            view: self.view,
            incarnation: self.me.incarnation,
            transfer_id: request.transfer_id,
            chunk: request.chunk,
            outcome: Outcome::Acked,
            installed,
            applied: self.state.applied,
        };
        ctx.reply(origin, reply);
    }

    // ----- Timers and turns -----

    fn on_expire_sessions(&mut self, ctx: &mut Ctx<ReplicaTimer>) {
        let period = (self.config.session_idle_max / 4).max(Duration::from_millis(10));
        ctx.set_timer(ReplicaTimer::ExpireSessions, period);
        if !self.serving {
            return;
        }
        let now = ctx.now();
        let idle_max = self.config.session_idle_max;
        let expired: Vec<u64> = self
            .state
            .sessions
            .keys()
            .filter(|session| {
                self.last_active
                    .get(session)
                    .is_none_or(|at| now.since(*at) > idle_max)
            })
            .copied()
            .collect();
        if expired.is_empty() {
            return;
        }
        for session in &expired {
            self.last_active.remove(session);
        }
        self.stats.sessions_expired += expired.len() as u64;
        ctx.event(format!("expire {} idle sessions", expired.len()));
        for batch in expired.chunks(EXPIRE_BATCH_MAX) {
            let op = Op::ExpireSessions {
                sessions: batch.to_vec(),
            };
            self.assign(Entry {
                session: 0,
                seq: 0,
                op,
            });
        }
    }

    fn check(&self) {
        assert!(
            self.committed <= self.state.applied,
            "committed past applied"
        );
        assert!(
            self.backup_acked <= self.state.applied,
            "acked past applied"
        );
        assert!(
            self.in_flight.len() <= self.config.forward_in_flight_max,
            "{} forwards in flight",
            self.in_flight.len()
        );
        if self.serving {
            assert!(
                self.view.is_primary(self.me),
                "serving but not the view's primary"
            );
            assert!(self.refused.is_none(), "serving while refusing");
            let log_last = self.log_first + self.log.len() as u64;
            assert_eq!(
                log_last,
                self.state.applied + 1,
                "log does not end at applied"
            );
            assert!(
                self.sent <= self.state.applied,
                "sent {} past applied",
                self.sent
            );
            assert!(
                self.log_first <= self.sent + 1,
                "log starts after the first unsent entry"
            );
        } else {
            assert!(
                self.waiting.is_empty(),
                "replies waiting on a server that may not serve"
            );
        }
    }
}

/// Encoded bytes of a session record besides its reply.
const SESSION_RECORD_FIXED_LEN: usize = 28;

/// Session ids in one `ExpireSessions` entry, so that one entry stays far below the frame
/// limit however many sessions are idle.
const EXPIRE_BATCH_MAX: usize = 4096;

/// The same request's answer, saying "not here": used when stepping down.
fn wrong_server(reply: &Message) -> Message {
    match reply {
        Message::OpenSessionReply(open) => OpenSessionReply {
            status: Status::ErrWrongServer,
            nonce: open.nonce,
            session: 0,
        }
        .into(),
        Message::GetReply(_) => GetReply {
            status: Status::ErrWrongServer,
            value: Bytes::new(),
        }
        .into(),
        _ => PutReply {
            status: Status::ErrWrongServer,
            previous: Bytes::new(),
        }
        .into(),
    }
}

/// Cuts the next chunk of `transfer`: items first, then session records, then `last`.
fn next_chunk(
    transfer: &mut Transfer,
    view: View,
    chunk_len_max: usize,
    sessions_max: usize,
) -> TransferRequest {
    let mut items = Vec::new();
    let mut len = 0;
    if !transfer.items_done {
        let lower = match &transfer.key_cursor {
            Some(key) => Bound::Excluded(key.clone()),
            None => Bound::Unbounded,
        };
        let mut range = transfer.snapshot.store.range((lower, Bound::Unbounded));
        loop {
            let Some((key, value)) = range.next() else {
                transfer.items_done = true;
                break;
            };
            len += key.len() + value.len() + 8;
            items.push((key.clone(), value.clone()));
            if len >= chunk_len_max {
                break;
            }
        }
        if let Some((key, _)) = items.last() {
            transfer.key_cursor = Some(key.clone());
        }
    }
    let mut sessions = Vec::new();
    if transfer.items_done && len < chunk_len_max {
        let lower = match transfer.session_cursor {
            Some(session) => Bound::Excluded(session),
            None => Bound::Unbounded,
        };
        for (session, record) in transfer.snapshot.sessions.range((lower, Bound::Unbounded)) {
            // Bounded by count and by bytes (a record's reply can be a 1 MiB value), but
            // never empty, so every chunk makes progress and stays within the frame limit.
            let record_len = SESSION_RECORD_FIXED_LEN + record.reply.len();
            let full = len + record_len > chunk_len_max || sessions.len() >= sessions_max;
            if full && (!sessions.is_empty() || !items.is_empty()) {
                break;
            }
            len += record_len;
            sessions.push(record.clone());
            transfer.session_cursor = Some(*session);
        }
    }
    let sessions_left = match transfer.session_cursor {
        Some(cursor) => transfer
            .snapshot
            .sessions
            .range((Bound::Excluded(cursor), Bound::Unbounded))
            .next()
            .is_some(),
        None => !transfer.snapshot.sessions.is_empty(),
    };
    let last = transfer.items_done && !sessions_left;
    transfer.last_sent = last;
    let chunk = transfer.next_chunk;
    transfer.next_chunk += 1;
    TransferRequest {
        view,
        transfer_id: transfer.id,
        chunk,
        snapshot_index: transfer.snapshot.applied,
        last,
        items,
        sessions,
    }
}

impl Role for Replica {
    type Timer = ReplicaTimer;

    fn on_start(&mut self, ctx: &mut Ctx<ReplicaTimer>) {
        self.me = Member {
            addr: self.config.me,
            incarnation: ctx.incarnation(),
        };
        self.send_ping(ctx);
        ctx.set_timer(ReplicaTimer::Ping, self.config.timing.ping_interval);
        ctx.set_timer(
            ReplicaTimer::ExpireSessions,
            self.config.session_idle_max / 4,
        );
    }

    fn on_message(&mut self, ctx: &mut Ctx<ReplicaTimer>, origin: &Origin, message: Message) {
        match message {
            Message::PingReply(reply) => self.adopt(ctx, reply.view, false),
            Message::GetViewReply(reply) => self.adopt(ctx, reply.view, false),
            Message::OpenSessionRequest(OpenSessionRequest { nonce }) => {
                self.on_open_session(ctx, origin, nonce)
            }
            Message::GetRequest(request) => self.on_get(ctx, origin, request),
            Message::PutRequest(request) => self.on_put(ctx, origin, request),
            Message::ForwardRequest(request) => self.on_forward(ctx, origin, request),
            Message::ForwardReply(reply) => self.on_forward_reply(ctx, reply),
            Message::TransferRequest(request) => self.on_transfer(ctx, origin, request),
            Message::TransferReply(reply) => self.on_transfer_reply(ctx, reply),
            Message::InfoRequest(_) => {
                ctx.reply(
                    origin,
                    InfoReply {
                        json: self.info().to_string(),
                    },
                );
            }
            other => log::debug!("replica: ignoring {}", other.message_type()),
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<ReplicaTimer>, timer: ReplicaTimer) {
        match timer {
            ReplicaTimer::Ping => {
                self.send_ping(ctx);
                ctx.set_timer(ReplicaTimer::Ping, self.config.timing.ping_interval);
            }
            ReplicaTimer::ExpireSessions => self.on_expire_sessions(ctx),
        }
    }

    fn on_link(&mut self, ctx: &mut Ctx<ReplicaTimer>, to: Dest, link: Link) {
        let to_backup = self.backup_dest() == Some(to);
        if link != Link::Down || !to_backup || !self.serving {
            return;
        }
        // What was in flight is lost: on the next connection, resend from the first
        // unacknowledged index; a transfer starts over from the beginning.
        self.in_flight.clear();
        self.sent = self.backup_acked.max(self.log_first - 1);
        if !self.backup_synced {
            self.stats.transfers_restarted += 1;
            self.start_transfer(ctx);
        }
    }

    fn on_turn_end(&mut self, ctx: &mut Ctx<ReplicaTimer>) {
        if !self.serving {
            self.assigned_in_turn = false;
            return;
        }
        if !self.gets_waiting.is_empty() {
            if !self.assigned_in_turn {
                // A sync point: a no-op with its own new index, never a re-ack.
                self.assign(Entry {
                    session: 0,
                    seq: 0,
                    op: Op::Noop,
                });
            }
            let index = self.state.applied;
            for pending in std::mem::take(&mut self.gets_waiting) {
                self.wait_for(ctx, index, pending);
            }
        }
        self.assigned_in_turn = false;
        if self.view.backup.is_none() {
            self.commit(ctx, self.state.applied);
        } else if self.backup_synced {
            self.send_forwards(ctx);
        } else {
            self.send_transfer_chunks(ctx);
        }
    }

    fn busy(&self) -> bool {
        !self.waiting.is_empty() || !self.gets_waiting.is_empty()
    }

    fn check_invariants(&self) {
        self.check();
    }
}
