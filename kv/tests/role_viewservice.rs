//! Role-level tests of the view service: one `ViewService`, fed pings, GetViews and ticks at
//! fixed times through a test `Ctx`, with the exact actions it takes asserted. One test per
//! rule of docs/protocol.md (V1–V9), named after it; the lab's own scenarios run in the
//! simulator (`sim_viewservice.rs`).

mod roles;

use kv::viewservice::{ViewService, ViewServiceTimer, ViewTiming};
use proto::viewservice::{GetViewReply, GetViewRequest, Member, PingReply, PingRequest, View};
use runtime::{Action, Ctx, Role};

use roles::{VS_INC, event, from_client, from_server, member, ms, reply, view};

type Actions = Vec<Action<ViewServiceTimer>>;

struct Vs {
    role: ViewService,
    ctx: Ctx<ViewServiceTimer>,
}

impl Vs {
    /// A view service started at time 0 (ping interval 100 ms, 5 dead pings).
    fn start() -> Vs {
        let mut ctx = Ctx::for_test("vs", VS_INC, ms(0), 1);
        let mut role = ViewService::new(ViewTiming::default());
        role.on_start(&mut ctx);
        assert_eq!(ctx.take_actions(), vec![tick_at(100)]);
        Vs { role, ctx }
    }

    fn at(&mut self, time_ms: u64) -> &mut Vs {
        self.ctx.set_now(ms(time_ms));
        self
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

    /// A ping that `origin`'s link carries, whatever server and incarnation it names.
    fn ping_from(&mut self, origin: &runtime::Origin, server: Member, viewnum: u64) -> Actions {
        let ping = PingRequest {
            server: server.addr,
            incarnation: server.incarnation,
            viewnum,
        };
        self.role.on_message(&mut self.ctx, origin, ping.into());
        self.role.check_invariants();
        self.ctx.take_actions()
    }

    fn tick(&mut self) -> Actions {
        self.role.on_timer(&mut self.ctx, ViewServiceTimer::Tick);
        self.role.check_invariants();
        self.ctx.take_actions()
    }

    /// Makes view 2 (s1 primary, s2 backup), acknowledged, all at time 0.
    fn two_servers_acked() -> Vs {
        let mut vs = Vs::start();
        vs.ping(s1(), 0);
        vs.ping(s1(), 1);
        vs.ping(s2(), 0);
        assert_eq!(
            vs.ping(s1(), 2),
            answer(s1(), view(2, Some(s1()), Some(s2())))
        );
        assert!(vs.role.acked());
        vs
    }
}

fn s1() -> Member {
    member(7101, 11)
}
fn s2() -> Member {
    member(7102, 12)
}
fn s3() -> Member {
    member(7103, 13)
}

fn tick_at(time_ms: u64) -> Action<ViewServiceTimer> {
    Action::SetTimer {
        timer: ViewServiceTimer::Tick,
        at: ms(time_ms),
    }
}

fn made(view: View) -> Action<ViewServiceTimer> {
    event(format!("view {}", kv::view_text(&view)))
}

/// The answer to `pinger`'s ping (each server pings on its own connection, corr 1).
fn answer(pinger: Member, view: View) -> Actions {
    vec![Action::Reply {
        conn: runtime::ConnId(u64::from(pinger.addr.0.port())),
        corr: 1,
        message: PingReply { view }.into(),
    }]
}

/// V1: a server that missed `dead_pings` ping intervals is dead — at exactly 5 × 100 ms
/// since its last ping, not a nanosecond before.
#[test]
fn v1_a_server_that_missed_dead_pings_intervals_is_dead() {
    let mut vs = Vs::two_servers_acked();
    vs.at(499);
    assert_eq!(
        vs.ping(s2(), 2),
        answer(s2(), view(2, Some(s1()), Some(s2())))
    );
    assert_eq!(vs.tick(), vec![tick_at(599)], "s1 pinged 499 ms ago: alive");
    vs.at(500);
    let promoted = view(3, Some(s2()), None);
    assert_eq!(vs.tick(), vec![made(promoted), tick_at(600)]);
}

/// V2: the first ping into view 0 makes view 1 with the pinger as primary and no backup.
#[test]
fn v2_the_first_ping_makes_view_1_with_the_pinger_as_primary() {
    let mut vs = Vs::start();
    let first = view(1, Some(s1()), None);
    let mut expected = vec![made(first)];
    expected.extend(answer(s1(), first));
    assert_eq!(vs.ping(s1(), 0), expected);
    assert!(!vs.role.acked());
    // A second server in view 1 is idle until the view is acknowledged.
    assert_eq!(vs.ping(s2(), 0), answer(s2(), first));
}

/// V3: the view changes only after the primary, as the incarnation the view names, pinged
/// the current number; the backup's ping and another incarnation's never acknowledge.
#[test]
fn v3_the_view_waits_for_the_primary_to_acknowledge() {
    let mut vs = Vs::start();
    vs.ping(s1(), 0);
    vs.ping(s2(), 0);
    // Another incarnation at the primary's address does not acknowledge view 1.
    let impostor = member(7101, 99);
    vs.ping(impostor, 1);
    assert!(!vs.role.acked());
    vs.ping(s1(), 0);
    let second = view(2, Some(s1()), Some(s2()));
    let mut expected = vec![made(second)];
    expected.extend(answer(s1(), second));
    assert_eq!(vs.ping(s1(), 1), expected, "acknowledged: now view 2");
    // The backup's ping of 2 is no acknowledgement: with the primary dead, nothing moves.
    vs.at(600);
    vs.ping(s2(), 2);
    assert!(!vs.role.acked());
    assert_eq!(vs.tick(), vec![tick_at(700)]);
    assert_eq!(vs.role.view(), second);
}

/// V4: only the previous backup is promoted and an idle server becomes backup, never
/// primary; with the primary dead and no usable backup, nothing changes.
#[test]
fn v4_only_the_backup_is_promoted_and_an_idle_server_becomes_backup() {
    let mut vs = Vs::two_servers_acked();
    vs.ping(s3(), 0);
    vs.at(400);
    vs.ping(s2(), 2);
    vs.ping(s3(), 0);
    vs.at(500);
    let third = view(3, Some(s2()), Some(s3()));
    assert_eq!(vs.tick(), vec![made(third), tick_at(600)]);

    // Primary dead, no backup: the idle server is never made primary.
    let mut solo = Vs::start();
    solo.ping(s1(), 0);
    solo.ping(s1(), 1);
    solo.at(500);
    let first = view(1, Some(s1()), None);
    assert_eq!(
        solo.ping(s2(), 0),
        answer(s2(), first),
        "s1 is dead at 500 ms"
    );
    assert_eq!(solo.tick(), vec![tick_at(600)]);
    assert_eq!(solo.role.view(), first);
}

/// V5: a ping from another incarnation at a member's address, or a Ping(0) after it pinged
/// a non-zero number, is a restart, handled like a death by one view change — and only if
/// the view is acknowledged, never kept as a flag for later.
#[test]
fn v5_a_restart_is_handled_by_one_view_change_never_a_flag() {
    // Ping(0) from the primary after it pinged 2: a restart. The backup is promoted and the
    // restarted server, alive, becomes the backup.
    let mut vs = Vs::two_servers_acked();
    let third = view(3, Some(s2()), Some(s1()));
    let mut expected = vec![
        event("server 127.0.0.1:7101 restarted (pinged 0)"),
        made(third),
    ];
    expected.extend(answer(s1(), third));
    assert_eq!(vs.ping(s1(), 0), expected);
    // View 3 is not acknowledged: the next Ping(0) from s1 changes nothing, and the next
    // acknowledgement does not act on a remembered restart.
    assert_eq!(vs.ping(s1(), 0), answer(s1(), third));
    assert_eq!(vs.ping(s2(), 3), answer(s2(), third));
    assert_eq!(vs.tick(), vec![tick_at(100)]);

    // A new incarnation at the primary's address: the old one is dead at once.
    let mut vs = Vs::two_servers_acked();
    let reborn = member(7101, 21);
    let third = view(3, Some(s2()), Some(reborn));
    let mut expected = vec![made(third)];
    expected.extend(answer(reborn, third));
    assert_eq!(vs.ping(reborn, 0), expected);
}

/// V6: a stale non-zero view number in a ping is not a restart.
#[test]
fn v6_a_stale_nonzero_viewnum_is_not_a_restart() {
    let mut vs = Vs::two_servers_acked();
    let second = view(2, Some(s1()), Some(s2()));
    assert_eq!(vs.ping(s2(), 1), answer(s2(), second));
    assert_eq!(vs.ping(s1(), 1), answer(s1(), second));
    assert_eq!(vs.tick(), vec![tick_at(100)]);
}

/// V7: dead idle servers are forgotten; a dead backup is dropped from the view (replaced by
/// an idle server, or none).
#[test]
fn v7_dead_idle_servers_are_forgotten_and_a_dead_backup_is_dropped() {
    let mut vs = Vs::two_servers_acked();
    vs.ping(s3(), 0);
    assert_eq!(vs.role.info()["servers"], 3);
    vs.at(499);
    vs.ping(s1(), 2);
    vs.at(500);
    // s2 (backup) and s3 (idle) are both dead: no replacement, and s3 is forgotten.
    let third = view(3, Some(s1()), None);
    assert_eq!(vs.tick(), vec![made(third), tick_at(600)]);
    assert_eq!(
        vs.role.info()["servers"],
        2,
        "the dead idle server is forgotten"
    );
    vs.ping(s1(), 3);
    vs.at(600);
    assert_eq!(vs.tick(), vec![tick_at(700)]);
    assert_eq!(
        vs.role.info()["servers"],
        1,
        "the dropped backup is forgotten"
    );
}

/// V8: GetView returns the current view, acknowledged or not, and is not a ping.
#[test]
fn v8_get_view_returns_the_view_and_is_not_a_ping() {
    let mut vs = Vs::start();
    let client = from_client(50, 7);
    vs.role
        .on_message(&mut vs.ctx, &client, GetViewRequest {}.into());
    let initial = View::initial(VS_INC);
    assert_eq!(
        vs.ctx.take_actions(),
        vec![reply(&client, GetViewReply { view: initial })]
    );
    vs.ping(s1(), 0);
    vs.role
        .on_message(&mut vs.ctx, &client, GetViewRequest {}.into());
    let first = view(1, Some(s1()), None);
    assert_eq!(
        vs.ctx.take_actions(),
        vec![reply(&client, GetViewReply { view: first })],
        "unacknowledged views are returned too"
    );
    assert_eq!(
        vs.role.info()["servers"],
        1,
        "a GetView does not make a server known"
    );
}

/// V9: views carry the view service's own incarnation, view 0 included.
#[test]
fn v9_views_carry_the_view_service_incarnation() {
    let vs = Vs::two_servers_acked();
    assert_eq!(vs.role.view().service, VS_INC);
    let mut other = Ctx::for_test("vs", proto::Incarnation(5), ms(0), 1);
    let mut fresh = ViewService::new(ViewTiming::default());
    fresh.on_start(&mut other);
    assert_eq!(fresh.view(), View::initial(proto::Incarnation(5)));
}

/// Identity: a ping speaks only for the server whose link it came on. A ping naming
/// another address, another incarnation, or any server from a client's link (no address) is
/// refused, answered with nothing and never applied: before the first server it would
/// install a ghost primary; later it could make the view name a server that never pinged.
#[test]
fn refuses_a_ping_naming_another_server_or_incarnation() {
    let mut vs = Vs::start();
    let s1_link = from_server(s1(), 7101, 1);
    // Each names what its link carries but for one field.
    assert_eq!(
        vs.ping_from(&s1_link, member(7102, 11), 0),
        vec![],
        "another address"
    );
    assert_eq!(
        vs.ping_from(&s1_link, member(7101, 99), 0),
        vec![],
        "another incarnation"
    );
    assert_eq!(
        vs.ping_from(&from_client(40, 1), member(7101, 0xc11e), 0),
        vec![],
        "a client's link"
    );
    assert_eq!(vs.role.view().viewnum, 0, "no ghost primary");
    assert_eq!(vs.role.refused_pings(), 3);
    // The server itself is heard as before.
    let first = view(1, Some(s1()), None);
    let mut expected = vec![made(first)];
    expected.extend(answer(s1(), first));
    assert_eq!(vs.ping_from(&s1_link, s1(), 0), expected);
}

/// Identity, with V5: a restarted server pings 0 as a new incarnation on a new link that
/// carries that incarnation; its ping matches its link and is taken as a restart.
#[test]
fn ping_0_from_a_restarted_server_matches_its_new_link() {
    let mut vs = Vs::two_servers_acked();
    let reborn = member(7101, 111);
    vs.ping(reborn, 0);
    assert_eq!(vs.role.refused_pings(), 0);
    assert_eq!(vs.role.view(), view(3, Some(s2()), Some(reborn)));
}
