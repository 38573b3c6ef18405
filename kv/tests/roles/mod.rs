//! Helpers for role-level tests: one role, fed inputs through `Ctx::for_test`, with the exact
//! actions it records asserted after every call (openraft's engine tests, in our contract).
#![allow(dead_code, unreachable_pub)]

use proto::viewservice::{Member, View};
use proto::{Addr, Incarnation, Message, NodeId};
use runtime::{Action, ConnId, Dest, MonoTime, Origin, PeerClass};

/// The view service's incarnation in these tests.
pub const VS_INC: Incarnation = Incarnation(0x7e57);
/// The view service's address.
pub const VS_PORT: u16 = 7000;

/// `127.0.0.1:port`.
pub fn addr(port: u16) -> Addr {
    Addr::v4(127, 0, 0, 1, port)
}

/// The server at `port`, as incarnation `incarnation`.
pub fn member(port: u16, incarnation: u64) -> Member {
    Member {
        addr: addr(port),
        incarnation: Incarnation(incarnation),
    }
}

/// A view made by the view service `VS_INC`.
pub fn view(viewnum: u64, primary: Option<Member>, backup: Option<Member>) -> View {
    View {
        viewnum,
        primary,
        backup,
        service: VS_INC,
    }
}

/// `ms` milliseconds of monotonic time.
pub fn ms(ms: u64) -> MonoTime {
    MonoTime(ms * 1_000_000)
}

/// A message from `member` (a server with an advertised address) on connection `conn`.
pub fn from_server(member: Member, conn: u64, corr: u64) -> Origin {
    Origin {
        conn: ConnId(conn),
        class: PeerClass::Member,
        node: NodeId::new(format!("s{}", member.addr.0.port())).expect("valid"),
        incarnation: member.incarnation,
        addr: Some(member.addr),
        // As a reply on this node's link to that server would come; the roles look at the
        // link only for view replies.
        link: Some(Dest::from(member.addr)),
        corr,
        received_ns: 0,
    }
}

/// A message from a client (no advertised address) on connection `conn`.
pub fn from_client(conn: u64, corr: u64) -> Origin {
    Origin {
        conn: ConnId(conn),
        class: PeerClass::Client,
        node: NodeId::new("client").expect("valid"),
        incarnation: Incarnation(0xc11e),
        addr: None,
        link: None,
        corr,
        received_ns: 0,
    }
}

/// The reply action answering `origin` with `message`.
pub fn reply<T>(origin: &Origin, message: impl Into<Message>) -> Action<T> {
    Action::Reply {
        conn: origin.conn,
        corr: origin.corr,
        message: message.into(),
    }
}

/// The send action of `message` to `to` (lane 0) with correlation id `corr`.
pub fn send<T>(to: Addr, corr: u64, message: impl Into<Message>) -> Action<T> {
    Action::Send {
        to: Dest::from(to),
        corr,
        message: message.into(),
    }
}

/// The local event recorded when a view service makes `view`, or a replica adopts it.
pub fn event<T>(text: impl Into<String>) -> Action<T> {
    Action::Event(text.into())
}
