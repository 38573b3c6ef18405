//! Randomized simulation beyond the lab: random client workloads on a few keys under random
//! schedules of crashes, restarts, partitions (including a primary cut off from the view
//! service only), frame drops with connection breaks, and the unreliable mode. Invariants
//! are checked throughout each run; at its end the client history is checked for
//! linearizability per key. Rare events are counted over the sweep, and a sweep in which one
//! never happened fails: a fault schedule that never exercises a rule proves nothing. Odd
//! seeds run with keys on every node (the link layer's full handshake), even seeds without.
//!
//! `PBKV_SEEDS=N` sets the number of seeds (default 1000); `PBKV_SEED=S` replays one.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kv::client::{ClientOp, Completed, Outcome};
use kv::host::Host;
use kv::lincheck::{Kind, Operation, Output, check};
use kv::replica::{ReplicaConfig, ReplicaStats};
use kv::testkit::lab::{DEAD_PINGS, LabCluster};
use kv::testkit::seeds;
use kv::testkit::sim::{Cluster, timing};
use proto::Addr;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use runtime::sim::{NodeIndex, SimConfig, StoreFaults};

const SERVERS: usize = 3;
const CLIENTS: usize = 3;
const RUN: Duration = Duration::from_secs(12);
const STEP: Duration = Duration::from_millis(5);
const VIEW_SERVICES: usize = 3;

#[derive(Debug, Default, Clone, Copy)]
struct Events {
    failovers: u64,
    transfers: u64,
    transfers_restarted: u64,
    dedup_hits: u64,
    forwards_rejected: u64,
    views_from_peers: u64,
    sessions_expired: u64,
    promotions_refused: u64,
    ops_ok: u64,
    ops_unknown: u64,
    /// Runs that ended stalled by the accepted limit (no liveness check possible).
    stalls_accepted: u64,
    /// etcd mode: leaderships taken (by nodes alive at the end).
    leaderships: u64,
    /// etcd mode: view writes the store refused or that failed (outcome unknown).
    refused_view_writes: u64,
}

impl Events {
    fn add(&mut self, stats: ReplicaStats) {
        self.failovers += stats.promotions;
        self.transfers += stats.transfers_installed;
        self.transfers_restarted += stats.transfers_restarted;
        self.dedup_hits += stats.dedup_hits;
        self.forwards_rejected += stats.forwards_rejected;
        self.views_from_peers += stats.views_from_peers;
        self.sessions_expired += stats.sessions_expired;
        self.promotions_refused += stats.promotions_refused;
    }

    fn merge(&mut self, other: Events) {
        self.failovers += other.failovers;
        self.transfers += other.transfers;
        self.transfers_restarted += other.transfers_restarted;
        self.dedup_hits += other.dedup_hits;
        self.forwards_rejected += other.forwards_rejected;
        self.views_from_peers += other.views_from_peers;
        self.sessions_expired += other.sessions_expired;
        self.promotions_refused += other.promotions_refused;
        self.stalls_accepted += other.stalls_accepted;
        self.ops_ok += other.ops_ok;
        self.ops_unknown += other.ops_unknown;
        self.leaderships += other.leaderships;
        self.refused_view_writes += other.refused_view_writes;
    }
}

struct Run {
    c: Cluster,
    /// The etcd mode: three view-service nodes over the simulated store, with their own
    /// faults (crashes, pauses, store faults, lost quorum).
    etcd: bool,
    rng: StdRng,
    clerks: Vec<NodeIndex>,
    /// Each clerk's idle-until time (virtual ns).
    idle_until: Vec<u64>,
    next_value: u64,
    events: Events,
    /// View-service nodes stopped (etcd mode).
    paused: Vec<NodeIndex>,
}

fn replay(seed: u64) -> String {
    kv::testkit::replay("pbkv-kv", "sim_random", seed)
}

impl Run {
    fn new(seed: u64, etcd: bool) -> Run {
        let config = SimConfig {
            drop_rate: 0.0,
            latency_tail_rate: 0.02,
            link_timeout: Duration::from_millis(800),
            ..SimConfig::default()
        };
        // Odd seeds run a keyed cluster (every connection through the full handshake), even
        // seeds one in protected mode.
        let mut c = if etcd {
            let mut c = Cluster::with_etcd(seed, config, VIEW_SERVICES);
            c.sim.set_store_faults(StoreFaults {
                request_loss_rate: 0.02,
                reply_loss_rate: 0.02,
                op_timeout: Duration::from_millis(500),
                ..StoreFaults::default()
            });
            c
        } else if seed % 2 == 1 {
            let (member, client) = kv::testkit::sim::sim_keys(seed);
            Cluster::with_keys(seed, config, member, client)
        } else {
            Cluster::new(seed, config)
        };
        c.replica_config = Box::new(|me: Addr, vs: Addr| {
            let mut config = ReplicaConfig::new(me, vs);
            config.timing = timing();
            config.session_idle_max = Duration::from_millis(1500);
            // Small chunks and windows so transfers span turns and can break midway.
            config.transfer_chunk_len_max = 64;
            config.transfer_window = 2;
            config.transfer_chunks_per_turn = 1;
            config
        });
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        for _ in 0..SERVERS {
            let unreliable = rng.random_bool(0.2);
            c.start_server(unreliable);
        }
        let clerks: Vec<NodeIndex> = (0..CLIENTS).map(|_| c.clerk()).collect();
        Run {
            c,
            etcd,
            rng,
            clerks,
            idle_until: vec![0; CLIENTS],
            next_value: 1,
            events: Events::default(),
            paused: Vec::new(),
        }
    }

    fn random_op(&mut self) -> ClientOp {
        let key = Bytes::from(format!("k{}", self.rng.random_range(0..3)));
        let value = Bytes::from(format!("v{}", self.next_value));
        self.next_value += 1;
        match self.rng.random_range(0..20) {
            0..=7 => ClientOp::Get { key },
            8..=14 => ClientOp::Put { key, value },
            15..=17 => ClientOp::PutHash { key, value },
            _ => ClientOp::Delete { key },
        }
    }

    fn feed_clients(&mut self) {
        let now = self.c.sim.now().0;
        for index in 0..CLIENTS {
            let clerk = self.clerks[index];
            let idle = self
                .c
                .sim
                .role(clerk)
                .and_then(Host::client)
                .is_some_and(|c| c.pending() == 0);
            if !idle || now < self.idle_until[index] {
                continue;
            }
            if self.rng.random_bool(0.01) {
                // A pause long enough for the session to expire.
                self.idle_until[index] = now + 2_000_000_000;
                continue;
            }
            let op = self.random_op();
            self.c.submit(clerk, op);
        }
    }

    fn fault(&mut self) {
        if self.etcd && self.rng.random_bool(0.4) {
            self.view_service_fault();
            return;
        }
        let server = self.rng.random_range(0..SERVERS);
        let node = self.c.servers[server].0;
        match self.rng.random_range(0..13) {
            0 | 1 => self.c.kill(server),
            2..=4 => {
                if !self.c.sim.is_up(node) {
                    let unreliable = self.rng.random_bool(0.2);
                    self.c.sim.set_unreliable(node, unreliable);
                    let addr = self.c.addr(server);
                    let role = self.c.replica(addr);
                    self.c.sim.restart(node, role);
                }
            }
            5 => {
                // The primary (or any server) cut off from the view service only (in the
                // etcd mode from some of its nodes: its pings reach only the others).
                let count = self.c.view_services.len();
                let cut = self.rng.random_range(1..=count);
                let first = self.rng.random_range(0..count);
                let nodes: Vec<NodeIndex> = (0..cut)
                    .map(|i| self.c.view_services[(first + i) % count].0)
                    .collect();
                self.c.sim.partition(&[node], &nodes);
            }
            6 => {
                let other = self.c.servers[(server + 1) % SERVERS].0;
                self.c.sim.partition(&[node], &[other]);
            }
            7 => {
                let clerk = self.clerks[self.rng.random_range(0..CLIENTS)];
                self.c.sim.block(clerk, node);
            }
            8 => self.c.sim.set_drop_rate(0.01),
            11 => {
                // The primary dies while its new backup is still being transferred to: the
                // view service may then name an unsynced backup primary, which must refuse.
                let transferring = self.c.servers.iter().position(|(node, _)| {
                    self.c
                        .sim
                        .role(*node)
                        .and_then(Host::replica)
                        .is_some_and(|replica| {
                            replica.serving()
                                && !replica.backup_synced()
                                && replica.view().backup.is_some()
                        })
                });
                if let Some(primary) = transferring {
                    self.c.kill(primary);
                }
            }
            9 => self.c.sim.set_drop_rate(0.0),
            _ => self.c.sim.heal(),
        }
    }

    /// A fault of the view service's own (etcd mode): a node crashes or stops cleanly
    /// (SIGTERM: V21), restarts, stops for a while (SIGSTOP), is cut off from the store; the
    /// store loses its quorum or regains it.
    fn view_service_fault(&mut self) {
        let index = self.rng.random_range(0..self.c.view_services.len());
        let (node, addr) = self.c.view_services[index];
        match self.rng.random_range(0..8) {
            0 if self.rng.random_bool(0.5) => self.c.sim.stop(node),
            0 => self.c.sim.crash(node),
            1 | 2 => {
                if !self.c.sim.is_up(node) {
                    let host = self.c.view_service_host(addr);
                    self.c.sim.restart(node, host);
                }
            }
            3 => {
                self.c.sim.pause(node, true);
                self.paused.push(node);
            }
            4 => {
                for node in std::mem::take(&mut self.paused) {
                    self.c.sim.pause(node, false);
                }
            }
            5 => self.c.sim.cut_from_store(node, true),
            6 => {
                let lost = self.rng.random_bool(0.5);
                self.c.sim.set_store_quorum_lost(lost);
            }
            _ => {
                for (node, _) in self.c.view_services.clone() {
                    self.c.sim.cut_from_store(node, false);
                }
            }
        }
    }

    /// Ends every view-service fault: nodes resume and restart, the store is whole.
    fn heal_view_service(&mut self) {
        for node in std::mem::take(&mut self.paused) {
            self.c.sim.pause(node, false);
        }
        self.c.sim.set_store_quorum_lost(false);
        for (node, addr) in self.c.view_services.clone() {
            self.c.sim.cut_from_store(node, false);
            if !self.c.sim.is_up(node) {
                let host = self.c.view_service_host(addr);
                self.c.sim.restart(node, host);
            }
        }
    }

    fn check_invariants(&self, seed: u64) {
        if self.etcd {
            check_view_chain(&self.c, seed);
        }
        let mut serving: BTreeMap<u64, Addr> = BTreeMap::new();
        let replicas: Vec<_> = self
            .c
            .servers
            .iter()
            .filter_map(|(node, addr)| Some((*addr, self.c.sim.role(*node)?.replica()?)))
            .collect();
        for (addr, replica) in &replicas {
            if !replica.serving() {
                continue;
            }
            // At most one server may serve as primary of a view.
            let view = replica.view().viewnum;
            if let Some(other) = serving.insert(view, *addr) {
                panic!(
                    "seed {seed}: {other} and {addr} both serve view {view}; {}",
                    replay(seed)
                );
            }
            // The synced backup's applied entries are a prefix of the primary's order: when
            // it has applied as much, it holds the same state.
            for (backup_addr, backup) in &replicas {
                let synced =
                    backup.synced_view() == Some(view) && replica.view().is_backup(backup.member());
                if synced && backup.state().applied == replica.state().applied {
                    assert!(
                        backup.state().store == replica.state().store
                            && backup.state().sessions == replica.state().sessions,
                        "seed {seed}: backup {backup_addr} diverged from primary {addr} \
                         at index {}; {}",
                        backup.state().applied,
                        replay(seed)
                    );
                }
            }
        }
    }

    /// Whether the service is stalled by the accepted limit (DESIGN.md §9): the view's
    /// primary is gone (crashed) before it acknowledged the view, or with no synced backup
    /// to promote; or it is running but may not serve (it was named primary without being
    /// synced in the previous view). Then no new view can help, and the service waits
    /// forever, as the lab accepts.
    fn stalled_by_the_accepted_limit(&self) -> bool {
        let view = self.c.view();
        let acked = match self.c.stored_view() {
            Some((_, acked)) => acked,
            None => self
                .c
                .sim
                .role(self.c.vs)
                .and_then(Host::view_service)
                .is_some_and(|vs| vs.acked()),
        };
        let Some(primary) = view.primary else {
            return false;
        };
        let running = |member: proto::viewservice::Member| {
            self.c.servers.iter().find_map(|(node, addr)| {
                let replica = self.c.sim.role(*node)?.replica()?;
                (*addr == member.addr && replica.member() == member).then_some(replica)
            })
        };
        match running(primary) {
            Some(replica) => !replica.serving() && replica.stats().promotions_refused > 0,
            None => {
                !acked
                    || view
                        .backup
                        .and_then(running)
                        .is_none_or(|backup| backup.synced_view() != Some(view.viewnum))
            }
        }
    }

    /// Liveness after the last fault heals: unless the service is stalled by the accepted
    /// limit, every outstanding operation completes within `SETTLE` of virtual time (20 dead
    /// times: a failover, a transfer and a client retry fit many times over), and then a
    /// Put and a Get from every client complete within `FRESH_OPS`.
    fn check_liveness(&mut self, seed: u64) {
        const SETTLE: Duration = Duration::from_secs(10);
        const FRESH_OPS: Duration = Duration::from_secs(3);
        let clerks = self.clerks.clone();
        let settled = self.c.sim.run_until_true(SETTLE, |sim| {
            clerks.iter().all(|clerk| {
                sim.role(*clerk)
                    .and_then(Host::client)
                    .is_some_and(|client| client.pending() == 0)
            })
        });
        if self.stalled_by_the_accepted_limit() {
            self.events.stalls_accepted += 1;
            return;
        }
        assert!(
            settled,
            "seed {seed}: operations still outstanding {SETTLE:?} after the faults healed, \
             view {}; servers: {}; {}",
            kv::view_text(&self.c.view()),
            self.describe_servers(),
            replay(seed)
        );
        let mut ids = Vec::new();
        for clerk in &clerks {
            let key = Bytes::from_static(b"k0");
            let value = Bytes::from(format!("live{}", self.next_value));
            self.next_value += 1;
            let put = ClientOp::Put {
                key: key.clone(),
                value,
            };
            ids.push((*clerk, self.c.submit(*clerk, put), false));
            ids.push((*clerk, self.c.submit(*clerk, ClientOp::Get { key }), true));
        }
        let done = self.c.sim.run_until_true(FRESH_OPS, |sim| {
            clerks.iter().all(|clerk| {
                sim.role(*clerk)
                    .and_then(Host::client)
                    .is_some_and(|client| client.pending() == 0)
            })
        });
        assert!(
            done,
            "seed {seed}: new operations did not complete within {FRESH_OPS:?} of a healed, \
             settled cluster; {}",
            replay(seed)
        );
        for (clerk, id, is_get) in ids {
            let outcome = self.c.completed(clerk, id).map(|c| c.outcome);
            // A Put may end unknown if its session expired during the settle (it then opens
            // a new one); a Get never does.
            let ok = match outcome {
                Some(Outcome::Done(_)) => true,
                Some(Outcome::NoKey) => is_get,
                Some(Outcome::Unknown(_)) => !is_get,
                _ => false,
            };
            assert!(
                ok,
                "seed {seed}: a fresh operation ended {outcome:?}; {}",
                replay(seed)
            );
        }
    }

    /// Each server's standing, for failure messages.
    fn describe_servers(&self) -> String {
        let mut out = Vec::new();
        for (node, addr) in &self.c.servers {
            let standing = match self.c.sim.role(*node).and_then(Host::replica) {
                Some(r) => format!(
                    "{addr} {} view {} serving {} synced_view {:?} applied {} committed {}",
                    r.member().incarnation,
                    r.view().viewnum,
                    r.serving(),
                    r.synced_view(),
                    r.state().applied,
                    r.committed()
                ),
                None => format!("{addr} down"),
            };
            out.push(standing);
        }
        out.join("; ")
    }

    fn history(&self) -> Vec<Operation> {
        let mut ops = Vec::new();
        for clerk in &self.clerks {
            let Some(client) = self.c.sim.role(*clerk).and_then(Host::client) else {
                continue;
            };
            ops.extend(client.completed().iter().filter_map(history_op));
            if let Some(outstanding) = client.outstanding() {
                let (key, kind) = kind_of(outstanding.op);
                let output = Output::Unknown;
                ops.push(Operation {
                    key,
                    kind,
                    output,
                    invoked: outstanding.invoked_at.0,
                    completed: None,
                });
            }
        }
        ops
    }
}

fn kind_of(op: &ClientOp) -> (Bytes, Kind) {
    match op {
        ClientOp::Get { key } => (key.clone(), Kind::Get),
        ClientOp::Put { key, value } => (key.clone(), Kind::Put(value.clone())),
        ClientOp::PutHash { key, value } => (key.clone(), Kind::PutHash(value.clone())),
        ClientOp::Delete { key } => (key.clone(), Kind::Delete),
    }
}

fn history_op(done: &Completed) -> Option<Operation> {
    let (key, kind) = kind_of(&done.op);
    let at = Some(done.completed_at.0);
    let (completed, output) = match (&done.outcome, &kind) {
        (Outcome::Done(value), Kind::Get) => (at, Output::Value(Some(value.clone()))),
        (Outcome::NoKey, Kind::Get) => (at, Output::Value(None)),
        (Outcome::Done(_), Kind::Put(_)) => (at, Output::Done),
        (Outcome::Done(previous), Kind::PutHash(_)) => (at, Output::Previous(previous.clone())),
        (Outcome::Done(reply), Kind::Delete) => (at, Output::Deleted(reply.as_ref() == b"1")),
        (Outcome::Refused(_), _) => return None,
        _ => (None, Output::Unknown),
    };
    Some(Operation {
        key,
        kind,
        output,
        invoked: done.invoked_at.0,
        completed,
    })
}

/// The last operations of the shortest prefix (by invocation) of `key`'s operations that
/// admits no linearization: where to look first. A prefix of a linearizable history is
/// linearizable, so a binary search finds it.
fn failing_prefix_tail(history: &[Operation], key: &Bytes) -> String {
    let mut ops: Vec<Operation> = history.iter().filter(|o| o.key == *key).cloned().collect();
    ops.sort_by_key(|o| o.invoked);
    let (mut passes, mut fails) = (0, ops.len());
    while passes + 1 < fails {
        let mid = (passes + fails) / 2;
        if check(&ops[..mid]).is_err() {
            fails = mid;
        } else {
            passes = mid;
        }
    }
    ops[fails.saturating_sub(12)..fails]
        .iter()
        .map(|o| {
            format!(
                "  {:?} -> {:?}, invoked {} completed {:?}",
                o.kind, o.output, o.invoked, o.completed
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn run_seed_in(seed: u64, etcd: bool) -> Events {
    let mut run = Run::new(seed, etcd);
    run.c.poll(DEAD_PINGS * 2, |c| {
        c.primary().is_some() && c.backup().is_some()
    });
    let start = run.c.sim.now();
    let mut next_fault = Duration::from_millis(500);
    while run.c.sim.now().since(start) < RUN {
        let elapsed = run.c.sim.now().since(start);
        if elapsed >= next_fault {
            run.fault();
            next_fault = elapsed + Duration::from_millis(run.rng.random_range(100..700));
        }
        run.feed_clients();
        run.c.sim.run_for(STEP);
        run.check_invariants(seed);
    }
    // The last fault heals: partitions, drops and the unreliable mode end, and crashed
    // servers restart.
    run.c.sim.heal();
    run.c.sim.set_drop_rate(0.0);
    if etcd {
        run.heal_view_service();
        // Store faults end too: the healed store answers every request.
        run.c.sim.set_store_faults(StoreFaults::default());
    }
    for server in 0..SERVERS {
        let node = run.c.servers[server].0;
        run.c.sim.set_unreliable(node, false);
        if !run.c.sim.is_up(node) {
            let addr = run.c.addr(server);
            let role = run.c.replica(addr);
            run.c.sim.restart(node, role);
        }
    }
    run.check_liveness(seed);
    run.check_invariants(seed);
    let history = run.history();
    if let Err(violation) = check(&history) {
        panic!(
            "seed {seed}: not linearizable: key {:?}: {}; the shortest failing prefix \
             ends:\n{}\n{}",
            violation.key,
            violation.explanation,
            failing_prefix_tail(&history, &violation.key),
            replay(seed)
        );
    }
    for (node, _) in &run.c.servers {
        if let Some(replica) = run.c.sim.role(*node).and_then(Host::replica) {
            run.events.add(replica.stats());
        }
    }
    for (node, _) in &run.c.view_services {
        if let Some(service) = run.c.sim.role(*node).and_then(Host::view_service) {
            let info = service.info();
            let count = |field: &str| info["store"][field].as_u64().unwrap_or(0);
            run.events.leaderships += count("leaderships");
            run.events.refused_view_writes += count("failed_writes");
        }
    }
    // Stats of crashed incarnations are lost with them; count what survives.
    run.events.ops_ok = history.iter().filter(|op| op.completed.is_some()).count() as u64;
    run.events.ops_unknown = history.iter().filter(|op| op.completed.is_none()).count() as u64;
    run.events
}

/// Runs `seeds` split over two threads; returns the events summed.
fn sweep(seeds: &[u64], etcd: bool) -> Events {
    let halves: Vec<Vec<u64>> = seeds
        .chunks(seeds.len().div_ceil(2).max(1))
        .map(<[u64]>::to_vec)
        .collect();
    let threads: Vec<_> = halves
        .into_iter()
        .map(|part| {
            std::thread::spawn(move || {
                let mut events = Events::default();
                for seed in part {
                    events.merge(run_seed_in(seed, etcd));
                }
                events
            })
        })
        .collect();
    let mut events = Events::default();
    for thread in threads {
        events.merge(thread.join().expect("a seed failed: see its message above"));
    }
    events
}

/// Goal: safety under random faults, linearizability of every history, and every rare event
/// exercised at least once in the sweep. Method: seeds split over two threads.
#[test]
fn random_faults_keep_histories_linearizable() {
    let all: Vec<u64> = seeds(1000).collect();
    let events = sweep(&all, false);
    println!("rare events over {} seeds: {events:?}", all.len());
    // Frequent kills stall many runs for good (a primary killed before it acknowledged its
    // view, or before its backup was synced): those runs cannot be checked for liveness.
    // At least half of a sweep must be.
    assert!(
        events.stalls_accepted * 2 < all.len() as u64 || all.len() < 20,
        "{} of {} runs ended stalled: the liveness check checked too little",
        events.stalls_accepted,
        all.len()
    );
    if all.len() >= 100 {
        let counts = [
            ("failover", events.failovers),
            ("state transfer", events.transfers),
            ("restarted transfer", events.transfers_restarted),
            ("dedup hit", events.dedup_hits),
            ("rejected forward", events.forwards_rejected),
            ("view adopted from a peer", events.views_from_peers),
            ("expired session", events.sessions_expired),
            (
                "refused promotion of an unsynced backup",
                events.promotions_refused,
            ),
        ];
        for (name, count) in counts {
            assert!(
                count > 0,
                "no {name} in the whole sweep: the schedule does not exercise it"
            );
        }
    }
}

/// The etcd mode's invariants, from the simulated store's record of every write of the view
/// key and from every view any view-service node answered with:
/// - one view per number and one epoch: the stored values form a chain in which the number
///   rises by one at each change, and every answered view is a view of that chain;
/// - a view is made only after its predecessor was acknowledged: each change is written over
///   a value with `acked = true` (view 0 excepted).
fn check_view_chain(c: &Cluster, seed: u64) {
    let Some(settings) = &c.etcd else {
        return;
    };
    let mut chain: BTreeMap<u64, proto::viewservice::View> = BTreeMap::new();
    let mut previous: Option<(proto::viewservice::View, bool)> = None;
    for (revision, value) in c.sim.store().history(&settings.view_key()) {
        let value = value.unwrap_or_else(|| panic!("seed {seed}: the view key was deleted"));
        let (view, acked) = kv::viewservice::StoredRecord::parse(&value)
            .unwrap_or_else(|e| panic!("seed {seed}: revision {revision}: {e}"));
        if let Some((before, before_acked)) = previous {
            assert_eq!(
                view.service,
                before.service,
                "seed {seed}: two epochs; {}",
                replay(seed)
            );
            if view.viewnum == before.viewnum {
                assert!(
                    view == before && acked && !before_acked,
                    "seed {seed}: view {} rewritten other than by its ack; {}",
                    view.viewnum,
                    replay(seed)
                );
            } else {
                assert_eq!(
                    view.viewnum,
                    before.viewnum + 1,
                    "seed {seed}: the view number jumped; {}",
                    replay(seed)
                );
                assert!(
                    before_acked || before.viewnum == 0,
                    "seed {seed}: view {} made before view {} was acknowledged; {}",
                    view.viewnum,
                    before.viewnum,
                    replay(seed)
                );
                assert!(
                    !acked,
                    "seed {seed}: a new view stored acknowledged; {}",
                    replay(seed)
                );
            }
        }
        chain.insert(view.viewnum, view);
        previous = Some((view, acked));
    }
    for (node, addr) in &c.view_services {
        let Some(service) = c.sim.role(*node).and_then(Host::view_service) else {
            continue;
        };
        let conflicts = service.info()["store"]["answer_conflicts"].as_u64();
        assert_eq!(
            conflicts,
            Some(0),
            "seed {seed}: view-service node {addr} answered two views under one number; {}",
            replay(seed)
        );
        for view in service.answered_views() {
            assert_eq!(
                chain.get(&view.viewnum),
                Some(&view),
                "seed {seed}: view-service node {addr} answered view {} that is not the one \
                 stored under that number; {}",
                kv::view_text(&view),
                replay(seed)
            );
        }
    }
}

/// Goal: the same safety and liveness with the view service in the etcd mode: three nodes,
/// their crashes, restarts and pauses, pings reaching only some nodes, store replies lost
/// (some after the write committed), nodes cut off from the store, and the store losing its
/// quorum. Also checked after every step: one view per number and epoch, each made after its
/// predecessor's acknowledgement. Method: seeds split over two threads.
#[test]
fn random_faults_with_the_view_service_in_etcd() {
    let all: Vec<u64> = seeds(200).collect();
    let events = sweep(&all, true);
    println!(
        "etcd mode, rare events over {} seeds: {events:?}",
        all.len()
    );
    assert!(
        events.stalls_accepted * 2 < all.len() as u64 || all.len() < 20,
        "{} of {} runs ended stalled: the liveness check checked too little",
        events.stalls_accepted,
        all.len()
    );
    if all.len() >= 100 {
        for (name, count) in [
            ("failover", events.failovers),
            ("leadership taken", events.leaderships),
            ("view write refused or failed", events.refused_view_writes),
        ] {
            assert!(
                count > 0,
                "no {name} in the whole sweep: the schedule misses it"
            );
        }
    }
}
