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
    Entry, ForwardReply, ForwardRequest, GetReply, GetRequest, Op, OpenSessionReply,
    OpenSessionRequest, Outcome, PutReply, PutRequest, Status, TransferReply, TransferRequest,
};
use proto::viewservice::{Member, PingReply, PingRequest, View};
use proto::{Incarnation, Message};
use runtime::{Action, Ctx, Dest, Link, Origin, Role};

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
    let mut p = Node::start(s1());
    let mut b = Node::start(s2());
    let first = view(1, Some(s1()), None);
    p.adopt(first);
    b.adopt(first);
    let second = view(2, Some(s1()), Some(s2()));
    assert_eq!(p.adopt(second), vec![adopted(&second)]);
    (p, b, second)
}

/// s1 primary of view 2 with s2 its backup, the transfer done: both synced in view 2.
fn synced_pair() -> (Node, Node, View) {
    let (mut p, mut b, second) = primary_in_view_2();
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
        hash: false,
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
            Action::SetTimer {
                timer: ReplicaTimer::Ping,
                at: ms(200),
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
        "the view service restarted (incarnation {}, was {}): it keeps no state, so its \
         views could name an empty server; restart the cluster",
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
    assert_eq!(s.role.state().store.get(&bytes("k")), Some(&bytes("b")));
    assert_eq!(
        s.role.state().applied,
        applied + 2,
        "two sync no-ops, no writes"
    );
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
    let mut p = Node::start_with(s1(), |config| config.transfer_chunk_len_max = 16);
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
    let second = view(2, Some(s1()), Some(s2()));
    p.adopt(second);
    b.adopt(second);
    let chunks: Vec<TransferRequest> = sends(&p.turn_end())
        .into_iter()
        .map(|(_, message)| match message {
            Message::TransferRequest(chunk) => chunk,
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
        view: second,
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
