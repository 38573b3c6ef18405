//! The lab's view-service test (`viewservice/test_test.go: Test1`), ported phase by phase
//! (lab2.md §3.1), run in the simulator over many seeds. The servers are stand-ins that only
//! ping, as in the lab: each is a node at its own address (a ping must name the address and
//! incarnation its link carries), and nothing is ever sent to it there.

use std::convert::Infallible;
use std::time::Duration;

use proto::viewservice::{GetViewRequest, Member, PingRequest, View};
use proto::{Addr, Incarnation, Message};
use runtime::sim::{NodeIndex, NodeSpec, Sim, SimConfig};
use runtime::{Ctx, Origin, Role};

use kv::host::Host;
use kv::viewservice::{ViewService, ViewTiming};

const PING_INTERVAL: Duration = Duration::from_millis(100);
const DEAD_PINGS: u32 = 5;

fn seeds() -> std::ops::Range<u64> {
    runtime::sim::seeds(100)
}

/// A lab "viewservice Clerk": pings or gets the view when told to, remembers the answer. It
/// is the extra role of a host with no built-in roles, so it gets every view reply.
#[derive(Debug, Default)]
struct Clerk {
    last: Option<View>,
}

impl Role for Clerk {
    type Timer = Infallible;

    fn on_start(&mut self, _ctx: &mut Ctx<Infallible>) {}

    fn on_message(&mut self, _ctx: &mut Ctx<Infallible>, _origin: &Origin, message: Message) {
        match message {
            Message::PingReply(reply) => self.last = Some(reply.view),
            Message::GetViewReply(reply) => self.last = Some(reply.view),
            _ => {}
        }
    }

    fn on_timer(&mut self, _ctx: &mut Ctx<Infallible>, timer: Infallible) {
        match timer {}
    }
}

type Node = Host<Clerk>;

struct Harness {
    sim: Sim<Node>,
    vs_addr: Addr,
    seed: u64,
}

struct Ck {
    node: NodeIndex,
    addr: Addr,
    incarnation: Incarnation,
}

impl Harness {
    fn new(seed: u64) -> Harness {
        let vs_addr = Addr::v4(127, 0, 0, 1, 7000);
        let mut sim = Sim::new(seed, SimConfig::default());
        let timing = ViewTiming {
            ping_interval: PING_INTERVAL,
            dead_pings: DEAD_PINGS,
        };
        sim.add_node(
            NodeSpec::server("vs", vs_addr),
            Host::with_extra(Clerk::default()).with_view_service(ViewService::new(timing)),
        );
        Harness { sim, vs_addr, seed }
    }

    fn clerk(&mut self, name: &str, port: u16) -> Ck {
        let addr = Addr::v4(127, 0, 0, 1, port);
        let spec = NodeSpec::server(name, addr);
        let node = self.sim.add_node(spec, Host::with_extra(Clerk::default()));
        let incarnation = self.sim.incarnation(node).expect("just started");
        Ck {
            node,
            addr,
            incarnation,
        }
    }

    /// Restarts `ck`'s process: the same address, a new incarnation.
    fn restart(&mut self, ck: &Ck) -> Ck {
        self.sim
            .restart(ck.node, Host::with_extra(Clerk::default()));
        let incarnation = self.sim.incarnation(ck.node).expect("just restarted");
        Ck {
            node: ck.node,
            addr: ck.addr,
            incarnation,
        }
    }

    fn member(ck: &Ck) -> Member {
        Member {
            addr: ck.addr,
            incarnation: ck.incarnation,
        }
    }

    /// A synchronous call: send, then run until the answer is back.
    fn call(&mut self, ck: &Ck, message: Message) -> View {
        let vs = self.vs_addr;
        self.sim.with_role(ck.node, |node, ctx| {
            node.extra_mut().last = None;
            ctx.send(vs, message);
        });
        let node = ck.node;
        let answered = self.sim.run_until_true(Duration::from_secs(5), |sim| {
            sim.role(node)
                .is_some_and(|host| host.extra().last.is_some())
        });
        assert!(
            answered,
            "the view service did not answer; {}",
            kv::testkit::replay("pbkv-kv", "sim_viewservice", self.seed)
        );
        self.sim
            .role(ck.node)
            .and_then(|host| host.extra().last)
            .expect("checked above")
    }

    fn ping(&mut self, ck: &Ck, viewnum: u64) -> View {
        let ping = PingRequest {
            server: ck.addr,
            incarnation: ck.incarnation,
            viewnum,
        };
        self.call(ck, ping.into())
    }

    fn get(&mut self, ck: &Ck) -> View {
        self.call(ck, GetViewRequest {}.into())
    }

    fn sleep(&mut self) {
        self.sim.run_for(PING_INTERVAL);
    }

    /// The lab's `check(ck, p, b, n)`.
    fn check(
        &mut self,
        ck: &Ck,
        primary: Option<&Ck>,
        backup: Option<&Ck>,
        viewnum: u64,
        what: &str,
    ) {
        let view = self.get(ck);
        let replay = kv::testkit::replay("pbkv-kv", "sim_viewservice", self.seed);
        assert_eq!(
            view.primary,
            primary.map(Harness::member),
            "{what}: primary; {replay}"
        );
        assert_eq!(
            view.backup,
            backup.map(Harness::member),
            "{what}: backup; {replay}"
        );
        if viewnum != 0 {
            assert_eq!(view.viewnum, viewnum, "{what}: viewnum; {replay}");
        }
    }
}

fn same(view: View, primary: &Ck, backup: Option<&Ck>) -> bool {
    view.primary == Some(Harness::member(primary)) && view.backup == backup.map(Harness::member)
}

fn view_service_test(seed: u64) {
    let mut h = Harness::new(seed);
    let ck1 = h.clerk("ck1", 7101);
    let ck2 = h.clerk("ck2", 7102);
    let ck3 = h.clerk("ck3", 7103);
    let dp = u64::from(DEAD_PINGS);
    assert!(
        h.get(&ck1).primary.is_none(),
        "seed {seed}: there was a primary too soon (PBKV_SEED={seed} replays it)"
    );

    // Phase 1: "First primary".
    for _ in 0..dp * 2 {
        let view = h.ping(&ck1, 0);
        if view.primary == Some(Harness::member(&ck1)) {
            break;
        }
        h.sleep();
    }
    h.check(&ck1, Some(&ck1), None, 1, "first primary");

    // Phase 2: "First backup".
    let vx = h.get(&ck1);
    for _ in 0..dp * 2 {
        h.ping(&ck1, 1);
        let view = h.ping(&ck2, 0);
        if view.backup == Some(Harness::member(&ck2)) {
            break;
        }
        h.sleep();
    }
    h.check(&ck1, Some(&ck1), Some(&ck2), vx.viewnum + 1, "first backup");

    // Phase 3: "Backup takes over if primary fails".
    h.ping(&ck1, 2);
    let vx = h.ping(&ck2, 2);
    for _ in 0..dp * 2 {
        let view = h.ping(&ck2, vx.viewnum);
        if same(view, &ck2, None) {
            break;
        }
        h.sleep();
    }
    h.check(
        &ck2,
        Some(&ck2),
        None,
        vx.viewnum + 1,
        "backup takes over if primary fails",
    );

    // Phase 4: "Restarted server becomes backup".
    let vx = h.get(&ck2);
    h.ping(&ck2, vx.viewnum);
    for _ in 0..dp * 2 {
        h.ping(&ck1, 0);
        let view = h.ping(&ck2, vx.viewnum);
        if same(view, &ck2, Some(&ck1)) {
            break;
        }
        h.sleep();
    }
    h.check(
        &ck2,
        Some(&ck2),
        Some(&ck1),
        vx.viewnum + 1,
        "restarted server becomes backup",
    );

    // Phase 5: "Idle third server becomes backup if primary fails".
    let mut vx = h.get(&ck2);
    h.ping(&ck2, vx.viewnum);
    for _ in 0..dp * 2 {
        h.ping(&ck3, 0);
        let view = h.ping(&ck1, vx.viewnum);
        if same(view, &ck1, Some(&ck3)) {
            break;
        }
        vx = view;
        h.sleep();
    }
    h.check(
        &ck1,
        Some(&ck1),
        Some(&ck3),
        vx.viewnum + 1,
        "idle third server becomes backup",
    );

    // Phase 6: "Restarted primary treated as dead".
    let vx = h.get(&ck1);
    h.ping(&ck1, vx.viewnum);
    for _ in 0..dp * 2 {
        h.ping(&ck1, 0);
        h.ping(&ck3, vx.viewnum);
        let view = h.get(&ck3);
        if view.primary != Some(Harness::member(&ck1)) {
            break;
        }
        h.sleep();
    }
    let view = h.get(&ck3);
    assert_eq!(
        view.primary,
        Some(Harness::member(&ck3)),
        "seed {seed}: expected primary=ck3 (PBKV_SEED={seed} replays it)"
    );

    // "Dead backup is removed from view".
    for _ in 0..dp * 3 {
        let view = h.get(&ck3);
        h.ping(&ck3, view.viewnum);
        h.sleep();
    }
    h.check(&ck3, Some(&ck3), None, 0, "wrong primary or backup");

    // Phase 7: "Viewserver waits for primary to ack view".
    let vx = h.get(&ck1);
    for _ in 0..dp * 3 {
        h.ping(&ck1, 0);
        h.ping(&ck3, vx.viewnum);
        let view = h.get(&ck1);
        if view.viewnum > vx.viewnum {
            break;
        }
        h.sleep();
    }
    h.check(
        &ck1,
        Some(&ck3),
        Some(&ck1),
        vx.viewnum + 1,
        "viewserver waits: ck1 joins",
    );
    let vy = h.get(&ck1);
    for _ in 0..dp * 3 {
        let view = h.ping(&ck1, vy.viewnum);
        if view.viewnum > vy.viewnum {
            break;
        }
        h.sleep();
    }
    h.check(
        &ck1,
        Some(&ck3),
        Some(&ck1),
        vy.viewnum,
        "viewserver waits for primary to ack view",
    );

    // Phase 8: "Uninitialized server can't become primary".
    for _ in 0..dp * 2 {
        let view = h.get(&ck1);
        h.ping(&ck1, view.viewnum);
        h.ping(&ck2, 0);
        h.ping(&ck3, view.viewnum);
        h.sleep();
    }
    for _ in 0..dp * 2 {
        h.ping(&ck2, 0);
        h.sleep();
    }
    let view = h.get(&ck2);
    assert_ne!(
        view.primary,
        Some(Harness::member(&ck2)),
        "seed {seed}: uninitialized backup promoted to primary (PBKV_SEED={seed} replays it)"
    );
}

/// Goal: every phase of the lab's view-service test, with its exact view numbers and timing
/// bounds. Method: the lab's steps against the view-service role in the simulator; clerks
/// ping with fixed incarnations like the lab's named clerks.
#[test]
fn lab_view_service_test1_all_phases() {
    for seed in seeds() {
        view_service_test(seed);
    }
}

/// Goal: a new incarnation at a member's address is a restart even if its first Ping(0)
/// was lost. Method: the primary's address pings a non-zero view number with a new
/// incarnation; the backup is promoted.
#[test]
fn new_incarnation_at_primary_address_is_a_restart() {
    for seed in seeds().take(20) {
        let mut h = Harness::new(seed);
        let ck1 = h.clerk("ck1", 7101);
        let ck2 = h.clerk("ck2", 7102);
        h.ping(&ck1, 0);
        h.ping(&ck1, 1);
        h.ping(&ck2, 0);
        h.ping(&ck1, 2);
        h.ping(&ck2, 2);
        let reborn = h.restart(&ck1);
        let view = h.ping(&reborn, 2);
        assert_eq!(
            view.viewnum, 3,
            "seed {seed}: one view change (PBKV_SEED={seed} replays it)"
        );
        assert_eq!(
            view.primary,
            Some(Harness::member(&ck2)),
            "seed {seed}: backup promoted (PBKV_SEED={seed} replays it)"
        );
        assert_eq!(
            view.backup,
            Some(Harness::member(&reborn)),
            "seed {seed}: reborn is backup (PBKV_SEED={seed} replays it)"
        );
    }
}
