//! The replica role: primary or backup of the view it adopted (DESIGN.md §6).
//!
//! Rules, each cited where it is implemented (docs/protocol.md R1–R12):
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
//!
//! # Layout
//! - this file: the role, its standing in the view ([`Standing`]), adopting views, dispatch;
//! - `primary`: client requests, the forward stream and the commit point (primary only);
//! - `backup`: taking forwards and transfer chunks (backup only);
//! - `transfer`: the state transfer, both ends;
//! - `sessions`: at-most-once checks and idle-session expiry;
//! - `validate`: the checks every peer message passes before it is used (peer input is
//!   untrusted input: members are trusted to be who they are, not to be well formed).
//!
//! What a server keeps depends on its standing: a serving primary has a [`Primary`] (its
//! unacknowledged entries, waiting replies, transfer), a backup a [`Backup`] (whether it is
//! synced, the transfer it is receiving). "Serving implies primary state" is therefore a
//! type, not an assertion.

mod backup;
mod primary;
mod sessions;
mod transfer;
mod validate;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use proto::kv::{GetReply, InfoReply, OpenSessionReply, PutReply, Status};
use proto::viewservice::{Member, PingRequest, View};
use proto::{Addr, Incarnation, Message, MessageType};
use runtime::warn::Warnings;
use runtime::{ConnId, Ctx, Dest, Link, MonoTime, Origin, Role};

use crate::histogram::Histogram;
use crate::store::{State, StateLimits};
use crate::viewservice::ViewTiming;

use backup::Backup;
use primary::{ClientRequest, Primary};

/// How many times as often a serving primary with no backup pings (R19).
pub const ALONE_PING_DIVISOR: u32 = 4;

/// How a replica runs.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This server's address (its identity in views).
    pub me: Addr,
    /// The view-service nodes' addresses (one, or several in the etcd mode): pings go to
    /// every one, and a view reply counts only from one of them.
    pub view_services: Vec<Addr>,
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
    /// Transfer chunks produced per loop turn: few, so the primary's turns stay short; the
    /// window, not this, keeps the backup fed (`TransferMore` asks for the next turn).
    pub transfer_chunks_per_turn: usize,
    /// Transfer chunks sent and not yet acknowledged. The default window of full chunks
    /// (16 × 256 KiB) is half the link's write bound (`LinkOptions::write_buffer_len_max`,
    /// 8 MiB), so a transfer alone never backs the link up and holds clients' reads back.
    pub transfer_window: u32,
    /// Sessions idle longer than this expire.
    pub session_idle_max: Duration,
    /// State bytes (keys, values and session records) past which writes get `ErrFull`.
    /// The same rule runs on primary and backup; give every replica the same value.
    pub state_bytes_max: usize,
    /// Sessions past which OpenSession gets `ErrFull` (sessions are never evicted).
    pub sessions_max: usize,
    /// Sessions one client connection may open (OpenSession past it gets `ErrFull`).
    pub sessions_per_connection_max: usize,
    /// Bytes of the primary's unacknowledged forward log past which it takes no new client
    /// requests (they wait, in arrival order) until the backup catches up: backpressure.
    pub unacked_log_bytes_max: usize,
    /// Client requests and replies a primary holds at once (waiting for a commit, for the
    /// end of the turn, or for the backup to catch up). Past it a request is dropped
    /// unanswered: the client retries it.
    pub pending_replies_max: usize,
    /// Bytes of the requests and replies a primary holds at once (the same rule in bytes).
    pub pending_reply_bytes_max: usize,
    /// A backup abandons a state transfer whose next chunk has not come for this long.
    pub transfer_idle_max: Duration,
}

impl ReplicaConfig {
    /// Defaults for a server at `me` using the view service at `view_service`.
    pub fn new(me: Addr, view_service: Addr) -> ReplicaConfig {
        ReplicaConfig {
            me,
            view_services: vec![view_service],
            timing: ViewTiming::default(),
            forward_in_flight_max: 8,
            forward_batch_len_max: 1024 * 1024,
            transfer_chunk_len_max: 256 * 1024,
            transfer_chunk_sessions_max: 4096,
            transfer_chunks_per_turn: 2,
            transfer_window: 16,
            session_idle_max: Duration::from_secs(600),
            state_bytes_max: 1 << 30,
            sessions_max: 100_000,
            sessions_per_connection_max: 4096,
            unacked_log_bytes_max: 64 << 20,
            pending_replies_max: 65_536,
            pending_reply_bytes_max: 128 << 20,
            transfer_idle_max: Duration::from_secs(10),
        }
    }

    /// The state bounds, for [`State::admits`].
    pub fn state_limits(&self) -> StateLimits {
        StateLimits {
            len_max: self.state_bytes_max,
            sessions_max: self.sessions_max,
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
    /// As backup: the transfer being received has had no chunk for `transfer_idle_max`.
    TransferIdle,
    /// As primary: the transfer window has room, so the turn this timer makes cuts more
    /// chunks (at its end, as every turn does).
    TransferMore,
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
    /// Peer messages refused by a check (malformed, another identity, out of bounds).
    pub refused: u64,
    /// Client requests dropped unanswered because the pending bounds were reached.
    pub requests_shed: u64,
    /// Client requests held while the unacknowledged log was full (backpressure).
    pub requests_held: u64,
    /// Writes and OpenSessions answered `ErrFull`.
    pub full: u64,
    /// Transfers abandoned by this server as backup (no chunk for `transfer_idle_max`).
    pub transfers_abandoned: u64,
    /// Client operations decided by this server, by kind and outcome.
    pub ops: OpCounts,
}

/// A client operation's kind, as the operation counters name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// A Get.
    Get,
    /// A Put.
    Put,
    /// A PutHash.
    PutHash,
    /// A Delete.
    Delete,
}

impl OpKind {
    /// Every kind, in counter order.
    pub const ALL: [OpKind; 4] = [OpKind::Get, OpKind::Put, OpKind::PutHash, OpKind::Delete];

    /// The kind's name in metrics (`get`, `put`, `puthash`, `del`).
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Get => "get",
            OpKind::Put => "put",
            OpKind::PutHash => "puthash",
            OpKind::Delete => "del",
        }
    }

    /// The kind of a write request.
    pub fn of(kind: proto::kv::PutKind) -> OpKind {
        match kind {
            proto::kv::PutKind::Put => OpKind::Put,
            proto::kv::PutKind::PutHash => OpKind::PutHash,
            proto::kv::PutKind::Delete => OpKind::Delete,
        }
    }
}

/// Client operations by kind and outcome, counted when the answer is decided (a request
/// shed unanswered is not counted here but in `requests_shed`). `Ok` and `ErrNoKey` are
/// successes (the operation ran); every other status is an error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounts {
    counts: [[u64; 2]; 4],
}

impl OpCounts {
    /// Counts one operation of `kind` answered `status`.
    pub fn count(&mut self, kind: OpKind, status: proto::kv::Status) {
        let ok = matches!(status, proto::kv::Status::Ok | proto::kv::Status::ErrNoKey);
        self.counts[kind as usize][usize::from(!ok)] += 1;
    }

    /// Operations of `kind` that succeeded (`ok`) or failed.
    pub fn get(&self, kind: OpKind, ok: bool) -> u64 {
        self.counts[kind as usize][usize::from(!ok)]
    }
}

/// Distributions for the metrics, kept as primary: latency from taking a request to
/// sending its reply, per kind (nanoseconds), and entries per forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meters {
    /// Latency per [`OpKind`] (indexed by `kind as usize`), of replies sent after commit.
    pub latency: [Histogram; 4],
    /// Entries per forward sent to the backup.
    pub forward_batches: Histogram,
}

impl Default for Meters {
    fn default() -> Meters {
        Meters {
            latency: [Histogram::latency(); 4],
            forward_batches: Histogram::batch(),
        }
    }
}

/// What this server is in the view it adopted, with the state only that standing has.
#[derive(Debug)]
enum Standing {
    /// Neither a serving primary nor the backup: a named primary that may not serve, an
    /// idle server, or a server that refuses service.
    Idle,
    /// Serving as primary of the view (boxed: it is much larger than the others).
    Primary(Box<Primary>),
    /// The view's backup.
    Backup(Backup),
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
    standing: Standing,
    /// Highest index known committed.
    committed: u64,
    /// This node's links that completed their handshake and have not broken.
    links_up: BTreeSet<Dest>,
    /// Refusal warnings, rate-limited.
    warnings: Warnings,
    stats: ReplicaStats,
    meters: Meters,
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
            standing: Standing::Idle,
            committed: 0,
            links_up: BTreeSet::new(),
            warnings: Warnings::default(),
            stats: ReplicaStats::default(),
            meters: Meters::default(),
        }
    }

    /// The adopted view.
    pub fn view(&self) -> View {
        self.view
    }

    /// Whether this server may serve as primary of its view.
    pub fn serving(&self) -> bool {
        matches!(self.standing, Standing::Primary(_))
    }

    /// The view in which this server, as backup, completed a transfer from that view's
    /// primary, if it did (it is always the current view: adopting another clears it).
    pub fn synced_view(&self) -> Option<u64> {
        match &self.standing {
            Standing::Backup(backup) if backup.synced => Some(self.view.viewnum),
            _ => None,
        }
    }

    /// As primary: whether the view's backup installed this primary's snapshot.
    pub fn backup_synced(&self) -> bool {
        match &self.standing {
            Standing::Primary(primary) => primary.backup_synced,
            _ => false,
        }
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

    /// Latency and forward-batch distributions, kept as primary.
    pub fn meters(&self) -> &Meters {
        &self.meters
    }

    /// As serving primary with a synced backup: entries assigned that the backup has not
    /// acknowledged yet. `None` otherwise.
    pub fn backup_lag(&self) -> Option<u64> {
        let Standing::Primary(primary) = &self.standing else {
            return None;
        };
        (self.view.backup.is_some() && primary.backup_synced)
            .then(|| self.state.applied.saturating_sub(primary.backup_acked))
    }

    /// What its adopted view names it: `primary`, `backup` or `idle`.
    pub fn standing_name(&self) -> &'static str {
        let me = Some(self.me);
        if self.view.primary == me {
            "primary"
        } else if self.view.backup == me {
            "backup"
        } else {
            "idle"
        }
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
        let primary = match &self.standing {
            Standing::Primary(primary) => Some(primary.as_ref()),
            _ => None,
        };
        let receiving = match &self.standing {
            Standing::Backup(backup) => backup.receiving.as_ref(),
            _ => None,
        };
        serde_json::json!({
            "role": self.standing_name(),
            "addr": self.me.addr.to_string(),
            "incarnation": self.me.incarnation.to_string(),
            "view": crate::view_json(&self.view),
            "may_serve": self.serving(),
            "synced_view": self.synced_view(),
            "refused": self.refused,
            "applied": self.state.applied,
            "committed": self.committed,
            "forwards_in_flight": primary.map_or(0, |p| p.in_flight.len()),
            "backup_synced": self.backup_synced(),
            "keys": self.state.store.len(),
            "sessions": self.state.sessions.len(),
            "waiting_replies": primary.map_or(0, Primary::waiting_count),
            "transfer": primary.and_then(|p| p.transfer.as_ref()).map(transfer::Transfer::info),
            "receiving": receiving.map(transfer::Receiving::info),
            "stats": {
                "promotions": self.stats.promotions,
                "transfers_installed": self.stats.transfers_installed,
                "transfers_restarted": self.stats.transfers_restarted,
                "dedup_hits": self.stats.dedup_hits,
                "forwards_rejected": self.stats.forwards_rejected,
                "views_from_peers": self.stats.views_from_peers,
                "sessions_expired": self.stats.sessions_expired,
                "promotions_refused": self.stats.promotions_refused,
                "refused": self.stats.refused,
                "requests_shed": self.stats.requests_shed,
                "requests_held": self.stats.requests_held,
                "full": self.stats.full,
                "transfers_abandoned": self.stats.transfers_abandoned,
            },
            "state_bytes": self.state.len(),
        })
    }

    fn backup_dest(&self) -> Option<Dest> {
        self.view.backup.map(|backup| Dest::from(backup.addr))
    }

    /// R19: a serving primary with no backup pings four times as often, so it learns a
    /// view that adds a backup (made at that server's first ping) within a quarter
    /// interval and the state transfer starts sooner. A ping only acknowledges the view it
    /// names, so pinging more often changes nothing but when a view is learnt.
    fn ping_interval(&self) -> Duration {
        let interval = self.config.timing.ping_interval;
        if self.serving() && self.view.backup.is_none() {
            interval / ALONE_PING_DIVISOR
        } else {
            interval
        }
    }

    fn send_ping(&self, ctx: &mut Ctx<ReplicaTimer>) {
        let ping = PingRequest {
            server: self.me.addr,
            incarnation: self.me.incarnation,
            viewnum: self.view.viewnum,
        };
        // Every view-service node hears every ping, so whichever is the leader (or records
        // the acknowledgement) has it (V17).
        for index in 0..self.config.view_services.len() {
            ctx.send(self.config.view_services[index], ping);
        }
    }

    /// Refuses a peer's message: logged with the reason, counted, never applied.
    fn refuse(&mut self, now: MonoTime, origin: &Origin, what: MessageType, why: &str) {
        self.stats.refused += 1;
        let addr = origin
            .addr
            .map_or("no address".to_string(), |addr| addr.to_string());
        let line = format!(
            "replica: refused {what} from {} ({addr}, incarnation {}): {why}",
            origin.node, origin.incarnation
        );
        // Rate-limited: a peer's flood of bad messages costs a few lines a second.
        self.warnings.warn("replica-refused", now, &line);
    }

    // ----- Views -----

    /// A view from the view service (a ping's reply, or a GetView reply). Only a reply on
    /// this node's own link to the configured view service counts (the link layer admits
    /// a reply there only for a request of that link, from a peer that proved the cluster
    /// key): it is the only source of views that may make this server refuse service (R9).
    fn on_view_reply(&mut self, ctx: &mut Ctx<ReplicaTimer>, origin: &Origin, view: View) {
        let what = MessageType::PingReply;
        let from_view_service = origin
            .link
            .is_some_and(|link| link.lane == 0 && self.config.view_services.contains(&link.addr));
        if !from_view_service {
            self.refuse(
                ctx.now(),
                origin,
                what,
                "a view reply not from the view service",
            );
            return;
        }
        if let Err(why) = validate::validate_view(&view) {
            self.refuse(ctx.now(), origin, what, &why);
            return;
        }
        self.adopt(ctx, view, false);
    }

    /// Adopts `view` if it is newer; `from_peer` counts views learnt from a peer's message.
    /// A peer's view was checked first (`validate_peer_view`): once this server knows the
    /// view service's incarnation, a peer's view is of that incarnation, so only the view
    /// service's own reply reaches R9. A server that has seen no view yet takes the
    /// incarnation from the first view it is given, its primary's included (a fresh backup
    /// may get its first chunk before its first ping reply).
    fn adopt(&mut self, ctx: &mut Ctx<ReplicaTimer>, view: View, from_peer: bool) {
        match self.service {
            None => self.service = Some(view.service),
            Some(service) if service != view.service => {
                if !from_peer {
                    self.refuse_service(ctx, service, view.service);
                }
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
        // R1, the may-serve rule: first view naming us, or continuity from N−1 as serving
        // primary, or as N−1's synced backup.
        let named = view.is_primary(self.me);
        let continues = previous.viewnum.checked_add(1) == Some(view.viewnum)
            && (self.serving()
                || (previous.is_backup(self.me) && self.synced_view() == Some(previous.viewnum)));
        let may_serve = named && (view.viewnum == 1 || continues);
        self.view = view;
        ctx.event(format!("adopt view {}", crate::view_text(&view)));
        log::info!(
            "adopt view {} (was view {})",
            crate::view_text(&view),
            crate::view_text(&previous)
        );
        if named && !may_serve {
            self.stats.promotions_refused += 1;
            ctx.event("named primary but may not serve: not synced in the previous view");
            log::warn!(
                "refusing to serve as primary of view {}: not synced in view {}",
                crate::view_text(&view),
                crate::view_text(&previous)
            );
        }
        if !may_serve {
            // R2: adopting any other view clears `synced_view` (a new, unsynced backup).
            self.step_down(ctx);
            if view.is_backup(self.me) {
                self.standing = Standing::Backup(Backup::default());
            }
            return;
        }
        let primary = match std::mem::replace(&mut self.standing, Standing::Idle) {
            Standing::Primary(primary) => primary,
            Standing::Idle | Standing::Backup(_) => {
                if view.viewnum > 1 {
                    self.stats.promotions += 1;
                    log::info!(
                        "promoted to primary of view {} (was view {})",
                        crate::view_text(&view),
                        crate::view_text(&previous)
                    );
                }
                // Idle time restarts at promotion, on this server's own clock.
                Box::new(Primary::new(&self.state, ctx.now()))
            }
        };
        self.standing = Standing::Primary(primary);
        self.begin_view_as_primary(ctx);
    }

    fn refuse_service(&mut self, ctx: &mut Ctx<ReplicaTimer>, was: Incarnation, now: Incarnation) {
        if self.refused.is_some() {
            return;
        }
        // The epoch is the embedded view service's incarnation, or the etcd cluster's
        // stored epoch: either way a view of another epoch may name an empty server.
        let why = format!(
            "a view of another epoch ({now}, was {was}): the embedded view service restarted \
             (it keeps no state) or the cluster was made again in etcd, so its views could \
             name an empty server; restart the cluster"
        );
        log::error!("{why}");
        ctx.event(why.clone());
        self.refused = Some(why);
        self.step_down(ctx);
    }

    /// R3: no longer allowed to serve: answer every pending client request with
    /// ErrWrongServer and forget it; stop forwarding and transferring. Whatever standing
    /// this server had is dropped.
    fn step_down(&mut self, ctx: &mut Ctx<ReplicaTimer>) {
        if let Standing::Primary(primary) = std::mem::replace(&mut self.standing, Standing::Idle) {
            for pending in primary.into_pending() {
                ctx.reply(pending.to, wrong_server(&pending.reply));
            }
        }
    }

    fn check(&self) {
        assert!(
            self.committed <= self.state.applied,
            "committed past applied"
        );
        assert!(
            self.state.len() <= self.config.state_bytes_max,
            "state of {} bytes past the bound of {}",
            self.state.len(),
            self.config.state_bytes_max
        );
        debug_assert_eq!(self.state.len(), self.state.counted_len(), "state bytes");
        match &self.standing {
            Standing::Primary(primary) => {
                assert!(
                    self.view.is_primary(self.me),
                    "serving but not the view's primary"
                );
                assert!(self.refused.is_none(), "serving while refusing");
                primary.check(&self.state, &self.config);
            }
            Standing::Backup(_) => {
                assert!(
                    self.view.is_backup(self.me),
                    "backup state but not the view's backup"
                );
            }
            Standing::Idle => {}
        }
    }
}

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
            Message::PingReply(reply) => self.on_view_reply(ctx, origin, reply.view),
            Message::GetViewReply(reply) => self.on_view_reply(ctx, origin, reply.view),
            Message::OpenSessionRequest(request) => {
                self.on_client_request(ctx, origin, ClientRequest::OpenSession(request.nonce))
            }
            Message::GetRequest(request) => {
                self.on_client_request(ctx, origin, ClientRequest::Get(request))
            }
            Message::PutRequest(request) => {
                self.on_client_request(ctx, origin, ClientRequest::Put(request))
            }
            Message::ForwardRequest(request) => self.on_forward(ctx, origin, *request),
            Message::ForwardReply(reply) => self.on_forward_reply(ctx, origin, *reply),
            Message::TransferRequest(request) => self.on_transfer(ctx, origin, *request),
            Message::TransferReply(reply) => self.on_transfer_reply(ctx, origin, *reply),
            Message::InfoRequest(_) => {
                let json = self.info().to_string();
                ctx.reply(origin, InfoReply { json });
            }
            other => log::debug!("replica: ignoring {}", other.message_type()),
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<ReplicaTimer>, timer: ReplicaTimer) {
        match timer {
            ReplicaTimer::Ping => {
                self.send_ping(ctx);
                ctx.set_timer(ReplicaTimer::Ping, self.ping_interval());
            }
            ReplicaTimer::ExpireSessions => self.on_expire_sessions(ctx),
            ReplicaTimer::TransferIdle => self.on_transfer_idle(ctx),
            ReplicaTimer::TransferMore => {}
        }
    }

    fn on_closed(&mut self, _ctx: &mut Ctx<ReplicaTimer>, conn: ConnId) {
        self.on_client_closed(conn);
    }

    fn on_link(&mut self, ctx: &mut Ctx<ReplicaTimer>, to: Dest, link: Link) {
        match link {
            Link::Up => {
                self.links_up.insert(to);
                if self.backup_dest() == Some(to) {
                    // A transfer waits for its link: now the window may fill.
                    self.send_transfer_chunks(ctx);
                }
            }
            Link::Down => {
                self.links_up.remove(&to);
                if self.backup_dest() == Some(to) {
                    self.on_backup_link_down(ctx);
                }
            }
        }
    }

    fn on_turn_end(&mut self, ctx: &mut Ctx<ReplicaTimer>) {
        self.end_turn_as_primary(ctx);
    }

    fn busy(&self) -> bool {
        match &self.standing {
            Standing::Primary(primary) => primary.waiting_count() > 0,
            _ => false,
        }
    }

    fn check_invariants(&self) {
        self.check();
    }
}
