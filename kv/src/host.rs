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
use runtime::{ConnId, Ctx, Dest, Link, Origin, Role};

use crate::client::{Client, ClientTimer};
use crate::replica::{Replica, ReplicaStats, ReplicaTimer};
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

    /// A summary of every hosted role, as JSON (the answer to `InfoRequest`).
    pub fn info(&self) -> serde_json::Value {
        let mut roles = serde_json::Map::new();
        if let Some(view_service) = &self.view_service {
            roles.insert("viewservice".into(), view_service.info());
        }
        if let Some(replica) = &self.replica {
            roles.insert("replica".into(), replica.info());
        }
        if self.echo.is_some() {
            roles.insert("echo".into(), serde_json::json!({}));
        }
        if let Some(server) = &self.time_server {
            roles.insert(
                "timeserver".into(),
                serde_json::json!({ "answered": server.answered() }),
            );
        }
        serde_json::Value::Object(roles)
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
            let view = replica.view();
            let me = Some(replica.member());
            // A replica's standing is what its adopted view names it.
            let standing = if view.primary == me {
                "primary"
            } else if view.backup == me {
                "backup"
            } else {
                "idle"
            };
            metrics.view_number = view.viewnum;
            metrics.roles.push(standing);
            let state = replica.state();
            metrics.replica = Some(ReplicaMetrics {
                stats: replica.stats(),
                applied_index: state.applied,
                committed_index: replica.committed(),
                key_count: state.store.len(),
                state_len: state.len(),
                session_count: state.sessions.len(),
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
                let json = self.info().to_string();
                ctx.reply(origin, InfoReply { json });
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
            .and_then(|replica| replica.state().store.get(key).map(|value| value.len()));
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

    fn busy(&self) -> bool {
        self.replica.as_ref().is_some_and(Role::busy) || self.extra.busy()
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
