//! Hostile input for the roles: arbitrary messages of every type, with arbitrary fields,
//! from arbitrary origins, fed with timers, turn ends, link changes and time steps into one
//! role through a test `Ctx`. Every role's invariants (`check_invariants`) are checked after
//! every call, and every message a role asks to send must fit in a frame. The input is an
//! `arbitrary::Unstructured`, so the same code serves the property test
//! (`kv/tests/role_hostile.rs`, bytes from proptest) and the `roles` fuzz target
//! (`fuzz/fuzz_targets/roles.rs`, bytes from libFuzzer), which includes this file by path.
//!
//! Values are drawn mostly from the identities a test cluster has (the view service, three
//! servers and their incarnations, the views they are in), so that forged messages get past
//! the first checks and reach the deep ones; the rest are arbitrary. Some payloads are the
//! real decoder's reading of arbitrary bytes, which covers every message type. A message
//! from a client's link has no address (the `Origin` of today's runtime does not say
//! whether a link was dialed or accepted; a link without an address is a client's).
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use arbitrary::{Result, Unstructured};
use bytes::{Bytes, BytesMut};
use kv::client::{Client, ClientConfig, ClientOp, ClientTimer};
use kv::replica::{Replica, ReplicaConfig, ReplicaTimer};
use kv::viewservice::{StoreSettings, StoredRecord, ViewService, ViewServiceTimer, ViewTiming};
use proto::kv::{
    Entry, FORWARD_ENTRIES_MAX, ForwardReply, ForwardRequest, GetReply, GetRequest, KEY_LEN_MAX,
    Op, OpenSessionReply, OpenSessionRequest, Outcome, PutReply, PutRequest, SessionRecord, Status,
    TransferReply, TransferRequest, VALUE_LEN_MAX,
};
use proto::viewservice::{
    GetViewReply, GetViewRequest, HeardPing, Member, PING_RELAY_ENTRIES_MAX, PingRelayRequest,
    PingReply, PingRequest, View,
};
use proto::{Addr, FRAME_LEN_MAX_DEFAULT, HEADER_LEN, Incarnation, Message, MessageType, NodeId};
use runtime::store::{KeyValue, StoreOp, StoreResult, TxnResult};
use runtime::{Action, ConnId, Ctx, Dest, Link, MonoTime, Origin, PeerClass, Role};

/// The view service's incarnation and address.
pub const VS_INC: Incarnation = Incarnation(0x7e57);
const VS_PORT: u16 = 7000;
/// The servers: (port, incarnation).
const SERVERS: [(u16, u64); 3] = [(7101, 11), (7102, 12), (7103, 13)];

/// What a run did, summed over runs, so that a sweep can fail if the input never reached
/// the paths it is meant to exercise.
#[derive(Debug, Default, Clone, Copy)]
pub struct Reach {
    /// Inputs delivered.
    pub inputs: u64,
    /// Peer messages a replica refused.
    pub refused: u64,
    /// Forwards and chunks a backup applied (its applied index moved).
    pub applied: u64,
    /// Pings the view service refused.
    pub pings_refused: u64,
    /// Views the view service made.
    pub views: u64,
    /// Store results fed to the etcd mode's view service.
    pub store_results: u64,
    /// Views that view service answered with (read back from the hostile store).
    pub stored_answers: u64,
}

fn addr(port: u16) -> Addr {
    Addr::v4(127, 0, 0, 1, port)
}

fn server(index: usize) -> Member {
    let (port, incarnation) = SERVERS[index];
    Member {
        addr: addr(port),
        incarnation: Incarnation(incarnation),
    }
}

fn any_addr(u: &mut Unstructured<'_>) -> Result<Addr> {
    Ok(match u.int_in_range(0..=5u8)? {
        0 => addr(VS_PORT),
        1..=3 => server(usize::from(u.int_in_range(0..=2u8)?)).addr,
        4 => {
            let [a, b, c, d]: [u8; 4] = u.arbitrary()?;
            Addr::v4(a, b, c, d, u.arbitrary()?)
        }
        _ => {
            let octets: [u8; 16] = u.arbitrary()?;
            let ip = std::net::Ipv6Addr::from(octets);
            Addr(std::net::SocketAddr::new(ip.into(), u.arbitrary()?))
        }
    })
}

fn incarnation(u: &mut Unstructured<'_>) -> Result<Incarnation> {
    Ok(match u.int_in_range(0..=5u8)? {
        0..=2 => Incarnation(SERVERS[usize::from(u.int_in_range(0..=2u8)?)].1),
        3 => VS_INC,
        4 => Incarnation(0),
        _ => Incarnation(u.arbitrary()?),
    })
}

fn member(u: &mut Unstructured<'_>) -> Result<Member> {
    if u.ratio(3, 4)? {
        return Ok(server(usize::from(u.int_in_range(0..=2u8)?)));
    }
    Ok(Member {
        addr: any_addr(u)?,
        incarnation: incarnation(u)?,
    })
}

/// A number near `around`, or one of the edges, or anything.
fn number(u: &mut Unstructured<'_>, around: u64) -> Result<u64> {
    Ok(match u.int_in_range(0..=7u8)? {
        0 => around,
        1 => around.saturating_add(1),
        2 => around.saturating_sub(1),
        3 => around.saturating_add(u64::from(u.int_in_range(2..=9u8)?)),
        4 => 0,
        5 => 1 << 62,
        6 => u64::MAX,
        _ => u.arbitrary()?,
    })
}

/// A view: the role's own, its successor, or something else.
fn view(u: &mut Unstructured<'_>, current: View) -> Result<View> {
    let viewnum = number(u, current.viewnum)?;
    let primary = if u.ratio(7, 8)? {
        Some(member(u)?)
    } else {
        None
    };
    let backup = match primary {
        Some(_) if u.ratio(2, 3)? => Some(member(u)?),
        _ => None,
    };
    let service = if u.ratio(7, 8)? {
        VS_INC
    } else {
        incarnation(u)?
    };
    if u.ratio(1, 3)? {
        return Ok(current);
    }
    Ok(View {
        viewnum,
        primary,
        backup,
        service,
    })
}

fn blob(u: &mut Unstructured<'_>, limit: usize) -> Result<Bytes> {
    Ok(match u.int_in_range(0..=15u8)? {
        0 => Bytes::from(vec![b'x'; limit]),
        1 => Bytes::from(vec![b'x'; limit + 1]),
        2 if limit == VALUE_LEN_MAX => Bytes::from(vec![b'x'; 4_194_000]),
        3..=8 => Bytes::copy_from_slice(&[b'k', u.int_in_range(b'a'..=b'd')?]),
        _ => {
            let len = u.int_in_range(0..=16usize)?;
            Bytes::copy_from_slice(u.bytes(len.min(u.len()))?)
        }
    })
}

fn entry(u: &mut Unstructured<'_>) -> Result<Entry> {
    let op = match u.int_in_range(0..=5u8)? {
        0 => Op::Noop,
        1 => Op::Put {
            key: blob(u, KEY_LEN_MAX)?,
            value: blob(u, VALUE_LEN_MAX)?,
        },
        2 => Op::PutHash {
            key: blob(u, KEY_LEN_MAX)?,
            value: blob(u, VALUE_LEN_MAX)?,
        },
        3 => Op::OpenSession {
            nonce: u.arbitrary()?,
        },
        4 => Op::Delete {
            key: blob(u, KEY_LEN_MAX)?,
        },
        _ => {
            let count = u.int_in_range(0..=3usize)?;
            let mut sessions = Vec::with_capacity(count);
            for _ in 0..count {
                sessions.push(number(u, 1)?);
            }
            Op::ExpireSessions { sessions }
        }
    };
    let writes = op.is_write();
    let (session, seq) = if writes && u.ratio(3, 4)? {
        (number(u, 1)?, number(u, 1)?)
    } else if u.ratio(7, 8)? {
        (0, 0)
    } else {
        (u.arbitrary()?, u.arbitrary()?)
    };
    Ok(Entry { session, seq, op })
}

fn status(u: &mut Unstructured<'_>) -> Result<Status> {
    Ok(*u.choose(&[
        Status::Ok,
        Status::ErrNoKey,
        Status::ErrWrongServer,
        Status::ErrSessionExpired,
        Status::ErrStaleRequest,
        Status::ErrTooLarge,
        Status::ErrFull,
    ])?)
}

fn outcome(u: &mut Unstructured<'_>) -> Result<Outcome> {
    Ok(if u.ratio(3, 4)? {
        Outcome::Acked
    } else {
        Outcome::Rejected
    })
}

/// What the role under test knows, to draw plausible fields from.
#[derive(Debug, Clone, Copy)]
pub struct Known {
    /// The role's view.
    pub view: View,
    /// Its highest applied index, for forwards and acks.
    pub applied: u64,
    /// The transfer id it last sent or received, if any.
    pub transfer_id: u64,
}

/// A message of any type with fields drawn around what the role knows.
fn message(u: &mut Unstructured<'_>, known: Known) -> Result<Message> {
    let message_type = *u.choose(MessageType::ALL)?;
    if u.ratio(1, 6)? {
        // The real decoder's reading of arbitrary bytes: any field of any type.
        let len = u.int_in_range(0..=64usize)?;
        let raw = Bytes::copy_from_slice(u.bytes(len.min(u.len()))?);
        let mut reader = proto::Reader::new(raw);
        if let Ok(message) = Message::decode_payload(message_type, &mut reader) {
            return Ok(message);
        }
    }
    let view_now = known.view;
    Ok(match message_type {
        MessageType::PingRequest => PingRequest {
            server: any_addr(u)?,
            incarnation: incarnation(u)?,
            viewnum: number(u, view_now.viewnum)?,
        }
        .into(),
        MessageType::PingReply => PingReply {
            view: view(u, view_now)?,
        }
        .into(),
        MessageType::GetViewRequest => GetViewRequest {}.into(),
        MessageType::GetViewReply => GetViewReply {
            view: view(u, view_now)?,
        }
        .into(),
        MessageType::OpenSessionRequest => OpenSessionRequest {
            nonce: u.arbitrary()?,
        }
        .into(),
        MessageType::OpenSessionReply => OpenSessionReply {
            status: status(u)?,
            nonce: u.arbitrary()?,
            session: number(u, 1)?,
        }
        .into(),
        MessageType::GetRequest => GetRequest {
            key: blob(u, KEY_LEN_MAX)?,
        }
        .into(),
        MessageType::GetReply => GetReply {
            status: status(u)?,
            value: blob(u, VALUE_LEN_MAX)?,
        }
        .into(),
        MessageType::PutRequest => PutRequest {
            session: number(u, 1)?,
            seq: number(u, 1)?,
            kind: match u.int_in_range(0..=2u8)? {
                0 => proto::kv::PutKind::Put,
                1 => proto::kv::PutKind::PutHash,
                _ => proto::kv::PutKind::Delete,
            },
            key: blob(u, KEY_LEN_MAX)?,
            value: blob(u, VALUE_LEN_MAX)?,
        }
        .into(),
        MessageType::PutReply => PutReply {
            status: status(u)?,
            previous: blob(u, VALUE_LEN_MAX)?,
        }
        .into(),
        MessageType::ForwardRequest => {
            let entries = if u.ratio(1, 64)? {
                vec![
                    Entry {
                        session: 0,
                        seq: 0,
                        op: Op::Noop,
                    };
                    FORWARD_ENTRIES_MAX + 1
                ]
            } else {
                let count = u.int_in_range(0..=4usize)?;
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    entries.push(entry(u)?);
                }
                entries
            };
            ForwardRequest {
                view: view(u, view_now)?,
                first_index: number(u, known.applied + 1)?,
                entries,
            }
            .into()
        }
        MessageType::ForwardReply => ForwardReply {
            view: view(u, view_now)?,
            incarnation: incarnation(u)?,
            outcome: outcome(u)?,
            applied: number(u, known.applied)?,
        }
        .into(),
        MessageType::TransferRequest => {
            let count = u.int_in_range(0..=3usize)?;
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                items.push((blob(u, KEY_LEN_MAX)?, blob(u, VALUE_LEN_MAX)?));
            }
            let count = u.int_in_range(0..=2usize)?;
            let mut sessions = Vec::with_capacity(count);
            for _ in 0..count {
                sessions.push(SessionRecord {
                    session: number(u, 1)?,
                    last_seq: number(u, 1)?,
                    index: number(u, 1)?,
                    reply: blob(u, VALUE_LEN_MAX)?,
                });
            }
            TransferRequest {
                view: view(u, view_now)?,
                transfer_id: number(u, known.transfer_id)?,
                chunk: u32::try_from(number(u, 0)? & 0xffff_ffff).unwrap_or(0),
                snapshot_index: number(u, known.applied)?,
                last: u.arbitrary()?,
                items,
                sessions,
            }
            .into()
        }
        MessageType::TransferReply => TransferReply {
            view: view(u, view_now)?,
            incarnation: incarnation(u)?,
            transfer_id: number(u, known.transfer_id)?,
            chunk: u32::try_from(number(u, 0)? & 0xffff_ffff).unwrap_or(0),
            outcome: outcome(u)?,
            installed: u.arbitrary()?,
            applied: number(u, known.applied)?,
        }
        .into(),
        MessageType::PingRelayRequest => {
            let count = if u.ratio(1, 32)? {
                PING_RELAY_ENTRIES_MAX + 1
            } else {
                u.int_in_range(0..=4usize)?
            };
            let mut heard = Vec::with_capacity(count);
            for _ in 0..count {
                heard.push(HeardPing {
                    server: Member {
                        addr: any_addr(u)?,
                        incarnation: incarnation(u)?,
                    },
                    age_ms: u.arbitrary()?,
                });
            }
            PingRelayRequest { heard }.into()
        }
        // Types no role here takes apart: an InfoRequest stands in (the node answers it).
        _ => proto::kv::InfoRequest {}.into(),
    })
}

/// An origin: one of the cluster's own links (the view service, a server as its real
/// incarnation, a client) or an arbitrary one.
fn origin(u: &mut Unstructured<'_>, corr_hint: Option<u64>) -> Result<Origin> {
    let corr = match corr_hint {
        Some(corr) if u.ratio(3, 4)? => corr,
        _ => u.arbitrary()?,
    };
    let (addr, incarnation) = match u.int_in_range(0..=5u8)? {
        0 => (Some(addr(VS_PORT)), VS_INC),
        1..=3 => {
            let member = server(usize::from(u.int_in_range(0..=2u8)?));
            (Some(member.addr), member.incarnation)
        }
        4 => (None, Incarnation(0xc11e)),
        _ => {
            let addr = if u.arbitrary()? {
                Some(any_addr(u)?)
            } else {
                None
            };
            (addr, incarnation(u)?)
        }
    };
    let class = if addr.is_some() {
        PeerClass::Member
    } else {
        PeerClass::Client
    };
    // A reply comes on this node's own link (to the peer's address), a request on an
    // accepted connection: either, at random.
    let link = if u.arbitrary()? {
        addr.map(Dest::from)
    } else {
        None
    };
    Ok(Origin {
        conn: ConnId(u64::from(u.int_in_range(0..=7u8)?)),
        class,
        link,
        node: NodeId::new("peer").expect("a valid node id"),
        incarnation,
        addr,
        corr,
        received_ns: 0,
    })
}

/// Every message `actions` asks to send fits in a frame (an oversized one panics the
/// encoder: `proto::encode_frame`).
fn check_frames<T>(actions: &[Action<T>]) {
    for action in actions {
        let message = match action {
            Action::Send { message, .. } | Action::Reply { message, .. } => message,
            _ => continue,
        };
        let mut out = BytesMut::new();
        message.encode_payload(&mut out);
        assert!(
            HEADER_LEN + out.len() <= FRAME_LEN_MAX_DEFAULT,
            "a {} of {} bytes",
            message.message_type(),
            out.len()
        );
    }
}

/// The inputs every role takes besides messages.
enum Input<T> {
    Message(Box<(Origin, Message)>),
    Timer(T),
    TurnEnd,
    Link(Dest, Link),
    Closed(ConnId),
    Advance(Duration),
}

fn input<T>(
    u: &mut Unstructured<'_>,
    known: Known,
    corr_hint: Option<u64>,
    timers: &[T],
) -> Result<Input<T>>
where
    T: Clone,
{
    Ok(match u.int_in_range(0..=15u8)? {
        0..=8 => Input::Message(Box::new((origin(u, corr_hint)?, message(u, known)?))),
        9 | 10 => Input::TurnEnd,
        11 => Input::Timer(u.choose(timers)?.clone()),
        12 => Input::Link(
            Dest::from(any_addr(u)?),
            *u.choose(&[Link::Up, Link::Down])?,
        ),
        13 => Input::Closed(ConnId(u64::from(u.int_in_range(0..=7u8)?))),
        _ => Input::Advance(Duration::from_millis(u64::from(
            u.int_in_range(1..=3000u16)?,
        ))),
    })
}

/// Feeds `steps_max` inputs (or until the input runs out) into `role`.
fn drive<R: Role>(
    u: &mut Unstructured<'_>,
    role: &mut R,
    ctx: &mut Ctx<R::Timer>,
    timers: &[R::Timer],
    known: impl Fn(&R) -> Known,
    corr_hint: impl Fn(&R) -> Option<u64>,
) -> Result<u64> {
    let mut inputs = 0;
    while !u.is_empty() && inputs < 64 {
        inputs += 1;
        match input(u, known(role), corr_hint(role), timers)? {
            Input::Message(boxed) => {
                let (origin, message) = *boxed;
                role.on_message(ctx, &origin, message);
            }
            Input::Timer(timer) => role.on_timer(ctx, timer),
            Input::TurnEnd => role.on_turn_end(ctx),
            Input::Link(dest, link) => role.on_link(ctx, dest, link),
            Input::Closed(conn) => role.on_closed(ctx, conn),
            Input::Advance(after) => ctx.set_now(ctx.now().plus(after)),
        }
        role.check_invariants();
        check_frames(&ctx.take_actions());
    }
    Ok(inputs)
}

/// Small bounds sometimes, so that every bound is reached.
fn replica_config(u: &mut Unstructured<'_>, me: Member) -> Result<ReplicaConfig> {
    let mut config = ReplicaConfig::new(me.addr, addr(VS_PORT));
    if u.arbitrary()? {
        config.state_bytes_max = u.int_in_range(0..=256usize)?;
        config.sessions_max = u.int_in_range(0..=3usize)?;
        config.sessions_per_connection_max = u.int_in_range(0..=2usize)?;
        config.unacked_log_bytes_max = u.int_in_range(0..=128usize)?;
        config.pending_replies_max = u.int_in_range(0..=4usize)?;
        config.pending_reply_bytes_max = u.int_in_range(0..=256usize)?;
        config.transfer_chunk_len_max = u.int_in_range(1..=64usize)?;
        config.forward_in_flight_max = u.int_in_range(1..=3usize)?;
        config.transfer_idle_max = Duration::from_millis(u.int_in_range(1..=5000u64)?);
    }
    Ok(config)
}

/// The standing a replica is driven into before the hostile input starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Idle in view 1.
    Idle,
    /// Primary of view 1, alone.
    Alone,
    /// Primary of view 2 with a synced backup.
    Primary,
    /// Synced backup of view 2.
    Backup,
}

fn vs_origin() -> Origin {
    Origin {
        conn: ConnId(100),
        class: PeerClass::Member,
        node: NodeId::new("vs").expect("a valid node id"),
        incarnation: VS_INC,
        addr: Some(addr(VS_PORT)),
        link: Some(Dest::from(addr(VS_PORT))),
        corr: 1,
        received_ns: 0,
    }
}

fn server_origin(member: Member) -> Origin {
    Origin {
        conn: ConnId(u64::from(member.addr.0.port())),
        class: PeerClass::Member,
        node: NodeId::new("peer").expect("a valid node id"),
        incarnation: member.incarnation,
        addr: Some(member.addr),
        link: Some(Dest::from(member.addr)),
        corr: 0,
        received_ns: 0,
    }
}

fn vs_view(viewnum: u64, primary: Option<Member>, backup: Option<Member>) -> View {
    View {
        viewnum,
        primary,
        backup,
        service: VS_INC,
    }
}

/// Brings a replica to `standing` through legitimate messages only.
fn replica_setup(replica: &mut Replica, ctx: &mut Ctx<ReplicaTimer>, standing: Standing) {
    let (s1, s2, s3) = (server(0), server(1), server(2));
    let adopt = |replica: &mut Replica, ctx: &mut Ctx<ReplicaTimer>, view: View| {
        replica.on_message(ctx, &vs_origin(), PingReply { view }.into());
        ctx.take_actions()
    };
    match standing {
        Standing::Idle => {
            adopt(replica, ctx, vs_view(1, Some(s1), None));
            adopt(replica, ctx, vs_view(2, Some(s1), Some(s2)));
            let _ = s3;
        }
        Standing::Alone => {
            adopt(replica, ctx, vs_view(1, Some(s1), None));
        }
        Standing::Primary => {
            adopt(replica, ctx, vs_view(1, Some(s1), None));
            let second = vs_view(2, Some(s1), Some(s2));
            adopt(replica, ctx, second);
            replica.on_turn_end(ctx);
            let chunk = ctx
                .take_actions()
                .into_iter()
                .find_map(|action| match action {
                    Action::Send {
                        message: Message::TransferRequest(chunk),
                        ..
                    } => Some(chunk),
                    _ => None,
                });
            let chunk = chunk.expect("a transfer to the backup");
            let installed = TransferReply {
                view: second,
                incarnation: s2.incarnation,
                transfer_id: chunk.transfer_id,
                chunk: chunk.chunk,
                outcome: Outcome::Acked,
                installed: true,
                applied: chunk.snapshot_index,
            };
            replica.on_message(ctx, &server_origin(s2), installed.into());
            ctx.take_actions();
            assert!(replica.backup_synced(), "set up as a synced primary");
        }
        Standing::Backup => {
            adopt(replica, ctx, vs_view(1, Some(s1), None));
            let second = vs_view(2, Some(s1), Some(s2));
            adopt(replica, ctx, second);
            let chunk = TransferRequest {
                view: second,
                transfer_id: 1,
                chunk: 0,
                snapshot_index: 0,
                last: true,
                items: Vec::new(),
                sessions: Vec::new(),
            };
            replica.on_message(ctx, &server_origin(s1), chunk.into());
            ctx.take_actions();
            assert_eq!(replica.synced_view(), Some(2), "set up as a synced backup");
        }
    }
    replica.check_invariants();
}

/// A replica in `standing`, then hostile input.
pub fn run_replica(u: &mut Unstructured<'_>, standing: Standing, reach: &mut Reach) -> Result<()> {
    let me = match standing {
        Standing::Idle => server(2),
        Standing::Alone | Standing::Primary => server(0),
        Standing::Backup => server(1),
    };
    let config = replica_config(u, me)?;
    let mut ctx = Ctx::for_test("replica", me.incarnation, MonoTime(0), u.arbitrary()?);
    let mut replica = Replica::new(config);
    replica.on_start(&mut ctx);
    ctx.take_actions();
    replica_setup(&mut replica, &mut ctx, standing);
    let before = replica.state().applied;
    let timers = [
        ReplicaTimer::Ping,
        ReplicaTimer::ExpireSessions,
        ReplicaTimer::TransferIdle,
    ];
    let known = |replica: &Replica| Known {
        view: replica.view(),
        applied: replica.state().applied,
        transfer_id: 1,
    };
    reach.inputs += drive(u, &mut replica, &mut ctx, &timers, known, |_| None)?;
    reach.refused += replica.stats().refused;
    if standing == Standing::Backup && replica.state().applied > before {
        reach.applied += 1;
    }
    assert_eq!(replica.state().len(), replica.state().counted_len());
    Ok(())
}

/// A view service, then hostile input.
pub fn run_view_service(u: &mut Unstructured<'_>, reach: &mut Reach) -> Result<()> {
    let mut ctx = Ctx::for_test("vs", VS_INC, MonoTime(0), 1);
    let mut service = ViewService::new(ViewTiming::default());
    service.on_start(&mut ctx);
    ctx.take_actions();
    let known = |service: &ViewService| Known {
        view: service.view(),
        applied: 0,
        transfer_id: 0,
    };
    let timers = [ViewServiceTimer::Tick];
    reach.inputs += drive(u, &mut service, &mut ctx, &timers, known, |_| None)?;
    reach.pings_refused += service.refused_pings();
    reach.views += service.view().viewnum;
    Ok(())
}

/// A store value: a well-formed view record around `known`, a leader record, or bytes.
fn store_value(u: &mut Unstructured<'_>, known: View) -> Result<Vec<u8>> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 | 1 => {
            let view = view(u, known)?;
            StoredRecord::of_view(&view, u.arbitrary()?).to_bytes()
        }
        2 => {
            let addr = any_addr(u)?;
            format!("{{\"node\":\"other\",\"addr\":\"{addr}\"}}").into_bytes()
        }
        _ => {
            let len = u.int_in_range(0..=64usize)?;
            u.bytes(len.min(u.len()))?.to_vec()
        }
    })
}

/// A store's answer to `op`, hostile: any shape, any values, sometimes `Failed`.
fn store_result(u: &mut Unstructured<'_>, op: &StoreOp, known: View) -> Result<StoreResult> {
    if u.ratio(1, 5)? {
        return Ok(StoreResult::Failed {
            reason: "injected".into(),
        });
    }
    Ok(match (op, u.int_in_range(0..=5u8)?) {
        (StoreOp::LeaseGrant { .. }, _) => StoreResult::LeaseGranted {
            lease: u.arbitrary()?,
            ttl: Duration::from_secs(u64::from(u.int_in_range(0..=5u8)?)),
        },
        (StoreOp::LeaseKeepAlive { .. }, _) => StoreResult::LeaseKeptAlive {
            ttl: Duration::from_secs(u64::from(u.int_in_range(0..=3u8)?)),
        },
        (StoreOp::LeaseRevoke { .. }, _) => StoreResult::LeaseRevoked,
        (StoreOp::Txn(_), 0) => StoreResult::LeaseRevoked, // a wrong shape
        (StoreOp::Txn(_), _) => {
            let count = u.int_in_range(0..=3usize)?;
            let mut gets = Vec::with_capacity(count);
            for _ in 0..count {
                gets.push(if u.ratio(1, 4)? {
                    None
                } else {
                    Some(KeyValue {
                        value: store_value(u, known)?,
                        create_revision: u.int_in_range(0..=8i64)?,
                        mod_revision: u.int_in_range(0..=8i64)?,
                        lease: u.int_in_range(0..=3i64)?,
                    })
                });
            }
            StoreResult::Txn(TxnResult {
                succeeded: u.arbitrary()?,
                revision: u.arbitrary()?,
                gets,
            })
        }
    })
}

/// A view-service node in the etcd mode, then hostile input and hostile store answers (the
/// store is trusted, but its values are read as input all the same).
pub fn run_stored_view_service(u: &mut Unstructured<'_>, reach: &mut Reach) -> Result<()> {
    let mut ctx = Ctx::for_test("vs", VS_INC, MonoTime(0), 1);
    let mut service = ViewService::with_store(ViewTiming::default(), StoreSettings::new("h"));
    service.on_start(&mut ctx);
    let mut pending: Vec<(u64, StoreOp)> = Vec::new();
    let take = |actions: Vec<Action<ViewServiceTimer>>,
                pending: &mut Vec<(u64, StoreOp)>,
                reach: &mut Reach| {
        check_frames(&actions);
        for action in actions {
            match action {
                Action::Store { id, op } => pending.push((id, op)),
                Action::Reply {
                    message: Message::PingReply(_) | Message::GetViewReply(_),
                    ..
                } => reach.stored_answers += 1,
                _ => {}
            }
        }
    };
    take(ctx.take_actions(), &mut pending, reach);
    let timers = [ViewServiceTimer::Tick];
    let mut steps = 0;
    while !u.is_empty() && steps < 64 {
        steps += 1;
        let known = service.view();
        if !pending.is_empty() && u.ratio(1, 2)? {
            // Mostly the operation in flight; sometimes a stale or unknown id.
            let at = u.int_in_range(0..=pending.len() - 1)?;
            let (id, op) = pending.remove(at);
            let id = if u.ratio(1, 16)? { id ^ 0x55 } else { id };
            let result = store_result(u, &op, known)?;
            reach.store_results += 1;
            service.on_store(&mut ctx, id, result);
        } else {
            let known = Known {
                view: known,
                applied: 0,
                transfer_id: 0,
            };
            match input(u, known, None, &timers)? {
                Input::Message(boxed) => {
                    let (origin, message) = *boxed;
                    service.on_message(&mut ctx, &origin, message);
                }
                Input::Timer(timer) => service.on_timer(&mut ctx, timer),
                Input::TurnEnd => service.on_turn_end(&mut ctx),
                Input::Link(dest, link) => service.on_link(&mut ctx, dest, link),
                Input::Closed(conn) => service.on_closed(&mut ctx, conn),
                Input::Advance(after) => ctx.set_now(ctx.now().plus(after)),
            }
        }
        service.check_invariants();
        take(ctx.take_actions(), &mut pending, reach);
    }
    reach.inputs += steps;
    Ok(())
}

/// A client with an operation outstanding, then hostile input (answers often carry the
/// correlation id it awaits).
pub fn run_client(u: &mut Unstructured<'_>, reach: &mut Reach) -> Result<()> {
    let mut ctx = Ctx::for_test("client", Incarnation(0xc11e), MonoTime(0), 2);
    let mut client = Client::new(ClientConfig::new(addr(VS_PORT)));
    client.on_start(&mut ctx);
    let op = if u.arbitrary()? {
        ClientOp::Get {
            key: blob(u, KEY_LEN_MAX)?,
        }
    } else {
        ClientOp::Put {
            key: blob(u, KEY_LEN_MAX)?,
            value: blob(u, VALUE_LEN_MAX)?,
        }
    };
    client.submit(&mut ctx, op);
    ctx.take_actions();
    let known = |_: &Client| Known {
        view: vs_view(1, Some(server(0)), None),
        applied: 0,
        transfer_id: 0,
    };
    let timers = [ClientTimer::Retry];
    reach.inputs += drive(u, &mut client, &mut ctx, &timers, known, Client::awaiting)?;
    Ok(())
}

/// One run: a role chosen by the input, then hostile input into it.
pub fn run(data: &[u8], reach: &mut Reach) {
    let mut u = Unstructured::new(data);
    let choice = u.int_in_range(0..=6u8).unwrap_or(0);
    // Running out of input ends a run early; that is not a failure.
    let _ = match choice {
        0 => run_view_service(&mut u, reach),
        1 => run_client(&mut u, reach),
        2 => run_replica(&mut u, Standing::Idle, reach),
        3 => run_replica(&mut u, Standing::Alone, reach),
        4 => run_replica(&mut u, Standing::Primary, reach),
        5 => run_replica(&mut u, Standing::Backup, reach),
        _ => run_stored_view_service(&mut u, reach),
    };
}
