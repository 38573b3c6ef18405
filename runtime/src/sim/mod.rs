//! The deterministic simulator: many nodes in one thread, virtual time, seeded faults.
//!
//! It drives the same [`NodeCore`] as the real event loop, with the same turns:
//! input reaching an idle node schedules a turn after a short seeded latency, and whatever
//! arrives before that turn starts joins it; a turn delivers its inputs in arrival order,
//! fires due timers, calls `on_turn_end`, writes the event log, and only then sends.
//!
//! Links behave like TCP: FIFO per connection, reordering only across connections; a broken
//! connection loses whatever was in flight and is reported at both ends (`on_link(Down)` at
//! the connecting node, `on_closed` at the accepting one). Frames are real bytes, encoded by
//! the sender and decoded by the receiver.
//!
//! Faults: a frame drop (discards the frame and breaks its connection); partitions, one-way
//! or symmetric, which hold frames until they heal or `link_timeout` passes, then break the
//! connection; crash (the node and everything in it is gone) and restart (empty state, a new
//! incarnation, `on_start` again); the lab's unreliable mode per node.
//!
//! Determinism: one root seed derives every random choice; the event queue orders by
//! (time, insertion sequence); all tables are ordered maps. The same seed gives the same run,
//! event logs included, byte for byte.

mod net;
mod store;

pub use store::{SimStore, StoreFaults};

use std::time::Duration;

use proto::{Addr, Incarnation, NodeId};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::auth::Keys;
use crate::clock::ClockSkew;
use crate::event_log::{MemorySink, RUN_ID_DEFAULT};
use crate::link::{HandshakeStep, LinkOptions};
use crate::node::{Arrival, NodeCore, NodeOptions};
use crate::role::{Ctx, Link, MonoTime, Role};

use net::{Due, Input, Net};

/// Wall-clock time (ns since the Unix epoch) that virtual time 0 stands for.
pub const SIM_EPOCH_NS: i64 = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z

/// The seeds a simulation test runs: `PBKV_SEED=S` pins one (to replay a failure),
/// `PBKV_SEEDS=N` runs 0..N, and otherwise 0..`default`.
///
/// # Panics
/// If `PBKV_SEED` is set but not a number (a mistake worth stopping for).
pub fn seeds(default: u64) -> std::ops::Range<u64> {
    if let Ok(seed) = std::env::var("PBKV_SEED") {
        let seed: u64 = seed.parse().expect("PBKV_SEED is a number");
        return seed..seed + 1;
    }
    let count = std::env::var("PBKV_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok());
    0..count.unwrap_or(default)
}

/// How to replay seed `seed` of simulation test `target` in package `package`: the one line
/// every failing simulation test prints.
pub fn replay(package: &str, target: &str, seed: u64) -> String {
    format!("replay: PBKV_SEED={seed} cargo test -p {package} --test {target}")
}

/// Network behaviour of a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Shortest one-way frame latency.
    pub latency_min: Duration,
    /// Longest one-way frame latency (uniform between the two).
    pub latency_max: Duration,
    /// Share of frames that take `latency_tail` extra (a slow path).
    pub latency_tail_rate: f64,
    /// Extra latency of a slow frame.
    pub latency_tail: Duration,
    /// Longest wait between an input reaching an idle node and its turn.
    pub turn_latency_max: Duration,
    /// How long a partition holds frames (or a connect hangs) before the link breaks.
    pub link_timeout: Duration,
    /// Probability that a frame is dropped (which breaks its connection), for every node.
    pub drop_rate: f64,
    /// Every node's link-layer bounds and backoff (its `drop_rate` is unused: see above).
    pub links: LinkOptions,
    /// Bytes one direction of a connection carries before its sender's writes queue up
    /// (the two kernels' socket buffers together).
    pub socket_window_len: usize,
    /// Run id written in every node's log.
    pub run: String,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            latency_min: Duration::from_micros(50),
            latency_max: Duration::from_micros(300),
            latency_tail_rate: 0.0,
            latency_tail: Duration::from_millis(5),
            turn_latency_max: Duration::from_micros(20),
            link_timeout: Duration::from_secs(1),
            drop_rate: 0.0,
            links: LinkOptions {
                backoff_max: Duration::from_millis(200),
                ..LinkOptions::default()
            },
            socket_window_len: 2 * 1024 * 1024,
            run: RUN_ID_DEFAULT.to_string(),
        }
    }
}

/// How one simulated node is set up.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Node id.
    pub id: NodeId,
    /// Listening address; `None` for clients.
    pub addr: Option<Addr>,
    /// Keep an event log (in memory, across restarts).
    pub logs: bool,
    /// The lab's unreliable mode for incoming requests.
    pub unreliable: bool,
    /// Injected physical-clock skew.
    pub skew: ClockSkew,
    /// A fixed incarnation for every start (test stand-ins); `None` draws a fresh one.
    pub fixed_incarnation: Option<Incarnation>,
    /// The node's keys (default: none, protected mode).
    pub keys: Keys,
}

impl NodeSpec {
    /// A server listening at `addr`, with its event log on.
    pub fn server(id: &str, addr: Addr) -> NodeSpec {
        NodeSpec {
            addr: Some(addr),
            ..NodeSpec::client(id)
        }
    }

    /// A client (no listening address), with its event log on.
    ///
    /// # Panics
    /// If `id` is not a valid node id (a bug in the test).
    pub fn client(id: &str) -> NodeSpec {
        NodeSpec {
            id: NodeId::new(id).expect("valid node id in a simulation"),
            addr: None,
            logs: true,
            unreliable: false,
            skew: ClockSkew::default(),
            fixed_incarnation: None,
            keys: Keys::keyless(),
        }
    }

    /// The same node, holding `keys`.
    pub fn with_keys(self, keys: Keys) -> NodeSpec {
        NodeSpec { keys, ..self }
    }
}

/// A node's index in its simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeIndex(pub usize);

/// Counters of what the simulated network did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Frames delivered to a node.
    pub frames_delivered: u64,
    /// Frames dropped by fault injection.
    pub frames_dropped: u64,
    /// Connections broken (drops, timeouts, crashes, closes).
    pub connections_broken: u64,
    /// Turns run.
    pub turns: u64,
    /// Frames that failed to decode (their connection was closed).
    pub decode_errors: u64,
    /// Frames the link layer refused: handshakes that failed, and messages outside the
    /// message table.
    pub frames_refused: u64,
}

struct Host<R: Role> {
    spec: NodeSpec,
    core: Option<NodeCore<R>>,
    log: MemorySink,
    start_true_ns: i64,
    /// A clean stop was asked for ([`Sim::stop`]) and the role has not heard of it yet.
    stop_asked: bool,
    /// When the role heard of its clean stop; it is gone once not busy, or after
    /// [`SIM_STOP_GRACE`].
    stopping: Option<MonoTime>,
}

/// How long a cleanly stopping node may stay busy before it is gone anyway (the real
/// driver's default `shutdown_grace`).
pub const SIM_STOP_GRACE: Duration = Duration::from_secs(3);

/// A simulation of nodes all hosting role type `R` (use an enum role to mix kinds).
pub struct Sim<R: Role> {
    seed: u64,
    net: Net,
    hosts: Vec<Host<R>>,
}

impl<R: Role> Sim<R> {
    /// A simulation whose every random choice derives from `seed`.
    pub fn new(seed: u64, config: SimConfig) -> Sim<R> {
        Sim {
            seed,
            net: Net::new(StdRng::seed_from_u64(seed), config),
            hosts: Vec::new(),
        }
    }

    /// The root seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Virtual time now.
    pub fn now(&self) -> MonoTime {
        MonoTime(self.net.now)
    }

    /// Network counters.
    pub fn stats(&self) -> SimStats {
        self.net.stats
    }

    /// Adds a node and starts it (its `on_start` runs in a turn at the current time).
    ///
    /// # Panics
    /// If another node already listens at the same address (a bug in the test).
    pub fn add_node(&mut self, spec: NodeSpec, role: R) -> NodeIndex {
        let index = self.hosts.len();
        if let Some(addr) = spec.addr {
            assert!(
                self.net.register_addr(addr, index),
                "two nodes listen at {addr}"
            );
        }
        self.net.add_endpoint();
        self.hosts.push(Host {
            spec,
            core: None,
            log: MemorySink::default(),
            start_true_ns: 0,
            stop_asked: false,
            stopping: None,
        });
        self.boot(index, role);
        NodeIndex(index)
    }

    /// Crashes a node: it and everything in it is gone; its connections break.
    pub fn crash(&mut self, node: NodeIndex) {
        let host = &mut self.hosts[node.0];
        host.stop_asked = false;
        host.stopping = None;
        if host.core.take().is_some() {
            self.net.crash(node.0);
        }
    }

    /// Stops a node cleanly, as SIGTERM does a real one: in its next turn the role hears
    /// of it ([`Role::on_stop`]); the node keeps running turns while the role is busy, for
    /// at most [`SIM_STOP_GRACE`], then it is gone like a crash.
    pub fn stop(&mut self, node: NodeIndex) {
        if self.hosts[node.0].core.is_some() && self.hosts[node.0].stopping.is_none() {
            self.hosts[node.0].stop_asked = true;
            self.net.schedule_turn(node.0, self.net.now);
        }
    }

    /// Restarts a crashed (or running: it crashes first) node with a fresh role value, a
    /// new incarnation and empty state.
    pub fn restart(&mut self, node: NodeIndex, role: R) {
        self.crash(node);
        self.boot(node.0, role);
    }

    /// Restarts a node as another process at the same address, holding `keys` (a process
    /// squatting on a dead node's port, say).
    pub fn restart_with_keys(&mut self, node: NodeIndex, keys: Keys, role: R) {
        self.crash(node);
        self.hosts[node.0].spec.keys = keys;
        self.boot(node.0, role);
    }

    /// Whether a node is running.
    pub fn is_up(&self, node: NodeIndex) -> bool {
        self.hosts[node.0].core.is_some()
    }

    fn boot(&mut self, index: usize, role: R) {
        let host = &mut self.hosts[index];
        let incarnation = match host.spec.fixed_incarnation {
            Some(fixed) => fixed,
            None => Incarnation(self.net.rng.random::<u64>() | 1),
        };
        let options = NodeOptions {
            node: host.spec.id.clone(),
            addr: host.spec.addr,
            run: self.net.config.run.clone(),
            frame_len_max: proto::FRAME_LEN_MAX_DEFAULT,
            unreliable: host.spec.unreliable,
            skew: host.spec.skew,
            events: host.spec.logs.then(|| Box::new(host.log.clone()) as _),
        };
        let core_seed = self.net.rng.random::<u64>();
        let core = NodeCore::new(role, options, incarnation, core_seed);
        let presence = net::Presence {
            hello: core.hello().clone(),
            keys: host.spec.keys.clone(),
            frame_len_max: core.frame_len_max(),
        };
        host.core = Some(core);
        host.start_true_ns = SIM_EPOCH_NS + self.net.now as i64;
        self.net.boot(index, presence);
        self.net.push_input(index, Input::Start);
    }

    /// The role of a running node.
    pub fn role(&self, node: NodeIndex) -> Option<&R> {
        self.hosts[node.0].core.as_ref().map(|core| core.role())
    }

    /// The node's incarnation, if it is running.
    pub fn incarnation(&self, node: NodeIndex) -> Option<Incarnation> {
        self.hosts[node.0]
            .core
            .as_ref()
            .map(|core| core.hello().incarnation)
    }

    /// Runs `call` against a running node's role at the current time, as part of a turn of
    /// its own, and carries out what it records (how tests inject client operations).
    /// Returns `None` if the node is down.
    pub fn with_role<T>(
        &mut self,
        node: NodeIndex,
        call: impl FnOnce(&mut R, &mut Ctx<R::Timer>) -> T,
    ) -> Option<T> {
        let now = self.net.now;
        let physical = self.physical_now_ns(node.0);
        let core = self.hosts[node.0].core.as_mut()?;
        core.begin_turn(MonoTime(now), physical);
        let mut result = None;
        let mut transport = self.net.transport(node.0);
        core.with_role(&mut transport, |role, ctx| result = Some(call(role, ctx)));
        if let Err(error) = core.flush_log() {
            panic!("memory event log cannot fail: {error}");
        }
        self.schedule_timers(node.0);
        result
    }

    /// The true time (ns since the Unix epoch) at which the node's current start began: the
    /// epoch its clock skew's drift counts from.
    pub fn physical_epoch_ns(&self, node: NodeIndex) -> i64 {
        self.hosts[node.0].start_true_ns
    }

    /// The node's event log so far (all incarnations).
    pub fn event_log(&self, node: NodeIndex) -> Vec<u8> {
        self.hosts[node.0].log.0.borrow().clone()
    }

    /// Every node's event log, by node id.
    pub fn event_logs(&self) -> Vec<(NodeId, Vec<u8>)> {
        self.hosts
            .iter()
            .map(|host| (host.spec.id.clone(), host.log.0.borrow().clone()))
            .collect()
    }

    /// Stops frames from `from` reaching `to` (one way). Held frames break their connection
    /// after `link_timeout` unless the block is lifted first.
    pub fn block(&mut self, from: NodeIndex, to: NodeIndex) {
        self.net.block(from.0, to.0);
    }

    /// Lifts a one-way block; held frames are delivered in order.
    pub fn unblock(&mut self, from: NodeIndex, to: NodeIndex) {
        self.net.unblock(from.0, to.0);
    }

    /// Blocks both ways between every node of `side_a` and every node of `side_b`.
    pub fn partition(&mut self, side_a: &[NodeIndex], side_b: &[NodeIndex]) {
        for a in side_a {
            for b in side_b {
                self.block(*a, *b);
                self.block(*b, *a);
            }
        }
    }

    /// Adds `extra` latency to every frame from `from` to `to` (one way; zero removes it):
    /// an asymmetric path, for the time protocol's asymmetry experiments.
    pub fn set_extra_latency(&mut self, from: NodeIndex, to: NodeIndex, extra: Duration) {
        self.net.set_extra_latency(from.0, to.0, extra);
    }

    /// Lifts every block.
    pub fn heal(&mut self) {
        self.net.heal();
    }

    /// Sets the probability that a frame is dropped (breaking its connection).
    pub fn set_drop_rate(&mut self, rate: f64) {
        self.net.set_drop_rate(rate);
    }

    /// Sets a node's unreliable mode (takes effect at its next start).
    pub fn set_unreliable(&mut self, node: NodeIndex, unreliable: bool) {
        self.hosts[node.0].spec.unreliable = unreliable;
    }

    /// Runs until virtual time `until` (events at exactly `until` included).
    pub fn run_until(&mut self, until: MonoTime) {
        while self.net.next_event_at().is_some_and(|at| at <= until.0) {
            self.step();
        }
        self.net.now = self.net.now.max(until.0);
    }

    /// Runs for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        let until = self.now().plus(duration);
        self.run_until(until);
    }

    /// Runs until `done` holds (checked after every event) or `limit` of virtual time
    /// passes; returns whether it held.
    pub fn run_until_true(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Sim<R>) -> bool,
    ) -> bool {
        let until = self.now().plus(limit);
        loop {
            if done(self) {
                return true;
            }
            match self.net.next_event_at() {
                Some(at) if at <= until.0 => {
                    self.step();
                }
                _ => {
                    self.net.now = self.net.now.max(until.0);
                    return done(self);
                }
            }
        }
    }

    /// Processes the next event; returns false if none is left.
    pub fn step(&mut self) -> bool {
        match self.net.pop_due() {
            None => false,
            Some(Due::Turn(node)) => {
                self.turn(node);
                true
            }
            Some(Due::Handled) => true,
        }
    }

    /// Stops a node's turns (`true`), as SIGSTOP does, or resumes them: while stopped,
    /// frames and store results wait for it and its timers do not fire; on resuming it
    /// runs a turn at once with everything that arrived.
    pub fn pause(&mut self, node: NodeIndex, paused: bool) {
        self.net.set_paused(node.0, paused);
    }

    /// The simulated store (to inspect, or to write as an operator's tool would).
    pub fn store(&self) -> &SimStore {
        &self.net.store
    }

    /// The simulated store, to write as an operator's tool would (`pbkv init`, say).
    pub fn store_mut(&mut self) -> &mut SimStore {
        &mut self.net.store
    }

    /// Sets the store's latencies, loss rates, timeout and minimum TTL.
    pub fn set_store_faults(&mut self, faults: StoreFaults) {
        self.net.store.faults = faults;
    }

    /// Makes the store lose (`true`) or regain its quorum: unreachable for every node, no
    /// lease expiring meanwhile, every lease's TTL restarted on regaining it.
    pub fn set_store_quorum_lost(&mut self, lost: bool) {
        let now = self.net.now;
        self.net.store.set_quorum_lost(lost, now);
    }

    /// Cuts `node` off from the store (`true`), or reconnects it.
    pub fn cut_from_store(&mut self, node: NodeIndex, cut: bool) {
        if cut {
            self.net.store.cut.insert(node.0);
        } else {
            self.net.store.cut.remove(&node.0);
        }
    }

    /// Makes a node stop reading its sockets (`false`), as a process that never reads its
    /// replies, or read again (`true`). Frames for it wait unread, filling their windows.
    pub fn set_reading(&mut self, node: NodeIndex, reading: bool) {
        self.net.set_reading(node.0, reading);
    }

    /// The longest write queue (bytes waiting for window) any connection of `node` had:
    /// what the write-buffer bound and backpressure keep in check.
    pub fn queued_len_high(&self, node: NodeIndex) -> usize {
        self.net.queued_len_high(node.0)
    }

    fn physical_now_ns(&self, index: usize) -> i64 {
        let host = &self.hosts[index];
        host.spec
            .skew
            .apply(SIM_EPOCH_NS + self.net.now as i64, host.start_true_ns)
    }

    fn turn(&mut self, index: usize) {
        let physical = self.physical_now_ns(index);
        let stop_asked = std::mem::take(&mut self.hosts[index].stop_asked);
        let mut stopping = self.hosts[index].stopping;
        let Some(core) = self.hosts[index].core.as_mut() else {
            return;
        };
        self.net.stats.turns += 1;
        core.begin_turn(MonoTime(self.net.now), physical);
        let inputs = self.net.take_inbox(index);
        let decoder = proto::FrameDecoder::new(core.frame_len_max());
        let frame_len_max = core.frame_len_max();
        let handshake_len_max = self.net.config.links.handshake_frame_len_max;
        let now = MonoTime(self.net.now);
        let mut transport = self.net.transport(index);
        let keys = transport.keys();
        transport.forget_stale_owed(now);

        for input in inputs {
            match input {
                Input::Start => core.start(&mut transport),
                Input::Frame { conn, bytes } => {
                    let raw = bytes.clone();
                    let frame = match decoder.decode_whole(bytes) {
                        Ok(frame) => frame,
                        Err(error) => {
                            log::warn!("sim node {index}: closing {conn:?}: {error}");
                            transport.count_decode_error();
                            transport.close_conn(conn);
                            continue;
                        }
                    };
                    let Some(end) = transport.end_mut(conn) else {
                        continue; // Closed meanwhile: what was in flight is lost.
                    };
                    if !end.is_open() {
                        // The link layer's handshake, as in the real driver.
                        if raw.len() > handshake_len_max {
                            log::warn!("sim node {index}: closing {conn:?}: long handshake");
                            transport.count_refused();
                            transport.close_conn(conn);
                            continue;
                        }
                        let step = end.on_handshake_frame(&keys, raw, frame.message, frame_len_max);
                        match step {
                            Ok(HandshakeStep::Wait) => {}
                            Ok(HandshakeStep::Send(proof)) => transport.send_handshake(conn, proof),
                            Ok(HandshakeStep::Open { send, dest }) => {
                                if let Some(proof) = send {
                                    transport.send_handshake(conn, proof);
                                }
                                if let Some(dest) = dest {
                                    transport.link_opened(conn, dest);
                                    core.link(&mut transport, dest, Link::Up);
                                }
                            }
                            Err(refusal) => {
                                log::warn!("sim node {index}: refused {conn:?}: {refusal}");
                                transport.count_refused();
                                transport.close_conn(conn);
                            }
                        }
                        continue;
                    }
                    if let Err(refusal) = end.admit(&frame.header) {
                        log::warn!("sim node {index}: refused a frame on {conn:?}: {refusal}");
                        let inbound = end.is_inbound();
                        transport.count_refused();
                        if inbound {
                            transport.close_conn(conn);
                        }
                        continue;
                    }
                    let inbound = end.is_inbound();
                    let link = end.dest();
                    if inbound {
                        end.owe(frame.header.corr, core.reply_len_hint(&frame.message), now);
                    }
                    let Some(peer) = end.peer().cloned() else {
                        continue;
                    };
                    let arrival = Arrival {
                        conn,
                        link,
                        peer: &peer,
                        received_ns: physical,
                    };
                    core.frame(&mut transport, arrival, frame);
                }
                Input::Link { to, link } => core.link(&mut transport, to, link),
                Input::Closed { conn } => core.closed(&mut transport, conn),
                Input::Store { id, result } => core.store_result(&mut transport, id, result),
            }
        }
        if (stop_asked || core.stop_requested()) && stopping.is_none() {
            stopping = Some(now);
            core.stop(&mut transport);
        }
        if let Err(error) = core.end_turn(&mut transport) {
            panic!("memory event log cannot fail: {error}");
        }
        core.role().check_invariants();
        if let Some(since) = stopping {
            if !core.role().busy() || now >= since.plus(SIM_STOP_GRACE) {
                self.crash(NodeIndex(index));
                return;
            }
            self.hosts[index].stopping = stopping;
            self.net.schedule_turn(index, since.plus(SIM_STOP_GRACE).0);
        } else if core.stop_requested() {
            // Asked for during this turn's timers: the role hears of it next turn.
            self.net.schedule_turn(index, self.net.now);
        }
        self.schedule_timers(index);
    }

    fn schedule_timers(&mut self, index: usize) {
        if let Some(deadline) = self.hosts[index]
            .core
            .as_ref()
            .and_then(|core| core.next_deadline())
        {
            self.net.schedule_turn(index, deadline.0.max(self.net.now));
        }
    }
}
