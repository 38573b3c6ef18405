//! Role-level tests of the client: one `Client`, fed replies, link breaks and timers at
//! fixed times through a test `Ctx`, with the exact actions it takes asserted. One test per
//! rule of docs/protocol.md (C1–C5), named after it.

mod roles;

use bytes::Bytes;
use kv::client::{Client, ClientConfig, ClientOp, ClientTimer, Outcome};
use proto::kv::{
    GetReply, GetRequest, OpenSessionReply, OpenSessionRequest, PutReply, PutRequest, Status,
};
use proto::viewservice::{GetViewReply, GetViewRequest, Member, View};
use proto::{Addr, Incarnation, Message, NodeId};
use runtime::{Action, ConnId, Ctx, Dest, Link, MonoTime, Origin, PeerClass, Role};

use roles::{VS_PORT, addr, member, ms, send, view};

type Actions = Vec<Action<ClientTimer>>;

struct Ck {
    role: Client,
    ctx: Ctx<ClientTimer>,
}

fn s1() -> Member {
    member(7101, 11)
}

fn vs() -> Addr {
    addr(VS_PORT)
}

fn retry_at(at: MonoTime) -> Action<ClientTimer> {
    Action::SetTimer {
        timer: ClientTimer::Retry,
        at,
    }
}

/// The answer to the request sent with `corr`, as the driver would deliver it.
fn answer_origin(corr: u64) -> Origin {
    Origin {
        conn: ConnId(1),
        class: PeerClass::Member,
        node: NodeId::new("peer").expect("valid"),
        incarnation: Incarnation(1),
        addr: Some(addr(7101)),
        link: Some(Dest::from(addr(7101))),
        corr,
        received_ns: 0,
    }
}

impl Ck {
    fn new() -> Ck {
        let mut ctx = Ctx::for_test("ck", Incarnation(0xc1), ms(0), 3);
        let mut role = Client::new(ClientConfig::new(vs()));
        role.on_start(&mut ctx);
        assert_eq!(ctx.take_actions(), vec![]);
        Ck { role, ctx }
    }

    fn submit(&mut self, op: ClientOp) -> Actions {
        self.role.submit(&mut self.ctx, op);
        self.role.check_invariants();
        self.ctx.take_actions()
    }

    fn answer(&mut self, corr: u64, message: impl Into<Message>) -> Actions {
        self.role
            .on_message(&mut self.ctx, &answer_origin(corr), message.into());
        self.role.check_invariants();
        self.ctx.take_actions()
    }

    /// The driver's `Retry` timer fires at `at`.
    fn timer_at(&mut self, at: MonoTime) -> Actions {
        self.ctx.set_now(at);
        self.role.on_timer(&mut self.ctx, ClientTimer::Retry);
        self.role.check_invariants();
        self.ctx.take_actions()
    }

    /// Submits a Get and answers the view request with `view`: the Get goes out as corr 2.
    fn with_view(view: View) -> Ck {
        let mut ck = Ck::new();
        ck.submit(get("k"));
        ck.answer(1, GetViewReply { view });
        ck
    }

    fn nonce(&self, actions: &Actions) -> u64 {
        match actions.as_slice() {
            [
                Action::Send {
                    message: Message::OpenSessionRequest(open),
                    ..
                },
                ..,
            ] => open.nonce,
            other => panic!("expected an OpenSession first, got {other:?}"),
        }
    }
}

fn get(key: &str) -> ClientOp {
    ClientOp::Get {
        key: Bytes::copy_from_slice(key.as_bytes()),
    }
}

fn put(key: &str, value: &str) -> ClientOp {
    ClientOp::Put {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn get_request(key: &str) -> GetRequest {
    GetRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
    }
}

fn put_request(session: u64, seq: u64, key: &str, value: &str) -> PutRequest {
    PutRequest {
        session,
        seq,
        kind: proto::kv::PutKind::Put,
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn ok(value: &str) -> GetReply {
    GetReply {
        status: Status::Ok,
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn put_status(status: Status) -> PutReply {
    PutReply {
        status,
        previous: Bytes::new(),
    }
}

/// C1: the client caches the view and sends to its primary; it asks the view service only
/// after an error reply, a broken link or a timeout, then retries the same request.
#[test]
fn c1_the_client_caches_the_view_and_asks_again_only_after_a_failure() {
    let mut ck = Ck::new();
    assert_eq!(
        ck.submit(get("k")),
        vec![send(vs(), 1, GetViewRequest {}), retry_at(ms(1000))]
    );
    let first = view(1, Some(s1()), None);
    // The timer armed for the view request already fires by the Get's due time.
    assert_eq!(
        ck.answer(1, GetViewReply { view: first }),
        vec![send(s1().addr, 2, get_request("k"))]
    );
    assert_eq!(ck.role.retry_due(), Some(ms(1000)));
    // An answer in time costs no timer operation: nothing is due any more.
    assert_eq!(ck.answer(2, ok("v")), vec![]);
    assert_eq!(ck.role.retry_due(), None);
    assert_eq!(
        ck.role.completed()[0].outcome,
        Outcome::Done(Bytes::from_static(b"v"))
    );
    // The view is cached: the next request goes straight to the primary.
    ck.ctx.set_now(ms(10));
    assert_eq!(
        ck.submit(get("k")),
        vec![send(s1().addr, 3, get_request("k"))]
    );
    assert_eq!(ck.role.retry_due(), Some(ms(1010)));
    // The timer fires before the Get is due: it is armed again for the rest, nothing sent.
    assert_eq!(ck.timer_at(ms(1000)), vec![retry_at(ms(1010))]);
    assert_eq!(ck.role.view_requests(), 1);
    // A timeout: ask the view service again, then resend the same request.
    assert_eq!(
        ck.timer_at(ms(1010)),
        vec![send(vs(), 4, GetViewRequest {}), retry_at(ms(2010))]
    );
    assert_eq!(
        ck.answer(4, GetViewReply { view: first }),
        vec![send(s1().addr, 5, get_request("k"))]
    );
    assert_eq!(ck.role.retry_due(), Some(ms(2010)));
    // A broken link: pause (the timer moves earlier), then ask again.
    let link = Dest::from(s1().addr);
    ck.role.on_link(&mut ck.ctx, link, Link::Down);
    assert_eq!(ck.ctx.take_actions(), vec![retry_at(ms(1110))]);
    assert_eq!(
        ck.timer_at(ms(1110)),
        vec![send(vs(), 6, GetViewRequest {}), retry_at(ms(2110))]
    );
    assert_eq!(ck.role.view_requests(), 3);
}

/// C1, for writes: a retried Put carries the same session and sequence number.
#[test]
fn c1_a_retried_put_keeps_its_session_and_seq() {
    let mut ck = Ck::with_view(view(1, Some(s1()), None));
    ck.answer(2, ok("v"));
    let open = ck.submit(put("k", "x"));
    let nonce = ck.nonce(&open);
    let session = OpenSessionReply {
        status: Status::Ok,
        nonce,
        session: 9,
    };
    assert_eq!(open, vec![send(s1().addr, 3, OpenSessionRequest { nonce })]);
    assert_eq!(ck.role.retry_due(), Some(ms(1000)));
    assert_eq!(
        ck.answer(3, session),
        vec![send(s1().addr, 4, put_request(9, 1, "k", "x"))]
    );
    assert_eq!(ck.role.retry_due(), Some(ms(1000)));
    ck.role
        .on_link(&mut ck.ctx, Dest::from(s1().addr), Link::Down);
    ck.ctx.take_actions();
    ck.timer_at(ms(100));
    assert_eq!(
        ck.answer(
            5,
            GetViewReply {
                view: view(1, Some(s1()), None)
            }
        ),
        vec![send(s1().addr, 6, put_request(9, 1, "k", "x"))],
        "same session, same seq"
    );
    assert_eq!(ck.role.retry_due(), Some(ms(1100)));
}

/// C2: one outstanding request per session: the second Put waits for the first.
#[test]
fn c2_one_outstanding_request_per_session() {
    let mut ck = Ck::with_view(view(1, Some(s1()), None));
    ck.answer(2, ok("v"));
    let open = ck.submit(put("a", "1"));
    let nonce = ck.nonce(&open);
    let session = OpenSessionReply {
        status: Status::Ok,
        nonce,
        session: 9,
    };
    ck.answer(3, session);
    assert_eq!(
        ck.submit(put("b", "2")),
        vec![],
        "queued behind the outstanding Put"
    );
    assert_eq!(
        ck.answer(4, put_status(Status::Ok)),
        vec![send(s1().addr, 5, put_request(9, 2, "b", "2"))]
    );
    assert_eq!(ck.role.retry_due(), Some(ms(1000)));
}

/// C3: ErrWrongServer means "ask again elsewhere", never "not applied": the operation is
/// not finished, and it is resent after a fresh view.
#[test]
fn c3_wrong_server_is_retried_never_reported() {
    let mut ck = Ck::with_view(view(1, Some(s1()), None));
    let wrong = GetReply {
        status: Status::ErrWrongServer,
        value: Bytes::new(),
    };
    assert_eq!(ck.answer(2, wrong), vec![retry_at(ms(100))]);
    assert!(ck.role.completed().is_empty());
    assert_eq!(
        ck.timer_at(ms(100)),
        vec![send(vs(), 3, GetViewRequest {}), retry_at(ms(1100))]
    );
}

/// C4: ErrSessionExpired ends the request as unknown, and the next one opens a new session.
#[test]
fn c4_an_expired_session_ends_the_request_as_unknown() {
    let mut ck = Ck::with_view(view(1, Some(s1()), None));
    ck.answer(2, ok("v"));
    let open = ck.submit(put("a", "1"));
    let nonce = ck.nonce(&open);
    ck.answer(
        3,
        OpenSessionReply {
            status: Status::Ok,
            nonce,
            session: 9,
        },
    );
    ck.answer(4, put_status(Status::ErrSessionExpired));
    assert_eq!(
        ck.role.completed()[1].outcome,
        Outcome::Unknown("ErrSessionExpired".into())
    );
    let again = ck.submit(put("b", "2"));
    let fresh = ck.nonce(&again);
    assert_eq!(
        again,
        vec![send(s1().addr, 5, OpenSessionRequest { nonce: fresh })]
    );
    assert_eq!(ck.role.retry_due(), Some(ms(1000)));
}

/// C5: with no primary, a request blocks, and whoever waits can tell "nothing was sent"
/// from "sent, outcome unknown".
#[test]
fn c5_with_no_primary_the_request_blocks_unsent() {
    let mut ck = Ck::new();
    ck.submit(get("k"));
    let empty = view(0, None, None);
    assert_eq!(
        ck.answer(1, GetViewReply { view: empty }),
        vec![retry_at(ms(100))]
    );
    let sent = ck.role.outstanding().expect("still outstanding").sent;
    assert!(!sent, "nothing left the client");
    assert_eq!(
        ck.timer_at(ms(100)),
        vec![send(vs(), 2, GetViewRequest {}), retry_at(ms(1100))]
    );
    ck.answer(
        2,
        GetViewReply {
            view: view(1, Some(s1()), None),
        },
    );
    let sent = ck.role.outstanding().expect("still outstanding").sent;
    assert!(
        sent,
        "the Get went to the primary: its outcome is unknown until answered"
    );
}

/// Peer input is untrusted: an OpenSession reply naming session 0 (session ids are indexes,
/// from 1) is refused; the client keeps waiting and its retry sends the same OpenSession.
#[test]
fn refuses_an_open_session_reply_naming_session_0() {
    let mut ck = Ck::with_view(view(1, Some(s1()), None));
    ck.answer(2, ok("v"));
    let open = ck.submit(put("a", "1"));
    let nonce = ck.nonce(&open);
    let zero = OpenSessionReply {
        status: Status::Ok,
        nonce,
        session: 0,
    };
    assert_eq!(ck.answer(3, zero), vec![], "refused: nothing sent");
    assert_eq!(ck.role.completed().len(), 1, "only the Get finished");
    let Action::Send { corr, .. } = ck.timer_at(ms(1000))[0] else {
        panic!("the retry asks for the view");
    };
    let retried = ck.answer(
        corr,
        GetViewReply {
            view: view(1, Some(s1()), None),
        },
    );
    assert_eq!(ck.nonce(&retried), nonce, "the same OpenSession again");
}

/// ErrFull is a definite failure, like Redis's OOM error: a Put answered ErrFull, and an
/// operation whose OpenSession is answered ErrFull, end as refused with a message that
/// says why; the next operation still runs.
#[test]
fn err_full_ends_the_operation_as_refused() {
    let mut ck = Ck::with_view(view(1, Some(s1()), None));
    ck.answer(2, ok("v"));
    let open = ck.submit(put("a", "1"));
    let nonce = ck.nonce(&open);
    let full_open = OpenSessionReply {
        status: Status::ErrFull,
        nonce,
        session: 0,
    };
    ck.answer(3, full_open);
    let Outcome::Refused(why) = &ck.role.completed()[1].outcome else {
        panic!("refused, not {:?}", ck.role.completed()[1].outcome);
    };
    assert!(why.contains("sessions"), "{why}");
    let open = ck.submit(put("b", "2"));
    let nonce = ck.nonce(&open);
    let opened = OpenSessionReply {
        status: Status::Ok,
        nonce,
        session: 9,
    };
    ck.answer(4, opened);
    ck.answer(5, put_status(Status::ErrFull));
    let Outcome::Refused(why) = &ck.role.completed()[2].outcome else {
        panic!("refused, not {:?}", ck.role.completed()[2].outcome);
    };
    assert!(why.contains("store is full"), "{why}");
    assert!(ck.role.outstanding().is_none(), "not retried");
}

/// C7: with several view-service nodes the client asks every one at once and takes the
/// newest view of the epoch it knows, once all answered (or the gather time passed); a view
/// of another epoch is ignored.
#[test]
fn c7_a_client_takes_the_newest_view_of_its_epoch() {
    let s2 = member(7102, 12);
    let nodes = vec![addr(7000), addr(7001), addr(7002)];
    let mut ctx = Ctx::for_test("ck", Incarnation(0xc1), ms(0), 3);
    let mut role = Client::new(ClientConfig::with_view_services(nodes.clone()));
    role.on_start(&mut ctx);
    role.submit(&mut ctx, get("k"));
    let asked: Vec<(Addr, u64)> = ctx
        .take_actions()
        .into_iter()
        .filter_map(|action| match action {
            Action::Send {
                to,
                corr,
                message: Message::GetViewRequest(_),
            } => Some((to.addr, corr)),
            _ => None,
        })
        .collect();
    assert_eq!(
        asked.iter().map(|(to, _)| *to).collect::<Vec<_>>(),
        nodes,
        "every node asked at once"
    );
    let old = view(3, Some(s1()), None);
    let newer = view(4, Some(s2), None);
    let mut foreign = view(9, Some(s1()), None);
    foreign.service = Incarnation(0xbad);
    // A stale node answers first: the client waits for the others (the gather timer).
    role.on_message(
        &mut ctx,
        &answer_origin(asked[0].1),
        GetViewReply { view: old }.into(),
    );
    let first = ctx.take_actions();
    assert_eq!(
        first,
        vec![Action::SetTimer {
            timer: ClientTimer::Gather,
            at: ms(50),
        }]
    );
    role.on_message(
        &mut ctx,
        &answer_origin(asked[1].1),
        GetViewReply { view: newer }.into(),
    );
    assert!(
        ctx.take_actions().is_empty(),
        "one node has not answered yet"
    );
    // The last answer is of another epoch: ignored; the newest of the known epoch wins.
    role.on_message(
        &mut ctx,
        &answer_origin(asked[2].1),
        GetViewReply { view: foreign }.into(),
    );
    let sent = ctx.take_actions();
    let to: Vec<Addr> = sent
        .iter()
        .filter_map(|action| match action {
            Action::Send {
                to,
                message: Message::GetRequest(_),
                ..
            } => Some(to.addr),
            _ => None,
        })
        .collect();
    assert_eq!(
        to,
        vec![s2.addr],
        "the Get goes to view 4's primary: {sent:?}"
    );
}
