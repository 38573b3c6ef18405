//! The view service's etcd mode: several view-service nodes, one leader at a time, the view
//! and its acknowledgement stored under one key (docs/protocol.md, "View service in etcd").
//!
//! The node is still sans-IO: it asks for store operations through [`Ctx::store`] and
//! gets the results in [`ViewService::on_store_result`]. At most one operation is in flight;
//! pings that arrive meanwhile wait in a queue, in order, and ticks are remembered.
//!
//! Every transaction reads the view key and the election key back in both branches, so
//! each result tells the node the stored view and who leads, and a write whose reply was lost
//! is recognised by the next read, never repeated blindly.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use proto::viewservice::{
    GetViewReply, HeardPing, Member, PING_RELAY_ENTRIES_MAX, PingRelayReply, PingRelayRequest,
    PingReply, PingRequest, View,
};
use proto::{Addr, Incarnation};
use runtime::store::{
    Compare, KeyValue, LeaseId, Revision, StoreOp, StoreResult, Txn, TxnOp, TxnResult,
};
use runtime::{Ctx, MonoTime, Origin, ReplyTo};
use serde::{Deserialize, Serialize};

use super::{ViewService, ViewServiceTimer, check_view};

/// Inputs held while a store operation is in flight, at most.
pub const STORED_QUEUE_MAX: usize = 4096;

/// Views remembered for [`ViewService::answered_views`], at most (the lowest go first).
const ANSWERED_MAX: usize = 4096;

/// How a view-service node uses the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// The cluster's name: its keys are `/pbkv/NAME/view` and `/pbkv/NAME/leader`.
    pub cluster: String,
    /// The election lease's time to live (etcd's minimum applies).
    pub lease_ttl: Duration,
    /// A node whose last successful read is older than this answers nothing.
    pub stale_after: Duration,
    /// This node's address as servers reach it: it goes into the election key, so that
    /// followers can relay the pings they hear to the leader (V20).
    pub advertise: Option<Addr>,
}

impl StoreSettings {
    /// Settings for cluster `cluster` with a 2 s lease and a 1 s staleness bound.
    pub fn new(cluster: &str) -> StoreSettings {
        StoreSettings {
            cluster: cluster.to_string(),
            lease_ttl: Duration::from_secs(2),
            stale_after: Duration::from_secs(1),
            advertise: None,
        }
    }

    /// The key holding the view.
    pub fn view_key(&self) -> Vec<u8> {
        format!("/pbkv/{}/view", self.cluster).into_bytes()
    }

    /// The election key.
    pub fn leader_key(&self) -> Vec<u8> {
        format!("/pbkv/{}/leader", self.cluster).into_bytes()
    }
}

/// A member as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct StoredMember {
    addr: String,
    incarnation: String,
}

/// The view key's value (JSON, readable with `etcdctl get`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredRecord {
    /// The cluster's epoch (hex): made once by `pbkv init`, carried by every view.
    epoch: String,
    viewnum: u64,
    primary: Option<StoredMember>,
    backup: Option<StoredMember>,
    /// Whether the view's primary acknowledged it (V3).
    acked: bool,
}

/// A record read back from the store, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    view: View,
    acked: bool,
    mod_revision: Revision,
}

impl StoredRecord {
    /// View 0 of a new cluster with `epoch` (what `pbkv init` writes).
    pub fn initial(epoch: Incarnation) -> StoredRecord {
        StoredRecord::of(&View::initial(epoch), false)
    }

    /// The record of `view`, acknowledged or not (what a view-service node writes).
    pub fn of_view(view: &View, acked: bool) -> StoredRecord {
        StoredRecord::of(view, acked)
    }

    fn of(view: &View, acked: bool) -> StoredRecord {
        let member = |member: Option<Member>| {
            member.map(|m| StoredMember {
                addr: m.addr.to_string(),
                incarnation: m.incarnation.to_string(),
            })
        };
        StoredRecord {
            epoch: view.service.to_string(),
            viewnum: view.viewnum,
            primary: member(view.primary),
            backup: member(view.backup),
            acked,
        }
    }

    /// The value to store.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads and checks a stored value: a well-formed view (as R13 requires of any view).
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn parse(bytes: &[u8]) -> Result<(View, bool), String> {
        let record: StoredRecord =
            serde_json::from_slice(bytes).map_err(|error| format!("not a view record: {error}"))?;
        let hex = |text: &str, what: &str| {
            u64::from_str_radix(text, 16)
                .map(Incarnation)
                .map_err(|_| format!("{what} {text:?} is not hex"))
        };
        let member = |member: &Option<StoredMember>| -> Result<Option<Member>, String> {
            let Some(member) = member else {
                return Ok(None);
            };
            let addr: Addr = member
                .addr
                .parse()
                .map_err(|_| format!("address {:?} is not ip:port", member.addr))?;
            let incarnation = hex(&member.incarnation, "incarnation")?;
            Ok(Some(Member { addr, incarnation }))
        };
        let view = View {
            viewnum: record.viewnum,
            primary: member(&record.primary)?,
            backup: member(&record.backup)?,
            service: hex(&record.epoch, "epoch")?,
        };
        let well_formed = if view.viewnum == 0 {
            view.primary.is_none() && view.backup.is_none()
        } else {
            view.primary.is_some()
                && view.viewnum < u64::MAX
                && view.backup.map(|b| b.addr) != view.primary.map(|p| p.addr)
        };
        if !well_formed {
            return Err(format!("view {} is malformed", view.viewnum));
        }
        Ok((view, record.acked))
    }
}

/// The election lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lease {
    /// None held: grant one.
    None,
    /// Held; `renewed_at` is when the operation that last granted or refreshed it was
    /// sent, so the lease lives at least until `renewed_at + ttl`.
    Held {
        id: LeaseId,
        ttl: Duration,
        renewed_at: MonoTime,
    },
    /// To revoke (after losing leadership), retried until done.
    Revoke(LeaseId),
}

/// What the operation in flight is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Grant,
    KeepAlive,
    Revoke,
    /// A read, which is also a campaign when `campaign` (create the election key if absent).
    Read {
        campaign: bool,
    },
    /// Record that view `viewnum` is acknowledged.
    Ack {
        viewnum: u64,
    },
    /// Make this view.
    Change {
        view: View,
    },
}

#[derive(Debug, Clone, Copy)]
struct Inflight {
    id: u64,
    kind: OpKind,
    issued: MonoTime,
}

/// A ping that arrived while an operation was in flight.
#[derive(Debug, Clone, Copy)]
struct Queued {
    origin_ping: PingRequest,
    reply: ReplyTo,
    at: MonoTime,
}

/// The etcd mode's state.
#[derive(Debug)]
pub(super) struct Stored {
    settings: StoreSettings,
    view_key: Vec<u8>,
    leader_key: Vec<u8>,
    /// This node's election value: its node id and incarnation.
    me: Vec<u8>,
    /// The last record read back; `None` before the first read, or when the key is missing
    /// or malformed.
    record: Option<Record>,
    /// When the operation whose result gave `record` was sent (its freshness).
    read_at: Option<MonoTime>,
    lease: Lease,
    /// The election key's create revision while this node leads.
    leader: Option<Revision>,
    /// The leader's address, from the election key (where to relay pings).
    leader_addr: Option<Addr>,
    /// When pings are next relayed to the leader.
    next_relay: MonoTime,
    inflight: Option<Inflight>,
    queue: VecDeque<Queued>,
    tick_pending: bool,
    /// Ping replies waiting for the write the ping triggered.
    held: Vec<ReplyTo>,
    /// A view whose acknowledgement this node heard (its primary pinged its number) and
    /// has not seen stored.
    ack_seen: Option<View>,
    /// No server is declared dead before this (a takeover, or a stall).
    grace_until: MonoTime,
    /// The last time a handler ran (a longer gap than a ping interval is a stall).
    last_seen: Option<MonoTime>,
    next_read: MonoTime,
    /// After a failed operation, the next waits until then.
    retry_at: MonoTime,
    /// After a failed lease operation, the next lease operation waits until then (reads
    /// and acknowledgements go on meanwhile).
    lease_retry_at: MonoTime,
    /// Every view answered with, by number.
    pub(super) answered: BTreeMap<u64, View>,
    store_failures: u64,
    /// Answers with a view other than one answered before under its number (never, unless
    /// the store went back).
    answer_conflicts: u64,
    leaderships: u64,
    failed_writes: u64,
    /// The latencies of the last view-change transactions this node made (microseconds,
    /// newest last, at most [`CHANGE_LATENCIES_KEPT`]).
    change_latencies_us: VecDeque<u64>,
    /// A clean stop has begun (V21): nothing is decided, granted or campaigned for; the
    /// lease is revoked, and the node is busy until that is done.
    stopping: bool,
}

/// View-change latencies `pbkv info` shows, at most.
const CHANGE_LATENCIES_KEPT: usize = 64;

impl Stored {
    pub(super) fn new(settings: StoreSettings) -> Stored {
        Stored {
            view_key: settings.view_key(),
            leader_key: settings.leader_key(),
            settings,
            me: Vec::new(),
            record: None,
            read_at: None,
            lease: Lease::None,
            leader: None,
            leader_addr: None,
            next_relay: MonoTime(0),
            inflight: None,
            queue: VecDeque::new(),
            tick_pending: false,
            held: Vec::new(),
            ack_seen: None,
            grace_until: MonoTime(0),
            last_seen: None,
            next_read: MonoTime(0),
            retry_at: MonoTime(0),
            lease_retry_at: MonoTime(0),
            answered: BTreeMap::new(),
            store_failures: 0,
            answer_conflicts: 0,
            leaderships: 0,
            failed_writes: 0,
            change_latencies_us: VecDeque::new(),
            stopping: false,
        }
    }

    /// Whether a clean stop waits for this node: an operation in flight, or its lease not
    /// yet revoked.
    pub(super) fn busy(&self) -> bool {
        self.stopping && (self.inflight.is_some() || matches!(self.lease, Lease::Revoke(_)))
    }

    pub(super) fn acked(&self) -> bool {
        self.record.is_some_and(|record| record.acked)
    }

    pub(super) fn is_leader(&self) -> bool {
        self.leader.is_some()
    }

    /// Whether the lease is surely still alive at `now`: a leader that cannot tell stops
    /// deciding (its writes would fail anyway: they are conditioned on its election key).
    fn leads(&self, now: MonoTime) -> bool {
        let lease_alive = match self.lease {
            Lease::Held {
                ttl, renewed_at, ..
            } => now < renewed_at.plus(ttl),
            _ => false,
        };
        self.leader.is_some() && lease_alive
    }

    fn fresh(&self, now: MonoTime) -> Option<Record> {
        let read_at = self.read_at?;
        let record = self.record?;
        (now.since(read_at) < self.settings.stale_after).then_some(record)
    }

    pub(super) fn info(&self) -> serde_json::Value {
        serde_json::json!({
            "cluster": self.settings.cluster,
            "leader": self.leader.is_some(),
            "stored_view_read": self.record.is_some(),
            "leaderships": self.leaderships,
            "store_failures": self.store_failures,
            "answer_conflicts": self.answer_conflicts,
            "failed_writes": self.failed_writes,
            "queued": self.queue.len(),
            "view_change_txn_us": self.change_latencies_us,
        })
    }

    pub(super) fn check(&self) {
        assert!(
            self.queue.len() <= STORED_QUEUE_MAX,
            "the input queue is bounded"
        );
        assert!(
            self.held.len() <= STORED_QUEUE_MAX,
            "held replies are bounded"
        );
        if let Some(record) = &self.record {
            check_view(&record.view);
        }
    }

    fn txn(&self, compare: Vec<Compare>, write: Option<TxnOp>) -> StoreOp {
        let reads = vec![
            TxnOp::Get {
                key: self.view_key.clone(),
            },
            TxnOp::Get {
                key: self.leader_key.clone(),
            },
        ];
        let success = write.into_iter().chain(reads.clone()).collect();
        StoreOp::Txn(Txn {
            compare,
            success,
            failure: reads,
        })
    }
}

impl ViewService {
    fn stored_mut(&mut self) -> &mut Stored {
        self.stored
            .as_deref_mut()
            .expect("called only in the etcd mode")
    }

    pub(super) fn on_stored_start(&mut self, ctx: &mut Ctx<ViewServiceTimer>) {
        let advertise = self.stored_mut().settings.advertise;
        let me = serde_json::json!({
            "node": ctx.node().as_str(),
            "incarnation": ctx.incarnation().to_string(),
            "addr": advertise.map(|addr| addr.to_string()),
        })
        .to_string()
        .into_bytes();
        let now = ctx.now();
        let stored = self.stored_mut();
        stored.me = me;
        stored.last_seen = Some(now);
        log::info!(
            "viewservice: etcd mode, cluster {:?}: answering nothing until the view is read",
            stored.settings.cluster
        );
        self.pump(ctx);
        ctx.set_timer(ViewServiceTimer::Tick, self.tick_interval());
    }

    /// Ticks come twice per ping interval, so that a gap of one ping interval between two
    /// handler calls is surely a stall of the loop.
    fn tick_interval(&self) -> Duration {
        self.timing.ping_interval / 2
    }

    /// Notes that a handler runs at `now`. After a gap longer than one ping interval (the
    /// process was stopped, or the machine stalled) every ping record moves later by the
    /// gap: silence is counted only over time the loop ran, so each server gets its dead time
    /// again and pings slept through never count against a healthy one (V17). Pending input
    /// is read before any timer in a turn, so the pings that did arrive count first.
    fn observe(&mut self, now: MonoTime) {
        let interval = self.timing.ping_interval;
        let stored = self.stored_mut();
        let gap = stored.last_seen.map(|last| now.since(last));
        stored.last_seen = Some(now);
        let Some(gap) = gap.filter(|gap| *gap > interval) else {
            return;
        };
        if stored.leader.is_some() {
            log::info!(
                "viewservice: the loop stalled for {gap:?}; silence during it does not count"
            );
        }
        self.servers.shift(gap, now);
    }

    pub(super) fn on_stored_tick(&mut self, ctx: &mut Ctx<ViewServiceTimer>) {
        self.observe(ctx.now());
        ctx.set_timer(ViewServiceTimer::Tick, self.tick_interval());
        // Relaying needs no store: it is never held up by an operation in flight.
        self.relay_pings(ctx);
        if self.stored_mut().inflight.is_some() {
            self.stored_mut().tick_pending = true;
            return;
        }
        self.stored_tick_now(ctx);
    }

    fn stored_tick_now(&mut self, ctx: &mut Ctx<ViewServiceTimer>) {
        let now = ctx.now();
        let view = self.view;
        self.servers.forget_dead_idle(&self.timing, &view, now);
        self.pump(ctx);
    }

    /// A follower tells the leader, once per ping interval, which servers it heard within a
    /// dead time: a server whose pings reach only followers is alive to the leader too (V20).
    fn relay_pings(&mut self, ctx: &mut Ctx<ViewServiceTimer>) {
        let now = ctx.now();
        let interval = self.timing.ping_interval;
        let dead_after = self.timing.dead_after();
        let stored = self.stored_mut();
        let (Some(leader), None) = (stored.leader_addr, stored.leader) else {
            return;
        };
        if now < stored.next_relay || Some(leader) == stored.settings.advertise {
            return;
        }
        stored.next_relay = now.plus(interval);
        let heard: Vec<HeardPing> = self
            .servers
            .map
            .iter()
            .filter(|(_, state)| now.since(state.last_ping) < dead_after)
            .take(PING_RELAY_ENTRIES_MAX)
            .map(|(addr, state)| HeardPing {
                server: Member {
                    addr: *addr,
                    incarnation: state.incarnation,
                },
                age_ms: u32::try_from(now.since(state.last_ping).as_millis()).unwrap_or(u32::MAX),
            })
            .collect();
        if !heard.is_empty() {
            ctx.send(leader, PingRelayRequest { heard });
        }
    }

    /// A relay from another view-service node (a cluster member, as the link layer checked):
    /// each server it heard counts as heard then, unless this node heard it later itself.
    /// Another incarnation heard later than this node's record is a restart (V5, V20).
    pub(super) fn on_ping_relay(
        &mut self,
        ctx: &mut Ctx<ViewServiceTimer>,
        origin: &Origin,
        relay: PingRelayRequest,
    ) {
        let now = ctx.now();
        self.observe(now);
        let dead_after = self.timing.dead_after();
        for heard in relay.heard {
            let age = Duration::from_millis(u64::from(heard.age_ms));
            if age >= dead_after {
                continue;
            }
            let at = MonoTime(
                now.0
                    .saturating_sub(u64::try_from(age.as_nanos()).unwrap_or(0)),
            );
            self.servers.heard_from_relay(heard.server, at);
        }
        ctx.reply(origin, PingRelayReply {});
    }

    pub(super) fn on_stored_get_view(&mut self, ctx: &mut Ctx<ViewServiceTimer>, origin: &Origin) {
        self.observe(ctx.now());
        // Only a view read back from the store, and recently (V12, V13).
        if let Some(record) = self.stored_mut().fresh(ctx.now()) {
            self.answer(ctx, origin.reply_to(), record.view, false);
        }
    }

    fn answer(&mut self, ctx: &mut Ctx<ViewServiceTimer>, to: ReplyTo, view: View, ping: bool) {
        let stored = self.stored_mut();
        if let Some(earlier) = stored.answered.insert(view.viewnum, view)
            && earlier != view
        {
            stored.answer_conflicts += 1;
        }
        if stored.answered.len() > ANSWERED_MAX {
            stored.answered.pop_first();
        }
        if ping {
            ctx.reply(to, PingReply { view });
        } else {
            ctx.reply(to, GetViewReply { view });
        }
    }

    pub(super) fn on_stored_ping(
        &mut self,
        ctx: &mut Ctx<ViewServiceTimer>,
        origin: &Origin,
        ping: PingRequest,
    ) {
        let now = ctx.now();
        self.observe(now);
        let stored = self.stored_mut();
        if stored.inflight.is_some() {
            // One store operation at a time: the ping waits its turn, in order (V14).
            if stored.queue.len() >= STORED_QUEUE_MAX {
                stored.queue.pop_front(); // Its sender pings again next interval.
            }
            stored.queue.push_back(Queued {
                origin_ping: ping,
                reply: origin.reply_to(),
                at: now,
            });
            return;
        }
        self.stored_ping_now(ctx, origin, ping, now);
    }

    /// Handles a ping with no store operation in flight. `at` is when it arrived.
    fn stored_ping_now(
        &mut self,
        ctx: &mut Ctx<ViewServiceTimer>,
        origin: &Origin,
        ping: PingRequest,
        at: MonoTime,
    ) {
        let restarted = self.absorb_ping(ctx, &ping, at);
        self.decide_and_answer(ctx, restarted, &[origin.reply_to()]);
    }

    /// Records a ping against the stored view: the server's ping state, and an
    /// acknowledgement heard (V15). Returns the member it shows restarted (V5), if any.
    fn absorb_ping(
        &mut self,
        ctx: &mut Ctx<ViewServiceTimer>,
        ping: &PingRequest,
        at: MonoTime,
    ) -> Option<Addr> {
        let member = Member {
            addr: ping.server,
            incarnation: ping.incarnation,
        };
        let record = self.stored_mut().record;
        let view = record.map_or(View::initial(Incarnation(0)), |r| r.view);
        let zero_restart = self.servers.record_ping(&view, ping, at);
        if zero_restart {
            ctx.event(format!("server {} restarted (pinged 0)", ping.server));
        }
        // The ack is a fact: whichever node hears it records it (V15).
        if let Some(record) = record
            && record.view.viewnum > 0
            && !record.acked
            && record.view.is_primary(member)
            && ping.viewnum == record.view.viewnum
        {
            self.stored_mut().ack_seen = Some(record.view);
        }
        zero_restart.then_some(ping.server)
    }

    /// After pings were recorded: the next store operation (a Ping(0) restart is acted on
    /// now, by at most one view change, or not at all), then the pings' replies: held for
    /// the write they triggered, else the fresh stored view, else none (V12).
    fn decide_and_answer(
        &mut self,
        ctx: &mut Ctx<ViewServiceTimer>,
        restarted: Option<Addr>,
        replies: &[ReplyTo],
    ) {
        self.pump_with(ctx, restarted);
        let now = ctx.now();
        let stored = self.stored_mut();
        let writing = stored
            .inflight
            .is_some_and(|op| matches!(op.kind, OpKind::Ack { .. } | OpKind::Change { .. }));
        if writing {
            // The replies wait for the write (V12).
            for to in replies {
                if stored.held.len() < STORED_QUEUE_MAX {
                    stored.held.push(*to);
                }
            }
            return;
        }
        let Some(record) = stored.fresh(now) else {
            return; // Nothing read lately, or no cluster: no answer (V12, V13).
        };
        for to in replies {
            self.answer(ctx, *to, record.view, true);
        }
    }

    fn pump(&mut self, ctx: &mut Ctx<ViewServiceTimer>) {
        self.pump_with(ctx, None);
    }

    /// Sends the next store operation, if none is in flight: lease upkeep first, then a
    /// recorded acknowledgement, then (as leader) a view change, then a read.
    fn pump_with(&mut self, ctx: &mut Ctx<ViewServiceTimer>, restarted: Option<Addr>) {
        let now = ctx.now();
        let proposal = self.proposal(now, restarted);
        let read_interval = self.tick_interval();
        let stored = self.stored_mut();
        if stored.inflight.is_some() {
            return;
        }
        if stored.stopping {
            // V21: only the revoke goes out, retried until it is done.
            let Lease::Revoke(lease) = stored.lease else {
                return;
            };
            if now < stored.lease_retry_at {
                return;
            }
            self.issue(ctx, OpKind::Revoke, StoreOp::LeaseRevoke { lease });
            return;
        }
        if now < stored.retry_at {
            return;
        }
        let lease_op = match stored.lease {
            _ if now < stored.lease_retry_at => None,
            Lease::Revoke(lease) => Some((OpKind::Revoke, StoreOp::LeaseRevoke { lease })),
            Lease::None => {
                let ttl = stored.settings.lease_ttl;
                Some((OpKind::Grant, StoreOp::LeaseGrant { ttl }))
            }
            Lease::Held {
                id,
                ttl,
                renewed_at,
            } if now >= renewed_at.plus(ttl / 3) => {
                Some((OpKind::KeepAlive, StoreOp::LeaseKeepAlive { lease: id }))
            }
            Lease::Held { .. } => None,
        };
        let held_lease = match stored.lease {
            Lease::Held { id, .. } => Some(id),
            _ => None,
        };
        // Reads and acknowledgements need no lease: they go on while one is being granted.
        let ack = stored
            .record
            .filter(|r| !r.acked && stored.ack_seen == Some(r.view));
        let (kind, op) = if let Some(lease_op) = lease_op {
            lease_op
        } else if let Some(record) = ack {
            let value = StoredRecord::of(&record.view, true).to_bytes();
            let write = TxnOp::Put {
                key: stored.view_key.clone(),
                value,
                lease: 0,
            };
            let compare = vec![Compare::ModRevision {
                key: stored.view_key.clone(),
                revision: record.mod_revision,
            }];
            let viewnum = record.view.viewnum;
            (OpKind::Ack { viewnum }, stored.txn(compare, Some(write)))
        } else if let (Some(view), Some(record), Some(revision)) =
            (proposal, stored.record, stored.leader)
        {
            // Conditioned on the stored view (acknowledged, as read) and on this node's own
            // election key: a deposed leader's write fails (V11).
            let write = TxnOp::Put {
                key: stored.view_key.clone(),
                value: StoredRecord::of(&view, false).to_bytes(),
                lease: 0,
            };
            let compare = vec![
                Compare::ModRevision {
                    key: stored.view_key.clone(),
                    revision: record.mod_revision,
                },
                Compare::CreateRevision {
                    key: stored.leader_key.clone(),
                    revision,
                },
            ];
            (OpKind::Change { view }, stored.txn(compare, Some(write)))
        } else if now >= stored.next_read {
            stored.next_read = now.plus(read_interval);
            match held_lease {
                Some(lease) if stored.leader.is_none() => {
                    // A campaign: create the election key under this node's lease if no one
                    // holds it. It reads the view either way.
                    let write = TxnOp::Put {
                        key: stored.leader_key.clone(),
                        value: stored.me.clone(),
                        lease,
                    };
                    let compare = vec![Compare::CreateRevision {
                        key: stored.leader_key.clone(),
                        revision: 0,
                    }];
                    (
                        OpKind::Read { campaign: true },
                        stored.txn(compare, Some(write)),
                    )
                }
                _ => (
                    OpKind::Read { campaign: false },
                    stored.txn(Vec::new(), None),
                ),
            }
        } else {
            return;
        };
        self.issue(ctx, kind, op);
    }

    /// Sends `op` to the store as the one operation in flight.
    fn issue(&mut self, ctx: &mut Ctx<ViewServiceTimer>, kind: OpKind, op: StoreOp) {
        let issued = ctx.now();
        let id = ctx.store(op);
        self.stored_mut().inflight = Some(Inflight { id, kind, issued });
    }

    /// The view this node, as leader, would make now, if any: from a fresh, acknowledged
    /// view (or view 0), and outside a grace period no member is declared dead.
    fn proposal(&self, now: MonoTime, restarted: Option<Addr>) -> Option<View> {
        let stored = self.stored.as_deref()?;
        if !stored.leads(now) {
            return None;
        }
        let record = stored.fresh(now)?;
        let view = record.view;
        let (primary, backup) = if view.viewnum == 0 {
            // V2: the first view takes any live server as primary.
            (Some(self.servers.any_alive(&self.timing, now)?), None)
        } else {
            if !record.acked {
                return None; // The ack rule, as stored (V3, V15).
            }
            let grace = now < stored.grace_until;
            self.servers
                .decide(&self.timing, &view, now, restarted, grace)?
        };
        Some(View {
            viewnum: view.viewnum + 1,
            primary,
            backup,
            service: view.service,
        })
    }

    pub(super) fn on_store_result(
        &mut self,
        ctx: &mut Ctx<ViewServiceTimer>,
        id: u64,
        result: StoreResult,
    ) {
        if self.stored.is_none() {
            return;
        }
        let now = ctx.now();
        let read_interval = self.tick_interval();
        self.observe(now);
        let Some(inflight) = self.stored_mut().inflight.filter(|op| op.id == id) else {
            return; // Not the operation in flight: a driver's mistake, ignored.
        };
        self.stored_mut().inflight = None;
        let took = now.since(inflight.issued);
        if took > self.timing.ping_interval {
            let line = format!(
                "viewservice: a store operation ({:?}) took {took:?}, over a ping interval",
                inflight.kind
            );
            self.warnings.warn("viewservice-slow-store", now, &line);
        }
        match result {
            StoreResult::Txn(txn) => self.on_txn(ctx, inflight, txn),
            StoreResult::LeaseGranted { lease, .. } if self.stored_mut().stopping => {
                // Granted as the stop began: given back at once.
                self.stored_mut().lease = Lease::Revoke(lease);
            }
            StoreResult::LeaseGranted { lease, ttl } => {
                self.stored_mut().lease = Lease::Held {
                    id: lease,
                    ttl,
                    renewed_at: inflight.issued,
                };
            }
            StoreResult::LeaseKeptAlive { ttl } => {
                let stored = self.stored_mut();
                match stored.lease {
                    Lease::Held { id, .. } if !ttl.is_zero() => {
                        stored.lease = Lease::Held {
                            id,
                            ttl,
                            renewed_at: inflight.issued,
                        };
                    }
                    Lease::Held { .. } => {
                        stored.lease = Lease::None;
                        self.lose_leadership(ctx, "its lease expired");
                    }
                    _ => {}
                }
            }
            StoreResult::LeaseRevoked => {
                let stored = self.stored_mut();
                if matches!(stored.lease, Lease::Revoke(_)) {
                    stored.lease = Lease::None;
                    if stored.stopping {
                        ctx.event("revoked the election lease: stopped");
                        log::info!("viewservice: election lease revoked; another node may lead");
                    }
                }
            }
            StoreResult::Failed { reason } => {
                let stored = self.stored_mut();
                stored.store_failures += 1;
                if matches!(
                    inflight.kind,
                    OpKind::Grant | OpKind::KeepAlive | OpKind::Revoke
                ) {
                    stored.lease_retry_at = now.plus(read_interval);
                } else {
                    stored.retry_at = now.plus(read_interval);
                }
                let what = match inflight.kind {
                    OpKind::Change { view } => {
                        stored.failed_writes += 1;
                        format!("view {} (outcome unknown; read back next)", view.viewnum)
                    }
                    OpKind::Ack { viewnum } => {
                        stored.failed_writes += 1;
                        format!("ack of view {viewnum} (outcome unknown; read back next)")
                    }
                    other => format!("{other:?}"),
                };
                let line = format!("viewservice: store operation failed: {what}: {reason}");
                self.warnings.warn("viewservice-store", now, &line);
                // A failed read of the lease's renewal leaves it as it was: `leads` stops
                // deciding once its TTL may have run out.
            }
        }
        self.after_store(ctx);
    }

    /// A clean stop (V21): a leader steps down, and whatever lease the node holds is
    /// revoked, which deletes its election key in etcd, so another node's campaign wins
    /// within a read interval instead of after the lease's TTL.
    pub(super) fn on_stored_stop(&mut self, ctx: &mut Ctx<ViewServiceTimer>) {
        let stored = self.stored_mut();
        // Held and queued pings stay: they are answered once the operation in flight is
        // back (V12), which the stop waits for.
        stored.stopping = true;
        let led = stored.leader.take().is_some();
        stored.leader_addr = None;
        if let Lease::Held { id, .. } = stored.lease {
            stored.lease = Lease::Revoke(id);
            stored.lease_retry_at = MonoTime(0);
        }
        if led {
            ctx.event("stopping: stepped down as view-service leader");
            log::info!("viewservice: stopping; stepping down and revoking the election lease");
        }
        self.pump(ctx);
    }

    fn lose_leadership(&mut self, ctx: &mut Ctx<ViewServiceTimer>, why: &str) {
        let stored = self.stored_mut();
        if stored.leader.take().is_none() {
            return;
        }
        if let Lease::Held { id, .. } = stored.lease {
            stored.lease = Lease::Revoke(id);
        }
        ctx.event(format!("lost the view-service leadership: {why}"));
        log::warn!("viewservice: lost the leadership ({why}); campaigning again");
    }

    fn on_txn(&mut self, ctx: &mut Ctx<ViewServiceTimer>, inflight: Inflight, txn: TxnResult) {
        let now = ctx.now();
        let [view_kv, leader_kv] = txn.gets.as_slice() else {
            let line = "viewservice: a store transaction returned an unexpected result";
            self.warnings.warn("viewservice-store", now, line);
            return;
        };
        let (view_kv, leader_kv) = (view_kv.clone(), leader_kv.clone());
        self.learn_leader(ctx, leader_kv.as_ref());
        self.learn_view(ctx, view_kv.as_ref(), inflight.issued);
        match inflight.kind {
            OpKind::Change { view } if txn.succeeded => {
                self.view_changes += 1;
                let took = now.since(inflight.issued).as_micros();
                let stored = self.stored_mut();
                stored
                    .change_latencies_us
                    .push_back(u64::try_from(took).unwrap_or(u64::MAX));
                if stored.change_latencies_us.len() > CHANGE_LATENCIES_KEPT {
                    stored.change_latencies_us.pop_front();
                }
                ctx.event(format!("view {}", crate::view_text(&view)));
            }
            OpKind::Change { view } => {
                self.stored_mut().failed_writes += 1;
                ctx.event(format!("view {} refused by the store", view.viewnum));
                log::warn!(
                    "viewservice: the store refused view {} (the view moved or this node no \
                     longer leads); adopting what is stored",
                    crate::view_text(&view)
                );
            }
            OpKind::Ack { viewnum } if txn.succeeded => {
                ctx.event(format!("view {viewnum} acknowledged"));
            }
            _ => {}
        }
    }

    fn learn_leader(&mut self, ctx: &mut Ctx<ViewServiceTimer>, leader: Option<&KeyValue>) {
        let now = ctx.now();
        let dead_after = self.timing.dead_after();
        let stored = self.stored_mut();
        let lease = match stored.lease {
            Lease::Held { id, .. } => Some(id),
            _ => None,
        };
        let mine = leader.filter(|kv| Some(kv.lease) == lease && kv.value == stored.me);
        stored.leader_addr = leader.and_then(|kv| leader_addr(&kv.value));
        match (stored.leader, mine) {
            (None, Some(kv)) => {
                // The takeover: ping records older than one dead time go, and no server is
                // declared dead for one dead time (V16).
                stored.leader = Some(kv.create_revision);
                stored.leaderships += 1;
                stored.grace_until = stored.grace_until.max(now.plus(dead_after));
                self.servers
                    .map
                    .retain(|_, state| now.since(state.last_ping) < dead_after);
                ctx.event("became the view-service leader");
                log::info!("viewservice: became the leader");
            }
            (Some(revision), Some(kv)) if kv.create_revision == revision => {}
            (Some(_), _) => self.lose_leadership(ctx, "its election key is gone or another's"),
            (None, None) => {}
        }
    }

    fn learn_view(
        &mut self,
        ctx: &mut Ctx<ViewServiceTimer>,
        kv: Option<&KeyValue>,
        issued: MonoTime,
    ) {
        let now = ctx.now();
        let cluster = self.stored_mut().settings.cluster.clone();
        let Some(kv) = kv else {
            let stored = self.stored_mut();
            stored.record = None;
            stored.read_at = Some(issued);
            let line = format!(
                "viewservice: no cluster {cluster:?} in etcd (run `pbkv init --cluster \
                 {cluster}`); answering nothing"
            );
            self.warnings.warn("viewservice-missing", now, &line);
            return;
        };
        let (view, acked) = match StoredRecord::parse(&kv.value) {
            Ok(parsed) => parsed,
            Err(why) => {
                self.stored_mut().record = None;
                let line = format!("viewservice: the stored view is unusable: {why}");
                self.warnings.warn("viewservice-malformed", now, &line);
                return;
            }
        };
        let old = self.stored_mut().record;
        if let Some(old) = old {
            if old.view.service != view.service {
                log::error!(
                    "viewservice: cluster {cluster:?} has a new epoch {} (was {}): etcd was \
                     wiped or the cluster made again; replicas of the old epoch refuse it",
                    view.service,
                    old.view.service
                );
            } else if view.viewnum < old.view.viewnum {
                // Reads are linearizable, so the store went back: restored from an old
                // snapshot. Its views would repeat numbers already handed out.
                let line = format!(
                    "viewservice: the stored view went back from {} to {} (etcd restored from \
                     a snapshot?); answering nothing: make the cluster again with pbkv init \
                     under a new name",
                    old.view.viewnum, view.viewnum
                );
                self.warnings.warn("viewservice-rollback", now, &line);
                return;
            }
        }
        if old.is_none_or(|old| old.view.viewnum != view.viewnum) {
            // Followers keep the ping state current from the views they read (V17).
            self.servers.named(&view);
            if let Some(old) = old {
                // As the host logs an embedded service's change: new view, then the old.
                log::info!(
                    "view change: view {} (was view {})",
                    crate::view_text(&view),
                    crate::view_text(&old.view)
                );
            }
        }
        self.view = view;
        let stored = self.stored_mut();
        if stored.ack_seen.is_some_and(|seen| acked || seen != view) {
            stored.ack_seen = None;
        }
        stored.record = Some(Record {
            view,
            acked,
            mod_revision: kv.mod_revision,
        });
        stored.read_at = Some(stored.read_at.map_or(issued, |at| at.max(issued)));
    }

    /// After a result: answers the replies that waited for it, then the queued pings in
    /// order (until one starts an operation), a remembered tick, and the next operation.
    fn after_store(&mut self, ctx: &mut Ctx<ViewServiceTimer>) {
        let now = ctx.now();
        let held = std::mem::take(&mut self.stored_mut().held);
        if let Some(record) = self.stored_mut().fresh(now) {
            for to in held {
                self.answer(ctx, to, record.view, true);
            }
        }
        // Every queued ping is recorded before anything is decided: a slow store operation
        // never makes a server look silent (its pings waited, with their arrival times).
        let queued = std::mem::take(&mut self.stored_mut().queue);
        let mut restarted = None;
        let mut replies = Vec::with_capacity(queued.len());
        for ping in queued {
            restarted = restarted.or(self.absorb_ping(ctx, &ping.origin_ping, ping.at));
            replies.push(ping.reply);
        }
        if std::mem::take(&mut self.stored_mut().tick_pending) {
            let view = self.view;
            self.servers.forget_dead_idle(&self.timing, &view, now);
        }
        self.decide_and_answer(ctx, restarted, &replies);
    }
}

/// The leader's address from the election key's value (`None` if it names none).
fn leader_addr(value: &[u8]) -> Option<Addr> {
    let json: serde_json::Value = serde_json::from_slice(value).ok()?;
    json.get("addr")?.as_str()?.parse().ok()
}
