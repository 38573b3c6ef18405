//! Role-level tests of the view service's etcd mode (docs/protocol.md V11–V20): one
//! `ViewService` with a store, fed pings, ticks and the store's answers at fixed times
//! through a test `Ctx`. The store operations it asks for and the replies it sends are
//! asserted; the store's answers are written by hand, as etcd would give them.

mod roles;

use std::time::Duration;

use kv::viewservice::{StoreSettings, StoredRecord, ViewService, ViewServiceTimer, ViewTiming};
use proto::viewservice::{GetViewRequest, Member, PingRequest, View};
use proto::{Incarnation, Message};
use runtime::store::{Compare, KeyValue, StoreOp, StoreResult, Txn, TxnOp, TxnResult};
use runtime::{Action, Ctx, Role};

use roles::{from_client, from_server, member, ms, view};

const EPOCH: Incarnation = roles::VS_INC;
const LEASE: i64 = 0x77;

type Actions = Vec<Action<ViewServiceTimer>>;

struct Vs {
    role: ViewService,
    ctx: Ctx<ViewServiceTimer>,
    settings: StoreSettings,
    /// The view key's mod revision as the test's "etcd" holds it.
    revision: i64,
}

fn s1() -> Member {
    member(7101, 11)
}
fn s2() -> Member {
    member(7102, 12)
}

fn me() -> Vec<u8> {
    serde_json::json!({"node": "vs", "incarnation": EPOCH.to_string(), "addr": null})
        .to_string()
        .into_bytes()
}

fn store_ops(actions: &Actions) -> Vec<(u64, StoreOp)> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Store { id, op } => Some((*id, op.clone())),
            _ => None,
        })
        .collect()
}

fn ping_replies(actions: &Actions) -> Vec<View> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Reply {
                message: Message::PingReply(reply),
                ..
            } => Some(reply.view),
            _ => None,
        })
        .collect()
}

impl Vs {
    /// A node started at 0 that was granted its lease; its first read is in flight.
    fn start() -> (Vs, u64) {
        let settings = StoreSettings::new("t");
        let mut ctx = Ctx::for_test("vs", EPOCH, ms(0), 1);
        let mut role = ViewService::with_store(ViewTiming::default(), settings.clone());
        role.on_start(&mut ctx);
        let actions = ctx.take_actions();
        let ops = store_ops(&actions);
        assert!(
            matches!(ops.as_slice(), [(_, StoreOp::LeaseGrant { .. })]),
            "a lease first: {ops:?}"
        );
        let mut vs = Vs {
            role,
            ctx,
            settings,
            revision: 5,
        };
        let granted = StoreResult::LeaseGranted {
            lease: LEASE,
            ttl: Duration::from_secs(2),
        };
        let actions = vs.answer(ops[0].0, granted);
        let ops = store_ops(&actions);
        assert_eq!(ops.len(), 1, "then a read: {actions:?}");
        (vs, ops[0].0)
    }

    fn at(&mut self, time_ms: u64) -> &mut Vs {
        self.ctx.set_now(ms(time_ms));
        self
    }

    fn answer(&mut self, id: u64, result: StoreResult) -> Actions {
        self.role.on_store(&mut self.ctx, id, result);
        self.role.check_invariants();
        self.ctx.take_actions()
    }

    fn ping(&mut self, server: Member, viewnum: u64) -> Actions {
        let origin = from_server(server, u64::from(server.addr.0.port()), 1);
        let ping = PingRequest {
            server: server.addr,
            incarnation: server.incarnation,
            viewnum,
        };
        self.role.on_message(&mut self.ctx, &origin, ping.into());
        self.role.check_invariants();
        self.ctx.take_actions()
    }

    fn tick(&mut self) -> Actions {
        self.role.on_timer(&mut self.ctx, ViewServiceTimer::Tick);
        self.ctx.take_actions()
    }

    /// The store's answer to a read: `stored` at the current revision, and the election
    /// key held by this node (`mine`) or another.
    fn read_result(&self, stored: View, acked: bool, mine: bool) -> StoreResult {
        let view_kv = KeyValue {
            value: StoredRecord::of_view(&stored, acked).to_bytes(),
            create_revision: 1,
            mod_revision: self.revision,
            lease: 0,
        };
        let leader_kv = KeyValue {
            value: if mine {
                me()
            } else {
                b"{\"node\":\"other\"}".to_vec()
            },
            create_revision: 3,
            mod_revision: 3,
            lease: if mine { LEASE } else { 0x99 },
        };
        StoreResult::Txn(TxnResult {
            succeeded: true,
            revision: self.revision,
            gets: vec![Some(view_kv), Some(leader_kv)],
        })
    }
}

fn v(viewnum: u64, primary: Option<Member>, backup: Option<Member>) -> View {
    View {
        service: EPOCH,
        ..view(viewnum, primary, backup)
    }
}

#[test]
fn v12_a_node_answers_only_with_a_view_read_back() {
    let (mut vs, read) = Vs::start();
    // Nothing read yet: a ping is recorded but not answered; a GetView neither.
    let queued = vs.at(10).ping(s1(), 0);
    assert!(ping_replies(&queued).is_empty(), "{queued:?}");
    vs.role
        .on_message(&mut vs.ctx, &from_client(9, 1), GetViewRequest {}.into());
    assert!(vs.ctx.take_actions().is_empty(), "no view read: no answer");
    // The read comes back (a follower: the election key is another's): the queued ping is
    // answered with the stored view, and only with it.
    let stored = v(4, Some(s1()), Some(s2()));
    let result = vs.read_result(stored, true, false);
    let actions = vs.at(12).answer(read, result);
    assert_eq!(ping_replies(&actions), vec![stored], "{actions:?}");
}

#[test]
fn v11_a_view_change_is_conditioned_on_the_view_and_the_election_key() {
    let (mut vs, read) = Vs::start();
    // Leader of view 4 (s1, s2), acknowledged; s1 pings, s2 is silent.
    let stored = v(4, Some(s1()), Some(s2()));
    vs.at(1).ping(s2(), 4);
    let result = vs.read_result(stored, true, true);
    vs.at(2).answer(read, result);
    // One dead time after the takeover, s2 is dead: the change waits for nothing else.
    let mut change = None;
    for t in (50..=800).step_by(50) {
        let actions = vs.at(t).ping(s1(), 4);
        let mut ops = store_ops(&actions);
        if ops.is_empty() {
            let tick = vs.at(t).tick();
            ops = store_ops(&tick);
        }
        for (id, op) in ops {
            match &op {
                StoreOp::Txn(Txn { success, .. })
                    if success.iter().any(
                        |o| matches!(o, TxnOp::Put { key, .. } if *key == vs.settings.view_key()),
                    ) =>
                {
                    change = Some(op);
                    break;
                }
                StoreOp::Txn(_) => {
                    let result = vs.read_result(stored, true, true);
                    vs.answer(id, result);
                }
                StoreOp::LeaseKeepAlive { .. } => {
                    let kept = StoreResult::LeaseKeptAlive {
                        ttl: Duration::from_secs(2),
                    };
                    vs.answer(id, kept);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        if change.is_some() {
            break;
        }
    }
    let Some(StoreOp::Txn(txn)) = change else {
        panic!("no view change");
    };
    assert_eq!(
        txn.compare,
        vec![
            Compare::ModRevision {
                key: vs.settings.view_key(),
                revision: vs.revision,
            },
            Compare::CreateRevision {
                key: vs.settings.leader_key(),
                revision: 3,
            },
        ],
        "conditioned on the view as read and on this node's election key"
    );
    let TxnOp::Put { value, .. } = &txn.success[0] else {
        panic!("a put first");
    };
    let (made, acked) = StoredRecord::parse(value).expect("a record");
    assert_eq!(made, v(5, Some(s1()), None));
    assert!(!acked, "a new view is not acknowledged");
}

#[test]
fn v15_a_follower_records_an_acknowledgement() {
    let (mut vs, read) = Vs::start();
    let stored = v(4, Some(s1()), Some(s2()));
    let result = vs.read_result(stored, false, false);
    vs.at(1).answer(read, result);
    // The primary pings view 4: the follower writes the fact, conditioned only on the view.
    let actions = vs.at(60).ping(s1(), 4);
    assert!(
        ping_replies(&actions).is_empty(),
        "the reply waits for the write"
    );
    let ops = store_ops(&actions);
    let [(id, StoreOp::Txn(txn))] = ops.as_slice() else {
        panic!("one write: {ops:?}");
    };
    assert_eq!(
        txn.compare,
        vec![Compare::ModRevision {
            key: vs.settings.view_key(),
            revision: vs.revision,
        }]
    );
    let TxnOp::Put { value, .. } = &txn.success[0] else {
        panic!("a put");
    };
    assert_eq!(StoredRecord::parse(value).expect("record"), (stored, true));
    vs.revision += 1;
    let result = vs.read_result(stored, true, false);
    let answered = vs.at(62).answer(*id, result);
    assert_eq!(
        ping_replies(&answered),
        vec![stored],
        "answered once stored"
    );
    assert!(vs.role.acked());
}

/// Answers every store operation in `actions` as etcd would with `stored` unchanged (reads,
/// keep-alives), until the node asks for a view change, which is returned unanswered.
fn drive(vs: &mut Vs, mut actions: Actions, stored: View) -> Option<Txn> {
    for _ in 0..20 {
        let ops = store_ops(&actions);
        let (id, op) = ops.into_iter().next()?;
        actions = match op {
            StoreOp::Txn(txn)
                if txn.success.iter().any(
                    |o| matches!(o, TxnOp::Put { key, .. } if *key == vs.settings.view_key()),
                ) =>
            {
                return Some(txn);
            }
            StoreOp::Txn(_) => {
                let result = vs.read_result(stored, true, true);
                vs.answer(id, result)
            }
            StoreOp::LeaseKeepAlive { .. } => {
                let kept = StoreResult::LeaseKeptAlive {
                    ttl: Duration::from_secs(2),
                };
                vs.answer(id, kept)
            }
            other => panic!("unexpected {other:?}"),
        };
    }
    None
}

#[test]
fn v17_a_stall_gives_every_server_its_dead_time_again() {
    let (mut vs, read) = Vs::start();
    let stored = v(4, Some(s1()), Some(s2()));
    vs.at(1).ping(s1(), 4);
    vs.at(1).ping(s2(), 4);
    let result = vs.read_result(stored, true, true);
    vs.at(2).answer(read, result);
    // The process stops for 3 s (six dead times). On waking, the pings that arrived meanwhile
    // are handled first (s1's); s2's last ping is 3 s old, but silence during the stall does
    // not count: it gets a dead time again.
    let woke = vs.at(3000).ping(s1(), 4);
    assert_eq!(
        drive(&mut vs, woke, stored),
        None,
        "no view right after a stall"
    );
    let tick = vs.at(3100).tick();
    assert_eq!(drive(&mut vs, tick, stored), None, "s2 is not dead yet");
    // s2 stays silent (the loop runs on, ticking every 50 ms): after its dead time it is
    // replaced, so the check above is not vacuous.
    let mut change = None;
    for t in (3150..=3800).step_by(50) {
        if t % 100 == 0 {
            let pinged = vs.at(t).ping(s1(), 4);
            change = change.or(drive(&mut vs, pinged, stored));
        }
        let tick = vs.at(t).tick();
        change = change.or(drive(&mut vs, tick, stored));
        if change.is_some() {
            assert!(t >= 3499, "s2 dropped at {t} ms, before its dead time");
            break;
        }
    }
    let change = change.expect("s2 dropped after a dead time");
    let TxnOp::Put { value, .. } = &change.success[0] else {
        panic!("a put");
    };
    let (made, _) = StoredRecord::parse(value).expect("a record");
    assert_eq!(made, v(5, Some(s1()), None));
}
