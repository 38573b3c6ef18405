//! The simulated network: connections, the event queue, partitions, drops, and TCP-like
//! flow control. Every link decision is the shared link layer's ([`crate::link`]), as in
//! the mio driver: both ends send a hello first and check the other's; failed links back off;
//! a link still connecting queues a bounded number of bytes; backpressure pauses reading
//! exactly as the real node does; drops are injected where a node sends.
//!
//! **Flow control.** Each direction of a connection has a window (`socket_window_len`, the
//! two kernels' socket buffers together): bytes sent and not yet read by the receiver. A
//! frame that does not fit waits in the sender's write queue, which is what the write-buffer
//! bound and the backpressure rule measure. A receiver whose reads are paused leaves arrived
//! frames unread, so its window stays full and its peer's write queue grows, as over TCP.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use proto::Addr;
use rand::RngExt;
use rand::rngs::StdRng;

use super::store::SimStore;
use super::{SimConfig, SimStats};
use crate::auth::Keys;
use crate::link::{self, Backoffs, DropInjector, LinkEnd};
use crate::node::Transport;
use crate::role::{ConnId, Dest, Link, MonoTime};
use crate::store::{StoreOp, StoreResult};
use proto::{Hello, MessageType};

/// Bytes of unread frames a resumed reader takes per go, like one read call of the real
/// driver, before the backpressure rule is checked again.
const READ_CHUNK_LEN: usize = 64 * 1024;

/// One input waiting in a node's inbox for its next turn.
pub(super) enum Input {
    Start,
    /// A frame (the first on a connection is the other end's hello).
    Frame {
        conn: ConnId,
        bytes: Bytes,
    },
    Link {
        to: Dest,
        link: Link,
    },
    Closed {
        conn: ConnId,
    },
    /// The result of a store operation.
    Store {
        id: u64,
        result: StoreResult,
    },
}

/// Direction of travel on a connection.
const TO_SERVER: usize = 0;
const TO_CLIENT: usize = 1;

enum Payload {
    Frame(Bytes),
    /// A handshake frame (hello or proof): never dropped by fault injection, not counted
    /// as a delivered frame.
    Handshake(Bytes),
}

impl Payload {
    fn bytes(&self) -> &Bytes {
        match self {
            Payload::Frame(bytes) | Payload::Handshake(bytes) => bytes,
        }
    }
}

/// How a node presents itself on every connection: its hello (without the connection's
/// nonce) and its keys.
pub(super) struct Presence {
    pub(super) hello: Hello,
    pub(super) keys: Keys,
    pub(super) frame_len_max: usize,
}

enum Event {
    Turn {
        node: usize,
        epoch: u64,
    },
    Connect {
        conn: u64,
    },
    Arrive {
        conn: u64,
        direction: usize,
        payload: Payload,
    },
    HoldTimeout {
        conn: u64,
        direction: usize,
    },
    Notify {
        node: usize,
        epoch: u64,
        input: NotifyInput,
    },
    /// A store request reaches the store.
    StoreArrive {
        node: usize,
        epoch: u64,
        id: u64,
        op: StoreOp,
        /// When the node gives up waiting.
        deadline: u64,
    },
    /// A store result (or the node's timeout) reaches the node.
    StoreDeliver {
        node: usize,
        epoch: u64,
        id: u64,
        result: StoreResult,
    },
}

enum NotifyInput {
    LinkDown(Dest),
    Closed(ConnId),
}

struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Scheduled) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Scheduled) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Scheduled) -> Ordering {
        // BinaryHeap is a max-heap: reverse for earliest (time, sequence) first.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// One direction of a connection.
#[derive(Default)]
struct Flow {
    /// Bytes sent and not yet read by the receiver (in flight, held, or unread).
    in_window: usize,
    /// The sender's write queue: frames that did not fit the window.
    queued: VecDeque<Payload>,
    queued_len: usize,
    /// Frames that arrived and the receiver has not read (its reads are paused).
    unread: VecDeque<Payload>,
    /// When the last frame arrives (FIFO per direction).
    last_arrival: u64,
    /// Frames held by a partition.
    held: VecDeque<Payload>,
}

struct Conn {
    client: usize,
    server: Option<usize>,
    /// The connecting end: this node's own link.
    client_end: LinkEnd,
    /// The accepting end.
    server_end: LinkEnd,
    /// Frames this node's link holds until its handshake completes.
    connecting: Vec<Bytes>,
    connecting_len: usize,
    flows: [Flow; 2],
}

impl Conn {
    fn dest(&self) -> Dest {
        self.client_end
            .dest()
            .expect("the connecting end is a link")
    }
}

pub(super) struct Endpoint {
    alive: bool,
    /// False while a test makes the node stop reading its sockets.
    reading: bool,
    epoch: u64,
    presence: Option<Presence>,
    inbox: Vec<Input>,
    next_turn: Option<u64>,
    links: BTreeMap<Dest, u64>,
    inbound: BTreeSet<u64>,
    backoffs: Backoffs,
    /// The longest write queue any of its connections had.
    queued_len_high: usize,
    /// While true the node runs no turn (a stopped process): input waits in its inbox.
    paused: bool,
}

pub(super) struct Net {
    pub(super) now: u64,
    pub(super) rng: StdRng,
    pub(super) config: SimConfig,
    pub(super) stats: SimStats,
    drops: DropInjector,
    queue: BinaryHeap<Scheduled>,
    seq: u64,
    next_conn: u64,
    conns: BTreeMap<u64, Conn>,
    endpoints: Vec<Endpoint>,
    by_addr: BTreeMap<Addr, usize>,
    blocked: BTreeSet<(usize, usize)>,
    /// Extra one-way latency by (from, to): an asymmetric path.
    extra_latency: BTreeMap<(usize, usize), u64>,
    /// Directions with unread frames, to resume when their readers may read again.
    unread: BTreeSet<(u64, usize)>,
    /// The store nodes' store operations go to.
    pub(super) store: SimStore,
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl Net {
    pub(super) fn new(mut rng: StdRng, config: SimConfig) -> Net {
        let drops = DropInjector::new(config.drop_rate, rng.random());
        Net {
            now: 0,
            rng,
            config,
            stats: SimStats::default(),
            drops,
            queue: BinaryHeap::new(),
            seq: 0,
            next_conn: 1,
            conns: BTreeMap::new(),
            endpoints: Vec::new(),
            by_addr: BTreeMap::new(),
            blocked: BTreeSet::new(),
            extra_latency: BTreeMap::new(),
            unread: BTreeSet::new(),
            store: SimStore::default(),
        }
    }

    fn store_latency(&mut self) -> u64 {
        let min = nanos(self.store.faults.latency_min);
        let max = nanos(self.store.faults.latency_max).max(min);
        self.rng.random_range(min..=max)
    }

    /// Sends store operation `op` of `node`'s request `id` on its way.
    fn submit_store(&mut self, node: usize, id: u64, op: StoreOp) {
        let epoch = self.endpoints[node].epoch;
        let deadline = self.now.saturating_add(nanos(self.store.faults.op_timeout));
        let at = self.now + self.store_latency();
        let event = Event::StoreArrive {
            node,
            epoch,
            id,
            op,
            deadline,
        };
        self.schedule(at, event);
    }

    fn store_arrive(&mut self, node: usize, epoch: u64, id: u64, op: StoreOp, deadline: u64) {
        let timeout = Event::StoreDeliver {
            node,
            epoch,
            id,
            result: StoreResult::Failed {
                reason: "store timeout".to_string(),
            },
        };
        let unreachable = self.store.quorum_lost || self.store.cut.contains(&node);
        let request_lost = self.store.faults.request_loss_rate > 0.0
            && self.rng.random_bool(self.store.faults.request_loss_rate);
        if unreachable || request_lost {
            self.schedule(deadline.max(self.now), timeout);
            return;
        }
        let result = self.store.apply(op, self.now);
        let reply_lost = self.store.faults.reply_loss_rate > 0.0
            && self.rng.random_bool(self.store.faults.reply_loss_rate);
        let at = self.now + self.store_latency();
        if reply_lost || at > deadline {
            self.schedule(deadline.max(self.now), timeout);
            return;
        }
        let deliver = Event::StoreDeliver {
            node,
            epoch,
            id,
            result,
        };
        self.schedule(at, deliver);
    }

    pub(super) fn set_drop_rate(&mut self, rate: f64) {
        self.config.drop_rate = rate;
        self.drops.set_rate(rate);
    }

    pub(super) fn register_addr(&mut self, addr: Addr, index: usize) -> bool {
        self.by_addr.insert(addr, index).is_none()
    }

    pub(super) fn add_endpoint(&mut self) {
        let backoffs = Backoffs::new(&self.config.links);
        self.endpoints.push(Endpoint {
            alive: false,
            reading: true,
            epoch: 0,
            presence: None,
            inbox: Vec::new(),
            next_turn: None,
            links: BTreeMap::new(),
            inbound: BTreeSet::new(),
            backoffs,
            queued_len_high: 0,
            paused: false,
        });
    }

    /// Starts (or restarts) a node that presents itself as `presence` on every connection.
    pub(super) fn boot(&mut self, index: usize, presence: Presence) {
        let endpoint = &mut self.endpoints[index];
        endpoint.alive = true;
        endpoint.reading = true;
        endpoint.paused = false;
        endpoint.epoch += 1;
        endpoint.presence = Some(presence);
        endpoint.inbox.clear();
        endpoint.next_turn = None;
        endpoint.backoffs.clear_all();
    }

    pub(super) fn crash(&mut self, index: usize) {
        let endpoint = &mut self.endpoints[index];
        endpoint.alive = false;
        endpoint.epoch += 1;
        endpoint.inbox.clear();
        endpoint.next_turn = None;
        let mut conns: Vec<u64> = endpoint.links.values().copied().collect();
        conns.extend(endpoint.inbound.iter().copied());
        for conn in conns {
            self.break_conn(conn);
        }
    }

    /// Makes a node stop (or resume) reading its sockets, as a process that never reads.
    pub(super) fn set_reading(&mut self, index: usize, reading: bool) {
        self.endpoints[index].reading = reading;
        if reading {
            self.resume_readers();
        }
    }

    /// Stops (`true`) or resumes a node's turns, as SIGSTOP and SIGCONT would.
    pub(super) fn set_paused(&mut self, index: usize, paused: bool) {
        self.endpoints[index].paused = paused;
        if !paused {
            let now = self.now;
            self.schedule_turn(index, now);
        }
    }

    /// The longest write queue any connection of a node had.
    pub(super) fn queued_len_high(&self, index: usize) -> usize {
        self.endpoints[index].queued_len_high
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            event,
        });
    }

    pub(super) fn next_event_at(&self) -> Option<u64> {
        self.queue.peek().map(|scheduled| scheduled.at)
    }

    fn latency(&mut self) -> u64 {
        let min = nanos(self.config.latency_min);
        let max = nanos(self.config.latency_max).max(min);
        let mut latency = self.rng.random_range(min..=max);
        if self.config.latency_tail_rate > 0.0
            && self.rng.random_bool(self.config.latency_tail_rate)
        {
            latency += nanos(self.config.latency_tail);
        }
        latency
    }

    fn turn_latency(&mut self) -> u64 {
        self.rng
            .random_range(0..=nanos(self.config.turn_latency_max))
    }

    /// Makes sure `node` has a turn at or before `at`.
    pub(super) fn schedule_turn(&mut self, node: usize, at: u64) {
        let endpoint = &mut self.endpoints[node];
        if !endpoint.alive || endpoint.next_turn.is_some_and(|scheduled| scheduled <= at) {
            return;
        }
        endpoint.next_turn = Some(at);
        let epoch = endpoint.epoch;
        self.schedule(at, Event::Turn { node, epoch });
    }

    pub(super) fn push_input(&mut self, node: usize, input: Input) {
        if !self.endpoints[node].alive {
            return;
        }
        self.endpoints[node].inbox.push(input);
        let at = self.now + self.turn_latency();
        self.schedule_turn(node, at);
    }

    pub(super) fn take_inbox(&mut self, node: usize) -> Vec<Input> {
        std::mem::take(&mut self.endpoints[node].inbox)
    }

    /// The next event: `Due::Turn(node)` is a node's turn, for the caller to run; any other
    /// event is handled here.
    pub(super) fn pop_due(&mut self) -> Option<Due> {
        let scheduled = self.queue.pop()?;
        self.now = self.now.max(scheduled.at);
        match scheduled.event {
            Event::Turn { node, epoch } => {
                let endpoint = &mut self.endpoints[node];
                if endpoint.epoch != epoch || endpoint.next_turn != Some(scheduled.at) {
                    return Some(Due::Handled); // superseded, or the node crashed
                }
                if endpoint.paused {
                    endpoint.next_turn = None; // Run when it resumes.
                    return Some(Due::Handled);
                }
                endpoint.next_turn = None;
                return Some(Due::Turn(node));
            }
            Event::Connect { conn } => self.connect(conn),
            Event::Arrive {
                conn,
                direction,
                payload,
            } => self.arrive(conn, direction, payload),
            Event::HoldTimeout { conn, direction } => {
                let still_held = self
                    .conns
                    .get(&conn)
                    .is_some_and(|c| !c.flows[direction].held.is_empty());
                if still_held {
                    self.break_conn(conn);
                }
            }
            Event::StoreArrive {
                node,
                epoch,
                id,
                op,
                deadline,
            } => self.store_arrive(node, epoch, id, op, deadline),
            Event::StoreDeliver {
                node,
                epoch,
                id,
                result,
            } => {
                if self.endpoints[node].epoch == epoch {
                    self.push_input(node, Input::Store { id, result });
                }
            }
            Event::Notify { node, epoch, input } => {
                if self.endpoints[node].epoch == epoch {
                    let input = match input {
                        NotifyInput::LinkDown(to) => Input::Link {
                            to,
                            link: Link::Down,
                        },
                        NotifyInput::Closed(conn) => Input::Closed { conn },
                    };
                    self.push_input(node, input);
                }
            }
        }
        Some(Due::Handled)
    }

    fn open_link(&mut self, client: usize, dest: Dest) -> u64 {
        let id = self.next_conn;
        self.next_conn += 1;
        let now = MonoTime(self.now);
        let nonce = self.rng.random();
        let endpoint = &self.endpoints[client];
        let presence = endpoint
            .presence
            .as_ref()
            .expect("a live node presents itself");
        let hello = link::hello_frame(&presence.hello, nonce, presence.frame_len_max);
        let client_end = LinkEnd::outbound(dest, &endpoint.backoffs, now, nonce, hello.clone());
        let not_before = client_end.deadline().map_or(self.now, |at| at.0);
        let options = &self.config.links;
        self.conns.insert(
            id,
            Conn {
                client,
                server: None,
                client_end,
                server_end: LinkEnd::inbound([0; proto::NONCE_LEN], Bytes::new(), now, options),
                connecting_len: 0,
                connecting: Vec::new(),
                flows: [Flow::default(), Flow::default()],
            },
        );
        self.endpoints[client].links.insert(dest, id);
        let at = not_before.max(self.now) + self.latency();
        self.schedule(at, Event::Connect { conn: id });
        id
    }

    fn connect(&mut self, id: u64) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let (client, dest) = (conn.client, conn.dest());
        let server = self
            .by_addr
            .get(&dest.addr)
            .copied()
            .filter(|s| self.endpoints[*s].alive);
        let Some(server) = server else {
            // Refused: nobody listens there.
            self.fail_connect(id);
            return;
        };
        if self.blocked.contains(&(client, server)) || self.blocked.contains(&(server, client)) {
            // The SYN (or its answer) is lost: the connect times out.
            let at = self.now + nanos(self.config.link_timeout);
            self.schedule(
                at,
                Event::HoldTimeout {
                    conn: id,
                    direction: TO_SERVER,
                },
            );
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.flows[TO_SERVER]
                    .held
                    .push_back(Payload::Handshake(Bytes::new()));
            }
            return;
        }
        self.endpoints[server].inbound.insert(id);
        let nonce = self.rng.random();
        let now = MonoTime(self.now);
        let server_hello = self.endpoints[server]
            .presence
            .as_ref()
            .map(|p| link::hello_frame(&p.hello, nonce, p.frame_len_max));
        let options = self.config.links.clone();
        let conn = self.conns.get_mut(&id).expect("checked above");
        conn.server = Some(server);
        conn.client_end.connected(now, &options);
        let client_hello = conn.client_end.own_hello().clone();
        if let Some(hello) = server_hello {
            conn.server_end = LinkEnd::inbound(nonce, hello.clone(), now, &options);
            self.transmit(id, TO_CLIENT, Payload::Handshake(hello));
        }
        self.transmit(id, TO_SERVER, Payload::Handshake(client_hello));
    }

    /// The handshake of this node's link `id` completed: the frames it held go.
    fn link_open(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let held = std::mem::take(&mut conn.connecting);
        conn.connecting_len = 0;
        for frame in held {
            self.transmit(id, TO_SERVER, Payload::Frame(frame));
        }
    }

    fn fail_connect(&mut self, id: u64) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let (client, dest) = (conn.client, conn.dest());
        let now = MonoTime(self.now);
        self.endpoints[client].backoffs.failed(dest, now);
        self.break_conn(id);
    }

    /// Sends `payload` on `id` in `direction`: into the window, or the sender's write queue.
    fn transmit(&mut self, id: u64, direction: usize, payload: Payload) {
        let window = self.config.socket_window_len;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let flow = &mut conn.flows[direction];
        let len = payload.bytes().len();
        let fits =
            flow.queued.is_empty() && (flow.in_window == 0 || flow.in_window + len <= window);
        if !fits {
            flow.queued_len += len;
            flow.queued.push_back(payload);
            let sender = if direction == TO_SERVER {
                conn.client
            } else {
                conn.server.unwrap_or(conn.client)
            };
            let queued_len = flow.queued_len;
            let endpoint = &mut self.endpoints[sender];
            endpoint.queued_len_high = endpoint.queued_len_high.max(queued_len);
            return;
        }
        flow.in_window += len;
        self.put_on_wire(id, direction, payload);
    }

    fn put_on_wire(&mut self, id: u64, direction: usize, payload: Payload) {
        let mut latency = self.latency();
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if let Some(server) = conn.server {
            let path = if direction == TO_SERVER {
                (conn.client, server)
            } else {
                (server, conn.client)
            };
            latency += self.extra_latency.get(&path).copied().unwrap_or(0);
        }
        let flow = &mut conn.flows[direction];
        let at = (self.now + latency).max(flow.last_arrival);
        flow.last_arrival = at;
        self.schedule(
            at,
            Event::Arrive {
                conn: id,
                direction,
                payload,
            },
        );
    }

    /// The receiver read `len` bytes of `direction`: the window frees, and the sender's
    /// write queue moves on.
    fn consumed(&mut self, id: u64, direction: usize, len: usize) {
        let window = self.config.socket_window_len;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let flow = &mut conn.flows[direction];
        flow.in_window = flow.in_window.saturating_sub(len);
        let mut moving = Vec::new();
        while let Some(next) = flow.queued.front() {
            let next_len = next.bytes().len();
            if flow.in_window != 0 && flow.in_window + next_len > window {
                break;
            }
            let payload = flow.queued.pop_front().expect("checked above");
            flow.queued_len -= next_len;
            flow.in_window += next_len;
            moving.push(payload);
        }
        let drained = !moving.is_empty();
        for payload in moving {
            self.put_on_wire(id, direction, payload);
        }
        if drained {
            // The sender's queue shrank: its own paused reads may go on.
            self.resume_readers();
        }
    }

    fn arrive(&mut self, id: u64, direction: usize, payload: Payload) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(server) = conn.server else { return };
        let (from, to) = if direction == TO_SERVER {
            (conn.client, server)
        } else {
            (server, conn.client)
        };
        let flow = &mut conn.flows[direction];
        if !flow.held.is_empty() || self.blocked.contains(&(from, to)) {
            let first = flow.held.is_empty();
            flow.held.push_back(payload);
            if first {
                let at = self.now + nanos(self.config.link_timeout);
                self.schedule(
                    at,
                    Event::HoldTimeout {
                        conn: id,
                        direction,
                    },
                );
            }
            return;
        }
        self.deliver(id, direction, payload);
    }

    /// The receiver's end of `direction` on `conn`, and the receiving node.
    fn receiver(conn: &Conn, direction: usize) -> (usize, &LinkEnd) {
        if direction == TO_SERVER {
            (conn.server.unwrap_or(conn.client), &conn.server_end)
        } else {
            (conn.client, &conn.client_end)
        }
    }

    /// The link layer's backpressure rule for the receiver of `direction` on `id`.
    fn reads_paused(&self, id: u64, direction: usize) -> bool {
        let Some(conn) = self.conns.get(&id) else {
            return false;
        };
        let (node, end) = Net::receiver(conn, direction);
        if !self.endpoints[node].reading {
            return true;
        }
        let options = &self.config.links;
        let own_queued_len = conn.flows[1 - direction].queued_len;
        let own_link_backed_up = || {
            end.is_inbound()
                && self.endpoints[node].links.values().any(|link| {
                    self.conns
                        .get(link)
                        .is_some_and(|c| link::backed_up(c.flows[TO_SERVER].queued_len, options))
                })
        };
        let endpoint = &self.endpoints[node];
        let node_queued_len: usize = endpoint
            .links
            .values()
            .chain(&endpoint.inbound)
            .filter_map(|link| self.conns.get(link))
            .map(|c| {
                let direction = if c.client == node {
                    TO_SERVER
                } else {
                    TO_CLIENT
                };
                c.flows[direction].queued_len
            })
            .sum();
        link::reads_paused(
            end,
            own_queued_len,
            own_link_backed_up,
            node_queued_len,
            options,
        )
    }

    fn deliver(&mut self, id: u64, direction: usize, payload: Payload) {
        let paused = self.reads_paused(id, direction);
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let flow = &mut conn.flows[direction];
        if paused || !flow.unread.is_empty() {
            flow.unread.push_back(payload);
            self.unread.insert((id, direction));
            return;
        }
        self.read(id, direction, payload);
    }

    /// The receiver reads one frame: it joins the node's next turn.
    fn read(&mut self, id: u64, direction: usize, payload: Payload) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let (node, _) = Net::receiver(conn, direction);
        let len = payload.bytes().len();
        let bytes = match payload {
            Payload::Frame(bytes) => {
                self.stats.frames_delivered += 1;
                bytes
            }
            Payload::Handshake(bytes) => bytes,
        };
        self.push_input(
            node,
            Input::Frame {
                conn: ConnId(id),
                bytes,
            },
        );
        self.consumed(id, direction, len);
    }

    /// Readers whose reads may go on again take their unread frames, a read chunk at a time.
    pub(super) fn resume_readers(&mut self) {
        let waiting: Vec<(u64, usize)> = self.unread.iter().copied().collect();
        for (id, direction) in waiting {
            let mut taken = 0;
            while taken < READ_CHUNK_LEN && !self.reads_paused(id, direction) {
                let Some(conn) = self.conns.get_mut(&id) else {
                    break;
                };
                let Some(payload) = conn.flows[direction].unread.pop_front() else {
                    break;
                };
                taken += payload.bytes().len();
                self.read(id, direction, payload);
            }
            let empty = self
                .conns
                .get(&id)
                .is_none_or(|conn| conn.flows[direction].unread.is_empty());
            if empty {
                self.unread.remove(&(id, direction));
            }
        }
    }

    /// Breaks a connection: what is in flight is lost; both live ends hear of it.
    pub(super) fn break_conn(&mut self, id: u64) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        self.unread.remove(&(id, TO_SERVER));
        self.unread.remove(&(id, TO_CLIENT));
        self.stats.connections_broken += 1;
        let dest = conn.dest();
        let client = &mut self.endpoints[conn.client];
        if client.links.get(&dest) == Some(&id) {
            client.links.remove(&dest);
        }
        let at = self.now + nanos(self.config.latency_min);
        let (client_alive, client_epoch) = (client.alive, client.epoch);
        if client_alive {
            let input = NotifyInput::LinkDown(dest);
            self.schedule(
                at,
                Event::Notify {
                    node: conn.client,
                    epoch: client_epoch,
                    input,
                },
            );
        }
        if let Some(server) = conn.server {
            let endpoint = &mut self.endpoints[server];
            endpoint.inbound.remove(&id);
            // Only a connection whose hello arrived was ever open for the accepting role.
            if endpoint.alive && conn.server_end.peer().is_some() {
                let epoch = endpoint.epoch;
                let input = NotifyInput::Closed(ConnId(id));
                self.schedule(
                    at,
                    Event::Notify {
                        node: server,
                        epoch,
                        input,
                    },
                );
            }
        }
    }

    pub(super) fn set_extra_latency(&mut self, from: usize, to: usize, extra: Duration) {
        if extra.is_zero() {
            self.extra_latency.remove(&(from, to));
        } else {
            self.extra_latency.insert((from, to), nanos(extra));
        }
    }

    pub(super) fn block(&mut self, from: usize, to: usize) {
        self.blocked.insert((from, to));
    }

    pub(super) fn unblock(&mut self, from: usize, to: usize) {
        if self.blocked.remove(&(from, to)) {
            self.release_held();
        }
    }

    pub(super) fn heal(&mut self) {
        self.blocked.clear();
        self.release_held();
    }

    /// Delivers, in order, frames held on directions no longer blocked.
    fn release_held(&mut self) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            for direction in [TO_SERVER, TO_CLIENT] {
                let Some(conn) = self.conns.get_mut(&id) else {
                    break;
                };
                let Some(server) = conn.server else {
                    // A connect held by a partition: retry it now.
                    if direction == TO_SERVER && !conn.flows[TO_SERVER].held.is_empty() {
                        let (client, dest) = (conn.client, conn.dest());
                        let server = self.by_addr.get(&dest.addr).copied();
                        let free = server.is_none_or(|s| {
                            !self.blocked.contains(&(client, s))
                                && !self.blocked.contains(&(s, client))
                        });
                        if free {
                            conn.flows[TO_SERVER].held.clear();
                            self.connect(id);
                        }
                    }
                    break;
                };
                let (from, to) = if direction == TO_SERVER {
                    (conn.client, server)
                } else {
                    (server, conn.client)
                };
                if self.blocked.contains(&(from, to)) {
                    continue;
                }
                let held: Vec<Payload> = conn.flows[direction].held.drain(..).collect();
                for payload in held {
                    self.deliver(id, direction, payload);
                }
            }
        }
    }

    pub(super) fn transport(&mut self, node: usize) -> SimTransport<'_> {
        SimTransport { net: self, node }
    }
}

/// What the next event was.
pub(super) enum Due {
    /// A node's turn, for the caller to run.
    Turn(usize),
    /// Any other event, handled.
    Handled,
}

/// The [`Transport`] a node's core uses during its turn.
pub(super) struct SimTransport<'a> {
    net: &'a mut Net,
    node: usize,
}

impl SimTransport<'_> {
    pub(super) fn count_decode_error(&mut self) {
        self.net.stats.decode_errors += 1;
    }

    pub(super) fn close_conn(&mut self, conn: ConnId) {
        self.net.break_conn(conn.0);
    }

    /// This node's end of `conn`, if the connection is still there.
    pub(super) fn end_mut(&mut self, conn: ConnId) -> Option<&mut LinkEnd> {
        let state = self.net.conns.get_mut(&conn.0)?;
        if state.client == self.node {
            Some(&mut state.client_end)
        } else {
            Some(&mut state.server_end)
        }
    }

    /// This node's link `conn` to `dest` completed its handshake: no more backoff, and the
    /// frames it held go.
    pub(super) fn link_opened(&mut self, conn: ConnId, dest: Dest) {
        self.net.endpoints[self.node].backoffs.clear(dest);
        self.net.link_open(conn.0);
    }

    /// Sends a handshake frame on `conn`, from this node.
    pub(super) fn send_handshake(&mut self, conn: ConnId, frame: Bytes) {
        let Some(state) = self.net.conns.get(&conn.0) else {
            return;
        };
        let direction = if state.client == self.node {
            TO_SERVER
        } else {
            TO_CLIENT
        };
        self.net
            .transmit(conn.0, direction, Payload::Handshake(frame));
    }

    /// Forgets the owed replies the role will never make, on this node's accepted
    /// connections.
    pub(super) fn forget_stale_owed(&mut self, now: MonoTime) {
        let options = &self.net.config.links;
        let inbound: Vec<u64> = self.net.endpoints[self.node]
            .inbound
            .iter()
            .copied()
            .collect();
        for id in inbound {
            if let Some(conn) = self.net.conns.get_mut(&id) {
                conn.server_end.forget_stale_owed(now, options);
            }
        }
    }

    /// A frame the link layer refused (handshake or message table).
    pub(super) fn count_refused(&mut self) {
        self.net.stats.frames_refused += 1;
    }

    /// This node's keys.
    pub(super) fn keys(&self) -> Keys {
        self.net.endpoints[self.node]
            .presence
            .as_ref()
            .map(|p| p.keys.clone())
            .unwrap_or_default()
    }
}

impl Transport for SimTransport<'_> {
    fn send(&mut self, to: Dest, frame: &[u8], corr: u64, message_type: MessageType) {
        let id = match self.net.endpoints[self.node].links.get(&to) {
            Some(&id) => id,
            None => self.net.open_link(self.node, to),
        };
        if self.net.drops.drop_next() {
            // A lost segment that is never retransmitted: the connection eventually breaks.
            self.net.stats.frames_dropped += 1;
            self.net.break_conn(id);
            return;
        }
        let options = self.net.config.links.clone();
        let conn = self
            .net
            .conns
            .get_mut(&id)
            .expect("links name live connections");
        let queued_len = if conn.client_end.is_open() {
            conn.flows[TO_SERVER].queued_len
        } else {
            conn.connecting_len
        };
        if !conn.client_end.admits(queued_len, frame.len(), &options) {
            self.net.break_conn(id);
            return;
        }
        conn.client_end.await_reply(corr, message_type, &options);
        let frame = Bytes::copy_from_slice(frame);
        if !conn.client_end.is_open() {
            conn.connecting_len += frame.len();
            conn.connecting.push(frame);
        } else {
            self.net.transmit(id, TO_SERVER, Payload::Frame(frame));
        }
    }

    fn peer_name(&self, conn: ConnId) -> Option<&str> {
        let state = self.net.conns.get(&conn.0)?;
        let end = if state.client == self.node {
            &state.client_end
        } else {
            &state.server_end
        };
        end.peer().map(|peer| peer.node.as_str())
    }

    fn reply(&mut self, conn: ConnId, frame: &[u8], corr: u64) {
        let Some(state) = self.net.conns.get_mut(&conn.0) else {
            return;
        };
        if state.client != self.node {
            state.server_end.paid(corr);
        }
        let direction = if state.client == self.node {
            TO_SERVER
        } else {
            TO_CLIENT
        };
        if self.net.drops.drop_next() {
            self.net.stats.frames_dropped += 1;
            self.net.break_conn(conn.0);
            return;
        }
        let frame = Payload::Frame(Bytes::copy_from_slice(frame));
        self.net.transmit(conn.0, direction, frame);
    }

    fn close(&mut self, conn: ConnId) {
        self.net.break_conn(conn.0);
    }

    fn store(&mut self, id: u64, op: StoreOp) {
        self.net.submit_store(self.node, id, op);
    }
}
