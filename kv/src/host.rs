//! The host role: one node's roles composed behind one route table.
//!
//! A node hosts any of the view service, the replica, the client, the echo role and the time
//! server, plus an *extra* role of the caller's own (a test stand-in that only pings, say).
//! `pbkv node` and every simulation run nodes through this one type, so the routing the
//! daemon uses is the routing the simulator tests.
//!
//! **Routing.** [`route`] maps each message type to the roles that take it, in order of
//! preference; the first one the node hosts gets the message. A message no hosted role takes
//! goes to the extra role (which by default logs it at debug and drops it). Link and close
//! reports, turn ends and starts go to every hosted role, in the order view service, replica,
//! client, echo, extra. Each role's timers are wrapped in [`HostTimer`], so a timer always
//! comes back to the role that armed it.

use std::convert::Infallible;

use clockd::server::TimeServer;
use proto::kv::InfoReply;
use proto::{Message, MessageType};
use runtime::echo::{EchoRole, EchoTimer};
use runtime::role::REPLY_LEN_HINT_DEFAULT;
use runtime::store::StoreResult;
use runtime::{ConnId, Ctx, Dest, Link, MonoTime, Origin, Role};

use crate::client::{Client, ClientTimer};
use crate::replica::{Meters, Replica, ReplicaStats, ReplicaTimer};
use crate::viewservice::{ViewService, ViewServiceTimer};

/// A role a message can be routed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The view service.
    ViewService,
    /// The replica.
    Replica,
    /// The client.
    Client,
    /// The echo role.
    Echo,
    /// The time server.
    TimeServer,
    /// The host itself (`InfoRequest`: a summary of every hosted role).
    Info,
}

/// The route table: which hosted roles take `message_type`, first choice first. An empty
/// list means no built-in role takes it (it goes to the extra role).
pub fn route(message_type: MessageType) -> &'static [Slot] {
    use MessageType as T;
    match message_type {
        T::PingRequest | T::GetViewRequest | T::PingRelayRequest | T::PingRelayReply => {
            &[Slot::ViewService]
        }
        T::PingReply => &[Slot::Replica],
        // Clients ask for views; a replica adopts any view it is handed.
        T::GetViewReply => &[Slot::Client, Slot::Replica],
        T::OpenSessionRequest
        | T::GetRequest
        | T::PutRequest
        | T::ForwardRequest
        | T::ForwardReply
        | T::TransferRequest
        | T::TransferReply => &[Slot::Replica],
        T::OpenSessionReply | T::GetReply | T::PutReply => &[Slot::Client],
        T::EchoRequest | T::EchoReply => &[Slot::Echo],
        T::TimeRequest => &[Slot::TimeServer],
        T::InfoRequest => &[Slot::Info],
        T::Hello | T::Auth | T::InfoReply | T::TimeReply => &[],
    }
}

/// Logs a view service's view change at info, with the old and the new view on one line
/// (as Sentinel logs `+switch-master`), for an operator following the logs. Views change
/// only on a ping or a tick, which is where the host calls this.
fn log_view_change(before: &proto::viewservice::View, after: &proto::viewservice::View) {
    if after.viewnum != before.viewnum {
        log::info!(
            "view change: view {} (was view {})",
            crate::view_text(after),
            crate::view_text(before)
        );
    }
}

/// What a node's hosted roles report to its metrics (docs/operations.md lists them): a
/// plain copy, cheap to take once per publication.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostMetrics {
    /// The view number this node knows (the replica's, else the view service's).
    pub view_number: u64,
    /// What this node is: any of `primary`, `backup`, `idle` (the replica's standing in its
    /// view) and `viewservice`.
    pub roles: Vec<&'static str>,
    /// The hosted view service's view changes, if it hosts one.
    pub view_changes: Option<u64>,
    /// The hosted replica's numbers, if it hosts one.
    pub replica: Option<ReplicaMetrics>,
}

/// What only the process knows, not the roles: set by the daemon between turns
/// ([`Host::set_process`]) for `pbkv info`; absent in the simulator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Connections open, inbound and outbound.
    pub connection_count: usize,
    /// Bytes read from sockets.
    pub received_len: u64,
    /// Bytes written to sockets.
    pub sent_len: u64,
    /// Connections since start whose reads took the kernel's receive timestamps (those of
    /// the time protocol).
    pub stamped_connections: u64,
    /// The longest event-loop turn since start.
    pub turn_longest: std::time::Duration,
    /// The longest event-loop turn of the last one to two seconds.
    pub turn_longest_recent: std::time::Duration,
    /// Resident set size in bytes.
    pub rss_len: u64,
}

/// A replica's numbers for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaMetrics {
    /// Its counters (operations by kind and outcome among them).
    pub stats: ReplicaStats,
    /// The highest index applied to its state.
    pub applied_index: u64,
    /// The highest index known committed.
    pub committed_index: u64,
    /// Keys in the store.
    pub key_count: usize,
    /// State bytes: keys, values and session records ([`crate::store::State::len`]).
    pub state_len: usize,
    /// Client sessions held.
    pub session_count: usize,
    /// Latency and forward-batch distributions, kept as primary.
    pub meters: Meters,
    /// As primary with a synced backup: entries assigned that the backup has not
    /// acknowledged yet.
    pub backup_lag: Option<u64>,
}

/// The extra role of a host that needs none: it drops what it is given.
#[derive(Debug, Default)]
pub struct NoExtra;

impl Role for NoExtra {
    type Timer = Infallible;

    fn on_start(&mut self, _ctx: &mut Ctx<Infallible>) {}

    fn on_message(&mut self, _ctx: &mut Ctx<Infallible>, origin: &Origin, message: Message) {
        log::debug!(
            "no hosted role takes {} from {}",
            message.message_type(),
            origin.node
        );
    }

    fn on_timer(&mut self, _ctx: &mut Ctx<Infallible>, timer: Infallible) {
        match timer {}
    }
}

/// Timers of the hosted roles, each wrapped by the role that armed it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostTimer<E = Infallible> {
    /// The view service's.
    ViewService(ViewServiceTimer),
    /// The replica's.
    Replica(ReplicaTimer),
    /// The client's.
    Client(ClientTimer),
    /// The echo role's.
    Echo(EchoTimer),
    /// The extra role's.
    Extra(E),
}

/// The roles one node hosts. Build it with [`Host::new`] (or [`Host::with_extra`]) and the
/// `with_*` methods.
#[derive(Debug, Default)]
pub struct Host<E = NoExtra> {
    view_service: Option<ViewService>,
    replica: Option<Replica>,
    client: Option<Client>,
    echo: Option<EchoRole>,
    time_server: Option<TimeServer>,
    extra: E,
    /// When `on_start` ran, for the uptime.
    started: Option<MonoTime>,
    /// The process's numbers, if the daemon sets them.
    process: Option<ProcessInfo>,
}

impl Host<NoExtra> {
    /// A host with no roles yet.
    pub fn new() -> Host<NoExtra> {
        Host::with_extra(NoExtra)
    }
}

impl<E: Role> Host<E> {
    /// A host with no built-in roles yet, whose extra role is `extra`.
    pub fn with_extra(extra: E) -> Host<E> {
        Host {
            view_service: None,
            replica: None,
            client: None,
            echo: None,
            time_server: None,
            extra,
            started: None,
            process: None,
        }
    }

    /// Hosts a view service.
    pub fn with_view_service(mut self, view_service: ViewService) -> Host<E> {
        self.view_service = Some(view_service);
        self
    }

    /// Hosts a replica.
    pub fn with_replica(mut self, replica: Replica) -> Host<E> {
        self.replica = Some(replica);
        self
    }

    /// Hosts a client.
    pub fn with_client(mut self, client: Client) -> Host<E> {
        self.client = Some(client);
        self
    }

    /// Hosts the echo role.
    pub fn with_echo(mut self, echo: EchoRole) -> Host<E> {
        self.echo = Some(echo);
        self
    }

    /// Hosts a time server.
    pub fn with_time_server(mut self, time_server: TimeServer) -> Host<E> {
        self.time_server = Some(time_server);
        self
    }

    /// The view service, if hosted.
    pub fn view_service(&self) -> Option<&ViewService> {
        self.view_service.as_ref()
    }

    /// The replica, if hosted.
    pub fn replica(&self) -> Option<&Replica> {
        self.replica.as_ref()
    }

    /// The client, if hosted.
    pub fn client(&self) -> Option<&Client> {
        self.client.as_ref()
    }

    /// The client, mutably.
    pub fn client_mut(&mut self) -> Option<&mut Client> {
        self.client.as_mut()
    }

    /// The time server, if hosted.
    pub fn time_server(&self) -> Option<&TimeServer> {
        self.time_server.as_ref()
    }

    /// The extra role.
    pub fn extra(&self) -> &E {
        &self.extra
    }

    /// The extra role, mutably.
    pub fn extra_mut(&mut self) -> &mut E {
        &mut self.extra
    }

    /// Runs `call` on the hosted client, in a context that wraps its timers: how a test or a
    /// tool injects a client operation between inputs. `None` without a client.
    pub fn call_client<U>(
        &mut self,
        ctx: &mut Ctx<HostTimer<E::Timer>>,
        call: impl FnOnce(&mut Client, &mut Ctx<ClientTimer>) -> U,
    ) -> Option<U> {
        let client = self.client.as_mut()?;
        Some(ctx.nested(HostTimer::Client, |inner| call(client, inner)))
    }

    /// Runs `call` on the extra role, in a context that wraps its timers.
    pub fn call_extra<U>(
        &mut self,
        ctx: &mut Ctx<HostTimer<E::Timer>>,
        call: impl FnOnce(&mut E, &mut Ctx<E::Timer>) -> U,
    ) -> U {
        let extra = &mut self.extra;
        ctx.nested(HostTimer::Extra, |inner| call(extra, inner))
    }

    fn hosts(&self, slot: Slot) -> bool {
        match slot {
            Slot::ViewService => self.view_service.is_some(),
            Slot::Replica => self.replica.is_some(),
            Slot::Client => self.client.is_some(),
            Slot::Echo => self.echo.is_some(),
            Slot::TimeServer => self.time_server.is_some(),
            Slot::Info => true,
        }
    }

    /// Sets what only the process knows (connections, bytes, the longest turn, RSS), for
    /// `pbkv info`: the daemon calls it between turns.
    pub fn set_process(&mut self, process: ProcessInfo) {
        self.process = Some(process);
    }

    /// The answer to `InfoRequest`, as JSON: Redis-INFO-like sections (`server`, `role`,
    /// `clients`, `operations`, `memory`, `replication`, `loop`) followed by each hosted
    /// role's own details (`viewservice`, `replica`, ...). docs/operations.md describes
    /// every field.
    pub fn info_at(
        &self,
        node: &proto::NodeId,
        incarnation: proto::Incarnation,
        now: MonoTime,
    ) -> serde_json::Value {
        use serde_json::json;
        let metrics = self.metrics();
        let process = self.process;
        let uptime = self.started.map_or(0.0, |at| now.since(at).as_secs_f64());
        let mut info = serde_json::Map::new();
        info.insert(
            "server".into(),
            json!({
                "version": env!("CARGO_PKG_VERSION"),
                "node": node.to_string(),
                "incarnation": incarnation.to_string(),
                "uptime_s": (uptime * 10.0).round() / 10.0,
            }),
        );
        let view = match (&self.replica, &self.view_service) {
            (Some(replica), _) => Some(crate::view_json(&replica.view())),
            (None, Some(view_service)) => Some(crate::view_json(&view_service.view())),
            (None, None) => None,
        };
        info.insert(
            "role".into(),
            json!({
                "role": metrics.roles.join(","),
                "view": view,
                "may_serve": self.replica.as_ref().map(Replica::serving),
                "refused": self.replica.as_ref().and_then(Replica::refused),
            }),
        );
        let replica = metrics.replica.as_ref();
        let stats = replica.map(|r| r.stats);
        info.insert(
            "clients".into(),
            json!({
                "connections": process.map(|p| p.connection_count),
                "sessions": replica.map(|r| r.session_count),
                "requests_shed": stats.map(|s| s.requests_shed),
                "requests_held": stats.map(|s| s.requests_held),
            }),
        );
        if let Some(replica) = replica {
            let mut operations = serde_json::Map::new();
            for kind in crate::replica::OpKind::ALL {
                let latency = &replica.meters.latency[kind as usize];
                let bound_us = |q: f64| latency.quantile_bound(q).map(|ns| ns / 1000);
                operations.insert(
                    kind.name().into(),
                    json!({
                        "ok": replica.stats.ops.get(kind, true),
                        "err": replica.stats.ops.get(kind, false),
                        "replies_timed": latency.count(),
                        "p50_us_at_most": bound_us(0.5),
                        "p99_us_at_most": bound_us(0.99),
                    }),
                );
            }
            operations.insert("dedup_hits".into(), json!(replica.stats.dedup_hits));
            info.insert("operations".into(), serde_json::Value::Object(operations));
        }
        info.insert(
            "memory".into(),
            json!({
                "rss_bytes": process.map(|p| p.rss_len),
                "keys": replica.map(|r| r.key_count),
                "state_bytes": replica.map(|r| r.state_len),
            }),
        );
        // The replica's own details, built once: the replication section quotes some.
        let replica_info = self.replica.as_ref().map(Replica::info);
        if let (Some(metrics), Some(role), Some(role_info)) =
            (replica, &self.replica, &replica_info)
        {
            let batches = &metrics.meters.forward_batches;
            info.insert(
                "replication".into(),
                json!({
                    "applied": metrics.applied_index,
                    "committed": metrics.committed_index,
                    "backup_lag": metrics.backup_lag,
                    "backup_synced": role.backup_synced(),
                    "synced_view": role.synced_view(),
                    "forwards_in_flight": role_info["forwards_in_flight"],
                    "forwards_sent": batches.count(),
                    "forward_entries_p50_at_most": batches.quantile_bound(0.5),
                    "transfer": role_info["transfer"],
                    "receiving": role_info["receiving"],
                    "promotions": metrics.stats.promotions,
                    "transfers_installed": metrics.stats.transfers_installed,
                }),
            );
        }
        info.insert(
            "loop".into(),
            json!({
                "turn_longest_ms": process.map(|p| p.turn_longest.as_secs_f64() * 1000.0),
                "turn_longest_recent_ms": process
                    .map(|p| p.turn_longest_recent.as_secs_f64() * 1000.0),
                "received_bytes": process.map(|p| p.received_len),
                "sent_bytes": process.map(|p| p.sent_len),
                "stamped_connections": process.map(|p| p.stamped_connections),
            }),
        );
        if let Some(view_service) = &self.view_service {
            info.insert("viewservice".into(), view_service.info());
        }
        if let Some(replica_info) = replica_info {
            info.insert("replica".into(), replica_info);
        }
        if self.echo.is_some() {
            info.insert("echo".into(), json!({}));
        }
        if let Some(server) = &self.time_server {
            info.insert(
                "timeserver".into(),
                json!({ "answered": server.answered() }),
            );
        }
        serde_json::Value::Object(info)
    }

    /// The hosted roles' numbers for the node's metrics.
    pub fn metrics(&self) -> HostMetrics {
        let mut metrics = HostMetrics::default();
        if let Some(view_service) = &self.view_service {
            metrics.view_number = view_service.view().viewnum;
            metrics.view_changes = Some(view_service.view_changes());
            metrics.roles.push("viewservice");
        }
        if let Some(replica) = &self.replica {
            metrics.view_number = replica.view().viewnum;
            // A replica's standing is what its adopted view names it.
            metrics.roles.push(replica.standing_name());
            let state = replica.state();
            metrics.replica = Some(ReplicaMetrics {
                stats: replica.stats(),
                applied_index: state.applied,
                committed_index: replica.committed(),
                key_count: state.store.len(),
                state_len: state.len(),
                session_count: state.sessions.len(),
                meters: *replica.meters(),
                backup_lag: replica.backup_lag(),
            });
        }
        metrics
    }

    /// Delivers `message` to the role in `slot`, which this host has.
    fn deliver(
        &mut self,
        ctx: &mut Ctx<HostTimer<E::Timer>>,
        slot: Slot,
        origin: &Origin,
        message: Message,
    ) {
        match (slot, message) {
            (Slot::ViewService, message) => {
                if let Some(role) = self.view_service.as_mut() {
                    let before = role.view();
                    ctx.nested(HostTimer::ViewService, |c| {
                        role.on_message(c, origin, message)
                    });
                    log_view_change(&before, &role.view());
                }
            }
            (Slot::Replica, message) => {
                if let Some(role) = self.replica.as_mut() {
                    ctx.nested(HostTimer::Replica, |c| role.on_message(c, origin, message));
                }
            }
            (Slot::Client, message) => {
                if let Some(role) = self.client.as_mut() {
                    ctx.nested(HostTimer::Client, |c| role.on_message(c, origin, message));
                }
            }
            (Slot::Echo, message) => {
                if let Some(role) = self.echo.as_mut() {
                    ctx.nested(HostTimer::Echo, |c| role.on_message(c, origin, message));
                }
            }
            (Slot::TimeServer, Message::TimeRequest(request)) => {
                if let Some(server) = self.time_server.as_mut() {
                    server.answer(ctx, origin, request);
                }
            }
            (Slot::TimeServer, _) => unreachable!("the route table sends only TimeRequest"),
            (Slot::Info, _) => {
                let json = self.info_at(ctx.node(), ctx.incarnation(), ctx.now());
                ctx.reply(
                    origin,
                    InfoReply {
                        json: json.to_string(),
                    },
                );
            }
        }
    }
}

/// Calls `$call` on every hosted role, each in a context that wraps its timers.
macro_rules! each_role {
    ($self:ident, $ctx:ident, |$role:ident, $inner:ident| $call:expr) => {
        if let Some($role) = $self.view_service.as_mut() {
            $ctx.nested(HostTimer::ViewService, |$inner| $call);
        }
        if let Some($role) = $self.replica.as_mut() {
            $ctx.nested(HostTimer::Replica, |$inner| $call);
        }
        if let Some($role) = $self.client.as_mut() {
            $ctx.nested(HostTimer::Client, |$inner| $call);
        }
        if let Some($role) = $self.echo.as_mut() {
            $ctx.nested(HostTimer::Echo, |$inner| $call);
        }
        let $role = &mut $self.extra;
        $ctx.nested(HostTimer::Extra, |$inner| $call);
    };
}

impl<E: Role> Role for Host<E> {
    type Timer = HostTimer<E::Timer>;

    fn on_start(&mut self, ctx: &mut Ctx<Self::Timer>) {
        self.started = Some(ctx.now());
        each_role!(self, ctx, |role, inner| role.on_start(inner));
    }

    fn on_message(&mut self, ctx: &mut Ctx<Self::Timer>, origin: &Origin, message: Message) {
        let slots = route(message.message_type());
        match slots.iter().find(|slot| self.hosts(**slot)) {
            Some(slot) => self.deliver(ctx, *slot, origin, message),
            None => {
                let extra = &mut self.extra;
                ctx.nested(HostTimer::Extra, |c| extra.on_message(c, origin, message));
            }
        }
    }

    /// A Get's reply carries its value: the driver counts that much against the
    /// connection before the reply is made. PutHash replies carry the previous value.
    fn reply_len_hint(&self, message: &Message) -> usize {
        let key = match message {
            Message::GetRequest(get) => &get.key,
            // A PutHash's reply holds the previous value; a Put's is empty.
            Message::PutRequest(put) if put.kind == proto::kv::PutKind::PutHash => &put.key,
            _ => return REPLY_LEN_HINT_DEFAULT,
        };
        let value_len = self
            .replica
            .as_ref()
            .and_then(|replica| replica.state().get(key).map(|value| value.len()));
        REPLY_LEN_HINT_DEFAULT + value_len.unwrap_or(0)
    }

    fn on_timer(&mut self, ctx: &mut Ctx<Self::Timer>, timer: Self::Timer) {
        // A timer comes back only to the role that armed it, and roles are never removed.
        match timer {
            HostTimer::ViewService(timer) => {
                if let Some(role) = self.view_service.as_mut() {
                    let before = role.view();
                    ctx.nested(HostTimer::ViewService, |c| role.on_timer(c, timer));
                    log_view_change(&before, &role.view());
                }
            }
            HostTimer::Replica(timer) => {
                if let Some(role) = self.replica.as_mut() {
                    ctx.nested(HostTimer::Replica, |c| role.on_timer(c, timer));
                }
            }
            HostTimer::Client(timer) => {
                if let Some(role) = self.client.as_mut() {
                    ctx.nested(HostTimer::Client, |c| role.on_timer(c, timer));
                }
            }
            HostTimer::Echo(timer) => {
                if let Some(role) = self.echo.as_mut() {
                    ctx.nested(HostTimer::Echo, |c| role.on_timer(c, timer));
                }
            }
            HostTimer::Extra(timer) => {
                let extra = &mut self.extra;
                ctx.nested(HostTimer::Extra, |c| extra.on_timer(c, timer));
            }
        }
    }

    fn on_link(&mut self, ctx: &mut Ctx<Self::Timer>, to: Dest, link: Link) {
        each_role!(self, ctx, |role, inner| role.on_link(inner, to, link));
    }

    fn on_closed(&mut self, ctx: &mut Ctx<Self::Timer>, conn: ConnId) {
        each_role!(self, ctx, |role, inner| role.on_closed(inner, conn));
    }

    /// Only the view service uses the store (in its etcd mode).
    fn on_store(&mut self, ctx: &mut Ctx<Self::Timer>, id: u64, result: StoreResult) {
        match self.view_service.as_mut() {
            Some(role) => ctx.nested(HostTimer::ViewService, |c| role.on_store(c, id, result)),
            None => {
                let extra = &mut self.extra;
                ctx.nested(HostTimer::Extra, |c| extra.on_store(c, id, result));
            }
        }
    }

    fn on_turn_end(&mut self, ctx: &mut Ctx<Self::Timer>) {
        each_role!(self, ctx, |role, inner| role.on_turn_end(inner));
    }

    fn on_stop(&mut self, ctx: &mut Ctx<Self::Timer>) {
        each_role!(self, ctx, |role, inner| role.on_stop(inner));
    }

    fn busy(&self) -> bool {
        self.view_service.as_ref().is_some_and(Role::busy)
            || self.replica.as_ref().is_some_and(Role::busy)
            || self.extra.busy()
    }

    fn check_invariants(&self) {
        if let Some(role) = &self.view_service {
            role.check_invariants();
        }
        if let Some(role) = &self.replica {
            role.check_invariants();
        }
        if let Some(role) = &self.client {
            role.check_invariants();
        }
        if let Some(role) = &self.echo {
            role.check_invariants();
        }
        self.extra.check_invariants();
    }
}
