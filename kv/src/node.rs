//! One role type for simulations that mix view services, replicas and clients.

use proto::Message;
use runtime::{ConnId, Ctx, Dest, Link, Origin, Role};

use crate::client::{Client, ClientTimer};
use crate::replica::{Replica, ReplicaTimer};
use crate::viewservice::{ViewService, ViewServiceTimer};

/// A view service, a replica or a client.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // One per simulated node; boxing buys nothing.
pub enum KvNode {
    /// The view service.
    ViewService(ViewService),
    /// A replica.
    Replica(Replica),
    /// A client.
    Client(Client),
}

/// Timers of [`KvNode`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum KvTimer {
    /// The view service's.
    ViewService(ViewServiceTimer),
    /// The replica's.
    Replica(ReplicaTimer),
    /// The client's.
    Client(ClientTimer),
}

impl KvNode {
    /// The replica, if this node is one.
    pub fn replica(&self) -> Option<&Replica> {
        match self {
            KvNode::Replica(replica) => Some(replica),
            _ => None,
        }
    }

    /// The view service, if this node is one.
    pub fn view_service(&self) -> Option<&ViewService> {
        match self {
            KvNode::ViewService(view_service) => Some(view_service),
            _ => None,
        }
    }

    /// The client, if this node is one.
    pub fn client(&self) -> Option<&Client> {
        match self {
            KvNode::Client(client) => Some(client),
            _ => None,
        }
    }

    /// The client, mutably.
    pub fn client_mut(&mut self) -> Option<&mut Client> {
        match self {
            KvNode::Client(client) => Some(client),
            _ => None,
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $ctx:ident, |$role:ident, $inner:ident| $call:expr) => {
        match $self {
            KvNode::ViewService($role) => $ctx.nested(KvTimer::ViewService, |$inner| $call),
            KvNode::Replica($role) => $ctx.nested(KvTimer::Replica, |$inner| $call),
            KvNode::Client($role) => $ctx.nested(KvTimer::Client, |$inner| $call),
        }
    };
}

impl Role for KvNode {
    type Timer = KvTimer;

    fn on_start(&mut self, ctx: &mut Ctx<KvTimer>) {
        dispatch!(self, ctx, |role, inner| role.on_start(inner));
    }

    fn on_message(&mut self, ctx: &mut Ctx<KvTimer>, origin: &Origin, message: Message) {
        dispatch!(self, ctx, |role, inner| role
            .on_message(inner, origin, message));
    }

    fn on_timer(&mut self, ctx: &mut Ctx<KvTimer>, timer: KvTimer) {
        match (self, timer) {
            (KvNode::ViewService(role), KvTimer::ViewService(timer)) => {
                ctx.nested(KvTimer::ViewService, |inner| role.on_timer(inner, timer))
            }
            (KvNode::Replica(role), KvTimer::Replica(timer)) => {
                ctx.nested(KvTimer::Replica, |inner| role.on_timer(inner, timer))
            }
            (KvNode::Client(role), KvTimer::Client(timer)) => {
                ctx.nested(KvTimer::Client, |inner| role.on_timer(inner, timer))
            }
            (_, timer) => unreachable!("a node only arms its own role's timers: {timer:?}"),
        }
    }

    fn on_link(&mut self, ctx: &mut Ctx<KvTimer>, to: Dest, link: Link) {
        dispatch!(self, ctx, |role, inner| role.on_link(inner, to, link));
    }

    fn on_closed(&mut self, ctx: &mut Ctx<KvTimer>, conn: ConnId) {
        dispatch!(self, ctx, |role, inner| role.on_closed(inner, conn));
    }

    fn on_turn_end(&mut self, ctx: &mut Ctx<KvTimer>) {
        dispatch!(self, ctx, |role, inner| role.on_turn_end(inner));
    }

    fn check_invariants(&self) {
        match self {
            KvNode::ViewService(role) => role.check_invariants(),
            KvNode::Replica(role) => role.check_invariants(),
            KvNode::Client(role) => role.check_invariants(),
        }
    }
}
