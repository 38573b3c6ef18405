//! Role-level tests of the replica: one or two `Replica`s, fed views, client requests,
//! forwards, transfer chunks, acks, link breaks and timers at fixed times through test
//! `Ctx`s, with the exact actions each takes asserted. One test per rule of docs/protocol.md
//! (R1–R12), named after it. Where two replicas talk, the test carries each recorded send
//! to the other by hand, so every message in between is visible.

mod roles;

use std::time::Duration;

use bytes::Bytes;
use kv::replica::{Replica, ReplicaConfig, ReplicaTimer};
use proto::kv::{
    Entry, FORWARD_AHEAD_MAX, FORWARD_ENTRIES_MAX, ForwardReply, ForwardRequest, GetReply,
    GetRequest, KEY_LEN_MAX, Op, OpenSessionReply, OpenSessionRequest, Outcome,
    PEER_VIEW_AHEAD_MAX, PutReply, PutRequest, SESSION_RECORD_FIXED_LEN, SessionRecord, Status,
    TRANSFER_ITEMS_MAX, TransferReply, TransferRequest, VALUE_LEN_MAX,
};
use proto::viewservice::{Member, PingReply, PingRequest, View};
use proto::{Incarnation, Message};
use runtime::{Action, Ctx, Dest, Link, MonoTime, Origin, Role};

use roles::{VS_INC, VS_PORT, addr, event, from_client, from_server, member, ms, reply, view};

type Actions = Vec<Action<ReplicaTimer>>;

fn s1() -> Member {
    member(7101, 11)
}
fn s2() -> Member {
    member(7102, 12)
}

struct Node {
    role: Replica,
    ctx: Ctx<ReplicaTimer>,
    me: Member,
}

impl Node {
    fn start(me: Member) -> Node {
        Node::start_with(me, |_| {})
    }

    /// A replica started at time 0; `tune` adjusts its configuration.
    fn start_with(me: Member, tune: impl FnOnce(&mut ReplicaConfig)) -> Node {
        let name = format!("s{}", me.addr.0.port());
        let mut ctx = Ctx::for_test(&name, me.incarnation, ms(0), me.incarnation.0);
        let mut config = ReplicaConfig::new(me.addr, addr(VS_PORT));
        tune(&mut config);
        let expire_every = config.session_idle_max / 4;
        let mut role = Replica::new(config);
        role.on_start(&mut ctx);
        let ping = PingRequest {
            server: me.addr,
            incarnation: me.incarnation,
            viewnum: 0,
        };
        assert_eq!(
            ctx.take_actions(),
            vec![
                roles::send(addr(VS_PORT), 1, ping),
                Action::SetTimer {
                    timer: ReplicaTimer::Ping,
                    at: ms(100),
                },
                Action::SetTimer {
                    timer: ReplicaTimer::ExpireSessions,
                    at: ms(0).plus(expire_every),
                },
            ]
        );
        Node { role, ctx, me }
    }

    fn take(&mut self) -> Actions {
        self.role.check_invariants();
        self.ctx.take_actions()
    }

    /// The view service's answer to a ping: `view`.
    fn adopt(&mut self, view: View) -> Actions {
        let vs = from_server(member(VS_PORT, VS_INC.0), 1, 1);
        self.role
            .on_message(&mut self.ctx, &vs, PingReply { view }.into());
        self.take()
    }

    fn deliver(&mut self, origin: &Origin, message: impl Into<Message>) -> Actions {
        self.role.on_message(&mut self.ctx, origin, message.into());
        self.take()
    }

    /// This node's link to `to` completed its handshake.
    fn link_up(&mut self, to: Member) -> Actions {
        self.role
            .on_link(&mut self.ctx, Dest::from(to.addr), Link::Up);
        self.take()
    }

    fn turn_end(&mut self) -> Actions {
        self.role.on_turn_end(&mut self.ctx);
        self.take()
    }

    /// How a peer sees a message from this node, sent with `corr`.
    fn origin(&self, corr: u64) -> Origin {
        from_server(self.me, u64::from(self.me.addr.0.port()), corr)
    }
}

fn adopted(view: &View) -> Action<ReplicaTimer> {
    event(format!("adopt view {}", kv::view_text(view)))
}

/// The sends among `actions`, as (corr, message).
fn sends(actions: &Actions) -> Vec<(u64, Message)> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Send { corr, message, .. } => Some((*corr, message.clone())),
            _ => None,
        })
        .collect()
}

/// The replies among `actions`, as messages.
fn replies(actions: &Actions) -> Vec<Message> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Reply { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

/// Carries every send in `actions` from `from` to `to`; returns what `to` did.
fn relay(from: &Node, to: &mut Node, actions: &Actions) -> Actions {
    let mut out = Vec::new();
    for (corr, message) in sends(actions) {
        out.extend(to.deliver(&from.origin(corr), message));
    }
    out
}

/// Carries every reply in `actions` (answers to `from`'s requests) back to `from`.
fn relay_replies(replier: &Node, to: &mut Node, actions: &Actions) -> Actions {
    let mut out = Vec::new();
    for message in replies(actions) {
        out.extend(to.deliver(&replier.origin(0), message));
    }
    out
}

/// s1 primary of view 2 naming s2 its backup; s2 has only seen view 1.
fn primary_in_view_2() -> (Node, Node, View) {
    primary_in_view_2_tuned(|_| {}, |_| {})
}

/// As `primary_in_view_2`, with the primary's and the backup's configurations adjusted.
fn primary_in_view_2_tuned(
    tune_primary: impl FnOnce(&mut ReplicaConfig),
    tune_backup: impl FnOnce(&mut ReplicaConfig),
) -> (Node, Node, View) {
    let mut p = Node::start_with(s1(), tune_primary);
    let mut b = Node::start_with(s2(), tune_backup);
    let first = view(1, Some(s1()), None);
    p.adopt(first);
    b.adopt(first);
    let second = view(2, Some(s1()), Some(s2()));
    assert_eq!(p.adopt(second), vec![adopted(&second)]);
    (p, b, second)
}

/// s1 primary of view 2 with s2 its backup, the transfer done: both synced in view 2.
fn synced_pair() -> (Node, Node, View) {
    synced_pair_tuned(|_| {}, |_| {})
}

/// As `synced_pair`, with the primary's and the backup's configurations adjusted.
fn synced_pair_tuned(
    tune_primary: impl FnOnce(&mut ReplicaConfig),
    tune_backup: impl FnOnce(&mut ReplicaConfig),
) -> (Node, Node, View) {
    let (mut p, mut b, second) = primary_in_view_2_tuned(tune_primary, tune_backup);
    b.adopt(second);
    let chunks = p.turn_end();
    let acks = relay(&p, &mut b, &chunks);
    relay_replies(&b, &mut p, &acks);
    assert!(p.role.backup_synced());
    assert_eq!(b.role.synced_view(), Some(2));
    (p, b, second)
}

fn nonce_reply(status: Status, nonce: u64, session: u64) -> OpenSessionReply {
    OpenSessionReply {
        status,
        nonce,
        session,
    }
}

fn bytes(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

fn put(session: u64, seq: u64, key: &str, value: &str) -> PutRequest {
    PutRequest {
        session,
        seq,
        kind: proto::kv::PutKind::Put,
        key: bytes(key),
        value: bytes(value),
    }
}

fn put_ok(previous: &str) -> PutReply {
    PutReply {
        status: Status::Ok,
        previous: bytes(previous),
    }
}

fn put_err(status: Status) -> PutReply {
    PutReply {
        status,
        previous: Bytes::new(),
    }
}

fn ack(view: View, backup: Member, applied: u64) -> ForwardReply {
    ForwardReply {
        view,
        incarnation: backup.incarnation,
        outcome: Outcome::Acked,
        applied,
    }
}

/// R1: a server serves as primary of view N only if N = 1 names it, or it served N−1, or
/// it was N−1's synced backup; a named primary that is none of these never serves.
#[test]
fn r1_may_serve_only_by_the_first_view_or_continuity() {
    // The first view naming it.
    let mut s = Node::start(s1());
    let first = view(1, Some(s1()), None);
    assert_eq!(s.adopt(first), vec![adopted(&first)]);
    assert!(s.role.serving());

    // Idle in view 1, named primary of view 2: refused.
    let mut idle = Node::start(s2());
    idle.adopt(first);
    let second = view(2, Some(s2()), None);
    assert_eq!(
        idle.adopt(second),
        vec![
            adopted(&second),
            event("named primary but may not serve: not synced in the previous view"),
        ]
    );
    assert!(!idle.role.serving());
    assert_eq!(idle.role.stats().promotions_refused, 1);

    // The synced backup of view 2 serves view 3.
    let (_, mut b, _) = synced_pair();
    let third = view(3, Some(s2()), None);
    assert_eq!(b.adopt(third), vec![adopted(&third)]);
    assert!(b.role.serving());
    assert_eq!(b.role.stats().promotions, 1);

    // A view skipped breaks the chain: synced in 2, named primary of 4.
    let (_, mut b, _) = synced_pair();
    let fourth = view(4, Some(s2()), None);
    b.adopt(fourth);
    assert!(!b.role.serving());
}

/// R2: a server acknowledges a view (pings its number) as soon as it adopts it; adopting
/// any other view clears `synced_view`.
#[test]
fn r2_a_server_acknowledges_a_view_as_soon_as_it_adopts_it() {
    let mut s = Node::start(s1());
    s.adopt(view(1, Some(s1()), None));
    s.ctx.set_now(ms(100));
    s.role.on_timer(&mut s.ctx, ReplicaTimer::Ping);
    let ping = PingRequest {
        server: s1().addr,
        incarnation: s1().incarnation,
        viewnum: 1,
    };
    assert_eq!(
        s.take(),
        vec![
            roles::send(addr(VS_PORT), 2, ping),
            // A quarter interval: a serving primary with no backup (R19).
            Action::SetTimer {
                timer: ReplicaTimer::Ping,
                at: ms(125),
            },
        ]
    );
    let (_, mut b, _) = synced_pair();
    b.adopt(view(3, Some(s1()), Some(s2())));
    assert_eq!(
        b.role.synced_view(),
        None,
        "a new view needs a new transfer"
    );
}

/// The Ping timer's next expiry once it fires at `now`.
fn next_ping_at(node: &mut Node, now_ms: u64) -> MonoTime {
    node.ctx.set_now(ms(now_ms));
    node.role.on_timer(&mut node.ctx, ReplicaTimer::Ping);
    let next = node.take().into_iter().find_map(|action| match action {
        Action::SetTimer {
            timer: ReplicaTimer::Ping,
            at,
        } => Some(at),
        _ => None,
    });
    next.expect("the Ping timer is set again")
}

/// R19: a serving primary with no backup pings every quarter interval, so a view adding a
/// backup reaches it within 25 ms; with a backup, or not serving, every interval.
#[test]
fn r19_a_primary_without_a_backup_pings_four_times_as_often() {
    let mut p = Node::start(s1());
    assert_eq!(next_ping_at(&mut p, 100), ms(200), "not serving yet");
    p.adopt(view(1, Some(s1()), None));
    assert_eq!(next_ping_at(&mut p, 200), ms(225), "serving alone");
    p.adopt(view(2, Some(s1()), Some(s2())));
    assert_eq!(next_ping_at(&mut p, 225), ms(325), "serving with a backup");
    let mut b = Node::start(s2());
    b.adopt(view(2, Some(s1()), Some(s2())));
    assert_eq!(next_ping_at(&mut b, 100), ms(200), "a backup");
    // Named primary of view 3 without having been synced in view 2: it may not serve.
    b.adopt(view(3, Some(s2()), None));
    assert!(!b.role.serving());
    assert_eq!(next_ping_at(&mut b, 200), ms(300), "named, may not serve");
}

/// R3: on adopting a view in which it may not serve, a server answers every pending client
/// request with ErrWrongServer and forgets it.
#[test]
fn r3_stepping_down_answers_pending_requests_with_wrong_server() {
    let (mut p, _, _) = synced_pair();
    let client = from_client(40, 5);
    assert_eq!(p.deliver(&client, OpenSessionRequest { nonce: 77 }), vec![]);
    let third = view(3, Some(s2()), None);
    assert_eq!(
        p.adopt(third),
        vec![
            adopted(&third),
            reply(&client, nonce_reply(Status::ErrWrongServer, 77, 0)),
        ]
    );
    assert!(!p.role.busy(), "nothing is left waiting");
}

/// R4: views travel with messages: an older receiver adopts the carried view; a newer one
/// rejects naming its own, and the sender adopts that (and does nothing else).
#[test]
fn r4_views_travel_with_messages() {
    // An idle server in view 1 gets view 2's first chunk from its primary: it adopts view 2
    // at once and takes the chunk.
    let (mut p, mut b, second) = primary_in_view_2();
    let chunks = p.turn_end();
    let acks = relay(&p, &mut b, &chunks);
    assert_eq!(b.role.view(), second);
    assert_eq!(b.role.stats().views_from_peers, 1);
    assert_eq!(b.role.synced_view(), Some(2));
    relay_replies(&b, &mut p, &acks);

    // The backup moves on to view 3 (it is primary there); the old primary's forward is
    // rejected with view 3, and the old primary adopts it and stops serving.
    let third = view(3, Some(s2()), None);
    b.adopt(third);
    let client = from_client(40, 5);
    p.deliver(&client, OpenSessionRequest { nonce: 1 });
    let forward = p.turn_end();
    let rejection = relay(&p, &mut b, &forward);
    let rejected = ForwardReply {
        view: third,
        incarnation: s2().incarnation,
        outcome: Outcome::Rejected,
        applied: 0,
    };
    assert_eq!(replies(&rejection), vec![Message::from(rejected)]);
    let back = relay_replies(&b, &mut p, &rejection);
    assert_eq!(
        back,
        vec![
            adopted(&third),
            reply(&client, nonce_reply(Status::ErrWrongServer, 1, 0)),
        ]
    );
    assert_eq!(p.role.stats().views_from_peers, 1);
}

/// R5: a forward is taken only from the primary of the current view, as the incarnation it
/// names, by that view's backup, once synced in that view.
#[test]
fn r5_a_forward_is_taken_only_from_the_primary_by_the_synced_backup() {
    let (_, mut b, second) = synced_pair();
    let forward = ForwardRequest {
        view: second,
        first_index: 1,
        entries: vec![Entry {
            session: 0,
            seq: 0,
            op: Op::Noop,
        }],
    };
    let rejected = |applied| {
        Message::from(ForwardReply {
            view: second,
            incarnation: s2().incarnation,
            outcome: Outcome::Rejected,
            applied,
        })
    };
    // Another incarnation at the primary's address.
    let impostor = from_server(member(7101, 99), 9, 1);
    assert_eq!(
        replies(&b.deliver(&impostor, forward.clone())),
        vec![rejected(0)]
    );
    // Another server altogether.
    let other = from_server(member(7103, 13), 9, 1);
    assert_eq!(
        replies(&b.deliver(&other, forward.clone())),
        vec![rejected(0)]
    );
    // The primary itself: applied.
    let primary = from_server(s1(), 7101, 2);
    assert_eq!(
        b.deliver(&primary, forward.clone()),
        vec![reply(&primary, ack(second, s2(), 1))]
    );
    // A backup of view 2 not yet synced rejects even the primary.
    let mut fresh = Node::start(s2());
    fresh.adopt(second);
    assert_eq!(
        replies(&fresh.deliver(&primary, forward)),
        vec![rejected(0)]
    );
    assert_eq!(b.role.stats().forwards_rejected, 2);
}

/// R6: the backup applies only the next contiguous index, re-acks what it applied, applies
/// nothing past a gap; the primary resends from the first unacknowledged index after a
/// break.
#[test]
fn r6_the_backup_applies_only_the_next_index() {
    let (_, mut b, second) = synced_pair();
    let primary = from_server(s1(), 7101, 2);
    let noop = Entry {
        session: 0,
        seq: 0,
        op: Op::Noop,
    };
    let forward = |first_index, count| ForwardRequest {
        view: second,
        first_index,
        entries: vec![noop.clone(); count],
    };
    let acked = |applied| vec![reply(&primary, ack(second, s2(), applied))];
    assert_eq!(b.deliver(&primary, forward(1, 2)), acked(2));
    assert_eq!(
        b.deliver(&primary, forward(1, 2)),
        acked(2),
        "a duplicate: re-acked"
    );
    assert_eq!(
        b.deliver(&primary, forward(4, 1)),
        acked(2),
        "a gap: nothing applied"
    );
    assert_eq!(
        b.deliver(&primary, forward(2, 3)),
        acked(4),
        "overlap: the rest applied"
    );
    assert_eq!(b.role.state().applied, 4);

    // The primary's side: forwards sent, the link breaks, the next turn resends from the
    // first unacknowledged index.
    let (mut p, _, second) = synced_pair();
    p.deliver(&from_client(40, 5), OpenSessionRequest { nonce: 1 });
    let sent = sends(&p.turn_end());
    assert_eq!(sent.len(), 1);
    p.role
        .on_link(&mut p.ctx, Dest::from(s2().addr), Link::Down);
    assert_eq!(p.take(), vec![]);
    let resent = sends(&p.turn_end());
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].1, sent[0].1, "the same forward again");
    let Message::ForwardRequest(request) = &resent[0].1 else {
        panic!("a forward");
    };
    assert_eq!((request.view, request.first_index), (second, 1));
}

/// R7: a client is answered only once its operation committed: the synced backup
/// acknowledged its index (or at once with no backup).
#[test]
fn r7_a_client_is_answered_only_after_the_backup_acknowledged() {
    let (mut p, mut b, second) = synced_pair();
    let client = from_client(40, 5);
    assert_eq!(p.deliver(&client, OpenSessionRequest { nonce: 3 }), vec![]);
    let forward = p.turn_end();
    assert_eq!(
        sends(&forward),
        vec![(
            3,
            ForwardRequest {
                view: second,
                first_index: 1,
                entries: vec![Entry {
                    session: 0,
                    seq: 0,
                    op: Op::OpenSession { nonce: 3 },
                }],
            }
            .into()
        )]
    );
    assert_eq!(p.role.committed(), 0, "not before the ack");
    let acks = relay(&p, &mut b, &forward);
    assert_eq!(
        relay_replies(&b, &mut p, &acks),
        vec![reply(&client, nonce_reply(Status::Ok, 3, 1))]
    );
    assert_eq!(p.role.committed(), 1);

    // With no backup, at the end of the turn.
    let mut alone = Node::start(s1());
    alone.adopt(view(1, Some(s1()), None));
    assert_eq!(
        alone.deliver(&client, OpenSessionRequest { nonce: 4 }),
        vec![]
    );
    assert_eq!(
        alone.turn_end(),
        vec![reply(&client, nonce_reply(Status::Ok, 4, 1))]
    );
}

/// R8: a Get is read at its place in the order and answered once an index assigned after
/// it committed: a no-op assigned at the end of the turn when nothing else was.
#[test]
fn r8_a_get_is_answered_once_a_later_index_commits() {
    let (mut p, mut b, second) = synced_pair();
    let client = from_client(40, 5);
    let get = GetRequest { key: bytes("k") };
    assert_eq!(p.deliver(&client, get), vec![]);
    let forward = p.turn_end();
    let noop = ForwardRequest {
        view: second,
        first_index: 1,
        entries: vec![Entry {
            session: 0,
            seq: 0,
            op: Op::Noop,
        }],
    };
    assert_eq!(
        sends(&forward),
        vec![(3, noop.into())],
        "a sync point of its own"
    );
    let acks = relay(&p, &mut b, &forward);
    let missing = GetReply {
        status: Status::ErrNoKey,
        value: Bytes::new(),
    };
    assert_eq!(
        relay_replies(&b, &mut p, &acks),
        vec![reply(&client, missing)]
    );
    // Never a re-ack: the index the Get waited on is new.
    assert_eq!(p.role.state().applied, 1);
}

/// R9: a view from another view-service incarnation is refused, never adopted, and the
/// server stops serving and says why.
#[test]
fn r9_a_view_from_another_view_service_is_refused() {
    let mut s = Node::start(s1());
    s.adopt(view(1, Some(s1()), None));
    let mut foreign = view(2, Some(s1()), None);
    foreign.service = Incarnation(0xbad);
    let why = format!(
        "a view of another epoch ({}, was {}): the embedded view service restarted (it \
         keeps no state) or the cluster was made again in etcd, so its views could name an \
         empty server; restart the cluster",
        Incarnation(0xbad),
        VS_INC
    );
    assert_eq!(s.adopt(foreign), vec![event(why.clone())]);
    assert!(!s.role.serving());
    assert_eq!(s.role.view().viewnum, 1);
    assert_eq!(s.role.refused(), Some(why.as_str()));
    let client = from_client(40, 5);
    let refused = s.deliver(&client, GetRequest { key: bytes("k") });
    let wrong = GetReply {
        status: Status::ErrWrongServer,
        value: Bytes::new(),
    };
    assert_eq!(refused, vec![reply(&client, wrong)]);
}

/// R10: at most once: a retry of the last request gets the original reply; an older one is
/// ErrStaleRequest and an unknown session ErrSessionExpired, never applied, each answered
/// only once an index assigned after it committed.
#[test]
fn r10_a_retry_gets_the_original_reply_and_old_requests_are_refused() {
    let mut s = Node::start(s1());
    s.adopt(view(1, Some(s1()), None));
    let client = from_client(40, 5);
    s.deliver(&client, OpenSessionRequest { nonce: 8 });
    assert_eq!(
        s.turn_end(),
        vec![reply(&client, nonce_reply(Status::Ok, 8, 1))]
    );
    s.deliver(&client, put(1, 1, "k", "a"));
    assert_eq!(s.turn_end(), vec![reply(&client, put_ok(""))]);
    s.deliver(&client, put(1, 2, "k", "b"));
    assert_eq!(s.turn_end(), vec![reply(&client, put_ok(""))]);
    let applied = s.role.state().applied;
    // The retry of seq 2: the original reply at once (it committed), nothing applied.
    assert_eq!(
        s.deliver(&client, put(1, 2, "k", "b")),
        vec![reply(&client, put_ok(""))]
    );
    assert_eq!(s.role.stats().dedup_hits, 1);
    // Seq 1 is older than the last: refused, at the end of the turn.
    assert_eq!(s.deliver(&client, put(1, 1, "k", "zz")), vec![]);
    assert_eq!(
        s.turn_end(),
        vec![reply(&client, put_err(Status::ErrStaleRequest))]
    );
    // Session 99 does not exist.
    assert_eq!(s.deliver(&client, put(99, 1, "k", "zz")), vec![]);
    assert_eq!(
        s.turn_end(),
        vec![reply(&client, put_err(Status::ErrSessionExpired))]
    );
    assert_eq!(
        s.role.state().store.get(&b"k"[..]),
        Some(&kv::blob::Blob::from("b"))
    );
    assert_eq!(
        s.role.state().applied,
        applied + 2,
        "two sync no-ops, no writes"
    );
}

/// R10 for Delete: a Delete is a write like a Put, applied at most once. It answers `1` when
/// the key existed and `0` when not; a retry of it gets the original `1`, although the key
/// is gone by then, and deletes nothing more.
#[test]
fn r10_a_retried_delete_gets_its_original_reply() {
    let mut s = Node::start(s1());
    s.adopt(view(1, Some(s1()), None));
    let client = from_client(40, 5);
    s.deliver(&client, OpenSessionRequest { nonce: 8 });
    s.turn_end();
    let delete = |seq: u64, key: &str| PutRequest {
        session: 1,
        seq,
        kind: proto::kv::PutKind::Delete,
        key: bytes(key),
        value: Bytes::new(),
    };
    s.deliver(&client, put(1, 1, "k", "a"));
    assert_eq!(s.turn_end(), vec![reply(&client, put_ok(""))]);
    s.deliver(&client, delete(2, "k"));
    assert_eq!(s.turn_end(), vec![reply(&client, put_ok("1"))]);
    assert_eq!(s.role.state().store.get(&b"k"[..]), None);
    let applied = s.role.state().applied;
    assert_eq!(
        s.deliver(&client, delete(2, "k")),
        vec![reply(&client, put_ok("1"))],
        "the retry gets the original reply, not a fresh 0"
    );
    assert_eq!(s.role.state().applied, applied, "nothing applied");
    s.deliver(&client, delete(3, "k"));
    assert_eq!(s.turn_end(), vec![reply(&client, put_ok("0"))]);
    assert_eq!(s.role.state().len(), s.role.state().counted_len());
}

/// R11: sessions idle longer than `session_idle_max` expire, decided by the primary on its
/// own monotonic clock and assigned an index like any operation.
#[test]
fn r11_idle_sessions_expire_on_the_primarys_clock() {
    let idle_max = Duration::from_secs(1);
    let mut s = Node::start_with(s1(), |config| config.session_idle_max = idle_max);
    s.adopt(view(1, Some(s1()), None));
    let client = from_client(40, 5);
    s.deliver(&client, OpenSessionRequest { nonce: 8 });
    s.turn_end();
    let expire_at = |at| Action::SetTimer {
        timer: ReplicaTimer::ExpireSessions,
        at,
    };
    s.ctx.set_now(ms(1000));
    s.role.on_timer(&mut s.ctx, ReplicaTimer::ExpireSessions);
    assert_eq!(
        s.take(),
        vec![expire_at(ms(1250))],
        "idle exactly 1 s: not yet"
    );
    s.ctx.set_now(ms(1001));
    s.role.on_timer(&mut s.ctx, ReplicaTimer::ExpireSessions);
    assert_eq!(
        s.take(),
        vec![expire_at(ms(1251)), event("expire 1 idle sessions")]
    );
    assert_eq!(s.role.stats().sessions_expired, 1);
    assert_eq!(
        s.role.state().applied,
        2,
        "the expiry has an index of its own"
    );
    s.deliver(&client, put(1, 1, "k", "a"));
    assert_eq!(
        s.turn_end(),
        vec![reply(&client, put_err(Status::ErrSessionExpired))]
    );
}

/// R12: a state transfer is a snapshot in bounded chunks of one transfer id, installed
/// only whole, starting at chunk 0; a chunk of another transfer is never installed; a break
/// restarts the transfer with a new id.
#[test]
fn r12_a_state_transfer_is_installed_only_whole() {
    let mut p = Node::start_with(s1(), |config| {
        config.transfer_chunk_len_max = 16;
        config.transfer_chunks_per_turn = 4;
    });
    let mut b = Node::start(s2());
    let first = view(1, Some(s1()), None);
    p.adopt(first);
    b.adopt(first);
    let client = from_client(40, 5);
    p.deliver(&client, OpenSessionRequest { nonce: 8 });
    p.turn_end();
    for (seq, key) in ["a", "b", "c"].into_iter().enumerate() {
        p.deliver(&client, put(1, seq as u64 + 1, key, "0123456789"));
        p.turn_end();
    }
    let chunks: Vec<TransferRequest> = sends(&start_transfer_to_s2(&mut p, &mut b))
        .into_iter()
        .map(|(_, message)| match message {
            Message::TransferRequest(chunk) => *chunk,
            other => panic!("a chunk, not {other:?}"),
        })
        .collect();
    // 3 keys of 19 bytes each in 16-byte chunks, then the session table, capped at 4 per
    // turn: chunks 0..4 of one id, the last not yet sent.
    assert_eq!(chunks.len(), 4);
    assert!(
        chunks
            .iter()
            .all(|c| c.transfer_id == chunks[0].transfer_id)
    );
    assert_eq!(
        chunks.iter().map(|c| (c.chunk, c.last)).collect::<Vec<_>>(),
        vec![(0, false), (1, false), (2, false), (3, true)]
    );
    let primary = p.origin(4);
    // Out of order (chunk 1 before any chunk 0) is never taken, nor acknowledged.
    assert_eq!(b.deliver(&primary, chunks[1].clone()), vec![]);
    assert_eq!(b.role.synced_view(), None);
    // Another transfer's chunk 0 starts over; the old id's later chunks are then ignored.
    let mut other = chunks[0].clone();
    other.transfer_id ^= 1;
    assert!(
        !replies(&b.deliver(&primary, other)).is_empty(),
        "chunk 0 is acknowledged"
    );
    for chunk in &chunks[1..] {
        assert_eq!(
            b.deliver(&primary, chunk.clone()),
            vec![],
            "another transfer's chunk"
        );
    }
    assert_eq!(
        b.role.synced_view(),
        None,
        "never installed from two transfers"
    );
    // The whole transfer, in order: installed at its snapshot index.
    let mut last = Vec::new();
    for chunk in &chunks {
        last = b.deliver(&primary, chunk.clone());
    }
    let index = chunks[0].snapshot_index;
    assert_eq!(
        last[0],
        event(format!("installed snapshot at index {index}"))
    );
    let installed = TransferReply {
        view: view(2, Some(s1()), Some(s2())),
        incarnation: s2().incarnation,
        transfer_id: chunks[0].transfer_id,
        chunk: 3,
        outcome: Outcome::Acked,
        installed: true,
        applied: index,
    };
    assert_eq!(last[1], reply(&primary, installed));
    assert_eq!(b.role.state(), p.role.state());

    // A break before the transfer finished restarts it with a new id.
    p.role
        .on_link(&mut p.ctx, Dest::from(s2().addr), Link::Down);
    p.take();
    let again = sends(&p.turn_end());
    let Message::TransferRequest(restart) = &again[0].1 else {
        panic!("a chunk");
    };
    assert_eq!(restart.chunk, 0);
    assert_ne!(restart.transfer_id, chunks[0].transfer_id);
    assert_eq!(p.role.stats().transfers_restarted, 1);
}

// ----- Peer input is untrusted input (docs/protocol.md R13–R16) -----

fn s3() -> Member {
    member(7103, 13)
}

fn noop() -> Entry {
    Entry {
        session: 0,
        seq: 0,
        op: Op::Noop,
    }
}

fn open_entry(nonce: u64) -> Entry {
    Entry {
        session: 0,
        seq: 0,
        op: Op::OpenSession { nonce },
    }
}

fn put_entry(session: u64, seq: u64, key: Bytes, value: Bytes) -> Entry {
    Entry {
        session,
        seq,
        op: Op::Put { key, value },
    }
}

fn forward(view: View, first_index: u64, entries: Vec<Entry>) -> ForwardRequest {
    ForwardRequest {
        view,
        first_index,
        entries,
    }
}

/// View 2 (s1 primary, s2 backup) at both, with s1's link to s2 up (a transfer waits for
/// its link before it fills the window: `transfer_waits_for_its_link`); returns what s1
/// sends at the end of that turn: the transfer's first chunks.
fn start_transfer_to_s2(p: &mut Node, b: &mut Node) -> Actions {
    let second = view(2, Some(s1()), Some(s2()));
    p.link_up(s2());
    p.adopt(second);
    b.adopt(second);
    p.turn_end()
}

/// A transfer sends one chunk until its link to the backup has completed its handshake (a
/// link in its handshake holds at most `connecting_queue_len_max` bytes), then fills its
/// window.
#[test]
fn transfer_waits_for_its_link() {
    let mut p = Node::start_with(s1(), |config| {
        config.transfer_chunk_len_max = 16;
        config.transfer_chunks_per_turn = 4;
    });
    p.adopt(view(1, Some(s1()), None));
    let client = from_client(40, 5);
    p.deliver(&client, OpenSessionRequest { nonce: 8 });
    p.turn_end();
    for (seq, key) in ["a", "b", "c"].into_iter().enumerate() {
        p.deliver(&client, put(1, seq as u64 + 1, key, "0123456789"));
        p.turn_end();
    }
    p.adopt(view(2, Some(s1()), Some(s2())));
    let count = |actions: &Actions| {
        sends(actions)
            .iter()
            .filter(|(_, m)| matches!(m, Message::TransferRequest(_)))
            .count()
    };
    assert_eq!(count(&p.turn_end()), 1, "one chunk opens the link");
    assert_eq!(count(&p.turn_end()), 0, "no more until the link is up");
    // The transfer is four chunks (three keys of 19 bytes in 16-byte chunks, then the
    // session table): the other three go at once.
    assert_eq!(
        count(&p.link_up(s2())),
        3,
        "then the rest, within the window"
    );
}

/// R12, the window stays full: while it has room after a turn's chunks, the primary asks
/// for another turn at once (`TransferMore`, due now), so the next batch is cut while the
/// backup takes the last one; once the window is full it waits for acks.
#[test]
fn a_transfer_asks_for_another_turn_while_its_window_has_room() {
    let mut p = Node::start_with(s1(), |config| {
        config.transfer_chunk_len_max = 16;
        config.transfer_chunks_per_turn = 2;
        config.transfer_window = 4;
    });
    let mut b = Node::start(s2());
    p.adopt(view(1, Some(s1()), None));
    b.adopt(view(1, Some(s1()), None));
    let client = from_client(40, 5);
    p.deliver(&client, OpenSessionRequest { nonce: 8 });
    p.turn_end();
    for (seq, key) in ["a", "b", "c", "d", "e", "f"].into_iter().enumerate() {
        p.deliver(&client, put(1, seq as u64 + 1, key, "0123456789"));
        p.turn_end();
    }
    let now = ms(0);
    let more = Action::SetTimer {
        timer: ReplicaTimer::TransferMore,
        at: now,
    };
    let chunks = |actions: &Actions| {
        sends(actions)
            .into_iter()
            .filter(|(_, m)| matches!(m, Message::TransferRequest(_)))
            .count()
    };
    // Six keys of 19 bytes in 16-byte chunks, then the session table: seven chunks.
    let first = start_transfer_to_s2(&mut p, &mut b);
    assert_eq!(chunks(&first), 2);
    assert!(first.contains(&more), "room for 2 more: {first:?}");
    p.role.on_timer(&mut p.ctx, ReplicaTimer::TransferMore);
    let second = p.turn_end();
    assert_eq!(chunks(&second), 2);
    assert!(!second.contains(&more), "the window is full");
    // Acks of the first two make room: two more, and another turn for nothing (full).
    let acks = relay(&p, &mut b, &first);
    relay_replies(&b, &mut p, &acks);
    let third = p.turn_end();
    assert_eq!(chunks(&third), 2);
    assert!(!third.contains(&more), "the window is full again");
    // The rest: installed whole, so nothing lingers.
    let mut pending = [second, third].concat();
    while !p.role.backup_synced() {
        let acks = relay(&p, &mut b, &pending);
        relay_replies(&b, &mut p, &acks);
        pending = p.turn_end();
        if pending.contains(&more) {
            p.role.on_timer(&mut p.ctx, ReplicaTimer::TransferMore);
            pending.extend(p.turn_end());
        }
        assert!(
            !pending.is_empty() || p.role.backup_synced(),
            "the transfer stalled"
        );
    }
    assert_eq!(b.role.synced_view(), Some(2));
}

/// The primary s1 of view 2 as its backup's link carries it.
fn from_s1() -> Origin {
    from_server(s1(), 7101, 2)
}

/// R13: a view reply counts only from the configured view service's address. A PingReply
/// on any other link, naming another view-service incarnation or view 2^63, is refused: the
/// server keeps serving, adopts nothing and does not refuse service (R9 is the view
/// service's word only).
#[test]
fn refuses_a_ping_reply_not_from_the_view_service() {
    let mut s = Node::start(s1());
    s.adopt(view(1, Some(s1()), None));
    let stranger = from_server(s2(), 9, 1);
    let mut foreign = view(2, Some(s2()), None);
    foreign.service = Incarnation(0xbad);
    assert_eq!(s.deliver(&stranger, PingReply { view: foreign }), vec![]);
    let far = view(1 << 63, Some(s2()), None);
    assert_eq!(s.deliver(&stranger, PingReply { view: far }), vec![]);
    assert_eq!(s.role.refused(), None, "service is not refused");
    assert!(s.role.serving());
    assert_eq!(s.role.view().viewnum, 1);
    assert_eq!(s.role.stats().refused, 2);
}

/// R13: even from the view service, a malformed view is refused: a number with no
/// successor (adopting it would overflow the may-serve rule), one server named twice.
#[test]
fn refuses_a_malformed_view_even_from_the_view_service() {
    let mut s = Node::start(s1());
    s.adopt(view(1, Some(s1()), None));
    assert_eq!(s.adopt(view(u64::MAX, Some(s1()), None)), vec![]);
    assert_eq!(s.adopt(view(2, Some(s1()), Some(member(7101, 77)))), vec![]);
    assert_eq!(s.adopt(view(3, None, None)), vec![]);
    assert_eq!(s.role.view().viewnum, 1);
    assert_eq!(s.role.stats().refused, 3);
}

/// R14: a view carried by a peer's message is taken only from the view-service incarnation
/// this server knows, and not far past its own view. A forward naming another view service
/// is refused (never R9), as is one carrying a view more than PEER_VIEW_AHEAD_MAX ahead.
#[test]
fn refuses_a_peer_view_of_another_view_service_or_far_ahead() {
    let (_, mut b, second) = synced_pair();
    let mut foreign = view(3, Some(s1()), Some(s2()));
    foreign.service = Incarnation(0xbad);
    assert_eq!(
        b.deliver(&from_s1(), forward(foreign, 1, vec![noop()])),
        vec![]
    );
    assert_eq!(
        b.role.refused(),
        None,
        "a peer cannot make a server refuse service"
    );
    let far = view(2 + PEER_VIEW_AHEAD_MAX + 1, Some(s1()), Some(s2()));
    assert_eq!(b.deliver(&from_s1(), forward(far, 1, vec![noop()])), vec![]);
    assert_eq!(b.role.view(), second);
    assert_eq!(b.role.stats().refused, 2);
    // The same forward in the real view is taken.
    assert_eq!(
        b.deliver(&from_s1(), forward(second, 1, vec![noop()])),
        vec![reply(&from_s1(), ack(second, s2(), 1))]
    );
    // A rejection carrying a foreign view does not stop the primary either.
    let (mut p, _, _) = synced_pair();
    let rejection = ForwardReply {
        view: foreign,
        incarnation: s2().incarnation,
        outcome: Outcome::Rejected,
        applied: 0,
    };
    assert_eq!(p.deliver(&from_server(s2(), 7102, 0), rejection), vec![]);
    assert!(p.role.serving());
    assert_eq!(p.role.refused(), None);
}

/// R15: a forward is checked whole before anything in it is applied. A value over
/// VALUE_LEN_MAX (a 4,194,000-byte one once made the next primary panic building a transfer
/// chunk) or a key over KEY_LEN_MAX refuses the whole forward, the valid entries before it
/// included; it is not answered. The server then promotes and transfers as usual.
#[test]
fn refuses_a_forward_with_an_oversized_key_or_value_whole() {
    let (_, mut b, second) = synced_pair();
    let huge = Bytes::from(vec![7u8; 4_194_000]);
    let oversized = forward(
        second,
        1,
        vec![open_entry(1), put_entry(1, 1, bytes("k"), huge)],
    );
    assert_eq!(b.deliver(&from_s1(), oversized), vec![]);
    let long_key = Bytes::from(vec![b'k'; KEY_LEN_MAX + 1]);
    let entries = vec![open_entry(1), put_entry(1, 1, long_key, bytes("v"))];
    assert_eq!(b.deliver(&from_s1(), forward(second, 1, entries)), vec![]);
    let just_over = Bytes::from(vec![0u8; VALUE_LEN_MAX + 1]);
    let entries = vec![open_entry(1), put_entry(1, 1, bytes("k"), just_over)];
    assert_eq!(b.deliver(&from_s1(), forward(second, 1, entries)), vec![]);
    assert_eq!(b.role.state().applied, 0, "nothing of them applied");
    assert_eq!(b.role.stats().refused, 3);
    // At the limit it is taken; promoted, the server cuts chunks within the frame limit.
    let at_limit = Bytes::from(vec![0u8; VALUE_LEN_MAX]);
    let entries = vec![open_entry(1), put_entry(1, 1, bytes("k"), at_limit)];
    assert_eq!(
        b.deliver(&from_s1(), forward(second, 1, entries)),
        vec![reply(&from_s1(), ack(second, s2(), 2))]
    );
    let third = view(3, Some(s2()), Some(s3()));
    b.adopt(third);
    let chunks = sends(&b.turn_end());
    assert!(!chunks.is_empty(), "a transfer to the new backup");
}

/// R15: a forward with more than FORWARD_ENTRIES_MAX entries is refused whole.
#[test]
fn refuses_a_forward_with_too_many_entries() {
    let (_, mut b, second) = synced_pair();
    let entries = vec![noop(); FORWARD_ENTRIES_MAX + 1];
    assert_eq!(b.deliver(&from_s1(), forward(second, 1, entries)), vec![]);
    assert_eq!(b.role.state().applied, 0);
    assert_eq!(b.role.stats().refused, 1);
}

/// R15: a forward starting at index 0, past INDEX_MAX, or more than FORWARD_AHEAD_MAX past
/// the next expected index is refused (a small gap is still ignored and re-acked: R6).
#[test]
fn refuses_a_forward_far_ahead_of_the_next_index() {
    let (_, mut b, second) = synced_pair();
    for first_index in [0, FORWARD_AHEAD_MAX + 2, u64::MAX] {
        assert_eq!(
            b.deliver(&from_s1(), forward(second, first_index, vec![noop(); 2])),
            vec![],
            "first index {first_index}"
        );
    }
    assert_eq!(b.role.stats().refused, 3);
    assert_eq!(
        b.deliver(&from_s1(), forward(second, 3, vec![noop()])),
        vec![reply(&from_s1(), ack(second, s2(), 0))],
        "a small gap: re-acked"
    );
    assert_eq!(b.role.state().applied, 0);
}

/// R15: session ids in a forward are checked as the primary's session check would: a write
/// in a session that does not exist, one whose seq is not after the session's last, one
/// outside any session, or a session-free operation naming a session refuses the forward
/// whole.
#[test]
fn refuses_a_forward_with_bad_session_ids() {
    let (_, mut b, second) = synced_pair();
    let bad = [
        vec![put_entry(99, 1, bytes("k"), bytes("v"))],
        vec![
            open_entry(1),
            put_entry(1, 1, bytes("k"), bytes("a")),
            put_entry(1, 1, bytes("k"), bytes("b")),
        ],
        vec![open_entry(1), put_entry(0, 1, bytes("k"), bytes("v"))],
        vec![Entry {
            session: 5,
            seq: 1,
            op: Op::Noop,
        }],
    ];
    for entries in bad {
        assert_eq!(b.deliver(&from_s1(), forward(second, 1, entries)), vec![]);
    }
    assert_eq!(b.role.state().applied, 0, "nothing applied");
    assert_eq!(b.role.stats().refused, 4);
    let good = vec![open_entry(1), put_entry(1, 1, bytes("k"), bytes("a"))];
    assert_eq!(
        b.deliver(&from_s1(), forward(second, 1, good)),
        vec![reply(&from_s1(), ack(second, s2(), 2))]
    );
}

/// R15: a forward refused at its last entry, after entries that opened a session, wrote to
/// it, replaced and hashed a value, deleted an absent key and expired a session twice: all
/// of it is put back, store, session table, index and state bytes alike.
#[test]
fn a_forward_refused_at_its_last_entry_leaves_the_state_as_it_was() {
    let (_, mut b, second) = synced_pair();
    let good = vec![open_entry(1), put_entry(1, 1, bytes("k"), bytes("a"))];
    assert_eq!(
        b.deliver(&from_s1(), forward(second, 1, good)),
        vec![reply(&from_s1(), ack(second, s2(), 2))]
    );
    let before = b.role.state().clone();
    let entry = |session, seq, op| Entry { session, seq, op };
    let bad = vec![
        open_entry(2),
        put_entry(3, 1, bytes("j"), bytes("b")),
        put_entry(1, 2, bytes("k"), bytes("c")),
        entry(
            1,
            3,
            Op::PutHash {
                key: bytes("k"),
                value: bytes("x"),
            },
        ),
        entry(
            1,
            4,
            Op::Delete {
                key: bytes("absent"),
            },
        ),
        entry(
            0,
            0,
            Op::ExpireSessions {
                sessions: vec![3, 3],
            },
        ),
        put_entry(1, 4, bytes("k"), bytes("stale")),
    ];
    assert_eq!(b.deliver(&from_s1(), forward(second, 3, bad)), vec![]);
    assert_eq!(b.role.stats().refused, 1);
    assert_eq!(b.role.state(), &before, "nothing of the forward is kept");
    assert_eq!(b.role.state().len(), b.role.state().counted_len());
}

/// A one-chunk transfer of view `view` at `snapshot_index`.
fn chunk(view: View, snapshot_index: u64, items: Vec<(Bytes, Bytes)>) -> TransferRequest {
    TransferRequest {
        view,
        transfer_id: 1,
        chunk: 0,
        snapshot_index,
        last: true,
        items,
        sessions: Vec::new(),
    }
}

/// R16: a transfer chunk is checked before it is used. A snapshot index past INDEX_MAX
/// (2^62 once replaced a backup's whole store), an oversized value, too many items, or a
/// session record outside the snapshot it claims is refused; nothing is installed.
#[test]
fn refuses_a_transfer_chunk_at_an_implausible_index_or_out_of_bounds() {
    let (_, mut b, second) = primary_in_view_2();
    b.adopt(second);
    let item = (bytes("k"), bytes("v"));
    assert_eq!(
        b.deliver(&from_s1(), chunk(second, 1 << 62, vec![item.clone()])),
        vec![]
    );
    let huge = (bytes("k"), Bytes::from(vec![0u8; VALUE_LEN_MAX + 1]));
    assert_eq!(b.deliver(&from_s1(), chunk(second, 1, vec![huge])), vec![]);
    let many = vec![item.clone(); TRANSFER_ITEMS_MAX + 1];
    assert_eq!(b.deliver(&from_s1(), chunk(second, 1, many)), vec![]);
    let mut outside = chunk(second, 5, vec![]);
    outside.sessions.push(SessionRecord {
        session: 3,
        last_seq: 1,
        index: 6,
        reply: Bytes::new(),
    });
    assert_eq!(b.deliver(&from_s1(), outside), vec![]);
    assert_eq!(b.role.stats().refused, 4);
    assert_eq!(b.role.synced_view(), None);
    assert_eq!(b.role.state().applied, 0);
    assert!(b.role.state().store.is_empty(), "the store is not replaced");
}

/// R16: a transfer whose next chunk does not come within `transfer_idle_max` is abandoned;
/// its later chunks are then ignored (the primary restarts from chunk 0 on a new link).
#[test]
fn abandons_a_transfer_whose_last_chunk_never_arrives() {
    // Two sessions before view 2, in chunks of one session record each.
    let mut p = Node::start_with(s1(), |config| config.transfer_chunk_len_max = 16);
    let mut b = Node::start_with(s2(), |config| {
        config.transfer_idle_max = Duration::from_secs(2);
    });
    let first = view(1, Some(s1()), None);
    p.adopt(first);
    b.adopt(first);
    let client = from_client(40, 5);
    p.deliver(&client, OpenSessionRequest { nonce: 1 });
    p.deliver(&client, OpenSessionRequest { nonce: 2 });
    p.turn_end();
    let chunks: Vec<TransferRequest> = sends(&start_transfer_to_s2(&mut p, &mut b))
        .into_iter()
        .filter_map(|(_, message)| match message {
            Message::TransferRequest(chunk) => Some(*chunk),
            _ => None,
        })
        .collect();
    assert!(chunks.len() >= 2, "{} chunks", chunks.len());
    let first = b.deliver(&from_s1(), chunks[0].clone());
    assert_eq!(
        first[0],
        Action::SetTimer {
            timer: ReplicaTimer::TransferIdle,
            at: ms(2000),
        }
    );
    b.ctx.set_now(ms(2000));
    b.role.on_timer(&mut b.ctx, ReplicaTimer::TransferIdle);
    let abandoned = b.take();
    assert_eq!(abandoned.len(), 1, "{abandoned:?}");
    assert_eq!(b.role.stats().transfers_abandoned, 1);
    assert_eq!(b.deliver(&from_s1(), chunks[1].clone()), vec![]);
    assert_eq!(b.role.synced_view(), None);
}

/// R16 (primary side): a backup's reply names the incarnation its link carries. An ack
/// naming another incarnation is refused; an ack from another address is not the
/// backup's; neither commits. An ack past the last assigned index is refused.
#[test]
fn refuses_a_forward_ack_naming_another_incarnation_or_index() {
    let (mut p, _, second) = synced_pair();
    let client = from_client(40, 5);
    p.deliver(&client, OpenSessionRequest { nonce: 3 });
    p.turn_end();
    let liar = from_server(member(7102, 99), 7102, 0);
    assert_eq!(p.deliver(&liar, ack(second, s2(), 1)), vec![]);
    assert_eq!(p.role.stats().refused, 1);
    let elsewhere = from_server(member(7103, s2().incarnation.0), 7103, 0);
    assert_eq!(p.deliver(&elsewhere, ack(second, s2(), 1)), vec![]);
    let backup = from_server(s2(), 7102, 0);
    assert_eq!(p.deliver(&backup, ack(second, s2(), 1000)), vec![]);
    assert_eq!(p.role.stats().refused, 2);
    assert_eq!(p.role.committed(), 0, "nothing committed");
    assert_eq!(
        p.deliver(&backup, ack(second, s2(), 1)),
        vec![reply(&client, nonce_reply(Status::Ok, 3, 1))]
    );
}

/// R16 (primary side): a chunk's ack must name a chunk that was sent, and "installed" only
/// for the last chunk at the snapshot's index; anything else is refused and the backup is
/// not synced.
#[test]
fn refuses_a_transfer_ack_for_a_chunk_never_sent_or_a_false_install() {
    let (mut p, _, second) = primary_in_view_2();
    let sent = sends(&p.turn_end());
    let Message::TransferRequest(only) = &sent[0].1 else {
        panic!("a chunk");
    };
    let backup = from_server(s2(), 7102, 0);
    let ack_of = |chunk, applied| TransferReply {
        view: second,
        incarnation: s2().incarnation,
        transfer_id: only.transfer_id,
        chunk,
        outcome: Outcome::Acked,
        installed: true,
        applied,
    };
    assert_eq!(p.deliver(&backup, ack_of(u32::MAX, 0)), vec![]);
    assert_eq!(p.deliver(&backup, ack_of(0, 5)), vec![]);
    let mut liar = ack_of(0, 0);
    liar.incarnation = Incarnation(99);
    assert_eq!(p.deliver(&backup, liar), vec![]);
    assert_eq!(p.role.stats().refused, 3);
    assert!(!p.role.backup_synced());
    assert_eq!(
        p.deliver(&backup, ack_of(0, 0)),
        vec![event("backup synced at index 0")]
    );
}

// ----- State bounds -----

/// `state_bytes_max`: a write that would take the state past it is answered ErrFull (after
/// the commit point, like R10's errors) and not applied; a write that does not grow the
/// state is still taken.
#[test]
fn full_store_answers_writes_with_err_full() {
    let bound = SESSION_RECORD_FIXED_LEN + 10;
    let mut s = Node::start_with(s1(), |config| config.state_bytes_max = bound);
    s.adopt(view(1, Some(s1()), None));
    let client = from_client(40, 5);
    s.deliver(&client, OpenSessionRequest { nonce: 8 });
    s.turn_end();
    s.deliver(&client, put(1, 1, "k", "12345678"));
    assert_eq!(s.turn_end(), vec![reply(&client, put_ok(""))]);
    assert_eq!(s.deliver(&client, put(1, 2, "j", "12")), vec![]);
    assert_eq!(s.turn_end(), vec![reply(&client, put_err(Status::ErrFull))]);
    assert_eq!(s.role.state().store.get(&b"j"[..]), None);
    s.deliver(&client, put(1, 2, "k", "1"));
    assert_eq!(s.turn_end(), vec![reply(&client, put_ok(""))], "shrinks");
    assert_eq!(s.role.stats().full, 1);
}

/// `state_bytes_max` on the backup: the backup applies what the primary accepted only
/// within its own bound (the same rule). A backup with a smaller bound refuses the forward
/// whole, so the primary cannot commit and the client is not answered: the two never
/// diverge and nothing acknowledged is lost.
#[test]
fn backup_refuses_a_forward_past_its_state_bound() {
    let bound = SESSION_RECORD_FIXED_LEN + 10;
    let (mut p, mut b, _) = synced_pair_tuned(|_| {}, |config| config.state_bytes_max = bound);
    let client = from_client(40, 5);
    p.deliver(&client, OpenSessionRequest { nonce: 1 });
    let forward = p.turn_end();
    let acks = relay(&p, &mut b, &forward);
    relay_replies(&b, &mut p, &acks);
    p.deliver(&client, put(1, 1, "k", &"v".repeat(100)));
    let forward = p.turn_end();
    assert_eq!(relay(&p, &mut b, &forward), vec![], "refused, unanswered");
    assert_eq!(b.role.stats().refused, 1);
    assert_eq!(b.role.state().applied, 1);
    assert_eq!(p.role.committed(), 1, "the write never commits");
    assert!(p.role.busy(), "its client still waits");
}

/// R5, R15: a forward whose later entry fails a check is refused whole: the entries before it,
/// already applied in place, are put back (store, session table, index and state bytes), so
/// the backup holds exactly what it held before the forward.
#[test]
fn backup_puts_back_a_forward_refused_part_way() {
    let bound = 2 * SESSION_RECORD_FIXED_LEN + 20;
    let (mut p, mut b, _) = synced_pair_tuned(|_| {}, |config| config.state_bytes_max = bound);
    let (c1, c2) = (from_client(40, 5), from_client(41, 6));
    p.deliver(&c1, OpenSessionRequest { nonce: 1 });
    p.deliver(&c2, OpenSessionRequest { nonce: 2 });
    let forward = p.turn_end();
    let acks = relay(&p, &mut b, &forward);
    relay_replies(&b, &mut p, &acks);
    p.deliver(&c1, put(1, 1, "k", "1"));
    p.deliver(&c2, put(2, 1, "k", "2"));
    p.deliver(&c1, put(1, 2, "big", &"v".repeat(100)));
    let before = b.role.state().clone();
    let forward = p.turn_end();
    assert_eq!(relay(&p, &mut b, &forward), vec![], "refused, unanswered");
    assert_eq!(b.role.stats().refused, 1);
    assert_eq!(b.role.state(), &before, "nothing of the forward is kept");
    assert_eq!(b.role.state().len(), b.role.state().counted_len());
    assert_eq!(b.role.state().store.get(&b"k"[..]), None);
}

/// `sessions_max` and `sessions_per_connection_max`: past them OpenSession is answered
/// ErrFull (never by evicting a session); a closed connection's sessions stop counting.
#[test]
fn open_session_past_the_session_bounds_is_answered_err_full() {
    let mut s = Node::start_with(s1(), |config| config.sessions_max = 2);
    s.adopt(view(1, Some(s1()), None));
    let (c1, c2) = (from_client(40, 5), from_client(41, 6));
    s.deliver(&c1, OpenSessionRequest { nonce: 1 });
    s.deliver(&c2, OpenSessionRequest { nonce: 2 });
    s.deliver(&c2, OpenSessionRequest { nonce: 3 });
    assert_eq!(
        s.turn_end(),
        vec![
            reply(&c1, nonce_reply(Status::Ok, 1, 1)),
            reply(&c2, nonce_reply(Status::Ok, 2, 2)),
            reply(&c2, nonce_reply(Status::ErrFull, 3, 0)),
        ]
    );
    assert_eq!(s.role.state().sessions.len(), 2, "nobody evicted");

    let mut s = Node::start_with(s1(), |config| config.sessions_per_connection_max = 1);
    s.adopt(view(1, Some(s1()), None));
    s.deliver(&c1, OpenSessionRequest { nonce: 1 });
    s.deliver(&c1, OpenSessionRequest { nonce: 2 });
    s.deliver(&c2, OpenSessionRequest { nonce: 3 });
    assert_eq!(
        s.turn_end(),
        vec![
            reply(&c1, nonce_reply(Status::Ok, 1, 1)),
            reply(&c2, nonce_reply(Status::Ok, 3, 2)),
            reply(&c1, nonce_reply(Status::ErrFull, 2, 0)),
        ]
    );
    s.role.on_closed(&mut s.ctx, c1.conn);
    s.deliver(&c1, OpenSessionRequest { nonce: 4 });
    assert_eq!(
        s.turn_end(),
        vec![reply(&c1, nonce_reply(Status::Ok, 4, 3))]
    );
    assert_eq!(s.role.stats().full, 1);
}

/// `unacked_log_bytes_max`: past it the primary takes no new client request; requests are
/// held in arrival order (no reply, nothing assigned) and taken once the backup's ack
/// shrinks the log: backpressure, not an error. Stepping down answers held requests
/// ErrWrongServer like any pending one (R3).
#[test]
fn a_full_unacked_log_holds_requests_until_the_backup_catches_up() {
    let (mut p, mut b, _) = synced_pair_tuned(|config| config.unacked_log_bytes_max = 1, |_| {});
    let (c1, c2) = (from_client(40, 5), from_client(41, 6));
    assert_eq!(p.deliver(&c1, OpenSessionRequest { nonce: 1 }), vec![]);
    assert_eq!(p.deliver(&c2, OpenSessionRequest { nonce: 2 }), vec![]);
    assert_eq!(
        p.role.state().applied,
        1,
        "the second is held, not assigned"
    );
    assert_eq!(p.role.stats().requests_held, 1);
    let forward = p.turn_end();
    assert_eq!(sends(&forward).len(), 1);
    let acks = relay(&p, &mut b, &forward);
    assert_eq!(
        relay_replies(&b, &mut p, &acks),
        vec![reply(&c1, nonce_reply(Status::Ok, 1, 1))]
    );
    let forward = p.turn_end();
    assert_eq!(p.role.state().applied, 2, "taken once the log shrank");
    let acks = relay(&p, &mut b, &forward);
    assert_eq!(
        relay_replies(&b, &mut p, &acks),
        vec![reply(&c2, nonce_reply(Status::Ok, 2, 2))]
    );

    let (mut p, _, _) = synced_pair_tuned(|config| config.unacked_log_bytes_max = 1, |_| {});
    p.deliver(&c1, OpenSessionRequest { nonce: 1 });
    p.deliver(&c2, GetRequest { key: bytes("k") });
    let third = view(3, Some(s2()), None);
    assert_eq!(
        p.adopt(third),
        vec![
            adopted(&third),
            reply(&c1, nonce_reply(Status::ErrWrongServer, 1, 0)),
            reply(&c2, get_err(Status::ErrWrongServer)),
        ]
    );
}

fn get_err(status: Status) -> GetReply {
    GetReply {
        status,
        value: Bytes::new(),
    }
}

/// `pending_replies_max`: a primary holding its maximum of requests and replies drops the
/// next request unanswered (the client retries it), assigning nothing for it.
#[test]
fn a_request_past_the_pending_bound_is_dropped_unanswered() {
    let mut s = Node::start_with(s1(), |config| config.pending_replies_max = 1);
    s.adopt(view(1, Some(s1()), None));
    let (c1, c2) = (from_client(40, 5), from_client(41, 6));
    s.deliver(&c1, OpenSessionRequest { nonce: 1 });
    assert_eq!(s.deliver(&c2, OpenSessionRequest { nonce: 2 }), vec![]);
    assert_eq!(s.deliver(&c2, GetRequest { key: bytes("k") }), vec![]);
    assert_eq!(s.role.stats().requests_shed, 2);
    assert_eq!(s.role.state().applied, 1);
    assert_eq!(
        s.turn_end(),
        vec![reply(&c1, nonce_reply(Status::Ok, 1, 1))]
    );
    s.deliver(&c2, OpenSessionRequest { nonce: 2 });
    assert_eq!(
        s.turn_end(),
        vec![reply(&c2, nonce_reply(Status::Ok, 2, 2))]
    );
}
