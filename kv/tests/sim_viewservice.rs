//! The lab's view-service test (`viewservice/test_test.go: Test1`), ported phase by phase
//! (lab2.md §3.1), run in the simulator over many seeds. The servers are stand-ins that only
//! ping, as in the lab: each is a node at its own address (a ping must name the address and
//! incarnation its link carries), and nothing is ever sent to it there.
//!
//! The same phases run against the etcd mode (docs/protocol.md V11–V20): two or three
//! view-service nodes over the simulated store, every ping and `GetView` sent to every node
//! and the highest view taken, as servers and clients do in that mode; and again with the
//! leader crashed between two phases (a seed-chosen boundary) and restarted once another
//! node leads.

use std::convert::Infallible;
use std::time::Duration;

use proto::viewservice::{GetViewRequest, Member, PingRequest, View};
use proto::{Addr, Incarnation, Message};
use runtime::sim::{NodeIndex, NodeSpec, Sim, SimConfig};
use runtime::{Ctx, Origin, Role};

use kv::host::Host;
use kv::testkit::sim::{sim_epoch, sim_store_settings};
use kv::viewservice::{StoreSettings, StoredRecord, ViewService, ViewTiming};

const PING_INTERVAL: Duration = Duration::from_millis(100);
const DEAD_PINGS: u32 = 5;

fn seeds() -> std::ops::Range<u64> {
    runtime::sim::seeds(100)
}

/// A lab "viewservice Clerk": pings or gets the view when told to, remembers the answers
/// (one per view-service node asked). It is the extra role of a host with no built-in
/// roles, so it gets every view reply.
#[derive(Debug, Default)]
struct Clerk {
    replies: Vec<View>,
    /// When the first answer to the current call came.
    first: Option<runtime::MonoTime>,
}

impl Role for Clerk {
    type Timer = Infallible;

    fn on_start(&mut self, _ctx: &mut Ctx<Infallible>) {}

    fn on_message(&mut self, ctx: &mut Ctx<Infallible>, _origin: &Origin, message: Message) {
        let view = match message {
            Message::PingReply(reply) => reply.view,
            Message::GetViewReply(reply) => reply.view,
            _ => return,
        };
        self.first.get_or_insert(ctx.now());
        self.replies.push(view);
    }

    fn on_timer(&mut self, _ctx: &mut Ctx<Infallible>, timer: Infallible) {
        match timer {}
    }
}

type Node = Host<Clerk>;

struct Harness {
    sim: Sim<Node>,
    /// The view-service nodes: one embedded, or several in the etcd mode.
    vs: Vec<(NodeIndex, Addr)>,
    seed: u64,
    /// The etcd mode's settings (for restarting a node).
    etcd: Option<StoreSettings>,
}

struct Ck {
    node: NodeIndex,
    addr: Addr,
    incarnation: Incarnation,
}

fn timing() -> ViewTiming {
    ViewTiming {
        ping_interval: PING_INTERVAL,
        dead_pings: DEAD_PINGS,
    }
}

impl Harness {
    fn new(seed: u64) -> Harness {
        let vs_addr = Addr::v4(127, 0, 0, 1, 7000);
        let mut sim = Sim::new(seed, SimConfig::default());
        let vs = sim.add_node(
            NodeSpec::server("vs", vs_addr),
            Host::with_extra(Clerk::default()).with_view_service(ViewService::new(timing())),
        );
        Harness {
            sim,
            vs: vec![(vs, vs_addr)],
            seed,
            etcd: None,
        }
    }

    /// `nodes` view-service nodes in the etcd mode, over a store `pbkv init` has made; runs
    /// until one of them leads (the lab's view service is up when its test starts).
    fn etcd(seed: u64, nodes: u16) -> Harness {
        let settings = sim_store_settings();
        let mut sim = Sim::new(seed, SimConfig::default());
        let record = StoredRecord::initial(sim_epoch(seed));
        sim.store_mut().put(&settings.view_key(), record.to_bytes());
        let mut h = Harness {
            sim,
            vs: Vec::new(),
            seed,
            etcd: Some(settings),
        };
        for index in 0..nodes {
            let addr = Addr::v4(127, 0, 0, 1, 7000 + index);
            let spec = NodeSpec::server(&format!("vs{}", index + 1), addr);
            let host = h.view_service_host(addr);
            let node = h.sim.add_node(spec, host);
            h.vs.push((node, addr));
        }
        h.await_leader(&[]);
        h
    }

    fn view_service_host(&self, addr: Addr) -> Node {
        let service = kv::testkit::sim::view_service_at(self.etcd.as_ref(), addr);
        Host::with_extra(Clerk::default()).with_view_service(service)
    }

    fn replay(&self) -> String {
        kv::testkit::replay("pbkv-kv", "sim_viewservice", self.seed)
    }

    /// The view-service node that leads, if one does.
    fn leader(&self) -> Option<usize> {
        (0..self.vs.len()).find(|i| {
            self.sim
                .role(self.vs[*i].0)
                .and_then(Host::view_service)
                .is_some_and(|vs| vs.is_leader())
        })
    }

    /// Runs until a view-service node leads; meanwhile the `live` clerks ping every
    /// interval, acknowledging the view they are told, as running servers would.
    fn await_leader(&mut self, live: &[&Ck]) {
        for _ in 0..100 {
            if self.leader().is_some() {
                return;
            }
            for ck in live {
                let view = self.get(ck);
                self.ping(ck, view.viewnum);
            }
            self.sleep();
        }
        panic!("no view-service node leads; {}", self.replay());
    }

    /// The leader is crashed; once another node leads (its lease ran out, another
    /// campaign won) the crashed one restarts as a new process. The `live` clerks keep
    /// pinging throughout.
    fn change_leader(&mut self, live: &[&Ck]) {
        let Some(old) = self.leader() else {
            panic!("no leader to crash; {}", self.replay());
        };
        let (node, addr) = self.vs[old];
        self.sim.crash(node);
        self.await_leader(live);
        assert_ne!(self.leader(), Some(old), "{}", self.replay());
        let host = self.view_service_host(addr);
        self.sim.restart(node, host);
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

    /// A synchronous call: send to every view-service node that is up, then run until each
    /// has answered, or 5 ms after the first answer (a node that has not read the store
    /// answers nothing); the answer is the highest view among them.
    fn call(&mut self, ck: &Ck, message: Message) -> View {
        let up: Vec<Addr> = self
            .vs
            .iter()
            .filter(|(node, _)| self.sim.is_up(*node))
            .map(|(_, addr)| *addr)
            .collect();
        self.sim.with_role(ck.node, |node, ctx| {
            let clerk = node.extra_mut();
            clerk.replies.clear();
            clerk.first = None;
            for addr in &up {
                ctx.send(*addr, message.clone());
            }
        });
        let node = ck.node;
        let asked = up.len();
        let answered = self.sim.run_until_true(Duration::from_secs(5), |sim| {
            let now = sim.now();
            sim.role(node).is_some_and(|host| {
                let clerk = host.extra();
                clerk.replies.len() >= asked
                    || clerk
                        .first
                        .is_some_and(|first| now >= first.plus(Duration::from_millis(5)))
            })
        });
        assert!(
            answered,
            "the view service did not answer; {}",
            self.replay()
        );
        self.sim
            .role(ck.node)
            .and_then(|host| {
                host.extra()
                    .replies
                    .iter()
                    .max_by_key(|v| v.viewnum)
                    .copied()
            })
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
        let replay = self.replay();
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

/// Between two phases: if `crash_after` names this boundary, the leader is crashed and
/// another takes over while the `live` clerks keep pinging.
fn boundary(h: &mut Harness, crash_after: Option<u32>, phase: u32, live: &[&Ck]) {
    if crash_after == Some(phase) {
        h.change_leader(live);
    }
}

/// Test1's phases against `h`; the leader changes after phase `crash_after`, if given.
fn view_service_test(mut h: Harness, crash_after: Option<u32>) {
    let h = &mut h;
    let ck1 = h.clerk("ck1", 7101);
    let ck2 = h.clerk("ck2", 7102);
    let ck3 = h.clerk("ck3", 7103);
    let dp = u64::from(DEAD_PINGS);
    assert!(
        h.get(&ck1).primary.is_none(),
        "there was a primary too soon; {}",
        h.replay()
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
    boundary(h, crash_after, 1, &[&ck1]);

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
    boundary(h, crash_after, 2, &[&ck1, &ck2]);

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
    boundary(h, crash_after, 3, &[&ck2]);

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
    boundary(h, crash_after, 4, &[&ck2, &ck1]);

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
    boundary(h, crash_after, 5, &[&ck1, &ck3]);

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
        "expected primary=ck3; {}",
        h.replay()
    );
    boundary(h, crash_after, 6, &[&ck3]);

    // "Dead backup is removed from view".
    for _ in 0..dp * 3 {
        let view = h.get(&ck3);
        h.ping(&ck3, view.viewnum);
        h.sleep();
    }
    h.check(&ck3, Some(&ck3), None, 0, "wrong primary or backup");
    boundary(h, crash_after, 7, &[&ck3]);

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
    boundary(h, crash_after, 8, &[&ck3, &ck1]);

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
        "uninitialized backup promoted to primary; {}",
        h.replay()
    );
}

/// Goal: every phase of the lab's view-service test, with its exact view numbers and timing
/// bounds. Method: the lab's steps against the view-service role in the simulator; clerks
/// ping with fixed incarnations like the lab's named clerks.
#[test]
fn lab_view_service_test1_all_phases() {
    for seed in seeds() {
        view_service_test(Harness::new(seed), None);
    }
}

/// Goal: every phase of Test1 holds, with its exact view numbers and timing bounds, when
/// the view service is two or three nodes in the etcd mode (V11–V20): pings and `GetView`
/// go to every node, views are decided by the leader and answered only once stored.
#[test]
fn lab_view_service_test1_in_the_etcd_mode() {
    for seed in seeds() {
        view_service_test(Harness::etcd(seed, 2 + (seed % 2) as u16), None);
    }
}

/// Goal: Test1 still holds when the leader crashes between any two phases: the lease runs
/// out, another node takes over (its grace period, V14) and the phase goes on with the
/// view the store holds; the crashed node then restarts as a follower. Method: the
/// boundary is chosen by the seed, 1 to 8, two or three nodes.
#[test]
fn lab_view_service_test1_with_a_leader_change_between_phases() {
    for seed in seeds() {
        let h = Harness::etcd(seed, 2 + (seed / 8 % 2) as u16);
        view_service_test(h, Some(1 + (seed % 8) as u32));
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
